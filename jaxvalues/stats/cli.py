"""`jaxvalues collect`: stream an activation dataset through a model into a statistics directory.

    jaxvalues collect --model M --dataset D --out DIR [--scheme values|stance]
        [--token-selection content|all|rationale|last_k] [--k K] [--batch-size B] [--max-records R]
        [--lang zh|en] [--values v1,v2] [--dtype float32|bfloat16] [--json]

DIR is written with `save_stats` (orbax state + summary.json + summary.parquet). `--json` prints
the summary (tokens per condition, compilations, padding) on stdout and no progress bar.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="accumulate per-value neuron activation statistics",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF directory, .gguf, packaged name or hub id")
    p.add_argument("--dataset", required=True, nargs="+", help="activation records: file(s) or 'builtin'")
    p.add_argument("--out", required=True, help="output statistics directory")
    p.add_argument("--scheme", choices=("values", "stance"), default="values",
                   help="conditions: the 12 values, or value-support / value-conflict (24)")
    p.add_argument("--token-selection", choices=("content", "all", "rationale", "last_k"), default="content",
                   help="tokens counted: content = the record's story, action and rationale (default; no chat "
                   "template, field labels or question); all = every token; rationale = the rationale "
                   "(stance: the answer); last_k = the last K tokens")
    p.add_argument("--k", type=int, default=16, help="tokens counted per example with last_k")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=65536, help="max tokens per batch (rows × length)")
    p.add_argument("--max-records", type=int, help="use at most this many records (round-robin over values)")
    p.add_argument("--lang", choices=("zh", "en"))
    p.add_argument("--values", help="comma-separated value ids or names")
    p.add_argument("--dtype", default="float32", help="weight dtype (activations are float32 anyway)")
    p.add_argument("--chat", choices=("auto", "yes", "no"), default="auto", help="use the chat template")
    p.add_argument("--json", action="store_true", help="print a JSON summary, no progress bar")
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    import jaxvalues as jv
    from jaxvalues.data.io import load_records
    from jaxvalues.errors import ConfigError
    from jaxvalues.stats.records import collect_records, interleave_by_value

    if args.batch_size < 1 or (args.max_records is not None and args.max_records < 1):
        raise ConfigError("--batch-size and --max-records must be >= 1")
    values = [v.strip() for v in args.values.split(",")] if args.values else None
    records = load_records(args.dataset if len(args.dataset) > 1 else args.dataset[0], kind="activation",
                           lang=args.lang, values=values)
    records = interleave_by_value(records, args.max_records)
    lm = jv.load_model(args.model, dtype=args.dtype)
    chat = {"auto": None, "yes": True, "no": False}[args.chat]
    stats = collect_records(lm, records, scheme=args.scheme, token_selection=args.token_selection, k=args.k,
                            batch_size=args.batch_size, max_tokens=args.max_tokens, chat=chat,
                            progress=not args.json)
    stats.meta.update({"model": args.model, "dataset": list(args.dataset), "lang": args.lang})
    return save_and_report(stats, args)


def save_and_report(stats, args: argparse.Namespace) -> int:
    """Write `stats` to args.out, then print its summary (JSON with --json, else a table)."""
    from jaxvalues.stats.checkpoint import save_stats, summary

    out = save_stats(stats, args.out)
    info = summary(stats)
    info["out"] = str(out)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print_table(info)
    return 0


def _print_table(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rep = info["meta"].get("collect", {})
    t = Table(title=f"statistics -> {info['out']}", title_justify="left")
    t.add_column("condition")
    t.add_column("tokens", justify="right")
    for c, n in info["tokens"].items():
        t.add_row(c, f"{n:,}" if n else "[yellow]no data[/]")
    con = Console()
    con.print(t)
    con.print(f"{rep.get('examples', 0)} examples, {rep.get('batches', 0)} batches, "
              f"{rep.get('compilations', 0)} compilations {rep.get('batch_shapes')}, "
              f"padding {100 * rep.get('padding_fraction', 0):.1f}%, {rep.get('seconds', 0)} s")
    if info["clipped_values"]:
        con.print(f"[yellow]warning: {info['clipped_values']} activation values beyond ±2^30 were saturated[/]")
