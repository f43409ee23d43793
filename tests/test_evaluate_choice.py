"""Choice protocol on a tiny random model: parity with full-vocabulary softmax, order averaging,
label tokens, batching and compilation behaviour."""

from __future__ import annotations

import numpy as np
import pytest

import jaxvalues as jv
from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.evaluate.choice import (ChoicePrompts, ChoiceScorer, build_choice_prompts, choice_table,
                                       evaluate_choice, p_aligned_rows)
from jaxvalues.evaluate.controls import make_intervention
from jaxvalues.models.intervention import Intervention


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("choice_llama"))


@pytest.fixture(scope="module")
def prompts(lm):
    return build_choice_prompts(toy_records(), lm.tokenizer)


def _softmax_pair(full_logits, ids):
    z = np.asarray(full_logits, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return p[ids[0]] / (p[ids[0]] + p[ids[1]])


def _direct(lm, prompts, intervention=None):
    """P(aligned) of every row from lm.forward's full-vocabulary logits at the last position."""
    out = lm.forward(prompts.input_ids, prompts.attention_mask, intervention=intervention)
    last = np.asarray(out.logits[:, -1])  # left-padded: the last position is the last real token
    return np.array([_softmax_pair(last[r], prompts.label_ids[r]) for r in range(prompts.num_rows)])


IV = Intervention.zero({0: [1, 5, 9], 2: [0, 40]}) | Intervention.scale({1: [3, 4, 77]}, 3.0)


@pytest.mark.parametrize("intervention", [None, IV], ids=["none", "zero+scale"])
def test_p_aligned_equals_full_softmax_from_forward(lm, prompts, intervention):
    scorer = ChoiceScorer(lm, batch_size=4)
    p = p_aligned_rows(scorer.logits(prompts, [intervention])[0])
    np.testing.assert_allclose(p, _direct(lm, prompts, intervention), rtol=1e-5, atol=1e-6)
    # and one prompt alone, without any padding
    r = int(np.argmax(prompts.lengths))
    alone = lm.forward(prompts.input_ids[r:r + 1], intervention=intervention).logits[0, -1]
    assert p[r] == pytest.approx(_softmax_pair(np.asarray(alone), prompts.label_ids[r]), rel=1e-5)


def test_both_order_average_is_exact(lm, prompts):
    logits = ChoiceScorer(lm, batch_size=4).logits(prompts, [None])
    table = choice_table(prompts, logits, ["baseline"])
    p = p_aligned_rows(logits[0])
    for d in range(len(prompts.meta)):
        first = p[(prompts.dilemma == d) & (prompts.order == 0)][0]
        second = p[(prompts.dilemma == d) & (prompts.order == 1)][0]
        row = table.iloc[d]
        assert row["p_aligned_first"] == first and row["p_aligned_second"] == second
        assert row["p_aligned"] == (first + second) / 2
        assert row["position_bias"] == (first - second) / 2
        # position bias = mean P("A") - 0.5: aligned_first P(A) = first, aligned_second P(A) = 1 - second
        assert row["position_bias"] == pytest.approx((first + (1 - second)) / 2 - 0.5, abs=1e-12)
        assert row["chose_aligned"] == (row["p_aligned"] > 0.5)


def test_label_tokens_are_the_next_token_for_a_word_tokenizer(lm, prompts):
    tok = lm.tokenizer
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    for r in range(prompts.num_rows):
        aligned_is_a = prompts.order[r] == 0
        assert tuple(prompts.label_ids[r]) == ((a, b) if aligned_is_a else (b, a))
    # the label really is the token that follows the rendered prompt
    from jaxvalues.data.prompts import LABEL_PREFIX, render_evaluation

    for rec in toy_records():
        r = render_evaluation(rec, tok, "aligned_first")
        base = tok(r.text, add_special_tokens=r.add_special_tokens)["input_ids"]
        full = tok(r.text + LABEL_PREFIX[rec.lang] + "A", add_special_tokens=r.add_special_tokens)["input_ids"]
        assert full[: len(base)] == base and full[len(base)] == a


def _bpe_tokenizer():
    """A byte-level BPE trained offline on text where ' A', ' B' and 'A', 'B' follow the answer cues."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from jaxvalues.data.prompts import render_evaluation

    texts = []
    for rec in toy_records():
        for order in ("aligned_first", "aligned_second"):
            t = render_evaluation(rec, None, order, chat=False).text
            texts += [t + (" A" if rec.lang == "en" else "A"), t + (" B" if rec.lang == "en" else "B")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 20, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_label_tokens_for_a_byte_level_bpe():
    tok = _bpe_tokenizer()
    pr = build_choice_prompts(toy_records(), tok)
    for r in range(pr.num_rows):
        lang = pr.meta[pr.dilemma[r]]["lang"]
        aligned = "A" if pr.order[r] == 0 else "B"
        violating = "B" if aligned == "A" else "A"
        prefix = " " if lang == "en" else ""
        assert tok.decode([int(pr.label_ids[r, 0])]) == prefix + aligned
        assert tok.decode([int(pr.label_ids[r, 1])]) == prefix + violating


def test_identity_interventions_equal_no_intervention(lm, prompts):
    """Identity interventions (mult 1, add 0) change nothing but the float summation order: XLA's CPU
    GEMM may sum a row differently by its position in the batch (seen: 6e-8 on an AMD EPYC, 0 on
    another machine), so equality is to 1e-6, far below what one switched-off neuron moves."""
    ident = [None, Intervention.none(), Intervention.zero({}), Intervention.scale({0: [1, 2], 2: [5]}, 1.0),
             make_intervention({1: [3]}, "scale", gamma=1.0)]
    for bs in (4, len(ident)):
        out = ChoiceScorer(lm, batch_size=bs).logits(prompts, ident)
        for c in range(1, len(ident)):
            np.testing.assert_allclose(out[c], out[0], rtol=0, atol=1e-6)
    off = ChoiceScorer(lm, batch_size=4).logits(prompts, [None, Intervention.zero({0: [1, 2], 2: [5]})])
    assert np.abs(off[1] - off[0]).max() > 1e-3  # a real intervention is far outside that tolerance


def test_batched_conditions_equal_one_at_a_time(lm, prompts):
    conds = [None, IV, Intervention.zero({0: list(range(40))}), Intervention.scale({2: [7, 8]}, 5.0)]
    scorer = ChoiceScorer(lm, batch_size=4)
    together = scorer.logits(prompts, conds)
    for c, iv in enumerate(conds):
        alone = scorer.logits(prompts, [iv])[0]
        np.testing.assert_allclose(together[c], alone, rtol=1e-5, atol=1e-6)
    # and it matters: the interventions do change the logits
    assert not np.allclose(together[0], together[2])


def test_rows_mask_scores_only_the_marked_pairs(lm, prompts):
    conds = [None, IV, Intervention.zero({0: list(range(40))})]
    scorer = ChoiceScorer(lm, batch_size=4)
    full = scorer.logits(prompts, conds)
    rows = np.zeros((3, prompts.num_rows), bool)
    rows[0] = True
    rows[1, ::2] = True
    rows[2, prompts.dilemma == 0] = True
    seen = []
    part = scorer.logits(prompts, conds, rows, on_batch=lambda: seen.append(1))
    assert len(seen) == scorer.num_batches(prompts, 3, rows)
    # unshared: one batch per 4 pairs; shared prefix (default): per 2 (condition, dilemma) units
    assert ChoiceScorer(lm, 4, share_prefix=False).num_batches(prompts, 3, rows) == -(-int(rows.sum()) // 4)
    units = len({(c, int(prompts.dilemma[r])) for c, r in zip(*np.nonzero(rows))})
    assert scorer.num_batches(prompts, 3, rows) == -(-units // 2)
    np.testing.assert_allclose(part[rows], full[rows], rtol=1e-5, atol=1e-6)
    assert np.isnan(part[~rows]).all()
    # unscored dilemmas come out NaN in the table, scored ones as in the full table
    t = choice_table(prompts, part[2:], ["zero40"])
    scored = t["record_id"] == prompts.meta[0]["record_id"]
    assert t.loc[~scored, "p_aligned"].isna().all() and t.loc[scored, "p_aligned"].notna().all()
    with pytest.raises(jv.JaxValuesError, match=r"rows mask must be \[conditions, prompts\]"):
        scorer.logits(prompts, conds, rows[:2])


def test_no_recompilation_across_conditions(lm, prompts):
    scorer = ChoiceScorer(lm, batch_size=3, seq_multiple=128, share_prefix=False)  # one length bucket
    start = scorer.compilations()  # the program is shared by all scorers of this model
    scorer.logits(prompts, [None])
    before = scorer.compilations()
    assert before == start + 1
    rng = np.random.default_rng(0)
    for k in (1, 3, 7):
        conds = [Intervention.zero({int(l): rng.choice(96, size=k, replace=False).tolist()}) for l in range(3)]
        conds += [Intervention.scale({0: [k]}, 2.0 * k), None]
        scorer.logits(prompts, conds)
    assert scorer.compilations() == before


def test_evaluate_choice_table_shape(lm, prompts):
    t = evaluate_choice(lm, prompts, {"baseline": None, "zero": IV}, batch_size=4)
    assert len(t) == 2 * len(prompts.meta)
    assert set(t.columns) >= {"condition", "record_id", "value", "lang", "p_aligned", "position_bias",
                              "chose_aligned"}
    assert t["p_aligned"].between(0, 1).all()


def test_right_padded_prompts_are_rejected():
    with pytest.raises(jv.JaxValuesError, match="left-padded"):
        ChoicePrompts(np.zeros((1, 3), np.int32), np.array([[1, 1, 0]]), np.zeros((1, 2), np.int32),
                      np.zeros(1, np.int64), np.zeros(1, np.int64), [{"record_id": "x"}])


def test_label_mass_matches_full_softmax(lm, prompts):
    """mass=True: label logits unchanged and P(A)+P(B) equals the full-vocabulary softmax."""
    from jaxvalues.evaluate.choice import label_mass

    scorer = ChoiceScorer(lm, batch_size=4)
    plain = scorer.logits(prompts, [IV])
    full = scorer.logits(prompts, [IV], mass=True)
    assert full.shape == plain.shape[:2] + (3,)
    np.testing.assert_allclose(full[..., :2], plain, rtol=1e-5, atol=1e-5)
    last = np.asarray(lm.forward(prompts.input_ids, prompts.attention_mask, intervention=IV).logits[:, -1], np.float64)
    z = np.exp(last - last.max(1, keepdims=True))
    z /= z.sum(1, keepdims=True)
    want = np.take_along_axis(z, prompts.label_ids.astype(np.int64), axis=1).sum(1)
    np.testing.assert_allclose(label_mass(full)[0], want, rtol=1e-5, atol=1e-6)
