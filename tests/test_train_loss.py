"""The fast loss and padding-free packing compute exactly what the plain way computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from alpacakit.train.collate import PackedCollator, PaddedCollator  # noqa: E402
from alpacakit.train.loss import (  # noqa: E402
    chunked_cross_entropy,
    hidden_states_instead_of_logits,
    supervised_positions,
)
from alpacakit.train.tiny import make_tiny_model, make_tiny_tokenizer  # noqa: E402


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_cross_entropy_equals_the_plain_one_with_gradients(softcap, with_bias):
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)

    logits = torch.nn.functional.linear(hidden, weight, bias)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [hidden, weight] + ([bias] if with_bias else []))

    ours = chunked_cross_entropy(hidden, weight, bias, targets, chunk=8, softcap=softcap)
    our_grads = torch.autograd.grad(ours * 0.5, [hidden, weight] + ([bias] if with_bias else []))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_chunked_cross_entropy_with_a_frozen_head_only_returns_the_hidden_gradient():
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4)  # frozen, as in LoRA
    loss = chunked_cross_entropy(hidden, weight, None, torch.tensor([1, 2, 3, 4, 5]), chunk=2)
    loss.backward()
    assert hidden.grad is not None and weight.grad is None


def _rows(tok, texts):
    out = []
    for prompt, answer in texts:
        p = tok(prompt)["input_ids"]
        ids = tok(prompt + answer)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": ids, "labels": [-100] * len(p) + ids[len(p) :]})
    return out


TEXTS = [
    ("Name a colour. ", "Red is a colour."),
    ("What is the capital of Australia? ", "Canberra."),
    ("Count the vowels in banana. ", "Three."),
]


@pytest.mark.parametrize("per_example_attention", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_examples_do_not_attend_to_each_other(arch, per_example_attention):
    """Logits of a packed row equal the logits of each example run alone, with transformers' block-diagonal
    mask and with our per-example attention (the tiny Gemma 3 has a sliding window of 4, shorter than the examples)."""
    from alpacakit.train.attention import packed_attention

    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, arch=arch).eval()
    rows = _rows(tok, TEXTS)
    batch = PackedCollator()(rows)
    with torch.no_grad():
        if per_example_attention:
            with packed_attention(model) as on:
                assert on and model.config._attn_implementation == "alpacakit_packed"
                packed = model(
                    input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
                ).logits[0]
            assert model.config._attn_implementation == "sdpa"
        else:
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for r in rows:
            n = len(r["input_ids"])
            alone = model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


def _loss(model, batch, mode):
    from alpacakit.train.trainer import AlpacaTrainer

    # compute_loss without a Trainer: bind the method to a minimal stand-in
    class Stub:
        loss_mode = mode
        loss_chunk = 7

        class args:
            average_tokens_across_devices = False
            world_size = 1

        class meter:
            @staticmethod
            def add(*a):
                pass

    n = int((batch["labels"][:, 1:] != -100).sum())
    return AlpacaTrainer.compute_loss(Stub, model, dict(batch), num_items_in_batch=n)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_all_loss_modes_and_batchings_give_the_same_loss_and_gradients(arch):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, arch=arch).train()
    model.config.use_cache = False
    for m in model.modules():  # no dropout in the tiny models, but be explicit
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    from contextlib import nullcontext

    from alpacakit.train.attention import packed_attention

    rows = _rows(tok, TEXTS)
    results = []
    for name, collator, attention in (
        ("padded", PaddedCollator(tok.pad_token_id), nullcontext),
        ("packed", PackedCollator(), nullcontext),
        ("packed+per-example-attention", PackedCollator(), lambda: packed_attention(model)),
    ):
        batch = collator(rows)
        for mode in ("full", "supervised", "chunked"):
            model.zero_grad()
            with attention():
                loss = _loss(model, batch, mode)
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((f"{name}/{mode}", loss.detach(), grads))
    ref_name, ref_loss, ref_grads = results[0]
    for name, loss, grads in results[1:]:
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=f"{name} vs {ref_name}")
        torch.testing.assert_close(grads, ref_grads, rtol=1e-4, atol=1e-6, msg=f"{name} vs {ref_name}")


def test_the_head_is_restored_after_the_hidden_state_pass():
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    head = model.get_output_embeddings()
    with hidden_states_instead_of_logits(model):
        out = model(input_ids=torch.tensor([[1, 5, 6]]))
        assert out.logits.shape[-1] == model.config.hidden_size
    assert model.get_output_embeddings() is head
    assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape[-1] == model.config.vocab_size


def test_supervised_positions_pick_the_positions_that_predict_labels():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    keep, targets = supervised_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    assert targets.tolist() == [7, 8, 5]
