"""One answer, for every verb, to "what is this model reference and what can it do?".

A model reference is one of (the same syntax for teachers, judges, students, systems under
evaluation, `chat`, `serve`, `export` and the quickstart):

| kind | written as | runs in |
|---|---|---|
| `endpoint` | `openai:MODEL` (with a base URL for anything but OpenAI), or any name when a base URL is set | the `openai` client: OpenAI, vLLM, TGI, llama.cpp's server, Ollama, `alpacakit serve` |
| `gguf` | an embedded name (`smollm2-135m-instruct`, ...), a `.gguf` file, or a folder holding one | llama.cpp in process (GPU offload when the wheel has CUDA/Metal) |
| `hf` | a Hugging Face model folder, or a folder `alpacakit train` wrote (merged weights or a LoRA adapter) | transformers (bf16 on a CUDA GPU, fp32 on the CPU; waiting greedy requests decoded together) |
| `vllm` | `vllm:FOLDER` (the same folders) | vLLM in process (`alpacakit[vllm]`): batched generation at scale, tensor parallel over the GPUs present |

`classify(ref)` says which, without loading anything, and `capabilities(kind)` what that kind
can do. A verb that needs something a kind lacks calls `require(...)`, which raises one clear
error naming the alternative, before any model is loaded or any request is paid for.
`make_backend` (models/backends/resolve.py) builds every kind from this same classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpacakit.errors import ConfigError

CHAT = "chat"  # answer chat messages (an instruct model; a base model has no chat template)
COMPLETE = "complete"  # continue raw text
STREAM = "stream"  # answer piece by piece
LOGLIK = "loglik"  # log-probabilities of a given continuation (multiple-choice scoring, NLL)
BATCH = "batch"  # several requests decoded at once (llama.cpp batches; endpoints run them in parallel)
GPU = "gpu"  # can run on a GPU on a machine that has one

CAPABILITIES: dict[str, frozenset[str]] = {
    "endpoint": frozenset({CHAT, COMPLETE, STREAM, BATCH, GPU}),
    "gguf": frozenset({CHAT, COMPLETE, STREAM, LOGLIK, BATCH, GPU}),
    "hf": frozenset({CHAT, COMPLETE, STREAM, LOGLIK, BATCH, GPU}),
    "vllm": frozenset({CHAT, COMPLETE, BATCH, GPU}),
}

# What to use instead when a kind lacks a capability.
_ALTERNATIVES: dict[tuple[str, str], str] = {
    ("endpoint", LOGLIK): "local weights (a model folder, a .gguf file or an embedded name) give log-likelihoods; "
    "an endpoint runs the generation-scored tasks (e.g. --tasks facts_qa,arithmetic_qa,reading_qa)",
    ("vllm", LOGLIK): "drop the vllm: prefix: the folder itself (transformers) gives log-likelihoods",
    ("vllm", STREAM): "drop the vllm: prefix to stream from transformers, or serve the folder with vLLM's own server",
    ("vllm", "export"): "drop the vllm: prefix: `alpacakit export gguf FOLDER`",
    ("endpoint", "export"): "export needs weights: point it at the model folder the endpoint serves",
    ("gguf", "export"): "a .gguf file is already exported; `alpacakit export gguf` converts model folders",
}


@dataclass(frozen=True)
class ModelRef:
    ref: str
    kind: str  # "endpoint" | "gguf" | "hf"
    path: Path | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        return CAPABILITIES[self.kind]

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def classify(ref: str, *, base_url: str | None = None) -> ModelRef:
    """The kind of `ref`, from its spelling and the files it names (nothing is loaded)."""
    from alpacakit.models import _looks_like_hub_id, is_embedded

    ref = str(ref).strip()
    if not ref:
        raise ConfigError(
            "empty model reference", hint="name a model: an embedded name, a .gguf file, a model folder or openai:MODEL"
        )
    if ref.startswith("openai:"):
        return ModelRef(ref, "endpoint")
    if ref.startswith("vllm:"):
        folder = Path(ref.removeprefix("vllm:")).expanduser()
        inner = classify(str(folder))
        if inner.kind != "hf":
            raise ConfigError(
                f"{ref}: vLLM runs model folders, and {folder} is {_article(inner.kind)}",
                hint="pass vllm:FOLDER with a Hugging Face or alpacakit model folder",
            )
        return ModelRef(ref, "vllm", folder)
    if is_embedded(ref):
        return ModelRef(ref, "gguf")
    p = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        return ModelRef(ref, "gguf", p)
    if p.is_dir():
        from alpacakit.models.backends.hf import is_hf_folder

        if is_hf_folder(p):
            return ModelRef(ref, "hf", p)
        if any(p.glob("*.gguf")):
            return ModelRef(ref, "gguf", p)
        raise ConfigError(
            f"{p} holds no model: no config.json, adapter_config.json, merged/, adapter/ or .gguf file",
            hint="pass the folder `alpacakit train` wrote, a Hugging Face model folder, or a .gguf file",
        )
    if base_url:
        return ModelRef(ref, "endpoint")  # a bare name at a base URL (e.g. `llama3` on Ollama)
    if not ref.startswith("~") and _looks_like_hub_id(ref):
        raise ConfigError(
            f"{ref!r} looks like a model hub id, and alpacakit does not download models",
            hint=f"download it first (e.g. `huggingface-cli download {ref} --local-dir models/"
            f"{ref.split('/')[-1]}`) and pass the folder, or serve it (vLLM, TGI) and pass openai:MODEL "
            "with --base-url",
        )
    from alpacakit.models import _unknown

    raise _unknown(ref)


def require(ref: str | ModelRef, capability: str, verb: str, *, base_url: str | None = None) -> ModelRef:
    """`ref`'s classification, or a ConfigError saying that `verb` needs `capability` and what to
    use instead."""
    m = ref if isinstance(ref, ModelRef) else classify(ref, base_url=base_url)
    if capability == "export":
        if m.kind != "hf":
            raise ConfigError(
                f"{verb}: {m.ref} is {_article(m.kind)}, not a model folder", hint=_ALTERNATIVES[(m.kind, "export")]
            )
        return m
    if not m.can(capability):
        hint = _ALTERNATIVES.get((m.kind, capability), "use a model reference of another kind")
        raise ConfigError(
            f"{verb} needs {_NEEDS[capability]}, which {_article(m.kind)} ({m.ref}) does not give", hint=hint
        )
    return m


_NEEDS = {
    CHAT: "chat answers",
    COMPLETE: "raw text completion",
    STREAM: "streamed answers",
    LOGLIK: "log-likelihoods of given text",
    BATCH: "batched decoding",
    GPU: "a GPU",
}


def _article(kind: str) -> str:
    return {
        "endpoint": "an endpoint",
        "gguf": "a GGUF model",
        "hf": "a Hugging Face model folder",
        "vllm": "a vLLM model",
    }[kind]


def gpu_available(kind: str) -> bool:
    """Whether this machine would run `kind` on a GPU (CUDA for transformers; a CUDA/Metal build
    of llama.cpp). Endpoints: unknown here, False."""
    if kind == "hf":
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())
    if kind == "gguf":
        try:
            import llama_cpp
        except ImportError:
            return False
        return bool(llama_cpp.llama_supports_gpu_offload())
    return False
