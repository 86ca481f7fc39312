"""`alpacakit eval bench`: targeted capability benchmarks on one model, zero-shot.

What is measured, and how:

- multiple choice: for each choice, the log-likelihood of the choice text given the prompt
  (MMLU-style scoring without letters: the model is not asked to pick "B", it is asked how
  likely each answer is as the continuation). The prediction is the choice with the highest
  log-likelihood per UTF-8 byte (`acc_norm`, the headline: choices of different lengths compete
  fairly) and, reported beside it, the highest raw sum (`acc_raw`);
- short answer: greedy generation (temperature 0, up to `max_new_tokens`), the first non-empty
  line scored by `contains` (the headline: a gold answer appears in it as whole words, after
  SQuAD-style normalisation), exact match and token F1 (`scoring`). Not exact match as the
  headline: an instruction-tuned student answers "The capital of Germany is Berlin." where a
  base model completes "Berlin", and exact match would score that *style* as lost knowledge
  (seen in our first quickstart run: EM 0% vs contains 67% for the same student).

Prompting, and why it is fair across base, student and teacher (see docs/benchmarks_capability.md):
each model is asked the way it was trained to be asked. `auto` uses the model's own prompt
format when it has one (an alpacakit folder's prompt_format.json, or its chat template) and the
plain "Question: ...\nAnswer:" completion otherwise (a base model has never seen any template,
and wrapping its prompt in one would measure the template, not the knowledge). The question,
the items and the answer key are identical for every model; no examples are in the prompt.
`--prompt plain` forces the plain prompt on every model, for a "same bytes in" comparison.

Long runs are resumable: each scored item is appended to `<out>.partial.jsonl` (with a
fingerprint of the model and prompt), a rerun skips what is there, and the journal is removed
once the final JSON is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError
from alpacakit.evaluate.bench.scoring import contains_answer, exact_match, extract_answer, token_f1
from alpacakit.evaluate.bench.tasks import Task, builtin_tasks, load_task, select
from alpacakit.prompting import PromptFormat

FORMAT = "alpacakit-bench/1"
_JOURNAL_VERSION = 2  # 2: `contains` scored on the first line


@lru_cache(maxsize=1)
def prompt_texts() -> dict[str, Any]:
    import yaml

    text = resources.files("alpacakit.evaluate.bench").joinpath("prompts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@dataclass
class PromptPlan:
    """How items become prompts for one model: `plain`, a prompt format (`fmt`), or `message`
    (an endpoint: the formatted wording, sent as one chat message that the endpoint renders)."""

    mode: str  # "plain" | "format" | "message"
    fmt: PromptFormat | None = None

    @property
    def texts(self) -> dict[str, Any]:
        return prompt_texts()["plain" if self.mode == "plain" else "formatted"]

    @property
    def add_special(self) -> bool:
        """Whether the tokenizer adds BOS itself (plain text and template formats: yes; chat
        templates write their own special tokens)."""
        return True if self.fmt is None else self.fmt.add_special_tokens

    @property
    def continuation_prefix(self) -> str:
        return self.texts["continuation_prefix"]

    @property
    def stops(self) -> list[str]:
        stops = list(self.texts.get("stop", []))
        if self.fmt is not None:
            stops += [s for s in self.fmt.stop if s not in stops]
        return stops

    def context(self, item: dict[str, Any]) -> str:
        t = self.texts
        q, ctx = item["question"], item.get("context")
        if self.mode == "message":
            if ctx:
                return t["reading_instruction"].format(question=q) + "\n\n" + t["reading_input"].format(context=ctx)
            return t["instruction"].format(question=q)
        if self.fmt is None:
            return (t["reading"] if ctx else t["question"]).format(question=q, context=ctx or "")
        if ctx:
            return self.fmt.build(t["reading_instruction"].format(question=q), t["reading_input"].format(context=ctx))
        return self.fmt.build(t["instruction"].format(question=q))

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "format": self.fmt.name if self.fmt else None,
            "zero_shot": True,
            "add_special_tokens": self.add_special,
        }

    def fingerprint(self) -> str:
        data = {"mode": self.mode, "fmt": self.fmt.to_dict() if self.fmt else None, "texts": self.texts}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_prompts(backend: Any, prompt: str = "auto") -> PromptPlan:
    """`auto`: the model's own format if it has one, else plain; `plain`; or a format name/path.
    An endpoint always gets `message`: it applies its own chat template."""
    if getattr(backend, "chat_only", False):
        if prompt not in ("auto", "chat"):
            raise ConfigError(
                f"--prompt {prompt}: an endpoint is sent chat messages and applies its own template",
                hint="leave --prompt at auto for openai:MODEL",
            )
        return PromptPlan("message")
    if prompt == "plain":
        return PromptPlan("plain")
    if prompt == "auto":
        return PromptPlan("format", backend.native_format) if backend.native_format else PromptPlan("plain")
    fmt = PromptFormat.load(prompt)
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        fmt = fmt.bind(tokenizer)
    elif fmt.kind == "chat" and not fmt.chat_template:
        native = backend.native_format
        if native is not None and native.kind == "chat":
            fmt = replace(
                fmt, chat_template=native.chat_template, bos_token=native.bos_token, eos_token=native.eos_token
            )
        else:
            fmt = replace(fmt, chat_template=fmt.fallback_chat_template, stop=[*fmt.stop, *fmt.fallback_stop])
    return PromptPlan("format", fmt)


# --------------------------------------------------------------------------- scoring one item


def score_mc(backend: Any, plan: PromptPlan, item: dict[str, Any]) -> dict[str, Any]:
    context = plan.context(item)
    conts = [plan.continuation_prefix + c for c in item["choices"]]
    scores = backend.loglikelihood(context, conts, add_special=plan.add_special)
    ll = [s for s, _ in scores]
    norm = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(ll, item["choices"])]
    pred_raw = max(range(len(ll)), key=lambda i: (ll[i], -i))
    pred_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return {
        "kind": "mc",
        "question": item["question"],
        "choices": item["choices"],
        "answer": item["answer"],
        "pred_raw": pred_raw,
        "pred_norm": pred_norm,
        "correct_raw": pred_raw == item["answer"],
        "correct_norm": pred_norm == item["answer"],
        "loglik": ll,
        "n_tokens": [n for _, n in scores],
    }


def score_qa(backend: Any, plan: PromptPlan, item: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    text = backend.generate(
        plan.context(item), max_tokens=max_new_tokens, stop=plan.stops, add_special=plan.add_special
    )
    pred = extract_answer(text)
    answers = item["answers"]
    return {
        "kind": "qa",
        "question": item["question"],
        "answers": answers,
        "output": text,
        "prediction": pred,
        "em": exact_match(pred, answers),
        "f1": token_f1(pred, answers),
        "contains": contains_answer(pred, answers),
    }


def summarize(kind: str, results: list[dict[str, Any]], mc_score: str = "norm") -> dict[str, Any]:
    """The task entry of the output JSON, from its item results."""
    n = len(results)

    def mean(key: str, rows: list[dict[str, Any]] = results) -> float:
        return sum(float(r[key]) for r in rows) / len(rows) if rows else 0.0

    head = ("correct_norm" if mc_score == "norm" else "correct_raw") if kind == "mc" else "contains"
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_subject[r.get("subject") or ""].append(r)
    out: dict[str, Any] = {"accuracy": mean(head), "n": n}
    if kind == "mc":
        out.update(
            metric="acc",
            scoring="loglik per byte" if mc_score == "norm" else "loglik sum",
            acc_norm=mean("correct_norm"),
            acc_raw=mean("correct_raw"),
        )
    else:
        out.update(metric="contains", em=mean("em"), f1=mean("f1"), contains=mean("contains"))
    out["by_subject"] = {
        s: {"n": len(rows), "accuracy": mean(head, rows)} for s, rows in sorted(by_subject.items()) if s
    }
    return out


# --------------------------------------------------------------------------- the run


def _default_system(model: str, out: Path | None, backend_name: str) -> str:
    if out is not None and out.stem.startswith("bench-") and len(out.stem) > len("bench-"):
        return out.stem[len("bench-") :]
    return backend_name


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md
    import platform

    v: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("alpacakit", "torch", "transformers", "llama_cpp_python"):
        try:
            v[dist] = md.version(dist)
        except md.PackageNotFoundError:
            v[dist] = None
    return v


def _journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def _load_journal(path: Path, fp: str) -> dict[tuple[str, str], dict[str, Any]]:
    from alpacakit.io import iter_jsonl

    done: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        for _, rec in iter_jsonl(path, tolerate_torn_tail=True):
            if rec.get("fp") == fp:
                done[(rec["task"], rec["id"])] = rec
    return done


def run_bench(
    model: str,
    *,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    system: str | None = None,
    prompt: str = "auto",
    mc_score: str = "norm",
    max_new_tokens: int = 32,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    base: str | None = None,
    seed: int = 0,
    lm_eval_tasks: Sequence[str] | None = None,
    lm_eval_include: str | Path | None = None,
    backend: Any = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run benchmark `tasks` (default: every built-in task) on `model`; write `out` if given.

    `backend` may be passed in (an already loaded Backend) to run several task sets on one
    model; otherwise it is opened from `model` and closed at the end. Returns the result dict
    (see docs/benchmarks_capability.md for the format).
    """
    if mc_score not in ("norm", "raw"):
        raise ConfigError(f"mc_score must be 'norm' or 'raw', found {mc_score!r}")
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be at least 1")
    out_path = Path(out) if out is not None else None
    endpoint = model.strip().startswith("openai:") if backend is None else not getattr(backend, "can_score", True)
    skipped: dict[str, str] = {}
    chosen = tasks
    if tasks is None:
        tasks = [] if lm_eval_tasks else builtin_tasks()
    loaded: list[Task] = [load_task(t) for t in tasks]  # fail on a bad file before loading a model
    if endpoint and any(t.kind == "mc" for t in loaded):
        mc = [t.name for t in loaded if t.kind == "mc"]
        if chosen is not None:
            raise ConfigError(
                f"{model}: {', '.join(mc)} {'is' if len(mc) == 1 else 'are'} multiple choice, scored by "
                "log-likelihood, which an endpoint does not give",
                hint="run short-answer tasks on the endpoint (e.g. --tasks facts_qa,arithmetic_qa,"
                "reading_qa), and multiple choice on local weights",
            )
        skipped = {name: "multiple choice needs log-likelihoods; an endpoint gives none" for name in mc}
        loaded = [t for t in loaded if t.kind != "mc"]
    names = [t.name for t in loaded]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"two tasks are named {sorted(dupes)}", hint="rename one of the files")

    result: dict[str, Any] = {"format": FORMAT, "model": model, "tasks": {}, "items": []}
    t_start = time.monotonic()
    own_backend = backend is None and bool(loaded)
    if own_backend:
        from alpacakit.evaluate.bench.backends import open_backend

        backend = open_backend(
            model, base=base, n_ctx=n_ctx, n_threads=n_threads, base_url=base_url, api_key_env=api_key_env
        )
    try:
        if loaded:
            plan = plan_prompts(backend, prompt)
            result["system"] = system or _default_system(model, out_path, backend.name)
            result["model_info"] = backend.describe()
            result["prompt"] = plan.describe()
            _run_tasks(
                backend,
                plan,
                loaded,
                result,
                limit=limit,
                seed=seed,
                mc_score=mc_score,
                max_new_tokens=max_new_tokens,
                out_path=out_path,
                progress=progress,
            )
            result["timing"] = {"load_s": round(backend.load_s, 2)}
    finally:
        if own_backend:
            backend.close()
    if lm_eval_tasks:
        from alpacakit.evaluate.bench.lm_eval_bridge import run_lm_eval

        result.setdefault("system", system or _default_system(model, out_path, Path(model).name or model))
        for name, entry in run_lm_eval(
            model, list(lm_eval_tasks), limit=limit, base=base, include_path=lm_eval_include
        ).items():
            result["tasks"][name] = entry
    accs = [t["accuracy"] for t in result["tasks"].values()]
    result["overall"] = {
        "accuracy": sum(accs) / len(accs) if accs else None,
        "n_tasks": len(accs),
        "n": sum(t["n"] for t in result["tasks"].values()),
        "average": "macro over tasks",
    }
    result["settings"] = {"limit": limit, "seed": seed, "mc_score": mc_score, "max_new_tokens": max_new_tokens}
    if skipped:
        result["skipped_tasks"] = skipped
    result.setdefault("timing", {})["total_s"] = round(time.monotonic() - t_start, 2)
    result["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["versions"] = _versions()
    order = [
        "format",
        "system",
        "model",
        "model_info",
        "prompt",
        "settings",
        "skipped_tasks",
        "tasks",
        "overall",
        "timing",
        "resumed_items",
        "created_at",
        "versions",
        "items",
    ]
    result = {k: result[k] for k in order if k in result}
    if out_path is not None:
        from alpacakit.io import atomic_write_json

        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_path, result)
        _journal_path(out_path).unlink(missing_ok=True)
    return result


def _run_tasks(
    backend: Any,
    plan: PromptPlan,
    loaded: list[Task],
    result: dict[str, Any],
    *,
    limit: int | None,
    seed: int,
    mc_score: str,
    max_new_tokens: int,
    out_path: Path | None,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    from alpacakit.io import JsonlAppender

    fp = hashlib.sha256(
        json.dumps(
            {
                "v": _JOURNAL_VERSION,
                "model": result["model_info"],
                "prompt": plan.fingerprint(),
                "max_new_tokens": max_new_tokens,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    journal = None
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        done = _load_journal(_journal_path(out_path), fp)
        journal = JsonlAppender(_journal_path(out_path))
    resumed = 0
    try:
        for task in loaded:
            items = select(task, limit, seed)
            rows: list[dict[str, Any]] = []
            t0 = time.monotonic()
            for i, item in enumerate(items):
                rec = done.get((task.name, item["id"]))
                if rec is not None:
                    resumed += 1
                else:
                    scored = (
                        score_mc(backend, plan, item)
                        if task.kind == "mc"
                        else score_qa(backend, plan, item, max_new_tokens)
                    )
                    rec = {"fp": fp, "task": task.name, "id": item["id"], "subject": item.get("subject", ""), **scored}
                    if journal is not None:
                        journal.write(rec)
                rec = {k: v for k, v in rec.items() if k != "fp"}
                rows.append(rec)
                if progress is not None:
                    progress(task.name, i + 1, len(items))
            entry = summarize(task.kind, rows, mc_score)
            entry.update(
                kind=task.kind,
                source=task.source,
                n_available=len(task.items),
                seconds=round(time.monotonic() - t0, 2),
                example_prompt=plan.context(items[0]) if items else None,
            )
            result["tasks"][task.name] = entry
            for r in rows:
                if r["kind"] == "mc":
                    r["pred"] = r["pred_norm"] if mc_score == "norm" else r["pred_raw"]
                    r["correct"] = r["correct_norm"] if mc_score == "norm" else r["correct_raw"]
                else:
                    r["correct"] = bool(r["contains"])
            result["items"].extend(rows)
    finally:
        if journal is not None:
            journal.close()
    result["resumed_items"] = resumed
