"""The job engine alone (`alpacakit.jobs`): a tiny stage and an in-test teacher, no HTTP.

What the stages rely on: requests are numbered and a resume asks only for what is missing,
a refusal of one request is a recorded discard, the budget and hold-back are the engine's.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from alpacakit.jobs import JobOptions, JobStage, JournaledJob, Request, run_job
from alpacakit.models.backends.base import Completion, Usage
from alpacakit.models.backends.endpoint import EndpointError


class Teacher:
    """Answers "answer to pN"; `refuse` prompts get HTTP 400, and after `die_after` calls every
    call fails job-wide (HTTP 401: a run that stops there is as good as a crash)."""

    def __init__(self, refuse: tuple[str, ...] = (), die_after: int | None = None, delay: float = 0.0):
        self.asked: list[str] = []
        self.refuse, self.die_after, self.delay = refuse, die_after, delay
        self.now = self.most = 0  # requests being answered, and the most at once

    async def complete(self, prompt: str, **kw) -> Completion:
        self.asked.append(prompt)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay)
            if self.die_after is not None and len(self.asked) > self.die_after:
                raise EndpointError("invalid API key", status=401, attempts=1)
            if prompt in self.refuse:
                raise EndpointError("prompt is too long", status=400, attempts=1)
            return Completion(f"answer to {prompt}", "stop", Usage(5, 3), model="fake", cost=0.01, attempts=1)
        finally:
            self.now -= 1


class Echo:
    """The processor: one record per answer, keyed by request (so replay can restore nothing)."""

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]:
        return [{"request": entry["index"], "output": entry["text"]}], []


class Stage(JobStage):
    def __init__(self, n: int, target: int | None = None, hold: bool = False):
        self._indices = iter(range(n))
        self.target, self.hold = target, hold
        self.results: list[int] = []
        self.done: set[int] = set()  # the job's answered requests (filled by its replay)

    def next_index(self) -> int | None:
        return next((i for i in self._indices if i not in self.done), None)

    def make_request(self, index: int) -> Request:
        return Request(index=index, prompt=f"p{index}", api="completions")

    def estimate_cost(self, request: Request) -> float:
        return 0.01

    def on_result(self, entry: dict, kept, discards) -> None:
        self.results.append(entry["index"])

    def should_stop(self, totals) -> bool:
        return self.target is not None and totals.kept >= self.target

    def hold_back(self, totals, in_flight) -> bool:
        return self.hold


def run(out, teacher, stage, **options) -> tuple[str, JournaledJob]:
    """One run of the engine over `out`, as a stage runs it: replay, open, run, close, release."""
    job = JournaledJob(out, Echo(), stage.done)
    job.replay()
    job.open()
    try:
        return asyncio.run(run_job(job, teacher, stage, JobOptions(**{"concurrency": 2, **options}))), job
    finally:
        job.close()
        job.release()


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_numbered_requests_are_journaled_once_each_and_processed(tmp_path):
    teacher = Teacher()
    why, job = run(tmp_path, teacher, Stage(5))
    assert why == "exhausted"
    journal = lines(tmp_path / "responses.jsonl")
    assert sorted(e["index"] for e in journal) == [0, 1, 2, 3, 4]
    assert all(e["text"] == f"answer to p{e['index']}" for e in journal)
    assert [r["request"] for r in lines(tmp_path / "examples.jsonl")] == [e["index"] for e in journal]
    assert job.totals.requests == job.totals.kept == 5 and job.totals.cost_usd == pytest.approx(0.05)


def test_a_crash_resumes_without_asking_a_finished_request_again(tmp_path):
    crashed = Teacher(die_after=3)
    with pytest.raises(EndpointError):
        run(tmp_path / "job", crashed, Stage(6), concurrency=1)
    assert len(lines(tmp_path / "job" / "responses.jsonl")) == 3
    with open(tmp_path / "job" / "responses.jsonl", "ab") as f:
        f.write(b'{"index": 3, "text": "torn by kill -')  # a kill -9 in the middle of a line

    resumed = Teacher()
    why, job = run(tmp_path / "job", resumed, Stage(6), concurrency=1)
    assert why == "exhausted"
    assert resumed.asked == ["p3", "p4", "p5"]  # only what was missing
    assert job.totals.requests == 6 and job.totals.asked_again == 1  # p3 went out before the crash
    # the results are those of a run that was never interrupted
    run(tmp_path / "whole", Teacher(), Stage(6), concurrency=1)
    assert (tmp_path / "job" / "examples.jsonl").read_bytes() == (tmp_path / "whole" / "examples.jsonl").read_bytes()


def test_a_refused_request_becomes_a_recorded_discard_and_is_not_asked_again(tmp_path):
    why, job = run(tmp_path, Teacher(refuse=("p2",)), Stage(4))
    assert why == "exhausted" and job.totals.kept == 3
    (discard,) = lines(tmp_path / "discards.jsonl")
    assert discard == {"index": 2, "reason": "request_failed", "status": 400, "message": "prompt is too long"}
    again = Teacher()
    run(tmp_path, again, Stage(4))
    assert again.asked == []


def test_the_budget_stops_before_a_request_that_could_cross_it(tmp_path):
    teacher = Teacher()
    why, job = run(tmp_path, teacher, Stage(10), concurrency=1, max_cost=0.025)
    assert why == "budget"
    assert teacher.asked == ["p0", "p1"] and job.totals.cost_usd <= 0.025


def test_should_stop_and_hold_back(tmp_path):
    free = Teacher(delay=0.01)
    run(tmp_path / "free", free, Stage(8), concurrency=4)
    assert free.most == 4
    held = Teacher(delay=0.01)
    why, job = run(tmp_path / "held", held, Stage(8, target=3, hold=True), concurrency=4)
    assert held.most == 1  # nothing is added while a request is in flight
    assert why == "done" and job.totals.kept == 3 and held.asked == ["p0", "p1", "p2"]
