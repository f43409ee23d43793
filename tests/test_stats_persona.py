"""Persona activation scheme: generated-token statistics, answers file, resume; repetition penalty."""

import json

import numpy as np
import pytest

from jaxvalues.data.authors import persona_value_texts
from jaxvalues.data.schema import ActivationRecord
from jaxvalues.stats import persona as P
from jaxvalues.stats.accumulator import NeuronStats
from jaxvalues.stats.records import condition_names

WORDS = "I tell the truth and keep my promise to friends I lie for money vs wealth fairness self".split()


def _records():
    return [
        ActivationRecord(id="act-integrity-000-en", lang="en", pair_id="p0", value="integrity",
                         conflict="integrity vs wealth", story="I found money", aligned_action="I tell the truth",
                         rationale="truth", violating_action="I lie for money"),
        ActivationRecord(id="act-justice-001-en", lang="en", pair_id="p1", value="justice",
                         conflict="justice vs self", story="I judge my friends", aligned_action="I keep fairness",
                         rationale="fair", violating_action="I help my friends"),
        ActivationRecord(id="act-harmony-002-en", lang="en", pair_id="p2", value="harmony",
                         conflict="harmony vs self", story="loud music", aligned_action="I talk",
                         rationale="calm", violating_action=None),  # one option only: skipped
    ]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from jaxvalues.data.authors import PERSONA_TEMPLATE_EN
    from jaxvalues.evaluate._testing import toy_model

    return toy_model(tmp_path_factory.mktemp("persona_lm"), extra_texts=[PERSONA_TEMPLATE_EN, " ".join(WORDS)])


def _manual(lm, path):
    """Statistics from a manual forward over prompt + answer, counting the answer positions only."""
    names = condition_names("stance")
    ref = NeuronStats.zeros(names, lm.config.num_layers, lm.config.num_neurons)
    for row in P.load_answers(path).values():
        prompt = lm.tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        ids = np.asarray(prompt + row["answer_ids"], np.int32)
        acts = np.stack([np.asarray(a) for a in lm.forward(ids[None], capture_neurons=True, logits=False).neurons])
        count = np.zeros(len(ids), np.int32)
        count[len(prompt):] = 1
        ref.add_activations(row["condition"], acts, count[None])
    return ref


def test_persona_counts_generated_tokens_only(lm, tmp_path):
    path = tmp_path / "answers.jsonl"
    stats = P.collect_persona(lm, _records(), max_new_tokens=4, batch_size=2, answers_path=path)
    assert stats.conditions == condition_names("stance")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert {(r["record_id"], r["condition"]) for r in rows} == {
        ("act-integrity-000-en", "integrity-support"), ("act-integrity-000-en", "integrity-conflict"),
        ("act-justice-001-en", "justice-support"), ("act-justice-001-en", "justice-conflict")}
    eos = set(lm.eos_ids)
    for r in rows:
        assert set(r) == {"record_id", "condition", "value_text", "prompt", "answer", "num_tokens", "answer_ids"}
        assert r["num_tokens"] == len(r["answer_ids"]) <= 4
        assert not eos & set(r["answer_ids"])  # EOS and what follows it are not part of the answer
        assert r["answer"] == lm.tokenizer.decode(r["answer_ids"], skip_special_tokens=True)
        rec = {x.id: x for x in _records()}[r["record_id"]]
        assert r["value_text"] == persona_value_texts(rec)[r["condition"].split("-")[1]]
        assert r["prompt"] == P.render_persona(rec, lm.tokenizer, r["condition"].split("-")[1])[0]
    by = {(r["record_id"], r["condition"]): r for r in rows}
    assert by[("act-integrity-000-en", "integrity-conflict")]["value_text"] == "wealth"
    assert by[("act-justice-001-en", "justice-conflict")]["value_text"] == "self"
    assert "wealth" in by[("act-integrity-000-en", "integrity-conflict")]["prompt"]
    for name in condition_names("stance"):
        want = sum(r["num_tokens"] for r in rows if r["condition"] == name)
        assert int(stats.tokens[stats.index(name)]) == want
    assert stats.meta["persona"]["skipped_records"] == ["act-harmony-002-en"]
    assert stats.meta["persona"]["generated"] == 4
    ref = _manual(lm, path)
    # counts exact; sums to float32 rounding (the manual forward runs unbatched, unpadded)
    np.testing.assert_array_equal(stats.tokens, ref.tokens)
    np.testing.assert_array_equal(stats.active, ref.active)
    np.testing.assert_allclose(stats.sum, ref.sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sumsq, ref.sumsq, rtol=1e-5, atol=1e-6)
    assert stats.meta["collect"]["tokens_counted"] == sum(r["num_tokens"] for r in rows)
    assert stats.meta["collect"]["tokens_real"] > stats.meta["collect"]["tokens_counted"]  # prompts ran, uncounted
    # the answers equal greedy generation with the repetition penalty, one prompt at a time
    r = by[("act-justice-001-en", "justice-support")]
    ids = lm.tokenizer(r["prompt"], add_special_tokens=True)["input_ids"]
    new = lm.generate(np.asarray([ids]), 4, repetition_penalty=1.1, return_text=False)[0]
    assert P._answer_ids(new, eos) == r["answer_ids"]


def test_persona_resume_reuses_answers(lm, tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    recs = _records()
    first = P.collect_persona(lm, recs[:1], max_new_tokens=4, answers_path=path)
    calls = []
    orig = type(lm).generate

    def counting(self, *a, **k):
        calls.append(len(a[0]))
        return orig(self, *a, **k)

    monkeypatch.setattr(type(lm), "generate", counting)
    again = P.collect_persona(lm, recs[:1], max_new_tokens=4, answers_path=path)
    assert calls == [] and again.equals(first) and again.meta["persona"]["reused"] == 2
    # an interrupted write (partial last line) is dropped; only the missing pairs are generated
    with open(path, "a") as f:
        f.write('{"record_id": "act-justice-001-en", "condi')
    full = P.collect_persona(lm, recs, max_new_tokens=4, answers_path=path)
    assert calls == [2] and full.meta["persona"]["generated"] == 2 and full.meta["persona"]["reused"] == 2
    assert len(path.read_text().splitlines()) == 4
    assert full.select(["integrity-support", "integrity-conflict"]).equals(
        first.select(["integrity-support", "integrity-conflict"]))


def test_persona_prompt_mismatch_and_values(lm, tmp_path):
    from jaxvalues.errors import ConfigError

    path = tmp_path / "answers.jsonl"
    P.collect_persona(lm, _records()[:1], max_new_tokens=2, answers_path=path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["prompt"] = "another prompt"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="another prompt"):
        P.collect_persona(lm, _records()[:1], max_new_tokens=2, answers_path=path)
    st = P.collect_persona(lm, _records(), values=["justice"], max_new_tokens=2)
    assert st.meta["persona"]["answers"] == 2
    assert int(st.tokens[st.index("integrity-support")]) == 0
    with pytest.raises(ConfigError, match="unknown value"):
        P.collect_persona(lm, _records(), values=["nope"], max_new_tokens=2)


def test_answer_ids_stop_at_first_eos():
    assert P._answer_ids([5, 6, 2, 7, 0], {2}) == [5, 6]
    assert P._answer_ids([5, 6, 7], {2}) == [5, 6, 7]
    assert P._answer_ids([2, 5], {2}) == []


def test_repetition_penalty_matches_transformers():
    import jax.numpy as jnp
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from jaxvalues.models.generate import _mark, _penalize

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 3
    seq = rng.integers(0, 50, size=(3, 12))
    want = RepetitionPenaltyLogitsProcessor(1.1)(torch.tensor(seq), torch.tensor(logits)).numpy()
    present = np.zeros((3, 50), bool)
    for i in range(3):
        present[i, seq[i]] = True
    got = np.asarray(_penalize(jnp.asarray(logits), jnp.asarray(present), jnp.float32(1.1)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    marked = np.asarray(_mark(jnp.zeros((3, 50), bool), jnp.asarray([1, 2, 3])))
    assert marked.sum() == 3 and marked[0, 1] and marked[2, 3]


def test_generate_repetition_penalty_matches_transformers_generate(lm, tmp_path):
    """Greedy decoding with repetition_penalty=1.3 equals transformers' generate on the same weights."""
    import torch
    import transformers

    ids = np.asarray([lm.tokenizer("I tell the truth and keep my promise", add_special_tokens=True)["input_ids"]])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(lm.source)).eval() if getattr(lm, "source", None) else None
    if hf is None:
        pytest.skip("model source unknown")
    with torch.no_grad():
        want = hf.generate(torch.tensor(ids), max_new_tokens=6, do_sample=False, repetition_penalty=1.3,
                           attention_mask=torch.ones_like(torch.tensor(ids)), pad_token_id=lm.pad_id,
                           eos_token_id=None).numpy()[0, ids.shape[1]:]
    got = lm.generate(ids, 6, repetition_penalty=1.3, stop_at_eos=False, return_text=False)[0]
    np.testing.assert_array_equal(got, want)


def test_cli_collect_persona(tmp_path, capsys):
    from jaxvalues.cli import main
    from jaxvalues.stats.checkpoint import load_stats
    from jaxvalues.testing import tiny_hf_model, word_tokenizer

    d = tmp_path / "m"
    tiny_hf_model("llama", d)
    word_tokenizer(["A", "B", ":", "."] + [f"w{i}" for i in range(140)]).save_pretrained(str(d))
    out = tmp_path / "stats"
    args = ["collect", "--model", str(d), "--dataset", "builtin", "--out", str(out), "--lang", "en",
            "--scheme", "persona", "--max-records", "2", "--max-new-tokens", "2", "--json"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    answers = tmp_path / "stats.answers.jsonl"  # default: beside the output directory
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(rows) == 4 and all(r["num_tokens"] <= 2 for r in rows)
    st = load_stats(out)
    assert int(st.tokens.sum()) == sum(r["num_tokens"] for r in rows) == sum(info["tokens"].values())
    assert st.meta["persona"]["generated"] == 4
    assert main(args) == 0  # rerun: every answer reused
    assert json.loads(capsys.readouterr().out)["meta"]["persona"]["reused"] == 4


def test_persona_eos_ends_the_answer(lm, tmp_path, monkeypatch):
    """Make a token the model generates act as EOS: the answers stop before it and the counts follow."""
    recs = _records()[:1]
    P.collect_persona(lm, recs, max_new_tokens=4, answers_path=tmp_path / "a.jsonl", repetition_penalty=1.0)
    rows = list(P.load_answers(tmp_path / "a.jsonl").values())
    row = max(rows, key=lambda r: r["num_tokens"])
    assert row["num_tokens"] >= 2
    stop = row["answer_ids"][1]
    monkeypatch.setattr(type(lm), "eos_ids", property(lambda self: (stop,)))
    st = P.collect_persona(lm, recs, max_new_tokens=4, answers_path=tmp_path / "b.jsonl", repetition_penalty=1.0)
    cut = {k: r for k, r in P.load_answers(tmp_path / "b.jsonl").items()}
    for key, r in P.load_answers(tmp_path / "a.jsonl").items():
        ids = r["answer_ids"]
        want = ids[:ids.index(stop)] if stop in ids else ids
        assert cut[key]["answer_ids"] == want
    assert cut[(row["record_id"], row["condition"])]["num_tokens"] == 1
    for name in st.conditions:
        assert int(st.tokens[st.index(name)]) == sum(r["num_tokens"] for r in cut.values() if r["condition"] == name)
