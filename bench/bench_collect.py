"""Collection throughput: jaxvalues `collect` vs the PyTorch baselines (tokens/s).

Same tokens (seed-benchmark activation records rendered and tokenized once by jaxvalues), same
statistics (per condition: count act > 0, Σ act, Σ act²; token selection "all"), float32, the
same cores (torch.set_num_threads(--threads); JAX's pool spans the same cores), interleaved,
median of --reps runs after one warm-up run. Baselines: see bench/torch_baselines.py.
Throughput counts real (non-padding) tokens. Also cross-checks the statistics of the three.

    .venv/bin/python bench/bench_collect.py [--values integrity] [--limit N] [--batch-size 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def main(argv=None):
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--values", default="integrity,justice",
                   help="comma-separated values whose records are used ('all' = the 12); 60 records each")
    p.add_argument("--limit", type=int, default=32,
                   help="at most this many records, round-robin over the values (0 = all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--extra-buckets", default="0",
                   help="also time jaxvalues with buckets at every multiple of this many tokens (0 = skip)")
    p.add_argument("--no-naive", action="store_true")
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.limit = min(args.limit or 6, 6)
    args.limit = args.limit or None
    info = C.machine_info()
    C.setup_torch(args.threads)

    import numpy as np

    from jaxvalues.stats.batching import count_mask, plan_batches
    from jaxvalues.stats.collect import collect
    from torch_baselines import CarefulCollector, NaiveCollector

    lm = C.load_jax(args.model)
    values = None if args.values == "all" else args.values.split(",")
    examples, names, subset = C.activation_examples(lm, values, args.limit, full_batches_of=args.batch_size)
    counts = [count_mask(ex, "all").astype(np.int32) for ex in examples]
    tokens = int(sum(len(ex) for ex in examples))
    step = int(args.extra_buckets or 0)
    fine = list(range(step, 8192 + step, step)) if step else None
    for label, bk in (("default", None), (f"every {step}", fine)):
        if label != "default" and not step:
            continue
        plan = plan_batches([len(e) for e in examples], [e.condition for e in examples], args.batch_size, buckets=bk)
        slots = sum(b.rows * b.seq_len for b in plan)
        print(f"{len(examples)} examples, {tokens:,} tokens; buckets {label}: {len(plan)} batches, "
              f"{len({b.shape for b in plan})} shapes, padding {1 - tokens / slots:.1%}")
    tm = C.load_torch(args.model)
    pad = lm.pad_id
    results = {}

    def run_jax():
        results["jaxvalues"] = collect(lm, examples, names, token_selection="all", batch_size=args.batch_size)

    fine_key = f"jaxvalues, buckets every {step}"

    def run_jax_fine():
        results["fine"] = collect(lm, examples, names, token_selection="all", batch_size=args.batch_size, buckets=fine)

    naive = NaiveCollector(tm, len(names), args.batch_size, pad)
    careful = CarefulCollector(tm, len(names), args.batch_size, pad)

    def run_naive():
        results["naive"] = naive.run(examples, counts)

    def run_careful():
        results["careful"] = careful.run(examples, counts)

    variants = {"jaxvalues": run_jax, "torch careful": run_careful}
    if step:
        variants[fine_key] = run_jax_fine
    if not args.no_naive:
        variants["torch naive (hooks)"] = run_naive
    times = C.interleaved(variants, args.reps)

    # cross-check: the three agree on the statistics
    js = results["jaxvalues"]
    checks = []
    for key in ("careful", "naive"):
        if key not in results:
            continue
        ts = results[key]
        has = js.tokens > 0
        same_tokens = bool(np.array_equal(js.tokens, ts.tokens))
        agree = float(np.mean(js.active[has] == ts.active[has]))
        mean_err = float(np.nanmax(np.abs(js.mean()[has] - ts.sum[has] / ts.tokens[has, None, None])))
        checks.append(f"jaxvalues vs torch {key}: tokens equal {same_tokens}; active counts identical for "
                      f"{agree:.4%} of (condition, layer, neuron); max |mean difference| {mean_err:.2e}")

    rep = js.meta["collect"]
    med = {n: C.median(t) for n, t in times.items()}
    tps = {n: tokens / m for n, m in med.items()}
    naive_key = "torch naive (hooks)"
    rows = []
    for n in variants:
        rows.append([n, f"{C.median(times[n]):.2f}", C.spread(times[n]), tps[n],
                     f"{tps[n] / tps[naive_key]:.2f}×" if naive_key in tps else "-",
                     f"{tps[n] / tps['torch careful']:.2f}×"])
    tab = C.table(["variant", "median s", "range s", "tokens/s", "vs naive", "vs careful"], rows)
    fine_line = ""
    if step:
        fr = results["fine"].meta["collect"]
        fine_line = (f"With buckets every {step} tokens ({fine_key}): {fr['batches']} batches, {fr['compilations']} shapes, "
                     f"padding {fr['padding_fraction']:.1%}; statistics identical to the default plan's: "
                     f"{results['fine'].equals(js)}.")
    ratio = tps["jaxvalues"] / tps[naive_key] if naive_key in tps else float("nan")
    verdict = "met" if ratio >= 1.3 else "MISSED"
    body = f"""
Model `{args.model}` (float32), activation records of {args.values}: {subset} ({len(names)} conditions,
token selection "all"), {tokens:,} real tokens, batch size {args.batch_size}, torch threads {args.threads},
{args.reps} timed reps after 1 warm-up, interleaved.
jaxvalues plan: {rep['batches']} batches, {rep['compilations']} shapes {rep['batch_shapes']}, padding
{rep['padding_fraction']:.1%}; torch careful uses the same plan; torch naive pads each batch of {args.batch_size} (dataset
order) to its longest row ({_naive_padding(examples, args.batch_size):.1%} padding). Padding of the plan on the whole
seed benchmark: see the profile section.

{tab}

{fine_line}

Target: jaxvalues ≥ 1.3× the naive baseline: **{ratio:.2f}× — {verdict}**.

""" + "\n".join(f"- {c}" for c in checks)
    C.write_section(args, "collect", "Collection throughput", body, info,
                    {"times": times, "tokens": tokens, "report": rep})


def _naive_padding(examples, bs) -> float:
    from collections import defaultdict

    by = defaultdict(list)
    for ex in examples:
        by[ex.condition].append(len(ex))
    real = slots = 0
    for lens in by.values():
        for s in range(0, len(lens), bs):
            chunk = lens[s:s + bs]
            real += sum(chunk)
            slots += max(chunk) * len(chunk)
    return 1 - real / slots


if __name__ == "__main__":
    main()
