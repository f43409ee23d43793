"""token_selection="content": the record's own text (story, action, rationale), no template or labels."""

import dataclasses
import re

import numpy as np
import pytest

pytest.importorskip("torch")

import jaxvalues as jv  # noqa: E402
from jaxvalues.data.schema import ActivationRecord  # noqa: E402
from jaxvalues.errors import ConfigError, JaxValuesError  # noqa: E402
from jaxvalues.stats.batching import SELECTIONS, TokenizedExample, count_mask  # noqa: E402
from jaxvalues.stats.records import check_selection, collect_records, examples_from_records  # noqa: E402
from jaxvalues.testing import tiny_hf_model, word_tokenizer  # noqa: E402

# a template with a default system prompt, role markers (special tokens) and a generation prompt
TEMPLATE = ("<s>system\nYou are a helpful assistant .</s>\n"
            "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
# template and label words are in the vocabulary too, so that they are real (not <unk>) tokens
WORDS = (["system", "user", "assistant", "You", "are", "a", "helpful", ".", ":", "?", ",", "Situation", "My",
          "choice", "Reason", "What", "would", "you", "do", "and", "why", "情境", "我的选择", "理由", "你会怎么做",
          "为什么", "：", "？"] + [f"w{i}" for i in range(120)])


def _tok(chat=True):
    return word_tokenizer(WORDS, chat_template=TEMPLATE if chat else None)


def _records(lang="en"):
    return [ActivationRecord(id=f"act-{v}-{i:03d}-{lang}", lang=lang, pair_id=f"act-{v}-{i:03d}", value=v,
                             conflict="w1 vs w2", story=" ".join(f"w{j}" for j in range(3, 7 + i)),
                             aligned_action=f"w40 w41 w{42 + i}",
                             rationale=" ".join(f"w{j}" for j in range(60, 63 + 2 * i)), violating_action="w90 w91")
            for v in ("integrity", "justice") for i in range(3)]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("chat", [True, False])
def test_content_mask_is_exactly_the_record_text(lang, chat):
    tok = _tok(chat)
    recs = _records(lang)
    ex, names = examples_from_records(recs, tok, "values")
    for e, r in zip(ex, recs):
        content = count_mask(e, "content")
        texts = [r.story, r.aligned_action, r.rationale]
        assert e.ids[content].tolist() == _ids(tok, " ".join(texts))
        assert tok.decode(e.ids[content]).split() == " ".join(texts).split()
        # everything else is scaffolding: no content word is left outside the mask
        rest = tok.convert_ids_to_tokens(e.ids[~content].tolist())
        assert rest and not any(re.fullmatch(r"w\d+", t) for t in rest)
        assert tok.unk_token not in rest  # the labels are real tokens, and excluded
        labels = {"en": ["Situation", "My", "choice", "Reason"], "zh": ["情境", "我的选择", "理由"]}[lang]
        assert set(labels) <= set(rest)
        if chat:
            assert {"<s>", "</s>", "system", "user", "assistant", "helpful"} <= set(rest)
        assert count_mask(e, "rationale").sum() == len(_ids(tok, r.rationale))
        assert content.sum() < count_mask(e, "all").sum()


def test_content_stance_covers_violating_action():
    tok = _tok()
    recs = _records()
    ex, names = examples_from_records(recs, tok, "stance")
    by_id = {r.id: r for r in recs}
    for e in ex:
        rid, stance = e.id.split(":")
        r = by_id[rid]
        texts = [r.story, r.aligned_action, r.rationale] if stance == "support" else [r.story, r.violating_action]
        assert e.ids[count_mask(e, "content")].tolist() == _ids(tok, " ".join(texts))


def test_selection_names_and_errors():
    assert SELECTIONS[0] == "content" and {"all", "rationale", "last_k"} <= set(SELECTIONS)
    ex = TokenizedExample(np.arange(5, dtype=np.int32), 0, np.ones(5, bool))
    with pytest.raises(JaxValuesError, match="content"):
        count_mask(ex, "content")
    ex, _ = examples_from_records(_records()[:1], _tok(), masks=False)
    assert ex[0].content is None and ex[0].mask is None


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_content_without_rationale_is_story_and_action(lang):
    """Records without a rationale (the authors' activation workbook): no "Reason" line, and the
    content mask is exactly story + action."""
    tok = _tok()
    recs = [dataclasses.replace(r, rationale=None) for r in _records(lang)]
    ex, _ = examples_from_records(recs, tok, "values")
    for e, r in zip(ex, recs):
        content = count_mask(e, "content")
        assert e.ids[content].tolist() == _ids(tok, " ".join([r.story, r.aligned_action]))
        rest = tok.convert_ids_to_tokens(e.ids[~content].tolist())
        assert not any(re.fullmatch(r"w\d+", t) for t in rest)
        assert {"en": "Reason", "zh": "理由"}[lang] not in rest
        assert count_mask(e, "rationale").sum() == 0


def test_rationale_selection_needs_rationales():
    recs = _records()
    recs[2] = dataclasses.replace(recs[2], rationale=None)
    with pytest.raises(ConfigError) as e:  # before any model work: `object()` has no tokenizer or weights
        collect_records(object(), recs, scheme="values", token_selection="rationale")
    msg = str(e.value)
    assert "\n" not in msg and "'act-integrity-002-en'" in msg and "needs every record to have one" in msg
    assert "'content' or 'all'" in msg
    with pytest.raises(ConfigError, match="act-integrity-002-en"):
        check_selection(recs, "values", "mask")
    for scheme, sel in (("values", "content"), ("values", "all"), ("stance", "rationale")):
        check_selection(recs, scheme, sel)  # no rationale needed


def test_cli_rationale_selection_fails_before_loading_the_model(tmp_path, capsys):
    from jaxvalues.cli import main
    from jaxvalues.data.io import write_jsonl

    data = write_jsonl([dataclasses.replace(r, rationale=None) for r in _records()[:3]], tmp_path / "a.jsonl")
    args = ["collect", "--model", str(tmp_path / "no-such-model"), "--dataset", str(data),
            "--out", str(tmp_path / "st"), "--token-selection", "rationale"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no rationale" in err and "no-such-model" not in err


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama_tokens")
    tiny_hf_model("llama", d)
    m = jv.load_model(d)
    m.tokenizer = _tok()
    return m


def test_content_statistics_match_manual_count(lm):
    recs = _records()
    st = collect_records(lm, recs, scheme="values", batch_size=4)  # the default selection
    assert st.meta["token_selection"] == "content"
    ex, names = examples_from_records(recs, lm.tokenizer, "values")
    L, N = lm.config.num_layers, lm.config.num_neurons
    tokens, active = np.zeros(len(names), np.int64), np.zeros((len(names), L, N), np.int64)
    for e in ex:
        ids = np.asarray(e.ids, np.int32)[None]
        acts = np.asarray(lm.forward(ids, np.ones_like(ids), capture_neurons=True, logits=False).neurons)
        a = acts[:, 0][:, e.content]  # [L, T, N]
        tokens[e.condition] += a.shape[1]
        active[e.condition] += (a > 0).sum(1)
    np.testing.assert_array_equal(st.tokens, tokens)
    np.testing.assert_array_equal(st.active, active)
    everything = collect_records(lm, recs, scheme="values", token_selection="all", batch_size=4)
    assert 0 < st.tokens.sum() < everything.tokens.sum()
    assert everything.tokens.sum() == sum(len(e) for e in ex)
