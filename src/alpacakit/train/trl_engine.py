"""`engine: trl`: a stage trained by TRL's SFTTrainer instead of ours, on the same tokens.

Why: on a GPU, TRL's best path is the peer our trainer has to beat: padding-free packing with
flash-attention's varlen kernels, Liger's layer kernels, and TRL's fused LM head (log-probs
only where the next token is supervised, in tiles). `make gpu-check` measures both, per method;
where ours loses on your GPU, `--engine trl` (`train.engine: trl`) trains through TRL's path and
everything around the steps stays ours:

- the data: our tokenization and Stanford's label rule. TRL gets the rows pre-tokenized, with a
  `completion_mask` read off our labels and `completion_only_loss=True`, so it supervises exactly
  the response tokens + EOS that ours does (tests/test_train_trl.py compares them);
- the TrainingArguments (lr, schedule, epochs/steps, precision, accumulation, seed, checkpoint
  folder and cadence): `SFTConfig` subclasses them and is built from the same dict as ours;
- the callbacks (checkpoint marker, progress bar, TensorBoard, per-rank report), `--resume`,
  `save_weights` and the manifest, whose `supervised_tokens_per_s` is counted by the same code
  for both engines (`StageTrainerMixin`, `count_batch`).

What is TRL's: a micro-batch is one best-fit-decreasing bin of `batch_size x max_length` tokens
(`packing_strategy="bfd"`, flattened padding-free), so it holds as many examples as fit rather
than `batch_size` of them: with short examples an epoch has fewer, larger steps than ours.
Attention is flash-attention 2 where flash-attn imports on CUDA, else SDPA (transformers'
block-diagonal mask over the packed row); Liger's kernels run where liger-kernel imports on
CUDA. What TRL's path cannot run the way a config asks is refused by `check`, before any model
is loaded.

`trl` is imported inside the functions only: `alpacakit --help` must not load it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from alpacakit.errors import ConfigError

if TYPE_CHECKING:
    from alpacakit.train.config import ResolvedStage, TrainConfig

FLASH = "flash_attention_2"


def check(cfg: TrainConfig) -> None:
    """Refuse the settings TRL's path cannot honour, all in one error, each with its fix."""
    conflicts = [  # (setting, why TRL's path cannot, the value it can run)
        (not cfg.packing, "packing: false", "pad-to-longest batches are ours only; TRL's path packs", "packing: true"),
        (cfg.loss == "full", "loss: full", "TRL's fused head never builds every position's logits", "loss: chunked"),
        (
            cfg.loss_average == "micro_batch",
            "loss_average: micro_batch",
            "TRL averages over the step's supervised tokens",
            "loss_average: tokens",
        ),
    ]
    found = [c[1:] for c in conflicts if c[0]]
    if found:
        what = "; ".join(f"{setting} ({why})" for setting, why, _ in found)
        fix = ", ".join(value for _, _, value in found)
        if cfg.preset == "alpaca":
            what += " (preset alpaca sets them: Stanford's exact recipe, which only engine alpacakit runs)"
            fix += " (--preset alpaca-fast is that recipe)"
        raise ConfigError(f"engine: trl cannot run {what}", hint=f"set {fix}, or keep engine: alpacakit")
    if find_spec("trl") is None:
        raise ConfigError("engine: trl needs the trl package", hint='pip install "alpacakit[train]"')


def dataset(rows: list[dict[str, list[int]]]) -> Any:
    """Our tokenized rows as TRL's pre-tokenized prompt-completion data: `input_ids` and a
    `completion_mask` that is 1 exactly where our labels supervise a token. TRL turns it back into
    labels (`completion_only_loss=True`), so both engines train on the same targets."""
    from datasets import Dataset

    out = []
    for r in rows:
        # our labels are the input ids where supervised (Stanford's rule), so a mask says it all
        if any(lab not in (-100, tid) for tid, lab in zip(r["input_ids"], r["labels"])):
            raise ValueError("labels that differ from input_ids cannot be given to TRL as a completion mask")
        out.append({"input_ids": r["input_ids"], "completion_mask": [int(lab != -100) for lab in r["labels"]]})
    return Dataset.from_list(out)


@contextlib.contextmanager
def attention_implementation(model: Any, name: str) -> Iterator[None]:
    """Within the block `model` (a transformers model) attends with `name`; restored afterwards, so
    a saved config never names a kernel the machine that loads it may lack."""
    before = model.config._attn_implementation
    if before != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if before != name:
            model.set_attn_implementation(before)


def choose_attention(model: Any, cuda: bool) -> str:
    """flash-attention 2 (varlen kernels on the packed row) where flash-attn imports on CUDA and
    this model takes it; else SDPA, with a note saying why."""
    if not (cuda and find_spec("flash_attn") is not None):
        return "sdpa"
    try:
        with attention_implementation(model, FLASH):
            pass
    except (ImportError, ValueError) as e:  # e.g. a flash-attn build for another torch
        print(f"note: {FLASH} refused ({str(e).splitlines()[0]}); TRL's path runs with sdpa", file=sys.stderr)
        return "sdpa"
    return FLASH


@functools.cache
def trainer_class() -> type:
    """`SFTTrainer` that feeds our meter and attends with the chosen kernel while it trains
    (defined on first use: importing trl takes seconds)."""
    from trl import SFTTrainer

    from alpacakit.train.loss import causal_lm
    from alpacakit.train.trainer import StageTrainerMixin, count_batch

    class MeteredSFTTrainer(StageTrainerMixin, SFTTrainer):
        def __init__(self, *args: Any, meter: Any, attn_implementation: str, **kwargs: Any):
            self.meter = meter
            self.attn_implementation = attn_implementation
            super().__init__(*args, **kwargs)

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if model.training:
                count_batch(self.meter, inputs, inputs["labels"])
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        def train(self, *args: Any, **kwargs: Any) -> Any:
            with attention_implementation(causal_lm(self.model), self.attn_implementation):
                return super().train(*args, **kwargs)

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            with attention_implementation(causal_lm(self.model), self.attn_implementation):
                return super().evaluate(*args, **kwargs)

    return MeteredSFTTrainer


def sft_config(kwargs: dict[str, Any], st: ResolvedStage, liger: bool, bin_tokens: int | None = None) -> Any:
    """Our stage's TrainingArguments (`kwargs`) plus TRL's best path: one packed bin of
    batch_size x max_length tokens per micro-batch (or `bin_tokens`: benchmarks/train_throughput.py
    matches ours' mean tokens per step with it), padding-free, completion-only loss."""
    from trl import SFTConfig

    return SFTConfig(
        **{
            **kwargs,
            "per_device_train_batch_size": 1,
            "per_device_eval_batch_size": 1,
            "max_length": bin_tokens or st.batch_size * st.max_length,
            "packing": True,
            "packing_strategy": "bfd",
            "padding_free": True,
            "completion_only_loss": True,
            "use_liger_kernel": liger,
        }
    )


def build_trainer(
    model: Any,
    tok: Any,
    st: ResolvedStage,
    rows: list,
    vrows: list,
    kwargs: dict[str, Any],
    callbacks: list,
    meter: Any,
    bin_tokens: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """TRL's trainer for one stage, and the settings it runs with (for the stage's manifest entry).
    `bin_tokens` replaces the batch_size x max_length bin (see `sft_config`)."""
    import copy
    import warnings
    from importlib.metadata import version

    import torch
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    from alpacakit.train.loss import causal_lm

    cuda = torch.cuda.is_available()
    liger = cuda and find_spec("liger_kernel") is not None
    attn = choose_attention(causal_lm(model), cuda)
    bars = is_progress_bar_enabled()
    disable_progress_bar()  # TRL's packing of a few thousand rows needs no progress bar of its own
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*use_liger_kernel.*", category=FutureWarning)
            trainer = trainer_class()(
                model=model,
                args=sft_config(kwargs, st, liger, bin_tokens),
                train_dataset=dataset(rows),
                eval_dataset=dataset(vrows) if vrows else None,
                processing_class=copy.deepcopy(tok),  # TRL may set a pad token: not on the tokenizer we save
                callbacks=callbacks,
                meter=meter,
                attn_implementation=attn,
            )
    finally:
        if bars:
            enable_progress_bar()
    settings = {
        "trl": version("trl"),
        "attn_implementation": attn,
        "liger_kernel": liger,
        "loss": "trl_fused_lm_head",
        "packing_strategy": "bfd",
        "padding_free": True,
        "bin_tokens": trainer.args.max_length,
    }
    return trainer, settings
