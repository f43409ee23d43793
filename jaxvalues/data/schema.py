"""Record types of the C-voice format: activation stories and evaluation dilemmas.

Conventions (the data contract in docs/DESIGN.md):
- One record is one language version of one scenario. `lang` is "zh" or "en"; `pair_id` links
  the zh and en versions of the same scenario, and by convention `id == f"{pair_id}-{lang}"`
  (e.g. ``act-integrity-003-zh`` / ``act-integrity-003``; ``eval-`` for evaluation records).
- `value` is a value id from `jaxvalues.data.values` (``rule_of_law``), `conflict` the conflict
  type in the record's language ("诚信 vs 个人利益" / "Integrity vs personal gain").
- Activation records: story + value-aligned action; the rationale for it and the violating
  action are optional (records imported from the authors' activation workbook have no
  rationale: their persona scheme lets the model write its own answer). A rationale that is
  given must be non-empty text in the record's language. Evaluation records: context + aligned
  action + violating action, no rationale.
- Text fields are stored stripped of surrounding whitespace. The canonical on-disk form is one
  JSON object per line (UTF-8), keys in `FIELD_ORDER`, absent optional fields omitted.
Records are frozen; build them from raw rows through `jaxvalues.data.validate.parse_row`, which
checks every field and reports problems instead of raising on the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

KINDS = ("activation", "evaluation")
LANGS = ("zh", "en")
KIND_PREFIX = {"activation": "act", "evaluation": "eval"}  # id prefixes of builtin/generated records

# canonical key order of a JSONL record (union of both kinds)
FIELD_ORDER = (
    "id", "kind", "lang", "pair_id", "value", "conflict",
    "story", "context", "aligned_action", "violating_action", "rationale",
)  # fmt: skip

REQUIRED = {
    "activation": ("id", "kind", "lang", "pair_id", "value", "conflict", "story", "aligned_action"),
    "evaluation": ("id", "kind", "lang", "pair_id", "value", "conflict", "context", "aligned_action", "violating_action"),
}  # fmt: skip
OPTIONAL = {"activation": ("rationale", "violating_action"), "evaluation": ()}
# free-text fields: must be non-empty and written in the record's language
TEXT_FIELDS = {
    "activation": ("conflict", "story", "aligned_action", "violating_action", "rationale"),
    "evaluation": ("conflict", "context", "aligned_action", "violating_action"),
}


@dataclass(frozen=True)
class ActivationRecord:
    id: str
    lang: str
    pair_id: str
    value: str
    conflict: str
    story: str
    aligned_action: str
    rationale: str | None = None  # None: no rationale (the authors' activation files have none)
    violating_action: str | None = None
    kind: str = field(default="activation", init=False)

    @property
    def scenario(self) -> str:
        """The situation text (story for activation, context for evaluation records)."""
        return self.story

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass(frozen=True)
class EvaluationRecord:
    id: str
    lang: str
    pair_id: str
    value: str
    conflict: str
    context: str
    aligned_action: str
    violating_action: str
    kind: str = field(default="evaluation", init=False)

    @property
    def scenario(self) -> str:
        return self.context

    def to_dict(self) -> dict:
        return _to_dict(self)


Record = Union[ActivationRecord, EvaluationRecord]
RECORD_TYPES = {"activation": ActivationRecord, "evaluation": EvaluationRecord}


def _to_dict(rec: Record) -> dict:
    out = {}
    for key in FIELD_ORDER:
        val = getattr(rec, key, None)
        if val is not None:
            out[key] = val
    return out


def make_record(fields: dict) -> Record:
    """Build a record from already-checked fields (`kind` selects the class; extras ignored)."""
    kind = fields["kind"]
    cls = RECORD_TYPES[kind]
    names = [k for k in REQUIRED[kind] + OPTIONAL[kind] if k != "kind"]
    return cls(**{k: fields.get(k) for k in names})


def pair_key(rec: Record) -> tuple[str, str, str]:
    """(kind, value, pair_id): the zh and en records of one scenario share it."""
    return (rec.kind, rec.value, rec.pair_id)
