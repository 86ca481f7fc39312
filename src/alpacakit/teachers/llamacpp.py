"""A local GGUF model as a `Teacher`, in process, through llama-cpp-python.

- chat() renders messages with the model's own chat template (`create_chat_completion`,
  which reads `tokenizer.chat_template` from the GGUF); a model without one (a base model such
  as gemma-3-270m) refuses chat() rather than guessing a format: use complete().
- complete() is a raw text continuation (`create_completion`), no template.
- One model, one request at a time: calls run in a worker thread (`asyncio.to_thread`) behind
  a lock, so the event loop stays free for other work (writing journals, HTTP teachers).
- Usage comes from llama.cpp's own token counts; cost is usage x `config.price`, 0 by default.
- `timeout_s` is a stall timeout: a generation that produces no new token for `timeout_s`
  seconds stops and is retried like a remote timeout (models.md reports rare stalls). A long
  generation that keeps producing tokens is never cut off, however slow the machine: retrying it
  would only pay for the same tokens again. The prompt-evaluation step before the first token
  cannot be interrupted.
- Sampling: temperature, top_p, stop and max_tokens as given; llama.cpp's own defaults for the
  rest (top_k=40, min_p=0.05), which keep small models on track. `config.seed` seeds the model
  once at load, so a run is reproducible while successive requests still differ; a `seed`
  passed to a call reseeds that call.
- The model is freed with `Llama.close()` in `aclose()`, or at the latest at interpreter exit
  (a `weakref.finalize`): left to `Llama.__del__` during shutdown it prints a TypeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
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


_LOAD_LOCK = threading.Lock()


def import_llama_cpp() -> Any:
    """Import llama_cpp, or fail with the extra to install.

    Before the first import, OMP_WAIT_POLICY defaults to PASSIVE: llama.cpp's OpenMP threads
    otherwise spin while waiting, and on a machine shared with other busy processes (2 cores,
    several jobs) that made SmolLM2 about 10x slower in our measurements (17.5 s vs 1.6 s for
    16 tokens). Set OMP_WAIT_POLICY=ACTIVE yourself on a dedicated machine if you prefer.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError:
        raise TeacherError(
            "running a GGUF model in process needs llama-cpp-python, which is not installed",
            hint='pip install "alpacakit[llama]"  (builds llama.cpp from source: several minutes), '
            "or use an OpenAI-compatible endpoint: teacher.model=openai:MODEL with teacher.base_url",
        ) from None
    return llama_cpp


def _build_has_amx(llama_cpp: Any) -> bool:
    try:
        return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    except Exception:  # noqa: BLE001 - an older binding without system info
        return False


def open_llama(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """`llama_cpp.Llama(model_path=path, verbose=False, **kwargs)`, safe on Intel AMX machines.

    A llama.cpp built on a CPU with AMX (Sapphire Rapids and later; pip builds natively) moves
    quantised weights into an AMX buffer whose matmul segfaults on the first forward pass on
    some machines, this one included (llama.cpp issue #20824, open). When the build has AMX,
    weights are loaded without the "extra" repacking buffer types (plain CPU kernels: slower
    prompt processing, no crash). Set ALPACAKIT_LLAMA_EXTRA_BUFFERS=1 to keep them. Every stage
    that runs a GGUF in process should open it here.
    """
    llama_cpp = import_llama_cpp()
    import llama_cpp.llama as llama_module

    kwargs.setdefault("verbose", False)
    keep = os.environ.get("ALPACAKIT_LLAMA_EXTRA_BUFFERS") == "1"
    defaults = llama_module.llama_cpp.llama_model_default_params
    if keep or not _build_has_amx(llama_cpp) or not hasattr(defaults(), "use_extra_bufts"):
        return llama_cpp.Llama(model_path=str(path), **kwargs)

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    # Llama() takes no switch for this; swap the defaults it reads, for this one construction.
    with _LOAD_LOCK:
        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = defaults


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppTeacher:
    """A GGUF model (embedded name or path) loaded in this process. Build it with `make_teacher`."""

    # one generation at a time: requests in flight beyond it are only queued (see run_requests)
    finish_in_flight = False

    def __init__(self, config: Any, tracker: CostTracker | None = None):
        from alpacakit.models import is_embedded, resolve_gguf

        self.config = config
        self.tracker = tracker
        self.api = config.api
        self.path = resolve_gguf(config.model)
        self.name = config.model.strip().lower() if is_embedded(config.model) else self.path.stem
        llama_cpp = import_llama_cpp()
        self.n_threads = config.n_threads or default_threads()
        try:
            self._llm = open_llama(
                self.path,
                n_ctx=config.n_ctx,
                n_threads=self.n_threads,
                seed=config.seed if config.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
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
        if seed is not None:  # else the model's own sequence, seeded once from config.seed at load
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
        """Runs in a worker thread, one at a time per model.

        The stall timeout is enforced by a logits processor (llama.cpp calls it before sampling
        each token, on both the chat and the raw route; `create_chat_completion` takes no
        stopping criteria): when the gap since the previous token exceeds `timeout_s` it leaves
        end-of-sequence as the only choice.
        """
        from llama_cpp import LogitsProcessorList

        last_token_at = time.monotonic()
        timed_out = False
        eos = self._llm.token_eos()

        def stop_past_deadline(_tokens: Any, scores: Any) -> Any:
            nonlocal timed_out, last_token_at
            now = time.monotonic()
            if timed_out or now - last_token_at > timeout_s:
                timed_out = True
                scores[:] = -float("inf")
                scores[eos] = 0.0
            last_token_at = now
            return scores

        with self._lock:
            if not self._finalizer.alive:
                raise TeacherError(f"{self.name} was closed", hint="create a new teacher with make_teacher()")
            fn = self._llm.create_chat_completion if route == "chat" else self._llm.create_completion
            try:
                out = fn(**kwargs, logits_processor=LogitsProcessorList([stop_past_deadline]))
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

    # ------------------------------------------------------------------ streaming and token counts
    # Optional extras of the Teacher protocol (see teachers/base.py), used by `alpacakit chat` and
    # `alpacakit serve`: text pieces as they are generated, then the Completion; and exact token
    # counts for request validation.

    _chat_formatter: Any = None

    @property
    def context_window(self) -> int:
        """Tokens the loaded model can attend to (prompt + answer): the n_ctx it was loaded with."""
        return int(self._llm.n_ctx())

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's vocabulary (no BOS; special-token text counts as one token)."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_chat_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of chat(messages): the messages rendered with the GGUF's chat template, as
        llama.cpp renders them (so a server can refuse an over-long prompt before queueing it)."""
        if self._chat_formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                return sum(self.count_tokens(m.get("content") or "") for m in messages)
            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            text = self._llm._model.token_get_text
            self._chat_formatter = Jinja2ChatFormatter(template=template, eos_token=text(eos) if eos != -1 else "",
                                                       bos_token=text(bos) if bos != -1 else "")
        prompt = self._chat_formatter(messages=messages).prompt
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    async def stream_chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                          temperature: float | None = None, top_p: float | None = None,
                          stop: list[str] | None = None, seed: int | None = None) -> AsyncIterator[str | Completion]:
        """chat(), streamed. Closing the iterator early stops generation within one token."""
        if not self.has_chat_template or self.api == "completions":
            await self.chat(messages)  # raises the same TeacherError as chat()
        inner = self._stream("chat", {"messages": messages}, max_tokens, temperature, top_p, stop, seed)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def stream_complete(self, prompt: str, *, max_tokens: int | None = None,
                              temperature: float | None = None, top_p: float | None = None,
                              stop: list[str] | None = None, seed: int | None = None) -> AsyncIterator[str | Completion]:
        """complete(), streamed (a raw continuation; with api=chat, one user message)."""
        if self.api == "chat":
            inner = self.stream_chat([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, stop=stop, seed=seed)
            async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
                async for item in inner:
                    yield item
            return
        inner = self._stream("completions", {"prompt": prompt}, max_tokens, temperature, top_p, stop, seed)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def _stream(self, route: str, payload: dict[str, Any], max_tokens: int | None, temperature: float | None,
                      top_p: float | None, stop: list[str] | None, seed: int | None) -> AsyncIterator[str | Completion]:
        from alpacakit.teachers.streaming import stream_thread

        cfg = self.config
        kwargs: dict[str, Any] = {
            **payload,
            "max_tokens": max_tokens if max_tokens is not None else cfg.max_tokens,
            "temperature": temperature if temperature is not None else cfg.temperature,
            "top_p": top_p if top_p is not None else cfg.top_p,
            "stop": list(stop) if stop else None,
            "stream": True,
        }
        if seed is not None:
            kwargs["seed"] = seed
        t0 = time.monotonic()
        async with self._loop_lock():
            stream = stream_thread(lambda emit, cancelled: self._generate_stream(route, kwargs, cfg.timeout_s, emit,
                                                                                 cancelled), name=f"llama-{self.name}")
            try:
                async for item in stream:
                    if isinstance(item, Completion):
                        item.latency_s = time.monotonic() - t0
                        if self.tracker is not None:
                            item.cost = self.tracker.charge(item.usage, price=cfg.price, attempts=1)
                        else:
                            item.cost = cost_of(item.usage, cfg.price)
                    yield item
            finally:
                await stream.aclose()

    def _generate_stream(self, route: str, kwargs: dict[str, Any], timeout_s: float, emit: Any,
                         cancelled: threading.Event) -> Completion:
        """Worker thread: stream one generation under the model lock, emitting text pieces.

        A logits processor (called before each token is sampled) ends generation past the
        deadline or once the reader has gone, by leaving end-of-sequence as the only choice; it
        also counts the tokens, since llama.cpp's streamed chunks carry no usage: the first call
        sees the whole prompt, and each call samples one token (the last, when it is
        end-of-sequence, is not part of the answer).
        """
        from llama_cpp import LogitsProcessorList

        deadline = time.monotonic() + timeout_s
        timed_out = False
        calls = 0
        prompt_tokens = 0
        eos = self._llm.token_eos()

        def watch(tokens: Any, scores: Any) -> Any:
            nonlocal timed_out, calls, prompt_tokens
            if calls == 0:
                prompt_tokens = len(tokens)
            calls += 1
            if not timed_out and time.monotonic() > deadline:
                timed_out = True
            if timed_out or cancelled.is_set():
                scores[:] = -float("inf")
                scores[eos] = 0.0
            return scores

        parts: list[str] = []
        finish = "stop"
        with self._lock:
            if not self._finalizer.alive:
                raise TeacherError(f"{self.name} was closed", hint="create a new teacher with make_teacher()")
            fn = self._llm.create_chat_completion if route == "chat" else self._llm.create_completion
            try:
                chunks = fn(**kwargs, logits_processor=LogitsProcessorList([watch]))
                try:
                    for chunk in chunks:
                        choice = chunk["choices"][0]
                        piece = (choice.get("delta") or {}).get("content") if route == "chat" else choice.get("text")
                        if piece:
                            parts.append(piece)
                            emit(piece)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            except ValueError as e:  # e.g. "Requested tokens (N) exceed context window of M"
                raise TeacherError(f"{self.name}: {e}",
                                   hint="raise teacher.n_ctx or shorten the prompt / max_tokens") from None
        if timed_out:
            raise TeacherError(f"{self.name}: generation timed out after {timeout_s:g} s",
                               hint="raise the timeout, lower max_tokens, or use a smaller model")
        completion_tokens = max(0, calls - 1) if finish == "stop" else calls
        return Completion(text="".join(parts), finish_reason=finish, usage=Usage(prompt_tokens, completion_tokens),
                          model=self.name)
