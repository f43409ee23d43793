"""Gradient attribution of the value-aligned choice to FFN neurons (attribution patching, IG).

Behavioural score of a row (an evaluation prompt ending at the answer cue): the log-odds of the
aligned option label against the other label at the row's last real token,
    s = logit[aligned] − logit[other]   (= log P(aligned)/P(other) over the two labels).
Inputs are generic: ids / attention mask [P, S] (left- or right-padded), labels [P, 2] = (aligned
label token, other label token), groups [P] (the value of each row). The intervention arrays are
per row, mult [L, B, N], so one gradient gives every row's attribution.

- Attribution patching: A[l, n] = ∂s/∂mult[l, n] at mult = 1 = Σ_t act_t · ∂s/∂act_t, the
  first-order estimate of s(clean) − s(neuron zeroed). Positive = the neuron supports the
  aligned choice.
- Integrated gradients along zero → actual activation: mult = α on one layer (path "layer",
  knowledge-neurons style; completeness per layer: Σ_n IG[l, n] = s − s(layer l zeroed)) or on
  every layer at once (path "all"), midpoint rule with `steps` points.
Per group (value), row attributions are averaged over that value's rows (both option orders of
each dilemma when built from records), so [P, L, N] is never held.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.identify.neuronset import NeuronSet
from jaxvalues.models.decoder import lm_apply, lm_logits


def choice_logodds(graphdef, state, ids, mask, mult, add, labels):
    """[B] log-odds of labels[:, 0] against labels[:, 1] at each row's last real token."""
    hidden, _, _ = lm_apply(graphdef, state, ids, mask, mult, add)
    s = ids.shape[1]
    last = s - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
    b = ids.shape[0]
    lg = lm_logits(graphdef, state, h, rows=labels.reshape(-1))  # [B, 2B]
    r = jnp.arange(b)
    return lg[r, 2 * r] - lg[r, 2 * r + 1]


def _grad(graphdef, L, n, state, ids, mask, labels, weight, layer, alpha):
    """layer −2: attribution patching (mult = 1); −1: all layers × alpha; l >= 0: layer l × alpha.
    -> (scores [B] at that point, d(Σ weight·s)/d mult [L, B, N])."""
    b = ids.shape[0]
    li = jnp.arange(L)[:, None, None]
    scaled = jnp.where((layer == -1) | (li == layer), alpha, 1.0)
    mult = jnp.broadcast_to(jnp.where(layer == -2, 1.0, scaled), (L, b, n)).astype(jnp.float32)
    add = jnp.zeros((L, b, n), jnp.float32)

    def f(m):
        s = choice_logodds(graphdef, state, ids, mask, m, add, labels)
        return jnp.sum(s * weight), s

    (_, s), g = jax.value_and_grad(f, has_aux=True)(mult)
    return s, g


_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _program(lm):
    fn = _PROGRAMS.get(lm)
    if fn is None:
        cfg = lm.config
        fn = _PROGRAMS[lm] = jax.jit(partial(_grad, lm.graphdef, cfg.num_layers, cfg.num_neurons))
    return fn


def _window(ids: np.ndarray, mask: np.ndarray, multiple: int):
    """Cut [B, S] to the columns holding real tokens, width rounded up to `multiple` (pads if needed)."""
    cols = np.flatnonzero(mask.any(0))
    if cols.size == 0:
        return ids[:, :multiple], mask[:, :multiple]
    first, last = int(cols[0]), int(cols[-1]) + 1
    width = max(multiple, -(-(last - first) // multiple) * multiple)
    start = last - width
    if start < 0:
        ids = np.pad(ids, ((0, 0), (-start, 0)))
        mask = np.pad(mask, ((0, 0), (-start, 0)))
        last, start = last - start, 0
    return ids[:, start:last], mask[:, start:last]


@dataclass
class AttributionResult:
    groups: tuple[str, ...]
    scores: np.ndarray  # [G, L, N] float64 mean attribution per group
    counts: np.ndarray  # [G] rows per group
    logodds: np.ndarray  # [P] clean log-odds of each row
    method: str
    params: dict = field(default_factory=dict)
    rows: np.ndarray | None = None  # [P, L, N] float32 when return_rows=True

    def to_neuronset(self, top_rate: float | None = 0.01, top_k: int | None = None,
                     min_ratio: float | None = None, direction: str = "positive") -> NeuronSet:
        """Top neurons per group; "positive": neurons supporting the aligned choice (score > 0);
        "negative": neurons opposing it (score < 0, ranked by magnitude). top_k, when given,
        replaces top_rate; min_ratio keeps scores >= ratio × the best (knowledge neurons: 0.2)."""
        if direction not in ("positive", "negative"):
            raise ConfigError(f"direction must be 'positive' or 'negative', got {direction!r}")
        sets = []
        for g, name in enumerate(self.groups):
            if self.counts[g] == 0:
                continue
            s = self.scores[g] if direction == "positive" else -self.scores[g]
            ns = NeuronSet.from_scores(name, np.where(s > 0, s, -np.inf), self.method, top_k=top_k,
                                       top_rate=None if top_k else top_rate, min_ratio=min_ratio)
            ns.table["score"] = self.scores[g][ns.table["layer"].to_numpy(), ns.table["neuron"].to_numpy()]
            sets.append(ns)
        out = NeuronSet.concat(sets, info={"method": self.method, **self.params, "direction": direction})
        out.num_layers, out.num_neurons = self.scores.shape[1:]
        return out


def attribute(lm, input_ids, attention_mask, labels, groups=None, group_names: Sequence[str] | None = None, *,
              method: str = "patching", steps: int = 16, path: str = "layer", layers: Sequence[int] | None = None,
              batch_size: int = 8, multiple: int = 32, return_rows: bool = False) -> AttributionResult:
    """Attribution of the choice log-odds to every neuron, averaged per group (module docstring).

    input_ids / attention_mask [P, S]; labels [P, 2] (aligned, other) token ids; groups [P] ints
    (default: one group) named by `group_names`. method "patching" | "ig"; for IG, `path`
    "layer" | "all" and optional `layers` (others left 0)."""
    if method not in ("patching", "ig"):
        raise ConfigError(f"unknown attribution method {method!r}; expected 'patching' or 'ig'")
    if path not in ("layer", "all"):
        raise ConfigError(f"unknown IG path {path!r}; expected 'layer' or 'all'")
    ids = np.asarray(input_ids, np.int32)
    mask = np.asarray(attention_mask, np.int32)
    labels = np.asarray(labels, np.int32).reshape(-1, 2)
    P = ids.shape[0]
    if mask.shape != ids.shape or labels.shape[0] != P:
        raise JaxValuesError(f"attribute: ids {ids.shape}, mask {mask.shape} and labels {labels.shape} disagree")
    if P == 0:
        raise JaxValuesError("attribute: no prompts")
    groups = np.zeros(P, np.int64) if groups is None else np.asarray(groups, np.int64)
    G = int(groups.max()) + 1 if group_names is None else len(group_names)
    group_names = tuple(group_names or (f"g{i}" for i in range(G)))
    if groups.shape != (P,) or groups.min() < 0 or groups.max() >= G:
        raise JaxValuesError(f"attribute: groups must be {P} ints in 0..{G - 1}")
    cfg = lm.config
    L, N = cfg.num_layers, cfg.num_neurons
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    alphas = (np.arange(steps) + 0.5) / steps
    if method == "patching":
        points = [(-2, 1.0)]
    elif path == "all":
        points = [(-1, a) for a in alphas]
    else:
        points = [(l, a) for l in (range(L) if layers is None else layers) for a in alphas]
    fn = _program(lm)
    sums = np.zeros((G, L, N), np.float64)
    counts = np.bincount(groups, minlength=G)
    logodds = np.zeros(P, np.float64)
    rows_out = np.zeros((P, L, N), np.float32) if return_rows else None
    order = np.argsort(mask.sum(1), kind="stable")
    for i in range(0, P, batch_size):
        idx = order[i:i + batch_size]
        n = len(idx)
        bi, bm = _window(ids[idx], mask[idx], multiple)
        bl = labels[idx]
        if n < batch_size:  # fixed batch shape: pad with empty rows of weight 0
            bi = np.pad(bi, ((0, batch_size - n), (0, 0)))
            bm = np.pad(bm, ((0, batch_size - n), (0, 0)))
            bl = np.pad(bl, ((0, batch_size - n), (0, 0)))
        w = (np.arange(batch_size) < n).astype(np.float32)
        att = np.zeros((L, batch_size, N), np.float64)
        for layer, alpha in points:
            s, g = fn(lm.state, bi, bm, bl, w, jnp.int32(layer), jnp.float32(alpha))
            g = np.asarray(g, np.float64)
            if layer >= 0:
                att[layer] += g[layer] / steps
            elif layer == -1:
                att += g / steps
            else:
                att += g
                logodds[idx] = np.asarray(s)[:n]
        if method == "ig":  # the clean score (mult = 1)
            s, _ = fn(lm.state, bi, bm, bl, w, jnp.int32(-2), jnp.float32(1.0))
            logodds[idx] = np.asarray(s)[:n]
        att = att[:, :n].transpose(1, 0, 2)  # [n, L, N]
        np.add.at(sums, groups[idx], att)
        if rows_out is not None:
            rows_out[idx] = att
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(counts[:, None, None] > 0, sums / np.maximum(counts, 1)[:, None, None], 0.0)
    name = "attribution" if method == "patching" else f"ig-{path}"
    params = {"steps": steps if method == "ig" else None, "rows": int(P)}
    return AttributionResult(group_names, scores, counts, logodds, name, params, rows_out)


def choice_rows(records, tokenizer, *, chat: bool | None = None):
    """Evaluation records -> (ids, mask, labels [P, 2], groups [P], value names), both option
    orders per dilemma; uses `jaxvalues.evaluate.choice.build_choice_prompts`."""
    from jaxvalues.data.values import VALUE_IDS
    from jaxvalues.evaluate.choice import build_choice_prompts

    records = [r for r in records if getattr(r, "kind", "evaluation") == "evaluation"]
    if not records:
        raise JaxValuesError("no evaluation records (attribution needs evaluation dilemmas)")
    cp = build_choice_prompts(records, tokenizer, chat=chat)
    values = [v for v in VALUE_IDS if any(r.value == v for r in records)]
    groups = np.array([values.index(cp.meta[d]["value"]) for d in cp.dilemma], np.int64)
    return cp.input_ids, cp.attention_mask, cp.label_ids, groups, values


def attribute_records(lm, records, *, chat: bool | None = None, **kw) -> AttributionResult:
    """`attribute` over evaluation records (the choice prompts of jaxvalues.evaluate), one group per value."""
    ids, mask, labels, groups, values = choice_rows(records, lm.tokenizer, chat=chat)
    return attribute(lm, ids, mask, labels, groups, values, **kw)
