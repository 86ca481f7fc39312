"""Bounded concurrency: at most `max_concurrency` requests generate, at most `queue_size` wait.

One more request than that gets an immediate 429 with Retry-After, instead of joining a queue
so long that it would time out anyway: a client (or the `openai` SDK's retry loop) learns at
once that it should back off. Waiting requests are served first come, first served (asyncio's
semaphore wakes waiters in order).

A request takes a `Ticket` as soon as it is accepted (that is what counts against the queue)
and holds a generation slot from `acquire()` until `release()`. `release()` is idempotent so
every exit path (normal end, client disconnect, error) can call it.
"""

from __future__ import annotations

import asyncio
import time

from alpacakit.serve.errors import queue_full, queue_timeout


class Admission:
    def __init__(self, max_concurrency: int, queue_size: int, timeout_s: float):
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.admitted = 0  # tickets alive: waiting + running
        self.running = 0
        self.served = 0
        self.rejected = 0

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def reserve(self) -> Ticket:
        """A ticket for a new request, or a 429 APIError when the queue is full."""
        if self.admitted >= self.max_concurrency + self.queue_size:
            self.rejected += 1
            raise queue_full(self.running, self.waiting)
        self.admitted += 1
        return Ticket(self)

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "max_concurrency": self.max_concurrency,
            "queue_size": self.queue_size,
            "served": self.served,
            "rejected": self.rejected,
        }


class Ticket:
    def __init__(self, admission: Admission):
        self._adm = admission
        self._holding = False
        self._released = False

    async def acquire(self) -> None:
        """Wait for a generation slot (503 APIError after `timeout_s`)."""
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self._adm._slots.acquire(), self._adm.timeout_s)
        except TimeoutError:
            self.release()
            raise queue_timeout(time.monotonic() - t0) from None
        except BaseException:
            self.release()
            raise
        if self._released:  # released while waiting (cannot happen today; keep the books right anyway)
            self._adm._slots.release()
            return
        self._holding = True
        self._adm.running += 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._adm.admitted -= 1
        if self._holding:
            self._holding = False
            self._adm.running -= 1
            self._adm.served += 1
            self._adm._slots.release()

    async def __aenter__(self) -> Ticket:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
