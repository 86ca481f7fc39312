"""The top-k search of `pool_stats.py` compiled with numba: loops where numpy needs ten calls.

Numpy pays per call, not per element: a search there is ~10 calls over the whole pool (the
overlap `bincount`, its histogram, two thresholds, the bounds) and two bit-parallel LCS passes
of four calls per token column, ~0.45 ms per kept instruction at a 40K pool whatever few
entries matter. Compiled (`search`):

1. the shared keys that are not common are counted from their posting lists, noting which
   entries were touched (the counts are reset afterwards through that list, never by a pass
   over the pool); each touched entry then adds the common keys it shares, a popcount of its
   mask of the 64 commonest keys (`PoolStats._common`) against the instruction's, so its count
   is the exact bag overlap without ever reading the posting lists of "the" or "a";
2. the touched entries are ordered by that overlap, most first (a counting sort);
3. they are walked in that order, keeping the k best (F desc, earlier entry first): an entry
   whose bound 2 ov / (m + n) cannot reach the k-th best so far is skipped, any other gets its
   exact LCS (the bit-parallel recurrence of `rouge.lcs_with_masks`) and F in the float
   operations of `rouge_score`, so every score is bit for bit the scalar one;
4. then the entries sharing common keys only, by length, shortest first (`PoolStats._by_len`
   keeps each length's entries and their masks together in memory): one of length n shares at
   most min(c, n) of the instruction's c common keys, so F <= 2 min(c, n) / (m + n): a length
   whose bound cannot reach the k-th best is skipped, and the walk stops at the first such
   length from c on (the bound only falls from there). The most similar entries usually share
   a rarer key, so by then the k-th best is high: over a 52K Alpaca run a search reads ~15K
   masks on average (a popcount each) and scores ~50 entries exactly.

The skip compares 2 ov with (floor - margin)(m + n): the float bound differs from the exact
2 ov / (m + n) by a few ulps, and the margin (1e-9) is far above that and far below any gap
between distinct F values (>= 1 / (m + n)^2), so no entry that can tie the floor is skipped.

Entries too long for the token matrix (`_WIDE`) are returned unscored when their bound can
reach the floor, and scored in Python by the caller; `scores` gives the exact F of the mean's
sample. `available()` is False when numba cannot be imported; `pool_stats` then keeps its
numpy search (same results, tested against each other and against `rouge_score`'s loop).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to load means: use numpy
        return False
    return True


@functools.cache
def kernels():
    """(search, scores): numba loads here, and the machine code from its cache (compiled once
    per installation, seconds; `kernels_jit.py`)."""
    from alpacakit.curate import kernels_jit

    return kernels_jit.search, kernels_jit.scores


def warm() -> None:
    """Load (or compile) both kernels now: called before forking processes that will search,
    so they share numba's ~190 MB (its import and the machine code) instead of each loading it."""
    search, scores = kernels()
    none = np.zeros(1, dtype=np.int64)
    lens, wide, common = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.bool_), np.zeros(1, dtype=np.uint64)
    tok, table = np.zeros((1, 1), dtype=np.int32), np.zeros(2, dtype=np.uint64)
    scratch = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8)
    rows = none, common, np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64)
    search(none[:0], common, np.uint64(0), *scratch, lens, wide, tok, table, 1, 1, 1e-9, *rows)
    scores(none, lens, wide, tok, table, 1, np.zeros(1, dtype=np.float64))
