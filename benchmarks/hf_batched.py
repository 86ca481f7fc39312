"""A model folder in transformers: batched greedy generation vs one request at a time, on the CPU.

The same held-out instructions (alpacakit's eval set), greedy, the same max_tokens, sent all at
once to `HFModel` (what `eval generate`, `chat`, `serve` and the judge use for a model folder):

- one at a time: `max_concurrency 1`, each request its own `generate()` call;
- batched: `max_concurrency N`, waiting requests decoded together (left-padded, one forward
  pass per step for the batch);
- the GGUF path for reference: the same weights as the embedded GGUF in llama.cpp (batched
  engine, N slots).

The folder is made from the embedded GGUF (transformers dequantises it to fp32; cached), so no
hub is needed. Printed: completion tokens/s of each, the batched/one ratio (goal >= 2), the
GGUF/batched ratio, and whether batched answers equal one-at-a-time answers.

    python benchmarks/hf_batched.py                      # smollm2-135m-instruct, 48 instructions, 32 tokens, N=8
    python benchmarks/hf_batched.py --n 16 --max-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--instructions", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n", type=int, default=8, help="batch size (max_concurrency)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from alpacakit.config import TeacherConfig
    from alpacakit.evaluate.evalsets import load_eval_set
    from alpacakit.models import file_sha256, resolve_gguf
    from alpacakit.models.backends.hf import HFModel
    from alpacakit.models.backends.llamacpp import LlamaCppModel
    from alpacakit.train.base_model import gguf_to_hf

    torch.set_num_threads(args.threads)
    items = load_eval_set("alpacakit", limit=args.instructions)
    messages = [[{"role": "user", "content": it.instruction + (f"\n\n{it.input}" if it.input else "")}] for it in items]
    gguf = resolve_gguf(args.model)
    folder = gguf_to_hf(gguf, file_sha256(gguf))
    print(
        f"{len(messages)} instructions, greedy, max_tokens {args.max_tokens}, {args.threads} threads; "
        f"{args.model} as an HF folder ({folder}) and as GGUF"
    )

    async def answer(teacher) -> tuple[float, list[str], int]:  # noqa: ANN001
        await teacher.chat([{"role": "user", "content": "Hi"}], max_tokens=2)  # warm-up
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(teacher.chat(m, max_tokens=args.max_tokens, temperature=0.0) for m in messages))
        return time.perf_counter() - t0, [o.text for o in outs], sum(o.usage.completion_tokens for o in outs)

    rows = []
    texts: dict[str, list[str]] = {}
    for name, n in (("HF one at a time", 1), (f"HF batched (N={args.n})", args.n)):
        t = HFModel(
            folder,
            TeacherConfig(
                model=str(folder),
                temperature=0.0,
                max_tokens=args.max_tokens,
                max_concurrency=n,
                n_threads=args.threads,
            ),
            device="cpu",
        )
        s, out, tok = asyncio.run(answer(t))
        texts[name] = out
        rows.append((name, tok, s))
        del t
    g = LlamaCppModel(
        TeacherConfig(
            model=args.model,
            temperature=0.0,
            max_tokens=args.max_tokens,
            max_concurrency=args.n,
            n_threads=args.threads,
            timeout_s=600,
        )
    )
    s, out, tok = asyncio.run(answer(g))
    rows.append((f"GGUF llama.cpp engine (N={args.n})", tok, s))
    asyncio.run(g.aclose())

    one = rows[0][1] / rows[0][2]
    print(f"{'path':30} {'tokens':>6} {'seconds':>8} {'tok/s':>7} {'x one':>6}")
    for name, tok, s in rows:
        print(f"{name:30} {tok:6d} {s:8.2f} {tok / s:7.1f} {tok / s / one:6.2f}")
    batched = rows[1][1] / rows[1][2]
    print(f"batched / one at a time: x{batched / one:.2f}; GGUF / HF batched: x{rows[2][1] / rows[2][2] / batched:.2f}")
    a, b = texts["HF one at a time"], texts[rows[1][0]]
    print(f"batched answers equal to one-at-a-time answers: {sum(x == y for x, y in zip(a, b))}/{len(a)}")


if __name__ == "__main__":
    main()
