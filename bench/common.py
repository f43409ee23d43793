"""Shared helpers for the benchmark scripts in bench/ (not part of the jaxvalues package).

Every script: parses the common flags (`parser()`), measures jaxvalues and its PyTorch baselines in
the same process, interleaved (`interleaved`), prints a table and writes its section of
bench/RESULTS.md (`write_section`) with the machine, library versions, date, load average and the
exact command. Numbers are medians of >= `--reps` timed runs after one warm-up run.

`--model` is a packaged name (`jaxvalues models list`; torch loads the same GGUF through
transformers) or a Hugging Face directory (a tiny random model in the smoke test).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
DEFAULT_MODEL = "qwen2.5-0.5b"

HEADER = """# jaxvalues benchmarks

Produced by the scripts in `bench/` (`make bench` = `python bench/run_all.py`); each section is
rewritten by its script and shows the exact command, the machine and the load average at the
time. Numbers are medians of the timed runs after a warm-up run, with jaxvalues and its
baselines interleaved in one process. Never edit numbers by hand.
"""


# ----------------------------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged name or HF directory")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 timed rep")
    p.add_argument("--reps", type=int, default=None, help="timed runs per variant (default 5; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (JAX uses the same cores)")
    p.add_argument("--results", default=str(RESULTS), help="markdown file to update ('-' = do not write)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    return p


def finish_args(args):
    if args.reps is None:
        args.reps = 1 if args.quick else 5
    return args


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", script, *sys.argv[1:]])


# ----------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "-"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def machine_info() -> dict:
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "isa": ",".join(isa), "mem_gib": round(mem, 1),
        "python": platform.python_version(),
        **{k: _version(k) for k in ("jax", "jaxlib", "flax", "torch", "transformers", "ray", "numpy")},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": loadavg(),
    }


def machine_md(info: dict) -> str:
    libs = ", ".join(f"{k} {info[k]}" for k in ("jax", "jaxlib", "flax", "torch", "transformers", "ray", "numpy"))
    lines = [
        f"- machine: {info['cpu']} ({info['isa']}), {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['mem_gib']} GiB; Python {info['python']}; {libs}",
        f"- date: {info['date']}; load average (1/5/15 min) at start {info['load_start']}, "
        f"at end {info.get('load_end', '-')}",
    ]
    if info.get("xla_flags"):
        lines.append(f"- XLA_FLAGS: `{info['xla_flags']}`")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- output


def fmt(x, nd=1) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return f"{x:,}"
    if x != x:  # NaN
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def write_section(args, key: str, title: str, body: str, info: dict, raw: dict | None = None) -> str:
    """Print the section and replace (or append) it in args.results between bench markers."""
    info["load_end"] = loadavg()
    text = (f"<!-- bench:{key} start -->\n## {title}\n\n`{command_line()}`\n\n{machine_md(info)}\n\n"
            f"{body.strip()}\n<!-- bench:{key} end -->\n")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, **(raw or {})}, indent=1, default=str))
    if args.results == "-":
        return text
    path = Path(args.results)
    old = path.read_text() if path.exists() else HEADER
    pat = re.compile(rf"<!-- bench:{re.escape(key)} start -->.*?<!-- bench:{re.escape(key)} end -->\n?", re.S)
    new = pat.sub(lambda m: text, old) if pat.search(old) else old.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
    return text


# ----------------------------------------------------------------------------------- timing


def interleaved(variants: dict, reps: int, warmup: int = 1, log=print) -> dict[str, list[float]]:
    """variants: name -> zero-arg callable (must block until done). Warm up each, then `reps`
    rounds; the order rotates every round so no variant always runs first. -> name -> seconds."""
    names = list(variants)
    for w in range(warmup):
        for n in names:
            t = time.perf_counter()
            variants[n]()
            log(f"  warm-up {n}: {time.perf_counter() - t:.2f} s")
    times = {n: [] for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            variants[n]()
            dt = time.perf_counter() - t
            times[n].append(dt)
            log(f"  rep {r + 1}/{reps} {n}: {dt:.2f} s (load {loadavg()})")
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def spread(xs) -> str:
    """'min–max' of a list of seconds."""
    return f"{min(xs):.2f}–{max(xs):.2f}"


# ----------------------------------------------------------------------------------- models


def setup_torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def load_jax(spec: str, dtype: str = "float32"):
    import jaxvalues as jv

    return jv.load_model(spec, dtype=dtype)


def load_torch(spec: str, dtype: str = "float32"):
    """The transformers PyTorch model for the same weights (GGUF for a packaged name)."""
    import torch
    from transformers import AutoModelForCausalLM

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    p = Path(spec).expanduser()
    if p.is_dir():
        m = AutoModelForCausalLM.from_pretrained(str(p), dtype=tdt)
    else:
        from jaxvalues.zoo.fetch import gguf_path

        g = gguf_path(spec)
        m = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=tdt)
    return m.eval()


def weight_bytes(lm) -> int:
    import jax

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lm.state)))


def peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def flops_per_token(cfg, seq_len: int, head: bool = False) -> dict:
    """Analytic forward FLOPs per token (2 per multiply-add) for the generic decoder.

    matmul: the weight matmuls of every layer; attention: QK^T and PV over the whole padded
    sequence (the dense computation both frameworks run); head: the full LM head."""
    d, n, h, k, dh, l = (cfg.hidden_size, cfg.num_neurons, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.num_layers)
    mlp = (3 if cfg.gated_mlp else 2) * d * n
    attn_proj = d * h * dh * 2 + d * k * dh * 2
    matmul = 2 * l * (mlp + attn_proj)
    attn = 2 * l * 2 * h * dh * seq_len
    out = {"matmul": matmul, "attention": attn, "head": 2 * d * cfg.vocab_size if head else 0}
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------------- data


def activation_examples(lm, values: list[str] | None, limit: int | None, langs=("zh", "en"),
                        full_batches_of: int | None = None):
    """Seed-benchmark activation records of `values` (all 12 if None), rendered and tokenized by
    jaxvalues (masks included). -> (examples, condition names, description).

    full_batches_of=B: keep only examples of the most common length bucket of jaxvalues' default
    plan, `limit` of them rounded down to a multiple of B (round-robin over conditions), so every
    batch of a small timed subset is full, as in the steady state of a whole dataset (whose plan
    has at most one partial batch per bucket)."""
    import collections

    import jaxvalues as jv
    from jaxvalues.stats.batching import bucket_length, default_buckets
    from jaxvalues.stats.records import examples_from_records, interleave_by_value

    recs = [r for r in jv.load_records("builtin", kind="activation", values=values) if r.lang in langs]
    if not full_batches_of:
        recs = interleave_by_value(recs, limit)
        ex, names = examples_from_records(recs, lm.tokenizer, "values", masks=True)
        return ex, names, f"{len(ex)} records"
    ex, names = examples_from_records(interleave_by_value(recs), lm.tokenizer, "values", masks=True)
    ex = [e for e in ex if len(e)]
    buckets = default_buckets(max(len(e) for e in ex))
    blen = [bucket_length(len(e), buckets) for e in ex]
    top = collections.Counter(blen).most_common(1)[0][0]
    lo = max([b for b in buckets if b < top], default=0)
    keep = [e for e, b in zip(ex, blen) if b == top]
    n = len(keep) if limit is None else min(limit, len(keep))
    n = max(full_batches_of, n - n % full_batches_of)
    return keep[:n], names, f"{n} records with {lo + 1}–{top} tokens (one bucket of the default plan)"


def evaluation_records(values: list[str] | None, per_value: int | None):
    """Seed-benchmark evaluation records, `per_value` per value (zh and en alternating)."""
    import jaxvalues as jv

    recs = jv.load_records("builtin", kind="evaluation", values=values)
    if per_value is None:
        return recs
    by = {}
    for r in sorted(recs, key=lambda r: (r.value, r.pair_id, r.lang)):
        by.setdefault(r.value, []).append(r)
    out = []
    for v, rs in by.items():
        zh = [r for r in rs if r.lang == "zh"]
        en = [r for r in rs if r.lang == "en"]
        mixed = [x for pair in zip(zh, en) for x in pair]
        out += mixed[:per_value]
    return out


def make_tiny_model(directory, family: str = "qwen2", records=None):
    """A tiny random `family` model (jaxvalues.testing.tiny_hf_model) + a word-level tokenizer that
    covers the rendered evaluation prompts of `records` (default: 2 seed records per value), saved
    as a Hugging Face directory for the smoke runs. Returns the directory."""
    import jaxvalues as jv
    from jaxvalues.evaluate._testing import toy_tokenizer
    from jaxvalues.testing import tiny_hf_model

    if records is None:
        records = evaluation_records(None, 2)
    tok = toy_tokenizer(records)
    tiny_hf_model(family, directory, vocab_size=max(len(tok) + 8, 211))
    tok.save_pretrained(str(directory))
    jv.load_model(str(directory))  # fail here, not in every script, if it does not load
    return Path(directory)


if __name__ == "__main__":  # python bench/common.py tiny DIR
    if len(sys.argv) == 3 and sys.argv[1] == "tiny":
        print(make_tiny_model(sys.argv[2]))
