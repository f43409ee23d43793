"""Roofline: achieved FLOP/s of the collection forward vs the peak of a plain jitted matmul.

Measured in one process, interleaved, median of --reps after warm-up:
- jitted jnp.matmul peaks: fp32 and bf16 (bf16 inputs, fp32 accumulation) at 2048³, and fp32 at
  the model's own FFN shape (tokens × hidden × FFN width);
- the same matmuls in torch (--threads threads) for reference;
- jaxvalues' collection program (`jaxvalues.stats.collect.batch_program`: forward without LM head
  + the in-jit statistics reduction) at one batch shape, and the bare forward (`lm_apply`, hidden
  states only, no capture) at the same shape, so the reduction's share shows;
- the careful torch forward (base model, inference_mode) at the same shape.
FLOPs: analytic (weight matmuls + dense attention over the padded sequence, 2 per MAC; see
common.flops_per_token) on the executed (padded) shape; XLA's own cost analysis is printed too.

    .venv/bin/python bench/bench_roofline.py [--batch 8 --seq 192]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def main(argv=None):
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=192, help="sequence length (a collection bucket size)")
    p.add_argument("--mm", type=int, default=2048, help="square matmul size for the peaks")
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.batch, args.seq, args.mm = 4, 32, 256
    info = C.machine_info()
    torch = C.setup_torch(args.threads)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxvalues.models.decoder import lm_apply
    from jaxvalues.stats.collect import batch_program

    lm = C.load_jax(args.model)
    cfg = lm.config
    tm = C.load_torch(args.model)
    b, s, n = args.batch, args.seq, args.mm
    rs = np.random.RandomState(0)

    # --- matmul peaks -------------------------------------------------------------------------
    mm = jax.jit(lambda a, w: jnp.matmul(a, w, preferred_element_type=jnp.float32))
    sq32 = [jnp.asarray(rs.randn(n, n), jnp.float32) for _ in range(2)]
    sq16 = [x.astype(jnp.bfloat16) for x in sq32]
    m_tok = b * s
    ffn = [jnp.asarray(rs.randn(m_tok, cfg.hidden_size), jnp.float32),
           jnp.asarray(rs.randn(cfg.hidden_size, cfg.num_neurons), jnp.float32)]
    t32 = [torch.from_numpy(np.asarray(x)) for x in sq32]
    t16 = [x.to(torch.bfloat16) for x in t32]
    tffn = [torch.from_numpy(np.asarray(x)) for x in ffn]

    # --- collection forward ---------------------------------------------------------------------
    ids = rs.randint(0, min(cfg.vocab_size, 30000), (b, s)).astype(np.int32)
    attn = np.ones((b, s), np.int32)
    mult, add = (jnp.asarray(a) for a in lm.intervention_arrays(None))
    prog = batch_program(lm)
    fwd = jax.jit(lambda st, i, a, m, ad: lm_apply(lm.graphdef, st, i, a, m, ad)[0])
    ids_j, attn_j = jnp.asarray(ids), jnp.asarray(attn)
    xla_flops = {}
    for name, f, a in (("collect", prog, (lm.state, ids_j, attn_j, attn_j, mult, add)),
                       ("forward", fwd, (lm.state, ids_j, attn_j, mult, add))):
        try:
            ca = f.lower(*a).compile().cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            xla_flops[name] = float(ca.get("flops", float("nan")))
        except Exception as e:  # cost analysis is best effort
            print("cost analysis failed:", e)
            xla_flops[name] = float("nan")
    tids = torch.from_numpy(ids.astype(np.int64))
    tattn = torch.from_numpy(attn.astype(np.int64))

    def torch_fwd():
        with torch.inference_mode():
            tm.model(input_ids=tids, attention_mask=tattn)

    variants = {
        "jax matmul fp32 square": lambda: mm(*sq32).block_until_ready(),
        "jax matmul bf16 square": lambda: mm(*sq16).block_until_ready(),
        "jax matmul fp32 FFN shape": lambda: mm(*ffn).block_until_ready(),
        "torch matmul fp32 square": lambda: torch.matmul(*t32),
        "torch matmul bf16 square": lambda: torch.matmul(*t16),
        "torch matmul fp32 FFN shape": lambda: torch.matmul(*tffn),
        "jaxvalues collect program": lambda: jax.block_until_ready(prog(lm.state, ids_j, attn_j, attn_j, mult, add)),
        "jaxvalues forward only": lambda: jax.block_until_ready(fwd(lm.state, ids_j, attn_j, mult, add)),
        "torch careful forward": torch_fwd,
    }
    # matmuls are short: time a few calls per rep so that timer noise does not matter
    inner = {k: (3 if "matmul" in k else 1) for k in variants}
    wrapped = {k: (lambda f=f, r=inner[k]: [f() for _ in range(r)]) for k, f in variants.items()}
    times = C.interleaved(wrapped, max(args.reps, 5) if not args.quick else args.reps)
    med = {k: C.median(t) / inner[k] for k, t in times.items()}

    fl = C.flops_per_token(cfg, s)
    fwd_flops = fl["total"] * b * s
    flops = {
        "jax matmul fp32 square": 2 * n**3, "jax matmul bf16 square": 2 * n**3,
        "torch matmul fp32 square": 2 * n**3, "torch matmul bf16 square": 2 * n**3,
        "jax matmul fp32 FFN shape": 2 * m_tok * cfg.hidden_size * cfg.num_neurons,
        "torch matmul fp32 FFN shape": 2 * m_tok * cfg.hidden_size * cfg.num_neurons,
        "jaxvalues collect program": fwd_flops, "jaxvalues forward only": fwd_flops,
        "torch careful forward": fwd_flops,
    }
    gf = {k: flops[k] / med[k] / 1e9 for k in variants}
    peak = gf["jax matmul fp32 square"]
    peak_best = max(gf["jax matmul fp32 square"], gf["jax matmul fp32 FFN shape"])
    rows = [[k, f"{med[k] * 1e3:.1f}", f"{flops[k] / 1e9:.1f}", gf[k], f"{gf[k] / peak:.0%}"] for k in variants]
    tab = C.table(["measurement", "median ms", "GFLOP", "GFLOP/s", "% of jax fp32 peak"], rows)
    share = 1 - med["jaxvalues forward only"] / med["jaxvalues collect program"]
    frac = gf["jaxvalues collect program"] / peak
    verdict = "met" if frac >= 0.7 else "MISSED"
    head = C.flops_per_token(cfg, s, head=True)
    body = f"""
Model `{args.model}` (float32), batch {b} × {s} tokens (no padding), torch threads {args.threads}; jax uses the
same {info['usable_cores']} cores. Forward FLOPs per token (analytic): {fl['matmul'] / 1e6:.0f} M weight matmuls +
{fl['attention'] / 1e6:.1f} M attention = {fl['total'] / 1e6:.0f} M; the LM head would add {head['head'] / 1e6:.0f} M
({head['head'] / head['total']:.0%} of a full forward), which collection skips. XLA cost analysis: collect program
{xla_flops['collect'] / 1e9:.1f} GFLOP, forward {xla_flops['forward'] / 1e9:.1f} GFLOP per batch (analytic {fwd_flops / 1e9:.1f}).

{tab}

Target: collection forward ≥ 70% of the jitted fp32 matmul peak: **{frac:.0%} — {verdict}**
(vs the best jax fp32 matmul measured here, {peak_best:.0f} GFLOP/s: {gf['jaxvalues collect program'] / peak_best:.0%}).
The statistics reduction takes {share:.0%} of the collect program's time (collect program vs forward only).
bf16: jax {gf['jax matmul bf16 square']:.0f} GFLOP/s vs torch {gf['torch matmul bf16 square']:.0f} GFLOP/s.
"""
    C.write_section(args, "roofline", "Roofline", body, info,
                    {"times": times, "gflops": gf, "xla_flops": xla_flops, "flops": flops})


if __name__ == "__main__":
    main()
