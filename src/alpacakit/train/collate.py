"""Batching: padding-free packing (ours) or pad-to-longest (Stanford's train.py).

Packing puts a micro-batch's examples end to end in one row and restarts `position_ids` at 0
for each example. With no attention mask, transformers reads the restarts as sequence
boundaries and builds a block-diagonal causal mask, so an example never attends to another one
(tests/test_train_loss.py checks the logits equal those of the examples run one by one). No
position is padding, so no compute is spent on pad tokens.

Labels are masked by position (the first token of each example, prompts, padding), never by
comparing token ids with the pad id: with pad == eos that comparison would also mask the EOS
the model must learn to emit.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


class PackedCollator:
    """[{'input_ids', 'labels'}, ...] -> one row: input_ids, labels, position_ids (1, sum of lengths)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            lab = list(f["labels"])
            lab[0] = IGNORE  # never predicted from the previous example's last token
            labels.extend(lab)
            pos.extend(range(n))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
        }


class PaddedCollator:
    """Pad each batch to its longest example (right padding, labels -100 on padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
