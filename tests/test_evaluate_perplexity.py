"""The shipped neutral corpus and perplexity with / without an intervention."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxvalues as jv
from jaxvalues.evaluate._testing import toy_model
from jaxvalues.evaluate.perplexity import load_neutral_corpus, perplexity_table, summarize_perplexity
from jaxvalues.models.intervention import Intervention


def test_corpus_has_forty_short_paragraphs_per_language():
    corpus = load_neutral_corpus()
    assert len({c["id"] for c in corpus}) == len(corpus)
    for lang in ("zh", "en"):
        sub = load_neutral_corpus(lang)
        assert len(sub) == 40
        assert len({c["topic"] for c in sub}) >= 5
        assert all(20 <= len(c["text"]) <= 400 for c in sub)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in c["text"]) for c in load_neutral_corpus("zh"))


def test_corpus_errors_name_the_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"lang": "en", "text": "ok"}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(jv.JaxValuesError, match="line 2"):
        load_neutral_corpus(path=p)


@pytest.fixture(scope="module")
def lm_corpus(tmp_path_factory):
    corpus = load_neutral_corpus("en")[:3] + load_neutral_corpus("zh")[:3]
    return toy_model(tmp_path_factory.mktemp("ppl_llama"), extra_texts=[c["text"] for c in corpus]), corpus


def _direct_nll(lm, text):
    ids = np.asarray(lm.tokenizer(text, add_special_tokens=True)["input_ids"])
    logits = np.asarray(lm.forward(ids[None]).logits[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -logp[np.arange(len(ids) - 1), ids[1:]].sum(), len(ids) - 1


def test_perplexity_matches_forward_and_identity_equals_none(lm_corpus):
    lm, corpus = lm_corpus
    iv = Intervention.zero({0: list(range(48)), 1: list(range(48))})
    t = perplexity_table(lm, {"baseline": None, "identity": Intervention.scale({0: [1, 2]}, 1.0), "zero": iv},
                         corpus, batch_size=4)
    assert lm.tokenizer.unk_token_id not in lm.tokenizer(corpus[0]["text"])["input_ids"]
    base = t[t.condition == "baseline"].reset_index(drop=True)
    for i, entry in enumerate(corpus):
        nll, n = _direct_nll(lm, entry["text"])
        assert base.loc[i, "tokens"] == n
        assert base.loc[i, "nll"] == pytest.approx(nll, rel=1e-4)
    np.testing.assert_array_equal(t[t.condition == "identity"]["nll"].to_numpy(), base["nll"].to_numpy())
    s = summarize_perplexity(t)
    assert set(s["baseline"]) == {"en", "zh", "all"}
    assert s["identity"]["all"]["ratio_to_baseline"] == 1.0
    assert s["zero"]["all"]["ppl"] != s["baseline"]["all"]["ppl"]
    en = base[base.lang == "en"]
    assert s["baseline"]["en"]["ppl"] == pytest.approx(np.exp(en.nll.sum() / en.tokens.sum()))
