"""One evaluation run: conditions in, per-dilemma table and a JSON-able summary out.

Conventions:
- Conditions: "baseline" (no intervention) always; "targeted" when a neuron set is given;
  "random#00".."random#{R-1}" (random controls with the targeted set's per-layer counts);
  "leak:{value}" for each value's set when a leakage matrix is asked for; "top@{f}" /
  "random@{f}#{r}" for a size sweep. All conditions of a protocol run as one batched sweep.
- The headline effect is measured on the targeted value's dilemmas (both languages; all
  dilemmas when no value is named): choice protocol delta_p (change in order-averaged
  P(aligned)), generation protocol shift (change in support for the aligned option).
- Summary fields: protocol, mode, value, counts, `groups` (per value × language summaries of
  baseline and targeted), `controls` (control_report of the headline effect and of the flip
  rate or n/a), `sweep`, `leakage` (matrix + diagonal dominance), `perplexity`,
  `unparseable` (generation: reply status counts per condition), `compilations`.
"""

from __future__ import annotations

from typing import Mapping

from jaxvalues.errors import ConfigError
from jaxvalues.evaluate import controls as ctl
from jaxvalues.evaluate import metrics
from jaxvalues.evaluate.engine import clean as _clean

BASELINE = "baseline"


def build_conditions(lm, *, target: Mapping | None = None, mode: str = "zero", gamma: float | None = None,
                     means=None, conflict: Mapping | None = None, gain: float = 5.0, controls: int = 0,
                     seed: int = 0, leakage_sets: Mapping[str, Mapping] | None = None,
                     sweep_scores=None, sweep_fractions=ctl.SWEEP_FRACTIONS, sweep_controls: int = 0) -> dict:
    """Named interventions for one run (see module docstring)."""
    n = lm.config.num_neurons
    kw = dict(gamma=gamma, means=means, gain=gain)
    conds: dict = {BASELINE: None}
    if target is not None:
        conds["targeted"] = ctl.make_intervention(target, mode, conflict=conflict, **kw)
        if controls:
            if mode == "steer":
                for r, (s, c) in enumerate(ctl.random_steer_like(target, conflict, n, controls, seed)):
                    conds[f"random#{r:02d}"] = ctl.steer_intervention(s, c, gain)
            else:
                for r, m in enumerate(ctl.random_like(target, n, controls, seed)):
                    conds[f"random#{r:02d}"] = ctl.make_intervention(m, mode, **kw)
    elif controls:
        raise ConfigError("--controls needs a targeted neuron set (--neurons FILE --value V)")
    if leakage_sets:
        if mode == "steer":
            raise ConfigError("the leakage matrix is computed for zero/mean/scale modes, not steer")
        for v, m in leakage_sets.items():
            conds[f"leak:{v}"] = ctl.make_intervention(m, mode, **kw)
    if sweep_scores is not None:
        if mode == "steer":
            raise ConfigError("the size sweep is computed for zero/mean/scale modes, not steer")
        conds.update(ctl.sweep_conditions(sweep_scores, sweep_fractions, mode, sweep_controls, seed, **kw))
    return conds


def summarize_run(table, protocol: str, *, value: str | None = None, n_boot: int = 1000, seed: int = 0,
                  replies=None, leakage_values: Mapping[str, str] | None = None) -> dict:
    """-> (JSON-safe summary dict, per condition × group DataFrame) of a finished run."""
    choice = protocol == "choice"
    summ = (metrics.summarize_choice if choice else metrics.summarize_support)(table, BASELINE, n_boot, seed)
    head = "delta_p" if choice else "shift"
    grp_v = value if value is not None else metrics.ALL
    conds = list(dict.fromkeys(table["condition"]))
    out: dict = {"protocol": protocol, "value": value, "conditions": conds,
                 "num_dilemmas": int((table["condition"] == BASELINE).sum()), "headline_metric": head}
    keep = summ[summ["condition"].isin([BASELINE, "targeted"])]
    out["groups"] = keep.to_dict(orient="records")
    if "targeted" in conds:
        out["targeted"] = _clean(keep[(keep["condition"] == "targeted") & (keep["value"] == grp_v)
                                      & (keep["lang"] == metrics.ALL)].to_dict(orient="records"))
    randoms = [c for c in conds if c.startswith("random#")]
    if "targeted" in conds and randoms:
        def eff(c, m):
            return metrics.effect(summ, c, grp_v, metrics.ALL, m)
        rep = {head: ctl.control_report(eff("targeted", head), [eff(c, head) for c in randoms])}
        if choice:
            rep["flip_rate"] = ctl.control_report(eff("targeted", "flip_rate"), [eff(c, "flip_rate") for c in randoms])
        out["controls"] = rep
    sweep = [c for c in conds if c.startswith("top@")]
    if sweep:
        rows = []
        for c in sweep:
            f = c.split("@", 1)[1]
            ctrl = [metrics.effect(summ, r, grp_v, metrics.ALL, head) for r in conds if r.startswith(f"random@{f}#")]
            rows.append({"fraction": float(f), **ctl.control_report(metrics.effect(summ, c, grp_v, metrics.ALL, head),
                                                                     ctrl)})
        out["sweep"] = rows
    if leakage_values:
        mat = ctl.leakage_matrix(table, leakage_values, BASELINE, "p_aligned" if choice else "support_aligned")
        out["leakage"] = {"metric": head, "rows_intervened_columns_evaluated": mat.to_dict(orient="index"),
                          "dominance": ctl.diagonal_dominance(mat)}
    if replies is not None:
        from jaxvalues.evaluate.support import status_counts

        out["unparseable"] = status_counts(replies)
    return _clean(out), summ
