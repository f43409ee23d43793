"""The 12 values studied by the paper (Core Socialist Values), in the authors' order.

Conventions:
- A value's stable id is its English snake_case name (``rule_of_law``); this string is what a
  record's ``value`` field holds. Its index (0..11) is its position in the authors' order and
  is the condition index used by statistics.
- Groups: the first 4 are ``national``, the next 4 ``social``, the last 4 ``personal``.
- Lookup (`get_value`) accepts the id, the English name or the Chinese name, case- and
  separator-insensitively ("Rule of Law", "rule-of-law", "法治"), or the index as an int.
  Unknown names raise `DataError` with the closest known name suggested.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from jaxvalues.errors import DataError


@dataclass(frozen=True)
class Value:
    id: str  # English snake_case id, the `value` field of records
    index: int  # position in the authors' order, 0..11
    zh: str  # Chinese name, as in the authors' workbook sheet names
    en: str  # English display name
    group: str  # "national" | "social" | "personal"

    def name(self, lang: str) -> str:
        """The display name in `lang` ("zh" or "en")."""
        return self.zh if lang == "zh" else self.en


_TABLE = (
    ("prosperity", "富强", "Prosperity", "national"),
    ("democracy", "民主", "Democracy", "national"),
    ("civility", "文明", "Civility", "national"),
    ("harmony", "和谐", "Harmony", "national"),
    ("freedom", "自由", "Freedom", "social"),
    ("equality", "平等", "Equality", "social"),
    ("justice", "公正", "Justice", "social"),
    ("rule_of_law", "法治", "Rule of Law", "social"),
    ("patriotism", "爱国", "Patriotism", "personal"),
    ("dedication", "敬业", "Dedication", "personal"),
    ("integrity", "诚信", "Integrity", "personal"),
    ("friendliness", "友善", "Friendliness", "personal"),
)

VALUES: tuple[Value, ...] = tuple(
    Value(id=vid, index=i, zh=zh, en=en, group=group) for i, (vid, zh, en, group) in enumerate(_TABLE)
)
VALUE_IDS: tuple[str, ...] = tuple(v.id for v in VALUES)
GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(v.id for v in VALUES if v.group == g) for g in ("national", "social", "personal")
}


def _norm(name: str) -> str:
    return "".join(name.strip().casefold().replace("-", " ").replace("_", " ").split())


_BY_KEY: dict[str, Value] = {}
for _v in VALUES:
    for _key in (_v.id, _v.en, _v.zh):
        _BY_KEY[_norm(_key)] = _v


def find_value(name: str | int | Value) -> Value | None:
    """The value named by `name` (id, English or Chinese name, or index), or None."""
    if isinstance(name, Value):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return VALUES[name] if 0 <= name < len(VALUES) else None
    if not isinstance(name, str):
        return None
    return _BY_KEY.get(_norm(name))


def suggest_value(name: str) -> str | None:
    """The value id closest to `name` (difflib over ids, English and Chinese names), or None."""
    keys = list(_BY_KEY)
    match = difflib.get_close_matches(_norm(str(name)), keys, n=1, cutoff=0.5)
    return _BY_KEY[match[0]].id if match else None


def unknown_value_message(name: object) -> str:
    """'unknown value 'x' (did you mean 'y'?)', listing the valid ids when nothing is close."""
    hint = suggest_value(str(name))
    if hint:
        return f"unknown value {name!r} (did you mean {hint!r}?)"
    return f"unknown value {name!r}; expected one of: {', '.join(VALUE_IDS)} (or the Chinese names)"


def get_value(name: str | int | Value) -> Value:
    """Like `find_value` but raises `DataError` naming the closest value when unknown."""
    v = find_value(name)
    if v is None:
        raise DataError(unknown_value_message(name))
    return v


def value_ids(names) -> tuple[str, ...]:
    """Resolve an iterable of value names (or one name) to ids, in the order given."""
    if names is None:
        return VALUE_IDS
    if isinstance(names, (str, int, Value)):
        names = [names]
    return tuple(get_value(n).id for n in names)
