"""Benchmark tasks: our own offline files, MMLU-style CSV files, and item selection.

Two kinds of task:

- multiple choice (`mc`): `{id, question, choices: [...], answer: index, subject}`, scored by
  the log-likelihood of each choice (see `runner`);
- short-answer QA (`qa`): `{id, question, answers: [...], subject}` plus an optional `context`
  (reading comprehension), scored on a greedy generation by exact match and token F1.

A task spec (what `--tasks` takes) is a built-in name (a `.jsonl` file shipped in
`alpacakit/evaluate/data/bench/`), a path to a `.jsonl` / `.json` file of such records, a
path to an MMLU-style `.csv` file (question, one column per choice, answer letter; with or
without a header row, as in Hendrycks et al.'s data/test/*.csv), or a folder of such CSV files
(one task; each file is a subject named after it, `_test`/`_dev`/`_val` dropped).

`select` takes the same items for every model: a shuffle seeded by the task's name and the
item ids only, so `--limit 20` compares base, student and teacher on the very same 20 items,
and the first N are not all from the subject that happens to come first in the file.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from alpacakit.errors import DataError

LETTERS = "ABCDEFGHIJ"
_SPLIT_SUFFIXES = ("_test", "_dev", "_val", "_validation", "_train")


@dataclass
class Task:
    name: str
    kind: Literal["mc", "qa"]
    items: list[dict[str, Any]]
    source: str

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "n_items": len(self.items), "source": self.source}


def builtin_dir() -> Path:
    return Path(str(resources.files("alpacakit.evaluate").joinpath("data", "bench")))


def builtin_tasks() -> list[str]:
    """Names of the task files alpacakit ships."""
    d = builtin_dir()
    return sorted(p.stem for p in d.glob("*.jsonl")) if d.is_dir() else []


def load_task(spec: str) -> Task:
    """A built-in name or a path (see the module doc). Errors name the file and line."""
    spec = spec.strip()
    if spec in builtin_tasks():
        return _load_records(builtin_dir() / f"{spec}.jsonl", spec, f"built-in:{spec}")
    p = Path(spec).expanduser()
    if p.is_dir():
        csvs = sorted(p.glob("*.csv"))
        if not csvs:
            raise DataError(f"{p}: a task folder must hold MMLU-style .csv files, found none")
        items = [it for f in csvs for it in load_mc_csv(f)]
        return Task(name=p.name, kind="mc", items=items, source=str(p))
    if p.suffix.lower() == ".csv" and p.is_file():
        return Task(name=_subject_of(p), kind="mc", items=load_mc_csv(p), source=str(p))
    if p.suffix.lower() in (".jsonl", ".json") and p.is_file():
        return _load_records(p, p.stem, str(p))
    raise DataError(
        f"unknown benchmark task {spec!r}",
        hint=f"use a built-in task ({', '.join(builtin_tasks())}), a .jsonl/.json file of items, "
        "an MMLU-style .csv file or a folder of them",
    )


def _subject_of(path: Path) -> str:
    stem = path.stem
    for suf in _SPLIT_SUFFIXES:
        if stem.endswith(suf):
            return stem[: -len(suf)]
    return stem


def _load_records(path: Path, name: str, source: str) -> Task:
    from alpacakit.io import iter_jsonl, read_records

    if path.suffix.lower() == ".jsonl":
        located = [(f"{path}:{ln}", rec) for ln, rec in iter_jsonl(path)]
    else:
        located = [(f"{path}: item {i}", rec) for i, rec in enumerate(read_records(path))]
    if not located:
        raise DataError(f"{path}: no items")
    kinds = set()
    items = []
    seen: set[str] = set()
    for i, (where, rec) in enumerate(located):
        item = _check_item(rec, where, default_id=f"{name}_{i}")
        if item["id"] in seen:
            raise DataError(f"{where}: duplicate id {item['id']!r}", hint="every item needs its own id")
        seen.add(item["id"])
        kinds.add(item["kind"])
        items.append(item)
    if len(kinds) > 1:
        raise DataError(
            f"{path}: mixes multiple-choice items (with 'choices') and short-answer items (with 'answers')",
            hint="put each kind in its own file",
        )
    kind = kinds.pop()
    for it in items:
        del it["kind"]
    return Task(name=name, kind=kind, items=items, source=source)


def _check_item(rec: dict[str, Any], where: str, default_id: str) -> dict[str, Any]:
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise DataError(
            f"{where}: missing or empty 'question'",
            hint="an item needs 'question' and either 'choices' + 'answer' or 'answers'",
        )
    item: dict[str, Any] = {
        "id": str(rec.get("id", default_id)),
        "question": q.strip(),
        "subject": str(rec.get("subject") or ""),
    }
    if "choices" in rec:
        choices = rec["choices"]
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        ans = rec.get("answer")
        if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip().upper() in LETTERS[: len(choices)]:
            ans = LETTERS.index(ans.strip().upper())
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            raise DataError(
                f"{where}: 'answer' must be the index of the right choice (0..{len(choices) - 1}) "
                f"or its letter, found {rec.get('answer')!r}"
            )
        item.update(kind="mc", choices=[c.strip() for c in choices], answer=ans)
    elif "answers" in rec:
        answers = rec["answers"]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
        item.update(kind="qa", answers=[a.strip() for a in answers])
    else:
        raise DataError(f"{where}: an item needs 'choices' and 'answer' (multiple choice) or 'answers' (short answer)")
    ctx = rec.get("context")
    if ctx is not None:
        if not isinstance(ctx, str):
            raise DataError(f"{where}: 'context' must be text")
        if ctx.strip():
            item["context"] = ctx.strip()
    return item


def load_mc_csv(path: str | Path) -> list[dict[str, Any]]:
    """Items from an MMLU-style CSV: question, choice columns, answer letter (header optional)."""
    path = Path(path)
    subject = _subject_of(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    items = []
    for lineno, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if lineno == 1 and row and row[0].strip().lower() == "question" and row[-1].strip().lower() == "answer":
            continue  # a header row
        where = f"{path}:{lineno}"
        if len(row) < 4:
            raise DataError(
                f"{where}: expected question, at least 2 choices and an answer letter; found {len(row)} columns",
                hint="MMLU-style rows are: question,A,B,C,D,answer",
            )
        question, choices, letter = row[0], row[1:-1], row[-1].strip().upper()
        if len(choices) > len(LETTERS):
            raise DataError(f"{where}: too many choices ({len(choices)})")
        if letter not in LETTERS[: len(choices)]:
            raise DataError(f"{where}: the answer must be a letter among {LETTERS[: len(choices)]}, found {row[-1]!r}")
        rec = {
            "id": f"{subject}_{lineno}",
            "question": question,
            "choices": choices,
            "answer": letter,
            "subject": subject,
        }
        item = _check_item(rec, where, default_id=rec["id"])
        del item["kind"]
        items.append(item)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def select(task: Task, limit: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """The items to run: all of them, or `limit` picked by a shuffle that depends only on the
    task name, the item ids and `seed` (never on the model)."""
    if limit is None or limit >= len(task.items):
        return list(task.items)
    if limit < 1:
        raise DataError(f"--limit must be at least 1, found {limit}")

    def key(it: dict[str, Any]) -> bytes:
        return hashlib.sha256(f"{seed}:{task.name}:{it['id']}".encode()).digest()

    chosen = sorted(task.items, key=key)[:limit]
    order = {id(it): i for i, it in enumerate(task.items)}
    return sorted(chosen, key=lambda it: order[id(it)])
