"""Sweep specs: a YAML grid (models × values × methods × sizes × modes × languages × seeds) and
its expansion into conditions, each with a content hash.

    name: demo
    models: [path/to/model, qwen2.5-0.5b-instruct]   # jaxvalues.load_model sources
    dtype: float32
    data:        {activation: builtin, evaluation: builtin, max_activation_records: null,
                  max_evaluation_records: 100, activation_lang: null}
    statistics:  {scheme: values, token_selection: content, k: 16, batch_size: 8,
                  max_tokens: 65536, buckets: null, shard_size: 64}
    selection:   {filter_rate: 0.95, activation_bar_ratio: 0.95, contrast_metric: effect,
                  control_kind: rate_matched}
    evaluation:  {batch_size: 16, seq_multiple: 32, gamma: 2.0, gain: 5.0, values: target}
    grid:        {values: all, methods: [vape, random], sizes: [0.01], modes: [zero],
                  languages: [zh, en], seeds: [0]}
    workers:     {count: 2, resources: {num_cpus: 1, threads: 1}}   # see resources.py

Conventions:
- Methods: "vape" (LAPE selection, top_rate = size), "contrast" (standardised effect of the value
  against the other values, or support vs conflict; top size·L·N), "random" (a control draw of
  the vape selection: `selection.control_kind` rate_matched (layer + firing-rate decile,
  `jaxvalues.evaluate.controls.random_matched`) or layer (`random_like`)). Only "random" uses the seed: the other methods get
  seed = None and the grid is de-duplicated.
- Modes: zero | mean | scale (× evaluation.gamma) | steer (statistics.scheme "stance" only:
  ×gain on the value's support neurons, 0 on its conflict neurons).
- Sizes are fractions of all L·N neurons (0 < size <= 1).
- Condition order is the grid order: models, values, methods, sizes, modes, languages, seeds.
- A condition's id is sha256 (16 hex) of its fields plus every setting that changes its result
  (dtype, data, statistics, selection, evaluation) and the format version; not of the worker or
  progress settings. The same id means the same result: a rerun skips it.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxvalues.distributed.resources import WorkerResources
from jaxvalues.distributed.shards import fingerprint
from jaxvalues.errors import ConfigError

FORMAT = "jaxvalues.sweep/1"
METHODS = ("vape", "contrast", "random")
SEEDED = ("random",)
MODES = ("zero", "mean", "scale", "steer")
LANGS = ("zh", "en")

DEFAULTS: dict[str, dict] = {
    "data": {"activation": "builtin", "evaluation": "builtin", "max_activation_records": None,
             "max_evaluation_records": 100, "activation_lang": None},
    "statistics": {"scheme": "values", "token_selection": "content", "k": 16, "batch_size": 8,
                   "max_tokens": 65536, "buckets": None, "shard_size": 64},
    "selection": {"filter_rate": 0.95, "activation_bar_ratio": 0.95, "contrast_metric": "effect",
                  "control_kind": "rate_matched"},
    "evaluation": {"batch_size": 16, "seq_multiple": 32, "gamma": 2.0, "gain": 5.0, "values": "target"},
    "grid": {"values": "all", "methods": ["vape"], "sizes": [0.01], "modes": ["zero"], "languages": ["zh", "en"],
             "seeds": [0]},
    "workers": {"count": 1, "resources": {}},
}
TOP_KEYS = ("name", "models", "dtype", *DEFAULTS)


@dataclass(frozen=True)
class Condition:
    model: str
    value: str
    method: str
    size: float
    mode: str
    lang: str
    seed: int | None
    id: str = ""

    def fields(self) -> dict:
        return {"model": self.model, "value": self.value, "method": self.method, "size": self.size,
                "mode": self.mode, "lang": self.lang, "seed": self.seed}

    def to_dict(self) -> dict:
        return {"id": self.id, **self.fields()}

    @property
    def label(self) -> str:
        seed = "" if self.seed is None else f" seed={self.seed}"
        return (f"condition {self.id} (model={self.model} value={self.value} method={self.method} "
                f"size={self.size:g} mode={self.mode} lang={self.lang}{seed})")


@dataclass
class SweepSpec:
    name: str
    models: list[str]
    dtype: str = "float32"
    data: dict = field(default_factory=dict)
    statistics: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)
    source: str = ""  # the file it came from

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, where: str = "sweep spec") -> "SweepSpec":
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {list(TOP_KEYS)}")
        unknown = sorted(set(raw) - set(TOP_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(TOP_KEYS)}")
        sections = {}
        for name, defaults in DEFAULTS.items():
            got = raw.get(name) or {}
            if not isinstance(got, dict):
                raise ConfigError(f"{where}: '{name}' must be a mapping")
            bad = sorted(set(got) - set(defaults))
            if bad:
                raise ConfigError(f"{where}: {name}: unknown key(s) {bad}; expected some of {sorted(defaults)}")
            sections[name] = {**copy.deepcopy(defaults), **got}
        models = raw.get("models")
        if isinstance(models, str):
            models = [models]
        if not models or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{where}: 'models' must be a non-empty list of model sources (paths or names)")
        spec = cls(name=str(raw.get("name") or "sweep"), models=list(models), dtype=str(raw.get("dtype", "float32")),
                   source=where, **sections)
        spec.validate()
        return spec

    def validate(self) -> None:
        w = self.source or "sweep spec"
        g = self.grid
        for key in ("methods", "sizes", "modes", "languages", "seeds"):
            if isinstance(g[key], (str, int, float)):
                g[key] = [g[key]]
            if not isinstance(g[key], list) or not g[key]:
                raise ConfigError(f"{w}: grid.{key} must be a non-empty list")
        _choices(g["methods"], METHODS, f"{w}: grid.methods")
        _choices(g["modes"], MODES, f"{w}: grid.modes")
        _choices(g["languages"], LANGS, f"{w}: grid.languages")
        for s in g["sizes"]:
            if not isinstance(s, (int, float)) or not 0 < s <= 1:
                raise ConfigError(f"{w}: grid.sizes must be fractions in (0, 1] of all neurons, got {s!r}")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in g["seeds"]):
            raise ConfigError(f"{w}: grid.seeds must be integers, got {g['seeds']!r}")
        g["values"] = list(self.values())
        scheme = self.statistics["scheme"]
        if scheme not in ("values", "stance"):
            raise ConfigError(f"{w}: statistics.scheme must be 'values' or 'stance', got {scheme!r}")
        if "steer" in g["modes"]:
            if scheme != "stance":
                raise ConfigError(f"{w}: mode 'steer' needs statistics.scheme: stance (support / conflict neurons)")
            if "contrast" in g["methods"]:
                raise ConfigError(f"{w}: mode 'steer' is defined for methods vape and random, not contrast")
        from jaxvalues.evaluate.controls import CONTROL_KINDS

        if self.selection["control_kind"] not in CONTROL_KINDS:
            raise ConfigError(f"{w}: selection.control_kind must be one of {list(CONTROL_KINDS)}, "
                              f"got {self.selection['control_kind']!r}")
        if self.evaluation["values"] not in ("target", "all"):
            raise ConfigError(f"{w}: evaluation.values must be 'target' (the value's own dilemmas) or 'all'")
        count = self.workers.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"{w}: workers.count must be an integer >= 1, got {count!r}")
        WorkerResources.from_config(self.workers.get("resources"), f"{w}: workers.resources")
        _check_settings(self, w)

    def values(self) -> tuple[str, ...]:
        from jaxvalues.data.values import VALUE_IDS, value_ids

        v = self.grid["values"]
        if v in ("all", None, ["all"]):
            return VALUE_IDS
        try:
            return value_ids(v)
        except Exception as e:  # DataError with a suggestion
            raise ConfigError(f"{self.source or 'sweep spec'}: grid.values: {e}") from None

    def resources(self) -> WorkerResources:
        return WorkerResources.from_config(self.workers.get("resources"), "workers.resources")

    # --- hashing and expansion ---------------------------------------------------------------
    def settings(self) -> dict:
        """Everything except the grid and the workers that a condition's result depends on."""
        return {"format": FORMAT, "dtype": self.dtype, "data": self.data, "statistics": self.statistics,
                "selection": self.selection, "evaluation": self.evaluation}

    def statistics_key(self, model: str) -> str:
        """Content hash of one model's statistics (shared by its conditions)."""
        return fingerprint({"format": FORMAT, "model": model, "dtype": self.dtype, "data": self.data,
                            "statistics": self.statistics})[:16]

    def conditions(self) -> list[Condition]:
        g, settings = self.grid, self.settings()
        out, seen = [], set()
        for model in self.models:
            for value in g["values"]:
                for method in g["methods"]:
                    for size in g["sizes"]:
                        for mode in g["modes"]:
                            for lang in g["languages"]:
                                for seed in g["seeds"]:
                                    c = Condition(model, value, method, float(size), mode, lang,
                                                  int(seed) if method in SEEDED else None)
                                    cid = fingerprint({"condition": c.fields(), "settings": settings})[:16]
                                    if cid not in seen:
                                        seen.add(cid)
                                        out.append(Condition(**c.fields(), id=cid))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "models": self.models, "dtype": self.dtype,
                **{k: getattr(self, k) for k in DEFAULTS}}


DTYPES = ("float32", "bfloat16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _check_settings(spec: "SweepSpec", w: str) -> None:
    """Every setting a sweep will use, checked before any work: one ConfigError naming the field."""
    if spec.dtype not in DTYPES:
        raise ConfigError(f"{w}: dtype: expected one of {list(DTYPES)}, got {spec.dtype!r}")
    for i, m in enumerate(spec.models):
        problem = model_source_problem(m)
        if problem:
            raise ConfigError(f"{w}: models[{i}]: {problem}")
    d, st, sel, ev = spec.data, spec.statistics, spec.selection, spec.evaluation
    for key in ("activation", "evaluation"):
        v = d[key]
        if not (isinstance(v, str) and v) and not (isinstance(v, list) and v and all(isinstance(x, str) and x
                                                                                    for x in v)):
            raise ConfigError(f"{w}: data.{key}: expected 'builtin' or a path (or a list of paths), got {v!r}")
        for x in [v] if isinstance(v, str) else v:
            if x != "builtin" and not Path(x).expanduser().exists():
                raise ConfigError(f"{w}: data.{key}: no such file or directory: {x!r} (or use 'builtin')")
    for key in ("max_activation_records", "max_evaluation_records"):
        _positive_int(d[key], f"{w}: data.{key}", optional=True)
    if d["activation_lang"] is not None and d["activation_lang"] not in LANGS:
        raise ConfigError(f"{w}: data.activation_lang: expected null or one of {list(LANGS)}, "
                          f"got {d['activation_lang']!r}")
    if st["token_selection"] not in ("content", "all", "rationale", "mask", "last_k"):
        raise ConfigError(f"{w}: statistics.token_selection: expected one of ['content', 'all', 'rationale', "
                          f"'last_k'], got {st['token_selection']!r}")
    for key in ("k", "batch_size", "max_tokens", "shard_size"):
        _positive_int(st[key], f"{w}: statistics.{key}")
    b = st["buckets"]
    if b is not None:
        if not isinstance(b, list) or not b:
            raise ConfigError(f"{w}: statistics.buckets: expected null or a non-empty list of positive integers, "
                              f"got {b!r}")
        for x in b:
            _positive_int(x, f"{w}: statistics.buckets")
    for key in ("filter_rate", "activation_bar_ratio"):
        x = sel[key]
        if _number(x) is None or not 0 < x < 1:
            raise ConfigError(f"{w}: selection.{key}: expected a number in (0, 1), got {x!r}")
    if sel["contrast_metric"] not in ("mean", "rms", "effect"):
        raise ConfigError(f"{w}: selection.contrast_metric: expected one of ['mean', 'rms', 'effect'], "
                          f"got {sel['contrast_metric']!r}")
    for key in ("batch_size", "seq_multiple"):
        _positive_int(ev[key], f"{w}: evaluation.{key}")
    for key in ("gamma", "gain"):
        if _number(ev[key]) is None:
            raise ConfigError(f"{w}: evaluation.{key}: expected a finite number, got {ev[key]!r}")


def model_source_problem(source: str) -> str | None:
    """Why `source` cannot be a model (not an existing path, a packaged name or a hub id), or None."""
    p = Path(source).expanduser()
    if p.exists():
        return None
    try:
        from jaxvalues.zoo.registry import is_packaged
    except ImportError:  # pragma: no cover - zoo not available
        is_packaged = lambda name: False  # noqa: E731
    if is_packaged(source):
        return None
    if not source.startswith((".", "/", "~")) and _HUB_ID.match(source):
        return None
    return (f"{source!r} is not an existing path, a packaged model name (see `jaxvalues models list`) "
            f"or a hub id (org/name)")


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _positive_int(x, where: str, optional: bool = False) -> None:
    if optional and x is None:
        return
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        null = "null or " if optional else ""
        raise ConfigError(f"{where}: expected {null}a positive integer, got {x!r}")


def _choices(items, allowed, where):
    bad = [x for x in items if x not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown {bad}; expected some of {list(allowed)}")


def load_spec(path) -> SweepSpec:
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{p}: no such sweep spec")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    base = p.parent
    # relative data / model paths are relative to the spec file when that path exists there
    # (resolved before validation, which checks that they exist)
    if isinstance(raw, dict):
        raw = dict(raw)
        models = raw.get("models")
        if isinstance(models, str):
            raw["models"] = _rel(models, base)
        elif isinstance(models, list):
            raw["models"] = [_rel(m, base) if isinstance(m, str) and m else m for m in models]
        if isinstance(raw.get("data"), dict):
            data = raw["data"] = dict(raw["data"])
            for key in ("activation", "evaluation"):
                v = data.get(key)
                if isinstance(v, str) and v:
                    data[key] = _rel(v, base)
                elif isinstance(v, list):
                    data[key] = [_rel(x, base) if isinstance(x, str) and x else x for x in v]
    return SweepSpec.from_dict(raw, str(p))


def _rel(s: str, base: Path) -> str:
    if s == "builtin" or Path(s).is_absolute() or not (base / s).exists():
        return s
    return str((base / s).resolve())
