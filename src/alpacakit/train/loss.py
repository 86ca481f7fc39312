"""The loss, computed only where it counts.

Gemma 3's LM head projects onto 262,144 tokens: the fp32 logits of one 4 x 256 batch are 1 GiB,
and most of those positions are prompt or padding, whose labels are -100 anyway. Here:

1. the model runs with its LM head swapped for an identity, and `logits_to_keep` (a boolean
   mask, supported by transformers' causal LMs) keeps only the hidden states of positions
   whose next token is supervised;
2. `ChunkedLinearCrossEntropy` projects those hidden states onto the vocabulary a chunk at a
   time and computes the cross-entropy *and its gradient* in the same pass, so at most one
   chunk of logits exists at any moment and backward costs one matmul per chunk instead of
   recomputing the logits.

The result (a summed loss) equals `F.cross_entropy(lm_head(h), targets, reduction='sum')`
to float precision, gradients included (tests/test_train_loss.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _function() -> Any:
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, chunk: int, softcap: float | None
        ) -> Any:
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            if weight.dtype != hidden.dtype:  # e.g. a bf16 head with fp32 hidden states
                hidden = hidden.to(weight.dtype)
            need_b = bias is not None and ctx.needs_input_grad[2]
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = torch.nn.functional.linear(h, weight, bias).float()
                if softcap:
                    th = torch.tanh(logits / softcap)
                    logits = th * softcap
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if need_h or need_w or need_b:
                    # d(loss)/d(logits) = softmax - onehot, computed in place on the logits buffer
                    g = logits.sub_(lse[:, None]).exp_()
                    g[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                    if softcap:
                        g.mul_(1.0 - th * th)
                    g = g.to(hidden.dtype)
                    if need_h:
                        grad_h[start : start + chunk] = g @ weight
                    if need_w:
                        grad_w += (g.t() @ h).float()
                    if need_b:
                        grad_b += g.float().sum(0)
            ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
            ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            saved = list(ctx.saved_tensors)
            has_h, has_w, has_b = ctx.has
            gh = None
            if has_h:
                gh = saved.pop(0)
                gh = gh * grad_out.to(gh.dtype)
            gw = (saved.pop(0) * grad_out).to(ctx.dtypes[0]) if has_w else None
            gb = (saved.pop(0) * grad_out).to(ctx.dtypes[1]) if has_b else None
            return gh, gw, gb, None, None, None

    return ChunkedLinearCrossEntropy


_FN: Any = None


def chunked_cross_entropy(
    hidden: Any, weight: Any, bias: Any, targets: Any, chunk: int = 256, softcap: float | None = None
) -> Any:
    """Sum over rows of CE(softcap(hidden @ weight.T + bias), targets), one chunk of rows at a time."""
    global _FN
    if _FN is None:
        _FN = _function()
    return _FN.apply(hidden, weight, bias, targets, chunk, softcap)


def causal_lm(model: Any) -> Any:
    """The transformers CausalLM inside DDP / PEFT wrappers."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # DistributedDataParallel
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # PeftModel
    if hasattr(model, "module") and not hasattr(model, "lm_head"):
        model = model.module
    return model


@contextlib.contextmanager
def hidden_states_instead_of_logits(model: Any) -> Iterator[tuple[Any, Any, float | None]]:
    """Within the block the model's forward returns final hidden states in place of logits.

    Yields (weight, bias, softcap) of the real LM head for `chunked_cross_entropy`. The head
    module is put back on exit, so saving and generation never see the swap.
    """
    import torch

    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    holder = lm.config  # Gemma 2 caps its logits with tanh; the chunked loss does it instead
    softcap = getattr(holder, "final_logit_softcapping", None)
    lm.set_output_embeddings(torch.nn.Identity())
    if softcap is not None:
        holder.final_logit_softcapping = None
    try:
        yield head.weight, getattr(head, "bias", None), softcap
    finally:
        lm.set_output_embeddings(head)
        if softcap is not None:
            holder.final_logit_softcapping = softcap


def supervised_positions(labels: Any) -> tuple[Any, Any]:
    """(keep, targets): keep[b, t] is True where labels[b, t+1] is supervised; targets in the
    same row-major order as transformers flattens `hidden[keep]`."""
    import torch

    shift = labels[:, 1:]
    mask = shift != -100
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = mask
    return keep, shift[mask]
