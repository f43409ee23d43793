"""Value-neuron identification: pure functions over statistics, gradients and learned masks.

    from jaxvalues.identify import vape, stance_neurons, contrast, attribute, learn_mask, NeuronSet
    res = vape(stats)                     # LAPE selection over the 12 values
    ns = res.to_neuronset()               # value, layer, neuron, score, method, rank
    iv = ns.to_intervention("integrity")  # zero those neurons

Names are imported lazily (the CLI imports `jaxvalues.identify.cli` without JAX).
"""

from __future__ import annotations

from jaxvalues._lazy import lazy_exports

_LAZY = {
    "NeuronSet": "jaxvalues.identify.neuronset",
    "jaccard": "jaxvalues.identify.neuronset",
    "stability": "jaxvalues.identify.neuronset",
    "split_halves": "jaxvalues.identify.neuronset",
    "entropy": "jaxvalues.identify.vape",
    "lape_select": "jaxvalues.identify.vape",
    "vape": "jaxvalues.identify.vape",
    "stance_select": "jaxvalues.identify.vape",
    "stance_neurons": "jaxvalues.identify.vape",
    "LapeResult": "jaxvalues.identify.vape",
    "contrast": "jaxvalues.identify.contrast",
    "contrast_scores": "jaxvalues.identify.contrast",
    "attribute": "jaxvalues.identify.attribution",
    "attribute_records": "jaxvalues.identify.attribution",
    "choice_logodds": "jaxvalues.identify.attribution",
    "AttributionResult": "jaxvalues.identify.attribution",
    "learn_mask": "jaxvalues.identify.mask",
    "MaskResult": "jaxvalues.identify.mask",
}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
