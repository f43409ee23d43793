"""`jaxvalues evaluate`: behaviour shift under a neuron intervention, with controls.

    jaxvalues evaluate --model M --dataset D [--neurons FILE --value V --mode zero|mean|scale|steer
        [--gamma G] [--means FILE]] [--controls R] [--leakage] [--sweep SCORES.npy]
        [--protocol choice|generate] [--max-records N] [--no-perplexity] --out DIR [--json]

A targeted value (--neurons FILE --value V), in either protocol and any mode, runs on the
experiment engine (jaxvalues.evaluate.engine), the same code as `jaxvalues run`:
DIR/results.parquet (the tidy table), DIR/summary.json (per value × language cells: targeted vs
matched controls, excess, p-values, Holm/BH, verdict, minimum detectable excess) and, for the
generation protocol, DIR/replies.parquet (every reply with its parse status). Steer is tested
in the --alternative given (steering towards a value should raise support: --alternative
greater). Rate-matched controls (the default) need the collected statistics (--stats DIR) for
the firing rates; `--control-kind layer` matches on layer only. Without a targeted value (a
baseline, an unnamed set, a size sweep) DIR/per_dilemma.parquet, DIR/summary_groups.parquet and
DIR/summary.json are written by `jaxvalues.evaluate.experiment`.
--max-records N keeps the first N evaluation records of each value and language (file order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from jaxvalues.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="measure how switching neurons off (or steering them) changes "
                              "value-driven choices, against random controls")  # fmt: skip
    p.add_argument("--model", required=True, help="model directory, .gguf, packaged name or hub id")
    p.add_argument("--dataset", required=True, help='evaluation records (JSONL/CSV/Parquet/XLSX) or "builtin"')
    p.add_argument("--neurons", help="neuron-set file (NeuronSet or JSON {name: {layer: [neurons]}})")
    p.add_argument("--value", help="which set of --neurons to intervene on (value id; steer uses "
                   "'{value}-support' and '{value}-conflict')")  # fmt: skip
    p.add_argument("--mode", default="zero", choices=("zero", "mean", "scale", "steer"))
    p.add_argument("--gamma", type=float, help="scale factor for --mode scale (>1 amplifies)")
    p.add_argument("--gain", type=float, default=5.0, help="steer: multiplier on support-only neurons (default 5)")
    p.add_argument("--means", help="statistics file with per-neuron means, for --mode mean")
    p.add_argument("--controls", type=int, default=0, metavar="R", help="random control draws (e.g. 20)")
    from jaxvalues.evaluate.controls import CONTROL_KINDS
    from jaxvalues.evaluate.inference import ALTERNATIVES

    p.add_argument("--control-kind", default="rate_matched", choices=CONTROL_KINDS,
                   help="controls matched on layer and firing-rate bin (needs --stats), or on layer only")
    p.add_argument("--stats", metavar="DIR", nargs="+",
                   help="collected statistics (firing rates for rate-matched controls); several are merged")
    p.add_argument("--alternative", default="less", choices=ALTERNATIVES,
                   help="direction of the test, fixed before the run (less: the intervention lowers P(aligned))")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate for the Holm verdict")
    p.add_argument("--min-label-mass", type=float, default=0.5,
                   help="exclude dilemmas whose baseline P(A)+P(B) is below this")
    p.add_argument("--leakage", action="store_true", help="intervene on every value's set: 12×12 leakage matrix")
    p.add_argument("--sweep", metavar="SCORES", help="size sweep over top 0.1%%..5%% neurons of an [L, N] .npy "
                   "score (lower = more specific)")  # fmt: skip
    p.add_argument("--sweep-controls", type=int, default=0, metavar="R", help="random draws per sweep size")
    p.add_argument("--protocol", default="choice", choices=("choice", "generate"))
    p.add_argument("--max-records", type=int, metavar="N", help="first N records per value and language")
    p.add_argument("--lang", choices=("zh", "en"), help="only this language")
    p.add_argument("--orders", default="both", choices=("both", "aligned-first"),
                   help="option orders (generate: the authors used aligned-first)")
    p.add_argument("--max-new-tokens", type=int, default=250, help="generate: greedy decoding budget")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0, help="random controls and bootstrap")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for 95%% CIs")
    p.add_argument("--no-perplexity", action="store_true", help="skip the neutral-corpus perplexity check")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print the summary JSON to stdout")
    p.set_defaults(func=_cmd_evaluate)


def _limit(records, n):
    if n is None:
        return records
    from jaxvalues.evaluate.engine import select_records

    if isinstance(n, int) and n < 1:
        raise ConfigError(f"--max-records must be >= 1, got {n}")
    return select_records(records, {r.value for r in records}, {r.lang for r in records}, n)


def _drop_training_pairs(records, neurons_path):
    """Identification never sees what is evaluated: a neuron set trained on dilemmas (attribution,
    mask) records their pair_ids; those dilemmas are left out here, with a count on stderr."""
    if not neurons_path:
        return records
    try:
        from jaxvalues.identify.neuronset import NeuronSet

        info = NeuronSet.load(neurons_path).info
    except Exception:  # noqa: BLE001 - a JSON neuron file has no training record
        return records
    used = set((info.get("split") or {}).get("trained_on_pair_ids") or ())
    if not used:
        return records
    kept = [r for r in records if r.pair_id not in used]
    sys.stderr.write(f"held out: {len(records) - len(kept)} dilemmas the neuron set was trained on are left out; "
                     f"{len(kept)} remain\n")
    if not kept:
        raise ConfigError(f"{neurons_path}: every evaluation dilemma was used to identify these neurons; "
                          "evaluate on other dilemmas (identify --train-fraction keeps some held out)")
    return kept


def _check_args(args) -> None:
    """Every argument checked before any work (one line each, naming the flag)."""
    for flag in ("controls", "sweep_controls"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected an integer ≥ 0, got {getattr(args, flag)}")
    for flag in ("batch_size", "bootstrap", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha: expected a number in (0, 1), got {args.alpha}")
    if not 0 <= args.min_label_mass < 1:
        raise ConfigError(f"--min-label-mass: expected a number in [0, 1), got {args.min_label_mass}")
    if args.gamma is not None and not np.isfinite(args.gamma):
        raise ConfigError(f"--gamma: expected a finite number, got {args.gamma}")
    from jaxvalues.outputs import check_output

    out = check_output(args.out)
    if (out / "stages.json").exists():
        raise ConfigError(f"--out {out}: holds a `jaxvalues run` directory (stages.json); writing evaluate's "
                          "summary.json there would break that run: choose another directory")


def _neuron_inputs(args, lm):
    from jaxvalues.evaluate.sources import load_means, load_neuron_sets, pick_set

    if args.neurons is None:
        for flag in ("value", "means"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag} needs --neurons FILE")
        if args.leakage:
            raise ConfigError("--leakage needs --neurons FILE with one set per value")
        return {}
    sets = load_neuron_sets(args.neurons)
    out: dict = {"sets": sets}
    if args.value:
        from jaxvalues.data.values import get_value

        v = get_value(args.value).id
        out["value"] = v
        if args.mode == "steer":
            out["target"] = pick_set(sets, f"{v}-support", args.neurons)
            out["conflict"] = pick_set(sets, f"{v}-conflict", args.neurons)
        else:
            out["target"] = pick_set(sets, v, args.neurons)
    elif len(sets) == 1 and args.mode != "steer":
        from jaxvalues.data.values import find_value

        name, out["target"] = next(iter(sets.items()))
        if find_value(name) is not None:  # a set named by a value: measure on that value's dilemmas
            out["value"] = find_value(name).id
    elif not args.leakage:
        raise ConfigError(f"{args.neurons} holds several sets ({', '.join(sorted(sets))}): pick one with --value")
    if args.mode == "mean":
        if not args.means:
            raise ConfigError("--mode mean needs --means FILE (collected statistics)")
        out["means"] = load_means(args.means)
    if args.mode == "scale" and args.gamma is None:
        raise ConfigError("--mode scale needs --gamma G")
    if args.leakage:
        from jaxvalues.data.values import VALUE_IDS

        out["leakage"] = {v: sets[v] for v in VALUE_IDS if v in sets}
        if not out["leakage"]:
            raise ConfigError(f"{args.neurons}: --leakage needs sets named by value ids; the file has {sorted(sets)}")
    return out


def _cmd_evaluate(args) -> int:
    import jaxvalues as jv
    from jaxvalues.data.io import load_records
    from jaxvalues.evaluate import experiment
    from jaxvalues.evaluate.controls import SWEEP_FRACTIONS
    from jaxvalues.evaluate.sources import load_scores

    _check_args(args)
    out_dir = Path(args.out)
    records = _limit(load_records(args.dataset, kind="evaluation", lang=args.lang), args.max_records)
    if not records:
        raise ConfigError(f"{args.dataset}: no evaluation records" + (f" in {args.lang}" if args.lang else ""))
    records = _drop_training_pairs(records, args.neurons)
    lm = jv.load_model(args.model, dtype=args.dtype)
    ni = _neuron_inputs(args, lm)
    present = sorted({r.value for r in records})
    if ni.get("value") and ni["value"] not in present:
        raise ConfigError(f"{args.dataset}: no evaluation records of value {ni['value']!r} to measure the "
                          f"targeted effect on (the records have: {', '.join(present)})")
    if ni.get("target") is not None and ni.get("value") and not args.sweep:
        return _engine(args, lm, records, ni, out_dir)
    if args.controls and args.control_kind == "rate_matched":
        raise ConfigError("rate-matched controls are built for a targeted --value; use --control-kind layer here")
    out_dir.mkdir(parents=True, exist_ok=True)
    conds = experiment.build_conditions(
        lm, target=ni.get("target"), mode=args.mode, gamma=args.gamma, means=ni.get("means"),
        conflict=ni.get("conflict"), gain=args.gain, controls=args.controls, seed=args.seed,
        leakage_sets=ni.get("leakage"), sweep_scores=load_scores(args.sweep) if args.sweep else None,
        sweep_fractions=SWEEP_FRACTIONS, sweep_controls=args.sweep_controls)
    orders = ("aligned_first", "aligned_second") if args.orders == "both" else ("aligned_first",)
    replies = None
    if args.protocol == "choice":
        from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts, evaluate_choice

        prompts = build_choice_prompts(records, lm.tokenizer, orders=orders, pad_id=lm.pad_id)
        scorer = ChoiceScorer(lm, args.batch_size)
        table = evaluate_choice(lm, prompts, conds, scorer=scorer)
        compilations = scorer.compilations()
    else:
        from jaxvalues.evaluate.support import build_support_prompts, evaluate_support

        prompts = build_support_prompts(records, lm.tokenizer, orders=orders, pad_id=lm.pad_id)
        table, replies = evaluate_support(lm, prompts, conds, max_new_tokens=args.max_new_tokens,
                                          batch_size=args.batch_size)
        replies.to_parquet(out_dir / "replies.parquet", index=False)
        compilations = None
    leak = {f"leak:{v}": v for v in (ni.get("leakage") or {})}
    summary, groups = experiment.summarize_run(table, args.protocol, value=ni.get("value"), n_boot=args.bootstrap,
                                               seed=args.seed, replies=replies, leakage_values=leak or None)
    summary.update(model=str(args.model), dataset=str(args.dataset), mode=args.mode if "targeted" in conds else None,
                   gamma=args.gamma, control_draws=args.controls, seed=args.seed, compilations=compilations)
    if "targeted" in conds and not args.no_perplexity:
        from jaxvalues.evaluate.perplexity import perplexity_table, summarize_perplexity

        ppl = perplexity_table(lm, {"baseline": None, "targeted": conds["targeted"]}, batch_size=args.batch_size)
        ppl.to_parquet(out_dir / "perplexity.parquet", index=False)
        summary["perplexity"] = experiment._clean(summarize_perplexity(ppl))
    table.to_parquet(out_dir / "per_dilemma.parquet", index=False)
    groups.to_parquet(out_dir / "summary_groups.parquet", index=False)
    text = json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False)
    (out_dir / "summary.json").write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    else:
        _print_human(summary, out_dir)
    return 0


def _engine(args, lm, records, ni, out_dir: Path) -> int:
    """A targeted value on the experiment engine (the same code path as `jaxvalues run`), for
    both protocols and every mode (steer: the value's support set ×gain, its conflict set 0)."""
    from jaxvalues.evaluate import engine

    rates = None
    if args.stats:
        from jaxvalues.evaluate.controls import firing_rates
        from jaxvalues.stats.checkpoint import load_stats

        parts = [load_stats(d) for d in args.stats]
        stats = parts[0]
        for other in parts[1:]:
            stats = stats.merge(other)
        rates = firing_rates(stats)
        if rates.shape != (lm.config.num_layers, lm.config.num_neurons):
            raise ConfigError(f"--stats {args.stats}: statistics of shape {rates.shape}, the model has "
                              f"[{lm.config.num_layers}, {lm.config.num_neurons}] neurons")
    elif args.controls and args.control_kind == "rate_matched":
        raise ConfigError("--controls: rate-matched controls need --stats DIR (collected statistics, for the "
                          "firing rates); or pass --control-kind layer")
    v = ni["value"]
    if args.mode == "steer" and ni.get("leakage"):
        raise ConfigError("--leakage: the leakage matrix is computed for zero/mean/scale modes, not steer")
    maps = {v: ni["target"], **{u: m for u, m in (ni.get("leakage") or {}).items() if u != v}}
    conds = engine.build_conditions(maps, mode=args.mode, controls=args.controls, control_kind=args.control_kind,
                                    rates=rates, num_neurons=lm.config.num_neurons, seed=args.seed,
                                    targeted_scope="all", control_values={v},
                                    conflict_maps={v: ni["conflict"]} if args.mode == "steer" else None)
    orders = ("aligned_first", "aligned_second") if args.orders == "both" else ("aligned_first",)
    kw = dict(gamma=args.gamma, means=ni.get("means"), gain=args.gain)
    replies, extra = None, {}
    if args.protocol == "choice":
        from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts

        prompts = build_choice_prompts(records, lm.tokenizer, orders=orders, pad_id=lm.pad_id)
        scorer = ChoiceScorer(lm, args.batch_size)
        table = engine.run_conditions(lm, prompts, conds, scorer=scorer, **kw)
        extra["compilations"] = scorer.compilations()
    else:
        from jaxvalues.evaluate.support import build_support_prompts, status_counts

        prompts = build_support_prompts(records, lm.tokenizer, orders=orders, pad_id=lm.pad_id)
        table, replies = engine.run_generate(lm, prompts, conds, batch_size=args.batch_size,
                                             max_new_tokens=args.max_new_tokens, **kw)
        extra["unparseable"] = status_counts(replies, dilemmas=True)
    summary = engine.summarize(table, values=list(maps), test_values=[v], alternative=args.alternative,
                               alpha=args.alpha, n_boot=args.bootstrap, seed=args.seed, min_label_mass=args.min_label_mass,
                               records=records, rates=rates, conditions=conds, control_kind=args.control_kind)
    summary.update(protocol=args.protocol, value=v, model=str(args.model), dataset=str(args.dataset), mode=args.mode,
                   gamma=args.gamma, control_draws=args.controls, seed=args.seed,
                   conditions=[c.name for c in conds], num_dilemmas=len(records), **extra)
    if not args.no_perplexity:
        from jaxvalues.evaluate.perplexity import perplexity_table, summarize_perplexity

        iv = conds[1].intervention(**kw)
        ppl = perplexity_table(lm, {"baseline": None, "targeted": iv}, batch_size=args.batch_size)
        summary["perplexity"] = engine.clean(summarize_perplexity(ppl))
    else:
        ppl = None
    summary["plain_summary"] = engine.plain_summary(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic(out_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    if replies is not None:
        _atomic(out_dir / "replies.parquet", lambda p: replies.to_parquet(p, index=False))
    if ppl is not None:
        _atomic(out_dir / "perplexity.parquet", lambda p: ppl.to_parquet(p, index=False))
    text = json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False)
    _atomic(out_dir / "summary.json", lambda p: p.write_text(text + "\n", encoding="utf-8"))
    if args.json:
        print(text)
    else:
        from rich.console import Console

        from jaxvalues.pipeline.cli import print_summary

        print_summary({**summary, "name": "evaluate", "no_neurons": [], "report": str(out_dir / "summary.json")},
                      Console(file=sys.stdout))
    return 0


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    tmp.replace(path)


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _print_human(s: dict, out_dir: Path) -> None:
    w = sys.stdout.write
    w(f"{s['protocol']} protocol, {s['num_dilemmas']} dilemmas, {len(s['conditions'])} conditions\n")
    m = s["headline_metric"]
    for row in s.get("targeted") or []:
        w(f"targeted ({s.get('value') or 'all values'}): {m} = {_fmt(row.get(m))} "
          f"(95% CI {_fmt(row.get(m + '_lo'))} .. {_fmt(row.get(m + '_hi'))})\n")
    c = (s.get("controls") or {}).get(m)
    if c:
        w(f"random controls (R={c['num_controls']}): {_fmt(c['control_mean'])} ± {_fmt(c['control_sd'])}, "
          f"z = {_fmt(c['z'])}, empirical p = {_fmt(c['p_empirical'])}\n")
    for cond, per in (s.get("perplexity") or {}).items():
        w(f"perplexity {cond}: {_fmt(per['all']['ppl'])} (×{_fmt(per['all'].get('ratio_to_baseline'))})\n")
    w(f"wrote {out_dir}/summary.json, per_dilemma.parquet, summary_groups.parquet\n")
