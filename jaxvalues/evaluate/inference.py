"""Statistical tests behind a verdict: is the targeted neuron set's effect outside the random controls'?

Setting (one test cell = one value × language):
- `t` [n]: per-dilemma effect of ablating the targeted neuron set (Δ log-odds of the aligned
  choice, intervened − baseline); `c` [R, n]: the same for R random control sets, scored on the
  same n dilemmas (row j of `t` and column j of `c` are the same dilemma).
- `clusters` [n]: a cluster id per dilemma (`pair_id`: the zh and en translation of one dilemma
  share it). A cluster, not a row, is the independent unit for resampling.
- Targeted effect T = nanmean(t); control effects C_r = nanmean(c[r]); excess = T − mean_r(C_r).

Conventions:
- `alternative` is the direction of the effect tested: "less" (the default; ablating value
  neurons lowers the aligned log-odds, so the targeted effect is expected *below* the controls),
  "greater", or "two-sided". Anything else raises `JaxValuesError`.
- A p-value is valid in the sense P(p <= α) <= α under H0 (T exchangeable with the controls for
  the rank test; T one more draw of the controls' normal distribution for the parametric test).
  `family` declares a cell significant when its Holm-adjusted p is strictly below α.
- NaN controls (a control set with no scored dilemma) are dropped before a test; R counts the
  controls left. Not enough controls gives nan, never an error: rank_p needs R >= 1,
  parametric_p and mde need R >= 2 (and a non-zero control sd).
- The rank test's smallest p is 1/(R+1) (`p_floor`): with R controls it cannot pass a threshold
  at or below that, however large the effect. `family` reports this as `rank_can_pass`.
- Multiplicity: `holm` (family-wise error) and `bh` (false discovery rate); NaN p-values stay NaN
  and do not count in the family size m.
- Bootstrap: `cluster_bootstrap` resamples clusters with replacement, the same resampled cluster
  sets for every statistic of one call; percentile interval [α/2, 1 − α/2]; seeded with
  np.random.default_rng(seed): identical inputs, identical intervals.
- Bad arguments (unknown alternative, wrong shapes, α outside (0, 1)) raise
  `jaxvalues.errors.JaxValuesError` naming the argument and what was expected.

Pure numpy/scipy; no JAX.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from jaxvalues.errors import JaxValuesError

ALTERNATIVES = ("less", "greater", "two-sided")
VERDICT_PASS = "targeted > controls"
VERDICT_FAIL = "not distinguishable"


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_alternative(alternative) -> str:
    if alternative not in ALTERNATIVES:
        raise JaxValuesError(f"alternative: expected 'less', 'greater' or 'two-sided', got {alternative!r}")
    return alternative


def _check_unit(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise JaxValuesError(f"{name}: expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise JaxValuesError(f"{name}: expected a number in (0, 1), got {value!r}")
    return v


def _controls_1d(controls) -> np.ndarray:
    c = np.asarray(controls, np.float64)
    if c.ndim == 0:
        c = c.reshape(1)
    if c.ndim != 1:
        raise JaxValuesError(f"controls: expected a 1-D array of control effects, got shape {c.shape}")
    return c[~np.isnan(c)]


def _scalar(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise JaxValuesError(f"{name}: expected a number, got {value!r}") from None


# ---------------------------------------------------------------------------------------------
# single-cell p-values


def rank_p(target: float, controls, alternative: str = "less") -> float:
    """Empirical rank p of `target` among `controls`: (1 + #{controls at least as extreme}) / (R + 1).

    "less": at least as extreme means c <= target; "greater": c >= target (ties count as extreme);
    "two-sided": min(1, 2 · min(p_less, p_greater)). NaN controls are dropped; R = 0 or a NaN
    target gives nan. The smallest attainable value is 1/(R+1).
    """
    _check_alternative(alternative)
    target = _scalar("target", target)
    c = _controls_1d(controls)
    r = c.size
    if r == 0 or math.isnan(target):
        return float("nan")
    p_less = (1.0 + np.count_nonzero(c <= target)) / (r + 1.0)
    p_greater = (1.0 + np.count_nonzero(c >= target)) / (r + 1.0)
    if alternative == "less":
        return float(p_less)
    if alternative == "greater":
        return float(p_greater)
    return float(min(1.0, 2.0 * min(p_less, p_greater)))


def parametric_p(target: float, controls, alternative: str = "less") -> float:
    """Prediction-interval test: under H0 `target` is one more draw from the controls' normal law.

    stat = (T − mean(C)) / (sd(C, ddof=1) · sqrt(1 + 1/R)) ~ Student t with R − 1 df (exact
    under normality). "less": P(t <= stat); "greater": P(t >= stat); "two-sided":
    min(1, 2 · min of both). NaN controls are dropped; R < 2, sd == 0 or a NaN target give nan.
    """
    _check_alternative(alternative)
    target = _scalar("target", target)
    c = _controls_1d(controls)
    r = c.size
    if r < 2 or math.isnan(target):
        return float("nan")
    sd = float(np.std(c, ddof=1))
    if not sd > 0.0:
        return float("nan")
    stat = (target - float(np.mean(c))) / (sd * math.sqrt(1.0 + 1.0 / r))
    df = r - 1
    if alternative == "less":
        return float(stats.t.cdf(stat, df))
    if alternative == "greater":
        return float(stats.t.sf(stat, df))
    return min(1.0, 2.0 * float(stats.t.sf(abs(stat), df)))  # t is symmetric: min(cdf, sf) = sf(|stat|)


# ---------------------------------------------------------------------------------------------
# multiplicity


def _pvec(pvals) -> np.ndarray:
    p = np.asarray(pvals, np.float64)
    if p.ndim == 0:
        p = p.reshape(1)
    if p.ndim != 1:
        raise JaxValuesError(f"pvals: expected a 1-D array of p-values, got shape {p.shape}")
    ok = p[~np.isnan(p)]
    if np.any((ok < 0.0) | (ok > 1.0)):
        raise JaxValuesError("pvals: expected p-values in [0, 1] (or nan)")
    return p


def _adjust(pvals, step_down: bool) -> np.ndarray:
    """Sorted non-NaN p_(1..m): Holm (step_down) max_{j<=i} (m − j + 1) p_(j); BH min_{j>=i} m p_(j) / j;
    clipped at 1, returned in the input order. NaN stays NaN and does not count in m."""
    p = _pvec(pvals)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    if step_down:
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    else:
        adj = np.minimum.accumulate((m * p[order] / np.arange(1, m + 1))[::-1])[::-1]
    out[order] = np.minimum(1.0, adj)
    return out


def holm(pvals) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error); see `_adjust`."""
    return _adjust(pvals, step_down=True)


def bh(pvals) -> np.ndarray:
    """Benjamini–Hochberg step-up adjusted p-values (false discovery rate); see `_adjust`."""
    return _adjust(pvals, step_down=False)


# ---------------------------------------------------------------------------------------------
# cluster bootstrap


def _clusters_index(clusters, n: int) -> tuple[np.ndarray, int]:
    cl = np.asarray(clusters)
    if cl.ndim != 1 or cl.shape[0] != n:
        raise JaxValuesError(f"clusters: expected one cluster id per row ({n}), got shape {cl.shape}")
    _, inv = np.unique(cl, return_inverse=True)
    inv = inv.reshape(-1)
    return inv, int(inv.max()) + 1 if n else 0


def _cluster_sums(x: np.ndarray, inv: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and non-NaN counts of x [..., n] -> ([K, ...], [K, ...])."""
    x2 = np.atleast_2d(x)  # [B, n]
    ok = ~np.isnan(x2)
    sums = np.zeros((k, x2.shape[0]))
    cnts = np.zeros((k, x2.shape[0]))
    np.add.at(sums, inv, np.where(ok, x2, 0.0).T)
    np.add.at(cnts, inv, ok.T.astype(np.float64))
    return sums, cnts


def cluster_bootstrap(effects, clusters, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                      controls=None) -> dict:
    """Cluster bootstrap percentile CI of the mean effect (and of the excess over controls).

    Each replicate draws K clusters with replacement out of the K distinct ids in `clusters`
    and takes every row of each drawn cluster (a cluster drawn twice counts twice). Returns
    {"mean", "lo", "hi"}: nanmean(effects) and the [α/2, 1 − α/2] percentiles of the replicate
    means. With `controls` [R, n] also {"excess", "excess_lo", "excess_hi"}: per replicate,
    mean(effects over the drawn rows) − mean over r of mean(controls[r] over the same rows).
    NaN rows are left out of each mean; a replicate with no finite row is nan and skipped.
    """
    x = np.asarray(effects, np.float64)
    if x.ndim != 1:
        raise JaxValuesError(f"effects: expected a 1-D array [n], got shape {x.shape}")
    n = x.shape[0]
    alpha = _check_unit("alpha", alpha)
    if int(n_boot) != n_boot or n_boot < 1:
        raise JaxValuesError(f"n_boot: expected a positive integer, got {n_boot!r}")
    n_boot = int(n_boot)
    inv, k = _clusters_index(clusters, n)
    c = None
    if controls is not None:
        c = np.asarray(controls, np.float64)
        if c.ndim != 2 or c.shape[1] != n:
            raise JaxValuesError(f"controls: expected shape [R, {n}] (R control sets × n rows), got {c.shape}")

    nan = float("nan")
    out = {"mean": float(np.nanmean(x)) if np.any(~np.isnan(x)) else nan, "lo": nan, "hi": nan}
    if c is not None:
        cm = _row_means(c)
        out["excess"] = out["mean"] - (float(np.nanmean(cm)) if np.any(~np.isnan(cm)) else nan)
        out["excess_lo"] = out["excess_hi"] = nan
    if k == 0:
        return out

    s_t, n_t = _cluster_sums(x, inv, k)  # [K, 1]
    if c is not None and c.shape[0]:
        s_c, n_c = _cluster_sums(c, inv, k)  # [K, R]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // max(k, 1)))
    means, excess = [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            draw = rng.integers(0, k, size=(b, k))  # [b, K] drawn cluster indices
            mt = s_t[draw, 0].sum(1) / n_t[draw, 0].sum(1)
            means.append(mt)
            if c is not None:
                if c.shape[0]:
                    counts = np.bincount((np.arange(b)[:, None] * k + draw).ravel(), minlength=b * k)
                    counts = counts.reshape(b, k).astype(np.float64)  # [b, K] times each cluster is drawn
                    mc = (counts @ s_c) / (counts @ n_c)  # [b, R]
                    ok = ~np.isnan(mc)
                    cbar = np.where(ok, mc, 0.0).sum(1) / ok.sum(1)
                else:
                    cbar = np.full(b, nan)
                excess.append(mt - cbar)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]

    def _ci(v):
        v = np.concatenate(v)
        v = v[~np.isnan(v)]
        return (nan, nan) if v.size == 0 else tuple(float(e) for e in np.percentile(v, q))

    out["lo"], out["hi"] = _ci(means)
    if c is not None:
        out["excess_lo"], out["excess_hi"] = _ci(excess)
    return out


def _row_means(c: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, c, 0.0).sum(1) / ok.sum(1)


# ---------------------------------------------------------------------------------------------
# minimum detectable effect


def mde(n_clusters: int, R: int, sd_controls: float, sd_target_within: float | None = None,
        alpha: float = 0.05, power: float = 0.8, alternative: str = "less") -> float:
    """Minimum detectable excess |T − mean(C)| of `parametric_p` at level `alpha` with `power`.

    `alpha` is the per-test level: pass α/m for Holm's first (strictest) step in a family of m
    cells, which is what `family` does. The prediction-interval test's statistic, with the
    targeted mean shifted by delta from the controls' mean, is noncentral t with df R − 1 and
    noncentrality delta / s, s = sd_controls · sqrt(1 + 1/R); the result is the delta where
    P(reject) = power (scipy.stats.nct, root by brentq). "two-sided" uses α/2 in the tested tail
    and ignores the other tail. Returned as a positive magnitude in effect units (Δ log-odds);
    for "less" the targeted effect must lie that far below the controls' mean.

    Only the controls' spread enters: sd_controls is the sd of control *means* over the same n
    dilemmas, so it already contains the sampling noise of a mean over those dilemmas (plus the
    set-to-set variation of random neuron sets). `n_clusters` and `sd_target_within` (the within-
    cell sd of the targeted per-dilemma effects) are accepted for the record but do not change
    the result: more dilemmas help only through a smaller sd_controls. R < 2 gives inf;
    sd_controls nan gives nan; sd_controls == 0 gives 0.
    """
    _check_alternative(alternative)
    alpha = _check_unit("alpha", alpha)
    power = _check_unit("power", power)
    del n_clusters, sd_target_within  # recorded by the caller; see the docstring
    if R is None or int(R) < 2:
        return float("inf")
    r = int(R)
    sd = _scalar("sd_controls", sd_controls)
    if math.isnan(sd):
        return float("nan")
    if sd < 0:
        raise JaxValuesError(f"sd_controls: expected a non-negative number, got {sd_controls!r}")
    s = sd * math.sqrt(1.0 + 1.0 / r)
    if s == 0.0:
        return 0.0
    tail = alpha / 2 if alternative == "two-sided" else alpha
    if power <= tail:
        return 0.0
    df = r - 1
    crit = float(stats.t.isf(tail, df))

    def gap(nc):
        return float(stats.nct.sf(crit, df, nc)) - power

    hi = max(1.0, 2 * crit)
    while gap(hi) < 0:
        hi *= 2
    nc = optimize.brentq(gap, 0.0, hi, xtol=1e-10, rtol=1e-12)
    return float(nc * s)


def mde_from_controls(controls_effects, alpha: float = 0.05, power: float = 0.8,
                      alternative: str = "less") -> float:
    """`mde` with R and sd_controls (ddof=1) taken from the control effects C_r (NaNs dropped).

    A plug-in estimate: the sample sd of R controls stands in for their true spread.
    """
    c = _controls_1d(controls_effects)
    sd = float(np.std(c, ddof=1)) if c.size >= 2 else float("nan")
    return mde(0, c.size, sd, alpha=alpha, power=power, alternative=alternative)


# ---------------------------------------------------------------------------------------------
# one cell, one family


def cell_test(t, c, clusters, *, alternative: str = "less", alpha: float = 0.05, n_boot: int = 2000,
              seed: int = 0) -> dict:
    """All the numbers for one cell: targeted effect, controls, excess, CIs and p-values.

    t [n] targeted per-dilemma effects, c [R, n] control per-dilemma effects on the same rows,
    clusters [n] cluster ids. Keys: n, n_clusters, alternative, targeted, targeted_lo,
    targeted_hi, control_mean, control_sd, num_controls, excess, excess_lo, excess_hi, p_rank
    (in `alternative`), p_rank_two_sided, p_param (in `alternative`), p_param_two_sided,
    p_floor = 1/(R+1). CIs: cluster bootstrap at level 1 − alpha. num_controls counts the
    control sets with at least one finite row.
    """
    _check_alternative(alternative)
    t = np.asarray(t, np.float64)
    if t.ndim != 1:
        raise JaxValuesError(f"t: expected a 1-D array [n] of targeted effects, got shape {t.shape}")
    n = t.shape[0]
    c = np.asarray(c, np.float64)
    if c.ndim != 2 or c.shape[1] != n:
        raise JaxValuesError(f"c: expected shape [R, {n}] (R control sets × n dilemmas), got {c.shape}")
    inv, k = _clusters_index(clusters, n)
    boot = cluster_bootstrap(t, clusters, n_boot=n_boot, seed=seed, alpha=alpha, controls=c)
    cm = _row_means(c)
    cm = cm[~np.isnan(cm)]
    r = cm.size
    nan = float("nan")
    return {
        "n": int(n),
        "n_clusters": int(k),
        "alternative": alternative,
        "targeted": boot["mean"],
        "targeted_lo": boot["lo"],
        "targeted_hi": boot["hi"],
        "control_mean": float(cm.mean()) if r else nan,
        "control_sd": float(cm.std(ddof=1)) if r >= 2 else nan,
        "num_controls": int(r),
        "excess": boot["excess"],
        "excess_lo": boot["excess_lo"],
        "excess_hi": boot["excess_hi"],
        "p_rank": rank_p(boot["mean"], cm, alternative),
        "p_rank_two_sided": rank_p(boot["mean"], cm, "two-sided"),
        "p_param": parametric_p(boot["mean"], cm, alternative),
        "p_param_two_sided": parametric_p(boot["mean"], cm, "two-sided"),
        "p_floor": 1.0 / (r + 1),
    }


def family(cells: list[dict], alpha: float = 0.05, p_key: str = "p_param", power: float = 0.8) -> list[dict]:
    """Multiplicity over a family of `cell_test` results -> new dicts with the verdict added.

    Adds p_holm and p_bh (`p_key` adjusted over the family), p_rank_holm (p_rank adjusted),
    family_size m (cells with a finite `p_key`), verdict ("targeted > controls" when
    p_holm < alpha, the effect being in the cell's tested direction; else "not
    distinguishable"), rank_can_pass (1/(R+1) < alpha/m: whether the rank test could pass
    Holm's first step at all with this many controls) and mde (the excess the parametric test
    detects with `power` at alpha/m, Holm's strictest step, from the cell's R and control sd;
    two-sided when `p_key` ends in "two_sided", else in the cell's `alternative`).
    """
    alpha = _check_unit("alpha", alpha)
    cells = list(cells)
    for i, cell in enumerate(cells):
        if p_key not in cell:
            raise JaxValuesError(f"cells[{i}]: expected a key {p_key!r} (p_key), got keys {sorted(cell)}")
    p = np.array([cell[p_key] for cell in cells], np.float64)
    pr = np.array([cell.get("p_rank", np.nan) for cell in cells], np.float64)
    p_holm, p_bh, p_rank_holm = holm(p), bh(p), holm(pr)
    m = int(np.count_nonzero(~np.isnan(p)))
    level = alpha / max(m, 1)
    out = []
    for i, cell in enumerate(cells):
        r = int(cell.get("num_controls", 0))
        alt = "two-sided" if p_key.endswith("two_sided") else cell.get("alternative", "less")
        d = dict(cell)
        d["p_holm"] = float(p_holm[i])
        d["p_bh"] = float(p_bh[i])
        d["p_rank_holm"] = float(p_rank_holm[i])
        d["family_size"] = m
        d["verdict"] = VERDICT_PASS if p_holm[i] < alpha else VERDICT_FAIL
        d["rank_can_pass"] = bool(1.0 / (r + 1) < level)
        d["mde"] = mde(cell.get("n_clusters", 0), r, cell.get("control_sd", np.nan), alpha=level, power=power,
                       alternative=alt)
        out.append(d)
    return out
