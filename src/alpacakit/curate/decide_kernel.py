"""The decisions of `rouge.RougeDeduper` compiled with numba: the same signatures, in arrays.

A decision (is this instruction's ROUGE-L F above the threshold with any pool entry?) looks up
the key pairs and single keys of the instruction's rarest-first prefix (`rouge.Bounds.plan`) in
the signature index, then checks each candidate: ~40 per instruction in a 52K Alpaca run, of
which 99.8% fail. In Python that is a dict look-up per signature, a set union and a frozenset
intersection per candidate, and a dict insertion per signature of each kept instruction: ~130
us per instruction, the longest path left in a generate run with the statistics handed to
forked copies. Here (`CompiledIndex`) the same work runs compiled:

* one open-addressing hash table holds the four signature tables (pair S, pair X, single S,
  single X: the code and its table number are the key), each slot the head of a linked list of
  entries in one node array;
* a candidate is taken once per query (a stamp per entry), and checked by its exact LCS (the
  bit-parallel recurrence of `rouge.lcs_with_masks` for instructions of up to 64 tokens, the
  dynamic programme beyond) against `need(m, n)`, the smallest LCS whose F exceeds the
  threshold in `rouge_score`'s float formula: so a hit is exactly a pair above the threshold;
* keys are ranked rarest first as in `RougeDeduper` (a key first seen later ranks below every
  ranked key; the order is re-derived from key frequencies at each 2x, from 4,096 entries 4x,
  growth of the pool, and the index rebuilt); the order changes speed only, never a decision.

The F of each hit is computed by the caller with `rouge.f_measure`, so hits are bit for bit
those of the Python index (tested against it, and against `rouge_score`'s pairwise loop).
"""

from __future__ import annotations

import functools

import numpy as np

from alpacakit.curate import rouge

_EMPTY = -1  # (as in kernels_jit.py: a free slot of the hash table)


@functools.cache
def kernels():
    """(find, add, rebuild, rehash): numba loads here, and the machine code from its cache
    (`kernels_jit.py`)."""
    from alpacakit.curate import kernels_jit

    return kernels_jit.find, kernels_jit.add, kernels_jit.rebuild, kernels_jit.rehash


class CompiledIndex:
    """The signature index of a `RougeDeduper`'s pool, in arrays, for `find` and `add`: built
    from the pool as it is (`RougeDeduper.use_compiled_decisions`), then fed every entry."""

    def __init__(self, bounds, entries, primed_df: dict[int, int], primed_count: int, next_id: int):
        """`entries`: (token ids, keys, alias) of each pool entry in order (alias >= 0: a repeat
        of that earlier entry's text, never indexed); `primed_df`, `primed_count`: key
        frequencies in texts announced by `RougeDeduper.prime`, and how many texts."""
        self._find, self._add, self._rebuild, self._rehash = kernels()
        self._bounds = bounds
        self._primed_count = primed_count
        self._lens = _Ints()
        self._tok, self._tok_off = _Ints(), _Ints([0])
        self._keys, self._key_off = _Ints(), _Ints([0])
        self._firsts = _Ints()
        self._stamp = np.zeros(64, dtype=np.int64)
        self._qno = 0
        self._max_len = 0
        self._sigs = 0  # signatures of the indexed entries
        self._rank_of = np.full(max(next_id, 64), -1, dtype=np.int64)
        self._df = np.zeros(len(self._rank_of), dtype=np.int64)
        self._codes = np.full(1024, _EMPTY, dtype=np.int64)
        self._kinds = np.zeros(1024, dtype=np.int8)
        self._heads = np.zeros(1024, dtype=np.int64)
        self._node_entry = np.zeros(1024, dtype=np.int64)
        self._node_next = np.zeros(1024, dtype=np.int64)
        self._sizes = np.zeros(3, dtype=np.int64)  # slots used, nodes used, next new rank
        self._plan = np.zeros((0, 6), dtype=np.int64)
        self._sig_count = np.zeros(0, dtype=np.int64)
        self._need_rows: dict[int, np.ndarray] = {}
        self._table = np.zeros(64, dtype=np.uint64)
        self._dp = np.zeros(65, dtype=np.int64)
        self._out_e = np.zeros(64, dtype=np.int64)
        self._out_lcs = np.zeros(64, dtype=np.int64)
        self._max_tok = -1
        for k, v in primed_df.items():
            self._grow_keys(k + 1)
            self._df[k] = v
        for ids, keys, alias in entries:
            self._append(ids, keys, alias)
        self._weight_at_reorder = 0
        self._reorder()

    def __len__(self) -> int:
        return len(self._lens)

    # ------------------------------------------------------------------------------ adding

    def add(self, ids, keys, alias: int) -> None:
        """The next pool entry (as `RougeDeduper._add` with its index)."""
        if not self._append(ids, keys, alias):
            return
        weight = len(self) + self._primed_count
        growth = 2 if self._weight_at_reorder < rouge._REORDER_BY_4_FROM else 4
        if weight >= growth * self._weight_at_reorder and weight >= rouge._MIN_REORDER:
            self._reorder()  # indexes the new entry too
        else:
            m = len(keys)
            self._room(int(self._sig_count[m]))
            self._add(np.asarray(keys, dtype=np.int64), len(self) - 1, self._plan, self._rank_of, *self._index())
            self._sigs += int(self._sig_count[m])

    def _append(self, ids, keys, alias: int) -> bool:
        """Store an entry; True when it is the first of its text (and so is to be indexed)."""
        e = len(self)
        m = len(ids)
        self._lens.append(m)
        self._tok.extend(ids)
        self._tok_off.append(len(self._tok))
        self._keys.extend(keys)
        self._key_off.append(len(self._keys))
        if e >= len(self._stamp):
            self._stamp = np.concatenate([self._stamp, np.zeros(len(self._stamp), dtype=np.int64)])
        if alias >= 0:
            return False
        self._firsts.append(e)
        if ids:
            self._max_tok = max(self._max_tok, max(ids))
        if keys:
            self._grow_keys(max(keys) + 1)
            self._df[np.asarray(keys, dtype=np.int64)] += 1
        self._max_len = max(self._max_len, m)
        self._plan_up_to(m)
        return True

    def _reorder(self) -> None:
        """Rank keys rarest first by frequency (ties by key id) and index every entry again."""
        known = np.flatnonzero((self._rank_of >= 0) | (self._df > 0))
        order = known[np.lexsort((known, self._df[known]))]
        self._rank_of[order] = rouge._REORDERED_BASE + np.arange(len(order), dtype=np.int64)
        self._weight_at_reorder = len(self) + self._primed_count
        firsts = self._firsts.view()
        self._sigs = int(self._sig_count[self._lens.view()[firsts]].sum()) if len(firsts) else 0
        self._room(self._sigs, fresh=True)
        keys, off = self._keys.view(), self._key_off.view()
        self._rebuild(keys, off, firsts, self._rank_of, self._plan, *self._index())

    def _index(self):
        return self._codes, self._kinds, self._heads, self._node_entry, self._node_next, self._sizes

    def _room(self, sigs: int, fresh: bool = False) -> None:
        """Nodes for `sigs` more signatures (all of them when `fresh`), and a table at most half
        full after them."""
        used_nodes = 0 if fresh else int(self._sizes[1])
        if used_nodes + sigs > len(self._node_entry):
            size = max(2 * len(self._node_entry), used_nodes + sigs)
            for name in ("_node_entry", "_node_next"):
                grown = np.zeros(size, dtype=np.int64)
                grown[:used_nodes] = getattr(self, name)[:used_nodes]
                setattr(self, name, grown)
        used_slots = 0 if fresh else int(self._sizes[0])
        if 2 * (used_slots + sigs) > len(self._codes):
            size = len(self._codes)
            while 2 * (used_slots + sigs) > size:
                size *= 2
            codes = np.full(size, _EMPTY, dtype=np.int64)
            kinds, heads = np.zeros(size, dtype=np.int8), np.zeros(size, dtype=np.int64)
            if not fresh:
                self._rehash(self._codes, self._kinds, self._heads, codes, kinds, heads)
            self._codes, self._kinds, self._heads = codes, kinds, heads

    def _grow_keys(self, n: int) -> None:
        if n > len(self._rank_of):
            size = max(n, 2 * len(self._rank_of))
            self._rank_of = np.concatenate([self._rank_of, np.full(size - len(self._rank_of), -1, dtype=np.int64)])
            self._df = np.concatenate([self._df, np.zeros(size - len(self._df), dtype=np.int64)])

    def _plan_up_to(self, m: int) -> None:
        """Plans (and signature counts) for every length up to m."""
        if m < len(self._plan):
            return
        lengths = range(len(self._plan), max(m + 1, 2 * len(self._plan), 64))
        rows = []
        for n in lengths:
            p = self._bounds.plan(n)
            rows.append((p.pairs, p.pair_short, p.pair_long, p.singles, p.single_short, p.single_long))
        plan = np.array(rows, dtype=np.int64).reshape(-1, 6)
        self._plan = np.concatenate([self._plan, plan])
        pairs = plan[:, 0] * plan[:, 2] * (plan[:, 2] - 1) // 2
        self._sig_count = np.concatenate([self._sig_count, pairs + plan[:, 3] * plan[:, 5]])

    # ---------------------------------------------------------------------------- finding

    def find(self, ids, keys) -> list[tuple[int, float]]:
        """(entry, F) of every indexed entry whose F with the instruction (token ids `ids`,
        occurrence keys `keys`) exceeds the threshold."""
        m = len(ids)
        if not self._firsts.size or not m:
            return []
        self._plan_up_to(m)
        if keys:
            self._grow_keys(max(keys) + 1)
        top = max(max(ids), self._max_tok) + 2  # the masks are looked up by every token id + 1
        if top > len(self._table):
            self._table = np.zeros(max(top, 2 * len(self._table)), dtype=np.uint64)
        if m + 1 > len(self._dp):
            self._dp = np.zeros(m + 1, dtype=np.int64)
        if len(self._out_e) < len(self):
            self._out_e = np.zeros(2 * len(self), dtype=np.int64)
            self._out_lcs = np.zeros(2 * len(self), dtype=np.int64)
        need = self._need_rows.get(m)
        if need is None or len(need) <= self._max_len:
            need = self._need_rows[m] = np.asarray(self._bounds.need_row(m, self._max_len), dtype=np.int64)
        self._qno += 1
        found = self._find(
            np.asarray(keys, dtype=np.int64), np.asarray(ids, dtype=np.int64), need, self._plan, self._rank_of,
            *self._index(), self._stamp, self._qno, self._lens.view(), self._tok.view(), self._tok_off.view(),
            self._table, self._dp, self._out_e, self._out_lcs,
        )  # fmt: skip
        lens = self._lens.buf
        return [
            (e, rouge.f_measure(lcs, m, int(lens[e])))
            for e, lcs in zip(self._out_e[:found].tolist(), self._out_lcs[:found].tolist())
        ]


class _Ints:
    """A growing int64 array (amortised O(1) appends and extends)."""

    __slots__ = ("buf", "size")

    def __init__(self, values=()):
        self.buf = np.zeros(max(64, 2 * len(values)), dtype=np.int64)
        self.buf[: len(values)] = values
        self.size = len(values)

    def __len__(self) -> int:
        return self.size

    def append(self, value: int) -> None:
        if self.size == len(self.buf):
            self._grow(1)
        self.buf[self.size] = value
        self.size += 1

    def extend(self, values) -> None:
        n = len(values)
        if self.size + n > len(self.buf):
            self._grow(n)
        self.buf[self.size : self.size + n] = values
        self.size += n

    def _grow(self, n: int) -> None:
        grown = np.zeros(max(2 * len(self.buf), self.size + n), dtype=np.int64)
        grown[: self.size] = self.buf[: self.size]
        self.buf = grown

    def view(self) -> np.ndarray:
        return self.buf[: self.size]
