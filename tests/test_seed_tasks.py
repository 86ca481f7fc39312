"""The 175 seed tasks alpacakit ships: what every line must satisfy.

The seeds are what the teacher imitates, so a malformed line, an instruction that Stanford's
filters would throw away, or two near-duplicate instructions all make every generated dataset
worse. These checks are deliberately independent of `alpacakit.generate.filters` (the word
list is inline here), so a change to the runtime filters cannot silently relax them.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from collections import Counter

import pytest

from alpacakit.generate.seeds import default_seeds_path, load_seed_tasks

SEEDS_PATH = default_seeds_path()
README_PATH = SEEDS_PATH.parent / "README.md"

EXPECTED_COUNT = 175
FIELDS = {"id", "name", "instruction", "instances", "is_classification", "category"}
# Stanford Alpaca's instruction filters (restated here, not imported).
BLACKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]
MIN_WORDS, MAX_WORDS = 4, 150
MAX_ROUGE_L = 0.7


def filter_problems(instruction: str) -> list[str]:
    """Why Stanford-style filtering would discard `instruction` (empty list: it passes)."""
    problems = []
    words = len(instruction.split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        problems.append(f"{words} words (need {MIN_WORDS}..{MAX_WORDS})")
    for word in BLACKLIST:
        if re.search(rf"\b{re.escape(word)}\b", instruction, flags=re.IGNORECASE):
            problems.append(f"blacklisted word {word!r}")
    if instruction.startswith("Write a program"):
        problems.append("starts with 'Write a program'")
    if not instruction or instruction[0] in string.punctuation or not instruction[0].isascii():
        problems.append("first character is punctuation or non-ASCII")
    return problems


@pytest.fixture(scope="module")
def records() -> list[dict]:
    lines = SEEDS_PATH.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file must end with a newline"
    out = []
    for lineno, line in enumerate(lines[:-1], start=1):
        assert line.strip(), f"{SEEDS_PATH}:{lineno}: blank line"
        obj = json.loads(line)
        assert isinstance(obj, dict), f"{SEEDS_PATH}:{lineno}: not a JSON object"
        out.append(obj)
    return out


def test_filter_helper_rejects_what_stanford_rejects():
    # Guards the guard: each of these must be caught, or the checks below prove nothing.
    assert filter_problems("Sketch a map of the town.")
    assert filter_problems("Please draw a cat")
    assert filter_problems("How do I go to the station from here?")
    assert filter_problems("Write a program that prints primes.")
    assert filter_problems("Too short now")
    assert filter_problems('"Quoted" instructions start with punctuation.')
    assert filter_problems("Élan is a French word; explain it.")
    assert filter_problems(" ".join(["word"] * 151))
    assert not filter_problems("Explain why the sky looks blue at noon.")
    assert not filter_problems("Summarise the plotline of the story.")  # 'plotline' is not 'plot'


def test_file_has_exactly_175_records(records):
    assert len(records) == EXPECTED_COUNT


def test_every_record_has_the_self_instruct_schema(records):
    for i, r in enumerate(records, start=1):
        where = f"{SEEDS_PATH}:{i}"
        assert set(r) == FIELDS, f"{where}: fields {sorted(r)}"
        assert isinstance(r["name"], str) and re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", r["name"]), where
        assert isinstance(r["instruction"], str) and r["instruction"] == r["instruction"].strip() != "", where
        assert isinstance(r["is_classification"], bool), where
        assert isinstance(r["category"], str) and re.fullmatch(r"[a-z_]+", r["category"]), where
        assert isinstance(r["instances"], list) and len(r["instances"]) == 1, where
        inst = r["instances"][0]
        assert set(inst) == {"input", "output"}, f"{where}: instance fields {sorted(inst)}"
        assert isinstance(inst["input"], str) and inst["input"] == inst["input"].strip(), where
        assert isinstance(inst["output"], str) and inst["output"].strip(), f"{where}: empty output"


def test_ids_run_from_seed_task_0_in_order(records):
    assert [r["id"] for r in records] == [f"seed_task_{i}" for i in range(EXPECTED_COUNT)]


def test_names_are_unique(records):
    dupes = [n for n, c in Counter(r["name"] for r in records).items() if c > 1]
    assert not dupes


def test_instructions_are_unique(records):
    dupes = [n for n, c in Counter(r["instruction"].lower() for r in records).items() if c > 1]
    assert not dupes


def test_about_forty_percent_have_an_input(records):
    share = sum(1 for r in records if r["instances"][0]["input"]) / len(records)
    assert 0.35 <= share <= 0.45, f"{share:.1%} of seeds have an input"


def test_classification_share_is_between_15_and_25_percent(records):
    share = sum(1 for r in records if r["is_classification"]) / len(records)
    assert 0.15 <= share <= 0.25, f"{share:.1%} are classification tasks"


def test_code_tasks_are_a_minority(records):
    # A code-leaning teacher already over-produces code; the seeds must not push it further.
    share = sum(1 for r in records if r["category"] == "code") / len(records)
    assert share <= 0.10, f"{share:.1%} are code tasks"


def test_at_least_twelve_categories_and_none_dominates(records):
    counts = Counter(r["category"] for r in records)
    assert len(counts) >= 12, counts
    assert max(counts.values()) <= 0.25 * len(records), counts


def test_every_instruction_passes_stanford_filters(records):
    bad = {r["id"]: p for r in records if (p := filter_problems(r["instruction"]))}
    assert not bad, bad


def test_no_two_instructions_overlap_above_rouge_l_0_7(records):
    from rouge_score import rouge_scorer, tokenizers

    # ROUGE-L F = 2*LCS/(len_a+len_b), and the LCS can be no longer than the shared tokens, so
    # 2*shared/(len_a+len_b) bounds it from above. Only pairs whose bound exceeds 0.5 need the
    # exact (pure-Python, quadratic) LCS; that keeps ~15K pairs fast on a busy CI core.
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    items = [(r["id"], r["instruction"], Counter(tokenizer.tokenize(r["instruction"]))) for r in records]
    too_close, above_half, checked = [], 0, 0
    for (ia, a, ca), (ib, b, cb) in itertools.combinations(items, 2):
        checked += 1
        bound = 2 * sum((ca & cb).values()) / (sum(ca.values()) + sum(cb.values()))
        if bound <= 0.5:
            continue
        f = scorer.score(a, b)["rougeL"].fmeasure
        above_half += f > 0.5
        if f > MAX_ROUGE_L:
            too_close.append((round(f, 3), ia, ib))
    assert checked == len(records) * (len(records) - 1) // 2
    assert not too_close, sorted(too_close, reverse=True)[:10]
    # Most pairs should be far apart, not just under the hard limit.
    assert above_half <= 0.01 * checked


def test_the_runtime_loader_reads_every_seed_with_its_category(records):
    tasks = load_seed_tasks()
    assert len(tasks) == EXPECTED_COUNT
    assert [t.id for t in tasks] == [r["id"] for r in records]
    assert all(t.category for t in tasks)


def test_readme_category_table_matches_the_file(records):
    """The README's counts are computed from the file; this keeps them from drifting."""
    rows = re.findall(
        r"^\|\s*`?([a-z_]+)`?\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|",
        README_PATH.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    table = {name: (int(n), int(ni), int(nc)) for name, n, ni, nc in rows}
    expected = {}
    for r in records:
        n, ni, nc = expected.get(r["category"], (0, 0, 0))
        expected[r["category"]] = (n + 1, ni + bool(r["instances"][0]["input"]), nc + r["is_classification"])
    assert table == expected
