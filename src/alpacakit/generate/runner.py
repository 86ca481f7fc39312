"""`alpacakit generate` as a library function: plan, replay the journal, ask the teacher for
what is missing, keep the manifest up to date.
"""

from __future__ import annotations

import asyncio
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpacakit import __version__
from alpacakit.config import AlpacakitConfig
from alpacakit.errors import DataError
from alpacakit.jobs import EXAMPLES, JobOptions, JobStage, JobTotals, JournaledJob, Request, run_job
from alpacakit.manifest import validated


@dataclass
class GenerateResult:
    out_dir: Path
    status: str
    totals: JobTotals

    @property
    def examples_path(self) -> Path:
        return self.out_dir / EXAMPLES

    def summary(self) -> str:
        t = self.totals
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(t.discards.items(), key=lambda kv: -kv[1])) or "none"
        text = (
            f"{self.status}: kept {t.kept} examples in {self.examples_path} from {t.requests} requests "
            f"({t.prompt_tokens + t.completion_tokens:,} tokens, ${t.cost_usd:.4f}); discarded: {reasons}"
        )
        if t.discards.get("request_failed"):
            from alpacakit.jobs.journal import DISCARDS, most_common_failure

            common = most_common_failure(self.out_dir / DISCARDS)
            if common:
                message, times = common
                failed = t.discards["request_failed"]
                if failed == 1:
                    which = "1 request failed for good"
                else:
                    which = (
                        f"{failed} requests failed for good, {'all' if times == failed else f'{times} of them'} with"
                    )
                text += f". {which}: {message[:400]} (each failure is in {self.out_dir / DISCARDS})"
        if self.status == "stalled":
            text += (
                ". The last answers kept nothing new (generate.stall_requests in a row): the teacher repeats "
                "itself or every task fails the filters. See discards.jsonl; try a higher temperature or "
                "other seeds, then rerun to continue"
            )
        return text


def resolve_api(config: AlpacakitConfig) -> str:
    """'auto' means raw completions for local GGUF teachers (they follow the numbered format
    far better without a chat template) and chat for endpoints."""
    api = config.teacher.api
    if api == "auto":
        api = "chat" if config.teacher.model.startswith("openai:") else "completions"
    return api


def describe_teacher(config: AlpacakitConfig) -> dict[str, Any]:
    t = config.teacher
    if t.model.startswith("openai:"):
        return {"name": t.model.split(":", 1)[1], "source": t.base_url or "https://api.openai.com/v1"}
    from alpacakit.models import describe

    return describe(t.model)


def replay_progress(label: str):
    """A line on stderr while a long journal is replayed (a resumed 52K run replays ~3K answers)."""
    import sys

    def show(done: int, total: int) -> None:
        end = "\n" if done == total or not sys.stderr.isatty() else "\r"
        print(f"[{label}] replaying the journal: {done:,}/{total:,} answers", end=end, file=sys.stderr, flush=True)

    return show


def _estimator(config: AlpacakitConfig):
    """Worst-case dollars of one request (prompt estimate + all of max_tokens)."""
    from alpacakit.teachers.accounting import estimate_cost

    price, max_tokens = config.teacher.price, config.teacher.max_tokens

    def estimate(req: Request) -> float:
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.prompt}
        ]
        if req.api == "chat":
            return estimate_cost(price, max_tokens=max_tokens, messages=messages)
        return estimate_cost(price, max_tokens=max_tokens, prompt=req.prompt)

    return estimate


def generate(
    config: AlpacakitConfig,
    out_dir: str | Path,
    *,
    from_prompts: str | Path | None = None,
    prompt_field: str = "instruction",
    input_field: str = "input",
    show_progress: bool = True,
    teacher: Any = None,
) -> GenerateResult:
    """Self-instruct (default) or answer mode (`from_prompts`) into `out_dir`, resumably.

    Rerunning with the same settings continues where the last run stopped; raising
    `generate.num` extends a finished run. `teacher` overrides `config.teacher` (tests).
    """
    from alpacakit.teachers.prices import describe_source, require_known_price

    out_dir = Path(out_dir)
    if config.generate.batch_api:  # an endpoint's Batch API: refuse anything else before any work
        from alpacakit.jobs.batch import require_endpoint

        require_endpoint(config.teacher, "generate.batch_api (--batch-api)", teacher)
    # before any request: a budget needs a price (the table's, the config's, or free)
    price_source = require_known_price(config.teacher, config.generate.max_cost, "teacher")
    api = resolve_api(config)
    teacher_name = config.teacher.model
    done: set[int] = set()  # filled by the journal replay; the plan skips these requests
    if from_prompts:
        from alpacakit.generate.answer import build_plan as build_answer_plan

        plan = build_answer_plan(config, api, teacher_name, done, from_prompts, prompt_field, input_field, limit=None)
        target = plan.total
    else:
        from alpacakit.generate.self_instruct import build_plan

        plan = build_plan(config, api, teacher_name, done)
        target = config.generate.num
    job = JournaledJob(out_dir, plan.processor, done)
    previous = job.read_manifest()
    if previous and previous.get("fingerprint") != plan.fingerprint and job.journal_path.exists():
        diff = sorted(k for k in plan.fingerprint if previous.get("fingerprint", {}).get(k) != plan.fingerprint[k])
        raise DataError(
            f"{out_dir} holds a generation made with other settings ({', '.join(diff)} differ)",
            hint="use a new --out-dir, or rerun with the settings recorded in its manifest.json",
        )
    job.replay(progress=replay_progress("generate") if show_progress else None)

    started = time.time()
    manifest: dict[str, Any] = {
        "stage": "generate",
        "status": "running",
        "alpacakit_version": __version__,
        "python": platform.python_version(),
        "fingerprint": plan.fingerprint,
        "price": describe_source(price_source),
        "config": {
            "teacher": config.teacher.model_dump(mode="json"),
            "generate": config.generate.model_dump(mode="json"),
            "curate": config.curate.model_dump(mode="json"),
        },
        "teacher": describe_teacher(config) if teacher is None else {"name": getattr(teacher, "name", "custom")},
        "inputs": plan.inputs,
        "target": target,
        "created_at": (previous or {}).get("created_at", started),
    }

    def update_manifest(status: str) -> None:
        manifest.update(status=status, counts=job.totals.as_dict(), updated_at=time.time())
        job.write_manifest(validated(manifest))

    if from_prompts:
        should_stop = lambda totals: False  # noqa: E731 - stop when the prompts run out
    else:
        should_stop = lambda totals: totals.kept >= target  # noqa: E731
    if should_stop(job.totals) or (from_prompts and len(done) >= target):
        update_manifest("complete")
        job.release()
        return GenerateResult(out_dir, "complete", job.totals)

    if config.generate.batch_api:  # batches instead of live requests: generate/batch_generate.py
        from alpacakit.generate.batch_generate import generate_in_batches

        return generate_in_batches(
            config, job, plan, target, show_progress, manifest, update_manifest, bool(from_prompts)
        )
    from alpacakit.jobs.batch import refuse_open_batches

    refuse_open_batches(job)  # an earlier --batch-api run's batches still out: asking live would pay twice
    update_manifest("running")
    if not from_prompts and config.generate.process_in_worker and config.teacher.model.startswith("openai:"):
        from alpacakit.generate.self_instruct import most_kept

        job.start_worker(most_kept)  # forked here: after the replay, before the event loop and the client (worker.py)
    try:
        status = asyncio.run(
            _run(
                config, job, plan, api, should_stop, target, teacher, show_progress, update_manifest, bool(from_prompts)
            )
        )
    finally:
        job.stop_worker()
    update_manifest(status)
    job.release()
    return GenerateResult(out_dir, status, job.totals)


async def _run(
    config, job, plan, api, should_stop, target, teacher, show_progress, update_manifest, answer_mode
) -> str:
    from alpacakit.generate.progress import GenerationProgress

    own_teacher = teacher is None
    if own_teacher:
        from alpacakit.models.backends import make_backend

        teacher = make_backend(config.teacher)
    t = config.teacher
    sampling = {"max_tokens": t.max_tokens, "temperature": t.temperature, "top_p": t.top_p}
    if t.seed is not None:
        sampling["seed"] = t.seed
    concurrency = min(
        config.generate.request_batch or t.max_concurrency,
        t.max_concurrency,
        getattr(teacher, "max_concurrency", t.max_concurrency),
    )
    progress = GenerationProgress(
        target=target, totals=job.totals, enabled=show_progress, unit="answered" if answer_mode else "kept"
    )
    stage = LiveStage(config, plan, target, should_stop, answer_mode, progress, update_manifest)
    options = JobOptions(concurrency=concurrency, sampling=sampling, max_cost=config.generate.max_cost)
    job.open()
    try:
        with progress:
            stopped = await run_job(job, teacher, stage, options)
    finally:
        job.close()
        if own_teacher:
            await teacher.aclose()
    if stopped == "budget":
        return "stopped_at_budget"
    if answer_mode:
        return "complete" if stopped == "exhausted" else stopped
    if stopped == "done" and stage.barren >= config.generate.stall_requests and job.totals.kept < target:
        return "stalled"
    return "complete" if stopped == "done" else "request_limit"


class LiveStage(JobStage):
    """Self-instruct or answer mode asked live: the plan's requests, until the target (self-instruct)
    or the last prompt (answer mode), a stall or the budget."""

    watches_writing = True  # a local teacher's answers are shown as they grow, and cut

    def __init__(self, config, plan, target: int, reached, answer_mode: bool, progress, update_manifest):
        self.plan, self.target, self.reached, self.answer_mode = plan, target, reached, answer_mode
        self.progress, self.update_manifest = progress, update_manifest
        self.stall_requests = config.generate.stall_requests
        self.estimate_cost = _estimator(config)
        self.barren = 0  # answers in a row that kept nothing
        self._indices = iter(plan.indices)
        self._last_manifest = 0.0
        self._in_sight = self._runaway = self._enough = None
        if not answer_mode:
            from alpacakit.generate.self_instruct import enough_in_flight, runaway_answer, target_in_sight

            g = config.generate
            most = max(g.tasks_per_request - g.num_prompt_instructions, 1)  # new tasks one answer is asked for
            self._in_sight, self._enough = target_in_sight(target), enough_in_flight(target, most)
            if g.cut_runaway_answers:
                self._runaway = runaway_answer(g.similarity_threshold, g.max_task_chars)

    def next_index(self) -> int | None:
        return next(self._indices, None)

    def make_request(self, index: int) -> Request:
        return self.plan.make_request(index)

    def should_stop(self, totals: JobTotals) -> bool:
        if self.answer_mode:
            return self.reached(totals)
        return self.reached(totals) or self.barren >= self.stall_requests

    def hold_back(self, totals: JobTotals, in_flight: list) -> bool:
        if self.answer_mode:
            return False
        # answers still at the worker may all be barren: wait for them rather than ask past the stall limit
        return self.barren + totals.pending >= self.stall_requests or self._enough(totals, in_flight)

    def on_result(self, entry: dict, kept, discards) -> None:  # (records, or counts from the worker)
        self.barren = 0 if kept else self.barren + 1
        self.progress.update()
        if time.monotonic() - self._last_manifest > 5:
            self.update_manifest("running")
            self._last_manifest = time.monotonic()

    def on_writing(self, writing: list) -> None:
        if self.answer_mode:
            what = f"~{sum(len(text) for _, text in writing) // 4:,} tok so far"
        else:
            from alpacakit.generate.self_instruct import tasks_written

            what = f"{tasks_written(writing)} tasks so far"
        self.progress.update(writing=f"{len(writing)} writing, {what}")

    def cut_one(self, request: Request, text: str) -> bool:
        return self._runaway is not None and self._runaway(request, text)

    def finish_in_sight(self, totals: JobTotals, writing: list) -> bool:
        return self._in_sight is not None and self._in_sight(totals, writing)
