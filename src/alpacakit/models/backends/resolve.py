"""One resolver from a model reference to a loaded `ModelBackend`, for teachers, judges and systems
under evaluation alike. What a reference is comes from `alpacakit.models.registry.classify`
(see its table): an endpoint (`openai:MODEL`, or a bare name with a base URL), a GGUF model
(embedded name, `.gguf` file, folder holding one: llama.cpp in process), or a Hugging Face /
alpacakit model folder (transformers). Anything else is a clear error naming what is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit.models.backends.base import ModelBackend
from alpacakit.teachers.accounting import CostTracker

if TYPE_CHECKING:
    from alpacakit.teachers.config import TeacherConfig


def backend_of(config: TeacherConfig) -> str:
    """'openai', 'llamacpp', 'hf' or 'vllm' for a TeacherConfig, without loading anything."""
    from alpacakit.models.registry import classify

    kind = classify(config.model, base_url=config.base_url).kind
    return {"endpoint": "openai", "gguf": "llamacpp", "hf": "hf", "vllm": "vllm"}[kind]


def make_backend(
    config: TeacherConfig,
    tracker: CostTracker | None = None,
    *,
    prompt_format: Any | None = None,
    base: str | None = None,
) -> ModelBackend:
    """Build the teacher a TeacherConfig describes. `tracker`, when given, is charged on every
    successful call (and Completion.cost is set either way). `prompt_format` and `base` apply to
    model folders (a format other than the folder's own; an adapter's base model)."""
    kind = backend_of(config)
    if kind == "openai":
        from alpacakit.models.backends.endpoint import EndpointModel

        return EndpointModel(config, tracker)
    if kind == "vllm":
        from alpacakit.models.backends.vllm import VLLMModel

        return VLLMModel(config.model.strip(), config, prompt_format=prompt_format)
    if kind == "hf":
        from alpacakit.models.backends.hf import HFModel

        return HFModel(Path(config.model.strip()).expanduser(), config, base=base, prompt_format=prompt_format)
    from alpacakit.models.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(config, tracker)
