"""The training recipe, top to bottom: base -> (LoRA) -> stages -> model folder.

    run = train(cfg, output_dir="runs/x/model", resume=False)

1. check everything that can be checked before loading a model (output folder, data files,
   prompt format, QLoRA on CPU, batch arithmetic);
2. resolve and load the base (a GGUF is dequantised once and cached), wrap it with LoRA;
3. for each stage: read its data, tokenize with Stanford's label rule, train with the
   transformers Trainer (ours, or TRL's SFTTrainer on the same tokens with `engine: trl`, see
   trl_engine.py; checkpoints every `save_steps`), save the stage's weights and a `done.json`;
   the next stage starts from these weights;
4. write adapter/ (or merged/ for a full fine-tune), tokenizer, prompt_format.json,
   manifest.json, logs/ (TensorBoard) and loss.png into OUT.partial/, then rename it to OUT.

Everything is written under `OUT.partial/` until the last step, so a folder named OUT is
always complete. `resume=True` continues an interrupted OUT.partial/: finished stages are
loaded from their saved weights and the running stage from its newest complete checkpoint
(same data order, optimizer, scheduler and RNG state, so the result equals an uninterrupted run).

Under `accelerate launch` / torchrun every process runs this function; the Trainer does DDP,
FSDP or DeepSpeed. Every process enters the save of a stage's weights (under FSDP / ZeRO-3 the
weights are gathered from all of them, see distributed.py); only process 0 writes files outside
the Trainer's own checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacakit.errors import AlpacakitError, ConfigError, DataError
from alpacakit.manifest import validated
from alpacakit.prompting import PromptFormat
from alpacakit.train.config import ResolvedStage, TrainConfig
from alpacakit.train.outputs import partial_dir

RUN_CONFIG = "run_config.json"
STAGE_DONE = "done.json"


@dataclass
class TrainResult:
    output_dir: Path
    manifest: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Dist:
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist() -> _Dist:
    return _Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def _barrier(dist: _Dist) -> None:
    if dist.world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def _log(msg: str, dist: _Dist) -> None:
    if dist.main:
        print(msg, flush=True)


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d.pop("output_dir", None)
    d.pop("preset", None)  # already applied: the resolved values are what matter
    d["data_sha256"] = _data_hashes(cfg)
    return d


def _stage_started(sdir: Path) -> bool:
    """Whether a stage has trained at all: it finished, or saved a checkpoint."""
    return (sdir / STAGE_DONE).exists() or any(sdir.glob("checkpoint-*"))


def _data_hashes(cfg: TrainConfig) -> dict[str, str]:
    """sha256 of every training and validation file: a resumed run must train on the same bytes."""
    from alpacakit.io import sha256_file

    out = {}
    for st in cfg.stage_list():
        for p in (st.data, st.val_data):
            if p and Path(p).is_file():
                out[str(p)] = sha256_file(p)
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


# ---------------------------------------------------------------------------- checks


def preflight(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool) -> list[ResolvedStage]:
    """Every check that needs no model: fail in a second, not after loading weights."""
    partial = partial_dir(out)
    if out.exists() and not overwrite:
        raise ConfigError(
            f"{out} already exists (a finished model folder)",
            hint="pass --overwrite to replace it, or choose another --out",
        )
    if partial.exists() and not resume:
        raise ConfigError(
            f"{partial} holds an interrupted training run",
            hint="rerun with --resume to continue it, or delete that folder to start over",
        )
    if resume and (partial / RUN_CONFIG).exists():
        saved = json.loads((partial / RUN_CONFIG).read_text(encoding="utf-8"))
        now = _config_dict(cfg)
        saved_hashes, now_hashes = saved.pop("data_sha256", None), now.pop("data_sha256")
        # The data of a stage that has started training must be the same bytes (a stage that
        # failed before its first step, e.g. on a broken line, may have had its file fixed).
        started = {
            str(p)
            for st in cfg.stage_list()
            if _stage_started(partial / "stages" / st.dirname)
            for p in (st.data, st.val_data)
            if p
        }
        for path, sha in (saved_hashes or {}).items():  # runs saved before hashes were kept: not checked
            if path in started and now_hashes.get(path) not in (None, sha):
                raise ConfigError(
                    f"--resume: the training data {path} changed since the interrupted run "
                    f"(sha256 {sha[:12]}... then, {now_hashes[path][:12]}... now)",
                    hint="resume with the data it started on, or delete the .partial folder to start over",
                )
        changed = _diff(saved, now)
        if changed:
            raise ConfigError(
                f"--resume: the config differs from the interrupted run's ({partial / RUN_CONFIG}):\n  "
                + "\n  ".join(changed[:20]),
                hint="resume with the same settings, or delete the .partial folder to start a new run",
            )
    if cfg.engine == "trl":
        from alpacakit.train.trl_engine import check

        check(cfg)  # what TRL's path cannot run as asked: refused before data or a model is loaded
    stages = cfg.stage_list()
    for st in stages:
        if not st.data:
            raise ConfigError(
                f"stage {st.name!r}: no training data" if cfg.stages else "train.data is not set",
                hint="set train.data (or --data) to a JSONL / Alpaca JSON / ShareGPT file or an HF datasets folder",
            )
        for p in (st.data, st.val_data):
            if p and not Path(p).exists():
                raise DataError(f"{p}: training data not found (stage {st.name!r})")
        st.accumulation(_dist().world)  # raises on impossible batch arithmetic
    from alpacakit.train.base_model import check_optimizer, int8_kwargs, qlora_kwargs, torch_dtype

    if cfg.method == "qlora":
        qlora_kwargs(torch_dtype(cfg.precision, cfg.method))  # raises a clear error without CUDA / bitsandbytes
    if cfg.method == "lora-8bit":
        int8_kwargs()
    check_optimizer(cfg.optim)
    load_prompt_format(cfg.prompt_format)
    return stages


def load_prompt_format(ref: str) -> PromptFormat:
    """A shipped format (alpaca, alpaca-lora, alpaca-stanford, chat) or a file."""
    from alpacakit.train.config import train_prompt_formats

    try:
        return PromptFormat.load(ref)
    except ConfigError as e:
        if e.hint:
            e.hint += f" (or {', '.join(train_prompt_formats())})"
        raise


# ---------------------------------------------------------------------------- model


def _lora_targets_error(model: Any, targets: list[str], err: Exception) -> ConfigError:
    import torch

    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return ConfigError(
        f"lora.target_modules {targets} do not match this model's layers ({err})",
        hint=f"linear layers in this model: {', '.join(names)} (or use ['all-linear'])",
    )


def _wrap_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    from alpacakit.peft_quiet import peft_quiet

    if cfg.method in ("qlora", "lora-8bit"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    targets = cfg.lora.target_modules
    lc = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        with peft_quiet():
            return get_peft_model(model, lc)
    except ValueError as e:
        raise _lora_targets_error(model, targets, e) from None


def _load_stage_weights(model: Any, cfg: TrainConfig, weights: Path, base_path: str) -> Any:
    """Put a finished stage's weights into `model` (LoRA) or load them (full)."""
    if cfg.method == "full":
        from transformers import AutoModelForCausalLM

        from alpacakit.train.base_model import torch_dtype

        return AutoModelForCausalLM.from_pretrained(weights, dtype=torch_dtype(cfg.precision, cfg.method))
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    set_peft_model_state_dict(model, load_peft_weights(str(weights)))
    return model


# ---------------------------------------------------------------------------- data


class _ListDataset:
    """A list of tokenized examples as a map-style dataset (no pyarrow round trip)."""

    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def _stage_data(st: ResolvedStage, cfg: TrainConfig, fmt: PromptFormat, tok: Any) -> tuple[list, list, dict]:
    from alpacakit.train.data import DataStats, load_samples, split_validation, tokenize_samples

    stats = DataStats()
    samples = load_samples(st.data, stats, st.max_examples)
    if st.val_data:
        vstats = DataStats()
        val = load_samples(st.val_data, vstats)
        train_s = samples
    else:
        train_s, val = split_validation(samples, st.val_size, cfg.seed)
        vstats = None
    rows = tokenize_samples(train_s, fmt, tok, st.max_length, stats)
    if not rows:
        raise DataError(
            f"{st.data}: none of the {len(train_s)} examples has a response token within max_length {st.max_length}",
            hint="raise max_length, or check that the records have non-empty outputs",
        )
    vrows = tokenize_samples(val, fmt, tok, st.max_length, vstats) if val else []
    info = {"train": stats.as_dict(), "validation_examples": len(vrows)}
    if vstats:
        info["validation_files"] = vstats.files
    return rows, vrows, info


# ---------------------------------------------------------------------------- one stage


def _training_kwargs(cfg: TrainConfig, st: ResolvedStage, ckdir: Path, has_val: bool, world: int) -> dict[str, Any]:
    """The TrainingArguments of a stage, as keywords: both engines build theirs from this one dict
    (TRL's `SFTConfig` subclasses TrainingArguments), so they cannot drift apart."""
    import torch

    from alpacakit.train.base_model import torch_dtype

    cuda = torch.cuda.is_available()
    dtype = torch_dtype(cfg.precision, cfg.method)
    mixed_bf16 = cfg.precision == "bf16-mixed"
    eval_strategy = "no"
    if has_val:
        eval_strategy = "steps" if cfg.eval_steps else "epoch"
    return dict(
        output_dir=str(ckdir),
        num_train_epochs=st.epochs,
        max_steps=st.max_steps or -1,
        per_device_train_batch_size=st.batch_size,
        per_device_eval_batch_size=st.batch_size,
        gradient_accumulation_steps=st.accumulation(world),
        learning_rate=st.lr,
        lr_scheduler_type=st.scheduler,
        warmup_steps=st.warmup_ratio,
        weight_decay=st.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=mixed_bf16 or (cuda and dtype == torch.bfloat16),
        fp16=cuda and dtype == torch.float16,
        tf32=True if mixed_bf16 and cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        **({"optim": cfg.optim} if cfg.optim else {}),
        use_cpu=not cuda,
        remove_unused_columns=False,
        prediction_loss_only=True,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if (cfg.group_by_length and not cfg.packing) else "random",
        length_column_name="input_ids",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False if world > 1 else None,
        ddp_backend=("gloo" if not cuda else None) if world > 1 else None,
    )


def _stage_trainer(
    model: Any,
    tok: Any,
    cfg: TrainConfig,
    st: ResolvedStage,
    rows: list,
    vrows: list,
    kwargs: dict[str, Any],
    callbacks: list,
    meter: Any,
) -> tuple[Any, dict[str, Any]]:
    """The trainer that runs a stage's steps (`cfg.engine`), and what it runs with, for the manifest."""
    if cfg.engine == "trl":
        from alpacakit.train.trl_engine import build_trainer

        return build_trainer(model, tok, st, rows, vrows, kwargs, callbacks, meter)
    from transformers import TrainingArguments

    from alpacakit.train.attention import NAME, supported
    from alpacakit.train.collate import PackedCollator, PaddedCollator
    from alpacakit.train.distributed import sharding
    from alpacakit.train.loss import causal_lm
    from alpacakit.train.trainer import AlpacaTrainer

    loss_mode = cfg.loss
    if loss_mode == "chunked" and sharding():
        loss_mode = "supervised"  # sharded weights: the LM head must run inside the wrapped forward
    collator = (
        PackedCollator()
        if cfg.packing
        else PaddedCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    )
    lm = causal_lm(model)
    trainer = AlpacaTrainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=_ListDataset(rows),
        eval_dataset=_ListDataset(vrows) if vrows else None,
        data_collator=collator,
        callbacks=callbacks,
        loss_mode=loss_mode,
        loss_chunk=cfg.loss_chunk,
        meter=meter,
        loss_average=cfg.loss_average,
    )
    attn = NAME if cfg.packing and supported(lm) else lm.config._attn_implementation
    return trainer, {"loss": loss_mode, "attn_implementation": attn}


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()
    )


def _oom_error(cfg: TrainConfig, st: ResolvedStage, e: BaseException) -> AlpacakitError:
    return AlpacakitError(
        f"out of memory while training stage {st.name!r} (batch_size {st.batch_size}, max_length {st.max_length}, "
        f"method {cfg.method}, loss {cfg.loss}): {str(e).splitlines()[0] if str(e) else type(e).__name__}",
        hint="lower train.batch_size (raise grad_accum to keep the effective batch), lower max_length, set "
        "gradient_checkpointing: true, use method: lora, or keep loss: chunked",
    )


def _run_stage(
    model: Any,
    tok: Any,
    fmt: PromptFormat,
    cfg: TrainConfig,
    st: ResolvedStage,
    partial: Path,
    resume: bool,
    dist: _Dist,
) -> tuple[Any, dict[str, Any]]:
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from alpacakit.train.trainer import (
        CheckpointMarker,
        Meter,
        ProgressBar,
        RankReport,
        ResumeCounters,
        StepDelay,
        latest_complete_checkpoint,
    )

    sdir = partial / "stages" / st.dirname
    t0 = time.perf_counter()
    rows, vrows, data_info = _stage_data(st, cfg, fmt, tok)
    t_data = time.perf_counter() - t0
    _log(
        f"stage {st.name}: {len(rows)} training examples ({data_info['train']['supervised_tokens']} response "
        f"tokens), {len(vrows)} validation",
        dist,
    )
    meter = Meter()
    kwargs = _training_kwargs(cfg, st, sdir / "checkpoints", bool(vrows), dist.world)
    progress = ProgressBar(f"train {st.name}")
    callbacks = [
        CheckpointMarker(),
        ResumeCounters(meter),
        StepDelay(),
        progress,
        RankReport(partial / "logs" / "ranks", st.dirname, meter),
    ]
    if dist.main:
        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(partial / "logs" / st.dirname))))
    trainer, engine_settings = _stage_trainer(model, tok, cfg, st, rows, vrows, kwargs, callbacks, meter)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the progress bar shows the logs; no dict dumps on stdout
    ckpt = latest_complete_checkpoint(sdir / "checkpoints") if resume else None
    if ckpt:
        _log(f"stage {st.name}: resuming from {ckpt.name}", dist)
    _reset_peak_cuda_memory()
    t1 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except Exception as e:
        progress.close()
        if _is_oom(e):
            raise _oom_error(cfg, st, e) from None
        raise
    t_train = time.perf_counter() - t1
    metrics: dict[str, Any] = {}
    if vrows:
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        if not evals or evals[-1].get("step") != trainer.state.global_step:
            trainer.evaluate()  # the schedule did not evaluate the final weights
            evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        metrics = {k: v for k, v in evals[-1].items() if isinstance(v, (int, float))}
    weights = sdir / "weights"
    from alpacakit.train.distributed import save_weights

    save_weights(trainer, weights, dist.main)  # every rank: under FSDP / ZeRO-3 the weights are gathered
    info = {
        "name": st.name,
        "index": st.index,
        "settings": st.model_dump(mode="json"),
        "accumulation": st.accumulation(dist.world),
        "world_size": dist.world,
        "engine": cfg.engine,
        "engine_settings": engine_settings,
        "data": data_info,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "resumed_from": ckpt.name if ckpt else None,
        "final_train_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "eval": metrics,
        "log_history": trainer.state.log_history,
        "durations_s": {"data": round(t_data, 2), "train": round(t_train, 2)},
        "supervised_tokens_per_s": _steady_rate(trainer.state.log_history),
        "peak_cuda_memory_bytes": _peak_cuda_memory(dist),
    }
    if dist.main:
        from alpacakit.io import atomic_write_json

        atomic_write_json(sdir / STAGE_DONE, info)
    _barrier(dist)
    return trainer.model, info


def _reset_peak_cuda_memory() -> None:
    """Start the stage's peak-memory count at training, not at model loading."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_cuda_memory(dist: _Dist) -> list[int] | None:
    """Peak CUDA bytes allocated during the stage, one per rank (ranks differ under FSDP); None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    peak = int(torch.cuda.max_memory_allocated())
    if dist.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        peaks: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(peaks, peak)
        return [int(x) for x in peaks]
    return [peak]


def _steady_rate(history: list[dict[str, Any]]) -> float | None:
    """Median logged supervised tokens/s, leaving out the first window (it holds the start-up)."""
    import statistics

    rates = [e["supervised_tokens_per_s"] for e in history if "supervised_tokens_per_s" in e]
    rates = rates[1:] or rates
    return round(statistics.median(rates), 1) if rates else None


# ---------------------------------------------------------------------------- the run


class _NoDeepSpeedCpuNotice(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we
    were unable to detect it.": accelerate imports DeepSpeed wherever it is installed, so every
    CPU run printed it, DeepSpeed or not. Installed only where torch sees no CUDA device, and our
    own header line says so instead (`_device_line`); every other DeepSpeed record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


def _device_line(torch: Any) -> str:
    """Where this process trains, for the header line."""
    if torch.cuda.is_available():
        return f"on {torch.cuda.get_device_name()} ({torch.cuda.device_count()} CUDA device(s) visible)"
    return f"on CPU, {torch.get_num_threads()} threads (torch sees no CUDA device)"


def _drop_deepspeed_cpu_notice(torch: Any) -> None:
    """On a machine where torch sees no CUDA device, `_NoDeepSpeedCpuNotice` on DeepSpeed's own
    logger (deepspeed/utils/logging.py), once per process."""
    if torch.cuda.is_available():
        return
    ds = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _NoDeepSpeedCpuNotice) for f in ds.filters):
        ds.addFilter(_NoDeepSpeedCpuNotice())


def train(
    cfg: TrainConfig, *, output_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False
) -> TrainResult:
    """Fine-tune `cfg.base` on `cfg`'s data; returns the finished model folder and its manifest."""
    from alpacakit.train.base_model import load_model, load_tokenizer, resolve_base

    started = time.time()
    dist = _dist()
    out = Path(output_dir or cfg.output_dir)
    partial = partial_dir(out)
    lock = None
    if dist.main:  # one training run per output folder (the other ranks are part of this one)
        from alpacakit.io import FolderLock

        lock = FolderLock(out.parent / f".{out.name}.lock", "alpacakit train", out, remove_on_release=True)
    stages = preflight(cfg, out, resume, overwrite)
    if dist.world > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())  # joins the process group used for barriers

    import torch
    from transformers import set_seed

    where = _device_line(torch)
    _drop_deepspeed_cpu_notice(torch)
    t0 = time.perf_counter()
    base = resolve_base(cfg.base)
    tok = load_tokenizer(base)
    fmt = load_prompt_format(cfg.prompt_format).bind(tok)
    if dist.main:
        partial.mkdir(parents=True, exist_ok=True)
        if not (partial / RUN_CONFIG).exists():
            from alpacakit.io import atomic_write_json

            atomic_write_json(partial / RUN_CONFIG, _config_dict(cfg))
    _barrier(dist)
    set_seed(cfg.seed)
    model = load_model(
        base,
        precision=cfg.precision,
        quantize_4bit=cfg.method == "qlora",
        method=cfg.method,
        quantize_8bit=cfg.method == "lora-8bit",
    )
    if cfg.method != "full":
        model = _wrap_lora(model, cfg)
    t_load = time.perf_counter() - t0
    if dist.main:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        print(
            f"base {cfg.base} ({base.source}); method {cfg.method}: {n_train:,} trainable of {n_all:,} parameters; "
            f"base weights {dtype} (precision {cfg.precision}); {where}",
            flush=True,
        )

    results: list[dict[str, Any]] = []
    for st in stages:
        sdir = partial / "stages" / st.dirname
        if resume and (sdir / STAGE_DONE).exists() and (sdir / "weights").exists():
            _log(f"stage {st.name}: already finished, loading its weights", dist)
            model = _load_stage_weights(model, cfg, sdir / "weights", base.path)
            results.append(json.loads((sdir / STAGE_DONE).read_text(encoding="utf-8")))
            continue
        model, info = _run_stage(model, tok, fmt, cfg, st, partial, resume, dist)
        results.append(info)

    manifest: dict[str, Any] = {}
    if dist.main:
        manifest = _finish(cfg, out, partial, base, tok, fmt, results, started, t_load, overwrite, dist)
    _barrier(dist)
    if not dist.main:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if lock is not None:
        lock.release()
    return TrainResult(out, manifest, results)


def _finish(
    cfg: TrainConfig,
    out: Path,
    partial: Path,
    base: Any,
    tok: Any,
    fmt: PromptFormat,
    results: list[dict[str, Any]],
    started: float,
    t_load: float,
    overwrite: bool,
    dist: _Dist,
) -> dict:
    from alpacakit.io import atomic_write_json
    from alpacakit.train.base_model import torch_dtype
    from alpacakit.train.outputs import loss_series, plot_losses, publish, versions

    last = partial / "stages" / f"{results[-1]['index'] + 1:02d}-{results[-1]['name']}" / "weights"
    final = partial / ("merged" if cfg.method == "full" else "adapter")
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(last, final)
    tok.save_pretrained(partial)
    if cfg.method == "full":
        tok.save_pretrained(final)
        fmt.save(final)
    fmt.save(partial)
    plot_losses(results, partial / "loss.png")
    series = loss_series(results)
    manifest = {
        "kind": "alpacakit.model",
        "complete": True,
        "method": cfg.method,
        "engine": cfg.engine,
        "base_dtype": str(torch_dtype(cfg.precision, cfg.method)).removeprefix("torch."),
        "weights": final.name,
        "base": base.describe(),
        "prompt_format": fmt.name,
        "data": [f for r in results for f in r["data"]["train"]["files"]],
        "config": _config_dict(cfg),
        "stages": [{k: v for k, v in r.items() if k != "log_history"} for r in results],
        "steps": sum(r["steps"] for r in results),
        "losses": [{"step": s, "loss": v} for s, v in series["train"]],
        "eval_losses": [{"step": s, "eval_loss": v} for s, v in series["eval"]],
        "final_train_loss": results[-1].get("final_train_loss"),
        "world_size": dist.world,
        "durations_s": {
            "load": round(t_load, 2),
            "total": round(time.time() - started, 2),
            "stages": {r["name"]: r["durations_s"] for r in results},
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }
    atomic_write_json(partial / "manifest.json", validated(manifest))
    from alpacakit.cards import write_model_card

    write_model_card(partial)  # lineage, inherited licences, costs: from the manifests just written
    (partial / RUN_CONFIG).unlink(missing_ok=True)
    publish(partial, out, overwrite)
    if not cfg.keep_checkpoints:
        # Checkpoints and stage weights were only needed to resume (the stages' done.json are in
        # the manifest); deleted after the rename, so a crash before it can still resume.
        shutil.rmtree(out / "stages", ignore_errors=True)
    print(f"model folder: {out}  ({manifest['steps']} steps, final loss {manifest['final_train_loss']})", flush=True)
    return manifest
