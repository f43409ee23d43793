"""Save / restore `NeuronStats` with orbax-checkpoint, plus JSON and Parquet summaries.

Layout of a statistics directory DIR (paths are made absolute, as orbax requires):
  DIR/state/          orbax StandardCheckpointer: the int64 accumulator arrays
  DIR/summary.json    format version, conditions, shapes, meta (model, token selection, collection
                      report), per-condition token counts and a sha256 of every array. Written
                      last: a directory without it is an incomplete save.
  DIR/summary.parquet one row per (condition, layer): tokens, mean P(act > 0), mean activation,
                      fraction of neurons never active.
`load_stats` checks the summary, restores, and verifies shapes, dtypes, invariants and digests;
any failure is a `CheckpointError` naming the directory and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from jaxvalues.errors import CheckpointError
from jaxvalues.stats.accumulator import _FIELDS, FRAC_BITS, NeuronStats

FORMAT = "jaxvalues.neuron_stats/1"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def summary_rows(stats: NeuronStats) -> list[dict]:
    p, m = stats.probs(), stats.mean()
    rows = []
    for c, name in enumerate(stats.conditions):
        for layer in range(stats.num_layers):
            rows.append({
                "condition": name, "layer": layer, "tokens": int(stats.tokens[c]),
                "mean_active_prob": float(np.mean(p[c, layer])) if stats.tokens[c] else None,
                "mean_activation": float(np.mean(m[c, layer])) if stats.tokens[c] else None,
                "never_active_fraction": float(np.mean(stats.active[c, layer] == 0)),
            })
    return rows


def summary(stats: NeuronStats) -> dict:
    return {
        "format": FORMAT,
        "conditions": list(stats.conditions),
        "num_layers": stats.num_layers,
        "num_neurons": stats.num_neurons,
        "tokens": {c: int(t) for c, t in zip(stats.conditions, stats.tokens)},
        "no_data": [c for c, t in zip(stats.conditions, stats.tokens) if t == 0],
        "clipped_values": int(stats.clipped.sum()),
        "meta": stats.meta,
    }


def check_stats_out(directory, flag: str = "--out") -> Path:
    """Refuse, before any work, a statistics output location that `save_stats` could not write."""
    from jaxvalues.outputs import check_output

    return check_output(directory, flag, expect="a statistics directory (new or from `jaxvalues collect`)",
                        error=CheckpointError)


def save_stats(stats: NeuronStats, directory) -> Path:
    import orbax.checkpoint as ocp
    import pandas as pd

    d = Path(directory).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").unlink(missing_ok=True)  # invalidate first: a crash leaves no valid checkpoint
    if (d / "state").exists():
        shutil.rmtree(d / "state")
    ckpt = ocp.StandardCheckpointer()
    try:
        ckpt.save(d / "state", stats.arrays())
        ckpt.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax raises many types
        raise CheckpointError(f"could not write statistics to {d / 'state'}: {e}") from e
    pd.DataFrame(summary_rows(stats)).to_parquet(d / "summary.parquet", index=False)
    info = summary(stats)
    info["sha256"] = {f: _digest(a) for f, a in stats.arrays().items()}
    tmp = d / "summary.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(d / "summary.json")
    return d


def _fail(d, what):
    raise CheckpointError(f"{d}: not a valid statistics checkpoint ({what}); recollect with `jaxvalues collect`")


def load_stats(directory, verify: bool = True) -> NeuronStats:
    import orbax.checkpoint as ocp

    d = Path(directory).expanduser().resolve()
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such statistics directory")
    try:
        info = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        conditions = tuple(info["conditions"])
        shape = (len(conditions), int(info["num_layers"]), int(info["num_neurons"]))
        fmt = info.get("format")
    except FileNotFoundError:
        _fail(d, "summary.json is missing: the save did not finish")
    except (ValueError, KeyError, TypeError) as e:
        _fail(d, f"summary.json is unreadable: {e}")
    if fmt != FORMAT:
        _fail(d, f"format {fmt!r}, expected {FORMAT!r}")
    if not (d / "state").is_dir():
        _fail(d, "the state/ directory is missing")
    try:
        arrays = ocp.StandardCheckpointer().restore(d / "state")
    except Exception as e:  # noqa: BLE001
        _fail(d, f"orbax could not restore state/: {type(e).__name__}: {str(e)[:300]}")
    if not isinstance(arrays, dict) or set(arrays) != set(_FIELDS):
        _fail(d, f"state/ holds {sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__}")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for f, a in arrays.items():
        want = shape[:1] if f in ("tokens", "clipped") else shape
        if a.shape != want or a.dtype != np.int64:
            _fail(d, f"array {f!r} is {a.dtype}{list(a.shape)}, expected int64{list(want)}")
    if verify:
        digests = info.get("sha256") or {}
        for f, a in arrays.items():
            if digests.get(f) != _digest(a):
                _fail(d, f"array {f!r} does not match its sha256 in summary.json (corrupted file?)")
    if (arrays["active"] > arrays["tokens"][:, None, None]).any() or (arrays["active"] < 0).any():
        _fail(d, "active counts exceed the token counts")
    for f in ("sum_frac", "sumsq_frac"):
        if (arrays[f] < 0).any() or (arrays[f] >= 1 << FRAC_BITS).any():
            _fail(d, f"{f} out of range")
    return NeuronStats(conditions, *(arrays[f] for f in _FIELDS), meta=info.get("meta") or {})
