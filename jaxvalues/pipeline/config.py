"""Experiment configs (YAML) for `jaxvalues run`: parsed, validated, hashed.

Every field has a default; an unknown field or a bad value is a ConfigError that names the file
and the field (`collect.batch_size: expected a positive integer, got 'eight'`). Stage hashes are
computed from the fields each stage depends on, so a rerun redoes only what a change affects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from jaxvalues.errors import ConfigError

DEFAULTS: dict = {
    "name": "experiment",
    "model": "qwen2.5-0.5b",
    "dtype": "float32",
    "dataset": "builtin",
    "values": "all",
    "languages": ["zh", "en"],
    "seed": 0,
    "out": None,
    "collect": {"records_per_value": 30, "token_selection": "content", "last_k": 16, "batch_size": 8},
    "identify": {"method": "vape", "filter_rate": 0.95, "top_rate": 0.01, "activation_bar_ratio": 0.95,
                 "stability": True},
    "evaluate": {"values": "all", "dilemmas_per_value": 20, "mode": "zero", "gamma": None, "controls": 20,
                 "control_kind": "rate_matched", "alternative": "less", "alpha": 0.05, "min_label_mass": 0.5,
                 "leakage": True, "perplexity_texts": 40, "bootstrap": 2000, "batch_size": 16},
}
CONTROL_KINDS = ("rate_matched", "layer")
ALTERNATIVES = ("less", "greater", "two-sided")
MODES = ("zero", "mean", "scale")
SELECTIONS = ("content", "all", "rationale", "last_k")
METHODS = ("vape",)


def _merge(base: dict, over: dict, where: str, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k not in base:
            from difflib import get_close_matches

            hint = get_close_matches(k, list(base), n=1)
            raise ConfigError(f"{where}: unknown field {key!r}" + (f" (did you mean {prefix + hint[0]!r}?)" if hint else ""))
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, where, f"{key}.")
        else:
            out[k] = v
    return out


def _pos_int(cfg, where, key, allow_none=False):
    sect, _, field = key.partition(".")
    v = cfg[sect][field] if field else cfg[sect]
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{where}: {key}: expected a positive integer, got {v!r}")


def _rate(cfg, where, key):
    sect, _, field = key.partition(".")
    v = cfg[sect][field]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
        raise ConfigError(f"{where}: {key}: expected a number in (0, 1), got {v!r}")


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    cfg = _merge(DEFAULTS, raw, str(path))
    if overrides:
        cfg = _merge(cfg, overrides, f"{path} (command-line override)")
    return validate_config(cfg, str(path))


def validate_config(cfg: dict, where: str = "config") -> dict:
    from jaxvalues.data.values import VALUES

    for key in ("collect.records_per_value", "collect.batch_size", "collect.last_k", "evaluate.dilemmas_per_value",
                "evaluate.batch_size", "evaluate.bootstrap"):
        _pos_int(cfg, where, key)
    for key in ("identify.filter_rate", "identify.top_rate", "identify.activation_bar_ratio"):
        _rate(cfg, where, key)
    c, e = cfg["collect"], cfg["evaluate"]
    for key in ("controls", "perplexity_texts"):
        v = e[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{where}: evaluate.{key}: expected an integer ≥ 0, got {v!r}")
    for sect, key in (("evaluate", "leakage"), ("identify", "stability")):
        if not isinstance(cfg[sect][key], bool):
            raise ConfigError(f"{where}: {sect}.{key}: expected true or false, got {cfg[sect][key]!r}")
    if e["control_kind"] not in CONTROL_KINDS:
        raise ConfigError(f"{where}: evaluate.control_kind: expected one of {CONTROL_KINDS}, got {e['control_kind']!r}")
    if e["alternative"] not in ALTERNATIVES:
        raise ConfigError(f"{where}: evaluate.alternative: expected one of {ALTERNATIVES} (the direction fixed "
                          f"before the run; 'less': ablation lowers P(aligned)), got {e['alternative']!r}")
    _rate(cfg, where, "evaluate.alpha")
    m = e["min_label_mass"]
    if not isinstance(m, (int, float)) or isinstance(m, bool) or not 0 <= m < 1:
        raise ConfigError(f"{where}: evaluate.min_label_mass: expected a number in [0, 1), got {m!r}")
    if e["gamma"] is not None and (not isinstance(e["gamma"], (int, float)) or isinstance(e["gamma"], bool)
                                   or e["gamma"] != e["gamma"] or abs(e["gamma"]) == float("inf")):
        raise ConfigError(f"{where}: evaluate.gamma: expected a finite number, got {e['gamma']!r}")
    if c["token_selection"] not in SELECTIONS:
        raise ConfigError(f"{where}: collect.token_selection: expected one of {SELECTIONS}, got {c['token_selection']!r}")
    if cfg["identify"]["method"] not in METHODS:
        raise ConfigError(f"{where}: identify.method: `jaxvalues run` supports {METHODS}; got "
                          f"{cfg['identify']['method']!r} (use `jaxvalues identify` for the others)")
    if e["mode"] not in MODES:
        raise ConfigError(f"{where}: evaluate.mode: expected one of {MODES}, got {e['mode']!r}")
    if e["mode"] == "scale" and not isinstance(e["gamma"], (int, float)):
        raise ConfigError(f"{where}: evaluate.gamma: mode 'scale' needs a number (e.g. 0 to switch off, 5 to amplify)")
    langs = cfg["languages"]
    if isinstance(langs, str):
        langs = [langs]
    if not langs or any(lang not in ("zh", "en") for lang in langs):
        raise ConfigError(f"{where}: languages: expected a list drawn from ['zh', 'en'], got {cfg['languages']!r}")
    cfg["languages"] = list(langs)
    cfg["values"] = _value_ids(cfg["values"], [v.id for v in VALUES], where, "values")
    ev = _value_ids(cfg["evaluate"]["values"], list(cfg["values"]), where, "evaluate.values")
    if not ev or any(v not in cfg["values"] for v in ev):
        raise ConfigError(f"{where}: evaluate.values: expected a non-empty subset of values {cfg['values']}, "
                          f"got {ev!r}")
    cfg["evaluate"]["values"] = ev
    if cfg["dtype"] not in ("float32", "bfloat16"):
        raise ConfigError(f"{where}: dtype: expected float32 or bfloat16, got {cfg['dtype']!r}")
    return cfg


def _value_ids(vals, all_ids: list, where: str, key: str) -> list:
    """'all' -> all_ids; a name or list of names -> value ids (a one-line error naming `key`)."""
    from jaxvalues.data.values import get_value

    if vals == "all":
        return list(all_ids)
    try:
        return [get_value(v).id for v in ([vals] if isinstance(vals, str) else vals)]
    except Exception as err:  # DataError with a suggestion
        raise ConfigError(f"{where}: {key}: {err}") from None


def stage_hash(cfg: dict, stage: str, upstream: str = "") -> str:
    keys = {
        "collect": ("model", "dtype", "dataset", "values", "languages", "collect"),
        "identify": ("identify", "seed"),
        "evaluate": ("evaluate", "seed", "dataset", "values", "languages"),
        "report": (),
    }[stage]
    blob = json.dumps({k: cfg[k] for k in keys}, sort_keys=True, default=str) + upstream
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
