"""The checks: one pure function per constraint kind, so a verdict never depends on a judge.

Each function takes the answer text and the check's arguments and returns True or False.
`check(kind, answer, **args)` dispatches through `CHECKS`; `validate_item` rejects an item
that no answer could pass (unknown kinds, bad arguments, constraints that contradict each
other, a number or word the instruction never states), so a low score always means the model
did not follow the instruction, never that the item was broken.

Rules worth knowing (each decided once, here):

- words are `\\b\\w+\\b` matches, Unicode aware: "don't" is two words, "well-known" is two.
- `include_words` / `exclude_words` / `keyword_count` match whole words (or phrases),
  case-insensitively: "cats" does not count as "cat".
- `starts_with` is case-insensitive; `ends_with` is case-sensitive and ignores trailing
  whitespace only, so "See you there!" does not match "See you there."
- `json_keys` needs an object whose keys are *exactly* the listed ones: a missing key or an
  extra key fails (the instructions say "exactly these keys"). The object may be the whole
  answer, inside a ``` / ```json fence, or the first "{" to the last "}".
- `placeholders` counts occurrences: "[name] ... [name]" is two.
- `paragraphs` are blocks between blank lines; a block holding only a <<title>> is not one.
- `sentences` end at . ! ? before whitespace or the end; pieces without a word are dropped.
- `one_word` strips surrounding quotes, ** and trailing punctuation; a hyphenated or
  apostrophised word ("ice-cream", "o'clock") is one word.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_WORD = re.compile(r"\b\w+\b")
# A sentence ends at . ! or ? (possibly repeated, possibly followed by a closing quote or
# bracket) when whitespace or the end of the text follows: "3.5" does not split, "e.g. " does.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_BULLET = re.compile(r"^\s*[-*] +\S")
_NUMBERED = re.compile(r"^\s*(\d+)[.)] +\S")
_PLACEHOLDER = re.compile(r"\[([^\[\]\n]+)\]")
_TITLE = re.compile(r"<<([^<>\n]+)>>")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_ONE_WORD = re.compile(r"^\w+(?:[-'\u2019]\w+)*$")
_QUOTES = {'"': '"', "\u201c": "\u201d"}
RELATIONS = ("exactly", "at_most", "at_least")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _phrase(word: str) -> re.Pattern[str]:
    """A whole-word (or whole-phrase) pattern: no word character may touch either end."""
    return re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.I)


def sentences(text: str) -> list[str]:
    pieces = _SENTENCE_END.split(text)
    return [p.strip() for p in pieces if _WORD.search(p)]


def paragraphs(text: str) -> list[str]:
    """Blocks between blank lines; a block that is only a <<title>> is a heading, not one."""
    blocks = [p.strip() for p in re.split(r"\n\s*\n", text.strip())]
    return [p for p in blocks if p and not _TITLE.fullmatch(p)]


def _json_object(answer: str) -> Any:
    """The first candidate that parses: the whole answer, a fenced block, the outer {...}."""
    text = answer.strip()
    candidates = [text, *(m.group(1) for m in _FENCE.finditer(text))]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- the checks


def lowercase(answer: str) -> bool:
    return any(c.islower() for c in answer) and not any(c.isupper() for c in answer)


def uppercase(answer: str) -> bool:
    return any(c.isupper() for c in answer) and not any(c.islower() for c in answer)


def max_words(answer: str, n: int) -> bool:
    return len(words(answer)) <= n


def min_words(answer: str, n: int) -> bool:
    return len(words(answer)) >= n


def sentences_check(answer: str, n: int, relation: str) -> bool:
    count = len(sentences(answer))
    return {"exactly": count == n, "at_most": count <= n, "at_least": count >= n}[relation]


def bullets(answer: str, n: int) -> bool:
    return sum(1 for line in answer.splitlines() if _BULLET.match(line)) == n


def numbered(answer: str, n: int) -> bool:
    found = [int(m.group(1)) for line in answer.splitlines() if (m := _NUMBERED.match(line))]
    return found == list(range(1, n + 1))


def include_words(answer: str, words: list[str]) -> bool:
    return all(_phrase(w).search(answer) for w in words)


def exclude_words(answer: str, words: list[str]) -> bool:
    return not any(_phrase(w).search(answer) for w in words)


def starts_with(answer: str, text: str) -> bool:
    return answer.strip().lower().startswith(text.lower())


def ends_with(answer: str, text: str) -> bool:
    return answer.rstrip().endswith(text)


def json_keys(answer: str, keys: list[str]) -> bool:
    obj = _json_object(answer)
    return isinstance(obj, dict) and set(obj) == set(keys)


def no_commas(answer: str) -> bool:
    return "," not in answer and "\uff0c" not in answer


def title(answer: str) -> bool:
    return any(m.group(1).strip() for m in _TITLE.finditer(answer))


def quoted(answer: str) -> bool:
    text = answer.strip()
    return len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and bool(text[1:-1].strip())


def placeholders(answer: str, n: int) -> bool:
    return sum(1 for m in _PLACEHOLDER.finditer(answer) if m.group(1).strip()) >= n


def one_word(answer: str) -> bool:
    text = answer.strip().rstrip(".!?,;:").strip().strip("\"'\u201c\u201d\u2018\u2019*").strip()
    return bool(_ONE_WORD.match(text))


def keyword_count(answer: str, word: str, n: int) -> bool:
    return len(_phrase(word).findall(answer)) >= n


def paragraphs_check(answer: str, n: int) -> bool:
    return len(paragraphs(answer)) == n


CHECKS: dict[str, Callable[..., bool]] = {
    "lowercase": lowercase,
    "uppercase": uppercase,
    "max_words": max_words,
    "min_words": min_words,
    "sentences": sentences_check,
    "bullets": bullets,
    "numbered": numbered,
    "include_words": include_words,
    "exclude_words": exclude_words,
    "starts_with": starts_with,
    "ends_with": ends_with,
    "json_keys": json_keys,
    "no_commas": no_commas,
    "title": title,
    "quoted": quoted,
    "placeholders": placeholders,
    "one_word": one_word,
    "keyword_count": keyword_count,
    "paragraphs": paragraphs_check,
}


def check(kind: str, answer: str, **args: Any) -> bool:
    if kind not in CHECKS:
        raise ValueError(f"unknown check kind {kind!r}")
    return bool(CHECKS[kind](answer, **args))


# --------------------------------------------------------------------------- validation

# The arguments each kind takes, by name -> type tag.
ARGS: dict[str, dict[str, str]] = {
    "lowercase": {},
    "uppercase": {},
    "no_commas": {},
    "title": {},
    "quoted": {},
    "one_word": {},
    "max_words": {"n": "int"},
    "min_words": {"n": "int"},
    "bullets": {"n": "int"},
    "numbered": {"n": "int"},
    "placeholders": {"n": "int"},
    "paragraphs": {"n": "int"},
    "sentences": {"n": "int", "relation": "relation"},
    "include_words": {"words": "strs"},
    "exclude_words": {"words": "strs"},
    "json_keys": {"keys": "strs"},
    "starts_with": {"text": "str"},
    "ends_with": {"text": "str"},
    "keyword_count": {"word": "str", "n": "int"},
}

# An answer has one overall shape; two shapes in one item contradict each other.
_SHAPES = {"bullets", "numbered", "paragraphs", "json_keys", "one_word", "quoted"}
# Other pairs no sensible answer satisfies together (or that make one check meaningless).
_CLASHES = {
    frozenset(p)
    for p in [
        ("lowercase", "uppercase"),
        *(
            ("one_word", k)
            for k in (
                "sentences",
                "min_words",
                "max_words",
                "title",
                "placeholders",
                "keyword_count",
                "include_words",
                "starts_with",
                "ends_with",
                "no_commas",
            )
        ),
        *(
            ("json_keys", k)
            for k in ("sentences", "title", "starts_with", "ends_with", "no_commas", "uppercase", "placeholders")
        ),
        *(("quoted", k) for k in ("starts_with", "ends_with", "title")),
        ("bullets", "sentences"),
        ("numbered", "sentences"),
        ("paragraphs", "sentences"),
        ("bullets", "starts_with"),
        ("numbered", "starts_with"),
        ("title", "starts_with"),
    ]
}


def _arg_error(kind: str, args: dict[str, Any]) -> str | None:
    spec = ARGS[kind]
    if set(args) != set(spec):
        return f"check {kind!r} takes arguments {sorted(spec)}, got {sorted(args)}"
    for name, tag in spec.items():
        value = args[name]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            "relation": value in RELATIONS,
            "str": isinstance(value, str) and bool(value.strip()),
            "strs": (
                isinstance(value, list)
                and bool(value)
                and all(isinstance(v, str) and v.strip() for v in value)
                and len(set(value)) == len(value)
            ),
        }[tag]
        if not ok:
            want = {
                "int": "a positive integer",
                "relation": f"one of {RELATIONS}",
                "str": "a non-empty string",
                "strs": "a non-empty list of distinct non-empty strings",
            }[tag]
            return f"check {kind!r}: {name} must be {want}, got {value!r}"
    return None


def _conflict(checks: dict[str, dict[str, Any]]) -> str | None:
    kinds = set(checks)
    if len(kinds & _SHAPES) > 1:
        return f"checks {sorted(kinds & _SHAPES)} each fix the answer's shape"
    for pair in _CLASHES:
        if pair <= kinds:
            return f"checks {sorted(pair)} contradict each other"
    # Literal text the answer must contain, by kind.
    needed = list(checks.get("include_words", {}).get("words", []))
    needed += [checks[k]["text"] for k in ("starts_with", "ends_with") if k in checks]
    if "keyword_count" in checks:
        needed.append(checks["keyword_count"]["word"])
    if "no_commas" in kinds and any("," in t for t in needed):
        return "no_commas, but a required text contains a comma"
    banned = checks.get("exclude_words", {}).get("words", [])
    for text in needed:
        if any(_phrase(b).search(text) for b in banned):
            return f"required text {text!r} contains an excluded word"
    end = checks.get("ends_with", {}).get("text", "")
    if "lowercase" in kinds and any(c.isupper() for c in end):
        return "lowercase, but ends_with needs a capital letter"
    if "uppercase" in kinds and any(c.islower() for c in end):
        return "uppercase, but ends_with needs a lowercase letter"
    if "min_words" in kinds and "max_words" in kinds and (checks["min_words"]["n"] > checks["max_words"]["n"]):
        return "min_words is above max_words"
    return None


_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve").split()


def _unstated(instruction: str, kind: str, args: dict[str, Any]) -> str | None:
    """The instruction must state each constraint: its numbers and literal texts appear."""
    text = instruction.lower()
    n = args.get("n")
    if (
        n is not None
        and not re.search(rf"(?<!\d){n}(?!\d)", text)
        and not (n < len(_NUMBER_WORDS) and re.search(rf"\b{_NUMBER_WORDS[n]}\b", text))
    ):
        return f"check {kind!r}: the instruction never states the number {args['n']}"
    literals = [args[k] for k in ("text", "word") if k in args]
    literals += [*args.get("words", []), *args.get("keys", [])]
    for literal in literals:
        if literal.lower() not in text:
            return f"check {kind!r}: the instruction never states {literal!r}"
    return None


def validate_item(item: Any) -> None:
    """Raise ValueError (naming the item id) if the item is malformed or unsatisfiable."""
    item_id = item.get("id") if isinstance(item, dict) else None
    where = f"item {item_id!r}"

    def fail(problem: str) -> None:
        raise ValueError(f"{where}: {problem}")

    if not isinstance(item, dict):
        fail("is not a JSON object")
    for field in ("id", "instruction", "input", "category"):
        if not isinstance(item.get(field), str):
            fail(f"field {field!r} must be a string")
    if not item["id"].strip() or not item["instruction"].strip():
        fail("id and instruction must not be empty")
    checks = item.get("checks")
    if not isinstance(checks, list) or not checks:
        fail("'checks' must be a non-empty list")
    by_kind: dict[str, dict[str, Any]] = {}
    for entry in checks:
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            fail(f"each check needs a 'kind': {entry!r}")
        kind = entry["kind"]
        if kind not in CHECKS:
            fail(f"unknown check kind {kind!r}")
        if kind in by_kind:
            fail(f"check {kind!r} appears twice")
        args = {k: v for k, v in entry.items() if k != "kind"}
        problem = _arg_error(kind, args) or _unstated(item["instruction"], kind, args)
        if problem:
            fail(problem)
        by_kind[kind] = args
    expected = "+".join(by_kind)
    if item["category"] != expected:
        fail(f"category must be {expected!r} (the check kinds in order), got {item['category']!r}")
    problem = _conflict(by_kind)
    if problem:
        fail(problem)
