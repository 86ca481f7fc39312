"""The generation progress bar: kept / target, discard rate, tokens, dollars, ETA."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from alpacakit.jobs import JobTotals


class GenerationProgress:
    def __init__(
        self, target: int, totals: JobTotals, enabled: bool = True, unit: str = "kept", label: str = "generate"
    ):
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
            TextColumn(f"[bold]{unit}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self._task = self._progress.add_task("generate", total=target, completed=self._done(), stats=self._stats())

    def _done(self) -> int:
        return min(self.totals.requests if self.unit == "answered" else self.totals.kept, self.target)

    def _stats(self) -> str:
        t = self.totals
        seen = t.kept + sum(t.discards.values())
        rate = sum(t.discards.values()) / seen if seen else 0.0
        writing = f" | {self.writing}" if self.writing else ""
        return (
            f"discarded {rate:.0%} | req {t.requests}{writing} | "
            f"{t.prompt_tokens + t.completion_tokens:,} tok | ${t.cost_usd:.4f}"
            + (
                f" (+ up to ${t.maybe_billed_usd:.4f} for {t.maybe_billed_attempts} failed attempts)"
                if t.maybe_billed_attempts
                else ""
            )
        )

    writing = ""  # what the requests in flight have written so far, when the teacher shows it
    _last_log = float("-inf")
    _logged_target = False
    log_every_s = 10.0  # without a terminal: one line at most this often (and the last one)
    _start: tuple[float, int] | None = None  # (time, done) when this run's first update came

    def _rate_eta(self, now: float) -> str:
        if self._start is None:
            return ""
        t0, d0 = self._start
        rate = (self._done() - d0) / (now - t0) if now > t0 else 0.0
        if rate <= 0:
            return ""
        left = max(0, self.target - self._done()) / rate
        return f" | {rate:.2f} {self.unit}/s, eta {int(left // 60)}m{int(left % 60):02d}s"

    def update(self, writing: str | None = None) -> None:
        """Redraw; `writing` (e.g. "6 writing, 14 tasks so far") replaces the in-flight note.
        Without a terminal (a log, CI, nohup), a line with the rate and ETA is printed at most
        every `log_every_s` seconds, plus the one that reaches the target: a 52K run logs a few
        hundred lines, not one per response."""
        if writing is not None:
            self.writing = writing
        self._progress.update(self._task, completed=self._done(), stats=self._stats())
        now = time.monotonic()
        if self._start is None:
            self._start = (now, self._done())
        reached = self._done() >= self.target
        if self.log and (now - self._last_log >= self.log_every_s or (reached and not self._logged_target)):
            self._last_log = now
            self._logged_target = reached  # answers still arriving after the target: no repeats
            print(
                f"[{self.label}] {self.unit} {self._done()}/{self.target} | {self._stats()}{self._rate_eta(now)}",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> GenerationProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
