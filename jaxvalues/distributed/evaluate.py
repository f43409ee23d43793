"""One sweep condition on a loaded model: select neurons, intervene, score the choice protocol.

Pure jaxvalues (no Ray): `ModelWorker.run_condition` calls `run_condition` in a Ray actor or in
this process, so both paths give the same rows.

Per condition (see spec.py for methods and modes):
  1. neurons = the method's selection for the value at `size` from the model's statistics
     (`jaxvalues.identify.vape` / `stance_select` / `contrast`; "random" = a control draw of the
     vape selection with the condition's seed, `selection.control_kind`: "rate_matched" (layer +
     firing-rate decile, the default) or "layer" (per-layer counts only));
  2. intervention = `jaxvalues.evaluate.controls.make_intervention(neurons, mode, ...)`
     ("mean" uses the pooled per-neuron means of the statistics);
  3. `evaluate_choice` on the evaluation dilemmas of the condition's language (the value's own,
     or all values with evaluation.values: all), alone (batch composition never depends on other
     conditions), and the same for the model without intervention (cached per worker).

Rows (one per evaluated dilemma): condition_id, model, value, method, size, mode, lang, seed,
num_neurons, record_id, pair_id, eval_value, p_aligned, p_aligned_baseline, delta_p,
chose_aligned, chose_aligned_baseline, flipped, position_bias, position_bias_baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jaxvalues.errors import JaxValuesError

ROW_COLUMNS = ("condition_id", "model", "value", "method", "size", "mode", "lang", "seed", "num_neurons",
               "record_id", "pair_id", "eval_value", "p_aligned", "p_aligned_baseline", "delta_p", "chose_aligned",
               "chose_aligned_baseline", "flipped", "position_bias", "position_bias_baseline")


@dataclass
class SweepContext:
    """What every condition of one model needs besides the model (shipped once per model)."""

    key: str  # changes whenever anything below changes (statistics key + settings)
    stats: object  # NeuronStats of the model
    records: list  # evaluation records
    settings: dict = field(default_factory=dict)  # SweepSpec.settings()


def _cached(cache: dict, key, fn):
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def select(stats, cond: dict, settings: dict, cache: dict | None = None) -> tuple[dict, dict | None]:
    """-> (target neuron map, conflict map or None) of a condition (see module docstring)."""
    from jaxvalues.evaluate.controls import normalize_map, random_like, random_steer_like
    from jaxvalues.identify.contrast import contrast
    from jaxvalues.identify.vape import stance_select, vape

    cache = {} if cache is None else cache
    sel, scheme = settings["selection"], settings["statistics"]["scheme"]
    value, size, method = cond["value"], float(cond["size"]), cond["method"]
    rates = dict(top_rate=size, filter_rate=sel["filter_rate"], activation_bar_ratio=sel["activation_bar_ratio"])
    n = stats.num_neurons

    def vape_sets():
        if scheme == "stance":
            res = _cached(cache, ("stance", value, size), lambda: stance_select(stats, value, **rates))
            return res.neurons(f"{value}-support"), res.neurons(f"{value}-conflict")
        res = _cached(cache, ("vape", size), lambda: vape(stats, **rates))
        if value not in res.conditions:
            raise JaxValuesError(f"value {value!r} is not a condition of the statistics ({', '.join(res.conditions)})")
        return res.neurons(value), None

    if method == "vape":
        support, conflict = vape_sets()
    elif method == "contrast":
        ns, _ = _cached(cache, ("contrast", value, size),
                        lambda: contrast(stats, sel["contrast_metric"], values=[value], top_rate=size))
        support, conflict = (ns.neurons(value) if value in ns.values else {}), None
    elif method == "random":
        support, conflict = vape_sets()
        if cond["mode"] == "steer":
            support, conflict = random_steer_like(support, conflict, n, 1, cond["seed"])[0]
        else:
            from jaxvalues.evaluate.controls import draw_controls, firing_rates

            kind = sel.get("control_kind", "rate_matched")
            rates = _cached(cache, ("rates",), lambda: firing_rates(stats)) if kind == "rate_matched" else None
            support, conflict = draw_controls(support, n, 1, cond["seed"], kind, rates)[0], None
    else:
        raise JaxValuesError(f"unknown selection method {method!r}")
    return normalize_map(support), (normalize_map(conflict) if conflict is not None else None)


def intervention(stats, cond: dict, settings: dict, cache: dict | None = None):
    """-> (Intervention, number of neurons intervened on)."""
    from jaxvalues.evaluate.controls import make_intervention, pooled_means, total

    target, conflict = select(stats, cond, settings, cache)
    ev = settings["evaluation"]
    mode = cond["mode"]
    means = None
    if mode == "mean":
        means = _cached(cache if cache is not None else {}, ("means",), lambda: pooled_means(stats))
    iv = make_intervention(target, mode, gamma=ev["gamma"], means=means, conflict=conflict, gain=ev["gain"])
    count = total(target) + (total(conflict) if mode == "steer" and conflict else 0)
    return iv, count


def run_condition(lm, ctx: SweepContext, cond: dict, cache: dict):
    """Rows of one condition (see module docstring) as a pandas DataFrame."""
    import pandas as pd

    from jaxvalues.evaluate.choice import ChoiceScorer, build_choice_prompts, evaluate_choice

    ev = ctx.settings["evaluation"]
    scope = cond["value"] if ev["values"] == "target" else "all"
    local = cache.setdefault(ctx.key, {})
    scorer = _cached(cache, ("scorer", ev["batch_size"], ev["seq_multiple"]),
                     lambda: ChoiceScorer(lm, ev["batch_size"], ev["seq_multiple"]))

    def prompts():
        recs = [r for r in ctx.records if r.lang == cond["lang"] and (scope == "all" or r.value == scope)]
        if not recs:
            raise JaxValuesError(f"no evaluation records for lang={cond['lang']} value={scope}")
        return build_choice_prompts(recs, lm.tokenizer)

    pr = _cached(local, ("prompts", cond["lang"], scope), prompts)
    base = _cached(local, ("baseline", cond["lang"], scope),
                   lambda: evaluate_choice(lm, pr, {"baseline": None}, scorer=scorer))
    iv, count = intervention(ctx.stats, cond, ctx.settings, local.setdefault("selection", {}))
    tab = evaluate_choice(lm, pr, {cond["id"]: iv}, scorer=scorer)
    if list(tab["record_id"]) != list(base["record_id"]):
        raise JaxValuesError("internal: baseline and condition rows differ")  # pragma: no cover
    n = len(tab)
    seed = cond.get("seed")
    out = pd.DataFrame({
        "condition_id": [cond["id"]] * n, "model": [cond["model"]] * n, "value": [cond["value"]] * n,
        "method": [cond["method"]] * n, "size": np.full(n, float(cond["size"])), "mode": [cond["mode"]] * n,
        "lang": [cond["lang"]] * n, "seed": pd.array([seed] * n, dtype="Int64"),
        "num_neurons": np.full(n, int(count), np.int64),
        "record_id": tab["record_id"].to_numpy(), "pair_id": tab["pair_id"].to_numpy(),
        "eval_value": tab["value"].to_numpy(),
        "p_aligned": tab["p_aligned"].to_numpy(np.float64),
        "p_aligned_baseline": base["p_aligned"].to_numpy(np.float64),
        "chose_aligned": tab["chose_aligned"].to_numpy(bool),
        "chose_aligned_baseline": base["chose_aligned"].to_numpy(bool),
        "position_bias": tab["position_bias"].to_numpy(np.float64),
        "position_bias_baseline": base["position_bias"].to_numpy(np.float64),
    })
    out["delta_p"] = out["p_aligned"] - out["p_aligned_baseline"]
    out["flipped"] = out["chose_aligned"] != out["chose_aligned_baseline"]
    return out[list(ROW_COLUMNS)]
