"""Per-architecture knowledge for GGUF export: hyperparameter keys and tensor transforms.

A Hugging Face checkpoint and a llama.cpp model compute the same function, but they lay a
few things out differently. What each supported architecture needs, and why:

- **llama**: HF applies rotary embeddings with `rotate_half` (the two halves of each head
  form the pairs); llama.cpp's llama graph uses adjacent pairs. The rows of `q_proj` and
  `k_proj` are reordered so that pair (i, i + d/2) becomes (2i, 2i + 1). Llama 3 style rope
  scaling becomes a `rope_freqs` tensor of per-frequency divisors.
- **qwen2**: NEOX-style rope in llama.cpp matches HF's layout: no reordering; q/k/v biases.
- **gemma3**: HF's RMSNorm multiplies by `1 + weight`, llama.cpp by `weight`: every norm
  weight gets +1. Sliding-window layers are written as a per-layer pattern with their own
  rope base. llama.cpp scales queries by 1/sqrt(head_dim); a model whose
  `query_pre_attn_scalar` differs is made exact by folding the ratio into `q_norm`'s weight
  (the norm's output is multiplied by it, and rope is linear). The embedding scale
  sqrt(hidden) is applied by both, so the embedding is written as stored.

Tied embeddings are written once (`token_embd`); llama.cpp reuses it as the output layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from alpacakit.errors import ConfigError

# Hugging Face `model_type` -> llama.cpp architecture name.
SUPPORTED_ARCHS: dict[str, str] = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}
_ROPE_TYPES = ("default", "linear", "llama3")


def _unsupported(model_type: str | None) -> ConfigError:
    names = ", ".join(f"{hf} ({gg})" for hf, gg in SUPPORTED_ARCHS.items())
    hint = f"alpacakit's converter writes {names}; --converter llama.cpp (what auto picks) converts ~250 more"
    if model_type == "gemma3":
        hint += ". This is the multimodal Gemma 3 wrapper: export the text model (Gemma3ForCausalLM) instead"
    return ConfigError(f"GGUF export does not support model type {model_type!r}", hint=hint)


def _rope_settings(
    cfg: dict[str, Any], layer_type: str | None = None, default_theta: float = 10000.0
) -> tuple[float, dict[str, Any]]:
    """(rope theta, scaling dict) from either transformers 5 `rope_parameters` or the older keys."""
    params = cfg.get("rope_parameters") or {}
    if layer_type and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    elif params and all(isinstance(v, dict) for v in params.values()):
        params = params.get("full_attention", next(iter(params.values())))
    theta = params.get("rope_theta", cfg.get("rope_theta", default_theta))
    scaling = dict(params) if params.get("rope_type") or params.get("type") else dict(cfg.get("rope_scaling") or {})
    return float(theta), scaling


def _rope_type(scaling: dict[str, Any]) -> str:
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if kind not in _ROPE_TYPES:
        raise ConfigError(
            f"rope scaling type {kind!r} is not supported for GGUF export", hint=f"supported: {', '.join(_ROPE_TYPES)}"
        )
    return kind


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows from HF's half-split rotary layout to llama.cpp's adjacent pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors that turn plain rope into Llama 3's scaled rope (`rope_freqs`)."""
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = np.ones_like(inv_freq)
    for i, wl in enumerate(wavelen):
        if wl < high_wavelen:
            out[i] = 1.0
        elif wl > low_wavelen:
            out[i] = factor
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


@dataclass
class ArchPlan:
    """How one model's config and weights become GGUF keys and tensors."""

    model_type: str
    arch: str  # llama.cpp name
    cfg: dict[str, Any]
    tied: bool

    @property
    def n_layers(self) -> int:
        return int(self.cfg["num_hidden_layers"])

    @property
    def n_head(self) -> int:
        return int(self.cfg["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.cfg.get("num_key_value_heads") or self.n_head)

    @property
    def head_dim(self) -> int:
        return int(self.cfg.get("head_dim") or self.cfg["hidden_size"] // self.n_head)

    # ------------------------------------------------------------------ keys
    def check(self) -> None:
        """Refuse settings llama.cpp would run differently, before any work is done."""
        cfg = self.cfg
        if (
            self.arch == "qwen2"
            and cfg.get("use_sliding_window")
            and (cfg.get("sliding_window") or 0) < cfg.get("max_position_embeddings", 0)
        ):
            raise ConfigError(
                "a qwen2 model with use_sliding_window=true cannot be exported: llama.cpp's qwen2 uses full attention",
                hint="set use_sliding_window to false in config.json if the model was trained without it",
            )
        if self.arch == "gemma3" and cfg.get("attn_logit_softcapping"):
            raise ConfigError("gemma3 with attn_logit_softcapping is not supported by llama.cpp's gemma3")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        _rope_type(_rope_settings(cfg)[1])

    def write_hparams(self, writer: Any) -> None:
        cfg = self.cfg
        writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(int(cfg["hidden_size"]))
        writer.add_block_count(self.n_layers)
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(int(cfg["vocab_size"]))
        if self.arch == "gemma3":
            self._gemma3_hparams(writer)
            return
        theta, scaling = _rope_settings(cfg)
        writer.add_rope_freq_base(theta)
        writer.add_rope_dimension_count(self.head_dim)
        if self.head_dim * self.n_head != cfg["hidden_size"]:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        self._rope_scaling(writer, scaling)

    def _rope_scaling(self, writer: Any, scaling: dict[str, Any]) -> None:
        import gguf

        if _rope_type(scaling) == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))

    def _gemma3_hparams(self, writer: Any) -> None:
        cfg = self.cfg
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        theta, scaling = _rope_settings(cfg, "full_attention", default_theta=1_000_000.0)
        writer.add_rope_freq_base(theta)
        self._rope_scaling(writer, scaling)
        if cfg.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        pattern = self.sliding_pattern()
        if cfg.get("sliding_window") and any(pattern):
            writer.add_sliding_window(int(cfg["sliding_window"]))
            writer.add_sliding_window_pattern(pattern)
            local_theta = cfg.get("rope_local_base_freq")
            if local_theta is None:
                local_theta = _rope_settings(cfg, "sliding_attention")[0]
            writer.add_rope_freq_base_swa(float(local_theta))

    def sliding_pattern(self) -> list[bool]:
        """Which layers use sliding-window attention (gemma3)."""
        types = self.cfg.get("layer_types")
        if types:
            return [t == "sliding_attention" for t in types]
        every = int(self.cfg.get("sliding_window_pattern") or 6)
        return [(i + 1) % every != 0 for i in range(self.n_layers)]

    # ------------------------------------------------------------------ tensors
    def tensors(self, state: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
        """(GGUF name, float32 array) for every weight, transformed for llama.cpp."""
        import gguf

        arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma3": gguf.MODEL_ARCH.GEMMA3}[
            self.arch
        ]
        names = gguf.get_tensor_name_map(arch_enum, self.n_layers)
        q_fold = self._gemma3_query_fold()
        for hf_name, tensor in state.items():
            if "rotary_emb" in hf_name or hf_name.endswith(".inv_freq"):
                continue
            if hf_name == "lm_head.weight" and self.tied:
                continue
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ConfigError(
                    f"weight {hf_name!r} has no GGUF equivalent for {self.arch}",
                    hint="the model has layers llama.cpp's architecture does not know (a custom head?)",
                )
            data = tensor.detach().to("cpu").float().numpy()
            if self.arch == "llama":
                if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute_rotary(data, self.n_head)
                elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute_rotary(data, self.n_head_kv)
            elif self.arch == "gemma3" and hf_name.endswith("norm.weight"):
                data = data + 1.0
                if q_fold != 1.0 and hf_name.endswith("q_norm.weight"):
                    data = data * q_fold
            yield name, np.ascontiguousarray(data, dtype=np.float32)
        if self.arch == "llama":
            theta, scaling = _rope_settings(self.cfg)
            if _rope_type(scaling) == "llama3":
                yield (
                    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                    llama3_rope_factors(theta, self.head_dim, scaling),
                )

    def _gemma3_query_fold(self) -> float:
        """Factor that makes llama.cpp's fixed query scale equal HF's query_pre_attn_scalar**-0.5."""
        if self.arch != "gemma3":
            return 1.0
        want = float(self.cfg.get("query_pre_attn_scalar") or self.head_dim) ** -0.5
        if self.n_layers == 62:  # llama.cpp's Gemma 3 27B rule
            used = (self.cfg["hidden_size"] / self.n_head) ** -0.5
        else:
            used = self.head_dim**-0.5
        return want / used


def plan_for(cfg: dict[str, Any], *, tied: bool) -> ArchPlan:
    """The export plan for a model config (a config.json dict), or a ConfigError naming what is supported."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_ARCHS:
        raise _unsupported(model_type)
    plan = ArchPlan(model_type=model_type, arch=SUPPORTED_ARCHS[model_type], cfg=cfg, tied=tied)
    plan.check()
    return plan
