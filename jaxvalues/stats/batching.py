"""Tokenized examples, token selection and length-bucketed batch plans for collection.

Conventions:
- A `TokenizedExample` is one sequence: `ids` [S] int32, `condition` (index into the condition
  names given to `collect`), optional `mask` [S] bool marking a segment (e.g. the rationale
  tokens), optional `content` [S] bool marking the record's own text, and an `id` for reports.
- Token selection (which tokens' activations are counted; padding never is):
  - "content" (the default of `collect_records` and `jaxvalues collect`): the tokens of the
    record's own text segments, i.e. for an activation record the story, the action and the
    rationale (`CONTENT_SEGMENTS` in jaxvalues.stats.records). Not counted: the chat template
    (BOS, role markers and other special tokens, any system prompt the template adds, the
    generation prompt), the field labels "Situation: ", "My choice: ", "Reason: " (zh "情境：",
    "我的选择：", "理由：") and the question "What would you do, and why?" ("你会怎么做？为什么？").
    A token counts when its characters overlap a segment's character span (the offset-mapping
    rule of `jaxvalues.data.prompts.token_masks`), so a token that merges a label's last
    character with the text's first is counted. Needs `content` masks (fast tokenizer).
  - "all": every token of the sequence, scaffolding included (identical across values: about a
    quarter of the tokens of an activation text).
  - "rationale" (alias "mask"): the tokens of the example's `mask`: for scheme "values" the
    rationale (`collect_records` refuses records without one), for scheme "stance" the answer
    (action + rationale); same overlap rule.
  - "last_k": the last k tokens of the sequence, whatever they are.
- Batches mix conditions: each row carries its own condition and reduces on device to its own
  [L, N] partial (never [C, L, N]); the host adds each row's partial to that row's condition.
  Examples are sorted by (bucket, length), so batches are full and rows similar in length; the
  sequence length of a batch is the smallest bucket size >= its longest row (default sizes
  32·2^k and 48·2^k: at most 1.5× padding, two compilations per octave); rows per batch =
  min(batch_size, max_tokens // bucket), and a last partial batch is filled with empty rows
  (count mask 0), so batch shapes come from a small fixed set. Rows are right-padded; padding
  never counts. `mixed=False` keeps one condition per batch (the earlier plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.stats.accumulator import MAX_BATCH_TOKENS

SELECTIONS = ("content", "all", "rationale", "mask", "last_k")
MASKED_SELECTIONS = ("content", "rationale", "mask")  # selections that need token masks (offset mapping)


@dataclass(frozen=True)
class TokenizedExample:
    ids: np.ndarray  # [S] int32
    condition: int
    mask: np.ndarray | None = None  # [S] bool segment mask (rationale tokens), None = none given
    id: str = ""
    content: np.ndarray | None = None  # [S] bool: the record's own text (not template/labels), None = none given

    def __len__(self):
        return int(len(self.ids))


def default_buckets(max_len: int) -> list[int]:
    out, base = [], 32
    while not out or out[-1] < max_len:
        out += [base, base * 3 // 2]
        base *= 2
    return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if b >= n:
            return int(b)
    raise ConfigError(f"a sequence of {n} tokens is longer than the largest bucket ({max(buckets)})")


def count_mask(ex: TokenizedExample, selection: str, k: int = 16) -> np.ndarray:
    """[S] bool: the tokens of `ex` whose activations are counted."""
    n = len(ex)
    if selection == "all":
        return np.ones(n, bool)
    if selection in MASKED_SELECTIONS:
        content = selection == "content"
        m = ex.content if content else ex.mask
        if m is None:
            what = "content mask (the record's own text)" if content else "token mask"
            raise JaxValuesError(f"token_selection={selection!r} needs a {what} per example; example "
                                 f"{ex.id or '?'} has none")
        m = np.asarray(m, bool)
        if m.shape != (n,):
            raise JaxValuesError(f"example {ex.id or '?'}: mask has shape {m.shape}, ids have ({n},)")
        return m
    if selection == "last_k":
        if k < 1:
            raise ConfigError(f"last_k needs k >= 1, got {k}")
        m = np.zeros(n, bool)
        m[max(0, n - k):] = True
        return m
    raise ConfigError(f"unknown token selection {selection!r}; expected one of {', '.join(SELECTIONS)}")


@dataclass(frozen=True)
class Batch:
    condition: int  # the condition of every row, or -1 when the batch mixes conditions
    indices: tuple[int, ...]  # example indices (len <= rows)
    rows: int  # batch dimension B (static)
    seq_len: int  # S (static)
    row_conditions: tuple[int, ...] = ()  # condition of each real row (same order as indices)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.seq_len)


def plan_batches(lengths: Sequence[int], conditions: Sequence[int], batch_size: int,
                 max_tokens: int = MAX_BATCH_TOKENS, buckets: Sequence[int] | None = None,
                 mixed: bool = True) -> list[Batch]:
    """Deterministic length-bucketed plan; see the module docstring."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    max_tokens = min(int(max_tokens), MAX_BATCH_TOKENS)
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) == 0:
        return []
    buckets = sorted(buckets or default_buckets(int(lengths.max())))
    if buckets[-1] > max_tokens and lengths.max() > max_tokens:
        raise ConfigError(f"a sequence of {int(lengths.max())} tokens exceeds max_tokens={max_tokens}")
    blen = np.array([bucket_length(int(n), buckets) for n in lengths])
    conditions = np.asarray(conditions)
    group = np.zeros(len(lengths), np.int64) if mixed else conditions
    order = np.lexsort((np.arange(len(lengths)), lengths, blen, group))
    batches: list[Batch] = []
    i = 0
    while i < len(order):
        g, s = int(group[order[i]]), int(blen[order[i]])
        rows = max(1, min(batch_size, max_tokens // s))
        j = i
        while j < len(order) and j - i < rows and int(group[order[j]]) == g and blen[order[j]] == s:
            j += 1
        idx = tuple(int(x) for x in order[i:j])
        conds = tuple(int(conditions[x]) for x in idx)
        batches.append(Batch(conds[0] if len(set(conds)) == 1 else -1, idx, rows, s, conds))
        i = j
    return batches


def assemble(batch: Batch, ids: Sequence[np.ndarray], counts: Sequence[np.ndarray], pad_id: int):
    """-> (ids [B, S] int32, attention [B, S] int32, count [B, S] int32), right-padded."""
    b, s = batch.shape
    out_ids = np.full((b, s), pad_id, np.int32)
    attn = np.zeros((b, s), np.int32)
    cnt = np.zeros((b, s), np.int32)
    for r, i in enumerate(batch.indices):
        n = len(ids[i])
        out_ids[r, :n] = ids[i]
        attn[r, :n] = 1
        cnt[r, :n] = counts[i]
    return out_ids, attn, cnt
