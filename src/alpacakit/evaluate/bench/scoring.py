"""Scoring short answers: normalisation, exact match, token F1 (SQuAD / NQ-open style).

The normalisation follows the SQuAD evaluation script's recipe, in its order: lower-case,
delete punctuation ("U.S.A." is "usa", "well-known" is "wellknown"), drop the articles "a",
"an", "the", collapse whitespace. Two deliberate
differences, because our arithmetic items would otherwise be scored wrongly:

- numbers keep their sign and decimal point ("-47" is not "47", "5.4" is not "54"), and
  thousands separators go ("5,165" is "5165");
- punctuation is every Unicode punctuation character, not only ASCII (a model writing
  "Canberra." or "«Canberra»" gets the same credit); the Unicode minus sign counts as "-".

A prediction is scored against every gold answer and the best score counts (NQ-open and
SQuAD take the maximum over references).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_NEGATIVE = re.compile(r"(?<![\w.])-(?=\d)")
# placeholders that survive punctuation stripping (private-use characters are category Co)
_DOT, _MINUS = "\ue000", "\ue001"


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, collapse whitespace (numbers kept intact)."""
    s = unicodedata.normalize("NFKC", text).replace("\u2212", "-").lower()
    s = _THOUSANDS.sub("", s)
    s = _DECIMAL.sub(_DOT, s)
    s = _NEGATIVE.sub(_MINUS, s)
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    s = s.replace(_DOT, ".").replace(_MINUS, "-")
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # both empty: 1; one empty: 0
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """Best bag-of-tokens F1 between the normalised prediction and any gold answer."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(a).split()) for a in answers), default=0.0)


def contains_answer(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when some normalised gold answer appears in the normalised prediction as whole words.

    Not a headline metric: it credits a verbose but right answer ("The capital is Canberra.")
    that exact match refuses, which is how an instruction-tuned model's style shows up in the
    numbers without being mistaken for knowledge it lacks.
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in pred for g in (normalize_answer(a) for a in answers)))


_LABEL = re.compile(r"^\s*(?:final\s+)?answer\s*[:\-]\s*", re.IGNORECASE)


def extract_answer(generated: str) -> str:
    """The part of a generation that is scored: its first non-empty line, without a leading
    "Answer:" label. Nothing else is cut: the model must stop on its own."""
    for line in generated.splitlines():
        if line.strip():
            return _LABEL.sub("", line.strip(), count=1).strip()
    return ""
