"""Profile: where the time of collection goes, and the XLA:CPU facts behind it.

1. jax.profiler trace (XLA thunk TraceMe events) of one forward-only call and one collection
   program call (`jaxvalues.stats.collect.batch_program`) at --batch × --seq: time per op kind.
   `ynn_fusion` = XLA:CPU's YNNPACK library fusions (the matmuls, and simple fused reductions).
2. Attention core at the model's shapes: the previous decoder formulation (einsum over
   [B, S, K, G, Dh] and a `where` mask) vs the current one (query heads of a KV head stacked as
   rows, additive mask), interleaved; max difference of the outputs.
3. XLA:CPU micro-kernels on a [tokens, neurons] array: which element-wise forms stay fast
   (fused into YNNPACK) and which fall back to XLA's own loop emitter, and the page faults of a
   freshly allocated output (with and without GLIBC_TUNABLES=glibc.malloc.hugetlb=1, in child
   processes).
4. Padding of the collection plan on the whole seed benchmark: default buckets vs finer ones.

    .venv/bin/python bench/bench_profile.py [--batch 8 --seq 192]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

NEG = float(-3.4028234663852886e38)


def _trace_ops(fn, args, tmp: Path):
    """-> (wall seconds, Counter op name -> summed seconds) for one call of fn under the profiler."""
    import collections
    import glob
    import gzip
    import json
    import re
    import time

    import jax

    jax.block_until_ready(fn(*args))
    with jax.profiler.trace(str(tmp), create_perfetto_trace=True):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        wall = time.perf_counter() - t
    path = sorted(glob.glob(str(tmp / "**" / "*perfetto_trace.json.gz"), recursive=True))[-1]
    ev = json.load(gzip.open(path))
    ev = ev["traceEvents"] if isinstance(ev, dict) else ev
    tot = collections.Counter()
    for e in ev:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        name = e["name"]
        if name.startswith(("ThunkExecutor", "$", "end:", "Threadpool", "SlinkyThreadPool", "PjitFunction",
                            "ParseArguments", "CommonPjRt", "Handle inputs", "PjRt", "TfrtCpu")):
            continue
        tot[re.sub(r"(\.\d+)+$", "", name)] += e["dur"] / 1e6
    return wall, tot


def attention_variants(b, s, h, k, dh):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxvalues.models.decoder import attention_core

    g = h // k
    scale = dh ** -0.5

    def mask_of(am):
        causal = jnp.arange(s)[None, :] <= jnp.arange(s)[:, None]
        return causal[None] & (am[:, None, :] > 0)

    def previous(q, kk, v, am):  # the decoder's attention core before this change
        m = mask_of(am)
        sc = jnp.einsum("bskgd,btkd->bkgst", q.reshape(b, s, k, g, dh), kk) * scale
        sc = jnp.where(m[:, None, None], sc, NEG)
        p = jax.nn.softmax(sc, axis=-1)
        return jnp.einsum("bkgst,btkd->bskgd", p, v).reshape(b, s, h * dh)

    def current(q, kk, v, am):  # what jaxvalues.models.decoder.Attention runs now
        return attention_core(q.reshape(b, s, h, dh), kk, v, mask_of(am), scale)

    return jax.jit(previous), jax.jit(current)


def micro_kernels(t, n, reps):
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(t, n).astype(np.float32))
    w = jnp.asarray((rs.rand(t) < 0.9).astype(np.float32))
    f32 = np.float32
    kernels = {
        "Σ x·w over tokens (mul + reduce)": lambda x, w: (x * w[:, None]).sum(0),
        "Σ floor(x·a) − floor(x·b)·c (a fixed-point digit)": lambda x, w: (
            jnp.floor(x * f32(2**-15)) - jnp.floor(x * f32(2**-30)) * f32(2**15)).sum(0),
        "count x > 0 (compare → int32 sum)": lambda x, w: (x > 0).sum(0, dtype=jnp.int32),
        "Σ x.astype(int32) (convert)": lambda x, w: x.astype(jnp.int32).sum(0),
        "Σ clip(x, 0, 1) (clamp)": lambda x, w: jnp.clip(x, f32(0), f32(1)).sum(0),
        "x·2, fresh [T, N] output": lambda x, w: x * 2,
    }
    import resource

    out = {}
    for name, f in kernels.items():
        j = jax.jit(f)
        jax.block_until_ready(j(x, w))
        ts, faults = [], []
        for _ in range(reps):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            jax.block_until_ready(j(x, w))
            ts.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        txt = j.lower(x, w).compile().as_text()
        entry = txt[txt.index("ENTRY"):]
        kind = "YNNPACK" if "__ynn_fusion" in entry and "kind=kLoop" not in entry else (
            "XLA loop + YNNPACK" if "__ynn_fusion" in entry else "XLA loop emitter")
        out[name] = (min(ts), float(np.median(faults)), kind)
    return out


def child_fault_kernel():
    """Run in a child: time and page faults of a fresh 60 MB output (x·2)."""
    import resource
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.asarray(np.random.RandomState(0).randn(3072, 4864).astype(np.float32))
    f = jax.jit(lambda x: x * 2)
    f(x).block_until_ready()
    ts, fl = [], []
    for _ in range(10):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        f(x).block_until_ready()
        ts.append(time.perf_counter() - t)
        fl.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"RESULT {min(ts)} {np.median(fl)}")


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child-faults":
        return child_fault_kernel()
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=192)
    args = C.finish_args(p.parse_args(argv))
    if args.quick:
        args.batch, args.seq = 2, 32
    info = C.machine_info()

    import subprocess
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxvalues.models.decoder import lm_apply
    from jaxvalues.stats.batching import plan_batches
    from jaxvalues.stats.collect import batch_program

    lm = C.load_jax(args.model)
    cfg = lm.config
    b, s = args.batch, args.seq
    rs = np.random.RandomState(0)
    ids = jnp.asarray(rs.randint(0, min(cfg.vocab_size, 30000), (b, s)).astype(np.int32))
    attn = jnp.ones((b, s), jnp.int32)
    mult, add = (jnp.asarray(a) for a in lm.intervention_arrays(None))
    prog = batch_program(lm)
    fwd = jax.jit(lambda st, i, a, m, ad: lm_apply(lm.graphdef, st, i, a, m, ad)[0])

    # 1. op breakdown ------------------------------------------------------------------------
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        walls = {}
        for label, fn, a in (("forward only", fwd, (lm.state, ids, attn, mult, add)),
                             ("collection program", prog, (lm.state, ids, attn, attn, mult, add))):
            wall, ops = _trace_ops(fn, a, Path(tmp) / label.replace(" ", "_"))
            walls[label] = wall
            total = sum(ops.values())
            rows = [[name, f"{sec:.3f}", f"{sec / total:.1%}"] for name, sec in ops.most_common(8)]
            sections.append(f"**{label}** ({b}×{s} tokens): wall {wall:.2f} s, op time summed over threads "
                            f"{total:.2f} s\n\n" + C.table(["op (XLA thunk)", "seconds", "share"], rows))
    red = 1 - walls["forward only"] / walls["collection program"]

    # 2. attention A/B -------------------------------------------------------------------------
    prev, cur = attention_variants(b, s, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    q = jnp.asarray(rs.randn(b, s, cfg.num_heads, cfg.head_dim).astype(np.float32))
    kk = jnp.asarray(rs.randn(b, s, cfg.num_kv_heads, cfg.head_dim).astype(np.float32))
    v = jnp.asarray(rs.randn(b, s, cfg.num_kv_heads, cfg.head_dim).astype(np.float32))
    am = np.ones((b, s), np.int32)
    am[0, : s // 4] = 0
    am = jnp.asarray(am)
    diff = float(jnp.abs(prev(q, kk, v, am) - cur(q, kk, v, am)).max())
    times = C.interleaved({"previous attention core": lambda: jax.block_until_ready(prev(q, kk, v, am)),
                           "current attention core": lambda: jax.block_until_ready(cur(q, kk, v, am))},
                          max(args.reps, 5), log=lambda *_: None)
    tp, tc = min(times["previous attention core"]), min(times["current attention core"])
    fl = 4 * b * cfg.num_heads * s * s * cfg.head_dim
    att_tab = C.table(["attention core", "best ms", "GFLOP/s", "× 24-layer forward, s"],
                      [["previous (einsum [B,S,K,G,Dh], where-mask)", f"{tp * 1e3:.2f}", fl / tp / 1e9,
                        f"{tp * cfg.num_layers:.2f}"],
                       ["current (G·S rows per KV head, additive mask)", f"{tc * 1e3:.2f}", fl / tc / 1e9,
                        f"{tc * cfg.num_layers:.2f}"]])

    # 3. micro-kernels ---------------------------------------------------------------------------
    t_n = (64, 256) if args.quick else (3072, cfg.num_neurons)
    mk = micro_kernels(*t_n, reps=max(args.reps, 5))
    mk_tab = C.table(["kernel on [T, N] = " + f"[{t_n[0]}, {t_n[1]}]", "best ms", "page faults / call", "compiled as"],
                     [[k, f"{v_[0] * 1e3:.2f}", f"{v_[1]:.0f}", v_[2]] for k, v_ in mk.items()])
    child = {}
    for label, env in (("default malloc", {}), ("GLIBC_TUNABLES=glibc.malloc.hugetlb=1", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-faults"], capture_output=True,
                           text=True, env={**os.environ, **env})
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        child[label] = tuple(float(x) for x in line[0].split()[1:]) if line else (float("nan"), float("nan"))
    ch_tab = C.table(["x·2 on [3072, 4864], fresh process", "best ms", "page faults / call"],
                     [[k, f"{v_[0] * 1e3:.2f}", f"{v_[1]:.0f}"] for k, v_ in child.items()])

    # 4. padding of the plan on the seed benchmark --------------------------------------------------
    pad_rows = []
    if lm.tokenizer is not None:
        from jaxvalues.stats.records import examples_from_records

        import jaxvalues as jv

        ex, _ = examples_from_records(jv.load_records("builtin", kind="activation"), lm.tokenizer, "values",
                                      masks=False)
        lengths = [len(e) for e in ex]
        conds = [e.condition for e in ex]
        real = sum(lengths)
        for label, bk in (("default (32·2^k, 48·2^k)", None), ("every 32", list(range(32, 8192, 32))),
                          ("every 16", list(range(16, 8192, 16)))):
            plan = plan_batches(lengths, conds, 16, buckets=bk)
            slots = sum(x.rows * x.seq_len for x in plan)
            pad_rows.append([label, len(plan), len({x.shape for x in plan}), f"{1 - real / slots:.1%}",
                             f"{slots / real:.3f}"])
        pad_tab = (f"Seed benchmark: {len(ex)} activation records, {real:,} tokens, batch size 16:\n\n"
                   + C.table(["buckets", "batches", "shapes (compilations)", "padding", "slots / real tokens"],
                             pad_rows))
    else:
        pad_tab = "(model without tokenizer: skipped)"

    body = f"""
Model `{args.model}` (float32).

### 1. Where the collection program's time goes
{sections[0]}

{sections[1]}

The statistics reduction takes {red:.0%} of the collection program's time (collection program vs forward only, same shape).

### 2. Attention layout (decoder change)
Shapes: batch {b}, {s} tokens, {cfg.num_heads} query heads, {cfg.num_kv_heads} KV heads, head dim {cfg.head_dim}; max |difference|
of the outputs {diff:.2e}.

{att_tab}

### 3. XLA:CPU element-wise and reduction kernels
{mk_tab}

{ch_tab}

### 4. Padding of the collection plan
{pad_tab}
"""
    C.write_section(args, "profile", "Profile of collection (evidence for the analysis)", body, info,
                    {"walls": walls, "attention": {"previous": times["previous attention core"],
                                                   "current": times["current attention core"]},
                     "micro": {k: list(v_) for k, v_ in mk.items()}, "child": child, "padding": pad_rows})


if __name__ == "__main__":
    main()
