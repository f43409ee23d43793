"""Packaged models: fetch once (jaxvalues.zoo), convert once, then load fast.

The first load dequantizes the GGUF and writes a converted copy into
`<cache>/<name>/converted/`: `params.safetensors` (float32, keys = jaxvalues parameter paths,
so no key table or transposes on reload), `config.json` (ModelConfig), `tokenizer/`, and
`stamp.json` naming the GGUF's file name, size and sha256 (as measured from the cached file) it
came from, and for every file of the copy its sha256 (taken when it was written) and fingerprint
(size, mtime_ns, ctime_ns, inode, device). A stamp that does not match the cached GGUF (or an old
stamp format) makes the copy stale and it is rebuilt. A copy whose files no longer match its
stamp is refused: every load compares each file's fingerprint with the stamp and re-hashes a file
only when it changed (see `jaxvalues.zoo.fetch` for why not a full hash at every load), so a file
replaced or rewritten after the copy was written (same size or not), a missing file or an extra
one raises `CheckpointError` naming it and `jaxvalues models fetch NAME --force` (which drops the
copy; deleting the `converted/` folder also works). Writes are atomic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvalues.errors import CheckpointError
from jaxvalues.models.config import ModelConfig
from jaxvalues.models.decoder import Decoder
from jaxvalues.models.lm import LanguageModel

FORMAT = 2  # 2: per-file hashes and fingerprints in stamp.json
STAMP = "stamp.json"


def _key(path) -> str:
    return "/".join(str(p) for p in path)


def save_converted(lm: LanguageModel, directory: Path, stamp: dict) -> None:
    from jaxvalues.loading.safetensors_io import save_safetensors

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flat = nnx.to_flat_state(lm.state)
    tensors = {_key(p): np.asarray(v.get_value(), dtype=np.float32) for p, v in flat}
    from jaxvalues.zoo.fetch import file_record, sha256_file, write_json_atomic

    digests = {"params.safetensors": save_safetensors(tensors, tmp / "params.safetensors")}
    (tmp / "config.json").write_text(json.dumps(lm.config.to_dict(), indent=1))
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    for rel in _files(tmp):
        if rel not in digests:
            digests[rel] = sha256_file(tmp / rel)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    # fingerprints are taken in place (after the rename); the stamp comes last, so a copy
    # interrupted before it has no stamp and is rebuilt
    files = {rel: file_record(directory / rel, digests[rel]) for rel in sorted(digests)}
    write_json_atomic(directory / STAMP, {**stamp, "format": FORMAT, "files": files})


def _files(directory: Path) -> list[str]:
    """Relative paths (posix) of the regular files and links under `directory`, stamp excluded."""
    out = []
    for p in sorted(Path(directory).rglob("*")):
        if p.is_symlink() or not p.is_dir():
            rel = p.relative_to(directory).as_posix()
            if rel != STAMP:
                out.append(rel)
    return out


def verify_converted(directory: Path, stamp: dict, name: str) -> None:
    """Refuse a converted copy whose files differ from `stamp["files"]` (fingerprint, then hash)."""
    from jaxvalues.zoo.fetch import recheck, write_json_atomic

    directory = Path(directory)
    fix = (f"the cached copy of {name!r} was changed after it was written; run "
           f"`jaxvalues models fetch {name} --force` (or delete {directory}) to rebuild it")  # fmt: skip
    files = stamp.get("files")
    if not isinstance(files, dict) or "params.safetensors" not in files:
        raise CheckpointError(f"{directory / STAMP}: no file hashes in the stamp; {fix}")
    present = _files(directory)
    extra = sorted(set(present) - set(files))
    if extra:
        raise CheckpointError(f"{directory / extra[0]}: not part of the converted copy (not in its stamp); {fix}")
    refreshed, changed = dict(files), False
    for rel, record in files.items():
        path = directory / rel
        if not isinstance(record, dict) or path.is_symlink():
            raise CheckpointError(f"{path}: not the file the converted copy was written with; {fix}")
        measured, new = recheck(path, record)
        if measured == "missing":
            raise CheckpointError(f"{path}: missing from the converted copy; {fix}")
        if measured is None:
            continue
        if new is None:
            raise CheckpointError(f"{path}: sha256 {measured} does not match the stamp's {record.get('sha256')} "
                                  f"(file replaced or modified); {fix}")
        refreshed[rel], changed = new, True
    if changed:  # same bytes, new fingerprint (e.g. the cache was copied): remember it
        try:
            write_json_atomic(directory / STAMP, {**stamp, "files": refreshed})
        except OSError:
            pass


def load_converted(directory: Path, dtype="float32", tokenizer: bool = True, source: str = "") -> LanguageModel:
    from jaxvalues.loading import _dtype, load_tokenizer
    from jaxvalues.loading.safetensors_io import SafetensorsFile

    directory = Path(directory)
    name, jdt = _dtype(dtype)
    cfg = ModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
    sf = SafetensorsFile(directory / "params.safetensors")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, jdt)))
    flat = nnx.to_flat_state(abstract)
    keys = set(sf.keys())
    for path, var in flat:
        k = _key(path)
        if k not in keys:
            raise CheckpointError(f"{directory}: converted copy lacks {k!r}; delete the directory to rebuild it")
        var.set_value(jnp.asarray(sf.get(k), dtype=jdt))
    tok = load_tokenizer(directory / "tokenizer") if tokenizer and (directory / "tokenizer").exists() else None
    return LanguageModel(config=cfg, tokenizer=tok, graphdef=graphdef, state=nnx.from_flat_state(flat),
                         source=source or str(directory), dtype=name)


def load_packaged(name: str, dtype="float32", tokenizer: bool = True) -> LanguageModel:
    from jaxvalues.loading.gguf_io import load_gguf
    from jaxvalues.zoo.fetch import converted_dir, gguf_sha256, resolve

    gguf = resolve(name)  # verified against the pin (and its stamp)
    stamp = {"gguf": gguf.name, "size": gguf.stat().st_size, "sha256": gguf_sha256(name)}
    cdir = converted_dir(name)
    stamp_file = cdir / STAMP
    if stamp_file.exists():
        try:
            old = json.loads(stamp_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        if {k: old.get(k) for k in (*stamp, "format")} == {**stamp, "format": FORMAT}:
            verify_converted(cdir, old, name)
            lm = load_converted(cdir, dtype, tokenizer, source=name)
            lm.info.update(stamp)
            return lm
    lm = load_gguf(gguf, "float32", tokenizer=True)
    save_converted(lm, cdir, stamp)
    lm = load_converted(cdir, dtype, tokenizer, source=name)
    lm.info.update(stamp)
    return lm
