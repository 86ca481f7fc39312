"""Eval set loaders and the contamination check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpacakit.errors import DataError
from alpacakit.evaluate.contamination import check_contamination, find_contaminated
from alpacakit.evaluate.evalsets import load_eval_set, load_outputs


def test_the_builtin_held_out_set_has_150_distinct_instructions():
    items = load_eval_set("alpacakit")
    assert len(items) >= 150
    assert len({it.id for it in items}) == len(items)
    assert len({it.prompt for it in items}) == len(items)
    assert all(it.dataset for it in items)


def test_self_instruct_user_oriented_records_give_one_item_per_instruction_or_instance(tmp_path):
    path = tmp_path / "user_oriented.jsonl"
    rows = [
        {
            "id": "u1",
            "user": "a",
            "motivation_app": "Gmail",
            "instruction": "Reply to this email.",
            "instances": [{"input": "Hi, lunch?", "output": "Sure."}, {"input": "Meeting?", "output": "Yes."}],
        },
        {
            "id": "u2",
            "user": "b",
            "motivation_app": "Wikipedia",
            "instruction": "Define entropy.",
            "instances": [{"input": "", "output": "A measure of disorder."}],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = load_eval_set(path)
    assert [(it.id, it.input, it.category, it.reference) for it in first] == [
        ("u1", "Hi, lunch?", "Gmail", "Sure."),
        ("u2", "", "Wikipedia", "A measure of disorder."),
    ]
    assert first[0].prompt == "Reply to this email.\n\nHi, lunch?"
    every = load_eval_set(path, instances="all")
    assert [it.id for it in every] == ["u1#0", "u1#1", "u2#0"]


def test_an_alpacaeval_json_file_is_an_eval_set_with_reference_answers(tmp_path):
    path = tmp_path / "alpaca_eval.json"
    path.write_text(
        json.dumps([{"instruction": "Say hi", "output": "Hi!", "generator": "ref", "dataset": "helpful_base"}])
    )
    (item,) = load_eval_set(path)
    assert (item.instruction, item.reference, item.dataset) == ("Say hi", "Hi!", "helpful_base")


def test_malformed_eval_files_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok"}\n{"prompt": "no instruction"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'instruction'"):
        load_eval_set(path)
    si = tmp_path / "si.jsonl"
    si.write_text('{"instruction": "x", "instances": []}\n')
    with pytest.raises(DataError, match=r"si.jsonl:1: 'instances' should be a non-empty list"):
        load_eval_set(si)
    out = tmp_path / "outputs.json"
    out.write_text(json.dumps([{"instruction": "a", "output": None}]))
    with pytest.raises(DataError, match=r"item 0: 'output' should be text"):
        load_outputs(out)


def test_contamination_finds_every_pair_above_the_threshold_exactly_as_rouge_score_does():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    evals = [
        "Write a short poem about the sea.",
        "Explain how a bicycle gear works.",
        "List three uses of baking soda.",
        "Translate 'good morning' into French.",
    ]
    train = [
        "Write a short poem about the sea and the moon.",
        "Describe the water cycle.",
        "Explain how a bicycle gear works in simple terms.",
        "list three uses of baking soda!",
        "Write a short poem about the sea.",
        "Give three uses of vinegar.",
    ]
    pairs = find_contaminated(train, evals, 0.7)
    expected = [
        (i, j, scorer.score(e, t)["rougeL"].fmeasure)
        for i, t in enumerate(train)
        for j, e in enumerate(evals)
        if scorer.score(e, t)["rougeL"].fmeasure > 0.7
    ]
    assert pairs == expected
    assert {i for i, _, _ in pairs} == {0, 2, 3, 4}


def test_the_contamination_verb_writes_the_training_file_without_the_copies(tmp_path: Path):
    train = tmp_path / "examples.jsonl"
    rows = [
        {"instruction": "Write a short poem about the sea.", "input": "", "output": "Waves."},
        {"instruction": "Describe the water cycle.", "input": "", "output": "Rain."},
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"id": "e1", "instruction": "Write a short poem about the sea"}) + "\n")
    report = check_contamination(train, evals, write_clean=tmp_path / "clean.jsonl")
    assert report["n_contaminated_train"] == 1
    assert report["pairs"][0]["eval_id"] == "e1" and report["pairs"][0]["rouge_l"] == 1.0
    kept = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert kept == [rows[1]]
