"""`jaxvalues identify` smoke tests: vape / contrast on saved statistics, attribution / mask on a tiny model."""

import json

import numpy as np
import pytest

from jaxvalues.cli import main
from jaxvalues.identify.neuronset import NeuronSet
from jaxvalues.stats.accumulator import NeuronStats
from jaxvalues.stats.checkpoint import save_stats


@pytest.fixture(scope="module")
def stats_dirs(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("identify_cli")
    values = NeuronStats.zeros(["prosperity", "democracy", "civility", "harmony"], 2, 50)
    for c in range(3):  # harmony: no data
        x = rng.standard_normal((2, 64, 50)).astype(np.float32) - 0.3
        x[:, :, 5 * c:5 * c + 5] += 2.0
        values.add_activations(c, x)
    stance = NeuronStats.zeros(["integrity-support", "integrity-conflict"], 2, 50)
    for c in range(2):
        x = rng.standard_normal((2, 64, 50)).astype(np.float32) - 0.3
        x[:, :, 10 * c:10 * c + 3] += 2.0
        stance.add_activations(c, x)
    return save_stats(values, root / "values"), save_stats(stance, root / "stance")


def _run(capsys, *argv):
    rc = main(["identify", *argv, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_vape_and_contrast(stats_dirs, tmp_path, capsys):
    values_dir, stance_dir = stats_dirs
    info = _run(capsys, "--stats", str(values_dir), "--method", "vape", "--out", str(tmp_path / "v.parquet"),
                "--top-rate", "0.1")
    assert info["report"]["no_data"] == ["harmony"] and info["rows"] == len(NeuronSet.load(tmp_path / "v.parquet"))
    assert set(info["counts"]) <= {"prosperity", "democracy", "civility"} and info["rows"] > 0
    assert len(info["overlap"]["jaccard"]) == len(info["counts"])
    info = _run(capsys, "--stats", str(stance_dir), "--method", "vape", "--out", str(tmp_path / "s.parquet"),
                "--top-rate", "0.05")
    assert set(info["report"]["integrity"]) == {"decision", "semantic"}
    ns = NeuronSet.load(tmp_path / "s.parquet")
    assert set(ns.table["method"]) <= {"vape-decision", "vape-semantic"}
    info = _run(capsys, "--stats", str(values_dir), "--method", "contrast", "--top-k", "5",
                "--out", str(tmp_path / "c.parquet"))
    assert info["counts"] == {"prosperity": 5, "democracy": 5, "civility": 5}
    assert sum(info["layer_histogram"]["prosperity"]) == 5


def test_user_errors(stats_dirs, tmp_path, capsys):
    rc = main(["identify", "--method", "vape", "--out", str(tmp_path / "x.parquet")])
    assert rc == 2 and "--stats" in capsys.readouterr().err
    rc = main(["identify", "--method", "vape", "--stats", str(tmp_path / "nope"), "--out", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "no such statistics directory" in err and "Traceback" not in err
    rc = main(["identify", "--method", "attribution", "--out", str(tmp_path / "x.parquet")])
    assert rc == 2 and "--model" in capsys.readouterr().err


def test_attribution_and_mask_on_tiny_model(tmp_path, capsys):
    pytest.importorskip("torch")
    from jaxvalues.testing import tiny_hf_model, word_tokenizer

    d = tmp_path / "model"
    tiny_hf_model("llama", d)
    word_tokenizer(["A", "B", ":", "."] + [f"w{i}" for i in range(140)]).save_pretrained(str(d))
    common = ["--model", str(d), "--dataset", "builtin", "--lang", "en", "--max-records", "3"]
    info = _run(capsys, "--method", "attribution", *common, "--top-k", "4", "--out", str(tmp_path / "a.parquet"))
    assert sum(info["report"]["rows"].values()) == 6 and all(n <= 4 for n in info["counts"].values())
    first = next(iter(info["report"]["rows"]))
    info = _run(capsys, "--method", "mask", *common, "--steps", "3", "--values", first, "--out", str(tmp_path / "m.parquet"))
    assert set(info["report"]) == {first, "split"} and info["report"][first]["steps"] == 3


def test_attribution_trains_on_one_split_and_evaluate_drops_it(tmp_path, capsys):
    """Identification never sees what is evaluated: the pair_id split is stored with the neurons
    and `evaluate` scores only the held-out pairs."""
    pytest.importorskip("torch")
    from jaxvalues.data.io import load_records, write_jsonl
    from jaxvalues.evaluate._testing import toy_model
    from jaxvalues.identify import NeuronSet

    recs = [r for r in load_records("builtin", kind="evaluation", lang="en", values=["integrity", "justice"])
            if int(r.pair_id.rsplit("-", 1)[1]) <= 4]
    data = tmp_path / "eval.jsonl"
    write_jsonl(recs, data)
    toy_model(tmp_path / "model", records=recs)
    out = tmp_path / "a.parquet"
    info = _run(capsys, "--method", "attribution", "--model", str(tmp_path / "model"), "--dataset", str(data),
                "--top-k", "3", "--out", str(out))
    split = NeuronSet.load(out).info["split"]
    train, held = set(split["trained_on_pair_ids"]), set(split["held_out_pair_ids"])
    assert len(train) == len(held) == 4 and not train & held  # 2 of 4 pairs per value
    assert info["report"]["split"]["trained_on_pair_ids"] == 4
    assert sum(info["report"]["rows"].values()) == 8  # 4 of the 8 dilemmas, both option orders
    rc = main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(data), "--neurons", str(out),
               "--value", "integrity", "--no-perplexity", "--min-label-mass", "0", "--out", str(tmp_path / "ev"),
               "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "held out: 4 dilemmas the neuron set was trained on are left out; 4 remain" in cap.err
    import pandas as pd

    t = pd.read_parquet(tmp_path / "ev" / "results.parquet")
    assert set(t.pair_id) == held


@pytest.mark.parametrize("flag, value", [("--top-k", "-1"), ("--top-k", "0"), ("--steps", "0"), ("--batch-size", "0"),
                                         ("--max-records", "0")])
def test_bad_numbers_refused_before_work(stats_dirs, tmp_path, capsys, flag, value):
    values_dir, _ = stats_dirs
    rc = main(["identify", "--stats", str(values_dir), "--method", "contrast", flag, value,
               "--out", str(tmp_path / "c.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag} must be >= 1, got {value}" in err and "Traceback" not in err
    assert not (tmp_path / "c.parquet").exists()


def test_out_location_checked_before_work(stats_dirs, tmp_path, capsys):
    values_dir, _ = stats_dirs
    (tmp_path / "afile").write_text("x")
    for out, text in ((str(tmp_path) + "/", "is a directory"), (str(tmp_path), "is a directory"),
                      (str(tmp_path / "afile" / "x.parquet"), "is a file, not a directory")):
        # --stats does not exist: had the work started first, the error would be about statistics
        rc = main(["identify", "--stats", str(tmp_path / "nope"), "--method", "vape", "--out", out])
        err = capsys.readouterr().err
        assert rc == 2 and text in err and "--out" in err and "statistics" not in err, err


def test_value_without_data_is_named(stats_dirs, tmp_path, capsys):
    values_dir, _ = stats_dirs
    rc = main(["identify", "--stats", str(values_dir), "--method", "vape", "--values", "harmony",
               "--out", str(tmp_path / "h.parquet")])
    out = capsys.readouterr().out
    assert rc == 0 and "no activation data / tokens for value(s): harmony" in " ".join(out.split())


def test_mask_uses_batch_size(tmp_path):
    pytest.importorskip("torch")
    import numpy as np

    from jaxvalues.identify.mask import learn_mask
    from jaxvalues.loading import load_model
    from jaxvalues.testing import tiny_hf_model

    tiny_hf_model("llama", tmp_path / "m")
    lm = load_model(tmp_path / "m", tokenizer=False)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (5, 6))
    mask = np.ones_like(ids)
    labels = np.array([[3, 4]] * 5)
    full = learn_mask(lm, ids, mask, labels, steps=2)
    small = learn_mask(lm, ids, mask, labels, steps=2, batch_size=2)
    assert full.report["batch_size"] == 5 and small.report["batch_size"] == 2
    np.testing.assert_allclose(small.gates, full.gates, rtol=1e-4, atol=1e-5)  # same gradient, less memory


@pytest.mark.parametrize("flag, value", [("--filter-rate", "0"), ("--bar-ratio", "1.5"), ("--top-rate", "-0.1"),
                                         ("--l1", "-1"), ("--min-ratio", "2")])
def test_bad_rates_refused(stats_dirs, tmp_path, capsys, flag, value):
    values_dir, _ = stats_dirs
    rc = main(["identify", "--stats", str(values_dir), "--method", "vape", flag, value,
               "--out", str(tmp_path / "v.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and "Traceback" not in err
