"""peft without its FutureWarnings: one place for a filter that four call sites need.

peft probes transformers attributes that transformers has since deprecated (e.g.
`is_gradient_checkpointing`), so wrapping a model or loading an adapter printed a FutureWarning
that only a peft release can fix: `alpacakit export gguf` of every LoRA student showed one. The
filter covers peft's own calls and nothing around them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """FutureWarnings raised inside the block are dropped (peft probing deprecated names)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def load_adapter(base_model: Any, adapter_dir: str | Path) -> Any:
    """`PeftModel.from_pretrained(base_model, adapter_dir)`, quietly."""
    from peft import PeftModel

    with peft_quiet():
        return PeftModel.from_pretrained(base_model, str(adapter_dir))
