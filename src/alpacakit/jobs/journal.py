"""The journal of a job: pay for each response once, survive kill -9, resume exactly.

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

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alpacakit.errors import DataError
from alpacakit.io import AtomicLineWriter, JsonlAppender, atomic_write_json, iter_jsonl, repair_torn_tail
from alpacakit.jobs.totals import JobTotals

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


def most_common_failure(discards: Path) -> tuple[str, int] | None:
    """(the message most requests that failed for good gave, how many gave it), or None when
    none failed: what the end-of-run line shows, so a wrong setting that every request trips
    over (max_tokens above the server's limit, an unknown model) is named without opening files."""
    messages: Counter[str] = Counter()
    if not discards.exists():
        return None
    with open(discards, "rb") as f:
        for line in f:
            if b'"request_failed"' not in line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("reason") == "request_failed":
                messages[str(d.get("message") or f"HTTP {d.get('status')}")] += 1
    return messages.most_common(1)[0] if messages else None


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
        from alpacakit.jobs.worker import ProcessingWorker

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
            self.totals.best_kept = max(self.totals.best_kept, kept)
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
