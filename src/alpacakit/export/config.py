"""The `export` section of `alpacakit.yaml`: how `alpacakit export gguf` quantizes, converts and
verifies, and how `export hf` splits.

Only pydantic and `alpacakit.settings` here: `alpacakit --help` and `config show` import this.
"""

from __future__ import annotations

from pydantic import Field

from alpacakit.settings import Section


class ExportConfig(Section):
    """`alpacakit export`: the GGUF file's quantization and its check, and the HF dataset split."""

    quant: str = Field(
        "auto",
        description="auto, delta-f16, delta-q8_0, q8_0, q4_k_m, f16 or f32. auto: the most compact file that "
        "answers like the trained model: delta-f16 for a model fine-tuned from a GGUF on this machine (the "
        "base's own tensors where training left them unchanged, f16 where it changed them), else q8_0; f16 "
        "when that misses 95% agreement. q4_k_m re-quantises everything and can round a small fine-tuning "
        "delta away (check the agreement it prints).",
    )
    verify: bool = Field(
        True,
        description="Compare greedy next tokens with the Hugging Face model in llama.cpp and print the "
        "agreement; every quantization but q4_k_m must reach 95% top-1 and next-token agreement, or the "
        "export fails.",
    )
    converter: str = Field(
        "auto",
        description="auto (alpacakit's for llama, qwen2 and gemma3, else llama.cpp's), alpacakit, or llama.cpp "
        "(convert_hf_to_gguf.py of the llama.cpp version alpacakit runs: Mistral, Llama 3.x, Qwen3, Phi and "
        "~250 more).",
    )
    tokenizer_pre: str | None = Field(
        None,
        description="llama.cpp pre-tokenizer name, for a tokenizer alpacakit does not recognise "
        "(e.g. gpt-2, llama-bpe, qwen2).",
    )
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for quantizing and verifying (default: all cores)."
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="`export hf`: also write a validation split of this fraction."
    )
