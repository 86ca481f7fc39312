"""Keep a fine-tuned student's base where the fine-tune did not touch it (`--quant auto`).

Why this exists: the embedded student base (Gemma 3 270M) ships as a q4_k_m GGUF; training
dequantises it, LoRA adds a small delta to a few matrices, and a plain q4_k_m export then
re-quantises everything on the same coarse grid. The delta mostly rounds away: measured on
the quickstart's student (runs/qs1, 2026-12-06), top-1 agreement with the trained model fell to
83.0% and next-token agreement to 60%, and the file answered like the base (it rambled on into
`### Response:` where the trained student said `Paris` and stopped).

So, for a model fine-tuned from a GGUF file, every tensor the fine-tune left unchanged is
copied *byte for byte* from that GGUF (it dequantises to exactly the weights training saw),
and every tensor it changed is written f16 (`delta-f16`, what `auto` picks) or q8_0
(`delta-q8_0`). "Unchanged" is decided by comparing values, not by reading the adapter config,
so full fine-tunes, merged folders and adapters all take the same path. Measured on that
student (20 verification prompts, 860 positions; the same figures every export records):

| export | size | top-1 | next token | clear choices |
|---|---|---|---|---|
| q4_k_m (llama.cpp's mixture) | 253 MB | 83.0% | 60% | 95.8% |
| delta-q8_0 | 265 MB | 94.4% | 95% | 100% |
| q8_0 (every tensor) | 292 MB | 97.1% | 95% | 100% |
| **delta-f16** (default) | 293 MB | 96.2% | **100%** | 100% |

The disagreements left are near-ties (every position where the trained model's choice is clear
agrees): llama.cpp quantises activations inside its quantized matrix products. On 20 prompts
one near-tie moves next-token agreement by 5 points, and later students measured 98.3% / 95%,
95.8% / 90% and 85-90% next token; so `auto` (in `export_gguf`) writes f16 instead whenever the
delta file misses the 95% bar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError

DELTA_QUANT = "delta-f16"  # what `auto` picks (measured: see the module doc)
DELTA_QUANTS = ("delta-f16", "delta-q8_0")  # the type the changed tensors are written in


@dataclass
class BaseGGUF:
    """The base model's GGUF, opened for reading its tensors as stored."""

    path: Path
    reader: Any
    tensors: dict[str, Any]
    file_type: int | None
    copied: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> BaseGGUF:
        import gguf

        path = Path(path)
        reader = gguf.GGUFReader(path)
        ft = reader.fields.get("general.file_type")
        file_type = int(ft.parts[ft.data[0]][0]) if ft is not None else None
        return cls(path, reader, {t.name: t for t in reader.tensors}, file_type)

    def stored(self, name: str, data: Any) -> Any | None:
        """The base's tensor `name` as stored, if it holds exactly the values `data` (float32,
        numpy order); None when it is missing, shaped differently or changed by the fine-tune."""
        import numpy as np
        from gguf.quants import dequantize

        t = self.tensors.get(name)
        if t is None:
            return None
        values = dequantize(t.data, t.tensor_type)
        if values.shape != data.shape:
            return None
        if data.ndim >= 2:
            same = np.array_equal(values.astype(np.float32), data)
        else:  # norms go through an exact-in-theory +1/-1 round trip: allow float rounding
            same = np.allclose(values.astype(np.float32), data, rtol=0, atol=1e-6)
        return t if same else None


def base_gguf_of(model_dir: str | Path, base: str | Path | None = None) -> Path | None:
    """The GGUF file the model in `model_dir` was fine-tuned from, when there is one on this machine.

    Read from the training manifest (`base.gguf`, recorded by `alpacakit train` when the base
    was a GGUF file or an embedded model), else from `base` / the adapter's base reference when
    that names a GGUF or an embedded model.
    """
    from alpacakit.export.gguf import locate

    src = locate(model_dir)
    refs: list[str] = [str(base)] if base is not None else []
    if src.manifest_path is not None:
        try:
            data = json.loads(src.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        b = data.get("base") if isinstance(data, dict) else None
        if isinstance(b, dict):
            if b.get("gguf") and Path(b["gguf"]).is_file():
                return Path(b["gguf"])
            refs += [str(b[k]) for k in ("ref",) if b.get(k)]
    if src.kind == "adapter" and src.base:
        refs.append(src.base)
    from alpacakit.models import is_embedded, resolve_gguf

    for ref in refs:
        if is_embedded(ref) or ref.endswith(".gguf"):
            try:
                return resolve_gguf(ref)
            except Exception:  # noqa: BLE001 - not available here: no delta export, say so below
                continue
    return None


def plan_quant(quant: str, model_dir: str | Path, base: str | Path | None = None) -> tuple[str, Path | None]:
    """(the quantization to write, the base GGUF a delta export copies from).

    `auto` -> `delta-f16` for a model fine-tuned from a GGUF on this machine, else `q8_0`; an
    explicit delta quantization without such a base is a clear error."""
    quant = quant.lower()
    if quant != "auto" and quant not in DELTA_QUANTS:
        return quant, None
    found = base_gguf_of(model_dir, base)
    if found is not None:
        return (DELTA_QUANT if quant == "auto" else quant), found
    if quant != "auto":
        raise ConfigError(
            f"--quant {quant} needs the GGUF file {model_dir} was fine-tuned from, and none was found",
            hint="pass it with --base FILE.gguf (or an embedded model name), or use --quant q8_0",
        )
    return "q8_0", None


def resolve_quant(quant: str, model_dir: str | Path, base: str | Path | None = None) -> str:
    """The quantization `plan_quant` would write (file names, the quickstart)."""
    return plan_quant(quant, model_dir, base)[0]
