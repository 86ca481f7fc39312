"""Model backends: every kind of model reference, loaded behind one protocol (`base.ModelBackend`).

`make_backend(TeacherConfig)` returns the backend for the configured reference: an
OpenAI-compatible endpoint (`endpoint.py`), a GGUF file in llama.cpp (`llamacpp.py`,
`llama_engine.py`), a model folder in transformers (`hf.py`) or vLLM (`vllm.py`). The same
backends write (teacher), judge, answer (the system under evaluation) and serve.
`models/registry.py` says, before anything loads, what each kind can do.
"""

from alpacakit.models.backends.base import Completion, ModelBackend, Usage

__all__ = ["Completion", "ModelBackend", "Usage", "make_backend"]


def make_backend(config, tracker=None, **kwargs):  # noqa: ANN001 - lazy import keeps `alpacakit --help` fast
    from alpacakit.models.backends.resolve import make_backend as _make

    return _make(config, tracker, **kwargs)
