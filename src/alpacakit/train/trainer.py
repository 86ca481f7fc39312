"""transformers `Trainer` with our loss, plus the callbacks a run needs.

`AlpacaTrainer` only replaces `compute_loss` (see `loss.py`) and adds token throughput to the
logs (`StageTrainerMixin`, which TRL's trainer shares under `engine: trl`, see trl_engine.py);
the loop, optimizer, scheduler, gradient accumulation, checkpointing, resume and DDP are the
Trainer's own. The loss is a sum over supervised tokens divided by the number of
supervised tokens in the whole optimizer step (across accumulation steps and processes), so a
token weighs the same whatever batch it lands in; `loss_average: micro_batch` gives Stanford's
weighting instead (each micro-batch's mean, averaged).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from alpacakit.train.loss import (
    causal_lm,
    chunked_cross_entropy,
    hidden_states_instead_of_logits,
    supervised_positions,
)

CHECKPOINT_MARKER = "alpacakit_complete.json"


class Meter:
    """Tokens seen on this process: cumulative and since the last log line."""

    def __init__(self) -> None:
        self.tokens = 0
        self.supervised = 0
        self.examples = 0
        self.offset_tokens = 0  # tokens seen before a resume (from the log history)
        self._win_tokens = 0
        self._win_sup = 0
        self._win_start = time.perf_counter()

    def add(self, tokens: int, supervised: int, examples: int) -> None:
        self.tokens += tokens
        self.supervised += supervised
        self.examples += examples
        self._win_tokens += tokens
        self._win_sup += supervised

    def window(self) -> tuple[float, float]:
        """(tokens/s, supervised tokens/s) since the previous call."""
        now = time.perf_counter()
        dt = max(now - self._win_start, 1e-9)
        rates = self._win_tokens / dt, self._win_sup / dt
        self._win_tokens = self._win_sup = 0
        self._win_start = now
        return rates


def count_batch(meter: Meter, inputs: dict[str, Any], labels: Any) -> None:
    """Add one training micro-batch to `meter`, the same way for both engines: its tokens, its
    supervised tokens (a label at t+1 that is not -100: what the loss predicts) and its examples
    (one per position-id restart in a packed row, else one per row)."""
    supervised = int((labels[:, 1:] != -100).sum())
    examples = int((inputs["position_ids"] == 0).sum()) if "position_ids" in inputs else labels.shape[0]
    tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else labels.numel()
    meter.add(tokens, supervised, examples)


class StageTrainerMixin:
    """What a stage's trainer needs here whichever engine computes the loss (ours or TRL's).

    FSDP on CPU (accelerate leaves it off there, see distributed.py), the optimizer state of an
    FSDP resume, and token throughput in every log line, from `self.meter` (which the engine's
    `compute_loss` feeds through `count_batch`): the manifest's `supervised_tokens_per_s` is read from those lines, so
    both engines are measured by the same code.
    """

    meter: Meter
    args: Any
    accelerator: Any
    is_fsdp_enabled: bool

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator; on CPU under an FSDP launch, with FSDP turned on (see distributed.py)."""
        from alpacakit.train.distributed import enable_fsdp_on_cpu

        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
        if checkpoint and self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 1:
            from alpacakit.train.distributed import init_optimizer_state

            init_optimizer_state(self.optimizer)  # else accelerate loads nothing into it (see there)
        super()._load_optimizer_and_scheduler(checkpoint)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            tok_s, sup_s = self.meter.window()
            world = max(self.args.world_size, 1)
            logs["tokens_per_s"] = round(tok_s * world, 1)
            logs["supervised_tokens_per_s"] = round(sup_s * world, 1)
            logs["tokens_seen"] = self.meter.offset_tokens + self.meter.tokens * world
        super().log(logs, *args, **kwargs)


class AlpacaTrainer(StageTrainerMixin, Trainer):
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        loss_mode: str = "chunked",
        loss_chunk: int = 256,
        meter: Meter | None = None,
        loss_average: str = "tokens",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.loss_mode = loss_mode
        self.loss_average = loss_average
        self.loss_chunk = loss_chunk
        self.meter = meter or Meter()
        # Makes the Trainer count supervised tokens over the whole accumulated step
        # (`num_items_in_batch`), which we divide by.
        self.model_accepts_loss_kwargs = True

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        import torch

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        # With a KV cache, transformers skips packed-sequence detection and packed examples would
        # attend to each other; training never needs the cache anyway.
        inputs["use_cache"] = False
        keep, targets = supervised_positions(labels)
        n = targets.numel()
        if self.loss_mode == "full":
            # the model's own loss (what Stanford's train.py gets): logits at every position,
            # mean over supervised tokens; times n for the sum
            out = model(**inputs, labels=labels)
            total = out.loss * n
        elif self.loss_mode == "supervised":
            out = model(**inputs, logits_to_keep=keep)
            total = torch.nn.functional.cross_entropy(out.logits.float(), targets, reduction="sum")
        else:
            with hidden_states_instead_of_logits(model) as (weight, bias, softcap):
                out = model(**inputs, logits_to_keep=keep)
            total = chunked_cross_entropy(out.logits, weight, bias, targets, self.loss_chunk, softcap)
        if model.training and getattr(self, "loss_average", "tokens") == "micro_batch":
            # Stanford's train.py (transformers before 4.46): each micro-batch's own mean, divided by the
            # accumulation steps; DDP/FSDP average the gradients over processes
            loss = total / max(n, 1) / max(getattr(self, "current_gradient_accumulation_steps", 1) or 1, 1)
        elif model.training and num_items_in_batch is not None:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients over processes
        else:
            loss = total / max(n, 1)
        if model.training:
            count_batch(self.meter, inputs, labels)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _attention(self) -> Any:
        """Per-example attention while batches are packed rows (see attention.py)."""
        from contextlib import nullcontext

        from alpacakit.train.attention import packed_attention
        from alpacakit.train.collate import PackedCollator

        if isinstance(self.data_collator, PackedCollator):
            return packed_attention(causal_lm(self.model))
        return nullcontext()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with self._attention():
            return super().train(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self._attention():
            return super().evaluate(*args, **kwargs)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` that finished writing (has our marker); None if there is none.

    A process killed while writing a checkpoint leaves a folder without the marker, which
    a resume must skip rather than load half of.
    """
    if not folder.is_dir():
        return None
    done = []
    for d in folder.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
        except ValueError:
            continue
        if (d / CHECKPOINT_MARKER).exists():
            done.append((step, d))
    return max(done)[1] if done else None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once every process has written its part of it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _barrier()
        if state.is_world_process_zero:
            ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ck.is_dir():
                from alpacakit.io import atomic_write_json

                atomic_write_json(ck / CHECKPOINT_MARKER, {"step": state.global_step, "time": time.time()})


class ResumeCounters(TrainerCallback):
    """After a resume, continue the cumulative token count from the restored log history."""

    def __init__(self, meter: Meter):
        self.meter = meter

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for entry in reversed(state.log_history):
            if "tokens_seen" in entry:
                self.meter.offset_tokens = int(entry["tokens_seen"])
                break


class StepDelay(TrainerCallback):
    """Sleeps after each step when ALPACAKIT_TRAIN_STEP_DELAY_S is set.

    For tests and demos of interruption: a tiny model trains too fast to be killed mid-run
    on purpose. Unset, it does nothing.
    """

    def __init__(self) -> None:
        self.delay = float(os.environ.get("ALPACAKIT_TRAIN_STEP_DELAY_S", "0") or 0)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.delay > 0:
            time.sleep(self.delay)


class ProgressBar(TrainerCallback):
    """One bar per stage: steps, ETA (from tqdm), loss and tokens/s; eval losses as lines."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc=self.desc,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{logs.get('tokens_per_s', 0):.0f}", refresh=False)
        if "eval_loss" in logs:
            self.bar.write(f"{self.desc}: step {state.global_step} eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def trainable_digest(model: Any) -> str:
    """sha256 over the trainable parameters: equal on every DDP rank iff they stayed in sync."""
    h = hashlib.sha256()
    for name, p in sorted(causal_lm(model).named_parameters(), key=lambda x: x[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class RankReport(TrainerCallback):
    """Each process writes what it trained on (examples, tokens, steps, weight digest)."""

    def __init__(self, folder: Path, stage: str, meter: Meter):
        self.folder = folder
        self.stage = stage
        self.meter = meter
        self.initial_digest: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.initial_digest = trainable_digest(model) if model is not None else None

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        rank = int(os.environ.get("RANK", "0"))
        self.folder.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": rank,
            "world_size": args.world_size,
            "stage": self.stage,
            "steps": state.global_step,
            "examples": self.meter.examples,
            "tokens": self.meter.tokens,
            "supervised_tokens": self.meter.supervised,
            "initial_digest": self.initial_digest,
            "trainable_digest": trainable_digest(model) if model is not None else None,
        }
        (self.folder / f"{self.stage}-rank{rank}.json").write_text(json.dumps(report, indent=2) + "\n")
