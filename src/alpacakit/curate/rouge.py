"""Exact ROUGE-L near-duplicate detection, fast enough for a whole dataset.

Self-instruct keeps a new instruction only if its ROUGE-L F-measure against every instruction
already in the pool is <= a threshold (0.7). Stanford's code scores every pair with
`rouge_score`, which is O(n^2) LCS tables in pure Python: hours for 52K instructions. This
module reaches the *same* decisions and the same scores, bit for bit, in seconds:

* Tokens are exactly `rouge_score`'s default tokenizer (`tokenize`), and a score is exactly its
  float formula (`f_measure`): precision = lcs/len(prediction), recall = lcs/len(target),
  F = 2*p*r/(p+r). Every keep/drop decision compares that float with the threshold, so ties
  such as F = 0.7000000000000001 fall the way `rouge_score` makes them fall.
* Work is avoided only with bounds that are exact. Mathematically F = 2*lcs/(m+n), and lcs is at
  most the bag-of-words overlap of the two token lists. For lengths (m, n) we compute, with the
  float formula itself, `need(m, n)`: the smallest lcs whose F exceeds the threshold. A pair
  whose overlap is below `need` can never exceed it.
* Prefix filtering (as in set-similarity joins) turns that into an index look-up. Each token
  occurrence becomes a key ("the" #1, "the" #2, ...) so that bag overlap is set overlap. Under a
  fixed order of keys (rarest first), two sets that share at least `tau` keys must share a key
  among the first `len - tau + 1` keys of each. So each pool entry is indexed only under its
  rarest keys, and a new instruction probes only its rarest keys: common words ("the", "a",
  "given") are almost never looked up. `tau(len)` is the smallest `need(len, n)` over all n.
* Survivors get the exact overlap (a C-speed frozenset intersection), and those still above
  `need` get an exact LCS length by the bit-parallel algorithm (Allison-Dix / Hyyro), with
  Python ints as bit vectors: one add and a few bit operations per token.

Key order only affects speed, never results. The order is re-derived from key frequencies
when the pool has doubled (or once up front with `prime`), and the index is rebuilt then.

Why F is computed with the new instruction as the target: Stanford calls
`rouge_scorer._score_lcs(new_instruction_tokens, existing_tokens)`. F is symmetric anyway:
`2*p*r` is exact-scaled before the one rounding multiply, and `+`/`*` commute in IEEE floats.

Why the float formula is monotone in lcs for fixed lengths (which the bounds rely on): the
exact value 2*lcs/(m+n) moves by 2/(m+n) per unit of lcs, while the formula's rounding error
is a few units in the last place (~1e-16); the two cannot cross for any realistic length.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from alpacakit.errors import ConfigError

# rouge_score.tokenize: lowercase, every run of characters outside [a-z0-9] becomes a space,
# split on whitespace, drop empty tokens. After the substitution only [a-z0-9 ] remain, so
# str.split() gives exactly the tokens rouge_score keeps after its VALID_TOKEN check.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

_NEVER = 1 << 30  # "no lcs is enough" for a pair of lengths
_OCC_SHIFT = 32  # occurrence key = token id | (occurrence number << 32)
_REORDERED_BASE = 1 << 40  # ranks given at a reorder; keys first seen later rank below (rarer)
_MIN_REORDER = 64  # do not reorder before the pool (plus primed texts) holds this many entries
_TIE_MARGIN = 1e-9  # >> float error of F (~1e-15), << any gap between distinct F values (>1e-6)


def tokenize(text: str) -> list[str]:
    """Tokens exactly as `rouge_score`'s default tokenizer (no stemmer) produces them."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def f_measure(lcs: int, target_len: int, prediction_len: int) -> float:
    """ROUGE-L F exactly as `rouge_score._score_lcs` computes it (0.0 if either side is empty)."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _char_masks(seq: Sequence) -> dict:
    """Position bit masks of each symbol of `seq` (bit i set where seq[i] is that symbol)."""
    masks: dict = {}
    for i, sym in enumerate(seq):
        masks[sym] = masks.get(sym, 0) | (1 << i)
    return masks


def _lcs_with_masks(masks: dict, m: int, other: Iterable) -> int:
    """Bit-parallel LCS length (Hyyro 2004): V starts all ones; per symbol b of `other`,
    U = V & M[b]; V = (V + U) | (V - U). The LCS length is the number of zeros in V's low m bits.
    Carries past bit m never flow back down, so masking once at the end is enough."""
    v = full = (1 << m) - 1
    get = masks.get
    for sym in other:
        mk = get(sym)
        if mk:
            u = v & mk
            v = (v + u) | (v - u)
    return m - (v & full).bit_count()


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences (exact)."""
    if not a or not b:
        return 0
    return _lcs_with_masks(_char_masks(a), len(a), b)


def rouge_l_f(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, identical to
    `RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure` (a is the target)."""
    ta, tb = tokenize(a), tokenize(b)
    return f_measure(lcs_length(ta, tb), len(ta), len(tb))


@dataclass
class DedupResult:
    """What the pool says about one instruction.

    kept: True when its ROUGE-L F with every pool entry is <= the threshold.
    max_similarity: the exact highest F against the pool (0.0 for an empty pool). None only for
        a *kept* instruction in decision-only mode (`stats=False`), where finding the exact
        maximum below the threshold would cost the speed that mode exists for.
    mean_similarity: the exact mean F over the whole pool, computed like Stanford's
        `avg_similarity_score` (np.mean of every pair's score, in pool order). Only with
        `full_stats=True` (it needs one LCS per pool entry sharing a word); otherwise None.
    most_similar: up to `keep_most_similar` pool instructions with the highest F, highest
        first, ties broken by earlier pool entry (exact). In decision-only mode: the nearest
        entry of a dropped instruction, nothing for a kept one.
    """

    kept: bool
    max_similarity: float | None
    mean_similarity: float | None = None
    most_similar: dict[str, float] = field(default_factory=dict)


class _Prepared:
    """One instruction turned into what the index needs: token ids, occurrence keys, masks."""

    __slots__ = ("text", "ids", "keys", "keyset", "m", "_masks")

    def __init__(self, text: str, ids: tuple[int, ...], keys: list[int]):
        self.text = text
        self.ids = ids
        self.keys = keys
        self.keyset = frozenset(keys)
        self.m = len(ids)
        self._masks: dict | None = None

    def masks(self) -> dict:
        if self._masks is None:
            self._masks = _char_masks(self.ids)
        return self._masks


class RougeDeduper:
    """A growing pool of instructions with exact ROUGE-L near-duplicate checks.

    Seeds go in first (`add_seed`, always added); each new instruction is then checked against
    everything in the pool, in order, and added only when kept (`add_if_novel`). Nothing is
    sized up front: the pool grows one instruction at a time, as generation produces them.

    Modes (results are exact in all of them; only what is reported differs):
      * default (`stats=True`): max_similarity and the top `keep_most_similar` are exact. For a
        kept instruction this searches below the threshold, which touches the common words'
        index lists: milliseconds on a pool of tens of thousands. Right for generation, where
        the teacher takes far longer per instruction.
      * `stats=False`: decision only (plus the nearest entry of a dropped instruction). Tens of
        microseconds per instruction; what `curate dedup` uses for whole datasets.
      * `full_stats=True`: also the exact mean F over the whole pool (Stanford's
        avg_similarity_score), at one LCS per pool entry that shares a word.

    Not thread-safe: one writer at a time.
    """

    def __init__(self, threshold: float = 0.7, keep_most_similar: int = 10, *,
                 stats: bool = True, full_stats: bool = False):
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ConfigError(
                f"ROUGE-L threshold must be a number between 0 and 1, got {threshold!r}",
                hint="use e.g. --threshold 0.7 (Stanford's value); 1.0 keeps everything")
        if keep_most_similar < 0:
            raise ConfigError(f"keep_most_similar must be >= 0, got {keep_most_similar}")
        if full_stats and not stats:
            raise ConfigError("full_stats=True needs stats=True")
        self.threshold = float(threshold)
        self.keep_most_similar = int(keep_most_similar)
        self.stats = bool(stats)
        self.full_stats = bool(full_stats)

        self._vocab: dict[str, int] = {}
        # The pool, one slot per entry, in pool order.
        self._texts: list[str] = []
        self._ids: list[tuple[int, ...]] = []
        self._keysets: list[frozenset[int]] = []
        self._lens: list[int] = []
        self._alias: list[int] = []  # -1, or the earlier entry with the very same text
        self._first_with_text: dict[str, int] = {}
        self._max_len = 0
        # Key order and the prefix index (keys -> entries indexed under them).
        self._rank: dict[int, int] = {}
        self._next_new_rank = 0
        self._df: dict[int, int] = {}  # key -> pool entries holding it
        self._primed_df: dict[int, int] = {}
        self._primed_count = 0
        self._weight_at_reorder = 0
        self._prefix: dict[int, list[int]] = {}
        # Every key of every entry (only needed for searches below the threshold).
        self._full: dict[int, list[int]] | None = {} if self.stats else None
        # Caches that depend only on the threshold and lengths.
        self._need_rows: dict[int, list[int]] = {}
        self._need_row_len = 0
        self._tau_cache: dict[int, int] = {}

    # ----------------------------------------------------------------------------- public API

    def __len__(self) -> int:
        return len(self._texts)

    def add_seed(self, instruction: str) -> None:
        """Put an instruction in the pool unconditionally (seed tasks come first)."""
        self._add(self._prepare(instruction))

    def check(self, instruction: str) -> DedupResult:
        """Compare an instruction with the pool without adding it."""
        return self._check(self._prepare(instruction))

    def add_if_novel(self, instruction: str) -> DedupResult:
        """Check an instruction and add it to the pool when it is kept."""
        c = self._prepare(instruction)
        result = self._check(c)
        if result.kept:
            self._add(c)
        return result

    def prime(self, instructions: Iterable[str]) -> None:
        """Order index keys by their rarity in texts that are about to arrive.

        Only speed changes (a better order probes fewer entries); decisions never do. Useful
        when the whole input is known up front (`curate dedup`); a streaming pool instead
        re-derives the order from its own contents each time it doubles.
        """
        df = self._primed_df
        n = 0
        for text in instructions:
            n += 1
            for k in set(self._keys_of(self._token_ids(tokenize(text)))):
                df[k] = df.get(k, 0) + 1
        self._primed_count += n
        self._reorder()

    # ------------------------------------------------------------------------ preparation

    def _token_ids(self, tokens: list[str]) -> list[int]:
        vocab = self._vocab
        ids = []
        for w in tokens:
            i = vocab.get(w)
            if i is None:
                i = vocab[w] = len(vocab)
            ids.append(i)
        return ids

    @staticmethod
    def _keys_of(ids: list[int]) -> list[int]:
        """Occurrence keys: the k-th repeat of a token is its own key, so bag overlap = set overlap."""
        if len(set(ids)) == len(ids):
            return list(ids)
        counts: dict[int, int] = {}
        keys = []
        for i in ids:
            c = counts.get(i, 0)
            counts[i] = c + 1
            keys.append(i | (c << _OCC_SHIFT))
        return keys

    def _prepare(self, text: str) -> _Prepared:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        ids = self._token_ids(tokenize(text))
        return _Prepared(text, tuple(ids), self._keys_of(ids))

    def _sorted_keys(self, keys: list[int]) -> list[int]:
        """Keys rarest first under the current order; keys never seen get a rank now (rarer
        than every key ranked at the last reorder) and keep it until the next reorder."""
        rank = self._rank
        for k in keys:
            if k not in rank:
                rank[k] = self._next_new_rank
                self._next_new_rank += 1
        return sorted(keys, key=rank.__getitem__)

    # ---------------------------------------------------------------------- exact bounds

    def _need(self, m: int, n: int) -> int:
        """Smallest lcs whose F (float formula) exceeds the threshold for lengths m, n; _NEVER if none."""
        cap = min(m, n)
        if cap == 0:
            return _NEVER
        t = self.threshold
        lcs = max(1, min(cap, int(t * (m + n) / 2)))
        while lcs > 1 and f_measure(lcs - 1, m, n) > t:
            lcs -= 1
        while lcs <= cap and not f_measure(lcs, m, n) > t:
            lcs += 1
        return lcs if lcs <= cap else _NEVER

    def _need_row(self, m: int) -> list[int]:
        """need(m, n) for each n up to the longest pool entry (cached per m). The row stops
        where no n can reach the threshold any more (n >= m*(2-t)/t): callers treat an index
        past its end as _NEVER."""
        row = self._need_rows.get(m)
        if row is None:
            t = self.threshold
            end = self._need_row_len
            if t > 0:
                end = min(end, int(m * (2 - t) / t) + 2)
            row = [self._need(m, n) for n in range(end + 1)]
            self._need_rows[m] = row
        return row

    def _tau(self, length: int) -> int:
        """Smallest overlap any pair involving a text of this length needs, over all partner
        lengths: the prefix-filter parameter (_NEVER when no partner can exceed t).

        Partners longer than `length` need at least need(length, length): the cap min(m, n)
        stays at `length` while F only falls as n grows. So n in 1..length covers all."""
        tau = self._tau_cache.get(length)
        if tau is None:
            tau = min((self._need(length, n) for n in range(1, length + 1)), default=_NEVER)
            self._tau_cache[length] = tau
        return tau

    def _prefix_len(self, length: int) -> int:
        tau = self._tau(length)
        return 0 if tau == _NEVER else length - tau + 1

    # ----------------------------------------------------------------------------- adding

    def _add(self, c: _Prepared) -> None:
        idx = len(self._texts)
        self._texts.append(c.text)
        self._ids.append(c.ids)
        self._keysets.append(c.keyset)
        self._lens.append(c.m)
        first = self._first_with_text.get(c.text)
        if first is not None:
            # Same text, same score against anything: searching it again can only repeat work.
            self._alias.append(first)
            return
        self._first_with_text[c.text] = idx
        self._alias.append(-1)
        if c.m > self._max_len:
            self._max_len = c.m
            if c.m > self._need_row_len:
                self._need_row_len = max(2 * self._need_row_len, c.m, 32)
                self._need_rows.clear()
        df = self._df
        for k in c.keys:
            df[k] = df.get(k, 0) + 1
        if self._full is not None:
            full = self._full
            for k in c.keys:
                lst = full.get(k)
                if lst is None:
                    full[k] = [idx]
                else:
                    lst.append(idx)
        if len(self._texts) + self._primed_count >= 2 * self._weight_at_reorder and \
                len(self._texts) + self._primed_count >= _MIN_REORDER:
            self._reorder()  # indexes the new entry too
        else:
            self._index_prefix(idx, self._sorted_keys(c.keys))

    def _index_prefix(self, idx: int, sorted_keys: list[int]) -> None:
        prefix = self._prefix
        for k in sorted_keys[: self._prefix_len(len(sorted_keys))]:
            lst = prefix.get(k)
            if lst is None:
                prefix[k] = [idx]
            else:
                lst.append(idx)

    def _reorder(self) -> None:
        """Rank keys rarest first by pool + primed frequency, and rebuild the prefix index."""
        df, pdf = self._df, self._primed_df
        keys = set(self._rank) | set(df) | set(pdf)
        order = sorted(keys, key=lambda k: (df.get(k, 0) + pdf.get(k, 0), k))
        self._rank = {k: _REORDERED_BASE + i for i, k in enumerate(order)}
        self._weight_at_reorder = len(self._texts) + self._primed_count
        self._prefix = {}
        rank = self._rank
        for idx, keyset in enumerate(self._keysets):
            if self._alias[idx] < 0:
                self._index_prefix(idx, sorted(keyset, key=rank.__getitem__))

    # ---------------------------------------------------------------------------- checking

    def _check(self, c: _Prepared) -> DedupResult:
        hits = self._hits_above_threshold(c)
        kept = not hits
        if not self.stats:
            if kept:
                return DedupResult(kept=True, max_similarity=None)
            best_f, best_idx = max((f, -i) for i, f in hits)
            return DedupResult(kept=False, max_similarity=best_f,
                               most_similar={self._texts[-best_idx]: best_f})
        if self.full_stats:
            top, mean = self._all_scores(c, self.keep_most_similar)
        else:
            top, mean = self._top_k(c, max(self.keep_most_similar, 1), hits), None
        max_sim = top[0][1] if top else 0.0
        most = {self._texts[i]: f for i, f in top[: self.keep_most_similar]}
        return DedupResult(kept=kept, max_similarity=max_sim, mean_similarity=mean, most_similar=most)

    def _hits_above_threshold(self, c: _Prepared) -> list[tuple[int, float]]:
        """Every pool entry (first of its text) whose F with `c` exceeds the threshold, exactly."""
        m = c.m
        p = self._prefix_len(m)
        if p == 0 or not self._prefix:
            return []
        prefix = self._prefix
        candidates: set[int] = set()
        for k in self._sorted_keys(c.keys)[:p]:
            lst = prefix.get(k)
            if lst is not None:
                candidates.update(lst)
        if not candidates:
            return []
        row = self._need_row(m)
        lens, keysets, ids = self._lens, self._keysets, self._ids
        keyset = c.keyset
        t = self.threshold
        hits = []
        row_end = len(row)
        for e in candidates:
            n = lens[e]
            if n >= row_end:
                continue
            need = row[n]
            if need > m or len(keyset & keysets[e]) < need:
                continue
            f = f_measure(_lcs_with_masks(c.masks(), m, ids[e]), m, n)
            if f > t:
                hits.append((e, f))
        return hits

    def _top_k(self, c: _Prepared, k: int, known: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The k best pool entries by (F desc, index asc), exactly; `known` are exact scores
        already computed (the entries above the threshold)."""
        if len(known) >= k:
            return sorted(known, key=lambda x: (-x[1], x[0]))[:k]
        m = c.m
        heap: list[tuple[float, int]] = []  # (F, -index): heap[0] is the current k-th best
        seen: set[int] = set()
        for e, f in known:
            seen.add(e)
            heapq.heappush(heap, (f, -e))
        full = self._full or {}
        lens, keysets, ids = self._lens, self._keysets, self._ids
        keyset = c.keyset
        keys = sorted(c.keys, key=lambda key: (len(full.get(key, ())), key))
        for i, key in enumerate(keys):
            if len(heap) == k:
                # An entry sharing none of keys[:i] overlaps in at most r = m - i tokens; the
                # best F it can reach, over every length, is 2r/(m+r) (at n = r).
                r = m - i
                if heap[0][0] > 2 * r / (m + r) + _TIE_MARGIN:
                    break
            lst = full.get(key)
            if not lst:
                continue
            for e in lst:
                if e in seen:
                    continue
                seen.add(e)
                n = lens[e]
                if len(heap) == k:
                    bound = f_measure(len(keyset & keysets[e]), m, n)
                    if (bound, -e) <= heap[0]:
                        continue
                item = (f_measure(_lcs_with_masks(c.masks(), m, ids[e]), m, n), -e)
                if len(heap) < k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        top = [(-neg, f) for f, neg in sorted(heap, reverse=True)]
        if len(top) < k:
            # Fewer than k entries share a word: the rest score 0.0, earliest first.
            for e in range(len(self._texts)):
                if len(top) >= k:
                    break
                if e not in seen and self._alias[e] < 0:
                    top.append((e, 0.0))
        return top

    def _all_scores(self, c: _Prepared, k: int) -> tuple[list[tuple[int, float]], float | None]:
        """Every entry's F (0.0 for those sharing no word), the top k, and np.mean in pool order."""
        import numpy as np  # only for full_stats

        full = self._full or {}
        candidates: set[int] = set()
        for key in c.keys:
            lst = full.get(key)
            if lst is not None:
                candidates.update(lst)
        scores = np.zeros(len(self._texts), dtype=np.float64)
        m = c.m
        for e in candidates:
            scores[e] = f_measure(_lcs_with_masks(c.masks(), m, self._ids[e]), m, self._lens[e])
        for e, first in enumerate(self._alias):
            if first >= 0:
                scores[e] = scores[first]
        mean = float(np.mean(scores)) if len(scores) else None
        firsts = [e for e in range(len(scores)) if self._alias[e] < 0]
        firsts.sort(key=lambda e: (-scores[e], e))
        top = [(e, float(scores[e])) for e in firsts[: max(k, 1)]]
        return top, mean
