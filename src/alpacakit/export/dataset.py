"""Data exports: Stanford Alpaca JSON and Hugging Face `datasets` folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from alpacakit.io import atomic_write_json, read_records

ALPACA_FIELDS = ("instruction", "input", "output")


def _alpaca_records(path: str | Path) -> list[dict]:
    records = read_records(path, required=["instruction", "output"])
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in records]


def to_alpaca_json(examples: str | Path, output: str | Path) -> int:
    records = _alpaca_records(examples)
    atomic_write_json(output, records)
    return len(records)


def to_hf_dataset(examples: str | Path, output: str | Path, val_fraction: float = 0.0, seed: int = 0) -> int:
    """save_to_disk into OUTPUT.partial, then rename: never a half-written folder."""
    import datasets

    records = _alpaca_records(examples)
    ds = datasets.Dataset.from_list(records)
    if val_fraction > 0 and len(records) > 1:
        ds = ds.train_test_split(test_size=val_fraction, seed=seed)
        ds = datasets.DatasetDict({"train": ds["train"], "validation": ds["test"]})
    output = Path(output)
    tmp = output.with_name(output.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return len(records)
