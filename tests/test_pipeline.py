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
    for f in ("config.yaml", "stages.json", "neurons.parquet", "identify.json", "choice.parquet", "controls.parquet",
              "perplexity.parquet", "summary.json", "report.html", "shift.png", "leakage.png", "stats/summary.json"):
        assert (run / f).exists(), f
    # conditions: baseline + one per value with neurons; every dilemma in both orders
    choice = pd.read_parquet(run / "choice.parquet")
    targeted = [r["value"] for r in s["shift"]]
    assert set(choice.condition) == {"baseline", *[f"value:{v}" for v in targeted]}
    assert len(choice) == (1 + len(targeted)) * 12  # 3 values × 2 languages × 2 dilemmas
    assert choice["p_aligned_first"].notna().all() and choice["p_aligned_second"].notna().all()
    # the targeted effect is the mean Δ on the value's own dilemmas; controls keep per-layer counts
    for r in s["shift"]:
        sub = choice[(choice.condition == f"value:{r['value']}") & (choice.value == r["value"])]
        base = choice[(choice.condition == "baseline") & (choice.value == r["value"])]
        assert r["targeted"] == pytest.approx(sub["p_aligned"].mean() - base["p_aligned"].mean(), abs=1e-12)
    ctrl = pd.read_parquet(run / "controls.parquet")
    assert len(ctrl) == 3 * len(targeted)
    m = np.array(s["leakage"]["matrix"], float)
    assert m.shape == (3, 3)
    for i, v in enumerate(VALUES):
        if v in targeted:
            assert m[i, i] == pytest.approx(next(r["targeted"] for r in s["shift"] if r["value"] == v))
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Run metadata" in html
    assert s["perplexity"]["baseline"]["all"]["tokens"] > 0

    first = json.loads((run / "stages.json").read_text())
    s2 = _run(setup, capsys)  # resume: nothing recomputed, same results
    second = json.loads((run / "stages.json").read_text())
    for stage in ("collect", "identify", "evaluate"):
        assert second[stage] == first[stage]
    assert s2["shift"] == s["shift"]

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
    assert len(pd.read_parquet(run / "controls.parquet")) == 2 * len(targeted)


def test_controls_are_scored_on_their_own_dilemmas(setup, capsys):
    """The run scores all conditions in one masked pass; each random control must equal scoring
    that control alone on its value's dilemmas."""
    import jaxvalues as jv
    from jaxvalues.evaluate.choice import build_choice_prompts, evaluate_choice
    from jaxvalues.evaluate.controls import random_like
    from jaxvalues.identify import NeuronSet
    from jaxvalues.models.intervention import Intervention

    s = _run(setup, capsys, "--out", str(setup / "run_ctrl"))
    run = setup / "run_ctrl"
    ns = NeuronSet.load(run / "neurons.parquet")
    lm = jv.load_model(str(setup / "model"))
    choice = pd.read_parquet(run / "choice.parquet")
    base = choice[choice.condition == "baseline"].set_index("record_id")["p_aligned"]
    ctrl = pd.read_parquet(run / "controls.parquet")
    recs = load_records(str(setup / "data.jsonl"), kind="evaluation")
    targeted = [r["value"] for r in s["shift"]]
    for k, v in enumerate(targeted):
        maps = random_like(ns.neurons(v), lm.config.num_neurons, 3, seed=k)  # config seed 0
        own = [r for r in recs if r.value == v]
        t = evaluate_choice(lm, build_choice_prompts(own, lm.tokenizer),
                            {f"random:{v}#{r:02d}": Intervention.zero(m) for r, m in enumerate(maps)}, batch_size=8)
        for name, g in t.groupby("condition"):
            want = float(np.mean(g["p_aligned"].to_numpy() - base.reindex(g["record_id"]).to_numpy()))
            got = ctrl[ctrl.condition == name]["delta_p"]
            assert len(got) == 1 and got.iloc[0] == pytest.approx(want, abs=1e-6), name


def test_terminal_summary_fits_80_columns(setup, capsys):
    from rich.console import Console

    from jaxvalues.pipeline.cli import print_summary

    s = json.loads((setup / "run" / "summary.json").read_text())
    console = Console(width=80, record=True)
    print_summary(s, console)
    text = console.export_text()
    lines = text.splitlines()
    table = [l for l in lines if l.split() and l.split()[0] in VALUES]
    assert sorted(l.split()[0] for l in table) == sorted(r["value"] for r in s["shift"])
    assert all("…" not in l for l in table)  # nothing truncated
    assert "perplexity of neutral text: baseline" in text and "report:" in text


@pytest.mark.parametrize("patch,message", [
    ({"collect": {"batch_sise": 4}}, "unknown field 'collect.batch_sise' (did you mean 'collect.batch_size'?)"),
    ({"evaluate": {"mode": "delete"}}, "evaluate.mode: expected one of"),
    ({"values": ["integrty"]}, "values:"),
    ({"collect": {"batch_size": "eight"}}, "collect.batch_size: expected a positive integer, got 'eight'"),
])
def test_config_errors_name_the_field(tmp_path, capsys, patch, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "x", **patch}))
    rc = main(["run", "--config", str(p), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(p) in err
    assert "Traceback" not in err
