"""Statistical tests behind a verdict: calibration, power at the MDE, Holm/BH, cluster bootstrap coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxvalues.errors import JaxValuesError
from jaxvalues.evaluate.inference import (bh, cell_test, cluster_bootstrap, family, holm, mde, mde_from_controls,
                                          parametric_p, rank_p)


def _null_runs(n_sims, R, n, seed, shift=0.0, sd_within=1.0):
    """Per-run (target, controls) effects: mean over n dilemmas of shared + set-specific per-dilemma draws.

    The shared per-dilemma component (one value per dilemma, common to every neuron set of a
    run, constant within a 2-row cluster) moves the target and all controls together; the target
    is one more draw of the controls' law, shifted by `shift`.
    """
    rng = np.random.default_rng(seed)
    shared = np.repeat(rng.normal(0.0, 2.0, size=(n_sims, 1, n // 2)), 2, axis=2)
    rows = shared + rng.normal(0.0, sd_within, size=(n_sims, R + 1, n))  # [S, R+1, n]
    eff = rows.mean(axis=2)
    return eff[:, 0] + shift, eff[:, 1:]


# --- calibration ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def null_pvalues():
    # R = 39: (R+1)·α/2 = 1 is an integer, so the rank test's two-sided size is exactly α too
    target, controls = _null_runs(4000, R=39, n=40, seed=1)
    out = {}
    for name, fn in (("rank", rank_p), ("param", parametric_p)):
        for alt in ("less", "greater", "two-sided"):
            out[name, alt] = np.array([fn(t, c, alt) for t, c in zip(target, controls)])
    return out


@pytest.mark.parametrize("name", ["rank", "param"])
@pytest.mark.parametrize("alt", ["less", "greater", "two-sided"])
def test_false_positive_rate_is_nominal(null_pvalues, name, alt):
    p = null_pvalues[name, alt]
    assert not np.any(np.isnan(p))
    rate = float(np.mean(p <= 0.05))
    assert 0.03 <= rate <= 0.07, (name, alt, rate)


def test_null_pvalues_roughly_uniform(null_pvalues):
    p = null_pvalues["param", "less"]
    for q in (0.1, 0.25, 0.5, 0.75):
        assert abs(np.mean(p <= q) - q) < 0.03


# --- power at the MDE -------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.05, 0.05 / 24])
@pytest.mark.parametrize("alternative", ["less", "two-sided"])
def test_power_at_mde(alpha, alternative):
    R, n, sd_within = 20, 40, 1.0
    sd_controls = sd_within / math.sqrt(n)  # sd of a control mean over the same n dilemmas
    delta = mde(n // 2, R, sd_controls, alpha=alpha, power=0.8, alternative=alternative)
    assert delta > 0
    target, controls = _null_runs(2000, R=R, n=n, seed=7, shift=-delta, sd_within=sd_within)
    p = np.array([parametric_p(t, c, alternative) for t, c in zip(target, controls)])
    rate = float(np.mean(p <= alpha))
    assert 0.75 <= rate <= 0.85, (alpha, alternative, delta, rate)


def test_mde_properties():
    base = mde(20, 20, 1.0)
    assert mde(20, 20, 2.0) == pytest.approx(2 * base)
    assert mde(20, 20, 1.0, alpha=0.05 / 24) > base
    assert mde(20, 20, 1.0, power=0.9) > base
    assert mde(20, 20, 1.0, alternative="two-sided") == pytest.approx(mde(20, 20, 1.0, alpha=0.025))
    assert mde(20, 20, 1.0, alternative="greater") == pytest.approx(base)
    assert mde(999, 20, 1.0, sd_target_within=5.0) == base  # recorded only
    assert mde(20, 200, 1.0) < base  # more controls: smaller t quantile, tighter sd
    assert mde(20, 1, 1.0) == math.inf
    # large R: the normal-theory answer (z_{1-α} + z_power) · sd
    assert mde(20, 100000, 1.0) == pytest.approx(1.6448536 + 0.8416212, rel=1e-3)
    c = np.random.default_rng(0).normal(0, 0.3, size=25)
    assert mde_from_controls(c) == pytest.approx(mde(0, 25, float(np.std(c, ddof=1))))
    assert mde_from_controls(np.r_[c, np.nan]) == pytest.approx(mde_from_controls(c))


# --- rank floor and ties ----------------------------------------------------------------------

def test_rank_floor_and_ties():
    R = 19
    controls = np.linspace(1.0, 2.0, R)
    assert rank_p(0.0, controls) == 1 / (R + 1)
    assert rank_p(3.0, controls, "greater") == 1 / (R + 1)
    assert rank_p(0.0, controls, "greater") == 1.0
    assert rank_p(0.0, controls, "two-sided") == 2 / (R + 1)
    # a tie counts as at least as extreme
    assert rank_p(1.0, controls) == 2 / (R + 1)
    assert rank_p(2.0, controls, "greater") == 2 / (R + 1)
    assert rank_p(1.0, [1.0, 1.0, 1.0]) == 1.0
    # NaN controls dropped; no controls -> nan
    assert rank_p(0.0, np.r_[controls, np.nan, np.nan]) == 1 / (R + 1)
    assert math.isnan(rank_p(0.0, []))
    assert math.isnan(rank_p(0.0, [np.nan]))
    assert math.isnan(parametric_p(0.0, [1.0]))
    assert math.isnan(parametric_p(0.0, [1.0, 1.0, 1.0]))


def test_parametric_p_matches_formula():
    from scipy import stats
    c = np.array([0.1, -0.2, 0.05, 0.3, -0.1, 0.0])
    T, R = -0.5, c.size
    stat = (T - c.mean()) / (c.std(ddof=1) * math.sqrt(1 + 1 / R))
    assert parametric_p(T, c) == pytest.approx(stats.t.cdf(stat, R - 1), rel=1e-12)
    assert parametric_p(T, c, "greater") == pytest.approx(stats.t.sf(stat, R - 1), rel=1e-12)
    assert parametric_p(T, c, "two-sided") == pytest.approx(2 * stats.t.cdf(stat, R - 1), rel=1e-12)


# --- Holm and BH ------------------------------------------------------------------------------

def _ref_holm(p):
    p = list(p)
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    idx.sort(key=lambda i: p[i])
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, (m - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def _ref_bh(p):
    p = list(p)
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    idx.sort(key=lambda i: p[i])
    out = [float("nan")] * len(p)
    for rank, i in enumerate(idx):
        out[i] = min(1.0, min(m * p[j] / (r + 1) for r, j in enumerate(idx) if r >= rank))
    return out


def _random_pvectors():
    rng = np.random.default_rng(3)
    for trial in range(200):
        m = int(rng.integers(1, 30))
        p = rng.uniform(0, 1, m) ** 3
        if trial % 2:
            p = np.round(p, 2)  # ties
        if trial % 3 == 0:
            p[rng.random(m) < 0.2] = np.nan
        yield p
    yield np.array([np.nan, np.nan])
    yield np.array([0.01, 0.01, 0.01, 0.04])
    yield np.array([0.0, 1.0, 0.5])


def test_holm_bh_match_reference():
    for p in _random_pvectors():
        for fn, ref in ((holm, _ref_holm), (bh, _ref_bh)):
            got, want = fn(p), np.array(ref(p))
            assert got.shape == p.shape
            np.testing.assert_array_equal(np.isnan(got), np.isnan(p))
            ok = ~np.isnan(p)
            np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-12)
            assert np.all(got[ok] >= p[ok] - 1e-15) and np.all(got[ok] <= 1.0)


def test_holm_bh_match_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for p in _random_pvectors():
        ok = ~np.isnan(p)
        if not ok.any():
            continue
        for fn, method in ((holm, "holm"), (bh, "fdr_bh")):
            want = multitest.multipletests(p[ok], method=method)[1]
            np.testing.assert_allclose(fn(p)[ok], want, rtol=0, atol=1e-12)


def test_holm_known_values():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(bh([0.01, 0.04, 0.03, np.nan]), [0.03, 0.04, 0.04, np.nan])


# --- cluster bootstrap ------------------------------------------------------------------------

def _coverage(n_sims, k, mu, sd_cluster, sd_row, naive, seed):
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(k), 2)
    ids = np.arange(2 * k) if naive else clusters
    hits = 0
    for s in range(n_sims):
        x = mu + np.repeat(rng.normal(0, sd_cluster, k), 2) + rng.normal(0, sd_row, 2 * k)
        b = cluster_bootstrap(x, ids, n_boot=1000, seed=s)
        hits += b["lo"] <= mu <= b["hi"]
    return hits / n_sims


def test_cluster_bootstrap_coverage():
    cov = _coverage(1200, k=100, mu=0.3, sd_cluster=1.0, sd_row=0.3, naive=False, seed=11)
    assert 0.93 <= cov <= 0.97, cov


def test_row_bootstrap_undercovers_with_correlated_pairs():
    # within-pair correlation 1/(1 + 0.09) ≈ 0.92: treating rows as independent halves the variance
    cov = _coverage(600, k=100, mu=0.3, sd_cluster=1.0, sd_row=0.3, naive=True, seed=11)
    assert cov < 0.92, cov


def test_cluster_bootstrap_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    cl = np.repeat(np.arange(10), 2)
    c = rng.normal(size=(5, 20))
    b = cluster_bootstrap(x, cl, n_boot=500, seed=3, controls=c)
    assert b == cluster_bootstrap(x, cl, n_boot=500, seed=3, controls=c)  # seeded
    assert b["mean"] == pytest.approx(x.mean())
    assert b["excess"] == pytest.approx(x.mean() - c.mean(axis=1).mean())
    assert b["lo"] < b["mean"] < b["hi"] and b["excess_lo"] < b["excess"] < b["excess_hi"]
    # cluster labels need not be integers or sorted
    labels = np.array([f"pair-{i}" for i in np.repeat(np.arange(10)[::-1], 2)])
    b2 = cluster_bootstrap(x[::-1], labels, n_boot=500, seed=3)
    assert b2["mean"] == pytest.approx(b["mean"])
    # NaN rows are left out
    xn = x.copy()
    xn[0] = np.nan
    bn = cluster_bootstrap(xn, cl, n_boot=200)
    assert bn["mean"] == pytest.approx(np.nanmean(xn)) and np.isfinite(bn["lo"])
    # one cluster: the interval collapses onto the mean
    b1 = cluster_bootstrap([1.0, 3.0], [0, 0], n_boot=50)
    assert b1["lo"] == b1["hi"] == b1["mean"] == 2.0


def test_cluster_bootstrap_matches_loop():
    """The count-matrix replicate equals taking the rows of the drawn clusters one by one."""
    rng = np.random.default_rng(5)
    k = 7
    cl = np.repeat(np.arange(k), 3)
    x = rng.normal(size=3 * k)
    b = cluster_bootstrap(x, cl, n_boot=300, seed=9, alpha=0.1)
    draws = np.random.default_rng(9).integers(0, k, size=(300, k))
    means = [np.concatenate([x[cl == j] for j in d]).mean() for d in draws]
    lo, hi = np.percentile(means, [5, 95])
    assert b["lo"] == pytest.approx(lo) and b["hi"] == pytest.approx(hi)


# --- cell_test and family ---------------------------------------------------------------------

def _cell(shift, seed, R=20, n=40):
    rng = np.random.default_rng(seed)
    shared = np.repeat(rng.normal(0, 1, n // 2), 2)
    t = shared + rng.normal(shift, 1, n)
    c = shared + rng.normal(0, 1, (R, n))
    return t, c, np.repeat(np.arange(n // 2), 2)


def test_cell_test_keys_and_values():
    t, c, cl = _cell(-2.0, 0)
    r = cell_test(t, c, cl, n_boot=500)
    assert r["n"] == 40 and r["n_clusters"] == 20 and r["num_controls"] == 20
    assert r["targeted"] == pytest.approx(t.mean())
    assert r["control_mean"] == pytest.approx(c.mean(1).mean())
    assert r["control_sd"] == pytest.approx(c.mean(1).std(ddof=1))
    assert r["excess"] == pytest.approx(r["targeted"] - r["control_mean"])
    assert r["p_floor"] == r["p_rank"] == 1 / 21
    assert r["p_rank_two_sided"] == 2 / 21
    assert r["p_param"] < 1e-6 and r["p_param_two_sided"] == pytest.approx(2 * r["p_param"])
    assert r["targeted_lo"] < r["targeted"] < r["targeted_hi"]
    assert r["excess_hi"] < 0


def test_family_verdicts_and_mde():
    cells = [cell_test(*_cell(-2.0, s), n_boot=200) for s in range(3)]
    cells += [cell_test(*_cell(0.0, 10 + s), n_boot=200) for s in range(3)]
    fam = family(cells, alpha=0.05)
    assert [f["verdict"] for f in fam[:3]] == ["targeted > controls"] * 3
    assert all(f["verdict"] == "not distinguishable" for f in fam[3:])
    np.testing.assert_allclose([f["p_holm"] for f in fam], holm([c["p_param"] for c in cells]))
    np.testing.assert_allclose([f["p_bh"] for f in fam], bh([c["p_param"] for c in cells]))
    np.testing.assert_allclose([f["p_rank_holm"] for f in fam], holm([c["p_rank"] for c in cells]))
    assert all(f["family_size"] == 6 for f in fam)
    assert not any(f["rank_can_pass"] for f in fam)  # 1/21 > 0.05/6
    for f in fam:
        assert f["mde"] == pytest.approx(mde(20, 20, f["control_sd"], alpha=0.05 / 6))
    assert "p_holm" not in cells[0]  # inputs untouched
    # enough controls: the rank test can pass Holm at m = 6
    big = cell_test(*_cell(-2.0, 0, R=199), n_boot=100)
    assert family([big] * 6)[0]["rank_can_pass"]
    # a NaN p-value is outside the family
    nan_cell = dict(cells[0], p_param=float("nan"))
    fam2 = family([nan_cell] + cells[1:])
    assert fam2[0]["verdict"] == "not distinguishable" and math.isnan(fam2[0]["p_holm"])
    assert fam2[1]["family_size"] == 5


# --- errors -----------------------------------------------------------------------------------

def test_errors_name_the_argument():
    t, c, cl = _cell(0.0, 0)
    with pytest.raises(JaxValuesError, match="alternative: expected 'less', 'greater' or 'two-sided', got 'up'"):
        rank_p(0.0, [1.0, 2.0], "up")
    for fn in (parametric_p, rank_p):
        with pytest.raises(JaxValuesError, match="alternative"):
            fn(0.0, [1.0, 2.0], "lower")
    with pytest.raises(JaxValuesError, match="alternative"):
        mde(10, 20, 1.0, alternative="up")
    with pytest.raises(JaxValuesError, match="alternative"):
        cell_test(t, c, cl, alternative="up")
    with pytest.raises(JaxValuesError, match=r"^c: expected shape \[R, 40\]"):
        cell_test(t, c[:, :-1], cl)
    with pytest.raises(JaxValuesError, match=r"^c: expected shape"):
        cell_test(t, c[0], cl)
    with pytest.raises(JaxValuesError, match=r"^t: expected a 1-D"):
        cell_test(c, c, cl)
    with pytest.raises(JaxValuesError, match=r"^clusters: expected one cluster id per row \(40\)"):
        cell_test(t, c, cl[:-1])
    with pytest.raises(JaxValuesError, match=r"^clusters:"):
        cluster_bootstrap(t, cl[:-2])
    with pytest.raises(JaxValuesError, match=r"^controls: expected shape \[R, 40\]"):
        cluster_bootstrap(t, cl, controls=c[:, :3])
    with pytest.raises(JaxValuesError, match=r"^alpha: expected a number in \(0, 1\)"):
        cluster_bootstrap(t, cl, alpha=1.5)
    with pytest.raises(JaxValuesError, match=r"^power:"):
        mde(10, 20, 1.0, power=0.0)
    with pytest.raises(JaxValuesError, match=r"^n_boot:"):
        cluster_bootstrap(t, cl, n_boot=0)
    with pytest.raises(JaxValuesError, match=r"^pvals:"):
        holm([0.1, 1.5])
    with pytest.raises(JaxValuesError, match=r"p_key"):
        family([{"p_rank": 0.1}])


def test_family_two_sided_key_uses_two_sided_mde():
    cells = [cell_test(*_cell(-2.0, s), n_boot=100) for s in range(4)]
    fam = family(cells, p_key="p_param_two_sided")
    for f in fam:
        assert f["mde"] == pytest.approx(mde(20, 20, f["control_sd"], alpha=0.05 / 4, alternative="two-sided"))
        assert f["verdict"] == "targeted > controls"
