"""Self-instruct generation against a real local teacher: SmolLM2-135M-Instruct in llama.cpp.

SmolLM2 is small and often off-format, which is the point: the parser, filters and journal
must cope with what a real model writes, and every task it wrote must be accounted for.
"""

from __future__ import annotations

import json
import subprocess
import sys

from alpacakit.io import iter_jsonl


def test_generate_with_real_llamacpp_teacher(smollm2_gguf, tmp_path):
    out = tmp_path / "data"
    r = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "generate", "--teacher", "smollm2-135m-instruct", "--num", "2",
         "-o", str(out), "--no-progress", "--max-tokens", "160", "--set", "generate.max_requests=2",
         "--set", "teacher.seed=1", "--set", "teacher.n_ctx=2048"],
        capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr  # 1: the request limit came before 2 kept examples
    manifest = json.loads((out / "manifest.json").read_text())
    journal = [o for _, o in iter_jsonl(out / "responses.jsonl")]
    kept = [o for _, o in iter_jsonl(out / "examples.jsonl")]
    discards = [o for _, o in iter_jsonl(out / "discards.jsonl")]
    assert len(journal) == manifest["counts"]["requests"] == 2
    assert all(e["api"] == "completions" and e["usage"]["completion_tokens"] > 0 for e in journal)
    assert manifest["counts"]["kept"] == len(kept)
    assert manifest["counts"]["discarded"] == len(discards)
    assert manifest["teacher"]["sha256"] and manifest["counts"]["cost_usd"] == 0
    assert manifest["status"] in ("complete", "request_limit")
    for k in kept:
        assert k["instruction"] and k["output"] and k["teacher"] == "smollm2-135m-instruct"
