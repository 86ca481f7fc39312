"""What a journaled job has asked, paid and kept: summed from its journal entries and results,
so a resumed run's counts (and the manifest's) cover every run of the job."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobTotals:
    requests: int = 0
    attempts: int = 0
    kept: int = 0
    discards: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    teacher_seconds: float = 0.0
    asked_again: int = 0  # requests sent again after a crash lost their answers (see the module doc)
    maybe_billed_attempts: int = 0  # failed attempts the endpoint may have billed (timeouts, unreadable 200s)
    maybe_billed_usd: float = 0.0  # their worst-case cost, not in cost_usd (which is confirmed spending)
    pending: int = 0  # journaled (counted in requests) but not yet processed by the worker (worker.py)
    pending_most: int = 0  # the most records those pending entries can keep (see start_worker)
    best_kept: int = 0  # the most records one answer has kept so far (the overshoot guard's yardstick)

    def add_entry(self, entry: dict) -> None:
        self.requests += 1
        self.attempts += int(entry.get("attempts", 1))
        usage = entry.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.cached_tokens += int(usage.get("cached_tokens", 0))
        self.completion_tokens += int(usage.get("completion_tokens", 0))
        self.cost_usd += float(entry.get("cost", 0.0))
        self.teacher_seconds += float(entry.get("latency_s", 0.0))
        maybe = entry.get("maybe_billed") or {}
        self.maybe_billed_attempts += int(maybe.get("attempts", 0))
        self.maybe_billed_usd += float(maybe.get("cost_usd", 0.0))

    def add_results(self, kept: list[dict], discards: list[dict]) -> None:
        self.kept += len(kept)
        self.best_kept = max(self.best_kept, len(kept))
        for d in discards:
            self.discards[d["reason"]] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "kept": self.kept,
            "discarded": sum(self.discards.values()),
            "discards_by_reason": dict(sorted(self.discards.items())),
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "teacher_seconds": round(self.teacher_seconds, 2),
            "asked_again": self.asked_again,
            "maybe_billed_attempts": self.maybe_billed_attempts,
            "maybe_billed_usd": round(self.maybe_billed_usd, 6),
            **({"processing": self.pending} if self.pending else {}),
        }
