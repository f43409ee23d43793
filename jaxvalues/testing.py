"""Tiny random transformers models for tests and examples (needs torch; no download).

`tiny_hf_model(family, directory)` builds a random model from a small config, saves it as
safetensors (plus a tiny word-level tokenizer when asked) and returns the torch model.
Families: llama, llama_mqa, llama_tied, qwen2, qwen3, mistral, gemma3, gpt2.
"""

from __future__ import annotations

from pathlib import Path

TINY_CONFIGS = {
    # GQA, untied head
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, rope_theta=10000.0)),
    # MQA, tied head, llama3 rope scaling
    "llama_mqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}, rope_theta=500000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=512, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=24, tie_word_embeddings=False)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, sliding_window=20,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=16, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
        final_logit_softcapping=30.0)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=211, n_embd=64, n_layer=3, n_head=4, n_positions=256, n_inner=None)),
}
FAMILIES = tuple(TINY_CONFIGS)


def tiny_hf_model(family: str, directory: str | Path, seed: int = 0, **overrides):
    import torch
    import transformers

    cfg_cls, model_cls, kw = TINY_CONFIGS[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**kw, **overrides})
    if hasattr(cfg, "_attn_implementation"):
        cfg._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(cfg).eval()
    if family == "gemma3":  # random init leaves norm weights at 0; perturb so (1 + w) is exercised
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.normal_(0, 0.1)
    model.save_pretrained(str(directory))
    return model


def neuron_modules(model):
    """The activation-function module of every FFN (its output is the neuron vector)."""
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    return [(layer.mlp.act if hasattr(layer.mlp, "act") else layer.mlp.act_fn) for layer in layers]


def torch_forward(model, ids, mask, hook_fn=None):
    """Run the torch model with transformers' position convention; return (logits, neurons [L,B,S,N])."""
    import numpy as np
    import torch

    acts = []
    handles = []
    for i, mod in enumerate(neuron_modules(model)):
        def hook(m, inp, out, i=i):
            if hook_fn is not None:
                out = hook_fn(i, out)
            acts.append(out.detach().float().numpy())
            return out
        handles.append(mod.register_forward_hook(hook))
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                           position_ids=torch.tensor(pos, dtype=torch.long)).logits.float().numpy()
    finally:
        for h in handles:
            h.remove()
    return logits, np.stack(acts)


def word_tokenizer(words: list[str] | None = None, chat_template: str | None = None):
    """A small real `PreTrainedTokenizerFast` (word level), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = words or [f"w{i}" for i in range(150)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast
