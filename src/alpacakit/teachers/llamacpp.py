"""A local GGUF model as a `Teacher`, in process, through llama-cpp-python.

- chat() renders messages with the model's own chat template (`create_chat_completion`,
  which reads `tokenizer.chat_template` from the GGUF); a model without one (a base model such
  as gemma-3-270m) refuses chat() rather than guessing a format: use complete().
- complete() is a raw text continuation (`create_completion`), no template.
- One model, one request at a time: calls run in a worker thread (`asyncio.to_thread`) behind
  a lock, so the event loop stays free for other work (writing journals, HTTP teachers).
- Usage comes from llama.cpp's own token counts; cost is usage x `config.price`, 0 by default.
- Timeouts are best effort: the deadline is checked after every generated token (a
  llama.cpp stopping criterion), so a slow or stalled generation stops and is retried like a
  remote timeout, but the prompt-evaluation step that comes before the first token cannot be
  interrupted.
- The model is freed with `Llama.close()` in `aclose()`, or at the latest at interpreter exit
  (a `weakref.finalize`): left to `Llama.__del__` during shutdown it prints a TypeError.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from typing import Any

from alpacakit.errors import TeacherError
from alpacakit.teachers.accounting import CostTracker, cost_of
from alpacakit.teachers.base import Completion, Usage

log = logging.getLogger(__name__)


class _Timeout(Exception):
    pass


def _close_llama(llm: Any) -> None:
    try:
        llm.close()
    except Exception:  # noqa: BLE001 - best effort at shutdown
        pass


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppTeacher:
    """A GGUF model (embedded name or path) loaded in this process. Build it with `make_teacher`."""

    def __init__(self, config: Any, tracker: CostTracker | None = None):
        from alpacakit.models import is_embedded, resolve_gguf

        self.config = config
        self.tracker = tracker
        self.api = config.api
        self.path = resolve_gguf(config.model)
        self.name = config.model.strip().lower() if is_embedded(config.model) else self.path.stem
        try:
            import llama_cpp
        except ImportError:
            raise TeacherError(
                f"running {config.model!r} locally needs llama-cpp-python, which is not installed",
                hint='pip install "alpacakit[llama]"  (builds llama.cpp from source: several minutes), '
                "or use an OpenAI-compatible endpoint: teacher.model=openai:MODEL with teacher.base_url",
            ) from None
        self.n_threads = config.n_threads or default_threads()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=config.n_ctx,
                n_threads=self.n_threads,
                seed=config.seed if config.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise TeacherError(f"llama.cpp could not load {self.path}: {e}",
                               hint="check that the file is a complete GGUF model that this llama-cpp-python supports") from None
        self._finalizer = weakref.finalize(self, _close_llama, self._llm)
        self.has_chat_template = bool(self._llm.metadata.get("tokenizer.chat_template"))
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> dict[str, Any]:
        """For manifests: the model file (name, source, path, sha256, licence) and how it ran."""
        from alpacakit.models import describe, is_embedded

        info = describe(self.config.model if is_embedded(self.config.model) else self.path)
        info.update({"backend": "llama.cpp", "n_ctx": self.config.n_ctx, "chat_template": self.has_chat_template})
        return info

    # ------------------------------------------------------------------ public API

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None, top_p: float | None = None,
                   stop: list[str] | None = None, seed: int | None = None) -> Completion:
        if self.api == "completions":
            raise TeacherError(f"{self.name} is configured with api=completions (raw text), so it cannot chat",
                               hint="set teacher.api=auto or chat, or send a raw prompt with complete()")
        if not self.has_chat_template:
            raise TeacherError(
                f"{self.name} has no chat template (a base model), so it cannot answer chat messages",
                hint="use raw completions (teacher.api=completions / complete()), or an instruct model such as "
                "qwen2.5-coder-1.5b-instruct",
            )
        return await self._call("chat", {"messages": messages}, max_tokens, temperature, top_p, stop, seed)

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       temperature: float | None = None, top_p: float | None = None,
                       stop: list[str] | None = None, seed: int | None = None) -> Completion:
        if self.api == "chat":
            return await self.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                   temperature=temperature, top_p=top_p, stop=stop, seed=seed)
        return await self._call("completions", {"prompt": prompt}, max_tokens, temperature, top_p, stop, seed)

    def close(self) -> None:
        """Free the model now (idempotent)."""
        with self._lock:
            self._finalizer()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> "LlamaCppTeacher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    def _loop_lock(self) -> asyncio.Lock:
        """Queue callers on the event loop rather than parking one worker thread each."""
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:
            self._alock, self._alock_loop = asyncio.Lock(), loop
        return self._alock

    async def _call(self, route: str, payload: dict[str, Any], max_tokens: int | None, temperature: float | None,
                    top_p: float | None, stop: list[str] | None, seed: int | None) -> Completion:
        cfg = self.config
        kwargs: dict[str, Any] = {
            **payload,
            "max_tokens": max_tokens if max_tokens is not None else cfg.max_tokens,
            "temperature": temperature if temperature is not None else cfg.temperature,
            "top_p": top_p if top_p is not None else cfg.top_p,
            "stop": list(stop) if stop else None,
        }
        seed = seed if seed is not None else cfg.seed
        if seed is not None:
            kwargs["seed"] = seed
        t0 = time.monotonic()
        attempts = 0
        async with self._loop_lock():
            while True:
                attempts += 1
                try:
                    out = await asyncio.to_thread(self._generate, route, kwargs, cfg.timeout_s)
                    break
                except _Timeout:
                    if attempts > cfg.max_retries:
                        if self.tracker is not None:
                            self.tracker.record_failure(attempts)
                        raise TeacherError(
                            f"{self.name}: generation timed out after {cfg.timeout_s:g} s, {attempts} attempt"
                            f"{'s' if attempts > 1 else ''}",
                            hint="raise teacher.timeout_s, lower teacher.max_tokens, or use a smaller model",
                        ) from None
                    log.info("%s: attempt %d timed out after %g s; retrying", self.name, attempts, cfg.timeout_s)
        completion = self._parse(out, route)
        completion.attempts = attempts
        completion.latency_s = time.monotonic() - t0
        if self.tracker is not None:
            completion.cost = self.tracker.charge(completion.usage, price=cfg.price, attempts=attempts)
        else:
            completion.cost = cost_of(completion.usage, cfg.price)
        return completion

    def _generate(self, route: str, kwargs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Runs in a worker thread, one at a time per model."""
        from llama_cpp import StoppingCriteriaList

        deadline = time.monotonic() + timeout_s
        timed_out = False

        def past_deadline(_tokens: Any, _logits: Any) -> bool:
            nonlocal timed_out
            if time.monotonic() > deadline:
                timed_out = True
            return timed_out

        with self._lock:
            if not self._finalizer.alive:
                raise TeacherError(f"{self.name} was closed", hint="create a new teacher with make_teacher()")
            fn = self._llm.create_chat_completion if route == "chat" else self._llm.create_completion
            try:
                out = fn(**kwargs, stopping_criteria=StoppingCriteriaList([past_deadline]))
            except ValueError as e:  # e.g. "Requested tokens (N) exceed context window of M"
                raise TeacherError(f"{self.name}: {e}",
                                   hint="raise teacher.n_ctx or shorten the prompt / max_tokens") from None
        if timed_out:
            raise _Timeout()
        return out

    def _parse(self, out: dict[str, Any], route: str) -> Completion:
        choice = out["choices"][0]
        if route == "chat":
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        usage = out.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            model=self.name,
            request_id=out.get("id"),
        )
