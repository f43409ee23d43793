"""Row and collection validation: every problem kind, named by location and field."""

import json

import pytest

from jaxvalues.data.schema import ActivationRecord, EvaluationRecord
from jaxvalues.data.validate import check_collection, cjk_ratio, language_problem, parse_row


def act(lang_="zh", **kw):
    lang = lang_
    base = {
        "zh": dict(conflict="诚信 vs 个人利益", story="我在超市结账时，收银员多找了我五十元。",
                   aligned_action="把多找的钱还给收银员。", violating_action="把钱收下，悄悄离开。",
                   rationale="诚信意味着不占别人的便宜，即使没人发现。"),
        "en": dict(conflict="Integrity vs personal gain", story="At the checkout the cashier gave me fifty yuan too much.",
                   aligned_action="Hand the extra money back.", violating_action="Pocket it and leave.",
                   rationale="Integrity means not profiting from someone else's mistake, even unseen."),
    }[lang]
    row = {"id": f"act-integrity-001-{lang}", "kind": "activation", "lang": lang, "pair_id": "act-integrity-001",
           "value": "integrity", **base}
    row.update(kw)
    return row


def ev(lang_="en", **kw):
    lang = lang_
    row = act(lang, id=f"eval-integrity-001-{lang}", kind="evaluation", pair_id="eval-integrity-001")
    row["context"] = row.pop("story")
    row.pop("rationale")
    row.update(kw)
    return row


def problems(row):
    rec, pr = parse_row(row, "f.jsonl line 3")
    assert rec is None
    return [(p.field, p.message) for p in pr], [str(p) for p in pr]


def test_valid_rows_become_records_with_normalised_fields():
    rec, pr = parse_row(act("zh", value="诚信", lang="ZH", story="  我在超市结账时，收银员多找了我五十元。 "), "w")
    assert pr == [] and isinstance(rec, ActivationRecord)
    assert rec.value == "integrity" and rec.lang == "zh" and rec.story.startswith("我") and rec.story.endswith("。")
    rec, pr = parse_row(ev("en"), "w")
    assert pr == [] and isinstance(rec, EvaluationRecord) and rec.scenario == rec.context
    rec, pr = parse_row(act("en", violating_action=None), "w")  # optional for activation
    assert pr == [] and rec.violating_action is None
    assert rec.to_dict()["id"] == "act-integrity-001-en" and "violating_action" not in rec.to_dict()


def test_missing_fields_and_empty_text():
    row = act("en")
    del row["aligned_action"]
    row["story"] = "   "
    fields, lines = problems(row)
    assert ("aligned_action", "missing field") in fields and ("story", "empty text") in fields
    assert all(line.startswith("f.jsonl line 3: field '") for line in lines)
    fields, _ = problems(ev("en", violating_action=None))
    assert ("violating_action", "missing field") in fields
    fields, _ = problems({k: v for k, v in act().items() if k != "kind"})
    assert fields[0][0] == "kind" and "missing field" in fields[0][1]


def test_rationale_is_optional_but_not_empty(tmp_path):
    from jaxvalues.data.io import load_records
    from jaxvalues.errors import DataError

    for row in (act("zh", rationale=None), {k: v for k, v in act("en").items() if k != "rationale"}):
        rec, pr = parse_row(row, "w")
        assert pr == [] and rec.rationale is None and "rationale" not in rec.to_dict()
    fields, _ = problems(act("zh", rationale="Integrity matters."))  # given, it is checked as text
    assert any(f == "rationale" and "no Chinese characters" in m for f, m in fields)
    # a JSONL row without a rationale loads strictly; an empty or blank one is a problem naming line and field
    good = {k: v for k, v in act("en").items() if k != "rationale"}
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(good) + "\n", encoding="utf-8")
    assert [r.rationale for r in load_records(p)] == [None]
    for empty in ("", "   "):
        p.write_text(json.dumps(act("zh")) + "\n" + json.dumps(act("en", rationale=empty)) + "\n", encoding="utf-8")
        with pytest.raises(DataError) as e:
            load_records(p)
        assert f"{p} line 2: field 'rationale': empty text (omit the field or set it to null)" in str(e.value)
        assert "1 problem found" in str(e.value)


def test_unknown_value_kind_field_and_language_tag_suggest_the_fix():
    fields, _ = problems(act("en", value="integrety"))
    assert ("value", "unknown value 'integrety' (did you mean 'integrity'?)") in fields
    fields, _ = problems(act("en", kind="activaton"))
    assert any(f == "kind" and "did you mean 'activation'" in m for f, m in fields)
    row = act("en")
    row["rationle"] = row.pop("rationale")
    fields, _ = problems(row)
    assert any(f == "rationle" and "did you mean 'rationale'" in m for f, m in fields)
    fields, _ = problems(act("en", lang="english"))
    assert any(f == "lang" and "expected 'zh' or 'en'" in m for f, m in fields)
    fields, _ = problems(ev("en", rationale="Because."))
    assert ("rationale", "not a field of evaluation records") in fields
    fields, _ = problems(act("en", value=3))
    assert any(f == "value" and "expected a string" in m for f, m in fields)


def test_text_in_the_wrong_language():
    zh = act("zh")
    fields, _ = problems(act("en", story=zh["story"]))  # en record, Chinese story
    assert any(f == "story" and "mostly Chinese" in m for f, m in fields)
    fields, _ = problems(act("zh", aligned_action="Hand the money back."))  # zh record, English action
    assert any(f == "aligned_action" and "no Chinese characters" in m for f, m in fields)
    fields, _ = problems(act("zh", id="act-integrity-001-en"))
    assert any(f == "lang" and "ends with '-en'" in m for f, m in fields)
    # Chinese text with some Latin words is still Chinese; English with a Chinese name is still English
    assert language_problem("我在GitHub上发现了同事PR里的一个bug。", "zh") is None
    assert language_problem("I visited 北京 with my aunt last spring.", "en") is None
    assert language_problem("I visited 北京 with my aunt last spring.", "zh") is not None
    assert cjk_ratio("12345") is None


def test_aligned_equal_to_violating_and_bad_bytes():
    fields, _ = problems(act("en", violating_action="  hand the extra  money back. "))
    assert any(f == "violating_action" and "must differ" in m for f, m in fields)
    bad = b"\xff\xfe bad".decode("utf-8", "surrogateescape")
    fields, _ = problems(act("en", story=bad))
    assert any(f == "story" and "invalid UTF-8" in m for f, m in fields)
    rec, pr = parse_row(["not", "an", "object"], "f.jsonl line 9")
    assert rec is None and "expected a JSON object" in str(pr[0])


def test_collection_checks_duplicates_and_pairs():
    rows = [act("zh"), act("en"), act("en"),  # duplicate id
            act("en", id="act-integrity-009-en", pair_id="act-integrity-009"),  # same text as #2
            act("zh", id="act-integrity-001-zh-bis", story="我又遇到了多找钱的情况。"),  # 2nd zh in pair 001
            act("en", id="x-en", pair_id="act-integrity-001", kind="evaluation", context="c", story=None,
                rationale=None, aligned_action="Tell the truth now.", violating_action="Stay silent.")]
    items = []
    for i, row in enumerate(rows, start=1):
        rec, pr = parse_row(row, f"f line {i}")
        assert pr == [], pr
        items.append((rec, f"f line {i}"))
    keep, pr = check_collection(items)
    assert keep == [True, True, False, False, False, False]
    text = "\n".join(map(str, pr))
    assert "f line 3: field 'id': duplicate id 'act-integrity-001-en' (first at f line 2)" in text
    assert "f line 4: same scenario and actions as id 'act-integrity-001-en' (at f line 2)" in text
    assert "f line 5: field 'pair_id': pair 'act-integrity-001' already has a 'zh' record" in text
    assert "f line 6: field 'pair_id': pair 'act-integrity-001' mixes activation/integrity" in text


# --- `data validate` messages through the CLI -----------------------------------------------------
def test_cli_empty_file_is_an_error(tmp_path, capsys):
    from jaxvalues.cli import main

    for name, text in (("e.jsonl", ""), ("e.csv", "kind,id,lang\n")):
        f = tmp_path / name
        f.write_text(text, encoding="utf-8")
        assert main(["data", "validate", str(f)]) == 2
        err = capsys.readouterr().err
        assert f"{f}: no records" in err and "Traceback" not in err


def test_cli_problems_listed_once(tmp_path, capsys):
    from jaxvalues.cli import main

    f = tmp_path / "bad.jsonl"
    f.write_text('{"kind": "activation", "id": "a-zh", "lang": "zh"}\n', encoding="utf-8")
    assert main(["data", "validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "skipped" not in err
    assert err.count(f"{f} line 1: field 'value': missing field") == 1


def test_cli_csv_unrecognised_columns_suggest_map(tmp_path, capsys):
    from jaxvalues.cli import main

    f = tmp_path / "d.csv"
    f.write_text("kind,lang,value,Story Text,Good,Bad\nevaluation,en,integrity,s,a,b\n", encoding="utf-8")
    assert main(["data", "validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unrecognised column(s) 'Story Text', 'Good', 'Bad' were ignored" in err
    assert "--map Column=field" in err


def test_cli_extra_columns_beside_complete_fields_are_fine(tmp_path, capsys):
    from jaxvalues.data.validate import column_problem

    rows = [({"kind": "activation", "notes": "x"}, "r1")]
    items = [({"kind": "activation", "id": "a", "lang": "en", "pair_id": "a", "value": "integrity", "scenario": "s",
               "aligned_action": "x", "story": "y", "conflict": "c", "rationale": "r"}, "r1")]
    from jaxvalues.data.schema import REQUIRED

    items[0][0].update({k: "t" for k in REQUIRED["activation"] if k not in items[0][0]})
    assert column_problem("f.csv", rows, items) is None
