"""`alpacakit generate` against a real OpenAI-compatible server on 127.0.0.1 that plays a script.

The teacher side is the real `openai` SDK over HTTP; the server (tests/fake_openai.py) injects
429s, 500s, timeouts and malformed output. Runs go through the library function and the CLI.
"""

from __future__ import annotations

import asyncio
import gc
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
from fake_openai import FakeOpenAIServer

from alpacakit.config import load_config
from alpacakit.generate.runner import generate
from alpacakit.io import iter_jsonl

SEEDS = [
    ("Suggest a name for a bakery that sells only bread.", "", "The Daily Loaf"),
    ("Classify the animal as a mammal, bird or fish.", "Penguin", "Bird"),
    ("Convert the temperature from Celsius to Fahrenheit.", "20 degrees Celsius", "68 degrees Fahrenheit"),
    ("Give two tips for sleeping better at night.", "", "Keep a fixed bedtime; avoid screens late."),
]


def write_seeds(path: Path) -> Path:
    with open(path, "w") as f:
        for i, (ins, inp, out) in enumerate(SEEDS):
            f.write(
                json.dumps(
                    {
                        "id": f"s{i}",
                        "name": f"seed_{i}",
                        "instruction": ins,
                        "instances": [{"input": inp, "output": out}],
                        "is_classification": False,
                    }
                )
                + "\n"
            )
    return path


_counter = itertools.count()


def unique_instruction() -> str:
    """Instructions that share almost no words with each other (ROUGE-L far below 0.7)."""
    n = next(_counter)
    words = [f"w{n}x{k}" for k in range(6)]
    return f"Explain {' '.join(words)} briefly."


def tasks_text(first: int, count: int, *, duplicate: str | None = None, chat: bool = True) -> str:
    """What a well-behaved teacher writes: `count` numbered tasks starting at `first`."""
    parts = []
    for k in range(count):
        n = first + k
        ins = duplicate if (duplicate and k == 0) else unique_instruction()
        parts.append(f"{n}. Instruction: {ins}\n{n}. Input:\n<noinput>\n{n}. Output:\nAnswer number {n}.")
    text = "\n###\n".join(parts)
    return text if chat else text.split("Instruction:", 1)[1]


def responder(tasks_per_response: int = 3):
    def answer(body):
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        first = int(re.findall(r"(\d+)\. Instruction:", prompt)[-1])
        return tasks_text(first, tasks_per_response, chat="messages" in body)

    return answer


def config(server: FakeOpenAIServer, seeds: Path, **generate_fields):
    return load_config(
        None,
        None,
        {
            "teacher": {
                "model": "openai:fake-model",
                "base_url": server.url,
                "max_retries": 4,
                "backoff_base_s": 0.05,
                "backoff_max_s": 0.2,
                "timeout_s": 1.0,
                "max_concurrency": 2,
            },
            "generate": {"seeds": str(seeds), "request_batch": 2, **generate_fields},
        },
    )


@pytest.fixture()
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def test_generation_survives_errors_and_counts_everything(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    server.script(
        [
            {"status": 429, "retry_after": 0.1},
            {"status": 500},
            {"sleep": 1.5},  # longer than timeout_s: retried
            {"malformed": True},  # invalid JSON body: retried
            {
                "text": tasks_text(4, 3, duplicate=SEEDS[0][0])
                + "\n###\n7. Instruction: Describe the picture of a cat.\n"
                "7. Input:\n<noinput>\n7. Output:\nA cat.\n###\n8. Instruction: Say hi\n8. Output:\nHi"
            },
        ]
    )
    cfg = config(server, seeds, num=8)
    result = generate(cfg, tmp_path / "out", show_progress=False)

    assert result.status == "complete"
    kept = [o for _, o in iter_jsonl(tmp_path / "out" / "examples.jsonl")]
    assert len(kept) >= 8
    assert len({k["instruction"] for k in kept}) == len(kept)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["discards_by_reason"]["near_duplicate"] == 1  # the copy of a seed task
    assert counts["discards_by_reason"]["blacklisted_word"] == 1  # "picture"
    assert counts["discards_by_reason"]["too_short"] == 1  # "Say hi"
    assert counts["kept"] == len(kept)
    assert counts["attempts"] >= counts["requests"] + 4  # four failed tries were retried
    journal = [o for _, o in iter_jsonl(tmp_path / "out" / "responses.jsonl")]
    assert len(journal) == counts["requests"] == len({e["index"] for e in journal})
    assert manifest["status"] == "complete"
    assert manifest["inputs"]["seeds"]["count"] == len(SEEDS)
    example = kept[0]
    assert {
        "instruction",
        "input",
        "output",
        "teacher",
        "request",
        "max_similarity",
        "most_similar_instructions",
    } <= set(example)
    assert isinstance(example["avg_similarity"], float) and example["max_similarity"] >= example["avg_similarity"]


def test_rerun_extends_without_asking_again(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    out = tmp_path / "out"
    generate(config(server, seeds, num=5), out, show_progress=False)
    first_requests = len(server.requests)
    first = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]

    again = generate(config(server, seeds, num=5), out, show_progress=False)
    assert again.status == "complete" and len(server.requests) == first_requests  # nothing to do

    wall_before = json.loads((out / "manifest.json").read_text())["wall_seconds"]
    generate(config(server, seeds, num=11), out, show_progress=False)
    after = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]
    assert after[: len(first)] == first and len(after) >= 11
    assert len(set(after)) == len(after)
    manifest = json.loads((out / "manifest.json").read_text())  # wall time adds up over the runs
    assert manifest["wall_seconds"] == pytest.approx(wall_before + manifest["wall_seconds_this_run"], abs=0.02)


def test_other_settings_in_same_folder_are_refused(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    generate(config(server, seeds, num=3), tmp_path / "out", show_progress=False)
    from alpacakit.errors import DataError

    with pytest.raises(DataError, match="other settings"):
        generate(config(server, seeds, num=3, rng_seed=7), tmp_path / "out", show_progress=False)


def test_budget_stops_before_it_is_exceeded(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = lambda body: {
        "text": tasks_text(4, 2),
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
    }
    cfg = config(server, seeds, num=1000, max_cost=0.05)
    cfg.teacher.price.input_per_1m = 10.0
    cfg.teacher.price.output_per_1m = 30.0
    cfg.teacher.max_tokens = 300
    result = generate(cfg, tmp_path / "out", show_progress=False)
    assert result.status == "stopped_at_budget"
    assert 0 < result.totals.cost_usd <= 0.05
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["cost_usd"] == pytest.approx(result.totals.cost_usd)


def run_cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.mark.slow
def test_unreachable_endpoint_fails_clearly_and_leaves_data_intact(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = run_cli(
        "generate",
        "--teacher",
        "openai:m",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--seeds",
        str(seeds),
        "--num",
        "3",
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        "--set",
        "teacher.max_retries=2",
        "--set",
        "teacher.backoff_base_s=0.01",
    )
    assert r.returncode == 2
    assert f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["counts"]["requests"] == 0


def test_missing_api_key_names_the_variable(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "MY_TEACHER_KEY"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--teacher",
            "openai:gpt-x",
            "--base-url",
            "https://api.example.invalid/v1",
            "--api-key-env",
            "MY_TEACHER_KEY",
            "--seeds",
            str(seeds),
            "--num",
            "3",
            "-o",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2
    assert "MY_TEACHER_KEY" in r.stderr


def test_malformed_seed_file_names_file_and_line(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(
        json.dumps(
            {"id": "a", "instruction": "Name a colour of the sky.", "instances": [{"input": "", "output": "Blue"}]}
        )
        + "\n"
        + '{"id": "b", "instruction": "Broken line", "instances": [\n'
    )
    r = run_cli(
        "generate",
        "--teacher",
        "openai:m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--seeds",
        str(bad),
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
    )
    assert r.returncode == 2
    assert f"{bad}:2" in r.stderr


def test_api_key_never_reaches_logs_or_manifest(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    server.api_key = "sk-test-SECRET-123"
    r = run_cli(
        "generate",
        "--teacher",
        "openai:fake-model",
        "--base-url",
        server.url,
        "--api-key-env",
        "TEACHER_KEY",
        "--seeds",
        str(seeds),
        "--num",
        "3",
        "-o",
        str(tmp_path / "out"),
        "--no-progress",
        env={"TEACHER_KEY": "sk-test-SECRET-123"},
    )
    assert r.returncode == 0, r.stderr
    assert server.requests[0].authorization == "Bearer sk-test-SECRET-123"
    for f in (tmp_path / "out").iterdir():
        assert "SECRET" not in f.read_text(), f
    assert "SECRET" not in r.stdout + r.stderr


def _processes_writing(out: Path) -> list[int]:
    """Live processes whose command line names `out` (zombies have none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(out).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def _interruptible_run(server, tmp_path, num: int, delay: float) -> tuple[list[str], Path]:
    """A generate command (CLI args, out folder) against a teacher that answers 2 tasks after
    `delay` seconds, 2 requests in flight, with a worker and two statistics copies (forks that
    must end with the run)."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    answer = responder(2)

    def slow(body):
        time.sleep(delay)
        return answer(body)

    server.responder = slow
    out = tmp_path / "out"
    args = ["generate", "--teacher", "openai:fake-model", "--base-url", server.url, "--seeds", str(seeds)]
    args += ["--num", str(num), "-o", str(out), "--no-progress", "--concurrency", "2"]
    return [*args, "--set", "generate.stats_copies=2"], out


def _start_until_answered(args: list[str], out: Path, answers: int) -> subprocess.Popen:
    """The CLI in a subprocess, once `answers` answers are journaled. SIGINT is reset to its
    default in the child: a shell that runs the tests in the background ignores it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "alpacakit.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    journal = out / "responses.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists() and journal.read_bytes().count(b"\n") >= answers):
        time.sleep(0.02)
    return proc


def _assert_no_process_left(out: Path) -> None:
    """The processing worker (a fork: the same command line) sees the pipe close and exits, and
    its copies computing the statistics see their parent gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _processes_writing(out):
        time.sleep(0.05)
    assert not _processes_writing(out), "the processing worker or its copies outlived the run"


@pytest.mark.slow
def test_kill_minus_nine_then_resume_pays_for_nothing_twice(server, tmp_path):
    args, out = _interruptible_run(server, tmp_path, num=30, delay=0.15)
    journal = out / "responses.jsonl"
    proc = _start_until_answered(args, out, answers=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    answered_before = journal.read_bytes().count(b"\n")
    assert 4 <= answered_before < 15, "the run should have been killed mid-way"
    _assert_no_process_left(out)

    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    entries = [o for _, o in iter_jsonl(journal)]
    indices = [e["index"] for e in entries]
    assert len(indices) == len(set(indices)), "a request was journaled twice"
    # every request the server answered was journaled, except those in flight when killed (<= concurrency)
    assert len(server.requests) - len(entries) <= 2
    kept = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]
    assert len(kept) >= 30 and len(set(kept)) == len(kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["requests"] == len(entries)
    # the requests in flight at the kill were asked again, and the manifest counts them (<= concurrency)
    asked_again = manifest["counts"]["asked_again"]
    # (a note is written just before its request goes out: a kill in between counts one not sent)
    assert len(server.requests) - len(entries) <= asked_again <= 2


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_leaves_no_process_and_the_rerun_finishes(server, tmp_path):
    """Typer turns Ctrl-C into a silent exit 130; the CLI says what to do. The worker and its
    statistics copies go with the run, and the rerun finishes without duplicates."""
    args, out = _interruptible_run(server, tmp_path, num=40, delay=0.1)
    proc = _start_until_answered(args, out, answers=3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err.decode()
    _assert_no_process_left(out)
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    kept = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]
    assert len(kept) >= 40 and len(set(kept)) == len(kept)


def test_answer_mode_curates_refusals_duplicates_and_truncation(server, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "question,notes\nName a prime number.,a\nWhat colour is the sky?,b\n"
        'How do I pick a lock?,c\nName a prime number.,d\nWrite a long poem.,e\n"Translate ""cat"" to French",f\n'
    )
    answers = {
        "Name a prime number.": {"text": "7"},
        "What colour is the sky?": {"text": "Blue on a clear day."},
        "How do I pick a lock?": {"text": "I'm sorry, but I can't help with that."},
        "Write a long poem.": {"text": "Roses are red, violets", "finish_reason": "length"},
        'Translate "cat" to French': {"text": ""},
    }
    server.responder = lambda body: answers[body["messages"][-1]["content"]]
    cfg = load_config(None, None, {"teacher": {"model": "openai:fake-model", "base_url": server.url}})
    result = generate(cfg, tmp_path / "out", from_prompts=prompts, prompt_field="question", show_progress=False)
    assert result.status == "complete"
    kept = [o for _, o in iter_jsonl(tmp_path / "out" / "examples.jsonl")]
    assert sorted(k["instruction"] for k in kept) == ["Name a prime number.", "What colour is the sky?"]
    assert dict(result.totals.discards) == {"refusal": 1, "exact_duplicate": 1, "truncated": 1, "empty_output": 1}
    n = len(server.requests)
    generate(cfg, tmp_path / "out", from_prompts=prompts, prompt_field="question", show_progress=False)
    assert len(server.requests) == n  # every prompt was answered already


@pytest.mark.slow
def test_export_alpaca_and_hf(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    generate(config(server, seeds, num=4), tmp_path / "out", show_progress=False)
    examples = tmp_path / "out" / "examples.jsonl"
    r = run_cli("export", "alpaca", str(examples), "-o", str(tmp_path / "alpaca.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "alpaca.json").read_text())
    assert len(data) >= 4 and set(data[0]) == {"instruction", "input", "output"}
    r = run_cli("export", "hf", str(examples), "-o", str(tmp_path / "hf"), "--val-fraction", "0.25")
    assert r.returncode == 0, r.stderr
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(ds) == {"train", "validation"} and len(ds["train"]) + len(ds["validation"]) == len(data)


def test_every_request_shows_at_least_one_example_with_an_input():
    from alpacakit.generate.prompt import PromptBuilder
    from alpacakit.generate.seeds import load_seed_tasks

    builder = PromptBuilder(load_seed_tasks(), num_examples=3)
    seeds = {s.id: s for s in builder.seeds}
    for i in range(200):
        assert any(seeds[sid].input for sid in builder.build(i).seed_ids)


def test_a_share_of_requests_shows_only_examples_with_inputs_from_distinct_categories():
    from alpacakit.generate.prompt import PromptBuilder
    from alpacakit.generate.seeds import load_seed_tasks

    def all_input_share(fraction: float) -> float:
        builder = PromptBuilder(load_seed_tasks(), num_examples=3, input_requests=fraction)
        seeds = {s.id: s for s in builder.seeds}
        shown = [[seeds[sid] for sid in builder.build(i).seed_ids] for i in range(400)]
        full = [ex for ex in shown if all(s.input for s in ex)]
        assert all(len({s.category for s in ex}) == 3 for ex in full)
        return len(full) / len(shown)

    assert 0.5 <= all_input_share(0.5) < 0.65  # half by design, plus some by chance
    assert all_input_share(1.0) == 1.0
    assert all_input_share(0.0) < 0.15


class _OneAtATime:
    """A local-model-like teacher: one generation at a time behind a lock (as llama.cpp runs)."""

    def __init__(self, finish_in_flight: bool):
        self.finish_in_flight = finish_in_flight
        self.name = "local-fake"
        self.max_concurrency = 4
        self.started = 0
        self._lock = asyncio.Lock()

    async def complete(self, prompt, **kw):
        from alpacakit.models.backends.base import Completion, Usage

        async with self._lock:
            self.started += 1
            await asyncio.sleep(0.05)
            first = int(re.findall(r"(\d+)\. Instruction:", prompt)[-1])
            return Completion(
                text=tasks_text(first, 3, chat=False), finish_reason="stop", usage=Usage(10, 30), model=self.name
            )

    async def aclose(self):
        pass


@pytest.mark.parametrize("finish_in_flight, journaled", [(False, 1), (True, 3)])
def test_a_local_teacher_drops_queued_requests_once_the_target_is_reached(tmp_path, finish_in_flight, journaled):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    cfg = load_config(
        None,
        None,
        {
            "teacher": {"model": "smollm2-135m-instruct", "api": "completions"},
            # each request asks for 1 new task, so 3 go out for a target of 3 (each answer then writes 3)
            "generate": {"seeds": str(seeds), "request_batch": 4, "num": 3, "tasks_per_request": 4},
        },
    )
    teacher = _OneAtATime(finish_in_flight)
    result = generate(cfg, tmp_path / "out", show_progress=False, teacher=teacher)
    assert result.status == "complete" and result.totals.kept >= 3
    assert len(list(iter_jsonl(tmp_path / "out" / "responses.jsonl"))) == journaled
    # dropped: the queued requests (at most the next one got the lock before the result was read,
    # and was cancelled); kept waiting: every request ran
    assert teacher.started == 3 if finish_in_flight else teacher.started <= 2


def test_a_request_the_endpoint_refuses_for_good_is_a_discard_and_the_job_finishes(server, tmp_path):
    """Before, one 400 (a prompt over the context window, a content-policy refusal) stopped the
    job, and every resume asked the same request again: the job could never finish."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    server.script([{"status": 400, "message": "This model's maximum context length is 4096 tokens"}])
    out = tmp_path / "out"
    result = generate(config(server, seeds, num=6), out, show_progress=False)
    assert result.status == "complete"
    discards = [o for _, o in iter_jsonl(out / "discards.jsonl")]
    failed = [d for d in discards if d["reason"] == "request_failed"]
    assert len(failed) == 1 and failed[0]["status"] == 400 and "context length" in failed[0]["message"]
    journal = [o for _, o in iter_jsonl(out / "responses.jsonl")]
    assert sum(1 for e in journal if e.get("failed")) == 1
    # the end-of-run line names the error, so a setting every request trips over is seen at once
    assert "1 request failed for good: " in result.summary()
    assert "HTTP 400: This model's maximum context length is 4096 tokens" in result.summary()
    asked = len(server.requests)
    again = generate(config(server, seeds, num=6), out, show_progress=False)
    assert again.status == "complete" and len(server.requests) == asked


def test_the_teachers_max_concurrency_alone_sets_the_requests_in_flight(server, tmp_path):
    """`--set teacher.max_concurrency=8` used to give 6 in flight: generate.request_batch (6)
    capped it too. Unset, request_batch now follows the teacher."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = lambda body: {"sleep": 0.3, "text": responder(3)(body)}
    cfg = load_config(
        None,
        None,
        {
            "teacher": {"model": "openai:fake-model", "base_url": server.url, "max_concurrency": 8, "timeout_s": 10.0},
            "generate": {"seeds": str(seeds), "num": 40},
        },
    )
    assert cfg.generate.request_batch is None
    generate(cfg, tmp_path / "out", show_progress=False)
    assert server.max_in_flight == 8


def test_without_a_terminal_progress_is_a_few_lines_with_rate_and_eta(server, tmp_path, capsys):
    from alpacakit.generate.progress import GenerationProgress

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    GenerationProgress.log_every_s = 3600.0  # one line at the start, one at the target
    try:
        result = generate(config(server, seeds, num=30), tmp_path / "out", show_progress=True)
    finally:
        GenerationProgress.log_every_s = 10.0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[generate]")]
    assert result.totals.requests > 5 and len(lines) <= 3  # not one per response
    assert "eta" in lines[-1] and "kept/s" in lines[-1]
    # answers still arriving after the target do not print the target line again
    assert sum("kept 30/30" in line for line in lines) == 1, lines


def test_a_resume_takes_earlier_results_as_they_were_and_rebuilds_only_what_differs(server, tmp_path, monkeypatch):
    """Replaying a journal must not redo the search below the threshold for every kept
    instruction (minutes at 52K): earlier results that match the journal are taken as they are.
    An entry whose results were lost or edited is processed again, to the same records."""
    from alpacakit.curate import pool_stats

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    calls = itertools.count()

    def answer(body):
        first = int(re.findall(r"(\d+)\. Instruction:", body["messages"][-1]["content"])[-1])
        dup = SEEDS[0][0] if next(calls) % 2 else None  # every other answer repeats a seed: a near-duplicate
        return tasks_text(first, 3, duplicate=dup)

    server.responder = answer
    out = tmp_path / "out"
    cfg = config(server, seeds, num=20)
    assert generate(cfg, out, show_progress=False).status == "complete"
    examples, discards = (out / "examples.jsonl").read_bytes(), (out / "discards.jsonl").read_bytes()
    assert b"near_duplicate" in discards and examples.count(b"\n") >= 20

    searched = []
    real_stats = pool_stats.PoolStats.stats
    monkeypatch.setattr(pool_stats.PoolStats, "stats", lambda *a: searched.append(1) or real_stats(*a))
    assert generate(cfg, out, show_progress=False).status == "complete"
    assert searched == []  # nothing recomputed...
    assert (out / "examples.jsonl").read_bytes() == examples  # ...and nothing changed
    assert (out / "discards.jsonl").read_bytes() == discards

    lines = examples.decode().splitlines(keepends=True)
    (out / "examples.jsonl").write_text("".join(lines[:3] + lines[4:]))  # one kept example lost
    (out / "discards.jsonl").write_text("")  # and every discard
    assert generate(cfg, out, show_progress=False).status == "complete"
    assert 0 < len(searched) < len(lines)  # only the entries whose results differed
    assert (out / "examples.jsonl").read_bytes() == examples
    assert (out / "discards.jsonl").read_bytes() == discards


@pytest.mark.slow
def test_a_teacher_that_only_repeats_itself_stalls_the_job_instead_of_being_asked_forever(server, tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    same = tasks_text(4, 3)  # the same three tasks in every answer: kept once, then near-duplicates
    server.responder = lambda body: same
    out = tmp_path / "out"
    r = run_cli(
        "generate",
        "--teacher",
        "openai:fake-model",
        "--base-url",
        server.url,
        "--seeds",
        str(seeds),
        "--num",
        "50",
        "-o",
        str(out),
        "--no-progress",
        "--concurrency",
        "1",
        "--set",
        "generate.stall_requests=5",
    )
    assert r.returncode == 1 and "stalled: kept 3 examples" in r.stdout and "stall_requests" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stalled" and manifest["counts"]["requests"] == 6  # 1 useful + 5 barren


ZH_SEEDS = [
    ("为一家只卖面包的面包店起一个名字。", "", "每日面包"),
    ("把下面的温度从摄氏度换算成华氏度。", "20摄氏度", "68华氏度"),
    ("给出两个晚上睡得更好的建议。", "", "固定作息；睡前少看屏幕。"),
]


def test_self_instruct_in_another_language_asks_for_it_and_dedups_its_script(server, tmp_path):
    seeds = tmp_path / "zh_seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"z{i}",
                    "name": f"z{i}",
                    "instruction": ins,
                    "is_classification": False,
                    "instances": [{"input": inp, "output": out}],
                },
                ensure_ascii=False,
            )
            + "\n"
            for i, (ins, inp, out) in enumerate(ZH_SEEDS)
        ),
        encoding="utf-8",
    )
    answers = iter(
        [
            "4. Instruction: 解释彩虹是怎样形成的。\n4. Input:\n<noinput>\n4. Output:\n阳光在水滴中折射和反射。\n###\n"
            "5. Instruction: 给出两个晚上睡得更好的建议吧。\n5. Input:\n<noinput>\n5. Output:\n早睡早起。",
            "4. Instruction: 列出三种常见的水果。\n4. Input:\n<noinput>\n4. Output:\n苹果、香蕉、橙子。",
        ]
    )
    server.responder = lambda body: next(answers, "")
    cfg = config(
        server, seeds, num=2, language="Chinese", tokenizer="multilingual", num_prompt_instructions=2, request_batch=1
    )
    result = generate(cfg, tmp_path / "out", show_progress=False)
    assert result.status == "complete"
    assert "Write each instruction in Chinese" in server.requests[0].body["messages"][-1]["content"]
    kept = [o["instruction"] for _, o in iter_jsonl(tmp_path / "out" / "examples.jsonl")]
    assert kept == ["解释彩虹是怎样形成的。", "列出三种常见的水果。"]  # non-ASCII starts are kept...
    dropped = [o for _, o in iter_jsonl(tmp_path / "out" / "discards.jsonl")]
    assert [d["reason"] for d in dropped] == ["near_duplicate"]  # ...and a near-copy of a seed is caught
    nearest = list(dropped[0]["most_similar"].items())[0]
    assert nearest == ("给出两个晚上睡得更好的建议。", dropped[0]["max_similarity"]) and nearest[1] > 0.7


def test_failed_attempts_the_endpoint_may_have_billed_are_counted_at_their_worst_case(server, tmp_path):
    """A 200 we could not read (or a timeout on our side) may have been generated and billed:
    it is retried, and its worst case (prompt + max_tokens) is counted apart from confirmed cost
    and held against the budget. A 429 or 5xx is retried without such a charge."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.script([{"malformed": True}, {"status": 503}])
    server.responder = lambda body: {
        "text": tasks_text(4, 2),
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
    }
    cfg = config(server, seeds, num=2, request_batch=1)
    cfg.teacher.price.input_per_1m = 10.0
    cfg.teacher.price.output_per_1m = 30.0
    cfg.teacher.max_tokens = 300
    result = generate(cfg, tmp_path / "out", show_progress=False)
    assert result.status == "complete" and result.totals.requests == 1
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["attempts"] == 3 and counts["maybe_billed_attempts"] == 1  # the 503 is not counted
    assert counts["cost_usd"] == pytest.approx(1000 * 10e-6 + 200 * 30e-6)  # confirmed: the answer only
    assert counts["maybe_billed_usd"] > 300 * 30e-6  # worst case of the unreadable one: all of max_tokens


def _results(out: Path) -> tuple[bytes, bytes, dict]:
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    timing = {"teacher_seconds", "asked_again"}
    return (
        (out / "examples.jsonl").read_bytes(),
        (out / "discards.jsonl").read_bytes(),
        {k: v for k, v in counts.items() if k not in timing},
    )


@pytest.mark.parametrize(
    "fields",
    [{"num": 20}, {"num": 1000, "max_requests": 9}, {"num": 5}],
    ids=["target", "request_limit", "small_target"],
)
def test_processing_in_a_worker_gives_the_same_results_byte_for_byte(server, tmp_path, monkeypatch, fields):
    """The worker processes the journal in order with the replayed state, so its results are
    exactly in-process processing's; and it waits for the worker before any decision the
    pending answers could change (no request past the target or the stall limit)."""
    import alpacakit.curate.pool_stats as pool_stats
    from alpacakit.generate.self_instruct import SelfInstructProcessor

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    pids = tmp_path / "pids"
    real_compiled_from = pool_stats._COMPILED_FROM
    real_process = SelfInstructProcessor.process

    def process(self, entry):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # slower than an answer: decisions must wait for the worker, not race it
        return real_process(self, entry)

    monkeypatch.setattr(SelfInstructProcessor, "process", process)
    results = {}
    # here; in the worker; in the worker with two forked copies computing the statistics (stats_farm.py);
    # the same with the compiled search and decisions (pool_kernel.py, decide_kernel.py) from the first entry
    for in_worker, copies, compiled in ((False, 0, False), (True, 0, False), (True, 2, False), (True, 2, True)):
        monkeypatch.setattr(pool_stats, "_COMPILED_FROM", 0 if compiled else real_compiled_from)
        calls = itertools.count()

        def answer(body, calls=calls):  # by call order: the same script for both runs (one request at a time)
            first = int(re.findall(r"(\d+)\. Instruction:", body["messages"][-1]["content"])[-1])
            n = next(calls)
            text = "\n###\n".join(
                f"{first + k}. Instruction: {SEEDS[0][0] if n % 2 and k == 0 else f'Explain r{n}x{k} q{n}y{k} z{n}w{k}.'}"
                f"\n{first + k}. Input:\n<noinput>\n{first + k}. Output:\nAnswer {n}."
                for k in range(3)
            )
            return (
                text + "\n###\n9. Instruction: Describe the picture of a cat.\n9. Output:\nA cat."
                if n % 3 == 0
                else text
            )

        server.responder = answer
        pids.write_text("")
        out = tmp_path / f"out_{in_worker}_{copies}_{compiled}"
        cfg = config(server, seeds, request_batch=1, process_in_worker=in_worker, stats_copies=copies, **fields)
        result = generate(cfg, out, show_progress=False)
        assert result.totals.pending == 0 and result.totals.kept == (out / "examples.jsonl").read_bytes().count(b"\n")
        assert gc.get_freeze_count() == 0  # frozen for the fork (forking.py) only while the worker lived
        processed_in = set(pids.read_text().split())
        assert processed_in and (str(os.getpid()) not in processed_in) == in_worker
        results[in_worker, copies, compiled] = (result.status, *_results(out))
    assert results[True, 0, False] == results[False, 0, False] == results[True, 2, False] == results[True, 2, True]
    done = results[True, 2, True]
    assert b"near_duplicate" in done[2] and b"blacklisted_word" in done[2]
    assert b'"most_similar_instructions": {}' not in done[1]  # (the statistics are there)


def test_a_failure_in_a_statistics_copy_surfaces_and_a_rerun_finishes(server, tmp_path, monkeypatch):
    from alpacakit.curate.rouge import RougeDeduper
    from alpacakit.jobs.worker import WorkerError

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    real_describe = RougeDeduper.describe_compact

    def describe(self, instruction, hits, *, report):
        if report and len(self) > len(SEEDS) + 6:
            raise ZeroDivisionError("a copy's statistics")
        return real_describe(self, instruction, hits, report=report)

    monkeypatch.setattr(RougeDeduper, "describe_compact", describe)  # (copies are forks: they see it too)
    out = tmp_path / "out"
    cfg = config(server, seeds, num=30, stats_copies=2)
    with pytest.raises(WorkerError, match="(?s)statistics failed in a copy of the pool.*ZeroDivisionError"):
        generate(cfg, out, show_progress=False)
    assert (out / "responses.jsonl").read_bytes().count(b"\n") >= 3
    monkeypatch.setattr(RougeDeduper, "describe_compact", real_describe)
    result = generate(cfg, out, show_progress=False)
    kept = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]
    assert result.status == "complete" and len(kept) >= 30 and len(set(kept)) == len(kept)
    assert all(o["most_similar_instructions"] for _, o in iter_jsonl(out / "examples.jsonl"))


def test_a_failure_in_the_worker_surfaces_after_the_answers_are_journaled(server, tmp_path, monkeypatch):
    from alpacakit.generate.self_instruct import SelfInstructProcessor
    from alpacakit.jobs.worker import WorkerError

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    real_process, calls = SelfInstructProcessor.process, itertools.count()

    def process(self, entry):
        if next(calls) == 2:
            raise ZeroDivisionError("the third answer")
        return real_process(self, entry)

    monkeypatch.setattr(SelfInstructProcessor, "process", process)
    out = tmp_path / "out"
    with pytest.raises(WorkerError, match="(?s)in the worker process.*ZeroDivisionError: the third answer"):
        generate(config(server, seeds, num=30), out, show_progress=False)
    journal = [o for _, o in iter_jsonl(out / "responses.jsonl")]
    assert len(journal) >= 3 and len(server.requests) - len(journal) <= 2  # at most those in flight were lost
    monkeypatch.setattr(SelfInstructProcessor, "process", real_process)
    result = generate(config(server, seeds, num=30), out, show_progress=False)  # the rerun rebuilds and goes on
    assert result.status == "complete" and result.totals.kept >= 30
    kept = [o["instruction"] for _, o in iter_jsonl(out / "examples.jsonl")]
    assert len(kept) == result.totals.kept == len(set(kept))


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker", "in_process"])
def test_a_target_smaller_than_the_first_wave_is_not_overshot(server, tmp_path, in_worker):
    """`--num 5 --concurrency 8` with answers of 3 tasks: before any answer, each request in
    flight counts at the tasks it asks for, so the whole first wave is not sent (it was: 8
    requests, 24 examples, for a target of 5)."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    server.responder = responder(3)
    cfg = config(server, seeds, num=5, process_in_worker=in_worker)
    cfg.teacher.max_concurrency = 8
    cfg.generate.request_batch = 8
    result = generate(cfg, tmp_path / "out", show_progress=False)
    assert result.status == "complete"
    assert 5 <= result.totals.kept <= 5 + 3 and result.totals.requests <= 3, result.totals.as_dict()


def test_a_lagging_worker_with_a_poor_start_does_not_overshoot_by_more_than_one_request(server, tmp_path, monkeypatch):
    """The first answers keep nothing (empty), the rest keep 3 each, and the worker is slower
    than the answers: judged on that stale, poor start, the mean yield said far more requests
    were needed than were. Counting every answer to come at the best one so far keeps the
    overshoot within one request's tasks."""
    from alpacakit.generate.self_instruct import SelfInstructProcessor

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    real_process = SelfInstructProcessor.process

    def process(self, entry):
        time.sleep(0.03)  # the worker lags the answers
        return real_process(self, entry)

    monkeypatch.setattr(SelfInstructProcessor, "process", process)
    calls = itertools.count()

    def answer(body):
        time.sleep(0.01)
        first = int(re.findall(r"(\d+)\. Instruction:", body["messages"][-1]["content"])[-1])
        return "" if next(calls) < 6 else tasks_text(first, 3)

    server.responder = answer
    cfg = config(server, seeds, num=24)
    cfg.teacher.max_concurrency = 8
    cfg.generate.request_batch = 8
    cfg.generate.process_in_worker = True
    result = generate(cfg, tmp_path / "out", show_progress=False)
    assert result.status == "complete"
    assert 24 <= result.totals.kept <= 24 + 3, result.totals.as_dict()
