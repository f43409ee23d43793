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
    # (L, N) shapes of full arrays given to `set`; `arrays(L, N)` refuses a model of another shape
    value_shapes: tuple = ()

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def none(cls) -> "Intervention":
        return cls({}, "none")

    @classmethod
    def zero(cls, neurons: NeuronMap, label: str = "zero") -> "Intervention":
        return cls(_build(neurons, lambda l, n: (0.0, 0.0)), label)

    @classmethod
    def scale(cls, neurons: NeuronMap, gamma: float, label: str | None = None) -> "Intervention":
        try:
            g = float(gamma)
        except (TypeError, ValueError):
            raise JaxValuesError(f"Intervention.scale: gamma must be a finite number, got {gamma!r}") from None
        if not np.isfinite(g):
            raise JaxValuesError(f"Intervention.scale: gamma must be a finite number, got {gamma!r}")
        return cls(_build(neurons, lambda l, n: (g, 0.0)), label or f"scale{g:g}")

    @classmethod
    def set(cls, neurons: NeuronMap, values, label: str = "set") -> "Intervention":
        """Set neurons to fixed values. `values`: a full [L, N] array (e.g. per-neuron means),
        a scalar, or a mapping layer -> sequence aligned with `neurons[layer]`."""
        norm = _normalize(neurons, "Intervention.set")
        if np.isscalar(values):
            v = _finite(values, "Intervention.set: values")
            return cls(_build(norm, lambda l, n: (0.0, v)), label)
        if isinstance(values, Mapping):
            lookup = {}
            for layer, idx in norm.items():
                if layer not in values:
                    raise JaxValuesError(f"Intervention.set: values has no entry for layer {layer}")
                vals = np.asarray(values[layer], dtype=object).ravel().tolist()
                if len(vals) != len(idx):
                    raise JaxValuesError(f"Intervention.set: layer {layer} has {len(idx)} neurons but {len(vals)} values")
                lookup.update({(layer, n): _finite(v, f"Intervention.set: values[{layer}]") for n, v in zip(idx, vals)})
            return cls(_build(norm, lambda l, n: (0.0, lookup[(l, n)])), label)
        try:
            arr = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise JaxValuesError(f"Intervention.set: values must be a scalar, a mapping or an [L, N] array, got {type(values).__name__}") from None
        if arr.ndim != 2:
            raise JaxValuesError(f"Intervention.set: values must be a scalar, a mapping or an [L, N] array, got shape {arr.shape}")
        for layer, idx in norm.items():
            for n in idx:
                if layer >= arr.shape[0] or n >= arr.shape[1]:
                    raise JaxValuesError(f"Intervention.set: layer {layer} neuron {n} is outside the values array of shape {arr.shape}")
        sub = {l: [float(arr[l, n]) for n in idx] for l, idx in norm.items()}
        if not all(np.isfinite(v) for vs in sub.values() for v in vs):
            raise JaxValuesError("Intervention.set: values contains NaN or inf at a selected neuron")
        lookup = {(l, n): v for l, idx in norm.items() for n, v in zip(idx, sub[l])}
        return cls(_build(norm, lambda l, n: (0.0, lookup[(l, n)])), label, (tuple(int(d) for d in arr.shape),))

    # --- combination and inspection ---------------------------------------------------------
    def __or__(self, other: "Intervention") -> "Intervention":
        merged = {l: dict(m) for l, m in self.edits.items()}
        for l, m in other.edits.items():
            merged.setdefault(l, {}).update(m)
        return Intervention(merged, f"{self.label}|{other.label}".strip("|"), tuple(self.value_shapes) + tuple(other.value_shapes))

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
        for shape in self.value_shapes:
            if tuple(shape) != (num_layers, num_neurons):
                raise JaxValuesError(
                    f"Intervention.set: values array has shape {tuple(shape)}; the model needs [L, N] = [{num_layers}, {num_neurons}]"
                )
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


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _finite(v, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise JaxValuesError(f"{what} must be finite numbers, got {v!r}") from None
    if not np.isfinite(f):
        raise JaxValuesError(f"{what} must be finite numbers, got {v!r}")
    return f


def _normalize(neurons, where: str = "Intervention") -> dict[int, list[int]]:
    """layer -> neuron ids, refusing non-integer or negative layers and neuron ids (1.7 is not 1)."""
    if not isinstance(neurons, Mapping):
        raise JaxValuesError(f"{where}: neurons must be a mapping layer -> neuron ids, got {type(neurons).__name__}")
    out: dict[int, list[int]] = {}
    for layer, idx in neurons.items():
        if not _is_int(layer) or int(layer) < 0:
            raise JaxValuesError(f"{where}: layer keys must be integers >= 0, got {layer!r}")
        layer = int(layer)
        if isinstance(idx, (str, bytes)) or not isinstance(idx, Iterable):
            idx = np.asarray(idx)
            if idx.ndim != 0:
                raise JaxValuesError(f"{where}: layer {layer}: neuron ids must be a sequence of integers, got {idx!r}")
            idx = [idx.item()]
        ids = []
        for n in np.asarray(list(idx), dtype=object).ravel().tolist() if not isinstance(idx, np.ndarray) else idx.ravel().tolist():
            if not _is_int(n) or int(n) < 0:
                raise JaxValuesError(f"{where}: layer {layer}: neuron ids must be integers >= 0, got {n!r}")
            ids.append(int(n))
        out[layer] = ids
    return out


def _build(neurons: NeuronMap, fn) -> dict[int, dict[int, tuple[float, float]]]:
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for layer, idx in _normalize(neurons).items():
        out[layer] = {n: fn(layer, n) for n in idx}
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
        for name, a in (("mult", mult), ("add", add)):
            shape = tuple(a.shape)
            if not (shape == (num_layers, num_neurons) or (len(shape) == 3 and shape[0] == num_layers
                                                           and shape[2] == num_neurons)):
                raise JaxValuesError(f"intervention ({name}, ...) array has shape {shape}; expected [L, N] = "
                                     f"[{num_layers}, {num_neurons}] or [L, B, N]")
        if tuple(mult.shape) != tuple(add.shape):
            raise JaxValuesError(f"intervention (mult, add): shapes differ, {tuple(mult.shape)} vs {tuple(add.shape)}")
        return mult, add
    if isinstance(intervention, (list, tuple)):
        return Intervention.stack(list(intervention), num_layers, num_neurons)
    raise JaxValuesError(f"intervention must be None, an Intervention, a list of them or (mult, add); got {type(intervention).__name__}")
