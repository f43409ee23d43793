"""jaxvalues: find, switch off and steer the neurons that encode social values in LLMs.

    import jaxvalues as jv
    lm = jv.load_model("path/to/hf_dir_or.gguf", dtype="float32")
    out = lm.forward(ids, capture_neurons=True)       # out.logits [B,S,V], out.neurons [L,B,S,N]
    iv = jv.Intervention.zero({3: [17, 42]})
    lm.generate(["Hello"], max_new_tokens=16, intervention=iv)
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("jaxvalues.loading", "load_model"),
    "LanguageModel": ("jaxvalues.models.lm", "LanguageModel"),
    "ModelConfig": ("jaxvalues.models.config", "ModelConfig"),
    "Intervention": ("jaxvalues.models.intervention", "Intervention"),
    "NeuronSet": ("jaxvalues.identify.neuronset", "NeuronSet"),
    "VALUES": ("jaxvalues.data.values", "VALUES"),
    "load_records": ("jaxvalues.data.io", "load_records"),
    "JaxValuesError": ("jaxvalues.errors", "JaxValuesError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'jaxvalues' has no attribute {name!r}")


__all__ = sorted(_LAZY)
