"""Activation statistics: exact accumulators and streaming collection (reduced inside jit).

    from jaxvalues.stats import collect, collect_records, NeuronStats, save_stats, load_stats
    stats = collect_records(lm, records, scheme="values")  # token_selection="content" (default)
    stats.probs()   # [C, L, N] float64 = P(act > 0) per condition

token_selection: "content" (default) counts the record's own text (story, action, rationale) and
not the chat template, field labels or question; "all" every token; "rationale" the rationale
(every record needs one; scheme "stance": the answer); "last_k" the last k tokens
(jaxvalues.stats.batching).

Names are imported lazily so that `jaxvalues --help` (which imports `jaxvalues.stats.cli`)
does not import JAX.
"""

from __future__ import annotations

from jaxvalues._lazy import lazy_exports

_LAZY = {
    "NeuronStats": "jaxvalues.stats.accumulator",
    "Partial": "jaxvalues.stats.accumulator",
    "merge_all": "jaxvalues.stats.accumulator",
    "reduce_acts": "jaxvalues.stats.accumulator",
    "TokenizedExample": "jaxvalues.stats.batching",
    "plan_batches": "jaxvalues.stats.batching",
    "collect": "jaxvalues.stats.collect",
    "collect_records": "jaxvalues.stats.records",
    "examples_from_records": "jaxvalues.stats.records",
    "condition_names": "jaxvalues.stats.records",
    "save_stats": "jaxvalues.stats.checkpoint",
    "load_stats": "jaxvalues.stats.checkpoint",
}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
