"""`jaxvalues run --preset authors` on a tiny model: persona answers, decision/semantic neurons
applied on their own layers, support-rate generation with zero and steer both ways, matched
controls plus the authors' random baseline, and the preset's config errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from jaxvalues.cli import main
from jaxvalues.data.io import load_records, write_jsonl
from jaxvalues.evaluate._testing import toy_model
from jaxvalues.evaluate.perplexity import load_neutral_corpus
from jaxvalues.pipeline.config import PRESETS, load_config
from jaxvalues.stats.persona import render_persona

VALUES = ["integrity", "justice"]
OVERRIDES = ["dtype=float32", "collect.max_new_tokens=3", "collect.batch_size=4", "evaluate.max_new_tokens=4",
             "evaluate.controls=3", "evaluate.authors_controls=2", "evaluate.perplexity_texts=1",
             "evaluate.bootstrap=100", "identify.top_rate=0.05", f"values=[{', '.join(VALUES)}]"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("authors")
    acts = [r for r in load_records("builtin", kind="activation", values=VALUES, lang="zh")
            if int(r.pair_id.rsplit("-", 1)[1]) <= 4]
    evals = [r for r in load_records("builtin", kind="evaluation", values=VALUES, lang="zh")
             if int(r.pair_id.rsplit("-", 1)[1]) <= 2]
    data = d / "data.jsonl"
    write_jsonl(acts + evals, data)
    texts = [render_persona(r, None, s, chat=False)[0] for r in acts for s in ("support", "conflict")]
    texts += [c["text"] for c in load_neutral_corpus("zh")[:1]]
    toy_model(d / "model", records=evals, extra_texts=texts)
    return d, data


def _run(d, data, capsys, *extra, out="run"):
    sets = [*OVERRIDES, f"model={d / 'model'}", f"dataset={data}"]
    rc = main(["run", "--preset", "authors", *[a for s in sets for a in ("--set", s)], "--max-records", "4",
               "--out", str(d / out), "--json", "--no-progress", *extra])
    text = capsys.readouterr().out
    assert rc == 0, text
    return json.loads(text)


def test_preset_authors_runs_end_to_end_then_resumes(setup, capsys):
    d, data = setup
    s = _run(d, data, capsys)
    run = d / "run"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["preset"] == "authors" and cfg["collect"]["scheme"] == "persona"
    assert cfg["evaluate"]["protocol"] == "generate" and cfg["evaluate"]["orders"] == "aligned_first"
    # persona answers kept beside the statistics: 4 records a value × 2 values × (support, conflict)
    answers = list((run / "answers").glob("*.jsonl"))
    assert len(answers) == 1
    rows = [json.loads(x) for x in answers[0].read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 * 2 * 2 and {r["condition"].rsplit("-", 1)[1] for r in rows} == {"support", "conflict"}
    assert all(r["num_tokens"] <= 3 for r in rows)
    # decision and semantic kinds kept apart, the authors' layer split recorded
    ns = pd.read_parquet(run / "neurons.parquet")
    assert len(ns) and set(ns["kind"].dropna()) <= {"decision", "semantic"}
    assert set(ns["method"]) <= {"vape-decision", "vape-semantic"}
    ident = json.loads((run / "identify.json").read_text())
    assert all(set(ident["selection"][v]) == {"decision", "semantic"} for v in VALUES)  # each kind selected
    assert ident["method"] == "vape-stance" and set(ident["applied"]["layers"]) >= {"decision", "semantic"}
    # conditions: baseline + 3 modes × values with neurons × (targeted + 3 matched + 2 authors' draws)
    conds = json.loads((run / "conditions.json").read_text())
    tested = [v for v in VALUES if f"zero/value:{v}" in conds]
    assert tested and len(conds) == 1 + 3 * len(tested) * (1 + 3 + 2)
    v = tested[0]
    st, sa = conds[f"steer/value:{v}"], conds[f"steer_against/value:{v}"]
    assert (st["neurons"], st["conflict"]) == (sa["conflict"], sa["neurons"])
    assert conds[f"zero/value:{v}"]["neurons"] == st["neurons"]  # zero switches the support set off
    # one reply per (condition, dilemma) in scope, aligned-first only; every reply counted by status
    replies = pd.read_parquet(run / "replies.parquet")
    assert set(replies["order"]) == {"aligned_first"}
    n_eval = 2 * 2  # 2 dilemmas per value (zh)
    assert len(replies) == n_eval + 3 * len(tested) * 6 * 2
    assert sum(s["parse"]["all_replies"].values()) == len(replies)
    res = pd.read_parquet(run / "results.parquet")
    assert {"mode", "support_aligned", "delta_support", "incomplete"} <= set(res.columns)
    # the summary: generation protocol, one cell per mode × value, each mode in its preset direction
    assert s["protocol"] == "generate" and s["modes"] == ["zero", "steer", "steer_against"]
    alts = PRESETS["authors"]["evaluate"]["alternative"]
    assert {(c["mode"], c["value"]) for c in s["cells"]} == {(m, v) for m in s["modes"] for v in tested}
    assert all(c["alternative"] == alts[c["mode"]] for c in s["cells"])
    # a random toy model writes no parseable support rates: every dilemma is excluded and counted
    assert s["parse"]["all_replies"]["unparseable"] == len(replies) == int((replies["status"] != "ok").sum())
    assert all(c["scored"] == 0 and c["num_controls"] == 0 and c["verdict"] == "not distinguishable"
               for c in s["cells"])
    assert s["baseline"]["incomplete"] == n_eval and "No baseline reply could be scored" in s["plain_summary"]
    assert (run / "report.html").exists() and "support" in (run / "report.html").read_text(encoding="utf-8")
    # rerun: every stage resumed, same verdicts
    s2 = _run(d, data, capsys)
    assert [c["p_param"] for c in s2["cells"]] == [c["p_param"] for c in s["cells"]]


def test_terminal_summary_of_a_generate_run_fits_80_columns(setup, capsys):
    d, data = setup
    from rich.console import Console

    from jaxvalues.pipeline.cli import print_summary

    s = json.loads((d / "run" / "summary.json").read_text()) if (d / "run" / "summary.json").exists() \
        else _run(d, data, capsys)
    s["report"] = "report.html"
    con = Console(width=80, record=True, file=open("/dev/null", "w"))
    print_summary(s, con)
    text = con.export_text()
    assert "Δ support" in text and "steer_ag" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("raw, message", [
    ({"preset": "nope"}, "preset: expected one of authors, got 'nope'"),
    ({"preset": "authors", "identify": {"filter_rate": 0.5}},
     "identify.filter_rate: method vape-stance uses the authors' per-kind rates"),
    ({"preset": "authors", "collect": {"scheme": "values"}},
     "identify.method: 'vape-stance' goes with collect.scheme 'persona'"),
    ({"evaluate": {"mode": "steer"}}, "evaluate.mode: steer modes need support and conflict sets"),
    ({"preset": "authors", "evaluate": {"alternative": {"zero": "less"}}},
     "evaluate.alternative: expected one direction of"),
    ({"evaluate": {"protocol": "generat"}}, "evaluate.protocol: expected one of ('choice', 'generate')"),
    ({"evaluate": {"orders": "first"}}, "evaluate.orders: expected one of ('both', 'aligned_first')"),
    ({"evaluate": {"gain": 0}}, "evaluate.gain: expected a positive number, got 0"),
    ({"evaluate": {"authors_controls": True}}, "evaluate.authors_controls: expected an integer ≥ 0, got True"),
    ({"collect": {"max_new_tokens": -1}}, "collect.max_new_tokens: expected a positive integer, got -1"),
])
def test_preset_config_errors_name_the_field(tmp_path, raw, message):
    from jaxvalues.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_set_and_preset_on_the_command_line(tmp_path, capsys):
    rc = main(["run", "--out", str(tmp_path / "x")])
    assert rc == 2 and "give --config FILE or --preset NAME" in capsys.readouterr().err
    rc = main(["run", "--preset", "authors", "--set", "evaluate.controls", "--out", str(tmp_path / "x")])
    assert rc == 2 and "--set 'evaluate.controls': expected KEY=VALUE" in capsys.readouterr().err
    rc = main(["run", "--preset", "authors", "--set", "evaluate.contrls=3", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown field 'evaluate.contrls'" in err and "evaluate.controls" in err
    assert not (tmp_path / "x").exists()  # nothing written for a bad config
    cfg = load_config(None, {"evaluate": {"controls": 7}}, preset="authors")
    assert cfg["evaluate"]["controls"] == 7 and cfg["evaluate"]["mode"] == ["zero", "steer", "steer_against"]


def test_validate_run_refuses_a_generate_run(setup, capsys):
    d, data = setup
    if not (d / "run" / "summary.json").exists():
        _run(d, data, capsys)
    rc = main(["validate", "--run", str(d / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "validate --run re-scores the choice protocol" in err and "\n" not in err.strip()
