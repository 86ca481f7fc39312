"""A local GGUF model as a `ModelBackend`, in process, through llama-cpp-python.

- chat() renders messages with the model's own chat template (`create_chat_completion`,
  which reads `tokenizer.chat_template` from the GGUF); a model without one (a base model such
  as gemma-3-270m) refuses chat() rather than guessing a format: use complete().
- complete() is a raw text continuation (`create_completion`), no template.
- Requests in flight at once decode together (`teacher.max_concurrency` of them, continuous batching
  in `llama_engine.BatchEngine`): on a CPU that is about twice the tokens/s of one at a time.
  The engine runs in its own thread, so the event loop stays free for other work.
- Usage comes from llama.cpp's own token counts; cost is usage x `config.price`, 0 by default.
- `timeout_s` is a stall timeout: a generation that makes no progress (no prompt chunk, no new
  token) for `timeout_s` seconds stops and is retried like a remote timeout (models.md reports
  rare stalls). A long generation that keeps producing tokens is never cut off, however slow the
  machine: retrying it would only pay for the same tokens again.
- Sampling: temperature, top_p, stop and max_tokens as given; llama-cpp-python's defaults for
  the rest (top_k=40, min_p=0.05), which keep small models on track. With `config.seed`, the
  n-th request of this teacher samples with seed `config.seed + n`, so a run is reproducible
  while successive requests still differ; a `seed` passed to a call is that call's seed.
- The model is freed with `Llama.close()` in `aclose()`, or at the latest at interpreter exit
  (a `weakref.finalize`): left to `Llama.__del__` during shutdown it prints a TypeError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from alpacakit.errors import TeacherError
from alpacakit.models.backends.base import Completion, Usage, Watch
from alpacakit.models.backends.llama_engine import RANDOM_SEED, BatchEngine, GenerationTimeout, Job, JobResult, Sampling
from alpacakit.teachers.accounting import CostTracker, cost_of

if TYPE_CHECKING:
    from alpacakit.teachers.config import TeacherConfig

log = logging.getLogger(__name__)


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
    from alpacakit.models.backends.llama_log import quiet_llama_logs

    quiet_llama_logs(llama_cpp)
    return llama_cpp


def _build_has_amx(llama_cpp: Any) -> bool:
    try:
        return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
    except Exception:  # noqa: BLE001 - an older binding without system info
        return False


def gpu_layers(llama_cpp: Any) -> int:
    """Layers to offload: all (-1) when this llama.cpp build has CUDA/Metal, else 0.
    $ALPACAKIT_N_GPU_LAYERS overrides (e.g. 20 to fit a model larger than the GPU's memory)."""
    env = os.environ.get("ALPACAKIT_N_GPU_LAYERS")
    if env:
        return int(env)
    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


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
    kwargs.setdefault("n_gpu_layers", gpu_layers(llama_cpp))
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


def _format_stop(metadata: dict[str, str]) -> list[str]:
    """Stop strings of the prompt format that `alpacakit export gguf` saved in the file, if any."""
    try:
        fmt = json.loads(metadata.get("alpacakit.prompt_format") or "{}")
    except ValueError:
        return []
    stop = fmt.get("stop") if isinstance(fmt, dict) else None
    return [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppModel:
    """A GGUF model (embedded name or path) loaded in this process. Build it with `make_backend`."""

    # Requests in flight when a job reaches its target are still generating together with the
    # rest and cost nothing: callers may cancel them (see alpacakit.jobs.engine).
    finish_in_flight = False
    accepts_watch = True  # chat()/complete() take watch=Watch(): see the text grow, cut it short

    def __init__(self, config: TeacherConfig, tracker: CostTracker | None = None):
        from alpacakit.models import is_embedded, resolve_gguf

        self.config = config
        self.tracker = tracker
        self.api = config.api
        self.path = resolve_gguf(config.model)
        self.name = config.model.strip().lower() if is_embedded(config.model) else self.path.stem
        self.n_threads = config.n_threads or default_threads()
        try:
            # This Llama holds the weights and the tokenizer; generation runs in the engine's own
            # context, so its context stays small.
            self._llm = open_llama(self.path, n_ctx=min(config.n_ctx, 256), n_threads=self.n_threads)
        except (ValueError, RuntimeError) as e:
            raise TeacherError(
                f"llama.cpp could not load {self.path}: {e}",
                hint="check that the file is a complete GGUF model that this llama-cpp-python supports",
            ) from None
        try:
            self._engine = BatchEngine(
                self._llm._model.model,
                n_slots=config.max_concurrency,
                n_ctx_per_slot=config.n_ctx,
                n_threads=self.n_threads,
                name=self.name,
            )
        except BaseException:
            _close_llama(self._llm)
            raise
        self._finalizer = weakref.finalize(self, _close_all, self._engine, self._llm)
        self.has_chat_template = bool(self._llm.metadata.get("tokenizer.chat_template"))
        self.format_stop = _format_stop(self._llm.metadata)
        self._seeds = itertools.count(config.seed) if config.seed is not None else None

    @property
    def max_concurrency(self) -> int:
        """Requests worth having in flight: one per sequence the engine decodes together."""
        return self._engine.n_slots

    @property
    def engine_stats(self) -> dict[str, Any]:
        return self._engine.stats.as_dict()

    def describe(self) -> dict[str, Any]:
        """For manifests: the model file (name, source, path, sha256, licence) and how it ran."""
        from alpacakit.models import describe, is_embedded

        info = describe(self.config.model if is_embedded(self.config.model) else self.path)
        info.update(
            {
                "backend": "llama.cpp",
                "n_ctx": self.config.n_ctx,
                "max_concurrency": self._engine.n_slots,
                "chat_template": self.has_chat_template,
            }
        )
        return info

    # ------------------------------------------------------------------ public API

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        watch: Watch | None = None,
    ) -> Completion:
        self._check_chat()
        return await self._call(
            self._chat_tokens(messages), max_tokens, temperature, top_p, self._chat_stop(stop), seed, watch
        )

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        watch: Watch | None = None,
    ) -> Completion:
        if self.api == "chat":
            return await self.chat(
                [{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
                watch=watch,
            )
        return await self._call(self._raw_tokens(prompt), max_tokens, temperature, top_p, stop, seed, watch)

    def close(self) -> None:
        """Free the model now (idempotent)."""
        self._finalizer()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> LlamaCppModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    def _check_chat(self) -> None:
        if self.api == "completions":
            raise TeacherError(
                f"{self.name} is configured with api=completions (raw text), so it cannot chat",
                hint="set teacher.api=auto or chat, or send a raw prompt with complete()",
            )
        if not self.has_chat_template:
            raise TeacherError(
                f"{self.name} has no chat template (a base model), so it cannot answer chat messages",
                hint="use raw completions (teacher.api=completions / complete()), or an instruct model such as "
                "qwen2.5-coder-1.5b-instruct",
            )

    def _chat_stop(self, stop: list[str] | None) -> list[str]:
        """The caller's stop strings plus those of the prompt format the model was trained in,
        which its chat template reproduces (a small student may go on to write the next turn)."""
        return [*self.format_stop, *[s for s in stop or [] if s not in self.format_stop]]

    def _alive(self) -> None:
        if not self._finalizer.alive:
            raise TeacherError(f"{self.name} was closed", hint="create a new teacher with make_backend()")

    def _raw_tokens(self, prompt: str) -> list[int]:
        """A raw continuation, tokenized as `Llama.create_completion` does (BOS when the model wants one)."""
        self._alive()
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    def _chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The messages through the GGUF's chat template, tokenized as `create_chat_completion` does."""
        self._alive()
        result = self._chat_format()(messages=messages)
        return self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _job(
        self,
        tokens: list[int],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: list[str] | None,
        seed: int | None,
        on_text: Any = None,
        cancelled: threading.Event | None = None,
    ) -> Job:
        cfg = self.config
        if seed is None:
            seed = next(self._seeds) if self._seeds is not None else RANDOM_SEED
        sampling = Sampling(
            temperature=temperature if temperature is not None else cfg.temperature,
            top_p=top_p if top_p is not None else cfg.top_p,
            seed=seed,
        )
        job = Job(
            tokens=tokens,
            max_tokens=max_tokens if max_tokens is not None else cfg.max_tokens,
            sampling=sampling,
            stop=list(stop or []),
            stall_timeout_s=cfg.timeout_s,
            on_text=on_text,
        )
        if cancelled is not None:
            job.cancelled = cancelled
        return job

    async def _call(
        self,
        tokens: list[int],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: list[str] | None,
        seed: int | None,
        watch: Watch | None = None,
    ) -> Completion:
        cfg = self.config
        t0 = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            job = self._job(tokens, max_tokens, temperature, top_p, stop, seed)
            if watch is not None:
                watch.text = ""
                job.cut = watch.cut

                def grow(piece: str, w: Watch = watch) -> None:
                    w.text += piece

                job.on_text = grow
            try:
                result = await asyncio.wrap_future(self._engine.submit(job))
                break
            except GenerationTimeout:
                if attempts > cfg.max_retries:
                    if self.tracker is not None:
                        self.tracker.record_failure(attempts)
                    raise TeacherError(
                        f"{self.name}: generation timed out after {cfg.timeout_s:g} s, {attempts} attempt"
                        f"{'s' if attempts > 1 else ''}",
                        hint="raise teacher.timeout_s, lower teacher.max_tokens, or use a smaller model",
                    ) from None
                log.info("%s: attempt %d timed out after %g s; retrying", self.name, attempts, cfg.timeout_s)
            finally:
                job.cancelled.set()  # a no-op once it finished; stops it if we were cancelled
        return self._completion(result, attempts, time.monotonic() - t0)

    def _completion(self, result: JobResult, attempts: int, latency_s: float) -> Completion:
        usage = Usage(result.prompt_tokens, result.completion_tokens, result.reused_tokens)
        completion = Completion(
            text=result.text,
            finish_reason=result.finish_reason,
            usage=usage,
            model=self.name,
            attempts=attempts,
            latency_s=latency_s,
            stopped_by=result.stopped_by,
        )
        if self.tracker is not None:
            completion.cost = self.tracker.charge(usage, price=self.config.price, attempts=attempts)
        else:
            completion.cost = cost_of(usage, self.config.price)
        return completion

    # ------------------------------------------------------------------ streaming and token counts
    # Optional extras of the ModelBackend protocol (see models/backends/base.py), used by `alpacakit chat` and
    # `alpacakit serve`: text pieces as they are generated, then the Completion; and exact token
    # counts for request validation.

    _chat_formatter: Any = None

    @property
    def context_window(self) -> int:
        """Tokens one request can attend to (prompt + answer): `teacher.n_ctx`."""
        return int(self._engine.n_ctx_per_slot)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's vocabulary (no BOS; special-token text counts as one token)."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _chat_format(self) -> Any:
        """The GGUF's chat template as llama-cpp-python renders it (`Jinja2ChatFormatter`)."""
        if self._chat_formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            text = self._llm._model.token_get_text
            self._chat_formatter = Jinja2ChatFormatter(
                template=self._llm.metadata["tokenizer.chat_template"],
                eos_token=text(eos) if eos != -1 else "",
                bos_token=text(bos) if bos != -1 else "",
            )
        return self._chat_formatter

    def count_chat_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of chat(messages): the messages rendered with the GGUF's chat template, as
        llama.cpp renders them (so a server can refuse an over-long prompt before queueing it)."""
        if not self.has_chat_template:
            return sum(self.count_tokens(m.get("content") or "") for m in messages)
        return len(self._chat_tokens(messages))

    async def stream_chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        """chat(), streamed. Closing the iterator early stops generation within one step."""
        self._check_chat()
        inner = self._stream(self._chat_tokens(messages), max_tokens, temperature, top_p, self._chat_stop(stop), seed)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def stream_complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        """complete(), streamed (a raw continuation; with api=chat, one user message)."""
        if self.api == "chat":
            inner = self.stream_chat(
                [{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stop,
                seed=seed,
            )
        else:
            inner = self._stream(self._raw_tokens(prompt), max_tokens, temperature, top_p, stop, seed)
        async with contextlib.aclosing(inner):  # closing us closes it now, not at GC
            async for item in inner:
                yield item

    async def _stream(
        self,
        tokens: list[int],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: list[str] | None,
        seed: int | None,
    ) -> AsyncIterator[str | Completion]:
        from alpacakit.models.backends.streaming import stream_thread

        t0 = time.monotonic()

        def produce(emit: Any, cancelled: threading.Event) -> Completion:
            job = self._job(tokens, max_tokens, temperature, top_p, stop, seed, on_text=emit, cancelled=cancelled)
            try:
                result = self._engine.submit(job).result()
            except GenerationTimeout:
                raise TeacherError(
                    f"{self.name}: generation timed out after {self.config.timeout_s:g} s",
                    hint="raise the timeout, lower max_tokens, or use a smaller model",
                ) from None
            return self._completion(result, 1, time.monotonic() - t0)

        stream = stream_thread(produce, name=f"llama-{self.name}")
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()


def _close_all(engine: BatchEngine, llm: Any) -> None:
    """The engine's context first (it uses the model), then the model."""
    try:
        engine.close()
    finally:
        _close_llama(llm)
