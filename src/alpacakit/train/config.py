"""The `train` section of `alpacakit.yaml`: what to fine-tune, on what, and how.

Presets are YAML files in `alpacakit/train/presets/`. `preset: NAME` in the section starts
from that file; every key written next to it (and every `--set train.KEY=...`) wins over the
preset. Multi-stage training is a list of `stages`, each naming its data and any
hyperparameters that differ from the section's; stage N starts from stage N-1's weights.

No torch here: this module is imported by `alpacakit --help` and `alpacakit config show`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, model_validator

from alpacakit.errors import ConfigError
from alpacakit.settings import (
    Origins,
    Section,
    build,
    deep_merge,
    drop_none,
    flag_origins,
    override_origins,
    parse_overrides,
    read_yaml,
)

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig


def _presets_dir() -> Path:
    return Path(str(resources.files("alpacakit.train").joinpath("presets")))


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the `description` key of the YAML file)."""
    out = {}
    for p in sorted(_presets_dir().glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        out[p.stem] = str(data.get("description", "")).strip()
    return out


def train_prompt_formats() -> list[str]:
    """The prompt formats shipped (`alpacakit/templates/*.json`): alpaca, alpaca-lora,
    alpaca-stanford, chat. Every verb loads them by name (`PromptFormat.load`)."""
    from alpacakit.prompting import list_formats

    return list_formats()


def load_preset(name: str) -> dict[str, Any]:
    """The settings of preset `name` (without its description)."""
    path = _presets_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown train preset {name!r}", hint=f"available presets: {', '.join(list_presets())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.pop("description", None)
    return data


class LoraSettings(Section):
    """PEFT LoRA adapter settings (also used by QLoRA)."""

    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names to adapt (Alpaca-LoRA: q_proj, v_proj); ['all-linear'] adapts every linear layer.",
    )


# Hyperparameters a stage may override (everything else is shared by all stages).
STAGE_KEYS = (
    "data",
    "val_data",
    "val_size",
    "max_examples",
    "epochs",
    "max_steps",
    "lr",
    "scheduler",
    "warmup_ratio",
    "weight_decay",
    "batch_size",
    "grad_accum",
    "effective_batch",
    "max_length",
)


class StageConfig(Section):
    """One stage of a multi-stage run. Unset fields take the train section's value."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Stage name (folder-safe).")
    data: str | None = Field(None, description="Training data of this stage.")
    val_data: str | None = None
    val_size: float | None = None
    max_examples: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    scheduler: str | None = None
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    effective_batch: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, ge=8)


class TrainConfig(Section):
    """Fine-tuning: a base model learns to follow instructions from the generated data."""

    preset: str | None = Field(
        None, description="Start from a preset (alpacakit train --list-presets); keys set here win."
    )
    base: str = Field(
        "gemma-3-270m",
        description="Base model: an embedded name (gemma-3-270m), a .gguf file (dequantised), a local HF model folder, "
        "or a Hugging Face model id (needs hub access).",
    )
    data: str | None = Field(
        None,
        description="Training data: generate output (JSONL), Alpaca JSON, an HF datasets "
        "folder, or ShareGPT-style conversations.",
    )
    val_data: str | None = Field(None, description="Validation data file (same formats). Default: split off val_size.")
    val_size: float = Field(0.0, ge=0, description="Validation split taken from the data: a fraction (< 1) or a count.")
    max_examples: int | None = Field(None, ge=1, description="Use only the first N training examples.")
    prompt_format: str = Field(
        "alpaca",
        description="Prompt format: alpaca, chat (the base model's chat template), "
        "alpaca-stanford (Stanford's train.py, byte for byte), alpaca-lora (Alpaca-LoRA's "
        "template), or a path to a prompt format JSON. Saved into the model folder.",
    )
    method: Literal["lora", "full", "qlora", "lora-8bit"] = Field(
        "lora",
        description="full fine-tune, LoRA (PEFT), QLoRA (4-bit NF4 base, CUDA) or LoRA on an 8-bit base "
        "(bitsandbytes int8, CUDA).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    engine: Literal["alpacakit", "trl"] = Field(
        "alpacakit",
        description="Which trainer runs the steps. alpacakit: ours (per-example packed attention, chunked loss at "
        "response positions). trl: TRL's SFTTrainer at its best GPU settings (best-fit packing of batch_size x "
        "max_length tokens per micro-batch, padding-free, flash-attention 2 and Liger kernels where installed on "
        "CUDA), on the same tokenized examples and labels. `make gpu-check` prints which is faster per method on "
        "your GPU. trl refuses packing: false, loss: full and loss_average: micro_batch (ours only).",
    )

    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: str = Field("cosine", description="LR schedule (transformers names: cosine, linear, constant, ...).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up the LR.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    batch_size: int = Field(4, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int | None = Field(
        None, ge=1, description="Micro-batches per optimizer step (default: from effective_batch)."
    )
    effective_batch: int | None = Field(
        None,
        ge=1,
        description="Examples per optimizer step across all devices "
        "(batch_size x grad_accum x processes). Stanford: 128.",
    )
    max_length: int = Field(
        512, ge=8, description="Truncate each example (prompt + response + EOS) to this many tokens."
    )

    packing: bool = Field(
        True,
        description="Padding-free packing: a micro-batch is one row; examples never attend to "
        "each other (position ids restart per example).",
    )
    loss: Literal["chunked", "supervised", "full"] = Field(
        "chunked",
        description="chunked: logits only at response positions, in chunks (fast, low memory); supervised: logits only "
        "at response positions; full: logits everywhere (what Stanford's train.py does).",
    )
    loss_average: Literal["tokens", "micro_batch"] = Field(
        "tokens",
        description="tokens: every supervised token of an optimizer step weighs the same (sum / supervised tokens of "
        "the whole step); micro_batch: mean over each micro-batch's supervised tokens, averaged over micro-batches "
        "and processes (Stanford's train.py with the transformers of its day).",
    )
    loss_chunk: int = Field(256, ge=1, description="Positions per chunk of the LM head in the chunked loss.")
    group_by_length: bool = Field(False, description="Without packing: batch examples of similar length.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16-mixed"] = Field(
        "auto",
        description="auto: bf16 on a GPU that has it, else fp32. bf16-mixed: fp32 weights and optimizer, bf16 "
        "compute (autocast; under FSDP its mixed precision), as Stanford's --bf16 True.",
    )
    optim: str | None = Field(
        None,
        description="Optimizer by its transformers name (default adamw_torch); e.g. "
        "paged_adamw_32bit (QLoRA; bitsandbytes, CUDA).",
    )
    accelerate_config: str | None = Field(
        None,
        description="accelerate config used by --launcher accelerate when "
        "--accelerate-config is not given: ddp, fsdp, deepspeed-zero3 or a path.",
    )
    seed: int = Field(42, description="Seed for initialisation, data order and dropout.")

    save_steps: int = Field(50, ge=1, description="Save a resumable checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept per stage.")
    keep_checkpoints: bool = Field(False, description="Keep checkpoints/ in the finished model folder.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps (default: at the end of each epoch)."
    )
    logging_steps: int = Field(1, ge=1, description="Log loss, LR and tokens/s every N steps.")
    output_dir: str = Field("model", description="The model folder to write (atomically, via OUTPUT_DIR.partial/).")
    stages: list[StageConfig] = Field(
        default_factory=list, description="Multi-stage training: run in order, each from the previous stage's weights."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            data = deep_merge(load_preset(str(data["preset"])), data)
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, found {names}")
        return self

    def stage_list(self) -> list[ResolvedStage]:
        """The stages to run, each with every hyperparameter resolved (one stage if none are listed)."""
        base = {k: getattr(self, k) for k in STAGE_KEYS}
        if not self.stages:
            return [ResolvedStage(name="main", index=0, **base)]
        out = []
        for i, s in enumerate(self.stages):
            vals = dict(base)
            vals.update({k: v for k, v in s.model_dump().items() if k in STAGE_KEYS and v is not None})
            out.append(ResolvedStage(name=s.name, index=i, **vals))
        return out


class ResolvedStage(Section):
    """A stage with every field filled in (see TrainConfig.stage_list)."""

    name: str
    index: int
    data: str | None
    val_data: str | None
    val_size: float
    max_examples: int | None
    epochs: float
    max_steps: int | None
    lr: float
    scheduler: str
    warmup_ratio: float
    weight_decay: float
    batch_size: int
    grad_accum: int | None
    effective_batch: int | None
    max_length: int

    @property
    def dirname(self) -> str:
        return f"{self.index + 1:02d}-{self.name}"

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step, from grad_accum or effective_batch."""
        if self.grad_accum is not None:
            return self.grad_accum
        if self.effective_batch is None:
            return 1
        per_step = self.batch_size * world_size
        if self.effective_batch % per_step:
            raise ConfigError(
                f"stage {self.name!r}: effective_batch {self.effective_batch} is not a multiple of batch_size x processes "
                f"= {self.batch_size} x {world_size} = {per_step}",
                hint=f"set effective_batch to a multiple of {per_step}, or set grad_accum directly",
            )
        return self.effective_batch // per_step


def load_train_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    flag_names: dict[str, str] | None = None,
) -> AlpacakitConfig:
    """The whole config for `alpacakit train`: defaults <- YAML <- --set <- named flags.

    The YAML may be a full `alpacakit.yaml` (a `train:` section among others) or just the
    train section's keys; `--set lr=1e-4` is read as `--set train.lr=1e-4`.
    """
    from alpacakit.config import AlpacakitConfig  # assembles this section with the others

    sections = set(AlpacakitConfig.model_fields)
    data, origins = read_yaml(path) if path else ({}, Origins())
    if data and not set(data) <= sections:
        unknown_top = set(data) - sections
        if unknown_top <= set(TrainConfig.model_fields):
            data, origins = {"train": data}, origins.nest("train")  # a bare train section
        else:
            raise ConfigError(
                f"{path}: unknown keys {sorted(unknown_top - set(TrainConfig.model_fields))}",
                hint=f"a config file has sections ({', '.join(sorted(sections))}) or only train keys",
            )
    fixed = [o if o.split("=", 1)[0].split(".", 1)[0] in sections else f"train.{o}" for o in (overrides or [])]
    over = parse_overrides(fixed)
    data = deep_merge(data, over)
    origins.cover(over, override_origins(overrides, [f.split("=", 1)[0].strip() for f in fixed]))
    if extra:
        flags = drop_none(extra)
        data = deep_merge(data, flags)
        origins.cover(flags, flag_origins(flags, flag_names) if flag_names else None)
    return build(AlpacakitConfig, data, str(path) if path else "settings", origins)
