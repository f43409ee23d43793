"""Adapters from files to the plain inputs of the evaluators: neuron maps and per-neuron means.

Conventions:
- Neuron-set files: a `jaxvalues.identify` NeuronSet file when that package can read it
  (tried first, through `NeuronSet.load(path)` and its `to_dict()` / `sets` / `neurons`), else
  JSON of the form {name: {layer: [neuron, ...]}}, optionally wrapped as {"sets": {...}} or
  {"neurons": {...}}; a bare {layer: [...]} map is one set named "neurons". Names are value ids
  ("integrity") or, for steering, "{value}-support" / "{value}-conflict" (the authors' scheme).
- Means files: a NeuronStats file when `jaxvalues.stats` can read it, else .npz with `mean`
  [L, N], or `sum` [C, L, N] and `tokens` [C] (pooled over conditions), or .npy [L, N].
- Score files (size sweep): .npy [L, N], lower = more specific (e.g. VAPE entropy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxvalues.errors import DataError
from jaxvalues.evaluate.controls import normalize_map, pooled_means


def _is_layer_map(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(str(k).lstrip("-").isdigit() and isinstance(v, list)
                                                   for k, v in d.items())


def _from_neuronset(path: Path):
    try:
        from jaxvalues.identify.neuronset import NeuronSet  # written by another package; optional
    except ImportError:
        return None
    load = getattr(NeuronSet, "load", None)
    if load is None:
        return None
    try:
        ns = load(path)
    except Exception:
        return None
    for attr in ("to_dict", "sets", "neurons", "maps"):
        obj = getattr(ns, attr, None)
        obj = obj() if callable(obj) else obj
        if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
            return {str(k): normalize_map(v) for k, v in obj.items()}
    return None


def load_neuron_sets(path) -> dict[str, dict[int, list[int]]]:
    """{set name: {layer: [neurons]}} from a neuron-set file (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such neuron-set file")
    sets = _from_neuronset(p)
    if sets is not None:
        return sets
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not a NeuronSet file nor JSON ({e})") from None
    if isinstance(raw, dict):
        for key in ("sets", "neurons"):
            if isinstance(raw.get(key), dict) and not _is_layer_map(raw[key]):
                raw = raw[key]
                break
    if _is_layer_map(raw):
        return {"neurons": normalize_map({int(k): v for k, v in raw.items()})}
    if not isinstance(raw, dict) or not all(_is_layer_map(v) or v == {} for v in raw.values()):
        raise DataError(f"{p}: expected JSON {{name: {{layer: [neuron, ...]}}}}, e.g. "
                        '{"integrity": {"3": [17, 42]}}')
    return {str(k): normalize_map({int(l): n for l, n in v.items()}) for k, v in raw.items()}


def pick_set(sets: dict, name: str, where: str) -> dict[int, list[int]]:
    if name not in sets:
        raise DataError(f"{where}: no neuron set named {name!r}; the file has {sorted(sets)}")
    return sets[name]


def load_means(path) -> np.ndarray:
    """[L, N] float32 per-neuron means from a statistics file (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such statistics file")
    try:
        import jaxvalues.stats as st

        for name in ("load_stats", "load"):
            fn = getattr(st, name, None)
            if callable(fn):
                try:
                    return pooled_means(fn(p))
                except Exception:
                    break
    except ImportError:
        pass
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{p}: cannot read means ({e}); expected .npz with 'mean' [L, N] or 'sum'+'tokens', "
                        "or .npy [L, N]") from None
    if isinstance(data, np.ndarray):
        return pooled_means(data)
    keys = set(data.files)
    if "mean" in keys:
        return pooled_means(data["mean"])
    if {"sum", "tokens"} <= keys:
        s, t = data["sum"], data["tokens"]
        return pooled_means(type("S", (), {"sum": s, "tokens": t})())
    raise DataError(f"{p}: .npz has {sorted(keys)}; expected 'mean' [L, N] or 'sum' [C, L, N] with 'tokens' [C]")


def load_scores(path) -> np.ndarray:
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{p}: cannot read scores ({e}); expected .npy [L, N]") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{p}: scores must be an [L, N] array")
    return arr
