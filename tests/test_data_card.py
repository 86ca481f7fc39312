"""A data card travels with every exported dataset: the teacher and the terms its output comes
with, the seed file's hash, the filters, and what was kept and dropped, read from the run's
manifest; and an honest "unknown" when there is none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_generate import config, responder, write_seeds

from alpacakit.export.dataset import to_alpaca_json, to_hf_dataset


@pytest.fixture
def run(tmp_path: Path, fake_openai, monkeypatch) -> Path:
    from alpacakit.generate.runner import generate

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    fake_openai.responder = responder(3)
    cfg = config(fake_openai, seeds, num=6)
    cfg.teacher.model = "openai:gpt-4o-mini"  # priced from the table, OpenAI's terms
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "run" / "data"
    assert generate(cfg, out, show_progress=False).status == "complete"
    return out


def test_an_alpaca_export_carries_the_runs_provenance(run: Path, tmp_path: Path) -> None:
    n = to_alpaca_json(run / "examples.jsonl", tmp_path / "alpaca.json")
    card = (tmp_path / "alpaca.json.card.md").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert f"{n:,} instruction-following examples (Stanford Alpaca JSON)" in card
    assert "Teacher: `openai:gpt-4o-mini`" in card and "OpenAI's terms of use" in card and "CC BY-NC 4.0" in card
    assert manifest["inputs"]["seeds"]["sha256"] in card
    assert f"kept {manifest['counts']['kept']:,}" in card and f"Requests: {manifest['counts']['requests']:,}" in card
    assert "price from alpacakit's table" in card
    assert card.startswith("---\nlicense: other\n")
    from alpacakit.io import sha256_file

    assert sha256_file(tmp_path / "alpaca.json") in card


def test_a_hf_export_has_the_card_as_its_readme(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    to_hf_dataset(run / "examples.jsonl", tmp_path / "ds", val_fraction=0.3)
    readme = (tmp_path / "ds" / "README.md").read_text()
    assert "Hugging Face datasets folder" in readme and "validation fraction: 0.3" in readme
    import datasets

    assert set(datasets.load_from_disk(str(tmp_path / "ds"))) == {"train", "validation"}


def test_without_a_manifest_the_card_says_provenance_is_unknown(tmp_path: Path) -> None:
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    to_alpaca_json(src, tmp_path / "out.json")
    card = (tmp_path / "out.json.card.md").read_text()
    assert "Provenance unknown" in card and "Teacher:" not in card
