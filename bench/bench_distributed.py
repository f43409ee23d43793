"""Distributed collection: 2 Ray workers (1 thread each) vs 1 worker, and Ray's start-up overhead.

Uses jaxvalues.distributed: `connect("local")`, two pools of 2 workers each with
`WorkerResources(num_cpus=0.5, threads=1)`: one as configured by default (CPU workers pin
themselves to a core each, jaxvalues.distributed.affinity) and one with `pin_cpus=False` (XLA's
thread pools then span every core). `collect_sharded(pool, examples, ...)` uses the same shards
for both worker counts (the 1-worker run uses `pool.subset(1)`, the same process). Also times
plain in-process `collect` in the driver (JAX on all cores) over the same examples for reference.
Interleaved, median of --reps after a warm-up of each variant (which compiles in every worker).
Start-up overhead = `connect` (Ray start) and the pool's creation until every worker has loaded
the model (`pool.pids()`), against loading the model in-process.

    .venv/bin/python bench/bench_distributed.py [--records 16] [--shards 4] [--batch-size 4]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (all threads), seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / tick


def main(argv=None):
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=16, help="activation records (one value)")
    p.add_argument("--value", default="integrity")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4, help="rows per batch (= records per shard by default)")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process reference")
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.records = min(args.records, 8)
    info = C.machine_info()
    try:
        from jaxvalues.distributed import RayPool, WorkerResources, collect_sharded, connect, disconnect
    except ImportError as e:
        body = f"jaxvalues.distributed is not available ({e}); nothing measured."
        C.write_section(args, "distributed", "Distributed collection (Ray)", body, info)
        return

    t = time.perf_counter()
    lm = C.load_jax(args.model)
    load_s = time.perf_counter() - t
    examples, names, _subset = C.activation_examples(lm, [args.value], args.records)
    tokens = int(sum(len(e) for e in examples))
    kw = dict(token_selection="all", batch_size=args.batch_size)

    t = time.perf_counter()
    connect("local", num_cpus=2)
    ray_s = time.perf_counter() - t
    t = time.perf_counter()
    pinned = RayPool(args.model, size=2, resources=WorkerResources(num_cpus=0.5, threads=1))
    pids = {"pinned": pinned.pids()}
    pool_s = time.perf_counter() - t
    free = RayPool(args.model, size=2, resources=WorkerResources(num_cpus=0.5, threads=1, pin_cpus=False))
    pids["free"] = free.pids()
    winfo = pinned.info() + free.info()
    out, busy = {}, {}
    try:
        from jaxvalues.stats.collect import collect

        def ray_run(key, p, kind):
            def run():
                c0, t0 = cpu_seconds(pids[kind]), time.perf_counter()
                out[key] = collect_sharded(p, examples, names, shards=args.shards, **kw)
                busy.setdefault(key, []).append((cpu_seconds(pids[kind]) - c0) / (time.perf_counter() - t0))
            return run

        k1, k2 = "Ray, 1 worker (default: pinned to 1 core)", "Ray, 2 workers (default: pinned, 1 core each)"
        u1, u2 = "Ray, 1 worker, pin_cpus=false", "Ray, 2 workers, pin_cpus=false"
        variants = {k1: ray_run(k1, pinned.subset(1), "pinned"), k2: ray_run(k2, pinned, "pinned"),
                    u1: ray_run(u1, free.subset(1), "free"), u2: ray_run(u2, free, "free")}
        if not args.no_inprocess:
            variants["in-process collect (driver, all cores)"] = lambda: out.__setitem__("local", collect(
                lm, examples, names, **kw))
        times = C.interleaved(variants, args.reps)
    finally:
        pinned.close()
        free.close()
        disconnect()
    med = {k: C.median(v) for k, v in times.items()}
    rows = [[k, f"{med[k]:.2f}", C.spread(times[k]), tokens / med[k],
             f"{C.median(busy[k]):.2f}" if k in busy else "-",
             f"{med[k1] / med[k]:.2f}×", f"{med[u1] / med[k]:.2f}×"] for k in variants]
    tab = C.table(["variant", "median s", "range s", "tokens/s", "worker CPU s per wall s",
                   "vs 1 pinned worker", "vs 1 unpinned worker"], rows)
    same = all(out[k].equals(out[k1]) for k in out)
    cores = ", ".join(f"pid {w['pid']}: {w.get('cpu_cores')}" for w in winfo)
    body = f"""
Model `{args.model}` (float32), {len(examples)} activation records of {args.value} ({tokens:,} tokens), {args.shards}
shards, batch size {args.batch_size}, token selection "all"; {args.reps} timed reps after 1 warm-up, interleaved.
Workers: XLA_FLAGS `{winfo[0].get('xla_flags', '')}`; claimed cores ({cores}).

{tab}

- speed-up, 2 workers vs 1, `WorkerResources(num_cpus=0.5, threads=1)` as configured by default (each CPU
  worker pins itself to its own core): **{med[k1] / med[k2]:.2f}×**
- the same with `pin_cpus=false` (XLA's thread pools span both cores in every worker): {med[u1] / med[u2]:.2f}×
- "worker CPU s per wall s" = CPU time of the worker processes / wall time: how many cores the Ray workers really
  kept busy (1 worker × 1 thread should read ≤ 1.0).
- Ray start-up overhead: `connect("local")` {ray_s:.1f} s + pool of 2 workers until both loaded the model
  {pool_s:.1f} s (model load in each worker: {', '.join(str(w.get('load_seconds')) + ' s' for w in winfo[:2])}), vs
  {load_s:.1f} s to load the model in-process.
- statistics identical (bit for bit) across all variants{' (in-process included)' if 'local' in out else ''}: {same}
"""
    C.write_section(args, "distributed", "Distributed collection (Ray)", body, info,
                    {"times": times, "ray_start_s": ray_s, "pool_start_s": pool_s, "load_s": load_s})


if __name__ == "__main__":
    main()
