"""`--batch-api`: generation and judging through the OpenAI Batch API, against the loopback server.

Real HTTP and the real `openai` SDK on the client side; the fake server (tests/fake_openai.py)
speaks the files + batches endpoints, answers each batch line through its script / responder,
and moves a batch through validating -> in_progress -> finalizing -> completed as time passes,
so the client has to poll. Every line answered is recorded with its batch id.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FAKE_KEY, FAKE_KEY_ENV, FakeOpenAIServer

from alpacakit.config import load_config
from alpacakit.errors import ConfigError, TeacherError
from alpacakit.io import iter_jsonl

PRICE = {"input_per_1m": 1.0, "output_per_1m": 2.0}
SEEDS = [
    "Suggest a name for a bakery that sells only bread.",
    "Classify the animal as a mammal, bird or fish.",
    "Convert the temperature from Celsius to Fahrenheit.",
    "Give two tips for sleeping better at night.",
]
_words = itertools.count()


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)
    with FakeOpenAIServer() as srv:
        srv.batch_delay_s = 0.02
        yield srv


def write_seeds(path: Path) -> Path:
    with open(path, "w") as f:
        for i, ins in enumerate(SEEDS):
            f.write(
                json.dumps(
                    {
                        "id": f"s{i}",
                        "name": f"seed_{i}",
                        "instruction": ins,
                        "instances": [{"input": "", "output": "An answer."}],
                        "is_classification": False,
                    }
                )
                + "\n"
            )
    return path


def three_tasks(body: dict) -> str:
    """A well-behaved teacher: the next three numbered tasks, each sharing no word with any other."""
    prompt = body["messages"][-1]["content"]
    first = int(re.findall(r"(\d+)\. Instruction:", prompt)[-1])
    parts = []
    for n in range(first, first + 3):
        words = " ".join(f"w{next(_words)}q{k}" for k in range(6))
        parts.append(f"{n}. Instruction: Explain {words} briefly.\n{n}. Input:\n<noinput>\n{n}. Output:\nAnswer {n}.")
    return "\n###\n".join(parts)


def gen_config(server: FakeOpenAIServer, tmp_path: Path, *, batch_api: bool = True, **generate_fields):
    return load_config(
        None,
        None,
        {
            "teacher": {
                "model": "openai:fake-model",
                "base_url": server.url,
                "api_key_env": FAKE_KEY_ENV,
                "max_retries": 2,
                "backoff_base_s": 0.01,
                "timeout_s": 10.0,
                "max_tokens": 64,
                "price": PRICE,
            },
            "generate": {
                "seeds": str(write_seeds(tmp_path / "seeds.jsonl")),
                "batch_api": batch_api,
                "batch": {"poll_s": 0.02},
                **generate_fields,
            },
        },
    )


def run_generate(cfg, out: Path, **kw):
    from alpacakit.generate.runner import generate

    return generate(cfg, out, show_progress=False, **kw)


def journal(out: Path) -> list[dict]:
    path = out / "responses.jsonl"
    return [e for _, e in iter_jsonl(path)] if path.exists() else []


def batch_log(out: Path) -> list[dict]:
    return [r for _, r in iter_jsonl(out / "batches.jsonl")]


def uploaded_ids(server: FakeOpenAIServer) -> list[str]:
    """custom_id of every line of every batch input file the server received."""
    return [
        json.loads(line)["custom_id"]
        for f in server.files.values()
        if f["object"]["purpose"] == "batch"
        for line in f["content"].decode().splitlines()
        if line.strip()
    ]


def prompts_file(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"instruction": f"Name the colour number {i} of the rainbow."}) + "\n" for i in range(n))
    )
    return path


def test_a_batch_generation_reaches_its_target_at_half_the_online_price(server, tmp_path):
    server.responder = three_tasks
    res = run_generate(gen_config(server, tmp_path, num=20), tmp_path / "batch")
    assert res.status == "complete" and "Batch API" in res.summary()
    kept = [e["instruction"] for _, e in iter_jsonl(tmp_path / "batch" / "examples.jsonl")]
    assert len(kept) >= 20 and len(set(kept)) == len(kept)
    # no live request: every answer came from a batch line, and every line is in the journal once
    lines = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert lines and all(r.batch_id for r in lines)
    entries = journal(tmp_path / "batch")
    assert sorted(e["index"] for e in entries) == sorted(int(r.custom_id.split("-")[1]) for r in lines)
    assert len(server.batches) >= 2  # sized from the rate seen: a first batch, then what is still missing
    assert all(e["batch"] in server.batches for e in entries)
    body = lines[0].body  # the line is what the live teacher would have sent
    assert body["model"] == "fake-model" and body["max_tokens"] == 64 and body["messages"][-1]["role"] == "user"
    manifest = json.loads((tmp_path / "batch" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["batch_api"]["price_factor"] == 0.5
    assert "Batch API" in manifest["price"] and manifest["config"]["generate"]["batch_api"] is True

    online = run_generate(gen_config(server, tmp_path, batch_api=False, num=20), tmp_path / "online")
    assert online.status == "complete"
    live = {e["index"]: e for e in journal(tmp_path / "online")}
    common = [e for e in entries if e["index"] in live]
    assert common
    for e in common:  # same request, same usage, half the price
        assert e["usage"] == live[e["index"]]["usage"]
        assert e["cost"] == pytest.approx(live[e["index"]]["cost"] / 2)
        assert e["cost"] == pytest.approx(
            (e["usage"]["prompt_tokens"] * 1.0 + e["usage"]["completion_tokens"] * 2.0) / 1e6 / 2
        )
    assert res.totals.cost_usd == pytest.approx(sum(e["cost"] for e in entries))


@pytest.mark.slow
def test_kill_minus_nine_while_polling_then_rerun_collects_the_recorded_batch(server, tmp_path):
    server.responder = three_tasks
    server.batch_delay_s = 1.5  # ~4.5 s per batch: the kill comes while the first one is polled
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "alpacakit.cli.main",
        "generate",
        "--teacher",
        "openai:fake-model",
        "--base-url",
        server.url,
        "--api-key-env",
        FAKE_KEY_ENV,
        "--seeds",
        str(write_seeds(tmp_path / "s.jsonl")),
        "--num",
        "12",
        "-o",
        str(out),
        "--no-progress",
        "--batch-api",
        "--set",
        "generate.batch.poll_s=0.05",
        "--set",
        "teacher.max_tokens=64",
    ]
    env = {**os.environ, FAKE_KEY_ENV: FAKE_KEY}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    log = out / "batches.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and b'"created"' in log.read_bytes()):
        time.sleep(0.02)
    time.sleep(0.3)  # polling now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [r for r in batch_log(out) if r["event"] == "created"]
    assert len(first) == 1 and not journal(out), "the run should have been killed while polling its first batch"
    batch_id = first[0]["batch_id"]

    server.batch_delay_s = 0.02
    r = subprocess.run([a for a in args if a != "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"resuming 1 batch(es) from batches.jsonl: {batch_id}" in r.stderr
    ids = uploaded_ids(server)
    assert len(ids) == len(set(ids)), "a request was uploaded twice"
    finished = [r for r in batch_log(out) if r["event"] == "finished"]
    assert finished[0]["batch_id"] == batch_id and finished[0]["journaled"] == len(first[0]["indices"])
    entries = journal(out)
    indices = [e["index"] for e in entries]
    assert len(indices) == len(set(indices)) == len(ids)  # each answered line journaled once, none lost
    assert {e["batch"] for e in entries if e["index"] in first[0]["indices"]} == {batch_id}
    kept = [e["instruction"] for _, e in iter_jsonl(out / "examples.jsonl")]
    assert len(kept) >= 12 and len(set(kept)) == len(kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["asked_again"] == 0


def test_a_line_refused_for_good_is_a_request_failed_discard_and_others_wait_for_a_rerun(server, tmp_path):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 4)
    server.script(
        [
            {"text": "Red."},
            {"status": 400, "message": "prompt is too long for this model"},
            {"status": 500},
            {"text": "Yellow."},
        ]
    )
    cfg = gen_config(server, tmp_path)
    res = run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    assert res.status == "incomplete" and "rerun" in res.summary()
    discards = [d for _, d in iter_jsonl(tmp_path / "out" / "discards.jsonl")]
    assert discards == [
        {"index": 1, "reason": "request_failed", "status": 400, "message": "prompt is too long for this model"}
    ]
    assert sorted(e["index"] for e in journal(tmp_path / "out")) == [0, 1, 3]  # the 500 is left missing
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["batch_api"]["line_failures_left_for_a_rerun"] == {"HTTP 500": 1}

    server.responder = lambda body: "Green."
    again = run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    assert again.status == "complete"
    last = list(server.batches.values())[-1]
    assert [x["custom_id"] for x in last["lines"]] == ["request-2"]  # only the one that failed otherwise
    assert [e["text"] for e in journal(tmp_path / "out")][-1] == "Green."
    assert again.totals.discards["request_failed"] == 1 and again.totals.kept == 3


def test_an_expired_batch_has_its_unanswered_requests_sent_again_in_a_new_batch(server, tmp_path):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 5)
    server.batch_fates.append({"status": "expired", "answered": 2})
    server.responder = lambda body: "An answer."
    res = run_generate(gen_config(server, tmp_path), tmp_path / "out", from_prompts=prompts)
    assert res.status == "complete" and res.totals.requests == 5 and res.totals.kept == 5
    first, second = server.batches.values()
    assert first["object"]["status"] == "expired" and second["object"]["status"] == "completed"
    assert [x["custom_id"] for x in second["lines"]] == ["request-2", "request-3", "request-4"]
    entries = journal(tmp_path / "out")
    assert [e["batch"] for e in entries] == [first["object"]["id"]] * 2 + [second["object"]["id"]] * 3
    finished = [r for r in batch_log(tmp_path / "out") if r["event"] == "finished"]
    assert [(r["status"], r["journaled"], r["not_run"]) for r in finished] == [("expired", 2, 3), ("completed", 3, 0)]


def test_a_cancelled_batch_keeps_its_answers_and_sends_the_rest_again(server, tmp_path):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 4)
    server.batch_fates.append({"status": "cancelled", "answered": 1})
    res = run_generate(gen_config(server, tmp_path), tmp_path / "out", from_prompts=prompts)
    assert res.status == "complete" and res.totals.requests == 4
    first, second = server.batches.values()
    assert first["object"]["status"] == "cancelled" and first["object"]["error_file_id"] is None
    assert [x["custom_id"] for x in second["lines"]] == ["request-1", "request-2", "request-3"]


def test_a_failed_batch_is_a_clear_error_and_a_rerun_sends_its_requests_again(server, tmp_path):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 3)
    server.batch_fates.append({"status": "failed", "message": "Enqueued token limit reached for fake-model"})
    cfg = gen_config(server, tmp_path)
    with pytest.raises(TeacherError, match="Enqueued token limit"):
        run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    res = run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    assert res.status == "complete" and res.totals.kept == 3 and len(server.batches) == 2


def test_a_kill_between_creating_a_batch_and_recording_it_adopts_that_batch(server, tmp_path, monkeypatch):
    from alpacakit.teachers.batch import BatchClient

    prompts = prompts_file(tmp_path / "prompts.jsonl", 3)
    create = BatchClient.create

    class Killed(BaseException):
        pass

    async def create_then_die(self, *a, **kw):
        await create(self, *a, **kw)
        raise Killed  # the batch exists, batches.jsonl does not know its id

    monkeypatch.setattr(BatchClient, "create", create_then_die)
    cfg = gen_config(server, tmp_path)
    with pytest.raises(Killed):
        run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    monkeypatch.setattr(BatchClient, "create", create)
    res = run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    assert res.status == "complete" and res.totals.kept == 3
    assert len(server.batches) == 1 and len(uploaded_ids(server)) == 3  # found by its input file, not made again
    adopted = [r for r in batch_log(tmp_path / "out") if r["event"] == "created"]
    assert len(adopted) == 1 and adopted[0]["adopted"] is True


def test_the_budget_is_checked_at_the_batch_price_before_a_batch_is_created(server, tmp_path):
    from alpacakit.teachers.accounting import estimate_cost

    prompts = prompts_file(tmp_path / "prompts.jsonl", 6)
    cfg = gen_config(server, tmp_path)
    cfg.teacher.price.input_per_1m, cfg.teacher.price.output_per_1m = 100.0, 200.0  # a few requests' worth
    run_generate(cfg, tmp_path / "probe", from_prompts=prompts)  # to see the six requests' bodies
    bodies = [r.body for r in server.requests if r.batch_id]
    worst = [estimate_cost(cfg.teacher.price, max_tokens=64, messages=b["messages"]) for b in bodies]
    cfg.generate.max_cost = sum(worst[:5]) / 2 + worst[5] / 4  # at half price five fit, not six
    res = run_generate(cfg, tmp_path / "out", from_prompts=prompts)
    assert res.status == "stopped_at_budget"
    last = list(server.batches.values())[-1]
    assert [x["custom_id"] for x in last["lines"]] == [f"request-{i}" for i in range(5)]
    assert 0 < res.totals.cost_usd <= cfg.generate.max_cost


def test_a_live_run_refuses_a_folder_whose_batches_are_still_out(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "batches.jsonl").write_text(
        json.dumps(
            {
                "event": "created",
                "batch_id": "batch_abc",
                "input_file_id": "f",
                "indices": [0],
                "route": "chat",
                "created_at": 0,
            }
        )
        + "\n"
    )
    with pytest.raises(ConfigError, match="batch_abc.*twice"):
        run_generate(gen_config(server, tmp_path, batch_api=False, num=3), out)
    assert not server.requests


def test_batch_api_with_a_local_teacher_is_a_clear_error(tmp_path):
    cfg = load_config(
        None, None, {"teacher": {"model": "smollm2-135m-instruct"}, "generate": {"batch_api": True, "num": 3}}
    )
    with pytest.raises(ConfigError, match="Batch API"):
        run_generate(cfg, tmp_path / "out")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--teacher",
            "smollm2-135m-instruct",
            "--batch-api",
            "--num",
            "3",
            "-o",
            str(tmp_path / "cli"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Batch API" in r.stderr and "openai:" in r.stderr and "Traceback" not in r.stderr


def test_the_api_key_never_reaches_the_batch_log_manifest_or_output(server, tmp_path):
    server.responder = three_tasks
    server.api_key = "sk-test-SECRET-batch-42"
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--teacher",
            "openai:fake-model",
            "--base-url",
            server.url,
            "--api-key-env",
            "TEACHER_KEY",
            "--seeds",
            str(write_seeds(tmp_path / "s.jsonl")),
            "--num",
            "6",
            "-o",
            str(out),
            "--batch-api",
            "--set",
            "generate.batch.poll_s=0.02",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TEACHER_KEY": "sk-test-SECRET-batch-42"},
    )
    assert r.returncode == 0, r.stderr
    paths = {q.path for q in server.requests if q.batch_id is None}
    assert {"/v1/files", "/v1/batches"} <= paths
    assert all(q.authorization == "Bearer sk-test-SECRET-batch-42" for q in server.requests if q.batch_id is None)
    assert (out / "batches.jsonl").exists()
    for f in out.iterdir():
        if f.is_file():
            assert "SECRET" not in f.read_text(), f
    assert "SECRET" not in r.stdout + r.stderr


# --------------------------------------------------------------------------- judging


def _outputs(path: Path, generator: str, n: int = 6) -> Path:
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": f"Question number {i}: what is {i} + {i}?",
                    "output": f"{generator.upper()}-ANSWER-{i}: " + "x" * (10 + i),
                    "generator": generator,
                    "dataset": "test",
                }
                for i in range(n)
            ]
        )
    )
    return path


def mixed_judge(body: dict) -> str:
    """Prefers the student on even questions, the teacher on odd ones, and ties question 3."""
    user = body["messages"][-1]["content"]
    a = re.search(r"\[Answer A\]\n(\w+)-ANSWER-(\d+)", user)
    who, q = a.group(1), int(a.group(2))
    if q == 3:
        return "Verdict: tie"
    best = "STUDENT" if q % 2 == 0 else "TEACHER"
    return "Verdict: A" if who == best else "Verdict: B"


def judge_config(server: FakeOpenAIServer, batch_api: bool):
    return load_config(
        None,
        None,
        {
            "eval": {
                "judge": {
                    "model": "openai:fake-model",
                    "base_url": server.url,
                    "api_key_env": FAKE_KEY_ENV,
                    "max_retries": 2,
                    "timeout_s": 10.0,
                    "max_concurrency": 2,
                    "price": PRICE,
                    "batch_api": batch_api,
                },
                "batch": {"poll_s": 0.02},
            }
        },
    )


def test_pairwise_judging_in_batches_gives_the_online_verdicts_at_half_the_price(server, tmp_path):
    from alpacakit.evaluate.pairwise import judge_pairwise

    server.responder = mixed_judge
    model, base = (
        _outputs(tmp_path / "outputs-student.json", "student"),
        _outputs(tmp_path / "outputs-teacher.json", "teacher"),
    )
    online = judge_pairwise(model, base, judge_config(server, False), out=tmp_path / "online.json", show_progress=False)
    assert not server.batches
    batch = judge_pairwise(model, base, judge_config(server, True), out=tmp_path / "batch.json", show_progress=False)
    assert batch.status == "complete" and len(server.batches) == 1
    assert len(next(iter(server.batches.values()))["lines"]) == 12  # both orders of 6 pairs, one batch
    a, b = json.loads((tmp_path / "online.json").read_text()), json.loads((tmp_path / "batch.json").read_text())
    assert [x["preference"] for x in b["annotations"]] == [x["preference"] for x in a["annotations"]]
    assert [[j["verdict"] for j in x["judgments"]] for x in b["annotations"]] == [
        [j["verdict"] for j in x["judgments"]] for x in a["annotations"]
    ]
    assert b["metrics"] == a["metrics"]
    assert batch.cost["cost_usd"] == pytest.approx(online.cost["cost_usd"] / 2)
    manifest = json.loads((tmp_path / "batch.work" / "manifest.json").read_text())
    assert manifest["batch_api"]["batches_created"] == 1 and manifest["status"] == "complete"

    n = len(server.requests)  # a rerun: every judgment is journaled, nothing is sent
    again = judge_pairwise(model, base, judge_config(server, True), out=tmp_path / "batch.json", show_progress=False)
    assert again.metrics == batch.metrics and len(server.requests) == n


def test_pairwise_batch_with_a_local_judge_is_a_clear_error(tmp_path):
    from alpacakit.evaluate.pairwise import judge_pairwise

    cfg = load_config(None, None, {"eval": {"judge": {"model": "smollm2-135m-instruct", "batch_api": True}}})
    model, base = (
        _outputs(tmp_path / "outputs-student.json", "student"),
        _outputs(tmp_path / "outputs-teacher.json", "teacher"),
    )
    with pytest.raises(ConfigError, match="eval.judge.batch_api.*Batch API"):
        judge_pairwise(model, base, cfg, show_progress=False)


def test_eval_generate_in_batches_answers_every_item(server, tmp_path):
    from alpacakit.evaluate.outputs import generate_outputs

    server.responder = lambda body: "An answer to " + body["messages"][-1]["content"]
    cfg = load_config(
        None,
        None,
        {
            "eval": {
                "limit": 5,
                "batch": {"poll_s": 0.02},
                "system": {
                    "model": "openai:fake-model",
                    "base_url": server.url,
                    "api_key_env": FAKE_KEY_ENV,
                    "price": PRICE,
                },
            }
        },
    )
    res = generate_outputs(cfg, tmp_path / "outputs-teacher.json", show_progress=False, batch_api=True)
    assert res.status == "complete" and res.answered == 5 and len(server.batches) == 1
    records = json.loads((tmp_path / "outputs-teacher.json").read_text())
    assert all(r["output"].startswith("An answer to ") and r["generator"] == "teacher" for r in records)


# --------------------------------------------------------------------------- the fake server itself


def test_the_fake_server_speaks_the_files_and_batches_endpoints_as_the_sdk_reads_them(server):
    """The shapes the SDK parses (Batch, FileObject, request counts), polling, and a cancel."""
    import openai

    client = openai.OpenAI(api_key=FAKE_KEY, base_url=server.url, max_retries=0)
    server.batch_delay_s = 0.3
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
    }
    data = (json.dumps(line) + "\n" + json.dumps({**line, "custom_id": "b"}) + "\n").encode()
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data) and client.files.retrieve(f.id).filename == "in.jsonl"
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "validating" and b.request_counts.total == 2
    seen = []
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        seen.append(b.status)
        time.sleep(0.05)
        b = client.batches.retrieve(b.id)
    assert seen[0] == "validating" and "in_progress" in seen and "finalizing" in seen and b.status == "completed"
    assert b.request_counts.completed == 2 and b.completed_at and b.error_file_id is None
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "b"] and out[0]["error"] is None
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi"
    assert [r.custom_id for r in server.requests if r.batch_id == b.id] == ["a", "b"]
    assert [x.id for x in client.batches.list(limit=5)] == [b.id]

    server.batch_delay_s = 5.0  # cancelled while validating: nothing answered
    c = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(c.id).status == "cancelling"
    c = client.batches.retrieve(c.id)
    assert c.status == "cancelled" and c.output_file_id is None and c.request_counts.completed == 0
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", data), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
