"""Shared batching for evaluators: (condition, prompt) rows in fixed-size, length-bucketed batches.

Conventions:
- Conditions stay sparse in a `ConditionBank`; a batch gets dense per-sequence intervention
  arrays (mult, add) [L, B, N] float32, so one compiled program serves every condition (the
  FFN applies act * mult + add with identity = (1, 0)).
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


class ConditionBank:
    """Conditions (None | Intervention | (mult, add) [L, N]) turned into per-batch arrays on demand.

    Holds the sparse interventions and builds only a batch's dense (mult, add) [L, B, N], so memory
    is O(B·L·N) however many conditions there are (253 in paper.yaml, ~0.5 GB dense on a 1.5B model).
    Every condition is checked once, up front."""

    def __init__(self, conditions: Sequence, num_layers: int, num_neurons: int):
        self.items, self.num_layers, self.num_neurons = list(conditions), int(num_layers), int(num_neurons)
        for i, c in enumerate(self.items):
            m, a = self._arrays(c)
            if tuple(np.shape(m)) != (self.num_layers, self.num_neurons) or np.shape(a) != np.shape(m):
                raise JaxValuesError(f"condition {i}: intervention arrays must be [L, N] = "
                                     f"[{self.num_layers}, {self.num_neurons}], got {tuple(np.shape(m))}")

    def __len__(self) -> int:
        return len(self.items)

    def _arrays(self, c):
        m, a = as_arrays(c, self.num_layers, self.num_neurons)
        return np.asarray(m, np.float32), np.asarray(a, np.float32)

    def batch(self, ci: np.ndarray):
        """Condition indices [B] -> per-sequence (mult, add) [L, B, N] float32."""
        dense = {int(c): self._arrays(self.items[int(c)]) for c in np.unique(ci)}
        return (np.stack([dense[int(c)][0] for c in ci], axis=1),
                np.stack([dense[int(c)][1] for c in ci], axis=1))


def round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def bucket(ids: np.ndarray, mask: np.ndarray, multiple: int):
    """Left-padded [B, S] -> [B, S'] with S' = longest real length rounded up to `multiple`."""
    s_full = ids.shape[1]
    s = round_up(int(mask.sum(1).max()), multiple)
    if s <= s_full:
        return ids[:, s_full - s:], mask[:, s_full - s:]
    return np.pad(ids, ((0, 0), (s - s_full, 0))), np.pad(mask, ((0, 0), (s - s_full, 0)))


def flat_batches(lengths: np.ndarray, num_conditions: int, batch_size: int,
                 rows: np.ndarray | None = None) -> Iterator[tuple]:
    """Yield (prompt index [B], condition index [B], n real rows) covering every pair once.

    rows: optional bool [C, P]; only the (condition, prompt) pairs marked True are visited
    (e.g. random controls scored on their own value's dilemmas only)."""
    if batch_size < 1:
        raise JaxValuesError(f"batch_size must be >= 1, got {batch_size}")
    rank_p, rank_c = np.meshgrid(np.argsort(lengths, kind="stable"), np.arange(num_conditions), indexing="ij")
    flat_p, flat_c = rank_p.ravel(), rank_c.ravel()
    if rows is not None:
        rows = np.asarray(rows, bool)
        if rows.shape != (num_conditions, len(lengths)):
            raise JaxValuesError(f"rows mask must be [conditions, prompts] = [{num_conditions}, {len(lengths)}], "
                                 f"got {list(rows.shape)}")
        keep = rows[flat_c, flat_p]
        flat_p, flat_c = flat_p[keep], flat_c[keep]
    for start in range(0, len(flat_p), batch_size):
        pi, ci = flat_p[start:start + batch_size], flat_c[start:start + batch_size]
        n = len(pi)
        if n < batch_size:
            pi = np.concatenate([pi, np.full(batch_size - n, pi[0])])
            ci = np.concatenate([ci, np.full(batch_size - n, ci[0])])
        yield pi, ci, n


def num_batches(num_pairs: int, batch_size: int) -> int:
    """Batches `flat_batches` yields for `num_pairs` visited (condition, prompt) pairs."""
    return -(-int(num_pairs) // int(batch_size))


def common_prefix_lengths(ids: np.ndarray, mask: np.ndarray, group: np.ndarray, num_groups: int) -> np.ndarray:
    """Left-padded rows [P, S] in groups (`group` [P] in 0..G-1) -> [G] shared-prefix length per group:
    the longest common prefix of the group's real token sequences, at most its shortest row's
    length − 1 (every row keeps at least its last token, the answer position, for its suffix)."""
    lengths = mask.sum(1).astype(np.int64)
    s = ids.shape[1]
    out = np.zeros(num_groups, np.int64)
    for g in range(num_groups):
        members = np.flatnonzero(group == g)
        if len(members) == 0:
            continue
        n = int(lengths[members].min())
        seqs = np.stack([ids[r, s - lengths[r]: s - lengths[r] + n] for r in members])  # [m, n]
        same = np.all(seqs == seqs[:1], axis=0)
        lcp = int(np.argmin(same)) if not same.all() else n
        out[g] = max(0, min(lcp, n - 1))
    return out
