"""Forking processes that share a large pool with their parent, without copying it page by page.

A forked child shares its parent's memory until one of them writes to a page, which then gets
copied (copy-on-write). Python writes to objects it only reads: each full collection of the
cyclic garbage collector marks every container it traverses. So after a fork, every process's
next full collection would copy the pages holding the pool's tuples and sets. `before_fork`
freezes the objects that exist at the fork (`gc.freeze`: no collection traverses them again),
after collecting the garbage and giving the freed heap back to the OS (glibc's `malloc_trim`),
so a journal replay's leftovers are not counted in every process. Measured on a 52K
self-instruct run resumed after 40K, 4 statistics copies: the processes' summed PSS fell from
1,029 to 903 MB, the main process's from 212 to 145 MB.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys


def before_fork() -> None:
    """Call right before forking children that will only read what this process holds now."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # (not glibc: nothing to give back)
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    gc.freeze()


def after_children() -> None:
    """Once the children are gone: the frozen objects are collected again as usual."""
    gc.unfreeze()
