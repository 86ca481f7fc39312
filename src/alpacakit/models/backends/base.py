"""The one interface every model backend speaks.

Generation, judging, evaluation and the serve tests all talk to models through `ModelBackend`, so a
local GGUF file and a paid API are interchangeable. Calls are async: remote backends run many
requests at once (bounded by `max_concurrency`); local backends serialise on one model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, found in a local model's cache (not evaluated again)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass
class Completion:
    """One model answer. `finish_reason` is 'stop' or 'length' (hit max_tokens)."""

    text: str
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    request_id: str | None = None
    cost: float = 0.0
    attempts: int = 1
    latency_s: float = 0.0
    # Why a 'stop' answer ended, where the backend knows: 'eos' (the model ended it) or
    # 'stop_string' (a stop string cut it, e.g. a base model starting a new "### Instruction:").
    stopped_by: str | None = None
    # Failed attempts before this answer that the endpoint may have billed (a timeout, an
    # unreadable 200), and their worst-case cost: not in `cost`, which is what was confirmed.
    maybe_billed_attempts: int = 0
    maybe_billed_usd: float = 0.0


@dataclass
class Watch:
    """A caller's window on one local generation, for backends with `accepts_watch = True`
    (llama.cpp): `text` grows as tokens are generated, and setting `cut` ends the generation at
    the next step as if it had reached max_tokens (finish_reason 'length'), keeping its text and
    usage. Generation uses it to stop every request in flight once the target is in sight,
    without throwing away what they already wrote."""

    text: str = ""
    cut: threading.Event = field(default_factory=threading.Event)


@runtime_checkable
class ModelBackend(Protocol):
    """A model that answers. `name` identifies it in manifests and outputs.

    Optional extras, not part of the protocol check (a backend may have them; callers test
    with `getattr`), used by `alpacakit chat` and `alpacakit serve`:

    - `stream_chat(messages, **same keywords as chat)` and `stream_complete(prompt, **...)`:
      async generators yielding text pieces (str) as they are generated, then the final
      `Completion`. Closing the generator early stops the generation (within a token for
      local models). `models/backends/streaming.py` has the thread-to-async bridge local backends use.
    - `count_tokens(text) -> int` and `count_chat_tokens(messages) -> int`: exact prompt
      lengths in the model's tokens (servers refuse over-long prompts before queueing them).
    - `has_chat_template: bool`: False for a local base model that can only continue text.
    - `accepts_watch: bool`: chat() and complete() take `watch=Watch()` (see `Watch`).
    """

    name: str

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion: ...

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...
