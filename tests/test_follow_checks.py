"""Verifiable instruction following: what each check accepts, the item file, and the scoring.

The check tests are the specification of each constraint kind (a passing answer, a failing
one, the edge cases). The data tests hold the shipped set to its promises: it validates, has
at least 200 items, every kind is used at least 10 times, every constraint fits in a short
(~96-token) answer, and every item can actually be satisfied (a constructed answer passes).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from alpacakit.errors import DataError
from alpacakit.evaluate.follow.checks import CHECKS, check, validate_item
from alpacakit.evaluate.follow.score import load_follow_set, paired_difference, score_answers

# --------------------------------------------------------------------------- the checks

CASES: list[tuple[str, dict[str, Any], str, bool]] = [
    # lowercase: some letters, none of them capital
    ("lowercase", {}, "the sun is a star.", True),
    ("lowercase", {}, "the sun is a Star.", False),  # one capital is enough to fail
    ("lowercase", {}, "123 !?", False),  # no letters at all
    ("lowercase", {}, "été à paris", True),
    # uppercase
    ("uppercase", {}, "WET FLOOR! 2 METRES", True),
    ("uppercase", {}, "WET FLOOr", False),
    ("uppercase", {}, "42", False),
    # words are \b\w+\b: "don't" counts as two
    ("max_words", {"n": 3}, "one two three", True),
    ("max_words", {"n": 3}, "one two three four", False),
    ("max_words", {"n": 3}, "don't stop", True),
    ("max_words", {"n": 2}, "don't stop", False),
    ("min_words", {"n": 3}, "naïve café owners", True),
    ("min_words", {"n": 3}, "two words", False),
    # sentences end at . ! ? followed by a space or the end
    ("sentences", {"n": 2, "relation": "exactly"}, "It rains. We stay in!", True),
    ("sentences", {"n": 2, "relation": "exactly"}, "It costs 3.5 euros. Cheap.", True),
    ("sentences", {"n": 2, "relation": "exactly"}, "One. Two. Three.", False),
    ("sentences", {"n": 1, "relation": "exactly"}, "No final full stop", True),
    ("sentences", {"n": 2, "relation": "exactly"}, 'He said "hi." Then he left.', True),
    ("sentences", {"n": 2, "relation": "at_most"}, "Short.", True),
    ("sentences", {"n": 2, "relation": "at_most"}, "A. B. C.", False),
    ("sentences", {"n": 3, "relation": "at_least"}, "A b. C d? E f!", True),
    ("sentences", {"n": 3, "relation": "at_least"}, "A b. C d.", False),
    ("sentences", {"n": 1, "relation": "exactly"}, "Hello... ", True),  # empty pieces ignored
    # bullets: exactly n lines starting with "- " or "* "
    ("bullets", {"n": 3}, "- apple\n- pear\n- plum", True),
    ("bullets", {"n": 3}, "Fruits:\n* apple\n  * pear\n* plum", True),
    ("bullets", {"n": 3}, "- apple\n- pear", False),
    ("bullets", {"n": 2}, "- apple\n- pear\n- plum", False),
    ("bullets", {"n": 1}, "**Bold** text\n- one", True),  # ** is emphasis, not a bullet
    ("bullets", {"n": 2}, "-apple\n-pear", False),  # a bullet needs the space
    # numbered: exactly n numbered lines, 1..n in order, "1." or "1)"
    ("numbered", {"n": 3}, "1. boil water\n2. add tea\n3. wait", True),
    ("numbered", {"n": 3}, "Steps:\n1) boil\n2) add\n3) wait\nDone.", True),
    ("numbered", {"n": 3}, "1. boil\n3. add\n2. wait", False),  # out of order
    ("numbered", {"n": 3}, "2. boil\n3. add\n4. wait", False),  # not from 1
    ("numbered", {"n": 3}, "1. boil\n2. add", False),
    ("numbered", {"n": 2}, "1. boil\n2. add\n3. wait", False),
    # include_words: whole words, any case
    ("include_words", {"words": ["moon", "stars"]}, "The Moon and the STARS.", True),
    ("include_words", {"words": ["moon", "stars"]}, "The moon shines.", False),
    ("include_words", {"words": ["cat"]}, "Two cats.", False),  # not a whole word
    ("include_words", {"words": ["ice cream"]}, "I like Ice Cream.", True),
    # exclude_words
    ("exclude_words", {"words": ["blue"]}, "The sky is azure.", True),
    ("exclude_words", {"words": ["blue"]}, "The sky is Blue.", False),
    ("exclude_words", {"words": ["phone"]}, "A smartphone is small.", True),
    # starts_with: case-insensitive, leading whitespace ignored
    ("starts_with", {"text": "Dear diary"}, "  dear Diary, today...", True),
    ("starts_with", {"text": "Dear diary"}, "Today, dear diary...", False),
    # ends_with: case-sensitive, trailing whitespace ignored
    ("ends_with", {"text": "See you there!"}, "Party at 5. See you there!\n", True),
    ("ends_with", {"text": "See you there!"}, "Party at 5. See you there.", False),
    ("ends_with", {"text": "See you there!"}, "Party at 5. see you there!", False),
    # json_keys: exactly the listed keys; bare, fenced, or the outer {...}
    ("json_keys", {"keys": ["name", "city"]}, '{"name": "Maria", "city": "Lisbon"}', True),
    ("json_keys", {"keys": ["name", "city"]}, 'Here it is:\n```json\n{"city": "Lisbon", "name": "Maria"}\n```', True),
    ("json_keys", {"keys": ["name", "city"]}, 'Sure! {"name": "Maria", "city": "Lisbon"} Done.', True),
    ("json_keys", {"keys": ["name", "city"]}, '{"name": "Maria"}', False),  # missing key
    ("json_keys", {"keys": ["name", "city"]}, '{"name": "Maria", "city": "Lisbon", "age": 30}', False),  # extra key
    ("json_keys", {"keys": ["name"]}, '["name"]', False),  # not an object
    ("json_keys", {"keys": ["name"]}, "{name: Maria}", False),  # not JSON
    # no_commas
    ("no_commas", {}, "Bread and butter and jam.", True),
    ("no_commas", {}, "Bread, butter and jam.", False),
    # title: <<...>> with something inside
    ("title", {}, "<<Night Sea>>\nThe moon is bright.", True),
    ("title", {}, "<< >>\nThe moon is bright.", False),
    ("title", {}, "<Night Sea>\nThe moon is bright.", False),
    # quoted: the whole stripped answer, straight or curly quotes
    ("quoted", {}, ' "Fix it fast, ride it far." \n', True),
    ("quoted", {}, "\u201cFix it fast.\u201d", True),
    ("quoted", {}, 'Slogan: "Fix it fast."', False),
    ("quoted", {}, '""', False),
    # placeholders: at least n [..] spans, counted as occurrences
    ("placeholders", {"n": 2}, "Dear [name], see you on [date].", True),
    ("placeholders", {"n": 2}, "Dear [name], bye [name].", True),
    ("placeholders", {"n": 2}, "Dear [name], see you soon.", False),
    ("placeholders", {"n": 1}, "Dear [ ], hi.", False),
    # one_word: surrounding quotes and final punctuation stripped; hyphenated is one word
    ("one_word", {}, "Paris.", True),
    ("one_word", {}, ' "ice-cream"\n', True),
    ("one_word", {}, "38", True),
    ("one_word", {}, "Blue whale", False),
    ("one_word", {}, "The answer is Paris.", False),
    ("one_word", {}, "", False),
    # keyword_count: whole-word occurrences, any case
    ("keyword_count", {"word": "rain", "n": 3}, "Rain, rain, go away; RAIN!", True),
    ("keyword_count", {"word": "rain", "n": 3}, "Rain, rainy days, raining.", False),
    # paragraphs: blocks between blank lines; a lone <<title>> block does not count
    ("paragraphs", {"n": 2}, "Morning sun.\n\nEvening calm.", True),
    ("paragraphs", {"n": 2}, "Morning sun.\n  \n\nEvening calm.\n", True),
    ("paragraphs", {"n": 2}, "Morning sun.\nEvening calm.", False),
    ("paragraphs", {"n": 2}, "<<Title>>\n\nMorning sun.\n\nEvening calm.", True),
    ("paragraphs", {"n": 2}, "A.\n\nB.\n\nC.", False),
]


@pytest.mark.parametrize("kind, args, answer, expected", CASES)
def test_check(kind: str, args: dict[str, Any], answer: str, expected: bool) -> None:
    assert check(kind, answer, **args) is expected


def test_every_kind_has_passing_and_failing_cases() -> None:
    outcomes = {(kind, expected) for kind, _, _, expected in CASES}
    assert outcomes == {(kind, ok) for kind in CHECKS for ok in (True, False)}


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown check kind"):
        check("rhymes", "moon june")


# --------------------------------------------------------------------------- validate_item


def _item(*checks: dict[str, Any], instruction: str = "Do it.", **extra: Any) -> dict[str, Any]:
    return {
        "id": "x-1",
        "instruction": instruction,
        "input": "",
        "category": "+".join(c["kind"] for c in checks),
        "checks": list(checks),
        **extra,
    }


def test_validate_accepts_a_good_item() -> None:
    validate_item(
        _item(
            {"kind": "bullets", "n": 3},
            {"kind": "lowercase"},
            instruction="Name fruits. Use exactly three bullet points in lowercase.",
        )
    )


@pytest.mark.parametrize(
    "item, problem",
    [
        (_item({"kind": "rhymes"}), "unknown check kind"),
        (_item({"kind": "bullets"}), "takes arguments"),
        (_item({"kind": "bullets", "n": 0}, instruction="0 bullets"), "positive integer"),
        (_item({"kind": "bullets", "n": True}), "positive integer"),
        (_item({"kind": "bullets", "n": 3, "m": 1}), "takes arguments"),
        (_item({"kind": "sentences", "n": 2, "relation": "about"}, instruction="2"), "relation"),
        (_item({"kind": "include_words", "words": []}), "non-empty list"),
        (_item({"kind": "include_words", "words": "moon"}), "non-empty list"),
        (_item({"kind": "bullets", "n": 3}), "never states the number 3"),
        (_item({"kind": "include_words", "words": ["moon"]}), "never states 'moon'"),
        (_item({"kind": "lowercase"}, {"kind": "uppercase"}), "contradict"),
        (_item({"kind": "bullets", "n": 2}, {"kind": "numbered", "n": 2}, instruction="2"), "shape"),
        (
            _item({"kind": "no_commas"}, {"kind": "ends_with", "text": "Bye, all."}, instruction="End with Bye, all."),
            "comma",
        ),
        (
            _item(
                {"kind": "include_words", "words": ["sun"]},
                {"kind": "exclude_words", "words": ["sun"]},
                instruction="sun",
            ),
            "excluded word",
        ),
        (_item({"kind": "lowercase"}, {"kind": "ends_with", "text": "Bye."}, instruction="Bye."), "capital"),
        (_item({"kind": "min_words", "n": 30}, {"kind": "max_words", "n": 20}, instruction="30 20"), "above max_words"),
        (_item({"kind": "lowercase"}, {"kind": "lowercase"}), "appears twice"),
        ({**_item({"kind": "lowercase"}), "category": "other"}, "category must be"),
        ({**_item({"kind": "lowercase"}), "checks": []}, "non-empty list"),
        ({**_item({"kind": "lowercase"}), "instruction": None}, "'instruction' must be a string"),
    ],
)
def test_validate_rejects_with_the_item_id(item: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as err:
        validate_item(item)
    assert "'x-1'" in str(err.value)


# --------------------------------------------------------------------------- the shipped set

ITEMS = load_follow_set()


def test_the_set_is_big_enough_and_ids_and_texts_are_unique() -> None:
    assert len(ITEMS) >= 200
    assert len({i["id"] for i in ITEMS}) == len(ITEMS)
    assert len({i["instruction"] for i in ITEMS}) == len(ITEMS)
    assert all(re.fullmatch(r"follow-\d{3}", i["id"]) for i in ITEMS)


def test_every_kind_is_used_at_least_ten_times_and_items_mix_one_and_two_checks() -> None:
    used = Counter(c["kind"] for i in ITEMS for c in i["checks"])
    assert set(used) == set(CHECKS)
    assert min(used.values()) >= 10, used
    sizes = Counter(len(i["checks"]) for i in ITEMS)
    assert set(sizes) == {1, 2}
    assert 0.3 <= sizes[2] / len(ITEMS) <= 0.5
    assert sum(1 for i in ITEMS if i["input"]) >= 15


def test_every_constraint_fits_a_short_answer() -> None:
    """Answers get ~96 tokens (~60 words): no constraint may need more."""
    caps = {
        "min_words": 40,
        "max_words": 60,
        "bullets": 5,
        "numbered": 5,
        "paragraphs": 3,
        "placeholders": 3,
        "keyword_count": 3,
        "sentences": 4,
    }
    for item in ITEMS:
        for c in item["checks"]:
            if c["kind"] in caps:
                assert c["n"] <= caps[c["kind"]], (item["id"], c)


def _witness(item: dict[str, Any]) -> str | None:
    """Build an answer that passes every check of the item, or None if none of a few tries do.

    Not a good answer, just proof that the constraints can be met together.
    """
    c = {ch["kind"]: {k: v for k, v in ch.items() if k != "kind"} for ch in item["checks"]}
    banned = {w.lower() for w in c.get("exclude_words", {}).get("words", [])}
    filler = next(w for w in ("fine", "good", "calm") if w not in banned)
    required = list(c.get("include_words", {}).get("words", []))
    if "keyword_count" in c:
        required += [c["keyword_count"]["word"]] * c["keyword_count"]["n"]
    required += ["[blank]"] * c.get("placeholders", {}).get("n", 0)

    def candidates():
        for pieces in range(1, 7):
            for pad in (0, 5, 15, 30, 45):
                body = [" ".join([filler] * (1 + (pad if i == 0 else 0))) for i in range(pieces)]
                body[0] = " ".join([*required, body[0]])
                if "json_keys" in c:
                    yield json.dumps({k: body[0] for k in c["json_keys"]["keys"]})
                    continue
                if "one_word" in c:
                    yield filler
                    continue
                shape = next((k for k in ("bullets", "numbered", "paragraphs") if k in c), None)
                n = c[shape]["n"] if shape else pieces
                units = (body * n)[:n]
                if shape == "bullets":
                    text = "\n".join(f"- {u}" for u in units)
                elif shape == "numbered":
                    text = "\n".join(f"{i}. {u}" for i, u in enumerate(units, 1))
                else:
                    text = ("\n\n" if shape else " ").join(f"{u}." for u in units)
                if "starts_with" in c:
                    text = f"{c['starts_with']['text']} {text}"
                if "ends_with" in c:
                    text = f"{text} {c['ends_with']['text']}"
                if "title" in c:
                    text = f"<<A title>>\n{text}"
                if "quoted" in c:
                    text = f'"{text}"'
                yield text

    for text in candidates():
        if "lowercase" in c:
            text = text.lower()
        if "uppercase" in c:
            text = text.upper()
        if all(check(k, text, **args) for k, args in c.items()):
            return text
    return None


@pytest.mark.parametrize("item", ITEMS, ids=[i["id"] for i in ITEMS])
def test_every_item_can_be_satisfied(item: dict[str, Any]) -> None:
    assert _witness(item) is not None


def test_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(_item({"kind": "lowercase"}))
    path = tmp_path / "f.jsonl"
    path.write_text(good + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"f\.jsonl:3: not valid JSON") as err:
        load_follow_set(path)
    assert err.value.hint
    path.write_text(good + "\n" + json.dumps(_item({"kind": "rhymes"})) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"f\.jsonl:2: item 'x-1': unknown check kind"):
        load_follow_set(path)
    path.write_text(good + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"f\.jsonl:2: id 'x-1' already used on line 1"):
        load_follow_set(path)


# --------------------------------------------------------------------------- scoring

SMALL = [
    {"id": "a", "checks": [{"kind": "lowercase"}, {"kind": "max_words", "n": 3}]},
    {"id": "b", "checks": [{"kind": "one_word"}]},
    {"id": "c", "checks": [{"kind": "bullets", "n": 2}, {"kind": "no_commas"}]},
    {"id": "d", "checks": [{"kind": "quoted"}]},
]


def test_score_answers_counts_items_checks_and_kinds() -> None:
    answers = {
        "a": "all lower here",  # both pass
        "b": "Paris is the answer",  # fails
        "c": "- one, two\n- three",  # bullets pass, commas fail
        # "d" has no answer: skipped
    }
    result = score_answers(SMALL, answers)
    assert result["n"] == 3 and result["missing"] == 1
    assert result["item_pass"] == [True, False, False]
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["constraint_accuracy"] == pytest.approx(3 / 5)
    assert [i["constraint_fraction"] for i in result["items"]] == [1.0, 0.0, 0.5]
    assert result["items"][2]["checks"] == [{"kind": "bullets", "pass": True}, {"kind": "no_commas", "pass": False}]
    assert result["by_kind"]["no_commas"] == {"n": 1, "passed": 0, "accuracy": 0.0}
    assert result["by_kind"]["lowercase"] == {"n": 1, "passed": 1, "accuracy": 1.0}
    assert "quoted" not in result["by_kind"]


def test_score_answers_with_nothing_answered_has_no_accuracy() -> None:
    result = score_answers(SMALL, {})
    assert result["n"] == 0 and result["missing"] == 4
    assert result["accuracy"] is None and result["constraint_accuracy"] is None


def test_paired_difference_on_known_numbers() -> None:
    # differences 1, 0, 1, 0: mean 0.5, sample sd sqrt(1/3), se sqrt(1/3)/2
    result = paired_difference([1, 1, 1, 0], [0, 1, 0, 0])
    se = (1 / 3) ** 0.5 / 2
    assert result["n"] == 4
    assert result["mean_diff"] == pytest.approx(0.5)
    assert result["se"] == pytest.approx(se)
    assert result["ci_low"] == pytest.approx(0.5 - 1.96 * se)
    assert result["ci_high"] == pytest.approx(0.5 + 1.96 * se)


def test_paired_difference_of_identical_lists_is_exactly_zero() -> None:
    result = paired_difference([1.0, 0.5, 0.0], [1.0, 0.5, 0.0])
    assert result["mean_diff"] == 0 and result["se"] == 0 and result["ci_low"] == 0


def _agresti_min_se(a: list[int], b: list[int]) -> float:
    """Agresti and Min (2005), from the 2 x 2 table of matched pass/fail: 0.5 added to each cell."""
    n10 = sum(1 for x, y in zip(a, b) if x and not y) + 0.5
    n01 = sum(1 for x, y in zip(a, b) if y and not x) + 0.5
    n = len(a) + 2
    p10, p01 = n10 / n, n01 / n
    return ((p10 + p01 - (p10 - p01) ** 2) / n) ** 0.5


def test_a_bounded_paired_difference_is_agresti_and_mins_interval_for_pass_fail_items() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randint(2, 300)
        a = [int(rng.random() < 0.4) for _ in range(n)]
        b = [x if rng.random() < rng.random() else int(rng.random() < 0.3) for x in a]
        result = paired_difference(a, b, bound=1.0)
        assert result["se"] == pytest.approx(_agresti_min_se(a, b), rel=1e-12)
        assert result["mean_diff"] == pytest.approx((sum(a) - sum(b)) / n)  # (the observed difference)


def test_items_that_all_agree_leave_an_interval_when_bounded() -> None:
    """No item changed: plain Wald says SE 0 (the change is exactly nothing); bounded, 24 items
    leave 1/26 = 3.8 points, 200 items 0.5, and a judge's wins (bound 0.5) half that."""
    same = [1, 0, 1, 1] * 6
    assert paired_difference(same, same)["se"] == 0
    assert paired_difference(same, same, bound=1.0)["se"] == pytest.approx(1 / 26)
    assert paired_difference([0] * 200, [0] * 200, bound=1.0)["se"] == pytest.approx(1 / 202)
    assert paired_difference([0.5] * 4, [0.5] * 4, bound=0.5)["se"] == pytest.approx(0.5 / 6)


def test_paired_difference_needs_matching_pairs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1], [0])
