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
    from rich.table import Table

    b = summary["baseline"]
    t = Table(title=f"{summary['name']}: switching value neurons off ({summary['mode']}) — Δ P(aligned)")
    for col in ("value", "neurons", "baseline P", "targeted Δ", "95% CI", "random Δ (mean ± sd)", "z", "p"):
        t.add_column(col, justify="right" if col != "value" else "left")
    for r in summary["shift"]:
        t.add_row(r["value"], str(r["neurons"]), f"{r['baseline_p']:.3f}", f"{r['targeted']:+.4f}",
                  f"[{r['targeted_lo']:+.3f}, {r['targeted_hi']:+.3f}]",
                  f"{r['control_mean']:+.4f} ± {r['control_sd']:.4f}" if r["control_mean"] == r["control_mean"] else "n/a",
                  f"{r['z']:.2f}" if r["z"] == r["z"] else "n/a", f"{r['p']:.3f}" if r["p"] == r["p"] else "n/a")
    console.print(t)
    console.print(f"baseline: P(aligned) {b['p_aligned']:.3f}, aligned-choice rate {b['aligned_rate']:.3f}, "
                  f"position bias {b['position_bias']:+.3f}")
    if summary.get("no_neurons"):
        console.print(f"values without neurons: {', '.join(summary['no_neurons'])}")
    lk = summary["leakage"]
    if "ratio" in lk or "diagonal_mean" in lk:
        console.print("leakage: " + ", ".join(f"{k} {v:.4g}" for k, v in lk.items()
                                              if isinstance(v, (int, float)) and k not in ("values",)))
    if summary.get("perplexity"):
        for cond, per in summary["perplexity"].items():
            a = per.get("all", {})
            console.print(f"perplexity ({cond}): {a.get('ppl', float('nan')):.2f}"
                          + (f" (× {a['ratio_to_baseline']:.3f} of baseline)" if "ratio_to_baseline" in a else ""))
    console.print(f"report: [bold]{summary.get('report')}[/bold]")
