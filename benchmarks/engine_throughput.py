"""The batched llama.cpp engine vs one request at a time, on the same self-instruct requests.

    python benchmarks/engine_throughput.py [--model qwen2.5-coder-1.5b-instruct] [--requests 6]
        [--max-tokens 96] [--slots 4,6] [--flash-attn]

Baseline: llama-cpp-python's `Llama.create_completion`, one request after the other (how the
local teacher ran before the engine). Then `BatchEngine` with each slot count, all requests
submitted at once. Every run answers the same real self-instruct prompts (our seed tasks and
requirements, as `alpacakit generate` sends them) with the same sampling (temperature 1,
seeded), so prompt evaluation, prefix reuse and decoding are all in the measure. Printed per
run: wall seconds, completion tokens, completion tokens/s and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import time


def self_instruct_prompts(n: int) -> list[str]:
    from alpacakit.generate.prompt import PromptBuilder
    from alpacakit.generate.seeds import default_seeds_path, load_seed_tasks

    builder = PromptBuilder(load_seed_tasks(default_seeds_path()))
    return [builder.build(i).prompt for i in range(n)]


def baseline(llm, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    for i, p in enumerate(prompts):
        out = llm.create_completion(p, max_tokens=max_tokens, temperature=1.0, top_p=1.0, seed=i)
        tokens += out["usage"]["completion_tokens"]
    return time.perf_counter() - t0, tokens


def engine(
    llm, prompts: list[str], max_tokens: int, slots: int, threads: int, flash_attn: bool = False
) -> tuple[float, int, dict]:
    from alpacakit.models.backends.llama_engine import BatchEngine, Job, Sampling

    eng = BatchEngine(llm._model.model, n_slots=slots, n_ctx_per_slot=2048, n_threads=threads, flash_attn=flash_attn)
    try:
        t0 = time.perf_counter()
        futures = [
            eng.submit(
                Job(
                    tokens=llm.tokenize(p.encode(), add_bos=True, special=True),
                    max_tokens=max_tokens,
                    sampling=Sampling(temperature=1.0, top_p=1.0, seed=i),
                )
            )
            for i, p in enumerate(prompts)
        ]
        tokens = sum(f.result().completion_tokens for f in futures)
        return time.perf_counter() - t0, tokens, eng.stats.as_dict()
    finally:
        eng.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--slots", default="4,6")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--flash-attn",
        action="store_true",
        help="also run each slot count with llama.cpp's flash attention (the engine keeps it off)",
    )
    args = ap.parse_args()
    from alpacakit.models import resolve_gguf
    from alpacakit.models.backends.llamacpp import default_threads, open_llama

    threads = args.threads or default_threads()
    llm = open_llama(resolve_gguf(args.model), n_ctx=2048, n_threads=threads)
    prompts = self_instruct_prompts(args.requests)
    try:
        print(
            f"{args.model}: {args.requests} self-instruct requests, {args.max_tokens} tokens each at most, "
            f"{threads} threads"
        )
        wall, toks = baseline(llm, prompts, args.max_tokens)
        base_rate = toks / wall
        print(f"one at a time (Llama.create_completion): {wall:7.1f} s  {toks:5d} tokens  {base_rate:6.2f} tokens/s")
        for n in (int(x) for x in args.slots.split(",")):
            rates = {}
            for fa in (False, True) if args.flash_attn else (False,):
                wall, toks, stats = engine(llm, prompts, args.max_tokens, n, threads, flash_attn=fa)
                rate = rates[fa] = toks / wall
                label = f"engine, {n} slots{', flash attention' if fa else ''}:"
                vs_off = f" ({rate / rates[False]:.2f}x the same engine without it)" if fa else ""
                print(
                    f"{label:42s}{wall:7.1f} s  {toks:5d} tokens  {rate:6.2f} tokens/s"
                    f"  ratio {rate / base_rate:.2f}x{vs_off}  (prompt tokens evaluated {stats['prompt_tokens']}, "
                    f"reused from cache {stats['reused_tokens']})"
                )
    finally:
        llm.close()


if __name__ == "__main__":
    main()
