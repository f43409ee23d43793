"""`ModelConfig`: one frozen config for every supported decoder family.

Family differences are fields (norm kind, activation, q/k norm, sliding layers, ...), so one
generic decoder (`decoder.py`) serves llama, qwen2, qwen3, mistral, gemma3_text and gpt2.
`ModelConfig.from_hf(hf_config)` reads a transformers config object (or its dict) and raises
`ConfigError` naming any attribute whose value the decoder does not implement.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxvalues.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gemma3", "gpt2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one attention kind. `kind`: default | linear | llama3."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies [head_dim // 2], float32, computed exactly as transformers does."""
        exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        inv = (np.float32(1.0) / (np.float32(self.theta) ** exponent)).astype(np.float32)
        if self.kind == "linear":
            inv = (inv / np.float32(self.factor)).astype(np.float32)
        elif self.kind == "llama3":
            old = self.original_max_position_embeddings
            low_wl, high_wl = old / self.low_freq_factor, old / self.high_freq_factor
            wavelen = (2 * math.pi / inv).astype(np.float32)
            inv_l = np.where(wavelen > low_wl, inv / self.factor, inv).astype(np.float32)
            smooth = ((old / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor))
            smoothed = (1 - smooth) * inv_l / self.factor + smooth * inv_l
            medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
            inv = np.where(medium, smoothed, inv_l).astype(np.float32)
        return inv


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the generic decoder needs. Axis sizes: L layers, N neurons, D embed, V vocab."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_neurons: int  # FFN width (intermediate_size / n_inner)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float = 1e-6
    norm_kind: str = "rms"  # rms | rms_plus1 (gemma: x * (1 + w)) | layer (LayerNorm with bias)
    activation: str = "silu"  # silu | gelu_tanh | gelu | relu
    gated_mlp: bool = True  # σ(x W_gate) ⊙ x W_up; False: GPT-2 style σ(x W_in + b)
    mlp_bias: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sandwich_norm: bool = False  # gemma3: post-attention and pre/post-FFN norms
    embed_scale: bool = False  # gemma3: embeddings × sqrt(hidden_size)
    learned_positions: int = 0  # gpt2: n_positions; 0 = rotary
    tie_word_embeddings: bool = False
    attn_scale: float | None = None  # None = head_dim ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope: RopeConfig = RopeConfig()
    rope_local: RopeConfig | None = None  # rotary of sliding layers when it differs (gemma3)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" | "sliding_attention"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    max_position_embeddings: int = 4096
    name: str = ""

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full_attention",) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries, expected num_layers={self.num_layers}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        for k in ("rope", "rope_local"):
            if isinstance(d.get(k), dict):
                d[k] = RopeConfig(**d[k])
        for k in ("layer_types", "eos_token_ids"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: Any, name: str = "", source: str = "") -> "ModelConfig":
        """source: the file the config came from (e.g. .../config.json), named in every error."""
        try:
            return _from_hf(hf, name)
        except ConfigError as e:
            if source and not str(e).startswith(str(source)):
                raise ConfigError(f"{source}: {e}") from None
            raise


# ---------------------------------------------------------------------------------------------
# transformers config -> ModelConfig


def _get(hf, key, default=None):
    if isinstance(hf, dict):
        return hf.get(key, default)
    return getattr(hf, key, default)


def _rope_from(params: dict | None, fallback_theta: float, where: str) -> RopeConfig:
    params = dict(params or {})
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{where}: rope type {kind!r} is not implemented (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor={params['partial_rotary_factor']} is not implemented")
    theta = float(params.get("rope_theta", fallback_theta))
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind="linear", factor=float(params["factor"]))
    return RopeConfig(
        theta=theta, kind="llama3", factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _rope_params(hf, layer_type: str | None = None) -> dict | None:
    rp = _get(hf, "rope_parameters")
    if rp is None:
        rp = _get(hf, "rope_scaling")
        theta = _get(hf, "rope_theta")
        rp = dict(rp or {})
        if theta is not None:
            rp.setdefault("rope_theta", theta)
    if layer_type is not None and isinstance(rp, dict) and layer_type in rp:
        return rp[layer_type]
    return rp


def _require(hf, key, allowed, model_type):
    val = _get(hf, key)
    if val not in allowed:
        raise ConfigError(f"{model_type} config: {key}={val!r} is not implemented (supported: {allowed!r})")


def _eos(hf) -> tuple[int, ...]:
    e = _get(hf, "eos_token_id")
    if e is None:
        return ()
    return tuple(e) if isinstance(e, (list, tuple)) else (int(e),)


def _activation(hf, key, model_type) -> str:
    act = _get(hf, key)
    if act not in _ACTIVATIONS:
        raise ConfigError(f"{model_type} config: {key}={act!r} is not implemented (supported: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[act]


def _from_hf(hf: Any, name: str) -> ModelConfig:
    model_type = _get(hf, "model_type")
    if model_type == "gemma3" and _get(hf, "text_config") is not None:
        hf, model_type = _get(hf, "text_config"), "gemma3_text"
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    common = dict(bos_token_id=_get(hf, "bos_token_id"), eos_token_ids=_eos(hf),
                  pad_token_id=_get(hf, "pad_token_id"), name=name)
    if model_type == "gpt2":
        for key, allowed in (("scale_attn_by_inverse_layer_idx", (False, None)), ("add_cross_attention", (False, None)),
                             ("scale_attn_weights", (True, None))):
            _require(hf, key, allowed, model_type)
        d = _get(hf, "n_embd")
        return ModelConfig(
            model_type="gpt2", vocab_size=_get(hf, "vocab_size"), hidden_size=d, num_layers=_get(hf, "n_layer"),
            num_neurons=_get(hf, "n_inner") or 4 * d, num_heads=_get(hf, "n_head"), num_kv_heads=_get(hf, "n_head"),
            head_dim=d // _get(hf, "n_head"), norm_eps=_get(hf, "layer_norm_epsilon", 1e-5), norm_kind="layer",
            activation=_activation(hf, "activation_function", model_type), gated_mlp=False, mlp_bias=True,
            qkv_bias=True, o_bias=True, learned_positions=_get(hf, "n_positions"), tie_word_embeddings=True,
            max_position_embeddings=_get(hf, "n_positions"), **common,
        )

    num_heads = _get(hf, "num_attention_heads")
    hidden = _get(hf, "hidden_size")
    head_dim = _get(hf, "head_dim") or hidden // num_heads
    kv = _get(hf, "num_key_value_heads") or num_heads
    base = dict(
        model_type=model_type, vocab_size=_get(hf, "vocab_size"), hidden_size=hidden,
        num_layers=_get(hf, "num_hidden_layers"), num_neurons=_get(hf, "intermediate_size"), num_heads=num_heads,
        num_kv_heads=kv, head_dim=head_dim, norm_eps=_get(hf, "rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        max_position_embeddings=_get(hf, "max_position_embeddings", 4096), **common,
    )
    if model_type == "gemma3_text" or model_type == "gemma3":
        for key, allowed in (("use_bidirectional_attention", (False, None)),):
            _require(hf, key, allowed, model_type)
        layer_types = tuple(_get(hf, "layer_types") or ())
        if not layer_types:
            pattern = _get(hf, "sliding_window_pattern", 6)
            layer_types = tuple("sliding_attention" if (i + 1) % pattern else "full_attention"
                                for i in range(base["num_layers"]))
        global_p = _rope_params(hf, "full_attention")
        local_p = _rope_params(hf, "sliding_attention")
        if local_p is None or local_p is global_p:
            local_p = {"rope_theta": _get(hf, "rope_local_base_freq", 10000.0)}
        return ModelConfig(
            **{**base, "model_type": "gemma3_text"}, norm_kind="rms_plus1",
            activation=_activation(hf, "hidden_activation", model_type), qkv_bias=bool(_get(hf, "attention_bias", False)),
            o_bias=bool(_get(hf, "attention_bias", False)), qk_norm=True, sandwich_norm=True, embed_scale=True,
            attn_scale=float(_get(hf, "query_pre_attn_scalar")) ** -0.5,
            attn_softcap=_get(hf, "attn_logit_softcapping"), final_softcap=_get(hf, "final_logit_softcapping"),
            rope=_rope_from(global_p, 1_000_000.0, "gemma3 full_attention"),
            rope_local=_rope_from(local_p, 10_000.0, "gemma3 sliding_attention"),
            sliding_window=_get(hf, "sliding_window"), layer_types=layer_types,
        )

    act = _activation(hf, "hidden_act", model_type)
    rope = _rope_from(_rope_params(hf), 10000.0, model_type)
    if model_type in ("llama", "mistral"):
        sliding = _get(hf, "sliding_window") if model_type == "mistral" else None
        return ModelConfig(
            **base, activation=act, qkv_bias=bool(_get(hf, "attention_bias", False)),
            o_bias=bool(_get(hf, "attention_bias", False)), mlp_bias=bool(_get(hf, "mlp_bias", False)), rope=rope,
            sliding_window=sliding,
            layer_types=("sliding_attention" if sliding else "full_attention",) * base["num_layers"],
        )
    if model_type == "qwen2":
        if _get(hf, "use_sliding_window", False):
            raise ConfigError("qwen2 config: use_sliding_window=True is not implemented (Qwen2.5 checkpoints use False)")
        return ModelConfig(**base, activation=act, qkv_bias=True, rope=rope)
    # qwen3
    if _get(hf, "use_sliding_window", False):
        raise ConfigError("qwen3 config: use_sliding_window=True is not implemented")
    return ModelConfig(**base, activation=act, qkv_bias=bool(_get(hf, "attention_bias", False)),
                       o_bias=bool(_get(hf, "attention_bias", False)), qk_norm=True, rope=rope)
