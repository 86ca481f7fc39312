"""After training: merge a LoRA adapter into its base, and load a trained model folder.

`load_trained(folder)` is what eval, chat, serve and export call: it reads the folder's
manifest, loads the base and the adapter (or the merged weights), the tokenizer and the prompt
format the model was trained with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError
from alpacakit.prompting import PromptFormat
from alpacakit.train.outputs import partial_dir


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """The manifest of a finished model folder; a clear error for anything else."""
    d = Path(model_dir)
    partial = partial_dir(d)
    if not d.exists():
        if partial.exists():
            raise ConfigError(
                f"{d} does not exist, but {partial} does: that training run did not finish",
                hint="resume it with `alpacakit train ... --resume`",
            )
        raise ConfigError(f"{d}: no such model folder")
    m = d / "manifest.json"
    if not m.exists():
        raise ConfigError(f"{d}: no manifest.json (not a model folder written by `alpacakit train`)")
    manifest = json.loads(m.read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise ConfigError(f"{m}: the manifest says this model folder is incomplete")
    return manifest


def _base_path(manifest: dict[str, Any]) -> str:
    from alpacakit.train.base_model import resolve_base

    base = manifest["base"]
    if base.get("path") and Path(base["path"]).exists():
        return base["path"]
    return resolve_base(base["ref"]).path  # e.g. the GGUF cache was cleared: convert again


def load_trained(
    model_dir: str | Path, *, merged: bool | None = None, dtype: Any = None
) -> tuple[Any, Any, PromptFormat]:
    """(model, tokenizer, prompt format) of a trained model folder, ready for generation.

    Uses merged/ when present (or when `merged=True`), else base + adapter/.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(model_dir)
    manifest = read_manifest(d)
    dtype = dtype or torch.float32
    tok = AutoTokenizer.from_pretrained(d)
    fmt = PromptFormat.from_model_dir(d).bind(tok)
    use_merged = (d / "merged" / "config.json").exists() if merged is None else merged
    if use_merged:
        if not (d / "merged").exists():
            raise ConfigError(f"{d}: no merged/ weights", hint=f"run `alpacakit merge {d}` first")
        model = AutoModelForCausalLM.from_pretrained(d / "merged", dtype=dtype)
    else:
        from alpacakit.peft_quiet import load_adapter

        if manifest.get("method") == "full":
            raise ConfigError(f"{d}: a full fine-tune has no adapter; its weights are in merged/")
        base = AutoModelForCausalLM.from_pretrained(_base_path(manifest), dtype=dtype)
        model = load_adapter(base, d / "adapter")
    model.eval()
    return model, tok, fmt


def merge(model_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Fold the LoRA adapter into the base weights: writes `model_dir/merged/` (atomically)."""
    import torch

    from alpacakit.io import atomic_write_json

    d = Path(model_dir)
    manifest = read_manifest(d)
    target = d / "merged"
    if manifest.get("method") == "full":
        raise ConfigError(f"{d}: a full fine-tune is already complete weights ({target}); nothing to merge")
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists", hint="pass --overwrite to merge again")
    model, tok, fmt = load_trained(d, merged=False, dtype=torch.float32)
    merged = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=".merged.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        fmt.save(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["merged"] = {"path": "merged", "dtype": "float32"}
    atomic_write_json(d / "manifest.json", manifest)
    return target
