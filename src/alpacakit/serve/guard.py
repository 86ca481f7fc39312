"""Connection limits below the app: what a slow or greedy client can hold before any key is checked.

uvicorn reads a request's headers before the app sees anything, with no time limit and no cap
on connections, so ~1,000 sockets that each trickle one header byte every few seconds hold
every file descriptor the process has and nobody else gets in (slowloris). The app's own checks
(key, body size, queue) never run for them. Three rules, enforced in uvicorn's HTTP protocol:

- `header_timeout_s`: a request's headers must be complete this long after its first byte
  (after the connection opened, for the first request); otherwise the server answers 408 and
  closes. A real client sends its headers in one packet.
- `max_pending_connections`: at most this many connections may be waiting for their headers at
  once. One more *evicts the oldest waiting one* instead of being refused: a well-behaved client
  completes its headers in milliseconds, so under a slowloris flood it still gets in, and each
  attacker's socket lives a short while. Only a connection that has waited `EVICT_AFTER_S` may
  be evicted: under a flood the server accepts connections in batches, and a real client
  accepted in one batch must not lose its place to the next batch before its first packet is read.
- `max_connections`: open connections in all, kept below the process's file-descriptor limit
  (which `raise_fd_limit()` lifts towards it at start). One more evicts the oldest connection
  still waiting for its headers, however new (at the hard cap someone must go, and a real
  client is almost never the one that has waited longest); when every connection is past its
  headers, it gets 503 and is closed at once, so the accept loop never fails for want of
  descriptors.

The body has its own deadline (`body_timeout_s`), enforced in the app while it reads the body,
because uvicorn hands the body over as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("alpacakit.serve")

EVICT_AFTER_S = 0.25  # a connection this new keeps its place when only the pending cap is exceeded


def _plain_reply(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


_REFUSE_503 = _plain_reply("503 Service Unavailable", "Too many open connections; try again.", "retry-after: 1\r\n")
_TIMEOUT_408 = _plain_reply("408 Request Timeout", "The request headers did not arrive in time.")


@dataclass
class ConnectionGuard:
    """Shared by every connection of one server: the limits and the books."""

    max_connections: int = 512
    max_pending: int = 64
    header_timeout_s: float = 10.0
    pending: OrderedDict[Any, float] = field(default_factory=OrderedDict)  # waiting for headers -> since
    open: int = 0
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.open,
            "connections_waiting_for_headers": len(self.pending),
            "connections_refused": self.refused,
            "connections_evicted": self.evicted,
            "header_timeouts": self.timed_out,
        }


def raise_fd_limit(wanted: int) -> int:
    """Lift the soft open-files limit towards `wanted` + headroom (up to the hard limit); return
    how many connections fit under it (the limit less 64 descriptors for models, logs, journals)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no such limit
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + 64
    if soft != resource.RLIM_INFINITY and soft < target:
        new = target if hard == resource.RLIM_INFINITY else min(hard, target)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - 64))


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `guard`'s rules (pass as `uvicorn.Config(http=...)`)."""

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _counted = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if guard.open >= guard.max_connections and not self._evict_oldest(min_age=0.0):
                guard.refused += 1
                transport.write(_REFUSE_503)
                transport.close()
                return
            guard.open += 1
            self._counted = True
            self._wait_for_headers()

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete) and self._counted:
                self._wait_for_headers()  # the first bytes of the next request on a kept-alive connection
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                self._headers_done()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle is not None and not self.cycle.response_complete:
                self._headers_done()  # a pipelined request was already buffered and has started

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_done()
            if self._counted:
                self._counted = False
                guard.open -= 1
            super().connection_lost(exc)

        def _wait_for_headers(self) -> None:
            guard.pending[self] = time.monotonic()
            self._timer = self.loop.call_later(guard.header_timeout_s, self._header_timeout)
            while len(guard.pending) > guard.max_pending and self._evict_oldest(min_age=EVICT_AFTER_S):
                pass

        def _evict_oldest(self, min_age: float) -> bool:
            """Close the connection that has waited longest for its headers, if it has waited
            at least `min_age` seconds (and is not this one). True if one was closed."""
            if not guard.pending:
                return False
            oldest, since = next(iter(guard.pending.items()))
            if oldest is self or time.monotonic() - since < min_age:
                return False
            guard.evicted += 1
            oldest._drop(None)
            return True

        def _headers_done(self) -> None:
            guard.pending.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _header_timeout(self) -> None:
            self._timer = None
            if self in guard.pending:
                guard.timed_out += 1
                self._drop(_TIMEOUT_408)

        def _drop(self, reply: bytes | None) -> None:
            self._headers_done()
            if not self.transport.is_closing():
                if reply:
                    self.transport.write(reply)
                self.transport.close()

    return GuardedH11Protocol
