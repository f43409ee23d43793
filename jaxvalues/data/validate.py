"""Checks on raw rows and on whole collections of records; problems are collected, not raised.

Conventions:
- A `Problem` names where it is (file plus line for JSONL, row for CSV/Parquet, sheet and row
  for XLSX), the field, and what was expected. `str(problem)` is one line.
- `parse_row(raw, where)` turns one raw mapping into a record or reports every problem in it:
  missing/unknown fields, unknown kind/value/language (with the closest name suggested), empty
  text, text not in the record's language (zh text needs Chinese characters; en text must not be
  mostly Chinese), invalid UTF-8 (surrogate-escaped bytes), aligned == violating action. An
  optional field (an activation record's rationale or violating action) may be absent or null;
  given as a string it is checked like any text field (empty or blank text is a problem).
  Value names are normalised to ids, `lang` to lower case, text fields stripped.
- `check_collection(items)` finds duplicate ids, duplicate scenarios (same kind, language, text
  and actions) and inconsistent zh/en pairs. The first occurrence is kept, later ones flagged.
- Strict loading raises `DataError` listing all problems (`problems_error`); lenient loading
  skips the flagged rows and reports them with a count. A bad row never disappears silently.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from jaxvalues.data.schema import FIELD_ORDER, KINDS, LANGS, OPTIONAL, REQUIRED, TEXT_FIELDS, Record, make_record
from jaxvalues.data.values import find_value, unknown_value_message
from jaxvalues.errors import DataError

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_SURROGATE = re.compile(r"[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
MAX_LISTED = 50  # problems listed in one error message


@dataclass(frozen=True)
class Problem:
    where: str  # "path line 4", "path row 7", "path sheet 富强 row 7"
    message: str
    field: str | None = None
    rows: int = 1  # rows this problem keeps out (a whole sheet for a misnamed workbook sheet)

    def __str__(self) -> str:
        if self.field:
            return f"{self.where}: field {self.field!r}: {self.message}"
        return f"{self.where}: {self.message}"


def cjk_ratio(text: str) -> float | None:
    """Chinese characters / (Chinese characters + Latin words); None when the text has neither."""
    n_cjk = len(_CJK.findall(text))
    n_latin = len(_LATIN_WORD.findall(text))
    total = n_cjk + n_latin
    return None if total == 0 else n_cjk / total


def language_problem(text: str, lang: str) -> str | None:
    """Why `text` does not look like `lang`, or None. zh: has Chinese characters and they are at
    least half of the units (a unit = a Chinese character or a Latin word); en: not mostly Chinese."""
    ratio = cjk_ratio(text)
    if lang == "zh":
        if ratio is None or ratio == 0:
            return "lang is 'zh' but the text has no Chinese characters"
        if ratio < 0.5:
            return f"lang is 'zh' but the text is mostly Latin script ({ratio:.0%} Chinese)"
    elif lang == "en" and ratio is not None and ratio > 0.5:
        return f"lang is 'en' but the text is mostly Chinese ({ratio:.0%} Chinese characters)"
    return None


def _norm_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def parse_row(raw, where: str) -> tuple[Record | None, list[Problem]]:
    """Check one raw row; return (record, []) or (None, problems)."""
    if not isinstance(raw, dict):
        return None, [Problem(where, f"expected a JSON object, got {type(raw).__name__}")]
    problems: list[Problem] = []
    fields: dict = {}

    def bad(field, message):
        problems.append(Problem(where, message, field))

    for key, val in raw.items():
        if val is None or key not in FIELD_ORDER:  # unknown fields are reported below
            continue
        if not isinstance(val, str):
            bad(key, f"expected a string, got {type(val).__name__} {val!r}")
            continue
        if _SURROGATE.search(val):
            bad(key, "invalid UTF-8 bytes in the text (the file must be UTF-8 encoded)")
            continue
        fields[key] = val.strip()

    kind = fields.get("kind")
    if "kind" not in raw or raw["kind"] is None:
        bad("kind", f"missing field; expected one of {', '.join(KINDS)}")
    elif kind is not None and kind.lower() not in KINDS:
        bad("kind", f"unknown kind {kind!r}; expected 'activation' or 'evaluation'{_closest(kind.lower(), KINDS)}")
    kind = kind.lower() if kind and kind.lower() in KINDS else None
    if kind:
        fields["kind"] = kind

    for key in raw:
        if key not in FIELD_ORDER:
            bad(key, f"unknown field{_closest(key, FIELD_ORDER)}; expected fields: {', '.join(FIELD_ORDER)}")
        elif kind and raw[key] is not None and key not in REQUIRED[kind] + OPTIONAL[kind]:
            other = {"story": " (evaluation records use 'context')", "context": " (activation records use 'story')"}
            bad(key, f"not a field of {kind} records{other.get(key, '')}")

    required = REQUIRED[kind] if kind else ("id", "lang", "pair_id", "value")
    for key in required:
        if key == "kind":
            continue
        if key not in raw or raw[key] is None:
            bad(key, "missing field")
        elif key in fields and not fields[key]:
            bad(key, "empty text")
    for key in OPTIONAL.get(kind, ()):
        if key in raw and key in fields and not fields[key]:
            bad(key, "empty text (omit the field or set it to null)")

    if fields.get("value"):
        v = find_value(fields["value"])
        if v is None:
            bad("value", unknown_value_message(fields["value"]))
        else:
            fields["value"] = v.id

    lang = fields.get("lang")
    if lang:
        if lang.lower() not in LANGS:
            bad("lang", f"unknown language tag {lang!r}; expected 'zh' or 'en'")
            lang = None
        else:
            lang = fields["lang"] = lang.lower()
    if lang and fields.get("id"):
        for other in LANGS:
            if other != lang and fields["id"].endswith(f"-{other}"):
                bad("lang", f"lang is {lang!r} but id {fields['id']!r} ends with '-{other}'")
    if lang and kind:
        for key in TEXT_FIELDS[kind]:
            if fields.get(key):
                msg = language_problem(fields[key], lang)
                if msg:
                    bad(key, msg)

    if fields.get("aligned_action") and fields.get("violating_action"):
        if _norm_text(fields["aligned_action"]) == _norm_text(fields["violating_action"]):
            bad("violating_action", "same text as aligned_action; the two actions must differ")

    if problems or not kind:
        return None, problems
    return make_record(fields), []


def check_collection(items: list[tuple[Record, str]]) -> tuple[list[bool], list[Problem]]:
    """Cross-record checks over (record, where) items. Returns (keep flags, problems)."""
    keep = [True] * len(items)
    problems: list[Problem] = []
    ids: dict[str, str] = {}
    texts: dict[tuple, tuple[str, str]] = {}
    pairs: dict[str, tuple[Record, str]] = {}  # pair_id -> first record seen
    pair_langs: dict[tuple[str, str], tuple[str, str]] = {}
    for i, (rec, where) in enumerate(items):
        if rec.id in ids:
            problems.append(Problem(where, f"duplicate id {rec.id!r} (first at {ids[rec.id]})", "id"))
            keep[i] = False
            continue
        ids[rec.id] = where
        key = (rec.kind, rec.lang, _norm_text(rec.scenario), _norm_text(rec.aligned_action),
               _norm_text(rec.violating_action or ""))  # fmt: skip
        if key in texts:
            first_id, first_where = texts[key]
            problems.append(Problem(where, f"same scenario and actions as id {first_id!r} (at {first_where})"))
            keep[i] = False
            continue
        texts[key] = (rec.id, where)
        first = pairs.get(rec.pair_id)
        if first is not None:
            frec, fwhere = first
            if (frec.kind, frec.value) != (rec.kind, rec.value):
                problems.append(Problem(where, f"pair {rec.pair_id!r} mixes {frec.kind}/{frec.value} "
                                        f"(id {frec.id!r} at {fwhere}) with {rec.kind}/{rec.value}", "pair_id"))
                keep[i] = False
                continue
        else:
            pairs[rec.pair_id] = (rec, where)
        lk = (rec.pair_id, rec.lang)
        if lk in pair_langs:
            oid, owhere = pair_langs[lk]
            problems.append(Problem(where, f"pair {rec.pair_id!r} already has a {rec.lang!r} record "
                                    f"(id {oid!r} at {owhere})", "pair_id"))
            keep[i] = False
            continue
        pair_langs[lk] = (rec.id, where)
    return keep, problems


def empty_problem(source: str) -> Problem:
    """A file with no records at all (not even bad ones)."""
    return Problem(str(source), "no records", rows=0)


def column_problem(source: str, raw_rows, items, columns=None) -> Problem | None:
    """Tabular columns that map to no field, when rows then lack required fields: name them and
    suggest `--map Column=field` (extra columns next to a complete set of fields are fine)."""
    columns = {str(k).strip().lower() for k in (columns or {})}
    seen: list[str] = []
    for raw, _ in raw_rows:
        for key in raw:
            k = str(key).strip()
            if k and k.lower() not in FIELD_ORDER and k.lower() not in columns and k not in seen:
                seen.append(k)
    if not seen:
        return None
    incomplete = False
    for row, _ in items:
        kind = str(row.get("kind") or "").strip().lower()
        need = REQUIRED.get(kind, ("kind",))
        if any(row.get(f) in (None, "") for f in need):
            incomplete = True
            break
    if not incomplete:
        return None
    shown = ", ".join(repr(c) for c in seen[:8]) + (f" (+{len(seen) - 8} more)" if len(seen) > 8 else "")
    return Problem(str(source), f"unrecognised column(s) {shown} were ignored; map each to a record field with "
                   f"--map Column=field (e.g. --map {seen[0]}=scenario; fields: {', '.join(FIELD_ORDER)})", rows=0)


def format_problems(problems: list[Problem], limit: int = MAX_LISTED) -> str:
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def problems_error(source: str, problems: list[Problem]) -> DataError:
    """The strict-mode error: every problem, one per line, and how to skip bad rows instead."""
    n = len(problems)
    return DataError(
        f"{source}: {n} problem{'s' if n != 1 else ''} found:\n{format_problems(problems)}\n"
        "fix them, or load with lenient=True (CLI: --lenient) to skip the bad rows"
    )
