"""Entry point that `ray job submit` runs on the head node of a jaxvalues cluster.

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".venv", "runs", ".git"]}' -- python launch/entry.py COMMAND ...

Commands:
    info                                   the cluster's nodes and resources
    sweep --spec FILE --out DIR [--workers N] [--resources FILE]
                                           `jaxvalues sweep ... --ray auto` (single-host workers: CPU,
                                           GPU, or one whole single-host TPU VM each)
    collect --model M --dataset D --out DIR [--workers N] [--resources FILE]
                                           `jaxvalues collect ... --ray auto`
    tpu-sweep --spec FILE --out DIR --topology 4x4 --accelerator v6e [--slices S]
                                           a sweep whose workers are whole multi-host TPU slices
                                           (jaxvalues.distributed.tpu.SlicePool)

Inside a Ray job, RAY_ADDRESS points at the cluster, so "--ray auto" joins it. The working
directory uploaded by `--working-dir .` is on every worker's path, so the workers import this
checkout of jaxvalues; the cluster image must provide its dependencies (jax, flax, transformers,
...). --out must be storage the head node can write and keep (a mounted bucket or volume): the
sweep resumes from it when the job is submitted again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, when not pip-installed

COMMANDS = ("info", "sweep", "collect", "tpu-sweep")


def _with_ray(argv: list[str]) -> list[str]:
    return argv if "--ray" in argv else [*argv, "--ray", "auto"]


def cmd_info() -> int:
    from jaxvalues.distributed.cluster import connect, describe

    connect("auto")
    print(describe())
    return 0


def cmd_tpu_sweep(argv: list[str]) -> int:
    from jaxvalues.distributed.cli import _resources
    from jaxvalues.distributed.cluster import connect, describe
    from jaxvalues.distributed.spec import load_spec
    from jaxvalues.distributed.sweep import run_sweep
    from jaxvalues.distributed.tpu import SlicePool

    p = argparse.ArgumentParser(prog="entry.py tpu-sweep", description=cmd_tpu_sweep.__doc__)
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--topology", required=True, help="slice topology, e.g. 4x4 (v5e/v6e) or 2x2x2 (v4/v5p)")
    p.add_argument("--accelerator", required=True, help="TPU generation: v4, v5p, v5e (v5litepod), v6e")
    p.add_argument("--slices", type=int, default=1, help="slices = workers; shards and conditions spread over them")
    p.add_argument("--resources", help="YAML of per-host resources (num_cpus, env, mesh, ...)")
    p.add_argument("--ray", default="auto")
    args = p.parse_args(argv)
    spec = load_spec(args.spec)
    res = _resources(args, spec.resources())
    connect(args.ray)
    print(describe(), file=sys.stderr)

    def factory(model: str):
        return SlicePool(model, args.topology, args.accelerator, args.slices, res, spec.dtype)

    result = run_sweep(spec, args.out, progress=True, pool_factory=factory, close_pools=True)
    print(f"{len(result.computed)} computed, {len(result.skipped)} skipped -> {result.out}/results.parquet")
    return 0


cmd_tpu_sweep.__doc__ = "Run a sweep spec with whole multi-host TPU slices as workers."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 1
    command, rest = argv[0], argv[1:]
    if command == "info":
        return cmd_info()
    if command == "tpu-sweep":
        from jaxvalues.errors import JaxValuesError

        try:
            return cmd_tpu_sweep(rest)
        except JaxValuesError as e:  # one line, like the CLI
            print(f"error: {e}", file=sys.stderr)
            return 2
    from jaxvalues.cli import main as cli_main

    return cli_main([command, *_with_ray(rest)])


if __name__ == "__main__":
    sys.exit(main())
