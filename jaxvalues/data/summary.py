"""Dataset summaries for `jaxvalues data stats`: counts and token-length distributions.

Conventions: counts are per value (authors' order), language, kind and conflict type (conflict
types are counted per value and language, since they are written in the record's language).
Token lengths are those of the text the model sees: `render_activation` for activation records and
`render_evaluation` (aligned first) for evaluation records, with the tokenizer's chat template
when it has one; distributions are per (kind, lang): n, min, p50, mean, p90, p99, max.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from jaxvalues.data.prompts import render_activation, render_evaluation
from jaxvalues.data.values import VALUE_IDS


def count_table(records) -> dict:
    """{"total", "by_kind", "by_lang", "by_value" {value: {kind/lang: n}}, "conflicts" {value: {lang: {type: n}}}}."""
    by_value = {vid: Counter() for vid in VALUE_IDS}
    conflicts: dict = {}
    for r in records:
        by_value[r.value][f"{r.kind}/{r.lang}"] += 1
        conflicts.setdefault(r.value, {}).setdefault(r.lang, Counter())[r.conflict] += 1
    return {
        "total": len(records),
        "by_kind": dict(Counter(r.kind for r in records)),
        "by_lang": dict(Counter(r.lang for r in records)),
        "by_value": {v: dict(sorted(c.items())) for v, c in by_value.items() if c},
        "conflicts": {v: {lang: dict(c.most_common()) for lang, c in d.items()} for v, d in conflicts.items()},
    }


def token_lengths(records, tokenizer) -> dict:
    """{"activation/zh": {"n", "min", "p50", "mean", "p90", "p99", "max"}, ...} in tokens."""
    groups: dict[str, list[int]] = {}
    for r in records:
        rendered = render_activation(r, tokenizer) if r.kind == "activation" else render_evaluation(r, tokenizer)
        n = len(tokenizer.encode(rendered.text, add_special_tokens=rendered.add_special_tokens))
        groups.setdefault(f"{r.kind}/{r.lang}", []).append(n)
    out = {}
    for key in sorted(groups):
        a = np.asarray(groups[key])
        out[key] = {"n": int(a.size), "min": int(a.min()), "p50": float(np.percentile(a, 50)),
                    "mean": round(float(a.mean()), 2), "p90": float(np.percentile(a, 90)),
                    "p99": float(np.percentile(a, 99)), "max": int(a.max())}  # fmt: skip
    return out


def summarize(records, tokenizer=None) -> dict:
    out = count_table(records)
    if tokenizer is not None:
        out["token_lengths"] = token_lengths(records, tokenizer)
    return out


def format_summary(s: dict) -> str:
    """Plain-text rendering of `summarize` output."""
    lines = [f"records: {s['total']}  kinds: {s['by_kind']}  languages: {s['by_lang']}", "", "per value:"]
    cols = sorted({k for c in s["by_value"].values() for k in c})
    lines.append(f"  {'value':<14}" + "".join(f"{c:>16}" for c in cols))
    for v, c in s["by_value"].items():
        lines.append(f"  {v:<14}" + "".join(f"{c.get(k, 0):>16}" for k in cols))
    lines += ["", "conflict types:"]
    for v, d in s["conflicts"].items():
        for lang, c in sorted(d.items()):
            lines.append(f"  {v} [{lang}] {len(c)} types: " + "; ".join(f"{t} ({n})" for t, n in c.items()))
    if "token_lengths" in s:
        lines += ["", "token lengths (rendered prompt/text):"]
        for key, d in s["token_lengths"].items():
            lines.append(f"  {key:<16} " + "  ".join(f"{k}={v}" for k, v in d.items()))
    return "\n".join(lines)
