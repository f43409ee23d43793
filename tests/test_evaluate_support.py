"""Generation protocol: batched greedy replies per condition, parsing bookkeeping, per-dilemma table."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.data.prompts import render_support
from jaxvalues.errors import ConfigError
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
    assert prompts.max_model_len == 500 and prompts.skipped == []  # the authors' budget by default


def test_prompts_are_the_authors_texts(lm, prompts):
    from jaxvalues.data.authors import SUPPORT_SYSTEM, SUPPORT_USER_EN

    recs = toy_records()
    zh = next(i for i, r in enumerate(recs) if r.lang == "zh")
    text = render_support(recs[zh], lm.tokenizer, "aligned_first").text
    assert SUPPORT_SYSTEM in text
    assert f"假设困境: {recs[zh].context}\nA. {recs[zh].aligned_action} \n B. {recs[zh].violating_action} \n " in text
    en = render_support(recs[0], lm.tokenizer, "aligned_first").text
    assert SUPPORT_USER_EN.format(Context=recs[0].context, Action1=recs[0].aligned_action,
                                  Action2=recs[0].violating_action) in en


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
    assert counts["targeted"] == {"ok": prompts.num_rows // 2, "inconsistent": 0, "partial": 0, "out_of_range": 0,
                                  "unparseable": prompts.num_rows // 2, "skipped_too_long": 0}
    n = len(prompts.meta)
    full = status_counts(df, dilemmas=True)
    assert full["baseline"]["incomplete"] == 0 and full["baseline"]["scored"] == n
    assert full["targeted"]["incomplete"] == n and full["targeted"]["scored"] == 0
    per = support_table(df)
    assert len(per) == 2 * n
    base = per[per.condition == "baseline"]
    assert (base.support_aligned == 50).all() and (base.n_unparseable == 0).all() and not base.incomplete.any()
    tgt = per[per.condition == "targeted"]
    # one order failed -> the dilemma is not scored (no mean of the order that parsed)
    assert tgt.support_aligned.isna().all() and (tgt.n_unparseable == 1).all() and tgt.incomplete.all()
    assert (tgt["support_aligned_first"] == 20).all() and tgt["support_aligned_second"].isna().all()


def test_inconsistent_replies_make_the_dilemma_incomplete(prompts):
    rows = ["最终结论：选项A：60% 选项B：60%" if p == 0 else "最终结论：选项A：２/３ 选项B：１/３"
            for p in range(prompts.num_rows)]
    df = reply_table(prompts, [rows], ["baseline"])
    assert df.status.tolist()[:2] == ["inconsistent", "ok"] and np.isnan(df.support_aligned[0])
    per = support_table(df)
    d0 = per[per.record_id == prompts.meta[prompts.dilemma[0]]["record_id"]].iloc[0]
    assert d0.incomplete and np.isnan(d0.support_aligned)  # never renormalised to 50/50
    rest = per[per.record_id != d0.record_id]
    assert np.allclose(rest.support_aligned, 50)  # 2/3 aligned first, 1/3 aligned second
    c = status_counts(df, dilemmas=True)["baseline"]
    assert c["inconsistent"] == 1 and c["ok"] == prompts.num_rows - 1 and c["incomplete"] == 1
    assert c["scored"] == len(prompts.meta) - 1


def test_long_prompts_are_skipped_and_counted_not_truncated(lm):
    recs = toy_records()
    lengths = [len(lm.tokenizer(r.text, add_special_tokens=r.add_special_tokens)["input_ids"])
               for r in (render_support(rec, lm.tokenizer, o) for rec in recs for o in ("aligned_first", "aligned_second"))]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the prompts are >= limit
    p = build_support_prompts(recs, lm.tokenizer, pad_id=lm.pad_id, max_model_len=limit)
    n_long = sum(n >= limit for n in lengths)
    assert len(p.skipped) == n_long and p.num_rows == len(lengths) - n_long and (p.lengths < limit).all()
    assert sorted(n for _, _, n in p.skipped) == sorted(n for n in lengths if n >= limit)
    assert (p.budgets(250) == limit - p.lengths).all() and (p.budgets(1) == 1).all()
    replies = generate_replies(lm, p, [None], max_new_tokens=50, batch_size=4)
    for k, text in enumerate(replies[0]):  # each reply fits the prompt's budget
        assert len(lm.tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit - p.lengths[k]
    df = reply_table(p, replies, ["baseline"])
    assert len(df) == len(lengths) and (df.status == "skipped_too_long").sum() == n_long
    assert status_counts(df)["baseline"]["skipped_too_long"] == n_long
    per = support_table(df)
    skipped_ids = {p.meta[d]["record_id"] for d, _, _ in p.skipped}
    assert per[per.record_id.isin(skipped_ids)].incomplete.all()
    with pytest.raises(ConfigError, match="raise max_model_len"):
        build_support_prompts(recs, lm.tokenizer, max_model_len=min(lengths))
    unlimited = build_support_prompts(recs, lm.tokenizer, max_model_len=None)
    assert unlimited.num_rows == len(lengths) and (unlimited.budgets(7) == 7).all()


def test_evaluate_support_on_the_tiny_model_counts_unparseable(lm, prompts):
    per, replies = evaluate_support(lm, prompts, {"baseline": None, "targeted": IV}, max_new_tokens=4, batch_size=4)
    assert len(replies) == 2 * prompts.num_rows
    assert replies["status"].isin(["ok", "inconsistent", "partial", "out_of_range", "unparseable"]).all()
    assert (per["n_unparseable"] == 2).all()  # a random model never writes support rates
    assert per["support_aligned"].isna().all() and per["incomplete"].all()
