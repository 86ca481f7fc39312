"""`alpacakit generate --batch-api`: self-instruct or answer mode through the OpenAI Batch API.

Answer mode knows its requests: every missing prompt goes out at once (one batch, split at
`generate.batch.max_lines`). Self-instruct does not: how many requests reach the target depends
on how many tasks each answer keeps, known only once answers come back. So each batch is sized
from the remaining target and the kept-per-request rate so far (the first one, before any
answer: one request per `tasks_per_request` examples still wanted), plus `margin`; then the
next batch, until the target, the request limit or the budget. A batch too small costs another
round trip (minutes to hours); a batch too large overshoots the target: every answer in it is
paid for and kept, so a batch run usually ends with more examples than `num`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alpacakit.generate.runner import GenerateResult
from alpacakit.jobs import JobOptions, JobTotals, JournaledJob, Request
from alpacakit.jobs.batch import BatchRunner, BatchStage

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig


@dataclass
class BatchGenerateResult(GenerateResult):
    batch: dict[str, Any] | None = None

    def summary(self) -> str:
        b = self.batch or {}
        text = super().summary() + (
            f" [Batch API, {b.get('price_factor', 0.5):g} x the price; "
            f"{b.get('batches_created', 0)} batches sent this run]"
        )
        failures = b.get("line_failures_left_for_a_rerun") or {}
        if failures:
            what = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
            text += f". Requests that failed inside a batch ({what}) were left out: rerun to ask them again"
        return text


def worst_case(t: Any):
    """A request's dollars at the teacher's full price if it used all of max_tokens (the budget
    check multiplies it by the batch price factor)."""
    from alpacakit.teachers.accounting import estimate_cost

    def estimate(req: Request) -> float:
        if req.api == "chat":
            messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
                {"role": "user", "content": req.prompt}
            ]
            return estimate_cost(t.price, max_tokens=t.max_tokens, messages=messages)
        return estimate_cost(t.price, max_tokens=t.max_tokens, prompt=req.prompt)

    return estimate


class BatchGenerateStage(BatchStage):
    """Self-instruct (batches sized from the kept-per-request rate, see the module doc) or answer
    mode (every missing prompt) through the Batch API."""

    def __init__(
        self, config: AlpacakitConfig, job: JournaledJob, plan: Any, target: int, answer_mode: bool, progress, heartbeat
    ):
        self.job, self.plan, self.target, self.answer_mode = job, plan, target, answer_mode
        self.g = config.generate
        self.estimate_cost = worst_case(config.teacher)
        self.progress, self.heartbeat = progress, heartbeat
        self.barren = 0  # answers in a row that kept nothing (as online: a teacher that only repeats itself)
        self._fresh = plan.indices  # ascending, skipping answered ones (the plan's generator)

    def make_request(self, index: int) -> Request:
        return self.plan.make_request(index)

    def should_stop(self, totals: JobTotals) -> bool:
        if self.answer_mode:
            return False  # stop when every prompt is answered
        return totals.kept >= self.target or self.barren >= self.g.stall_requests

    def on_result(self, entry: dict, kept: list, discards: list) -> None:
        self.barren = 0 if kept else self.barren + 1  # (the progress line is redrawn once per batch: on_poll)

    def on_poll(self, note: str) -> None:
        self.progress.update(writing=note)
        self.heartbeat()

    def plan_batch(self, runner: BatchRunner, busy: set[int], open_count: int) -> list[int]:
        job, g = self.job, self.g
        if self.answer_mode:
            return [i for i in range(self.target) if i not in job.done and i not in busy and i not in runner.held]
        if open_count:  # the next size depends on this batch's answers
            return []
        totals = job.totals
        remaining = self.target - totals.kept
        if remaining <= 0:
            return []
        per_request = totals.kept / totals.requests if totals.kept else g.tasks_per_request
        n = min(g.batch.max_lines, max(1, math.ceil(remaining / per_request * (1 + g.batch.margin))))
        out = sorted(i for i in runner.lost if i not in job.done)[:n]  # the last batch ended before running them
        runner.lost.difference_update(out)
        while len(out) < n:
            i = next(self._fresh, None)
            if i is None:
                break  # the request limit
            if i not in busy and i not in job.done and i not in out:
                out.append(i)
        return out


def generate_in_batches(
    config: AlpacakitConfig,
    job: JournaledJob,
    plan: Any,
    target: int,
    show_progress: bool,
    manifest: dict[str, Any],
    update_manifest: Any,
    answer_mode: bool,
) -> GenerateResult:
    """The Batch API branch of `runner.generate`, from the replayed job to its result."""
    from alpacakit.generate.progress import GenerationProgress

    t, g = config.teacher, config.generate
    sampling: dict[str, Any] = {"max_tokens": t.max_tokens, "temperature": t.temperature, "top_p": t.top_p}
    if t.seed is not None:
        sampling["seed"] = t.seed
    progress = GenerationProgress(
        target=target, totals=job.totals, enabled=show_progress, unit="answered" if answer_mode else "kept"
    )
    last = [0.0]

    def heartbeat() -> None:
        if time.monotonic() - last[0] > 5:
            manifest["batch_api"] = runner.describe()
            update_manifest("running")
            last[0] = time.monotonic()

    stage = BatchGenerateStage(config, job, plan, target, answer_mode, progress, heartbeat)
    options = JobOptions(sampling=sampling, max_cost=g.max_cost)
    runner = BatchRunner(job, t, stage, options, settings=g.batch, verbose=show_progress)
    manifest["price"] = f"{manifest.get('price', '')}; Batch API: {g.batch.price_factor:g} x that price"
    manifest["batch_api"] = runner.describe()
    update_manifest("running")
    with progress:
        reason = asyncio.run(runner.run())
    if reason == "budget":
        status = "stopped_at_budget"
    elif answer_mode:
        status = "incomplete" if runner.held else "complete"
    elif job.totals.kept >= target:
        status = "complete"
    else:
        status = "stalled" if stage.barren >= g.stall_requests else "request_limit"
    manifest["batch_api"] = runner.describe()
    update_manifest(status)
    job.release()
    return BatchGenerateResult(job.out_dir, status, job.totals, batch=manifest["batch_api"])
