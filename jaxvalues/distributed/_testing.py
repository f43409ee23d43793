"""Test helpers: a tiny sweep workspace (random model, activation and evaluation records, spec) and
pre-tokenized examples, built offline (needs torch for the random model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VALUES = ("integrity", "justice", "harmony", "freedom")
WORDS = ("report", "manager", "error", "bonus", "neighbour", "music", "contest", "niece", "rubric", "calmly",
         "quiet", "louder", "judge", "truth", "promise", "friend", "rules", "fair", "share", "help")


def activation_records(per_value: int = 3, seed: int = 0):
    """`per_value` English activation records per value in VALUES, with random-word stories."""
    from jaxvalues.data.schema import ActivationRecord

    rng = np.random.default_rng(seed)
    out = []
    for v in VALUES:
        for j in range(per_value):
            pid = f"act-{v}-{j:03d}"
            words = lambda n: " ".join(rng.choice(WORDS, n))  # noqa: E731
            out.append(ActivationRecord(id=f"{pid}-en", lang="en", pair_id=pid, value=v, conflict=f"{v} vs self",
                                        story=f"{v} {words(int(rng.integers(4, 14)))}.",
                                        aligned_action=f"I {words(3)}.",
                                        rationale=f"{v} {words(int(rng.integers(3, 9)))}.",
                                        violating_action=f"I {words(3)}."))
    return out


def tiny_workspace(directory, family: str = "llama", seed: int = 0) -> dict:
    """model/ (random `family` model + word tokenizer covering every prompt), act.jsonl, eval.jsonl."""
    from jaxvalues.data.io import write_jsonl
    from jaxvalues.evaluate._testing import toy_records, toy_tokenizer
    from jaxvalues.testing import tiny_hf_model

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    acts = activation_records(seed=seed)
    write_jsonl(acts, d / "act.jsonl")
    write_jsonl(toy_records(), d / "eval.jsonl")
    tok = toy_tokenizer(toy_records(), extra_words=(*WORDS, *VALUES, "I", "vs", "self", "."))
    tiny_hf_model(family, d / "model", seed=seed, vocab_size=max(len(tok) + 8, 211))
    tok.save_pretrained(str(d / "model"))
    return {"dir": d, "model": str(d / "model"), "activation": str(d / "act.jsonl"),
            "evaluation": str(d / "eval.jsonl")}


def tiny_spec(ws: dict, **grid) -> dict:
    """A sweep spec (dict) over the workspace: one statistics shape, two values, 1 language."""
    g = {"values": ["integrity", "justice"], "methods": ["vape", "random"], "sizes": [0.05], "modes": ["zero", "mean"],
         "languages": ["en"], "seeds": [0, 1]}
    g.update(grid)
    return {"name": "tiny", "models": [ws["model"]],
            "data": {"activation": ws["activation"], "evaluation": ws["evaluation"], "max_evaluation_records": None},
            "statistics": {"scheme": "values", "token_selection": "all", "batch_size": 8, "buckets": [64],
                           "shard_size": 3},
            "selection": {"filter_rate": 0.5, "activation_bar_ratio": 0.5},
            "evaluation": {"batch_size": 4, "values": "all"},
            "grid": g, "workers": {"count": 2, "resources": {"num_cpus": 1, "threads": 1}}}


def tiny_examples(n: int = 40, conditions: int = 3, max_len: int = 32, vocab: int = 211, seed: int = 0):
    """`n` random TokenizedExamples of 3..max_len tokens over `conditions` conditions."""
    from jaxvalues.stats.batching import TokenizedExample

    rng = np.random.default_rng(seed)
    return [TokenizedExample(rng.integers(4, vocab, int(rng.integers(3, max_len + 1))).astype(np.int32),
                             i % conditions, None, f"ex{i}") for i in range(n)]
