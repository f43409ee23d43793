"""Sharding rules, in one place: logical axes -> mesh axes, and helpers to place arrays.

Mesh axes: `data` (batch, data parallel) and `model` (tensor parallel over FFN neurons and
attention heads). Logical axes of every parameter are derived from its path:

    embed_tokens / lm_head       [vocab, embed]      replicated
    q/k/v_proj.kernel            [embed, heads*Dh]   columns over `model` (when divisible)
    o_proj.kernel                [heads*Dh, embed]   rows over `model`
    gate/up_proj.kernel          [embed, neurons]    columns over `model`
    down_proj.kernel             [neurons, embed]    rows over `model`
    biases of sharded columns    [heads*Dh|neurons]  over `model`
    norms, positions             replicated

Intervention arrays [L, N] / [L, B, N] are sharded over neurons like the FFN; activations
[B, S, N] then need no communication for per-neuron statistics, and batch sums reduce over
`data`. A dimension that the `model` axis does not divide stays replicated (e.g. MQA k/v).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvalues.errors import JaxValuesError
from jaxvalues.models.config import ModelConfig

DATA, MODEL = "data", "model"

# logical axis -> mesh axis
RULES = {"batch": DATA, "neurons": MODEL, "heads": MODEL, "embed": None, "vocab": None, "seq": None,
         "layers": None}


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // model
    if data * model > len(devices) or data < 1 or model < 1:
        raise JaxValuesError(f"mesh data={data} × model={model} needs {data * model} devices; {len(devices)} available")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def logical_axes(path: tuple, ndim: int) -> tuple:
    names = [str(p) for p in path]
    leaf, parent = names[-1], names[-2] if len(names) > 1 else ""
    if parent in ("q_proj", "k_proj", "v_proj"):
        return ("embed", "heads") if leaf == "kernel" else ("heads",)
    if parent == "o_proj" and leaf == "kernel":
        return ("heads", "embed")
    if parent in ("gate_proj", "up_proj"):
        return ("embed", "neurons") if leaf == "kernel" else ("neurons",)
    if parent == "down_proj" and leaf == "kernel":
        return ("neurons", "embed")
    return (None,) * ndim


def _spec(axes, shape, mesh: Mesh) -> P:
    out = []
    for ax, size in zip(axes, shape):
        m = RULES.get(ax) if ax else None
        out.append(m if m is not None and size % mesh.shape[m] == 0 else None)
    return P(*out)


def state_shardings(state, mesh: Mesh):
    """NamedSharding for every parameter of an nnx.State (same tree structure)."""
    flat = nnx.to_flat_state(state)
    specs = []
    for path, var in flat:
        shape = var.get_value().shape
        specs.append((path, NamedSharding(mesh, _spec(logical_axes(path, len(shape)), shape, mesh))))
    return specs


def shard_state(state, mesh: Mesh):
    flat = nnx.to_flat_state(state)
    for (path, var), (_, sh) in zip(flat, state_shardings(state, mesh)):
        var.set_value(jax.device_put(var.get_value(), sh))
    return nnx.from_flat_state(flat)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """[B, ...] arrays: batch over `data`."""
    return NamedSharding(mesh, P(DATA, *([None] * (ndim - 1))))


def intervention_sharding(mesh: Mesh, cfg: ModelConfig, ndim: int) -> NamedSharding:
    """mult/add [L, N] or [L, B, N]: neurons over `model` (when divisible)."""
    n_ax = MODEL if cfg.num_neurons % mesh.shape[MODEL] == 0 else None
    if ndim == 2:
        return NamedSharding(mesh, P(None, n_ax))
    return NamedSharding(mesh, P(None, DATA, n_ax))


def shard_model(lm, mesh: Mesh):
    """Place a LanguageModel's parameters on `mesh` (in place) and remember the mesh."""
    lm.state = shard_state(lm.state, mesh)
    lm.mesh = mesh
    return lm


def data_mesh(num_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D data-parallel mesh (`model` axis of size 1) over the first `num_devices` local devices."""
    devices = list(devices if devices is not None else jax.local_devices())
    return make_mesh(len(devices) if num_devices is None else num_devices, 1, devices)


def place_state(state, mesh: Mesh):
    """A copy of an nnx.State placed by the rules on `mesh` (the input is left as it is)."""
    shardings = dict(state_shardings(state, mesh))
    return nnx.from_flat_state([(path, var.replace(jax.device_put(var.get_value(), shardings[path])))
                                for path, var in nnx.to_flat_state(state)])


def place_batch(mesh: Mesh, x):
    """[B, ...] host array -> device array with the batch over `data` (B must be a multiple of its size)."""
    return jax.device_put(x, batch_sharding(mesh, np.ndim(x)))
