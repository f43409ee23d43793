"""`jaxvalues run` end to end on a tiny model: files, summary, report, resume, config errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from jaxvalues.cli import main
from jaxvalues.data.io import load_records, write_jsonl
from jaxvalues.data.prompts import render_activation
from jaxvalues.evaluate._testing import toy_model
from jaxvalues.evaluate.perplexity import load_neutral_corpus

VALUES = ["integrity", "justice", "harmony"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    acts = [r for r in load_records("builtin", kind="activation", values=VALUES)
            if int(r.pair_id.rsplit("-", 1)[1]) <= 2]
    evals = [r for r in load_records("builtin", kind="evaluation", values=VALUES)
             if int(r.pair_id.rsplit("-", 1)[1]) <= 2]
    data = d / "data.jsonl"
    write_jsonl(acts + evals, data)
    texts = [render_activation(r, None, chat=False).text for r in acts]
    texts += [c["text"] for lang in ("zh", "en") for c in load_neutral_corpus(lang)[:2]]
    toy_model(d / "model", records=evals, extra_texts=texts)
    cfg = {"name": "tiny", "model": str(d / "model"), "dataset": str(data), "values": VALUES,
           "collect": {"records_per_value": 2, "batch_size": 4},
           "identify": {"top_rate": 0.05},
           "evaluate": {"dilemmas_per_value": 2, "controls": 3, "perplexity_texts": 2, "bootstrap": 200,
                        "min_label_mass": 0.0,
                        "batch_size": 8}}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _run(setup, capsys, *extra):
    rc = main(["run", "--config", str(setup / "cfg.yaml"), "--out", str(setup / "run"), "--json", "--no-progress",
               *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_run_end_to_end_then_resume(setup, capsys):
    s = _run(setup, capsys)
    run = setup / "run"
    for f in ("config.yaml", "stages.json", "neurons.parquet", "identify.json", "results.parquet",
              "perplexity.parquet", "summary.json", "report.html", "shift.png", "leakage.png",
              "stats/half_a/summary.json", "stats/half_b/summary.json"):
        assert (run / f).exists(), f
    res = pd.read_parquet(run / "results.parquet")
    targeted = sorted({c["value"] for c in s["cells"]})
    # baseline once, targeted on every dilemma (12 = 3 values × 2 languages × 2), 3 controls on own dilemmas
    assert (res.kind == "baseline").sum() == 12
    assert set(res[res.kind == "targeted"].condition) == {f"value:{v}" for v in targeted}
    assert (res.kind == "targeted").sum() == 12 * len(targeted)
    ctrl = res[res.kind == "control"]
    assert (ctrl.value == ctrl.cond_value).all() and len(ctrl) == 3 * 4 * len(targeted)
    assert res["label_mass"].between(0, 1).all()
    # a cell's targeted effect is the mean Δ log-odds on the value's dilemmas in that language
    for c in s["cells"]:
        sub = res[(res.condition == f"value:{c['value']}") & (res.value == c["value"]) & (res.lang == c["lang"])]
        assert c["targeted"] == pytest.approx(sub["delta_logodds"].mean(), abs=1e-12)
        assert c["num_controls"] == 3 and c["p_floor"] == pytest.approx(0.25)
        for k in ("p_param", "p_rank", "p_holm", "p_bh", "excess", "excess_lo", "excess_hi", "mde", "verdict"):
            assert k in c, k
    assert s["family_size"] == len(s["cells"]) and s["notes"]  # 3 controls: the rank p cannot pass Holm
    ident = json.loads((run / "identify.json").read_text())
    assert set(ident["stability"]["jaccard"]) == set(VALUES)
    assert ident["held_out"]["shared_pair_ids"] == 0
    html = (run / "report.html").read_text()
    assert "What was found" in html and "Verdict per value and language" in html and "Split-half" in html
    assert html.count("data:image/png;base64,") >= 3 and "Run metadata" in html
    assert s["perplexity"]["baseline"]["all"]["tokens"] > 0

    first = json.loads((run / "stages.json").read_text())
    s2 = _run(setup, capsys)  # resume: nothing recomputed, same results
    second = json.loads((run / "stages.json").read_text())
    for stage in ("collect", "identify", "evaluate"):
        assert second[stage] == first[stage]
    assert s2["cells"] == s["cells"]

    # a change to evaluation settings redoes evaluation only
    cfg = yaml.safe_load((setup / "cfg.yaml").read_text())
    cfg["evaluate"]["controls"] = 2
    (setup / "cfg2.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["run", "--config", str(setup / "cfg2.yaml"), "--out", str(run), "--json", "--no-progress"])
    capsys.readouterr()
    assert rc == 0
    third = json.loads((run / "stages.json").read_text())
    assert third["collect"] == first["collect"] and third["identify"] == first["identify"]
    assert third["evaluate"]["hash"] != first["evaluate"]["hash"]
    res = pd.read_parquet(run / "results.parquet")
    assert (res.kind == "control").sum() == 2 * 4 * len(targeted)


def test_split_halves_merge_to_one_pass(setup, capsys):
    """Stability collects two halves; their merge equals collecting everything at once, bit for bit."""
    import jaxvalues as jv
    from jaxvalues.stats.checkpoint import load_stats
    from jaxvalues.stats.records import collect_records

    _run(setup, capsys)
    run = setup / "run"
    merged = load_stats(run / "stats" / "half_a").merge(load_stats(run / "stats" / "half_b"))
    lm = jv.load_model(str(setup / "model"))
    acts = [r for r in load_records(str(setup / "data.jsonl"), kind="activation")]
    one = collect_records(lm, acts, batch_size=4)
    np.testing.assert_array_equal(merged.active, one.active)
    np.testing.assert_array_equal(merged.tokens, one.tokens)


def test_terminal_summary_fits_80_columns(setup, capsys):
    from rich.console import Console

    from jaxvalues.pipeline.cli import print_summary

    s = json.loads((setup / "run" / "summary.json").read_text())
    console = Console(width=80, record=True)
    print_summary(s, console)
    text = console.export_text()
    lines = text.splitlines()
    table = [l for l in lines if l.split() and l.split()[0] in VALUES]
    assert sorted((l.split()[0], l.split()[1]) for l in table) == sorted((c["value"], c["lang"]) for c in s["cells"])
    assert all("…" not in l and len(l) <= 80 for l in table)  # nothing truncated
    assert "minimum detectable excess" in text and "perplexity of neutral text: baseline" in text and "report:" in text


@pytest.mark.parametrize("patch,message", [
    ({"collect": {"batch_sise": 4}}, "unknown field 'collect.batch_sise' (did you mean 'collect.batch_size'?)"),
    ({"evaluate": {"mode": "delete"}}, "evaluate.mode: expected one of"),
    ({"values": ["integrty"]}, "values:"),
    ({"collect": {"batch_size": "eight"}}, "collect.batch_size: expected a positive integer, got 'eight'"),
    ({"evaluate": {"controls": True}}, "evaluate.controls: expected an integer ≥ 0, got True"),
    ({"evaluate": {"controls": -1}}, "evaluate.controls: expected an integer ≥ 0, got -1"),
    ({"evaluate": {"alpha": 1.5}}, "evaluate.alpha: expected a number in (0, 1), got 1.5"),
    ({"evaluate": {"alternative": "down"}}, "evaluate.alternative: expected one of"),
    ({"evaluate": {"control_kind": "any"}}, "evaluate.control_kind: expected one of"),
    ({"evaluate": {"leakage": 1}}, "evaluate.leakage: expected true or false, got 1"),
    ({"evaluate": {"min_label_mass": 2}}, "evaluate.min_label_mass: expected a number in [0, 1), got 2"),
    ({"identify": {"top_rate": True}}, "identify.top_rate: expected a number in (0, 1), got True"),
])
def test_config_errors_name_the_field(tmp_path, capsys, patch, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "x", **patch}))
    rc = main(["run", "--config", str(p), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(p) in err
    assert "Traceback" not in err


def test_validate_run_rescores_findings_in_pytorch(setup, capsys):
    """`validate --run`: the run's baseline, targeted and control conditions re-scored in transformers
    with forward hooks agree with the engine's table."""
    _run(setup, capsys)
    rc = main(["validate", "--run", str(setup / "run"), "--sample", "6", "--controls", "2", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["pass"] and rep["dilemmas"] == 6
    assert rep["max_abs_diff_p_aligned"] < 1e-4
    for v, d in rep["per_value"].items():
        assert abs(d["difference"]["delta_logodds"]) < 1e-4
        assert d["jax"]["excess_logodds"] is not None and abs(d["difference"]["excess_logodds"]) < 1e-4


def test_run_and_evaluate_give_the_same_table(setup, capsys, tmp_path):
    """One engine: `jaxvalues evaluate` with the run's neurons, statistics and settings scores the
    same rows as `jaxvalues run` (same controls, same dilemmas, same numbers)."""
    _run(setup, capsys)
    run = setup / "run"
    res = pd.read_parquet(run / "results.parquet")
    v = sorted(set(res[res.kind == "targeted"].cond_value))[0]
    rc = main(["evaluate", "--model", str(setup / "model"), "--dataset", str(setup / "data.jsonl"),
               "--neurons", str(run / "neurons.parquet"), "--value", v, "--controls", "3",
               "--stats", str(run / "stats" / "half_a"), str(run / "stats" / "half_b"), "--max-records", "2",
               "--min-label-mass", "0", "--bootstrap", "200", "--no-perplexity", "--batch-size", "8",
               "--out", str(tmp_path / "ev"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    ev = pd.read_parquet(tmp_path / "ev" / "results.parquet")
    key = ["condition", "record_id"]
    mine = res[(res.cond_value == v) | (res.kind == "baseline")].sort_values(key).reset_index(drop=True)
    ev = ev.sort_values(key).reset_index(drop=True)
    assert list(ev.columns) == list(res.columns)
    assert ev[key].equals(mine[key])
    for col in ("p_aligned", "logodds", "delta_logodds", "label_mass"):
        np.testing.assert_allclose(ev[col].to_numpy(), mine[col].to_numpy(), atol=1e-6, err_msg=col)
    s = json.loads((run / "summary.json").read_text())
    for a, b in zip([c for c in s["cells"] if c["value"] == v], out["cells"]):
        assert a["lang"] == b["lang"] and a["targeted"] == pytest.approx(b["targeted"], abs=1e-6)
        assert a["control_mean"] == pytest.approx(b["control_mean"], abs=1e-6)


def test_damaged_stages_are_reported_and_recomputed(setup, capsys, tmp_path):
    """A corrupt summary.json, a missing identify.json or a corrupt stages.json is detected, said in
    one line and recomputed; the results equal the undamaged run's."""
    import shutil

    s = _run(setup, capsys)
    run = tmp_path / "run"
    shutil.copytree(setup / "run", run)
    (run / "summary.json").write_text("{ truncated")
    (run / "identify.json").unlink()
    rc = main(["run", "--config", str(setup / "cfg.yaml"), "--out", str(run), "--json", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "Traceback" not in cap.err
    assert "identify: stored results" in cap.err and "damaged" in cap.err and "recomputing" in cap.err
    assert json.loads(cap.out)["cells"] == s["cells"]
    (run / "stages.json").write_text("not json")
    rc = main(["run", "--config", str(setup / "cfg.yaml"), "--out", str(run), "--json", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and "stages.json: unreadable" in cap.err and json.loads(cap.out)["cells"] == s["cells"]


def test_out_locations_are_checked_before_any_work(setup, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "evaldir").mkdir()
    (tmp_path / "evaldir" / "summary.json").write_text("{}")
    for out, text in ((tmp_path / "afile", "exists and is not a directory"),
                      (tmp_path / "afile" / "run", "is a file, not a directory"),
                      (tmp_path / "evaldir", "holds the output of another command")):
        rc = main(["run", "--config", str(setup / "cfg.yaml"), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
