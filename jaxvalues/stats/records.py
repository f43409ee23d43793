"""Activation records -> `TokenizedExample`s (via jaxvalues.data.prompts) and `collect_records`.

Condition schemes:
- "values": 12 conditions, the value ids in the authors' order (`jaxvalues.data.values`); each
  activation record is rendered with its aligned action + rationale; its segment mask is the
  rationale tokens. token_selection="rationale" therefore needs every record to have a
  rationale (records imported from the authors' activation workbook have none):
  `check_selection` raises naming the first record without one, before any tokenizing or model
  work; "content" and "all" work on such records (no rationale segment).
- "stance": 24 conditions "{value}-support" / "{value}-conflict" (the authors' later variant):
  the record rendered with the aligned action (+ rationale) and, when it has a violating
  action, with the violating action. The segment mask is the answer (action + rationale). The
  authors used the model's own generated answers; here the dataset's actions stand in for them.
Every condition is listed even without data (the statistics then report it as having no data).
Every example also carries a `content` mask: the tokens of the rendering's CONTENT_SEGMENTS (the
record's own story, action and rationale; not the chat template, the field labels or the
question), which token_selection="content" (the default) counts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.stats.batching import MASKED_SELECTIONS, TokenizedExample

SCHEMES = ("values", "stance")
CONTENT_SEGMENTS = ("story", "action", "rationale")  # the record's own text in an activation rendering


def condition_names(scheme: str = "values") -> tuple[str, ...]:
    from jaxvalues.data.values import VALUE_IDS

    if scheme == "values":
        return tuple(VALUE_IDS)
    if scheme == "stance":
        return tuple(f"{v}-{s}" for v in VALUE_IDS for s in ("support", "conflict"))
    raise ConfigError(f"unknown condition scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def interleave_by_value(records: Sequence, limit: int | None = None) -> list:
    """Round-robin over values (stable within a value), so `limit` keeps every value represented."""
    groups = defaultdict(list)
    for r in records:
        groups[r.value].append(r)
    out, queues = [], [list(g) for g in groups.values()]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out if limit is None else out[:limit]


def check_selection(records: Sequence, scheme: str = "values", token_selection: str = "content") -> None:
    """Raise `ConfigError` when `token_selection` cannot be applied to `records`: "rationale"
    (alias "mask") with scheme "values" counts only rationale tokens, so a record without a
    rationale would count nothing. (Scheme "stance" masks the answer, which always has the action.)"""
    if scheme != "values" or token_selection not in ("rationale", "mask"):
        return
    for rec in records:
        if getattr(rec, "kind", "activation") == "activation" and not getattr(rec, "rationale", None):
            raise ConfigError(f"record {rec.id!r} has no rationale: token_selection={token_selection!r} counts "
                              "rationale tokens and needs every record to have one; use 'content' or 'all'")


def _encode(rendered, tokenizer, segments: Sequence[str] | None):
    """-> (ids, mask of `segments`, content mask); both masks None when segments is None
    (no offset mapping needed). A token belongs to a segment when its characters overlap it."""
    if segments is None:
        ids = tokenizer(rendered.text, add_special_tokens=rendered.add_special_tokens)["input_ids"]
        return np.asarray(ids, np.int32), None, None
    from jaxvalues.data.prompts import token_masks

    enc = token_masks(rendered, tokenizer)

    def union(names):
        m = np.zeros(len(enc.input_ids), bool)
        for seg in names:
            if seg in enc.masks:
                m |= enc.masks[seg]
        return m

    return enc.input_ids, union(segments), union(CONTENT_SEGMENTS)


def examples_from_records(records: Sequence, tokenizer, scheme: str = "values", *, masks: bool = True,
                          chat: bool | None = None) -> tuple[list[TokenizedExample], tuple[str, ...]]:
    """Render and tokenize activation records. masks=False skips the offset mapping and leaves
    `mask` and `content` None (enough when the token selection is "all" or "last_k").
    Returns (examples, condition names)."""
    from jaxvalues.data.prompts import render_activation
    from jaxvalues.data.values import VALUE_IDS

    if tokenizer is None:
        raise ConfigError("collecting from records needs the model's tokenizer (this model has none); "
                          "pass pre-tokenized examples instead")
    names = condition_names(scheme)
    index = {n: i for i, n in enumerate(names)}
    out = []
    for rec in records:
        if getattr(rec, "kind", "activation") != "activation":
            continue
        if rec.value not in VALUE_IDS:
            raise JaxValuesError(f"record {rec.id!r}: unknown value {rec.value!r}")
        if scheme == "values":
            r = render_activation(rec, tokenizer, chat=chat, action="aligned")
            ids, m, content = _encode(r, tokenizer, ["rationale"] if masks else None)
            out.append(TokenizedExample(ids, index[rec.value], m, rec.id, content))
            continue
        for stance, action in (("support", "aligned"), ("conflict", "violating")):
            if action == "violating" and not getattr(rec, "violating_action", None):
                continue
            r = render_activation(rec, tokenizer, chat=chat, action=action)
            ids, m, content = _encode(r, tokenizer, ["action", "rationale"] if masks else None)
            out.append(TokenizedExample(ids, index[f"{rec.value}-{stance}"], m, f"{rec.id}:{stance}", content))
    if not out:
        raise JaxValuesError("no activation records to collect from (the dataset is empty after filtering?)")
    return out, names


def collect_records(lm, records: Sequence, *, scheme: str = "values", token_selection: str = "content", k: int = 16,
                    batch_size: int = 8, chat: bool | None = None, progress: bool = False, **kw):
    """`collect` over activation records rendered with the model's tokenizer. token_selection:
    "content" (default: story + action + rationale tokens, no template or labels), "all",
    "rationale", "last_k" (see jaxvalues.stats.batching)."""
    from jaxvalues.stats.collect import collect

    check_selection(records, scheme, token_selection)
    examples, names = examples_from_records(records, lm.tokenizer, scheme,
                                            masks=token_selection in MASKED_SELECTIONS, chat=chat)
    meta = {"scheme": scheme, "records": len(records)}
    return collect(lm, examples, names, token_selection=token_selection, k=k, batch_size=batch_size,
                   progress=progress, meta=meta, **kw)
