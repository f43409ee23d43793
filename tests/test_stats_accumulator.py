"""NeuronStats: fixed-point exactness, statistics vs NumPy, exact order-independent merge."""

import numpy as np
import pytest

from jaxvalues.errors import JaxValuesError
from jaxvalues.stats.accumulator import (DIGIT_BITS, FRAC_BITS, NUM_DIGITS, NeuronStats, fixed_point_digits,
                                         merge_all)

L, N = 2, 5


def _acts(rng, t):
    scale = np.array([1e-9, 1e-3, 0.3, 4.0, 300.0])  # tiny to large, per neuron
    return (rng.standard_normal((L, t, N)) * scale).astype(np.float32)


def test_digits_are_exact_fixed_point():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-12, 4, 200), [0.0, -0.0, 1.0, -2.5]])
    x = x.astype(np.float32)
    digits, clipped = fixed_point_digits(x)
    digits = np.asarray(digits)
    assert digits.shape == (x.size, NUM_DIGITS) and not np.asarray(clipped).any()
    for i, v in enumerate(x):
        got = sum(int(digits[i, j]) << (DIGIT_BITS * j) for j in range(NUM_DIGITS))
        assert got == int(np.round(np.float64(v) * 2.0**FRAC_BITS)), v  # round(x·2^30) exactly
    assert (np.abs(digits) < 2**DIGIT_BITS).all()


def test_statistics_match_numpy():
    rng = np.random.default_rng(1)
    a, b = _acts(rng, 300), _acts(rng, 200)
    count = rng.random(200) < 0.6
    s = NeuronStats.zeros(["a", "b", "empty"], L, N)
    s.add_activations("a", a).add_activations(1, b, count)
    ref = {0: a.astype(np.float64), 1: b.astype(np.float64)[:, count]}
    for c, x in ref.items():
        assert s.tokens[c] == x.shape[1]
        np.testing.assert_array_equal(s.active[c], (x > 0).sum(1))
        np.testing.assert_allclose(s.sum[c], x.sum(1), rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(s.sumsq[c], (x * x).sum(1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s.probs()[c], (x > 0).mean(1))
        np.testing.assert_allclose(s.mean()[c], x.mean(1), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.std()[c], x.std(1), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(s.std(ddof=1)[c], x.std(1, ddof=1), rtol=1e-5, atol=1e-8)
    assert np.isnan(s.probs()[2]).all() and np.isnan(s.mean()[2]).all() and np.isnan(s.std()[2]).all()
    assert list(s.has_data) == [True, True, False]
    assert (s.sum_frac >= 0).all() and (s.sum_frac < 2**FRAC_BITS).all()


def test_merge_of_any_split_is_bit_identical():
    rng = np.random.default_rng(2)
    acts = _acts(rng, 240)
    conds = rng.integers(0, 3, 240)
    one = NeuronStats.zeros(["x", "y", "z"], L, N)
    for c in range(3):
        one.add_activations(c, acts[:, conds == c])
    for trial in range(4):
        perm = rng.permutation(240)
        cuts = np.sort(rng.choice(np.arange(1, 240), rng.integers(1, 6), replace=False))
        parts = []
        for piece in np.split(perm, cuts):
            p = NeuronStats.zeros(["x", "y", "z"], L, N)
            for c in range(3):  # a different order and grouping of the same tokens
                sel = piece[conds[piece] == c]
                for chunk in np.array_split(sel, max(1, len(sel) // 7)):
                    if len(chunk):
                        p.add_activations(c, acts[:, chunk])
            parts.append(p)
        rng.shuffle(parts)
        assert merge_all(parts).equals(one)
        # a different merge tree
        tree = parts[0]
        for p in parts[1:]:
            tree = p.merge(tree)
        assert tree.equals(one)
        assert np.array_equal(tree.sum, one.sum) and np.array_equal(tree.sumsq, one.sumsq)


def test_pooled_select_and_errors():
    rng = np.random.default_rng(3)
    s = NeuronStats.zeros(["a", "b", "c"], L, N)
    for c in range(3):
        s.add_activations(c, _acts(rng, 50 + 10 * c))
    pooled = s.pooled(["a", "c"], "a+c")
    m = s.select(["a"]).merge(NeuronStats(("a",), *(v[2:3] for v in s.arrays().values())))
    assert pooled.conditions == ("a+c",)
    for f in ("tokens", "active", "sum_int", "sum_frac", "sumsq_int", "sumsq_frac"):
        assert np.array_equal(getattr(pooled, f), getattr(m, f))
    with pytest.raises(JaxValuesError):
        s.merge(NeuronStats.zeros(["a", "b"], L, N))
    with pytest.raises(JaxValuesError):
        s.index("nope")
    with pytest.raises(JaxValuesError):
        NeuronStats.zeros(["a", "a"], L, N)


def test_pytree_roundtrip():
    import jax

    s = NeuronStats.zeros(["a"], L, N, meta={"model": "m"})
    s.add_activations(0, _acts(np.random.default_rng(4), 10))
    leaves, treedef = jax.tree_util.tree_flatten(s)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.equals(s) and back.meta == {"model": "m"}


def test_chunked_scan_reduction_is_identical(monkeypatch):
    """Large B·S·N reduces tokens in scan chunks: same digits bit for bit; the batch Partial is
    the sum of the row Partials."""
    import jax

    import jaxvalues.stats.accumulator as acc

    rng = np.random.default_rng(5)
    acts = tuple(rng.standard_normal((3, 32, N)).astype(np.float32) for _ in range(L))  # 96 tokens
    count = (rng.random((3, 32)) < 0.8).astype(np.int32)
    whole = jax.jit(acc.reduce_acts_rows)(acts, count)
    monkeypatch.setattr(acc, "CHUNK_ELEMENTS", 3 * 8 * N)  # 8 positions of every row per step: 4 steps
    chunked = jax.jit(acc.reduce_acts_rows)(acts, count)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(whole.tokens), count.sum(1))
    batch = jax.jit(acc.reduce_acts)(acts, count)
    for a, b in zip(batch, whole):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).sum(0))
    assert int(batch.tokens) == count.sum()
