"""Gradient attribution vs actual zero-ablation effects on a tiny model; IG completeness; learned mask."""

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxvalues as jv  # noqa: E402
from jaxvalues.identify.attribution import attribute, choice_logodds  # noqa: E402
from jaxvalues.identify.mask import learn_mask  # noqa: E402
from jaxvalues.models.intervention import Intervention  # noqa: E402
from jaxvalues.testing import tiny_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama_attr")
    tiny_hf_model("llama", d, seed=1)
    return jv.load_model(d)


@pytest.fixture(scope="module")
def rows(lm):
    """6 prompts (3 left-padded), labels = (most, least) likely next token, 2 groups."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 211, (6, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:3, :9] = 0
    logits = np.asarray(lm.forward(ids, mask).logits)[:, -1]
    labels = np.stack([logits.argmax(1), logits.argmin(1)], 1).astype(np.int32)
    return ids, mask, labels, np.array([0, 0, 0, 1, 1, 1])


@pytest.fixture(scope="module")
def score(lm, rows):
    ids, mask, labels, _ = rows
    fn = jax.jit(lambda m, a: choice_logodds(lm.graphdef, lm.state, jnp.asarray(ids), jnp.asarray(mask), m, a,
                                             jnp.asarray(labels)))
    return lambda iv=None: np.asarray(fn(*(jnp.asarray(x) for x in lm.intervention_arrays(iv))), np.float64)


def _spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return np.corrcoef(rx, ry)[0, 1]


def test_patching_agrees_with_zero_ablation(lm, rows, score):
    ids, mask, labels, groups = rows
    res = attribute(lm, ids, mask, labels, groups, ["v0", "v1"], batch_size=4, return_rows=True)
    clean = score()
    np.testing.assert_allclose(res.logodds, clean, rtol=1e-4, atol=1e-4)
    assert (np.abs(clean) > 0.1).all()  # a real preference to explain
    for g in range(2):
        np.testing.assert_allclose(res.rows[groups == g].mean(0), res.scores[g], rtol=1e-5, atol=1e-7)
        top = np.argsort(-np.abs(res.scores[g]).ravel())[:12]
        est, actual = [], []
        for k in top:
            layer, n = np.unravel_index(k, res.scores[g].shape)
            ablated = score(Intervention.zero({int(layer): [int(n)]}))
            est.append(res.scores[g][layer, n])
            actual.append((clean - ablated)[groups == g].mean())  # effect of zeroing the neuron
        est, actual = np.array(est), np.array(actual)
        assert (np.sign(est) == np.sign(actual)).mean() >= 11 / 12
        assert _spearman(np.abs(est), np.abs(actual)) >= 0.7
        np.testing.assert_allclose(est, actual, rtol=0.5, atol=0.2 * np.abs(actual).max())
    ns = res.to_neuronset(top_k=5)
    assert ns.counts() == {"v0": 5, "v1": 5} and (ns.table["score"] > 0).all()


def test_integrated_gradients_completeness(lm, rows, score):
    ids, mask, labels, _ = rows
    clean = score()
    res = attribute(lm, ids, mask, labels, method="ig", steps=8, batch_size=8, return_rows=True)
    L, N = lm.config.num_layers, lm.config.num_neurons
    for layer in range(L):
        zeroed = score(Intervention.zero({layer: range(N)}))
        np.testing.assert_allclose(res.rows[:, layer].sum(-1), clean - zeroed, rtol=2e-2, atol=1e-4)
    res_all = attribute(lm, ids, mask, labels, method="ig", path="all", steps=8, batch_size=8, return_rows=True)
    zeroed = score(Intervention.zero({layer: range(N) for layer in range(L)}))
    np.testing.assert_allclose(res_all.rows.sum((1, 2)), clean - zeroed, rtol=5e-2, atol=1e-3)
    assert res.method == "ig-layer" and res_all.method == "ig-all"


def test_learned_mask_removes_preference(lm, rows, score):
    ids, mask, labels, groups = rows
    sel = groups == 0
    res = learn_mask(lm, ids[sel], mask[sel], labels[sel], value="v0", steps=60, l1=2e-3, lr=0.1,
                     retain=(ids[~sel], mask[~sel], labels[~sel]))
    rep = res.report
    assert res.losses[-1] < res.losses[0]
    ns = res.to_neuronset()
    assert 0 < len(ns) < lm.config.num_layers * lm.config.num_neurons // 3
    assert abs(rep["logodds_zeroed"] - 0) < abs(rep["logodds_before"])
    # the learned set moves the score toward 0 more than random sets of the same size
    base = score()[sel].mean()
    rng = np.random.default_rng(0)
    L, N = lm.config.num_layers, lm.config.num_neurons
    learned = abs(base) - abs(rep["logodds_zeroed"])
    rand = []
    for _ in range(3):
        flat = rng.choice(L * N, len(ns), replace=False)
        nm = {}
        for f in flat:
            nm.setdefault(int(f // N), []).append(int(f % N))
        rand.append(abs(base) - abs(score(Intervention.zero(nm))[sel].mean()))
    assert learned > max(rand)
    assert "retain_shift_zeroed" in rep
