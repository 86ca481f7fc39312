"""The interface between the engine and a stage: what to ask, what an answer is worth, when to stop.

A stage (self-instruct, answer mode, eval generate, judging) knows its requests and what it
wants from them; the engine (`engine.run_job`, or `jobs/batch.BatchRunner` for the
Batch API) owns everything that makes paid work safe: concurrency, the journal, the budget,
refusals recorded as discards, resuming. So a stage is a handful of small methods and the
settings are one `JobOptions`, instead of a dozen callbacks threaded through every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alpacakit.jobs.journal import Request
from alpacakit.jobs.totals import JobTotals

# (request, text written so far) for each request in flight; "" for an endpoint's
InFlight = list[tuple[Request, str]]


@dataclass(frozen=True)
class JobOptions:
    """How the engine runs a stage: `sampling` goes to every request as is; a request whose
    worst case could take spending past `max_cost` is not sent; `check_every_s` is how often
    a teacher that can cut answers short has its answers in flight looked at."""

    concurrency: int = 1
    sampling: dict[str, Any] = field(default_factory=dict)
    max_cost: float | None = None
    check_every_s: float = 2.0


class JobStage:
    """What a stage supplies. Only `next_index` and `make_request` are required (and a Batch API
    stage asks `plan_batch` instead of `next_index`); the other defaults ask for nothing."""

    # Teachers that can cut answers short (local models) have their answers in flight looked at
    # every `check_every_s` (`on_writing`, `cut_one`, `finish_in_sight`) when this is True.
    watches_writing: bool = False

    def next_index(self) -> int | None:
        """The next request to send (numbered: request i always carries the same prompt), or None."""
        raise NotImplementedError

    def make_request(self, index: int) -> Request:
        raise NotImplementedError

    def estimate_cost(self, request: Request) -> float:
        """Worst-case dollars of `request` (the budget check adds it before sending)."""
        return 0.0

    def on_result(self, entry: dict, kept: Any, discards: Any) -> None:
        """A journaled answer and what it gave: record lists, or (answers processed in a worker)
        the kept count and a Counter of discard reasons. For progress and stall counting."""

    def should_stop(self, totals: JobTotals) -> bool:
        """The stage has what it wants (answers in flight are still journaled)."""
        return False

    def hold_back(self, totals: JobTotals, in_flight: InFlight) -> bool:
        """The requests in flight will probably finish the job by themselves: send no more now."""
        return False

    def on_writing(self, writing: InFlight) -> None:
        """The text of the answers being written (teachers that can cut answers short)."""

    def cut_one(self, request: Request, text: str) -> bool:
        """Cut this answer short now (e.g. a small teacher repeating itself)."""
        return False

    def finish_in_sight(self, totals: JobTotals, writing: InFlight) -> bool:
        """What is written so far will finish the job: cut every answer in flight now."""
        return False
