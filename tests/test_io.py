"""Append-only logs survive torn writes; readers name file:line."""

import json

import pytest

from alpacakit.errors import DataError
from alpacakit.io import JsonlAppender, iter_jsonl, read_records


def test_torn_last_line_is_cut_on_reopen(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b": "hal')
    with JsonlAppender(p) as w:
        w.write({"a": 4})
    assert [o["a"] for _, o in iter_jsonl(p)] == [1, 2, 4]


def test_write_many_appends_the_same_bytes_as_one_write_each(tmp_path):
    records = [{"a": 1, "t": "é"}, {"b": [1, 2]}, {}]
    with JsonlAppender(tmp_path / "one.jsonl") as one, JsonlAppender(tmp_path / "many.jsonl", fsync=True) as many:
        for r in records:
            one.write(r)
        many.write_many(records[:2])
        many.write_many([])
        many.write_many(records[2:])
    assert (tmp_path / "many.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert [o for _, o in iter_jsonl(tmp_path / "many.jsonl")] == records


def test_broken_line_names_file_and_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"instruction": "x"}\n{"instruction": \n')
    with pytest.raises(DataError, match=r"data\.jsonl:2"):
        read_records(p)


def test_missing_field_names_record_and_field(tmp_path):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([{"instruction": "a"}, {"prompt": "b"}]))
    with pytest.raises(DataError, match=r"item 1: missing field 'instruction'"):
        read_records(p, required=["instruction"])


def test_csv_records(tmp_path):
    p = tmp_path / "prompts.csv"
    p.write_text("question,notes\nWhat is 2+2?,easy\n")
    assert read_records(p, required=["question"]) == [{"question": "What is 2+2?", "notes": "easy"}]
