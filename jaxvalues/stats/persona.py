"""The authors' persona activation scheme: statistics over the model's own answers.

For every activation record the model answers the authors' persona prompt twice
(`jaxvalues.data.authors.persona_record_messages`): condition "{value}-support" with `{value}` =
the value's Chinese name (English name for en records) and "{value}-conflict" with `{value}` =
the competing value (the text after "vs" in the record's conflict). User message only, chat
template with the generation prompt (plain text when the tokenizer has no chat template), greedy,
repetition penalty 1.1, at most `max_new_tokens` new tokens, batched with the KV cache.

Counted tokens: the answer tokens only, never the prompt. An answer is the generated ids up to,
not including, the first EOS id (an answer that hits `max_new_tokens` keeps all its tokens), so
`stats.tokens[c]` equals the sum of `num_tokens` over the answers of condition c. The counts are
made exactly by a second pass: prompt + answer through `collect` with token_selection="mask"
selecting the answer positions (the same activations the decode steps see, up to the last
answer token). The authors' division of the counts by the number of layers is not copied.

Answers file (`answers_path`, JSONL): one row per (record, condition) with record_id,
condition (the condition name, e.g. "integrity-support"), value_text, prompt (the rendered text),
answer (decoded, special tokens skipped), num_tokens and answer_ids (the exact token ids, used
on reuse). Each generated batch is appended with one write + fsync; a final line cut off by a
crash is dropped on the next run. A rerun with the same file generates only the missing pairs; a
saved row whose prompt differs from the one rendered now (another model / template) is an error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.stats.accumulator import NeuronStats
from jaxvalues.stats.batching import TokenizedExample, bucket_length, default_buckets
from jaxvalues.stats.records import condition_names

STANCES = ("support", "conflict")


def render_persona(rec, tokenizer, stance: str, chat: bool | None = None) -> tuple[str, bool]:
    """(prompt text, add_special_tokens) of one record and stance ("support" | "conflict")."""
    from jaxvalues.data.authors import persona_record_messages
    from jaxvalues.data.prompts import _apply_template, _use_chat

    messages = persona_record_messages(rec, stance)
    if _use_chat(tokenizer, chat):
        return _apply_template(tokenizer, messages, True, None), False
    return messages[0]["content"], True


def load_answers(path) -> dict[tuple[str, str], dict]:
    """{(record_id, condition): row} of an answers file (missing file: {}; a final line without
    its newline, left by an interrupted write, is ignored)."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # cut off mid-write
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JaxValuesError(f"{path}:{n}: not a JSON line ({e})") from None
        out[(row["record_id"], row["condition"])] = row
    return out


def _repair(path: Path):
    """Drop an incomplete final line so appends start on a line boundary."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)


def _append(path: Path, rows: list[dict]):
    if not rows:
        return
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _answer_ids(row_ids, eos: set) -> list[int]:
    out = []
    for t in np.asarray(row_ids).tolist():
        if t in eos:
            break
        out.append(int(t))
    return out


def _jobs(records, tokenizer, values, chat):
    from jaxvalues.data.authors import persona_value_texts
    from jaxvalues.data.values import VALUE_IDS

    jobs, skipped = [], []
    for rec in records:
        if getattr(rec, "kind", "activation") != "activation":
            continue
        if rec.value not in VALUE_IDS:
            raise JaxValuesError(f"record {rec.id!r}: unknown value {rec.value!r}")
        if values is not None and rec.value not in values:
            continue
        if not getattr(rec, "violating_action", None):
            skipped.append(rec.id)  # the persona prompt needs two options
            continue
        texts = persona_value_texts(rec)
        for stance in STANCES:
            prompt, special = render_persona(rec, tokenizer, stance, chat)
            ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
            jobs.append({"record_id": rec.id, "condition": f"{rec.value}-{stance}", "value_text": texts[stance],
                         "prompt": prompt, "prompt_ids": [int(t) for t in ids]})
    return jobs, skipped


def generate_answers(lm, jobs: list[dict], *, max_new_tokens: int, repetition_penalty: float, batch_size: int,
                     on_batch=None, progress: bool = False) -> list[dict]:
    """Greedy answers for `jobs` (dicts with prompt_ids), batched by similar prompt length with
    left padding to a bucket length (few compilations). Returns answer rows in job order;
    `on_batch(rows)` is called after every batch."""
    from jaxvalues.models.lm import pad_batch

    eos = set(lm.eos_ids or ())
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i]["prompt_ids"]))
    buckets = default_buckets(max((len(j["prompt_ids"]) for j in jobs), default=1))
    out: dict[int, dict] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [jobs[i]["prompt_ids"] for i in idx]
        ids, mask = pad_batch(seqs, lm.pad_id, "left", bucket_length(max(len(s) for s in seqs), buckets))
        new = lm.generate(ids, max_new_tokens, attention_mask=mask, do_sample=False,
                          repetition_penalty=repetition_penalty, return_text=False)
        rows = []
        for i, r in zip(idx, np.asarray(new)):
            ans = _answer_ids(r, eos)
            j = jobs[i]
            text = lm.tokenizer.decode(ans, skip_special_tokens=True) if lm.tokenizer is not None else ""
            row = {"record_id": j["record_id"], "condition": j["condition"], "value_text": j["value_text"],
                   "prompt": j["prompt"], "answer": text, "num_tokens": len(ans), "answer_ids": ans}
            out[i] = row
            rows.append(row)
        if on_batch is not None:
            on_batch(rows)
        if progress:
            import sys

            print(f"persona: {min(start + batch_size, len(order))}/{len(order)} answers", file=sys.stderr)
    return [out[i] for i in range(len(jobs))]


def collect_persona(lm, records: Sequence, *, values: Sequence[str] | None = None, max_new_tokens: int = 500,
                    repetition_penalty: float = 1.1, batch_size: int = 8, answers_path=None, progress: bool = False,
                    chat: bool | None = None, **collect_kw) -> NeuronStats:
    """Neuron statistics over the model's own persona answers (see the module docstring).

    Conditions: `condition_names("stance")` (all 24 listed; values filtered out have no data).
    values: value ids to include (default all). answers_path: the JSONL answers file (resumable).
    Returns the NeuronStats; meta["persona"] reports answers generated / reused / skipped records."""
    from jaxvalues.stats.collect import collect

    t0 = time.perf_counter()
    if lm.tokenizer is None:
        raise ConfigError("the persona scheme generates text: the model needs its tokenizer")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if values is not None:
        from jaxvalues.data.values import VALUE_IDS

        values = set(values)
        bad = sorted(values - set(VALUE_IDS))
        if bad:
            raise ConfigError(f"unknown value(s) {', '.join(bad)}; expected some of {', '.join(VALUE_IDS)}")
    jobs, skipped = _jobs(records, lm.tokenizer, values, chat)
    if not jobs:
        raise JaxValuesError("no activation records with two options to run the persona scheme on")
    path = Path(answers_path) if answers_path is not None else None
    saved = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair(path)
        saved = load_answers(path)
    answers: dict[tuple[str, str], dict] = {}
    missing = []
    for j in jobs:
        key = (j["record_id"], j["condition"])
        row = saved.get(key)
        if row is None:
            missing.append(j)
            continue
        if row.get("prompt") != j["prompt"]:
            raise ConfigError(f"{path}: the saved answer of {key} was made for another prompt (another model, "
                              "chat template or record text); use another answers file")
        answers[key] = row
    reused = len(answers)
    if missing:
        on_batch = (lambda rows: _append(path, rows)) if path is not None else None
        for row in generate_answers(lm, missing, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                    batch_size=batch_size, on_batch=on_batch, progress=progress):
            answers[(row["record_id"], row["condition"])] = row
    names = condition_names("stance")
    index = {n: i for i, n in enumerate(names)}
    examples = []
    for j in jobs:
        row = answers[(j["record_id"], j["condition"])]
        ans = row.get("answer_ids")
        if ans is None:  # a file written by hand / another tool: re-tokenize the text
            ans = lm.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        ids = np.asarray(list(j["prompt_ids"]) + list(ans), np.int32)
        m = np.zeros(len(ids), bool)
        m[len(j["prompt_ids"]):] = True
        examples.append(TokenizedExample(ids, index[j["condition"]], m, f"{j['record_id']}:{j['condition']}"))
    meta = {"scheme": "persona", "records": len(records),
            "persona": {"answers": len(jobs), "generated": len(missing), "reused": reused,
                        "skipped_records": skipped, "max_new_tokens": max_new_tokens,
                        "repetition_penalty": repetition_penalty, "answers_path": str(path) if path else None,
                        "answer_tokens": int(sum(len(e) - int((~e.mask).sum()) for e in examples)),
                        "counted": "generated tokens before the first EOS; prompt not counted",
                        "generation_seconds": round(time.perf_counter() - t0, 3)}}
    return collect(lm, examples, names, token_selection="mask", batch_size=batch_size, progress=progress, meta=meta,
                   **collect_kw)
