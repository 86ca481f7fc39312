"""Tokens and dollars: what each call cost, running totals, and the budget check.

Stanford spent under $500 on text-davinci-003 for 52K examples; the point of `--max-cost` is
that a run stops cleanly *before* it spends more than the user allowed. With requests in
flight concurrently, "before" needs two things:

- an estimate of the next request's cost that errs high: the prompt is priced at a
  conservative token estimate (`estimate_tokens`) and the completion at its full `max_tokens`;
- reservations: the estimate of every request in flight is held against the budget until the
  real cost is known, so eight concurrent requests cannot each see the same headroom.

`CostTracker` is safe to share between threads and between tasks of one event loop (a
`threading.Lock` guards totals; no method awaits while holding it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alpacakit.errors import BudgetExceeded
from alpacakit.models.backends.base import Usage


def cost_of(usage: Usage, price: Any | None) -> float:
    """Dollars for `usage` at `price` (a config.Price: $ per 1M input / output tokens)."""
    if price is None:
        return 0.0
    return (usage.prompt_tokens * price.input_per_1m + usage.completion_tokens * price.output_per_1m) / 1e6


def estimate_tokens(text: str) -> int:
    """A deliberately high token count for `text` without a tokenizer.

    BPE tokenizers average about 4 characters per token on English; counting one token per
    3 UTF-8 bytes over-estimates English and stays near the truth for code and non-Latin
    scripts, which is the safe side for a budget check.
    """
    return math.ceil(len(text.encode("utf-8")) / 3)


# Per-message overhead of chat formats (role markers, separators), in tokens.
_MESSAGE_OVERHEAD = 8


def estimate_prompt_tokens(prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> int:
    if messages is not None:
        return sum(estimate_tokens(str(m.get("content") or "")) + _MESSAGE_OVERHEAD for m in messages)
    return estimate_tokens(prompt or "")


def estimate_cost(
    price: Any | None, *, max_tokens: int, prompt: str | None = None, messages: list[dict[str, str]] | None = None
) -> float:
    """Upper-bound estimate of one request's cost: the prompt estimate plus all `max_tokens`."""
    return cost_of(Usage(estimate_prompt_tokens(prompt, messages), max_tokens), price)


class CostTracker:
    """Running totals of requests, attempts, tokens and dollars.

    `charge()` is called by a teacher after each successful call; `snapshot()` goes into
    manifests; `CostTracker(initial=old_snapshot)` continues the totals of a resumed job.
    """

    _FIELDS = ("requests", "failed_requests", "attempts", "prompt_tokens", "completion_tokens")

    def __init__(self, price: Any | None = None, initial: dict[str, Any] | None = None):
        self.price = price
        self._lock = threading.Lock()
        self._reserved = 0.0
        init = initial or {}
        self.requests = int(init.get("requests", 0))
        self.failed_requests = int(init.get("failed_requests", 0))
        self.attempts = int(init.get("attempts", 0))
        self.prompt_tokens = int(init.get("prompt_tokens", 0))
        self.completion_tokens = int(init.get("completion_tokens", 0))
        self.cost = float(init.get("cost_usd", init.get("cost", 0.0)))

    def charge(self, usage: Usage, *, price: Any | None = None, attempts: int = 1) -> float:
        """Add one successful request; returns its cost at `price` (default: the tracker's)."""
        cost = cost_of(usage, price if price is not None else self.price)
        with self._lock:
            self.requests += 1
            self.attempts += attempts
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.cost += cost
        return cost

    def record_failure(self, attempts: int) -> None:
        """A request that failed after all its attempts (nothing billed that we know of)."""
        with self._lock:
            self.failed_requests += 1
            self.attempts += attempts

    @property
    def reserved(self) -> float:
        return self._reserved

    def would_exceed(self, max_cost: float | None, estimated_next_cost: float) -> bool:
        """True if spending `estimated_next_cost` more (on top of what is spent and what
        requests in flight have reserved) could go over `max_cost`. None means no budget."""
        if max_cost is None:
            return False
        with self._lock:
            return self.cost + self._reserved + estimated_next_cost > max_cost + 1e-12

    @contextmanager
    def reserve(self, estimated_cost: float, max_cost: float | None = None) -> Iterator[None]:
        """Hold `estimated_cost` against the budget while a request is in flight.

        Raises BudgetExceeded (and holds nothing) if the reservation could take the total over
        `max_cost`. The check and the reservation are one atomic step.
        """
        with self._lock:
            if max_cost is not None and self.cost + self._reserved + estimated_cost > max_cost + 1e-12:
                raise BudgetExceeded(
                    f"the next request could cost up to ${estimated_cost:.4f}; spent ${self.cost:.4f} "
                    f"(+${self._reserved:.4f} in flight) of the ${max_cost:.4f} budget",
                    hint="raise --max-cost to continue; rerunning the same command resumes where this stopped",
                )
            self._reserved += estimated_cost
        try:
            yield
        finally:
            with self._lock:
                self._reserved = max(0.0, self._reserved - estimated_cost)

    def snapshot(self) -> dict[str, Any]:
        """Totals for a manifest (JSON-ready)."""
        with self._lock:
            out: dict[str, Any] = {f: getattr(self, f) for f in self._FIELDS}
            out["cost_usd"] = round(self.cost, 8)
        return out

    def __repr__(self) -> str:
        return f"CostTracker({self.snapshot()})"
