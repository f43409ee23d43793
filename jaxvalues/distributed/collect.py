"""Sharded collection: shards -> workers -> exact merge in shard order.

    with RayPool(source, size=4, resources=res) as pool:            # or LocalPool(source)
        stats = collect_sharded(pool, examples, conditions, shard_size=256, batch_size=8)
        stats = collect_sharded(pool, records, records=True, scheme="values", token_selection="rationale")

The items (pre-tokenized `TokenizedExample`s, or activation records that each worker tokenizes
with the model's tokenizer) are cut into contiguous shards (shards.py) that depend only on the
dataset and `shard_size` / `shards`, never on the worker count. Each worker runs
`jaxvalues.stats.collect` on a shard; the driver merges the shard accumulators in shard order.
`NeuronStats.merge` is exact, so the result equals `collect(lm, all_items, ...)` in one process,
bit for bit, for any number of workers, shards, or retried / restarted workers.

`meta["collect"]` sums the shard reports (examples, batches, tokens) and adds shards, workers and
wall-clock seconds; `meta["shards"]` lists each shard's [start, stop).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from jaxvalues.distributed.progress import ProgressBar
from jaxvalues.distributed.shards import plan_shards, take
from jaxvalues.errors import JaxValuesError

DEFAULT_SHARD_SIZE = 256
_SUMMED = ("examples", "batches", "tokens_real", "tokens_counted")


def collect_sharded(pool, items: Sequence, conditions: Sequence[str] | None = None, *, records: bool = False,
                    scheme: str = "values", chat: bool | None = None, shards: int | None = None,
                    shard_size: int | None = None, workers: int | None = None, progress: bool = False,
                    on_shard: Callable | None = None, meta: dict | None = None, **collect_kw):
    """Collect statistics of `items` on `pool`'s workers (see module docstring).

    collect_kw: token_selection, k, batch_size, max_tokens, buckets, intervention (as `collect`).
    on_shard(index, stats) is called as each shard arrives (completion order)."""
    from jaxvalues.stats.accumulator import merge_all

    t0 = time.perf_counter()
    items = list(items)
    if not items:
        raise JaxValuesError("nothing to collect: the dataset is empty")
    if not records and conditions is None:
        raise JaxValuesError("collect_sharded: pass the condition names of the examples")
    if records:
        from jaxvalues.stats.records import check_selection

        check_selection(items, scheme, collect_kw.get("token_selection", "content"))  # before any shard runs
    if shards is None and shard_size is None:
        shard_size = DEFAULT_SHARD_SIZE
    plan = plan_shards(len(items), num_shards=shards, shard_size=shard_size)
    options = dict(collect_kw, records=records, scheme=scheme, chat=chat)
    calls = [(s.index, (s.index, take(items, s), None if records else tuple(conditions), options)) for s in plan]
    results: dict = {}
    with ProgressBar(len(plan), "shards", "collect", enabled=progress) as bar:
        def done(key, value):
            index, stats = value
            results[index] = stats
            bar.advance(tokens=int(stats.meta.get("collect", {}).get("tokens_real", 0)))
            if on_shard is not None:
                on_shard(index, stats)

        pool.map("collect_shard", calls, done, workers=workers)
    missing = [s.index for s in plan if s.index not in results]
    if missing:
        raise JaxValuesError(f"shards {missing} returned no statistics")
    parts = [results[s.index] for s in plan]  # shard order
    out = merge_all(parts)
    out.meta = _merged_meta(parts, plan, meta, pool, workers, time.perf_counter() - t0)
    return out


def _merged_meta(parts, plan, meta, pool, workers, seconds) -> dict:
    first = dict(parts[0].meta)
    first.pop("shard", None)
    reports = [p.meta.get("collect", {}) for p in parts]
    rep = {k: sum(int(r.get(k, 0)) for r in reports) for k in _SUMMED}
    shapes = sorted({tuple(s) for r in reports for s in r.get("batch_shapes", [])})
    real = rep["tokens_real"]
    slots = sum(r.get("tokens_real", 0) / max(1e-12, 1 - r.get("padding_fraction", 0.0)) for r in reports)
    rep.update({
        "compilations": len(shapes), "batch_shapes": [list(s) for s in shapes],
        "padding_fraction": round(1 - real / slots, 4) if slots else 0.0,
        "token_selection": reports[0].get("token_selection"), "k": reports[0].get("k"),
        "shards": len(plan), "workers": min(workers or pool.size, pool.size),
        "seconds": round(seconds, 3), "worker_seconds": round(sum(float(r.get("seconds", 0)) for r in reports), 3),
    })
    first.update(meta or {})
    first["collect"] = rep
    first["shards"] = [[s.start, s.stop] for s in plan]
    return first
