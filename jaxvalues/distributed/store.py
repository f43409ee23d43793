"""The output directory of a sweep: one Parquet file per finished condition, and one table.

Layout of OUT:
  spec.yaml            the spec as run (normalised)
  conditions.parquet   every condition of the spec: id, fields, status (finished | failed | pending)
  parts/<id>.parquet   the rows of one finished condition (the durable unit; a rerun skips ids
                       that have a part)
  results.parquet      all finished rows in spec order of conditions (rebuilt as parts arrive, at
                       most every `flush_seconds`, and at the end)
  summary.parquet      one row per finished condition: mean delta_p on the value's own dilemmas,
                       flip rate, number of dilemmas
  failures.json        conditions that failed for good: label, error, remote traceback
  stats/<key>/         each model's statistics (jaxvalues.stats.save_stats), reused on rerun

Every file is written to a temporary name in the same directory and renamed (`os.replace`, atomic
on POSIX), so an interrupted run never leaves a partial file under a final name; stale temporary
files are removed when a store is opened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

TMP_MARK = ".tmp-"


def atomic_write(path: Path, write) -> Path:
    """write(tmp_path) then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_parquet(df, path: Path) -> Path:
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


class SweepStore:
    def __init__(self, out, conditions: Sequence, flush_seconds: float = 30.0):
        self.out = Path(out).expanduser().resolve()
        self.parts = self.out / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.conditions = list(conditions)
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.failures: dict[str, dict] = {}
        for d in (self.out, self.parts):
            for f in d.iterdir():
                if TMP_MARK in f.name and f.is_file():
                    f.unlink()  # left by a killed run
        self.damaged: list[str] = self._drop_damaged_parts()

    def _drop_damaged_parts(self) -> list[str]:
        """Parts that cannot be read (truncated, not Parquet) are reported in one line each, moved
        aside to parts/<id>.parquet.damaged and so computed again."""
        import sys

        import pyarrow.parquet as pq

        damaged = []
        for c in self.conditions:
            p = self.part(c.id)
            if not p.is_file():
                continue
            try:
                pq.ParquetFile(p).metadata  # footer and schema: a truncated file fails here
            except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, ...
                os.replace(p, p.with_name(p.name + ".damaged"))
                damaged.append(c.id)
                why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
                print(f"warning: {p} is damaged ({why}); {c.label} will be computed again", file=sys.stderr)
        return damaged

    # --- the spec that owns the directory ------------------------------------------------------
    def check_spec(self, spec, replace: bool = False) -> None:
        """Refuse a directory that holds another spec's sweep (unless `replace`)."""
        import yaml

        from jaxvalues.errors import ConfigError

        f = self.out / "spec.yaml"
        if replace or not f.is_file():
            return
        try:
            stored = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            stored = None
        if not isinstance(stored, dict):
            raise ConfigError(f"{self.out}: its spec.yaml cannot be read; pass --replace to run "
                              f"{spec.source or 'this spec'} here anyway, or use another --out")
        if spec_fingerprint(stored) != spec_fingerprint(spec.to_dict()):
            diff = [k for k in _FINGERPRINTED if stored.get(k) != spec.to_dict().get(k)]
            raise ConfigError(f"{self.out} holds the results of another sweep spec (differs in "
                              f"{', '.join(diff) or 'its settings'}); use another --out, or pass --replace to "
                              f"make it {spec.source or 'this spec'}'s (finished conditions with the same id are "
                              f"kept, the tables are rebuilt for the new spec)")

    # --- state --------------------------------------------------------------------------------
    def part(self, cid: str) -> Path:
        return self.parts / f"{cid}.parquet"

    def finished(self) -> set[str]:
        return {c.id for c in self.conditions if self.part(c.id).is_file()}

    def pending(self) -> list:
        done = self.finished()
        return [c for c in self.conditions if c.id not in done]

    # --- writing --------------------------------------------------------------------------------
    def add(self, cid: str, rows) -> None:
        write_parquet(rows, self.part(cid))
        self.failures.pop(cid, None)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def fail(self, cond, failure) -> None:
        self.failures[cond.id] = {"id": cond.id, "label": cond.label, "error": str(failure).split("\n")[0],
                                  "remote_traceback": getattr(failure, "remote_traceback", ""),
                                  "user_error": bool(getattr(failure, "user_error", False))}

    def write_spec(self, spec) -> None:
        import yaml

        write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True), self.out / "spec.yaml")

    def flush(self) -> None:
        """Rewrite conditions.parquet, results.parquet, summary.parquet and failures.json."""
        import pandas as pd

        self._last_flush = time.monotonic()
        done = self.finished()
        status = [("finished" if c.id in done else "failed" if c.id in self.failures else "pending")
                  for c in self.conditions]
        conds = pd.DataFrame([c.to_dict() for c in self.conditions])
        if len(conds):
            conds["seed"] = conds["seed"].astype("Int64")
        conds["status"] = status
        write_parquet(conds, self.out / "conditions.parquet")
        frames = [pd.read_parquet(self.part(c.id)) for c in self.conditions if c.id in done]
        if frames:
            table = pd.concat(frames, ignore_index=True)
            write_parquet(table, self.out / "results.parquet")
            write_parquet(summarize(table), self.out / "summary.parquet")
        if self.failures:
            write_text(json.dumps(list(self.failures.values()), indent=2, ensure_ascii=False),
                       self.out / "failures.json")
        elif (self.out / "failures.json").exists():
            (self.out / "failures.json").unlink()


_FINGERPRINTED = ("models", "dtype", "data", "statistics", "selection", "evaluation", "grid")


def spec_fingerprint(d: dict) -> str:
    """Hash of what a spec computes (not its name or workers: those do not change results)."""
    from jaxvalues.distributed.shards import fingerprint

    return fingerprint({k: d.get(k) for k in _FINGERPRINTED})[:16]


def summarize(table):
    """One row per condition: effect on the value's own dilemmas (and on all evaluated ones)."""
    import pandas as pd

    keys = ["condition_id", "model", "value", "method", "size", "mode", "lang", "seed", "num_neurons"]
    rows = []
    for _, g in table.groupby("condition_id", sort=False):
        own = g[g["eval_value"] == g["value"].iloc[0]]
        rows.append({**{k: g[k].iloc[0] for k in keys}, "dilemmas": len(own),
                     "delta_p": float(own["delta_p"].mean()) if len(own) else float("nan"),
                     "flip_rate": float(own["flipped"].mean()) if len(own) else float("nan"),
                     "p_aligned_baseline": float(own["p_aligned_baseline"].mean()) if len(own) else float("nan"),
                     "delta_p_all": float(g["delta_p"].mean())})
    out = pd.DataFrame(rows)
    if len(out):
        out["seed"] = out["seed"].astype("Int64")
    return out
