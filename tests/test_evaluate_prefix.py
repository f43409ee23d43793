"""Shared-prefix choice scoring (ChoiceScorer(share_prefix=True)) and the answer-only last layer
(answer_only=True): equal to the full unshared path on every decoder family, with rows masks,
interventions and the label mass; compilations bounded by bucket shapes."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.evaluate.batching import common_prefix_lengths
from jaxvalues.evaluate.choice import ChoiceScorer, _PrefixPlan, build_choice_prompts
from jaxvalues.models.intervention import Intervention
from jaxvalues.testing import FAMILIES

IV = Intervention.zero({0: [1, 5, 9], 1: [0, 40]}) | Intervention.scale({1: [3, 4, 77]}, 3.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_equals_unshared(tmp_path, family):
    lm = toy_model(tmp_path, family=family)
    pr = build_choice_prompts(toy_records(), lm.tokenizer)
    plan = _PrefixPlan(pr)
    assert (plan.lp > 0).all() and plan.k == 2  # the toy orders do share a prefix
    conds = [None, IV, Intervention.zero({0: list(range(30))})]
    rows = np.zeros((3, pr.num_rows), bool)
    rows[0] = True
    rows[1, ::2] = True  # one order only of every dilemma
    rows[2, pr.dilemma == 1] = True
    for r, mass in ((None, False), (rows, True)):
        # reference: every row in full, every position of every layer
        ref = ChoiceScorer(lm, 4, share_prefix=False, answer_only=False).logits(pr, conds, r, mass=mass)
        for share, answer_only in ((True, False), (False, True), (True, True)):
            seen = []
            sc = ChoiceScorer(lm, 4, share_prefix=share, answer_only=answer_only)
            got = sc.logits(pr, conds, r, on_batch=lambda: seen.append(1), mass=mass)
            assert len(seen) == sc.num_batches(pr, 3, r)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=f"{share=} {answer_only=}")
            assert np.array_equal(np.isnan(got), np.isnan(ref))
    # and the interventions matter under sharing too
    assert not np.allclose(got[0][rows[0]][:, :2], ChoiceScorer(lm, 4).logits(pr, [conds[2]])[0][rows[0]])


def test_common_prefix_lengths_keep_the_answer_token():
    ids = np.array([[0, 5, 6, 7, 8], [0, 5, 6, 9, 8], [0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 3]])
    mask = (np.arange(5)[None] >= np.array([1, 1, 2, 0, 4])[:, None]).astype(np.int32)
    lp = common_prefix_lengths(ids, mask, np.array([0, 0, 1, 1, 2]), 4)
    assert lp.tolist() == [2, 0, 0, 0]  # group 1: 5 6 7 vs 1 2 3 4 5; group 2 one token: 0; group 3 empty
    same = common_prefix_lengths(ids[:1].repeat(2, 0), mask[:1].repeat(2, 0), np.zeros(2, int), 1)
    assert same.tolist() == [3]  # identical rows: all but the last token


def test_shared_compilations_one_per_bucket_shape(tmp_path):
    lm = toy_model(tmp_path)
    pr = build_choice_prompts(toy_records(), lm.tokenizer)
    sc = ChoiceScorer(lm, 4)
    plan = _PrefixPlan(pr)
    start = sc.compilations()
    sc.logits(pr, [None, IV])
    shapes = {(int(np.ceil(max(plan.lp[d], 1) / 32)), int(np.ceil(max(plan.slen[d], 1) / 16))) for d in range(6)}
    first = sc.compilations() - start
    assert 1 <= first <= len(shapes)  # batches mixing dilemmas use the bucket of their longest
    rng = np.random.default_rng(0)
    conds = [Intervention.zero({int(l): rng.choice(96, size=5, replace=False).tolist()}) for l in range(3)]
    sc.logits(pr, conds + [None])
    sc.logits(pr, conds, mass=False)
    assert sc.compilations() - start == first  # new conditions never recompile
