"""`jaxvalues evaluate` end to end on a tiny model: outputs, summary fields, user errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from jaxvalues.cli import main
from jaxvalues.data.io import write_jsonl
from jaxvalues.evaluate._testing import toy_model, toy_records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    toy_model(root / "model")
    write_jsonl(toy_records(), root / "eval.jsonl")
    sets = {"integrity": {"0": [1, 2, 3], "2": [10, 11]}, "justice": {"1": [5, 6]}, "harmony": {"0": [7], "1": [8]},
            "integrity-support": {"0": [1, 2]}, "integrity-conflict": {"1": [3, 4]}}
    (root / "neurons.json").write_text(json.dumps(sets))
    return root


def _run(setup, capsys, *extra):
    code = main(["evaluate", "--model", str(setup / "model"), "--dataset", str(setup / "eval.jsonl"),
                 "--batch-size", "4", "--bootstrap", "50", *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_choice_with_controls_and_leakage(setup, capsys, tmp_path):
    """The choice protocol runs on the experiment engine: same table and summary as `jaxvalues run`."""
    code, out, err = _run(setup, capsys, "--neurons", str(setup / "neurons.json"), "--value", "integrity",
                          "--controls", "3", "--control-kind", "layer", "--leakage", "--min-label-mass", "0",
                          "--out", str(tmp_path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["protocol"] == "choice" and summary["value"] == "integrity" and summary["mode"] == "zero"
    assert summary["conditions"][:5] == ["baseline", "value:integrity", "random:integrity#00", "random:integrity#01",
                                         "random:integrity#02"]
    assert {"value:justice", "value:harmony"} <= set(summary["conditions"])  # leakage rows, no controls of theirs
    assert summary["num_dilemmas"] == 6 and summary["control_kind"] == "layer"
    assert [(c["value"], c["lang"]) for c in summary["cells"]] == [("integrity", "zh"), ("integrity", "en")]
    c = summary["cells"][0]
    assert c["num_controls"] == 3 and {"p_param", "p_rank", "p_holm", "excess", "mde", "verdict"} <= set(c)
    assert summary["family_size"] == 2
    assert len(summary["leakage"]["matrix"]) == 3 and "rows_dominant" in summary["leakage"]
    assert summary["perplexity"]["targeted"]["all"]["ppl"] > 0
    assert summary["compilations"] >= 1
    t = pd.read_parquet(tmp_path / "results.parquet")
    assert (t.kind == "baseline").sum() == 6 and (t.kind == "targeted").sum() == 18 and (t.kind == "control").sum() == 6
    assert {"p_aligned", "logodds", "delta_logodds", "label_mass", "position_bias", "pair_id"} <= set(t.columns)


def test_rate_matched_controls_need_statistics(setup, capsys, tmp_path):
    code, out, err = _run(setup, capsys, "--neurons", str(setup / "neurons.json"), "--value", "integrity",
                          "--controls", "3", "--out", str(tmp_path))
    assert code == 2 and "rate-matched controls need --stats DIR" in err and "Traceback" not in err


def test_generate_protocol_steer(setup, capsys, tmp_path):
    code, out, err = _run(setup, capsys, "--neurons", str(setup / "neurons.json"), "--value", "integrity",
                          "--mode", "steer", "--protocol", "generate", "--max-new-tokens", "3", "--max-records", "1", "--lang", "en",
                          "--no-perplexity", "--out", str(tmp_path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["protocol"] == "generate" and summary["metric"] == "delta_support"  # on the engine
    assert summary["num_dilemmas"] == 3  # --lang en --max-records 1: one record per value (3)
    from jaxvalues.evaluate.support import REPLY_STATUSES

    counts = summary["unparseable"]["value:integrity"]
    assert sum(counts[k] for k in REPLY_STATUSES) == 2 * 3  # every reply counted (both orders)
    assert counts["incomplete"] + counts["scored"] == 3  # and every dilemma
    replies = pd.read_parquet(tmp_path / "replies.parquet")
    assert len(replies) == 2 * 2 * 3 and "reply" in replies.columns


@pytest.mark.parametrize("args,msg", [
    (["--mode", "scale", "--value", "integrity"], "--gamma"),
    (["--mode", "mean", "--value", "integrity"], "--means"),
    (["--value", "integrty"], "did you mean 'integrity'"),
    (["--value", "democracy"], "no neuron set named 'democracy'"),
    (["--value", "integrity", "--controls", "-1"], "--controls: expected an integer ≥ 0, got -1"),
    (["--value", "integrity", "--bootstrap", "0"], "--bootstrap: expected a positive integer, got 0"),
    (["--value", "integrity", "--alpha", "2"], "--alpha: expected a number in (0, 1), got 2.0"),
])
def test_user_errors_exit_2(setup, capsys, tmp_path, args, msg):
    code, out, err = _run(setup, capsys, "--neurons", str(setup / "neurons.json"), *args, "--out", str(tmp_path))
    assert code == 2 and msg in err


def test_max_records_keeps_the_first_n_per_value_and_language():
    from jaxvalues.evaluate.cli import _limit

    recs = toy_records() * 3  # three copies of each (value, lang)
    kept = _limit(recs, 2)
    assert len(kept) == 2 * 6 and kept[:6] == recs[:6]
    assert _limit(recs, None) == recs


def test_mean_mode_and_size_sweep(setup, capsys, tmp_path):
    import numpy as np

    np.savez(tmp_path / "means.npz", mean=np.full((3, 96), 0.25, np.float32))
    np.save(tmp_path / "scores.npy", np.random.default_rng(0).random((3, 96)))
    code, out, err = _run(setup, capsys, "--neurons", str(setup / "neurons.json"), "--value", "justice",
                          "--mode", "mean", "--means", str(tmp_path / "means.npz"), "--sweep", str(tmp_path / "scores.npy"),
                          "--sweep-controls", "2", "--no-perplexity", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "targeted (justice)" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [r["fraction"] for r in summary["sweep"]] == [0.001, 0.005, 0.01, 0.02, 0.05]
    assert all(r["num_controls"] == 2 for r in summary["sweep"])
    assert "top@0.05" in summary["conditions"] and "random@0.05#01" in summary["conditions"]
