"""`alpacakit curate dedup` as a real command (subprocess) on small files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

RECORDS = [
    {"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Red leaves fall...", "id": 1},
    {"instruction": "Write a haiku about autumn leaves!", "input": "", "output": "dup", "id": 2},
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue, yellow.", "id": 3},
    {
        "instruction": "Translate the sentence into French.",
        "input": "I like cheese.",
        "output": "J'aime le fromage.",
        "id": 4,
    },
    {"instruction": "Name the three primary colors", "input": "", "output": "dup", "id": 5},
    {
        "instruction": "Explain how vaccines train the immune system.",
        "input": "",
        "output": "...",
        "id": 6,
        "meta": {"source": "test", "tags": ["bio"]},
    },
    {"instruction": "Write a short haiku about autumn leaves falling.", "input": "", "output": "near dup", "id": 7},
    {"instruction": "Summarize the plot of Hamlet in two sentences.", "input": "", "output": "...", "id": 8},
]
SEEDS = [
    {
        "id": "seed_task_0",
        "name": "hamlet",
        "instruction": "Summarize the plot of Hamlet in two sentences",
        "instances": [{"input": "", "output": "A prince avenges his father."}],
        "is_classification": False,
    },
    {
        "id": "seed_task_1",
        "name": "fruit",
        "instruction": "List five fruits that are red.",
        "instances": [{"input": "", "output": "apple"}],
        "is_classification": False,
    },
]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "curate", "dedup", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def expected_ids(records: list[dict], seeds: list[dict], threshold: float = 0.7) -> list[int]:
    """Stanford's loop with rouge_score: what must survive."""
    pool = [SCORER._tokenizer.tokenize(s["instruction"]) for s in seeds]
    kept = []
    for r in records:
        tokens = SCORER._tokenizer.tokenize(r["instruction"])
        if all(rouge_scorer._score_lcs(tokens, p).fmeasure <= threshold for p in pool):
            kept.append(r["id"])
            pool.append(tokens)
    return kept


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_json_list_input_keeps_novel_records_whole_and_in_order(tmp_path):
    src = tmp_path / "data.json"
    src.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    out = tmp_path / "out" / "kept.jsonl"
    proc = run(src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    kept = read_jsonl(out)
    assert [r["id"] for r in kept] == expected_ids(RECORDS, []) == [1, 3, 4, 6, 8]
    assert kept[3] == RECORDS[5]  # every field survives untouched, nested ones included
    assert "read 8, kept 5, dropped 3 as near-duplicates" in proc.stdout


def test_jsonl_input_with_seeds_drops_seed_duplicates_and_never_writes_seeds(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    seeds = write_jsonl(tmp_path / "seed_tasks.jsonl", SEEDS)
    out = tmp_path / "kept.jsonl"
    proc = run(src, "-o", out, "--seeds", seeds)
    assert proc.returncode == 0, proc.stderr
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids == expected_ids(RECORDS, SEEDS) == [1, 3, 4, 6]  # Hamlet is a seed near-duplicate
    assert "read 8, kept 4, dropped 4" in proc.stdout and "2 seeds" in proc.stdout


def test_threshold_option_changes_what_counts_as_a_duplicate(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    out = tmp_path / "kept.jsonl"
    assert run(src, "-o", out, "--threshold", "1.0").returncode == 0
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in RECORDS]
    assert run(src, "-o", out, "--threshold", "0.15").returncode == 0  # sharing "the" is enough
    assert [r["id"] for r in read_jsonl(out)] == expected_ids(RECORDS, [], 0.15) == [1, 3, 4]


def test_broken_json_line_names_file_and_line_and_writes_nothing(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text(
        json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[2]) + '\n{"instruction": "oops",\n', encoding="utf-8"
    )
    out = tmp_path / "kept.jsonl"
    proc = run(src, "-o", out)
    assert proc.returncode == 2
    assert f"{src}:3" in proc.stderr and "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"prompt": "no instruction here"}, "missing field 'instruction'"),
        ({"instruction": 42}, "'instruction' must be a string"),
    ],
)
def test_bad_record_names_file_and_line_and_writes_nothing(tmp_path, bad, message):
    src = write_jsonl(tmp_path / "data.jsonl", [RECORDS[0], RECORDS[2], bad, RECORDS[3]])
    out = tmp_path / "kept.jsonl"
    proc = run(src, "-o", out)
    assert proc.returncode == 2
    assert f"{src}:3" in proc.stderr and message in proc.stderr
    assert not out.exists()


def test_bad_seed_file_and_bad_threshold_are_clear_errors(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [SEEDS[0], {"id": "x", "name": "no instruction"}])
    out = tmp_path / "kept.jsonl"
    proc = run(src, "-o", out, "--seeds", seeds)
    assert proc.returncode == 2 and f"{seeds}:2" in proc.stderr and "instruction" in proc.stderr
    proc = run(src, "-o", out, "--threshold", "1.5")
    assert proc.returncode == 2 and "threshold" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(tmp_path / "missing.jsonl", "-o", out)
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr
    assert not out.exists()
