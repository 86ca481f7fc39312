"""The one interface every model backend speaks.

Generation, judging, evaluation and the serve tests all talk to models through `Teacher`, so a
local GGUF file and a paid API are interchangeable. Calls are async: remote backends run many
requests at once (bounded by `max_concurrency`); local backends serialise on one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


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


@runtime_checkable
class Teacher(Protocol):
    """A model that answers. `name` identifies it in manifests and outputs.

    Optional extras, not part of the protocol check (a backend may have them; callers test
    with `getattr`), used by `alpacakit chat` and `alpacakit serve`:

    - `stream_chat(messages, **same keywords as chat)` and `stream_complete(prompt, **...)`:
      async generators yielding text pieces (str) as they are generated, then the final
      `Completion`. Closing the generator early stops the generation (within a token for
      local models). `teachers/streaming.py` has the thread-to-async bridge local backends use.
    - `count_tokens(text) -> int` and `count_chat_tokens(messages) -> int`: exact prompt
      lengths in the model's tokens (servers refuse over-long prompts before queueing them).
    - `has_chat_template: bool`: False for a local base model that can only continue text.
    """

    name: str

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None, top_p: float | None = None,
                   stop: list[str] | None = None, seed: int | None = None) -> Completion: ...

    async def complete(self, prompt: str, *, max_tokens: int | None = None,
                       temperature: float | None = None, top_p: float | None = None,
                       stop: list[str] | None = None, seed: int | None = None) -> Completion: ...

    async def aclose(self) -> None: ...
