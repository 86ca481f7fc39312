"""GGUF export by architecture and converter: agreement with the Hugging Face model, size, time.

For each architecture, a tiny model is built from a config (no hub; `alpacakit.train.tiny`),
exported to f16 and q8_0 by alpacakit's converter (llama, qwen2, gemma3 only) and by llama.cpp's
own convert_hf_to_gguf.py (version-matched to the llama-cpp-python that runs the file), and
verified: greedy top-1 agreement at every position of alpacakit's 20 verification prompts,
next-token agreement, and tokenizer agreement. Side by side in one run, so the two converters
are compared on the same weights.

    python benchmarks/export_converters.py                      # every architecture, f16 and q8_0
    python benchmarks/export_converters.py --archs mistral,qwen3 --quants f16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ARCHS = ("llama", "qwen2", "gemma3", "mistral", "qwen3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--quants", default="f16,q8_0")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from alpacakit.export.gguf import export_gguf
    from alpacakit.export.gguf_arch import SUPPORTED_ARCHS
    from alpacakit.train.tiny import make_tiny_base

    print(f"{'arch':8} {'converter':9} {'quant':5} {'top-1':>7} {'next':>6} {'tok':>6} {'MB':>6} {'s':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            folder = make_tiny_base(Path(tmp) / arch, arch=arch, seed=args.seed)
            ours = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}.get(arch) in SUPPORTED_ARCHS
            for converter in ("alpacakit", "llama.cpp") if ours else ("llama.cpp",):
                for quant in args.quants.split(","):
                    out = Path(tmp) / f"{arch}-{converter}-{quant}.gguf"
                    t0 = time.perf_counter()
                    try:
                        r = export_gguf(folder, out, quant, verify=True, converter=converter)
                    except Exception as e:  # noqa: BLE001 - a row of the table
                        print(f"{arch:8} {converter:9} {quant:5} failed: {type(e).__name__}: {str(e)[:120]}")
                        continue
                    v = r.verification or {}
                    print(
                        f"{arch:8} {converter:9} {quant:5} {v['top1_agreement']:7.1%} {v['next_token_agreement']:6.0%} "
                        f"{v['tokenizer_agreement']:6.0%} {r.size_bytes / 1e6:6.2f} {time.perf_counter() - t0:5.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
