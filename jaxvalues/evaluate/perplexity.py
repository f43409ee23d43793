"""General-capability cost: perplexity of neutral zh and en text with and without an intervention.

Conventions:
- The shipped corpus `neutral_corpus.jsonl` (in this package): 40 short original paragraphs per
  language (weather, cooking, geography, how-to, science, daily life), one JSON object a line:
  {"id", "lang", "topic", "text"}. Written for jaxvalues; free of value-laden dilemmas.
- A text is encoded with the tokenizer's special tokens (BOS where the model uses one),
  truncated to `max_length` tokens, left-padded. Every token after the first is predicted from
  its prefix; nll = −Σ log p(token | prefix) in float32 (full-vocabulary log-softmax).
- Perplexity of a group = exp(Σ nll / Σ predicted tokens) (token-weighted, not a mean of
  per-text perplexities). Conditions are batched per sequence like the choice protocol.
"""

from __future__ import annotations

import importlib.resources
import json
import weakref
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.errors import ConfigError, DataError, JaxValuesError
from jaxvalues.evaluate.batching import ConditionBank, bucket, flat_batches
from jaxvalues.models.decoder import lm_apply, lm_logits
from jaxvalues.models.lm import pad_batch

CORPUS_FILE = "neutral_corpus.jsonl"


def load_neutral_corpus(lang: str | None = None, path: str | Path | None = None) -> list[dict]:
    """Corpus entries ({id, lang, topic, text}), optionally one language only."""
    if path is None:
        text = importlib.resources.files("jaxvalues.evaluate").joinpath(CORPUS_FILE).read_text(encoding="utf-8")
        where = CORPUS_FILE
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"{where}: cannot read the corpus ({e.strerror})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} line {i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("lang") not in ("zh", "en"):
            raise DataError(f"{where} line {i}: expected an object with 'text' (string) and 'lang' ('zh' or 'en')")
        row.setdefault("id", f"line-{i}")
        if lang is None or row["lang"] == lang:
            out.append(row)
    return out


def _nll(graphdef, state, ids, mask, mult, add):
    """-> (nll sum [B], predicted-token count [B]) over next-token predictions inside the mask."""
    hidden, _, _ = lm_apply(graphdef, state, ids, mask, mult, add)
    logp = jax.nn.log_softmax(lm_logits(graphdef, state, hidden[:, :-1]), axis=-1)  # [B, S-1, V]
    tgt = ids[:, 1:]
    tok = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    return -jnp.sum(jnp.where(valid, tok, 0.0), axis=1), jnp.sum(valid, axis=1)


_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _program(lm):
    fn = _PROGRAMS.get(lm)
    if fn is None:
        fn = _PROGRAMS[lm] = jax.jit(partial(_nll, lm.graphdef))
    return fn


def encode_texts(lm, texts: Sequence[str], max_length: int = 512):
    if lm.tokenizer is None:
        raise ConfigError("perplexity needs the model's tokenizer (the model has none)")
    seqs = [lm.tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    return pad_batch(seqs, lm.pad_id, "left")


def text_nll(lm, ids: np.ndarray, mask: np.ndarray, conditions: Sequence, batch_size: int = 8,
             seq_multiple: int = 32):
    """-> (nll [C, T] float64, tokens [C, T] int64) for left-padded ids/mask [T, S]."""
    cfg = lm.config
    bank = ConditionBank(conditions, cfg.num_layers, cfg.num_neurons)
    fn = _program(lm)
    nll = np.zeros((len(conditions), ids.shape[0]))
    cnt = np.zeros((len(conditions), ids.shape[0]), np.int64)
    for pi, ci, n in flat_batches(mask.sum(1), len(conditions), batch_size):
        b_ids, b_mask = bucket(ids[pi], mask[pi], seq_multiple)
        mult, add = bank.batch(ci)
        s, k = fn(lm.state, jnp.asarray(b_ids), jnp.asarray(b_mask), jnp.asarray(mult), jnp.asarray(add))
        nll[ci[:n], pi[:n]] = np.asarray(s)[:n]
        cnt[ci[:n], pi[:n]] = np.asarray(k)[:n]
    return nll, cnt


def perplexity_table(lm, conditions: Mapping[str, object], corpus: list[dict] | None = None, *,
                     batch_size: int = 8, seq_multiple: int = 32, max_length: int = 512):
    """Per (condition, text): nll, tokens, ppl. corpus: entries with 'text' and 'lang' (default: shipped)."""
    import pandas as pd

    if not conditions:
        raise ConfigError("perplexity: no conditions given (use {'baseline': None})")
    corpus = load_neutral_corpus() if corpus is None else corpus
    if not corpus:
        raise JaxValuesError("perplexity: the corpus is empty")
    ids, mask = encode_texts(lm, [c["text"] for c in corpus], max_length)
    names = list(conditions)
    nll, cnt = text_nll(lm, ids, mask, [conditions[n] for n in names], batch_size, seq_multiple)
    rows = []
    for c, name in enumerate(names):
        for t, entry in enumerate(corpus):
            rows.append({"condition": name, "id": entry.get("id", str(t)), "lang": entry["lang"],
                         "nll": float(nll[c, t]), "tokens": int(cnt[c, t]),
                         "ppl": float(np.exp(nll[c, t] / max(cnt[c, t], 1)))})
    return pd.DataFrame(rows)


def summarize_perplexity(table, baseline: str = "baseline") -> dict:
    """{condition: {lang | "all": {"ppl", "tokens", "ratio_to_baseline"}}} (token-weighted)."""
    out: dict = {}
    for cond, g in table.groupby("condition", sort=False):
        per = {}
        for lang, h in list(g.groupby("lang", sort=True)) + [("all", g)]:
            tok = int(h["tokens"].sum())
            per[lang] = {"ppl": float(np.exp(h["nll"].sum() / max(tok, 1))), "tokens": tok}
        out[cond] = per
    if baseline in out:
        for cond, per in out.items():
            for lang, d in per.items():
                base = out[baseline].get(lang, {}).get("ppl")
                d["ratio_to_baseline"] = d["ppl"] / base if base else float("nan")
    return out
