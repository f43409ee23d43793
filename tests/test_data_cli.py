"""`jaxvalues data validate|stats|import|export` through the real entry point."""

import json

import pytest

from jaxvalues.cli import main
from jaxvalues.data.io import load_records, write_jsonl

from _data_samples import HEADER, sample_records, write_workbook


@pytest.fixture
def data(tmp_path):
    return write_jsonl(sample_records(), tmp_path / "d.jsonl")


def test_validate_ok_and_bad(data, tmp_path, capsys):
    assert main(["data", "validate", str(data)]) == 0
    assert "ok: 4 valid records in 1 file(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines + [lines[0].replace('"integrity"', '"integrety"')]) + "\n", encoding="utf-8")
    assert main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} line 5: field 'value': unknown value 'integrety' (did you mean 'integrity'?)" in err
    assert main(["data", "validate", str(bad), "--lenient"]) == 0
    cap = capsys.readouterr()
    assert "skipped 1 bad row" in cap.err and "4 valid records" in cap.out and "1 bad row(s) skipped" in cap.out
    assert main(["data", "validate", str(bad), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["records"] == 4 and out["skipped"] == 1 and len(out["problems"]) == 1


def test_stats_counts(data, capsys):
    assert main(["data", "stats", str(data), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["total"] == 4 and s["by_lang"] == {"zh": 2, "en": 2}
    assert s["by_value"] == {"harmony": {"evaluation/en": 1, "evaluation/zh": 1},
                             "integrity": {"activation/en": 1, "activation/zh": 1}}
    assert s["conflicts"]["integrity"]["zh"] == {"诚信 vs 友情": 1}
    assert main(["data", "stats", str(data), "--lang", "zh", "--values", "诚信"]) == 0
    text = capsys.readouterr().out
    assert "records: 1" in text and "integrity [zh] 1 types: 诚信 vs 友情 (1)" in text


def test_import_workbook_and_csv_mapping(tmp_path, capsys):
    pytest.importorskip("openpyxl")
    wb = tmp_path / "authors.xlsx"
    write_workbook(wb, {"诚信": [HEADER, ["诚信 vs 个人利益", "二手车买家问我车有没有出过事故，其实出过一次。", "如实相告。", "说没有出过事故。"]]})
    out = tmp_path / "imported.jsonl"
    assert main(["data", "import", str(wb), "-o", str(out)]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    assert [r.id for r in load_records(out)] == ["cvoice-integrity-001-zh"]
    assert main(["data", "import", str(wb), "-o", str(out), "--id-prefix", "authors"]) == 0
    assert [r.id for r in load_records(out)] == ["authors-integrity-001-zh"]

    csv_path = tmp_path / "x.csv"
    csv_path.write_text("Scenario,Good,Bad,Type\n我捡到一个钱包，里面有不少现金。,交给失物招领处。,把现金留下。,诚信 vs 个人利益\n",
                        encoding="utf-8")
    args = ["data", "import", str(csv_path), "-o", str(out), "--map", "Scenario=context", "--map", "Good=aligned_action",
            "--map", "Bad=violating_action", "--map", "Type=conflict", "--set", "lang=zh", "--set", "kind=evaluation"]
    assert main(args + ["--set", "value=诚信"]) == 0
    rec = load_records(out)[0]
    assert (rec.value, rec.lang, rec.context) == ("integrity", "zh", "我捡到一个钱包，里面有不少现金。")
    capsys.readouterr()
    assert main(args) == 2  # no value column
    assert "row 2: field 'value': missing field" in capsys.readouterr().err
    assert main(args + ["--map", "oops"]) == 2
    assert "--map 'oops': expected NAME=VALUE" in capsys.readouterr().err


def test_export_formats(data, tmp_path, capsys):
    for ext in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"e.{ext}"
        assert main(["data", "export", str(data), "-o", str(out), "--kind", "evaluation"]) == 0
        assert [r.id for r in load_records(out)] == ["eval-harmony-002-zh", "eval-harmony-002-en"]
    assert main(["data", "export", str(data), "-o", str(tmp_path / "e.bin")]) == 2
    assert "--to" in capsys.readouterr().err


def test_export_dataset(data, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["data", "export", str(data), "-o", str(tmp_path / "ds"), "--to", "dataset"]) == 2
    assert "optional package `datasets`" in capsys.readouterr().err
    monkeypatch.undo()
    pytest.importorskip("datasets")
    assert main(["data", "export", str(data), "-o", str(tmp_path / "ds"), "--to", "dataset"]) == 0
