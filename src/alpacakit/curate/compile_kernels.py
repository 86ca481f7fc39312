"""Compile the exact dedup's numba kernels now, once per install: `make venv` runs this.

numba compiles a kernel (`kernels_jit.py`) the first time it is called with a signature, and
keeps the machine code in its on-disk cache. Left to the first real run, that cost arrived
unannounced: the first 52K generate run after an install took 20.8 s where the next took
13.6 s (its worker compiling for ~7 s), and the first large `curate dedup` 1-2 s more. Here
each kernel runs once on small inputs of the real types, through the same code paths a run
takes (the bulk dedup, the compiled decisions, the statistics' search), so every later process
loads the machine code instead. Run again, it loads everything from the cache in a second.

    python -m alpacakit.curate.compile_kernels

Where numba cannot be imported the numpy paths are used everywhere and there is nothing to do.
numba keeps its cache beside `kernels_jit.py` when that folder is writable, else under
NUMBA_CACHE_DIR or the user's cache folder.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

from alpacakit.curate import pool_kernel


@dataclass
class Compiled:
    """What `compile_all` did: kernels compiled now, kernels loaded from the cache, seconds."""

    compiled: list[str]
    loaded: list[str]
    seconds: float

    def summary(self) -> str:
        if not self.compiled:
            return f"the dedup kernels load from numba's cache ({len(self.loaded)} loaded in {self.seconds:.1f} s)"
        return (
            f"compiled {len(self.compiled)} dedup kernels in {self.seconds:.1f} s (once per install; "
            f"{len(self.loaded)} were cached already)"
        )


def _texts(rng: random.Random, n: int, vocab: list[str], lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choices(vocab, k=rng.randint(lo, hi))) for _ in range(n)]


def _run_every_path() -> None:
    """Each compiled path once, as a run takes it: a bulk dedup past its compiled threshold (with
    texts over 64 tokens for the LCS's second algorithm), a pool whose decisions are compiled and
    grow (so the index is reordered and its table rehashed), and the statistics' search."""
    from alpacakit.curate import dedup
    from alpacakit.curate.rouge import RougeDeduper

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    seeds = _texts(rng, 20, vocab, 4, 12)
    past_threshold = dedup._COMPILED_FROM + 1000
    texts = _texts(rng, past_threshold, vocab, 3, 14) + _texts(rng, 20, vocab, 70, 90)
    dedup.dedup_instructions(texts, seeds)

    pool = RougeDeduper(0.7, keep_most_similar=0, stats=False)
    for s in seeds:
        pool.add_seed(s)
    pool.use_compiled_decisions(1 << 40)
    for t in _texts(rng, 600, vocab, 3, 14) + _texts(rng, 10, vocab, 70, 90):
        pool.add_if_novel(t)
    pool_kernel.warm()


def _dispatchers():
    """name -> numba dispatcher of every kernel compiled on its own (the always-inlined helpers
    are compiled into their callers)."""
    from numba.core.registry import CPUDispatcher

    from alpacakit.curate import kernels_jit

    return {
        name: obj
        for name, obj in vars(kernels_jit).items()
        if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("inline") != "always"
    }


def compile_all() -> Compiled | None:
    """Compile (or load) every kernel; None where numba is not available."""
    if not pool_kernel.available():
        return None
    t0 = time.monotonic()
    _run_every_path()
    seconds = time.monotonic() - t0
    kernels = sorted(_dispatchers().items())
    # (A kernel called only by other kernels shows in neither list when its callers load from the
    # cache: it is inside their machine code. tests/test_compile_kernels.py checks, on an empty
    # cache, that every kernel is reached.)
    compiled = [name for name, d in kernels if d.stats.cache_misses]
    loaded = [name for name, d in kernels if d.stats.cache_hits and not d.stats.cache_misses]
    return Compiled(compiled, loaded, seconds)


def not_reached() -> list[str]:
    """Kernels that no path of `_run_every_path` has compiled or loaded in this process."""
    return [name for name, d in sorted(_dispatchers().items()) if not d.signatures]


def main() -> int:
    done = compile_all()
    print("numba is not available: the dedup uses its numpy paths" if done is None else done.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
