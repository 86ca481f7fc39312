"""The GPU check (`make gpu-check`): what only a GPU can show, in one short run.

1. What this machine has: torch's CUDA devices, and whether the installed llama.cpp build can
   offload layers (the Makefile's wheel is CPU-only; a CUDA wheel needs CMAKE_ARGS=-DGGML_CUDA=on).
2. A model folder in transformers on the GPU (bf16) vs the CPU (fp32): the same 48 held-out
   instructions, greedy, batched (`HFModel`, max_concurrency 8): completion tokens/s side by
   side, and how many answers are the same text (bf16 and fp32 round differently: most, not all).
3. Log-likelihood scoring on the GPU vs the CPU (`eval bench`'s multiple choice, 20 items):
   the same predictions expected, the largest difference in summed log-probability printed.
4. llama.cpp with every layer offloaded vs none (when the build can offload): tokens/s.
5. Training (benchmarks/gpu_train_check.py, in its own process): full fine-tuning under FSDP on
   every GPU, LoRA and QLoRA through `alpacakit train`, saved, reloaded and generating; tokens/s
   and peak GPU memory per method against TRL's best GPU path. `--train-args "..."` passes flags
   to it (e.g. "--steps 4 --methods lora"), `--skip-train` leaves it out.
6. Eval generate and serve on each GPU backend (benchmarks/gpu_serve_check.py, in its own
   process so vLLM finds the GPU's memory free): `alpacakit eval generate` and `alpacakit serve`
   through the real CLI on the same converted model in transformers (bf16), llama.cpp (every
   layer offloaded) and `vllm:FOLDER`; tokens/s of eval generate, of 1 and 4 serve clients, and
   p50 latency in one table. `--serve-args "..."` passes flags to it (e.g. "--requests 4").

`--parts 2,6` runs only those parts (part 1, what the machine has, always runs: it is a second
and the others depend on it). The children write OUT/gpu_train_check.* and OUT/gpu_serve_check.*
(`--out`, default runs/gpu-check).

Exit status 0 when every part that could run ran; 1 when a child part failed; 2 when there is no
GPU (unless --allow-cpu, which runs the same code on the CPU twice, as a smoke test of the
script itself).

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --allow-cpu --instructions 8 --items 4
    python benchmarks/gpu_check.py --allow-cpu --parts 6 --instructions 2 --max-tokens 8 --serve-args "--requests 2"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = (1, 2, 3, 4, 5, 6)


def parse_parts(text: str) -> set[int]:
    """`--parts 2,6` -> {1, 2, 6}: part 1 (device and wheel facts) is what the others stand on."""
    try:
        parts = {int(p) for p in text.replace(" ", "").split(",") if p}
    except ValueError:
        raise SystemExit(f"--parts: expected numbers like 2,6, got {text!r}") from None
    bad = sorted(parts - set(PARTS))
    if bad:
        raise SystemExit(f"--parts: no part {bad}; the parts are {', '.join(map(str, PARTS))}")
    return parts | {1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--instructions", type=int, default=48)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--allow-cpu", action="store_true")
    ap.add_argument("--skip-train", action="store_true", help="leave out part 5 (training)")
    ap.add_argument("--train-args", default="", help="flags for benchmarks/gpu_train_check.py (one string)")
    ap.add_argument("--serve-args", default="", help="flags for benchmarks/gpu_serve_check.py (one string)")
    ap.add_argument("--parts", default=",".join(map(str, PARTS)), help="comma-separated parts to run, e.g. 6")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"), help="where parts 5 and 6 write reports")
    args = ap.parse_args()
    parts = parse_parts(args.parts)
    if args.skip_train:
        parts.discard(5)

    import torch

    from alpacakit.config import TeacherConfig
    from alpacakit.evaluate.evalsets import load_eval_set
    from alpacakit.models import file_sha256, resolve_gguf
    from alpacakit.models.backends.hf import HFModel
    from alpacakit.train.base_model import gguf_to_hf

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}: CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
        print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload {'yes' if offload else 'no (CPU build)'}")
    except ImportError:
        offload = False
        print("llama-cpp-python: not installed")
    if not cuda and not args.allow_cpu:
        print("no GPU here: nothing to check (--allow-cpu runs the script on the CPU as a smoke test)")
        return 2
    gpu = "cuda" if cuda else "cpu"

    if parts & {2, 3}:
        gguf = resolve_gguf(args.model)
        folder = gguf_to_hf(gguf, file_sha256(gguf))
    items = load_eval_set("alpacakit", limit=args.instructions)
    messages = [[{"role": "user", "content": it.instruction + (f"\n\n{it.input}" if it.input else "")}] for it in items]

    async def answer(t: HFModel) -> tuple[float, list[str], int]:
        await t.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(t.chat(m, max_tokens=args.max_tokens, temperature=0.0) for m in messages))
        return time.perf_counter() - t0, [o.text for o in outs], sum(o.usage.completion_tokens for o in outs)

    if 2 in parts:
        results = {}
        for device in ("cpu", gpu):
            t = HFModel(
                folder,
                TeacherConfig(model=str(folder), temperature=0.0, max_tokens=args.max_tokens, max_concurrency=8),
                device=device,
            )
            results[device] = asyncio.run(answer(t)) + (str(t.model.dtype),)
            del t
        (cs, ct, cn, cd), (gs, gt, gn, gd) = results["cpu"], results[gpu]
        print(
            f"model folder, {len(messages)} instructions, 8 batched: cpu ({cd}) {cn / cs:.1f} tok/s; "
            f"{gpu} ({gd}) {gn / gs:.1f} tok/s (x{(gn / gs) / (cn / cs):.2f}); same text {sum(a == b for a, b in zip(ct, gt))}/{len(ct)}"
        )

    if 3 in parts:
        from alpacakit.evaluate.bench.backends import HFBackend
        from alpacakit.evaluate.bench.runner import plan_prompts, score_mc
        from alpacakit.evaluate.bench.tasks import load_task, select

        mc = select(load_task("facts_mc"), args.items)
        scored = {}
        for device in ("cpu", gpu):
            os.environ["ALPACAKIT_DEVICE"] = device
            b = HFBackend(folder)
            plan = plan_prompts(b)
            t0 = time.perf_counter()
            scored[device] = ([score_mc(b, plan, it) for it in mc], time.perf_counter() - t0)
            b.close()
        os.environ.pop("ALPACAKIT_DEVICE", None)
        (c_rows, c_s), (g_rows, g_s) = scored["cpu"], scored[gpu]
        same = sum(a["pred_norm"] == b["pred_norm"] for a, b in zip(c_rows, g_rows))
        gap = max(abs(x - y) for a, b in zip(c_rows, g_rows) for x, y in zip(a["loglik"], b["loglik"]))
        print(
            f"log-likelihood, {len(mc)} multiple-choice items: same prediction {same}/{len(mc)}, largest "
            f"|delta log p| {gap:.3f}; cpu {c_s:.1f} s, {gpu} {g_s:.1f} s"
        )

    if 4 in parts and offload:
        from alpacakit.models.backends.llamacpp import LlamaCppModel

        rates = {}
        for layers in ("0", "-1"):
            os.environ["ALPACAKIT_N_GPU_LAYERS"] = layers
            g = LlamaCppModel(
                TeacherConfig(
                    model=args.model, temperature=0.0, max_tokens=args.max_tokens, max_concurrency=8, timeout_s=600
                )
            )
            s, _, n = asyncio.run(answer(g))  # type: ignore[arg-type]
            rates[layers] = n / s
            asyncio.run(g.aclose())
        os.environ.pop("ALPACAKIT_N_GPU_LAYERS", None)
        print(
            f"GGUF, llama.cpp engine, 8 slots: no offload {rates['0']:.1f} tok/s; all layers "
            f"{rates['-1']:.1f} tok/s (x{rates['-1'] / rates['0']:.2f})"
        )
    elif 4 in parts:
        print("GGUF offload: skipped (this llama.cpp build cannot offload; see the Makefile's LLAMA_CMAKE_ARGS)")

    # Parts 5 and 6 run in processes of their own: each starts with the GPU's memory free.
    status = 0
    if 5 in parts:
        train = [
            sys.executable,
            str(Path(__file__).with_name("gpu_train_check.py")),
            "--out",
            args.out,
            *shlex.split(args.train_args),  # after --out: a --out of its own wins
        ]
        if not cuda:
            train.append("--cpu-smoke")
        print("training check: " + " ".join(train[1:]), flush=True)
        status = subprocess.call(train)
    if 6 in parts:
        serve = [
            sys.executable,
            str(Path(__file__).with_name("gpu_serve_check.py")),
            "--model",
            args.model,
            "--instructions",
            str(args.instructions),
            "--max-tokens",
            str(args.max_tokens),
            "--out",
            args.out,
            *(["--allow-cpu"] if not cuda else []),
            *shlex.split(args.serve_args),
        ]
        print("eval generate and serve check: " + " ".join(serve[1:]), flush=True)
        status = status or subprocess.call(serve)
    return status


if __name__ == "__main__":
    sys.exit(main())
