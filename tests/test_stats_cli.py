"""`jaxvalues collect` smoke test (tiny model + word tokenizer, builtin records) and its errors."""

import json

import pytest

pytest.importorskip("torch")

from jaxvalues.cli import main  # noqa: E402
from jaxvalues.stats.checkpoint import load_stats  # noqa: E402
from jaxvalues.testing import tiny_hf_model, word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_cli_model")
    tiny_hf_model("llama", d)
    word_tokenizer(["A", "B", ":", "."] + [f"w{i}" for i in range(140)]).save_pretrained(str(d))
    return d


def test_collect_json(model_dir, tmp_path, capsys):
    out = tmp_path / "stats"
    rc = main(["collect", "--model", str(model_dir), "--dataset", "builtin", "--out", str(out), "--lang", "en",
               "--max-records", "6", "--token-selection", "last_k", "--k", "8", "--batch-size", "8", "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["out"] == str(out.resolve()) and len(info["conditions"]) == 12
    assert sum(info["tokens"].values()) == 6 * 8 and len(info["no_data"]) == 6
    assert info["meta"]["collect"]["compilations"] >= 1 and info["meta"]["token_selection"] == "last_k"
    stats = load_stats(out)
    assert int(stats.tokens.sum()) == 48 and stats.meta["model"] == str(model_dir)


def test_collect_errors_are_one_line(model_dir, tmp_path, capsys):
    rc = main(["collect", "--model", str(tmp_path / "nope"), "--dataset", "builtin", "--out", str(tmp_path / "o"),
               "--max-records", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "Traceback" not in err
    rc = main(["collect", "--model", str(model_dir), "--dataset", str(tmp_path / "missing.jsonl"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err


def test_collect_out_checked_before_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out, text in ((tmp_path / "afile", "is an existing file"), (tmp_path / "afile" / "s", "is a file, not a directory")):
        # the model does not exist: had any work started, the error would be about the model
        rc = main(["collect", "--model", str(tmp_path / "nope"), "--dataset", "builtin", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and text in err and "--out" in err and "nope" not in err and "Traceback" not in err


def test_collect_max_records_zero(model_dir, tmp_path, capsys):
    rc = main(["collect", "--model", str(model_dir), "--dataset", "builtin", "--out", str(tmp_path / "o"),
               "--max-records", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-records must be >= 1, got 0" in err


def test_collect_save_failure_keeps_statistics(model_dir, tmp_path, capsys, monkeypatch):
    import jaxvalues.stats.checkpoint as ck
    from jaxvalues.errors import CheckpointError

    real = ck.save_stats
    out = tmp_path / "stats"

    def flaky(stats, directory):
        if str(directory) == str(out):
            raise CheckpointError(f"could not write statistics to {directory}: disk full")
        return real(stats, directory)

    monkeypatch.setattr(ck, "save_stats", flaky)
    monkeypatch.chdir(tmp_path)
    rc = main(["collect", "--model", str(model_dir), "--dataset", "builtin", "--out", str(out), "--lang", "en",
               "--max-records", "2", "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "the statistics were saved to" in err
    saved = err.rsplit("saved to ", 1)[1].strip()
    assert int(load_stats(saved).tokens.sum()) > 0
