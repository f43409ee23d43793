"""Generation protocol: batched greedy replies per condition, parsing bookkeeping, per-dilemma table."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.evaluate.support import (build_support_prompts, evaluate_support, generate_replies, reply_table,
                                        status_counts, support_table)
from jaxvalues.models.intervention import Intervention

IV = Intervention.zero({0: list(range(0, 96, 3))}) | Intervention.scale({2: [1, 2, 3]}, 4.0)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("support_llama"))


@pytest.fixture(scope="module")
def prompts(lm):
    return build_support_prompts(toy_records(), lm.tokenizer, pad_id=lm.pad_id)


def test_prompts_use_the_support_format(lm, prompts):
    assert prompts.num_rows == 2 * len(toy_records())
    text = lm.tokenizer.decode(prompts.input_ids[0][prompts.attention_mask[0] > 0].tolist())
    assert "conclusion" in text or "结论" in text


def test_batched_generation_equals_one_condition_at_a_time(lm, prompts):
    together = generate_replies(lm, prompts, [None, IV], max_new_tokens=5, batch_size=4)
    assert generate_replies(lm, prompts, [IV], max_new_tokens=5, batch_size=4)[0] == together[1]
    assert generate_replies(lm, prompts, [None], max_new_tokens=5, batch_size=4)[0] == together[0]
    # same as the model's own generate with one intervention for the whole batch
    ids, mask = prompts.input_ids, prompts.attention_mask
    own = lm.generate(ids, 5, intervention=IV, attention_mask=mask, return_text=False)
    eos = set(lm.eos_ids)
    for p in range(prompts.num_rows):
        toks = [t for t in own[p].tolist()]
        toks = toks[:next((i for i, t in enumerate(toks) if t in eos), len(toks))]
        assert together[1][p] == lm.tokenizer.decode(toks, skip_special_tokens=True)


def test_conditions_do_not_recompile_generation(lm, prompts):
    generate_replies(lm, prompts, [None], max_new_tokens=3, batch_size=4)
    prefill, step = lm._gen_cache["prefill"], lm._gen_cache["step"]
    before = (prefill._cache_size(), step._cache_size())
    generate_replies(lm, prompts, [IV, Intervention.zero({1: [5]}), None], max_new_tokens=3, batch_size=4)
    assert (prefill._cache_size(), step._cache_size()) == before


def test_reply_table_keeps_every_reply_and_maps_the_aligned_option(prompts):
    replies = [["最终结论：选项A：70% 选项B：30%"] * prompts.num_rows,
               ["Final conclusion: Option A: 20% Option B: 80%", "no idea"] * (prompts.num_rows // 2)]
    df = reply_table(prompts, replies, ["baseline", "targeted"])
    assert len(df) == 2 * prompts.num_rows  # nothing dropped
    first = df[(df.condition == "baseline") & (df.order == "aligned_first")]
    second = df[(df.condition == "baseline") & (df.order == "aligned_second")]
    assert (first.support_aligned == 70).all() and (second.support_aligned == 30).all()
    counts = status_counts(df)
    assert counts["baseline"]["ok"] == prompts.num_rows
    assert counts["targeted"] == {"ok": prompts.num_rows // 2, "partial": 0, "out_of_range": 0,
                                  "unparseable": prompts.num_rows // 2}
    per = support_table(df)
    assert len(per) == 2 * len(prompts.meta)
    base = per[per.condition == "baseline"]
    assert (base.support_aligned == 50).all() and (base.n_unparseable == 0).all()
    tgt = per[per.condition == "targeted"]
    assert (tgt.support_aligned == 20).all() and (tgt.n_unparseable == 1).all()  # mean of the parsed order only
    assert tgt["support_aligned_second"].isna().all()


def test_evaluate_support_on_the_tiny_model_counts_unparseable(lm, prompts):
    per, replies = evaluate_support(lm, prompts, {"baseline": None, "targeted": IV}, max_new_tokens=4, batch_size=4)
    assert len(replies) == 2 * prompts.num_rows
    assert replies["status"].isin(["ok", "partial", "out_of_range", "unparseable"]).all()
    assert (per["n_unparseable"] == 2).all()  # a random model never writes support rates
    assert per["support_aligned"].isna().all()
