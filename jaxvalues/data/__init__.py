"""C-voice data: the 12 values, record types, readers/writers, validation, prompts, generation.

    from jaxvalues.data import load_records, render_evaluation_pair, label_token_ids
    recs = load_records("builtin", kind="evaluation", lang="zh", values=["integrity"])

Module map: values.py (the 12 values), schema.py (record dataclasses), io.py (load/write files),
validate.py (checks), prompts.py (rendering + token masks), generate.py (LLM generation),
summary.py (counts, token lengths), cli.py (`jaxvalues data ...`). builtin/ holds the shipped
seed benchmark (seed_<value>.jsonl).
"""

from jaxvalues.data.io import DataWarning, LoadResult, load_records, read_records, write_jsonl
from jaxvalues.data.prompts import (
    EvalPrompt,
    Rendered,
    label_token_ids,
    render_activation,
    render_evaluation,
    render_evaluation_pair,
    render_support,
    token_masks,
)
from jaxvalues.data.schema import ActivationRecord, EvaluationRecord, Record
from jaxvalues.data.validate import Problem
from jaxvalues.data.values import VALUE_IDS, VALUES, Value, get_value

__all__ = [
    "VALUES", "VALUE_IDS", "Value", "get_value", "Record", "ActivationRecord", "EvaluationRecord",
    "load_records", "read_records", "write_jsonl", "LoadResult", "DataWarning", "Problem",
    "Rendered", "EvalPrompt", "render_activation", "render_evaluation", "render_evaluation_pair",
    "render_support", "label_token_ids", "token_masks",
]  # fmt: skip
