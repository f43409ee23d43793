"""Streaming activation statistics: one jitted program per batch shape, reduction inside it.

`collect(lm, examples, conditions, token_selection=..., k=..., batch_size=...)` runs every
example through `lm_apply(..., capture=True)` (no LM head: the hidden states are unused and
compiled away), reduces the L neuron arrays [B, S, N] of a batch to one `Partial` per row
([L, N] count + fixed-point digit sums) inside the same jit, and folds each row into its
condition of a `NeuronStats` on the host while the next batch runs (one batch in flight). Nothing of shape
[L, B, S, N] outlives a batch. The compilation count (distinct batch shapes) is reported in
`stats.meta["collect"]` with tokens, padding fraction and timing.

An optional `intervention` collects statistics of the intervened model (same program).
An optional `mesh` (jaxvalues.sharding) places the model on it and splits each batch over its
`data` axis (batch rows must divide evenly); the reduction sums integers, so any data-parallel
mesh gives bit-identical statistics.
"""

from __future__ import annotations

import time
import weakref
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.models.decoder import lm_apply
from jaxvalues.stats.accumulator import MAX_BATCH_TOKENS, NeuronStats, reduce_acts_rows
from jaxvalues.stats.batching import TokenizedExample, assemble, count_mask, plan_batches


def _batch_program(graphdef, state, ids, attn, count, mult, add):
    _, acts, _ = lm_apply(graphdef, state, ids, attn, mult, add, capture=True)
    return reduce_acts_rows(acts, count * attn)


_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def batch_program(lm):
    """The jitted per-batch reduction of `lm` (cached per model; one compile per batch shape)."""
    fn = _PROGRAMS.get(lm)
    if fn is None:
        fn = _PROGRAMS[lm] = jax.jit(partial(_batch_program, lm.graphdef))
    return fn


_MESH_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _mesh_program(lm, mesh):
    """`batch_program` with replicated outputs (host-readable on every process of a multi-host mesh)."""
    from jax.sharding import NamedSharding, PartitionSpec

    by_mesh = _MESH_PROGRAMS.setdefault(lm, {})
    if mesh not in by_mesh:
        by_mesh[mesh] = jax.jit(partial(_batch_program, lm.graphdef),
                                out_shardings=NamedSharding(mesh, PartitionSpec()))
    return by_mesh[mesh]


def _place(x, sharding):
    """A global array from a host array that every process holds in full."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                    TextColumn("{task.fields[tokens]:,} tokens"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)
    prog.start()
    prog.add_task("collect", total=total, tokens=0)
    return prog


def collect(lm, examples: Sequence[TokenizedExample], conditions: Sequence[str], *, token_selection: str = "all",
            k: int = 16, batch_size: int = 8, max_tokens: int = MAX_BATCH_TOKENS, buckets: Sequence[int] | None = None,
            intervention=None, progress: bool = False, stats: NeuronStats | None = None,
            meta: dict | None = None, mesh=None) -> NeuronStats:
    """Accumulate per-condition neuron statistics over `examples` (see module docstring).

    conditions: names, indexed by `example.condition`. stats: continue an existing accumulator.
    Returns the `NeuronStats` (with `meta["collect"]` = the run report)."""
    t0 = time.perf_counter()
    conditions = tuple(conditions)
    cfg = lm.config
    if stats is None:
        stats = NeuronStats.zeros(conditions, cfg.num_layers, cfg.num_neurons, meta)
    elif stats.conditions != conditions or stats.active.shape[1:] != (cfg.num_layers, cfg.num_neurons):
        raise JaxValuesError("collect(stats=...): the accumulator does not match these conditions / this model")
    ids, counts, conds = [], [], []
    for ex in examples:
        if not 0 <= int(ex.condition) < len(conditions):
            raise JaxValuesError(f"example {ex.id or '?'}: condition {ex.condition} is not in 0..{len(conditions) - 1}")
        if len(ex) == 0:
            continue
        arr = np.asarray(ex.ids, np.int32)
        if arr.min() < 0 or arr.max() >= cfg.vocab_size:
            raise JaxValuesError(f"example {ex.id or '?'}: token ids outside the vocabulary 0..{cfg.vocab_size - 1}")
        ids.append(arr)
        counts.append(count_mask(ex, token_selection, k).astype(np.int32))
        conds.append(int(ex.condition))
    plan = plan_batches([len(x) for x in ids], conds, batch_size, max_tokens, buckets)
    mult, add = (jnp.asarray(a) for a in lm.intervention_arrays(intervention))
    if mult.ndim != 2:
        raise ConfigError("collect takes one intervention for all sequences ([L, N] arrays)")
    fn = batch_program(lm)
    put = None
    if mesh is not None:  # see the module docstring
        from jaxvalues.sharding import DATA, batch_sharding, intervention_sharding, shard_model

        if getattr(lm, "mesh", None) is not mesh:
            shard_model(lm, mesh)
        fn, bs = _mesh_program(lm, mesh), batch_sharding(mesh, 2)
        mult, add = (_place(a, intervention_sharding(mesh, cfg, 2)) for a in (mult, add))
        bad = sorted({b.rows for b in plan if b.rows % mesh.shape[DATA]})
        if bad:
            raise ConfigError(f"batches of {bad} rows do not split over the mesh's {mesh.shape[DATA]} data devices; "
                              "use a batch_size (and max_tokens) that gives a multiple of it")
        put = lambda *xs: tuple(_place(x, bs) for x in xs)  # noqa: E731
    pad = lm.pad_id
    shapes: set = set()
    real = slots = 0
    prog = _progress(progress, len(plan))
    pending = None  # (condition, device Partial): fold the previous batch while this one runs
    try:
        for b in plan:
            bi, ba, bc = assemble(b, ids, counts, pad)
            real += int(ba.sum())
            slots += ba.size
            if put is not None:
                bi, ba, bc = put(bi, ba, bc)
            shapes.add(b.shape)
            out = fn(lm.state, bi, ba, bc, mult, add)
            if pending is not None:
                stats.update_rows(*pending)
            pending = (b.row_conditions, out)
            if prog is not None:
                prog.update(prog.task_ids[0], advance=1, tokens=real)
        if pending is not None:
            stats.update_rows(*pending)
    finally:
        if prog is not None:
            prog.stop()
    report = {
        "examples": len(ids), "batches": len(plan), "compilations": len(shapes),
        "batch_shapes": sorted([list(s) for s in shapes]), "tokens_real": real,
        "tokens_counted": int(sum(int(c.sum()) for c in counts)),
        "padding_fraction": round(1 - real / slots, 4) if slots else 0.0,
        "token_selection": token_selection, "k": k if token_selection == "last_k" else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    stats.meta.setdefault("model", getattr(lm, "source", "") or getattr(cfg, "name", ""))
    stats.meta["token_selection"] = token_selection
    stats.meta["collect"] = report
    return stats
