"""The GPU check's child parts (benchmarks/gpu_train_check.py, gpu_serve_check.py) without a GPU.

No GPU here, so the tests run what CI can: the whole training script on CPU (`--cpu-smoke`: a
tiny Qwen2 built from a config, 2 steps, our real CLI and TRL's SFTTrainer, save, reload,
generate), the refusal without a GPU, and part 6 (eval generate and serve per backend) through
`gpu_check.py --parts 6 --allow-cpu` on the CPU backends. The figures only mean something on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_train_check.py"
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_without_gpu_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    if _cuda():
        pytest.skip("a GPU is here: the script would run the real check")
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no CUDA GPU" in r.stdout and "--cpu-smoke" in r.stdout
    assert not (tmp_path / "out").exists()  # refused before writing anything


@pytest.mark.slow
def test_cpu_smoke_runs_every_method(tmp_path: Path) -> None:
    from alpacakit.generate.seeds import load_seed_tasks

    data = tmp_path / "data.json"
    recs = [{"instruction": t.instruction, "input": t.input, "output": t.output} for t in load_seed_tasks()[:40]]
    data.write_text(json.dumps(recs), encoding="utf-8")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_train_check.json").read_text(encoding="utf-8"))
    assert report["steps"] == 2 and report["device"] == "CPU (smoke)"
    methods = report["methods"]
    assert set(methods) == {"full", "lora", "qlora"}
    assert methods["qlora"] == {"skipped": "skipped: needs CUDA (bitsandbytes 4-bit)"}
    for m in ("full", "lora"):
        ours, trl = methods[m]["ours"], methods[m]["trl"]
        assert ours["status"] == "ok" and trl["status"] == "ok"
        assert ours["supervised_tokens_per_s"] > 0 and trl["supervised_tokens_per_s"] > 0
        assert ours["steps"] == 2 and trl["steps"] == 2
        assert ours["peak_cuda_memory_bytes"] is None  # CPU: nothing to report, not a made-up figure
        assert ours["generate"]["new_tokens"] > 0  # saved, reloaded in a fresh process, generated
        assert methods[m]["verdict"]["speed_ratio"] > 0
    table = (out / "gpu_train_check.md").read_text(encoding="utf-8")
    assert table in r.stdout
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert {"full", "lora", "qlora"} <= rows
    assert "skipped: needs CUDA" in table


@pytest.mark.slow
def test_part_6_runs_eval_generate_and_serve_on_every_backend_or_says_why_not(smollm2_gguf, tmp_path: Path) -> None:
    if _cuda():
        pytest.skip("a GPU is here: --allow-cpu would still measure the GPU backends")
    out = tmp_path / "out"
    cmd = [sys.executable, str(GPU_CHECK), "--allow-cpu", "--parts", "6", "--instructions", "2", "--max-tokens", "8"]
    cmd += ["--serve-args", "--requests 2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "model folder," not in r.stdout and "training check" not in r.stdout  # only part 6 ran
    report = json.loads((out / "gpu_serve_check.json").read_text(encoding="utf-8"))
    rows = {row["backend"].split(" ")[0]: row for row in report["rows"]}
    assert set(rows) == {"transformers", "llama.cpp", "vllm"}
    for name, row in rows.items():
        if row.get("skipped"):
            assert name == "vllm" and ("pip install" in row["skipped"] or "CPU smoke" in row["skipped"])
            continue
        gen, serve = row["eval_generate"], row["serve"]
        assert gen["answers"] == 2 and gen["completion_tokens"] > 0 and gen["tokens_per_s"] > 0
        for clients in ("1", "4"):
            assert serve[clients]["requests"] == 2 * int(clients)
            assert serve[clients]["tokens_per_s"] > 0 and serve[clients]["p50_latency_s"] > 0
        assert serve["stopped_cleanly"], serve["server_exit"]  # shut down on Ctrl-C, not killed
    assert "skipped" not in rows["transformers"] and "skipped" not in rows["llama.cpp"]
    table = (out / "gpu_serve_check.md").read_text(encoding="utf-8")
    assert table in r.stdout and "serve 4 clients tok/s" in table
