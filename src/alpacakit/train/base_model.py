"""The base model: from any reference to loaded PyTorch weights and a tokenizer.

A reference is a local Hugging Face model folder, a `.gguf` file or an embedded model name
(both resolved by `alpacakit.models.resolve_gguf`), or a hub id. A GGUF file is dequantised by
transformers once and saved as a safetensors folder in the cache
(`$ALPACAKIT_CACHE/hf/<sha256 prefix>/`, written into a temporary folder and renamed), so every
later run loads it in seconds instead of dequantising again.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError


@dataclass
class BaseModel:
    """A resolved base: `path` is what `from_pretrained` loads (a folder, or a hub id)."""

    ref: str
    path: str
    source: str  # "folder" | "gguf" | "embedded" | "hub"
    sha256: str | None = None  # of the GGUF file, when there is one
    gguf: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "path": self.path,
            "source": self.source,
            "gguf": self.gguf,
            "gguf_sha256": self.sha256,
        }


def hf_cache_dir() -> Path:
    """`$ALPACAKIT_CACHE/hf` (or `~/.cache/alpacakit/hf`): dequantised GGUF models as HF folders."""
    from alpacakit.models import cache_dir

    return cache_dir().parent / "hf"


def resolve_base(ref: str) -> BaseModel:
    """Turn a base reference into something `from_pretrained` can load, converting a GGUF once."""
    ref = str(ref).strip()
    p = Path(ref).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        # One of our own model folders with merged weights is a valid base too.
        return BaseModel(ref=ref, path=str(p.resolve()), source="folder")
    if p.is_dir() and (p / "merged" / "config.json").exists():
        return BaseModel(ref=ref, path=str((p / "merged").resolve()), source="folder")
    from alpacakit import models

    if models.is_embedded(ref) or ref.endswith(".gguf") or p.is_file() or (p.is_dir() and any(p.glob("*.gguf"))):
        gguf = models.resolve_gguf(ref)
        sha = models.file_sha256(gguf)
        folder = gguf_to_hf(gguf, sha)
        return BaseModel(
            ref=ref,
            path=str(folder),
            source="embedded" if models.is_embedded(ref) else "gguf",
            sha256=sha,
            gguf=str(gguf),
        )
    if p.exists():
        raise ConfigError(
            f"base model {ref!r}: a folder without config.json or a .gguf file",
            hint="pass a Hugging Face model folder, a .gguf file or an embedded name (gemma-3-270m)",
        )
    if ref.startswith((".", "/", "~")) or os.sep in ref and len(ref.split("/")) != 2:
        raise ConfigError(f"base model {ref!r}: no such file or folder")
    return BaseModel(ref=ref, path=ref, source="hub")


def gguf_to_hf(gguf: Path, sha256: str) -> Path:
    """The cached HF folder for a GGUF file, creating it on first use (atomically).

    transformers dequantises GGUF weights to fp32 on load but refuses to `save_pretrained` a
    model it thinks is still quantised; dropping the quantizer and the quantization config
    first (see shared/notes/models.md) saves plain safetensors that reload in seconds.
    """
    target = hf_cache_dir() / sha256[:16]
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 matmuls run
    2-3x faster than fp32 (measured here: 437 vs 211 GFLOPS on 2 cores)."""
    try:
        import torch

        if not torch.backends.mkldnn.is_available():
            return False
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def torch_dtype(precision: str, method: str = "lora") -> Any:
    """The dtype for the base weights under `precision`.

    'auto': bf16 on a CUDA GPU that has it; on a CPU with native bf16, bf16 for the *frozen*
    base of LoRA (the adapters PEFT adds stay fp32, so updates are not lost to rounding); fp32
    otherwise, and always for full fine-tuning on a CPU (no fp32 master weights there).
    """
    import torch

    if precision == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if method != "full" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    # bf16-mixed: fp32 weights (the optimizer's master copy); bf16 only inside autocast / FSDP mixed precision
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mixed": torch.float32}[
        precision
    ]


def load_tokenizer(base: BaseModel) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base.path)
    except OSError as e:
        raise _load_error(base, e) from None
    if tok.eos_token_id is None:
        raise ConfigError(
            f"base model {base.ref!r}: its tokenizer has no EOS token, so the model could never learn to stop",
            hint="use a tokenizer that defines eos_token",
        )
    return tok


def load_model(
    base: BaseModel,
    *,
    precision: str = "auto",
    quantize_4bit: bool = False,
    method: str = "lora",
    quantize_8bit: bool = False,
) -> Any:
    """Load the base weights for training (4-bit NF4 for QLoRA, int8 for method lora-8bit)."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(precision, method)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantize_4bit:
        kwargs.update(qlora_kwargs(dtype))
    elif quantize_8bit:
        kwargs.update(int8_kwargs())
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    except OSError as e:
        raise _load_error(base, e) from None
    return model


def qlora_kwargs(dtype: Any) -> dict[str, Any]:
    """from_pretrained arguments for a 4-bit NF4 base; a clear error where that cannot work."""
    import torch

    _need_bitsandbytes("method: qlora", "4-bit NF4 weights")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }


def int8_kwargs() -> dict[str, Any]:
    """from_pretrained arguments for an int8 base (LoRA on 8-bit weights, Alpaca-LoRA's original set-up)."""
    import torch

    _need_bitsandbytes("method: lora-8bit", "int8 weights")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
        "device_map": {"": torch.cuda.current_device()},
    }


def _need_bitsandbytes(what: str, weights: str) -> None:
    """A clear error where bitsandbytes' quantized training cannot run (no CUDA, or not installed)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{what} needs a CUDA GPU: bitsandbytes {weights} for training are not supported on CPU here",
            hint="use method: lora on CPU (the same LoRA adapter on a full-precision base: --preset alpaca-lora, or "
            "--preset cpu-quick for a small model), or run on a machine with an NVIDIA GPU",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs the bitsandbytes package", hint='pip install "alpacakit[qlora]"') from None


def check_optimizer(optim: str | None) -> None:
    """bitsandbytes optimizers (paged_*, *8bit*) need CUDA and the package: say so before loading a model."""
    if optim and (optim.startswith("paged_") or "8bit" in optim or "bnb" in optim):
        _need_bitsandbytes(f"optim: {optim}", "optimizers")


def _load_error(base: BaseModel, e: Exception) -> ConfigError:
    if base.source == "hub":
        return ConfigError(
            f"base model {base.ref!r}: could not load it as a Hugging Face hub id ({str(e).splitlines()[0]})",
            hint="without hub access, use an embedded name (gemma-3-270m), a .gguf file or a local model folder",
        )
    return ConfigError(f"base model {base.ref!r} ({base.path}): could not load: {str(e).splitlines()[0]}")
