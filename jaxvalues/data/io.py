"""Reading and writing record files: JSONL (canonical), CSV, Parquet, XLSX, the authors' workbook.

Conventions:
- `load_records(source, kind=None, lang=None, values=None, lenient=False, ...)` is the one entry
  point. `source` is a path, a list of paths, or "builtin" (the shipped seed benchmark,
  jaxvalues/data/builtin/seed_<value>.jsonl, read through importlib.resources). The format comes
  from the file extension (.jsonl/.json, .csv, .parquet, .xlsx) unless `format` is given; an .xlsx
  laid out like the authors' released workbook (sheets named by Chinese value names, columns
  Type/Context/Action1/Action2) is imported with `read_workbook`.
- Every row is validated (`jaxvalues.data.validate`); cross-record checks run over all sources
  together. Strict (default): any problem raises `DataError` listing all of them. Lenient: bad
  rows are skipped, and a `DataWarning` reports each one and the count.
- Locations: JSONL "line N" (1-based file line); CSV/Parquet "row N" (1-based data row; for CSV
  the header is row 1, as a spreadsheet shows it); XLSX "sheet S row N" (the Excel row number).
- Tabular files: `columns` maps source column names to record fields ({"Context": "context"});
  header names equal to a field (case-insensitive) map to it; other columns are ignored.
  `defaults` fills fields a file lacks ({"lang": "zh", "kind": "evaluation"}). A row without an
  id gets a deterministic one, ``{act|eval}-{value}-{sha1 of its texts, 10 hex}-{lang}``, and a
  row without a pair_id gets its id minus the "-{lang}" suffix.
- Authors' workbook ids: ``{id_prefix}-{value}-{n:03d}-{lang}`` where n is the data row number
  in that value's sheet (Excel row − 1), pair_id the same without the language suffix.
- Authors' activation workbook (`read_activation_workbook`, format "activation_workbook"): their
  files `{价值}-final.xlsx`, one per value (or one workbook with one sheet per value, sheets
  named by the Chinese value name), columns 冲突类型 (conflict, "富强 vs 个人财富积累"), 决策困境
  (story), 选择A (aligned action), 选择B (violating action), the "A. " / "B. " prefixes stripped.
  The value comes from the sheet name when it is a value's name, else from the file name
  (`{价值}-final.xlsx` or `{价值}.xlsx`). Records: kind "activation", lang "zh", ids
  ``act-{value}-{n:03d}-zh`` (n = data row number, Excel row − 1), pair_id without "-zh".
  Their files have no rationale (the persona scheme lets the model write its own answer), so
  these records have rationale None (an optional field of activation records): they render
  without a "理由" segment, and written to JSONL (`jaxvalues data import`) they load back
  strictly as the same records.
  The persona scheme's competing value is `jaxvalues.data.authors.competing_value(rec.conflict)`.
- Writers: `write_jsonl`, `write_csv`, `write_parquet` (string columns, FIELD_ORDER, nulls for
  fields a kind lacks) and `to_dataset` (needs the optional `datasets` package).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from jaxvalues.data.schema import FIELD_ORDER, KIND_PREFIX, LANGS, Record
from jaxvalues.data.validate import Problem, check_collection, format_problems, parse_row, problems_error
from jaxvalues.data.values import VALUE_IDS, find_value, unknown_value_message, value_ids
from jaxvalues.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "xlsx", "workbook", "activation_workbook")
_EXT = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
        ".pq": "parquet", ".xlsx": "xlsx"}  # fmt: skip
WORKBOOK_COLUMNS = ("Type", "Context", "Action1", "Action2")
_WORKBOOK_FIELDS = {"type": "conflict", "context": "context", "action1": "aligned_action", "action2": "violating_action"}
ACTIVATION_COLUMNS = ("冲突类型", "决策困境", "选择A", "选择B")
_ACTIVATION_FIELDS = {"冲突类型": "conflict", "决策困境": "story", "选择A": "aligned_action", "选择B": "violating_action"}

Item = tuple[dict, str]  # (raw row, where)


class DataWarning(UserWarning):
    """Lenient loading skipped rows (the message lists them)."""


@dataclass
class LoadResult:
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0  # rows (or whole sheets' rows) not loaded because of problems
    sources: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- readers


def read_jsonl(path, name: str | None = None) -> tuple[list[Item], list[Problem]]:
    """Raw rows of a JSONL file; undecodable or unparsable lines become problems."""
    name = name or str(path)
    data = _read_bytes(path, name)
    items, problems = [], []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        where = f"{name} line {lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(where, f"invalid UTF-8 bytes at byte {e.start} of the line "
                                    "(the file must be UTF-8 encoded)"))  # fmt: skip
            continue
        try:
            items.append((json.loads(text), where))
        except json.JSONDecodeError as e:
            problems.append(Problem(where, f"not valid JSON ({e.msg} at column {e.colno})"))
    return items, problems


def read_csv(path, name: str | None = None) -> list[Item]:
    """Raw rows of a CSV file with a header row (UTF-8, optional BOM). Bad bytes are kept as
    surrogate escapes so validation reports the row and field they are in."""
    name = name or str(path)
    text = _read_bytes(path, name).decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    items = []
    for i, row in enumerate(reader, start=2):
        raw = {k: v for k, v in row.items() if k is not None}
        if any(_cell(v) is not None for v in raw.values()):
            items.append((raw, f"{name} row {i}"))
    return items


def read_parquet(path, name: str | None = None) -> list[Item]:
    import pyarrow.parquet as pq

    name = name or str(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on garbage
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    return [(row, f"{name} row {i}") for i, row in enumerate(table.to_pylist(), start=1)]


def _open_xlsx(path, name):
    import openpyxl

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except Exception as e:  # zipfile.BadZipFile, KeyError, InvalidFileException, ...
        raise DataError(f"{name}: not a readable .xlsx workbook ({type(e).__name__}: {e})") from None


def _sheet_rows(ws):
    """(header list, iterator of (excel_row_number, cells)) of a worksheet."""
    rows = ws.iter_rows(values_only=True)
    header = next(rows, None)
    header = [("" if h is None else str(h).strip()) for h in (header or ())]
    return header, enumerate(rows, start=2)


def read_xlsx(path, name: str | None = None, sheets=None) -> list[Item]:
    """Raw rows of every sheet (or the named `sheets`), first row of each sheet the header."""
    name = name or str(path)
    wb = _open_xlsx(path, name)
    try:
        titles = wb.sheetnames if sheets is None else list(sheets)
        items = []
        for title in titles:
            if title not in wb.sheetnames:
                raise DataError(f"{name}: no sheet {title!r}; sheets: {', '.join(wb.sheetnames)}")
            header, rows = _sheet_rows(wb[title])
            for r, cells in rows:
                raw = {h: c for h, c in zip(header, cells) if h}
                if any(_cell(v) is not None for v in raw.values()):
                    items.append((raw, f"{name} sheet {title} row {r}"))
        return items
    finally:
        wb.close()


def is_authors_workbook(path) -> bool:
    """True if the first sheet of an .xlsx has the Type/Context/Action1/Action2 header."""
    wb = _open_xlsx(path, str(path))
    try:
        if not wb.sheetnames:
            return False
        header, _ = _sheet_rows(wb[wb.sheetnames[0]])
        return set(_WORKBOOK_FIELDS) <= {h.lower() for h in header}
    finally:
        wb.close()


def _sheets(path, name: str):
    """-> [(title, header, rows, where)] of every sheet, read once: rows are the non-empty
    (row number, cells padded to the header) pairs."""
    wb = _open_xlsx(path, name)
    out = []
    try:
        for title in wb.sheetnames:
            header, rows = _sheet_rows(wb[title])
            kept = [(r, list(c) + [None] * (len(header) - len(c))) for r, c in rows
                    if any(_cell(x) is not None for x in c)]
            out.append((title, header, kept, f"{name} sheet {title}"))
    finally:
        wb.close()
    return out


def read_workbook(path, name: str | None = None, id_prefix: str = "cvoice", lang: str = "zh"):
    """Raw evaluation rows of the authors' released workbook (one sheet per value, named by the
    Chinese value name; Type, Context, Action1 = aligned, Action2 = violating).
    Returns (items, problems); a sheet with an unknown name or missing columns is a problem."""
    name = name or str(path)
    items, problems = [], []
    for title, header, rows, where in _sheets(path, name):
        value = find_value(title)
        cols = {h.lower(): j for j, h in enumerate(header) if h}
        missing = [c for c in WORKBOOK_COLUMNS if c.lower() not in cols]
        n_rows = len(rows)
        if value is None:
            problems.append(Problem(where, unknown_value_message(title) + "; sheets must be named by a "
                                    f"value's Chinese name ({n_rows} rows not loaded)", rows=n_rows))  # fmt: skip
            continue
        if missing:
            problems.append(Problem(where, f"missing column(s) {', '.join(missing)}; expected header "
                                    f"{', '.join(WORKBOOK_COLUMNS)} ({n_rows} rows not loaded)", rows=n_rows))  # fmt: skip
            continue
        for r, cells in rows:
            pair_id = f"{id_prefix}-{value.id}-{r - 1:03d}"
            raw = {"id": f"{pair_id}-{lang}", "kind": "evaluation", "lang": lang, "pair_id": pair_id,
                   "value": value.id}  # fmt: skip
            for col, fld in _WORKBOOK_FIELDS.items():
                raw[fld] = _cell(cells[cols[col]])
            items.append((raw, f"{where} row {r}"))
    return items, problems


def is_activation_workbook(path) -> bool:
    """True if the first sheet of an .xlsx has any of the activation columns 冲突类型 / 决策困境 /
    选择A / 选择B (a sheet missing some of them is then reported, not read as a plain table)."""
    wb = _open_xlsx(path, str(path))
    try:
        if not wb.sheetnames:
            return False
        header, _ = _sheet_rows(wb[wb.sheetnames[0]])
        return bool(set(ACTIVATION_COLUMNS) & set(header))
    finally:
        wb.close()


def _value_from_file(path) -> str:
    stem = Path(str(path)).stem
    return stem[: -len("-final")] if stem.endswith("-final") else stem


def read_activation_workbook(path, name: str | None = None, lang: str = "zh"):
    """Raw activation rows of the authors' activation files ({价值}-final.xlsx; see the module
    docstring). Returns (items, problems); a sheet whose value cannot be told or that lacks a
    column is a problem naming the file, the sheet, the missing columns and the expected ones."""
    from jaxvalues.data.authors import strip_option_prefix

    name = name or str(path)
    items, problems = [], []
    for title, header, rows, where in _sheets(path, name):
        n_rows = len(rows)
        if not header and not n_rows:
            continue  # an empty sheet
        value = find_value(title) or find_value(_value_from_file(path))
        cols = {h: j for j, h in enumerate(header) if h}
        missing = [c for c in ACTIVATION_COLUMNS if c not in cols]
        if value is None:
            problems.append(Problem(where, f"cannot tell the value: {unknown_value_message(title)} and file "
                                    f"name {Path(str(path)).name!r} is not '{{价值}}-final.xlsx' with a value's "
                                    f"Chinese name ({n_rows} rows not loaded)", rows=n_rows))  # fmt: skip
            continue
        if missing:
            problems.append(Problem(where, f"missing column(s) {', '.join(missing)}; expected columns "
                                    f"{', '.join(ACTIVATION_COLUMNS)} ({n_rows} rows not loaded)",
                                    rows=n_rows))  # fmt: skip
            continue
        for r, cells in rows:
            pair_id = f"act-{value.id}-{r - 1:03d}"
            raw = {"id": f"{pair_id}-{lang}", "kind": "activation", "lang": lang, "pair_id": pair_id,
                   "value": value.id}  # fmt: skip
            for col, fld in _ACTIVATION_FIELDS.items():
                raw[fld] = _cell(cells[cols[col]])
            for fld, label in (("aligned_action", "A"), ("violating_action", "B")):
                if raw[fld] is not None:
                    raw[fld] = strip_option_prefix(raw[fld], label) or None
            items.append((raw, f"{where} row {r}"))
    return items, problems


def _cell(v):
    """A tabular cell as a string, or None when empty (numbers are written as text)."""
    if v is None:
        return None
    if isinstance(v, float):
        if v != v:  # NaN
            return None
        if v.is_integer():
            v = int(v)
    s = str(v)
    return s if s.strip() else None


def _read_bytes(path, name) -> bytes:
    try:
        return path.read_bytes() if hasattr(path, "read_bytes") else Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected a data file") from None


def map_columns(items: list[Item], columns: dict | None = None, defaults: dict | None = None) -> list[Item]:
    """Rename tabular columns to record fields, fill defaults, derive missing ids and pair ids."""
    columns = dict(columns or {})
    lower_cols = {k.lower(): v for k, v in columns.items()}
    for fld in columns.values():
        if fld not in FIELD_ORDER:
            raise DataError(f"column mapping: unknown target field {fld!r}; fields: {', '.join(FIELD_ORDER)}")
    out = []
    for raw, where in items:
        row = {}
        for key, val in raw.items():
            key = str(key).strip()
            target = columns.get(key) or lower_cols.get(key.lower())
            if target is None and key.lower() in FIELD_ORDER:
                target = key.lower()
            if target is not None:
                row[target] = _cell(val)
        for k, v in (defaults or {}).items():
            if row.get(k) is None:
                row[k] = v
        row = {k: v for k, v in row.items() if v is not None}
        if "id" not in row:
            row["id"] = derive_id(row)
        if "pair_id" not in row and isinstance(row.get("lang"), str):
            suffix = f"-{row['lang'].strip().lower()}"
            row["pair_id"] = row["id"][: -len(suffix)] if row["id"].endswith(suffix) else row["id"]
        out.append((row, where))
    return out


def derive_id(row: dict) -> str:
    """Deterministic id from a row's content: {act|eval}-{value}-{10 hex}-{lang}."""
    kind = str(row.get("kind") or "").strip().lower()
    v = find_value(str(row.get("value") or ""))
    lang = str(row.get("lang") or "").strip().lower()
    texts = [str(row.get(k) or "") for k in ("conflict", "story", "context", "aligned_action", "violating_action")]
    digest = hashlib.sha1("\x1f".join([kind, v.id if v else "", lang, *texts]).encode("utf-8", "surrogateescape"))
    return f"{KIND_PREFIX.get(kind, 'rec')}-{v.id if v else 'unknown'}-{digest.hexdigest()[:10]}-{lang or 'xx'}"


# ------------------------------------------------------------------------------------ loading


def builtin_files() -> list:
    """The shipped seed files (importlib.resources Traversables), in the authors' value order."""
    root = importlib.resources.files("jaxvalues.data").joinpath("builtin")
    files = [f for f in root.iterdir() if f.name.startswith("seed_") and f.name.endswith(".jsonl")]

    def order(f):
        vid = f.name[len("seed_") : -len(".jsonl")]
        return (VALUE_IDS.index(vid) if vid in VALUE_IDS else len(VALUE_IDS), f.name)

    return sorted(files, key=order)


def _detect_format(path: Path) -> str:
    fmt = _EXT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of "
                        f"{', '.join(sorted(_EXT))} (or pass format=...)")  # fmt: skip
    if fmt == "xlsx" and path.exists():
        if is_authors_workbook(path):
            return "workbook"
        if is_activation_workbook(path):
            return "activation_workbook"
    return fmt


def read_items(source, format: str | None = None, columns=None, defaults=None, sheets=None, id_prefix="cvoice"):
    """(raw items, problems, source names) from a path, list of paths or "builtin"."""
    if isinstance(source, (str, Path)) and str(source) == "builtin":
        files = builtin_files()
        if not files:
            raise DataError("builtin: no seed files found in jaxvalues/data/builtin (seed_<value>.jsonl)")
        items, problems = [], []
        for f in files:
            it, pr = read_jsonl(f, name=f"builtin/{f.name}")
            items += it
            problems += pr
        return items, problems, [f"builtin/{f.name}" for f in files]
    if isinstance(source, (list, tuple)):
        items, problems, names = [], [], []
        for s in source:
            it, pr, nm = read_items(s, format, columns, defaults, sheets, id_prefix)
            items, problems, names = items + it, problems + pr, names + nm
        return items, problems, names
    path = Path(source)
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fmt = format or _detect_format(path)
    if fmt == "jsonl":
        items, problems = read_jsonl(path)
    elif fmt == "workbook":
        items, problems = read_workbook(path, id_prefix=id_prefix)
    elif fmt == "activation_workbook":
        items, problems = read_activation_workbook(path)
    else:
        reader = {"csv": read_csv, "parquet": read_parquet}.get(fmt)
        rows = reader(path) if reader else read_xlsx(path, sheets=sheets)
        items, problems = map_columns(rows, columns, defaults), []
        from jaxvalues.data.validate import column_problem

        cp = column_problem(str(path), rows, items, columns)
        problems += [cp] if cp else []
    if not items and not problems:
        from jaxvalues.data.validate import empty_problem

        problems = [empty_problem(str(path))]
    return items, problems, [str(path)]


def _as_set(x, allowed, what):
    if x is None:
        return None
    vals = {x} if isinstance(x, str) else set(x)
    bad = vals - set(allowed)
    if bad:
        raise DataError(f"unknown {what} {sorted(bad)[0]!r}; expected one of {', '.join(allowed)}")
    return vals


def read_records(source, *, format=None, columns=None, defaults=None, sheets=None, id_prefix="cvoice",
                 lenient=False) -> LoadResult:  # fmt: skip
    """Read and validate records; strict raises `DataError` on any problem, lenient collects them."""
    items, problems, names = read_items(source, format, columns, defaults, sheets, id_prefix)
    parsed, bad_rows = [], sum(p.rows for p in problems)
    for raw, where in items:
        rec, pr = parse_row(raw, where)
        if rec is None:
            problems += pr
            bad_rows += 1
        else:
            parsed.append((rec, where))
    keep, pr = check_collection(parsed)
    problems += pr
    records = [rec for (rec, _), k in zip(parsed, keep) if k]
    problems = _in_file_order(problems, names)
    skipped = bad_rows + keep.count(False)
    label = names[0] if len(names) == 1 else f"{len(names)} files"
    if problems and not lenient:
        raise problems_error(label, problems)
    return LoadResult(records=records, problems=problems, skipped=skipped, sources=names)


def _in_file_order(problems: list[Problem], names: list[str]) -> list[Problem]:
    """Sort problems by source (in the order read), then by line/row number (stable)."""

    def key(p: Problem):
        head, _, num = p.where.rpartition(" ")
        src = next((i for i, n in enumerate(names) if p.where.startswith(n)), len(names))
        return (src, head, int(num)) if num.isdigit() else (src, p.where, 0)

    return sorted(problems, key=key)


def filter_records(records, kind=None, lang=None, values=None) -> list[Record]:
    kinds = _as_set(kind, ("activation", "evaluation"), "kind")
    langs = _as_set(lang, LANGS, "language")
    vals = set(value_ids(values)) if values is not None else None
    return [r for r in records
            if (kinds is None or r.kind in kinds) and (langs is None or r.lang in langs)
            and (vals is None or r.value in vals)]  # fmt: skip


def load_records(source, kind=None, lang=None, values=None, lenient=False, *, format=None, columns=None,
                 defaults=None, sheets=None) -> list[Record]:  # fmt: skip
    """Load validated records from `source` (path, list of paths or "builtin"), then filter by
    kind ("activation"/"evaluation"), lang ("zh"/"en") and values (ids or names); each filter
    takes one item or a collection. Lenient: bad rows are skipped with a `DataWarning`."""
    res = read_records(source, format=format, columns=columns, defaults=defaults, sheets=sheets, lenient=lenient)
    if res.problems:
        label = res.sources[0] if len(res.sources) == 1 else f"{len(res.sources)} files"
        warnings.warn(DataWarning(f"{label}: skipped {res.skipped} bad row(s) ({len(res.problems)} problems):\n"
                                  f"{format_problems(res.problems)}"), stacklevel=2)  # fmt: skip
    return filter_records(res.records, kind, lang, values)


# ---------------------------------------------------------------------------------------- writers


def write_jsonl(records, path) -> Path:
    """Write records as canonical JSONL (UTF-8, no ASCII escaping, FIELD_ORDER keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
    return path


def append_jsonl(records, path) -> None:
    """Append records to a JSONL file, flushing each line (used by resumable generation)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            f.flush()


def records_to_columns(records) -> dict[str, list]:
    """Column-oriented dict over FIELD_ORDER (None where a kind lacks a field)."""
    rows = [rec.to_dict() for rec in records]
    return {k: [row.get(k) for row in rows] for k in FIELD_ORDER}


def write_parquet(records, path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(k, pa.string()) for k in FIELD_ORDER])
    pq.write_table(pa.table(records_to_columns(records), schema=schema), path)
    return path


def write_csv(records, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELD_ORDER))
        w.writeheader()
        for rec in records:
            w.writerow(rec.to_dict())
    return path


def to_dataset(records):
    """A Hugging Face `datasets.Dataset` with the FIELD_ORDER columns (needs `datasets`)."""
    try:
        import datasets
    except ImportError:
        raise DataError("exporting to a datasets.Dataset needs the optional package `datasets` "
                        "(pip install datasets); Parquet export works without it") from None  # fmt: skip
    return datasets.Dataset.from_dict(records_to_columns(records))
