"""Load GGUF files (llama.cpp) with the `gguf` package: dequantize, rebuild config and tokenizer.

GGUF names map onto transformers names (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.
q_proj.weight`), so the same key table and checks as safetensors apply. Two storage quirks:
- llama-arch files store q/k projections permuted for llama.cpp's interleaved RoPE: undone here;
- gemma3 files store RMSNorm weights as (w + 1): we subtract 1 (transformers' convention).
Supported architectures: llama, qwen2, qwen3, mistral (llama-arch), gemma3.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jaxvalues.errors import CheckpointError, ConfigError
from jaxvalues.models.config import ModelConfig, RopeConfig

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")

_LAYER_MAP = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
_LAYER_MAP_PLAIN = {"ffn_norm": "post_attention_layernorm"}
_LAYER_MAP_GEMMA = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                    "post_ffw_norm": "post_feedforward_layernorm"}
_GLOBAL_MAP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def _open(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is a runtime dependency
        raise CheckpointError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        return GGUFReader(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

    def g(k, default=None):
        return _field(reader, f"{arch}.{k}", default)

    names = {t.name for t in reader.tensors}
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(emb.shape[1])
    hidden = int(g("embedding_length"))
    heads = int(g("attention.head_count"))
    kv = int(g("attention.head_count_kv", heads))
    head_dim = int(g("attention.key_length", hidden // heads))
    layers = int(g("block_count"))
    scaling = g("rope.scaling.type")
    if scaling not in (None, "none"):
        raise ConfigError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not implemented")
    common = dict(
        vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_neurons=int(g("feed_forward_length")),
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings="output.weight" not in names, max_position_embeddings=int(g("context_length", 4096)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(x for x in (_field(reader, "tokenizer.ggml.eos_token_id"),) if x is not None),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"), name=path.stem,
    )
    theta = float(g("rope.freq_base", 10000.0))
    if arch == "gemma3":
        pattern = 6
        types = tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))
        return ModelConfig(model_type="gemma3_text", norm_kind="rms_plus1", activation="gelu_tanh", qk_norm=True,
                           sandwich_norm=True, embed_scale=True, attn_scale=float(head_dim) ** -0.5,
                           rope=RopeConfig(theta=theta), rope_local=RopeConfig(theta=10000.0),
                           sliding_window=int(g("attention.sliding_window", 512)), layer_types=types, **common)
    return ModelConfig(model_type=arch, activation="silu", qkv_bias="blk.0.attn_q.bias" in names,
                       qk_norm=arch == "qwen3", rope=RopeConfig(theta=theta), **common)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's convert permute(w, n_head) on an [out, in] (or [out]) array."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """GGUF tensors under transformers names, dequantized to float32 on access."""

    def __init__(self, reader, cfg: ModelConfig, path: Path):
        self.reader, self.cfg, self.path = reader, cfg, path
        self.arch = _field(reader, "general.architecture")
        self._tensors = {}
        for t in reader.tensors:
            self._tensors[self._hf_name(t.name)] = t

    def _hf_name(self, name: str) -> str:
        if name in _GLOBAL_MAP:
            return _GLOBAL_MAP[name]
        m = _BLK.match(name)
        if m:
            i, part, kind = m.groups()
            table = {**_LAYER_MAP, **(_LAYER_MAP_GEMMA if self.arch == "gemma3" else _LAYER_MAP_PLAIN)}
            if part in table:
                return f"model.layers.{i}.{table[part]}.{kind}"
        return f"<gguf>{name}"  # unknown: reported by the key check as unexpected

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(int(s) for s in reversed(self._tensors[key].shape))

    def get(self, key) -> np.ndarray:
        from gguf import quants

        t = self._tensors[key]
        try:
            arr = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{self.path}: tensor {t.name} uses {t.tensor_type.name}, which cannot be dequantized") from None
        arr = np.asarray(arr, dtype=np.float32).reshape(self.shape(key))
        if self.arch == "llama":
            if key.endswith("self_attn.q_proj.weight"):
                arr = _unpermute(arr, self.cfg.num_heads)
            elif key.endswith("self_attn.k_proj.weight"):
                arr = _unpermute(arr, self.cfg.num_kv_heads)
        if self.arch == "gemma3" and "norm" in key and key.endswith(".weight"):
            arr = arr - np.float32(1.0)
        return arr


def gguf_tokenizer(path: Path):
    """A transformers fast tokenizer rebuilt from the GGUF metadata (None if that fails)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        import warnings

        warnings.warn(f"{path}: could not rebuild the tokenizer from GGUF metadata ({type(e).__name__}: {e})")
        return None


def load_gguf(path: str | Path, dtype="float32", tokenizer: bool = True):
    from jaxvalues.loading import build_from_checkpoint

    path = Path(path)
    reader = _open(path)
    cfg = gguf_config(reader, path)
    ckpt = GGUFCheckpoint(reader, cfg, path)
    tok = gguf_tokenizer(path) if tokenizer else None
    return build_from_checkpoint(cfg, ckpt, dtype, str(path), tok)
