"""Journaled teacher work through the OpenAI Batch API: half the price, hours instead of seconds.

The online path (`alpacakit.jobs.run_job`) keeps requests in flight; here the missing requests
of a `JournaledJob` are written to a JSONL file, uploaded, run as a batch, polled, and every
result is journaled through `job.record_many` in index order, exactly like live answers (same
entry shape, with `batch` naming the batch; `cost` at the batch price). So everything after
the journal (processing, replay, manifests) does not know or care which path paid for an entry.

What a batch adds is a window in which we have paid (or will pay) for answers that are not in
the journal yet, hours long instead of one request's latency. It is closed by `batches.jsonl`,
an append-only, fsynced log in the job folder:

- `uploaded` (input file id, request indices), before the batch is created;
- `created` (batch id, input file id, indices, created time), before the first poll;
- `finished` (status, counts), once its results are journaled.

A run that starts reads it first: a batch created but not finished is polled again and
collected (no new upload: nothing is paid twice, even after `kill -9` during polling); an
upload with no batch recorded (killed during the create call) is looked up among the account's
batches by its input file and adopted if it was created. A batch that ended without answering
some of its requests (expired, cancelled) has them sent again in a new batch. A line the
endpoint refused for good (HTTP 400, 413, 422) is journaled as a failed entry (a discard), as
online; other failed lines (5xx, an unreadable body) are counted and left missing, so a later
run asks them again instead of this one looping on them.

Requests in batches are not noted in `sent.jsonl`: that file counts answers a crash may have
lost after they were billed (`asked_again`), and a batch's answers are never lost that way,
they wait on the server until a rerun collects them. This log is the record of what was sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError, TeacherError
from alpacakit.io import JsonlAppender, iter_jsonl, repair_torn_tail
from alpacakit.jobs import PER_REQUEST_FAILURES, JobOptions, JobStage, JournaledJob, Request

BATCHES = "batches.jsonl"
# Line errors that mean "never run" (the batch ended first): sent again in this run.
NOT_RUN = frozenset({"batch_expired", "batch_cancelled"})
# Batches in a row that ended with no answer at all before a run gives up (a broken endpoint
# would otherwise be sent the same requests, a day apart, forever).
MAX_EMPTY_BATCHES = 3


def custom_id(index: int) -> str:
    return f"request-{index}"


def index_of(cid: Any) -> int | None:
    if isinstance(cid, str) and cid.startswith("request-") and cid[8:].isdigit():
        return int(cid[8:])
    return None


def require_endpoint(cfg: Any, setting: str, teacher: Any = None) -> None:
    """A ConfigError unless `cfg` is an OpenAI-compatible endpoint (a Batch API needs one)."""
    from alpacakit.models.backends.resolve import backend_of

    if teacher is not None:
        raise ConfigError(f"{setting} sends requests through the Batch API itself: it cannot use a teacher object")
    if backend_of(cfg) != "openai":
        raise ConfigError(
            f"{setting}: the Batch API is an endpoint's (OpenAI's files + batches), and {cfg.model!r} is not an "
            "OpenAI-compatible endpoint model",
            hint="use an openai:MODEL model (e.g. --teacher openai:gpt-4o-mini), or drop --batch-api",
        )


@dataclass
class OpenBatch:
    """A batch created and not yet collected."""

    batch_id: str
    input_file_id: str
    indices: list[int]
    route: str
    estimate_usd: float
    created_at: float


class BatchLog:
    """`batches.jsonl`: what was uploaded and created, and what has been collected."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / BATCHES
        self._out: JsonlAppender | None = None

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        repair_torn_tail(self.path)
        return [r for _, r in iter_jsonl(self.path, tolerate_torn_tail=True)]

    def append(self, record: dict) -> None:
        if self._out is None:
            self._out = JsonlAppender(self.path, fsync=True)
        self._out.write({**record, "at": round(time.time(), 3)})

    def pending(self) -> tuple[list[OpenBatch], list[dict]]:
        """(batches created and not finished, uploads with no batch recorded and not abandoned)."""
        created: dict[str, OpenBatch] = {}
        uploads: dict[str, dict] = {}
        for r in self.records():
            event = r.get("event")
            if event == "uploaded":
                uploads[r["input_file_id"]] = r
            elif event == "created":
                created[r["batch_id"]] = OpenBatch(
                    r["batch_id"],
                    r["input_file_id"],
                    list(r["indices"]),
                    r["route"],
                    float(r.get("estimate_usd", 0.0)),
                    float(r.get("created_at", 0)),
                )
                uploads.pop(r["input_file_id"], None)
            elif event == "finished":
                created.pop(r["batch_id"], None)
            elif event == "abandoned":
                uploads.pop(r["input_file_id"], None)
        return list(created.values()), list(uploads.values())

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def refuse_open_batches(job: JournaledJob, flag: str = "--batch-api") -> None:
    """Before live requests: a folder whose batches are still running would pay twice for them."""
    log = BatchLog(job.out_dir)
    if not log.path.exists():
        return
    open_batches, uploads = log.pending()
    if open_batches or uploads:
        job.release()
        names = ", ".join([b.batch_id for b in open_batches] + [u["input_file_id"] for u in uploads])
        raise ConfigError(
            f"{job.out_dir} has Batch API work not collected yet ({names}): asking the same requests live would "
            "pay for them twice",
            hint=f"rerun with {flag} to collect it (it goes on from batches.jsonl)",
        )


def request_body(req: Request, model: str, sampling: dict[str, Any], teacher_api: str) -> tuple[str, dict[str, Any]]:
    """(route, body) of one request line, as `EndpointModel` would send it live."""
    body: dict[str, Any] = {"model": model, **sampling}
    if req.stop:
        body["stop"] = list(req.stop)
    if req.api == "chat" or teacher_api == "chat":
        system = [{"role": "system", "content": req.system}] if req.system and req.api == "chat" else []
        return "chat", {**body, "messages": system + [{"role": "user", "content": req.prompt}]}
    return "completions", {**body, "prompt": req.prompt}


class BatchStage(JobStage):
    """A stage run through the Batch API: it plans whole batches, not one request at a time."""

    def plan_batch(self, runner: BatchRunner, busy: set[int], open_count: int) -> list[int]:
        """The request indices to send now. `busy`: those in the `open_count` batches not yet
        collected; `runner.lost`: not run (their batch ended first), to send again in this run;
        `runner.held`: failed lines, left for a later run; `runner.job.totals`: so far."""
        raise NotImplementedError

    def on_poll(self, note: str) -> None:
        """A line about the batches (polled, collected), e.g. for a progress display."""


class BatchRunner:
    """Sends the requests the stage plans in batches, polls them, journals their results.

    `stage.should_stop(totals)` ends the run once every open batch is collected.
    `stage.estimate_cost(req)` is a request's worst-case cost at the full price: a batch is cut
    so that spent + open batches + the new one stays within `options.max_cost` at the batch
    price (`settings.price_factor`). `options.concurrency` does not apply: a batch is one request.
    """

    def __init__(
        self,
        job: JournaledJob,
        cfg: Any,
        stage: BatchStage,
        options: JobOptions,
        *,
        settings: Any,
        verbose: bool = True,
    ):
        from alpacakit.teachers.batch import BatchClient

        self.job, self.cfg, self.stage = job, cfg, stage
        self.client = BatchClient(cfg)
        self.sampling, self.settings = options.sampling, settings
        self.factor = settings.price_factor
        self.max_cost = options.max_cost
        self.verbose = verbose
        self.log = BatchLog(job.out_dir)
        self.lost: set[int] = set()  # not run (the batch ended first): to send again in this run
        self.held: set[int] = set()  # failed lines: left for a later run
        self.line_failures: Counter = Counter()
        self.batches_created = 0
        self.batches_collected = 0
        self._empty_in_a_row = 0

    def describe(self) -> dict[str, Any]:
        """For the manifest: how this run used the Batch API."""
        return {
            "price_factor": self.factor,
            "poll_s": self.settings.poll_s,
            "max_lines": self.settings.max_lines,
            "batches_created": self.batches_created,
            "batches_collected": self.batches_collected,
            "line_failures_left_for_a_rerun": dict(self.line_failures),
            "log": BATCHES,
        }

    async def run(self) -> str:
        """'done' (the stage should stop), 'exhausted' (it plans nothing more) or 'budget'."""
        stopped: str | None = None
        self.job.open()
        try:
            open_batches = await self._recover()
            while True:
                if stopped is None and self.stage.should_stop(self.job.totals):
                    stopped = "done"
                if stopped is None:
                    busy = {i for b in open_batches for i in b.indices}
                    want = self.stage.plan_batch(self, busy, len(open_batches))
                    take = self._within_budget(want, open_batches)
                    if len(take) < len(want):
                        stopped = "budget"
                    for start in range(0, len(take), self.settings.max_lines):
                        open_batches.append(await self._submit(take[start : start + self.settings.max_lines]))
                if not open_batches:
                    return stopped or "exhausted"
                for b, state in await self._wait_any(open_batches):
                    open_batches.remove(b)
                    await self._collect(b, state)
        finally:
            self.log.close()
            self.job.close()
            await self.client.aclose()

    # ------------------------------------------------------------------ steps

    async def _recover(self) -> list[OpenBatch]:
        open_batches, uploads = self.log.pending()
        for up in uploads:  # killed between upload and the batch's record: was the batch made?
            found = await self.client.find_batch(up["input_file_id"], since=float(up.get("at", 0)) - 600)
            if found is None:
                self.log.append({"event": "abandoned", "input_file_id": up["input_file_id"]})
                continue
            b = OpenBatch(
                found["id"],
                up["input_file_id"],
                list(up["indices"]),
                up["route"],
                float(up.get("estimate_usd", 0.0)),
                float(found["created_at"]),
            )
            self.log.append(
                {
                    "event": "created",
                    "batch_id": b.batch_id,
                    "input_file_id": b.input_file_id,
                    "indices": b.indices,
                    "route": b.route,
                    "estimate_usd": b.estimate_usd,
                    "created_at": b.created_at,
                    "adopted": True,
                }
            )
            open_batches.append(b)
        if open_batches:
            self._say(
                f"resuming {len(open_batches)} batch(es) from {BATCHES}: " + ", ".join(b.batch_id for b in open_batches)
            )
        return open_batches

    def _within_budget(self, want: list[int], open_batches: list[OpenBatch]) -> list[int]:
        if self.max_cost is None:
            return list(want)
        t = self.job.totals
        room = self.max_cost - t.cost_usd - t.maybe_billed_usd - sum(b.estimate_usd for b in open_batches)
        take = []
        for i in want:
            est = self.stage.estimate_cost(self.stage.make_request(i)) * self.factor
            if est > room:
                break
            room -= est
            take.append(i)
        return take

    async def _submit(self, indices: list[int]) -> OpenBatch:
        lines, routes, estimate = [], set(), 0.0
        for i in indices:
            req = self.stage.make_request(i)
            route, body = request_body(req, self.client.model, self.sampling, self.cfg.api)
            routes.add(route)
            lines.append(
                json.dumps(
                    {"custom_id": custom_id(i), "method": "POST", "url": _url(route), "body": body}, ensure_ascii=False
                )
            )
            estimate += self.stage.estimate_cost(req) * self.factor
        assert len(routes) == 1, "one batch, one endpoint"
        route = routes.pop()
        data = ("\n".join(lines) + "\n").encode("utf-8")
        file_id = await self.client.upload(data, f"alpacakit-{self.job.out_dir.name}-{indices[0]}.jsonl")
        record = {"input_file_id": file_id, "indices": indices, "route": route, "estimate_usd": round(estimate, 8)}
        self.log.append({"event": "uploaded", **record})  # (what was sent is here, not in sent.jsonl: see the doc)
        state = await self.client.create(file_id, route, metadata={"alpacakit_job": self.job.out_dir.name[:500]})
        self.log.append({"event": "created", "batch_id": state["id"], **record, "created_at": state["created_at"]})
        self.batches_created += 1
        self._say(
            f"batch {state['id']}: {len(indices)} requests sent (input {file_id}); polling every "
            f"{self.settings.poll_s:g} s. Safe to stop: rerunning the same command goes on from it"
        )
        return OpenBatch(state["id"], file_id, indices, route, estimate, float(state["created_at"]))

    async def _wait_any(self, open_batches: list[OpenBatch]) -> list[tuple[OpenBatch, dict]]:
        """Poll until at least one batch has ended; those, with their last state."""
        from alpacakit.models.backends.endpoint import EndpointError
        from alpacakit.teachers.batch import TERMINAL

        while True:
            ended, notes = [], []
            for b in open_batches:
                try:
                    state = await self.client.retrieve(b.batch_id)
                except EndpointError as e:
                    if e.status != 404:
                        raise
                    self._say(f"batch {b.batch_id} is gone (HTTP 404): its requests will be sent again")
                    state = {"id": b.batch_id, "status": "not_found"}
                counts = state.get("request_counts") or {}
                notes.append(
                    f"{b.batch_id} {state['status']} {counts.get('completed', 0) + counts.get('failed', 0)}"
                    f"/{counts.get('total', len(b.indices))}"
                )
                if state["status"] in TERMINAL or state["status"] == "not_found":
                    ended.append((b, state))
            self.stage.on_poll("batch " + "; ".join(notes))
            if ended:
                return ended
            await asyncio.sleep(self.settings.poll_s)

    async def _collect(self, b: OpenBatch, state: dict) -> None:
        """Journal a finished batch's results in index order; note what is lost or held."""
        status = state["status"]
        by_index: dict[int, dict] = {}
        for key in ("output_file_id", "error_file_id"):
            if state.get(key):
                for raw in (await self.client.download(state[key])).splitlines():
                    if raw.strip():
                        line = json.loads(raw)
                        i = index_of(line.get("custom_id"))
                        if i is not None:
                            by_index.setdefault(i, line)
        entries, lost, already = [], [], 0
        for i in sorted(set(b.indices)):
            if i in self.job.done:  # journaled before a kill that came ahead of the "finished" record
                already += 1
                continue
            line = by_index.get(i)
            err = (line or {}).get("error") or {}
            if line is None or (not line.get("response") and err.get("code") in NOT_RUN):
                lost.append(i)
                continue
            entry = self._entry(i, line, b)
            if entry is None:
                self.held.add(i)
                continue
            entries.append(entry)
        for entry, (kept, discards) in zip(entries, self.job.record_many(entries) if entries else []):
            self.stage.on_result(entry, kept, discards)
        self.lost.update(lost)
        self.log.append(
            {
                "event": "finished",
                "batch_id": b.batch_id,
                "status": status,
                "request_counts": state.get("request_counts"),
                "journaled": len(entries),
                "not_run": len(lost),
                "output_file_id": state.get("output_file_id"),
                "error_file_id": state.get("error_file_id"),
            }
        )
        self.batches_collected += 1
        note = f"batch {b.batch_id} {status}: {len(entries)} results journaled" + (
            f", {len(lost)} not run (sent again)" if lost else ""
        )
        self._say(note)
        self.stage.on_poll(note)
        self._empty_in_a_row = 0 if entries or already else self._empty_in_a_row + 1
        if status == "failed":
            errors = "; ".join(str(e.get("message")) for e in ((state.get("errors") or {}).get("data") or [])[:3])
            raise TeacherError(
                self.client.scrub(f"batch {b.batch_id} failed: {errors or 'no reason given'}"),
                hint="nothing was billed for it; rerun the same command to send its requests in a "
                "new batch (if the reason is the enqueued-token limit, lower generate.batch.max_lines)",
            )
        if self._empty_in_a_row >= MAX_EMPTY_BATCHES:
            raise TeacherError(
                f"{MAX_EMPTY_BATCHES} batches in a row ended with no result (the last: {status})",
                hint="check the endpoint's batch status page; rerun the same command to try again",
            )

    def _entry(self, index: int, line: dict, b: OpenBatch) -> dict | None:
        """The journal entry of one result line; None for a failure to leave for a later run."""
        try:
            req = self.stage.make_request(index)
        except (KeyError, IndexError):  # a batch of an earlier run over other items (eval --limit changed)
            self.line_failures["not a request of this run"] += 1
            return None
        resp = line.get("response") or {}
        status = resp.get("status_code")
        base = {"index": index, **req.meta, "api": req.api}
        tail = {"attempts": 1, "latency_s": 0.0, "received_at": time.time(), "batch": b.batch_id}
        if status in PER_REQUEST_FAILURES:
            body = resp.get("body") or {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            message = err.get("message") if isinstance(err, dict) else str(body)
            return {
                **base,
                "text": "",
                "finish_reason": "error",
                "failed": {"status": status, "message": self.client.scrub(str(message or ""))[:500]},
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                "cost": 0.0,
                **tail,
            }
        c = None
        if status == 200:
            _, params = request_body(req, self.client.model, self.sampling, self.cfg.api)
            c = self.client.parse_body(resp.get("body"), b.route, params, resp.get("request_id"))
        if c is None:
            why = f"HTTP {status}" if status else (line.get("error") or {}).get("code") or "no response"
            self.line_failures[why if status != 200 else "unreadable answer"] += 1
            return None
        from alpacakit.teachers.accounting import cost_of

        return {
            **base,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "usage": {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens},
            "cost": round(cost_of(c.usage, self.cfg.price) * self.factor, 10),
            "model": c.model,
            "request_id": c.request_id,
            **tail,
        }

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[batch] {text}", file=sys.stderr, flush=True)


def _url(route: str) -> str:
    from alpacakit.teachers.batch import ENDPOINTS

    return ENDPOINTS[route]
