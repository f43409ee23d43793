"""Streaming collection on a tiny model vs a NumPy reference from `lm.forward(capture_neurons=True)`."""

import numpy as np
import pytest

pytest.importorskip("torch")

import jaxvalues as jv  # noqa: E402
from jaxvalues.errors import JaxValuesError  # noqa: E402
from jaxvalues.stats.accumulator import merge_all  # noqa: E402
from jaxvalues.stats.batching import TokenizedExample, plan_batches  # noqa: E402
from jaxvalues.stats.collect import collect  # noqa: E402
from jaxvalues.testing import tiny_hf_model, word_tokenizer  # noqa: E402

CONDS = ("a", "b", "c")
BUCKETS = (64, 128)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_hf_model("llama", d)
    return jv.load_model(d)


@pytest.fixture(scope="module")
def examples():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 110, 26)
    return [TokenizedExample(rng.integers(4, 211, n).astype(np.int32), int(rng.integers(0, 3)),
                             rng.random(n) < 0.5, f"ex{i}") for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def reference_acts(lm, examples):
    """Per example [L, S, N] float64 from one right-padded forward (pad id = a real vocab id)."""
    s = max(len(e) for e in examples)
    ids = np.full((len(examples), s), 5, np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, :len(e)] = e.ids
        mask[i, :len(e)] = 1
    neurons = np.asarray(lm.forward(ids, mask, capture_neurons=True, logits=False).neurons, np.float64)
    return [neurons[:, i, :len(e)] for i, e in enumerate(examples)]


def _reference(examples, acts, select):
    L, _, N = acts[0].shape
    tokens = np.zeros(3, np.int64)
    active = np.zeros((3, L, N), np.int64)
    s1, s2, mass = np.zeros((3, L, N)), np.zeros((3, L, N)), np.zeros((3, L, N))
    for e, a in zip(examples, acts):
        a = a[:, select(e)]
        tokens[e.condition] += a.shape[1]
        active[e.condition] += (a > 0).sum(1)
        s1[e.condition] += a.sum(1)
        s2[e.condition] += (a * a).sum(1)
        mass[e.condition] += np.abs(a).sum(1)
    return tokens, active, s1, s2, mass


SELECT = {
    "all": lambda e: np.ones(len(e), bool),
    "rationale": lambda e: e.mask,
    "last_k": lambda e: np.arange(len(e)) >= len(e) - 7,
}


@pytest.mark.parametrize("selection", ["all", "rationale", "last_k"])
def test_matches_numpy_reference(lm, examples, reference_acts, selection):
    st = collect(lm, examples, CONDS, token_selection=selection, k=7, batch_size=4, buckets=BUCKETS)
    tokens, active, s1, s2, mass = _reference(examples, reference_acts, SELECT[selection])
    np.testing.assert_array_equal(st.tokens, tokens)
    np.testing.assert_array_equal(st.active, active)  # counts exactly
    # sums to 1e-6 relative to the summed magnitudes (the reference forward ran in another batch
    # shape, so single activations may differ in the last float32 bit)
    assert (np.abs(st.sum - s1) <= 1e-6 * mass + 1e-9).all()
    assert (np.abs(st.sumsq - s2) <= 1e-6 * s2 + 1e-9).all()
    assert (np.abs(st.mean() - s1 / tokens[:, None, None]) <= 1e-6 * mass / tokens[:, None, None] + 1e-9).all()
    rep = st.meta["collect"]
    assert rep["tokens_counted"] == tokens.sum() and rep["tokens_real"] == sum(len(e) for e in examples)
    assert rep["compilations"] == len(rep["batch_shapes"]) <= len(BUCKETS)
    assert 0 < rep["padding_fraction"] < 1


def test_merge_of_any_split_equals_one_pass(lm, examples):
    full = collect(lm, examples, CONDS, batch_size=4, buckets=BUCKETS)
    rng = np.random.default_rng(1)
    for _ in range(2):
        perm = rng.permutation(len(examples))
        pieces = np.split(perm, np.sort(rng.choice(np.arange(1, len(examples)), 3, replace=False)))
        parts = [collect(lm, [examples[i] for i in p], CONDS, batch_size=4, buckets=BUCKETS) for p in pieces]
        assert merge_all(parts[::-1]).equals(full)  # different batch compositions, same bits


def test_bucket_plan_and_compile_count(lm, examples):
    lengths = [len(e) for e in examples]
    plan = plan_batches(lengths, [e.condition for e in examples], batch_size=8, max_tokens=256)
    assert sorted(i for b in plan for i in b.indices) == list(range(len(examples)))
    for b in plan:
        assert b.row_conditions == tuple(examples[i].condition for i in b.indices)
        assert b.rows * b.seq_len <= 256 and max(lengths[i] for i in b.indices) <= b.seq_len
        assert b.seq_len in (32, 48, 64, 96, 128)
    short = [e for e in examples if len(e) <= 48]  # compile only the two short shapes
    shapes = {b.shape for b in plan_batches([len(e) for e in short], [e.condition for e in short], 8, 256)}
    assert shapes <= {b.shape for b in plan} and len(shapes) == 2
    st = collect(lm, short, CONDS, batch_size=8, max_tokens=256)
    assert st.meta["collect"]["compilations"] == len(shapes)
    assert sorted(map(tuple, st.meta["collect"]["batch_shapes"])) == sorted(shapes)


def test_errors(lm, examples):
    with pytest.raises(JaxValuesError, match="condition"):
        collect(lm, [TokenizedExample(np.arange(5, dtype=np.int32), 3)], CONDS)
    with pytest.raises(JaxValuesError, match="mask"):
        collect(lm, [TokenizedExample(np.arange(5, dtype=np.int32), 0)], CONDS, token_selection="rationale")
    with pytest.raises(JaxValuesError, match="vocabulary"):
        collect(lm, [TokenizedExample(np.array([1, 999], np.int32), 0)], CONDS)


def test_collect_records_rationale(lm):
    from jaxvalues.data.schema import ActivationRecord
    from jaxvalues.stats.records import collect_records, examples_from_records

    lm.tokenizer = word_tokenizer()
    try:
        recs = [ActivationRecord(id=f"act-{v}-{i:03d}-en", lang="en", pair_id=f"act-{v}-{i:03d}", value=v,
                                 conflict="w1 vs w2", story="w3 w4 w5 w6", aligned_action="w7 w8",
                                 rationale=" ".join(f"w{j}" for j in range(10, 10 + 3 + i)), violating_action="w9")
                for v in ("integrity", "justice") for i in range(3)]
        st = collect_records(lm, recs, scheme="values", token_selection="rationale", batch_size=4)
        assert st.conditions[10] == "integrity" and st.num_conditions == 12
        assert st.tokens[st.index("integrity")] == st.tokens[st.index("justice")] == 3 + 4 + 5
        assert st.tokens.sum() == 24 and not st.has_data[0]
        ex, names = examples_from_records(recs, lm.tokenizer, "stance")
        assert len(names) == 24 and len(ex) == 12
        assert {names[e.condition] for e in ex} == {"integrity-support", "integrity-conflict", "justice-support",
                                                    "justice-conflict"}
    finally:
        lm.tokenizer = None


def test_mixed_condition_batches_cut_padding(lm, examples):
    lengths = [len(e) for e in examples]
    conds = [e.condition for e in examples]
    mixed = plan_batches(lengths, conds, batch_size=4, max_tokens=256)
    single = plan_batches(lengths, conds, batch_size=4, max_tokens=256, mixed=False)
    for b in single:
        assert len(set(b.row_conditions)) == 1 and b.condition == b.row_conditions[0]
    assert any(b.condition == -1 for b in mixed)
    assert sum(b.rows * b.seq_len for b in mixed) < sum(b.rows * b.seq_len for b in single)
