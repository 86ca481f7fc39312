"""Generation speed: the exported q4_k_m GGUF in llama.cpp vs the fp32 transformers model.

    python benchmarks/gguf_speed.py [--model gemma-3-270m|smollm2-135m-instruct|FOLDER] [--tokens 64]

Both engines get the same prompts (fixed instructions in the Alpaca prompt format), the same
number of threads, greedy decoding and exactly `--tokens` new tokens per prompt (EOS is
ignored so that neither stops early). Speed is new tokens per second of wall time for whole
requests (prompt processing included). Both are measured in this run, after one warm-up
request each, so the printed ratio compares like with like on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Explain in two sentences why the sky looks blue during the day.",
    "Write a short poem about a cat sleeping in the sun.",
    "Give three tips for staying focused while studying at home.",
    "Describe the taste of a lemon to someone who has never eaten one.",
    "List the planets of the solar system in order from the Sun.",
]


def model_folder(ref: str, work: Path) -> Path:
    """A model folder for `ref`: an existing folder, or an embedded model dequantised into the cache."""
    p = Path(ref)
    if p.is_dir():
        return p
    from alpacakit.train.base_model import resolve_base

    cached = Path(resolve_base(ref).path)
    d = work / "model"
    d.mkdir(exist_ok=True)
    for f in cached.iterdir():
        if not (d / f.name).exists():
            (d / f.name).symlink_to(f)
    alpaca = Path(__file__).resolve().parents[1] / "src" / "alpacakit" / "templates" / "alpaca.json"
    if not (d / "prompt_format.json").exists():
        shutil.copy(alpaca, d / "prompt_format.json")
    return d


def bench_transformers(folder: Path, prompts: list[str], n_new: int, threads: int) -> tuple[float, int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def run(text: str, n: int) -> int:
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        return out.shape[1] - ids["input_ids"].shape[1]

    run(prompts[0], 4)  # warm-up
    t0 = time.perf_counter()
    made = sum(run(p, n_new) for p in prompts)
    secs = time.perf_counter() - t0
    return made / secs, made, secs


def bench_llama_cpp(gguf_path: Path, prompts: list[str], n_new: int, threads: int) -> tuple[float, int, float]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(text: str, n: int) -> int:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
        llm.reset()
        made = 0
        for _tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            made += 1  # EOS is not a stop here: exactly n tokens, like the transformers side
            if made >= n:
                break
        return made

    try:
        run(prompts[0], 4)  # warm-up
        t0 = time.perf_counter()
        made = sum(run(p, n_new) for p in prompts)
        secs = time.perf_counter() - t0
    finally:
        llm.close()
    return made / secs, made, secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m", help="embedded model name or model folder")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", type=Path, default=None, help="write the q4_k_m GGUF here instead of a temp folder")
    args = ap.parse_args()

    from alpacakit.export.gguf import export_gguf
    from alpacakit.prompting import PromptFormat

    fmt = PromptFormat.load("alpaca")
    prompts = [fmt.build(p) for p in PROMPTS]
    with tempfile.TemporaryDirectory(prefix="gguf_speed.") as tmp:
        work = Path(tmp)
        folder = model_folder(args.model, work)
        out = args.keep or work / "model-q4_k_m.gguf"
        t0 = time.perf_counter()
        res = export_gguf(folder, out, "q4_k_m", threads=args.threads)
        export_s = time.perf_counter() - t0
        print(f"model: {args.model}  threads: {args.threads}  prompts: {len(prompts)} x {args.tokens} new tokens")
        print(f"export q4_k_m: {res.size_bytes / 1e6:.1f} MB in {export_s:.1f} s")
        ll_speed, ll_n, ll_s = bench_llama_cpp(out, prompts, args.tokens, args.threads)
        print(f"llama.cpp q4_k_m GGUF:   {ll_speed:8.1f} tok/s  ({ll_n} tokens in {ll_s:.1f} s)", flush=True)
        hf_speed, hf_n, hf_s = bench_transformers(folder, prompts, args.tokens, args.threads)
        print(f"transformers fp32:       {hf_speed:8.1f} tok/s  ({hf_n} tokens in {hf_s:.1f} s)")
        print(f"ratio (llama.cpp q4_k_m / transformers fp32): {ll_speed / hf_speed:.2f}x")
        print(
            json.dumps(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "tokens_per_prompt": args.tokens,
                    "llama_cpp_q4_k_m_tok_s": round(ll_speed, 2),
                    "transformers_fp32_tok_s": round(hf_speed, 2),
                    "ratio": round(ll_speed / hf_speed, 3),
                    "gguf_mb": round(res.size_bytes / 1e6, 1),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
