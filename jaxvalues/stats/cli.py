"""`jaxvalues collect`: stream an activation dataset through a model into a statistics directory.

    jaxvalues collect --model M --dataset D --out DIR [--scheme values|stance|persona]
        [--token-selection content|all|rationale|last_k] [--k K] [--batch-size B] [--max-records R]
        [--lang zh|en] [--values v1,v2] [--dtype float32|bfloat16] [--json]

DIR is written with `save_stats` (orbax state + summary.json + summary.parquet). `--json` prints
the summary (tokens per condition, compilations, padding) on stdout and no progress bar.
--scheme persona: the authors' scheme (`jaxvalues.stats.persona`): the model answers the persona
prompt per record and stance, neurons counted over its answers (--max-new-tokens, default 500);
answers saved to --answers (default DIR.answers.jsonl beside DIR), reused on a rerun.
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
    p.add_argument("--scheme", choices=("values", "stance", "persona"), default="values",
                   help="conditions: the 12 values, or value-support / value-conflict (24; persona: over the "
                        "model's own answers)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="persona: answer length limit")
    p.add_argument("--answers", help="persona: answers JSONL (default: DIR.answers.jsonl beside --out)")
    p.add_argument("--token-selection", choices=("content", "all", "rationale", "last_k"), default="content",
                   help="tokens counted: content = the record's story, action and rationale (default; no chat "
                   "template, field labels or question); all = every token; rationale = the rationale "
                   "(every record needs one; stance: the answer); last_k = the last K tokens; persona counts "
                   "the generated answer")
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
    from jaxvalues.stats.records import check_selection, collect_records, interleave_by_value

    from jaxvalues.stats.checkpoint import check_stats_out

    for flag, v in (("--batch-size", args.batch_size), ("--max-records", args.max_records), ("--k", args.k),
                    ("--max-tokens", args.max_tokens)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    check_stats_out(args.out)
    values = [v.strip() for v in args.values.split(",")] if args.values else None
    records = load_records(args.dataset if len(args.dataset) > 1 else args.dataset[0], kind="activation",
                           lang=args.lang, values=values)
    records = interleave_by_value(records, args.max_records)
    check_selection(records, args.scheme, args.token_selection)  # before loading the model
    lm = jv.load_model(args.model, dtype=args.dtype)
    chat = {"auto": None, "yes": True, "no": False}[args.chat]
    if args.scheme == "persona":
        return _cmd_persona(lm, records, args, chat)
    stats = collect_records(lm, records, scheme=args.scheme, token_selection=args.token_selection, k=args.k,
                            batch_size=args.batch_size, max_tokens=args.max_tokens, chat=chat,
                            progress=not args.json)
    stats.meta.update({"model": args.model, "dataset": list(args.dataset), "lang": args.lang})
    return save_and_report(stats, args)


def _cmd_persona(lm, records, args, chat) -> int:
    from pathlib import Path

    from jaxvalues.stats.persona import collect_persona

    out = Path(args.out).expanduser()
    answers = args.answers or str(out.parent / f"{out.name}.answers.jsonl")
    stats = collect_persona(lm, records, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            answers_path=answers, chat=chat, progress=not args.json, max_tokens=args.max_tokens)
    stats.meta.update({"model": args.model, "dataset": list(args.dataset), "lang": args.lang})
    return save_and_report(stats, args)


def save_and_report(stats, args: argparse.Namespace) -> int:
    """Write `stats` to args.out, then print its summary (JSON with --json, else a table)."""
    import os
    from pathlib import Path

    from jaxvalues.errors import CheckpointError
    from jaxvalues.stats.checkpoint import save_stats, summary

    try:
        out = save_stats(stats, args.out)
    except (OSError, CheckpointError) as e:
        # the statistics are computed: never lose them to an unwritable --out
        fallback = Path.cwd() / f"jaxvalues-stats-{os.getpid()}"
        try:
            save_stats(stats, fallback)
        except (OSError, CheckpointError):
            raise CheckpointError(f"--out {args.out}: saving failed ({e}); the fallback {fallback} failed too") from None
        raise CheckpointError(f"--out {args.out}: saving failed ({e}); the statistics were saved to {fallback}") from None
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
