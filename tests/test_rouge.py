"""Exact ROUGE-L dedup: every score and every keep/drop decision equals rouge_score's.

The reference is the `rouge_score` package itself (RougeScorer(["rougeL"]), no stemmer), used
the way Stanford's self-instruct code uses it: `_score_lcs(new_tokens, pool_tokens)`, keep when
the max F over the pool is <= the threshold, in pool order.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

import alpacakit.curate.dedup as bulk
import alpacakit.curate.rouge as rouge
from alpacakit.curate.rouge import (
    NEVER,
    Bounds,
    DedupResult,
    RougeDeduper,
    f_measure,
    lcs_length,
    rouge_l_f,
    token_stream,
    tokenize,
)
from alpacakit.errors import ConfigError

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def dedup_instructions(*args, **kwargs) -> list[bool]:
    """The bulk dedup by both of its decision paths, the numpy join by chunks and the compiled
    walk by text (numba, `kernels_jit.bulk_decide`), which must agree; every test below that
    checks the bulk dedup checks both."""
    results = []
    for compiled_from in (1 << 60, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bulk, "_COMPILED_FROM", compiled_from)
            results.append(bulk.dedup_instructions(*args, **kwargs))
    assert results[0] == results[1], "the numpy and the compiled bulk decisions differ"
    return results[0]


def ref_tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


def ref_f(new: str, old: str) -> float:
    return rouge_scorer._score_lcs(ref_tokens(new), ref_tokens(old)).fmeasure


def ref_dedup(seeds: list[str], texts: list[str], threshold: float):
    """Stanford's loop: (keep flags, max F per text, all scores per text in pool order, pool texts)."""
    pool = list(seeds)
    keep, maxes, all_scores, pools = [], [], [], []
    for text in texts:
        scores = [ref_f(text, old) for old in pool]
        all_scores.append(scores)
        pools.append(list(pool))
        best = max(scores, default=0.0)
        maxes.append(best)
        keep.append(best <= threshold)
        if keep[-1]:
            pool.append(text)
    return keep, maxes, all_scores, pools


def assert_stanford_statistics(results, scores, pools, k: int) -> None:
    """Each result's mean and top k are those of Stanford's loop (`ref_dedup`): np.mean of every
    score, and the k best pool texts by (F desc, earliest first), a repeated text once."""
    for r, s, pool in zip(results, scores, pools):
        assert r.mean_similarity == float(np.mean(s))
        order = sorted(range(len(pool)), key=lambda i: (-s[i], i))
        expected = {}
        for i in order:
            expected.setdefault(pool[i], s[i])
        assert list(r.most_similar.items()) == list(expected.items())[:k]


def stream(seeds, texts, threshold, compiled=False, **kw) -> list[DedupResult]:
    """`add_if_novel` of each text after the seeds; `compiled`: decided by the compiled index."""
    d = RougeDeduper(threshold, **kw)
    for s in seeds:
        d.add_seed(s)
    if compiled:
        d.use_compiled_decisions(1 << 40)
        assert d._compiled is not None
    return [d.add_if_novel(t) for t in texts]


# ---------------------------------------------------------------------------- tokenizer

TOKENIZER_CASES = [
    "",
    " ",
    "\t\n\r",
    "!!!",
    "...?!",
    "--- *** ///",
    "Hello, World!",
    "don't won't it's",
    "O'Reilly's",
    "3.14159 and 2,000,000 items",
    "COVID-19 in 2020-03-11",
    "e-mail@example.com http://x.org/a?b=c",
    "café naïve résumé",
    "Straße groß",
    "İstanbul",
    "ΣΟΦΟΣ σοφος",
    "日本語のテキスト",
    "emoji 😀 test 👍🏽",
    "ＡＢＣ fullwidth １２３",
    "\u212a kelvin",
    "ﬁne ligature",
    "tab\tsep\u00a0nbsp\u2028line",
    "x_y x-y x.y",
    "MiXeD CaSe WoRdS",
    "a",
    "A1b2C3",
    "   leading and trailing   ",
    "dup dup dup",
    "\x00nul\x00byte",
]


@pytest.mark.parametrize("text", TOKENIZER_CASES)
def test_tokenize_is_rouge_score_tokenizer(text):
    assert tokenize(text) == ref_tokens(text)


def stream_tokens(texts: list[str]) -> list[list[str]] | None:
    stream = token_stream(texts)
    if stream is None:
        return None
    groups: list[list[str]] = [[]]
    for word in stream.split():
        if word == b"\x00":
            groups.append([])
        else:
            groups[-1].append(word.decode())
    assert groups.pop() == []  # (a NUL token after every text, the last one included)
    return groups


def test_the_bulk_token_stream_matches_tokenize_including_final_sigma_and_non_ascii():
    texts = TOKENIZER_CASES + ["ΟΔΟΣ", "ΟΔΟΣ.", "ends with Σ", "Σ starts", "İstanbul \u212aelvin", "naïve café"]
    clean = [t for t in texts if "\x00" not in t]
    assert stream_tokens(clean) == [tokenize(t) for t in clean]
    assert token_stream(["a\x00b", "c"]) is None  # a text holding NUL: tokenized one by one instead
    assert stream_tokens([]) == [] and stream_tokens([""]) == [[]] and stream_tokens(["", "a b"]) == [[], ["a", "b"]]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aAbZ09 .,'-\t\néİΣ\u212a😀_")), max_size=40))
def test_tokenize_property(text):
    assert tokenize(text) == ref_tokens(text)


# ---------------------------------------------------------------------------- single pairs


def test_lcs_length_matches_rouge_score_table_including_long_sequences():
    rng = random.Random(7)
    for _ in range(200):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 150))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 150))]
        expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
        assert lcs_length(a, b) == expected


def near_duplicates(rng: random.Random, base: str, k: int) -> list[str]:
    """Word edits, reorders, case changes and punctuation around one sentence."""
    words = base.split()
    out = []
    for _ in range(k):
        w = list(words)
        op = rng.choice(["delete", "insert", "swap", "case", "punct", "replace", "shuffle"])
        i = rng.randrange(len(w))
        if op == "delete" and len(w) > 1:
            w.pop(i)
        elif op == "insert":
            w.insert(i, rng.choice(["very", "the", "a", "quickly", "new"]))
        elif op == "swap" and len(w) > 1:
            j = rng.randrange(len(w))
            w[i], w[j] = w[j], w[i]
        elif op == "case":
            w = [x.upper() if rng.random() < 0.5 else x.title() for x in w]
        elif op == "punct":
            w = [x + rng.choice([",", ".", "!", "?", ";", "'s"]) for x in w]
        elif op == "replace":
            w[i] = rng.choice(["list", "write", "poem", "story", "explain"])
        else:
            rng.shuffle(w)
        out.append(" ".join(w))
    return out


BASES = [
    "Write a short poem about the sea at night",
    "Give three tips for staying healthy",
    "Explain why the sky is blue to a five year old child",
    "Rewrite the following sentence in the passive voice",
    "Generate a list of ten creative names for a coffee shop in Paris",
]


def test_rouge_l_f_equals_rouge_score_on_near_duplicates():
    rng = random.Random(0)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 12)] + BASES + ["", "?!", "the the the"]
    for a in texts:
        for b in texts:
            assert rouge_l_f(a, b) == SCORER.score(a, b)["rougeL"].fmeasure


def tie_pair(lcs: int, m: int, n: int) -> tuple[str, str]:
    """Texts of m and n distinct words whose LCS is exactly `lcs` words."""
    a = [f"w{i}" for i in range(m)]
    b = a[:lcs] + [f"v{i}" for i in range(n - lcs)]
    return " ".join(a), " ".join(b)


@pytest.mark.parametrize(
    "lcs,m,n,expected",
    [
        (7, 8, 12, 0.7000000000000001),  # exactly 0.7 on paper, rounds above: rouge_score drops it
        (7, 13, 7, 0.7000000000000001),
        (7, 10, 10, 0.7),  # exactly 0.7 in floats too: kept
        (14, 20, 20, 0.7),
        (21, 23, 37, 0.6999999999999998),  # rounds below: kept
    ],
)
def test_exact_ties_at_the_threshold_fall_as_rouge_score_decides(lcs, m, n, expected):
    new, old = tie_pair(lcs, m, n)
    ref = ref_f(new, old)
    assert ref == expected == f_measure(lcs, m, n) == rouge_l_f(new, old)
    d = RougeDeduper(0.7)
    d.add_seed(old)
    result = d.check(new)
    assert result.kept == (ref <= 0.7)
    assert result.max_similarity == ref
    assert dedup_instructions([new], [old], 0.7) == [ref <= 0.7]


@pytest.mark.parametrize("lcs,m", [(7, 10), (14, 20)])
def test_an_exact_tie_sharing_more_words_than_its_lcs_is_kept(lcs, m):
    """Both texts hold the same m words, the tail reversed: the bag overlap (m) passes every
    bound, so only the exact F decides, and it is exactly 0.7 in floats too: kept."""
    a = [f"w{i}" for i in range(m)]
    b = a[: lcs - 1] + a[lcs - 1 :][::-1]
    new, old = " ".join(b), " ".join(a)
    assert lcs_length(b, a) == lcs and ref_f(new, old) == 0.7
    d = RougeDeduper(0.7)
    d.add_seed(old)
    assert d.check(new).kept
    assert dedup_instructions([new], [old], 0.7) == [True]


def test_the_threshold_bound_agrees_with_the_float_formula_for_every_length_pair():
    for t in (0.0, 0.3, 0.5, 0.7, 0.9):
        b = Bounds(t)
        for m in range(0, 45):
            for n in range(0, 45):
                above = [lcs for lcs in range(0, min(m, n) + 1) if f_measure(lcs, m, n) > t]
                assert b.need(m, n) == (min(above) if above else NEVER)
                if above:  # monotone: every lcs from need up to min(m, n) exceeds t
                    assert above == list(range(above[0], min(m, n) + 1))
            assert b.tau(m) == min((b.need(m, n) for n in range(1, 4 * m + 3)), default=NEVER)


# ---------------------------------------------------------------------------- the deduper


def test_deduper_matches_stanford_loop_on_near_duplicate_sets_with_stats():
    rng = random.Random(1)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 15)]
    rng.shuffle(texts)
    seeds = BASES[:2]
    keep, maxes, scores, pools = ref_dedup(seeds, texts, 0.7)
    results = stream(seeds, texts, 0.7, keep_most_similar=5, full_stats=True)
    assert [r.kept for r in results] == keep
    assert [r.max_similarity for r in results] == maxes
    assert_stanford_statistics(results, scores, pools, 5)
    assert dedup_instructions(texts, seeds, 0.7) == keep
    assert 0 < sum(keep) < len(texts)  # the set really has near-duplicates and novel ones


def test_decision_only_mode_reports_the_nearest_entry_of_dropped_ones():
    d = RougeDeduper(0.7, keep_most_similar=0, stats=False)
    d.add_seed("Write a poem about the sea")
    d.add_seed("Write a poem about the sea at dawn")
    kept = d.add_if_novel("Explain how a rainbow forms")
    assert kept == DedupResult(kept=True, max_similarity=None, mean_similarity=None, most_similar={})
    dropped = d.add_if_novel("Write a poem about the sea at night")
    expected = ref_f("Write a poem about the sea at night", "Write a poem about the sea at dawn")
    assert not dropped.kept and dropped.max_similarity == expected
    assert dropped.most_similar == {"Write a poem about the sea at dawn": expected}
    assert len(d) == 3


def test_top_k_ties_list_earlier_pool_entries_first_and_pad_with_zero_scores():
    d = RougeDeduper(0.7, keep_most_similar=4)
    for s in ["alpha beta", "beta alpha", "gamma delta", "alpha gamma"]:
        d.add_seed(s)
    r = d.check("alpha zeta")
    # F = 0.5 with "alpha beta", "beta alpha" (tie: pool order) and "alpha gamma"; 0.0 with the rest.
    assert list(r.most_similar.items()) == [
        ("alpha beta", 0.5),
        ("beta alpha", 0.5),
        ("alpha gamma", 0.5),
        ("gamma delta", 0.0),
    ]
    assert r.kept and r.max_similarity == 0.5


def test_empty_pool_empty_text_and_repeated_seeds():
    d = RougeDeduper(0.7, full_stats=True)
    assert d.check("anything") == DedupResult(True, 0.0, None, {})
    d.add_seed("Same seed text")
    d.add_seed("Same seed text")
    d.add_seed("Other seed")
    r = d.check("same seed text!")
    assert not r.kept and r.max_similarity == 1.0
    assert list(r.most_similar) == ["Same seed text", "Other seed"]
    assert r.mean_similarity == float(np.mean([1.0, 1.0, ref_f("same seed text!", "Other seed")]))
    # No tokens: F is 0 against everything (rouge_score's rule), so it is always kept.
    assert d.add_if_novel("?!?").kept and d.add_if_novel("...").kept
    assert len(d) == 5


def test_check_does_not_add_but_add_if_novel_does():
    d = RougeDeduper()
    d.add_seed("Name three primary colors")
    assert d.check("Describe the water cycle").kept and len(d) == 1
    assert d.add_if_novel("Describe the water cycle").kept and len(d) == 2
    assert not d.check("Describe the water cycle.").kept


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.7", True])
def test_threshold_outside_0_1_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="threshold"):
        RougeDeduper(bad)
    with pytest.raises(ConfigError):
        dedup_instructions(["a"], threshold=bad)


def test_threshold_extremes():
    texts = ["a b", "a b", "c d", "b x", ""]
    assert dedup_instructions(texts, threshold=1.0) == [True] * 5
    assert [r.kept for r in stream([], texts, 1.0)] == [True] * 5
    keep0, *_ = ref_dedup([], texts, 0.0)
    assert dedup_instructions(texts, threshold=0.0) == keep0 == [r.kept for r in stream([], texts, 0.0)]


# ---------------------------------------------------------------------------- properties

VOCAB = ["a", "b", "c", "d", "the", "of", "to", "Write", "poem", "x"]
text_st = st.lists(st.sampled_from(VOCAB + [",", "!", "A", "B"]), min_size=0, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seeds=st.lists(text_st, max_size=4),
    texts=st.lists(text_st, min_size=1, max_size=25),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.7, 0.8, 1.0]),
)
def test_streaming_and_bulk_equal_rouge_score_loop(seeds, texts, threshold):
    keep, maxes, scores, _ = ref_dedup(seeds, texts, threshold)
    results = stream(seeds, texts, threshold, keep_most_similar=3, full_stats=True)
    assert [r.kept for r in results] == keep
    assert [r.max_similarity for r in results] == maxes
    assert [r.mean_similarity for r in results] == [float(np.mean(s)) if s else None for s in scores]
    for compiled in (False, True):
        fast = stream(seeds, texts, threshold, compiled, keep_most_similar=0, stats=False)
        assert [r.kept for r in fast] == keep
        assert [r.max_similarity for r, k in zip(fast, keep) if not k] == [m for m, k in zip(maxes, keep) if not k]
    assert dedup_instructions(texts, seeds, threshold) == keep


def edited_long_texts(rng: random.Random, count: int, lo: int, hi: int) -> list[str]:
    """Long texts (which use single-key signatures) with small edits between them."""
    words = [f"w{i}" for i in range(12)] + ["the", "of", "and"]
    bases = [[rng.choice(words) for _ in range(rng.randint(lo, hi))] for _ in range(4)]
    out = []
    for _ in range(count):
        w = list(rng.choice(bases))
        for _ in range(rng.randint(0, 5)):
            op = rng.random()
            if op < 0.35 and w:
                w.pop(rng.randrange(len(w)))
            elif op < 0.7:
                w.insert(rng.randint(0, len(w)), rng.choice(words))
            elif w:
                w[rng.randrange(len(w))] = rng.choice(words)
        out.append(" ".join(w))
    return out


@pytest.mark.parametrize(
    "seed,lo,hi,threshold", [(1, 15, 40, 0.7), (2, 25, 70, 0.7), (3, 10, 30, 0.5), (4, 2, 20, 0.3), (5, 30, 60, 0.85)]
)
def test_long_texts_and_small_join_chunks_match_rouge_score(monkeypatch, seed, lo, hi, threshold):
    rng = random.Random(seed)
    texts = edited_long_texts(rng, 40, lo, hi)
    seeds, texts = texts[:3], texts[3:]
    keep, maxes, _, _ = ref_dedup(seeds, texts, threshold)
    assert [r.kept for r in stream(seeds, texts, threshold, keep_most_similar=1)] == keep
    assert [r.max_similarity for r in stream(seeds, texts, threshold, keep_most_similar=1)] == maxes
    assert [r.max_similarity for r in stream(seeds, texts, threshold, True, keep_most_similar=1)] == maxes
    monkeypatch.setattr(bulk, "_CHUNK", 5)
    monkeypatch.setattr(bulk, "_MAX_JOIN", 20)  # forces chunks to be split while joining
    assert dedup_instructions(texts, seeds, threshold) == keep


def test_the_compiled_bulk_path_is_taken_and_the_numpy_one_when_signatures_are_too_wide(monkeypatch):
    rng = random.Random(11)
    texts = edited_long_texts(rng, 60, 3, 30)
    keep, _, _, _ = ref_dedup([], texts, 0.7)
    monkeypatch.setattr(bulk, "_COMPILED_FROM", 0)
    b = bulk._Bulk(texts, 0, Bounds(0.7))
    assert b.compiled and b.run(None) == keep
    monkeypatch.setattr(bulk, "_PACKED_BITS", 8)  # no packed signature fits in 8 bits
    b = bulk._Bulk(texts, 0, Bounds(0.7))
    assert not b.compiled and b.run(None) == keep


def test_key_ranks_by_counting_equal_those_by_np_unique(monkeypatch):
    rng = random.Random(12)
    texts = edited_long_texts(rng, 50, 2, 40) + ["the the the of of and", ""]
    dense = bulk._Bulk(texts, 2, Bounds(0.7))
    monkeypatch.setattr(bulk, "_DENSE_KEYS", -(1 << 40))
    by_unique = bulk._Bulk(texts, 2, Bounds(0.7))
    assert dense.k == by_unique.k and np.array_equal(dense.srk, by_unique.srk)


def test_pool_reorders_as_it_grows_without_changing_decisions():
    rng = random.Random(11)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 40)]
    rng.shuffle(texts)
    plain = [r.kept for r in stream([], texts, 0.7, stats=False)]
    primed = RougeDeduper(0.7, stats=False)
    primed.prime(texts)
    assert [primed.add_if_novel(t).kept for t in texts] == plain == dedup_instructions(texts, [], 0.7)
    assert plain == ref_dedup([], texts, 0.7)[0]


def test_rouge_l_f_is_symmetric_in_floats():
    rng = random.Random(3)
    for _ in range(300):
        lcs = rng.randint(1, 30)
        m, n = lcs + rng.randint(0, 40), lcs + rng.randint(0, 40)
        assert f_measure(lcs, m, n) == f_measure(lcs, n, m)
        assert math.isclose(f_measure(lcs, m, n), 2 * lcs / (m + n))


def test_bulk_overlap_bound_with_many_distinct_words_matches_rouge_score():
    """Texts of 40-70 words from a 3000-word vocabulary: each text's keys collide on the
    256-bit masks, so the bulk bound must count them (and stay an upper bound)."""
    rng = random.Random(5)
    vocab = [f"t{i}" for i in range(3000)]
    bases = [[rng.choice(vocab) for _ in range(rng.randint(40, 70))] for _ in range(6)]
    texts = []
    for _ in range(60):
        w = list(rng.choice(bases))
        for _ in range(rng.randint(0, 14)):
            i = rng.randrange(len(w))
            if rng.random() < 0.5:
                w.pop(i)
            else:
                w.insert(i, rng.choice(vocab))
        texts.append(" ".join(w))
    keep, maxes, _, _ = ref_dedup([], texts, 0.7)
    assert 6 <= sum(keep) < len(texts) - 10
    assert dedup_instructions(texts, [], 0.7) == keep
    assert [r.max_similarity for r in stream([], texts, 0.7, keep_most_similar=1)] == maxes


def test_bulk_mask_bound_never_undercounts_the_bag_overlap():
    """popcount(mask_a & mask_b) + min(lost_a, lost_b) >= bag overlap, for every pair, even
    with many keys per text colliding on the 256 bits (and the lost term is really needed)."""
    from collections import Counter

    rng = random.Random(9)
    vocab = [f"t{i}" for i in range(600)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(30, 90))) for _ in range(40)]
    b = bulk._Bulk(texts, 0, Bounds(0.7))
    bags = [Counter(tokenize(t)) for t in texts]
    needed_lost = False
    for i in range(len(texts)):
        for j in range(len(texts)):
            overlap = sum((bags[i] & bags[j]).values())
            shared_bits = int(bulk._popcount(b.masks[i : i + 1] & b.masks[j : j + 1])[0])
            assert shared_bits + min(b.lost[i], b.lost[j]) >= overlap
            needed_lost |= shared_bits < overlap
    assert needed_lost


def short_prefix(kind: str, length: int, t: float = 0.7) -> int:
    plan = Bounds(t).plan(length)
    return plan.pair_short if kind == "pairs" else plan.single_short


@pytest.mark.parametrize("kind,n", [("pairs", 14), ("pairs", 24), ("singles", 40), ("singles", 60)])
def test_a_match_found_only_through_the_long_prefix_of_the_longer_text(kind, n):
    """The pool text (n words) has its first shared word just past its short prefix and the
    new text has it inside its short prefix (at its end when lengths allow), so the only matching signature lies
    in the X table of the longer text: both engines must still drop the new text."""
    t, s = 0.7, 2 if kind == "pairs" else 1
    k = short_prefix(kind, n)
    shared = [f"s{i}" for i in range(n - k)]
    own = max(
        u
        for u in range(0, 40)  # as many own words as still put it within its short prefix
        if u <= short_prefix(kind, len(shared) + u) - s and f_measure(len(shared), len(shared) + u, n) > t
    )
    old = " ".join([f"u{i}" for i in range(k)] + shared)  # rare words first (all appear once)
    new = " ".join([f"v{i}" for i in range(own)] + shared)
    assert ref_f(new, old) > t
    for stats, compiled in ((True, False), (False, False), (False, True)):
        d = RougeDeduper(t, stats=stats)
        d.prime([old, new])  # ranks: words seen once, then the shared ones
        d.add_seed(old)
        if compiled:
            d.use_compiled_decisions(1 << 40)  # (from the same primed frequencies)
        assert d.check(new).kept is False
    assert dedup_instructions([new], [old], t) == [False]


def test_near_threshold_copies_of_long_texts_with_colliding_mask_bits():
    """Eight 80-word texts, each with copies that have 21-23 words replaced: F just above 0.7
    against their original only. More than 256 keys are shared, so shared keys collide on the
    256-bit masks of both texts, and only the collision count keeps the bulk bound exact."""
    rng = random.Random(21)
    vocab = [f"t{i}" for i in range(5000)]
    originals = [[rng.choice(vocab) for _ in range(80)] for _ in range(8)]
    copies = []
    for base in originals:
        for d in (21, 22, 23):
            w = list(base)
            for _ in range(d):
                w.pop(rng.randrange(len(w)))
            for _ in range(d):
                w.insert(rng.randrange(len(w) + 1), f"new{rng.randrange(10**6)}")
            copies.append(" ".join(w))
    seeds = [" ".join(b) for b in originals]
    keep, maxes, _, _ = ref_dedup(seeds, copies, 0.7)
    assert keep.count(False) >= 12  # most copies really are just above the threshold
    assert dedup_instructions(copies, seeds, 0.7) == keep
    assert [r.max_similarity for r in stream(seeds, copies, 0.7, keep_most_similar=1)] == maxes


def test_popcount_fallback_for_numpy_1_matches(monkeypatch):
    words = np.random.default_rng(0).integers(0, 2**63, size=(64, 4), dtype=np.int64).astype(np.uint64)
    expected = [sum(bin(int(w)).count("1") for w in row) for row in words]
    assert bulk._popcount(words).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert bulk._popcount(words).tolist() == expected


@pytest.mark.parametrize("seed,lo,hi", [(6, 50, 90), (7, 100, 180), (8, 2, 140)])
def test_top_k_and_exact_mean_match_rouge_score_for_texts_over_one_machine_word(seed, lo, hi):
    """Statistics run as numpy bit vectors of 64 bits: longer instructions and pool entries
    (over 64 and over 128 tokens) take the Python-int path and must agree all the same."""
    rng = random.Random(seed)
    texts = edited_long_texts(rng, 30, lo, hi)
    seeds, texts = texts[:3], texts[3:]
    keep, maxes, scores, pools = ref_dedup(seeds, texts, 0.7)
    results = stream(seeds, texts, 0.7, keep_most_similar=4, mean="exact")
    assert [r.kept for r in results] == keep and [r.max_similarity for r in results] == maxes
    for r, s, pool in zip(results, scores, pools):
        assert r.mean_similarity == float(np.mean(s))
        expected = {}
        for i in sorted(range(len(pool)), key=lambda i: (-s[i], i)):
            expected.setdefault(pool[i], s[i])
        assert list(r.most_similar.items()) == list(expected.items())[:4]


@pytest.mark.slow
def test_the_sampled_mean_is_exact_on_a_small_pool_and_a_fixed_sample_beyond():
    rng = random.Random(9)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 120)]
    rng.shuffle(texts)
    exact = stream([], texts, 1.0, keep_most_similar=1, mean="exact")
    sampled = stream([], texts, 1.0, keep_most_similar=1, mean="sample")
    assert len(texts) > 2 * 256
    small = [i for i in range(len(texts)) if i <= 256]
    assert [sampled[i].mean_similarity for i in small] == [exact[i].mean_similarity for i in small]
    late = [(s.mean_similarity, e.mean_similarity) for s, e in zip(sampled[300:], exact[300:])]
    assert any(s != e for s, e in late)  # really a sample beyond 256 entries...
    assert max(abs(s - e) for s, e in late) < 0.06  # ...and an estimate of the mean
    again = stream([], texts, 1.0, keep_most_similar=1, mean="sample")
    assert [r.mean_similarity for r in again] == [r.mean_similarity for r in sampled]  # replays draw alike
    assert [r.most_similar for r in sampled] == [r.most_similar for r in exact]


def test_entries_added_as_known_decide_and_score_exactly_like_checked_ones():
    """A journal replay adds kept instructions without indexing each (`add_known`); the index is
    rebuilt at the next check, and every later decision and statistic is the same."""
    rng = random.Random(12)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 30)]
    rng.shuffle(texts)
    first, rest = texts[:150], texts[150:]
    checked = RougeDeduper(0.7, keep_most_similar=3, mean="sample")
    kept_first = [t for t in first if checked.add_if_novel(t).kept]
    known, compiled = (RougeDeduper(0.7, keep_most_similar=3, mean="sample") for _ in range(2))
    for t in kept_first:
        known.add_known(t)
        compiled.add_known(t)
    compiled.use_compiled_decisions(1 << 40)  # (a resumed run's worker: the replayed pool, then compiled)
    assert compiled._compiled is not None
    expected = [checked.add_if_novel(t) for t in rest]
    assert [known.add_if_novel(t) for t in rest] == expected
    assert [compiled.add_if_novel(t) for t in rest] == expected


@pytest.mark.parametrize("mean", ["sample", "exact", "off"])
def test_a_copy_that_follows_the_decisions_describes_them_exactly_as_add_if_novel(mean):
    """The statistics can be computed by a copy of the pool (`curate/stats_farm.py`): one pool
    decides only (`decide_and_add`), a copy follows each decision (`describe`), and together they
    give `add_if_novel`'s results, kept and dropped alike, statistic for statistic."""
    rng = random.Random(13)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 40)]
    rng.shuffle(texts)
    seeds, texts = texts[:5], texts[5:]
    one, decider, copy = (RougeDeduper(0.7, keep_most_similar=4, mean=mean) for _ in range(3))
    for pool in (one, decider, copy):
        for s in seeds:
            pool.add_seed(s)
    decider.drop_statistics()
    copy.only_follow()  # as the farm's copies: what only deciding reads is no longer kept
    expected = [one.add_if_novel(t) for t in texts]
    followed, decisions = [], []
    for i, t in enumerate(texts):
        hits = decider.decide_and_add(t)
        decisions.append(not hits)
        followed.append(copy.describe(t, hits, report=i % 3 != 1))  # a copy also follows what it does not describe
    assert sum(not r.kept for r in expected) > 20 and sum(r.kept for r in expected) > 20
    assert decisions == [r.kept for r in expected]
    for i, (e, f) in enumerate(zip(expected, followed)):
        assert (f is None) == (i % 3 == 1)
        if f is not None:
            assert f == e
    assert len(decider) == len(copy) == len(one)
    seeds_only = RougeDeduper(0.7, stats=False)
    for s in seeds:
        seeds_only.add_seed(s)
    assert len(copy._keysets) == len(copy._ids) == len(seeds) and copy._df == seeds_only._df


def test_a_large_pool_reorders_at_each_fourfold_growth_and_decides_alike(monkeypatch):
    """Past `_REORDER_BY_4_FROM` the key order is re-derived at 4x growth, not 2x: fewer index
    rebuilds, the same decisions."""
    import alpacakit.curate.rouge as rouge

    monkeypatch.setattr(rouge, "_REORDER_BY_4_FROM", 128)
    rng = random.Random(14)
    vocab = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(4, 14))) for _ in range(900)]
    texts += [v for t in texts[:60] for v in near_duplicates(rng, t, 3)]
    rng.shuffle(texts)
    pool = RougeDeduper(0.7, stats=False)
    reorders = []
    real = RougeDeduper._reorder
    monkeypatch.setattr(RougeDeduper, "_reorder", lambda self: reorders.append(len(self)) or real(self))
    kept = [pool.add_if_novel(t).kept for t in texts]
    assert kept == dedup_instructions(texts, [], 0.7)
    assert reorders[:3] == [64, 128, 512] and len(pool) > 512


# ------------------------------------------------------------------ the compiled statistics search


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_the_compiled_decisions_find_the_python_index_hits_through_reorders(monkeypatch, threshold):
    """`use_compiled_decisions` (decide_kernel.py), switched on with a pool already there: every
    hit, with its F, is the Python index's, for texts of every length (over 64 tokens: the
    dynamic programme), repeats, words first seen late, and reorders at 2x and 4x growth."""
    monkeypatch.setattr(rouge, "_MIN_REORDER", 8)
    monkeypatch.setattr(rouge, "_REORDER_BY_4_FROM", 200)
    rng = random.Random(31)
    vocab = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(1, 24))) for _ in range(900)]
    texts += [" ".join(rng.choices(vocab, k=rng.randint(60, 100))) for _ in range(40)]
    texts += edited_long_texts(rng, 80, 66, 110)  # near-duplicates over 64 tokens
    texts += [t + " late" + str(i % 7) for i, t in enumerate(rng.sample(texts, 150))] + rng.sample(texts, 60)
    rng.shuffle(texts)
    python, compiled = RougeDeduper(threshold, stats=False), RougeDeduper(threshold, stats=False)
    for t in texts[:30]:
        python.add_seed(t)
        compiled.add_seed(t)
    compiled.use_compiled_decisions(1 << 40)
    reorders = []
    real = compiled._compiled._reorder
    monkeypatch.setattr(compiled._compiled, "_reorder", lambda: reorders.append(len(compiled)) or real())
    dropped = 0
    for t in texts[30:]:
        expected = sorted(python.decide_and_add(t))
        assert sorted(compiled.decide_and_add(t)) == expected, t
        dropped += bool(expected)
    assert len(python) == len(compiled) and 100 < dropped < len(texts) - 100
    assert sum(len(t.split()) > 64 for t in texts[30:] if t not in python._first_with_text) > 20  # long ones dropped
    assert len(reorders) >= 3


def test_the_compiled_search_matches_the_rouge_score_loop(monkeypatch):
    """The numba search (pool_kernel.py) on every pool size, with common-key bits from the 4th
    holder on: top-5 and the mean exactly as Stanford's loop scores them."""
    import alpacakit.curate.pool_kernel as pool_kernel
    import alpacakit.curate.pool_stats as pool_stats

    assert pool_kernel.available()
    monkeypatch.setattr(pool_stats.PoolStats, "compiled", True)
    monkeypatch.setattr(pool_stats, "_COMPILED_FROM", 0)
    monkeypatch.setattr(pool_stats, "_COMMON_FROM", 4)
    calls = []
    real = pool_stats.PoolStats._stats_compiled
    monkeypatch.setattr(pool_stats.PoolStats, "_stats_compiled", lambda *a: calls.append(1) or real(*a))
    rng = random.Random(21)
    texts = [v for b in BASES for v in near_duplicates(rng, b, 15)]
    rng.shuffle(texts)
    seeds = BASES[:2]
    keep, maxes, scores, pools = ref_dedup(seeds, texts, 0.7)
    assert len(pools[-1]) <= pool_stats.SAMPLE  # so the sampled mean is the exact one
    results = stream(seeds, texts, 0.7, keep_most_similar=5, mean="sample")
    assert len(calls) == len(texts)
    assert [r.kept for r in results] == keep
    assert [r.max_similarity for r in results] == maxes
    assert_stanford_statistics(results, scores, pools, 5)


def test_the_compiled_search_walks_entries_by_length_with_their_common_bits(monkeypatch):
    """The rows the compiled search walks (`PoolStats._by_len`): every first entry with a token,
    in its length's row (the last row: longer ones) in pool order, with the same common-key
    bits as `_common`, through rows moved to make room and bits given to earlier holders."""
    import numpy as np

    import alpacakit.curate.pool_stats as pool_stats

    monkeypatch.setattr(pool_stats.PoolStats, "compiled", True)
    monkeypatch.setattr(pool_stats, "_COMMON_FROM", 3)
    rng = random.Random(23)
    stats = pool_stats.PoolStats()
    lengths = [rng.choice([1, 2, 3, 5, 140]) for _ in range(300)]
    for n in lengths:
        ids = rng.sample(range(40), min(n, 40)) + list(range(40, 40 + max(0, n - 40)))
        stats.add(ids, ids, -1)
    stats.add([], [], -1)  # no token: in no row
    rows = stats._by_len
    top = len(rows.start) - 1
    for row in range(len(rows.start)):
        start, size = int(rows.start[row]), int(rows.size[row])
        entries = rows.entries[start : start + size]
        assert entries.tolist() == [e for e, n in enumerate(lengths) if min(n, top) == row]
        assert np.array_equal(rows.masks[start : start + size], stats._common.view()[entries])
    assert len(stats._bit) == pool_stats._COMMON_BITS and int(rows.size.max()) > 8  # bits given, rows moved


def test_the_compiled_and_numpy_searches_agree_on_a_large_pool_with_ties_repeats_and_long_texts(monkeypatch):
    """Past `_COMPILED_FROM` entries the statistics come from the compiled search. On a pool of
    a small vocabulary (many equal scores, so ties decide the top 10), with repeated texts,
    texts too long for the token matrix (scored in Python) and queries sharing nothing, it
    gives what the numpy search gives, field for field."""
    import alpacakit.curate.pool_stats as pool_stats

    rng = random.Random(22)
    vocab = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(3, 18))) for _ in range(2300)]
    texts += [" ".join(rng.choices(vocab, k=rng.randint(130, 190))) for _ in range(30)]  # > _WIDE tokens
    texts += rng.sample(texts, 40)  # repeats
    rng.shuffle(texts)
    pool = RougeDeduper(1.0, keep_most_similar=10, mean="sample")  # 1.0: everything joins the pool
    for t in texts:
        pool.add_seed(t)
    pool.use_compiled_search(len(pool))
    assert len(pool) > pool_stats._COMPILED_FROM
    queries = [" ".join(rng.choices(vocab, k=rng.randint(2, 20))) for _ in range(120)]
    queries += [" ".join(rng.choices(vocab, k=rng.randint(40, 64))) for _ in range(10)]  # long, still one word
    queries += [texts[0], texts[1], "nothing in common here", " ".join(rng.choices(vocab, k=80))]
    calls = []
    real = pool_stats.PoolStats._stats_compiled
    monkeypatch.setattr(pool_stats.PoolStats, "_stats_compiled", lambda *a: calls.append(1) or real(*a))
    compiled = [pool.check(q) for q in queries]
    assert len(calls) == len(queries) - 1  # all but the one over 64 tokens
    monkeypatch.setattr(pool_stats, "COMPILED", False)
    assert [pool.check(q) for q in queries] == compiled
    assert any(len(set(r.most_similar.values())) < len(r.most_similar) for r in compiled)  # ties were decided
