"""Exact ROUGE-L near-duplicate detection, fast enough for a whole dataset.

Self-instruct keeps a new instruction only if its ROUGE-L F-measure against every instruction
already in the pool is <= a threshold (0.7). Stanford's code scores every pair with
`rouge_score`: O(n^2) LCS tables in pure Python, hours for 52K instructions. This module
reaches the *same* decisions and the same scores, bit for bit, without scoring every pair:

* Tokens are exactly `rouge_score`'s default tokenizer (`tokenize`), and a score is exactly its
  float formula (`f_measure`): precision = lcs/len(prediction), recall = lcs/len(target),
  F = 2*p*r/(p+r). Every keep/drop decision compares that float with the threshold, so ties
  such as F = 0.7000000000000001 fall the way `rouge_score` makes them fall.
* Work is skipped only through bounds that are exact. Mathematically F = 2*lcs/(m+n), and lcs
  is at most the bag-of-words overlap of the two token lists. For lengths (m, n),
  `need(m, n)` is the smallest lcs whose F (the float formula itself) exceeds the threshold;
  a pair whose overlap is below `need` cannot exceed it.
* Prefix filtering (from set-similarity joins) turns "overlap >= need" into index look-ups.
  Each token occurrence is a key ("the" #1, "the" #2, ...), so bag overlap is set overlap.
  Sort every key set rarest first under one global order. If two sets share o keys, their two
  rarest shared keys lie within the first len - o + 2 keys of *each* set. So every pool entry
  is indexed under the key *pairs* of a short prefix of its rarest keys, and a new instruction
  looks up the pairs of its own prefix: common words ("the", "a", "given") almost never take
  part, and a shared pair of rare words is already a strong hint.
* Prefix lengths come from lower bounds on o. For a pair of lengths with n <= m, o >=
  need(n, n) (so the shorter side needs only a short prefix) and o >= tau(m), the smallest need
  of m over all partner lengths (the longer side uses its long prefix); symmetrically for n > m.
  Entries are therefore indexed twice: pairs within the short prefix ("S") and the remaining
  pairs within the long prefix ("X"); a query looks up its long-prefix pairs in S and its
  short-prefix pairs in X (`Bounds.plan`).
* Pairs need o >= 2 and get quadratic for long texts, so very short pairs (need 1) and long
  texts (prefix above `_PAIR_PREFIX_MAX`) use single keys instead, with the same S/X split;
  the length cut-offs make sure both sides of any pair use the same kind of signature.
* Candidates get the exact overlap (a C-speed frozenset intersection), and those still above
  `need` get an exact LCS length by the bit-parallel algorithm (Allison-Dix / Hyyro) with
  Python ints as bit vectors: one add and a few bit operations per token.

The key order only changes speed, never results. The streaming `RougeDeduper` re-derives it
from key frequencies each time the pool doubles (or once from `prime`), rebuilding its index;
`curate.dedup.dedup_instructions` uses the same signatures vectorised with numpy for files.

Why F is computed with the new instruction as the target: Stanford calls
`rouge_scorer._score_lcs(new_instruction_tokens, existing_tokens)`. F is symmetric anyway:
`2*p` is an exact scaling before the one rounding multiply, and IEEE `+` and `*` commute.

Why the float formula can be treated as monotone in lcs and in each length (the bounds rely
on it): the exact value 2*lcs/(m+n) moves by at least 2/(m+n)^2 per unit step, the formula's
rounding error is a few units in the last place (~1e-16); they cannot cross below ~10^7 tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from alpacakit.errors import ConfigError

# rouge_score.tokenize: lowercase, every run of characters outside [a-z0-9] becomes a space,
# split on whitespace, drop empty tokens. After the substitution only [a-z0-9 ] remain, so
# str.split() yields exactly the tokens that survive rouge_score's VALID_TOKEN check.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

NEVER = 1 << 30  # "no lcs is enough" for a pair of lengths
_PAIR_PREFIX_MAX = 16  # longest prefix indexed by key pairs (C(16, 2) = 120 pairs per text)
_PAIR_CUT_MAX = 4096  # texts this long always use single keys
_REORDERED_BASE = 1 << 40  # ranks given at a reorder; keys first seen later rank below (rarer)
_MIN_REORDER = 64  # no reorder before the pool (plus primed texts) holds this many entries
# Past this, the order is re-derived each time the pool grows 4x instead of 2x: by then word
# frequencies have settled, and the rebuilds at 8K, 32K (a third of a 52K run's decisions) cost
# more than the slightly staler order (decisions on the Alpaca journal: 1.3x faster).
_REORDER_BY_4_FROM = 4096


def tokenize(text: str) -> list[str]:
    """Tokens exactly as `rouge_score`'s default tokenizer (no stemmer) produces them."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


# Multilingual mode: a Han, Hiragana or Katakana character is a token of its own (those scripts
# put no spaces between words); every other run of Unicode letters and digits is a token.
_CJK = "\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_MULTI_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")

TOKENIZERS = ("rouge_score", "multilingual")


def tokenize_multilingual(text: str) -> list[str]:
    """Tokens for any script: NFKC-folded and case-folded; CJK characters one token each, other
    scripts' Unicode words (Cyrillic, Arabic, Greek, accented Latin...) whole. `rouge_score`'s
    default tokenizer keeps only [a-z0-9], so it reads Chinese or Russian as no tokens at all
    and a dedup on it keeps everything."""
    import unicodedata

    return _MULTI_TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def tokenizer_named(name: str) -> Callable[[str], list[str]]:
    if name == "rouge_score":
        return tokenize
    if name == "multilingual":
        return tokenize_multilingual
    raise ConfigError(f"unknown tokenizer {name!r}", hint=f"use one of {', '.join(TOKENIZERS)}")


# Bytes kept by `token_stream`: [a-z0-9] and NUL; every other byte becomes a space.
_KEEP_ALNUM_NUL = bytes.maketrans(
    bytes(range(256)), bytes(c if c == 0 or 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
)


def token_stream(texts: Sequence[str]) -> bytes | None:
    """`tokenize` of every text in one pass, for the bulk dedup: the texts joined and lowercased,
    each character other than [a-z0-9] a space and a NUL token between texts, so
    `token_stream(texts).split()` is every text's tokens (as bytes) in order, each text's
    followed by b"\x00". None if a text holds NUL itself. Same tokens as `tokenize`: lowercasing
    maps each character on its own except Greek final sigma, which is a separator either way,
    and a character that is not ASCII after lowercasing is a separator in both (here through
    `encode`'s "?"). No list per text: at 1M texts those lists (and the collections they cause)
    took half of the tokenizing time."""
    joined = "\x00".join(texts)
    if joined.count("\x00") != max(len(texts) - 1, 0):
        return None
    stream = joined.lower().encode("ascii", "replace").translate(_KEEP_ALNUM_NUL)
    return stream.replace(b"\x00", b" \x00 ") + (b" \x00" if texts else b"")


def f_measure(lcs: int, target_len: int, prediction_len: int) -> float:
    """ROUGE-L F exactly as `rouge_score._score_lcs` computes it (0.0 if either side is empty)."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def char_masks(seq: Sequence) -> dict:
    """Position bit masks of each symbol of `seq` (bit i set where seq[i] is that symbol)."""
    masks: dict = {}
    for i, sym in enumerate(seq):
        masks[sym] = masks.get(sym, 0) | (1 << i)
    return masks


def lcs_with_masks(masks: dict, m: int, other: Iterable) -> int:
    """Bit-parallel LCS length (Hyyro 2004) of a length-m sequence, given as `char_masks`, and
    `other`. V starts all ones; per symbol b of `other`: U = V & M[b]; V = (V + U) | (V - U).
    The LCS length is the number of zeros in V's low m bits. Carries past bit m never flow
    back down, so masking once at the end is enough."""
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
    return lcs_with_masks(char_masks(a), len(a), b)


def rouge_l_f(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, identical to
    `RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure` (a is the target)."""
    ta, tb = tokenize(a), tokenize(b)
    return f_measure(lcs_length(ta, tb), len(ta), len(tb))


def check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(
            f"ROUGE-L threshold must be a number between 0 and 1, got {threshold!r}",
            hint="use e.g. --threshold 0.7 (Stanford's value); 1.0 keeps everything",
        )
    return float(threshold)


# ------------------------------------------------------------------------------ exact bounds


@dataclass(frozen=True)
class Plan:
    """Signatures a text of one length takes part in (prefix lengths in keys, rarest first).

    pairs: index/probe key pairs; pair_short/pair_long are the short (S) and long prefixes.
    singles: index/probe single keys; single_short/single_long likewise.
    """

    pairs: bool
    pair_short: int
    pair_long: int
    singles: bool
    single_short: int
    single_long: int


_NO_PLAN = Plan(False, 0, 0, False, 0, 0)


class Bounds:
    """Everything that depends only on the threshold and the two lengths, cached.

    `need(m, n)`, `tau(length)` and the signature `plan(length)` are shared by the streaming
    deduper and the vectorised file deduper, so both index exactly the same signatures.
    """

    def __init__(self, threshold: float):
        self.threshold = check_threshold(threshold)
        self._need: dict[tuple[int, int], int] = {}
        self._tau: dict[int, int] = {}
        self._plans: dict[int, Plan] = {}
        self._rows: dict[int, list[int]] = {}
        self._row_len = 0
        self._pair_cut, self._single_from = self._cutoffs()

    def need(self, m: int, n: int) -> int:
        """Smallest lcs whose F (float formula) exceeds the threshold for lengths m, n; NEVER if none."""
        key = (m, n) if m <= n else (n, m)  # F is symmetric in the lengths
        got = self._need.get(key)
        if got is None:
            got = self._need[key] = self._compute_need(m, n)
        return got

    def _compute_need(self, m: int, n: int) -> int:
        cap = min(m, n)
        if cap == 0:
            return NEVER
        t = self.threshold
        lcs = max(1, min(cap, int(t * (m + n) / 2)))
        while lcs > 1 and f_measure(lcs - 1, m, n) > t:
            lcs -= 1
        while lcs <= cap and not f_measure(lcs, m, n) > t:
            lcs += 1
        return lcs if lcs <= cap else NEVER

    def tau(self, length: int) -> int:
        """Smallest overlap any pair involving a text of this length needs, over all partner
        lengths (NEVER when no partner can exceed the threshold). It is need(length, n) at the
        shortest feasible partner n: for feasible n1 < n2, the lcs that suffices for n2 either
        fits in n1 and then suffices there too (F only grows as n shrinks), or exceeds n1, and
        need(length, n1) <= n1 anyway."""
        tau = self._tau.get(length)
        if tau is None:
            n = self.smallest_partner(length)
            tau = self._tau[length] = NEVER if n == NEVER else self.need(length, n)
        return tau

    def smallest_partner(self, length: int) -> int:
        """Shortest partner length that can exceed the threshold with this length (or NEVER).
        A partner n <= length can iff F(lcs=n) > t, which grows with n (2n/(length+n))."""
        if length == 0 or self.threshold >= 1.0:
            return NEVER
        t = self.threshold

        def ok(n: int) -> bool:
            return f_measure(n, length, n) > t

        n = max(1, min(length, int(t * length / (2 - t))))
        while n > 1 and ok(n - 1):
            n -= 1
        while n <= length and not ok(n):
            n += 1
        return n if n <= length else NEVER

    def _cutoffs(self) -> tuple[int, int]:
        """(pair_cut, single_from): texts shorter than pair_cut use key pairs (their long pair
        prefix fits in _PAIR_PREFIX_MAX); texts at least single_from long use single keys, and
        single_from is the shortest partner a text of length pair_cut can have. So any two texts
        that can exceed the threshold share a kind of signature: both shorter than pair_cut
        (pairs), or the longer one >= pair_cut and then both >= single_from (singles). Pairs
        that need only one shared token (tau == 1, tiny texts) use single keys too."""
        if self.threshold >= 1.0:
            return NEVER, NEVER  # F <= 1 never exceeds 1: nothing is ever dropped
        for length in range(2, _PAIR_CUT_MAX):
            tau = self.tau(length)
            if tau != NEVER and length - max(tau, 2) + 2 > _PAIR_PREFIX_MAX:
                return length, self.smallest_partner(length)
        # Thresholds a hair below 1: any cut is correct (single keys cover every pair); this
        # one only keeps the search short.
        return _PAIR_CUT_MAX, self.smallest_partner(_PAIR_CUT_MAX)

    def plan(self, length: int) -> Plan:
        plan = self._plans.get(length)
        if plan is None:
            plan = self._plans[length] = self._make_plan(length)
        return plan

    def _make_plan(self, length: int) -> Plan:
        tau = self.tau(length)
        if tau == NEVER:
            return _NO_PLAN
        self_need = self.need(length, length)  # >= tau, finite whenever tau is (threshold < 1)
        # When every text takes single keys (single_from <= 1), they cover every pair alone.
        pairs = 2 <= length < self._pair_cut and self._single_from > 1
        singles = tau == 1 or length >= self._single_from
        return Plan(
            pairs=pairs,
            pair_short=min(length, length - max(self_need, 2) + 2) if pairs else 0,
            pair_long=min(length, length - max(tau, 2) + 2) if pairs else 0,
            singles=singles,
            single_short=length - self_need + 1 if singles else 0,
            single_long=length - tau + 1 if singles else 0,
        )

    def need_row(self, m: int, longest: int) -> list[int]:
        """need(m, n) for n = 0..longest (cached per m; rebuilt when `longest` grows)."""
        if longest > self._row_len:
            self._row_len = max(2 * self._row_len, longest, 32)
            self._rows.clear()
        row = self._rows.get(m)
        if row is None:
            row = self._rows[m] = [self.need(m, n) for n in range(self._row_len + 1)]
        return row


def pair_codes(sorted_keys: Sequence[int], short: int, long: int) -> tuple[list[int], list[int]]:
    """(pairs within the first `short` keys, pairs within the first `long` keys that are not)
    as ints `a << 32 | b`, a before b in the key order (key ids are < 2**32)."""
    sk = sorted_keys
    inner = [a << 32 | b for a, b in combinations(sk[:short], 2)]
    outer = [sk[i] << 32 | sk[j] for j in range(short, long) for i in range(j)]
    return inner, outer


# ----------------------------------------------------------------------------- streaming API


@dataclass
class DedupResult:
    """What the pool says about one instruction.

    kept: True when its ROUGE-L F with every pool entry is <= the threshold.
    max_similarity: the exact highest F against the pool (0.0 for an empty pool). None only for
        a *kept* instruction in decision-only mode (`stats=False`), where finding the exact
        maximum below the threshold would cost the speed that mode exists for.
    mean_similarity: the exact mean F over the whole pool, computed like Stanford's
        `avg_similarity_score` (np.mean of every pair's score, in pool order). Only with
        `mean="exact"` (or `full_stats=True`); with `mean="sample"` the mean over a fixed-seed
        uniform sample of 256 pool entries (exact while the pool is that small); otherwise None.
    most_similar: up to `keep_most_similar` pool instructions with the highest F, highest
        first, ties broken by earlier pool entry (exact). In decision-only mode: the nearest
        entry of a dropped instruction, nothing for a kept one.
    """

    kept: bool
    max_similarity: float | None
    mean_similarity: float | None = None
    most_similar: dict[str, float] = field(default_factory=dict)


class _Prepared:
    """One instruction as the index sees it: token ids, occurrence keys, LCS masks."""

    __slots__ = ("text", "ids", "keys", "keyset", "m", "_masks", "_arrays")

    def __init__(self, text: str, ids: tuple[int, ...], keys: list[int]):
        self.text = text
        self.ids = ids
        self.keys = keys
        self.keyset = frozenset(keys)
        self.m = len(ids)
        self._masks: dict | None = None
        self._arrays = None

    def masks(self) -> dict:
        if self._masks is None:
            self._masks = char_masks(self.ids)
        return self._masks

    def arrays(self):
        """(token ids, keys) as int64 arrays, for the compiled index (`decide_kernel.py`)."""
        if self._arrays is None:
            import numpy as np

            self._arrays = np.array(self.ids, dtype=np.int64), np.array(self.keys, dtype=np.int64)
        return self._arrays


class RougeDeduper:
    """A growing pool of instructions with exact ROUGE-L near-duplicate checks.

    Seeds go in first (`add_seed`, always added); each new instruction is then checked against
    everything in the pool and added only when kept (`add_if_novel`). Nothing is sized up
    front: the pool grows one instruction at a time, as generation produces them.

    Modes (decisions are exact in all of them; only what is reported differs):
      * default (`stats=True`): max_similarity and the top `keep_most_similar` are exact. For a
        kept instruction this searches below the threshold with numpy over the whole pool
        (`pool_stats.py`): ~0.4-0.7 ms per instruction at a pool of 10K-50K.
      * `stats=False`: the decision only (plus the nearest entry of a dropped instruction):
        ~100 us per instruction at a 50K pool.
      * `mean="exact"` (or `full_stats=True`): also the exact mean F over the whole pool
        (Stanford's avg_similarity_score); `mean="sample"`: the mean over a fixed-seed sample
        of 256 pool entries (exact up to that size), at a fraction of the cost.

    A large generate run's deciding worker switches to the compiled index
    (`use_compiled_decisions`, `decide_kernel.py`): the same signatures and hits, ~2x less CPU
    per decision. For a whole file at once, `alpacakit.curate.dedup.dedup_instructions` reaches
    the same decisions faster (vectorised). Not thread-safe: one writer at a time.
    """

    def __init__(
        self,
        threshold: float = 0.7,
        keep_most_similar: int = 10,
        *,
        stats: bool = True,
        full_stats: bool = False,
        tokenizer: str = "rouge_score",
        mean: str | None = None,
    ):
        if isinstance(keep_most_similar, bool) or not isinstance(keep_most_similar, int) or keep_most_similar < 0:
            raise ConfigError(f"keep_most_similar must be an integer >= 0, got {keep_most_similar!r}")
        mean = mean or ("exact" if full_stats else "off")
        if mean != "off" and not stats:
            raise ConfigError("a mean similarity needs stats=True")
        self._bounds = Bounds(threshold)
        self.threshold = self._bounds.threshold
        self._tokenize = tokenizer_named(tokenizer)
        self.tokenizer = tokenizer
        self.keep_most_similar = keep_most_similar
        self.stats = bool(stats)
        self.mean = mean
        self.full_stats = mean == "exact"

        self._ids_of: dict[str, int] = {}  # token -> id
        self._occ_ids: dict[tuple[int, int], int] = {}  # (token id, repeat >= 1) -> key id
        self._next_id = 0  # token ids and repeat-key ids share one space, all < 2**32
        # The pool, in order. _alias[i] >= 0 when entry i repeats the text of that earlier entry.
        self._texts: list[str] = []
        self._ids: list[tuple[int, ...]] = []
        self._keysets: list[frozenset[int]] = []
        self._lens: list[int] = []
        self._alias: list[int] = []
        self._first_with_text: dict[str, int] = {}
        self._decides = True  # False: a copy that only follows (`only_follow`)
        self._compiled = None  # the compiled index (`use_compiled_decisions`), which then decides
        self._max_len = 0
        # Key order (rank) and the signature index built under it.
        self._rank: dict[int, int] = {}
        self._next_new_rank = 0
        self._df: dict[int, int] = {}
        self._primed_df: dict[int, int] = {}
        self._primed_count = 0
        self._weight_at_reorder = 0
        self._stale = False  # entries added without indexing (add_known): reorder before a check
        self._index: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})  # pair S, pair X, single S, single X
        # Every entry's tokens and keys as numpy arrays, for searches below the threshold.
        self._pool_stats = None
        if self.stats:
            from alpacakit.curate.pool_stats import PoolStats

            self._pool_stats = PoolStats(mean)

    # ----------------------------------------------------------------------------- public API

    def __len__(self) -> int:
        return len(self._texts)

    def add_seed(self, instruction: str) -> None:
        """Put an instruction in the pool unconditionally (seed tasks come first)."""
        self._add(self._prepare(instruction))

    def add_known(self, instruction: str) -> None:
        """Put an instruction in the pool that an earlier, identical run already kept (a journal
        replay). Like `add_seed`, but the signature index is rebuilt once, at the next check,
        instead of growing entry by entry through its reorders: a 52K replay skips ~65K index
        insertions."""
        self._stale = True
        self._add(self._prepare(instruction), index=False)

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

    def decide_and_add(self, instruction: str) -> list[tuple[int, float]]:
        """`add_if_novel` without the statistics: the pool entries above the threshold (empty:
        kept, and added). For a pool whose statistics a forked copy computes (`describe`)."""
        c = self._prepare(instruction)
        hits = self._hits_above_threshold(c)
        if not hits:
            self._add(c)
        return hits

    def describe(self, instruction: str, hits: list[tuple[int, float]], *, report: bool) -> DedupResult | None:
        """Follow a decision that another copy of this pool made (`hits`, from its
        `decide_and_add`): the instruction joins the pool when kept (no hits), and when `report`
        its statistics are returned, exactly those `add_if_novel` would have given. A copy that
        follows every decision in order holds the same pool as the one deciding."""
        compact = self.describe_compact(instruction, hits, report=report)
        return None if compact is None else self.expand(not hits, compact)

    def describe_compact(self, instruction: str, hits: list[tuple[int, float]], *, report: bool) -> tuple | None:
        """`describe` with the most similar entries as pool positions: (max_similarity,
        mean_similarity, [(position, F), ...]). Every copy of the pool holds the same texts at
        the same positions, so a copy sends these through a pipe instead of the texts, and the
        process that decided turns them into the result (`expand`)."""
        c = self._prepare(instruction)
        compact = self._scores(c, hits) if report else None
        if not hits:
            self._add(c, index=False)  # (a copy never decides: no signature index to grow)
        return compact

    def expand(self, kept: bool, compact: tuple) -> DedupResult:
        """The `DedupResult` of `describe_compact`'s tuple (`kept`: the decision had no hits)."""
        max_sim, mean, top = compact
        most = {self._texts[i]: f for i, f in top}
        return DedupResult(kept=kept, max_similarity=max_sim, mean_similarity=mean, most_similar=most)

    def only_follow(self) -> None:
        """In a copy that only follows decisions (`describe`): from now on the pool keeps what
        the statistics read (texts, `PoolStats`), not what deciding needs (token tuples, key
        sets, key frequencies: ~45 MB at a 52K pool, per copy). What it already holds is left
        as it is, shared with the process it was forked from."""
        self._decides = False

    def use_compiled_decisions(self, expected_pool: int) -> None:
        """Decide with the compiled index (`decide_kernel.py`) from now on, for a pool about to
        grow to `expected_pool` entries: the same hits, with their F. For the process that
        decides a large run (numba is loaded there anyway for the statistics copies); the
        Python index is no longer kept up."""
        from alpacakit.curate import pool_kernel, pool_stats

        if self._compiled is not None or not self._decides:
            return  # (a pool replayed by `add_known` is fine: the compiled index is built whole)
        if not pool_stats.COMPILED or expected_pool < pool_stats._COMPILED_FROM or not pool_kernel.available():
            return
        from alpacakit.curate.decide_kernel import CompiledIndex

        entries = zip(self._ids, map(list, self._keysets), self._alias)
        self._compiled = CompiledIndex(self._bounds, entries, self._primed_df, self._primed_count, self._next_id)

    def use_compiled_search(self, expected_pool: int) -> None:
        """Statistics by the compiled search (`PoolStats.use_compiled`), for a pool about to grow
        to `expected_pool` entries."""
        if self._pool_stats is not None:
            self._pool_stats.use_compiled(expected_pool)

    def drop_statistics(self) -> None:
        """Decisions only from now on (`decide_and_add`): the statistics are computed elsewhere."""
        self.stats = False
        self._pool_stats = None

    def prime(self, instructions: Iterable[str]) -> None:
        """Order index keys by their rarity in texts that are about to arrive.

        Only speed changes (a better order looks up fewer entries); decisions never do. For
        when the texts are known up front; a streaming pool instead re-derives the order from
        its own contents each time it doubles.
        """
        df = self._primed_df
        n = 0
        for text in instructions:
            n += 1
            for k in self._keys_of(self._token_ids(self._tokenize(text))):
                df[k] = df.get(k, 0) + 1
        self._primed_count += n
        self._reorder()

    # ------------------------------------------------------------------------ preparation

    def _token_ids(self, tokens: list[str]) -> list[int]:
        ids_of = self._ids_of
        ids = []
        for w in tokens:
            i = ids_of.get(w)
            if i is None:
                i = ids_of[w] = self._next_id
                self._next_id += 1
            ids.append(i)
        return ids

    def _keys_of(self, ids: list[int]) -> list[int]:
        """Occurrence keys: the k-th repeat of a token is its own key, so bag overlap = set overlap."""
        if len(set(ids)) == len(ids):
            return list(ids)
        seen: dict[int, int] = {}
        keys = []
        for i in ids:
            c = seen.get(i, 0)
            seen[i] = c + 1
            if c == 0:
                keys.append(i)
            else:
                k = self._occ_ids.get((i, c))
                if k is None:
                    k = self._occ_ids[(i, c)] = self._next_id
                    self._next_id += 1
                keys.append(k)
        return keys

    def _prepare(self, text: str) -> _Prepared:
        if not isinstance(text, str):
            raise TypeError(f"instruction must be a str, got {type(text).__name__}")
        ids = self._token_ids(self._tokenize(text))
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

    def _signatures(self, sorted_keys: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
        """(pairs in the short prefix, other pairs of the long prefix, single keys likewise)."""
        plan = self._bounds.plan(len(sorted_keys))
        ps, px, ss, sx = [], [], [], []
        if plan.pairs:
            ps, px = pair_codes(sorted_keys, plan.pair_short, plan.pair_long)
        if plan.singles:
            ss = sorted_keys[: plan.single_short]
            sx = sorted_keys[plan.single_short : plan.single_long]
        return ps, px, ss, sx

    # ----------------------------------------------------------------------------- adding

    def _add(self, c: _Prepared, index: bool = True) -> None:
        idx = len(self._texts)
        self._texts.append(c.text)
        first = self._first_with_text.get(c.text)
        if self._pool_stats is not None:
            self._pool_stats.add(c.ids, c.keys, -1 if first is None else first)
        if first is None:
            self._first_with_text[c.text] = idx
        if self._compiled is not None:
            self._compiled.add(*c.arrays(), -1 if first is None else first, self._next_id)
            return
        if not self._decides:
            return
        self._ids.append(c.ids)
        self._keysets.append(c.keyset)
        self._lens.append(c.m)
        if first is not None:
            # Same text, same score against anything: looking it up again only repeats work.
            self._alias.append(first)
            return
        self._alias.append(-1)
        self._max_len = max(self._max_len, c.m)
        df = self._df
        for k in c.keys:
            df[k] = df.get(k, 0) + 1
        if not index:
            return
        weight = len(self._texts) + self._primed_count
        growth = 2 if self._weight_at_reorder < _REORDER_BY_4_FROM else 4
        if self._stale or (weight >= growth * self._weight_at_reorder and weight >= _MIN_REORDER):
            self._reorder()  # indexes the new entry too
        else:
            self._index_entry(idx, self._sorted_keys(c.keys))

    def _index_entry(self, idx: int, sorted_keys: list[int]) -> None:
        for table, codes in zip(self._index, self._signatures(sorted_keys)):
            for code in codes:
                lst = table.get(code)
                if lst is None:
                    table[code] = [idx]
                else:
                    lst.append(idx)

    def _reorder(self) -> None:
        """Rank keys rarest first by pool + primed frequency, and rebuild the index."""
        df, pdf = self._df, self._primed_df
        keys = set(self._rank) | set(df) | set(pdf)
        order = sorted(keys, key=lambda k: (df.get(k, 0) + pdf.get(k, 0), k))
        self._rank = rank = {k: _REORDERED_BASE + i for i, k in enumerate(order)}
        self._weight_at_reorder = len(self._texts) + self._primed_count
        self._stale = False
        self._index = ({}, {}, {}, {})
        for idx, keyset in enumerate(self._keysets):
            if self._alias[idx] < 0:
                self._index_entry(idx, sorted(keyset, key=rank.__getitem__))

    # ---------------------------------------------------------------------------- checking

    def _check(self, c: _Prepared) -> DedupResult:
        hits = self._hits_above_threshold(c)
        kept = not hits
        if not self.stats:
            if kept:
                return DedupResult(kept=True, max_similarity=None)
            best_f, neg_idx = max((f, -i) for i, f in hits)
            return DedupResult(kept=False, max_similarity=best_f, most_similar={self._texts[-neg_idx]: best_f})
        return self._statistics(c, hits)

    def _statistics(self, c: _Prepared, hits: list[tuple[int, float]]) -> DedupResult:
        return self.expand(not hits, self._scores(c, hits))

    def _scores(self, c: _Prepared, hits: list[tuple[int, float]]) -> tuple:
        """(max_similarity, mean_similarity, the most similar entries as (position, F))."""
        top, mean = self._pool_stats.stats(c.ids, c.keys, c.masks(), max(self.keep_most_similar, 1), hits)
        return (top[0][1] if top else 0.0), mean, top[: self.keep_most_similar]

    def _hits_above_threshold(self, c: _Prepared) -> list[tuple[int, float]]:
        """Every pool entry (first of its text) whose F with `c` exceeds the threshold, exactly."""
        if self._compiled is not None:
            return self._compiled.find(*c.arrays(), self._next_id)
        if self._stale:
            self._reorder()
        m = c.m
        plan = self._bounds.plan(m)
        if not (plan.pairs or plan.singles) or len(self._lens) == 0:
            return []
        sk = self._sorted_keys(c.keys)
        pair_s, pair_x, single_s, single_x = self._index
        candidates: set[int] = set()
        if plan.pairs:
            inner, outer = pair_codes(sk, plan.pair_short, plan.pair_long)
            for table, codes in ((pair_s, inner), (pair_s, outer), (pair_x, inner)):
                for code in codes:
                    lst = table.get(code)
                    if lst is not None:
                        candidates.update(lst)
        if plan.singles:
            for table, codes in ((single_s, sk[: plan.single_long]), (single_x, sk[: plan.single_short])):
                for code in codes:
                    lst = table.get(code)
                    if lst is not None:
                        candidates.update(lst)
        if not candidates:
            return []
        row = self._bounds.need_row(m, self._max_len)
        lens, keysets, ids = self._lens, self._keysets, self._ids
        keyset = c.keyset
        t = self.threshold
        hits = []
        for e in candidates:
            n = lens[e]
            need = row[n]
            if need > m or len(keyset & keysets[e]) < need:
                continue
            f = f_measure(lcs_with_masks(c.masks(), m, ids[e]), m, n)
            if f > t:
                hits.append((e, f))
        return hits
