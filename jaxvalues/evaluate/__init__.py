"""Behaviour-shift evaluation: does switching value neurons off (or steering them) change choices?

Modules (each states its conventions in its docstring):
  choice.py        P(aligned) from the two option-label logits, both orders, batched conditions
  support.py       the authors' generation protocol (support rates), support_parse.py its parser
  metrics.py       per value × language summaries, paired deltas, flip rate, bootstrap CIs
  controls.py      intervention modes, random controls, size sweep, leakage matrix
  perplexity.py    neutral zh/en corpus perplexity (general-capability cost)
  batching.py      (condition, prompt) batches with per-sequence intervention arrays
  experiment.py    one run: conditions -> table + JSON summary; cli.py: `jaxvalues evaluate`
  sources.py       adapters from neuron-set / statistics files to plain maps and arrays

Typical use:
    prompts = build_choice_prompts(records, lm.tokenizer)
    table = evaluate_choice(lm, prompts, {"baseline": None, "zero": Intervention.zero(nmap)})
    summarize_choice(table)
"""

from __future__ import annotations

from jaxvalues._lazy import lazy_exports

# imported lazily: `jaxvalues --help` imports evaluate.cli and must not pay for jax
_LAZY = {
    "choice": ("ChoicePrompts", "ChoiceScorer", "build_choice_prompts", "choice_table", "evaluate_choice"),
    "controls": ("control_report", "diagonal_dominance", "leakage_matrix", "make_intervention", "random_like",
                 "random_steer_like", "steer_intervention", "top_fraction"),
    "metrics": ("bootstrap_ci", "summarize_choice", "summarize_support"),
    "perplexity": ("load_neutral_corpus", "perplexity_table", "summarize_perplexity"),
    "support": ("build_support_prompts", "evaluate_support"),
    "support_parse": ("parse_support",),
}
__getattr__, __all__ = lazy_exports(__name__, {name: f"jaxvalues.evaluate.{mod}" for mod, names in _LAZY.items()
                                                    for name in names})
