"""Cross-framework validation: the same inputs through jaxvalues and transformers' PyTorch model.

`validate(source)` renders activation texts and choice prompts from a dataset (default: the
builtin seed benchmark, records spread over values and both languages), runs them through both
frameworks and reports:
  - max abs diff of logits and of every layer's neuron activations (real tokens only);
  - per-value choice probabilities P(aligned) (both option orders) and their max abs diff;
  - VAPE neuron sets (LAPE selection over per-value activation probabilities computed from each
    framework's neurons) and their Jaccard agreement per value.
The PyTorch side loads HF directories with safetensors (never pickle, never remote code) and GGUF
files through transformers' GGUF support; torch is optional for jaxvalues and only needed here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxvalues.errors import JaxValuesError


def torch_reference(source: str):
    """transformers' PyTorch model for the same weights (float32, eager attention)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise JaxValuesError("`jaxvalues validate` needs PyTorch: pip install 'jaxvalues[test]' "
                             "(torch==2.13.0)") from None
    p = Path(str(source)).expanduser()
    if not p.exists():
        from jaxvalues.zoo.registry import is_packaged

        if not is_packaged(str(source)):
            raise JaxValuesError(f"{source!r}: validate needs a local HF directory, a .gguf file or a packaged name")
        from jaxvalues.zoo.fetch import resolve

        p = resolve(str(source))
    kw = dict(dtype=torch.float32, attn_implementation="eager", trust_remote_code=False)
    if p.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(p), use_safetensors=True, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, **kw)
    return model.eval()


def _pick(records, n: int):
    """Up to n records, round-robin over (value, lang) so every value and language appears."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r.value, r.lang), []).append(r)
    keys = sorted(groups)
    out, i = [], 0
    while len(out) < n and any(groups.values()):
        g = groups[keys[i % len(keys)]]
        if g:
            out.append(g.pop(0))
        i += 1
    return out


def _encode(lm, rendered):
    tok = lm.tokenizer
    return [tok(r.text, add_special_tokens=r.add_special_tokens)["input_ids"] for r in rendered]


def _run_both(lm, model, seqs, batch_size=4):
    """Yield (jax logits, torch logits, jax neurons, torch neurons, mask) per padded batch."""
    from jaxvalues.models.lm import pad_batch
    from jaxvalues.testing import torch_forward

    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        length = -(-max(len(s) for s in chunk) // 64) * 64  # bucketed: few compilations
        ids, mask = pad_batch(chunk + [chunk[-1]] * (batch_size - len(chunk)), lm.pad_id, side="right", length=length)
        out = lm.forward(ids, mask, capture_neurons=True)
        k = len(chunk)
        ids, mask = ids[:k], mask[:k]
        ref_logits, ref_neurons = torch_forward(model, ids, mask)
        yield (np.asarray(out.logits)[:k], ref_logits, np.asarray(out.neurons)[:, :k], ref_neurons,
               mask.astype(bool))


def validate(source: str, dataset: str = "builtin", max_records: int = 8, dtype: str = "float32",
             lm=None, torch_model=None, progress: bool = True) -> dict:
    import jaxvalues as jv
    from jaxvalues.data.io import load_records
    from jaxvalues.data.prompts import label_token_ids, render_activation, render_evaluation
    from jaxvalues.identify.vape import lape_select

    t0 = time.time()
    lm = lm or jv.load_model(source, dtype=dtype)
    if lm.tokenizer is None:
        raise JaxValuesError(f"{source}: the model has no tokenizer; validate renders text prompts")
    model = torch_model if torch_model is not None else torch_reference(source)
    acts = _pick(load_records(dataset, kind="activation"), max_records)
    evals = _pick(load_records(dataset, kind="evaluation"), max_records)
    if not acts or not evals:
        raise JaxValuesError(f"{dataset}: validate needs activation and evaluation records")

    # 1. logits and neurons on activation texts; per-value activation probabilities on the way
    values = sorted({r.value for r in acts})
    L, N = lm.config.num_layers, lm.config.num_neurons
    counts = {fw: np.zeros((len(values), L, N)) for fw in ("jax", "torch")}
    tokens = np.zeros(len(values))
    max_logit = max_neuron = 0.0
    seqs = _encode(lm, [render_activation(r, lm.tokenizer) for r in acts])
    for b, (jl, tl, jn, tn, mask) in enumerate(_run_both(lm, model, seqs)):
        max_logit = max(max_logit, float(np.abs(jl[mask] - tl[mask]).max()))
        max_neuron = max(max_neuron, float(np.abs(jn[:, mask] - tn[:, mask]).max()))
        for j, rec in enumerate(acts[b * 4:(b + 1) * 4]):
            c = values.index(rec.value)
            m = mask[j]
            counts["jax"][c] += (jn[:, j][:, m] > 0).sum(1)
            counts["torch"][c] += (tn[:, j][:, m] > 0).sum(1)
            tokens[c] += m.sum()
    sets = {}
    for fw, cnt in counts.items():
        res = lape_select(cnt / tokens[:, None, None], values)
        sets[fw] = {v: {tuple(x) for x in res.selected[res.assignment[c]].tolist()} for c, v in enumerate(values)}
    jaccard = {}
    for v in values:
        a, b = sets["jax"][v], sets["torch"][v]
        jaccard[v] = 1.0 if not a and not b else len(a & b) / len(a | b)

    # 2. choice probabilities on evaluation prompts, both orders
    prompts = [render_evaluation(r, lm.tokenizer, order) for r in evals for order in ("aligned_first", "aligned_second")]
    seqs = _encode(lm, prompts)
    p_jax, p_torch = [], []
    for b, (jl, tl, _, _, mask) in enumerate(_run_both(lm, model, seqs)):
        last = mask.sum(1) - 1
        for j, pr in enumerate(prompts[b * 4:(b + 1) * 4]):
            ids = label_token_ids(lm.tokenizer, pr.lang, pr)
            a, v = ids[pr.aligned_label], ids[pr.violating_label]
            for logits, out in ((jl, p_jax), (tl, p_torch)):
                z = logits[j, last[j], [a, v]].astype(np.float64)
                out.append(1.0 / (1.0 + np.exp(z[1] - z[0])))
    p_jax, p_torch = np.array(p_jax).reshape(-1, 2).mean(1), np.array(p_torch).reshape(-1, 2).mean(1)
    per_value = {}
    for v in sorted({r.value for r in evals}):
        idx = [i for i, r in enumerate(evals) if r.value == v]
        per_value[v] = {"jax": float(p_jax[idx].mean()), "torch": float(p_torch[idx].mean())}

    return {
        "source": str(source), "model_type": lm.config.model_type, "dtype": lm.dtype,
        "records": {"activation": len(acts), "evaluation": len(evals)},
        "max_abs_diff": {"logits": max_logit, "neurons": max_neuron,
                         "p_aligned": float(np.abs(p_jax - p_torch).max())},
        "vape_jaccard": jaccard, "vape_jaccard_mean": float(np.mean(list(jaccard.values()))),
        "vape_sizes": {fw: {v: len(s) for v, s in d.items()} for fw, d in sets.items()},
        "p_aligned": per_value, "seconds": round(time.time() - t0, 2),
    }


# --- CLI -----------------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="compare jaxvalues with transformers' PyTorch model on the same inputs")
    p.add_argument("--model", help="HF directory, .gguf file or packaged name")
    p.add_argument("--run", metavar="DIR", help="re-score a finished run's baseline, targeted and control "
                   "conditions in PyTorch (a seeded sample of its held-out dilemmas)")
    p.add_argument("--sample", type=int, default=16, help="--run: dilemmas to re-score (default 16)")
    p.add_argument("--controls", type=int, default=3, help="--run: controls per value to re-score (default 3)")
    p.add_argument("--dataset", default="builtin", help="dataset file or 'builtin' (default)")
    p.add_argument("--max-records", type=int, default=8, help="activation and evaluation records to use (default 8)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit diff that passes (default 1e-3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    import math

    from jaxvalues.errors import ConfigError

    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise ConfigError(f"--tolerance must be a finite number >= 0, got {args.tolerance:g}")
    if args.max_records < 1:
        raise ConfigError(f"--max-records must be >= 1, got {args.max_records}")
    if args.run:
        return _cmd_run(args)
    if not args.model:
        raise ConfigError("validate: give --model M (logit/neuron parity) or --run DIR (a run's findings)")
    rep = validate(args.model, args.dataset, args.max_records, args.dtype)
    ok = rep["max_abs_diff"]["logits"] <= args.tolerance
    rep["pass"] = ok
    if args.json:
        print(json.dumps(rep, indent=1, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"jaxvalues vs transformers: {args.model}")
        t.add_column("check")
        t.add_column("result", justify="right")
        for k, v in rep["max_abs_diff"].items():
            t.add_row(f"max |Δ| {k}", f"{v:.3g}")
        t.add_row("VAPE Jaccard (mean over values)", f"{rep['vape_jaccard_mean']:.3f}")
        t.add_row("verdict", "[green]PASS[/green]" if ok else "[red]FAIL[/red]")
        Console(file=sys.stdout).print(t)
    return 0 if ok else 1


def _cmd_run(args) -> int:
    from jaxvalues.validate_run import validate_run

    rep = validate_run(args.run, size=args.sample, controls=args.controls)
    ok = rep["max_abs_diff_p_aligned"] <= args.tolerance
    rep["pass"] = ok
    if args.json:
        print(json.dumps(rep, indent=1, ensure_ascii=False))
        return 0 if ok else 1
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"run {args.run}: jaxvalues vs PyTorch ({rep['dilemmas']} dilemmas)")
    for col in ("value", "Δ log-odds jax", "torch", "excess jax", "torch", "diff"):
        t.add_column(col, justify="left" if col == "value" else "right")
    for v, d in rep["per_value"].items():
        f = lambda x: "n/a" if x is None else f"{x:+.4f}"  # noqa: E731
        t.add_row(v, f(d["jax"]["delta_logodds"]), f(d["torch"]["delta_logodds"]), f(d["jax"]["excess_logodds"]),
                  f(d["torch"]["excess_logodds"]), f(d["difference"]["excess_logodds"]))
    con = Console(file=sys.stdout)
    con.print(t)
    con.print(f"max |Δ P(aligned)| between frameworks: {rep['max_abs_diff_p_aligned']:.2e} "
              f"({'PASS' if ok else 'FAIL'} at {args.tolerance:g})")
    return 0 if ok else 1
