"""The generation progress bar: kept / target, discard rate, tokens, dollars, ETA."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from alpacakit.generate.journal import JobTotals


class GenerationProgress:
    def __init__(self, target: int, totals: JobTotals, enabled: bool = True, unit: str = "kept",
                 label: str = "generate"):
        """`label` starts each logged line (without a terminal): the verb whose job this is."""
        self.totals = totals
        self.label = label
        self.target = target
        self.unit = unit
        console = Console(stderr=True)
        self.live = enabled and console.is_terminal
        self.log = enabled and not self.live
        self.console = console
        self._progress = Progress(
            TextColumn(f"[bold]{unit}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not self.live,
        )
        self._task = self._progress.add_task("generate", total=target, completed=self._done(), stats=self._stats())

    def _done(self) -> int:
        return min(self.totals.requests if self.unit == "answered" else self.totals.kept, self.target)

    def _stats(self) -> str:
        t = self.totals
        seen = t.kept + sum(t.discards.values())
        rate = sum(t.discards.values()) / seen if seen else 0.0
        writing = f" | {self.writing}" if self.writing else ""
        return (f"discarded {rate:.0%} | req {t.requests}{writing} | "
                f"{t.prompt_tokens + t.completion_tokens:,} tok | ${t.cost_usd:.4f}")

    writing = ""  # what the requests in flight have written so far, when the teacher shows it
    _last_log = 0.0

    def update(self, writing: str | None = None) -> None:
        """Redraw; `writing` (e.g. "6 writing, 14 tasks so far") replaces the in-flight note.
        Without a terminal, a line is printed per finished request and at most every 30 s."""
        if writing is not None:
            self.writing = writing
        self._progress.update(self._task, completed=self._done(), stats=self._stats())
        now = time.monotonic()
        if self.log and (writing is None or now - self._last_log >= 30):
            self._last_log = now
            print(f"[{self.label}] {self.unit} {self._done()}/{self.target} | {self._stats()}", file=sys.stderr, flush=True)

    def __enter__(self) -> "GenerationProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
