"""The engine: keeps requests in flight, journals each answer, stops at the budget or when the
stage says so. What a stage supplies is in `stage.py`; the journal's format in `journal.py`.

Local models decode the requests in flight together, so when the job is done (or, every
`check_every_s`, when the stage's `finish_in_sight` says the text written so far will finish it)
the requests in flight are cut short rather than dropped: a teacher that accepts a `Watch`
ends them at once with finish_reason 'length', and their text is journaled and processed like
any other answer (the parser drops a last task that may be cut). Nothing written is thrown
away, and the job does not wait minutes for the tail of answers it no longer needs.
`cut_one` looks at each answer in flight at the same moments; `on_writing` sees their text;
`hold_back` says, before a request is added to those in flight, that they will probably finish
the job by themselves: its prompt would be paid for and then cut.

With a processing worker (`job.worker`, worker.py) answers are journaled here and processed
there: `job.totals.pending` counts those not yet reported, `hold_back` is asked while any are,
the loop does not end before all are reported, and `on_result` gets their kept count and a
Counter of discard reasons instead of the records.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from alpacakit.jobs.journal import PER_REQUEST_FAILURES, JournaledJob, Request
from alpacakit.jobs.stage import JobOptions, JobStage


async def run_job(job: JournaledJob, teacher: Any, stage: JobStage, options: JobOptions) -> str:
    """Keep up to `options.concurrency` requests in flight until the stage stops or runs out.

    Before each request, the budget check adds its worst-case cost (`stage.estimate_cost`) to
    what was spent and what is in flight; a request that could cross `options.max_cost` is not
    sent. Returns why it stopped: 'done', 'exhausted' or 'budget'. `job` must be open.
    """
    from alpacakit.models.backends.base import Watch

    concurrency, check_every_s = options.concurrency, options.check_every_s
    in_flight: dict[asyncio.Task, float] = {}
    watches: dict[asyncio.Task, tuple[Request, Watch]] = {}
    requests: dict[asyncio.Task, Request] = {}
    can_cut = bool(getattr(teacher, "accepts_watch", False))
    stopped = "exhausted"

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
                stage.on_result(entry, kept, discards)
        if failure is not None:
            raise failure
        deliver()

    def deliver() -> None:
        """Take the worker's reports (if any): totals, then `on_result` with counts for lists."""
        for entry, kept, reasons in job.reports():
            stage.on_result(entry, kept, reasons)

    async def wait(tasks: set) -> set:
        """`asyncio.wait` for the first request to finish or, with entries at the worker, its
        next report (a decision may be waiting for it: `hold_back`, `should_stop`)."""
        watching = can_cut and stage.watches_writing
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
            while stopped != "budget" and len(in_flight) < concurrency and not stage.should_stop(job.totals):
                if (in_flight or job.totals.pending) and stage.hold_back(job.totals, in_flight_now()):
                    break
                idx = stage.next_index()
                if idx is None:
                    break
                req = stage.make_request(idx)
                est = stage.estimate_cost(req)
                spent = job.totals.cost_usd + job.totals.maybe_billed_usd  # the worst case counts
                if options.max_cost is not None and spent + sum(in_flight.values()) + est > options.max_cost:
                    stopped = "budget"
                    break
                watch = Watch() if can_cut else None
                job.mark_sent(req.index)
                task = asyncio.ensure_future(ask(teacher, req, options.sampling, watch))
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
            if writing:
                stage.on_writing(writing)
            for r, w in watches.values():
                if not w.cut.is_set() and stage.cut_one(r, w.text):
                    w.cut.set()
            if can_cut and (stage.should_stop(job.totals) or stage.finish_in_sight(job.totals, writing)):
                for _, watch in watches.values():
                    watch.cut.set()
                done, _ = await asyncio.wait(in_flight)  # (local teachers: no worker)
                record(done)
                continue
            # Target reached with a local model that cannot cut: its queued requests cost nothing
            # yet and would take minutes each, so drop them. An endpoint's requests in flight are
            # being paid for: they are waited for and journaled.
            if stage.should_stop(job.totals) and not getattr(teacher, "finish_in_flight", True):
                break
        while job.totals.pending:  # (only after a break above: a local teacher that has no worker)
            await wait(set())
        if stage.should_stop(job.totals):
            stopped = "done"
        return stopped
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


async def ask(teacher: Any, req: Request, sampling: dict[str, Any], watch: Any = None) -> dict:
    """One request -> its journal entry; a refusal of this request alone (HTTP 400, 413, 422)
    becomes a failed entry (a discard), any other failure is raised (it would hit every request)."""
    t0 = time.monotonic()
    kwargs = dict(sampling)
    if req.stop:
        kwargs["stop"] = list(req.stop)
    if watch is not None:
        kwargs["watch"] = watch
    from alpacakit.models.backends.endpoint import EndpointError

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
