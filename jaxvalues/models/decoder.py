"""The generic decoder (Flax NNX), one module tree for every supported family.

Submodule and parameter names follow transformers (`layers.3.self_attn.q_proj`, `mlp.gate_proj`,
`input_layernorm`, ...) so weight conversion is a key table (`jaxvalues.loading.weights`).
Linear kernels are stored [in, out]; embeddings and the LM head [V, D] as in transformers.

Shapes: input_ids [B, S] int32; attention_mask [B, T] (1 = real token; T = S without a cache,
T = cache length with one); positions [B, S]; mult / add [L, N] or [L, B, N]. Activations and
the residual stream are float32 whatever the weight dtype (matmuls accumulate in float32).

The FFN neurons: act = σ(x W_gate) (gated) or σ(x W_in + b) (GPT-2), then
act' = act * mult + add (the intervention, identity by default), and `capture=True` returns
act' of every layer as a tuple of [B, S, N] arrays. The caller decides what to keep (the
statistics code reduces them inside the same jit; nothing is stored in module state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvalues.models.config import ModelConfig

F32 = jnp.float32
_NEG = float(np.finfo(np.float32).min)


def _act(kind: str, x):
    if kind == "silu":
        return jax.nn.silu(x)
    if kind == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if kind == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if kind == "relu":
        return jax.nn.relu(x)
    raise ValueError(kind)


def _mm(x, w):
    """x [..., in] float32 @ w [in, out] (any dtype) -> float32."""
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=F32)


class Linear(nnx.Module):
    def __init__(self, din: int, dout: int, bias: bool, dtype):
        self.kernel = nnx.Param(jnp.zeros((din, dout), dtype))
        self.bias = nnx.Param(jnp.zeros((dout,), dtype)) if bias else None

    def __call__(self, x):
        y = _mm(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...].astype(F32)
        return y


class Norm(nnx.Module):
    """rms: x/rms(x)·w; rms_plus1 (gemma): x/rms(x)·(1+w); layer: LayerNorm with bias."""

    def __init__(self, dim: int, kind: str, eps: float, dtype):
        self.kind, self.eps = kind, eps
        self.weight = nnx.Param((jnp.zeros if kind == "rms_plus1" else jnp.ones)((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype)) if kind == "layer" else None

    def __call__(self, x):
        w = self.weight[...].astype(F32)
        if self.kind == "layer":
            mu = jnp.mean(x, -1, keepdims=True)
            var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
            return (x - mu) * jax.lax.rsqrt(var + self.eps) * w + self.bias[...].astype(F32)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps)
        return y * (1.0 + w) if self.kind == "rms_plus1" else y * w


def _is_pow2(x: float) -> bool:
    m, _ = np.frexp(float(x))
    return float(x) > 0 and m == 0.5


def _at(x, slots):
    """x [B, S, ...], slots [B] -> x[b, slots[b]] as [B, 1, ...]."""
    idx = slots.reshape((-1, 1) + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_tables(inv_freq: np.ndarray, positions):
    """cos, sin [B, S, Dh] for integer positions [B, S] (transformers' layout: halves repeated)."""
    freqs = positions.astype(F32)[..., None] * jnp.asarray(inv_freq, F32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def attention_core(q, k, v, mask, scale: float, softcap: float | None = None):
    """q [B, S, H, Dh], k/v [B, T, K, Dh] (K divides H), mask [B, S, T] bool -> [B, S, H·Dh] float32.

    Layout for speed on CPU (about 3x faster than an einsum over [B,S,K,G,Dh] with a `where` mask,
    bench/bench_profile.py section 2; equal up to float rounding): the G = H/K query heads of a KV
    head are stacked along the rows, so each (batch, KV head) is one plain matmul, and the mask is
    an additive bias."""
    b, s, h, dh = q.shape
    t, hk = k.shape[1], k.shape[2]
    g = h // hk
    if _is_pow2(scale):  # exact either way: scale q (S rows) instead of the scores (S x T)
        q, scale = q * scale, 1.0
    q = q.reshape(b, s, hk, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, hk, g * s, dh)  # [B, K, G*S, Dh]
    kt = k.astype(F32).transpose(0, 2, 1, 3)  # [B, K, T, Dh]
    vt = v.astype(F32).transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkmd,bktd->bkmt", q, kt).reshape(b, hk, g, s, t)
    if scale != 1.0:
        scores = scores * scale
    if softcap:
        scores = jnp.tanh(scores / softcap) * softcap
    # NEG + score rounds to NEG for any |score| < 2^103: the same as replacing masked scores
    scores = scores + jnp.where(mask, 0.0, _NEG).astype(F32)[:, None, None, :, :]
    probs = jax.nn.softmax(scores, axis=-1).reshape(b, hk, g * s, t)
    out = jnp.einsum("bkmt,bktd->bkmd", probs, vt).reshape(b, hk, g, s, dh)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h * dh)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        self.cfg = cfg
        h, k, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.q_proj = Linear(d, h * dh, cfg.qkv_bias, dtype)
        self.k_proj = Linear(d, k * dh, cfg.qkv_bias, dtype)
        self.v_proj = Linear(d, k * dh, cfg.qkv_bias, dtype)
        self.o_proj = Linear(h * dh, d, cfg.o_bias, dtype)
        if cfg.qk_norm:
            self.q_norm = Norm(dh, cfg.norm_kind, cfg.norm_eps, dtype)
            self.k_norm = Norm(dh, cfg.norm_kind, cfg.norm_eps, dtype)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, rope, mask, kv_cache=None, cache_index=None, query=None):
        """query: optional [B] slot per row: queries (and the output [B, 1, D]) at that slot only;
        keys and values still come from every position of x."""
        cfg = self.cfg
        b, s, _ = x.shape
        hk, dh = cfg.num_kv_heads, cfg.head_dim
        xq = x if query is None else _at(x, query)
        q = self.q_proj(xq).reshape(b, xq.shape[1], cfg.num_heads, dh)
        k = self.k_proj(x).reshape(b, s, hk, dh)
        v = self.v_proj(x).reshape(b, s, hk, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope[0][:, :, None, :], rope[1][:, :, None, :]
            cq, sq = (cos, sin) if query is None else (_at(cos, query), _at(sin, query))
            q = q * cq + _rotate_half(q) * sq
            k = k * cos + _rotate_half(k) * sin
        if kv_cache is not None:
            ck, cv = kv_cache
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            kv_cache = (k, v)
        out = attention_core(q, k, v, mask if query is None else _at(mask, query), cfg.scale, cfg.attn_softcap)
        return self.o_proj(out), kv_cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        self.cfg = cfg
        d, n = cfg.hidden_size, cfg.num_neurons
        self.gate_proj = Linear(d, n, cfg.mlp_bias, dtype) if cfg.gated_mlp else None
        self.up_proj = Linear(d, n, cfg.mlp_bias, dtype)
        self.down_proj = Linear(n, d, cfg.mlp_bias, dtype)

    def __call__(self, x, mult, add):
        """x [B, S, D]; mult/add [1 or B, N]. Returns (out [B, S, D], act' [B, S, N])."""
        if self.gate_proj is not None:
            act = _act(self.cfg.activation, self.gate_proj(x))
            act = act * mult[:, None, :] + add[:, None, :]
            return self.down_proj(act * self.up_proj(x)), act
        act = _act(self.cfg.activation, self.up_proj(x))
        act = act * mult[:, None, :] + add[:, None, :]
        return self.down_proj(act), act


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, idx: int, dtype):
        self.sliding = cfg.sliding_layers[idx]
        self.sandwich = cfg.sandwich_norm
        d = cfg.hidden_size
        self.self_attn = Attention(cfg, dtype)
        self.mlp = MLP(cfg, dtype)
        self.input_layernorm = Norm(d, cfg.norm_kind, cfg.norm_eps, dtype)
        self.post_attention_layernorm = Norm(d, cfg.norm_kind, cfg.norm_eps, dtype)
        if cfg.sandwich_norm:
            self.pre_feedforward_layernorm = Norm(d, cfg.norm_kind, cfg.norm_eps, dtype)
            self.post_feedforward_layernorm = Norm(d, cfg.norm_kind, cfg.norm_eps, dtype)

    def __call__(self, x, rope, mask, mult, add, kv_cache=None, cache_index=None, query=None):
        a, kv_cache = self.self_attn(self.input_layernorm(x), rope, mask, kv_cache, cache_index, query)
        if query is not None:  # the rest of the layer at the query slot only
            x = _at(x, query)
        if self.sandwich:
            x = x + self.post_attention_layernorm(a)
            m, act = self.mlp(self.pre_feedforward_layernorm(x), mult, add)
            x = x + self.post_feedforward_layernorm(m)
        else:
            x = x + a
            m, act = self.mlp(self.post_attention_layernorm(x), mult, add)
            x = x + m
        return x, act, kv_cache


class Decoder(nnx.Module):
    """Token ids -> final-norm hidden states (+ optional neurons, KV cache). `logits()` is the head."""

    def __init__(self, cfg: ModelConfig, dtype=jnp.float32):
        self.cfg = cfg
        self.embed_tokens = nnx.Param(jnp.zeros((cfg.vocab_size, cfg.hidden_size), dtype))
        self.embed_positions = (
            nnx.Param(jnp.zeros((cfg.learned_positions, cfg.hidden_size), dtype)) if cfg.learned_positions else None
        )
        self.layers = nnx.List([DecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers)])
        self.norm = Norm(cfg.hidden_size, cfg.norm_kind, cfg.norm_eps, dtype)
        self.lm_head = None if cfg.tie_word_embeddings else nnx.Param(jnp.zeros((cfg.vocab_size, cfg.hidden_size), dtype))

    def __call__(self, input_ids, attention_mask, positions, mult, add, *, capture=False, kv_cache=None,
                 cache_index=None, answer=None):
        """answer: optional [B] slot per row: the last layer computes attention output and FFN at that
        slot only and the hidden states come back [B, 1, D] (what a next-token score there needs;
        the other slots' last-layer outputs reach nothing). Not with `capture`."""
        cfg = self.cfg
        if answer is not None and capture:
            raise ValueError("answer= computes the last layer at one slot: it cannot capture every neuron")
        b, s = input_ids.shape
        emb = self.embed_tokens[...]
        x = jnp.take(emb, input_ids, axis=0)
        if cfg.embed_scale:
            x = x * jnp.asarray(np.sqrt(cfg.hidden_size), emb.dtype)
        x = x.astype(F32)
        if self.embed_positions is not None:
            x = x + jnp.take(self.embed_positions[...], positions, axis=0).astype(F32)

        # mask [B, S, T]: key slot t is visible to query slot q if t <= q, t is a real token,
        # and (sliding layers) q - t < window.
        t_len = attention_mask.shape[1]
        start = 0 if cache_index is None else cache_index
        q_slot = start + jnp.arange(s)[:, None]
        k_slot = jnp.arange(t_len)[None, :]
        base = (k_slot <= q_slot)[None] & (attention_mask[:, None, :] > 0)
        masks = {"full_attention": base}
        if cfg.sliding_window and any(cfg.sliding_layers):
            masks["sliding_attention"] = base & ((q_slot - k_slot) < cfg.sliding_window)[None]

        ropes = {}
        if not cfg.learned_positions:
            ropes["full_attention"] = rope_tables(cfg.rope.inv_freq(cfg.head_dim), positions)
            local = cfg.rope_local or cfg.rope
            ropes["sliding_attention"] = (
                ropes["full_attention"] if local == cfg.rope else rope_tables(local.inv_freq(cfg.head_dim), positions)
            )

        acts, new_cache = [], []
        for i, layer in enumerate(self.layers):
            kind = cfg.layer_types[i]
            m, a = mult[i], add[i]
            if m.ndim == 1:
                m, a = m[None], a[None]
            x, act, kv = layer(x, ropes.get(kind), masks.get(kind, base), m.astype(F32), a.astype(F32),
                               None if kv_cache is None else kv_cache[i], cache_index,
                               answer if i == len(self.layers) - 1 else None)
            if capture:
                acts.append(act)
            new_cache.append(kv)
        x = self.norm(x)
        return x, (tuple(acts) if capture else None), (tuple(new_cache) if kv_cache is not None else None)

    def unembedding(self):
        return (self.embed_tokens if self.lm_head is None else self.lm_head)[...]

    def logits(self, hidden, rows=None):
        """hidden [..., D] -> logits [..., V], or [..., R] for vocab ids `rows` [R] only."""
        w = self.unembedding()
        if rows is not None:
            w = jnp.take(w, rows, axis=0)
        out = jnp.einsum("...d,vd->...v", hidden.astype(w.dtype), w, preferred_element_type=F32)
        if self.cfg.final_softcap:
            out = jnp.tanh(out / self.cfg.final_softcap) * self.cfg.final_softcap
        return out


def positions_from_mask(attention_mask):
    """transformers' convention: position = (number of real tokens before) ; pads get 0."""
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0)


def lm_apply(graphdef, state, input_ids, attention_mask, mult, add, *, capture=False, positions=None,
             kv_cache=None, cache_index=None, answer=None):
    """Pure forward: (hidden [B, S, D], neurons tuple | None, kv_cache | None). Jit/grad friendly.
    answer: optional [B] slots -> hidden [B, 1, D] there, last layer computed at those slots only."""
    model = nnx.merge(graphdef, state)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    return model(input_ids, attention_mask, positions, mult, add, capture=capture, kv_cache=kv_cache,
                 cache_index=cache_index, answer=answer)


def lm_logits(graphdef, state, hidden, rows=None):
    return nnx.merge(graphdef, state).logits(hidden, rows)


def abstract_decoder(cfg: ModelConfig, dtype=jnp.float32) -> Decoder:
    """The module tree with ShapeDtypeStruct leaves: no memory, for loading and eval_shape."""
    return nnx.eval_shape(lambda: Decoder(cfg, dtype))
