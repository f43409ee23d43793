"""`NeuronSet`: the table of identified neurons, and set comparisons.

Columns (one row per value × neuron): value (str: a value id, or a condition such as
"integrity-support"), layer (int), neuron (int), score (float64: method-specific, higher = stronger
evidence; vape: −entropy, contrast: the contrast statistic, attribution: the mean attribution,
mask: 1 − gate), method (str), rank (int: 0 = best within (value, method)), kind (str or None:
the authors' neuron kind, "decision" / "semantic", set by `stance_neurons`; None elsewhere and for
files written before the column existed, which load unchanged).
Saved as Parquet; the file's key-value metadata holds `num_layers`, `num_neurons` and `info` (JSON).
A neuron may belong to several values. Set operations compare (layer, neuron) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from jaxvalues.errors import ConfigError, JaxValuesError

COLUMNS = ("value", "layer", "neuron", "score", "method", "rank", "kind")
REQUIRED = COLUMNS[:6]  # "kind" is optional (missing -> None)
_DTYPES = {"value": "string", "layer": "int32", "neuron": "int32", "score": "float64", "method": "string",
           "rank": "int32", "kind": "string"}
KINDS = ("decision", "semantic")

# The authors' 32-layer Llama: decision masks on layers i <= 4 and i >= 27, semantic on 4 < i < 27.
_AUTHORS_LAYERS, _AUTHORS_LOW, _AUTHORS_HIGH = 32, 4, 27


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def authors_layer_split(num_layers: int) -> dict:
    """Where the authors apply each kind, for a model of `num_layers` layers.

    low = round(4/31 · (L−1)), high = round(27/31 · (L−1)) (round half up; for L = 32 exactly
    the authors' 4 and 27): decision layers i <= low or i >= high, semantic layers low < i < high.
    Returns {"num_layers", "low", "high", "decision": [...], "semantic": [...], "rule", "scaled"}."""
    L = int(num_layers)
    if L < 1:
        raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
    span = _AUTHORS_LAYERS - 1
    low = _round_half_up(_AUTHORS_LOW / span * (L - 1))
    high = _round_half_up(_AUTHORS_HIGH / span * (L - 1))
    return {"num_layers": L, "low": low, "high": high,
            "decision": [i for i in range(L) if i <= low or i >= high],
            "semantic": [i for i in range(L) if low < i < high],
            "rule": "decision: i <= low or i >= high; semantic: low < i < high; "
                    "low = round(4/31*(L-1)), high = round(27/31*(L-1)) (half up); authors' L=32: 4, 27",
            "scaled": L != _AUTHORS_LAYERS}


def authors_layers(num_layers: int, kind: str) -> list[int]:
    """The layers where the authors apply `kind` ("decision" | "semantic" | "combined" = all)
    neurons (see `authors_layer_split` for the rule and its scaling to other depths)."""
    if kind == "combined":
        return list(range(int(num_layers)))
    if kind not in KINDS:
        raise ConfigError(f"unknown neuron kind {kind!r}; expected one of {', '.join(KINDS)} or 'combined'")
    return authors_layer_split(num_layers)[kind]


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class NeuronSet:
    def __init__(self, table: pd.DataFrame | None = None, *, num_layers: int | None = None,
                 num_neurons: int | None = None, info: dict | None = None):
        t = pd.DataFrame(columns=list(COLUMNS)) if table is None else table
        missing = [c for c in REQUIRED if c not in t.columns]
        if missing:
            raise JaxValuesError(f"NeuronSet table lacks column(s) {missing}; expected {list(COLUMNS)}")
        if "kind" not in t.columns:
            t = t.assign(kind=None)
        self.table = t[list(COLUMNS)].astype(_DTYPES).reset_index(drop=True)
        self.num_layers, self.num_neurons = num_layers, num_neurons
        self.info = dict(info or {})

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Iterable[Mapping], **kw) -> "NeuronSet":
        return cls(pd.DataFrame(list(rows), columns=list(COLUMNS)), **kw)  # rows without "kind": None

    @classmethod
    def from_scores(cls, value: str, scores: np.ndarray, method: str, *, top_k: int | None = None,
                    top_rate: float | None = None, min_score: float | None = None,
                    min_ratio: float | None = None, **kw) -> "NeuronSet":
        """Top neurons of one value from a score map [L, N] (higher = stronger).
        top_k / top_rate (of L·N) cap the count; min_score and min_ratio (× the max score) floor it."""
        s = np.asarray(scores, np.float64)
        if s.ndim != 2:
            raise JaxValuesError(f"scores must be [layers, neurons], got shape {s.shape}")
        flat = s.ravel()
        order = np.argsort(-np.where(np.isfinite(flat), flat, -np.inf), kind="stable")
        order = order[np.isfinite(flat[order])]
        if top_rate is not None:
            k = max(1, int(round(flat.size * top_rate)))
            top_k = k if top_k is None else min(top_k, k)
        if top_k is not None:
            order = order[:top_k]
        if min_score is not None:
            order = order[flat[order] >= min_score]
        if min_ratio is not None and order.size:
            order = order[flat[order] >= min_ratio * flat[order[0]]]
        layer, neuron = np.unravel_index(order, s.shape)
        rows = pd.DataFrame({"value": value, "layer": layer, "neuron": neuron, "score": flat[order],
                             "method": method, "rank": np.arange(order.size)})
        kw.setdefault("num_layers", s.shape[0])
        kw.setdefault("num_neurons", s.shape[1])
        return cls(rows, **kw)

    @classmethod
    def concat(cls, sets: Sequence["NeuronSet"], info: dict | None = None) -> "NeuronSet":
        sets = [s for s in sets if s is not None]
        if not sets:
            return cls(info=info)
        ls = {s.num_layers for s in sets} - {None}
        ns = {s.num_neurons for s in sets} - {None}
        if len(ls) > 1 or len(ns) > 1:
            raise JaxValuesError(f"cannot combine neuron sets of different models: layers {ls}, neurons {ns}")
        merged = {}
        for s in sets:
            merged.update(s.info)
        merged.update(info or {})
        return cls(pd.concat([s.table for s in sets], ignore_index=True), num_layers=ls.pop() if ls else None,
                   num_neurons=ns.pop() if ns else None, info=merged)

    # --- access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self):
        counts = ", ".join(f"{v}: {n}" for v, n in self.counts().items())
        return f"NeuronSet({len(self)} rows; {counts or 'empty'})"

    @property
    def values(self) -> list[str]:
        return list(dict.fromkeys(self.table["value"].tolist()))

    def counts(self) -> dict[str, int]:
        return {v: int((self.table["value"] == v).sum()) for v in self.values}

    @property
    def kinds(self) -> list[str]:
        """The neuron kinds present (None rows excluded)."""
        return [k for k in dict.fromkeys(self.table["kind"].dropna().tolist())]

    def filter(self, value: str | Sequence[str] | None = None, method: str | None = None,
               layers: Iterable[int] | None = None, top: int | None = None,
               kind: str | None = None) -> "NeuronSet":
        t = self.table
        if value is not None:
            vals = [value] if isinstance(value, str) else list(value)
            unknown = [v for v in vals if v not in self.values]
            if unknown:
                raise JaxValuesError(f"no neurons for {unknown}; this set has values: {', '.join(self.values) or 'none'}")
            t = t[t["value"].isin(vals)]
        if method is not None:
            t = t[t["method"] == method]
        if layers is not None:
            t = t[t["layer"].isin(list(layers))]
        if top is not None:
            t = t[t["rank"] < top]
        if kind is not None:
            if kind not in KINDS:
                raise ConfigError(f"unknown neuron kind {kind!r}; expected one of {', '.join(KINDS)}")
            t = t[(t["kind"] == kind).fillna(False).astype(bool)]
        return NeuronSet(t, num_layers=self.num_layers, num_neurons=self.num_neurons, info=self.info)

    def pairs(self, value: str | None = None) -> set[tuple[int, int]]:
        t = self.table if value is None else self.table[self.table["value"] == value]
        return set(zip(t["layer"].astype(int), t["neuron"].astype(int)))

    def neurons(self, value: str | Sequence[str] | None = None, kind: str | None = None) -> dict[int, list[int]]:
        """{layer: sorted neuron ids} (union over the chosen values; kind: only that kind's rows,
        default all rows, every kind merged)."""
        t = self.filter(value, kind=kind).table if (value is not None or kind is not None) else self.table
        out: dict[int, set] = {}
        for layer, n in zip(t["layer"].astype(int), t["neuron"].astype(int)):
            out.setdefault(layer, set()).add(n)
        return {layer: sorted(ns) for layer, ns in sorted(out.items())}

    def to_dict(self, kind: str | None = None, by_kind: bool = False) -> dict:
        """{value: {layer: sorted neuron ids}} (the JSON neuron-map form other tools read).
        kind: only that kind's neurons (default: all kinds merged). by_kind=True:
        {value: {kind: {layer: ids}}} over the kinds present (rows without a kind are left out)."""
        if by_kind:
            return {v: {k: self.neurons(v, kind=k) for k in self.kinds} for v in self.values}
        return {v: self.neurons(v, kind=kind) for v in self.values}

    # --- interventions ----------------------------------------------------------------------
    def to_intervention(self, value: str | Sequence[str] | None = None, mode: str = "zero", gamma: float = 0.0,
                        means=None):
        """An `Intervention` on these neurons: zero | scale (× gamma) | mean (set to `means`, an
        [L, N] array or a NeuronStats whose token-weighted mean over all conditions is used)."""
        from jaxvalues.models.intervention import Intervention

        neurons = self.neurons(value)
        label = f"{mode}:{value if isinstance(value, str) or value is None else ','.join(value)}"
        if mode == "zero":
            return Intervention.zero(neurons, label=label)
        if mode == "scale":
            return Intervention.scale(neurons, gamma, label=label)
        if mode == "mean":
            if means is None:
                raise ConfigError("mode='mean' needs `means`: an [L, N] array or the NeuronStats to average")
            if hasattr(means, "pooled"):
                means = means.pooled(list(means.conditions)).mean()[0]
            means = np.asarray(means, np.float32)
            if means.ndim != 2:
                raise ConfigError(f"means must be [layers, neurons], got shape {means.shape}")
            return Intervention.set(neurons, means, label=label)
        raise ConfigError(f"unknown intervention mode {mode!r}; expected zero, scale or mean")

    # --- summaries --------------------------------------------------------------------------
    def layer_histogram(self, num_layers: int | None = None) -> dict[str, np.ndarray]:
        """value -> neurons per layer [L] int64."""
        num_layers = num_layers or self.num_layers or (int(self.table["layer"].max()) + 1 if len(self) else 0)
        out = {}
        for v in self.values:
            layers = self.table.loc[self.table["value"] == v, "layer"].to_numpy(np.int64)
            out[v] = np.bincount(layers, minlength=num_layers)[:num_layers]
        return out

    def overlap(self, values: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(values, [V, V] Jaccard matrix of their (layer, neuron) sets)."""
        values = list(values or self.values)
        sets = [self.pairs(v) for v in values]
        m = np.array([[jaccard(a, b) for b in sets] for a in sets], np.float64).reshape(len(values), len(values))
        return values, m

    # --- I/O ----------------------------------------------------------------------------------
    def save(self, path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.table, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"jaxvalues.neuronset"] = json.dumps({"num_layers": self.num_layers, "num_neurons": self.num_neurons,
                                                  "info": self.info}, ensure_ascii=False).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path

    @classmethod
    def load(cls, path) -> "NeuronSet":
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        if not path.is_file():
            raise JaxValuesError(f"{path}: no such neuron-set file")
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise JaxValuesError(f"{path}: not a readable Parquet file ({e})") from e
        raw = (table.schema.metadata or {}).get(b"jaxvalues.neuronset")
        meta = json.loads(raw) if raw else {}
        return cls(table.to_pandas(), num_layers=meta.get("num_layers"), num_neurons=meta.get("num_neurons"),
                   info=meta.get("info"))


def combined_neurons(ns: NeuronSet, value: str | Sequence[str], num_layers: int | None = None) -> dict[int, list[int]]:
    """The authors' "combined" mask of `value` (a value of the set's value column, e.g.
    "integrity-support"): decision neurons on the decision layers ∪ semantic neurons on the
    semantic layers (`authors_layers`; num_layers defaults to the set's)."""
    L = num_layers or ns.num_layers
    if L is None:
        raise ConfigError("combined_neurons needs num_layers (this neuron set does not record it)")
    split = authors_layer_split(L)
    out: dict[int, set] = {}
    for kind in KINDS:
        keep = set(split[kind])
        for layer, ids in ns.neurons(value, kind=kind).items():
            if layer in keep:
                out.setdefault(layer, set()).update(ids)
    return {layer: sorted(ids) for layer, ids in sorted(out.items())}


def stance_maps(ns: NeuronSet, values: Sequence[str], num_layers: int | None = None,
                apply: str = "combined") -> tuple[dict, dict]:
    """({v: support map}, {v: conflict map}) of a `stance_neurons` set ("{v}-support" /
    "{v}-conflict" rows) as the authors apply them: "combined" = `combined_neurons` (decision
    neurons on the decision layers ∪ semantic neurons on the semantic layers); "decision" or
    "semantic" = that kind on its own layers only. Values without rows get empty maps."""
    L = num_layers or ns.num_layers
    if L is None:
        raise ConfigError("stance_maps needs num_layers (this neuron set does not record it)")
    if apply not in ("combined", *KINDS):
        raise ConfigError(f"apply: expected 'combined' or one of {', '.join(KINDS)}, got {apply!r}")
    split = authors_layer_split(L)

    def one(name):
        if name not in ns.values:
            return {}
        if apply == "combined":
            return combined_neurons(ns, name, L)
        keep = set(split[apply])
        return {l: ids for l, ids in ns.neurons(name, kind=apply).items() if l in keep}

    return ({v: one(f"{v}-support") for v in values}, {v: one(f"{v}-conflict") for v in values})


def from_maps(maps: Mapping[str, Mapping], method: str, **kw) -> NeuronSet:
    """A NeuronSet holding {value: {layer: ids}} maps (score 0, rank by (layer, neuron))."""
    rows = [{"value": v, "layer": int(l), "neuron": int(n), "score": 0.0, "method": method, "rank": r}
            for v, m in maps.items()
            for r, (l, n) in enumerate(sorted((int(l), int(n)) for l, ids in m.items() for n in ids))]
    return NeuronSet.from_rows(rows, **kw)


def stability(a: NeuronSet, b: NeuronSet, values: Sequence[str] | None = None) -> dict[str, float]:
    """Per value: Jaccard between the sets found on two disjoint halves of the data."""
    values = list(values or dict.fromkeys(a.values + b.values))
    return {v: jaccard(a.pairs(v), b.pairs(v)) for v in values}


def _pair_groups(items: Sequence, key=None) -> dict:
    """{value: {pair key: [items]}} in first-seen order; items sharing `key(item)` (default:
    `.pair_id`, else the item) stay together."""
    key = key or (lambda x: getattr(x, "pair_id", None) or id(x))
    by_value: dict = {}
    for it in items:
        by_value.setdefault(getattr(it, "value", None), {}).setdefault(key(it), []).append(it)
    return by_value


def split_halves(items: Sequence, key=None, seed: int = 0) -> tuple[list, list]:
    """Two disjoint halves; items sharing `key(item)` (default: `.pair_id`, else the item) stay together,
    and each value (`.value`, when present) is split evenly."""
    rng = np.random.default_rng(seed)
    halves: tuple[list, list] = ([], [])
    for groups in _pair_groups(items, key).values():
        keys = list(groups)
        perm = rng.permutation(len(keys))
        for rank, i in enumerate(perm):
            halves[rank % 2].extend(groups[keys[i]])
    return halves


def split_by_pair(records: Sequence, fraction: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """Seeded split by pair_id (zh/en translations stay together), per value: -> (train, held_out)
    with round(fraction · pairs) of each value's pairs in train, both in the input order."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction: expected a number in (0, 1), got {fraction!r}")
    rng = np.random.default_rng([int(seed), 11])
    train_ids = set()
    for _, groups in sorted(_pair_groups(records).items(), key=lambda kv: str(kv[0])):
        pids = sorted(groups, key=str)
        k = int(round(fraction * len(pids)))
        train_ids.update(pids[i] for i in rng.permutation(len(pids))[:k])
    return [r for r in records if r.pair_id in train_ids], [r for r in records if r.pair_id not in train_ids]
