"""Streaming for local backends: a generation running in a worker thread, read as an async
iterator of text pieces that ends with the final `Completion`.

Local models (llama.cpp, transformers) generate in blocking native code, so generation runs
in a thread while the event loop keeps serving other clients. `stream_thread` is the bridge:

    async for item in stream_thread(produce):
        if isinstance(item, Completion): ...   # the last item
        else: print(item, end="")              # a piece of text

`produce(emit, cancelled)` runs in a new thread; it calls `emit(text)` for each piece and
returns the final Completion. When the consumer stops early (a client disconnected, `/reset`
in chat, `break` out of the loop), `cancelled` is set: the producer checks it after every
token and stops, so an abandoned stream stops costing CPU within one token.

`StopScanner` cuts a stream at stop strings without ever showing a partial stop string: text
that could still be the start of one is held back until the next piece decides.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from alpacakit.models.backends.base import Completion

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def stream_thread(
    produce: Callable[[Callable[[str], None], threading.Event], Completion], *, name: str = "alpacakit-stream"
) -> AsyncIterator[str | Completion]:
    """Run `produce` in a thread and yield what it emits, then its Completion (see module doc).

    An exception in `produce` is re-raised here, after the pieces emitted before it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancelled.set()

    def emit(text: str) -> None:
        if text and not cancelled.is_set():
            put(text)

    def run() -> None:
        try:
            result: Any = produce(emit, cancelled)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            result = _Failure(e)
        put(result)
        put(_END)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        cancelled.set()


class StopScanner:
    """Feed decoded text; get back what is safe to show, up to (not including) a stop string.

    `feed()` returns the text that can no longer become part of a stop string; `stopped` turns
    true once a stop string is complete, after which everything is dropped. `flush()` returns
    what was held back when generation ended without a stop.
    """

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self.held = ""
        self.stopped = False
        self.text = ""  # everything shown so far

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        if not self.stops:
            self.text += piece
            return piece
        buf = self.held + piece
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.held = ""
            out = buf[:cut]
        else:
            keep = self._partial_suffix(buf)
            out, self.held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self.text += out
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        self.text += out
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest end of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
