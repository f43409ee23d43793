"""VAPE: value activation probability entropy with LAPE's selection (pure NumPy over statistics).

p[c, l, n] = P(act > 0 | condition c) (`NeuronStats.probs()`); p̂ = p / Σ_c p (0 where the sum
is 0); VAPE[l, n] = −Σ_c p̂ log p̂ (natural log, 0·log 0 = 0). Selection, as LAPE
(RUCAIBox/Language-Specific-Neurons):
  1. filter value = the k-th smallest of all p (flattened over conditions × layers × neurons),
     k = round(size · filter_rate) (Python's round, clamped to [1, size]); a neuron is a
     candidate if p > filter value for some condition; other neurons get entropy +inf;
  2. keep the round(L · N · top_rate) lowest-entropy neurons (ties: lower layer, then neuron);
  3. bar value = the k-th smallest p with activation_bar_ratio; assign each kept neuron to EVERY
     condition whose p > bar value (several conditions, or none).
Deviations from the original code, on purpose: conditions without tokens are left out of the
percentiles and the entropy (reported in `no_data`, never NaN); when there are fewer candidates
than the top count, only candidates are kept (`shortfall` says how many were missing) instead of
padding with +inf-entropy neurons; a condition may get no neurons (reported in `empty`).
The authors' two-condition variant (`stance_select`) runs the same selection per value over
"{value}-support" and "{value}-conflict", with kinds decision (0.95/0.95) and semantic (0.50/0.50).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.identify.neuronset import NeuronSet

STANCE_KINDS = {
    "decision": dict(filter_rate=0.95, top_rate=0.01, activation_bar_ratio=0.95),
    "semantic": dict(filter_rate=0.50, top_rate=0.01, activation_bar_ratio=0.50),
}


def entropy(probs: np.ndarray) -> np.ndarray:
    """[C, L, N] activation probabilities -> [L, N] entropy of their normalisation over C."""
    p = np.nan_to_num(np.asarray(probs, np.float64), nan=0.0)
    total = p.sum(0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 0.0)
        logq = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -(q * logq).sum(0)


def kth_smallest(flat: np.ndarray, rate: float) -> float:
    k = min(max(int(round(flat.size * rate)), 1), flat.size)
    return float(np.partition(flat, k - 1)[k - 1])


@dataclass
class LapeResult:
    conditions: tuple[str, ...]
    probs: np.ndarray  # [C, L, N] (NaN rows for conditions without data)
    entropy: np.ndarray  # [L, N], +inf for non-candidates
    filter_value: float
    bar_value: float
    selected: np.ndarray  # [K, 2] (layer, neuron), lowest entropy first
    assignment: np.ndarray  # [C, K] bool
    params: dict = field(default_factory=dict)
    no_data: tuple[str, ...] = ()
    empty: tuple[str, ...] = ()  # conditions (with data) that got no neuron
    shortfall: int = 0  # top count − candidates kept, when candidates ran out

    def neurons(self, condition: str) -> dict[int, list[int]]:
        c = self.conditions.index(condition)
        out: dict[int, list[int]] = {}
        for layer, n in self.selected[self.assignment[c]]:
            out.setdefault(int(layer), []).append(int(n))
        return {layer: sorted(v) for layer, v in sorted(out.items())}

    def to_neuronset(self, method: str = "vape") -> NeuronSet:
        rows = []
        ent = self.entropy[self.selected[:, 0], self.selected[:, 1]] if len(self.selected) else np.zeros(0)
        for c, name in enumerate(self.conditions):
            for rank, k in enumerate(np.flatnonzero(self.assignment[c])):
                layer, n = self.selected[k]
                rows.append({"value": name, "layer": int(layer), "neuron": int(n), "score": -float(ent[k]),
                             "method": method, "rank": rank})
        L, N = self.entropy.shape
        return NeuronSet.from_rows(rows, num_layers=L, num_neurons=N,
                                   info={"method": method, **self.params, "no_data": list(self.no_data),
                                         "empty": list(self.empty), "shortfall": self.shortfall})

    def report(self) -> dict:
        return {"conditions": list(self.conditions), "selected": int(len(self.selected)),
                "per_condition": {c: int(a.sum()) for c, a in zip(self.conditions, self.assignment)},
                "filter_value": _num(self.filter_value), "bar_value": _num(self.bar_value),
                "no_data": list(self.no_data),
                "empty": list(self.empty), "shortfall": self.shortfall, **self.params}


def _num(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _check_rate(name, x):
    if not 0.0 <= x <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {x}")


def lape_select(probs: np.ndarray, conditions: Sequence[str] | None = None, *, filter_rate: float = 0.95,
                top_rate: float = 0.01, activation_bar_ratio: float = 0.95,
                has_data: np.ndarray | None = None) -> LapeResult:
    """LAPE selection over activation probabilities [C, L, N] (see the module docstring)."""
    for name, x in (("filter_rate", filter_rate), ("top_rate", top_rate),
                    ("activation_bar_ratio", activation_bar_ratio)):
        _check_rate(name, x)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 3:
        raise JaxValuesError(f"probs must be [conditions, layers, neurons], got shape {probs.shape}")
    C, L, N = probs.shape
    conditions = tuple(conditions or (f"c{i}" for i in range(C)))
    if len(conditions) != C:
        raise JaxValuesError(f"{len(conditions)} condition names for {C} conditions")
    valid = ~np.isnan(probs).all(axis=(1, 2)) if has_data is None else np.asarray(has_data, bool)
    params = dict(filter_rate=filter_rate, top_rate=top_rate, activation_bar_ratio=activation_bar_ratio)
    no_data = tuple(c for c, v in zip(conditions, valid) if not v)
    p = np.where(valid[:, None, None], np.nan_to_num(probs, nan=0.0), 0.0)
    if not valid.any():
        return LapeResult(conditions, probs, np.full((L, N), np.inf), np.nan, np.nan, np.zeros((0, 2), np.int64),
                          np.zeros((C, 0), bool), params, no_data, tuple(), 0)
    flat = p[valid].ravel()
    filter_value = kth_smallest(flat, filter_rate)
    bar_value = kth_smallest(flat, activation_bar_ratio)
    ent = entropy(p)
    candidate = (p > filter_value).any(0)
    ent = np.where(candidate, ent, np.inf)
    top = int(round(L * N * top_rate))
    order = np.argsort(ent.ravel(), kind="stable")[:top]
    order = order[np.isfinite(ent.ravel()[order])]
    selected = np.stack(np.unravel_index(order, (L, N)), axis=1).astype(np.int64)
    assignment = p[:, selected[:, 0], selected[:, 1]] > bar_value  # [C, K]
    assignment &= valid[:, None]
    empty = tuple(c for c, v, a in zip(conditions, valid, assignment) if v and not a.any())
    return LapeResult(conditions, probs, ent, filter_value, bar_value, selected, assignment, params, no_data,
                      empty, top - len(order))


def vape(stats, values: Sequence[str] | None = None, **kw) -> LapeResult:
    """LAPE selection over the conditions of `stats` (default: all; e.g. the 12 values)."""
    if values is not None:
        stats = stats.select(list(values))
    return lape_select(stats.probs(), stats.conditions, has_data=stats.has_data, **kw)


def stance_select(stats, value: str, kind: str = "decision", **overrides) -> LapeResult:
    """The authors' variant for one value: conditions "{value}-support" and "{value}-conflict"."""
    if kind not in STANCE_KINDS:
        raise ConfigError(f"unknown neuron kind {kind!r}; expected one of {', '.join(STANCE_KINDS)}")
    sub = stats.select([f"{value}-support", f"{value}-conflict"])
    return lape_select(sub.probs(), sub.conditions, has_data=sub.has_data, **{**STANCE_KINDS[kind], **overrides})


def stance_values(stats) -> list[str]:
    """Values that have both a -support and a -conflict condition in `stats`."""
    conds = set(stats.conditions)
    return [c[: -len("-support")] for c in stats.conditions
            if c.endswith("-support") and c[: -len("-support")] + "-conflict" in conds]


def stance_neurons(stats, values: Sequence[str] | None = None, kinds: Sequence[str] = ("decision", "semantic"),
                   **overrides) -> tuple[NeuronSet, dict]:
    """Neuron sets of every value × kind (value column "{value}-support"/"-conflict", method
    "vape-{kind}", kind column the kind) and a report {value: {kind: LapeResult.report()}}.
    info["layers"] records where the authors apply each kind (`authors_layer_split`)."""
    from jaxvalues.identify.neuronset import authors_layer_split

    values = list(values or stance_values(stats))
    if not values:
        raise JaxValuesError("the statistics have no '{value}-support' / '{value}-conflict' conditions; "
                             "collect with --scheme stance")
    sets, report = [], {}
    for v in values:
        for kind in kinds:
            res = stance_select(stats, v, kind, **overrides)
            ns = res.to_neuronset(f"vape-{kind}")
            ns.table["kind"] = pd.array([kind] * len(ns), dtype="string")
            sets.append(ns)
            report.setdefault(v, {})[kind] = res.report()
    return NeuronSet.concat(sets, info={"method": "vape-stance", "kinds": list(kinds),
                                        "layers": authors_layer_split(stats.num_layers)}), report
