"""Training data: record formats, Stanford's label rule, EOS handling, errors with file and record."""

from __future__ import annotations

import copy
import json

import pytest

from alpacakit.errors import DataError
from alpacakit.prompting import PromptFormat
from alpacakit.train.collate import PackedCollator, PaddedCollator
from alpacakit.train.data import (
    IGNORE,
    DataStats,
    Sample,
    Turn,
    load_samples,
    split_validation,
    tokenize_samples,
)
from alpacakit.train.tiny import make_tiny_tokenizer

RECORDS = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "Translate the word into French.", "input": "cat", "output": "chat"},
    {"instruction": "Give a synonym for happy.", "output": "Cheerful."},  # no input key at all
    {"instruction": "Count the vowels: banana", "input": "", "output": "Three: a, a, a. Ünïcödé ok."},
    {"instruction": "Explain why the sky is blue.", "input": "", "output": ""},  # empty answer: only EOS
]


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def stanford_rule(tokenizer, prompt, output, max_length):
    """Stanford Alpaca's train.py, written out: tokenize the source and source+target+EOS text,
    then mask the first len(source tokens) labels."""
    source_ids = tokenizer(prompt, max_length=max_length, truncation=True)["input_ids"]
    example_ids = tokenizer(prompt + output + tokenizer.eos_token, max_length=max_length, truncation=True)["input_ids"]
    labels = copy.deepcopy(example_ids)
    labels[: len(source_ids)] = [IGNORE] * len(source_ids)
    return example_ids, labels


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_labels_equal_stanfords_rule_for_sample_records(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    samples = load_samples(_write_jsonl(tmp_path / "d.jsonl", RECORDS))
    rows = tokenize_samples(samples, fmt, tok, 512)
    assert len(rows) == len(RECORDS)
    for rec, row in zip(RECORDS, rows):
        ids, labels = stanford_rule(tok, fmt.build(rec["instruction"], rec.get("input", "")), rec["output"], 512)
        assert row["input_ids"] == ids
        assert row["labels"] == labels


def test_labels_equal_stanfords_rule_when_truncation_cuts_the_response(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    for rec in RECORDS[:4]:
        prompt = fmt.build(rec["instruction"], rec.get("input", ""))
        max_length = len(tok(prompt)["input_ids"]) + 2  # room for two response tokens, no EOS
        rows = tokenize_samples(load_samples(_write_jsonl(tmp_path / "d.jsonl", [rec])), fmt, tok, max_length)
        ids, labels = stanford_rule(tok, prompt, rec["output"], max_length)
        assert rows[0]["input_ids"] == ids and rows[0]["labels"] == labels
        assert len(ids) == max_length


def test_eos_is_appended_and_supervised(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    rows = tokenize_samples(load_samples(_write_jsonl(tmp_path / "d.jsonl", RECORDS)), fmt, tok, 512)
    for row in rows:
        assert row["input_ids"][-1] == tok.eos_token_id
        assert row["labels"][-1] == tok.eos_token_id
        assert row["input_ids"].count(tok.eos_token_id) == 1


def test_prompt_tokens_are_masked_and_response_tokens_are_not(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    rec = RECORDS[0]
    row = tokenize_samples(load_samples(_write_jsonl(tmp_path / "d.jsonl", [rec])), fmt, tok, 512)[0]
    n_prompt = len(tok(fmt.build(rec["instruction"]))["input_ids"])
    assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert all(x != IGNORE for x in row["labels"][n_prompt:])
    assert tok.decode(row["labels"][n_prompt:-1]).strip() == rec["output"]


@pytest.mark.parametrize("collator", ["padded", "packed"])
def test_pad_equal_to_eos_does_not_mask_the_eos(tmp_path, collator):
    tok = make_tiny_tokenizer()
    tok.pad_token = tok.eos_token  # the classic Alpaca-LoRA set-up
    fmt = PromptFormat.load("alpaca").bind(tok)
    rows = tokenize_samples(load_samples(_write_jsonl(tmp_path / "d.jsonl", RECORDS)), fmt, tok, 512)
    batch = (PaddedCollator(tok.pad_token_id) if collator == "padded" else PackedCollator())(rows)
    ids, labels = batch["input_ids"], batch["labels"]
    if collator == "padded":
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            assert labels[i, n - 1].item() == tok.eos_token_id  # the real EOS is learned
            assert (labels[i, n:] == IGNORE).all()  # the padding (same id!) is not
            assert (ids[i, n:] == tok.eos_token_id).all()
    else:
        ends = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()[1:] + [ids.shape[1]]
        for e in ends:
            assert labels[0, e - 1].item() == tok.eos_token_id


def test_truncation_is_counted_and_examples_without_response_tokens_are_dropped(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    stats = DataStats()
    samples = load_samples(_write_jsonl(tmp_path / "d.jsonl", RECORDS[:2]))
    n_prompt0 = len(tok(fmt.build(RECORDS[0]["instruction"]))["input_ids"])
    rows = tokenize_samples(samples, fmt, tok, n_prompt0 + 2, stats)
    assert stats.truncated >= 1
    assert all(len(r["input_ids"]) <= n_prompt0 + 2 for r in rows)
    stats2 = DataStats()
    assert tokenize_samples(samples, fmt, tok, 10, stats2) == []
    assert stats2.dropped_no_response_tokens == 2


def test_alpaca_json_list_and_csv_are_read(tmp_path, tok):
    j = tmp_path / "alpaca.json"
    j.write_text(json.dumps(RECORDS))
    assert len(load_samples(j)) == len(RECORDS)
    c = tmp_path / "d.csv"
    c.write_text("instruction,input,output\nSay hi.,,Hi!\n")
    s = load_samples(c)
    assert s[0].turns[0].output == "Hi!"


def test_hf_datasets_folder_is_read(tmp_path):
    import datasets

    datasets.Dataset.from_list(RECORDS[:3]).save_to_disk(str(tmp_path / "ds"))
    s = load_samples(tmp_path / "ds")
    assert [t.turns[0].instruction for t in s] == [r["instruction"] for r in RECORDS[:3]]


def test_generate_output_metadata_is_ignored(tmp_path):
    rec = {**RECORDS[1], "most_similar_instructions": {"x": 0.1}, "avg_similarity_score": 0.1, "teacher": "qwen"}
    s = load_samples(_write_jsonl(tmp_path / "d.jsonl", [rec]))
    assert s[0].turns == [Turn("Translate the word into French.", "cat", "chat")]


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Name a fruit."},
        {"from": "gpt", "value": "Apple."},
        {"from": "human", "value": "Another one?"},
        {"from": "gpt", "value": "Banana."},
    ]
}


def test_sharegpt_conversations_become_turns(tmp_path):
    s = load_samples(_write_jsonl(tmp_path / "c.jsonl", [SHAREGPT]))[0]
    assert s.system == "Be brief."
    assert [(t.instruction, t.output) for t in s.turns] == [("Name a fruit.", "Apple."), ("Another one?", "Banana.")]


def test_openai_messages_are_accepted(tmp_path):
    rec = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    s = load_samples(_write_jsonl(tmp_path / "m.jsonl", [rec]))[0]
    assert s.turns == [Turn("Hi", "", "Hello!")]


def test_multi_turn_with_the_alpaca_format_becomes_one_example_per_turn(tmp_path, tok):
    fmt = PromptFormat.load("alpaca").bind(tok)
    stats = DataStats()
    rows = tokenize_samples(load_samples(_write_jsonl(tmp_path / "c.jsonl", [SHAREGPT])), fmt, tok, 512, stats)
    assert len(rows) == 2 and stats.split_multiturn == 1


def test_multi_turn_with_a_chat_format_supervises_every_assistant_turn_only(tmp_path):
    tok = make_tiny_tokenizer(chat_template=True)
    fmt = PromptFormat.load("chat").bind(tok)
    rows = tokenize_samples(load_samples(_write_jsonl(tmp_path / "c.jsonl", [SHAREGPT])), fmt, tok, 512)
    assert len(rows) == 1
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    supervised = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert "Apple." in supervised and "Banana." in supervised
    assert "Name a fruit" not in supervised and "Be brief" not in supervised and "user" not in supervised
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    # the unsupervised part is exactly what the template writes before each answer
    rendered = fmt.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        add_generation_prompt=True,
    )
    n = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert labels[:n] == [IGNORE] * n and labels[n] != IGNORE


def test_unknown_record_shape_names_file_and_record(tmp_path):
    p = _write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"question": "why", "answer": "because"}])
    with pytest.raises(DataError) as e:
        load_samples(p)
    assert f"{p}: record 2" in e.value.message and "question" in e.value.message
    assert "instruction" in e.value.hint


def test_missing_output_is_an_error_naming_the_record(tmp_path):
    p = _write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x"}])
    with pytest.raises(DataError, match="record 1.*no 'output'"):
        load_samples(p)


def test_broken_jsonl_line_is_reported_with_its_line_number(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl:2"):
        load_samples(p)


def test_conversation_starting_with_the_assistant_is_refused(tmp_path):
    p = _write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "gpt", "value": "hi"}]}])
    with pytest.raises(DataError, match="no user turn before it"):
        load_samples(p)


def test_unknown_role_is_refused(tmp_path):
    p = _write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "narrator", "value": "hi"}]}])
    with pytest.raises(DataError, match="unknown role 'narrator'"):
        load_samples(p)


def test_missing_data_file_says_how_to_set_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_samples(tmp_path / "nope.jsonl")
    assert "train.data" in e.value.hint


def test_max_examples_keeps_the_first_n(tmp_path):
    s = load_samples(_write_jsonl(tmp_path / "d.jsonl", RECORDS), max_examples=2)
    assert [x.turns[0].instruction for x in s] == [r["instruction"] for r in RECORDS[:2]]


def test_validation_split_is_seeded_disjoint_and_complete():
    samples = [Sample([Turn(f"i{i}", "", "o")], f"r{i}") for i in range(50)]
    tr, va = split_validation(samples, 0.2, seed=1)
    tr2, va2 = split_validation(samples, 0.2, seed=1)
    assert len(va) == 10 and len(tr) == 40
    assert [s.where for s in va] == [s.where for s in va2]
    assert {s.where for s in tr} | {s.where for s in va} == {s.where for s in samples}
    assert len(split_validation(samples, 7, seed=1)[1]) == 7
    with pytest.raises(DataError):
        split_validation(samples, 50, seed=1)
