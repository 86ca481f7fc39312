"""Answer mode (the GPT4All way): the teacher answers instructions that already exist.

Prompts come from JSONL, a JSON list, a CSV column or an HF datasets folder. Each answer is
journaled, then cleaned (`curate/clean.py`: empty, truncated, refusal, boilerplate, exact
duplicate). Request i is always prompt i, so a resumed run asks only for the missing ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alpacakit.config import AlpacakitConfig
from alpacakit.curate.clean import AnswerCleaner
from alpacakit.errors import DataError
from alpacakit.io import read_records, sha256_file
from alpacakit.jobs import Request


def load_prompts(path: str | Path, field: str = "instruction", input_field: str = "input") -> list[dict]:
    """Read prompts; a CSV or dataset column named `field` holds the instruction."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no prompts found")
    missing = [i for i, r in enumerate(records) if not str(r.get(field) or "").strip()]
    if missing:
        have = ", ".join(sorted(records[missing[0]])) or "none"
        raise DataError(
            f"{path}: record {missing[0]} has no {field!r} (fields found: {have})",
            hint=f"name the instruction column with --prompt-field (found: {have})",
        )
    return [{"instruction": str(r[field]).strip(), "input": str(r.get(input_field) or "").strip()} for r in records]


class AnswerProcessor:
    def __init__(self, prompts: list[dict], config: AlpacakitConfig, teacher_name: str):
        self.prompts = prompts
        self.cleaner = AnswerCleaner(config.curate.refusals)
        self.teacher_name = teacher_name

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]:
        p = self.prompts[entry["index"]]
        record = {"instruction": p["instruction"], "input": p["input"], "output": (entry.get("text") or "").strip()}
        why = self.cleaner.reason(record, entry.get("finish_reason"))
        if why:
            return [], [{"request": entry["index"], "reason": why, **record}]
        return [{**record, "teacher": self.teacher_name, "request": entry["index"]}], []


@dataclass
class AnswerPlan:
    processor: AnswerProcessor
    make_request: Callable[[int], Request]
    indices: Iterator[int]
    fingerprint: dict[str, Any]
    inputs: dict[str, Any]
    total: int


def _templates() -> dict:
    return yaml.safe_load(
        (resources.files("alpacakit.generate") / "prompts" / "answer.yaml").read_text(encoding="utf-8")
    )


def build_plan(
    config: AlpacakitConfig,
    api: str,
    teacher_name: str,
    done: set[int],
    prompts_path: str | Path,
    prompt_field: str = "instruction",
    input_field: str = "input",
    limit: int | None = None,
) -> AnswerPlan:
    prompts = load_prompts(prompts_path, prompt_field, input_field)
    if limit:
        prompts = prompts[:limit]
    tpl = _templates()

    def make_request(index: int) -> Request:
        p = prompts[index]
        text = (tpl["with_input"] if p["input"] else tpl["no_input"]).format(**p)
        return Request(index=index, prompt=text, api=api, system=tpl.get("system"))

    sha = (
        sha256_file(prompts_path)
        if Path(prompts_path).is_file()
        else hashlib.sha256(str(prompts_path).encode()).hexdigest()
    )
    return AnswerPlan(
        processor=AnswerProcessor(prompts, config, teacher_name),
        make_request=make_request,
        indices=(i for i in range(len(prompts)) if i not in done),
        fingerprint={
            "mode": "answer",
            "teacher": config.teacher.model,
            "api": api,
            "prompts_sha256": sha,
            "prompt_field": prompt_field,
            "input_field": input_field,
        },
        inputs={"prompts": {"path": str(prompts_path), "sha256": sha, "count": len(prompts)}},
        total=len(prompts),
    )
