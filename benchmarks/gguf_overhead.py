"""alpacakit's overhead over llama-cpp-python on a GGUF: the same file, prompts and greedy decoding.

Three ways to answer the same chat requests, one after the other, side by side in one run:

- baseline: llama-cpp-python's own `Llama.create_chat_completion` (what a user would write);
- `chat` / `eval`: alpacakit's local teacher (`LlamaCppModel.chat`, the batched engine with
  one request in flight), which `alpacakit chat`, `eval generate`, `eval follow` and the judge use;
- `serve`: the same teacher behind `alpacakit serve` on 127.0.0.1, called over HTTP with the
  `openai` client (streamed, as the chat page and most clients do).

Printed: completion tokens/s of each and its ratio to the baseline (the goal is >= 0.9), and
whether the greedy answers are the same text.

    python benchmarks/gguf_overhead.py                      # smollm2-135m-instruct, 16 prompts, 64 tokens
    python benchmarks/gguf_overhead.py --model gemma-3-270m --threads 2 --max-tokens 96
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    from alpacakit.config import TeacherConfig
    from alpacakit.models import resolve_gguf
    from alpacakit.models.backends.llamacpp import LlamaCppModel, open_llama

    base = [line.strip() for line in (HERE / "data" / "serve_prompts.txt").read_text().splitlines() if line.strip()]
    prompts = [base[i % len(base)] for i in range(args.prompts)]
    path = resolve_gguf(args.model)
    print(
        f"model {args.model} ({path.name}), {len(prompts)} prompts, max_tokens {args.max_tokens}, "
        f"{args.threads} threads, greedy"
    )

    # baseline: llama-cpp-python directly
    llm = open_llama(path, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads)
    llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0)  # warm-up
    t0 = time.perf_counter()
    base_texts, base_tokens = [], 0
    for p in prompts:
        llm.reset()  # no cache reuse across prompts: each answers from scratch, like ours
        out = llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=args.max_tokens, temperature=0.0)
        base_texts.append(out["choices"][0]["message"]["content"])
        base_tokens += out["usage"]["completion_tokens"]
    base_s = time.perf_counter() - t0
    del llm

    cfg = TeacherConfig(
        model=args.model,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        temperature=0.0,
        max_tokens=args.max_tokens,
        max_concurrency=1,
        timeout_s=600,
    )
    teacher = LlamaCppModel(cfg)

    async def ours() -> tuple[float, list[str], int]:
        await teacher.chat([{"role": "user", "content": "Hi"}], max_tokens=4)  # warm-up
        t = time.perf_counter()
        texts, tokens = [], 0
        for p in prompts:
            c = await teacher.chat([{"role": "user", "content": p}], max_tokens=args.max_tokens, temperature=0.0)
            texts.append(c.text)
            tokens += c.usage.completion_tokens
        return time.perf_counter() - t, texts, tokens

    chat_s, chat_texts, chat_tokens = asyncio.run(ours())

    from openai import OpenAI

    from alpacakit.serve.app import create_app
    from alpacakit.serve.backend import ServeBackend
    from alpacakit.serve.config import ServeConfig
    from alpacakit.serve.server import BackgroundServer

    app = create_app(ServeBackend(teacher, "bench"), ServeConfig(max_concurrency=1, max_tokens_cap=4096), api_key="")
    with BackgroundServer(app) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused")
        t = time.perf_counter()
        serve_texts, serve_tokens = [], 0
        for p in prompts:
            stream = client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": p}],
                max_tokens=args.max_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = []
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    serve_tokens += chunk.usage.completion_tokens
            serve_texts.append("".join(parts))
        serve_s = time.perf_counter() - t
    asyncio.run(teacher.aclose())

    base_rate = base_tokens / base_s
    print(f"{'path':34} {'tokens':>6} {'seconds':>8} {'tok/s':>7} {'ratio':>6} same text")
    print(f"{'llama-cpp-python create_chat_completion':34} {base_tokens:6d} {base_s:8.2f} {base_rate:7.1f} {1:6.2f}")
    for name, s, texts, tokens in (
        ("alpacakit chat / eval (teacher)", chat_s, chat_texts, chat_tokens),
        ("alpacakit serve (HTTP, streamed)", serve_s, serve_texts, serve_tokens),
    ):
        same = sum(a.strip() == b.strip() for a, b in zip(texts, base_texts))
        print(f"{name:34} {tokens:6d} {s:8.2f} {tokens / s:7.1f} {tokens / s / base_rate:6.2f} {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
