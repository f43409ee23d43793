"""Deterministic dataset shards (pure Python; no Ray).

A dataset of n items is cut into contiguous shards of the ORIGINAL order: shard k holds items
[start_k, stop_k). The cut depends only on n and the shard size / count, never on the number of
workers, so a result merged in shard order is the same for any worker count. Because
`NeuronStats.merge` is exact (integer fixed-point sums), the merged statistics also equal a single
pass over all items, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

from jaxvalues.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(n: int, *, num_shards: int | None = None, shard_size: int | None = None) -> list[Shard]:
    """Contiguous shards of `n` items: `num_shards` of (almost) equal size, or `shard_size` each."""
    if n < 0:
        raise ConfigError(f"cannot shard {n} items")
    if (num_shards is None) == (shard_size is None):
        raise ConfigError("give exactly one of num_shards / shard_size")
    if n == 0:
        return []
    if shard_size is not None:
        if shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
        return [Shard(i, s, min(s + shard_size, n)) for i, s in enumerate(range(0, n, shard_size))]
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    k = min(num_shards, n)
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append(Shard(i, start, stop))
        start = stop
    return out


def take(items: Sequence, shard: Shard) -> list:
    return list(items[shard.start:shard.stop])


def fingerprint(obj) -> str:
    """sha256 hex of an object's canonical JSON (sorted keys, no whitespace)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
