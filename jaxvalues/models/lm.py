"""`LanguageModel`: a decoder, its config and tokenizer, with jitted forward and generation.

Arrays returned by `forward` are jax.Arrays (float32); inputs may be NumPy or JAX. The jitted
programs are cached per instance and keyed only by shapes and static flags, so interventions
(values, not structure) never trigger a recompilation.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvalues.errors import JaxValuesError
from jaxvalues.models.config import ModelConfig
from jaxvalues.models.decoder import Decoder, lm_apply, lm_logits
from jaxvalues.models.intervention import as_arrays


@dataclasses.dataclass
class ForwardOutput:
    logits: jax.Array | None  # [B, S, V] float32
    neurons: jax.Array | None = None  # [L, B, S, N] float32 (after the intervention)
    hidden: jax.Array | None = None  # [B, S, D] final-norm hidden states


def _forward(graphdef, state, input_ids, attention_mask, mult, add, *, capture: bool, head: bool):
    hidden, acts, _ = lm_apply(graphdef, state, input_ids, attention_mask, mult, add, capture=capture)
    logits = lm_logits(graphdef, state, hidden) if head else None
    neurons = jnp.stack(acts) if capture else None
    return logits, neurons, hidden


class LanguageModel:
    def __init__(self, decoder: Decoder | None = None, *, config: ModelConfig, tokenizer: Any = None,
                 graphdef=None, state=None, source: str = "", dtype: str = "float32", info: dict | None = None):
        if decoder is not None:
            graphdef, state = nnx.split(decoder)
        self.graphdef, self.state = graphdef, state
        self.config = config
        self.tokenizer = tokenizer
        self.source = source
        self.dtype = dtype
        self.info = dict(info or {})
        self._forward = jax.jit(partial(_forward, graphdef), static_argnames=("capture", "head"))
        self._gen_cache: dict = {}

    def __repr__(self):
        c = self.config
        return (f"LanguageModel({c.model_type}, layers={c.num_layers}, neurons={c.num_neurons}, "
                f"hidden={c.hidden_size}, vocab={c.vocab_size}, dtype={self.dtype}, source={self.source!r})")

    @property
    def module(self) -> Decoder:
        return nnx.merge(self.graphdef, self.state)

    # ------------------------------------------------------------------------------------------
    def intervention_arrays(self, intervention):
        return as_arrays(intervention, self.config.num_layers, self.config.num_neurons)

    def forward(self, input_ids, attention_mask=None, intervention=None, capture_neurons: bool = False,
                logits: bool = True) -> ForwardOutput:
        """input_ids [B, S]; attention_mask [B, S] (1 = token; default all ones);
        intervention: None | Intervention | list of B Interventions | (mult, add) arrays."""
        ids = _check_ids(input_ids, self.config.vocab_size)
        if attention_mask is None:
            mask = jnp.ones_like(ids)
        else:
            m = attention_mask if isinstance(attention_mask, jax.Array) else _host_int(attention_mask, "attention_mask")
            if m.ndim == 1 and ids.shape[0] == 1:
                m = m[None]
            if tuple(m.shape) != tuple(ids.shape):
                raise JaxValuesError(f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got {tuple(m.shape)}")
            mask = jnp.asarray(m, jnp.int32)
        mult, add = self.intervention_arrays(intervention)
        if mult.ndim == 3 and mult.shape[1] != ids.shape[0]:
            raise JaxValuesError(f"{mult.shape[1]} interventions for a batch of {ids.shape[0]} sequences")
        lg, neurons, hidden = self._forward(self.state, ids, mask, jnp.asarray(mult), jnp.asarray(add),
                                            capture=bool(capture_neurons), head=bool(logits))
        return ForwardOutput(logits=lg, neurons=neurons, hidden=hidden)

    __call__ = forward

    # ------------------------------------------------------------------------------------------
    def encode(self, texts: list[str], add_special_tokens: bool = True, padding_side: str = "left"):
        """Tokenize a batch with the model's tokenizer -> (ids [B, S] int32, mask [B, S])."""
        if self.tokenizer is None:
            raise JaxValuesError("this model has no tokenizer: pass token ids instead of text")
        bos = getattr(self.tokenizer, "bos_token", None)
        # chat-templated text often starts with the BOS token already: never add a second one
        enc = [self.tokenizer(t, add_special_tokens=add_special_tokens and not (bos and t.startswith(bos)))["input_ids"]
               for t in texts]
        return pad_batch(enc, self.pad_id, padding_side)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (getattr(tok, "pad_token_id", None), self.config.pad_token_id,
                     getattr(tok, "eos_token_id", None), *self.config.eos_token_ids):
            if cand is not None:
                return int(cand)
        return 0

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = set(self.config.eos_token_ids)
        if self.tokenizer is not None and getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))

    def generate(self, prompts_or_ids, max_new_tokens: int = 32, intervention=None, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 attention_mask=None, return_text: bool | None = None, stop_at_eos: bool = True, repetition_penalty: float = 1.0):
        """Greedy or sampled decoding with a KV cache; the intervention applies at every step.

        prompts_or_ids: list of strings (tokenized, left-padded) or ids [B, P] (left-padded, with
        attention_mask). Returns list[str] of the new text for string prompts, else new ids [B, T]
        (padded with pad_id after EOS). repetition_penalty: transformers' repetition penalty
        (1.0 = off) over the prompt's real tokens and the generated ones."""
        from jaxvalues.models.generate import generate_ids

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise JaxValuesError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")

        if isinstance(prompts_or_ids, str):
            prompts_or_ids = [prompts_or_ids]
        texts = isinstance(prompts_or_ids, (list, tuple)) and prompts_or_ids and isinstance(prompts_or_ids[0], str)
        if texts:
            ids, mask = self.encode(list(prompts_or_ids))
        else:
            ids = np.asarray(_check_ids(prompts_or_ids, self.config.vocab_size))
            if attention_mask is None:
                mask = np.ones_like(ids)
            else:
                mask = _host_int(attention_mask, "attention_mask")
                mask = mask[None] if mask.ndim == 1 and ids.shape[0] == 1 else mask
                if mask.shape != ids.shape:
                    raise JaxValuesError(f"attention_mask must have the shape of input_ids {ids.shape}, got {mask.shape}")
                mask = mask.astype(np.int32)
        mult, add = self.intervention_arrays(intervention)
        new = generate_ids(self, ids, mask, max_new_tokens, mult, add, do_sample=do_sample, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, stop_at_eos=stop_at_eos,
                           repetition_penalty=float(repetition_penalty))
        if return_text is None:
            return_text = bool(texts)
        if not return_text:
            return new
        eos = set(self.eos_ids)
        out = []
        for row in new:
            toks = []
            for t in row.tolist():
                if t in eos:
                    break
                toks.append(t)
            out.append(self.tokenizer.decode(toks, skip_special_tokens=True))
        return out


def _host_int(x, name: str) -> np.ndarray:
    """A NumPy integer array from a list / NumPy array, refusing non-integer values."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise JaxValuesError(f"{name} must be an integer array [batch, seq], got {type(x).__name__}") from None
    if a.dtype == object or not (a.dtype.kind in "iub" or a.size == 0):
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            return a.astype(np.int64)
        raise JaxValuesError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64) if a.dtype.kind != "b" else a.astype(np.int64)


def _check_ids(input_ids, vocab_size: int):
    """input_ids -> int32 [B, S] jax array; refuses wrong rank/dtype and ids outside 0..vocab-1."""
    if isinstance(input_ids, jax.Array):
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise JaxValuesError(f"input_ids must hold integers, got dtype {input_ids.dtype}")
        ids = input_ids
    else:
        ids = _host_int(input_ids, "input_ids")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise JaxValuesError(f"input_ids must be [batch, seq] with seq >= 1, got shape {tuple(ids.shape)}")
    if ids.size:
        lo, hi = (int(ids.min()), int(ids.max())) if isinstance(ids, np.ndarray) else (int(jnp.min(ids)), int(jnp.max(ids)))
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise JaxValuesError(f"input_ids: token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    return jnp.asarray(ids, jnp.int32)


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "left", length: int | None = None):
    """Pad token lists -> (ids [B, S] int32, mask [B, S] int32)."""
    s = max(len(x) for x in seqs) if length is None else length
    ids = np.full((len(seqs), s), pad_id, np.int32)
    mask = np.zeros((len(seqs), s), np.int32)
    for i, x in enumerate(seqs):
        x = list(x)[-s:] if side == "left" else list(x)[:s]
        if side == "left":
            ids[i, s - len(x):], mask[i, s - len(x):] = x, 1
        else:
            ids[i, :len(x)], mask[i, :len(x)] = x, 1
    return ids, mask
