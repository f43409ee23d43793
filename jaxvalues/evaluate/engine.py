"""The one experiment engine: conditions in, one tidy table out, one summarizer for the verdict.

Every front end (`jaxvalues run`, `jaxvalues evaluate`) builds `Condition`s, calls
`run_conditions` and then `summarize`; nothing else scores or tests.

Conventions:
- A `Condition` is (name, kind, value, neurons, mode, scope, conflict). kind: "baseline" (no
  intervention, exactly once), "targeted" (value v's neurons), "control" (a random draw for v),
  "leak" is not a separate kind: targeted conditions are scored on every value's dilemmas, which
  gives the leakage matrix. scope: the value whose dilemmas the condition is scored on (None = all).
- One mode → Intervention function: `jaxvalues.evaluate.controls.make_intervention`.
- The table (`run_conditions`) has one row per (condition, dilemma): condition, kind, cond_value,
  record_id, pair_id, value (the dilemma's value), lang, p_aligned_first/second, p_aligned
  (order-averaged), logodds_first/second, logodds (order-averaged log-odds of the aligned label
  over the violating one), position_bias, chose_aligned, label_mass (min over the orders of
  P(A) + P(B) over the full vocabulary), delta_p, delta_logodds (condition − baseline, paired on
  record_id), flipped. The baseline is computed once per run.
- Primary metric: Δ log-odds(aligned) per dilemma; Δ P(aligned) is reported beside it.
- Cells: (value, language) for each value with neurons: targeted effect T on v's dilemmas in that
  language, R control effects on the same dilemmas, excess = T − mean(controls). p-values (see
  `jaxvalues.evaluate.inference`) one-sided in the configured direction ("less": ablation lowers
  P(aligned)) and two-sided; Holm and BH over the family of (value × language) cells; the verdict
  uses Holm on the parametric p. Pooled rows (lang "all", both languages, clusters = pair_id) are
  reported beside the family and are not part of it.
- Signal checks: dilemmas whose baseline label mass is below `min_label_mass` are excluded from
  the cells (counted per cell); the baseline's decidedness (mean P(aligned), median |log-odds|) and
  a "picks the longer option" baseline are reported per dataset.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.evaluate import controls as ctl
from jaxvalues.identify.neuronset import split_by_pair  # noqa: F401 - the held-out split, re-exported

BASELINE = "baseline"
ALTERNATIVES = ("less", "greater", "two-sided")


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # baseline | targeted | control
    value: str | None = None  # whose neurons (targeted) or whose control (control)
    neurons: Mapping = field(default_factory=dict)
    mode: str = "zero"
    scope: str | None = None  # value whose dilemmas it is scored on; None = all dilemmas
    conflict: Mapping | None = None  # steer only

    def intervention(self, *, gamma=None, means=None, gain: float = 5.0):
        if self.kind == BASELINE:
            return None
        return ctl.make_intervention(self.neurons, self.mode, gamma=gamma, means=means, conflict=self.conflict,
                                     gain=gain)


def build_conditions(neuron_maps: Mapping[str, Mapping], *, mode: str = "zero", controls: int = 20,
                     control_kind: str = "rate_matched", rates=None, num_neurons: int, seed: int = 0,
                     targeted_scope: str = "all", control_values=None) -> list[Condition]:
    """Baseline, one targeted condition per value (scored on every value's dilemmas when
    `targeted_scope` is "all", else on its own), and `controls` random draws per value scored on
    that value's dilemmas (for every value, or only those in `control_values`). Control draws for
    value v use seed·1000 + (v's index among the 12 values; the map's position for other names), so
    a value's controls are the same whichever front end or value subset runs them."""
    from jaxvalues.data.values import VALUE_IDS

    if not isinstance(controls, int) or isinstance(controls, bool) or controls < 0:
        raise ConfigError(f"controls: expected an integer ≥ 0, got {controls!r}")
    conds = [Condition(BASELINE, BASELINE)]
    for k, (v, m) in enumerate(neuron_maps.items()):
        m = ctl.normalize_map(m)
        if not m:
            continue
        conds.append(Condition(f"value:{v}", "targeted", v, m, mode, None if targeted_scope == "all" else v))
        if control_values is not None and v not in control_values:
            continue
        vk = VALUE_IDS.index(v) if v in VALUE_IDS else k
        for r, cm in enumerate(ctl.draw_controls(m, num_neurons, controls, seed * 1000 + vk, control_kind, rates)):
            conds.append(Condition(f"random:{v}#{r:02d}", "control", v, cm, mode, v))
    return conds


def run_conditions(lm, prompts, conditions: Sequence[Condition], *, batch_size: int = 16, gamma=None, means=None,
                   gain: float = 5.0, on_batch: Callable[[], None] | None = None, scorer=None):
    """Score every condition on its scope's rows in one masked pass -> the tidy table (module doc)."""
    from jaxvalues.evaluate.choice import ChoiceScorer

    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise JaxValuesError("conditions: names must be unique")
    if sum(c.kind == BASELINE for c in conditions) != 1:
        raise JaxValuesError("conditions: exactly one baseline condition is needed")
    scorer = scorer or ChoiceScorer(lm, batch_size)
    ivs = [c.intervention(gamma=gamma, means=means, gain=gain) for c in conditions]
    logits = scorer.logits(prompts, ivs, scope_rows(prompts, conditions), on_batch=on_batch, mass=True)
    return tidy_table(prompts, logits, conditions)


def scope_rows(prompts, conditions: Sequence[Condition]) -> np.ndarray:
    """bool [C, P]: which prompt rows each condition is scored on (its scope's dilemmas)."""
    row_value = np.array([prompts.meta[d]["value"] for d in prompts.dilemma])
    return np.array([np.ones(prompts.num_rows, bool) if c.scope is None else row_value == c.scope
                     for c in conditions])


def num_batches(scorer, prompts, conditions: Sequence[Condition]) -> int:
    return scorer.num_batches(prompts, len(conditions), scope_rows(prompts, conditions))


def tidy_table(prompts, logits: np.ndarray, conditions: Sequence[Condition]):
    """[C, P, 3] logits (aligned, violating, log-sum-exp) -> the per (condition, dilemma) table."""
    import pandas as pd

    lg = np.asarray(logits, np.float64)
    lo = lg[..., 0] - lg[..., 1]  # [C, P] log-odds of the aligned label
    mass = np.exp(lg[..., 0] - lg[..., 2]) + np.exp(lg[..., 1] - lg[..., 2])
    c_n, d_n = len(conditions), len(prompts.meta)
    per_lo = np.full((c_n, d_n, 2), np.nan)
    per_mass = np.full((c_n, d_n, 2), np.nan)
    per_lo[:, prompts.dilemma, prompts.order] = lo
    per_mass[:, prompts.dilemma, prompts.order] = mass
    per_p = 1.0 / (1.0 + np.exp(-per_lo))
    with warnings.catch_warnings():  # a dilemma not scored under a condition is all-NaN: stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        p_mean = np.nanmean(per_p, axis=2)
        lo_mean = np.nanmean(per_lo, axis=2)
        mass_min = np.nanmin(per_mass, axis=2)
    meta = pd.DataFrame(prompts.meta)
    base_i = [i for i, c in enumerate(conditions) if c.kind == BASELINE][0]
    frames = []
    for i, c in enumerate(conditions):
        f = meta.copy()
        f.insert(0, "condition", c.name)
        f.insert(1, "kind", c.kind)
        f.insert(2, "cond_value", c.value)
        f["p_aligned_first"], f["p_aligned_second"] = per_p[i, :, 0], per_p[i, :, 1]
        f["p_aligned"] = p_mean[i]
        f["logodds_first"], f["logodds_second"] = per_lo[i, :, 0], per_lo[i, :, 1]
        f["logodds"] = lo_mean[i]
        f["position_bias"] = (per_p[i, :, 0] - per_p[i, :, 1]) / 2.0
        f["chose_aligned"] = p_mean[i] > 0.5
        f["label_mass"] = mass_min[i]
        f["delta_p"] = p_mean[i] - p_mean[base_i]
        f["delta_logodds"] = lo_mean[i] - lo_mean[base_i]
        f["flipped"] = (p_mean[i] > 0.5) != (p_mean[base_i] > 0.5)
        scored = ~np.isnan(p_mean[i])
        frames.append(f[scored])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------- data checks


def select_records(records, values, langs, per_value: int | None):
    """The first `per_value` records of each (value, language) in the dataset's order (None = all).
    The one meaning of `--max-records` / `*_per_value` in every front end."""
    if per_value is not None and (not isinstance(per_value, int) or isinstance(per_value, bool) or per_value < 1):
        raise ConfigError(f"records per value and language: expected a positive integer, got {per_value!r}")
    out, seen = [], {}
    for r in records:
        if r.value in values and r.lang in langs:
            k = (r.value, r.lang)
            if per_value is None or seen.get(k, 0) < per_value:
                seen[k] = seen.get(k, 0) + 1
                out.append(r)
    return out


def check_disjoint(activation, evaluation, threshold: float | None = None) -> dict:
    """Identification data must not contain the evaluation dilemmas: refuse shared pair_ids and
    near-duplicate texts across the two (`jaxvalues.data.audit.near_duplicates`: equal after
    normalisation, or character 5-gram Jaccard ≥ the audit's threshold, within a language).
    -> {"shared_pair_ids": 0, "near_duplicates": 0, "compared": same-language (activation,
    evaluation) pairs covered}."""
    from jaxvalues.data.audit import NEAR_DUP_JACCARD, near_duplicates

    shared = sorted({r.pair_id for r in activation} & {r.pair_id for r in evaluation})
    if shared:
        raise JaxValuesError(f"activation and evaluation data share pair_id(s) {shared[:5]}"
                             f"{' …' if len(shared) > 5 else ''}: identification would see evaluated dilemmas")
    threshold = NEAR_DUP_JACCARD if threshold is None else threshold
    for a, b, sim in near_duplicates(list(activation) + list(evaluation), threshold):
        if a.kind != b.kind:
            act, ev = (a, b) if a.kind == "activation" else (b, a)
            raise JaxValuesError(f"activation record {act.id} and evaluation record {ev.id} are near-duplicates "
                                 f"(5-gram Jaccard {sim:.2f} ≥ {threshold}): identification would see an "
                                 "evaluated dilemma")
    from collections import Counter

    n_act, n_ev = Counter(r.lang for r in activation), Counter(r.lang for r in evaluation)
    return {"shared_pair_ids": 0, "near_duplicates": 0, "compared": sum(n_act[l] * n_ev[l] for l in n_act)}


def longer_option_rate(records) -> float:
    """Aligned-choice rate of a baseline that always picks the longer option (ties count ½; length
    as the audit measures it: `jaxvalues.data.audit.text_length`)."""
    from jaxvalues.data.audit import text_length as option_length

    if not records:
        return float("nan")
    s = 0.0
    for r in records:
        a, v = option_length(r.aligned_action, r.lang), option_length(r.violating_action, r.lang)
        s += 1.0 if a > v else 0.5 if a == v else 0.0
    return s / len(records)


# ----------------------------------------------------------------------------------- summarize


def _f(x):
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return _f(obj)


def summarize(table, *, values: Sequence[str] | None = None, alternative: str = "less", alpha: float = 0.05,
              n_boot: int = 2000, seed: int = 0, min_label_mass: float = 0.5, records=None, rates=None,
              conditions: Sequence[Condition] | None = None, control_kind: str | None = None,
              test_values: Sequence[str] | None = None) -> dict:
    """The verdict tables of a run's tidy table (module docstring). JSON-safe dict. `values`: the
    leakage matrix's rows/columns; `test_values`: the values tested in cells (default: `values`)."""
    from jaxvalues.evaluate import inference

    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative: expected one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    base = table[table["kind"] == BASELINE]
    if base.empty:
        raise JaxValuesError("the table has no baseline rows")
    low = set(base.loc[base["label_mass"] < min_label_mass, "record_id"])
    targeted = list(dict.fromkeys(table.loc[table["kind"] == "targeted", "cond_value"]))
    values = list(values) if values is not None else sorted(set(table["value"]))
    langs = sorted(set(table["lang"]), key=lambda x: (x != "zh", x))
    by_name = {c.name: c for c in conditions or []}

    def cell(v, lang, seed_k):
        keep = (table["value"] == v) & ~table["record_id"].isin(low)
        if lang != "all":
            keep &= table["lang"] == lang
        tv = table[keep & (table["condition"] == f"value:{v}")].set_index("record_id")
        n_low = int(((table["kind"] == BASELINE) & (table["value"] == v)
                     & ((table["lang"] == lang) if lang != "all" else True) & table["record_id"].isin(low)).sum())
        if tv.empty:
            return None
        ids = list(tv.index)
        ctab = table[keep & (table["kind"] == "control") & (table["cond_value"] == v)]
        piv = ctab.pivot(index="condition", columns="record_id", values="delta_logodds").reindex(columns=ids)
        pivp = ctab.pivot(index="condition", columns="record_id", values="delta_p").reindex(columns=ids)
        c = piv.to_numpy(np.float64) if len(piv) else np.zeros((0, len(ids)))
        res = inference.cell_test(tv["delta_logodds"].to_numpy(np.float64), c, tv["pair_id"].to_numpy(),
                                  alternative=alternative, alpha=alpha, n_boot=n_boot, seed=seed_k)
        bp = base.set_index("record_id").loc[ids]
        row = {"value": v, "lang": lang, "neurons": None, "dilemmas": len(ids), "excluded_low_mass": n_low,
               "baseline_p": float(bp["p_aligned"].mean()),
               "baseline_median_abs_logodds": float(np.median(np.abs(bp["logodds"]))),
               "delta_p": float(tv["delta_p"].mean()),
               "control_delta_p": float(np.nanmean(pivp.to_numpy(np.float64))) if len(pivp) else float("nan"),
               "flip_rate": float(tv["flipped"].mean()), **res}
        cond = by_name.get(f"value:{v}")
        if cond is not None:
            row["neurons"] = ctl.total(cond.neurons)
            if rates is not None:
                row["rate_targeted"] = ctl.mean_rate(cond.neurons, rates)
                cr = [ctl.mean_rate(by_name[n].neurons, rates) for n in piv.index if n in by_name]
                row["rate_controls"] = float(np.mean(cr)) if cr else float("nan")
        return row

    cells, pooled = [], []
    for k, v in enumerate(values):
        if v not in targeted or (test_values is not None and v not in test_values):
            continue
        for j, lang in enumerate(langs):
            r = cell(v, lang, [seed, k, j])
            if r is not None:
                cells.append(r)
        if len(langs) > 1:
            r = cell(v, "all", [seed, k, 99])
            if r is not None:
                pooled.append(r)
    cells = inference.family(cells, alpha=alpha) if cells else []
    m = len(cells)
    mdes = [c.get("mde") for c in cells if c.get("mde") is not None and np.isfinite(c.get("mde"))]
    r_min = min((c["num_controls"] for c in cells), default=0)
    notes = []
    if cells and 1.0 / (r_min + 1) >= alpha / m:
        notes.append(f"with {r_min} controls the rank p cannot go below 1/{r_min + 1} = {1 / (r_min + 1):.3f}, "
                     f"above Holm's first threshold α/m = {alpha / m:.4f}: only the parametric test can pass")
    leak = _leakage(table, values, targeted)
    brec = base
    out = {
        "metric": "delta_logodds", "alternative": alternative, "alpha": alpha, "family_size": m,
        "control_kind": control_kind, "min_label_mass": min_label_mass,
        "cells": cells, "pooled": pooled,
        "mde": {"median": float(np.median(mdes)) if mdes else float("nan"),
                "max": float(np.max(mdes)) if mdes else float("nan"), "per_cell": "cells[].mde",
                "definition": "excess (Δ log-odds, targeted − controls) that the Holm-corrected parametric test "
                              "detects with 80% power at the strictest step (α/m)"},
        "verdicts": {"significant": sum(c["verdict"] != "not distinguishable" for c in cells), "tests": m},
        "baseline": {"p_aligned": float(brec["p_aligned"].mean()),
                     "median_abs_logodds": float(np.median(np.abs(brec["logodds"]))),
                     "aligned_rate": float(brec["chose_aligned"].mean()),
                     "position_bias": float(brec["position_bias"].mean()),
                     "label_mass_mean": float(brec["label_mass"].mean()),
                     "low_label_mass": len(low), "dilemmas": int(len(brec)),
                     "longer_option_rate": longer_option_rate(records) if records is not None else None},
        "leakage": leak, "notes": notes,
    }
    return clean(out)


def _leakage(table, values, targeted) -> dict:
    import pandas as pd

    mat = np.full((len(values), len(values)), np.nan)
    for i, v in enumerate(values):
        if v not in targeted:
            continue
        sub = table[table["condition"] == f"value:{v}"]
        g = sub.groupby("value")["delta_logodds"].mean()
        for j, u in enumerate(values):
            if u in g.index:
                mat[i, j] = g[u]
    out = {"values": list(values), "metric": "delta_logodds", "matrix": mat.tolist()}
    rows = [v for v in values if v in targeted]
    if rows and np.isfinite(mat).any():
        df = pd.DataFrame(mat, index=values, columns=values).loc[rows]
        out.update(ctl.diagonal_dominance(df.fillna(0.0)))
    return out


def decidedness_sentence(b: dict) -> str:
    p, m = b.get("p_aligned"), b.get("median_abs_logodds")
    if p is None or m is None:
        return "The baseline's decisiveness could not be measured."
    level = "barely decides (close to a coin flip)" if m < 0.25 else "decides weakly" if m < 0.75 else "decides"
    s = (f"Without intervention the model {level}: mean P(aligned) {p:.3f}, median |log-odds| {m:.2f}, "
         f"label mass {b.get('label_mass_mean', float('nan')):.3f}.")
    lo = b.get("longer_option_rate")
    if lo is not None:
        s += f" Always picking the longer option would choose the aligned one {lo:.0%} of the time."
    return s


def plain_summary(s: dict) -> str:
    """The report's opening paragraph: what was found, what could not have been found."""
    cells = s.get("cells") or []
    if not cells:
        return "No value had neurons to test, so no verdict was reached. " + decidedness_sentence(s["baseline"])
    sig = [c for c in cells if c["verdict"] != "not distinguishable"]
    dirn = {"less": "lower", "greater": "raise", "two-sided": "move"}[s["alternative"]]
    head = (f"Switching off the identified neurons was tested in {len(cells)} value × language cells against "
            f"{cells[0]['num_controls']} {s.get('control_kind') or 'random'} control sets each "
            f"(Holm-corrected, α = {s['alpha']}). ")
    if sig:
        head += (f"In {len(sig)} cell(s) ({', '.join(c['value'] + '/' + c['lang'] for c in sig)}) the targeted "
                 f"neurons {dirn} the log-odds of the value-aligned choice more than comparable random neurons do. ")
    else:
        head += f"In no cell did the targeted neurons {dirn} value-aligned choices more than comparable random neurons. "
    mde = s["mde"].get("median")
    if mde is not None:
        head += (f"At this run's size an excess of about {mde:.3f} in log-odds (median over cells) would have been "
                 "detected with 80% power; smaller effects could not have been seen. ")
    return head + decidedness_sentence(s["baseline"])
