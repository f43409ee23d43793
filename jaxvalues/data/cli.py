"""`jaxvalues data validate|audit|stats|import|export|generate`.

Conventions: SRC arguments are paths or "builtin"; `--map Column=field` and `--set field=value`
apply to CSV/Parquet/XLSX inputs (see jaxvalues.data.io). Without `--lenient` any invalid row
fails the command with every problem listed (exit status 2); with it, bad rows are listed on
stderr, skipped and counted. `--json` prints machine-readable output on stdout. The generation
API key is read from the environment only (JAXVALUES_API_KEY or OPENAI_API_KEY), never a flag.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxvalues.errors import DataError


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="validate, summarize, import, export and generate datasets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(sp, filters=True):
        sp.add_argument("sources", nargs="+", metavar="SRC", help="data file(s) or 'builtin'")
        sp.add_argument("--format", choices=("jsonl", "csv", "parquet", "xlsx", "workbook"),
                        help="input format (default: from the extension; the authors' workbook is detected)")
        sp.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD",
                        help="map a tabular column to a record field (repeatable)")
        sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="value for a field the file lacks, e.g. lang=zh (repeatable)")
        sp.add_argument("--sheet", action="append", metavar="NAME", help="XLSX sheet(s) to read (default: all)")
        sp.add_argument("--lenient", action="store_true", help="skip invalid rows (listed and counted)")
        if filters:
            sp.add_argument("--kind", choices=("activation", "evaluation"))
            sp.add_argument("--lang", choices=("zh", "en"))
            sp.add_argument("--values", help="comma-separated value ids or names")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("validate", help="check data files; list every problem")
    common(sp, filters=False)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("audit", help="check for text shortcuts: option lengths, give-away words, value words, duplicates")
    common(sp)
    sp.set_defaults(func=cmd_audit)

    sp = sub.add_parser("stats", help="counts per value, language, conflict type; token lengths")
    common(sp)
    sp.add_argument("--tokenizer", metavar="DIR", help="local Hugging Face tokenizer directory for token lengths")
    sp.set_defaults(func=cmd_stats)

    sp = sub.add_parser("import", help="convert CSV/Parquet/XLSX/the authors' workbook to canonical JSONL")
    common(sp)
    sp.add_argument("-o", "--out", required=True, help="output .jsonl")
    sp.add_argument("--id-prefix", default="cvoice", help="id prefix for rows of the authors' workbook")
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("export", help="write records as JSONL, CSV, Parquet or a saved datasets.Dataset")
    common(sp)
    sp.add_argument("-o", "--out", required=True, help="output file (or directory for --to dataset)")
    sp.add_argument("--to", choices=("jsonl", "csv", "parquet", "dataset"), help="default: from the extension")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("generate", help="generate records with an OpenAI-compatible endpoint (resumable)")
    sp.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    sp.add_argument("--model", required=True)
    sp.add_argument("-o", "--out", required=True, help="output .jsonl (appended; rerun to resume)")
    sp.add_argument("--kind", choices=("activation", "evaluation"), default="activation")
    sp.add_argument("--per-value", type=int, default=10)
    sp.add_argument("--values", help="comma-separated value ids or names (default: all 12)")
    sp.add_argument("--langs", default="zh,en")
    sp.add_argument("--conflicts", metavar="JSON", help='file {"value": [{"zh": ..., "en": ...}, ...]}')
    sp.add_argument("--topics-per-value", type=int, default=5)
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.add_argument("--max-retries", type=int, default=5)
    sp.add_argument("--temperature", type=float, default=0.9)
    sp.add_argument("--append", action="store_true",
                    help="allow writing into an existing file not made by `data generate` (its records are kept as is)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_generate)


def _pairs(items, flag) -> dict:
    out = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key.strip()] = val.strip()
    return out


def _read(args, lenient=None):
    from jaxvalues.data.io import read_records

    lenient = args.lenient if lenient is None else lenient
    res = read_records(args.sources if len(args.sources) > 1 else args.sources[0], format=args.format,
                       columns=_pairs(args.map, "--map"), defaults=_pairs(args.set, "--set"), sheets=args.sheet,
                       id_prefix=getattr(args, "id_prefix", "cvoice"), lenient=lenient)  # fmt: skip
    if res.problems and lenient and not getattr(args, "_quiet", False):
        from jaxvalues.data.validate import format_problems

        print(f"warning: skipped {res.skipped} bad row(s) ({len(res.problems)} problems):\n"
              f"{format_problems(res.problems)}", file=sys.stderr)  # fmt: skip
    return res


def _filtered(args, records):
    from jaxvalues.data.io import filter_records

    values = [v for v in args.values.split(",") if v.strip()] if getattr(args, "values", None) else None
    return filter_records(records, kind=getattr(args, "kind", None), lang=getattr(args, "lang", None), values=values)


def cmd_validate(args) -> int:
    from jaxvalues.data.summary import count_table
    from jaxvalues.data.validate import problems_error

    args._quiet = args.json or not args.lenient  # strict: the problems are listed once, in the error
    res = _read(args, lenient=True)
    counts = count_table(res.records)
    if args.json:
        print(json.dumps({"ok": not res.problems, "records": len(res.records), "skipped": res.skipped,
                          "problems": [str(p) for p in res.problems], "by_kind": counts["by_kind"],
                          "by_lang": counts["by_lang"]}, ensure_ascii=False, indent=1))  # fmt: skip
    if res.problems and not args.lenient:
        if args.json:
            return 2
        raise problems_error(", ".join(res.sources), res.problems)
    if not args.json:
        print(f"ok: {len(res.records)} valid records in {len(res.sources)} file(s)"
              + (f"; {res.skipped} bad row(s) skipped" if res.skipped else ""))  # fmt: skip
    return 0


def cmd_audit(args) -> int:
    """Exit 0 when every criterion passes, 1 when one fails, 2 for bad input (DataError)."""
    from jaxvalues.data.audit import audit, format_audit

    records = _filtered(args, _read(args).records)
    if not records:
        raise DataError(f"{', '.join(args.sources)}: no records to audit")
    res = audit(records)
    print(json.dumps(res, ensure_ascii=False, indent=1) if args.json else format_audit(res))
    return 0 if res["ok"] else 1


def load_tokenizer(path):
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"--tokenizer {path}: not a directory (expected a local Hugging Face tokenizer folder)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError with long messages
        raise DataError(f"--tokenizer {path}: cannot load a tokenizer there ({type(e).__name__}: {e})") from None


def cmd_stats(args) -> int:
    from jaxvalues.data.summary import format_summary, summarize

    records = _filtered(args, _read(args).records)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    s = summarize(records, tok)
    print(json.dumps(s, ensure_ascii=False, indent=1) if args.json else format_summary(s))
    return 0


def cmd_import(args) -> int:
    from jaxvalues.data.io import write_jsonl

    records = _filtered(args, _read(args).records)
    path = write_jsonl(records, args.out)
    msg = {"written": len(records), "out": str(path)}
    print(json.dumps(msg) if args.json else f"wrote {len(records)} records to {path}")
    return 0


def cmd_export(args) -> int:
    from jaxvalues.data import io

    to = args.to or {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(Path(args.out).suffix.lower())
    if to is None:
        raise DataError(f"-o {args.out}: cannot tell the format from the extension; pass --to jsonl|csv|parquet|dataset")
    records = _filtered(args, _read(args).records)
    if to == "dataset":
        io.to_dataset(records).save_to_disk(args.out)
    else:
        {"jsonl": io.write_jsonl, "csv": io.write_csv, "parquet": io.write_parquet}[to](records, args.out)
    msg = {"written": len(records), "out": args.out, "format": to}
    print(json.dumps(msg) if args.json else f"wrote {len(records)} records to {args.out} ({to})")
    return 0


def cmd_generate(args) -> int:
    from jaxvalues.data.chat import OpenAIChat
    from jaxvalues.data.generate import generate_records

    conflicts = None
    if args.conflicts:
        try:
            conflicts = json.loads(Path(args.conflicts).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"--conflicts {args.conflicts}: cannot read a JSON object ({e})") from None
    backend = OpenAIChat(args.base_url, args.model, timeout=args.timeout, max_retries=args.max_retries,
                         temperature=args.temperature)  # fmt: skip

    def progress(done, total):
        if not args.json:
            print(f"\r{done}/{total} pairs", end="", file=sys.stderr, flush=True)

    report = generate_records(backend, args.out, kind=args.kind, per_value=args.per_value,
                              values=args.values.split(",") if args.values else None,
                              langs=tuple(x.strip() for x in args.langs.split(",") if x.strip()),
                              conflicts=conflicts, topics_per_value=args.topics_per_value,
                              batch_size=args.batch_size, progress=progress, append=args.append)  # fmt: skip
    if not args.json:
        print(file=sys.stderr)
    out = {"written": report.written, "skipped_existing": report.skipped_existing,
           "failed": [list(f) for f in report.failed], "requests": report.requests}  # fmt: skip
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"wrote {report.written} records; {report.skipped_existing} pairs already present; "
              f"{len(report.failed)} failed; {report.requests} requests")  # fmt: skip
        for pid, why in report.failed:
            print(f"  failed {pid}: {why}", file=sys.stderr)
    return 1 if report.failed else 0
