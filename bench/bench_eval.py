"""Ablation evaluation: 13 conditions (baseline + 12 value masks) × evaluation prompts × both orders.

jaxvalues (`ChoiceScorer.logits`: one jitted program, per-sequence intervention arrays, label rows
of the unembedding only) vs the PyTorch baselines of bench/torch_baselines.py: the naive one
(one forward per intervention with a zeroing hook and `logits[:, -1]`) and the careful one (base
model, label rows, jaxvalues' batches). Same prompts and label tokens, float32, same cores,
interleaved, median of --reps after a warm-up. Also counts XLA compilations (jax.monitoring's
backend-compile events) in the first 13-condition evaluation and in a second one with new masks.

Masks: the 12 value masks come from --neurons (a saved NeuronSet directory) when given, else random
masks of --mask-frac of all neurons (1% default; mask size does not change either side's cost).

    .venv/bin/python bench/bench_eval.py [--dilemmas 2] [--batch-size 4]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def random_masks(cfg, k: int, frac: float, seed: int):
    import numpy as np

    rs = np.random.RandomState(seed)
    total = cfg.num_layers * cfg.num_neurons
    size = max(1, int(round(frac * total)))
    out = []
    for _ in range(k):
        flat = rs.choice(total, size, replace=False)
        layers, neurons = np.divmod(flat, cfg.num_neurons)
        out.append({int(l): np.sort(neurons[layers == l]) for l in np.unique(layers)})
    return out


def row_flops(cfg, plan, prompts) -> dict:
    """Analytic forward FLOPs per scored row (2 per multiply-add, real tokens, dense attention over
    the keys each query sees in the implementation; label rows of the head neglected), mean over rows:
    unshared (every position of every layer), answer-only last layer, shared prefix + answer-only."""
    import numpy as np

    d, n, h, k, dh, l = (cfg.hidden_size, cfg.num_neurons, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.num_layers)
    mm = 2 * ((3 if cfg.gated_mlp else 2) * d * n + 2 * d * h * dh + 2 * d * k * dh)  # per token, layer
    kv = 2 * 2 * d * k * dh  # k/v projections only
    att = lambda t: 2 * 2 * h * dh * t  # noqa: E731  QK^T + PV of one query over t keys
    s = prompts.lengths.astype(np.float64)
    full = l * s * (mm + att(s))
    answer = (l - 1) * s * (mm + att(s)) + s * kv + (mm - kv) + att(s)
    shared = []
    for dd in range(len(prompts.meta)):
        rows = plan.slots[dd][plan.slots[dd] >= 0]
        lp = float(plan.lp[dd])
        pre = l * lp * (mm + att(lp)) / len(rows)
        for r in rows:
            ls = float(s[r] - lp)
            t = lp + ls
            shared.append(pre + (l - 1) * ls * (mm + att(t)) + ls * kv + (mm - kv) + att(t))
    return {"unshared": float(full.mean()), "answer_only": float(answer.mean()), "shared": float(np.mean(shared)),
            "mean_len": float(s.mean()), "mean_prefix": float(plan.lp.mean()),
            "mean_suffix": float(np.mean([s[r] - plan.lp[dd] for dd in range(len(prompts.meta))
                                          for r in plan.slots[dd] if r >= 0]))}


def prefix_comparison(lm, prompts, conds, batch_size: int, reps: int, log=print) -> dict:
    """Same rows, same process: full unshared scorer vs answer-only vs shared prefix + answer-only."""
    import time

    import numpy as np

    from jaxvalues.evaluate.choice import ChoiceScorer, _PrefixPlan

    variants = {"unshared": dict(share_prefix=False, answer_only=False),
                "answer_only": dict(share_prefix=False, answer_only=True),
                "shared": dict(share_prefix=True, answer_only=True)}
    out, times, comp = {}, {k: [] for k in variants}, {}
    scorers = {k: ChoiceScorer(lm, batch_size, **kw) for k, kw in variants.items()}
    for k, sc in scorers.items():  # warm-up: compiles
        c0 = sc._fn._cache_size() + sc._shared_fn._cache_size()
        out[k] = sc.logits(prompts, conds)
        comp[k] = sc._fn._cache_size() + sc._shared_fn._cache_size() - c0
    for _ in range(reps):  # interleaved
        for k, sc in scorers.items():
            t = time.perf_counter()
            sc.logits(prompts, conds)
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"times": times, "median": med, "compilations": comp,
           "ratio_shared": med["shared"] / med["unshared"], "ratio_answer_only": med["answer_only"] / med["unshared"],
           "max_diff": {k: float(np.abs(out[k] - out["unshared"]).max()) for k in variants},
           "flops": row_flops(lm.config, _PrefixPlan(prompts), prompts)}
    log(f"prefix comparison: {res['median']} ratio shared/unshared {res['ratio_shared']:.3f}, "
        f"answer-only/unshared {res['ratio_answer_only']:.3f}; max |diff| {res['max_diff']}; "
        f"compilations {comp}; FLOPs/row {res['flops']}")
    return res


def main(argv=None):
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--dilemmas", type=int, default=2,
                   help="evaluation dilemmas (zh/en alternating, one value each in turn); 0 = all 480")
    p.add_argument("--batch-size", type=int, default=4,
                   help="sequences per forward for every variant (4 prompts × 13 conditions fill 13 batches of 4)")
    p.add_argument("--mask-frac", type=float, default=0.01)
    p.add_argument("--neurons", default=None, help="NeuronSet directory for the 12 value masks")
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--flops-only", action="store_true",
                   help="print the analytic FLOPs per scored row of each scorer path for these prompts and exit")
    p.add_argument("--prefix-only", action="store_true",
                   help="only compare the scorer's paths (unshared / answer-only / shared prefix) on the same rows")
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.dilemmas = min(args.dilemmas, 2)
    info = C.machine_info()
    torch = C.setup_torch(args.threads)  # noqa: F841

    import jax
    import numpy as np

    import jaxvalues as jv
    from jaxvalues.data.values import VALUE_IDS
    from jaxvalues.evaluate.batching import ConditionBank, bucket, flat_batches
    from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts, choice_table, p_aligned_rows
    from torch_baselines import careful_choice_logits, naive_choice_logits

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda ev, dur, **kw: compiles.append((kw.get("fun_name", ""), dur)) if ev == BACKEND_COMPILE else None)

    lm = C.load_jax(args.model)
    cfg = lm.config
    recs = C.evaluation_records(None, None)
    if args.dilemmas:
        by_value = {}
        for r in sorted(recs, key=lambda r: (r.pair_id, r.lang)):
            by_value.setdefault(r.value, []).append(r)
        picked, i = [], 0
        while len(picked) < args.dilemmas:
            v = VALUE_IDS[i % len(VALUE_IDS)]
            lang = "zh" if len(picked) % 2 == 0 else "en"
            cand = [r for r in by_value.get(v, []) if r.lang == lang and r not in picked]
            if cand:
                picked.append(cand[0])
            i += 1
        recs = picked
    prompts = build_choice_prompts(recs, lm.tokenizer)
    if args.flops_only:
        import json

        from jaxvalues.evaluate.choice import _PrefixPlan

        f = row_flops(cfg, _PrefixPlan(prompts), prompts)
        print(json.dumps({"model": args.model, "dilemmas": len(recs), "rows": prompts.num_rows,
                          **{k: (round(v / 1e9, 2) if k in ("unshared", "answer_only", "shared") else round(v, 1))
                             for k, v in f.items()}, "unit": "GFLOP per scored row"}))
        return
    if args.neurons:
        ns = jv.NeuronSet.load(args.neurons)
        masks = [ns.neurons(v) for v in VALUE_IDS]
        mask_src = f"NeuronSet {args.neurons}"
    else:
        masks = random_masks(cfg, 12, args.mask_frac, seed=0)
        mask_src = f"random, {args.mask_frac:.1%} of the {cfg.num_layers * cfg.num_neurons:,} neurons each"
    names = ["baseline", *[f"zero-{v}" for v in VALUE_IDS]]
    conds = [None, *[jv.Intervention.zero(m) for m in masks]]
    neuron_maps = [None, *masks]
    bank = ConditionBank(conds, cfg.num_layers, cfg.num_neurons)
    rows_n = prompts.num_rows
    seqs = rows_n * len(conds)
    tokens = int(prompts.lengths.sum()) * len(conds)
    shapes = {bucket(prompts.input_ids[pi], prompts.attention_mask[pi], 32)[0].shape
              for pi, _, _ in flat_batches(prompts.lengths, len(conds), args.batch_size)}
    print(f"{len(recs)} dilemmas, {rows_n} prompts (both orders), {len(conds)} conditions: {seqs} sequences, "
          f"{tokens:,} tokens; jaxvalues batch shapes {sorted(shapes)}")

    if args.prefix_only:
        res = prefix_comparison(lm, prompts, conds, args.batch_size, args.reps)
        fl = res["flops"]
        rows_t = [[k, f"{res['median'][k]:.3f}", f"{res['median'][k] / res['median']['unshared']:.3f}",
                   f"{fl[k] / 1e9:.2f}", f"{fl[k] / fl['unshared']:.3f}", res["compilations"][k],
                   f"{res['max_diff'][k]:.1e}"] for k in ("unshared", "answer_only", "shared")]
        body = (f"\nModel `{args.model}` (float32): {rows_n} prompts × {len(conds)} conditions, batch size "
                f"{args.batch_size}, {args.reps} timed reps after a warm-up, interleaved, same process. "
                f"Mean row {fl['mean_len']:.1f} tokens, shared prefix {fl['mean_prefix']:.1f}, "
                f"suffix {fl['mean_suffix']:.1f}.\n\n"
                + C.table(["ChoiceScorer path", "median s", "time / unshared", "GFLOPs / row", "FLOPs / unshared",
                           "compilations", "max |logit diff|"], rows_t) + "\n")
        C.write_section(args, "eval_prefix", "Choice scorer: shared prefix and answer-only last layer", body, info,
                        res)
        return
    tm = C.load_torch(args.model)
    scorer = ChoiceScorer(lm, batch_size=args.batch_size)
    out = {}

    def run_jax():
        out["jaxvalues"] = scorer.logits(prompts, conds)

    def run_naive():
        out["naive"] = naive_choice_logits(tm, prompts, neuron_maps, args.batch_size)

    def run_careful():
        out["careful"] = careful_choice_logits(tm, prompts, bank, args.batch_size)

    variants = {"jaxvalues": run_jax, "torch careful": run_careful}
    if not args.no_naive:
        variants["torch naive (hooks)"] = run_naive

    import time as _t

    n0 = len(compiles)
    t = _t.perf_counter()
    run_jax()  # the first evaluation: compiles one program per batch shape
    first_s = _t.perf_counter() - t
    first_compiles = compiles[n0:]
    # a second 13-condition evaluation with 12 different masks: must not compile anything
    masks2 = random_masks(cfg, 12, args.mask_frac, seed=1)
    conds2 = [None, *[jv.Intervention.zero(m) for m in masks2]]
    n1 = len(compiles)
    t = _t.perf_counter()
    scorer.logits(prompts, conds2)
    second_s = _t.perf_counter() - t
    second_compiles = compiles[n1:]

    n2 = len(compiles)
    times = C.interleaved(variants, args.reps, warmup=1)
    timed_compiles = len(compiles) - n2  # includes the warm-up round of every variant

    med = {n: C.median(t_) for n, t_ in times.items()}
    naive_key = "torch naive (hooks)"
    rows = []
    for n in variants:
        rows.append([n, f"{med[n]:.2f}", C.spread(times[n]), seqs / med[n], tokens / med[n],
                     f"{med[n] / med[naive_key]:.2f}" if naive_key in med else "-",
                     f"{med[n] / med['torch careful']:.2f}"])
    tab = C.table(["variant", "median s", "range s", "sequences/s", "tokens/s", "time / naive",
                   "time / careful"], rows)
    ratio = med["jaxvalues"] / med[naive_key] if naive_key in med else float("nan")
    verdict = "met" if ratio <= 0.5 else "MISSED"

    # agreement of the three
    checks = []
    j = out["jaxvalues"]
    pj = p_aligned_rows(j)
    for key in ("careful", "naive"):
        if key in out:
            pk = p_aligned_rows(out[key])
            checks.append(f"jaxvalues vs torch {key}: max |label logit difference| "
                          f"{np.abs(j - out[key]).max():.2e}, max |P(aligned) difference| {np.abs(pj - pk).max():.2e}")
    table_df = choice_table(prompts, j, names)
    full_rows = 960
    body = f"""
Model `{args.model}` (float32): {len(recs)} evaluation dilemmas × 2 orders = {rows_n} prompts ×
{len(conds)} conditions (baseline + 12 value masks: {mask_src}) = {seqs} sequences, {tokens:,} tokens;
batch size {args.batch_size}, torch threads {args.threads}, {args.reps} timed reps after 1 warm-up, interleaved.
jaxvalues batch shapes: {sorted(shapes)}.

{tab}

Target: jaxvalues wall time ≤ 0.5 × the naive baseline's: **{ratio:.2f} — {verdict}**.
The whole seed evaluation set ({full_rows} prompts × 13 conditions) scales linearly: about
{med['jaxvalues'] * full_rows / rows_n / 60:.0f} min for jaxvalues{', ' + format(med[naive_key] * full_rows / rows_n / 60, '.0f') + ' min for the naive baseline' if naive_key in med else ''} on this machine.

Target: one compilation per bucket shape, none per condition: **{sum(1 for f, _ in first_compiles if f.endswith('label_logits)'))} compilations of the evaluation program for {len(shapes)} batch shape(s), {len(second_compiles)} for a second 13-condition run with new masks — {'met' if sum(1 for f, _ in first_compiles if f.endswith('label_logits)')) <= len(shapes) and not second_compiles else 'MISSED'}**.

Compilations (XLA backend compiles, counted with jax.monitoring):
- first 13-condition evaluation ({first_s:.1f} s): {len(first_compiles)} compilations
  ({sum(d for _, d in first_compiles):.1f} s of compile time) for {len(shapes)} batch shape(s); programs:
  {dict(__import__('collections').Counter(f for f, _ in first_compiles))}
- a second 13-condition evaluation with 12 different masks ({second_s:.1f} s): {len(second_compiles)}
- during the warm-up and timed repetitions that follow: {timed_compiles}
- `ChoiceScorer.compilations()` = {scorer.compilations()}

""" + "\n".join(f"- {c}" for c in checks) + f"\n- choice table: {len(table_df)} rows (condition × dilemma)"
    C.write_section(args, "eval", "Ablation evaluation (13 conditions)", body, info,
                    {"times": times, "tokens": tokens, "sequences": seqs,
                     "compiles_first": first_compiles, "compiles_second": second_compiles})


if __name__ == "__main__":
    main()
