"""The experiment engine: matched controls, the tidy table, held-out checks, and a null run that
must not produce a verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxvalues.data.schema import ActivationRecord, EvaluationRecord
from jaxvalues.errors import JaxValuesError
from jaxvalues.evaluate import controls as ctl
from jaxvalues.evaluate import engine
from jaxvalues.evaluate._testing import toy_model, toy_records
from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts, evaluate_choice
from jaxvalues.models.intervention import Intervention


def _skewed_rates(layers=3, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.beta(0.5, 2.0, size=(layers, n))


def test_rate_matched_controls_match_layer_and_rate_bin():
    rates = _skewed_rates()
    bins = ctl.rate_bins(rates, 10)
    # a targeted set of frequently firing neurons (8 drawn from the top 30% of each layer)
    rng = np.random.default_rng(4)
    target = {l: sorted(rng.choice(np.argsort(rates[l])[-60:], 8, replace=False).tolist()) for l in range(3)}
    draws = ctl.random_matched(target, rates, draws=30, seed=1)
    for m in draws:
        assert ctl.counts(m) == ctl.counts(target)
        for l in target:
            assert not set(m[l]) & set(target[l])  # disjoint from the targeted neurons
            assert sorted(bins[l, m[l]]) == sorted(bins[l, target[l]])  # same rate bins, one for one
    t_rate = ctl.mean_rate(target, rates)
    matched = np.mean([ctl.mean_rate(m, rates) for m in draws])
    layer_only = np.mean([ctl.mean_rate(m, rates) for m in ctl.random_like(target, 200, 30, seed=1)])
    assert abs(matched - t_rate) < 0.03 and abs(layer_only - t_rate) > 0.15  # layer-only controls fire far less
    assert ctl.random_matched(target, rates, 3, seed=1) == draws[:3]  # reproducible, independent of R


def test_rate_matched_spills_to_nearest_bin_when_a_bin_runs_out():
    rates = np.tile(np.linspace(0, 1, 20), (1, 1))
    target = {0: [18, 19]}  # the top bin holds exactly these two: controls must come from the next bin
    m = ctl.random_matched(target, rates, draws=1, seed=0)[0]
    assert len(m[0]) == 2 and not set(m[0]) & {18, 19}
    assert set(m[0]) <= {16, 17} and ctl.random_matched.last_spill == 2


def test_draw_controls_names_the_kind():
    with pytest.raises(JaxValuesError, match="control kind: expected one of rate_matched, layer, got 'x'"):
        ctl.draw_controls({0: [1]}, 10, 2, 0, kind="x")
    with pytest.raises(JaxValuesError, match="rate-matched controls need firing rates"):
        ctl.draw_controls({0: [1]}, 10, 2, 0)


def _act(pid, lang, story, value="integrity"):
    return ActivationRecord(id=f"{pid}-{lang}", lang=lang, pair_id=pid, value=value, conflict="c", story=story,
                            aligned_action="a", violating_action="b", rationale="r")


def test_check_disjoint_refuses_shared_pairs_and_near_duplicates():
    ev = toy_records()
    ok = [_act("act-integrity-001", "en", "A completely different story about a bicycle and a lost wallet.")]
    assert engine.check_disjoint(ok, ev)["compared"] == 3
    with pytest.raises(JaxValuesError, match="share pair_id"):
        engine.check_disjoint([_act(ev[0].pair_id, "en", "x")], ev)
    dup = [_act("act-integrity-009", "en", ev[0].context.replace("sales", "Sales") + " ")]
    with pytest.raises(JaxValuesError, match=rf"act-integrity-009-en and evaluation record {ev[0].id} are near-dup"):
        engine.check_disjoint(dup, ev)


def test_split_by_pair_keeps_translations_together():
    recs = [EvaluationRecord(id=f"eval-{v}-{i:03d}-{l}", lang=l, pair_id=f"eval-{v}-{i:03d}", value=v, conflict="c",
                             context=f"ctx {v} {i}", aligned_action="a", violating_action="b")
            for v in ("integrity", "justice") for i in range(10) for l in ("zh", "en")]
    train, held = engine.split_by_pair(recs, 0.5, seed=3)
    assert not {r.pair_id for r in train} & {r.pair_id for r in held}
    assert len(train) == len(held) == 20
    assert engine.split_by_pair(recs, 0.5, seed=3) == (train, held)


def test_select_records_is_per_value_and_language():
    recs = toy_records() * 3
    out = engine.select_records(recs, ["integrity", "justice"], ["en"], 2)
    assert [(r.value, r.lang) for r in out].count(("integrity", "en")) == 2 and len(out) == 4
    with pytest.raises(JaxValuesError, match="expected a positive integer, got 0"):
        engine.select_records(recs, ["integrity"], ["en"], 0)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("engine_llama"))


def test_table_equals_scoring_each_condition_alone(lm):
    recs = toy_records()
    prompts = build_choice_prompts(recs, lm.tokenizer)
    rates = _skewed_rates(lm.config.num_layers, lm.config.num_neurons)
    maps = {"integrity": {0: [1, 5, 9], 1: [3]}, "justice": {1: [4, 7]}}
    conds = engine.build_conditions(maps, controls=3, rates=rates, num_neurons=lm.config.num_neurons)
    assert [c.kind for c in conds].count("baseline") == 1 and len(conds) == 1 + 2 * 4
    table = engine.run_conditions(lm, prompts, conds, batch_size=4)
    assert (table.kind == "baseline").sum() == len(recs)
    assert (table.kind == "targeted").sum() == 2 * len(recs)  # targeted: every dilemma (leakage)
    ctrl = table[table.kind == "control"]
    assert (ctrl.value == ctrl.cond_value).all() and len(ctrl) == 2 * 3 * 2  # own value's 2 dilemmas
    base = table[table.kind == "baseline"]
    assert (base.delta_logodds == 0).all()
    for c in conds[1:4]:
        alone = evaluate_choice(lm, prompts if c.scope is None else build_choice_prompts(
            [r for r in recs if r.value == c.scope], lm.tokenizer), {c.name: Intervention.zero(c.neurons)},
            batch_size=4)
        got = table[table.condition == c.name].set_index("record_id")["p_aligned"]
        np.testing.assert_allclose(got.reindex(alone.record_id).to_numpy(), alone.p_aligned.to_numpy(), atol=1e-6)
    lo = np.log(table.p_aligned_first / (1 - table.p_aligned_first))
    np.testing.assert_allclose(lo, table.logodds_first, atol=1e-6)


@pytest.fixture(scope="module")
def lm_builtin(tmp_path_factory):
    from jaxvalues.data.io import load_records

    recs = [r for r in load_records("builtin", kind="evaluation", values=["integrity", "justice", "harmony"])
            if int(r.pair_id.rsplit("-", 1)[1]) <= 6]
    return toy_model(tmp_path_factory.mktemp("engine_null"), records=recs), recs


def test_null_runs_report_no_holm_significant_value(lm_builtin):
    """The targeted sets are themselves rate-matched random draws: a run must (almost always) report
    no Holm-significant cell. 12 independent null runs of 6 cells each; with a family-wise error
    rate of 5%, ≥ 3 flagged runs would happen with probability 2% under calibration."""
    lm, recs = lm_builtin
    prompts = build_choice_prompts(recs, lm.tokenizer)
    L, N = lm.config.num_layers, lm.config.num_neurons
    rates = _skewed_rates(L, N, seed=5)
    seed_maps = {"integrity": {0: [2, 11, 30], 1: [8, 40]}, "justice": {0: [5, 6], 1: [60, 61, 62]},
                 "harmony": {1: [1, 2, 3, 4]}}
    from jaxvalues.evaluate.choice import ChoiceScorer

    scorer = ChoiceScorer(lm, 16)
    flagged, first = 0, None
    for run in range(12):
        fake = {v: ctl.random_matched(m, rates, 1, seed=100 * run + k)[0] for k, (v, m) in enumerate(seed_maps.items())}
        conds = engine.build_conditions(fake, controls=19, rates=rates, num_neurons=N, seed=run + 1)
        table = engine.run_conditions(lm, prompts, conds, scorer=scorer)
        s = engine.summarize(table, min_label_mass=0.0, n_boot=200, rates=rates, conditions=conds,
                             control_kind="rate_matched", records=recs)
        assert s["family_size"] == 6 and len(s["cells"]) == 6
        flagged += s["verdicts"]["significant"] > 0
        first = first or s
    assert flagged <= 2, flagged
    for c in first["cells"]:
        assert c["num_controls"] == 19 and c["p_floor"] == pytest.approx(0.05) and c["dilemmas"] == 6
        assert abs(c["rate_targeted"] - c["rate_controls"]) < 0.15
        assert c["mde"] > 0 and c["excess_lo"] <= c["excess"] <= c["excess_hi"]
    text = engine.plain_summary(first)
    assert "would have been detected with 80% power" in text
    assert 0 <= first["baseline"]["longer_option_rate"] <= 1
