"""Contrast scores vs NumPy on raw activations; NeuronSet table, interventions, overlap, stability."""

import numpy as np
import pytest

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.identify.contrast import contrast, contrast_scores
from jaxvalues.identify.neuronset import NeuronSet, jaccard, split_halves, stability
from jaxvalues.stats.accumulator import NeuronStats

L, N = 3, 40


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    acts = {}
    for c, t in (("a", 300), ("b", 200), ("c", 250)):
        x = rng.standard_normal((L, t, N)).astype(np.float32)
        acts[c] = x
    acts["a"][1, :, 7] += 2.0  # a-specific neurons
    acts["a"][2, :, 3] += 1.0
    acts["b"][0, :, 11] += 3.0
    stats = NeuronStats.zeros(["a", "b", "c", "d"], L, N)  # "d": no data
    for c, x in acts.items():
        stats.add_activations(c, x)
    return acts, stats


def _cohen(x, y):
    nx, ny = x.shape[1], y.shape[1]
    sd = np.sqrt(((nx - 1) * x.var(1, ddof=1) + (ny - 1) * y.var(1, ddof=1)) / (nx + ny - 2))
    return (x.mean(1) - y.mean(1)) / sd


def test_contrast_scores_match_numpy(data):
    acts, stats = data
    x = acts["a"].astype(np.float64)
    rest = np.concatenate([acts["b"], acts["c"]], axis=1).astype(np.float64)
    np.testing.assert_allclose(contrast_scores(stats, "a", ["b", "c"], "mean"), x.mean(1) - rest.mean(1), atol=1e-7)
    np.testing.assert_allclose(contrast_scores(stats, "a", ["b", "c"], "rms"),
                               np.sqrt((x * x).mean(1)) - np.sqrt((rest * rest).mean(1)), atol=1e-7)
    np.testing.assert_allclose(contrast_scores(stats, "a", ["b", "c"], "effect"), _cohen(x, rest), atol=1e-6)
    with pytest.raises(JaxValuesError, match="no data"):
        contrast_scores(stats, "d", "a")
    with pytest.raises(ConfigError):
        contrast_scores(stats, "a", "b", "median")


def test_contrast_selects_planted_neurons(data):
    _, stats = data
    ns, report = contrast(stats, "effect", top_k=2)
    assert report["no_data"] == ["d"] and report["counts"]["a"] == 2
    assert ns.pairs("a") == {(1, 7), (2, 3)} and (0, 11) in ns.pairs("b")
    assert (ns.table["score"] > 0).all() and list(ns.filter("a").table["rank"]) == [0, 1]
    both, _ = contrast(stats, "mean", values=["c"], top_k=3, direction="both")
    assert (both.table["score"] < 0).any()  # c is below the rest on the planted neurons


def test_stance_pairs(data):
    acts, _ = data
    stats = NeuronStats.zeros(["v-support", "v-conflict"], L, N)
    stats.add_activations(0, acts["a"]).add_activations(1, acts["c"])
    ns, report = contrast(stats, "effect", top_k=1)
    assert ns.values == ["v"] and ns.pairs("v") == {(1, 7)}


def _set():
    rows = [("x", 0, 1, 0.9), ("x", 1, 2, 0.8), ("x", 2, 3, 0.1), ("y", 1, 2, 0.7), ("y", 2, 5, 0.6)]
    return NeuronSet.from_rows(({"value": v, "layer": l, "neuron": n, "score": s, "method": "m",
                                 "rank": i % 3} for i, (v, l, n, s) in enumerate(rows)), num_layers=3, num_neurons=8,
                               info={"note": "t"})


def test_neuronset_io_and_summaries(tmp_path):
    ns = _set()
    path = ns.save(tmp_path / "set.parquet")
    back = NeuronSet.load(path)
    assert back.table.equals(ns.table) and back.num_layers == 3 and back.info == {"note": "t"}
    assert {v: h.tolist() for v, h in ns.layer_histogram().items()} == {"x": [1, 1, 1], "y": [0, 1, 1]}
    values, m = ns.overlap()
    assert values == ["x", "y"] and m[0, 1] == m[1, 0] == pytest.approx(1 / 4) and (np.diag(m) == 1).all()
    assert ns.neurons("x") == {0: [1], 1: [2], 2: [3]} and ns.neurons() == {0: [1], 1: [2], 2: [3, 5]}
    assert ns.to_dict() == {"x": {0: [1], 1: [2], 2: [3]}, "y": {1: [2], 2: [5]}}
    with pytest.raises(JaxValuesError):
        NeuronSet.load(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(JaxValuesError):
        NeuronSet.load(tmp_path / "bad.parquet")
    with pytest.raises(JaxValuesError):
        ns.filter("zzz")


def test_neuronset_to_intervention():
    ns = _set()
    mult, add = ns.to_intervention("x").arrays(3, 8)
    assert mult[0, 1] == mult[1, 2] == mult[2, 3] == 0 and mult.sum() == 3 * 8 - 3 and not add.any()
    mult, _ = ns.to_intervention("y", mode="scale", gamma=5.0).arrays(3, 8)
    assert mult[1, 2] == mult[2, 5] == 5.0
    means = np.arange(24, dtype=np.float32).reshape(3, 8)
    mult, add = ns.to_intervention(["x", "y"], mode="mean", means=means).arrays(3, 8)
    assert mult[2, 5] == 0 and add[2, 5] == means[2, 5] and add[0, 1] == means[0, 1]
    stats = NeuronStats.zeros(["p", "q"], 3, 8)
    stats.add_activations(0, np.ones((3, 4, 8), np.float32)).add_activations(1, np.full((3, 4, 8), 3, np.float32))
    _, add = ns.to_intervention("x", mode="mean", means=stats).arrays(3, 8)
    assert add[0, 1] == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        ns.to_intervention("x", mode="mean")


def test_stability_and_halves():
    assert jaccard(set(), set()) == 1.0 and jaccard({1}, {2}) == 0.0
    a, b = _set(), _set().filter(top=2)
    st = stability(a, b)
    assert st["x"] == pytest.approx(2 / 3) and st["y"] == 1.0

    class R:
        def __init__(self, v, pair, lang):
            self.value, self.pair_id, self.lang = v, pair, lang

    items = [R(v, f"{v}-{i}", lang) for v in "uv" for i in range(7) for lang in ("zh", "en")]
    h1, h2 = split_halves(items, seed=3)
    assert len(h1) + len(h2) == len(items) and not {id(x) for x in h1} & {id(x) for x in h2}
    assert not {x.pair_id for x in h1} & {x.pair_id for x in h2}  # zh/en of one pair stay together
    for v in "uv":
        assert abs(sum(x.value == v for x in h1) - sum(x.value == v for x in h2)) <= 2
