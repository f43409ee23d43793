"""Memory: peak RSS of jaxvalues collection on 1× vs 8× the data, each in a fresh subprocess.

The child loads the model, records RSS after loading, runs `collect` over the examples (the 8×
run repeats the 1× examples 8 times: same batch shapes, 8× the batches) and reports its peak RSS
(ru_maxrss). Targets: the 8× peak within 5% of the 1× peak, and peak ≤ weights + 1.5 GB.

    .venv/bin/python bench/bench_memory.py [--records 16] [--scale 8] [--batch-size 8] [--compare-batch-size 16]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def child(args):
    import time

    import jax

    from jaxvalues.stats.collect import collect

    t0 = time.perf_counter()
    lm = C.load_jax(args.model)
    jax.block_until_ready(jax.tree.leaves(lm.state))
    rss_load = C.peak_rss_bytes()
    import psutil

    cur_load = psutil.Process().memory_info().rss
    examples, names, _subset = C.activation_examples(lm, [args.value], args.records)
    data = list(examples) * args.child_scale
    reset = _reset_peak()  # from here on VmHWM = the peak of collection alone
    t1 = time.perf_counter()
    stats = collect(lm, data, names, token_selection="all", batch_size=args.batch_size)
    out = {"scale": args.child_scale, "examples": len(data), "tokens": int(stats.tokens.sum()),
           "peak_rss": C.peak_rss_bytes(), "peak_rss_after_load": rss_load, "rss_after_load": cur_load,
           "peak_collect": _vm_hwm() if reset else float("nan"),
           "rss_end": psutil.Process().memory_info().rss, "weights": C.weight_bytes(lm),
           "collect_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0,
           "batches": stats.meta["collect"]["batches"], "torch_imported": "torch" in sys.modules}
    if args.child_scale == 1:  # XLA's buffer sizes for the first batch shape of the plan
        import jax.numpy as jnp

        from jaxvalues.stats.collect import batch_program

        b_, s_ = stats.meta["collect"]["batch_shapes"][0]
        z = jnp.zeros((b_, s_), jnp.int32)
        mult, add = (jnp.asarray(x) for x in lm.intervention_arrays(None))
        ma = batch_program(lm).lower(lm.state, z, z, z, mult, add).compile().memory_analysis()
        out["xla"] = {"shape": [b_, s_], "temp": int(ma.temp_size_in_bytes), "output": int(ma.output_size_in_bytes)}
    # the same collection again: programs compiled, so this peak is the steady state without XLA compilation
    if _reset_peak():
        collect(lm, data, names, token_selection="all", batch_size=args.batch_size)
        out["peak_warm"] = _vm_hwm()
    else:
        out["peak_warm"] = float("nan")
    print("RESULT " + json.dumps(out))


def _warm_word(peak, warm, budget) -> str:
    side = "also within" if warm <= budget else "over"
    what = "so XLA compilation is not what sets the peak" if warm >= peak else "compilation adds to the first run's peak"
    return f"{side} the limit; {what}"


def _xla_line(r) -> str:
    x = r.get("xla")
    if not x:
        return ""
    return (f"Per batch {x['shape'][0]}×{x['shape'][1]}, XLA's collection program uses {x['temp'] / 2**20:.0f} MB of temporary "
            f"buffers and returns {x['output'] / 2**20:.0f} MB (per-row partials), and one batch is in flight while the host "
            f"folds the previous one into int64 accumulators: that, over the {r['rss_after_load'] / 1e9:.2f} GB held after "
            f"loading, is the growth during collection.")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def main(argv=None):
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=16, help="records in the 1× run (one value)")
    p.add_argument("--value", default="integrity")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compare-batch-size", type=int, default=16, help="also measure the 1× data at this batch "
                   "size (0: skip)")
    p.add_argument("--child-scale", type=int, default=0, help=argparse_hide())
    args = C.finish_args(p.parse_args(argv))
    if args.child_scale:
        return child(args)
    if args.quick:
        args.records = min(args.records, 4)
    info = C.machine_info()
    res = {}
    runs = [(1, args.batch_size), (args.scale, args.batch_size)]
    if args.compare_batch_size and args.compare_batch_size != args.batch_size:
        runs.append((1, args.compare_batch_size))
    for scale, bs in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--records", str(args.records),
               "--value", args.value, "--batch-size", str(bs), "--child-scale", str(scale)]
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode or not line:
            print(r.stdout[-3000:], r.stderr[-3000:])
            raise SystemExit(f"child run (scale {scale}, batch {bs}) failed with code {r.returncode}")
        res[(scale, bs)] = json.loads(line[0][7:])
        res[(scale, bs)]["batch_size"] = bs
        print(res[(scale, bs)])
    a, b = res[(1, args.batch_size)], res[(args.scale, args.batch_size)]
    gb = 1e9
    ratio = b["peak_collect"] / a["peak_collect"]
    for r in res.values():  # the whole process: loading (before the reset) or collection, whichever is higher
        r["peak_process"] = max(r["peak_rss_after_load"], r["peak_collect"])
    ratio_proc = b["peak_process"] / a["peak_process"]
    budget = a["weights"] + 1.5 * gb
    rows = [[f"{s}×", bs, r["examples"], r["tokens"], r["batches"], f"{r['weights'] / gb:.2f}",
             f"{r['peak_rss_after_load'] / gb:.2f}", f"{r['rss_after_load'] / gb:.2f}",
             f"{r['peak_collect'] / gb:.2f}", f"{r['peak_warm'] / gb:.2f}", f"{r['rss_end'] / gb:.2f}",
             f"{r['peak_process'] / gb:.2f}",
             f"{r['collect_s']:.1f}"] for (s, bs), r in res.items()]
    tab = C.table(["data", "batch size", "examples", "tokens", "batches", "weights GB", "peak RSS of loading GB",
                   "RSS after load GB", "peak RSS during collection GB", "same, 2nd run (compiled) GB", "RSS at end GB",
                   "peak RSS of the process GB", "collect s"], rows)  # process = max(loading, collection)
    peak = max(a["peak_collect"], b["peak_collect"])
    warm = max(a["peak_warm"], b["peak_warm"])
    cmp_line = ""
    if len(res) > 2:
        (_, cb), c = list(res.items())[2]
        cmp_line = (f" For comparison, batch size {cb} (the 1× data): collection peak {c['peak_collect'] / gb:.2f} GB, "
                    f"{c['peak_warm'] / gb:.2f} GB compiled; XLA temporaries grow with the tokens per batch.")
    v1 = "met" if abs(ratio - 1) <= 0.05 else "MISSED"
    v2 = "met" if peak <= budget else "MISSED"
    body = f"""
Model `{args.model}` (float32), {args.records} activation records of {args.value} (1×) and the same records
repeated {args.scale} times ({args.scale}×), batch size {args.batch_size} (collect's default and the experiment
configs'), token selection "all"; each run in a
fresh subprocess. "Peak RSS during collection" is the kernel's VmHWM after resetting it once the model
is loaded (/proc/self/clear_refs); "peak RSS of loading" is ru_maxrss just before that reset; "peak RSS of the
process" is the larger of the two.

{tab}

Targets (collection): peak RSS {args.scale}× / 1× = **{ratio:.3f} — {v1}** (within 5%; whole process incl. loading:
{ratio_proc:.3f}); peak ≤ weights + 1.5 GB = {budget / gb:.2f} GB: **{peak / gb:.2f} GB — {v2}** (the same collection again, programs already compiled:
{warm / gb:.2f} GB — {_warm_word(peak, warm, budget)}).{cmp_line} {_xla_line(a)} Loading the model
peaks at {a['peak_rss_after_load'] / gb:.2f} GB ({a['peak_rss_after_load'] / a['weights']:.2f}× the weights) before collection starts:
each tensor of the converted float32 copy is read into a NumPy buffer and then copied into a JAX array, so about
one tensor's worth of buffers is alive beside the weights. The process imports transformers only for the
tokenizer, and not torch (torch imported: {a.get('torch_imported')}).
"""
    C.write_section(args, "memory", "Memory (peak RSS of collection)", body, info, {"runs": {f"{s}x_batch{bs}": r for (s, bs), r in res.items()}})


def argparse_hide():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
