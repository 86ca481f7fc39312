"""A scripted model backend for the serve tests (the server under test is real).

`ScriptedTeacher` implements the `ModelBackend` protocol plus the optional streaming methods: it
answers a fixed list of text pieces, can hold every generation at a gate until the test opens
it (to fill the queue deterministically, without sleeps), can stream forever until cancelled
(to test client disconnects), and records what it was asked and how each generation ended.
Tokens are whitespace words, so prompt-length limits are easy to hit on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from alpacakit.models.backends.base import Completion, Usage


class ScriptedTeacher:
    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", ", ", "world", "!"),
        *,
        name: str = "fake-model",
        gate: threading.Event | None = None,
        piece_delay_s: float = 0.0,
        forever: bool = False,
        has_chat_template: bool = True,
    ):
        self.name = name
        self.pieces = list(pieces)
        self.gate = gate
        self.piece_delay_s = piece_delay_s
        self.forever = forever
        self.has_chat_template = has_chat_template
        self.calls: list[dict[str, Any]] = []
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.closed = False

    # token counting (whitespace words)
    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def _pieces(self, kw: dict[str, Any]) -> AsyncIterator[str | Completion]:
        self.started += 1
        done = False
        sent: list[str] = []
        try:
            while self.gate is not None and not self.gate.is_set():
                await asyncio.sleep(0.01)
            limit = kw.get("max_tokens") or 10**9
            i = 0
            while self.forever or i < len(self.pieces):
                if len(sent) >= limit:
                    break
                piece = self.pieces[i % len(self.pieces)]
                if self.piece_delay_s:
                    await asyncio.sleep(self.piece_delay_s)
                sent.append(piece)
                yield piece
                i += 1
            finish = "length" if len(sent) >= limit and (self.forever or i < len(self.pieces)) else "stop"
            done = True
            yield Completion(text="".join(sent), finish_reason=finish, usage=Usage(7, len(sent)), model=self.name)
        finally:
            if done:
                self.finished += 1
            else:
                self.cancelled += 1

    async def stream_chat(self, messages: list[dict[str, str]], **kw: Any) -> AsyncIterator[str | Completion]:
        self.calls.append({"messages": messages, **kw})
        async with contextlib.aclosing(self._pieces(kw)) as inner:  # closes it with us, not at GC
            async for item in inner:
                yield item

    async def stream_complete(self, prompt: str, **kw: Any) -> AsyncIterator[str | Completion]:
        self.calls.append({"prompt": prompt, **kw})
        async with contextlib.aclosing(self._pieces(kw)) as inner:  # closes it with us, not at GC
            async for item in inner:
                yield item

    async def _last(self, stream: AsyncIterator[str | Completion]) -> Completion:
        final = None
        async for item in stream:
            if isinstance(item, Completion):
                final = item
        assert final is not None
        return final

    async def chat(self, messages: list[dict[str, str]], **kw: Any) -> Completion:
        return await self._last(self.stream_chat(messages, **kw))

    async def complete(self, prompt: str, **kw: Any) -> Completion:
        return await self._last(self.stream_complete(prompt, **kw))

    async def aclose(self) -> None:
        self.closed = True


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds (an AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
