"""`jaxvalues.data.audit`: each criterion on small synthetic record sets built to fail exactly it,
the CLI exit codes, and the shipped seed benchmark passing every criterion for every value."""

import json

import pytest

from jaxvalues.cli import main
from jaxvalues.data.audit import audit, lexicon_hits, text_length, value_word_pattern
from jaxvalues.data.io import load_records, write_jsonl
from jaxvalues.data.schema import ActivationRecord, EvaluationRecord
from jaxvalues.data.values import VALUE_IDS

EN_ACTS = [  # (story, aligned, violating): lengths 4 vs 4 words unless changed by a test
    "I found a wallet on the bus this morning. It had cash and a card in it.",
    "My neighbour's dog barks every night at two. I have work early each day.",
    "A classmate asked to copy my lab report. The deadline is tonight at ten.",
    "Our team lead wants the numbers by Friday. Two figures still look wrong.",
]
EN_EVALS = [
    "I run a small bakery near the station. A supplier offered flour far below market price.",
    "My brother wants me to cosign his car loan. He lost his last job in the spring.",
    "The school committee is choosing a new uniform. I was asked to count the votes alone.",
    "I manage the shared garden plots on our street. Three families want the sunniest plot.",
]


def act(i, aligned="I hand it in now", violating="I keep it for later", rationale="The owner needs it back today.",
        value="harmony", lang="en", story=None):
    pid = f"act-{value}-{i:03d}"
    return ActivationRecord(f"{pid}-{lang}", lang, pid, value, "Harmony vs comfort", story or EN_ACTS[i % 4],
                            aligned, rationale, violating)


def ev(i, aligned="I ask them first", violating="I decide it alone", value="harmony", lang="en", context=None):
    pid = f"eval-{value}-{i:03d}"
    return EvaluationRecord(f"{pid}-{lang}", lang, pid, value, "Harmony vs comfort", context or EN_EVALS[i % 4],
                            aligned, violating)


def balanced():
    """4 activation + 4 evaluation records (en) that pass every criterion: the aligned option is
    longer (5 vs 4 words) in pairs 0 and 2 and shorter (4 vs 5) in pairs 1 and 3."""
    long_a, short_v = "I hand it in now", "I keep it today"
    short_a, long_v = "I hand it in", "I keep it for later"
    acts = [act(i, *((long_a, short_v) if i % 2 == 0 else (short_a, long_v))) for i in range(4)]
    evs = [ev(i, *(("I ask them all first", "I decide it alone") if i % 2 == 0 else
                   ("I ask them first", "I decide it all alone"))) for i in range(4)]
    return acts + evs


def group(res, value, lang, kind):
    return next(g for g in res["groups"] if (g["value"], g["lang"], g["kind"]) == (value, lang, kind))


def test_lengths_and_lexicons():
    assert text_length("我 把 钱还给他。", "zh") == 7  # punctuation counts, whitespace does not
    assert text_length("I give it  back.", "en") == 4
    assert lexicon_hits("I quietly keep it at her expense.", "en") == ["quietly", "at her expense"]
    assert lexicon_hits("I stay behind their backs and lie.", "en") == ["behind their backs", "lie"]
    assert lexicon_hits("我偷偷把钱留下，占便宜。", "zh") == ["偷偷", "占便宜"]
    assert lexicon_hits("I keep the wallet and buy lunch.", "en") == []
    assert lexicon_hits("I honestly tell her.", "en", "virtue") == ["honestly"]
    assert value_word_pattern("rule_of_law", "en").search("respect for the Rule of Law here")
    assert value_word_pattern("democracy", "en").search("democracies vote")
    assert not value_word_pattern("integrity", "en").search("an honest answer")
    assert value_word_pattern("integrity", "zh").search("这关乎诚信。")


def test_balanced_set_passes():
    res = audit(balanced())
    assert res["ok"], res["failed"]
    g = group(res, "harmony", "en", "activation")
    assert (g["longer"], g["shorter"], g["tie"]) == (2, 2, 0)
    assert g["share_longer"] == 0.5 and g["mean_aligned"] == g["mean_violating"] == 4.5 and g["rel_diff"] == 0.0
    assert g["value_word_rate"] == 0.0 and g["giveaway_hits"] == 0


def test_tie_only_set_fails_share_but_not_mean():
    # all ties: share longer = 0 → outside [0.4, 0.6]; means equal → rel 0
    res = audit([act(i) for i in range(4)])
    g = group(res, "harmony", "en", "activation")
    assert g["share_longer"] == 0.0 and g["rel_diff"] == 0.0
    assert res["failed"] == ["length_share harmony/en/activation"]


def test_length_share_fails_alone():
    # aligned longer in 3/4 pairs (5 vs 3 words), shorter in 1 (4 vs 10 words): means 4.75 vs 4.75
    recs = [act(i, aligned="I hand it in now", violating="I keep it") for i in range(3)]
    recs.append(act(3, aligned="I hand it in", violating="I keep it for later today and then tell nobody"))
    res = audit(recs)
    g = group(res, "harmony", "en", "activation")
    assert (g["longer"], g["shorter"], g["tie"]) == (3, 1, 0)
    assert g["share_longer"] == 0.75
    assert g["mean_aligned"] == g["mean_violating"] == 4.75
    assert g["rel_diff"] == 0.0
    assert res["failed"] == ["length_share harmony/en/activation"]


def test_length_mean_fails_alone():
    # longer 2 / shorter 2 (share 0.5) but aligned +3 words twice and -1 word twice: means 6 vs 5
    recs = [act(i, aligned="I hand it in right now today", violating="I keep it for") for i in range(2)]
    recs += [act(i, aligned="I hand it in", violating="I keep it for later") for i in range(2, 4)]
    res = audit(recs)
    g = group(res, "harmony", "en", "activation")
    assert (g["longer"], g["shorter"], g["tie"]) == (2, 2, 0)
    assert g["share_longer"] == 0.5
    assert (g["mean_aligned"], g["mean_violating"]) == (5.5, 4.5)
    assert g["rel_diff"] == pytest.approx(0.2)
    assert res["failed"] == ["length_mean harmony/en/activation"]


def test_giveaway_fails_and_virtue_is_only_reported():
    recs = balanced()
    recs[4] = ev(0, aligned="I honestly ask them first", violating="I quietly decide it")
    res = audit(recs)
    g = group(res, "harmony", "en", "evaluation")
    assert g["giveaway_hits"] == 1 and g["giveaway"] == [["eval-harmony-000-en", "quietly"]]
    assert g["virtue_hits"] == 1
    assert res["failed"] == ["giveaway harmony/en/evaluation"]


def test_giveaway_zh():
    recs = [ev(i, lang="zh", aligned="我先问问他们", violating="我自己决定了", context=f"我是小区的楼长，这是第{i}件事。邻居们意见不一。")
            for i in range(4)]
    recs[1] = ev(1, lang="zh", aligned="我先问问他们", violating="我背着他们定", context="我是小区的楼长。邻居们意见不一。")
    res = audit(recs)
    assert group(res, "harmony", "zh", "evaluation")["giveaway"] == [["eval-harmony-001-zh", "背着"]]
    assert "giveaway harmony/zh/evaluation" in res["failed"]


def test_value_word_rate_fails():
    recs = balanced()
    recs[0] = act(0, recs[0].aligned_action, recs[0].violating_action, rationale="Harmony in the street matters.")
    recs[1] = act(1, recs[1].aligned_action, recs[1].violating_action, rationale="It keeps harmony between us.")
    res = audit(recs)
    g = group(res, "harmony", "en", "activation")
    assert g["value_word_count"] == 2 and g["value_word_rate"] == 0.5
    assert g["value_word_ids"] == ["act-harmony-000-en", "act-harmony-001-en"]
    assert res["failed"] == ["value_word harmony/en"]
    recs[1] = act(1, recs[1].aligned_action, recs[1].violating_action)  # 1/4 = 0.25 still above 0.20
    assert audit(recs)["failed"] == ["value_word harmony/en"]


def test_value_word_rate_counts_only_records_with_a_rationale(tmp_path, capsys):
    recs = balanced()
    recs[0] = act(0, recs[0].aligned_action, recs[0].violating_action, rationale="Harmony in the street matters.")
    for i in (1, 2, 3):  # no rationale (as imported from the authors' activation workbook)
        recs[i] = act(i, recs[i].aligned_action, recs[i].violating_action, rationale=None)
    res = audit(recs)
    g = group(res, "harmony", "en", "activation")
    assert (g["records"], g["rationales"], g["value_word_count"], g["value_word_rate"]) == (4, 1, 1, 1.0)
    assert res["failed"] == ["value_word harmony/en"]
    assert res["overall"]["en/activation"]["rationales"] == 1
    assert res["overall"]["en/activation"]["value_word_rate"] == 1.0
    recs[0] = act(0, recs[0].aligned_action, recs[0].violating_action, rationale=None)
    res = audit(recs)  # none at all: nothing to count, no failure
    g = group(res, "harmony", "en", "activation")
    assert (g["rationales"], g["value_word_rate"], g["value_word_ok"]) == (0, None, True) and res["ok"]
    assert main(["data", "audit", str(write_jsonl(recs, tmp_path / "a.jsonl"))]) == 0
    out = capsys.readouterr().out
    assert "value-word rate over 0 rationales (4 of 4 records have none)" in out
    assert "en/activation: 4 pairs" in out and "no rationales (value-word rate not counted)" in out


def test_duplicates_across_kinds_fail_within_kind_reported():
    recs = balanced()
    recs[4] = ev(0, recs[4].aligned_action, recs[4].violating_action, context=EN_ACTS[1].upper().replace(".", "!"))  # equal after normalisation
    res = audit(recs)
    across = res["duplicates"]["across_kinds"]
    assert [(d["a"], d["b"], d["similarity"]) for d in across] == [("act-harmony-001-en", "eval-harmony-000-en", 1.0)]
    assert res["failed"] == ["duplicates across_kinds"]
    # near-duplicate (one word changed) within the activation kind: reported, not failed
    recs = balanced()
    recs[2] = act(2, recs[2].aligned_action, recs[2].violating_action, story=EN_ACTS[1].replace("dog", "cat"))
    res = audit(recs)
    assert res["ok"] and len(res["duplicates"]["within_kind"]) == 1
    assert res["duplicates"]["within_kind"][0]["similarity"] >= 0.6


def test_cli_exit_codes(tmp_path, capsys):
    good = write_jsonl(balanced(), tmp_path / "good.jsonl")
    assert main(["data", "audit", str(good)]) == 0
    assert "ok: audit passed" in capsys.readouterr().out
    bad_recs = balanced()
    bad_recs[4] = ev(0, aligned="I ask them all first", violating="I secretly decide it")
    bad = write_jsonl(bad_recs, tmp_path / "bad.jsonl")
    assert main(["data", "audit", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["failed"] == ["giveaway harmony/en/evaluation"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n", encoding="utf-8")
    assert main(["data", "audit", str(broken)]) == 2
    assert main(["data", "audit", str(tmp_path / "missing.jsonl")]) == 2


def test_builtin_seed_passes_the_audit():
    """Every value of the shipped seed: length balance, no give-away words, few value words, no
    scenario shared between the activation and evaluation sets."""
    res = audit(load_records("builtin"))
    assert {g["value"] for g in res["groups"]} == set(VALUE_IDS)
    assert res["ok"], "builtin seed fails the audit:\n" + "\n".join(res["failed"])
