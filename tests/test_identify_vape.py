"""VAPE selection vs an independent NumPy transcription of LAPE's `activation()` (identify.py of
RUCAIBox/Language-Specific-Neurons, as described in PAPER.md), on random statistics."""

import numpy as np
import pytest

from jaxvalues.errors import ConfigError
from jaxvalues.identify.vape import lape_select, stance_neurons, stance_select, vape
from jaxvalues.stats.accumulator import NeuronStats


def lape_reference(over_zero, n, top_rate=0.01, filter_rate=0.95, activation_bar_ratio=0.95):
    """LAPE, transcribed: over_zero [layers, inter, langs] counts of act > 0, n [langs] tokens.
    Returns one list per language of (layer, neuron) pairs, sorted (LAPE's final_indice)."""
    num_layers, intermediate_size, lang_num = over_zero.shape
    activation_probs = over_zero / n  # layer x inter x lang_num
    with np.errstate(invalid="ignore", divide="ignore"):
        normed_activation_probs = activation_probs / activation_probs.sum(axis=-1, keepdims=True)
        normed_activation_probs[np.isnan(normed_activation_probs)] = 0
        log_probs = np.where(normed_activation_probs > 0, np.log(normed_activation_probs), 0)
    entropy = -np.sum(normed_activation_probs * log_probs, axis=-1)
    assert not np.isnan(entropy).any()
    flattened_probs = activation_probs.flatten()
    top_prob_value = np.sort(flattened_probs)[round(len(flattened_probs) * filter_rate) - 1]  # kthvalue
    # dismiss the neuron if no language has an activation value over the top
    top_position = (activation_probs > top_prob_value).sum(axis=-1)
    entropy[top_position == 0] = np.inf
    flattened_entropy = entropy.flatten()
    top_entropy_value = round(len(flattened_entropy) * top_rate)
    index = np.argsort(flattened_entropy, kind="stable")[:top_entropy_value]  # topk(largest=False)
    row_index = index // entropy.shape[1]
    col_index = index % entropy.shape[1]
    selected_probs = activation_probs[row_index, col_index].T  # lang x n
    activation_bar = np.sort(flattened_probs)[round(len(flattened_probs) * activation_bar_ratio) - 1]
    lang, indice = np.where(selected_probs > activation_bar)
    merged_index = np.stack((row_index, col_index), axis=-1)
    final = []
    for lg in range(lang_num):
        final.append(sorted(tuple(int(x) for x in merged_index[i]) for i in indice[lang == lg]))
    return final


def random_counts(rng, C=5, L=3, N=200, specific=40, shared=10, tokens=None):
    """Counts of act > 0 with value-specific neurons (one value boosted) and shared ones (two).
    `tokens`: a fixed small token count gives coarse probabilities with many ties, so the
    percentile rank and the strict comparisons matter."""
    n = rng.integers(2000, 6000, C) if tokens is None else np.full(C, tokens)
    base = rng.beta(2, 5, (L, N, 1)) * rng.uniform(0.7, 1.0, (L, N, C))
    flat = rng.choice(L * N, specific + shared, replace=False)
    for k, f in enumerate(flat):
        l, j = divmod(int(f), N)
        vals = rng.choice(C, 1 if k < specific else 2, replace=False)
        base[l, j] = rng.uniform(0.0, 0.05, C)
        base[l, j, vals] = rng.uniform(0.85, 0.99, len(vals))
    return np.floor(base * n).astype(np.int64), n


def _as_lists(res):
    return [sorted(tuple(int(x) for x in p) for p in res.selected[res.assignment[c]])
            for c in range(len(res.conditions))]


@pytest.mark.parametrize("seed,rates,tokens", [
    (0, {}, None), (1, dict(top_rate=0.05), None),
    (2, dict(top_rate=0.03, filter_rate=0.9, activation_bar_ratio=0.8), None),
    (7, dict(top_rate=0.05), 20), (8, dict(top_rate=0.05, filter_rate=0.8, activation_bar_ratio=0.85), 12)])
def test_matches_lape_transcription(seed, rates, tokens):
    rng = np.random.default_rng(seed)
    over_zero, n = random_counts(rng, tokens=tokens)
    ref = lape_reference(over_zero, n, **rates)
    res = lape_select(over_zero.transpose(2, 0, 1) / n[:, None, None], [f"v{i}" for i in range(5)], **rates)
    assert _as_lists(res) == ref
    assert res.shortfall == 0 and res.no_data == ()
    # same selected neurons, same lowest-entropy order
    assert len(res.selected) == round(over_zero.shape[0] * over_zero.shape[1] * rates.get("top_rate", 0.01))


def test_multi_value_assignment_and_stats_entry_point():
    rng = np.random.default_rng(5)
    over_zero, n = random_counts(rng, specific=0, shared=30)  # only two-value neurons stand out
    stats = NeuronStats.zeros([f"v{i}" for i in range(5)], 3, 200)
    stats.tokens[:] = n
    stats.active[:] = over_zero.transpose(2, 0, 1)
    res = vape(stats, top_rate=0.05)
    ref = lape_reference(over_zero, n, top_rate=0.05)
    assert _as_lists(res) == ref
    multi = res.assignment.sum(0)
    assert (multi >= 2).any()  # a neuron belongs to several values
    ns = res.to_neuronset()
    assert len(ns) == int(res.assignment.sum())
    assert set(ns.table["method"]) == {"vape"} and (ns.table["score"] <= 0).all()


def test_value_without_data_and_value_without_neurons():
    rng = np.random.default_rng(3)
    over_zero, n = random_counts(rng, C=4)
    # value 4: no data at all; value 1: probabilities equal to the mean of the others (never specific)
    over_zero = np.concatenate([over_zero, np.zeros_like(over_zero[..., :1])], axis=-1)
    probs = over_zero.transpose(2, 0, 1) / np.append(n, 1)[:, None, None]
    probs[4] = np.nan
    probs[1] = np.nanmean(probs[[0, 2, 3]], axis=0) * 0.5
    res = lape_select(probs, [f"v{i}" for i in range(5)], top_rate=0.05)
    assert res.no_data == ("v4",) and "v1" in res.empty
    assert not res.assignment[4].any() and np.isfinite(res.entropy[np.isfinite(res.entropy)]).all()
    # equals LAPE run on the values that have data
    keep = [0, 1, 2, 3]
    oz = np.round(probs[keep].transpose(1, 2, 0) * 10**6)
    ref = lape_reference(oz, np.full(4, 10**6), top_rate=0.05)
    assert _as_lists(res)[:4] == ref
    assert res.report()["no_data"] == ["v4"]
    # nothing has data: an empty result, no crash
    empty = lape_select(np.full((2, 3, 4), np.nan), ["a", "b"])
    assert len(empty.selected) == 0 and empty.no_data == ("a", "b")


def test_fewer_candidates_than_top_count():
    rng = np.random.default_rng(4)
    over_zero, n = random_counts(rng, specific=3, shared=0)
    res = lape_select(over_zero.transpose(2, 0, 1) / n[:, None, None], top_rate=0.5, filter_rate=0.999)
    assert 0 < len(res.selected) < round(3 * 200 * 0.5) and res.shortfall == round(3 * 200 * 0.5) - len(res.selected)
    assert np.isfinite(res.entropy[res.selected[:, 0], res.selected[:, 1]]).all()  # no +inf neuron kept
    with pytest.raises(ConfigError):
        lape_select(over_zero.transpose(2, 0, 1) / n[:, None, None], top_rate=1.5)


def test_stance_variant_decision_and_semantic():
    rng = np.random.default_rng(6)
    names = [f"{v}-{s}" for v in ("integrity", "justice") for s in ("support", "conflict")]
    stats = NeuronStats.zeros(names, 3, 200)
    counts = {}
    for v in range(2):
        oz, n = random_counts(rng, C=2, specific=20, shared=0)
        counts[v] = (oz, n)
        stats.tokens[2 * v:2 * v + 2] = n
        stats.active[2 * v:2 * v + 2] = oz.transpose(2, 0, 1)
    for kind, rates in (("decision", dict(filter_rate=0.95, activation_bar_ratio=0.95)),
                        ("semantic", dict(filter_rate=0.5, activation_bar_ratio=0.5))):
        for v, value in enumerate(("integrity", "justice")):
            res = stance_select(stats, value, kind)
            assert res.conditions == (f"{value}-support", f"{value}-conflict")
            assert _as_lists(res) == lape_reference(*counts[v], top_rate=0.01, **rates)
    ns, report = stance_neurons(stats)
    assert set(ns.table["method"]) <= {"vape-decision", "vape-semantic"}
    assert set(report) == {"integrity", "justice"} and set(report["justice"]) == {"decision", "semantic"}
    with pytest.raises(ConfigError):
        stance_select(stats, "integrity", "other")


def test_handmade_case_strict_thresholds_and_inf_filter():
    """20 probabilities; the 17th smallest (filter_rate 0.85) is 0.8. A neuron whose best p equals
    0.8 exactly is not a candidate (strict >), nor is a rare one-value neuron (entropy 0 but
    p = 0.1): the +inf filter keeps both out although their entropy is the lowest."""
    p = np.array([(0.9, 0.0), (0.0, 0.95), (0.8, 0.0), (0.85, 0.8), (0.1, 0.0),
                  (0.3, 0.3), (0.2, 0.25), (0.4, 0.35), (0.5, 0.45), (0.3, 0.2)]).T[:, None, :]  # [C=2, L=1, N=10]
    rates = dict(filter_rate=0.85, top_rate=0.3, activation_bar_ratio=0.85)
    res = lape_select(p, ["v0", "v1"], **rates)
    assert res.filter_value == res.bar_value == 0.8
    assert [tuple(x) for x in res.selected] == [(0, 0), (0, 1), (0, 3)]
    assert np.isinf(res.entropy[0, [2, 4]]).all()
    assert _as_lists(res) == [[(0, 0), (0, 3)], [(0, 1)]]  # n3: 0.85 > 0.8 for v0, 0.8 is not > 0.8 for v1
    assert _as_lists(res) == lape_reference(p.transpose(1, 2, 0) * 20, np.full(2, 20.0), **rates)
