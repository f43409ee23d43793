"""Contrastive neuron scores between two conditions (pure NumPy over `NeuronStats`).

For conditions a and b (each a name or a list of names, pooled exactly), per layer and neuron:
  mean   μ_a − μ_b                                   (mean difference)
  rms    sqrt(E_a[x²]) − sqrt(E_b[x²])               (RMS difference; activation contrasting)
  effect (μ_a − μ_b) / s_pooled, s_pooled² = ((T_a−1)s_a² + (T_b−1)s_b²) / (T_a+T_b−2)
         (standardized effect size, Cohen's d; 0 where s_pooled = 0)
Positive = more active under a. `contrast` scores every value against the pooled rest (or, for
stance statistics, "{v}-support" against "{v}-conflict") and keeps the top neurons per value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.identify.neuronset import NeuronSet

METRICS = ("mean", "rms", "effect")


def _pool(stats, cond):
    names = [cond] if isinstance(cond, str) else list(cond)
    return stats.pooled(names)


def contrast_scores(stats, a, b, metric: str = "effect") -> np.ndarray:
    """[L, N] float64 contrast of condition(s) a against b."""
    if metric not in METRICS:
        raise ConfigError(f"unknown contrast metric {metric!r}; expected one of {', '.join(METRICS)}")
    pa, pb = _pool(stats, a), _pool(stats, b)
    for p, name in ((pa, a), (pb, b)):
        if p.tokens[0] == 0:
            raise JaxValuesError(f"condition {name!r} has no data; cannot contrast it")
    if metric == "mean":
        return pa.mean()[0] - pb.mean()[0]
    if metric == "rms":
        return np.sqrt(pa.sumsq[0] / pa.tokens[0]) - np.sqrt(pb.sumsq[0] / pb.tokens[0])
    ta, tb = float(pa.tokens[0]), float(pb.tokens[0])
    if ta + tb <= 2:
        raise JaxValuesError("the effect size needs more than 2 tokens in total")
    va = pa.var(ddof=1)[0] if ta > 1 else np.zeros_like(pa.sum[0])
    vb = pb.var(ddof=1)[0] if tb > 1 else np.zeros_like(pb.sum[0])
    sd = np.sqrt(((ta - 1) * va + (tb - 1) * vb) / (ta + tb - 2))
    diff = pa.mean()[0] - pb.mean()[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), 0.0)


def contrast_pairs(stats, values: Sequence[str] | None = None) -> list[tuple[str, object, object]]:
    """(label, a, b) pairs: "{v}-support" vs "{v}-conflict" for stance statistics, else each
    condition with data against the pooled others with data."""
    from jaxvalues.identify.vape import stance_values

    stance = stance_values(stats)
    if stance:
        vals = values or stance
        return [(v, f"{v}-support", f"{v}-conflict") for v in vals]
    have = [c for c, t in zip(stats.conditions, stats.tokens) if t > 0]
    vals = values or have
    pairs = []
    for v in vals:
        rest = [c for c in have if c != v]
        if v in have and rest:
            pairs.append((v, v, rest))
    return pairs


def contrast(stats, metric: str = "effect", values: Sequence[str] | None = None, *, top_rate: float | None = 0.01,
             top_k: int | None = None, direction: str = "positive", min_score: float | None = None
             ) -> tuple[NeuronSet, dict]:
    """Top contrast neurons per value -> (NeuronSet, report). direction "positive": neurons more
    active for the value (score > 0); "both": ranked by |score|, `score` keeps the sign.
    top_k, when given, replaces top_rate (the fraction of layers × neurons kept per value)."""
    from jaxvalues.identify.vape import stance_values

    if direction not in ("positive", "both"):
        raise ConfigError(f"direction must be 'positive' or 'both', got {direction!r}")
    pairs = contrast_pairs(stats, values)
    if not pairs:
        raise JaxValuesError("nothing to contrast: need at least two conditions with data")
    asked = list(values or stance_values(stats) or stats.conditions)
    report = {"metric": metric, "direction": direction, "no_data": [v for v in asked if v not in {p[0] for p in pairs}],
              "counts": {}}
    sets = []
    for label, a, b in pairs:
        try:
            s = contrast_scores(stats, a, b, metric)
        except JaxValuesError:
            report["no_data"].append(label)
            continue
        key = np.where(s > 0, s, -np.inf) if direction == "positive" else np.abs(s)
        ns = NeuronSet.from_scores(label, key, f"contrast-{metric}", top_k=top_k, top_rate=None if top_k else top_rate,
                                   min_score=min_score)
        ns.table["score"] = s[ns.table["layer"].to_numpy(), ns.table["neuron"].to_numpy()]
        sets.append(ns)
        report["counts"][label] = len(ns)
    out = NeuronSet.concat(sets, info={"method": f"contrast-{metric}", "direction": direction})
    out.num_layers, out.num_neurons = stats.num_layers, stats.num_neurons
    return out, report
