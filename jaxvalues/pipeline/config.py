"""Experiment configs (YAML) for `jaxvalues run`: parsed, validated, hashed.

Every field has a default; an unknown field or a bad value is a ConfigError that names the file
and the field (`collect.batch_size: expected a positive integer, got 'eight'`). Stage hashes are
computed from the fields each stage depends on, so a rerun redoes only what a change affects.

Which fields a setting reads: collect.token_selection / last_k apply to scheme "values" (the
persona scheme counts generated tokens), collect.max_new_tokens / repetition_penalty to
"persona"; identify.filter_rate / activation_bar_ratio to method "vape" (vape-stance uses the
authors' per-kind rates; identify.apply chooses how its kinds are applied); evaluate.orders,
max_new_tokens and max_model_len to protocol "generate" (choice always scores both orders),
evaluate.min_label_mass to "choice"; evaluate.gain to the steer modes, gamma to "scale".
`evaluate.mode` is one mode or a list; `evaluate.alternative` one direction or {mode: direction}.
Presets (`PRESETS`, `preset: NAME` or `run --preset NAME`) set fields before the file's own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from jaxvalues.errors import ConfigError
from jaxvalues.evaluate.controls import CONTROL_KINDS, STEER_MODES
from jaxvalues.evaluate.inference import ALTERNATIVES

DEFAULTS: dict = {
    "name": "experiment",
    "model": "qwen2.5-0.5b",
    "dtype": "float32",
    "dataset": "builtin",
    "values": "all",
    "languages": ["zh", "en"],
    "seed": 0,
    "out": None,
    "collect": {"scheme": "values", "records_per_value": 30, "token_selection": "content", "last_k": 16,
                "batch_size": 8, "max_new_tokens": 500, "repetition_penalty": 1.1},
    "identify": {"method": "vape", "filter_rate": 0.95, "top_rate": 0.01, "activation_bar_ratio": 0.95,
                 "apply": "combined", "stability": True},
    "evaluate": {"protocol": "choice", "values": "all", "dilemmas_per_value": 20, "mode": "zero", "gamma": None,
                 "gain": 5.0, "controls": 20, "control_kind": "rate_matched", "authors_controls": 0,
                 "alternative": "less", "alpha": 0.05, "min_label_mass": 0.5, "leakage": True,
                 "perplexity_texts": 40, "bootstrap": 2000, "batch_size": 16, "orders": "both",
                 "max_new_tokens": 250, "max_model_len": 500},
}
# `preset: authors` (or `jaxvalues run --preset authors`): the authors' published protocol
# (PAPER.md, "The authors' protocol in detail"); a config's own fields override it.
PRESETS: dict = {
    "authors": {
        "name": "authors", "dtype": "bfloat16", "languages": ["zh"],
        "collect": {"scheme": "persona", "records_per_value": 60, "max_new_tokens": 500, "repetition_penalty": 1.1},
        "identify": {"method": "vape-stance", "apply": "combined"},
        "evaluate": {"protocol": "generate", "dilemmas_per_value": 100, "orders": "aligned_first",
                     "max_new_tokens": 250, "max_model_len": 500, "mode": ["zero", "steer", "steer_against"],
                     "gain": 5.0, "alternative": {"zero": "less", "steer": "greater", "steer_against": "less"},
                     "controls": 20, "authors_controls": 20, "leakage": False, "batch_size": 8},
    },
}
SECTIONS = ("collect", "identify", "evaluate")
SCHEMES = ("values", "persona")
SELECTIONS = ("content", "all", "rationale", "last_k")
METHODS = ("vape", "vape-stance")
APPLY = ("combined", "decision", "semantic")
PROTOCOLS = ("choice", "generate")
ORDERS = ("both", "aligned_first")


def _merge(base: dict, over: dict, where: str, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k not in base:
            from difflib import get_close_matches

            hint = get_close_matches(k, list(base), n=1)
            raise ConfigError(f"{where}: unknown field {key!r}" + (f" (did you mean {prefix + hint[0]!r}?)" if hint else ""))
        if not prefix and k in SECTIONS:
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


def load_config(path: str | Path | None, overrides: dict | None = None, preset: str | None = None) -> dict:
    """DEFAULTS, then the preset (the config's `preset` field or `preset`), then the file's fields,
    then `overrides` (command-line), validated. path None: the preset alone (`run --preset`)."""
    raw: dict = {}
    where = str(path) if path is not None else f"preset {preset!r}"
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    raw = dict(raw)
    name = raw.pop("preset", None)
    if preset is not None:
        if name is not None and name != preset:
            raise ConfigError(f"{where}: preset: the file says {name!r} but --preset says {preset!r}")
        name = preset
    base = DEFAULTS
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"{where}: preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        base = _merge(DEFAULTS, PRESETS[name], f"preset {name!r}")
    cfg = _merge(base, raw, where)
    if overrides:
        cfg = _merge(cfg, overrides, f"{where} (command-line override)")
    cfg = validate_config(cfg, where)
    if name is not None:
        cfg["preset"] = name
    return cfg


def parse_set(items) -> dict:
    """`--set KEY=VALUE` items -> a nested override mapping (VALUE read as YAML: numbers, true/false,
    lists); a one-line error naming the item when it has no '=' or an empty key."""
    out: dict = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. evaluate.controls=19")
        try:
            v = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {item!r}: {p} is also given a plain value")
        d[parts[-1]] = v
    return out


def validate_config(cfg: dict, where: str = "config") -> dict:
    from jaxvalues.data.values import VALUES

    if cfg["identify"]["method"] not in METHODS:
        raise ConfigError(f"{where}: identify.method: `jaxvalues run` supports {METHODS}; got "
                          f"{cfg['identify']['method']!r} (use `jaxvalues identify` for the others)")
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
    from jaxvalues.evaluate.engine import _alternatives, check_modes

    try:
        modes = check_modes(e["mode"])
    except ConfigError as err:
        raise ConfigError(f"{where}: evaluate.{err}") from None
    alt = e["alternative"]
    try:
        _alternatives(alt, modes)
        if isinstance(alt, dict) and any(k not in modes for k in alt):
            raise ConfigError("a direction for a mode that is not run")
    except ConfigError:
        if isinstance(alt, dict):
            raise ConfigError(f"{where}: evaluate.alternative: expected one direction of {ALTERNATIVES} for each "
                              f"mode {modes}, got {alt!r}") from None
        raise ConfigError(f"{where}: evaluate.alternative: expected one of {ALTERNATIVES} (the direction fixed "
                          f"before the run; 'less': ablation lowers P(aligned)) or a mapping mode -> direction, "
                          f"got {alt!r}") from None
    for sect, key, choices in (("collect", "scheme", SCHEMES), ("identify", "apply", APPLY),
                               ("evaluate", "protocol", PROTOCOLS), ("evaluate", "orders", ORDERS)):
        if cfg[sect][key] not in choices:
            raise ConfigError(f"{where}: {sect}.{key}: expected one of {choices}, got {cfg[sect][key]!r}")
    for key in ("collect.max_new_tokens", "evaluate.max_new_tokens", "evaluate.max_model_len"):
        _pos_int(cfg, where, key)
    v = e["authors_controls"]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"{where}: evaluate.authors_controls: expected an integer ≥ 0, got {v!r}")
    for sect, key in (("collect", "repetition_penalty"), ("evaluate", "gain")):
        x = cfg[sect][key]
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 < x < float("inf"):
            raise ConfigError(f"{where}: {sect}.{key}: expected a positive number, got {x!r}")
    stance = cfg["identify"]["method"] == "vape-stance"
    if (cfg["collect"]["scheme"] == "persona") != stance:
        raise ConfigError(f"{where}: identify.method: 'vape-stance' goes with collect.scheme 'persona' (the "
                          f"support/conflict answers) and 'vape' with 'values'; got method "
                          f"{cfg['identify']['method']!r} with scheme {cfg['collect']['scheme']!r}")
    if stance:
        for key in ("filter_rate", "activation_bar_ratio"):
            if cfg["identify"][key] != DEFAULTS["identify"][key]:
                raise ConfigError(f"{where}: identify.{key}: method vape-stance uses the authors' per-kind rates "
                                  "(decision 0.95, semantic 0.50); remove the field")
    elif any(m in STEER_MODES for m in modes):
        raise ConfigError(f"{where}: evaluate.mode: steer modes need support and conflict sets: use "
                          "identify.method vape-stance with collect.scheme persona")
    e["mode"] = modes[0] if len(modes) == 1 else modes
    _rate(cfg, where, "evaluate.alpha")
    m = e["min_label_mass"]
    if not isinstance(m, (int, float)) or isinstance(m, bool) or not 0 <= m < 1:
        raise ConfigError(f"{where}: evaluate.min_label_mass: expected a number in [0, 1), got {m!r}")
    if e["gamma"] is not None and (not isinstance(e["gamma"], (int, float)) or isinstance(e["gamma"], bool)
                                   or e["gamma"] != e["gamma"] or abs(e["gamma"]) == float("inf")):
        raise ConfigError(f"{where}: evaluate.gamma: expected a finite number, got {e['gamma']!r}")
    if c["token_selection"] not in SELECTIONS:
        raise ConfigError(f"{where}: collect.token_selection: expected one of {SELECTIONS}, got {c['token_selection']!r}")
    if "scale" in modes and not isinstance(e["gamma"], (int, float)):
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
