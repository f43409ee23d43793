"""Key table: transformers checkpoint names -> jaxvalues parameter paths, and state filling.

`hf_table(cfg)` maps every expected checkpoint key to a list of (param path, transform):
usually one entry with a transpose for linear weights ([out, in] -> kernel [in, out]); GPT-2's
fused `c_attn` fans out to q/k/v. `fill_state` uses every checkpoint key exactly once and fills
every parameter, else raises `CheckpointError` naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvalues.errors import CheckpointError
from jaxvalues.models.config import ModelConfig

Path_ = tuple
Transform = Callable[[np.ndarray], np.ndarray]

_T: Transform = lambda w: w.T  # noqa: E731  torch Linear [out, in] -> kernel [in, out]
_ID: Transform = lambda w: w  # noqa: E731

# Keys some checkpoints carry that hold no parameter (buffers): accepted and ignored.
IGNORABLE = (
    re.compile(r".*\.attn\.(masked_)?bias$"),  # GPT-2 causal-mask buffers (old checkpoints)
    re.compile(r".*rotary_emb\.inv_freq$"),
)


def hf_table(cfg: ModelConfig, prefix: str | None = None) -> dict[str, list[tuple[Path_, Transform]]]:
    if cfg.model_type == "gpt2":
        return _gpt2_table(cfg, "transformer." if prefix is None else prefix)
    p = "model." if prefix is None else prefix
    t: dict[str, list[tuple[Path_, Transform]]] = {f"{p}embed_tokens.weight": [(("embed_tokens",), _ID)]}
    for i in range(cfg.num_layers):
        hp, lp = f"{p}layers.{i}.", ("layers", i)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[f"{hp}self_attn.{proj}.weight"] = [((*lp, "self_attn", proj, "kernel"), _T)]
        if cfg.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                t[f"{hp}self_attn.{proj}.bias"] = [((*lp, "self_attn", proj, "bias"), _ID)]
        if cfg.o_bias:
            t[f"{hp}self_attn.o_proj.bias"] = [((*lp, "self_attn", "o_proj", "bias"), _ID)]
        if cfg.qk_norm:
            for n in ("q_norm", "k_norm"):
                t[f"{hp}self_attn.{n}.weight"] = [((*lp, "self_attn", n, "weight"), _ID)]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            t[f"{hp}mlp.{proj}.weight"] = [((*lp, "mlp", proj, "kernel"), _T)]
            if cfg.mlp_bias:
                t[f"{hp}mlp.{proj}.bias"] = [((*lp, "mlp", proj, "bias"), _ID)]
        norms = ["input_layernorm", "post_attention_layernorm"]
        if cfg.sandwich_norm:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for n in norms:
            t[f"{hp}{n}.weight"] = [((*lp, n, "weight"), _ID)]
    t[f"{p}norm.weight"] = [(("norm", "weight"), _ID)]
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = [(("lm_head",), _ID)]
    return t


def _gpt2_table(cfg: ModelConfig, p: str):
    d = cfg.hidden_size
    t: dict[str, list[tuple[Path_, Transform]]] = {
        f"{p}wte.weight": [(("embed_tokens",), _ID)],
        f"{p}wpe.weight": [(("embed_positions",), _ID)],
        f"{p}ln_f.weight": [(("norm", "weight"), _ID)],
        f"{p}ln_f.bias": [(("norm", "bias"), _ID)],
    }
    for i in range(cfg.num_layers):
        hp, lp = f"{p}h.{i}.", ("layers", i)
        att = (*lp, "self_attn")
        # Conv1D weights are already [in, out]; c_attn fuses q|k|v along the output axis.
        t[f"{hp}attn.c_attn.weight"] = [((*att, n, "kernel"), (lambda w, j=j: w[:, j * d:(j + 1) * d]))
                                        for j, n in enumerate(("q_proj", "k_proj", "v_proj"))]
        t[f"{hp}attn.c_attn.bias"] = [((*att, n, "bias"), (lambda w, j=j: w[j * d:(j + 1) * d]))
                                      for j, n in enumerate(("q_proj", "k_proj", "v_proj"))]
        t[f"{hp}attn.c_proj.weight"] = [((*att, "o_proj", "kernel"), _ID)]
        t[f"{hp}attn.c_proj.bias"] = [((*att, "o_proj", "bias"), _ID)]
        t[f"{hp}mlp.c_fc.weight"] = [((*lp, "mlp", "up_proj", "kernel"), _ID)]
        t[f"{hp}mlp.c_fc.bias"] = [((*lp, "mlp", "up_proj", "bias"), _ID)]
        t[f"{hp}mlp.c_proj.weight"] = [((*lp, "mlp", "down_proj", "kernel"), _ID)]
        t[f"{hp}mlp.c_proj.bias"] = [((*lp, "mlp", "down_proj", "bias"), _ID)]
        for hn, ln in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            t[f"{hp}{hn}.weight"] = [((*lp, ln, "weight"), _ID)]
            t[f"{hp}{hn}.bias"] = [((*lp, ln, "bias"), _ID)]
    return t


def detect_prefix(keys, cfg: ModelConfig) -> str | None:
    """Checkpoints of wrapper classes nest the decoder (e.g. `model.language_model.`)."""
    anchor = "wte.weight" if cfg.model_type == "gpt2" else "embed_tokens.weight"
    for k in keys:
        if k.endswith(anchor):
            return k[: -len(anchor)]
    return None


def fill_state(graphdef, abstract_state, cfg: ModelConfig, checkpoint, dtype, source: str = "checkpoint"):
    """Read every tensor of `checkpoint` (an object with keys()/shape()/get()) into a new state.

    Returns the filled nnx.State. Raises CheckpointError listing missing / unexpected keys and
    shape mismatches (all of them at once).
    """
    keys = list(checkpoint.keys())
    prefix = detect_prefix(keys, cfg)
    table = hf_table(cfg, prefix)
    if cfg.tie_word_embeddings and "lm_head.weight" in keys:
        keys.remove("lm_head.weight")  # a tied head saved anyway: the embedding is the source of truth
    flat = dict(nnx.to_flat_state(abstract_state))
    missing = [k for k in table if k not in set(keys)]
    unexpected = [k for k in keys if k not in table and not any(r.match(k) for r in IGNORABLE)]
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing[:8])}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensor(s) not used by a {cfg.model_type} model: {', '.join(unexpected[:8])}"
                        + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))

    values: dict[tuple, jax.Array] = {}
    shape_errors = []
    nonfinite = []
    for key, targets in table.items():
        raw = checkpoint.get(key)
        raw_np = np.asarray(raw)
        if raw_np.dtype.kind in "fc" or raw_np.dtype.name == "bfloat16":
            bad = int(raw_np.size - np.count_nonzero(np.isfinite(raw_np.astype(np.float32, copy=False))))
            if bad:
                nonfinite.append(f"{key} ({bad} of {raw_np.size} values)")
                continue
        for path, fn in targets:
            want = flat[path].get_value() if hasattr(flat[path], "get_value") else flat[path].value
            arr = np.asarray(fn(raw))
            if tuple(arr.shape) != tuple(want.shape):
                expect = _hf_shape(path, want.shape)
                shape_errors.append(f"{key}: shape {tuple(raw.shape)}, expected {expect}")
                continue
            values[path] = jnp.asarray(arr, dtype=dtype)
    if nonfinite:
        raise CheckpointError(f"{source}: tensor(s) with NaN or inf values: " + "; ".join(nonfinite[:8])
                              + (f" (+{len(nonfinite) - 8} more)" if len(nonfinite) > 8 else ""))
    if shape_errors:
        raise CheckpointError(f"{source}: wrong tensor shape(s): " + "; ".join(shape_errors[:8]))
    unfilled = [p for p in flat if p not in values]
    if unfilled:
        raise CheckpointError(f"{source}: parameters not filled by any tensor: {unfilled[:8]}")
    for path, var in flat.items():
        var.set_value(values[path]) if hasattr(var, "set_value") else setattr(var, "value", values[path])
    return nnx.from_flat_state(flat)


def _hf_shape(path, shape):
    if path[-1] == "kernel":
        return (shape[1], shape[0])
    return tuple(shape)
