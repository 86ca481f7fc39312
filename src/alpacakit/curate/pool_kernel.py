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
4. unless an entry sharing common keys only cannot reach the k-th best (2c / (m + c) for the
   instruction's c common keys), every other entry's mask is scanned (one popcount each) and
   walked the same way. The most similar entries usually share a rarer key, so by then the
   k-th best is high and the scan skips nearly everything on a multiply and a compare.

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
    """(search, scores), compiled on first use (seconds, once: numba caches the machine code)."""
    import numba
    from numba.core import types
    from numba.extending import intrinsic

    jit = numba.njit(cache=True, nogil=True)

    @intrinsic
    def popcount(typingctx, x):
        """The CPU's population count (LLVM ctpop) of a uint64."""

        def codegen(context, builder, signature, args):
            return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [args[0].type]), args)

        return types.int64(types.uint64), codegen

    @jit
    def f_measure(lcs, m, n):
        precision = lcs / n
        recall = lcs / m
        return 2 * precision * recall / (precision + recall)

    @jit
    def lcs_row(table, m, row, n):
        """LCS length of the instruction (1 <= m <= 64 tokens, its masks in `table` by token
        id + 1) and the n tokens of `row`: Hyyro's recurrence, as `rouge.lcs_with_masks`."""
        full = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - m)
        v = full
        for j in range(n):
            mk = table[row[j]]
            if mk:
                u = v & mk
                v = (v + u) | (v - u)
        v &= full
        ones = 0
        while v:
            v &= v - np.uint64(1)
            ones += 1
        return m - ones

    @jit
    def search(rare, common, query_bits, counts, touched, marks, lens, wide, tok, table, m, k, margin):
        """Top-k (entries, F) of one instruction, and the entries too wide to score here whose
        bound can reach the floor. `rare`: the posting lists of its keys that have no common
        bit, concatenated; `query_bits`: the common bits of the others."""
        best_f = np.full(k, -1.0)
        best_e = np.full(k, -1, np.int64)
        filled = 0
        reach = -1.0
        deferred = np.empty(lens.shape[0], np.int64)
        n_deferred = 0
        t = 0
        for i in range(rare.shape[0]):
            e = rare[i]
            if counts[e] == 0:
                touched[t] = e
                t += 1
            counts[e] += 1
        # The entries sharing a rare key first, most shared keys first, so the floor rises
        # early; then every other entry, by its common keys alone.
        most = 0
        for i in range(t):
            e = touched[i]
            counts[e] += popcount(common[e] & query_bits)
            most = max(most, counts[e])
        starts = np.zeros(most + 2, np.int64)
        for i in range(t):
            starts[counts[touched[i]]] += 1
        at = 0
        for v in range(most, -1, -1):
            size = starts[v]
            starts[v] = at
            at += size
        order = np.empty(t, np.int64)
        for i in range(t):
            e = touched[i]
            order[starts[counts[e]]] = e
            starts[counts[e]] += 1
            marks[e] = 1
        n_common = popcount(query_bits)
        scan = 0
        i = 0
        while True:
            if i < t:
                e = order[i]
                shared = counts[e]
            else:
                # Past the rare keys' entries: is any other entry able to reach the floor?
                if i == t and filled == k and 2.0 * n_common < reach * (m + n_common):
                    break
                while scan < lens.shape[0] and (marks[scan] or not (common[scan] & query_bits)):
                    scan += 1
                if scan == lens.shape[0]:
                    break
                e = scan
                shared = popcount(common[e] & query_bits)
                scan += 1
            i += 1
            n = lens[e]
            if filled == k and 2.0 * shared < reach * (m + n):
                continue
            if wide[e]:
                deferred[n_deferred] = e
                n_deferred += 1
                continue
            f = f_measure(1 if shared == 1 else lcs_row(table, m, tok[e], n), m, n)
            if filled < k or f > best_f[k - 1] or (f == best_f[k - 1] and e < best_e[k - 1]):
                j = filled if filled < k else k - 1
                while j > 0 and (best_f[j - 1] < f or (best_f[j - 1] == f and best_e[j - 1] > e)):
                    best_f[j] = best_f[j - 1]
                    best_e[j] = best_e[j - 1]
                    j -= 1
                best_f[j] = f
                best_e[j] = e
                if filled < k:
                    filled += 1
                if filled == k:
                    reach = best_f[k - 1] - margin
        for i in range(t):
            counts[touched[i]] = 0
            marks[touched[i]] = 0
        return best_e[:filled], best_f[:filled], deferred[:n_deferred]

    @jit
    def scores(entries, lens, wide, tok, table, m, out):
        """Exact F of each entry (0.0 when it shares no token; wide ones left at -1)."""
        for i in range(entries.shape[0]):
            e = entries[i]
            if wide[e]:
                out[i] = -1.0
                continue
            lcs = lcs_row(table, m, tok[e], lens[e])
            out[i] = f_measure(lcs, m, lens[e]) if lcs else 0.0

    return search, scores


def warm() -> None:
    """Load (or compile) both kernels now: called before forking processes that will search,
    so they share numba's ~190 MB (its import and the machine code) instead of each loading it."""
    search, scores = kernels()
    none = np.zeros(1, dtype=np.int64)
    lens, wide, common = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.bool_), np.zeros(1, dtype=np.uint64)
    tok, table = np.zeros((1, 1), dtype=np.int32), np.zeros(2, dtype=np.uint64)
    scratch = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int8)
    search(none[:0], common, np.uint64(0), *scratch, lens, wide, tok, table, 1, 1, 1e-9)
    scores(none, lens, wide, tok, table, 1, np.zeros(1, dtype=np.float64))
