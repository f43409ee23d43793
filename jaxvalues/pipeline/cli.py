"""`jaxvalues run --config FILE [--out DIR] [--max-records N] [--json]`."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="collect → identify → evaluate → report, resumable, from one YAML config")
    p.add_argument("--config", required=True, help="experiment YAML (e.g. configs/experiments/demo.yaml)")
    p.add_argument("--out", help="run directory (default: the config's `out`, else runs/NAME)")
    p.add_argument("--model", help="override the config's model (HF dir, .gguf, packaged name)")
    p.add_argument("--max-records", type=int, help="cap records per value and language (quick / CI runs)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of tables")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from rich.console import Console

    from jaxvalues.pipeline.config import load_config
    from jaxvalues.pipeline.run import run_experiment

    over = {"model": args.model} if args.model else None
    cfg = load_config(args.config, over)
    out = args.out or cfg.get("out") or f"runs/{cfg['name']}"
    console = Console(stderr=True) if not args.json else None
    summary = run_experiment(cfg, out, max_records=args.max_records, console=console, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
        return 0
    print_summary(summary, Console(file=sys.stdout))
    return 0


def print_summary(summary: dict, console) -> None:
    from rich import box
    from rich.table import Table

    def num(x, fmt):
        return "n/a" if x is None or x != x else format(x, fmt)

    b = summary["baseline"]
    # fits an 80-column terminal: no vertical rules, one space between columns
    t = Table(title=f"{summary['name']}: value neurons switched off ({summary['mode']}) — Δ log-odds(aligned)",
              caption="n: neurons · d: held-out dilemmas · P0: baseline P(aligned) · Δ: targeted · ctrl: mean±sd "
                      "of controls · excess: Δ − ctrl · p: one-sided parametric · Holm: adjusted p",
              box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    for col in ("value", "la", "n", "d", "P0", "Δ", "ctrl", "excess", "p", "Holm", "verdict"):
        t.add_column(col, justify="left" if col in ("value", "verdict") else "right", no_wrap=True)
    for r in summary.get("cells") or []:
        ctrl = f"{num(r['control_mean'], '+.3f')}±{num(r['control_sd'], '.3f')}"
        t.add_row(r["value"][:12], r["lang"], str(r["neurons"]), str(r["dilemmas"]), num(r["baseline_p"], ".2f"),
                  num(r["targeted"], "+.3f"), ctrl, num(r["excess"], "+.3f"), num(r["p_param"], ".3f"),
                  num(r["p_holm"], ".3f"), "YES" if r["verdict"] != "not distinguishable" else "no")
    console.print(t)
    mde = summary.get("mde", {})
    console.print(f"minimum detectable excess (80% power, Holm): median {num(mde.get('median'), '.3f')}, "
                  f"max {num(mde.get('max'), '.3f')} log-odds")
    console.print(f"baseline: P(aligned) {b['p_aligned']:.3f}, median |log-odds| {b['median_abs_logodds']:.2f}, "
                  f"aligned-choice rate {b['aligned_rate']:.3f}, position bias {b['position_bias']:+.3f}, "
                  f"label mass {b['label_mass_mean']:.3f} ({b['low_label_mass']} dilemmas below the threshold)")
    for note in summary.get("notes") or []:
        console.print(f"note: {note}")
    if summary.get("no_neurons"):
        console.print(f"values without neurons: {', '.join(summary['no_neurons'])}")
    lk = summary["leakage"]
    if "diag_mean" in lk:
        console.print(f"leakage: mean |Δ| on the value's own dilemmas {lk['diag_mean']:.4f}, on other values' "
                      f"{lk['offdiag_mean']:.4f} (ratio {num(lk['ratio'], '.2f')}); {lk['rows_dominant']}/"
                      f"{lk['num_values']} values move their own dilemmas most")
    ppl = summary.get("perplexity") or {}
    if ppl:
        parts = []
        for cond, per in ppl.items():
            a = per.get("all", {})
            ratio = a.get("ratio_to_baseline")
            parts.append(f"{cond} {a.get('ppl', float('nan')):.2f}"
                         + (f" (×{ratio:.3f})" if ratio is not None and cond != "baseline" else ""))
        console.print("perplexity of neutral text: " + ", ".join(parts))
    console.print(f"report: [bold]{summary.get('report')}[/bold]")
