"""Eval sets and model-output files, read from the formats people already have.

An eval set is a list of `EvalItem`s. `load_eval_set` accepts:

- `alpacakit`: our own held-out instructions (`evaluate/data/eval_set.jsonl`, written by this
  team, never used as seed tasks);
- self-instruct's user-oriented JSONL (`{"id", "user", "motivation_app", "instruction",
  "instances": [{"input", "output"}]}`): one item per instruction (its first instance) or one
  per instance;
- an AlpacaEval JSON list (`[{instruction, output, generator, dataset}]`): its `output`
  becomes the item's reference answer;
- plain records with `instruction` and optional `input` / `output` (Alpaca JSON, JSONL, CSV).

Outputs to judge are AlpacaEval-style lists `[{instruction, output, generator, dataset}]`.
Their `instruction` is the full text a system was asked (the instruction, then the input when
there is one, separated by a blank line), so files from other tools pair with ours by text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alpacakit.errors import DataError
from alpacakit.io import iter_jsonl

BUILTIN_SETS = {"alpacakit": "eval_set.jsonl", "follow": "follow.jsonl"}
INPUT_JOINER = "\n\n"


@dataclass
class EvalItem:
    """One thing to ask. `prompt` is what AlpacaEval calls the instruction."""

    id: str
    instruction: str
    input: str = ""
    dataset: str = ""
    category: str | None = None
    reference: str | None = None

    @property
    def prompt(self) -> str:
        return f"{self.instruction}{INPUT_JOINER}{self.input}" if self.input else self.instruction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("alpacakit.evaluate").joinpath("data", BUILTIN_SETS[name])))


def _read_located(path: Path) -> list[tuple[str, Any]]:
    """(location, record) pairs from a JSON list or JSONL file; locations name file:line or item."""
    if not path.exists():
        raise DataError(
            f"{path}: no such file", hint=f"pass a file, or one of the built-in eval sets: {', '.join(BUILTIN_SETS)}"
        )
    if path.is_dir():
        raise DataError(f"{path} is a folder; an eval set is one JSON, JSONL or CSV file")
    from alpacakit.io import parse_json, read_text

    text = read_text(path)
    if path.suffix.lower() == ".csv":
        from alpacakit.io import read_records

        return [(f"{path}:{i + 2}", r) for i, r in enumerate(read_records(path))]
    if text.lstrip().startswith("["):
        try:
            items = parse_json(text, str(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        return [(f"{path}: item {i}", obj) for i, obj in enumerate(items)]
    return [(f"{path}:{line}", obj) for line, obj in iter_jsonl(path)]


def _text(where: str, obj: dict, key: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            have = ", ".join(sorted(obj)) or "none"
            raise DataError(
                f"{where}: missing field {key!r} (fields found: {have})",
                hint="an eval item needs at least an 'instruction'",
            )
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} should be text, found {type(value).__name__}")
    return value


def _from_self_instruct(where: str, obj: dict, n: int, instances: str, dataset: str) -> list[EvalItem]:
    inst = obj.get("instances")
    if not isinstance(inst, list) or not inst:
        raise DataError(
            f"{where}: 'instances' should be a non-empty list of {{'input', 'output'}} objects",
            hint="self-instruct user-oriented records carry their inputs in 'instances'",
        )
    chosen = inst if instances == "all" else inst[:1]
    out = []
    for k, one in enumerate(chosen):
        if not isinstance(one, dict):
            raise DataError(f"{where}: instances[{k}] should be an object with 'input' and 'output'")
        base_id = str(obj.get("id") or f"{dataset}_{n}")
        out.append(
            EvalItem(
                id=base_id if instances == "first" else f"{base_id}#{k}",
                instruction=_text(where, obj, "instruction", required=True).strip(),
                input=_text(f"{where} instances[{k}]", one, "input", required=False).strip(),
                dataset=dataset,
                category=obj.get("motivation_app"),
                reference=_text(f"{where} instances[{k}]", one, "output", required=False) or None,
            )
        )
    return out


def load_eval_set(
    ref: str | Path = "alpacakit", *, instances: str = "first", limit: int | None = None
) -> list[EvalItem]:
    """Read an eval set (see the module doc). Errors name file:line and the field at fault."""
    if instances not in ("first", "all"):
        raise DataError(f"instances must be 'first' or 'all', got {instances!r}")
    name = str(ref)
    path = builtin_path(name) if name in BUILTIN_SETS else Path(name).expanduser()
    default_dataset = name if name in BUILTIN_SETS else path.stem
    items: list[EvalItem] = []
    for n, (where, obj) in enumerate(_read_located(path)):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object, found {type(obj).__name__}")
        if "instances" in obj:
            items += _from_self_instruct(
                where, obj, n, instances, str(obj.get("dataset") or "self-instruct-user-oriented")
            )
            continue
        instruction = _text(where, obj, "instruction", required=True).strip()
        if not instruction:
            raise DataError(f"{where}: empty 'instruction'")
        items.append(
            EvalItem(
                id=str(obj.get("id") or f"{default_dataset}_{n}"),
                instruction=instruction,
                input=_text(where, obj, "input", required=False).strip(),
                dataset=str(obj.get("dataset") or default_dataset),
                category=obj.get("category") or obj.get("motivation_app"),
                reference=(
                    _text(where, obj, "reference", required=False)
                    or _text(where, obj, "output", required=False)
                    or None
                ),
            )
        )
    if not items:
        raise DataError(f"{path}: the eval set is empty")
    seen: dict[str, int] = {}
    for item in items:  # ids key the journal: make repeats unique instead of failing
        k = seen.get(item.id, 0)
        seen[item.id] = k + 1
        if k:
            item.id = f"{item.id}~{k}"
    return items[:limit] if limit else items


def load_outputs(path: str | Path) -> list[dict[str, Any]]:
    """Read an AlpacaEval-style outputs file: records with `instruction` and `output` (text).

    `generator` defaults to the file name (without `outputs-` and the suffix); `dataset` to ''.
    """
    path = Path(path)
    records = _read_located(path)
    if not records:
        raise DataError(f"{path}: no outputs in the file")
    from alpacakit.rundir import outputs_label

    default_gen = outputs_label(path) or path.stem
    out = []
    for where, obj in records:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object, found {type(obj).__name__}")
        instruction = _text(where, obj, "instruction", required=True)
        output = obj.get("output")
        if not isinstance(output, str):
            raise DataError(
                f"{where}: 'output' should be text, found {type(output).__name__}",
                hint="an outputs file is [{instruction, output, generator, dataset}] (AlpacaEval format)",
            )
        out.append(
            {
                **obj,
                "instruction": instruction,
                "output": output,
                "generator": str(obj.get("generator") or default_gen),
                "dataset": str(obj.get("dataset") or ""),
            }
        )
    return out
