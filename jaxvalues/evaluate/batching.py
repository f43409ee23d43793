"""Shared batching for evaluators: (condition, prompt) rows in fixed-size, length-bucketed batches.

Conventions:
- Conditions become dense intervention arrays once: (mult, add) [C, L, N] float32
  (`condition_arrays`); a batch takes per-sequence slices -> [L, B, N], so one compiled program
  serves every condition (the FFN applies act * mult + add with identity = (1, 0)).
- Rows are visited length rank major, condition minor (`flat_batches`): a batch holds prompts of
  similar length, often one prompt under several conditions. The last batch is filled with copies
  of its first row; callers keep only the first `n` outputs.
- Prompts are left-padded; `bucket` trims or extends the padding to the batch's longest real
  length rounded up to `multiple`, so the number of distinct shapes (compilations) is small and
  does not depend on the conditions.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from jaxvalues.errors import JaxValuesError
from jaxvalues.models.intervention import as_arrays


def condition_arrays(conditions: Sequence, num_layers: int, num_neurons: int):
    """Interventions (None | Intervention | (mult, add) [L, N]) -> (mult, add) [C, L, N] float32."""
    pairs = [as_arrays(c, num_layers, num_neurons) for c in conditions]
    for i, (m, _) in enumerate(pairs):
        if tuple(np.shape(m)) != (num_layers, num_neurons):
            raise JaxValuesError(f"condition {i}: intervention arrays must be [L, N] = "
                                 f"[{num_layers}, {num_neurons}], got {tuple(np.shape(m))}")
    return (np.stack([np.asarray(p[0], np.float32) for p in pairs]),
            np.stack([np.asarray(p[1], np.float32) for p in pairs]))


def round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def bucket(ids: np.ndarray, mask: np.ndarray, multiple: int):
    """Left-padded [B, S] -> [B, S'] with S' = longest real length rounded up to `multiple`."""
    s_full = ids.shape[1]
    s = round_up(int(mask.sum(1).max()), multiple)
    if s <= s_full:
        return ids[:, s_full - s:], mask[:, s_full - s:]
    return np.pad(ids, ((0, 0), (s - s_full, 0))), np.pad(mask, ((0, 0), (s - s_full, 0)))


def flat_batches(lengths: np.ndarray, num_conditions: int, batch_size: int) -> Iterator[tuple]:
    """Yield (prompt index [B], condition index [B], n real rows) covering every pair once."""
    if batch_size < 1:
        raise JaxValuesError(f"batch_size must be >= 1, got {batch_size}")
    rank_p, rank_c = np.meshgrid(np.argsort(lengths, kind="stable"), np.arange(num_conditions), indexing="ij")
    flat_p, flat_c = rank_p.ravel(), rank_c.ravel()
    for start in range(0, len(flat_p), batch_size):
        pi, ci = flat_p[start:start + batch_size], flat_c[start:start + batch_size]
        n = len(pi)
        if n < batch_size:
            pi = np.concatenate([pi, np.full(batch_size - n, pi[0])])
            ci = np.concatenate([ci, np.full(batch_size - n, ci[0])])
        yield pi, ci, n


def batch_arrays(mult_c: np.ndarray, add_c: np.ndarray, ci: np.ndarray):
    """[C, L, N] condition arrays -> per-sequence (mult, add) [L, B, N] for condition indices ci."""
    return mult_c[ci].transpose(1, 0, 2), add_c[ci].transpose(1, 0, 2)
