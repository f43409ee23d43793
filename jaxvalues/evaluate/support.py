"""The authors' generation protocol: ask for support rates, decode greedily, parse, compare.

Conventions:
- Prompts: `jaxvalues.data.prompts.render_support` (zh or en by the record's language, chat
  template when the tokenizer has one), in the orders asked (default both: aligned_first puts
  the aligned action in option A; the authors used A = aligned only: orders=("aligned_first",)).
- Decoding: greedy, at most `max_new_tokens` (authors: 250) with the KV cache, through
  `LanguageModel.generate` with one intervention per sequence ((mult, add) [L, B, N]); batches
  have a fixed size and prompt lengths are bucketed, so conditions never recompile.
- Every reply is kept with its parse status (`support_parse.STATUSES`); support_aligned is the
  parsed support (percent) of the option holding the aligned action, NaN unless status "ok".
- Per dilemma (`support_table`): support_aligned = mean over its parsed orders; n_unparseable
  counts its orders that did not parse (any status but "ok"). shift (in `metrics`) = change in
  support_aligned vs the baseline condition, paired by dilemma.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.evaluate.batching import ConditionBank, bucket, flat_batches
from jaxvalues.evaluate.choice import ORDER_NAMES
from jaxvalues.evaluate.support_parse import parse_support
from jaxvalues.models.lm import pad_batch


@dataclass(frozen=True)
class SupportPrompts:
    input_ids: np.ndarray  # [P, S] int32, left-padded
    attention_mask: np.ndarray  # [P, S] int32
    dilemma: np.ndarray  # [P] index into meta
    order: np.ndarray  # [P] 0 aligned_first (aligned = A), 1 aligned_second (aligned = B)
    meta: list = field(default_factory=list)  # per dilemma: {record_id, pair_id, value, lang}

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)


def build_support_prompts(records, tokenizer, *, orders=ORDER_NAMES, chat: bool | None = None,
                          pad_id: int = 0, template_kwargs: dict | None = None) -> SupportPrompts:
    from jaxvalues.data.prompts import render_support

    if tokenizer is None:
        raise ConfigError("the generation protocol needs the model's tokenizer (the model has none)")
    seqs, dil, ords, meta = [], [], [], []
    for i, rec in enumerate(records):
        meta.append({"record_id": rec.id, "pair_id": rec.pair_id, "value": rec.value, "lang": rec.lang})
        for order in orders:
            r = render_support(rec, tokenizer, order, chat=chat, template_kwargs=template_kwargs)
            seqs.append(tokenizer(r.text, add_special_tokens=r.add_special_tokens)["input_ids"])
            dil.append(i)
            ords.append(ORDER_NAMES.index(order))
    if not seqs:
        raise JaxValuesError("no prompts to evaluate (empty dataset after filtering?)")
    ids, mask = pad_batch(seqs, pad_id, "left")
    return SupportPrompts(ids, mask, np.asarray(dil), np.asarray(ords), meta)


def _decode(tokenizer, row, eos: set) -> str:
    toks = []
    for t in row.tolist():
        if t in eos:
            break
        toks.append(t)
    return tokenizer.decode(toks, skip_special_tokens=True)


def generate_replies(lm, prompts: SupportPrompts, conditions: Sequence, max_new_tokens: int = 250,
                     batch_size: int = 8, seq_multiple: int = 32) -> list[list[str]]:
    """Greedy replies -> replies[c][p] for every condition c and prompt row p."""
    cfg = lm.config
    bank = ConditionBank(conditions, cfg.num_layers, cfg.num_neurons)
    out: list[list[str]] = [[""] * prompts.num_rows for _ in range(len(conditions))]
    eos = set(lm.eos_ids)
    for pi, ci, n in flat_batches(prompts.lengths, len(conditions), int(batch_size)):
        ids, mask = bucket(prompts.input_ids[pi], prompts.attention_mask[pi], seq_multiple)
        new = lm.generate(ids, max_new_tokens, intervention=bank.batch(ci), attention_mask=mask,
                          return_text=False)
        for k in range(n):
            out[ci[k]][pi[k]] = _decode(lm.tokenizer, np.asarray(new[k]), eos)
    return out


def reply_table(prompts: SupportPrompts, replies: list[list[str]], names: Sequence[str]):
    """One row per (condition, dilemma, order): reply, support_a, support_b, status, support_aligned."""
    import pandas as pd

    rows = []
    for c, name in enumerate(names):
        for p in range(prompts.num_rows):
            m = prompts.meta[prompts.dilemma[p]]
            order = int(prompts.order[p])
            parsed = parse_support(replies[c][p])
            aligned = parsed.for_label("A" if order == 0 else "B")
            rows.append({"condition": name, **m, "order": ORDER_NAMES[order], "reply": replies[c][p],
                         "support_a": parsed.a, "support_b": parsed.b, "status": parsed.status,
                         "support_aligned": np.nan if aligned is None else float(aligned)})
    return pd.DataFrame(rows)


def support_table(replies_df):
    """Per (condition, dilemma): support_aligned (mean over parsed orders), per-order values,
    n_orders, n_unparseable."""
    keys = ["condition", "record_id", "pair_id", "value", "lang"]
    df = replies_df.copy()
    df["_bad"] = (df["status"] != "ok").astype(int)
    g = df.groupby(keys, sort=False)
    out = g.agg(support_aligned=("support_aligned", "mean"), n_orders=("status", "size"),
                n_unparseable=("_bad", "sum")).reset_index()
    for order in ORDER_NAMES:
        sub = df[df["order"] == order].set_index(keys)["support_aligned"].rename(f"support_{order}")
        out = out.join(sub, on=keys)
    return out


def evaluate_support(lm, prompts: SupportPrompts, conditions: Mapping[str, object], *, max_new_tokens: int = 250,
                     batch_size: int = 8, seq_multiple: int = 32):
    """-> (per-dilemma table, per-reply table) for every named condition."""
    if not conditions:
        raise ConfigError("evaluate_support: no conditions given (use {'baseline': None})")
    names = list(conditions)
    replies = generate_replies(lm, prompts, [conditions[n] for n in names], max_new_tokens, batch_size, seq_multiple)
    per_reply = reply_table(prompts, replies, names)
    return support_table(per_reply), per_reply


def status_counts(replies_df) -> dict:
    """{condition: {status: count}} over every reply, all statuses listed (0 when absent)."""
    from jaxvalues.evaluate.support_parse import STATUSES

    out = {}
    for cond, g in replies_df.groupby("condition", sort=False):
        vc = g["status"].value_counts()
        out[cond] = {s: int(vc.get(s, 0)) for s in STATUSES}
    return out
