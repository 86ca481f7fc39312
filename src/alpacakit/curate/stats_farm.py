"""A pool's statistics computed by forked copies of it, several at once.

In a self-instruct run the decision (is this instruction above the threshold with any pool
entry?) needs only the few entries the signature index finds: ~0.2 ms at a 50K pool. The
statistics stored with each example (its 10 most similar pool entries and the sampled mean)
look below the threshold, at the whole pool: ~0.6 ms, three quarters of the processing. They
decide nothing, and an instruction's statistics depend only on the pool before it. So the
process that decides forks `copies` copies of its pool (`StatsFarm`); every copy follows every
decision in order (adds each kept instruction) and describes every copies-th instruction. The
statistics are those one process computing everything gives, bit for bit: same pool, same
order, same code (`RougeDeduper.describe_compact`). A copy sends the most similar entries as
pool positions (every copy holds the same texts at the same positions), and the decider turns
them into texts (`RougeDeduper.expand`): a 52K run's results are ~10x fewer bytes to pickle.

Hand-off: each copy reads the decisions from its own multiprocessing.Queue (whose feeder thread
never blocks the decider, however far behind a copy is) and answers on its own pipe, read
whenever it has something (`collect`). Copies are forked with os.fork (the decider is itself a
daemonic worker process, which multiprocessing does not let start children); one whose parent
is gone, even by kill -9, notices within a second and exits. They write nothing: a copy killed
loses nothing that a rerun would not recompute.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Callable

from alpacakit.curate.rouge import DedupResult, RougeDeduper
from alpacakit.errors import AlpacakitError
from alpacakit.forking import after_children, before_fork


class StatsFarmError(AlpacakitError):
    """A copy computing statistics failed or died."""


class StatsFarm:
    """The decider's side: `submit` each decision in order, `flush` after a batch, `collect`
    what the copies computed (each result goes to the callback given with its decision);
    `described` counts the decisions, from the first, whose callbacks have all run."""

    def __init__(self, dedup: RougeDeduper, copies: int, keep_out: tuple = ()):
        """`keep_out`: connections of the decider's that the copies must not hold open (a pipe
        whose EOF tells someone that the decider is gone)."""
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        ctx = multiprocessing.get_context("fork")
        self._queues: list = []
        self._conns: list = []
        self._pids: list[int] = []
        parent = os.getpid()
        before_fork()
        for share in range(copies):
            q = ctx.Queue()
            receiver, sender = ctx.Pipe(duplex=False)
            pid = os.fork()
            if pid == 0:  # the copy
                code = 0
                try:
                    for conn in (receiver, *keep_out, *self._conns):
                        conn.close()
                    code = _copy(dedup, share, copies, q, sender, parent)
                finally:
                    os._exit(code)
            sender.close()
            self._queues.append(q)
            self._conns.append(receiver)
            self._pids.append(pid)
        self._dedup = dedup  # (the decider's pool: it turns the copies' positions into texts)
        self._batch: list[tuple[int, str, list[tuple[int, float]]]] = []
        self._callbacks: dict[int, tuple[Callable[[DedupResult], None], bool]] = {}
        self.submitted = 0
        self.described = 0

    def connections(self) -> list:
        """The pipes results arrive on (for `multiprocessing.connection.wait`)."""
        return list(self._conns)

    def submit(self, instruction: str, hits: list[tuple[int, float]], fill: Callable[[DedupResult], None]) -> None:
        """The next decision: `hits` from `RougeDeduper.decide_and_add`; `fill(result)` runs
        when its statistics arrive (in `collect`)."""
        self._batch.append((self.submitted, instruction, hits))
        self._callbacks[self.submitted] = fill, not hits
        self.submitted += 1

    def flush(self) -> None:
        """Send the decisions submitted since the last flush to every copy."""
        if self._batch:
            data = pickle.dumps(self._batch, pickle.HIGHEST_PROTOCOL)  # once, not once per copy
            for q in self._queues:
                q.put(data)
            self._batch = []

    def collect(self) -> None:
        """Run the callbacks of every result that has arrived, without waiting."""
        for conn in self._conns:
            while conn.poll():
                try:
                    msg = conn.recv()
                except EOFError:
                    raise StatsFarmError("a process computing the statistics exited unexpectedly") from None
                if isinstance(msg, tuple) and msg and msg[0] == "error":
                    raise StatsFarmError(f"computing the statistics failed in a copy of the pool:\n{msg[1]}")
                for ordinal, compact in msg:
                    fill, kept = self._callbacks.pop(ordinal)
                    fill(self._dedup.expand(kept, compact))
        while self.described < self.submitted and self.described not in self._callbacks:
            self.described += 1

    def close(self) -> None:
        """Stop the copies at once (they hold nothing that is not recomputed) and reap them."""
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for q in self._queues:
            q.cancel_join_thread()  # (what is still queued for the dead copies is dropped)
            q.close()
        self._pids = []
        after_children()


def _copy(dedup: RougeDeduper, share: int, copies: int, decisions, results, parent: int) -> int:
    """A copy: follow every decision, describe those whose ordinal % copies == share."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process
    dedup.only_follow()
    try:
        while True:
            try:
                batch = decisions.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return 0  # the decider is gone
                continue
            out = []
            for ordinal, instruction, hits in pickle.loads(batch):
                compact = dedup.describe_compact(instruction, hits, report=ordinal % copies == share)
                if compact is not None:
                    out.append((ordinal, compact))
            if out:
                results.send(out)
    except BaseException:  # noqa: BLE001 - reported to the decider, which raises it
        with contextlib.suppress(Exception):
            results.send(("error", traceback.format_exc()))
        return 1
