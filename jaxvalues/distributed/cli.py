"""`jaxvalues sweep` and the `--ray` path of `jaxvalues collect`.

    jaxvalues sweep --spec FILE --out DIR [--ray local|ADDRESS] [--workers N] [--dry-run] [--json]
    jaxvalues collect ... --ray local|ADDRESS [--workers N] [--shard-size S] [--resources FILE]

Without --ray everything runs in this process (no Ray). `--ray local` starts a private Ray
cluster on this machine; `--ray ADDRESS` joins one ("auto", "HOST:6379", "ray://HOST:10001").
Rerunning a sweep with the same --out resumes it: finished conditions are skipped.
The `collect` options are added to the statistics package's own `collect` command (this module is
registered after it); without --ray that command runs unchanged. This module imports neither Ray
nor JAX until a command runs.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a grid of intervention conditions (models × values × methods × "
                              "sizes × modes × languages × seeds), locally or on Ray; resumable",
                              description="Run (or resume) a sweep spec into DIR: one Parquet table of per-dilemma "
                              "results, one part file per finished condition.")  # fmt: skip
    p.add_argument("--spec", required=True, help="sweep spec (YAML), e.g. configs/sweeps/example.yaml")
    p.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    _ray_args(p)
    p.add_argument("--dry-run", action="store_true", help="list the conditions and what is finished; run nothing")
    p.add_argument("--replace", action="store_true", help="run in an --out that holds another spec's sweep (its "
                   "tables are rebuilt for this spec; finished conditions with the same id are kept)")
    p.add_argument("--flush-seconds", type=float, default=30.0, help="rebuild results.parquet at most this often")
    p.add_argument("--json", action="store_true", help="print a JSON summary, no progress bar")
    p.set_defaults(func=cmd_sweep)
    collect = subparsers.choices.get("collect")
    if collect is not None and "--ray" not in collect._option_string_actions:
        _ray_args(collect)
        collect.add_argument("--shard-size", type=int, default=256, help="records per shard (with --ray)")
        collect.set_defaults(func=_wrap_collect(collect.get_default("func")))


def _ray_args(p) -> None:
    p.add_argument("--ray", metavar="local|ADDRESS", help="run on Ray: 'local' starts a cluster on this machine, "
                   "ADDRESS joins one ('auto', HOST:6379, ray://HOST:10001)")  # fmt: skip
    p.add_argument("--workers", type=int, help="number of Ray workers (each holds the model; default: spec or 1)")
    p.add_argument("--resources", metavar="FILE", help="YAML of per-worker resources (see "
                   "jaxvalues/distributed/resources.py); default: the spec's workers.resources")  # fmt: skip


def _resources(args, base=None):
    from jaxvalues.distributed.resources import WorkerResources
    from jaxvalues.errors import ConfigError

    if not args.resources:
        return base or WorkerResources()
    import yaml

    try:
        with open(args.resources, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{args.resources}: cannot read resources ({e})") from None
    raw = raw.get("resources", raw) if isinstance(raw, dict) else raw
    return WorkerResources.from_config(raw, args.resources)


def _check_workers(args):
    from jaxvalues.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is not None and not args.ray:
        raise ConfigError("--workers needs --ray local|ADDRESS (without Ray everything runs in this process)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from jaxvalues.distributed.spec import load_spec
    from jaxvalues.distributed.store import SweepStore
    from jaxvalues.distributed.pool import LocalPool, RayPool
    from jaxvalues.distributed.sweep import run_sweep

    _check_workers(args)
    spec = load_spec(args.spec)
    res = _resources(args, spec.resources())
    conditions = spec.conditions()
    _check_out(args.out)
    if args.dry_run:
        store = SweepStore(args.out, conditions)
        store.check_spec(spec, args.replace)
        done = store.finished()
        info = {"conditions": len(conditions), "finished": len(done), "pending": len(conditions) - len(done),
                "models": spec.models}
        print(json.dumps(info, indent=2) if args.json else
              f"{info['conditions']} conditions ({info['finished']} finished, {info['pending']} to run)")
        return 0
    SweepStore(args.out, conditions).check_spec(spec, args.replace)  # before Ray starts
    n = args.workers or spec.workers.get("count", 1)
    factory = None
    if args.ray:
        from jaxvalues.distributed.cluster import connect

        connect(args.ray, num_cpus=max(int(res.num_cpus * n), 1) if args.ray == "local" else None)
        factory = lambda model: RayPool(model, n, res, spec.dtype)  # noqa: E731
    else:
        factory = lambda model: LocalPool(model, spec.dtype, res.mesh)  # noqa: E731
    result = run_sweep(spec, args.out, progress=not args.json, pool_factory=factory, close_pools=True,
                       flush_seconds=args.flush_seconds, replace=args.replace)
    info = {"out": result.out, "conditions": len(conditions), "computed": len(result.computed),
            "skipped": len(result.skipped), "failed": len(result.failed), "seconds": result.seconds}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['computed']} conditions computed, {info['skipped']} already finished, "
              f"{info['failed']} failed in {info['seconds']} s -> {result.out}/results.parquet")
    return 0


def _check_out(out: str) -> None:
    """--out must be a directory (or not exist yet) that can be written."""
    from jaxvalues.outputs import check_output

    check_output(out)


def _wrap_collect(original):
    def cmd(args: argparse.Namespace) -> int:
        if not args.ray:
            if args.workers is not None:
                _check_workers(args)
            return original(args)
        _check_workers(args)
        return _collect_ray(args)

    return cmd


def _collect_ray(args: argparse.Namespace) -> int:
    """`jaxvalues collect --ray`: the same records, conditions and output as the in-process command."""
    from jaxvalues.data.io import load_records
    from jaxvalues.distributed.cluster import connect
    from jaxvalues.distributed.collect import collect_sharded
    from jaxvalues.distributed.pool import RayPool
    from jaxvalues.errors import ConfigError
    from jaxvalues.stats.cli import save_and_report
    from jaxvalues.stats.records import interleave_by_value

    if args.batch_size < 1 or (args.max_records is not None and args.max_records < 1) or args.shard_size < 1:
        raise ConfigError("--batch-size, --max-records and --shard-size must be >= 1")
    values = [v.strip() for v in args.values.split(",")] if args.values else None
    records = load_records(args.dataset if len(args.dataset) > 1 else args.dataset[0], kind="activation",
                           lang=args.lang, values=values)
    records = interleave_by_value(records, args.max_records)
    res = _resources(args)
    n = args.workers or 1
    connect(args.ray, num_cpus=max(int(res.num_cpus * n), 1) if args.ray == "local" else None)
    chat = {"auto": None, "yes": True, "no": False}[args.chat]
    with RayPool(args.model, n, res, args.dtype) as pool:
        stats = collect_sharded(pool, records, records=True, scheme=args.scheme, chat=chat, shard_size=args.shard_size,
                                token_selection=args.token_selection, k=args.k, batch_size=args.batch_size,
                                max_tokens=args.max_tokens, progress=not args.json)
    stats.meta.update({"model": args.model, "dataset": list(args.dataset), "lang": args.lang,
                       "scheme": args.scheme, "records": len(records)})
    return save_and_report(stats, args)
