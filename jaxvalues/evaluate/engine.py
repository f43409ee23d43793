"""The one experiment engine: conditions in, one tidy table out, one summarizer for the verdict.

Every front end (`jaxvalues run`, `jaxvalues evaluate` with a targeted value) builds
`Condition`s, calls `run_conditions` (choice protocol) or `run_generate` (generation protocol)
and then `summarize`; nothing else scores or tests.

Conventions:
- A `Condition` is (name, kind, value, neurons, mode, scope, conflict). kind: "baseline" (no
  intervention, exactly once), "targeted" (value v's neurons), "control" (a matched random draw
  for v, used for the verdict), "authors_random" (the authors' unmatched random baseline, reported
  beside the verdict). Targeted conditions of the first mode are scored on every value's
  dilemmas when leakage is asked for, which gives the leakage matrix. scope: the value whose
  dilemmas the condition is scored on (None = all). Modes: zero, mean, scale, steer (×gain on
  the value's support-only neurons, 0 on its conflict-only ones), steer_against (the two sets
  swapped); several modes can run in one sweep (names then carry a "{mode}/" prefix).
- One mode → Intervention function: `jaxvalues.evaluate.controls.make_intervention`.
- The choice table (`run_conditions`) has one row per (condition, dilemma): condition, kind,
  cond_value, mode, record_id, pair_id, value (the dilemma's value), lang,
  p_aligned_first/second, p_aligned (order-averaged), logodds_first/second, logodds
  (order-averaged log-odds of the aligned label over the violating one), position_bias,
  chose_aligned, label_mass (min over the orders of P(A) + P(B) over the full vocabulary),
  delta_p, delta_logodds (condition − baseline, paired on record_id), flipped. The generation
  table (`run_generate`) has the same key columns and support_aligned (percent; NaN unless every
  requested order parsed), incomplete, delta_support. The baseline is computed once per run.
- Primary metric: Δ log-odds(aligned) per dilemma (choice; Δ P(aligned) beside it) or Δ support
  for the aligned option in percentage points (generate).
- Cells: (mode, value, language) for each value with neurons: targeted effect T on v's dilemmas
  in that language, R control effects on the same dilemmas, excess = T − mean(controls).
  p-values (see `jaxvalues.evaluate.inference`) one-sided in the direction configured per mode
  ("less": the intervention lowers the aligned option) and two-sided; Holm and BH over the
  family of all cells; the verdict uses Holm on the parametric p. Pooled rows (lang "all", both
  languages, clusters = pair_id) are reported beside the family and are not part of it.
- Signal checks: choice dilemmas whose baseline label mass is below `min_label_mass` are
  excluded from the cells (counted per cell); generation dilemmas whose replies did not parse
  are excluded and counted; the baseline's decidedness and a "picks the longer option" baseline
  are reported per dataset.
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

from jaxvalues.evaluate.inference import ALTERNATIVES

BASELINE = "baseline"


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # baseline | targeted | control | authors_random
    value: str | None = None  # whose neurons (targeted) or whose control (control, authors_random)
    neurons: Mapping = field(default_factory=dict)  # for steer modes: the set multiplied by the gain
    mode: str = "zero"  # zero | mean | scale | steer | steer_against
    scope: str | None = None  # value whose dilemmas it is scored on; None = all dilemmas
    conflict: Mapping | None = None  # steer modes: the set switched off

    def intervention(self, *, gamma=None, means=None, gain: float = 5.0):
        if self.kind == BASELINE:
            return None
        mode = "steer" if self.mode in ctl.STEER_MODES else self.mode
        return ctl.make_intervention(self.neurons, mode, gamma=gamma, means=means, conflict=self.conflict,
                                     gain=gain)


def check_modes(mode) -> list[str]:
    """One mode or a list of distinct ones (`controls.RUN_MODES`) -> the list; else a ConfigError."""
    modes = [mode] if isinstance(mode, str) else list(mode) if isinstance(mode, (list, tuple)) else None
    if (not modes or any(not isinstance(m, str) or m not in ctl.RUN_MODES for m in modes)
            or len(set(modes)) != len(modes)):
        raise ConfigError(f"mode: expected one of {', '.join(ctl.RUN_MODES)} or a list of distinct modes, "
                          f"got {mode!r}")
    return modes


def build_conditions(neuron_maps: Mapping[str, Mapping], *, mode: str | Sequence[str] = "zero", controls: int = 20,
                     control_kind: str = "rate_matched", rates=None, num_neurons: int, seed: int = 0,
                     targeted_scope: str = "all", control_values=None, conflict_maps: Mapping | None = None,
                     authors_controls: int = 0, num_layers: int | None = None) -> list[Condition]:
    """Baseline, then for every mode: one targeted condition per value (scored on every value's
    dilemmas when `targeted_scope` is "all" and the mode is the first one, else on its own),
    `controls` random draws of `control_kind` per value scored on that value's dilemmas (for every
    value, or only those in `control_values`) and `authors_controls` draws of the authors'
    unmatched random baseline (kind "authors_random", reported beside the verdict).

    mode: one mode or a list (`controls.RUN_MODES`). Names: "value:{v}", "random:{v}#{r}",
    "authors:{v}#{r}", prefixed with "{mode}/" when several modes run. Steer modes need
    `conflict_maps` ({v: conflict set}): "steer" multiplies v's support-only neurons by the gain
    and zeroes its conflict-only ones, "steer_against" swaps the two sets. Control draws for value
    v and mode k use seed·1000 + 50·k + (v's index among the 12 values; the map's position for
    other names), so a value's controls are the same whichever front end or value subset runs
    them."""
    from jaxvalues.data.values import VALUE_IDS

    modes = check_modes(mode)
    for name, n in (("controls", controls), ("authors_controls", authors_controls)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{name}: expected an integer ≥ 0, got {n!r}")
    if authors_controls and num_layers is None:
        raise ConfigError("authors_controls: the authors' random baseline needs num_layers")
    conds = [Condition(BASELINE, BASELINE)]
    for mk, md in enumerate(modes):
        pre = f"{md}/" if len(modes) > 1 else ""
        steer = md in ctl.STEER_MODES
        for k, (v, m) in enumerate(neuron_maps.items()):
            m, other = ctl.normalize_map(m), None
            if steer:
                if conflict_maps is None or v not in conflict_maps:
                    raise ConfigError(f"mode {md!r} needs a conflict neuron set for value {v!r} (identify with "
                                      "method vape-stance)")
                other = ctl.normalize_map(conflict_maps[v])
                if md == "steer_against":
                    m, other = other, m
                if m == other:
                    continue  # support and conflict sets equal: steering changes nothing
            elif not m:
                continue
            scope = None if targeted_scope == "all" and mk == 0 else v
            conds.append(Condition(f"{pre}value:{v}", "targeted", v, m, md, scope, other))
            if control_values is not None and v not in control_values:
                continue
            vk = seed * 1000 + 50 * mk + (VALUE_IDS.index(v) if v in VALUE_IDS else k)
            # (neurons, conflict) pairs; conflict None outside the steer modes
            if steer:
                drawn = ctl.draw_steer_controls(m, other, num_neurons, controls, vk, control_kind, rates)
                size = ctl.authors_size(m, other)
                authors = (list(zip(ctl.random_authors(size, num_layers, num_neurons, authors_controls, vk),
                                    ctl.random_authors(size, num_layers, num_neurons, authors_controls, vk + 25)))
                           if authors_controls else [])
            else:
                drawn = [(cm, None) for cm in ctl.draw_controls(m, num_neurons, controls, vk, control_kind, rates)]
                authors = [(a, None) for a in (ctl.random_authors(ctl.total(m), num_layers, num_neurons,
                                                                  authors_controls, vk) if authors_controls else [])]
            for kind, tag, draws in (("control", "random", drawn), ("authors_random", "authors", authors)):
                for r, (cs, cc) in enumerate(draws):
                    conds.append(Condition(f"{pre}{tag}:{v}#{r:02d}", kind, v, cs, md, v, cc))
    return conds


def run_conditions(lm, prompts, conditions: Sequence[Condition], *, batch_size: int = 16, gamma=None, means=None,
                   gain: float = 5.0, on_batch: Callable[[], None] | None = None, scorer=None):
    """Score every condition on its scope's rows in one masked pass -> the tidy table (module doc)."""
    from jaxvalues.evaluate.choice import ChoiceScorer

    _check_conditions(conditions)
    scorer = scorer or ChoiceScorer(lm, batch_size)
    ivs = [c.intervention(gamma=gamma, means=means, gain=gain) for c in conditions]
    logits = scorer.logits(prompts, ivs, scope_rows(prompts, conditions), on_batch=on_batch, mass=True)
    return tidy_table(prompts, logits, conditions)


def run_generate(lm, prompts, conditions: Sequence[Condition], *, batch_size: int = 8, max_new_tokens: int = 250,
                 gamma=None, means=None, gain: float = 5.0, on_batch: Callable[[], None] | None = None):
    """The generation (support-rate) protocol: every condition's greedy replies on its scope's rows
    (`jaxvalues.evaluate.support`) -> (tidy table, per-reply table).

    The tidy table has one row per (condition, dilemma): condition, kind, cond_value, mode,
    record_id, pair_id, value, lang, support_aligned (percent for the aligned option; mean over
    the orders, NaN unless every requested order parsed "ok"), support_aligned_first/_second,
    n_orders, n_unparseable, incomplete, delta_support (condition − baseline, paired on
    record_id; NaN when either is incomplete). The per-reply table keeps every reply with its
    parse status (`support.REPLY_STATUSES`)."""
    from jaxvalues.evaluate.support import generate_replies, reply_table, support_table

    _check_conditions(conditions)
    ivs = [c.intervention(gamma=gamma, means=means, gain=gain) for c in conditions]
    rows = scope_rows(prompts, conditions)
    replies = generate_replies(lm, prompts, ivs, max_new_tokens, batch_size, rows=rows, on_batch=on_batch)
    per_reply = reply_table(prompts, replies, [c.name for c in conditions], rows=rows)
    per = support_table(per_reply)
    kind = {c.name: c for c in conditions}
    per.insert(1, "kind", per["condition"].map(lambda n: kind[n].kind))
    per.insert(2, "cond_value", per["condition"].map(lambda n: kind[n].value))
    per.insert(3, "mode", per["condition"].map(lambda n: None if kind[n].kind == BASELINE else kind[n].mode))
    base = per[per["kind"] == BASELINE].set_index("record_id")["support_aligned"]
    per["delta_support"] = per["support_aligned"] - per["record_id"].map(base)
    return per, per_reply


def _check_conditions(conditions):
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise JaxValuesError("conditions: names must be unique")
    if sum(c.kind == BASELINE for c in conditions) != 1:
        raise JaxValuesError("conditions: exactly one baseline condition is needed")


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
        f.insert(3, "mode", None if c.kind == BASELINE else c.mode)
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


METRICS = {"choice": "delta_logodds", "generate": "delta_support"}


def protocol_of(table) -> str:
    """"choice" (a `run_conditions` table) or "generate" (a `run_generate` table)."""
    return "choice" if "delta_logodds" in table.columns else "generate"


def _alternatives(alternative, modes) -> dict:
    """One direction per mode: a string applies to every mode; a mapping names each mode."""
    if isinstance(alternative, str):
        if alternative not in ALTERNATIVES:
            raise ConfigError(f"alternative: expected one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
        return {m: alternative for m in modes}
    if not isinstance(alternative, Mapping):
        raise ConfigError(f"alternative: expected one of {', '.join(ALTERNATIVES)} or a mapping mode -> "
                          f"direction, got {alternative!r}")
    missing = [m for m in modes if m not in alternative]
    if missing:
        raise ConfigError(f"alternative: no direction for mode(s) {', '.join(missing)} (given: {dict(alternative)})")
    bad = {m: a for m, a in alternative.items() if a not in ALTERNATIVES}
    if bad:
        raise ConfigError(f"alternative: expected directions from {', '.join(ALTERNATIVES)}, got {bad}")
    return {m: alternative[m] for m in modes}


def summarize(table, *, values: Sequence[str] | None = None, alternative="less", alpha: float = 0.05,
              n_boot: int = 2000, seed: int = 0, min_label_mass: float = 0.5, records=None, rates=None,
              conditions: Sequence[Condition] | None = None, control_kind: str | None = None,
              test_values: Sequence[str] | None = None) -> dict:
    """The verdict tables of a run's tidy table (module docstring), for either protocol: the
    metric is Δ log-odds(aligned) for "choice" and Δ support for the aligned option (percentage
    points) for "generate". JSON-safe dict. `values`: the leakage matrix's rows/columns;
    `test_values`: the values tested in cells (default: `values`). `alternative`: one direction
    or {mode: direction} (every mode of the table named). One cell per (mode, value, language),
    all in one Holm/BH family; cells also report the authors' unmatched random baseline when the
    table has "authors_random" conditions (beside the verdict, never in it)."""
    from jaxvalues.evaluate import inference

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    protocol = protocol_of(table)
    metric = METRICS[protocol]
    choice = protocol == "choice"
    base = table[table["kind"] == BASELINE]
    if base.empty:
        raise JaxValuesError("the table has no baseline rows")
    modes = list(dict.fromkeys(table.loc[table["kind"] != BASELINE, "mode"].dropna()))
    alts = _alternatives(alternative, modes or ["zero"])
    low = set(base.loc[base["label_mass"] < min_label_mass, "record_id"]) if choice else set()
    values = list(values) if values is not None else sorted(set(table["value"]))
    langs = sorted(set(table["lang"]), key=lambda x: (x != "zh", x))
    by_name = {c.name: c for c in conditions or []}

    def cell(md, v, lang, seed_k):
        keep = (table["value"] == v) & ~table["record_id"].isin(low)
        if lang != "all":
            keep &= table["lang"] == lang
        own = keep & (table["cond_value"] == v) & (table["mode"] == md)
        tv = table[own & (table["kind"] == "targeted")].set_index("record_id")
        if tv.empty:
            return None
        n_low = int(((table["kind"] == BASELINE) & (table["value"] == v)
                     & ((table["lang"] == lang) if lang != "all" else True) & table["record_id"].isin(low)).sum())
        ids = list(tv.index)

        def pivot(kind, col):
            sub = table[own & (table["kind"] == kind)]
            piv = sub.pivot(index="condition", columns="record_id", values=col).reindex(columns=ids)
            return piv, (piv.to_numpy(np.float64) if len(piv) else np.zeros((0, len(ids))))

        piv, c = pivot("control", metric)
        res = inference.cell_test(tv[metric].to_numpy(np.float64), c, tv["pair_id"].to_numpy(),
                                  alternative=alts[md], alpha=alpha, n_boot=n_boot, seed=seed_k)
        bp = base.set_index("record_id").loc[ids]
        row = {"mode": md, "value": v, "lang": lang, "neurons": None, "dilemmas": len(ids)}
        if choice:
            _, cp = pivot("control", "delta_p")
            row.update({"excluded_low_mass": n_low, "baseline_p": float(bp["p_aligned"].mean()),
                        "baseline_median_abs_logodds": float(np.median(np.abs(bp["logodds"]))),
                        "delta_p": float(tv["delta_p"].mean()),
                        "control_delta_p": float(np.nanmean(cp)) if cp.size and np.isfinite(cp).any() else float("nan"),
                        "flip_rate": float(tv["flipped"].mean())})
        else:
            row.update({"baseline_support": float(np.nanmean(bp["support_aligned"]))
                        if bp["support_aligned"].notna().any() else float("nan"),
                        "scored": int(tv[metric].notna().sum()),
                        "incomplete_baseline": int(bp["incomplete"].sum()),
                        "incomplete_targeted": int(tv["incomplete"].sum())})
            ci = table.loc[own & (table["kind"] == "control"), "incomplete"]
            # does the intervention break the answer format more than comparable neurons do?
            row["incomplete_rate_targeted"] = float(tv["incomplete"].mean())
            row["incomplete_rate_controls"] = float(ci.mean()) if len(ci) else float("nan")
        row.update(res)
        _, a = pivot("authors_random", metric)
        if a.shape[0]:
            am = inference._row_means(a)
            am = am[~np.isnan(am)]
            row.update({"authors_random_mean": float(am.mean()) if am.size else float("nan"),
                        "authors_random_sd": float(am.std(ddof=1)) if am.size > 1 else float("nan"),
                        "authors_random_draws": int(am.size),
                        "excess_vs_authors": res["targeted"] - float(am.mean()) if am.size else float("nan"),
                        "p_vs_authors": inference.parametric_p(res["targeted"], am, alts[md])})
        cond = next((x for x in (conditions or []) if x.kind == "targeted" and x.value == v and x.mode == md), None)
        if cond is not None:
            row["neurons"] = ctl.total(cond.neurons) + (ctl.total(cond.conflict) if cond.conflict else 0)
            if rates is not None:
                row["rate_targeted"] = ctl.mean_rate(cond.neurons, rates)
                cr = [ctl.mean_rate(by_name[n].neurons, rates) for n in piv.index if n in by_name]
                row["rate_controls"] = float(np.mean(cr)) if cr else float("nan")
        return row

    cells, pooled = [], []
    for mi, md in enumerate(modes):
        for k, v in enumerate(values):
            if test_values is not None and v not in test_values:
                continue
            for j, lang in enumerate(langs):
                r = cell(md, v, lang, [seed, k, j] + ([mi] if mi else []))
                if r is not None:
                    cells.append(r)
            if len(langs) > 1:
                r = cell(md, v, "all", [seed, k, 99] + ([mi] if mi else []))
                if r is not None:
                    pooled.append(r)
    cells = inference.family(cells, alpha=alpha) if cells else []
    m = cells[0]["family_size"] if cells else 0
    mdes = [c.get("mde") for c in cells if c.get("mde") is not None and np.isfinite(c.get("mde"))]
    notes = []
    stuck = [c for c in cells if c["num_controls"] and not c["rank_can_pass"]]
    if stuck and m:  # m: cells with a finite p (none without controls)
        r = min(c["num_controls"] for c in stuck)
        notes.append(f"with {r} controls the rank p cannot go below 1/{r + 1} = {1 / (r + 1):.3f}, "
                     f"above Holm's first threshold α/m = {alpha / m:.4f}: only the parametric test can pass")
    targeted = list(dict.fromkeys(table.loc[(table["kind"] == "targeted") & (table["mode"] == (modes or [None])[0]),
                                            "cond_value"]))
    leak = _leakage(table[(table["kind"] == BASELINE) | (table["mode"] == (modes or [None])[0])], values, targeted,
                    metric)
    unit = "log-odds" if choice else "percentage points of support"
    out = {
        "protocol": protocol, "metric": metric, "modes": modes,
        "alternative": alternative if isinstance(alternative, str) else dict(alts), "alpha": alpha,
        "family_size": m, "control_kind": control_kind, "min_label_mass": min_label_mass if choice else None,
        "cells": cells, "pooled": pooled,
        "mde": {"median": float(np.median(mdes)) if mdes else float("nan"),
                "max": float(np.max(mdes)) if mdes else float("nan"), "per_cell": "cells[].mde", "unit": unit,
                "definition": f"excess ({metric}, targeted − controls, in {unit}) that the Holm-corrected "
                              "parametric test detects with 80% power at the strictest step (α/m)"},
        "verdicts": {"significant": sum(c["verdict"] != "not distinguishable" for c in cells), "tests": m},
        "baseline": _baseline_block(base, choice, low, records),
        "leakage": leak, "notes": notes,
    }
    return clean(out)


def _baseline_block(base, choice: bool, low, records) -> dict:
    out = {"dilemmas": int(len(base)),
           "longer_option_rate": longer_option_rate(records) if records is not None else None}
    if choice:
        out.update({"p_aligned": float(base["p_aligned"].mean()),
                    "median_abs_logodds": float(np.median(np.abs(base["logodds"]))),
                    "aligned_rate": float(base["chose_aligned"].mean()),
                    "position_bias": float(base["position_bias"].mean()),
                    "label_mass_mean": float(base["label_mass"].mean()), "low_label_mass": len(low)})
    else:
        sup = base["support_aligned"]
        out.update({"support_aligned": float(sup.mean()) if sup.notna().any() else float("nan"),
                    "aligned_rate": float((sup.dropna() > 50).mean()) if sup.notna().any() else float("nan"),
                    "scored": int(sup.notna().sum()), "incomplete": int(base["incomplete"].sum())})
    return out


def _leakage(table, values, targeted, metric: str = "delta_logodds") -> dict:
    import pandas as pd

    mat = np.full((len(values), len(values)), np.nan)
    for i, v in enumerate(values):
        if v not in targeted:
            continue
        sub = table[(table["kind"] == "targeted") & (table["cond_value"] == v)]
        g = sub.groupby("value")[metric].mean()
        for j, u in enumerate(values):
            if u in g.index:
                mat[i, j] = g[u]
    out = {"values": list(values), "metric": metric, "matrix": mat.tolist()}
    rows = [v for v in values if v in targeted]
    if rows and np.isfinite(mat).any():
        df = pd.DataFrame(mat, index=values, columns=values).loc[rows]
        out.update(ctl.diagonal_dominance(df.fillna(0.0)))
    return out


def decidedness_sentence(b: dict) -> str:
    if "support_aligned" in b:  # the generation protocol
        sup = b.get("support_aligned")
        if sup is None:
            return (f"No baseline reply could be scored ({b.get('incomplete')} of {b.get('dilemmas')} dilemmas had "
                    "an unparseable or inconsistent answer), so no effect could be measured.")
        s = (f"Without intervention the model gives the value-aligned option {sup:.1f}% support on average and "
             f"favours it in {b.get('aligned_rate', float('nan')):.0%} of dilemmas; {b.get('incomplete')} of "
             f"{b.get('dilemmas')} dilemmas had a reply that did not parse or did not add up to 100% and are "
             "left out.")
    else:
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


MODE_WORDS = {"zero": "Switching off", "mean": "Setting to their mean", "scale": "Scaling",
              "steer": "Steering towards the value", "steer_against": "Steering against the value"}


def plain_summary(s: dict) -> str:
    """The report's opening paragraph: what was found, what could not have been found."""
    cells = s.get("cells") or []
    if not cells:
        return "No value had neurons to test, so no verdict was reached. " + decidedness_sentence(s["baseline"])
    choice = s.get("protocol", "choice") == "choice"
    what = "the log-odds of the value-aligned choice" if choice else "the support for the value-aligned option"
    alts = s["alternative"] if isinstance(s["alternative"], dict) else {}
    head = ""
    for md in s.get("modes") or [cells[0].get("mode", "zero")]:
        mc = [c for c in cells if c.get("mode", "zero") == md]
        if not mc:
            continue
        alt = alts.get(md, s["alternative"] if isinstance(s["alternative"], str) else "less")
        dirn = {"less": "lower", "greater": "raise", "two-sided": "move"}[alt]
        sig = [c for c in mc if c["verdict"] != "not distinguishable"]
        head += (f"{MODE_WORDS.get(md, md)} the identified neurons was tested in {len(mc)} value × language cells "
                 f"against {mc[0]['num_controls']} {s.get('control_kind') or 'random'} control sets each "
                 f"(Holm-corrected over all {s['family_size']} cells, α = {s['alpha']}). ")
        if sig:
            head += (f"In {len(sig)} cell(s) ({', '.join(c['value'] + '/' + c['lang'] for c in sig)}) the targeted "
                     f"neurons {dirn} {what} more than comparable random neurons do. ")
        else:
            head += f"In no cell did the targeted neurons {dirn} {what} more than comparable random neurons. "
    mde = s["mde"].get("median")
    if mde is not None:
        unit = "log-odds" if choice else "percentage points of support"
        head += (f"At this run's size an excess of about {mde:.3f} {unit} (median over cells) would have been "
                 "detected with 80% power; smaller effects could not have been seen. ")
    return head + decidedness_sentence(s["baseline"])
