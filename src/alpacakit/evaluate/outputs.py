"""`alpacakit eval generate`: any system answers an eval set, written in AlpacaEval's format.

A system is any model reference: an alpacakit or Hugging Face model folder (transformers), a
GGUF file or embedded name (llama.cpp), or an OpenAI-compatible endpoint (`openai:MODEL`).
Each is asked the way it expects to be asked:

- a model folder: through its saved `prompt_format.json`, i.e. byte-for-byte the prompt it was
  trained on (template formats as a raw continuation, chat formats through the template);
- a GGUF file: through `--prompt-format` or a `prompt_format.json` beside it when there is one,
  else its own chat template, else (a base model such as gemma-3-270m) the Alpaca template;
- an endpoint: one user message (the instruction, a blank line, the input), or raw
  completions of `--prompt-format` when that is given.
An answer written through a template is cut where the model starts a new template section
(`eval.template_stop`): a base model happily invents the next "### Instruction:".

Resumable, with the engine generation uses (`alpacakit.jobs`): each answer is
appended to `<OUT>.work/responses.jsonl` when it arrives; a rerun replays it and asks only for
the items still missing. Items are keyed by content (id and prompt), so a grown or reordered
eval set reuses every answer already paid for. The settings that shape an answer (model,
prompt mode, decoding) are the job's fingerprint: a rerun with other settings is refused
instead of mixing answers from two configurations in one file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit import __version__
from alpacakit.errors import DataError
from alpacakit.generate.progress import GenerationProgress
from alpacakit.jobs import JobOptions, JobTotals, JournaledJob, Request, run_job
from alpacakit.jobs.batch import BatchRunner, BatchStage
from alpacakit.manifest import validated
from alpacakit.rundir import model_label, outputs_label

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig
    from alpacakit.teachers.config import TeacherConfig

# --------------------------------------------------------------------------- shared journal helpers


def stable_index(key: str) -> int:
    """A journal index derived from a content key: equal keys, equal index, across runs."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16)


def work_dir_for(out: Path) -> Path:
    """Where the journal of an output file lives: `eval/outputs-x.json` -> `eval/outputs-x.work/`."""
    return out.with_name(out.stem + ".work")


class _Progress(GenerationProgress):
    """The generate progress bar, counting answered requests of this job."""

    def _done(self) -> int:
        return min(self.totals.requests, self.target)


class PendingStage(BatchStage):
    """Eval generate or judging: each pending request once, in the eval set's order (live or in
    batches); the progress bar counts answers, those found journaled at the start included."""

    def __init__(
        self, job: JournaledJob, pending: dict[int, Request], estimate, progress, progress_totals, heartbeat, live=True
    ):
        self.job, self.pending, self.progress, self.progress_totals = job, pending, progress, progress_totals
        self.estimate_cost = estimate or (lambda req: 0.0)
        self.heartbeat = heartbeat
        self.order = sorted(pending, key=lambda i: pending[i].meta["order"])
        self._indices = iter(self.order)
        self._last = time.monotonic()
        self.live = live  # in batches the bar is redrawn once per poll, not per answer

    def next_index(self) -> int | None:
        return next(self._indices, None)

    def make_request(self, index: int) -> Request:
        return self.pending[index]

    def on_result(self, entry: dict, kept: list, discards: list) -> None:
        self.progress_totals.add_entry(entry)
        self.progress_totals.add_results(kept, discards)
        if self.live:
            self.progress.update()
            self._beat()

    def on_poll(self, note: str) -> None:
        self.progress.update(writing=note)
        self._beat()

    def plan_batch(self, runner: BatchRunner, busy: set[int], open_count: int) -> list[int]:
        return [i for i in self.order if i not in self.job.done and i not in busy and i not in runner.held]

    def _beat(self) -> None:
        if self.heartbeat and time.monotonic() - self._last > 5:
            self.heartbeat()
            self._last = time.monotonic()


async def run_pending(
    job: JournaledJob,
    teacher: Any,
    pending: dict[int, Request],
    options: JobOptions,
    *,
    estimate: Callable[[Request], float] | None,
    progress_totals: JobTotals,
    target: int,
    unit: str,
    show_progress: bool,
    label: str,
    heartbeat: Callable[[], None] | None = None,
) -> str:
    """Ask `teacher` for the pending requests, journaling each answer. Returns run_job's reason."""
    progress = _Progress(target=target, totals=progress_totals, enabled=show_progress, unit=unit, label=label)
    stage = PendingStage(job, pending, estimate, progress, progress_totals, heartbeat)
    job.open()
    try:
        with progress:
            return await run_job(job, teacher, stage, options)
    finally:
        job.close()


async def run_pending_batches(
    job: JournaledJob,
    cfg: Any,
    pending: dict[int, Request],
    options: JobOptions,
    *,
    settings: Any,
    progress_totals: JobTotals,
    target: int,
    unit: str,
    show_progress: bool,
    label: str,
    heartbeat: Callable[[], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """`run_pending` through the OpenAI Batch API (`jobs/batch.py`): every pending request
    goes out at once (split at `settings.max_lines`), is polled and journaled; resumable from the
    job's batches.jsonl. Returns the reason ('exhausted', 'budget', or 'incomplete' when lines
    failed and were left for a rerun) and how the Batch API was used, for the manifest."""
    progress = _Progress(target=target, totals=progress_totals, enabled=show_progress, unit=unit, label=label)
    estimate = estimator(cfg.price, cfg.max_tokens)
    stage = PendingStage(job, pending, estimate, progress, progress_totals, heartbeat, live=False)
    runner = BatchRunner(job, cfg, stage, options, settings=settings, verbose=show_progress)
    with progress:
        reason = await runner.run()
    if reason == "exhausted" and runner.held:
        reason = "incomplete"
    return reason, runner.describe()


def check_fingerprint(job: JournaledJob, fingerprint: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """The previous manifest, after refusing a journal made with other settings."""
    previous = job.read_manifest()
    if previous and job.journal_path.exists() and previous.get("fingerprint") != fingerprint:
        old = previous.get("fingerprint") or {}
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise DataError(
            f"{where} holds answers made with other settings ({', '.join(diff)} differ)",
            hint=f"write to another output file, or delete {where} to start over",
        )
    return previous


def estimator(price: Any, max_tokens: int) -> Callable[[Request], float]:
    """Worst-case dollars of one request: the prompt estimate plus all of max_tokens."""
    from alpacakit.teachers.accounting import estimate_cost

    def estimate(req: Request) -> float:
        if req.api == "chat":
            messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
                {"role": "user", "content": req.prompt}
            ]
            return estimate_cost(price, max_tokens=max_tokens, messages=messages)
        return estimate_cost(price, max_tokens=max_tokens, prompt=req.prompt)

    return estimate


# --------------------------------------------------------------------------- how a system is asked


@dataclass
class Prompting:
    """How one system is asked. mode 'chat': one user message; 'template': a raw continuation
    of `fmt.build(...)`, cut at `stop`."""

    mode: str
    fmt: Any = None
    stop: list[str] = field(default_factory=list)
    why: str = ""

    def request(self, index: int, instruction: str, input_text: str, meta: dict[str, Any]) -> Request:
        if self.mode == "template":
            return Request(
                index=index,
                prompt=self.fmt.build(instruction, input_text),
                api="completions",
                stop=tuple(self.stop),
                meta=meta,
            )
        from alpacakit.evaluate.evalsets import INPUT_JOINER

        user = f"{instruction}{INPUT_JOINER}{input_text}" if input_text else instruction
        if self.fmt is not None and self.fmt.kind == "chat":
            user = self.fmt.user_message(instruction, input_text)
        return Request(index=index, prompt=user, api="chat", system=getattr(self.fmt, "system", None), meta=meta)

    def clean(self, text: str) -> str:
        """The answer as a user would see it: cut at template sections and stop strings, stripped."""
        text = text or ""
        if self.mode == "template":
            for s in self.stop:
                if s and s in text:
                    text = text.split(s, 1)[0]
            if self.fmt is not None:
                return self.fmt.split_response(text)
        return text.strip()

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "prompt_format": getattr(self.fmt, "name", None), "stop": self.stop, "why": self.why}


def _gguf_side_format(path: Path) -> Path | None:
    for cand in (path.with_name(path.stem + ".prompt_format.json"), path.parent / "prompt_format.json"):
        if cand.is_file():
            return cand
    return None


def choose_prompting(system: Any, prompt_format: str | None, template_stop: list[str]) -> Prompting:
    """Decide how `system` (a loaded ModelBackend) is asked; see the module doc."""
    from alpacakit.prompting import PromptFormat

    def template(fmt: Any, why: str) -> Prompting:
        stops = [*template_stop, *[s for s in fmt.stop if s not in template_stop]]
        return Prompting("template", fmt, stops, why)

    explicit = PromptFormat.load(prompt_format) if prompt_format else None
    own_format = getattr(system, "prompt_format", None)  # model folders (HFModel) carry theirs, or --prompt-format
    if own_format is not None:
        if own_format.kind == "template":
            return template(
                own_format, "--prompt-format" if explicit is not None else "the model folder's prompt format"
            )
        return Prompting("chat", own_format, [], "the model folder's chat format")
    path = getattr(system, "path", None)
    if explicit is None and isinstance(path, Path) and path.suffix == ".gguf":
        side = _gguf_side_format(path)
        if side is not None:
            explicit = PromptFormat.from_file(side)
    if explicit is not None:
        if explicit.kind == "template":
            return template(explicit, "--prompt-format" if prompt_format else "prompt_format.json beside the GGUF")
        return Prompting("chat", None, [], "chat format: the model's own template")
    if getattr(system, "has_chat_template", True):
        return Prompting(
            "chat",
            None,
            [],
            "the model's chat template" if hasattr(system, "has_chat_template") else "an endpoint: chat completions",
        )
    return template(PromptFormat.load("alpaca"), "a base model (no chat template): the Alpaca template")


def system_name(ref: str) -> str:
    """A readable generator name for a model reference."""
    return model_label(ref)  # the one rule, in alpacakit/rundir.py


def load_system(config: TeacherConfig, prompt_format: str | None = None) -> Any:
    """The system under evaluation as a model backend (any model reference; see models/registry.py)."""
    from alpacakit.models.backends import make_backend

    return make_backend(config, prompt_format=prompt_format)


# --------------------------------------------------------------------------- eval generate


class AnswerProcessor:
    """Journal entry -> one output record (deterministic, keyed by the item's key)."""

    def __init__(self, prompting: Prompting):
        self.prompting = prompting
        self.by_key: dict[str, dict] = {}

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]:
        rec = {
            "key": entry.get("key"),
            "output": self.prompting.clean(entry.get("text") or ""),
            "finish_reason": entry.get("finish_reason"),
            "stopped_by": entry.get("stopped_by"),
            "cost": entry.get("cost", 0.0),
            "usage": entry.get("usage"),
            "latency_s": entry.get("latency_s"),
        }
        self.by_key.setdefault(rec["key"], rec)
        return [rec], []


@dataclass
class OutputsResult:
    out_path: Path
    status: str
    answered: int
    total: int
    totals: JobTotals
    paid_this_run: dict[str, Any]
    refused: int = 0  # items the endpoint refused for good (HTTP 400/413/422): discards.jsonl says why

    def summary(self) -> str:
        t = self.totals
        refused = f", {self.refused} refused by the endpoint (see discards.jsonl)" if self.refused else ""
        return (
            f"{self.status}: {self.answered}/{self.total} answers in {self.out_path}{refused} "
            f"({t.prompt_tokens + t.completion_tokens:,} tokens, ${t.cost_usd:.4f}; this run: "
            f"{self.paid_this_run['requests']} requests, ${self.paid_this_run['cost_usd']:.4f})"
        )


def item_key(item: Any) -> str:
    return json.dumps([item.id, item.prompt], ensure_ascii=False)


def generate_outputs(
    config: AlpacakitConfig,
    out: str | Path,
    *,
    name: str | None = None,
    show_progress: bool = True,
    system: Any = None,
    max_cost: float | None = None,
    batch_api: bool = False,
) -> OutputsResult:
    """Answer `config.eval.eval_set` with `config.eval.system` into `out` (AlpacaEval JSON), resumably.

    `system` overrides loading the model (tests). `batch_api` asks an endpoint system through the
    OpenAI Batch API (`config.eval.batch`: half the price, answers within hours). Returns the
    status: complete, stopped_at_budget or incomplete (some items unanswered).
    """
    from alpacakit.evaluate.evalsets import load_eval_set
    from alpacakit.io import atomic_write_json

    ev = config.eval
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise DataError(
            f"{out}: the output is an AlpacaEval JSON file and should end in .json",
            hint="e.g. -o runs/NAME/eval/outputs-student.json",
        )
    items = load_eval_set(ev.eval_set, instances=ev.instances, limit=ev.limit)
    scfg = ev.system
    from alpacakit.teachers.prices import describe_source, require_known_price

    price_source = require_known_price(scfg, max_cost, "eval.system")
    if batch_api:
        from alpacakit.jobs.batch import require_endpoint

        require_endpoint(scfg, "eval generate --batch-api", system)
    # Like `eval bench`: -o outputs-<system>.json names the system unless --name does.
    from_file = outputs_label(out) or ""
    generator = name or from_file or system_name(scfg.model)
    work = work_dir_for(out)

    started = time.time()
    own = system is None
    if own:
        system = load_system(scfg, ev.prompt_format)
    closed = False
    try:
        prompting = choose_prompting(system, ev.prompt_format, list(ev.template_stop))
        fingerprint = {
            "model": scfg.model,
            "base_url": scfg.base_url,
            "prompting": prompting.describe(),
            "max_tokens": scfg.max_tokens,
            "temperature": scfg.temperature,
            "top_p": scfg.top_p,
            "seed": scfg.seed,
        }
        processor = AnswerProcessor(prompting)
        done: set[int] = set()
        job = JournaledJob(work, processor, done)
        previous = check_fingerprint(job, fingerprint, work)
        job.replay()

        keys = {item_key(it): it for it in items}
        pending: dict[int, Request] = {}
        for order, (key, it) in enumerate(keys.items()):
            idx = stable_index(key)
            if idx not in done:
                pending[idx] = prompting.request(idx, it.instruction, it.input, {"key": key, "order": order})
        cached = len(keys) - len(pending)

        manifest: dict[str, Any] = {
            "stage": "eval-generate",
            "status": "running",
            "alpacakit_version": __version__,
            "python": platform.python_version(),
            "fingerprint": fingerprint,
            "generator": generator,
            "price": describe_source(price_source),
            "system": _describe(system, scfg.model),
            "eval_set": {"ref": ev.eval_set, "items": len(items), "instances": ev.instances, "limit": ev.limit},
            "output": str(out),
            "created_at": (previous or {}).get("created_at", started),
        }

        def write_manifest(status: str) -> None:
            manifest.update(status=status, counts=job.totals.as_dict(), updated_at=time.time())
            job.write_manifest(validated(manifest))

        before = job.totals.as_dict()
        reason = "exhausted"
        write_manifest("running")
        sampling = {"max_tokens": scfg.max_tokens, "temperature": scfg.temperature, "top_p": scfg.top_p}
        if scfg.seed is not None:
            sampling["seed"] = scfg.seed
        concurrency = min(scfg.max_concurrency, getattr(system, "max_concurrency", scfg.max_concurrency))

        async def drive() -> str:
            try:
                if batch_api:
                    manifest["batch_api"] = {"price_factor": ev.batch.price_factor}
                    if not pending:
                        return "exhausted"
                    why, manifest["batch_api"] = await run_pending_batches(
                        job,
                        scfg,
                        pending,
                        JobOptions(sampling=sampling, max_cost=max_cost),
                        settings=ev.batch,
                        progress_totals=JobTotals(requests=cached, kept=cached),
                        target=len(keys),
                        unit="answered",
                        label=f"eval generate {generator}",
                        show_progress=show_progress,
                        heartbeat=lambda: write_manifest("running"),
                    )
                    return why
                if not pending:
                    return "exhausted"
                from alpacakit.jobs.batch import refuse_open_batches

                refuse_open_batches(job)  # an earlier --batch-api run's batches still out: live would pay twice
                return await run_pending(
                    job,
                    system,
                    pending,
                    JobOptions(concurrency=concurrency, sampling=sampling, max_cost=max_cost),
                    estimate=estimator(scfg.price, scfg.max_tokens),
                    progress_totals=JobTotals(requests=cached, kept=cached),
                    target=len(keys),
                    unit="answered",
                    label=f"eval generate {generator}",
                    show_progress=show_progress,
                    heartbeat=lambda: write_manifest("running"),
                )
            finally:
                if own:
                    await system.aclose()

        closed = True  # drive() closes the system, whatever happens inside it
        reason = asyncio.run(drive())
    finally:
        if own and not closed:
            asyncio.run(system.aclose())
    status = "stopped_at_budget" if reason == "budget" else "complete"

    records = []
    for key, it in keys.items():
        rec = processor.by_key.get(key)
        if rec is None:
            continue
        records.append(
            {
                "instruction": it.prompt,
                "output": rec["output"],
                "generator": generator,
                "dataset": it.dataset,
                "id": it.id,
                "category": it.category,
                "finish_reason": rec["finish_reason"],
                **({"stopped_by": rec["stopped_by"]} if rec.get("stopped_by") else {}),
            }
        )
    refused = job.totals.discards.get("request_failed", 0)
    if status == "complete" and len(records) + refused < len(keys):
        status = "incomplete"  # some items still unanswered: a rerun asks for them
    atomic_write_json(out, records)
    write_manifest(status)
    after = job.totals.as_dict()
    paid = {
        "requests": after["requests"] - before["requests"],
        "cost_usd": round(after["cost_usd"] - before["cost_usd"], 6),
    }
    job.release()
    return OutputsResult(out, status, len(records), len(keys), job.totals, paid, refused)


def _describe(system: Any, ref: str) -> dict[str, Any]:
    try:
        if hasattr(system, "describe"):
            return system.describe()
    except Exception as e:  # describing must never fail a finished evaluation
        return {"name": getattr(system, "name", ref), "describe_error": str(e)}
    return {"name": getattr(system, "name", ref), "ref": ref}
