"""Distributed runs with Ray: sharded collection and resumable sweeps. The only package that imports
Ray (lazily: importing it costs nothing); everything it does also runs without Ray.

    from jaxvalues.distributed import connect, RayPool, LocalPool, collect_sharded, load_spec, run_sweep
    connect("local", num_cpus=4)                             # or connect("auto") / "ray://head:10001"
    with RayPool("path/to/model", size=4, resources=WorkerResources(num_cpus=1)) as pool:
        stats = collect_sharded(pool, records, records=True)  # == collect_records(lm, records) bit for bit
    run_sweep(load_spec("configs/sweeps/example.yaml"), "out/sweep", ray="local", workers=4)

Modules: resources.py (per-worker CPUs/GPUs/TPUs and env), cluster.py (start / join Ray),
shards.py (deterministic shards), worker.py (ModelWorker: loads a model once), pool.py (RayPool /
LocalPool, retries), collect.py (sharded collection, exact merge in shard order), spec.py (sweep
YAML -> conditions with content hashes), evaluate.py (one condition), store.py (atomic Parquet
output, resume), sweep.py (the sweep runner), progress.py, tpu.py (multi-host TPU slices), cli.py.
"""

from __future__ import annotations

from jaxvalues._lazy import lazy_exports

_LAZY = {
    "WorkerResources": "jaxvalues.distributed.resources",
    "connect": "jaxvalues.distributed.cluster",
    "disconnect": "jaxvalues.distributed.cluster",
    "RayStartError": "jaxvalues.distributed.cluster",
    "plan_shards": "jaxvalues.distributed.shards",
    "ModelWorker": "jaxvalues.distributed.worker",
    "RayPool": "jaxvalues.distributed.pool",
    "LocalPool": "jaxvalues.distributed.pool",
    "WorkerFailure": "jaxvalues.distributed.pool",
    "collect_sharded": "jaxvalues.distributed.collect",
    "SweepSpec": "jaxvalues.distributed.spec",
    "Condition": "jaxvalues.distributed.spec",
    "load_spec": "jaxvalues.distributed.spec",
    "run_sweep": "jaxvalues.distributed.sweep",
    "SweepFailed": "jaxvalues.distributed.sweep",
    "SweepStore": "jaxvalues.distributed.store",
    "SlicePool": "jaxvalues.distributed.tpu",
}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
