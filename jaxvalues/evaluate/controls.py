"""Intervention modes, random controls, size sweeps and the value-leakage matrix.

Conventions:
- A neuron map is {layer: [neuron, ...]} (ints); `counts(map)` = {layer: how many}.
- Modes (`make_intervention`): "zero" (act' = 0), "mean" (act' = the neuron's collected mean,
  an [L, N] array, e.g. `pooled_means(stats)`), "scale" (act' = γ·act; γ > 1 amplifies),
  "steer" (the authors': ×`gain` (5) on support-only neurons, 0 on conflict-only neurons;
  neurons in both sets are left alone).
- Random control (`random_like`): draw r of R (default 20) picks, in every layer, as many
  neurons as the targeted map has there, uniformly without replacement, by default outside
  the targeted neurons. Draw r uses `np.random.default_rng([seed, r])`: reproducible from the
  seed alone and independent of R. For steer, one draw of the union's per-layer counts is split
  at random into a support part and a conflict part of the original per-layer sizes.
- Control comparison (`control_report`, for sweeps/steer/generation): mean, sd (ddof=1),
  z = (t − mean) / sd, two-sided rank and parametric p (`inference`); the choice-protocol verdict
  is `engine.summarize`.
- Rate-matched controls (`random_matched`, the default of `run` and `evaluate`): layer and
  within-layer firing-rate decile matched one for one. Steer controls (`draw_steer_controls`):
  a matched draw of the support-only ∪ conflict-only neurons, split per layer at random.
- The authors' random baseline (`random_authors`, `authors_size`): unmatched, reported beside the
  matched controls only (see PAPER.md: total split over all layers at random cut points, ids
  drawn with replacement; for steer, size = half the per-layer symmetric-difference counts).
- Size sweep (`top_fraction`): the max(1, round(f·L·N)) neurons with the lowest score (e.g. VAPE
  entropy; +inf/NaN = not a candidate), ties broken by (layer, neuron) order.
- Leakage (`leakage_matrix`): M[v, u] = mean change of `metric` on value u's dilemmas when
  value v's neurons are intervened on (rows: intervened value, columns: evaluated value).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.models.intervention import Intervention

MODES = ("zero", "mean", "scale", "steer")
# run/engine modes: "steer" steers towards the value (×gain on its support-only neurons, 0 on its
# conflict-only ones), "steer_against" swaps the two sets (the authors' direction 1)
RUN_MODES = ("zero", "mean", "scale", "steer", "steer_against")
STEER_MODES = ("steer", "steer_against")
SWEEP_FRACTIONS = (0.001, 0.005, 0.01, 0.02, 0.05)


def normalize_map(neurons: Mapping) -> dict[int, list[int]]:
    """{layer: neurons} with int keys, sorted unique ints, empty layers dropped."""
    out = {}
    for layer, idx in neurons.items():
        idx = sorted({int(n) for n in np.asarray(list(idx), dtype=np.int64).ravel()})
        if idx:
            out[int(layer)] = idx
    return dict(sorted(out.items()))


def counts(neurons: Mapping) -> dict[int, int]:
    return {l: len(v) for l, v in normalize_map(neurons).items()}


def total(neurons: Mapping) -> int:
    return sum(counts(neurons).values())


def _minus(a: Mapping, b: Mapping) -> dict[int, list[int]]:
    b = normalize_map(b)
    return normalize_map({l: sorted(set(v) - set(b.get(l, ()))) for l, v in normalize_map(a).items()})


def steer_intervention(support: Mapping, conflict: Mapping, gain: float = 5.0) -> Intervention:
    """×gain on support-only neurons, 0 on conflict-only neurons (the authors' steering)."""
    up, down = _minus(support, conflict), _minus(conflict, support)
    return Intervention.scale(up, gain, label=f"steer{gain:g}+") | Intervention.zero(down, label="steer0")


def make_intervention(neurons: Mapping, mode: str = "zero", *, gamma: float | None = None, means=None,
                      conflict: Mapping | None = None, gain: float = 5.0) -> Intervention:
    """One intervention of `mode` on `neurons` (for "steer": neurons = support set + `conflict`)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    nm = normalize_map(neurons)
    if mode == "zero":
        return Intervention.zero(nm)
    if mode == "scale":
        if gamma is None:
            raise ConfigError("mode 'scale' needs gamma (e.g. --gamma 2 to amplify, 0.5 to damp)")
        return Intervention.scale(nm, gamma)
    if mode == "mean":
        if means is None:
            raise ConfigError("mode 'mean' needs the per-neuron means [L, N] from collected statistics")
        return Intervention.set(nm, np.asarray(means, np.float32), label="mean")
    if conflict is None:
        raise ConfigError("mode 'steer' needs both a support and a conflict neuron set")
    return steer_intervention(nm, conflict, gain)


def pooled_means(stats) -> np.ndarray:
    """[L, N] float32 per-neuron mean activation over all conditions' tokens.

    Accepts a NeuronStats-like object (`sum` [C, L, N], `tokens` [C]) or an [L, N] array."""
    if hasattr(stats, "sum") and hasattr(stats, "tokens") and not isinstance(stats, np.ndarray):
        s, t = np.asarray(stats.sum, np.float64), np.asarray(stats.tokens, np.float64)
        if s.ndim != 3 or t.shape != (s.shape[0],):
            raise JaxValuesError(f"statistics: expected sum [C, L, N] and tokens [C], got {s.shape} and {t.shape}")
        if t.sum() <= 0:
            raise JaxValuesError("statistics: no tokens were collected, so there are no means")
        return (s.sum(0) / t.sum()).astype(np.float32)
    arr = np.asarray(stats, np.float32)
    if arr.ndim != 2:
        raise JaxValuesError(f"means must be an [L, N] array, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------------------ random controls


def random_like(neurons: Mapping, num_neurons: int, draws: int = 20, seed: int = 0, *,
                exclude: Mapping | None = None, exclude_targeted: bool = True) -> list[dict[int, list[int]]]:
    """`draws` random maps with the same per-layer counts as `neurons` (see module docstring)."""
    cnt = counts(neurons)
    avoid = normalize_map(neurons) if exclude_targeted else {}
    if exclude:
        avoid = normalize_map({l: set(avoid.get(l, ())) | set(normalize_map(exclude).get(l, ()))
                               for l in set(avoid) | set(normalize_map(exclude))})
    out = []
    for r in range(int(draws)):
        rng = np.random.default_rng([int(seed), r])
        m = {}
        for layer, k in cnt.items():
            pool = np.setdiff1d(np.arange(num_neurons), np.asarray(avoid.get(layer, []), np.int64))
            if k > len(pool):
                raise ConfigError(f"layer {layer}: cannot draw {k} random neurons from the {len(pool)} "
                                  f"not targeted (num_neurons={num_neurons})")
            m[layer] = sorted(int(x) for x in rng.choice(pool, size=k, replace=False))
        out.append(m)
    return out


CONTROL_KINDS = ("rate_matched", "layer")


def firing_rates(stats) -> np.ndarray:
    """[L, N] float64: pooled probability that a neuron is active (act > 0) over all counted tokens."""
    active, tokens = np.asarray(stats.active, np.float64), np.asarray(stats.tokens, np.float64)
    if tokens.sum() <= 0:
        raise JaxValuesError("statistics: no tokens were collected, so there are no firing rates")
    return active.sum(0) / tokens.sum()


def rate_bins(rates: np.ndarray, bins: int = 10) -> np.ndarray:
    """[L, N] int: each neuron's firing-rate bin within its layer (quantile bins of that layer's rates;
    bin edges are the layer's 1/bins .. (bins−1)/bins quantiles, so each bin holds ≈ N/bins neurons)."""
    r = np.asarray(rates, np.float64)
    if r.ndim != 2:
        raise JaxValuesError(f"firing rates must be [L, N], got shape {r.shape}")
    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins: expected a positive integer, got {bins!r}")
    out = np.zeros(r.shape, np.int64)
    qs = np.arange(1, bins) / bins
    for layer in range(r.shape[0]):
        edges = np.quantile(r[layer], qs)
        out[layer] = np.searchsorted(edges, r[layer], side="right")
    return out


def random_matched(neurons: Mapping, rates, draws: int = 20, seed: int = 0, *, bins: int = 10,
                   exclude: Mapping | None = None) -> list[dict[int, list[int]]]:
    """`draws` random maps matched to `neurons` on layer AND within-layer firing-rate bin.

    For every targeted neuron (layer l, rate bin b) a non-targeted neuron of layer l from bin b is
    drawn without replacement, so per-layer counts and per-layer rate-bin counts both match. Where
    a bin has fewer free neurons than it needs, the rest come from the nearest bins (lower bin
    first on ties) — counted in `random_matched.last_spill` for the caller to report. Draw r uses
    `np.random.default_rng([seed, r, 7])`: reproducible and independent of `draws`."""
    rates = np.asarray(rates, np.float64)
    num_layers, num_neurons = rates.shape
    b = rate_bins(rates, bins)
    target = normalize_map(neurons)
    avoid = {l: set(v) for l, v in target.items()}
    for l, v in normalize_map(exclude or {}).items():
        avoid.setdefault(l, set()).update(v)
    for layer, idx in target.items():
        if layer >= num_layers or max(idx) >= num_neurons:
            raise ConfigError(f"neuron map names layer {layer} neuron {max(idx)} but the firing rates are "
                              f"[{num_layers}, {num_neurons}]")
    out, spill = [], 0
    for r in range(int(draws)):
        rng = np.random.default_rng([int(seed), r, 7])
        m = {}
        for layer, idx in target.items():
            free = np.setdiff1d(np.arange(num_neurons), np.asarray(sorted(avoid.get(layer, ())), np.int64))
            if len(idx) > len(free):
                raise ConfigError(f"layer {layer}: cannot draw {len(idx)} random neurons from the {len(free)} "
                                  f"not targeted (num_neurons={num_neurons})")
            pools = {k: list(rng.permutation(free[b[layer, free] == k])) for k in range(bins)}
            picks = []
            for n in idx:  # deterministic order: the targeted neurons' ascending ids
                want = int(b[layer, n])
                for k in sorted(range(bins), key=lambda k: (abs(k - want), k)):
                    if pools[k]:
                        picks.append(int(pools[k].pop()))
                        spill += k != want
                        break
            m[layer] = sorted(picks)
        out.append(m)
    random_matched.last_spill = spill
    return out


random_matched.last_spill = 0


def draw_controls(neurons: Mapping, num_neurons: int, draws: int, seed: int, kind: str = "rate_matched",
                  rates=None, exclude: Mapping | None = None) -> list[dict[int, list[int]]]:
    """Random control maps of `kind`: "rate_matched" (layer + firing-rate bin, needs `rates`) or
    "layer" (`random_like`: per-layer counts only); never the targeted neurons nor `exclude`."""
    if kind not in CONTROL_KINDS:
        raise ConfigError(f"control kind: expected one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    if not draws:
        return []
    if kind == "layer":
        return random_like(neurons, num_neurons, draws, seed, exclude=exclude)
    if rates is None:
        raise ConfigError("rate-matched controls need firing rates from collected statistics")
    return random_matched(neurons, rates, draws, seed, exclude=exclude)


def draw_steer_controls(support: Mapping, conflict: Mapping, num_neurons: int, draws: int, seed: int,
                        kind: str = "rate_matched", rates=None) -> list[tuple[dict, dict]]:
    """Random (support, conflict) pairs for a steer condition: one `draw_controls` draw of the
    union of the support-only and conflict-only neurons (matched on layer and, for
    "rate_matched", firing-rate bin; never a targeted neuron of either set), split at random in
    each layer into a support part and a conflict part of the targeted per-layer sizes."""
    up, down = _minus(support, conflict), _minus(conflict, support)
    union = normalize_map({l: up.get(l, []) + down.get(l, []) for l in set(up) | set(down)})
    s_all, c_all = normalize_map(support), normalize_map(conflict)
    both = normalize_map({l: set(s_all.get(l, ())) | set(c_all.get(l, ())) for l in set(s_all) | set(c_all)})
    out = []
    for r, m in enumerate(draw_controls(union, num_neurons, draws, seed, kind, rates, exclude=both)):
        rng = np.random.default_rng([int(seed), r, 1])
        s, c = {}, {}
        for layer, idx in m.items():
            idx = list(rng.permutation(idx))
            k = len(up.get(layer, []))
            s[layer], c[layer] = sorted(int(x) for x in idx[:k]), sorted(int(x) for x in idx[k:])
        out.append((normalize_map(s), normalize_map(c)))
    return out


def random_authors(size: int, num_layers: int, num_neurons: int, draws: int = 20,
                   seed: int = 0) -> list[dict[int, list[int]]]:
    """The authors' random baseline: `size` neurons split over ALL layers at random cut points
    (num_layers − 1 cut points uniform in 0..size, sorted), ids drawn uniformly WITH replacement in
    each layer (duplicates collapse, so a draw can hold fewer than `size` neurons), targeted
    neurons not excluded. Nothing is matched: it is reported beside the matched controls, never
    used for the verdict. Draw r uses `np.random.default_rng([seed, r, 13])`."""
    out = []
    for r in range(int(draws)):
        rng = np.random.default_rng([int(seed), r, 13])
        cuts = np.sort(rng.integers(0, int(size) + 1, size=max(int(num_layers) - 1, 0)))
        sizes = np.diff(np.concatenate([[0], cuts, [int(size)]]))
        out.append(normalize_map({l: rng.integers(0, num_neurons, size=int(k)).tolist()
                                  for l, k in enumerate(sizes) if k}))
    return out


def authors_size(neurons: Mapping, conflict: Mapping | None = None) -> int:
    """How many neurons the authors' random baseline draws: the targeted count; for steer, half
    the summed per-layer symmetric-difference counts of the support and conflict sets."""
    if conflict is None:
        return total(neurons)
    return int(round((total(_minus(neurons, conflict)) + total(_minus(conflict, neurons))) / 2))


def mean_rate(neurons: Mapping, rates) -> float:
    """Mean firing rate of the neurons of a map (NaN for an empty map)."""
    nm = normalize_map(neurons)
    vals = [float(rates[l, n]) for l, idx in nm.items() for n in idx]
    return float(np.mean(vals)) if vals else float("nan")


def random_steer_like(support: Mapping, conflict: Mapping, num_neurons: int, draws: int = 20,
                      seed: int = 0) -> list[tuple[dict, dict]]:
    """Random (support, conflict) pairs matching the per-layer sizes of support-only and conflict-only
    (`draw_steer_controls` with layer-only matching)."""
    return draw_steer_controls(support, conflict, num_neurons, draws, seed, kind="layer")


def control_report(target: float, controls) -> dict:
    """Targeted effect against R control effects (size sweeps, steering, the generation protocol):
    mean, sd, z, and two-sided p-values from `jaxvalues.evaluate.inference` — the empirical rank
    p (distance from the controls' distribution, not from 0) and the parametric prediction-interval
    p. The choice-protocol verdict (one-sided, Holm) is `jaxvalues.evaluate.engine.summarize`."""
    from jaxvalues.evaluate import inference

    c = np.asarray(controls, np.float64)
    c = c[~np.isnan(c)]
    r = len(c)
    mean = float(c.mean()) if r else float("nan")
    sd = float(c.std(ddof=1)) if r > 1 else float("nan")
    z = (target - mean) / sd if r > 1 and sd > 0 else float("nan")
    return {"target": float(target), "control_mean": mean, "control_sd": sd, "z": float(z),
            "p_empirical": float(inference.rank_p(target, c, "two-sided")) if r else float("nan"),
            "p_parametric": float(inference.parametric_p(target, c, "two-sided")), "num_controls": r}


# ------------------------------------------------------------------------------------ size sweep


def top_fraction(scores, fraction: float) -> dict[int, list[int]]:
    """The max(1, round(fraction·L·N)) lowest-scoring neurons of an [L, N] score array (inf/NaN excluded)."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise JaxValuesError(f"scores must be [L, N], got shape {s.shape}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * s.size)))
    flat = np.where(np.isfinite(s), s, np.inf).ravel()
    order = np.argsort(flat, kind="stable")[:k]
    order = order[np.isfinite(flat[order])]
    layers, idx = np.divmod(order, s.shape[1])
    out: dict[int, list[int]] = {}
    for l, n in zip(layers.tolist(), idx.tolist()):
        out.setdefault(int(l), []).append(int(n))
    return normalize_map(out)


def sweep_conditions(scores, fractions=SWEEP_FRACTIONS, mode: str = "zero", draws: int = 0, seed: int = 0,
                     **mode_kw) -> dict[str, Intervention]:
    """Named conditions "top@{f}" (and "random@{f}#{r}") for a size sweep, all to run in one batch."""
    num_neurons = np.asarray(scores).shape[1]
    out = {}
    for f in fractions:
        m = top_fraction(scores, f)
        out[f"top@{f:g}"] = make_intervention(m, mode, **mode_kw)
        for r, rm in enumerate(random_like(m, num_neurons, draws, seed)):
            out[f"random@{f:g}#{r:02d}"] = make_intervention(rm, mode, **mode_kw)
    return out


# -------------------------------------------------------------------------------------- leakage


def leakage_matrix(table, conditions: Mapping[str, str], baseline: str = "baseline", metric: str = "p_aligned",
                   values=None):
    """[V_int, V_eval] DataFrame: mean paired change of `metric` on each value's dilemmas.

    `conditions`: condition name -> the value whose neurons it intervenes on."""
    import pandas as pd

    from jaxvalues.evaluate.metrics import paired

    df = paired(table, baseline, (metric,))
    df = df.assign(_delta=df[metric] - df[f"{metric}_base"])
    vals = list(values) if values is not None else sorted(df["value"].unique())
    rows = {}
    for cond, v in conditions.items():
        sub = df[df["condition"] == cond]
        if sub.empty:
            raise JaxValuesError(f"leakage: no results for condition {cond!r}")
        means = sub.groupby("value")["_delta"].mean()
        rows[v] = [float(means.get(u, np.nan)) for u in vals]
    return pd.DataFrame.from_dict(rows, orient="index", columns=vals)


def diagonal_dominance(matrix) -> dict:
    """How much intervening on v moves v rather than the others (on |entries| of a square matrix).

    diag_mean / offdiag_mean: mean |M[v, v]| and mean |M[v, u≠v]|; ratio = diag / offdiag;
    rows_dominant: how many rows have their largest |entry| on the diagonal; per_value margin =
    |M[v, v]| − max_u≠v |M[v, u]|."""
    import pandas as pd

    m = matrix if isinstance(matrix, pd.DataFrame) else pd.DataFrame(matrix)
    shared = [v for v in m.index if v in m.columns]
    if not shared:
        raise JaxValuesError("leakage matrix has no value both as a row and as a column")
    a = np.abs(m.loc[shared, shared].to_numpy(np.float64))
    d = np.diag(a)
    off = a[~np.eye(len(shared), dtype=bool)].reshape(len(shared), -1) if len(shared) > 1 else np.zeros((1, 0))
    off_max = off.max(1) if off.shape[1] else np.zeros(len(shared))
    diag_mean, off_mean = float(np.nanmean(d)), float(np.nanmean(off)) if off.size else float("nan")
    return {"diag_mean": diag_mean, "offdiag_mean": off_mean,
            "ratio": diag_mean / off_mean if off_mean and off_mean > 0 else float("nan"),
            "rows_dominant": int(np.sum(d > off_max)), "num_values": len(shared),
            "margin": {v: float(d[i] - off_max[i]) for i, v in enumerate(shared)}}
