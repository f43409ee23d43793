"""Intervention modes, random controls, control statistics, size sweep and leakage summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxvalues as jv
from jaxvalues.evaluate import controls as ctl
from jaxvalues.evaluate.experiment import build_conditions
from jaxvalues.models.intervention import Intervention

TARGET = {0: [1, 5, 9], 2: [3], 5: [0, 10, 20, 30]}


def test_random_control_preserves_per_layer_counts_and_avoids_targets():
    draws = ctl.random_like(TARGET, num_neurons=64, draws=20, seed=7)
    assert len(draws) == 20
    for m in draws:
        assert ctl.counts(m) == ctl.counts(TARGET)
        for layer, idx in m.items():
            assert len(set(idx)) == len(idx) and all(0 <= n < 64 for n in idx)
            assert not set(idx) & set(TARGET[layer])
    assert len({str(m) for m in draws}) == 20  # the draws differ


def test_random_control_is_seed_reproducible():
    a = ctl.random_like(TARGET, 64, 20, seed=3)
    assert a == ctl.random_like(TARGET, 64, 20, seed=3)
    assert a != ctl.random_like(TARGET, 64, 20, seed=4)
    assert ctl.random_like(TARGET, 64, 5, seed=3) == a[:5]  # draw r depends on (seed, r) only


def test_random_control_raises_when_a_layer_is_too_small():
    with pytest.raises(jv.JaxValuesError, match="layer 0"):
        ctl.random_like({0: list(range(40))}, num_neurons=64, draws=1)


def test_steer_intervention_and_its_random_control():
    support, conflict = {0: [1, 2, 3], 1: [4]}, {0: [3, 7], 1: [8, 9]}
    mult, add = ctl.steer_intervention(support, conflict).arrays(2, 16)
    assert mult[0, 1] == mult[0, 2] == 5.0 and mult[1, 4] == 5.0  # support only: x5
    assert mult[0, 7] == 0.0 and mult[1, 8] == mult[1, 9] == 0.0  # conflict only: 0
    assert mult[0, 3] == 1.0  # in both: untouched
    assert (add == 0).all() and int((mult != 1).sum()) == 6
    pairs = ctl.random_steer_like(support, conflict, 16, draws=10, seed=1)
    assert pairs == ctl.random_steer_like(support, conflict, 16, draws=10, seed=1)
    for s, c in pairs:
        assert ctl.counts(s) == {0: 2, 1: 1} and ctl.counts(c) == {0: 1, 1: 2}
        for layer in (0, 1):
            assert not set(s.get(layer, [])) & set(c.get(layer, []))


def test_modes_zero_scale_mean_arrays():
    means = np.arange(6 * 32, dtype=np.float32).reshape(6, 32) / 10
    m, a = ctl.make_intervention(TARGET, "zero").arrays(6, 32)
    assert m[0, 5] == 0 and a[0, 5] == 0 and m[0, 6] == 1
    m, a = ctl.make_intervention(TARGET, "scale", gamma=2.5).arrays(6, 32)
    assert m[5, 30] == 2.5 and a[5, 30] == 0
    m, a = ctl.make_intervention(TARGET, "mean", means=means).arrays(6, 32)
    assert m[2, 3] == 0 and a[2, 3] == pytest.approx(means[2, 3]) and a[2, 4] == 0
    with pytest.raises(jv.JaxValuesError, match="gamma"):
        ctl.make_intervention(TARGET, "scale")
    with pytest.raises(jv.JaxValuesError, match="means"):
        ctl.make_intervention(TARGET, "mean")
    with pytest.raises(jv.JaxValuesError, match="mode must be"):
        ctl.make_intervention(TARGET, "ablate")


def test_mean_mode_sets_neurons_to_the_collected_means(tmp_path):
    """Means pooled from NeuronStats; the forward's neurons (after intervention) equal them."""
    from jaxvalues.stats.accumulator import NeuronStats
    from jaxvalues.testing import tiny_hf_model

    tiny_hf_model("llama", tmp_path)
    lm = jv.load_model(tmp_path)
    L, N = lm.config.num_layers, lm.config.num_neurons
    rng = np.random.default_rng(0)
    stats = NeuronStats.zeros(["integrity", "justice"], L, N)
    acts0, acts1 = rng.normal(size=(L, 30, N)), rng.normal(1.0, size=(L, 10, N))
    stats.add_activations("integrity", acts0).add_activations("justice", acts1)
    means = ctl.pooled_means(stats)
    expected = np.concatenate([acts0, acts1], axis=1).mean(1)
    np.testing.assert_allclose(means, expected, atol=1e-6)
    nmap = {0: [2, 7], 2: [50]}
    iv = ctl.make_intervention(nmap, "mean", means=means)
    ids = rng.integers(3, 200, size=(2, 12))
    out = lm.forward(ids, intervention=iv, capture_neurons=True)
    neurons = np.asarray(out.neurons)  # [L, B, S, N]
    for layer, idx in nmap.items():
        for n in idx:
            np.testing.assert_allclose(neurons[layer, :, :, n], means[layer, n], rtol=1e-6)
    base = np.asarray(lm.forward(ids, capture_neurons=True).neurons)
    others = np.setdiff1d(np.arange(N), nmap[0])
    np.testing.assert_array_equal(neurons[0][..., others], base[0][..., others])  # layer 0, untouched neurons


def test_control_report_z_and_empirical_p():
    controls = [0.01, -0.02, 0.00, 0.03, -0.01]
    rep = ctl.control_report(-0.20, controls)
    assert rep["control_mean"] == pytest.approx(np.mean(controls))
    assert rep["control_sd"] == pytest.approx(np.std(controls, ddof=1))
    assert rep["z"] == pytest.approx((-0.20 - np.mean(controls)) / np.std(controls, ddof=1))
    # two-sided rank p: 2 · min(one-sided); no control as low as the target: 2 · (1 + 0) / (R + 1)
    assert rep["p_empirical"] == pytest.approx(2 / 6)
    # 0.02 lies inside the controls: one control ≥ it (0.03) -> 2 · (1 + 1) / 6, measured from the
    # controls' distribution, not from 0
    assert ctl.control_report(0.02, controls)["p_empirical"] == pytest.approx(4 / 6)
    assert rep["p_parametric"] < 0.01
    assert ctl.control_report(0.1, [])["num_controls"] == 0


def test_top_fraction_size_sweep():
    scores = np.arange(4 * 250, dtype=float).reshape(4, 250)  # lowest scores: layer 0's first neurons
    scores[0, 2] = np.inf  # not a candidate
    scores[0, 3] = np.nan  # not a candidate
    assert ctl.top_fraction(scores, 0.005) == {0: [0, 1, 4, 5, 6]}  # round(0.005 * 1000) = 5 candidates
    few = np.full((2, 100), np.inf)
    few[1, 7] = 0.5
    assert ctl.top_fraction(few, 0.05) == {1: [7]}  # fewer candidates than asked: all of them
    sizes = [ctl.total(ctl.top_fraction(np.random.default_rng(0).random((4, 250)), f)) for f in ctl.SWEEP_FRACTIONS]
    assert sizes == [1, 5, 10, 20, 50]
    conds = ctl.sweep_conditions(np.random.default_rng(0).random((4, 250)), (0.01, 0.02), "zero", draws=3, seed=0)
    assert list(conds) == ["top@0.01", "random@0.01#00", "random@0.01#01", "random@0.01#02",
                           "top@0.02", "random@0.02#00", "random@0.02#01", "random@0.02#02"]
    assert conds["random@0.02#01"].num_neurons == 20


def _toy_table(deltas: np.ndarray, values):
    rows = []
    for i, v in enumerate(values):
        for k in range(4):
            rows.append({"condition": "baseline", "record_id": f"{v}-{k}", "value": v, "p_aligned": 0.8})
            for j, w in enumerate(values):
                rows.append({"condition": f"leak:{w}", "record_id": f"{v}-{k}", "value": v,
                             "p_aligned": 0.8 + deltas[j, i]})
    return pd.DataFrame(rows)


def test_leakage_matrix_and_diagonal_dominance():
    values = ["prosperity", "harmony", "integrity"]
    d = np.array([[-0.3, -0.05, 0.0], [-0.02, -0.25, -0.01], [0.1, 0.0, -0.05]])
    mat = ctl.leakage_matrix(_toy_table(d, values), {f"leak:{v}": v for v in values}, values=values)
    np.testing.assert_allclose(mat.to_numpy(), d, atol=1e-12)
    assert list(mat.index) == values and list(mat.columns) == values
    dom = ctl.diagonal_dominance(mat)
    assert dom["rows_dominant"] == 2  # the integrity row moves prosperity more than integrity
    assert dom["diag_mean"] == pytest.approx(np.mean([0.3, 0.25, 0.05]))
    assert dom["offdiag_mean"] == pytest.approx(np.mean([0.05, 0.0, 0.02, 0.01, 0.1, 0.0]))
    assert dom["margin"]["integrity"] == pytest.approx(0.05 - 0.1)


def test_build_conditions_names_and_counts(tmp_path):
    class FakeLM:
        class config:
            num_neurons = 64

    conds = build_conditions(FakeLM, target=TARGET, mode="zero", controls=4, seed=1)
    assert list(conds) == ["baseline", "targeted", "random#00", "random#01", "random#02", "random#03"]
    assert conds["baseline"] is None
    for name in list(conds)[2:]:
        assert {l: len(v) for l, v in conds[name].neurons().items()} == ctl.counts(TARGET)
    with pytest.raises(jv.JaxValuesError, match="--controls"):
        build_conditions(FakeLM, controls=3)
    assert isinstance(conds["targeted"], Intervention)
