"""Loading a LoRA adapter (export gguf, merge, the HF backend) shows none of the FutureWarnings
peft raises by probing names transformers deprecated; plain peft, side by side, does."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("peft")


def _future_warnings(load) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load()
    return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]


def test_an_adapter_loads_without_peft_future_warnings(tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from alpacakit.peft_quiet import load_adapter, peft_quiet
    from alpacakit.train.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    with peft_quiet():
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")

    plain = _future_warnings(
        lambda: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "adapter"))
    )
    ours = _future_warnings(lambda: load_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter"))
    if not plain:
        pytest.skip("this peft raises no FutureWarning on loading an adapter: alpacakit.peft_quiet can go")
    assert ours == []
