"""The statistics of a kept instruction against the whole pool, vectorised with numpy.

Near-duplicate *decisions* need only the few pool entries that could exceed the threshold
(`rouge.py` finds them through its signature index). The statistics Stanford stored with each
instruction look below the threshold, at the whole pool: the top-k most similar entries with
their F, and the mean F. In pure Python both walk the posting lists of common words ("the",
"a") entry by entry, milliseconds per instruction at a 10K pool. Here every step is a numpy
operation over the pool:

* bag-of-words overlap with every entry: one `bincount` over the posting lists of the
  instruction's occurrence keys (the k-th repeat of a word is its own key, so bag overlap is
  set overlap);
* exact LCS lengths for many entries at once: the same bit-parallel recurrence as
  `rouge.lcs_with_masks` (V = (V + U) | (V - U), U = V & M[token]) on uint64 vectors, one
  column of the entries' token matrix per step; instructions over 64 tokens fall back to
  Python ints. An overlap of 0 or 1 *is* the LCS (one shared token is a common subsequence of
  length 1), so only entries sharing at least two tokens need the recurrence;
* F with the float formula of `rouge_score` (`rouge.f_measure`) written elementwise in the
  same order, so every score equals the scalar one bit for bit.

Top-k stays exact by bounds: F(overlap) bounds F(lcs) from above, so exact scores are computed
in decreasing order of bound until the k-th best exact score beats every remaining bound.

The mean has three modes. `exact` is Stanford's avg_similarity_score (np.mean of the score
against every pool entry, in pool order): O(pool) per instruction however it is computed, the
cost that dominated a 52K run. `sample` (the default in generation) is the mean over a uniform
sample of `SAMPLE` pool entries kept by reservoir sampling with a fixed seed, so a replayed run
draws the same sample; it is exact while the pool is no larger than the sample, and its
standard error is about std(F)/sqrt(SAMPLE) (~0.005) beyond. `off` skips it.

In generate's statistics copies (`use_compiled`), from `_COMPILED_FROM` pool entries on (and for
instructions of 1 to 64 tokens, mean `sample` or `off`), the search runs compiled instead
(`pool_kernel.py`, numba): the same bounds walked entry by entry, the common keys counted from a
bit mask per entry instead of their posting lists. Results are the same bit for bit (tested
against the numpy search and against `rouge_score`'s loop); the statistics of a 52K Alpaca run
take 2.1x less CPU.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from alpacakit.curate import pool_kernel
from alpacakit.curate.rouge import f_measure, lcs_with_masks

SAMPLE = 256
MEAN_MODES = ("off", "sample", "exact")
_WIDE = 128  # entries longer than this keep their tokens out of the matrix (Python LCS)
_ALL_AT_ONCE = 48  # fewer candidates than this are all scored exactly, without bounds
_PYTHON_TAIL = 6  # columns where at most this many entries are still running finish in Python
# A pool whose statistics copies use the compiled kernel (pool_kernel.py, `use_compiled`)
# searches with it from this many entries on, when numba loads: smaller pools stay in numpy,
# so a short run never waits for it. `COMPILED = False` turns the kernel off everywhere.
_COMPILED_FROM = 2048
COMPILED = True
# The compiled search counts the common keys ("the", "a", "of": each in a good part of the
# pool) from a uint64 mask per entry instead of their posting lists: up to _COMMON_BITS keys that
# _COMMON_FROM entries hold get a bit (kept up only once the compiled search is switched on).
_COMMON_BITS = 64
_COMMON_FROM = 256
_TIE_MARGIN = 1e-9  # as in rouge.py: >> float error of F, << any gap between distinct F values


def f_vector(lcs: np.ndarray, m: int, n: np.ndarray) -> np.ndarray:
    """`f_measure(lcs, m, n)` elementwise for lcs >= 1 (so n >= 1), with the same float
    operations in the same order."""
    lcs = lcs.astype(np.float64)
    precision = lcs / n
    recall = lcs / m
    return 2 * precision * recall / (precision + recall)


class _Growing:
    """A numpy array that grows by doubling (amortised O(1) appends)."""

    __slots__ = ("buf", "size")

    def __init__(self, dtype, capacity: int = 4, width: int | None = None):
        shape = (capacity,) if width is None else (capacity, width)
        self.buf = np.zeros(shape, dtype=dtype)
        self.size = 0

    def append(self, value) -> None:
        if self.size == len(self.buf):
            grown = np.zeros((2 * len(self.buf),) + self.buf.shape[1:], dtype=self.buf.dtype)
            grown[: self.size] = self.buf
            self.buf = grown
        self.buf[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.buf[: self.size]


class _ByLength:
    """First entries grouped by length, each with a copy of its common-key mask, for the
    compiled search's walk over the entries that share common keys only: it reads just the
    lengths that can still matter, in memory order. Row n holds the entries of length n (the
    last row: any longer), in pool order, in one buffer (one array, a start and a size per row,
    for numba). A full row moves to the end of the buffer with twice the room; the room it
    leaves is not reused, so the buffer holds at most ~4x the entries."""

    __slots__ = ("entries", "masks", "start", "size", "room", "used", "slot")

    def __init__(self, rows: int):
        self.entries = np.zeros(64, dtype=np.int64)
        self.masks = np.zeros(64, dtype=np.uint64)
        self.start = np.zeros(rows, dtype=np.int64)
        self.size = np.zeros(rows, dtype=np.int64)
        self.room = np.zeros(rows, dtype=np.int64)
        self.used = 0
        self.slot = np.zeros(64, dtype=np.int64)  # entry -> where it is in the buffer

    def add(self, e: int, length: int, mask: int) -> None:
        row = min(length, len(self.start) - 1)
        size = int(self.size[row])
        if size == self.room[row]:
            self._move(row, max(8, 2 * size))
        at = int(self.start[row]) + size
        self.entries[at], self.masks[at] = e, mask
        if e >= len(self.slot):
            self.slot = np.concatenate([self.slot, np.zeros(max(e + 1, 2 * len(self.slot)) - len(self.slot), np.int64)])
        self.slot[e] = at
        self.size[row] = size + 1

    def _move(self, row: int, room: int) -> None:
        if self.used + room > len(self.entries):
            grow = max(len(self.entries), self.used + room - len(self.entries))
            self.entries = np.concatenate([self.entries, np.zeros(grow, np.int64)])
            self.masks = np.concatenate([self.masks, np.zeros(grow, np.uint64)])
        old, size, new = int(self.start[row]), int(self.size[row]), self.used
        self.entries[new : new + size] = self.entries[old : old + size]
        self.masks[new : new + size] = self.masks[old : old + size]
        self.slot[self.entries[new : new + size]] = np.arange(new, new + size)
        self.start[row], self.room[row] = new, room
        self.used += room

    def set_bit(self, entries: np.ndarray, bit: np.uint64) -> None:
        self.masks[self.slot[entries]] |= bit

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.entries, self.masks, self.start, self.size


class PoolStats:
    """Scores of one instruction against every pool entry, for the statistics.

    Fed every pool entry in order (`add`: token ids, occurrence keys, and the earlier entry it
    repeats, if any). Only first entries of a text are scored; a repeat takes its first's score.
    """

    compiled = False  # search with pool_kernel.py (see use_compiled)

    def __init__(self, mean: str = "off", rng_seed: int = 0):
        if mean not in MEAN_MODES:
            raise ValueError(f"mean must be one of {MEAN_MODES}, got {mean!r}")
        self.mean = mean
        self._lens = _Growing(np.int64)
        self._alias = _Growing(np.int64)
        self._firsts = _Growing(np.int64)  # indices of first entries, ascending
        self._tok = np.zeros((64, 16), dtype=np.int32)  # token id + 1 per column; 0 pads
        self._wide: dict[int, tuple[int, ...]] = {}  # entries over _WIDE tokens
        self._is_wide = _Growing(np.bool_)
        self._counts = np.zeros(0, dtype=np.int32)  # the compiled search's scratch (zero between calls)
        self._marks = np.zeros(0, dtype=np.int8)
        self._bit: dict[int, int] = {}  # common key -> its bit in `_common`
        self._common = _Growing(np.uint64)  # per entry: the common keys it holds
        # The compiled search's first entries by length, in pool order (row _WIDE + 1: longer ones)
        self._by_len = _ByLength(_WIDE + 2)
        self._touched = np.zeros(0, dtype=np.int64)
        self._postings: dict[int, _Growing] = {}
        self._table = np.zeros(64, dtype=np.uint64)  # token id + 1 -> the candidate's LCS mask
        self._max_id = -1  # highest token id in the matrix
        self._rng = random.Random(rng_seed)
        self._sample: list[int] = []
        self._sample_firsts: tuple[np.ndarray, np.ndarray] | None = None  # cached _mean_entries()
        self._seen = 0

    def __len__(self) -> int:
        return self._lens.size

    def use_compiled(self, expected_pool: int) -> None:
        """Search with the compiled kernel once the pool is large enough (it will reach about
        `expected_pool`), loading it now: called before forking the processes that compute the
        statistics, so they share numba's ~190 MB (its import and the machine code) instead of
        each loading it. Only those processes pay for it: a generate run's main process never
        imports numba."""
        if self.compiled:
            return  # (already: every entry is linked and has its bits)
        if COMPILED and expected_pool >= _COMPILED_FROM and pool_kernel.available():
            pool_kernel.warm()
            self.compiled = True
            lens, common = self._lens.view(), self._common.view()
            for e in self._firsts.view().tolist():
                if lens[e]:
                    self._by_len.add(e, int(lens[e]), common[e])
            held = sorted(((p.size, k) for k, p in self._postings.items() if p.size >= _COMMON_FROM), reverse=True)
            for _, k in held[: _COMMON_BITS - len(self._bit)]:
                if k not in self._bit:
                    self._give_bit(k)

    # ------------------------------------------------------------------------------ adding

    def add(self, ids: Sequence[int], keys: Sequence[int], alias: int) -> None:
        idx = self._lens.size
        self._lens.append(len(ids))
        self._alias.append(alias)
        self._is_wide.append(alias < 0 and len(ids) > _WIDE)
        self._common.append(0)
        if self.mean == "sample":
            self._reservoir(idx)
        if alias >= 0:
            return
        self._firsts.append(idx)
        for k in keys:
            p = self._postings.get(k)
            if p is None:
                p = self._postings[k] = _Growing(np.int64)
            p.append(idx)
        if self.compiled:
            if ids:
                self._by_len.add(idx, len(ids), 0)  # (first: a bit given below reaches it too)
            common = 0
            for k in keys:
                bit = self._bit.get(k)
                if bit is not None:
                    common |= bit
                elif self._postings[k].size == _COMMON_FROM and len(self._bit) < _COMMON_BITS:
                    self._give_bit(k)  # (this entry included)
            if common:
                self._common.buf[idx] |= np.uint64(common)
                self._by_len.masks[self._by_len.slot[idx]] = self._common.buf[idx]
        if len(ids) > _WIDE:
            self._wide[idx] = tuple(ids)
            return
        if idx >= len(self._tok) or len(ids) > self._tok.shape[1]:
            rows = max(len(self._tok), 2 * len(self._tok) if idx >= len(self._tok) else 0)
            cols = max(self._tok.shape[1], min(_WIDE, 2 * len(ids)))
            grown = np.zeros((rows, cols), dtype=np.int32)
            grown[: len(self._tok), : self._tok.shape[1]] = self._tok
            self._tok = grown
        if ids:
            self._tok[idx, : len(ids)] = np.asarray(ids, dtype=np.int32) + 1
            self._max_id = max(self._max_id, max(ids))

    def _give_bit(self, key: int) -> None:
        """A common key's bit, set in the mask of every entry holding it."""
        bit = self._bit[key] = 1 << len(self._bit)
        holders = self._postings[key].view()
        self._common.buf[holders] |= np.uint64(bit)
        if self.compiled:
            self._by_len.set_bit(holders, np.uint64(bit))

    def _reservoir(self, idx: int) -> None:
        """Algorithm R: after n entries, each is in the sample with probability SAMPLE/n."""
        self._seen += 1
        if len(self._sample) < SAMPLE:
            self._sample.append(idx)
            self._sample_firsts = None
        else:
            j = self._rng.randrange(self._seen)
            if j < SAMPLE:
                self._sample[j] = idx
                self._sample_firsts = None

    # ---------------------------------------------------------------------------- scoring

    def overlaps(self, keys: Sequence[int]) -> np.ndarray:
        """Bag-of-words overlap of the instruction with every pool entry (0 for repeats)."""
        lists = [p.view() for k in keys if (p := self._postings.get(k)) is not None]
        if not lists:
            return np.zeros(len(self), dtype=np.int64)
        return np.bincount(np.concatenate(lists), minlength=len(self))

    def exact_scores(self, ids: Sequence[int], masks: dict, entries: np.ndarray, overlap: np.ndarray) -> np.ndarray:
        """Exact F of the instruction (token ids `ids`, `masks` = rouge.char_masks(ids)) with
        each of `entries` (first entries sharing at least one token with it), given overlaps."""
        m = len(ids)
        lcs = np.minimum(overlap[entries], 1)  # overlap 0 or 1 is the LCS itself
        multi = np.flatnonzero(overlap[entries] >= 2)
        if len(multi):
            lcs = lcs.copy()
            lcs[multi] = self._lcs(ids, masks, entries[multi])
        return f_vector(lcs, m, self._lens.buf[entries])

    def _lcs(self, ids: Sequence[int], masks: dict, entries: np.ndarray) -> np.ndarray:
        m = len(ids)
        out = np.zeros(len(entries), dtype=np.int64)
        wide = np.fromiter((e in self._wide for e in entries.tolist()), bool, len(entries)) if self._wide else None
        if m > 64:  # more than one machine word: Python ints
            for i, e in enumerate(entries.tolist()):
                out[i] = lcs_with_masks(masks, m, self._ids_of(e))
            return out
        if wide is not None and wide.any():
            for i in np.flatnonzero(wide).tolist():
                out[i] = lcs_with_masks(masks, m, self._wide[int(entries[i])])
            narrow = np.flatnonzero(~wide)
        else:
            narrow = np.arange(len(entries))
        if len(narrow):
            out[narrow] = self._lcs_vector(masks, m, entries[narrow])
        return out

    def _ids_of(self, e: int) -> tuple[int, ...]:
        if e in self._wide:
            return self._wide[e]
        n = int(self._lens.buf[e])
        return tuple((self._tok[e, :n] - 1).tolist())

    def _lcs_vector(self, masks: dict, m: int, entries: np.ndarray) -> np.ndarray:
        """Bit-parallel LCS of a <= 64-token instruction with many entries at once."""
        table, keys = self._load_masks(masks)
        try:
            lens = self._lens.buf[entries]
            order = np.argsort(-lens, kind="stable")
            lens_sorted = lens[order]
            full = np.uint64((1 << m) - 1) if m < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
            v = np.full(len(entries), full, dtype=np.uint64)
            width = int(lens_sorted[0]) if len(lens_sorted) else 0
            rows = self._tok[entries[order], :width]
            # The masks of every column at once, one contiguous row per column (padding -> 0, a
            # no-op step); the loop below is then four ufuncs per column writing in place.
            cols = table[rows.T]
            u, s = np.empty_like(v), np.empty_like(v)
            # active[j]: entries longer than j (a prefix, lengths sorted descending)
            active = np.searchsorted(-lens_sorted, -np.arange(width), side="left")
            for j in range(width):
                a = int(active[j])
                if a <= _PYTHON_TAIL:  # the few longest entries: Python ints beat numpy calls
                    for i in range(a):
                        x = int(v[i])
                        for t in rows[i, j : lens_sorted[i]].tolist():
                            mk = masks.get(t - 1)
                            if mk:
                                u = x & mk
                                x = (x + u) | (x - u)
                        v[i] = x & int(full)
                    break
                va, ua, sa = v[:a], u[:a], s[:a]
                np.bitwise_and(va, cols[j, :a], out=ua)
                np.add(va, ua, out=sa)
                np.subtract(va, ua, out=va)
                np.bitwise_or(sa, va, out=va)
            lcs = m - np.bitwise_count(v & full).astype(np.int64)
        finally:
            table[keys] = 0
        out = np.empty(len(entries), dtype=np.int64)
        out[order] = lcs
        return out

    def stats(
        self, ids: Sequence[int], keys: Sequence[int], masks: dict, k: int, known: list[tuple[int, float]]
    ) -> tuple[list[tuple[int, float]], float | None]:
        """(the k best first entries by (F desc, index asc), exactly; the mean F or None).

        `known` are exact scores already computed (the decision's hits). Each bit-parallel LCS
        pass costs a few numpy calls per token column whatever its width, so the entries the
        mean needs ride along with the first pass of the search instead of a pass of their own."""
        if self.compiled and COMPILED and len(self) >= _COMPILED_FROM and 0 < len(ids) <= 64 and self.mean != "exact":
            return self._stats_compiled(ids, keys, masks, k)
        overlap = self.overlaps(keys)
        exact: dict[int, float] = dict(known)
        m = len(ids)
        sample = self._mean_entries()
        riders = sample[0][overlap[sample[0]] >= 2] if sample is not None else None
        counts = np.bincount(overlap)  # counts[v]: entries sharing v tokens (repeats share none)
        at_least = np.cumsum(counts[::-1])[::-1]  # at_least[v]: entries sharing >= v tokens
        sharing = int(at_least[1]) if len(at_least) > 1 else 0
        if sharing <= _ALL_AT_ONCE:
            self._score_into(exact, ids, masks, _join(np.flatnonzero(overlap), riders), overlap)
        else:
            # Exact scores for a head of high bounds first: the k-th best of those is a floor that
            # every other entry's bound must reach to matter; score only those, in one go. The head
            # comes from the highest overlaps, so the bound is never computed over the whole pool.
            level = int(np.flatnonzero(at_least >= _ALL_AT_ONCE)[-1])
            head = np.flatnonzero(overlap >= level)
            if len(head) > _ALL_AT_ONCE:
                bound = f_vector(overlap[head], m, self._lens.buf[head])
                head = head[np.argpartition(bound, len(head) - _ALL_AT_ONCE)[-_ALL_AT_ONCE:]]
            self._score_into(exact, ids, masks, _join(head, riders), overlap)
            floor = _kth_largest(exact, k)
            # F <= 2 ov / (m + n) <= 2 ov / (m + ov) (n >= ov): fewer shared tokens than this cannot reach it
            reach = floor - _TIE_MARGIN
            least = max(1, int(reach * m / (2 - reach)) if 0 < reach < 2 else 1)
            cand = np.flatnonzero(overlap >= least)
            cand = cand[f_vector(overlap[cand], m, self._lens.buf[cand]) >= reach]
            self._score_into(exact, ids, masks, cand, overlap)
        top = self._top(exact, k)
        if sample is None:
            return top, None
        return top, self._mean(*sample, overlap, exact, m)

    def _stats_compiled(
        self, ids: Sequence[int], keys: Sequence[int], masks: dict, k: int
    ) -> tuple[list[tuple[int, float]], float | None]:
        """`stats` by the compiled search (pool_kernel.py): the same results, bit for bit."""
        search, scores = pool_kernel.kernels()
        n, m = len(self), len(ids)
        if len(self._counts) < n:
            self._counts = np.zeros(len(self._lens.buf), dtype=np.int32)
            self._marks = np.zeros(len(self._lens.buf), dtype=np.int8)
            self._touched = np.zeros(len(self._lens.buf), dtype=np.int64)
        bits = 0
        rare = []
        for key in keys:
            bit = self._bit.get(key)
            if bit is not None:
                bits |= bit
            elif (p := self._postings.get(key)) is not None:
                rare.append(p.view())
        flat = np.concatenate(rare) if rare else np.zeros(0, dtype=np.int64)
        table, loaded = self._load_masks(masks)
        try:
            lens, wide = self._lens.view(), self._is_wide.view()
            best, found, deferred = search(
                flat, self._common.view(), np.uint64(bits), self._counts, self._touched, self._marks,
                lens, wide, self._tok, table, m, k, _TIE_MARGIN, *self._by_len.arrays(),
            )  # fmt: skip
            sample = self._mean_entries()
            if sample is not None:
                sampled = np.empty(len(sample[0]), dtype=np.float64)
                scores(sample[0], lens, wide, self._tok, table, m, sampled)
        finally:
            table[loaded] = 0
        exact = dict(zip(best.tolist(), found.tolist()))
        for e in deferred.tolist():  # too long for the token matrix: scored here
            exact[e] = self._python_f(masks, m, e)
        top = self._top(exact, k)
        if sample is None:
            return top, None
        for i in np.flatnonzero(sampled < 0).tolist():
            sampled[i] = self._python_f(masks, m, int(sample[0][i]))
        return top, float(np.mean(sampled[sample[1]]))

    def _top(self, exact: dict[int, float], k: int) -> list[tuple[int, float]]:
        """The k best of `exact`, which holds every entry sharing a word with the instruction
        that could be among them: when fewer share one, the rest score 0.0, earliest first."""
        top = _best(exact, k)
        have = {e for e, _ in top}
        for e in self._firsts.view()[: k + len(have)].tolist():
            if len(top) >= k:
                break
            if e not in have:
                top.append((e, 0.0))
        return top

    def _python_f(self, masks: dict, m: int, e: int) -> float:
        lcs = lcs_with_masks(masks, m, self._wide[e])
        return f_measure(lcs, m, int(self._lens.buf[e])) if lcs else 0.0

    def _load_masks(self, masks: dict) -> tuple[np.ndarray, np.ndarray]:
        """The shared mask table with the instruction's masks at token id + 1, and where they
        went (the caller zeroes them again)."""
        need = max(max(masks), self._max_id) + 2  # every token id of the entries indexes the table
        if need > len(self._table):
            self._table = np.zeros(max(need, 2 * len(self._table)), dtype=np.uint64)
        keys = np.fromiter(masks.keys(), np.int64, len(masks)) + 1
        self._table[keys] = np.fromiter(masks.values(), np.uint64, len(masks))
        return self._table, keys

    def _mean_entries(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(first entries the mean is over, the index of each pool/sample entry among them)."""
        n = len(self)
        if n == 0 or self.mean == "off":
            return None
        if self.mean == "sample" and n > SAMPLE:
            if self._sample_firsts is None:  # the reservoir changed: map it to first entries again
                entries = np.asarray(self._sample, dtype=np.int64)
                alias = self._alias.buf[entries]
                self._sample_firsts = np.unique(np.where(alias >= 0, alias, entries), return_inverse=True)
            return self._sample_firsts
        entries = np.arange(n, dtype=np.int64)
        alias = self._alias.buf[entries]
        return np.unique(np.where(alias >= 0, alias, entries), return_inverse=True)

    def _mean(self, uniq: np.ndarray, inverse: np.ndarray, overlap: np.ndarray, exact: dict, m: int) -> float:
        ov = overlap[uniq]
        scores = np.zeros(len(uniq), dtype=np.float64)
        one = np.flatnonzero(ov == 1)  # the LCS is the one shared token
        if len(one):
            scores[one] = f_vector(np.ones(len(one), dtype=np.int64), m, self._lens.buf[uniq[one]])
        multi = np.flatnonzero(ov >= 2)
        if len(multi):
            scores[multi] = [exact[e] for e in uniq[multi].tolist()]
        return float(np.mean(scores[inverse]))

    def _score_into(self, exact: dict[int, float], ids, masks, entries: np.ndarray, overlap: np.ndarray) -> None:
        todo = np.array([e for e in entries.tolist() if e not in exact], dtype=np.int64)
        if len(todo):
            exact.update(zip(todo.tolist(), self.exact_scores(ids, masks, todo, overlap).tolist()))


def _kth_largest(exact: dict[int, float], k: int) -> float:
    if len(exact) < k:
        return 0.0
    vals = np.fromiter(exact.values(), np.float64, len(exact))
    return float(np.partition(vals, len(vals) - k)[len(vals) - k])


def _best(exact: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k best (entry, F) by F descending, earlier entry first among equals."""
    ents = np.fromiter(exact.keys(), np.int64, len(exact))
    vals = np.fromiter(exact.values(), np.float64, len(exact))
    order = np.lexsort((ents, -vals))[:k]
    return list(zip(ents[order].tolist(), vals[order].tolist()))


def _join(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return a if b is None or not len(b) else np.concatenate([a, b])
