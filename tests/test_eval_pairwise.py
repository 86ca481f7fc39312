"""Pairwise judging against a scripted judge behind the loopback OpenAI-compatible server.

The judge's replies are decided by a responder that reads the real prompt the judge received:
which answer was shown as A and which as B. Every request the judge is paid for is counted on
the server side.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alpacakit.config import AlpacakitConfig, Price
from alpacakit.errors import DataError, TeacherError
from alpacakit.evaluate.judges import load_judge
from alpacakit.evaluate.pairwise import judge_pairwise, pair_outputs

N = 6


def _outputs(path: Path, generator: str, n: int = N, tag: str | None = None) -> Path:
    tag = tag or generator.upper()
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": f"Question number {i}: what is {i} + {i}?",
                    "output": f"{tag}-ANSWER-{i}: " + "x" * (10 + i),
                    "generator": generator,
                    "dataset": "test",
                }
                for i in range(n)
            ]
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return _outputs(tmp_path / "outputs-student.json", "student"), _outputs(
        tmp_path / "outputs-teacher.json", "teacher"
    )


@pytest.fixture
def config(fake_teacher_config):
    """AlpacakitConfig whose judge is the fake endpoint (key from the test env var, fast retries)."""
    t = fake_teacher_config()
    cfg = AlpacakitConfig()
    j = cfg.eval.judge
    j.model, j.base_url, j.api_key_env = t.model, t.base_url, t.api_key_env
    j.max_retries, j.timeout_s, j.max_concurrency = 3, 10.0, 2
    return cfg


def _shown(body: dict) -> tuple[str, str, int]:
    """(who is A, who is B, question number) from the judge prompt."""
    user = body["messages"][-1]["content"]
    a = re.search(r"\[Answer A\]\n(\w+)-ANSWER-(\d+)", user)
    b = re.search(r"\[Answer B\]\n(\w+)-ANSWER-(\d+)", user)
    return a.group(1), b.group(1), int(a.group(2))


def prefers(winner: str):
    def respond(body: dict) -> str:
        a, b, _ = _shown(body)
        return "Verdict: A" if a == winner else "Verdict: B"

    return respond


def test_a_judge_that_prefers_the_model_in_both_orders_gives_a_full_win_rate(fake_openai, files, config):
    fake_openai.responder = prefers("STUDENT")
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.status == "complete"
    assert res.metrics["win_rate"] == 100.0
    assert res.metrics["n_wins"] == N and res.metrics["n_total"] == N
    assert res.position_bias["orders_agree"] == 1.0
    assert len(fake_openai.requests) == 2 * N  # both orders of every pair
    orders = Counter_of(fake_openai.requests)
    assert orders == {("STUDENT", "TEACHER"): N, ("TEACHER", "STUDENT"): N}
    saved = json.loads(res.out_path.read_text())
    assert res.out_path.name == "pairwise-student-vs-teacher.json"
    ann = saved["annotations"][0]
    assert ann["generator_2"] == "student" and ann["generator_1"] == "teacher"
    assert ann["output_2"].startswith("STUDENT") and ann["preference"] == 2.0


def Counter_of(requests) -> dict:
    out: dict = {}
    for r in requests:
        a, b, _ = _shown(r.body)
        out[(a, b)] = out.get((a, b), 0) + 1
    return out


def test_both_orders_cancel_a_judge_that_always_picks_the_first_answer(fake_openai, files, config):
    fake_openai.responder = lambda body: "Verdict: A"
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.metrics["win_rate"] == 50.0
    assert res.metrics["n_draws"] == N  # each pair: one win, one loss -> 1.5
    assert res.position_bias["first_shown_won"] == 1.0
    assert res.position_bias["orders_agree"] == 0.0


def test_ties_count_half(fake_openai, files, config):
    def respond(body):
        a, b, i = _shown(body)
        if i % 2:
            return "Verdict: tie"
        return "Verdict: A" if a == "STUDENT" else "Verdict: B"

    fake_openai.responder = respond
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.metrics["n_draws"] == N // 2 and res.metrics["n_wins"] == N // 2
    assert res.metrics["win_rate"] == 75.0


def test_malformed_judge_output_is_dropped_not_guessed(fake_openai, files, config):
    def respond(body):
        a, b, i = _shown(body)
        if i == 0:
            return "Both answers have merit and I would rather not choose."  # both orders unreadable
        if i == 1 and a == "TEACHER":
            return "Hmm."  # one order unreadable: the other one decides
        return "**Verdict: A**" if a == "STUDENT" else "B"

    fake_openai.responder = respond
    fake_openai.script([{"malformed": True}])  # a broken HTTP body is retried by the client, not parsed
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.metrics["n_unparsed_judgments"] == 3
    assert res.metrics["n_total"] == N - 1  # instruction 0 has no usable judgment
    assert res.metrics["win_rate"] == 100.0
    saved = json.loads(res.out_path.read_text())
    assert saved["annotations"][0]["preference"] is None
    assert saved["annotations"][1]["preference"] == 2.0
    unparsed = (res.out_path.with_name(res.out_path.stem + ".work") / "discards.jsonl").read_text().splitlines()
    assert len(unparsed) == 3 and all(json.loads(u)["reason"] == "unparsed" for u in unparsed)


def test_a_crash_and_reruns_pay_for_no_judgment_twice(fake_openai, files, config):
    config.eval.judge.max_concurrency = 1
    config.eval.judge.price = Price(input_per_1m=1000.0, output_per_1m=2000.0)
    fake_openai.responder = prefers("STUDENT")
    # The 5th request fails in a way every request would (401: the key was revoked): the run stops.
    fake_openai.script(
        [
            {"text": "Verdict: A"},
            {"text": "Verdict: B"},
            {"text": "Verdict: A"},
            {"text": "Verdict: B"},
            {"status": 401, "message": "key revoked"},
        ]
    )
    with pytest.raises(TeacherError):
        judge_pairwise(*files, config, show_progress=False)
    assert len(fake_openai.requests) == 5
    fake_openai.reset()
    fake_openai.responder = prefers("STUDENT")
    res = judge_pairwise(*files, config, show_progress=False)
    assert len(fake_openai.requests) == 2 * N - 4  # only what was not paid for
    assert res.cost["cached_at_start"] == 4 and res.cost["paid_this_run"]["requests"] == 2 * N - 4
    first_cost = res.cost["cost_usd"]
    assert first_cost > 0
    fake_openai.reset()
    again = judge_pairwise(*files, config, show_progress=False)
    assert fake_openai.requests == []
    assert again.cost["paid_this_run"] == {"requests": 0, "cost_usd": 0.0}
    assert again.cost["cost_usd"] == first_cost
    assert again.metrics == res.metrics


def test_a_longer_eval_set_reuses_the_judgments_already_made(fake_openai, tmp_path, config):
    fake_openai.responder = prefers("STUDENT")
    small = (_outputs(tmp_path / "s3.json", "student", 3), _outputs(tmp_path / "t3.json", "teacher", 3))
    out = tmp_path / "cmp.json"
    judge_pairwise(*small, config, out=out, show_progress=False)
    assert len(fake_openai.requests) == 6
    fake_openai.reset()
    fake_openai.responder = prefers("STUDENT")
    big = (_outputs(tmp_path / "s6.json", "student", 6), _outputs(tmp_path / "t6.json", "teacher", 6))
    res = judge_pairwise(*big, config, out=out, show_progress=False)
    assert len(fake_openai.requests) == 6  # three new pairs, two orders each
    assert res.metrics["n_total"] == 6


def test_random_order_judges_once_per_instruction_with_a_seeded_order(fake_openai, tmp_path, config):
    fake_openai.responder = lambda body: "Verdict: A"
    files = (_outputs(tmp_path / "s.json", "student", 40), _outputs(tmp_path / "t.json", "teacher", 40))
    config.eval.judge.order = "random"
    res = judge_pairwise(*files, config, out=tmp_path / "r0.json", show_progress=False)
    assert len(fake_openai.requests) == 40
    seen = Counter_of(fake_openai.requests)
    assert 8 <= seen.get(("STUDENT", "TEACHER"), 0) <= 32  # both orders drawn
    # An always-first judge then wins exactly the instructions where the model was shown first.
    assert res.metrics["win_rate"] == pytest.approx(100 * seen[("STUDENT", "TEACHER")] / 40)
    fake_openai.reset()
    fake_openai.responder = lambda body: "Verdict: A"
    judge_pairwise(*files, config, out=tmp_path / "r0.json", show_progress=False)
    assert fake_openai.requests == []  # same seed, same orders: all cached
    config.eval.judge.seed = 1
    judge_pairwise(*files, config, out=tmp_path / "r0.json", show_progress=False)
    assert 0 < len(fake_openai.requests) < 40  # another seed flips some orders, keeps others


def test_the_judge_sees_our_prompt_with_both_answers_and_decodes_from_the_judge_folder(fake_openai, files, config):
    fake_openai.responder = prefers("TEACHER")
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.metrics["win_rate"] == 0.0
    body = fake_openai.requests[0].body
    judge = load_judge("alpacakit_verdict")
    assert body["messages"][0] == {"role": "system", "content": judge.system}
    assert "Question number" in body["messages"][1]["content"]
    assert body["temperature"] == 0.0 and body["max_tokens"] == judge.decoding["max_tokens"]


def test_outputs_are_paired_by_instruction_text_not_position():
    model = [
        {"instruction": "b", "output": "mb"},
        {"instruction": "a", "output": "ma"},
        {"instruction": "c", "output": "mc"},
    ]
    base = [
        {"instruction": "a", "output": "ba"},
        {"instruction": "b", "output": "bb"},
        {"instruction": "d", "output": "bd"},
    ]
    pairs, only_model, only_base = pair_outputs(model, base)
    assert [(m["output"], b["output"]) for m, b in pairs] == [("mb", "bb"), ("ma", "ba")]
    assert only_model == ["c"] and only_base == ["d"]


def test_files_with_no_common_instruction_are_refused(tmp_path, config):
    a = _outputs(tmp_path / "a.json", "a", 2)
    b = tmp_path / "b.json"
    b.write_text(json.dumps([{"instruction": "other", "output": "x"}]))
    with pytest.raises(DataError, match="share no instruction"):
        judge_pairwise(a, b, config, show_progress=False)


def test_a_budget_stops_judging_cleanly_and_a_larger_one_finishes_the_rest(fake_openai, files, config):
    config.eval.judge.max_concurrency = 1
    config.eval.judge.price = Price(input_per_1m=1000.0, output_per_1m=0.0)  # tenths of a dollar per judgment
    config.eval.judge.max_cost = 1.0
    fake_openai.responder = prefers("STUDENT")
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.status == "stopped_at_budget"
    paid = len(fake_openai.requests)
    assert 0 < paid < 2 * N
    assert 0 < res.cost["cost_usd"] <= 1.0  # never more than the budget
    assert res.metrics["n_missing_judgments"] == 2 * N - paid
    fake_openai.reset()
    fake_openai.responder = prefers("STUDENT")
    config.eval.judge.max_cost = 100.0
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.status == "complete" and len(fake_openai.requests) == 2 * N - paid


def test_a_judgment_the_endpoint_refuses_for_good_is_recorded_and_the_run_goes_on(fake_openai, files, config):
    """A 400 (here: context too long) condemns that one request, not the run: it is journaled as a
    request_failed discard, the other judgments complete, and a rerun does not ask it again."""
    config.eval.judge.max_concurrency = 1
    fake_openai.responder = prefers("STUDENT")
    fake_openai.script([{"text": "Verdict: A"}, {"status": 400, "message": "context too long"}])
    res = judge_pairwise(*files, config, show_progress=False)
    assert res.status == "complete" and len(fake_openai.requests) == 2 * N
    assert res.metrics["n_total"] == N  # the pair that lost one order is still judged in the other
    fake_openai.reset()
    judge_pairwise(*files, config, show_progress=False)
    assert fake_openai.requests == []
