"""Journaled teacher work: pay for each response once, survive kill -9, resume exactly.

Every response is appended to `responses.jsonl` (fsynced) the moment it arrives, *before* it is
processed. Results (`examples.jsonl`, `discards.jsonl`) are derived from the journal by a
deterministic processor, so a resumed job first replays the journal (rewriting the results
atomically: no duplicate, no torn line) and then asks the teacher only for what is missing.
Requests are numbered; request i always carries the same prompt, so a request lost in flight
is simply asked again.

A request the endpoint refuses for good on its own merits (HTTP 400, 413 or 422: a prompt over
the context window, a content-policy refusal, an invalid parameter) is journaled as a failed
entry and becomes a `request_failed` discard with its status and message: the job goes on, and
a resume does not ask it again. Failures that would hit every request (a wrong key, an unknown
model, an unreachable server) still stop the job, after every answer that had already arrived
has been journaled.

What a crash can cost: a request in flight when the process dies (kill -9, power) may have been
billed by the endpoint, but its answer never reached the journal, so a resume asks it again.
That is at most the requests in flight (the concurrency) per crash, and it is counted: each
request is noted in `sent.jsonl` as it goes out (appended, not fsynced: a lost note undercounts;
a kill between the note and the send overcounts by that request),
and an index sent more than once shows up as `asked_again` in the manifest's counts.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alpacakit.errors import DataError
from alpacakit.io import AtomicLineWriter, JsonlAppender, atomic_write_json, iter_jsonl, repair_torn_tail

# HTTP statuses that condemn one request, not the job (see the module doc)
PER_REQUEST_FAILURES = frozenset({400, 413, 422})

JOURNAL = "responses.jsonl"
SENT = "sent.jsonl"
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


class Restorable(Protocol):
    """A processor that can take back the results an earlier run derived from an entry."""

    def restore(self, entry: dict, kept: list[dict], discards: list[dict]) -> tuple[list[dict], list[dict]] | None:
        """Update the state as `process(entry)` would and return (kept, discards) when they are
        exactly what it would return; None (state untouched) when they are not."""
        ...


# The request index of a result line, found without parsing the line. Inside a JSON string every
# quote is escaped, so `"request": N` can only be a key; should some nested key match first, the
# line lands in the wrong group, restore() finds the results do not fit, and the entry is processed.
_REQUEST_FIELD = re.compile(rb'"request": (\d+)[,}]')


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def derive(processor: Processor, entry: dict) -> tuple[list[dict], list[dict]]:
    """The results of one journal entry: a failed request is a discard that says why, any
    other answer goes to the processor (in this process or the worker's, see worker.py)."""
    failed = entry.get("failed")
    if failed:  # refused by the endpoint: nothing to process
        return [], [
            {
                "index": entry["index"],
                "reason": "request_failed",
                "status": failed.get("status"),
                "message": failed.get("message", ""),
            }
        ]
    return processor.process(entry)


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


class JournaledJob:
    """A folder of journaled teacher work: journal, derived results, manifest."""

    def __init__(self, out_dir: str | Path, processor: Processor, done: set[int] | None = None):
        """`done` may be shared with the request plan, which skips the indices it holds."""
        from alpacakit.io import FolderLock

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Before anything is replayed or rewritten: one writer per folder (two runs would both pay
        # for the same requests and interleave their journals).
        self._lock: FolderLock | None = FolderLock(self.out_dir / ".lock", "a journaled job", self.out_dir)
        self.processor = processor
        self.totals = JobTotals()
        self.done: set[int] = done if done is not None else set()
        self._examples: JsonlAppender | None = None
        self._discards: JsonlAppender | None = None
        self._journal: JsonlAppender | None = None
        self._sent: JsonlAppender | None = None
        self._started = time.time()
        self._wall_before: float | None = None  # wall seconds of earlier runs, from the manifest
        self.worker = None  # a ProcessingWorker (worker.py) that processes and writes the results, if any
        self._unreported: dict[int, tuple[dict, int]] = {}  # sent to the worker, until it reports: (entry, most kept)

    @property
    def journal_path(self) -> Path:
        return self.out_dir / JOURNAL

    def replay(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Rebuild results from the journal: the only source of truth after a crash.

        A processor that can `restore` (see `Restorable`) is handed, for each entry, the
        results an earlier run derived from it; when they are exactly what processing would
        give, it takes them and updates its state without recomputing (the self-instruct pool
        adds the kept instructions without the search below the threshold that produced their
        statistics). That makes resuming a 52K run seconds instead of minutes; any entry whose
        earlier results are missing or differ (the torn tail of a kill -9, a hand-edited file)
        is processed afresh. `progress(done, total)` is called about once a second and at the end.
        """
        previous = self._previous_results() if hasattr(self.processor, "restore") else None
        examples, discards = AtomicLineWriter(self.out_dir / EXAMPLES), AtomicLineWriter(self.out_dir / DISCARDS)
        try:
            if self.journal_path.exists():
                repair_torn_tail(self.journal_path)
                total, shown = _count_lines(self.journal_path), time.monotonic()
                for n, (_, entry) in enumerate(iter_jsonl(self.journal_path, tolerate_torn_tail=True), start=1):
                    if progress is not None and (n == total or time.monotonic() - shown >= 1.0):
                        progress(n, total)
                        shown = time.monotonic()
                    if entry.get("index") in self.done:
                        continue  # a request answered twice (two runs at once): the first answer counts
                    old = previous.pop(entry["index"], None) if previous else None
                    k, d, restored = self._apply_or_restore(entry, old)
                    if restored:  # taken as they were: copy their lines
                        for line in old[0]:
                            examples.write_raw(line)
                        for line in old[1]:
                            discards.write_raw(line)
                        continue
                    for r in k:
                        examples.write(r)
                    for r in d:
                        discards.write(r)
            examples.commit()
            discards.commit()
        except BaseException:
            examples.abort()
            discards.abort()
            raise
        self._sent_counts = Counter()
        sent = self.out_dir / SENT
        if sent.exists():
            repair_torn_tail(sent)
            for _, note in iter_jsonl(sent, tolerate_torn_tail=True):
                if isinstance(note, dict) and isinstance(note.get("index"), int):
                    self._sent_counts[note["index"]] += 1
        self.totals.asked_again = sum(n - 1 for n in self._sent_counts.values())

    def _previous_results(self) -> dict[int, tuple[list[bytes], list[bytes]]]:
        """Lines of results already derived, by request index (kept as bytes: a 52K run's
        records as dicts would take several times the memory)."""
        by_request: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for slot, name in ((0, EXAMPLES), (1, DISCARDS)):
            path = self.out_dir / name
            if not path.exists():
                continue
            with open(path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last line: not a result
                    m = _REQUEST_FIELD.search(line)
                    if m:
                        by_request.setdefault(int(m.group(1)), ([], []))[slot].append(line[:-1])
        return by_request

    def _apply_or_restore(
        self, entry: dict, old: tuple[list[bytes], list[bytes]] | None
    ) -> tuple[list[dict], list[dict], bool]:
        """`_apply`, or the earlier results `old` when the processor takes them (third: True)."""
        restored = None
        if old is not None and entry.get("index") is not None and not entry.get("failed"):
            try:
                kept, discards = [json.loads(x) for x in old[0]], [json.loads(x) for x in old[1]]
            except ValueError:
                kept = discards = None
            if kept is not None and self.processor.restore(entry, kept, discards) is not None:
                restored = kept, discards
        kept, discards = self._apply(entry, restored)
        return kept, discards, restored is not None

    def _apply(
        self, entry: dict, results: tuple[list[dict], list[dict]] | None = None
    ) -> tuple[list[dict], list[dict]]:
        """Count `entry` and its results (derived now unless given) in the totals."""
        self.done.add(entry["index"])
        self.totals.add_entry(entry)
        kept, discards = results if results is not None else derive(self.processor, entry)
        self.totals.add_results(kept, discards)
        return kept, discards

    def mark_sent(self, index: int) -> None:
        """Note that request `index` is going out (before it is paid for)."""
        if self._sent is None:
            self._sent = JsonlAppender(self.out_dir / SENT, fsync=False)
        counts = getattr(self, "_sent_counts", None)
        if counts is not None:
            counts[index] += 1
            if counts[index] > 1:
                self.totals.asked_again += 1
        self._sent.write({"index": index, "at": round(time.time(), 3)})

    def start_worker(self, most_kept: Callable[[dict], int]) -> None:
        """Process answers in a forked worker from now on (see worker.py). After `replay`, before
        any event loop or teacher client exists: the fork copies this process as it is.
        `most_kept(entry)`: an upper bound, cheap to compute, on what processing it can keep
        (summed in `totals.pending_most`, for decisions that cannot wait for the worker)."""
        from alpacakit.generate.worker import ProcessingWorker

        self._most_kept = most_kept
        self.worker = ProcessingWorker(self.processor, self.out_dir, self._lock._fd if self._lock is not None else None)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def open(self) -> None:
        self._journal = JsonlAppender(self.journal_path, fsync=True)
        if self.worker is not None:
            return  # the worker writes the results
        self._examples = JsonlAppender(self.out_dir / EXAMPLES)
        self._discards = JsonlAppender(self.out_dir / DISCARDS)

    def close(self) -> None:
        for f in (self._journal, self._examples, self._discards, self._sent):
            if f is not None:
                f.close()

    def release(self) -> None:
        """Let another run write this folder (also done when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def record(self, entry: dict) -> tuple[list[dict], list[dict]]:
        """Journal first (it was paid for), then process and append the results."""
        return self.record_many([entry])[0]

    def record_many(self, entries: list[dict]) -> list[tuple[list[dict], list[dict]]]:
        """`record` for answers that arrived together: all are journaled under one fsync (at
        hundreds of answers a second, one fsync each was a visible share of the client's CPU),
        then each is processed in order. With a worker they are sent to it instead, and nothing
        is returned: their results come from `reports`."""
        assert self._journal, "call open() first"
        for entry in entries:
            self._journal.write(entry, sync=False)
        self._journal.sync()
        if self.worker is not None:
            for entry in entries:
                self.done.add(entry["index"])
                self.totals.add_entry(entry)
                self._unreported[entry["index"]] = (entry, self._most_kept(entry))
                self.totals.pending_most += self._unreported[entry["index"]][1]
            self.totals.pending += len(entries)
            self.worker.send(entries)
            return []
        assert self._examples and self._discards, "call open() first"
        results = []
        for entry in entries:
            kept, discards = self._apply(entry)
            for r in kept:
                self._examples.write(r)
            for d in discards:
                self._discards.write(d)
            results.append((kept, discards))
        return results

    def reports(self) -> list[tuple[dict, int, Counter]]:
        """(entry, kept, discards by reason) for the entries the worker has finished since the
        last call, in journal order, with the totals updated; [] without a worker."""
        out = []
        if self.worker is None:
            return out
        for index, kept, reasons in self.worker.reports():
            entry, most = self._unreported.pop(index)
            self.totals.pending -= 1
            self.totals.pending_most -= most
            self.totals.kept += kept
            self.totals.discards.update(reasons)
            out.append((entry, kept, Counter(reasons)))
        return out

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write `manifest`, stamped with the wall-clock seconds of this run and of all runs.

        Wall time, not the sum of request latencies: requests overlap (a local teacher decodes
        several together), so latencies add up to far more than the job took."""
        if self._wall_before is None:
            old = self.read_manifest() or {}  # (older manifests recorded only their last run)
            self._wall_before = float(old.get("wall_seconds") or old.get("wall_seconds_this_run") or 0.0)
        elapsed = time.time() - self._started
        manifest["wall_seconds_this_run"] = round(elapsed, 2)
        manifest["wall_seconds"] = round(self._wall_before + elapsed, 2)
        atomic_write_json(self.out_dir / MANIFEST, manifest)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.out_dir / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{e.lineno}: manifest is not valid JSON: {e.msg}",
                hint="delete the manifest; it is rebuilt from responses.jsonl on the next run",
            ) from None


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
    target_in_sight: Callable[[JobTotals, list[tuple[Request, str]]], bool] | None = None,
    on_writing: Callable[[list[tuple[Request, str]]], None] | None = None,
    cut_request: Callable[[Request, str], bool] | None = None,
    hold_back: Callable[[JobTotals, list[tuple[Request, str]]], bool] | None = None,
    check_every_s: float = 2.0,
) -> str:
    """Keep up to `concurrency` requests in flight until `should_stop` or the indices run out.

    Before each request, the budget check adds its worst-case cost (`estimate_cost`) to what
    was spent and what is in flight; a request that could cross `max_cost` is not sent.
    Returns why it stopped: 'done', 'exhausted' or 'budget'.

    Local models decode the requests in flight together, so when the job is done (or, every
    `check_every_s`, when `target_in_sight` says the text written so far will finish it) the
    requests in flight are cut short rather than dropped: a teacher that accepts a `Watch`
    ends them at once with finish_reason 'length', and their text is journaled and processed
    like any other answer (the parser drops a last task that may be cut). Nothing written is
    thrown away, and the job does not wait minutes for the tail of answers it no longer needs.
    `cut_request` looks at each answer in flight every `check_every_s`: True cuts that one
    short (e.g. a small teacher that has started repeating itself). `on_writing` sees the text
    in flight at the same moments (for a progress display). `hold_back` says, before a request
    is added to those in flight, that they will probably finish the job by themselves: its
    prompt would be paid for and then cut.

    With a processing worker (`job.worker`, worker.py) answers are journaled here and processed
    there: `job.totals.pending` counts those not yet reported, `hold_back` is asked while any
    are, the loop does not end before all are reported, and `on_result` gets their kept count
    and a Counter of discard reasons instead of the records.
    """
    from alpacakit.teachers.base import Watch

    in_flight: dict[asyncio.Task, float] = {}
    watches: dict[asyncio.Task, tuple[Request, Watch]] = {}
    requests: dict[asyncio.Task, Request] = {}
    can_cut = bool(getattr(teacher, "accepts_watch", False))
    stopped = "exhausted"
    index_iter = iter(indices)

    async def call(req: Request, watch: Watch | None) -> dict:
        t0 = time.monotonic()
        kwargs = dict(sampling)
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if watch is not None:
            kwargs["watch"] = watch
        from alpacakit.teachers.openai_compat import EndpointError

        try:
            if req.api == "chat":
                messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
                    {"role": "user", "content": req.prompt}
                ]
                c = await teacher.chat(messages, **kwargs)
            else:
                c = await teacher.complete(req.prompt, **kwargs)
        except EndpointError as e:
            if e.status not in PER_REQUEST_FAILURES:
                raise
            return {
                "index": req.index,
                **req.meta,
                "api": req.api,
                "text": "",
                "finish_reason": "error",
                "failed": {"status": e.status, "message": e.message[:500]},
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                "cost": 0.0,
                "attempts": e.attempts or 1,
                "latency_s": round(time.monotonic() - t0, 3),
                "received_at": time.time(),
            }
        entry = {
            "index": req.index,
            **req.meta,
            "api": req.api,
            "text": c.text,
            "finish_reason": c.finish_reason,
            **({"stopped_by": c.stopped_by} if c.stopped_by else {}),
            "usage": {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                **({"cached_tokens": c.usage.cached_tokens} if c.usage.cached_tokens else {}),
            },
            "cost": c.cost,
            "model": c.model,
            "request_id": c.request_id,
            "attempts": c.attempts,
            "latency_s": round(getattr(c, "latency_s", 0.0) or (time.monotonic() - t0), 3),
            "received_at": time.time(),
        }
        if getattr(c, "maybe_billed_attempts", 0):
            entry["maybe_billed"] = {"attempts": c.maybe_billed_attempts, "cost_usd": round(c.maybe_billed_usd, 8)}
        if watch is not None and watch.cut.is_set():
            entry["cut"] = True  # ended early by us, not by the model or max_tokens
        return entry

    def writing_now() -> list[tuple[Request, str]]:
        return [(r, w.text) for r, w in watches.values()]

    def in_flight_now() -> list[tuple[Request, str]]:
        """Every request in flight with what it has written (nothing, for an endpoint)."""
        return [(watches[t][0], watches[t][1].text) if t in watches else (requests[t], "") for t in in_flight]

    def record(tasks: set[asyncio.Task]) -> None:
        # in request order when several finish together, so a rerun journals them alike
        failure: BaseException | None = None
        entries = []
        for task in sorted(tasks, key=lambda t: requests[t].index):
            in_flight.pop(task)
            watches.pop(task, None)
            requests.pop(task)
            if task.cancelled():
                continue
            if task.exception() is not None:  # a job-wide failure: raised once the others are journaled
                failure = failure or task.exception()
                continue
            entries.append(task.result())
        if entries:
            for entry, (kept, discards) in zip(entries, job.record_many(entries)):
                if on_result:
                    on_result(entry, kept, discards)
        if failure is not None:
            raise failure
        deliver()

    def deliver() -> None:
        """Take the worker's reports (if any): totals, then `on_result` with counts for lists."""
        for entry, kept, reasons in job.reports():
            if on_result:
                on_result(entry, kept, reasons)

    async def wait(tasks: set) -> set:
        """`asyncio.wait` for the first request to finish or, with entries at the worker, its
        next report (a decision may be waiting for it: `hold_back`, `should_stop`)."""
        watching = can_cut and any(f is not None for f in (target_in_sight, on_writing, cut_request, hold_back))
        timeout = check_every_s if watching else None
        if not job.totals.pending:
            return (
                (await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED))[0] if tasks else set()
            )
        loop = asyncio.get_running_loop()
        reported = loop.create_future()
        loop.add_reader(job.worker.fileno(), lambda: reported.done() or reported.set_result(None))
        try:
            finished, _ = await asyncio.wait({*tasks, reported}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(job.worker.fileno())
            reported.cancel()
        deliver()
        return finished - {reported}

    try:
        while True:
            deliver()
            while stopped != "budget" and len(in_flight) < concurrency and not should_stop(job.totals):
                if (
                    hold_back is not None
                    and (in_flight or job.totals.pending)
                    and hold_back(job.totals, in_flight_now())
                ):
                    break
                idx = next(index_iter, None)
                if idx is None:
                    break
                req = make_request(idx)
                est = estimate_cost(req) if estimate_cost else 0.0
                spent = job.totals.cost_usd + job.totals.maybe_billed_usd  # the worst case counts
                if max_cost is not None and spent + sum(in_flight.values()) + est > max_cost:
                    stopped = "budget"
                    break
                watch = Watch() if can_cut else None
                job.mark_sent(req.index)
                task = asyncio.ensure_future(call(req, watch))
                in_flight[task] = est
                requests[task] = req
                if watch is not None:
                    watches[task] = (req, watch)
            if not in_flight and not job.totals.pending:
                break
            # (answers at the worker are waited for: once reported, the target may need more requests)
            record(await wait(set(in_flight)))
            if not in_flight:
                continue
            writing = writing_now()
            if on_writing is not None and writing:
                on_writing(writing)
            if cut_request is not None:
                for r, w in watches.values():
                    if not w.cut.is_set() and cut_request(r, w.text):
                        w.cut.set()
            if can_cut and (
                should_stop(job.totals) or (target_in_sight is not None and target_in_sight(job.totals, writing))
            ):
                for _, watch in watches.values():
                    watch.cut.set()
                done, _ = await asyncio.wait(in_flight)  # (local teachers: no worker)
                record(done)
                continue
            # Target reached with a local model that cannot cut: its queued requests cost nothing
            # yet and would take minutes each, so drop them. An endpoint's requests in flight are
            # being paid for: they are waited for and journaled.
            if should_stop(job.totals) and not getattr(teacher, "finish_in_flight", True):
                break
        while job.totals.pending:  # (only after a break above: a local teacher that has no worker)
            await wait(set())
        if should_stop(job.totals):
            stopped = "done"
        return stopped
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
