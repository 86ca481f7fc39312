"""Attention for packed rows: each example attends only to itself, at the cost of its own length.

With packing, a micro-batch is one row of examples end to end. transformers can mask that row
block-diagonally (it does when it sees `position_ids` restart), but it still computes attention
over the whole row: (sum of lengths)^2 work, and a (T x T) mask built for every forward. This
implementation, registered with transformers' `AttentionInterface` under the name
`alpacakit_packed`, finds the examples from `position_ids` (a restart at 0 starts one) and runs
PyTorch's SDPA on each example separately with its causal fast path: sum of (length^2) work and
no mask at all. A sliding-window layer (Gemma 3) gets a window mask only for an example longer
than its window.

It is only valid for packed rows without padding, so training switches a model to it while a
stage runs with packing and back afterwards (`packed_attention`). For any input that is not
such a row (a KV cache, several rows) it falls back to plain SDPA, which then has no mask:
hence the switch back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

NAME = "alpacakit_packed"
_registered = False


def _packed_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: Any = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    t = query.shape[2]
    plain = (
        position_ids is None
        or query.shape[0] != 1
        or key.shape[2] != t
        or position_ids.shape[-1] != t
        or attention_mask is not None
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, t]
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        mask = None
        n = e - s
        if sliding_window is not None and n > sliding_window:
            i = torch.arange(n, device=query.device)
            mask = ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < sliding_window))[None, None]
        out, _ = sdpa_attention_forward(
            module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], mask, dropout=dropout, scaling=scaling, **kwargs
        )
        outs.append(out)  # (1, n, heads, head_dim)
    return torch.cat(outs, dim=1), None


def register() -> None:
    """Make `alpacakit_packed` known to transformers (idempotent)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _packed_sdpa)
        _registered = True


def supported(model: Any) -> bool:
    """Only models whose attention dispatches through transformers' interface and that use SDPA now."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl == "sdpa" and getattr(model, "_supports_attention_backend", False)


@contextlib.contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """Within the block `model` (a transformers model) uses per-example attention; yields whether it does."""
    if not supported(model):
        yield False
        return
    register()
    before = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation(before)
