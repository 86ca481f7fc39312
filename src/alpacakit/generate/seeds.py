"""Seed tasks in self-instruct JSONL: the human-written examples the teacher imitates.

One object per line: `id`, `name`, `instruction`, `instances: [{input, output}]`,
`is_classification` (and optionally `category`, which alpacakit uses to vary the examples it
shows). Any file in that format works, e.g. Stanford's `seed_tasks.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alpacakit.errors import DataError
from alpacakit.io import iter_jsonl

DEFAULT_SEEDS = "seed_tasks.jsonl"


@dataclass(frozen=True)
class SeedTask:
    id: str
    instruction: str
    input: str
    output: str
    is_classification: bool = False
    category: str | None = None


def default_seeds_path() -> Path:
    return Path(str(resources.files("alpacakit.generate") / "seed_data" / DEFAULT_SEEDS))


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Read a self-instruct seed file; every problem names file:line and the field."""
    path = Path(path) if path else default_seeds_path()
    if not path.exists():
        raise DataError(f"{path}: seed file not found", hint="pass --seeds PATH to a self-instruct JSONL file")
    tasks: list[SeedTask] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        instruction = obj.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(
                f"{where}: field 'instruction' must be a non-empty string",
                hint="each seed line needs id, name, instruction, instances: [{input, output}], is_classification",
            )
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise DataError(f"{where}: field 'instances' must be a non-empty list of {{input, output}} objects")
        first = instances[0]
        if not isinstance(first.get("output"), str):
            raise DataError(f"{where}: instances[0].output must be a string")
        inp = first.get("input", "")
        if not isinstance(inp, str):
            raise DataError(f"{where}: instances[0].input must be a string")
        tasks.append(
            SeedTask(
                id=str(obj.get("id", f"line_{lineno}")),
                instruction=instruction.strip(),
                input=inp.strip(),
                output=first["output"].strip(),
                is_classification=bool(obj.get("is_classification", False)),
                category=obj.get("category"),
            )
        )
    if not tasks:
        raise DataError(f"{path}: no seed tasks found (empty file?)")
    return tasks
