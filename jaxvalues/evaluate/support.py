"""The authors' generation protocol: ask for support rates, decode greedily, parse, compare.

Conventions:
- Prompts: `jaxvalues.data.prompts.render_support`: the authors' system and user texts verbatim
  for zh records (`jaxvalues.data.authors.SUPPORT_SYSTEM` / `SUPPORT_USER`), the marked English
  translation for en records; chat template when the tokenizer has one; in the orders asked
  (default both: aligned_first puts the aligned action in option A; the authors used A =
  aligned only: orders=("aligned_first",)).
- Budget (the authors' vLLM max_model_len): prompt + reply <= `max_model_len` tokens (default
  500). Each prompt's reply budget = min(max_new_tokens, max_model_len - prompt length); a
  prompt of max_model_len tokens or more is not generated: it is kept in `SupportPrompts.skipped`
  and its rows get status "skipped_too_long" (never silently truncated).
- Decoding: greedy, at most `max_new_tokens` (authors: 250) with the KV cache, through
  `LanguageModel.generate` with one intervention per sequence ((mult, add) [L, B, N]); batches
  have a fixed size and prompt lengths are bucketed, so conditions never recompile. Replies are
  cut to each prompt's budget after decoding (greedy decoding makes this equal to stopping).
- Every reply is kept with its parse status (`support_parse.STATUSES`, plus "skipped_too_long");
  support_aligned is the parsed support (percent) of the option holding the aligned action, NaN
  unless status "ok" (an "inconsistent" reply, rates not adding to 100 ± 5, is excluded).
- Per dilemma (`support_table`): a dilemma is scored only when EVERY requested order has status
  "ok"; then support_aligned = mean over its orders, else NaN and `incomplete` is True.
  n_unparseable counts its orders that did not parse (any status but "ok"). shift (in
  `metrics`) = change in support_aligned vs the baseline condition, paired by dilemma.
- Counts (`status_counts`): per condition, replies by status (every reply counted once); with
  dilemmas=True also "incomplete" and "scored" dilemma counts (`OUTCOMES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from jaxvalues.data.authors import MAX_MODEL_LEN  # the authors' vLLM max_model_len (500 tokens)
from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.evaluate.batching import ConditionBank, bucket, flat_batches
from jaxvalues.evaluate.choice import ORDER_NAMES
from jaxvalues.evaluate.support_parse import STATUSES, parse_support
from jaxvalues.models.lm import pad_batch

SKIPPED = "skipped_too_long"
REPLY_STATUSES = (*STATUSES, SKIPPED)
OUTCOMES = (*REPLY_STATUSES, "incomplete", "scored")


@dataclass(frozen=True)
class SupportPrompts:
    input_ids: np.ndarray  # [P, S] int32, left-padded
    attention_mask: np.ndarray  # [P, S] int32
    dilemma: np.ndarray  # [P] index into meta
    order: np.ndarray  # [P] 0 aligned_first (aligned = A), 1 aligned_second (aligned = B)
    meta: list = field(default_factory=list)  # per dilemma: {record_id, pair_id, value, lang}
    max_model_len: int | None = None  # prompt + reply token budget (None: no limit)
    skipped: list = field(default_factory=list)  # (dilemma, order, n_tokens) of prompts >= max_model_len

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)

    def budgets(self, max_new_tokens: int) -> np.ndarray:
        """[P] reply budget of each prompt: min(max_new_tokens, max_model_len - prompt length)."""
        n = np.full(self.num_rows, int(max_new_tokens))
        if self.max_model_len is None:
            return n
        return np.minimum(n, int(self.max_model_len) - self.lengths)


def build_support_prompts(records, tokenizer, *, orders=ORDER_NAMES, chat: bool | None = None,
                          pad_id: int = 0, template_kwargs: dict | None = None,
                          max_model_len: int | None = MAX_MODEL_LEN) -> SupportPrompts:
    """Tokenized support prompts; prompts of `max_model_len` tokens or more are skipped and
    listed in `.skipped` (their dilemma is then incomplete)."""
    from jaxvalues.data.prompts import render_support

    if tokenizer is None:
        raise ConfigError("the generation protocol needs the model's tokenizer (the model has none)")
    if max_model_len is not None and int(max_model_len) < 2:
        raise ConfigError(f"max_model_len must be at least 2 tokens (prompt + reply), got {max_model_len}")
    seqs, dil, ords, meta, skipped = [], [], [], [], []
    for i, rec in enumerate(records):
        meta.append({"record_id": rec.id, "pair_id": rec.pair_id, "value": rec.value, "lang": rec.lang})
        for order in orders:
            r = render_support(rec, tokenizer, order, chat=chat, template_kwargs=template_kwargs)
            ids = tokenizer(r.text, add_special_tokens=r.add_special_tokens)["input_ids"]
            if max_model_len is not None and len(ids) >= int(max_model_len):
                skipped.append((i, ORDER_NAMES.index(order), len(ids)))
                continue
            seqs.append(ids)
            dil.append(i)
            ords.append(ORDER_NAMES.index(order))
    if not meta:
        raise JaxValuesError("no prompts to evaluate (empty dataset after filtering?)")
    if not seqs:
        raise ConfigError(f"every support prompt ({len(skipped)}) has max_model_len={max_model_len} tokens or "
                          f"more (shortest: {min(n for _, _, n in skipped)}); raise max_model_len")
    ids, mask = pad_batch(seqs, pad_id, "left")
    return SupportPrompts(ids, mask, np.asarray(dil), np.asarray(ords), meta,
                          None if max_model_len is None else int(max_model_len), skipped)


def _decode(tokenizer, row, eos: set, budget: int | None = None) -> str:
    toks = []
    for t in row.tolist()[:budget]:
        if t in eos:
            break
        toks.append(t)
    return tokenizer.decode(toks, skip_special_tokens=True)


def generate_replies(lm, prompts: SupportPrompts, conditions: Sequence, max_new_tokens: int = 250,
                     batch_size: int = 8, seq_multiple: int = 32, rows=None, on_batch=None) -> list[list]:
    """Greedy replies -> replies[c][p] for every condition c and prompt row p (None where the
    optional bool [C, P] `rows` mask leaves the pair out). on_batch(): called after each batch."""
    cfg = lm.config
    bank = ConditionBank(conditions, cfg.num_layers, cfg.num_neurons)
    out: list[list] = [[None if rows is not None else ""] * prompts.num_rows for _ in range(len(conditions))]
    eos = set(lm.eos_ids)
    budgets = prompts.budgets(max_new_tokens)
    for pi, ci, n in flat_batches(prompts.lengths, len(conditions), int(batch_size), rows):
        ids, mask = bucket(prompts.input_ids[pi], prompts.attention_mask[pi], seq_multiple)
        new = lm.generate(ids, max_new_tokens, intervention=bank.batch(ci), attention_mask=mask,
                          return_text=False)
        for k in range(n):
            out[ci[k]][pi[k]] = _decode(lm.tokenizer, np.asarray(new[k]), eos, int(budgets[pi[k]]))
        if on_batch is not None:
            on_batch()
    return out


def num_generate_batches(prompts: SupportPrompts, num_conditions: int, batch_size: int, rows=None) -> int:
    """How many batches `generate_replies` runs (for a progress bar)."""
    from jaxvalues.evaluate.batching import num_batches

    pairs = num_conditions * prompts.num_rows if rows is None else int(np.asarray(rows, bool).sum())
    return num_batches(pairs, int(batch_size))


def reply_table(prompts: SupportPrompts, replies: list[list[str]], names: Sequence[str], rows=None):
    """One row per (condition, dilemma, order), skipped prompts included (status
    "skipped_too_long", empty reply): reply, support_a, support_b, status, support_aligned.
    rows: the optional bool [C, P] scope mask of `generate_replies` (pairs outside it are left
    out; a skipped prompt is listed for the conditions whose scope holds its dilemma)."""
    import pandas as pd

    scoped = None
    if rows is not None:
        rows = np.asarray(rows, bool)
        values = np.array([m["value"] for m in prompts.meta])
        scoped = [set(values[prompts.dilemma[rows[c]]]) for c in range(len(names))]
    out_rows = []
    for c, name in enumerate(names):
        for p in range(prompts.num_rows):
            if rows is not None and not rows[c, p]:
                continue
            m = prompts.meta[prompts.dilemma[p]]
            order = int(prompts.order[p])
            parsed = parse_support(replies[c][p])
            aligned = parsed.for_label("A" if order == 0 else "B")
            out_rows.append({"condition": name, **m, "order": ORDER_NAMES[order], "reply": replies[c][p],
                             "support_a": parsed.a, "support_b": parsed.b, "status": parsed.status,
                             "support_aligned": np.nan if aligned is None else float(aligned)})
        for d, order, _n in prompts.skipped:
            if scoped is not None and prompts.meta[d]["value"] not in scoped[c]:
                continue
            out_rows.append({"condition": name, **prompts.meta[d], "order": ORDER_NAMES[order], "reply": "",
                             "support_a": None, "support_b": None, "status": SKIPPED, "support_aligned": np.nan})
    return pd.DataFrame(out_rows)


def support_table(replies_df):
    """Per (condition, dilemma): support_aligned (mean over its orders when every order is "ok",
    else NaN), per-order values, n_orders, n_unparseable, incomplete."""
    keys = ["condition", "record_id", "pair_id", "value", "lang"]
    df = replies_df.copy()
    df["_bad"] = (df["status"] != "ok").astype(int)
    g = df.groupby(keys, sort=False)
    out = g.agg(support_aligned=("support_aligned", "mean"), n_orders=("status", "size"),
                n_unparseable=("_bad", "sum")).reset_index()
    out["incomplete"] = out["n_unparseable"] > 0
    out.loc[out["incomplete"], "support_aligned"] = np.nan
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


def status_counts(replies_df, *, dilemmas: bool = False) -> dict:
    """{condition: {status: count}} over every reply, every reply status listed (0 when absent):
    ok, inconsistent, partial, out_of_range, unparseable, skipped_too_long. With dilemmas=True
    each condition also gets "incomplete" (dilemmas with an order not "ok": support NaN) and
    "scored" (dilemmas with every order "ok"); these count dilemmas, not replies."""
    out = {}
    for cond, g in replies_df.groupby("condition", sort=False):
        vc = g["status"].value_counts()
        out[cond] = {s: int(vc.get(s, 0)) for s in REPLY_STATUSES}
        if dilemmas:
            bad = (g["status"] != "ok").groupby([g["record_id"], g["pair_id"]], sort=False).any()
            out[cond]["incomplete"] = int(bad.sum())
            out[cond]["scored"] = int((~bad).sum())
    return out
