"""Packaged models: fetch once (jaxvalues.zoo), convert once, then load fast.

The first load dequantizes the GGUF and writes a converted copy into
`<cache>/<name>/converted/`: `params.safetensors` (float32, keys = jaxvalues parameter paths,
so no key table or transposes on reload), `config.json` (ModelConfig), `tokenizer/`, and
`stamp.json` naming the GGUF's file name, size and sha256 it came from. A stamp that does not
match the cached GGUF makes the copy stale and it is rebuilt. Writes are atomic.
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

FORMAT = 1


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
    save_safetensors(tensors, tmp / "params.safetensors")
    (tmp / "config.json").write_text(json.dumps(lm.config.to_dict(), indent=1))
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    (tmp / "stamp.json").write_text(json.dumps({**stamp, "format": FORMAT}, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


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
    from jaxvalues.zoo.fetch import converted_dir, resolve
    from jaxvalues.zoo.registry import get_model

    model = get_model(name)
    gguf = resolve(name)
    stamp = {"gguf": gguf.name, "size": gguf.stat().st_size, "sha256": model.sha256}
    cdir = converted_dir(name)
    stamp_file = cdir / "stamp.json"
    if stamp_file.exists():
        try:
            old = json.loads(stamp_file.read_text())
        except json.JSONDecodeError:
            old = {}
        if old == {**stamp, "format": FORMAT}:
            lm = load_converted(cdir, dtype, tokenizer, source=name)
            lm.info.update(stamp)
            return lm
    lm = load_gguf(gguf, "float32", tokenizer=True)
    save_converted(lm, cdir, stamp)
    lm = load_converted(cdir, dtype, tokenizer, source=name)
    lm.info.update(stamp)
    return lm
