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
