"""The shipped seed benchmark (jaxvalues/data/builtin/seed_<value>.jsonl), checked against issue 3:
every record valid; per value and language ≥ 60 activation stories and ≥ 40 evaluation dilemmas
(≥ 2,400 records); ≥ 4 conflict types per value, spread evenly; zh/en pairs complete and describing
the same conflict; activation and evaluation scenarios disjoint; first-person stories of 2–5 sentences."""

import re
from collections import Counter, defaultdict

import pytest

from jaxvalues.data.io import builtin_files, load_records, read_items, read_records
from jaxvalues.data.validate import parse_row
from jaxvalues.data.values import VALUE_IDS

MIN_ACTIVATION, MIN_EVALUATION, MIN_CONFLICTS = 60, 40, 4


@pytest.fixture(scope="module")
def records():
    """All builtin records that pass validation (validity itself is `test_every_record_is_valid`)."""
    return read_records("builtin", lenient=True).records


def norm(text):
    return " ".join(text.casefold().split())


def test_one_seed_file_per_value():
    assert sorted(f.name for f in builtin_files()) == sorted(f"seed_{v}.jsonl" for v in VALUE_IDS)


def test_every_record_is_valid():
    load_records("builtin")  # strict: raises DataError listing every problem


def test_files_hold_their_own_value_and_ids_follow_the_convention():
    items, _, _ = read_items("builtin")
    for raw, where in items:  # where = "builtin/seed_<value>.jsonl line N"
        vid = re.match(r"builtin/seed_(\w+)\.jsonl line", where).group(1)
        r, _ = parse_row(raw, where)
        if r is None:
            continue  # reported by test_every_record_is_valid
        prefix = {"activation": "act", "evaluation": "eval"}[r.kind]
        assert r.value == vid, f"{where}: {r.id} has value {r.value!r}"
        assert re.fullmatch(rf"{prefix}-{vid}-\d{{3}}", r.pair_id), f"{where}: pair_id {r.pair_id!r}"
        assert r.id == f"{r.pair_id}-{r.lang}", f"{where}: id {r.id!r} != pair_id + '-' + lang"


def test_counts_per_value_and_language(records):
    counts = Counter((r.value, r.lang, r.kind) for r in records)
    short = [f"{v}/{lang}: {counts[(v, lang, 'activation')]} activation, {counts[(v, lang, 'evaluation')]} evaluation"
             for v in VALUE_IDS for lang in ("zh", "en")
             if counts[(v, lang, "activation")] < MIN_ACTIVATION or counts[(v, lang, "evaluation")] < MIN_EVALUATION]
    assert not short, f"below {MIN_ACTIVATION} activation / {MIN_EVALUATION} evaluation:\n" + "\n".join(short)
    assert len(records) >= 12 * 2 * (MIN_ACTIVATION + MIN_EVALUATION)


def test_zh_en_pairs_are_complete(records):
    langs = defaultdict(list)
    for r in records:
        langs[r.pair_id].append(r.lang)
    bad = {p: ls for p, ls in langs.items() if sorted(ls) != ["en", "zh"]}
    assert not bad, f"pairs without exactly one zh and one en record: {dict(list(bad.items())[:10])}"


def test_conflict_types_per_value_are_many_and_balanced(records):
    problems = []
    for v in VALUE_IDS:
        for kind in ("activation", "evaluation"):
            for lang in ("zh", "en"):
                c = Counter(r.conflict for r in records if (r.value, r.kind, r.lang) == (v, kind, lang))
                if len(c) < MIN_CONFLICTS:
                    problems.append(f"{v} {kind}/{lang}: {len(c)} conflict types {dict(c)}")
                elif max(c.values()) > 2 * min(c.values()):
                    problems.append(f"{v} {kind}/{lang}: uneven spread {dict(c)}")
    assert not problems, "\n".join(problems)


def test_zh_and_en_records_of_a_pair_name_the_same_conflict(records):
    by_pair = defaultdict(dict)
    for r in records:
        by_pair[(r.value, r.pair_id)][r.lang] = r.conflict
    for v in VALUE_IDS:
        zh_to_en, en_to_zh = defaultdict(set), defaultdict(set)
        for (value, _), d in by_pair.items():
            if value == v and len(d) == 2:
                zh_to_en[d["zh"]].add(d["en"])
                en_to_zh[d["en"]].add(d["zh"])
        bad = {k: s for k, s in list(zh_to_en.items()) + list(en_to_zh.items()) if len(s) > 1}
        assert not bad, f"{v}: one conflict type is translated inconsistently: {bad}"


def test_activation_and_evaluation_scenarios_are_disjoint(records):
    for lang in ("zh", "en"):
        act = [r for r in records if r.kind == "activation" and r.lang == lang]
        ev = [r for r in records if r.kind == "evaluation" and r.lang == lang]
        shared = {norm(r.story) for r in act} & {norm(r.context) for r in ev}
        assert not shared, f"{lang}: stories used in both sets: {sorted(shared)[:5]}"
        act_actions = {norm(a) for r in act for a in (r.aligned_action, r.violating_action) if a}
        ev_actions = {norm(a) for r in ev for a in (r.aligned_action, r.violating_action)}
        assert not act_actions & ev_actions, f"{lang}: actions used in both sets: {sorted(act_actions & ev_actions)[:5]}"


def test_scenarios_are_unique_and_activation_stories_have_both_actions_distinct(records):
    seen = Counter((r.lang, norm(r.scenario)) for r in records)
    assert not [k for k, n in seen.items() if n > 1], "a story/context appears more than once"
    for r in records:
        assert norm(r.aligned_action) != norm(r.violating_action or ""), r.id


def sentences(text, lang):
    if lang == "zh":
        parts = re.split(r"[。！？!?]+[”’」』）)]*", text)
    else:
        parts = re.split(r"(?<=[.!?])[\"'”’)]*\s+(?=[A-Z0-9\"“‘'(])", text.strip())
    return [p for p in parts if p.strip()]


FIRST_PERSON_EN = re.compile(r"\b(I|I'm|I've|I'd|I'll|my|me|mine|we|our|us)\b", re.IGNORECASE)


def test_stories_are_first_person_and_two_to_five_sentences(records):
    """English must say I/my/we...; Chinese often drops the pronoun ("儿子下个月结婚"), so a zh
    story without 我/咱 passes when its English counterpart is first person."""
    en_first = {r.pair_id for r in records if r.lang == "en" and FIRST_PERSON_EN.search(r.scenario)}
    bad = []
    for r in records:
        n = len(sentences(r.scenario, r.lang))
        if r.lang == "en":
            first_person = r.pair_id in en_first
        else:
            first_person = "我" in r.scenario or "咱" in r.scenario or r.pair_id in en_first
        if not first_person or not 2 <= n <= 5:
            bad.append(f"{r.id}: {n} sentences, first person: {first_person}")
    assert not bad, "\n".join(bad[:20])
