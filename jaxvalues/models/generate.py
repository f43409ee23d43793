"""KV-cache decoding: one jitted prefill per prompt shape, one jitted decode step.

The cache is a tuple over layers of (k, v) [B, T, K, Dh] with T = prompt length + new tokens;
the prompt is left-padded, real tokens are tracked in a [B, T] mask and positions follow
transformers' convention (cumsum of the mask - 1), so batched greedy output matches
`generate` token for token. The intervention arrays are arguments of both programs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.models.decoder import lm_apply, lm_logits, positions_from_mask


def _prefill(graphdef, state, ids, mask_buf, mult, add, cache):
    p = ids.shape[1]
    positions = positions_from_mask(mask_buf[:, :p])
    hidden, _, cache = lm_apply(graphdef, state, ids, mask_buf, mult, add, positions=positions, kv_cache=cache,
                                cache_index=0)
    logits = lm_logits(graphdef, state, hidden[:, -1])
    return logits, cache, positions[:, -1] + 1


def _step(graphdef, state, tok, mask_buf, pos, index, mult, add, cache):
    hidden, _, cache = lm_apply(graphdef, state, tok[:, None], mask_buf, mult, add, positions=pos[:, None],
                                kv_cache=cache, cache_index=index)
    return lm_logits(graphdef, state, hidden[:, -1]), cache


def _choose(logits, key, do_sample, temperature, top_k, top_p):
    if not do_sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.maximum(temperature, 1e-6)
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        srt = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
        # smallest set whose mass reaches top_p: keep tokens >= the cutoff logit
        idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(srt, idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _penalize(logits, present, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor: the logit of every token already present
    in the sequence is divided by `penalty` when positive and multiplied by it when negative."""
    pen = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(present, pen, logits)


def _mark(present, tok):
    return present.at[jnp.arange(tok.shape[0]), tok].set(True)


def _programs(lm):
    if "prefill" not in lm._gen_cache:
        lm._gen_cache["prefill"] = jax.jit(partial(_prefill, lm.graphdef))
        lm._gen_cache["step"] = jax.jit(partial(_step, lm.graphdef), donate_argnums=(7,))
        lm._gen_cache["choose"] = jax.jit(_choose, static_argnames=("do_sample", "top_k", "top_p"))
        lm._gen_cache["penalize"] = jax.jit(_penalize)
        lm._gen_cache["mark"] = jax.jit(_mark)
    return lm._gen_cache["prefill"], lm._gen_cache["step"], lm._gen_cache["choose"]


def generate_ids(lm, ids, mask, max_new_tokens, mult, add, *, do_sample=False, temperature=1.0, top_k=0,
                 top_p=1.0, seed=0, stop_at_eos=True, repetition_penalty: float = 1.0) -> np.ndarray:
    """New ids [B, max_new_tokens] (pad_id after EOS). repetition_penalty != 1 applies
    `_penalize` before each choice; "present" = the prompt's real tokens (padding excluded, where
    transformers also penalizes the pad id of left-padded rows) and the tokens generated so far."""
    cfg = lm.config
    ids = np.asarray(ids, np.int32)
    mask = np.asarray(mask, np.int32)
    b, p = ids.shape
    total = p + max_new_tokens
    dt = jax.tree.leaves(lm.state)[0].dtype
    cache = tuple((jnp.zeros((b, total, cfg.num_kv_heads, cfg.head_dim), dt),
                   jnp.zeros((b, total, cfg.num_kv_heads, cfg.head_dim), dt)) for _ in range(cfg.num_layers))
    mask_buf = np.zeros((b, total), np.int32)
    mask_buf[:, :p] = mask
    prefill, step, choose = _programs(lm)
    mult, add = jnp.asarray(mult), jnp.asarray(add)
    penalize = repetition_penalty != 1.0
    if penalize:
        present = np.zeros((b, cfg.vocab_size), bool)
        rows, cols = np.nonzero(mask)
        present[rows, ids[rows, cols]] = True
        present = jnp.asarray(present)
        pen = jnp.float32(repetition_penalty)
    logits, cache, pos = prefill(lm.state, jnp.asarray(ids), jnp.asarray(mask_buf), mult, add, cache)
    key = jax.random.PRNGKey(seed)
    eos = np.array(lm.eos_ids or (-1,), np.int32)
    pad = lm.pad_id
    out = np.full((b, max_new_tokens), pad, np.int32)
    done = np.zeros(b, bool)
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        if penalize:
            logits = lm._gen_cache["penalize"](logits, present, pen)
        tok = np.asarray(choose(logits, sub, do_sample, temperature, int(top_k), float(top_p)))
        tok = np.where(done, pad, tok)
        out[:, i] = tok
        if penalize:
            present = lm._gen_cache["mark"](present, jnp.asarray(tok))
        if stop_at_eos:
            done |= np.isin(tok, eos)
            if done.all():
                break
        if i + 1 == max_new_tokens:
            break
        mask_buf[:, p + i] = 1
        logits, cache = step(lm.state, jnp.asarray(tok), jnp.asarray(mask_buf), pos, p + i, mult, add, cache)
        pos = pos + 1
    return out
