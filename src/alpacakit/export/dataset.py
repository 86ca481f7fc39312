"""Data exports: Stanford Alpaca JSON and Hugging Face `datasets` folders, each with a data card
(`export/data_card.py`: teacher, its terms, seeds, filters, counts)."""

from __future__ import annotations

import shutil
from pathlib import Path

from alpacakit.io import atomic_write_json, read_records

ALPACA_FIELDS = ("instruction", "input", "output")


def _alpaca_records(path: str | Path) -> list[dict]:
    records = read_records(path, required=["instruction", "output"])
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in records]


def to_alpaca_json(examples: str | Path, output: str | Path, *, card: bool = True) -> int:
    records = _alpaca_records(examples)
    atomic_write_json(output, records)
    if card:
        from alpacakit.export.data_card import write_card

        write_card(examples, output, len(records), "Stanford Alpaca JSON")
    return len(records)


def to_hf_dataset(
    examples: str | Path, output: str | Path, val_fraction: float = 0.0, seed: int = 0, *, card: bool = True
) -> int:
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
    if card:  # inside the folder before it gets its name: the card arrives with the data
        from alpacakit.export.data_card import write_card

        splits = {"validation fraction": val_fraction} if val_fraction > 0 else None
        write_card(examples, tmp, len(records), "Hugging Face datasets folder", splits)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return len(records)
