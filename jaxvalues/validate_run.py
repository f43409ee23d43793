"""`jaxvalues validate --run DIR`: a finished run's findings re-scored in transformers' PyTorch model.

For a seeded sample of the run's held-out dilemmas (`size`, spread round-robin over values and
languages), the baseline, the dilemma's value's targeted condition and that value's random
controls (first `controls` of them) are scored again in PyTorch, with forward hooks on the FFN
activation that apply the same neurons the same way (zero: act[..., n] = 0; scale: act[..., n] *= γ).
Each prompt runs alone (no padding), so nothing but the framework differs. Reported per condition
and dilemma: P(aligned) in both frameworks; per value: Δ (targeted − baseline) and excess
(Δ − mean control Δ) in P(aligned) and in log-odds, in both frameworks, and their differences.
The run's own numbers (results.parquet) are the jaxvalues side, so the check covers the engine
as it ran, not a re-run of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError


def _read_run(run: Path):
    import pandas as pd
    import yaml

    need = ("config.yaml", "results.parquet", "conditions.json")
    missing = [n for n in need if not (run / n).is_file()]
    if missing:
        raise ConfigError(f"--run {run}: not a finished `jaxvalues run` directory (missing {', '.join(missing)})")
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        conds = json.loads((run / "conditions.json").read_text(encoding="utf-8"))
        table = pd.read_parquet(run / "results.parquet")
    except Exception as e:  # corrupt files: one line naming the directory
        raise ConfigError(f"--run {run}: cannot read the run's files ({type(e).__name__}: {e})") from None
    return cfg, conds, table


def _sample(base, size: int, seed: int) -> list[str]:
    """A seeded sample of record ids, round-robin over (value, language)."""
    from types import SimpleNamespace

    from jaxvalues.validate import _pick

    rng = np.random.default_rng([int(seed), 17])
    rows = [SimpleNamespace(id=i, value=v, lang=l) for i, v, l in base[["record_id", "value", "lang"]].itertuples(False)]
    return [r.id for r in _pick([rows[i] for i in rng.permutation(len(rows))], size)]


def validate_run(run_dir, size: int = 16, controls: int = 3, seed: int = 0, torch_model=None, progress=True) -> dict:
    import pandas as pd

    import jaxvalues as jv
    from jaxvalues.data.io import load_records
    from jaxvalues.evaluate.choice import build_choice_prompts
    from jaxvalues.testing import torch_forward

    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"--sample: expected a positive integer, got {size!r}")
    if not isinstance(controls, int) or controls < 0:
        raise ConfigError(f"--controls: expected an integer ≥ 0, got {controls!r}")
    run = Path(run_dir)
    cfg, conds, table = _read_run(run)
    mode, gamma = cfg["evaluate"]["mode"], cfg["evaluate"].get("gamma")
    if cfg["evaluate"].get("protocol", "choice") != "choice":
        raise ConfigError(f"--run {run}: validate --run re-scores the choice protocol; this run generated replies "
                          f"(protocol {cfg['evaluate']['protocol']!r}); use `jaxvalues validate --model` for parity")
    if mode not in ("zero", "scale"):
        raise ConfigError(f"--run {run}: validate --run re-applies modes zero and scale; this run used {mode!r}")
    base = table[table["kind"] == "baseline"]
    ids = _sample(base, size, seed)
    by_id = {r.id: r for r in load_records(cfg["dataset"], kind="evaluation")}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise JaxValuesError(f"--run {run}: dataset {cfg['dataset']} no longer holds record(s) {missing[:3]}")
    recs = [by_id[i] for i in ids]
    lm = jv.load_model(cfg["model"], dtype="float32")
    if torch_model is None:
        from jaxvalues.validate import torch_reference

        torch_model = torch_reference(cfg["model"])
    prompts = build_choice_prompts(recs, lm.tokenizer)

    def hook_for(neurons):
        import torch

        per = {int(l): torch.tensor(sorted(v), dtype=torch.long) for l, v in neurons.items()}

        def fn(layer, out):
            idx = per.get(layer)
            if idx is None:
                return out
            out = out.clone()
            out[..., idx] = 0.0 if mode == "zero" else out[..., idx] * float(gamma)
            return out
        return fn

    wanted = []  # (condition name, record ids it is scored on)
    values = sorted({r.value for r in recs})
    wanted.append(("baseline", set(ids)))
    for v in values:
        own = {r.id for r in recs if r.value == v}
        if f"value:{v}" in conds:
            wanted.append((f"value:{v}", own))
            ctrl = [n for n, c in conds.items() if c["kind"] == "control" and c["value"] == v][:controls]
            wanted.extend((n, own) for n in ctrl)
    rows = []
    for name, rids in wanted:
        fn = None if name == "baseline" else hook_for(conds[name]["neurons"])
        for r in range(prompts.num_rows):
            meta = prompts.meta[prompts.dilemma[r]]
            if meta["record_id"] not in rids:
                continue
            m = prompts.attention_mask[r] > 0
            seq = prompts.input_ids[r][m][None]
            logits, _ = torch_forward(torch_model, seq, np.ones_like(seq), hook_fn=fn)
            z = logits[0, -1, prompts.label_ids[r]].astype(np.float64)
            rows.append({"condition": name, "record_id": meta["record_id"], "value": meta["value"],
                         "order": int(prompts.order[r]), "logodds": float(z[0] - z[1])})
    tt = pd.DataFrame(rows).groupby(["condition", "record_id", "value"], as_index=False)["logodds"].mean()
    tt["p_aligned"] = 1.0 / (1.0 + np.exp(-tt["logodds"]))
    jj = table[["condition", "record_id", "p_aligned", "logodds"]]
    both = tt.merge(jj, on=["condition", "record_id"], suffixes=("_torch", "_jax"))
    if len(both) != len(tt):
        raise JaxValuesError(f"--run {run}: results.parquet lacks rows the run should have scored")
    both["abs_diff_p"] = (both["p_aligned_torch"] - both["p_aligned_jax"]).abs()

    def effects(fw):
        b = both[both["condition"] == "baseline"].set_index("record_id")
        out = {}
        for v in values:
            t = both[both["condition"] == f"value:{v}"].set_index("record_id")
            if t.empty:
                continue
            res = {}
            for metric in ("p_aligned", "logodds"):
                col = f"{metric}_{fw}"
                d = float((t[col] - b.loc[t.index, col]).mean())
                cs = [float((g.set_index("record_id")[col] - b.loc[g["record_id"], col].to_numpy()).mean())
                      for n, g in both[both["condition"].str.startswith(f"random:{v}#")].groupby("condition")]
                res[f"delta_{metric}"] = d
                res[f"excess_{metric}"] = d - float(np.mean(cs)) if cs else None
            out[v] = res
        return out

    ej, et = effects("jax"), effects("torch")
    per_value = {v: {"jax": ej[v], "torch": et[v],
                     "difference": {k: (None if ej[v][k] is None else et[v][k] - ej[v][k]) for k in ej[v]}}
                 for v in ej}
    return {"run": str(run), "model": cfg["model"], "mode": mode, "dilemmas": len(ids),
            "conditions": len(wanted), "scored_rows": len(rows),
            "max_abs_diff_p_aligned": float(both["abs_diff_p"].max()), "per_value": per_value}
