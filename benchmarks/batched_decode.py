"""Decoding several sequences per forward pass in llama.cpp vs one: the headroom for a batched
local teacher (not built yet; generation decodes one request at a time).

    python benchmarks/batched_decode.py [--model qwen2.5-coder-1.5b-instruct] [--seqs 1,2,4,8] [--steps 48]

On a CPU, decoding one token reads every weight once: it is bound by memory bandwidth, so the
same read can serve several sequences' tokens. For each count N, this decodes N prompts in one
`llama_decode` and then N greedy tokens per step (one KV sequence each, a unified KV cache),
and prints the total tokens/s and the ratio to N = 1 measured in the same run.
"""

from __future__ import annotations

import argparse
import time


def run(model_path: str, n_seq: int, steps: int, threads: int) -> float:
    import llama_cpp
    import numpy as np

    from alpacakit.models.backends.llamacpp import open_llama

    llm = open_llama(model_path, n_ctx=512, n_threads=threads)  # owns the model; we make our own context
    model = llm._model.model
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 4096, 512, 512
    params.n_seq_max, params.kv_unified = n_seq, True
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(512, 0, n_seq)

    def add(tok: int, pos: int, seq: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, logits
        batch.seq_id[i][0] = seq
        batch.n_tokens += 1

    try:
        prompts = [
            llm.tokenize(f"Write a short story number {i} about a fox who learns to fly.".encode())
            for i in range(n_seq)
        ]
        batch.n_tokens = 0
        last = []
        for s, toks in enumerate(prompts):
            for j, tok in enumerate(toks):
                add(tok, j, s, j == len(toks) - 1)
            last.append(batch.n_tokens - 1)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the prompts")
        pos = [len(t) for t in prompts]
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = [
                int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, last[s]), shape=(n_vocab,)).argmax())
                for s in range(n_seq)
            ]
            batch.n_tokens = 0
            for s in range(n_seq):
                add(nxt[s], pos[s], s, True)
                pos[s] += 1
            last = list(range(n_seq))
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        return steps * n_seq / (time.perf_counter() - t0)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--seqs", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from alpacakit.models import resolve_gguf

    path = str(resolve_gguf(args.model))
    counts = [int(x) for x in args.seqs.split(",")]
    if 1 not in counts:
        counts.insert(0, 1)
    speeds = {n: run(path, n, args.steps, args.threads) for n in counts}
    for n, v in speeds.items():
        print(f"{n} sequence(s): {v:6.1f} tokens/s in all   ratio to 1: {v / speeds[1]:.2f}x")


if __name__ == "__main__":
    main()
