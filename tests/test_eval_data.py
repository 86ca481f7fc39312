"""Specification of alpacakit's own evaluation data (src/alpacakit/evaluate/data/).

These files are what `alpacakit eval generate` and `alpacakit eval bench` use by default, so a
wrong answer key or a near-duplicate instruction silently corrupts every report. Each test
checks one property; every failure lists the offending file:line so it can be fixed by hand.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from importlib import resources
from itertools import combinations
from pathlib import Path

import pytest

from alpacakit.io import iter_jsonl

DATA = Path(str(resources.files("alpacakit.evaluate") / "data"))
BENCH = DATA / "bench"
# The seed tasks self-instruct starts from (generate/seed_data/; generate/seeds/ was the planned name).
_GEN = Path(str(resources.files("alpacakit.generate")))
SEEDS = next(
    (p for p in (_GEN / "seed_data" / "seed_tasks.jsonl", _GEN / "seeds" / "seed_tasks.jsonl") if p.is_file()),
    _GEN / "seed_data" / "seed_tasks.jsonl",
)

ROUGE_MAX = 0.7
EVAL_CATEGORIES = {
    "advice",
    "explanation",
    "writing",
    "rewriting",
    "brainstorming",
    "reasoning",
    "maths",
    "coding",
    "classification",
    "extraction",
    "summarisation",
    "comparison",
    "planning",
    "facts",
}


def load(path: Path) -> list[tuple[str, dict]]:
    """Rows as (\"file:line\", object), so assertion messages point at the line to fix."""
    assert path.is_file(), f"missing data file {path}"
    return [(f"{path.name}:{n}", obj) for n, obj in iter_jsonl(path)]


def report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


# ---------------------------------------------------------------- ROUGE-L helpers


def _tokens(text: str) -> tuple[str, ...]:
    from rouge_score import tokenize

    return tuple(tokenize.tokenize(text, None))


def rouge_pairs_above(left: list[str], right: list[str] | None, threshold: float) -> list[tuple[float, str, str]]:
    """All pairs with ROUGE-L F1 > threshold, scored by rouge_score (as self-instruct does).

    The unigram-overlap F1 of two texts bounds their ROUGE-L F1 from above (an LCS is a
    common sub-multiset), so pairs under the threshold on overlap are skipped without
    computing an LCS; that keeps the O(n^2) check to a few seconds on CI.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    lt = [Counter(_tokens(t)) for t in left]
    if right is None:
        pairs = combinations(range(len(left)), 2)
        rt, right = lt, left
    else:
        rt = [Counter(_tokens(t)) for t in right]
        pairs = ((i, j) for i in range(len(left)) for j in range(len(right)))
    hits = []
    for i, j in pairs:
        a, b = lt[i], rt[j]
        na, nb = sum(a.values()), sum(b.values())
        if not na or not nb:
            continue
        if 2 * sum((a & b).values()) / (na + nb) <= threshold:
            continue
        score = scorer.score(left[i], right[j])["rougeL"].fmeasure
        if score > threshold:
            hits.append((score, left[i], right[j]))
    return sorted(hits, reverse=True)


def test_rouge_helper_flags_near_duplicates_and_passes_distinct_texts():
    hits = rouge_pairs_above(
        ["Write a poem about the sea.", "Write a poem about the sea at night.", "List three prime numbers."],
        None,
        ROUGE_MAX,
    )
    assert [(a, b) for _, a, b in hits] == [("Write a poem about the sea.", "Write a poem about the sea at night.")]


# ---------------------------------------------------------------- held-out instructions


def test_eval_set_rows_follow_the_schema():
    problems = []
    for where, r in load(DATA / "eval_set.jsonl"):
        extra = set(r) - {"id", "instruction", "input", "category", "dataset", "reference"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
        for key in ("id", "instruction", "input", "category", "dataset"):
            if not isinstance(r.get(key), str):
                problems.append(f"{where}: '{key}' must be a string, found {r.get(key)!r}")
        if not str(r.get("instruction", "")).strip():
            problems.append(f"{where}: empty instruction")
        if r.get("dataset") != "alpacakit-heldout":
            problems.append(f"{where}: dataset must be 'alpacakit-heldout'")
        if r.get("category") not in EVAL_CATEGORIES:
            problems.append(f"{where}: category {r.get('category')!r} not in {sorted(EVAL_CATEGORIES)}")
        if "reference" in r and not (isinstance(r["reference"], str) and 0 < len(r["reference"]) <= 200):
            problems.append(f"{where}: 'reference' must be a short non-empty string")
    assert not problems, report(problems)


def test_eval_set_is_large_diverse_and_mostly_not_code():
    rows = [r for _, r in load(DATA / "eval_set.jsonl")]
    assert len(rows) >= 160
    cats = Counter(r["category"] for r in rows)
    assert set(cats) == EVAL_CATEGORIES, f"categories without items: {EVAL_CATEGORIES - set(cats)}"
    assert max(cats.values()) <= 0.12 * len(rows), f"one category dominates: {cats.most_common(3)}"
    assert cats["coding"] <= 0.10 * len(rows)
    with_input = sum(1 for r in rows if r["input"].strip())
    assert 0.25 <= with_input / len(rows) <= 0.40, f"{with_input}/{len(rows)} rows have an input"
    assert cats["summarisation"] and all(r["input"] for r in rows if r["category"] == "summarisation")


def test_eval_instructions_are_unique_and_no_pair_is_above_rouge_l_0_7():
    instructions = [r["instruction"] for _, r in load(DATA / "eval_set.jsonl")]
    assert len(set(instructions)) == len(instructions)
    hits = rouge_pairs_above(instructions, None, ROUGE_MAX)
    assert not hits, report([f"{s:.3f}  {a!r}  ~  {b!r}" for s, a, b in hits])


def test_eval_instructions_differ_from_the_seed_tasks():
    if not SEEDS.is_file():
        pytest.skip(f"no seed tasks at {SEEDS} yet")
    seeds = []
    for where, r in load(SEEDS):
        assert isinstance(r.get("instruction"), str), f"{where}: seed task without an 'instruction' string"
        seeds.append(r["instruction"])
    instructions = [r["instruction"] for _, r in load(DATA / "eval_set.jsonl")]
    hits = rouge_pairs_above(instructions, seeds, ROUGE_MAX)
    assert not hits, report([f"{s:.3f}  eval {a!r}  ~  seed {b!r}" for s, a, b in hits])


# ---------------------------------------------------------------- benchmark files

BENCH_FILES = {
    "facts_mc.jsonl": ("facts_", {"id", "question", "choices", "answer", "subject"}),
    "arithmetic_qa.jsonl": ("arith_", {"id", "question", "answers", "subject"}),
    "reading_qa.jsonl": ("read_", {"id", "context", "question", "answers", "subject"}),
    "facts_qa.jsonl": ("factqa_", {"id", "question", "answers", "subject"}),
}


@pytest.mark.parametrize("name", ["eval_set.jsonl", *BENCH_FILES])
def test_ids_are_unique_and_carry_the_file_prefix(name):
    path = DATA / name if name == "eval_set.jsonl" else BENCH / name
    prefix = "eval_" if name == "eval_set.jsonl" else BENCH_FILES[name][0]
    rows = load(path)
    ids = Counter(r["id"] for _, r in rows)
    assert not [i for i, n in ids.items() if n > 1], f"duplicate ids in {name}"
    bad = [f"{w}: id {r['id']!r}" for w, r in rows if not re.fullmatch(re.escape(prefix) + r"\d+", r["id"])]
    assert not bad, report(bad)


@pytest.mark.parametrize("name", list(BENCH_FILES))
def test_bench_rows_have_exactly_the_documented_keys(name):
    keys = BENCH_FILES[name][1]
    problems = []
    for where, r in load(BENCH / name):
        if set(r) != keys:
            problems.append(f"{where}: keys {sorted(r)}, expected {sorted(keys)}")
            continue
        for k in ("question", "subject") + (("context",) if "context" in keys else ()):
            if not (isinstance(r[k], str) and r[k].strip()):
                problems.append(f"{where}: '{k}' must be a non-empty string")
        if "answers" in keys and not (
            isinstance(r["answers"], list)
            and r["answers"]
            and all(isinstance(a, str) and a.strip() for a in r["answers"])
            and len(set(r["answers"])) == len(r["answers"])
        ):
            problems.append(f"{where}: 'answers' must be a non-empty list of distinct non-empty strings")
    assert not problems, report(problems)


def test_benchmarks_hold_at_least_240_items_with_80_per_required_file():
    counts = {name: len(load(BENCH / name)) for name in BENCH_FILES}
    for name in ("facts_mc.jsonl", "arithmetic_qa.jsonl", "reading_qa.jsonl"):
        assert counts[name] >= 80, counts
    assert sum(counts.values()) >= 240, counts


@pytest.mark.parametrize("name", ["arithmetic_qa.jsonl", "reading_qa.jsonl", "facts_qa.jsonl"])
def test_every_short_answer_survives_the_scorers_normalisation(name):
    """An alias that normalises to nothing (only articles or punctuation) would match an empty
    answer; two gold answers are fine, but each must still say something."""
    from alpacakit.evaluate.bench.scoring import normalize_answer

    empty = [f"{w}: {a!r}" for w, r in load(BENCH / name) for a in r["answers"] if not normalize_answer(a)]
    assert not empty, report(empty)


@pytest.mark.parametrize("name", list(BENCH_FILES))
def test_no_question_is_asked_twice(name):
    rows = load(BENCH / name)
    keys = Counter((r.get("context", ""), r["question"].strip().lower()) for _, r in rows)
    dup = [
        f"{w}: {r['question']!r}" for w, r in rows if keys[(r.get("context", ""), r["question"].strip().lower())] > 1
    ]
    assert not dup, report(dup)


# ---- multiple choice


def test_multiple_choice_items_have_four_distinct_choices_and_an_answer_in_range():
    problems = []
    for where, r in load(BENCH / "facts_mc.jsonl"):
        ch = r["choices"]
        if not (isinstance(ch, list) and len(ch) == 4 and all(isinstance(c, str) and c.strip() for c in ch)):
            problems.append(f"{where}: 'choices' must be 4 non-empty strings")
        elif len({c.strip().lower() for c in ch}) != 4:
            problems.append(f"{where}: choices repeat: {ch}")
        a = r["answer"]
        if not (type(a) is int and 0 <= a < 4):
            problems.append(f"{where}: 'answer' must be an int index 0-3, found {a!r}")
    assert not problems, report(problems)


def test_multiple_choice_answer_positions_are_balanced():
    """A model that always says 'A' (or 'D') must score near chance, not above it."""
    rows = [r for _, r in load(BENCH / "facts_mc.jsonl")]
    pos = Counter(r["answer"] for r in rows)
    assert all(pos[i] >= 0.2 * len(rows) for i in range(4)), pos


def test_multiple_choice_covers_several_subjects():
    subjects = Counter(r["subject"] for _, r in load(BENCH / "facts_mc.jsonl"))
    assert {"geography", "science", "history", "language"} <= set(subjects), subjects
    assert max(subjects.values()) <= 0.4 * sum(subjects.values()), subjects


# ---- arithmetic

_PLAIN = re.compile(r"What is ([-\d.+*/() ]+)\?")
_PERCENT = re.compile(r"What is (\d+(?:\.\d+)?)% of (\d+(?:\.\d+)?)\?")


def exact_value(expression: str) -> Fraction:
    """Evaluate + - * / and parentheses exactly (no float rounding, no eval())."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            a, b = ev(node.left), ev(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b, ast.Div: a / b}[type(node.op)]
        raise ValueError(f"unsupported syntax in {expression!r}")

    return ev(ast.parse(expression.strip(), mode="eval"))


def number(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def test_exact_value_follows_operator_precedence():
    assert exact_value("2 + 3 * 4") == 14
    assert exact_value("(48 - 18) / 6") == 5
    assert exact_value("0.1 + 0.2") == Fraction(3, 10)
    assert exact_value("-12 * 9") == -108


def test_every_arithmetic_answer_is_a_number_and_variants_agree():
    problems = []
    for where, r in load(BENCH / "arithmetic_qa.jsonl"):
        try:
            values = {number(a) for a in r["answers"]}
        except ValueError:
            problems.append(f"{where}: non-numeric answer in {r['answers']}")
            continue
        if len(values) != 1:
            problems.append(f"{where}: answer variants disagree: {r['answers']}")
    assert not problems, report(problems)


def test_plain_expression_answers_are_recomputed_exactly():
    checked, problems = 0, []
    for where, r in load(BENCH / "arithmetic_qa.jsonl"):
        q = r["question"]
        if m := _PERCENT.fullmatch(q):
            expected = number(m[1]) * number(m[2]) / 100
        elif m := _PLAIN.fullmatch(q):
            expected = exact_value(m[1])
        else:
            continue
        checked += 1
        if number(r["answers"][0]) != expected:
            problems.append(f"{where}: {q!r} has answer {r['answers'][0]}, computed {expected}")
    assert not problems, report(problems)
    assert checked >= 40, f"only {checked} questions parsed as plain expressions; did the format change?"


def test_arithmetic_mixes_bare_expressions_and_word_problems():
    subjects = Counter(r["subject"] for _, r in load(BENCH / "arithmetic_qa.jsonl"))
    assert subjects["arithmetic"] >= 30 and subjects["word_problem"] >= 30, subjects


# ---- reading comprehension


def test_reading_answers_appear_verbatim_in_their_context():
    problems = []
    for where, r in load(BENCH / "reading_qa.jsonl"):
        ctx = r["context"].lower()
        for a in r["answers"]:
            if a.lower() not in ctx:
                problems.append(f"{where}: answer {a!r} is not a span of the context")
    assert not problems, report(problems)


def test_reading_answers_are_short_spans():
    """Exact match only works for short answers; a sentence-long answer would need a judge."""
    long = [f"{w}: {a!r}" for w, r in load(BENCH / "reading_qa.jsonl") for a in r["answers"] if len(a.split()) > 8]
    assert not long, report(long)


def test_reading_contexts_are_reused_by_at_most_five_questions():
    contexts = Counter(r["context"] for _, r in load(BENCH / "reading_qa.jsonl"))
    assert len(contexts) >= 20
    assert max(contexts.values()) <= 5
