"""Bad arguments to the Python API raise JaxValuesError naming the argument (never silently wrong)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxvalues as jv
from jaxvalues.errors import CheckpointError, JaxValuesError
from jaxvalues.loading import load_model
from jaxvalues.loading.safetensors_io import SafetensorsFile, save_safetensors
from jaxvalues.models.intervention import Intervention
from jaxvalues.testing import tiny_hf_model


# --- Intervention ---------------------------------------------------------------------------
@pytest.mark.parametrize("neurons, text", [
    ({0: [1.7]}, "neuron ids must be integers >= 0, got 1.7"),
    ({0: [-1]}, "neuron ids must be integers >= 0, got -1"),
    ({0: [True]}, "neuron ids must be integers >= 0, got True"),
    ({"0": [1]}, "layer keys must be integers >= 0, got '0'"),
    ({0.5: [1]}, "layer keys must be integers >= 0, got 0.5"),
    ({-1: [1]}, "layer keys must be integers >= 0, got -1"),
    ({0: "12"}, "neuron ids must be integers >= 0, got '12'"),
    ([1, 2], "neurons must be a mapping"),
])
def test_zero_refuses_bad_neuron_maps(neurons, text):
    with pytest.raises(JaxValuesError, match="Intervention") as e:
        Intervention.zero(neurons)
    assert text in str(e.value)


def test_integer_ids_of_any_int_type_accepted():
    assert Intervention.zero({np.int64(1): np.array([2, 3])}).neurons() == {1: [2, 3]}
    assert Intervention.zero({0: range(2)}).neurons() == {0: [0, 1]}


@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), -float("inf"), "x", None])
def test_scale_refuses_non_finite_gamma(gamma):
    with pytest.raises(JaxValuesError, match="gamma must be a finite number"):
        Intervention.scale({0: [1]}, gamma)


def test_set_full_array_shape_checked_against_model():
    iv = Intervention.set({0: [1]}, np.ones((2, 3)))
    np.testing.assert_array_equal(iv.arrays(2, 3)[1][0], [0, 1, 0])
    with pytest.raises(JaxValuesError, match=r"values array has shape \(2, 3\); the model needs \[L, N\] = \[3, 3\]"):
        iv.arrays(3, 3)
    with pytest.raises(JaxValuesError, match=r"the model needs"):  # kept through `|`
        (Intervention.zero({0: [0]}) | iv).arrays(2, 4)
    with pytest.raises(JaxValuesError, match=r"layer 0 neuron 5 is outside the values array of shape \(2, 3\)"):
        Intervention.set({0: [5]}, np.ones((2, 3)))


def test_set_nested_values_must_match_neuron_lists():
    with pytest.raises(JaxValuesError, match="layer 0 has 2 neurons but 1 values"):
        Intervention.set({0: [1, 2]}, {0: [1.0]})
    with pytest.raises(JaxValuesError, match="values has no entry for layer 1"):
        Intervention.set({1: [1]}, {0: [1.0]})
    with pytest.raises(JaxValuesError, match="finite"):
        Intervention.set({0: [1]}, {0: [float("nan")]})
    with pytest.raises(JaxValuesError, match="finite"):
        Intervention.set({0: [1]}, float("inf"))


def test_arrays_names_out_of_range_layer_and_neuron():
    with pytest.raises(JaxValuesError, match=r"neuron 5 in layer 0; the model has neurons 0..2"):
        Intervention.zero({0: [5]}).arrays(2, 3)
    with pytest.raises(JaxValuesError, match=r"layer 4; the model has layers 0..1"):
        Intervention.zero({4: [1]}).arrays(2, 3)


# --- load_model / forward ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    tiny_hf_model("llama", d)
    return d


@pytest.mark.parametrize("dtype", [np.float64, "float64", "float16", jnp.float16, "int8", np.int32, object()])
def test_load_model_refuses_unsupported_dtype(tiny_dir, dtype):
    with pytest.raises(JaxValuesError, match="load_model: dtype .* (is not supported|is not a dtype)"):
        load_model(tiny_dir, dtype=dtype)


@pytest.mark.parametrize("dtype, name", [("float32", "float32"), (np.float32, "float32"), ("bf16", "bfloat16"),
                                         (jnp.bfloat16, "bfloat16")])
def test_load_model_accepts_float32_and_bfloat16(tiny_dir, dtype, name):
    m = load_model(tiny_dir, dtype=dtype)
    assert m.dtype == name
    var = m.state["embed_tokens"]
    leaf = var.get_value() if hasattr(var, "get_value") else var
    assert jnp.dtype(leaf.dtype).name == name


def test_forward_refuses_bad_ids_and_masks(tiny_dir):
    m = load_model(tiny_dir)
    v = m.config.vocab_size
    ok = np.array([[1, 2, 3]])
    assert np.isfinite(np.asarray(m.forward(ok).logits)).all()
    cases = [
        (dict(input_ids=[[1, v]]), f"input_ids: token id {v} is outside the vocabulary 0..{v - 1}"),
        (dict(input_ids=np.array([[1, -1]])), "input_ids: token id -1 is outside the vocabulary"),
        (dict(input_ids=jnp.array([[1, v + 5]])), f"input_ids: token id {v + 5} is outside"),
        (dict(input_ids=jnp.array([[-3, 1]])), "input_ids: token id -3 is outside"),
        (dict(input_ids=[[1.5, 2]]), "input_ids must hold integers"),
        (dict(input_ids=jnp.array([[1.0, 2.0]])), "input_ids must hold integers"),
        (dict(input_ids=np.zeros((1, 2, 3), int)), "input_ids must be [batch, seq]"),
        (dict(input_ids=[["a"]]), "input_ids must hold integers"),
        (dict(input_ids=ok, attention_mask=np.ones((1, 4))), "attention_mask must have the shape of input_ids (1, 3)"),
        (dict(input_ids=ok, attention_mask=[[1, 0.5, 1]]), "attention_mask must hold integers"),
    ]
    for kw, text in cases:
        with pytest.raises(JaxValuesError) as e:
            m.forward(**kw)
        assert text in str(e.value), (kw, str(e.value))


def test_non_finite_weights_refused_at_load(tmp_path):
    tiny_hf_model("llama", tmp_path)
    f = tmp_path / "model.safetensors"
    sf = SafetensorsFile(f)
    tensors = {k: np.array(sf.get(k)) for k in sf.keys()}
    del sf
    key = "model.layers.0.mlp.up_proj.weight"
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    save_safetensors(tensors, f)
    with pytest.raises(CheckpointError, match=rf"NaN or inf values: {key} \(1 of"):
        load_model(tmp_path)


def test_unsupported_model_type_names_config_json(tmp_path):
    import json

    from jaxvalues.errors import ConfigError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError) as e:
        load_model(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "config.json") + ": model_type 'bert' is not supported")


@pytest.mark.parametrize("tol", ["-1", "nan", "inf"])
def test_validate_refuses_bad_tolerance(tol, capsys):
    from jaxvalues.cli import main

    rc = main(["validate", "--model", "nope", "--tolerance", tol])
    err = capsys.readouterr().err
    assert rc == 2 and "--tolerance must be a finite number >= 0" in err


def test_mult_add_arrays_shape_checked():
    from jaxvalues.models.intervention import as_arrays

    with pytest.raises(JaxValuesError, match=r"\(mult, \.\.\.\) array has shape \(2, 4\); expected \[L, N\] = \[2, 3\]"):
        as_arrays((np.ones((2, 4)), np.zeros((2, 4))), 2, 3)
    with pytest.raises(JaxValuesError, match="shapes differ"):
        as_arrays((np.ones((2, 3)), np.zeros((2, 1, 3))), 2, 3)
    assert as_arrays((np.ones((2, 5, 3)), np.zeros((2, 5, 3))), 2, 3)[0].shape == (2, 5, 3)


def test_generate_checks_ids_and_max_new_tokens(tiny_dir):
    m = load_model(tiny_dir, tokenizer=False)
    with pytest.raises(JaxValuesError, match="input_ids: token id -2 is outside"):
        m.generate(np.array([[1, -2]]), max_new_tokens=2)
    with pytest.raises(JaxValuesError, match="max_new_tokens must be an integer >= 1, got 0"):
        m.generate(np.array([[1, 2]]), max_new_tokens=0)


@pytest.mark.parametrize("kw, text", [(dict(per_value=0), "per_value (CLI --per-value) must be an integer >= 1"),
                                      (dict(batch_size=0), "batch_size (CLI --batch-size) must be"),
                                      (dict(topics_per_value=-1), "topics_per_value")])
def test_generate_records_refuses_bad_counts(tmp_path, kw, text):
    from jaxvalues.data.generate import generate_records

    with pytest.raises(JaxValuesError) as e:
        generate_records(object(), tmp_path / "o.jsonl", **kw)
    assert text in str(e.value) and not (tmp_path / "o.jsonl").exists()
