"""Learned sparse neuron mask that removes the aligned preference for one value (optax).

Gate g = sigmoid(θ) [L, N], applied as the intervention multiplier (act' = act · g), θ starts
at `init` (g ≈ 1). Loss over the value's evaluation rows (score s = choice log-odds, as in
attribution.py):
    mean_b (s_b(g) − target)²  +  retain_weight · mean_r (s_r(g) − s_r(1))²  +  l1 · Σ (1 − g)
target 0 = no preference between the options; optional retain rows (other values' dilemmas)
keep their scores; the L1 term on the closed part of the gates keeps the mask sparse. Adam,
full batch (rows windowed to one shape, one compilation). The neurons whose gate closed
(1 − g >= threshold, strongest first) become a `NeuronSet` (score = 1 − g, method "mask"), and
the result reports the mean score before training, with the soft gates, and with those neurons
zeroed outright.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.identify.attribution import _window, choice_logodds
from jaxvalues.identify.neuronset import NeuronSet


@dataclass
class MaskResult:
    value: str
    gates: np.ndarray  # [L, N] float32 in (0, 1)
    losses: list = field(default_factory=list)
    report: dict = field(default_factory=dict)

    def to_neuronset(self, threshold: float = 0.5, top_k: int | None = None) -> NeuronSet:
        closed = 1.0 - self.gates.astype(np.float64)
        return NeuronSet.from_scores(self.value, np.where(closed >= threshold, closed, -np.inf), "mask",
                                     top_k=top_k, info={"method": "mask", **self.report})


def _rows(ids, mask, labels, multiple=32):
    ids = np.asarray(ids, np.int32)
    mask = np.asarray(mask, np.int32)
    labels = np.asarray(labels, np.int32).reshape(-1, 2)
    if ids.shape != mask.shape or ids.ndim != 2 or labels.shape[0] != ids.shape[0] or ids.shape[0] == 0:
        raise JaxValuesError(f"learn_mask: ids {ids.shape}, mask {mask.shape}, labels {labels.shape} disagree or are empty")
    ids, mask = _window(ids, mask, multiple)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels)


def _chunks(rows, batch_size: int | None):
    """[P, ...] rows -> ([n, b, ...] rows, weights [n, b], P): padded with weight-0 copies of row 0."""
    ids, mask, labels = rows
    P = int(ids.shape[0])
    b = P if not batch_size else max(1, min(int(batch_size), P))
    n = -(-P // b)
    pad = n * b - P
    w = jnp.concatenate([jnp.ones((P,), jnp.float32), jnp.zeros((pad,), jnp.float32)])

    def padded(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape(n, b, *a.shape[1:])

    return (padded(ids), padded(mask), padded(labels)), w.reshape(n, b), P


def learn_mask(lm, ids, mask, labels, *, value: str = "value", retain=None, l1: float = 1e-3,
               retain_weight: float = 1.0, target: float = 0.0, steps: int = 200, lr: float = 0.1,
               init: float = 5.0, threshold: float = 0.5, batch_size: int | None = None) -> MaskResult:
    """Train the gate on rows (ids/mask [P, S], labels [P, 2]); retain = (ids, mask, labels) or None.

    batch_size: rows per forward pass (the gradient is still over all rows, summed chunk by chunk,
    so it bounds memory without changing the result); None: all rows at once."""
    import optax

    from jaxvalues.models.intervention import Intervention

    if steps < 1 or lr <= 0 or l1 < 0:
        raise ConfigError("learn_mask: steps >= 1, lr > 0 and l1 >= 0 are required")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"learn_mask: batch_size must be >= 1, got {batch_size}")
    cfg = lm.config
    L, N = cfg.num_layers, cfg.num_neurons
    gd, state = lm.graphdef, lm.state
    main_rows = _rows(ids, mask, labels)
    main, main_w, P_main = _chunks(main_rows, batch_size)
    main_rows_n = int(main_rows[0].shape[0])
    if retain is not None:
        ret, ret_w, P_ret = _chunks(_rows(*retain), batch_size)
    else:
        ret = None
    add = jnp.zeros((L, N), jnp.float32)
    ones = jnp.ones((L, N), jnp.float32)

    def _scores(m, a, r):  # [n, b] log-odds, chunk by chunk
        return jax.lax.map(lambda c: choice_logodds(gd, state, c[0], c[1], m, a, c[2]), r)

    score = jax.jit(_scores)
    s0_main = score(ones, add, main)
    s0_ret = score(ones, add, ret) if ret is not None else None

    def _sq(g, r, w, ref, total):
        def body(acc, c):
            cids, cmask, clab, cw, cref = c
            s = choice_logodds(gd, state, cids, cmask, g, add, clab)
            return acc + jnp.sum(cw * jnp.square(s - cref)), None

        acc, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (*r, w, ref))
        return acc / total

    def loss_fn(theta):
        g = jax.nn.sigmoid(theta)
        loss = _sq(g, main, main_w, jnp.full(main_w.shape, target, jnp.float32), P_main) + l1 * jnp.sum(1.0 - g)
        if ret is not None:
            loss = loss + retain_weight * _sq(g, ret, ret_w, s0_ret, P_ret)
        return loss

    def wmean(s, w):
        return jnp.sum(s * w) / jnp.sum(w)

    opt = optax.adam(lr)

    @jax.jit
    def step(theta, opt_state):
        loss, g = jax.value_and_grad(loss_fn)(theta)
        upd, opt_state = opt.update(g, opt_state, theta)
        return optax.apply_updates(theta, upd), opt_state, loss

    theta = jnp.full((L, N), init, jnp.float32)
    opt_state = opt.init(theta)
    losses = []
    for _ in range(steps):
        theta, opt_state, loss = step(theta, opt_state)
        losses.append(float(loss))
    gates = np.asarray(jax.nn.sigmoid(theta))
    res = MaskResult(value, gates, losses)
    chosen = res.to_neuronset(threshold)
    m_hard, a_hard = (jnp.asarray(a) for a in Intervention.zero(chosen.neurons()).arrays(L, N))
    res.report = {
        "value": value, "steps": steps, "l1": l1, "lr": lr, "threshold": threshold, "rows": main_rows_n,
        "batch_size": int(main_w.shape[1]), "neurons": len(chosen), "final_loss": losses[-1],
        "logodds_before": float(wmean(s0_main, main_w)),
        "logodds_soft": float(wmean(score(jnp.asarray(gates), add, main), main_w)),
        "logodds_zeroed": float(wmean(score(m_hard, a_hard, main), main_w)),
    }
    if ret is not None:
        res.report["retain_shift_zeroed"] = float(wmean(jnp.abs(score(m_hard, a_hard, ret) - s0_ret), ret_w))
    return res


def learn_masks_records(lm, records, values=None, *, retain_others: bool = True, chat: bool | None = None,
                        **kw) -> tuple[NeuronSet, dict]:
    """One mask per value over evaluation records (retain rows: the other values' dilemmas)."""
    from jaxvalues.identify.attribution import choice_rows

    ids, mask, labels, groups, names = choice_rows(records, lm.tokenizer, chat=chat)
    sets, report = [], {}
    for v in values or names:
        if v not in names:
            report[v] = {"skipped": "no evaluation rows"}
            continue
        g = names.index(v)
        sel, rest = groups == g, groups != g
        retain = (ids[rest], mask[rest], labels[rest]) if retain_others and rest.any() else None
        res = learn_mask(lm, ids[sel], mask[sel], labels[sel], value=v, retain=retain, **kw)
        sets.append(res.to_neuronset(kw.get("threshold", 0.5)))
        report[v] = res.report
    out = NeuronSet.concat(sets, info={"method": "mask"})
    out.num_layers, out.num_neurons = lm.config.num_layers, lm.config.num_neurons
    return out, report
