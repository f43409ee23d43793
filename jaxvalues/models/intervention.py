"""Neuron interventions as data.

An `Intervention` maps layer -> {neuron: (multiplier, offset)}. The FFN applies it as

    act'[b, s, n] = act[b, s, n] * mult[layer, b, n] + add[layer, b, n]

where act = σ(x W_gate) (gated MLPs) or σ(x W_in + b) (GPT-2). Modes:
  zero:  mult 0, add 0          scale: mult γ, add 0          set: mult 0, add value
Dense arrays of fixed shape ([L, N], or [L, B, N] for one intervention per sequence) make a
whole sweep one compiled program: which neurons, how many, and how they change are values.
The identity (mult 1, add 0) is what `None` means, and x * 1 + 0 == x exactly for finite x.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxvalues.errors import JaxValuesError

NeuronMap = Mapping[int, Iterable[int]]


@dataclass(frozen=True)
class Intervention:
    """Per layer, per neuron: (multiplier, offset). Immutable; combine with `a | b` (b wins)."""

    edits: Mapping[int, Mapping[int, tuple[float, float]]] = field(default_factory=dict)
    label: str = ""

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def none(cls) -> "Intervention":
        return cls({}, "none")

    @classmethod
    def zero(cls, neurons: NeuronMap, label: str = "zero") -> "Intervention":
        return cls(_build(neurons, lambda l, n: (0.0, 0.0)), label)

    @classmethod
    def scale(cls, neurons: NeuronMap, gamma: float, label: str | None = None) -> "Intervention":
        g = float(gamma)
        return cls(_build(neurons, lambda l, n: (g, 0.0)), label or f"scale{g:g}")

    @classmethod
    def set(cls, neurons: NeuronMap, values, label: str = "set") -> "Intervention":
        """Set neurons to fixed values. `values`: a full [L, N] array (e.g. per-neuron means),
        a scalar, or a mapping layer -> sequence aligned with `neurons[layer]`."""
        if np.isscalar(values):
            v = float(values)
            return cls(_build(neurons, lambda l, n: (0.0, v)), label)
        if isinstance(values, Mapping):
            lookup = {}
            for layer, idx in neurons.items():
                vals = list(values[layer])
                idx = list(idx)
                if len(vals) != len(idx):
                    raise JaxValuesError(f"Intervention.set: layer {layer} has {len(idx)} neurons but {len(vals)} values")
                lookup.update({(int(layer), int(n)): float(v) for n, v in zip(idx, vals)})
            return cls(_build(neurons, lambda l, n: (0.0, lookup[(l, n)])), label)
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim != 2:
            raise JaxValuesError(f"Intervention.set: values must be a scalar, a mapping or an [L, N] array, got shape {arr.shape}")
        return cls(_build(neurons, lambda l, n: (0.0, float(arr[l, n]))), label)

    # --- combination and inspection ---------------------------------------------------------
    def __or__(self, other: "Intervention") -> "Intervention":
        merged = {l: dict(m) for l, m in self.edits.items()}
        for l, m in other.edits.items():
            merged.setdefault(l, {}).update(m)
        return Intervention(merged, f"{self.label}|{other.label}".strip("|"))

    @property
    def num_neurons(self) -> int:
        return sum(len(m) for m in self.edits.values())

    def neurons(self) -> dict[int, list[int]]:
        return {l: sorted(m) for l, m in sorted(self.edits.items()) if m}

    def is_empty(self) -> bool:
        return self.num_neurons == 0

    # --- dense arrays ----------------------------------------------------------------------
    def arrays(self, num_layers: int, num_neurons: int) -> tuple[np.ndarray, np.ndarray]:
        """(mult [L, N], add [L, N]) float32."""
        mult = np.ones((num_layers, num_neurons), np.float32)
        add = np.zeros((num_layers, num_neurons), np.float32)
        for layer, m in self.edits.items():
            if not 0 <= layer < num_layers:
                raise JaxValuesError(f"intervention names layer {layer}; the model has layers 0..{num_layers - 1}")
            if not m:
                continue
            idx = np.fromiter(m.keys(), dtype=np.int64, count=len(m))
            if idx.min() < 0 or idx.max() >= num_neurons:
                bad = int(idx[(idx < 0) | (idx >= num_neurons)][0])
                raise JaxValuesError(f"intervention names neuron {bad} in layer {layer}; the model has neurons 0..{num_neurons - 1}")
            vals = np.array(list(m.values()), dtype=np.float32).reshape(-1, 2)
            mult[layer, idx] = vals[:, 0]
            add[layer, idx] = vals[:, 1]
        return mult, add

    @staticmethod
    def stack(interventions: Sequence["Intervention | None"], num_layers: int, num_neurons: int):
        """One intervention per sequence: (mult [L, B, N], add [L, B, N]) float32."""
        pairs = [(iv or Intervention.none()).arrays(num_layers, num_neurons) for iv in interventions]
        return np.stack([p[0] for p in pairs], axis=1), np.stack([p[1] for p in pairs], axis=1)


def _build(neurons: NeuronMap, fn) -> dict[int, dict[int, tuple[float, float]]]:
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for layer, idx in neurons.items():
        layer = int(layer)
        out[layer] = {int(n): fn(layer, int(n)) for n in np.asarray(list(idx), dtype=np.int64).ravel()}
    return out


def identity_arrays(num_layers: int, num_neurons: int):
    return np.ones((num_layers, num_neurons), np.float32), np.zeros((num_layers, num_neurons), np.float32)


def as_arrays(intervention, num_layers: int, num_neurons: int):
    """Normalize None | Intervention | list of Interventions | (mult, add) to float32 arrays."""
    if intervention is None:
        return identity_arrays(num_layers, num_neurons)
    if isinstance(intervention, Intervention):
        return intervention.arrays(num_layers, num_neurons)
    if isinstance(intervention, tuple) and len(intervention) == 2 and not isinstance(intervention[0], Intervention):
        mult, add = (np.asarray(a, np.float32) if not hasattr(a, "dtype") else a for a in intervention)
        return mult, add
    if isinstance(intervention, (list, tuple)):
        return Intervention.stack(list(intervention), num_layers, num_neurons)
    raise JaxValuesError(f"intervention must be None, an Intervention, a list of them or (mult, add); got {type(intervention).__name__}")
