"""Journaled teacher work: pay for each response once, survive kill -9, resume exactly.

Every response is appended to `responses.jsonl` (fsynced) the moment it arrives, *before* it is
processed. Results (`examples.jsonl`, `discards.jsonl`) are derived from the journal by a
deterministic processor, so a resumed job first replays the journal (rewriting the results
atomically: no duplicate, no torn line) and then asks the teacher only for what is missing.
Requests are numbered; request i always carries the same prompt, so a request lost in flight
is simply asked again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alpacakit.errors import DataError
from alpacakit.io import JsonlAppender, atomic_write_json, iter_jsonl, repair_torn_tail, write_jsonl

JOURNAL = "responses.jsonl"
EXAMPLES = "examples.jsonl"
DISCARDS = "discards.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Request:
    """One teacher call. `api` is 'chat' (messages) or 'completions' (raw prompt)."""

    index: int
    prompt: str
    api: str
    stop: tuple[str, ...] = ()
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Processor(Protocol):
    """Turns one journal entry into kept records and discards. Must be deterministic given the
    sequence of entries it has seen (it may keep state, e.g. a dedup pool)."""

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]: ...


@dataclass
class JobTotals:
    requests: int = 0
    attempts: int = 0
    kept: int = 0
    discards: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    teacher_seconds: float = 0.0

    def add_entry(self, entry: dict) -> None:
        self.requests += 1
        self.attempts += int(entry.get("attempts", 1))
        usage = entry.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.completion_tokens += int(usage.get("completion_tokens", 0))
        self.cost_usd += float(entry.get("cost", 0.0))
        self.teacher_seconds += float(entry.get("latency_s", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "attempts": self.attempts, "kept": self.kept,
            "discarded": sum(self.discards.values()), "discards_by_reason": dict(sorted(self.discards.items())),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6), "teacher_seconds": round(self.teacher_seconds, 2),
        }


class JournaledJob:
    """A folder of journaled teacher work: journal, derived results, manifest."""

    def __init__(self, out_dir: str | Path, processor: Processor, done: set[int] | None = None):
        """`done` may be shared with the request plan, which skips the indices it holds."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.processor = processor
        self.totals = JobTotals()
        self.done: set[int] = done if done is not None else set()
        self._examples: JsonlAppender | None = None
        self._discards: JsonlAppender | None = None
        self._journal: JsonlAppender | None = None

    @property
    def journal_path(self) -> Path:
        return self.out_dir / JOURNAL

    def replay(self) -> None:
        """Rebuild results from the journal: the only source of truth after a crash."""
        kept: list[dict] = []
        discards: list[dict] = []
        if self.journal_path.exists():
            repair_torn_tail(self.journal_path)
            for _, entry in iter_jsonl(self.journal_path, tolerate_torn_tail=True):
                if entry.get("index") in self.done:
                    continue  # a request answered twice (two runs at once): the first answer counts
                k, d = self._apply(entry)
                kept += k
                discards += d
        write_jsonl(self.out_dir / EXAMPLES, kept)
        write_jsonl(self.out_dir / DISCARDS, discards)

    def _apply(self, entry: dict) -> tuple[list[dict], list[dict]]:
        self.done.add(entry["index"])
        self.totals.add_entry(entry)
        kept, discards = self.processor.process(entry)
        self.totals.kept += len(kept)
        for d in discards:
            self.totals.discards[d["reason"]] += 1
        return kept, discards

    def open(self) -> None:
        self._journal = JsonlAppender(self.journal_path, fsync=True)
        self._examples = JsonlAppender(self.out_dir / EXAMPLES)
        self._discards = JsonlAppender(self.out_dir / DISCARDS)

    def close(self) -> None:
        for f in (self._journal, self._examples, self._discards):
            if f is not None:
                f.close()

    def record(self, entry: dict) -> tuple[list[dict], list[dict]]:
        """Journal first (it was paid for), then process and append the results."""
        assert self._journal and self._examples and self._discards, "call open() first"
        self._journal.write(entry)
        kept, discards = self._apply(entry)
        for r in kept:
            self._examples.write(r)
        for d in discards:
            self._discards.write(d)
        return kept, discards

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.out_dir / MANIFEST, manifest)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.out_dir / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: manifest is not valid JSON: {e.msg}",
                            hint="delete the manifest; it is rebuilt from responses.jsonl on the next run") from None


async def run_requests(
    job: JournaledJob,
    teacher: Any,
    indices: Iterator[int],
    make_request: Callable[[int], Request],
    *,
    should_stop: Callable[[JobTotals], bool],
    concurrency: int,
    sampling: dict[str, Any],
    estimate_cost: Callable[[Request], float] | None = None,
    max_cost: float | None = None,
    on_result: Callable[[dict, list[dict], list[dict]], None] | None = None,
) -> str:
    """Keep up to `concurrency` requests in flight until `should_stop` or the indices run out.

    Before each request, the budget check adds its worst-case cost (`estimate_cost`) to what
    was spent and what is in flight; a request that could cross `max_cost` is not sent.
    Returns why it stopped: 'done', 'exhausted' or 'budget'.
    """
    in_flight: dict[asyncio.Task, float] = {}
    stopped = "exhausted"
    index_iter = iter(indices)

    async def call(req: Request) -> dict:
        t0 = time.monotonic()
        kwargs = dict(sampling)
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if req.api == "chat":
            messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
                {"role": "user", "content": req.prompt}]
            c = await teacher.chat(messages, **kwargs)
        else:
            c = await teacher.complete(req.prompt, **kwargs)
        return {
            "index": req.index, **req.meta, "api": req.api, "text": c.text, "finish_reason": c.finish_reason,
            "usage": {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens},
            "cost": c.cost, "model": c.model, "request_id": c.request_id, "attempts": c.attempts,
            "latency_s": round(getattr(c, "latency_s", 0.0) or (time.monotonic() - t0), 3),
            "received_at": time.time(),
        }

    try:
        while True:
            while stopped != "budget" and len(in_flight) < concurrency and not should_stop(job.totals):
                idx = next(index_iter, None)
                if idx is None:
                    break
                req = make_request(idx)
                est = estimate_cost(req) if estimate_cost else 0.0
                if max_cost is not None and job.totals.cost_usd + sum(in_flight.values()) + est > max_cost:
                    stopped = "budget"
                    break
                in_flight[asyncio.ensure_future(call(req))] = est
            if not in_flight:
                break
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                in_flight.pop(task)
                entry = task.result()  # a TeacherError after all retries propagates: results so far are safe
                kept, discards = job.record(entry)
                if on_result:
                    on_result(entry, kept, discards)
            # Target reached: an endpoint's requests in flight are being paid for, so their answers
            # are waited for and journaled; a local model runs one request at a time, so the others
            # are only queued, cost nothing yet and would take minutes each: drop them.
            if should_stop(job.totals) and not getattr(teacher, "finish_in_flight", True):
                break
        if should_stop(job.totals):
            stopped = "done"
        return stopped
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


