"""`jaxvalues identify`: find value neurons and write a NeuronSet Parquet file.

    jaxvalues identify --stats DIR --method vape|contrast --out FILE [--json] [options]
    jaxvalues identify --method attribution|mask --model M --dataset D --out FILE [--json] [options]

vape: LAPE selection over the 12 values, or (stance statistics) the authors' support/conflict
variant with --kind decision|semantic|both. contrast: each value vs the rest (support vs
conflict for stance statistics). attribution / mask need a model and evaluation dilemmas.
`--json` prints counts, layer histograms, the overlap matrix and the method report on stdout.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("identify", help="identify value-specific neurons (VAPE, contrast, attribution, mask)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=("vape", "contrast", "attribution", "mask"))
    p.add_argument("--out", required=True, help="output NeuronSet .parquet")
    p.add_argument("--stats", help="statistics directory from `jaxvalues collect` (vape, contrast)")
    p.add_argument("--values", help="comma-separated value ids (default: all with data)")
    p.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    g = p.add_argument_group("vape")
    g.add_argument("--filter-rate", type=float, default=0.95)
    g.add_argument("--top-rate", type=float, default=0.01, help="fraction of layers × neurons kept (all methods)")
    g.add_argument("--bar-ratio", type=float, default=0.95, help="activation_bar_ratio")
    g.add_argument("--kind", choices=("decision", "semantic", "both"), default="both",
                   help="neuron kind for stance statistics (decision 0.95, semantic 0.50)")
    g = p.add_argument_group("contrast")
    g.add_argument("--metric", choices=("effect", "mean", "rms"), default="effect")
    g.add_argument("--direction", choices=("positive", "both"), default="positive")
    g.add_argument("--top-k", type=int, help="at most this many neurons per value (contrast, attribution, mask)")
    g = p.add_argument_group("attribution / mask")
    g.add_argument("--model", help="model for attribution / mask")
    g.add_argument("--dataset", nargs="+", help="evaluation records: file(s) or 'builtin'")
    g.add_argument("--lang", choices=("zh", "en"))
    g.add_argument("--max-records", type=int, help="at most this many dilemmas (round-robin over values)")
    g.add_argument("--ig", action="store_true", help="integrated gradients instead of attribution patching")
    g.add_argument("--steps", type=int, help="IG steps (default 16) or mask training steps (default 200)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--l1", type=float, default=1e-3, help="mask L1 penalty")
    g.add_argument("--min-ratio", type=float, help="keep scores >= ratio × the value's best (IG: 0.2)")
    g.add_argument("--dtype", default="float32")
    g.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of dilemma pairs (split by pair_id, per value) the method trains on; the rest is "
                        "held out for `evaluate`, which drops the training pairs (default 0.5)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the pair_id split")
    p.set_defaults(func=cmd_identify)


def _check_args(args):
    """Refuse bad numbers and an unusable --out before any work (loading, statistics, training)."""
    from pathlib import Path

    from jaxvalues.errors import ConfigError

    for name in ("top_k", "steps", "batch_size", "max_records"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for flag, v in (("--filter-rate", args.filter_rate), ("--bar-ratio", args.bar_ratio)):
        if not 0 < v <= 1:
            raise ConfigError(f"{flag} must be in (0, 1], got {v}")
    if not args.l1 >= 0:
        raise ConfigError(f"--l1 must be >= 0, got {args.l1}")
    if args.min_ratio is not None and not 0 <= args.min_ratio <= 1:
        raise ConfigError(f"--min-ratio must be in [0, 1], got {args.min_ratio}")
    if not 0 < args.top_rate <= 1:
        raise ConfigError(f"--top-rate must be in (0, 1], got {args.top_rate}")
    from jaxvalues.outputs import check_output

    out = Path(args.out).expanduser()
    check_output(args.out, file=True, expect=f"a NeuronSet file path such as {out / 'neurons.parquet'}")


def _save(ns, out) -> "Path":
    """Atomic save (tmp + rename); if that fails, save beside the working directory and say where."""
    import os
    from pathlib import Path

    from jaxvalues.errors import JaxValuesError

    out = Path(out).expanduser()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        ns.save(tmp)
        os.replace(tmp, out)
        return out
    except OSError as e:
        tmp.unlink(missing_ok=True)
        fallback = Path.cwd() / f"identify-{os.getpid()}-{out.name or 'neurons.parquet'}"
        try:
            ns.save(fallback)
        except OSError:
            raise JaxValuesError(f"--out {out}: could not write ({e.strerror or e}); the neurons could not be saved anywhere") from None
        raise JaxValuesError(f"--out {out}: could not write ({e.strerror or e}); the neurons were saved to {fallback}") from None


def _values(args):
    return [v.strip() for v in args.values.split(",")] if args.values else None


def _eval_records(args):
    from jaxvalues.data.io import load_records
    from jaxvalues.errors import ConfigError
    from jaxvalues.stats.records import interleave_by_value

    if not args.model or not args.dataset:
        raise ConfigError(f"--method {args.method} needs --model and --dataset (evaluation dilemmas)")
    from jaxvalues.identify.neuronset import split_by_pair

    recs = load_records(args.dataset, kind="evaluation", lang=args.lang, values=_values(args))
    train, held = split_by_pair(recs, args.train_fraction, args.split_seed)
    if not train or not held:
        raise ConfigError(f"{' '.join(args.dataset)}: --train-fraction {args.train_fraction} leaves "
                          f"{len(train)} training and {len(held)} held-out dilemmas; both must be non-empty")
    args._split = {"dataset": list(args.dataset), "fraction": args.train_fraction, "seed": args.split_seed,
                   "trained_on_pair_ids": sorted({r.pair_id for r in train}),
                   "held_out_pair_ids": sorted({r.pair_id for r in held})}
    return interleave_by_value(train, args.max_records)


def run(args: argparse.Namespace):
    """-> (NeuronSet, method report)."""
    from jaxvalues.errors import ConfigError

    if args.method in ("vape", "contrast"):
        if not args.stats:
            raise ConfigError(f"--method {args.method} needs --stats DIR (from `jaxvalues collect`)")
        from jaxvalues.stats.checkpoint import load_stats

        stats = load_stats(args.stats)
        if args.method == "vape":
            from jaxvalues.identify.vape import stance_neurons, stance_values, vape

            rates = dict(top_rate=args.top_rate)
            if stance_values(stats):
                kinds = ("decision", "semantic") if args.kind == "both" else (args.kind,)
                return stance_neurons(stats, _values(args), kinds, **rates)
            vals = _values(args)
            res = vape(stats, vals, filter_rate=args.filter_rate, activation_bar_ratio=args.bar_ratio, **rates)
            return res.to_neuronset(), res.report()
        from jaxvalues.identify.contrast import contrast

        return contrast(stats, args.metric, _values(args), top_rate=args.top_rate, top_k=args.top_k,
                        direction=args.direction)
    import jaxvalues as jv

    records = _eval_records(args)
    lm = jv.load_model(args.model, dtype=args.dtype)
    if args.method == "attribution":
        from jaxvalues.identify.attribution import attribute_records

        res = attribute_records(lm, records, method="ig" if args.ig else "patching", steps=args.steps or 16,
                                batch_size=args.batch_size)
        min_ratio = args.min_ratio if args.min_ratio is not None else (0.2 if args.ig else None)
        ns = res.to_neuronset(top_rate=args.top_rate, top_k=args.top_k, min_ratio=min_ratio)
        return ns, {"method": res.method, "rows": {g: int(c) for g, c in zip(res.groups, res.counts)},
                    "mean_logodds": float(res.logodds.mean())}
    from jaxvalues.identify.mask import learn_masks_records

    ns, rep = learn_masks_records(lm, records, _values(args), steps=args.steps or 200, l1=args.l1,
                                  batch_size=args.batch_size)
    if args.top_k:
        ns = ns.filter(top=args.top_k)
    return ns, rep


def _no_data(report) -> list[str]:
    """Values a method report says had no activation data / evaluation rows."""
    if not isinstance(report, dict):
        return []
    out = [str(v) for v in report.get("no_data", []) or []]
    out += [str(k) for k, v in report.items() if isinstance(v, dict) and "skipped" in v]
    return out


def cmd_identify(args: argparse.Namespace) -> int:
    _check_args(args)
    ns, report = run(args)
    split = getattr(args, "_split", None)
    if split is not None:  # evaluation dilemmas the method trained on: `evaluate` leaves them out
        ns.info["split"] = split
        report = {**(report or {}), "split": {k: (len(v) if isinstance(v, list) and k.endswith("ids") else v)
                                              for k, v in split.items()}}
    path = _save(ns, args.out)
    hist = {v: h.tolist() for v, h in ns.layer_histogram().items()}
    values, overlap = ns.overlap()
    info = {"out": str(path.resolve()), "method": args.method, "rows": len(ns), "counts": ns.counts(),
            "layer_histogram": hist, "overlap": {"values": values, "jaccard": overlap.round(4).tolist()},
            "report": report}
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False, default=_jsonable))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.method} neurons -> {info['out']}", title_justify="left")
    t.add_column("value")
    t.add_column("neurons", justify="right")
    t.add_column("per layer")
    for v in ns.values:
        t.add_row(v, str(info["counts"][v]), " ".join(str(x) for x in hist[v]))
    con = Console()
    con.print(t)
    missing = _no_data(report)
    if missing:
        con.print(f"[yellow]no activation data / tokens for value(s): {', '.join(missing)} (nothing selected for them)[/]")
    if not len(ns):
        con.print("[yellow]no neurons selected[/]" + (f" (no data for {', '.join(missing)})" if missing else ""))
    return 0


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
