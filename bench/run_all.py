"""Run every benchmark (what `make bench` runs), each script in a fresh process, one after another.

    .venv/bin/python bench/run_all.py [--quick] [--model NAME_OR_DIR] [--only collect,eval] [--reps N]
        [--results bench/RESULTS.md]

Each script updates its own section of the results file. A full run on qwen2.5-0.5b with 2 cores
takes roughly an hour (the PyTorch baselines are most of it); --quick is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SCRIPTS = {
    "roofline": "bench_roofline.py",
    "collect": "bench_collect.py",
    "eval": "bench_eval.py",
    "memory": "bench_memory.py",
    "distributed": "bench_distributed.py",
    "profile": "bench_profile.py",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCRIPTS)}")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--results", default=None)
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")
    extra = []
    if args.quick:
        extra.append("--quick")
    for flag in ("model", "reps", "results"):
        if getattr(args, flag) is not None:
            extra += [f"--{flag}", str(getattr(args, flag))]
    status = {}
    for n in names:
        cmd = [sys.executable, str(HERE / SCRIPTS[n]), *extra]
        print(f"\n=== {n}: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent, env=os.environ.copy())
        status[n] = (rc, time.perf_counter() - t)
    if not args.quick or args.results:
        import summary

        summary.write(args.results or summary.C.RESULTS)
    print("\n=== summary")
    for n, (rc, dt) in status.items():
        print(f"{n:12s} {'ok' if rc == 0 else f'FAILED ({rc})':12s} {dt:7.1f} s")
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
