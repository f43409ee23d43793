"""`jaxvalues run (--config FILE | --preset authors) [--set KEY=VALUE ...] [--out DIR] [--max-records N] [--json]`."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="collect → identify → evaluate → report, resumable, from one YAML config")
    p.add_argument("--config", help="experiment YAML (e.g. configs/experiments/demo.yaml); needed unless --preset")
    p.add_argument("--preset", choices=("authors",),
                   help="start from a preset: 'authors' = the authors' published protocol (persona answers, "
                        "decision/semantic neurons, support-rate generation, zero and steer both ways)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one config field, e.g. --set evaluate.controls=19 (repeatable; VALUE is YAML)")
    p.add_argument("--out", help="run directory (default: the config's `out`, else runs/NAME)")
    p.add_argument("--model", help="override the config's model (HF dir, .gguf, packaged name)")
    p.add_argument("--max-records", type=int, help="cap records per value and language (quick / CI runs)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of tables")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from rich.console import Console

    from jaxvalues.errors import ConfigError
    from jaxvalues.pipeline.config import load_config, parse_set
    from jaxvalues.pipeline.run import run_experiment

    if args.config is None and args.preset is None:
        raise ConfigError("run: give --config FILE or --preset NAME (e.g. --preset authors)")
    over = parse_set(args.set)
    if args.model:
        over["model"] = args.model
    cfg = load_config(args.config, over or None, preset=args.preset)
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
    choice = summary.get("protocol", "choice") == "choice"
    modes = summary.get("modes") or [summary["mode"]]
    multi = len(modes) > 1
    metric = "Δ log-odds(aligned)" if choice else "Δ support for the aligned option (points)"
    fmt = ".3f" if choice else ".1f"
    # fits an 80-column terminal: no vertical rules, one space between columns
    t = Table(title=f"{summary['name']}: value neurons ({', '.join(modes)}) — {metric}",
              caption=f"n: neurons · d: held-out dilemmas · {'P0: baseline P(aligned)' if choice else 'S0: baseline support %'}"
                      " · Δ: targeted · ctrl: mean±sd of controls · excess: Δ − ctrl · p: one-sided parametric · "
                      "Holm: adjusted p",
              box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    cols = (("mode",) if multi else ()) + ("value", "la", "n", "d", "P0" if choice else "S0", "Δ", "ctrl", "excess",
                                           "p", "Holm", "verdict")
    for col in cols:
        t.add_column(col, justify="left" if col in ("mode", "value", "verdict") else "right", no_wrap=True)
    for r in summary.get("cells") or []:
        ctrl = f"{num(r['control_mean'], '+' + fmt)}±{num(r['control_sd'], fmt)}"
        b0 = num(r["baseline_p"], ".2f") if choice else num(r.get("baseline_support"), ".0f")
        row = [r["value"][: 9 if multi else 12], r["lang"], str(r["neurons"]), str(r["dilemmas"]), b0,
               num(r["targeted"], "+" + fmt), ctrl, num(r["excess"], "+" + fmt), num(r["p_param"], ".3f"),
               num(r["p_holm"], ".3f"), "YES" if r["verdict"] != "not distinguishable" else "no"]
        t.add_row(*([r.get("mode", "")[:8]] if multi else []), *row)
    console.print(t)
    mde = summary.get("mde", {})
    console.print(f"minimum detectable excess (80% power, Holm): median {num(mde.get('median'), fmt)}, "
                  f"max {num(mde.get('max'), fmt)} {'log-odds' if choice else 'points of support'}")
    if choice:
        console.print(f"baseline: P(aligned) {b['p_aligned']:.3f}, median |log-odds| {b['median_abs_logodds']:.2f}, "
                      f"aligned-choice rate {b['aligned_rate']:.3f}, position bias {b['position_bias']:+.3f}, "
                      f"label mass {b['label_mass_mean']:.3f} ({b['low_label_mass']} dilemmas below the threshold)")
    else:
        console.print(f"baseline: support for the aligned option {num(b.get('support_aligned'), '.1f')}%, favoured in "
                      f"{num(b.get('aligned_rate'), '.3f')} of dilemmas; {b.get('incomplete')} of {b.get('dilemmas')} "
                      "dilemmas not scored (a reply unparseable or not adding up to 100 ± 5)")
        allr = (summary.get("parse") or {}).get("all_replies")
        if allr:
            console.print("replies: " + ", ".join(f"{k} {v}" for k, v in allr.items()))
    auth = [r for r in summary.get("cells") or [] if r.get("authors_random_draws")]
    if auth:
        console.print("authors' random baseline (unmatched, beside the verdict): " + "; ".join(
            f"{(r['mode'] + ' ') if multi else ''}{r['value']}/{r['lang']} {num(r['authors_random_mean'], '+' + fmt)}"
            f" (p {num(r.get('p_vs_authors'), '.3f')})" for r in auth[:6]) + (" …" if len(auth) > 6 else ""))
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
