"""jaxvalues: find, switch off and steer the neurons that encode social values in LLMs.

    import jaxvalues as jv
    lm = jv.load_model("path/to/hf_dir_or.gguf", dtype="float32")
    out = lm.forward(ids, capture_neurons=True)       # out.logits [B,S,V], out.neurons [L,B,S,N]
    iv = jv.Intervention.zero({3: [17, 42]})
    lm.generate(["Hello"], max_new_tokens=16, intervention=iv)
"""

from __future__ import annotations

__version__ = "0.1.0"

from jaxvalues._lazy import lazy_exports  # noqa: E402

__getattr__, __all__ = lazy_exports(__name__, {
    "load_model": "jaxvalues.loading",
    "LanguageModel": "jaxvalues.models.lm",
    "ModelConfig": "jaxvalues.models.config",
    "Intervention": "jaxvalues.models.intervention",
    "NeuronSet": "jaxvalues.identify.neuronset",
    "VALUES": "jaxvalues.data.values",
    "load_records": "jaxvalues.data.io",
    "JaxValuesError": "jaxvalues.errors",
})
