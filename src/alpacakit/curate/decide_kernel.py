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

The F of each hit is computed in Python with `rouge.f_measure`, so hits are bit for bit those
of the Python index (tested against it, and against `rouge_score`'s pairwise loop). On the
52K-example journal of `generate_scale.py` (3,066 answers) the decisions take 1.84x less CPU
(`benchmarks/worker_processing.py --ab-decide 3`, same bytes).
"""

from __future__ import annotations

import functools

import numpy as np

from alpacakit.curate import rouge

_EMPTY = -1  # (as in kernels_jit.py: a free slot of the hash table)


@functools.cache
def kernels():
    """(find, append, add, rebuild, rehash): numba loads here, and the machine code from its
    cache (`kernels_jit.py`)."""
    from alpacakit.curate import kernels_jit as k

    return k.find, k.append, k.add, k.rebuild, k.rehash


class CompiledIndex:
    """The signature index of a `RougeDeduper`'s pool, in arrays: built from the pool as it is
    (`RougeDeduper.use_compiled_decisions`), then fed every entry (`add`) and asked (`find`).
    Token ids and keys come as int64 arrays; `next_id` is one past the highest id the caller
    has given out, so every id the kernels meet indexes the arrays sized by it."""

    def __init__(self, bounds, entries, primed_df: dict[int, int], primed_count: int, next_id: int):
        """`entries`: (token ids, keys, alias) of each pool entry in order (alias >= 0: a repeat
        of that earlier entry's text, never indexed); `primed_df`, `primed_count`: key
        frequencies in texts announced by `RougeDeduper.prime`, and how many texts."""
        self._find, self._append, self._add, self._rebuild, self._rehash = kernels()
        self._bounds = bounds
        self._primed_count = primed_count
        self._n = 0  # entries (also in _at[0])
        self._used = 0  # tokens (and keys) stored (_at[1])
        self._at = np.zeros(3, dtype=np.int64)  # entries, tokens stored, first entries
        self._lens = self._tok_off = self._key_off = self._firsts = self._stamp = self._out_e = self._out_lcs = None
        self._grow_entries(64)
        self._tok = np.zeros(1024, dtype=np.int64)
        self._key_flat = np.zeros(1024, dtype=np.int64)
        self._rank_of = np.zeros(0, dtype=np.int64)
        self._df = np.zeros(0, dtype=np.int64)
        self._table = np.zeros(1, dtype=np.uint64)  # the instruction's LCS masks by token id + 1
        self._grow_ids(max(next_id, max(primed_df, default=-1) + 1, 64))
        for k, v in primed_df.items():
            self._df[k] = v
        self._codes = np.full(1024, _EMPTY, dtype=np.int64)
        self._kinds = np.zeros(1024, dtype=np.int8)
        self._heads = np.zeros(1024, dtype=np.int64)
        self._node_entry = np.zeros(1024, dtype=np.int64)
        self._node_next = np.zeros(1024, dtype=np.int64)
        self._sizes = np.zeros(3, dtype=np.int64)  # slots used, nodes used, next new rank
        self._plan = np.zeros((0, 6), dtype=np.int64)
        self._sig_count = np.zeros(0, dtype=np.int64)
        self._plan_up_to(64)
        self._need_rows: dict[int, np.ndarray] = {}
        self._dp = np.zeros(65, dtype=np.int64)
        self._qno = 0
        self._max_len = 0
        self._sigs = 0  # signatures of the indexed entries
        for ids, keys, alias in entries:
            self._store(np.asarray(ids, dtype=np.int64), np.asarray(keys, dtype=np.int64), alias)
        self._weight_at_reorder = 0
        self._reorder()

    def __len__(self) -> int:
        return self._n

    # ------------------------------------------------------------------------------ adding

    def add(self, ids: np.ndarray, keys: np.ndarray, alias: int, next_id: int) -> None:
        """The next pool entry (as `RougeDeduper._add` with its index)."""
        if next_id > len(self._rank_of):
            self._grow_ids(next_id)
        if not self._store(ids, keys, alias):
            return
        weight = self._n + self._primed_count
        growth = 2 if self._weight_at_reorder < rouge._REORDER_BY_4_FROM else 4
        if weight >= growth * self._weight_at_reorder and weight >= rouge._MIN_REORDER:
            self._reorder()  # indexes the new entry too
        else:
            sigs = int(self._sig_count[len(keys)])
            self._room(sigs)
            self._add(keys, self._n - 1, self._plan, self._rank_of, *self._index())
            self._sigs += sigs

    def _store(self, ids: np.ndarray, keys: np.ndarray, alias: int) -> bool:
        """Append an entry; True when it is the first of its text (and so is to be indexed)."""
        m = len(ids)
        if self._n + 1 >= len(self._lens):
            self._grow_entries(2 * len(self._lens))
        if self._used + m > len(self._tok):
            size = max(2 * len(self._tok), self._used + m)
            self._tok, self._key_flat = (_grown(a, size, self._used) for a in (self._tok, self._key_flat))
        if m >= len(self._plan):
            self._plan_up_to(m)
        first = alias < 0
        self._append(ids, keys, first, self._at, self._lens, self._tok, self._tok_off, self._key_flat, self._key_off,
                     self._firsts, self._df)  # fmt: skip
        self._n += 1
        self._used += m
        if first:
            self._max_len = max(self._max_len, m)
        return first

    def _reorder(self) -> None:
        """Rank keys rarest first by frequency (ties by key id) and index every entry again."""
        known = np.flatnonzero((self._rank_of >= 0) | (self._df > 0))
        order = known[np.lexsort((known, self._df[known]))]
        self._rank_of[order] = rouge._REORDERED_BASE + np.arange(len(order), dtype=np.int64)
        self._weight_at_reorder = self._n + self._primed_count
        firsts = self._firsts[: self._at[2]]
        self._sigs = int(self._sig_count[self._lens[firsts]].sum())
        self._room(self._sigs, fresh=True)
        self._rebuild(self._key_flat, self._key_off, firsts, self._rank_of, self._plan, *self._index())

    def _index(self):
        return self._codes, self._kinds, self._heads, self._node_entry, self._node_next, self._sizes

    def _room(self, sigs: int, fresh: bool = False) -> None:
        """Nodes for `sigs` more signatures (all of them when `fresh`), and a table at most half
        full after them."""
        used_nodes = 0 if fresh else int(self._sizes[1])
        if used_nodes + sigs > len(self._node_entry):
            size = max(2 * len(self._node_entry), used_nodes + sigs)
            self._node_entry, self._node_next = (
                _grown(a, size, used_nodes) for a in (self._node_entry, self._node_next)
            )
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

    def _grow_entries(self, size: int) -> None:
        n = self._n
        self._lens, self._firsts, self._stamp, self._out_e, self._out_lcs = (
            np.zeros(size, dtype=np.int64) if a is None else _grown(a, size, n)
            for a in (self._lens, self._firsts, self._stamp, self._out_e, self._out_lcs)
        )
        self._tok_off, self._key_off = (
            np.zeros(size + 1, dtype=np.int64) if a is None else _grown(a, size + 1, n + 1)
            for a in (self._tok_off, self._key_off)
        )

    def _grow_ids(self, next_id: int) -> None:
        """Arrays indexed by token or key id, for ids below `next_id` (and room to grow)."""
        size = max(next_id, 2 * len(self._rank_of))
        old = len(self._rank_of)
        self._rank_of = np.concatenate([self._rank_of, np.full(size - old, -1, dtype=np.int64)])
        self._df = _grown(self._df, size, old)
        self._table = np.zeros(size + 1, dtype=np.uint64)  # (all zero between calls)

    def _plan_up_to(self, m: int) -> None:
        """Plans (and signature counts) for every length up to m."""
        if m < len(self._plan):
            return
        rows = []
        for n in range(len(self._plan), max(m + 1, 2 * len(self._plan))):
            p = self._bounds.plan(n)
            rows.append((p.pairs, p.pair_short, p.pair_long, p.singles, p.single_short, p.single_long))
        plan = np.array(rows, dtype=np.int64).reshape(-1, 6)
        self._plan = np.concatenate([self._plan, plan])
        pairs = plan[:, 0] * plan[:, 2] * (plan[:, 2] - 1) // 2
        self._sig_count = np.concatenate([self._sig_count, pairs + plan[:, 3] * plan[:, 5]])

    # ---------------------------------------------------------------------------- finding

    def find(self, ids: np.ndarray, keys: np.ndarray, next_id: int) -> list[tuple[int, float]]:
        """(entry, F) of every indexed entry whose F with the instruction (token ids `ids`,
        occurrence keys `keys`) exceeds the threshold."""
        m = len(ids)
        if not self._at[2] or not m:
            return []
        if next_id > len(self._rank_of):
            self._grow_ids(next_id)
        if m >= len(self._plan):
            self._plan_up_to(m)
        if m >= len(self._dp):
            self._dp = np.zeros(m + 1, dtype=np.int64)
        need = self._need_rows.get(m)
        if need is None or len(need) <= self._max_len:
            need = self._need_rows[m] = np.asarray(self._bounds.need_row(m, self._max_len), dtype=np.int64)
        self._qno += 1
        found = self._find(
            keys, ids, need, self._plan, self._rank_of, *self._index(), self._stamp, self._qno, self._lens,
            self._tok, self._tok_off, self._table, self._dp, self._out_e, self._out_lcs,
        )  # fmt: skip
        if not found:
            return []
        lens = self._lens
        return [
            (e, rouge.f_measure(lcs, m, int(lens[e])))
            for e, lcs in zip(self._out_e[:found].tolist(), self._out_lcs[:found].tolist())
        ]


def _grown(a: np.ndarray, size: int, keep: int) -> np.ndarray:
    """A copy of `a` with room for `size` values, its first `keep` values kept."""
    out = np.zeros(size, dtype=a.dtype)
    out[:keep] = a[:keep]
    return out
