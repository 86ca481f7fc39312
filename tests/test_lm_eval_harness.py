"""The real lm-evaluation-harness, on a task we ship (tests/data/lm_eval/: two task YAMLs over
capitals.jsonl; no hub), both ways round:

- lm-eval runs our model: `alpacakit eval bench --lm-eval-tasks ... --lm-eval-include DIR` on a
  tiny llama built from a config, and its accuracy must equal the one computed here straight
  from the model's logits;
- lm-eval's `local-completions` and `local-chat-completions` models talk to `alpacakit serve`
  (a real server on 127.0.0.1 running SmolLM2): every answer lm-eval scored must be the answer
  the server gives the same prompt, and the server must have served each request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

TASKS = Path(__file__).parent / "data" / "lm_eval"
ITEMS = [json.loads(line) for line in (TASKS / "capitals.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(TASKS)  # the task YAMLs name their data file relative to here


def _loglik(model: Any, tokenizer: Any, context: str, continuation: str) -> float:
    import torch

    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


@pytest.mark.slow
def test_lm_eval_runs_our_model_on_a_local_task_through_the_cli(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpacakit.train.tiny import make_tiny_base

    folder = make_tiny_base(tmp_path / "tiny-llama", arch="llama", seed=3)
    out = tmp_path / "bench-tiny.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "eval",
            "bench",
            "--model",
            str(folder),
            "--lm-eval-tasks",
            "alpacakit_capitals_mc",
            "--lm-eval-include",
            str(TASKS),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    entry = json.loads(out.read_text())["tasks"]["lm_eval:alpacakit_capitals_mc"]
    assert entry["source"] == "lm-evaluation-harness" and entry["n"] == len(ITEMS) and entry["metric"] == "acc"

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    right = 0
    for it in ITEMS:  # lm-eval's rule: the choice after a space with the highest summed log-likelihood
        context = f"Question: {it['question']}\nAnswer:"
        scores = [_loglik(model, tok, context, " " + c) for c in it["choices"]]
        right += scores.index(max(scores)) == it["answer"]
    assert entry["accuracy"] == pytest.approx(right / len(ITEMS))
    assert f"lm_eval:alpacakit_capitals_mc: acc {right / len(ITEMS):.3f}" in r.stdout


def test_an_include_path_that_is_not_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    from alpacakit.errors import ConfigError
    from alpacakit.evaluate.bench.lm_eval_bridge import run_lm_eval

    with pytest.raises(ConfigError, match="not a folder"):
        run_lm_eval(str(tmp_path), ["alpacakit_capitals_mc"], include_path=tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local-completions", "local-chat-completions"])
def test_lm_eval_server_models_talk_to_alpacakit_serve(smollm2_gguf: Path, kind: str) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from alpacakit.serve.config import ServeConfig
    from alpacakit.serve.server import BackgroundServer, build_app

    app, backend, _ = build_app(str(smollm2_gguf), ServeConfig(n_threads=2, max_concurrency=1), api_key="")
    chat = kind == "local-chat-completions"
    route = "/v1/chat/completions" if chat else "/v1/completions"
    try:
        with BackgroundServer(app) as srv:
            res = lm_eval.simple_evaluate(
                model=kind,
                model_args={
                    "model": "smollm2",
                    "base_url": srv.url + route,
                    "tokenizer_backend": None,
                    "tokenized_requests": False,
                },
                tasks=["alpacakit_capitals_gen"],
                task_manager=TaskManager(include_path=str(TASKS)),
                num_fewshot=0,
                log_samples=True,
                apply_chat_template=chat,
            )
            assert httpx.get(srv.url + "/health").json()["served"] == len(ITEMS)
            samples = res["samples"]["alpacakit_capitals_gen"]
            assert len(samples) == len(ITEMS)
            for s in samples:  # ask the server ourselves: the same answer lm-eval scored
                prompt = f"The capital of {s['doc']['country']} is"
                body: dict[str, Any] = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "stop": ["\n", "."]}
                if chat:
                    body["messages"] = [{"role": "user", "content": prompt}]
                else:
                    body["prompt"] = prompt
                got = httpx.post(srv.url + route, json=body, timeout=60).json()["choices"][0]
                assert s["resps"][0][0] == (got["message"]["content"] if chat else got["text"])
        score = res["results"]["alpacakit_capitals_gen"]["exact_match,strip"]
        expected = sum(s["exact_match"] for s in samples) / len(samples)
        assert score == pytest.approx(expected)
        if not chat:  # SmolLM2 completes "The capital of X is" correctly for most of these
            assert score >= 0.5
    finally:
        import asyncio

        asyncio.run(backend.aclose())
