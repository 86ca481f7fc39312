"""Answers processed in a forked worker, off the event loop (self-instruct uses it).

Processing an answer (parse, filter, exact ROUGE-L dedup with statistics) takes ~1 ms per task
at a 50K pool. Done on the event loop, no request goes out and no answer is read meanwhile, so
requests go out in waves and the run takes HTTP time plus processing time. The worker takes the
processing; the event loop only sends, receives and journals.

The worker is forked after the journal replay, so it inherits the processor's state (the dedup
pool) without pickling, and before the event loop and the teacher client exist (nothing of
theirs is copied). It receives journal entries in journal order, so its results are exactly
those of in-process processing, appends them to examples.jsonl / discards.jsonl itself (derived
data: a replay rebuilds them from the journal), and reports per entry (index, kept, discard
reasons). When the main process dies, even by kill -9, the pipe reaches EOF and the worker exits.

Self-instruct's processor forks helpers of its own here (`fork_helpers`): copies of the dedup
pool that compute the statistics while this process only decides (`curate/stats_farm.py`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

from alpacakit.errors import AlpacakitError
from alpacakit.forking import after_children, before_fork
from alpacakit.jobs.journal import DISCARDS, EXAMPLES, derive


class WorkerError(AlpacakitError):
    """The processing worker failed; the answers received so far are journaled."""


class ProcessingWorker:
    """The main process's side: `send` entries, `reports` to read what the worker did with them."""

    def __init__(self, processor, out_dir: str | Path, lock_fd: int | None = None):
        ctx = multiprocessing.get_context("fork")
        before_fork()  # the pool the journal replay built stays shared, page for page
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_serve,
            name="alpacakit-processing",
            daemon=True,
            args=(child, self.conn, processor, Path(out_dir) / EXAMPLES, Path(out_dir) / DISCARDS, lock_fd),
        )
        self.process.start()
        child.close()  # only the worker holds its end: its exit is an EOF here, ours one there

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, entries: list[dict]) -> None:
        try:
            self.conn.send(entries)
        except OSError:  # the worker is gone: say why if it said, else that it died
            for _ in self.reports():
                pass
            raise WorkerError(
                f"the processing worker exited unexpectedly (exit code {self.process.exitcode})",
                hint="rerun: every answer received is journaled and will be processed",
            ) from None

    def reports(self) -> Iterator[tuple[int, int, dict[str, int]]]:
        """(index, kept, discards by reason) for every entry the worker has finished, without waiting."""
        while self.conn.poll():
            try:
                msg = self.conn.recv()
            except EOFError:
                raise WorkerError(
                    f"the processing worker exited unexpectedly (exit code {self.process.exitcode})",
                    hint="rerun: every answer received is journaled and will be processed",
                ) from None
            if isinstance(msg, tuple) and msg and msg[0] == "error":
                raise WorkerError(
                    f"processing an answer failed in the worker process:\n{msg[1]}",
                    hint="every answer received is journaled; a rerun processes them again",
                )
            yield from msg

    def close(self, timeout: float = 30.0) -> None:
        """EOF to the worker, which flushes its files and exits; wait for it."""
        self.conn.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        after_children()


def _serve(conn, parent_end, processor, examples_path: Path, discards_path: Path, lock_fd: int | None) -> None:
    """The worker: entries in, results appended, reports out, until EOF. Leaves with os._exit so
    none of the parent's exit handlers (the folder lock's release, among them) run here.

    A processor with `fork_helpers` (self-instruct) may hand part of its work to processes of its
    own (the statistics, `curate/stats_farm.py`): its records are then completed later, so each
    entry's results wait here, in journal order, until they are whole; only then are they
    written and reported (reported = on disk, as without helpers)."""
    from multiprocessing.connection import wait

    from alpacakit.io import JsonlAppender

    code = 0
    helpers = None
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process; we follow its EOF
        parent_end.close()
        if lock_fd is not None:
            os.close(lock_fd)  # the lock stays the main process's: released when it ends, not when we do
        fork_helpers = getattr(processor, "fork_helpers", None)
        helpers = fork_helpers(keep_out=(conn,)) if fork_helpers else None  # (before any file is open here)
        examples, discards = JsonlAppender(examples_path), JsonlAppender(discards_path)
        waiting: deque[tuple[int, list[dict], list[dict], int]] = deque()  # (index, kept, dropped, complete at)
        try:
            while True:
                ready = wait([conn, *helpers.connections()]) if helpers else [conn]
                if helpers is not None:
                    helpers.collect()
                if conn in ready:
                    try:
                        entries = conn.recv()
                    except EOFError:
                        break
                    for entry in entries:
                        kept, dropped = derive(processor, entry)
                        waiting.append((entry["index"], kept, dropped, helpers.submitted if helpers else 0))
                    if helpers is not None:
                        helpers.flush()
                        helpers.collect()
                out = []
                while waiting and (helpers is None or waiting[0][3] <= helpers.described):
                    index, kept, dropped, _ = waiting.popleft()
                    examples.write_many(kept)
                    discards.write_many(dropped)
                    out.append((index, len(kept), dict(Counter(d["reason"] for d in dropped))))
                if out:
                    conn.send(out)
        finally:
            examples.close()
            discards.close()
    except BaseException:  # noqa: BLE001 - reported to the main process, which raises it
        code = 1
        with contextlib.suppress(Exception):  # (the main process may be gone: nobody to tell)
            conn.send(("error", traceback.format_exc()))
    finally:
        if helpers is not None:
            with contextlib.suppress(Exception):
                helpers.close()
        os._exit(code)
