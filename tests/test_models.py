"""Parity of the NNX decoder with transformers' PyTorch models on tiny random checkpoints."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

import jaxvalues as jv
from jaxvalues.errors import CheckpointError, ConfigError
from jaxvalues.loading.safetensors_io import SafetensorsFile, save_safetensors
from jaxvalues.testing import FAMILIES, TINY_CONFIGS, neuron_modules, tiny_hf_model, torch_forward

TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for fam in FAMILIES:
        d = tmp_path_factory.mktemp(fam)
        out[fam] = (tiny_hf_model(fam, d), d)
    return out


def _batch(vocab=211, b=3, s=80, seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, (b, s))
    mask = np.ones_like(ids)
    mask[1, :13] = 0  # left padding
    mask[2, 66:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_neurons_match_torch(models, family):
    model, d = models[family]
    lm = jv.load_model(d)
    assert lm.config.num_neurons == TINY_CONFIGS[family][2].get("intermediate_size", 4 * 64)
    ids, mask = _batch()
    ref_logits, ref_neurons = torch_forward(model, ids, mask)
    out = lm.forward(ids, mask, capture_neurons=True)
    v = mask.astype(bool)
    assert out.logits.shape == (3, 80, 211)
    assert out.neurons.shape == (lm.config.num_layers, 3, 80, lm.config.num_neurons)
    assert np.abs(np.asarray(out.logits)[v] - ref_logits[v]).max() <= TOL
    assert np.abs(np.asarray(out.neurons)[:, v] - ref_neurons[:, v]).max() <= TOL


def test_families_cover_gqa_mqa_tied_untied():
    cfgs = {f: jv.ModelConfig.from_hf(__import__("transformers").AutoConfig.for_model(
        **{"model_type": {"llama": "llama", "llama_mqa": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                          "mistral": "mistral", "gemma3": "gemma3_text", "gpt2": "gpt2"}[f], **TINY_CONFIGS[f][2]}))
        for f in FAMILIES}
    assert cfgs["llama"].num_kv_heads == 2 and cfgs["llama"].num_heads == 4  # GQA
    assert cfgs["llama_mqa"].num_kv_heads == 1  # MQA
    assert cfgs["llama_mqa"].tie_word_embeddings and not cfgs["llama"].tie_word_embeddings
    assert cfgs["llama_mqa"].rope.kind == "llama3"
    assert cfgs["gemma3"].sliding_layers == (True, True, False, True)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_interventions_match_torch_hooks(models, family):
    model, d = models[family]
    lm = jv.load_model(d)
    ids, mask = _batch(seed=1)
    zero = {0: [1, 5, 7], 1: [0, 2]}
    scale = {1: [3, 4, 9], 2: [10]}
    iv = jv.Intervention.zero(zero) | jv.Intervention.scale(scale, 2.5)

    def hook(layer, out):
        out = out.clone()
        for n in zero.get(layer, []):
            out[..., n] = 0.0
        for n in scale.get(layer, []):
            out[..., n] = out[..., n] * 2.5
        return out

    ref_logits, ref_neurons = torch_forward(model, ids, mask, hook_fn=hook)
    out = lm.forward(ids, mask, intervention=iv, capture_neurons=True)
    v = mask.astype(bool)
    assert np.abs(np.asarray(out.logits)[v] - ref_logits[v]).max() <= TOL
    assert np.abs(np.asarray(out.neurons)[:, v] - ref_neurons[:, v]).max() <= TOL
    base = lm.forward(ids, mask).logits
    assert np.abs(np.asarray(base)[v] - ref_logits[v]).max() > 1e-3  # the intervention did something


def test_set_mode_and_batched_interventions(models):
    _, d = models["llama"]
    lm = jv.load_model(d)
    ids, mask = _batch(seed=2)
    means = np.random.RandomState(0).rand(lm.config.num_layers, lm.config.num_neurons).astype(np.float32)
    iv_set = jv.Intervention.set({0: [3, 4]}, means)
    out = lm.forward(ids, mask, intervention=iv_set, capture_neurons=True)
    np.testing.assert_array_equal(np.asarray(out.neurons)[0, :, :, 3], np.full((3, 80), means[0, 3]))
    # one intervention per sequence == each intervention run alone
    ivs = [None, jv.Intervention.zero({1: [2, 3]}), iv_set]
    batched = np.asarray(lm.forward(ids, mask, intervention=ivs).logits)
    for i, iv in enumerate(ivs):
        single = np.asarray(lm.forward(ids, mask, intervention=iv).logits)
        np.testing.assert_allclose(batched[i], single[i], atol=1e-5)


def test_empty_intervention_is_bit_identical_and_no_recompile(models):
    _, d = models["qwen2"]
    lm = jv.load_model(d)
    ids, mask = _batch(seed=3)
    none = np.asarray(lm.forward(ids, mask).logits)
    empty = np.asarray(lm.forward(ids, mask, intervention=jv.Intervention.zero({})).logits)
    assert np.array_equal(none, empty)
    n0 = lm._forward._cache_size()
    for k in range(1, 6):  # different layers, different numbers of neurons, different modes
        iv = jv.Intervention.zero({k % 3: list(range(k * 3))}) | jv.Intervention.scale({0: [k]}, 0.5 * k)
        lm.forward(ids, mask, intervention=iv)
    assert lm._forward._cache_size() == n0 == 1


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "gpt2"])
def test_greedy_generation_matches_transformers(models, family):
    model, d = models[family]
    lm = jv.load_model(d)
    rs = np.random.RandomState(4)
    ids = rs.randint(3, 211, (2, 12))
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    ids[0, :4] = 0
    gen_kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **gen_kw)[:, 12:].numpy()
    ours = lm.generate(ids, attention_mask=mask, max_new_tokens=10, stop_at_eos=False)
    np.testing.assert_array_equal(ours, ref)

    # with an intervention applied at every step
    zero = {0: list(range(0, 40, 3))}
    handles = [neuron_modules(model)[0].register_forward_hook(
        lambda m, i, o: o.index_fill(-1, torch.tensor(zero[0]), 0.0))]
    try:
        with torch.no_grad():
            ref_iv = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **gen_kw)[:, 12:].numpy()
    finally:
        for h in handles:
            h.remove()
    ours_iv = lm.generate(ids, attention_mask=mask, max_new_tokens=10, stop_at_eos=False,
                          intervention=jv.Intervention.zero(zero))
    np.testing.assert_array_equal(ours_iv, ref_iv)


def test_sampling_is_seeded(models):
    _, d = models["llama"]
    lm = jv.load_model(d)
    ids = np.random.RandomState(5).randint(3, 211, (2, 8))
    a = lm.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=7)
    b = lm.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=7)
    c = lm.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 6) and not np.array_equal(a, c)


def test_bfloat16_load_close_to_float32(models):
    _, d = models["llama"]
    ids, mask = _batch(seed=6)
    f32 = np.asarray(jv.load_model(d).forward(ids, mask).logits)
    lm16 = jv.load_model(d, dtype="bfloat16")
    assert str(jax.tree.leaves(lm16.state)[0].dtype) == "bfloat16"
    b16 = np.asarray(lm16.forward(ids, mask).logits)
    assert b16.dtype == np.float32
    assert np.abs(b16 - f32).max() < 0.1


# --- sharded checkpoints -----------------------------------------------------------------------

def test_sharded_checkpoint_loads(models, tmp_path):
    model, _ = models["qwen3"]
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    lm = jv.load_model(tmp_path)
    ids, mask = _batch(seed=7)
    ref, _ = torch_forward(model, ids, mask)
    v = mask.astype(bool)
    assert np.abs(np.asarray(lm.forward(ids, mask).logits)[v] - ref[v]).max() <= TOL


# --- GGUF -------------------------------------------------------------------------------------

def _permute(w, n_head):  # llama.cpp convert_hf_to_gguf's LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama_gguf(model, path):
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if k == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", a)
        elif k == "model.norm.weight":
            w.add_tensor("output_norm.weight", a)
        elif k == "lm_head.weight":
            w.add_tensor("output.weight", a)
        else:
            i, rest = k[len("model.layers."):].split(".", 1)
            rest = rest.rsplit(".", 1)[0]
            if rest == "self_attn.q_proj":
                a = _permute(a, cfg.num_attention_heads)
            elif rest == "self_attn.k_proj":
                a = _permute(a, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{names[rest]}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_llama_matches_safetensors_twin(models, tmp_path):
    model, d = models["llama"]
    path = tmp_path / "tiny-llama.gguf"
    _write_llama_gguf(model, path)
    lm_g = jv.load_model(path, tokenizer=False)
    lm_s = jv.load_model(d)
    assert lm_g.config.num_kv_heads == 2 and not lm_g.config.tie_word_embeddings
    ids, mask = _batch(seed=8)
    v = mask.astype(bool)
    diff = np.abs(np.asarray(lm_g.forward(ids, mask).logits)[v] - np.asarray(lm_s.forward(ids, mask).logits)[v])
    assert diff.max() <= 1e-5


# --- real model sizes without memory ------------------------------------------------------------

@pytest.mark.parametrize("name,hf_kwargs,n_params", [
    ("Qwen2.5-0.5B", dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                          max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True), 494_032_768),
    ("Llama-3-8B", dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False), 8_030_261_248),
])
def test_eval_shape_real_configs(name, hf_kwargs, n_params):
    from flax import nnx
    from transformers import AutoConfig

    from jaxvalues.models.decoder import abstract_decoder, lm_apply, lm_logits

    cfg = jv.ModelConfig.from_hf(AutoConfig.for_model(**hf_kwargs))
    graphdef, state = nnx.split(abstract_decoder(cfg))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state)) == n_params
    ids = jax.ShapeDtypeStruct((2, 16), np.int32)
    mult = jax.ShapeDtypeStruct((cfg.num_layers, cfg.num_neurons), np.float32)

    def f(state, ids, mult):
        h, acts, _ = lm_apply(graphdef, state, ids, jax.numpy.ones_like(ids), mult, mult * 0, capture=True)
        return lm_logits(graphdef, state, h[:, -1]), acts[0]

    logits, act = jax.eval_shape(f, state, ids, mult)
    assert logits.shape == (2, cfg.vocab_size) and act.shape == (2, 16, cfg.num_neurons)


# --- bad input ----------------------------------------------------------------------------------

def _copy_checkpoint(src, dst, edit):
    sf = SafetensorsFile(src / "model.safetensors")
    tensors = {k: np.array(sf.get(k)) for k in sf.keys()}
    edit(tensors)
    dst.mkdir(exist_ok=True)
    save_safetensors(tensors, dst / "model.safetensors")
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_missing_tensor_is_named(models, tmp_path):
    _, d = models["llama"]
    _copy_checkpoint(d, tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model\.layers\.1\.mlp\.up_proj\.weight"):
        jv.load_model(tmp_path / "m")


def test_wrong_shape_is_named(models, tmp_path):
    _, d = models["llama"]

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]
    _copy_checkpoint(d, tmp_path / "m", edit)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight: shape \(16, 64\), expected \(32, 64\)"):
        jv.load_model(tmp_path / "m")


def test_unexpected_tensor_is_named(models, tmp_path):
    _, d = models["llama"]
    _copy_checkpoint(d, tmp_path / "m", lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\).*model\.extra\.weight"):
        jv.load_model(tmp_path / "m")


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon_mamba", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="falcon_mamba"):
        jv.load_model(tmp_path)


def test_unimplemented_attribute_is_named():
    from transformers import AutoConfig

    hf = AutoConfig.for_model(model_type="llama", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                "original_max_position_embeddings": 2048})
    with pytest.raises(ConfigError, match="rope type 'yarn' is not implemented"):
        jv.ModelConfig.from_hf(hf)


def test_truncated_safetensors(models, tmp_path):
    _, d = models["llama"]
    data = (d / "model.safetensors").read_bytes()
    m = tmp_path / "m"
    m.mkdir()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    (m / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        jv.load_model(m)


def test_non_gguf_file(tmp_path):
    p = tmp_path / "weights.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(CheckpointError, match=r"weights\.gguf: not a GGUF file"):
        jv.load_model(p)


def test_unknown_source_message(tmp_path):
    with pytest.raises(jv.JaxValuesError, match="no such file or directory"):
        jv.load_model(str(tmp_path / "nope"))


def test_hub_id_offline_is_a_plain_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(jv.JaxValuesError, match=r"'someorg/somemodel': could not download from the Hugging Face hub"):
        jv.load_model("someorg/somemodel")
