"""One resolver from a model reference to a loaded `Teacher`.

Reference syntax (the same for teachers, judges and systems under evaluation):

- `openai:MODEL`: an OpenAI-compatible endpoint at `base_url` (OpenAI itself when unset);
- an embedded model name, a `.gguf` path, or a folder holding one `.gguf`: llama.cpp in process;
- a bare model name *with* `base_url` set (e.g. `model: llama3` and an Ollama URL) is taken as
  an endpoint model too, since a base URL says where the model lives.

Anything else fails in `models.resolve_gguf` with the list of embedded names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alpacakit.teachers.accounting import CostTracker
from alpacakit.teachers.base import Teacher


def backend_of(config: Any) -> str:
    """'openai' or 'llamacpp' for a TeacherConfig, without loading anything."""
    from alpacakit.models import is_embedded

    ref = config.model.strip()
    if ref.startswith("openai:"):
        return "openai"
    if config.base_url and not is_embedded(ref) and not ref.endswith(".gguf") and not Path(ref).expanduser().exists():
        return "openai"
    return "llamacpp"


def make_teacher(config: Any, tracker: CostTracker | None = None) -> Teacher:
    """Build the teacher a TeacherConfig describes. `tracker`, when given, is charged on every
    successful call (and Completion.cost is set either way)."""
    if backend_of(config) == "openai":
        from alpacakit.teachers.openai_compat import OpenAICompatTeacher

        return OpenAICompatTeacher(config, tracker)
    from alpacakit.teachers.llamacpp import LlamaCppTeacher

    return LlamaCppTeacher(config, tracker)
