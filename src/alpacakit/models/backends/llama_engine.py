"""Continuous batching for a GGUF model in this process: several requests decode together.

Why: llama-cpp-python's `Llama` decodes one sequence at a time, and on a CPU one decoding step
of one sequence leaves most of the machine idle (it is bound by reading the weights, not by
arithmetic). One `llama_decode` over several sequences' next tokens costs little more than
over one: 4-6 sequences give about twice the tokens/s (`benchmarks/batched_decode.py`,
`benchmarks/engine_throughput.py`). Generation, answering and judging all send several
requests at once, so a local teacher should serve them together, as llama.cpp's own server
does. The engine drives the low-level API that llama-cpp-python binds:

- one llama context with `n_slots` sequences, each with its own KV cache of `n_ctx_per_slot`
  tokens, owned by one worker thread;
- requests join and leave at any step: each step feeds every decoding sequence's last token
  and, in the room left in the batch, chunks of waiting prompts (so a long prompt never stops
  the others for more than one chunk);
- each sequence samples with its own llama.cpp sampler chain (the same chain `Llama` builds:
  top-k 40, top-p, min-p 0.05, temperature, seeded), and stops at end-of-generation tokens,
  stop strings (never shown in part, see `StopScanner`) or `max_tokens`;
- prefix reuse: a finished slot keeps its KV cache, and a new request takes the free slot
  whose cached tokens share the longest prefix with its prompt, so only the rest is evaluated
  (the self-instruct requirements, a judge's instructions: prompt evaluation is ~40 tokens/s
  for a 1.5B model on 2 cores, so a shared 250-token preamble is 6 s saved per request).
  Models with sliding-window or recurrent layers, whose cache cannot be cut at any position,
  always start from an empty sequence.

A request can be cancelled (its result says so) or cut (it ends now as if it had reached
`max_tokens`, keeping its text). A request that makes no progress (no prompt chunk, no token)
for `stall_timeout_s` fails with `GenerationTimeout`.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alpacakit.errors import TeacherError
from alpacakit.models.backends.streaming import StopScanner

log = logging.getLogger(__name__)

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed per sampler


class GenerationTimeout(Exception):
    """No prompt chunk and no token for `stall_timeout_s` seconds."""


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens. temperature 0 is greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    seed: int = RANDOM_SEED


@dataclass
class Job:
    """One request to the engine. `future` gets a `JobResult` (or an exception)."""

    tokens: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    stall_timeout_s: float = 300.0
    on_text: Callable[[str], None] | None = None  # called in the engine thread, text as it settles
    cancelled: threading.Event = field(default_factory=threading.Event)
    cut: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class JobResult:
    text: str
    finish_reason: str  # 'stop', 'length' (max_tokens, context full, or cut) or 'cancelled'
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int  # prompt tokens found in a slot's cache, not evaluated again
    stopped_by: str | None = None  # 'eos' (the model ended its answer) or 'stop_string' (a stop string cut it)


@dataclass
class EngineStats:
    steps: int = 0
    decoded_tokens: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    max_active: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _abandoned(job: Job) -> bool:
    """Cancelled by the caller (its event, or its future cancelled by asyncio)."""
    return job.cancelled.is_set() or job.future.cancelled()


class _Slot:
    """One sequence of the context: its cached tokens and, while busy, the job it serves."""

    def __init__(self, seq: int):
        self.seq = seq
        self.cached: list[int] = []  # tokens whose keys/values are in this sequence's cache
        self.job: Job | None = None
        self.sampler: Any = None
        self.admitted = 0  # admission order: earlier prompts get batch room first

    def start(self, job: Job, reuse: int, order: int) -> None:
        self.job = job
        self.prompt_left = job.tokens[reuse:]
        self.reused = reuse
        self.generated: list[int] = []
        self.next_token: int | None = None
        self.logits_at = -1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.scanner = StopScanner(job.stop)
        self.last_progress = time.monotonic()
        self.admitted = order


class BatchEngine:
    """A worker thread that decodes up to `n_slots` requests together (see the module doc).

    `model` is the `llama_model` pointer of a loaded `llama_cpp.Llama` (`llm._model.model`),
    which must outlive the engine: `close()` the engine first.
    """

    def __init__(
        self,
        model: Any,
        *,
        n_slots: int,
        n_ctx_per_slot: int,
        n_threads: int,
        n_batch: int = 512,
        prefill_chunk: int = 128,
        name: str = "model",
        prefix_reuse: bool = True,
        flash_attn: bool = False,
        kv_unified: bool = False,
    ):
        import llama_cpp

        self._lib = llama_cpp
        self.name = name
        self.n_slots = n_slots
        self.n_ctx_per_slot = n_ctx_per_slot
        self.n_batch = n_batch
        self.prefill_chunk = prefill_chunk
        self.min_copy = 32  # shorter shared prefixes are cheaper to evaluate again than to copy
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx_per_slot * n_slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        # One cache per sequence: with a unified cache every step attends over all sequences'
        # cells (masked), which costs more as kept prefixes pile up.
        params.kv_unified = kv_unified
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED if not flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        )
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise TeacherError(
                f"{name}: llama.cpp could not create a context for {n_slots} sequences of {n_ctx_per_slot} tokens",
                hint="lower teacher.max_concurrency or teacher.n_ctx",
            )
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        # Sliding-window and recurrent caches drop or fold old positions: no cutting them at a prefix.
        self.prefix_reuse = (
            prefix_reuse and llama_cpp.llama_model_n_swa(model) == 0 and not llama_cpp.llama_model_is_recurrent(model)
        )
        self.stats = EngineStats()
        self._slots = [_Slot(i) for i in range(n_slots)]
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._order = 0
        self._thread = threading.Thread(target=self._run, name=f"llama-engine-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue `job`; its future resolves to a JobResult. Raises TeacherError at once for a
        prompt that cannot fit, or after close()."""
        if len(job.tokens) >= self.n_ctx_per_slot:
            raise TeacherError(
                f"{self.name}: Requested tokens ({len(job.tokens)}) exceed context window of {self.n_ctx_per_slot}",
                hint="raise teacher.n_ctx or shorten the prompt / max_tokens",
            )
        if not job.tokens:
            raise TeacherError(f"{self.name}: empty prompt", hint="send at least one token of prompt")
        with self._cv:
            if self._closing:
                raise TeacherError(f"{self.name} was closed", hint="create a new teacher with make_backend()")
            self._pending.append(job)
            self._cv.notify()
        return job.future

    def close(self) -> None:
        """Stop the worker (jobs still queued or running fail) and free the context. Idempotent."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self._pending and not self._busy():
                        self._cv.wait()
                    if self._closing:
                        break
                    self._admit()
                if self._busy():
                    self._step()
        except BaseException as e:  # noqa: BLE001 - never leave a caller waiting forever
            log.exception("%s: engine failed", self.name)
            self._fail_all(TeacherError(f"{self.name}: llama.cpp engine failed: {e}"))
        finally:
            self._fail_all(TeacherError(f"{self.name} was closed", hint="create a new teacher with make_backend()"))
            self._free()

    def _busy(self) -> bool:
        return any(s.job is not None for s in self._slots)

    def _admit(self) -> None:
        """Give queued jobs free slots, each the one whose cache shares the longest prefix.

        A prefix that a busy slot holds (or is about to hold: its prompt is being evaluated)
        and no free slot does is copied from that slot instead of being evaluated again, so
        requests sent together with a common preamble pay for it once. Queued jobs wait for
        such a prefix to be ready; prompt evaluation is the CPU's bottleneck either way.
        """
        while self._pending:
            free = [s for s in self._slots if s.job is None]
            if not free:
                return
            job = self._pending[0]
            if _abandoned(job):
                self._pending.popleft()
                self._resolve(job, JobResult("", "cancelled", len(job.tokens), 0, 0))
                continue
            last = len(job.tokens) - 1  # the last prompt token is evaluated for its logits
            slot, reuse = max(((s, self._shared_prefix(s.cached, job.tokens)) for s in free), key=lambda sr: sr[1])
            reuse = min(reuse, last)
            donor, shared = None, reuse
            for busy in (s for s in self._slots if s.job is not None):
                coming = min(self._shared_prefix(busy.job.tokens, job.tokens), last)
                if coming >= shared + self.min_copy:
                    if len(busy.cached) < coming:
                        return  # its prompt is still being evaluated: wait for the shared part
                    donor, shared = busy, coming
            self._pending.popleft()
            if donor is not None:
                slot = min(free, key=lambda s: len(s.cached))
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                self._lib.llama_memory_seq_cp(self._mem, donor.seq, slot.seq, -1, -1)  # whole sequences only
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, shared, -1)
                slot.cached = job.tokens[:shared]
                reuse = shared
            elif reuse < len(slot.cached):
                if not self._lib.llama_memory_seq_rm(self._mem, slot.seq, reuse, -1):
                    self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                    reuse = 0
                del slot.cached[reuse:]
            self._order += 1
            slot.start(job, reuse, self._order)
            slot.sampler = self._make_sampler(job.sampling)
            self.stats.reused_tokens += reuse

    def _shared_prefix(self, cached: list[int], tokens: list[int]) -> int:
        if not self.prefix_reuse:
            return 0
        n = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            n += 1
        return n

    def _make_sampler(self, s: Sampling) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if s.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(s.top_k))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(s.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(s.min_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(s.temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
        return chain

    def _step(self) -> None:
        """One llama_decode: every decoding slot's last token, then prompt chunks in the room left."""
        lib, batch = self._lib, self._batch
        for s in self._slots:
            if s.job is not None and (_abandoned(s.job) or s.job.cut.is_set()):
                self._finish(s, "cancelled" if _abandoned(s.job) else "length")
        active = [s for s in self._slots if s.job is not None]
        if not active:
            return
        self.stats.max_active = max(self.stats.max_active, len(active))
        batch.n_tokens = 0
        fed: list[tuple[_Slot, list[int]]] = []
        decoding = [s for s in active if not s.prompt_left]
        for s in decoding:
            s.logits_at = self._add(s.next_token, len(s.cached), s.seq, True)
            fed.append((s, [s.next_token]))
        room = self.n_batch - len(decoding)
        if decoding:
            room = min(room, self.prefill_chunk)  # keep the decoding sequences moving
        for s in sorted((s for s in active if s.prompt_left), key=lambda s: s.admitted):
            if room <= 0:
                break
            chunk, s.prompt_left = s.prompt_left[:room], s.prompt_left[room:]
            room -= len(chunk)
            for j, tok in enumerate(chunk):
                at = self._add(tok, len(s.cached) + j, s.seq, not s.prompt_left and j == len(chunk) - 1)
            s.logits_at = at if not s.prompt_left else -1
            fed.append((s, chunk))
            self.stats.prompt_tokens += len(chunk)
        t0 = time.monotonic()
        rc = lib.llama_decode(self._ctx, batch)
        now = time.monotonic()
        self.stats.busy_s += now - t0
        self.stats.steps += 1
        if rc != 0:
            for s, _ in fed:
                self._lib.llama_memory_seq_rm(self._mem, s.seq, -1, -1)
                s.cached.clear()
                self._fail(
                    s,
                    TeacherError(
                        f"{self.name}: llama_decode failed (code {rc})",
                        hint="lower teacher.max_concurrency or teacher.n_ctx; see llama.cpp's log",
                    ),
                )
            return
        for s, toks in fed:
            s.cached.extend(toks)
            gap, s.last_progress = now - s.last_progress, now
            if gap > s.job.stall_timeout_s:
                self._fail(s, GenerationTimeout())
                continue
            if s.logits_at >= 0:
                self._take_token(s, lib.llama_sampler_sample(s.sampler, self._ctx, s.logits_at))
        for s in self._slots:  # queued behind others' prompt chunks for too long
            if s.job is not None and now - s.last_progress > s.job.stall_timeout_s:
                self._fail(s, GenerationTimeout())

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self._batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        b.n_tokens = i + 1
        return i

    def _take_token(self, s: _Slot, token: int) -> None:
        job = s.job
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(s, "stop")
            return
        s.generated.append(token)
        self.stats.decoded_tokens += 1
        text = s.decoder.decode(self._token_bytes(token))
        shown = s.scanner.feed(text)
        if shown and job.on_text is not None:
            job.on_text(shown)
        if s.scanner.stopped:
            self._finish(s, "stop")
        elif len(s.generated) >= job.max_tokens or len(s.cached) + 1 >= self.n_ctx_per_slot:
            self._finish(s, "length")
        else:
            s.next_token = token

    def _token_bytes(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it to the size llama.cpp asked for
            self._piece = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[: max(n, 0)]

    def _finish(self, s: _Slot, reason: str) -> None:
        job = s.job
        if reason != "cancelled":
            tail = s.scanner.feed(s.decoder.decode(b"", final=True)) + s.scanner.flush()
            if tail and job.on_text is not None:
                job.on_text(tail)
        stopped_by = None if reason != "stop" else ("stop_string" if s.scanner.stopped else "eos")
        result = JobResult(s.scanner.text, reason, len(job.tokens), len(s.generated), s.reused, stopped_by)
        self._release(s)
        self._resolve(job, result)

    def _fail(self, s: _Slot, exc: BaseException) -> None:
        job = s.job
        self._release(s)
        if not job.future.done():
            job.future.set_exception(exc)

    def _release(self, s: _Slot) -> None:
        if s.sampler is not None:
            self._lib.llama_sampler_free(s.sampler)
            s.sampler = None
        s.job = None

    @staticmethod
    def _resolve(job: Job, result: JobResult) -> None:
        if not job.future.done():
            job.future.set_result(result)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            pending, self._pending = list(self._pending), deque()
        for job in pending:
            if not job.future.done():
                job.future.set_exception(exc)
        for s in self._slots:
            if s.job is not None:
                self._fail(s, exc)

    def _free(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None
