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

    @numba.njit(cache=True, nogil=True, inline="always")
    def visit(e, shared, m, k, margin, lens, wide, tok, table, best_f, best_e, deferred, state):
        """Offer entry e (sharing `shared` keys) to the k best (F desc, earlier entry first);
        state = [entries in the k best, entries deferred]. Skipped when its bound
        2 shared / (m + n) cannot reach the k-th best; too wide for the matrix: deferred."""
        filled = state[0]
        n = lens[e]
        if filled == k and 2.0 * shared < (best_f[k - 1] - margin) * (m + n):
            return
        if wide[e]:
            deferred[state[1]] = e
            state[1] += 1
            return
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
                state[0] = filled + 1

    @jit
    def search(
        rare,
        common,
        query_bits,
        counts,
        touched,
        marks,
        lens,
        wide,
        tok,
        table,
        m,
        k,
        margin,
        row_entries,
        row_masks,
        row_start,
        row_size,
    ):
        """Top-k (entries, F) of one instruction, and the entries too wide to score here whose
        bound can reach the floor. `rare`: the posting lists of its keys that have no common
        bit, concatenated; `query_bits`: the common bits of the others; row n of `row_entries`
        and `row_masks` (from `row_start[n]`, `row_size[n]` long): the entries of length n (the
        last row: longer) and their common bits."""
        best_f = np.full(k, -1.0)
        best_e = np.full(k, -1, np.int64)
        state = np.zeros(2, np.int64)
        deferred = np.empty(lens.shape[0], np.int64)
        t = 0
        for i in range(rare.shape[0]):
            e = rare[i]
            if counts[e] == 0:
                touched[t] = e
                t += 1
            counts[e] += 1
        # The entries sharing a rare key first, most shared keys first, so the floor rises early.
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
        reach = -1.0
        for i in range(t):
            e = order[i]
            if 2.0 * counts[e] >= reach * (m + lens[e]):
                visit(e, counts[e], m, k, margin, lens, wide, tok, table, best_f, best_e, deferred, state)
                reach = best_f[k - 1] - margin if state[0] == k else -1.0
        # Then the entries sharing common keys only, shortest first: one of length n shares at
        # most c = min(common keys of the instruction, n), so F <= 2c / (m + n), which falls with
        # n from n = c on: the walk stops at the first length that cannot reach the k-th best.
        # Each length's entries and masks lie in order in memory (`PoolStats._by_len`).
        n_common = popcount(query_bits)
        for n in range(1, row_start.shape[0] if n_common else 1):
            if 2.0 * min(n_common, n) < reach * (m + n):
                if n >= n_common:
                    break
                continue
            for j in range(row_start[n], row_start[n] + row_size[n]):
                q = row_masks[j] & query_bits
                if q:
                    shared = popcount(q)
                    if 2.0 * shared >= reach * (m + n) and not marks[row_entries[j]]:
                        visit(
                            row_entries[j],
                            shared,
                            m,
                            k,
                            margin,
                            lens,
                            wide,
                            tok,
                            table,
                            best_f,
                            best_e,
                            deferred,
                            state,
                        )
                        reach = best_f[k - 1] - margin if state[0] == k else -1.0
        for i in range(t):
            counts[touched[i]] = 0
            marks[touched[i]] = 0
        filled = state[0]
        return best_e[:filled], best_f[:filled], deferred[: state[1]]

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
    rows = none, common, np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64)
    search(none[:0], common, np.uint64(0), *scratch, lens, wide, tok, table, 1, 1, 1e-9, *rows)
    scores(none, lens, wide, tok, table, 1, np.zeros(1, dtype=np.float64))
