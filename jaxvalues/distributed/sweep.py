"""Run a sweep: for each model, statistics (sharded collection) then its pending conditions, each a
call on a worker that holds the model; rows stream into the store (store.py) as they arrive.

    result = run_sweep(spec, "out/demo")                        # in this process, no Ray
    result = run_sweep(spec, "out/demo", ray="local", workers=4)  # Ray actors
    result.computed, result.skipped, result.failed, result.table()

Models run one after the other (one model in memory per worker). For each model with pending
conditions: a pool of workers is started (`pool_factory(model)`, default: RayPool with the spec's
resources, or LocalPool without Ray), the statistics are loaded from OUT/stats/<key>/ or collected
on the pool's workers and saved there, and the context (statistics, evaluation records, settings)
is shipped once (`ray.put`). Finished conditions are skipped (resume after a crash or Ctrl-C: the
rerun recomputes exactly the conditions without a part file). A condition that fails for good is
recorded in failures.json with its remote traceback; the others still run, then `SweepFailed`
is raised naming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from jaxvalues.distributed.pool import LocalPool, RayPool
from jaxvalues.distributed.progress import ProgressBar
from jaxvalues.distributed.spec import SweepSpec
from jaxvalues.distributed.store import SweepStore
from jaxvalues.errors import JaxValuesError


class SweepFailed(JaxValuesError):
    """Some conditions failed for good; the message names them and shows the first traceback."""


@dataclass
class SweepResult:
    out: str
    computed: list = field(default_factory=list)  # condition ids computed by this run
    skipped: list = field(default_factory=list)  # already finished before this run
    failed: list = field(default_factory=list)
    seconds: float = 0.0

    def table(self):
        import pandas as pd

        return pd.read_parquet(f"{self.out}/results.parquet")


def _load_records(spec: SweepSpec):
    from jaxvalues.data.io import load_records
    from jaxvalues.stats.records import interleave_by_value

    d = spec.data
    values = list(spec.grid["values"])
    act = load_records(d["activation"], kind="activation", lang=d["activation_lang"])
    act = interleave_by_value(act, d["max_activation_records"])
    ev = load_records(d["evaluation"], kind="evaluation", lang=spec.grid["languages"],
                      values=None if spec.evaluation["values"] == "all" else values)
    n = d["max_evaluation_records"]
    if n is not None:
        seen: dict = {}
        keep = []
        for r in ev:  # first n per value and language, file order
            k = (r.value, r.lang)
            if seen.get(k, 0) < n:
                seen[k] = seen.get(k, 0) + 1
                keep.append(r)
        ev = keep
    if not act:
        raise JaxValuesError(f"{spec.source}: no activation records in {d['activation']!r}")
    if not ev:
        raise JaxValuesError(f"{spec.source}: no evaluation records in {d['evaluation']!r} for the grid")
    return act, ev


def model_statistics(spec: SweepSpec, model: str, pool, store: SweepStore, records, progress: bool = False):
    """Load the model's statistics from the store, or collect them on `pool` and save them."""
    from jaxvalues.distributed.collect import collect_sharded
    from jaxvalues.stats.checkpoint import load_stats, save_stats

    key = spec.statistics_key(model)
    d = store.out / "stats" / key
    if (d / "summary.json").is_file():
        return load_stats(d)
    st = spec.statistics
    stats = collect_sharded(pool, records, records=True, scheme=st["scheme"], shard_size=st["shard_size"],
                            token_selection=st["token_selection"], k=st["k"], batch_size=st["batch_size"],
                            max_tokens=st["max_tokens"], buckets=st["buckets"], progress=progress,
                            meta={"model": model, "statistics_key": key})
    save_stats(stats, d)
    return stats


def default_pool_factory(spec: SweepSpec, use_ray: bool, workers: int | None) -> Callable:
    res = spec.resources()
    n = workers or spec.workers.get("count", 1)

    def make(model: str):
        if use_ray:
            return RayPool(model, n, res, spec.dtype)
        return LocalPool(model, spec.dtype, res.mesh)

    return make


def run_sweep(spec: SweepSpec, out, *, ray: str | None = None, workers: int | None = None, progress: bool = False,
              pool_factory: Callable | None = None, close_pools: bool | None = None,
              on_condition: Callable | None = None, flush_seconds: float = 30.0,
              replace: bool = False) -> SweepResult:
    """Run (or resume) `spec` into directory `out`; see the module docstring.

    ray: None (no Ray unless `pool_factory` says otherwise), "local" or a cluster address.
    pool_factory(model) -> pool: overrides the pools (tests pass one that reuses live actors; such
    pools are not closed unless close_pools=True). on_condition(condition, rows) runs after each
    condition is stored (an exception there, e.g. KeyboardInterrupt, stops the sweep; finished
    conditions stay). A directory that holds another spec's sweep is refused unless replace=True."""
    t0 = time.perf_counter()
    conditions = spec.conditions()
    store = SweepStore(out, conditions, flush_seconds)
    store.check_spec(spec, replace)
    if ray:
        from jaxvalues.distributed.cluster import connect

        n = workers or spec.workers.get("count", 1)
        connect(ray, num_cpus=max(int(spec.resources().num_cpus * n), 1) if ray == "local" else None)
    if close_pools is None:
        close_pools = pool_factory is None
    factory = pool_factory or default_pool_factory(spec, bool(ray), workers)
    store.write_spec(spec)
    done_before = store.finished()
    result = SweepResult(str(store.out), skipped=[c.id for c in conditions if c.id in done_before])
    pending = store.pending()
    records = None
    try:
        with ProgressBar(len(conditions), "conditions", "sweep", enabled=progress, done=len(done_before)) as bar:
            for model in spec.models:
                todo = [c for c in pending if c.model == model]
                if not todo:
                    continue
                if records is None:
                    records = _load_records(spec)
                pool = factory(model)
                try:
                    _run_model(spec, model, todo, pool, store, records, result, bar, on_condition)
                finally:
                    if close_pools:
                        pool.close()
    finally:
        store.flush()
        result.seconds = round(time.perf_counter() - t0, 3)
    if result.failed:
        first = store.failures[result.failed[0]]
        msg = (f"{len(result.failed)} of {len(conditions)} conditions failed for good (see "
               f"{store.out / 'failures.json'}); first: {first['error']}")
        if first.get("user_error"):  # a setting to fix: one line (the traceback is in failures.json)
            raise SweepFailed(f"{spec.source or 'sweep spec'}: {msg}")
        raise SweepFailed(f"{msg}\n--- remote traceback ---\n{first['remote_traceback'].rstrip()}")
    return result


def _run_model(spec, model, todo, pool, store, records, result, bar, on_condition):
    from jaxvalues.distributed.evaluate import SweepContext
    from jaxvalues.distributed.shards import fingerprint

    act, ev = records
    stats = model_statistics(spec, model, pool, store, act, progress=False)
    ctx = SweepContext(key=fingerprint({"stats": spec.statistics_key(model), "settings": spec.settings()})[:16],
                       stats=stats, records=ev, settings=spec.settings())
    ctx_ref = pool.put(ctx)
    calls = [(c.label, (c.to_dict(), ctx_ref)) for c in todo]
    by_label = {c.label: c for c in todo}

    def on_result(label, rows):
        c = by_label[label]
        store.add(c.id, rows)
        result.computed.append(c.id)
        bar.advance()
        if on_condition is not None:
            on_condition(c, rows)

    def on_error(label, failure):
        c = by_label[label]
        store.fail(c, failure)
        result.failed.append(c.id)
        bar.advance(failed=True)

    pool.map("run_condition", calls, on_result, on_error)

