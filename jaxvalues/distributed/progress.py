"""One rich progress bar over shards or conditions, with throughput.

    with ProgressBar(total, "shards", enabled=True) as bar:
        bar.advance(tokens=1234)      # one unit done; optional running count of tokens

Columns: label, bar, done/total, units per second, tokens per second (when counted), elapsed,
remaining. Written to stderr; disabled (a no-op) for --json output and in tests.
"""

from __future__ import annotations

import time


class ProgressBar:
    def __init__(self, total: int, unit: str, label: str = "", enabled: bool = True, done: int = 0):
        self.total, self.unit, self.label = int(total), unit, label or unit
        self.enabled = enabled and total > 0
        self.done, self.tokens, self.failed = int(done), 0, 0
        self._start_done = int(done)
        self._t0 = time.perf_counter()
        self._prog = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=False)
            self._prog.start()
            self._task = self._prog.add_task(self.label, total=self.total, completed=self.done, rate="")
        return self

    def throughput(self) -> dict:
        dt = max(time.perf_counter() - self._t0, 1e-9)
        return {f"{self.unit}_per_s": (self.done - self._start_done) / dt, "tokens_per_s": self.tokens / dt,
                "seconds": dt}

    def advance(self, n: int = 1, tokens: int = 0, failed: bool = False) -> None:
        self.done += n
        self.tokens += int(tokens)
        self.failed += int(failed)
        if self._prog is not None:
            tp = self.throughput()
            rate = f"{tp[f'{self.unit}_per_s']:.2f} {self.unit}/s"
            if self.tokens:
                rate += f"  {tp['tokens_per_s']:,.0f} tok/s"
            if self.failed:
                rate += f"  [red]{self.failed} failed[/]"
            self._prog.update(self._task, completed=self.done, rate=rate)

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.stop()
