"""What `serve` and `chat` need from a model, on top of the `ModelBackend` protocol.

- Loading: `load_teacher(ref)` turns any model reference into a model backend: a Hugging Face or
  alpacakit model folder runs in transformers (`models.backends.hf.HFModel`, with the folder's
  prompt format); an embedded name, a .gguf file or a folder holding one runs in llama.cpp;
  `openai:MODEL` is an endpoint (then `serve` is a proxy with auth, limits and safety).
- Streaming: `stream_chat` / `stream_complete` use the teacher's optional streaming methods
  and fall back to one piece (the whole answer) for teachers without them.
- Token counts for request validation: exact when the teacher can tokenize
  (`count_tokens` / `count_chat_tokens`), otherwise alpacakit's deliberately high estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from alpacakit.models.backends.base import Completion
from alpacakit.teachers.accounting import estimate_prompt_tokens, estimate_tokens

_MESSAGE_OVERHEAD = 8  # role markers and separators of a chat template, per message


def load_teacher(
    ref: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    timeout_s: float = 600.0,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    base: str | None = None,
    prompt_format: str | None = None,
    seed: int | None = None,
    max_concurrency: int = 1,
) -> Any:
    """A ModelBackend for any model reference (see the module doc). Heavy imports happen here."""
    from alpacakit.teachers.config import TeacherConfig

    fields: dict[str, Any] = {
        "model": str(ref),
        "base_url": base_url,
        "timeout_s": timeout_s,
        "max_retries": 0,
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "seed": seed,
        "max_concurrency": max_concurrency,
    }
    if api_key_env:
        fields["api_key_env"] = api_key_env
    from alpacakit.models.backends import make_backend

    return make_backend(TeacherConfig(**fields), base=base, prompt_format=prompt_format)


class ServeBackend:
    """A loaded ModelBackend plus the name it is served under."""

    def __init__(self, teacher: Any, name: str | None = None):
        self.teacher = teacher
        self.name = name or getattr(teacher, "name", None) or "model"

    @property
    def supports_chat(self) -> bool:
        """False for a local base model without a chat template (it can only continue text)."""
        return getattr(self.teacher, "has_chat_template", True) is not False

    @property
    def context_window(self) -> int | None:
        """Tokens the model can attend to (prompt + answer), when the backend says; None if unknown."""
        n = getattr(self.teacher, "context_window", None)
        return n if isinstance(n, int) and n > 0 else None

    @property
    def exact_token_counts(self) -> bool:
        return callable(getattr(self.teacher, "count_tokens", None))

    def count_prompt_tokens(self, *, messages: list[dict[str, str]] | None = None, prompt: str | None = None) -> int:
        t = self.teacher
        if messages is not None:
            if callable(getattr(t, "count_chat_tokens", None)):
                return int(t.count_chat_tokens(messages))
            if callable(getattr(t, "count_tokens", None)):
                return sum(int(t.count_tokens(m.get("content") or "")) + _MESSAGE_OVERHEAD for m in messages)
            return estimate_prompt_tokens(messages=messages)
        if callable(getattr(t, "count_tokens", None)):
            return int(t.count_tokens(prompt or ""))
        return estimate_tokens(prompt or "")

    async def stream_chat(self, messages: list[dict[str, str]], **kw: Any) -> AsyncIterator[str | Completion]:
        fn = getattr(self.teacher, "stream_chat", None)
        if fn is not None:
            async with contextlib.aclosing(fn(messages, **kw)) as inner:  # closes it with us, not at GC
                async for item in inner:
                    yield item
            return
        c = await self.teacher.chat(messages, **kw)
        if c.text:
            yield c.text
        yield c

    async def stream_complete(self, prompt: str, **kw: Any) -> AsyncIterator[str | Completion]:
        fn = getattr(self.teacher, "stream_complete", None)
        if fn is not None:
            async with contextlib.aclosing(fn(prompt, **kw)) as inner:  # closes it with us, not at GC
                async for item in inner:
                    yield item
            return
        c = await self.teacher.complete(prompt, **kw)
        if c.text:
            yield c.text
        yield c

    def describe(self) -> dict[str, Any]:
        fn = getattr(self.teacher, "describe", None)
        info = fn() if callable(fn) else {}
        return {"name": self.name, **{k: v for k, v in info.items() if k != "name"}}

    async def aclose(self) -> None:
        await self.teacher.aclose()
