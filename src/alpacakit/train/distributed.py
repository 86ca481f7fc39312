"""Sharded training (FSDP, DeepSpeed ZeRO-3): which one runs, and saving weights every rank gathers.

Under DDP every process holds the whole model, so process 0 alone can write it. Under FSDP
`FULL_SHARD` or ZeRO-3 each process holds a slice of every weight: a full state dict is built
by a collective (all-gather) that *every* process must enter, or the run hangs (or process 0
writes its own slices: tensors of the wrong shape, or empty). `save_weights` is the one place
that writes a model after training, and every rank calls it:

- DDP or one process: process 0 calls `save_pretrained`; the others only wait;
- FSDP (v1): every rank enters `FSDP.state_dict_type(FULL_STATE_DICT, rank0_only=True)` and
  asks for the state dict; process 0 gets the gathered tensors and writes them with
  `save_pretrained(state_dict=...)` (PEFT keeps the adapter's keys). FSDP2 (`fully_shard`)
  goes through `torch.distributed.checkpoint.state_dict.get_model_state_dict`;
- DeepSpeed ZeRO-3: the Trainer's own `save_model` (every rank; 16-bit weights gathered).

Checkpoints (for `--resume`) are the Trainer's: under FSDP with `fsdp_state_dict_type:
SHARDED_STATE_DICT` (our fsdp.yaml) each rank writes its shard of the weights and of the
optimizer state with torch.distributed.checkpoint, and a resume reads them back sharded.

FSDP on CPU: accelerate only turns FSDP on for accelerator devices (with `use_cpu` it silently
falls back to DDP), although torch's FSDP runs on CPU over gloo. `enable_fsdp_on_cpu` makes the
Trainer's accelerator use the FSDP plugin from the launcher's environment on CPU too, so the
same code path (wrapping, sharded checkpoints, gathered save) is tested in CI without a GPU.
On CPU, gathered tensors are not "offloaded to CPU" (they already are; asking for it made
torch 2.13 crash with a segfault here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def sharding() -> str | None:
    """'fsdp' or 'deepspeed' when this process was launched for that (accelerate's env), else None."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def enable_fsdp_on_cpu(accelerator: Any) -> bool:
    """Turn on FSDP for an accelerator made on CPU (where accelerate leaves it off); True if done.

    The plugin is built from the environment `accelerate launch` wrote from the FSDP config
    (sharding strategy, auto-wrap policy, state dict type, ...), exactly as accelerate does on
    GPUs; only the device differs (CPU, gloo).
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if sharding() != "fsdp" or _cuda() or getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return False
    if accelerator.state.num_processes < 2:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 1:
        from alpacakit.errors import ConfigError

        raise ConfigError(
            "FSDP on CPU is supported with fsdp_version: 1 only",
            hint="set fsdp_config.fsdp_version: 1 in the accelerate config (alpacakit's fsdp.yaml does)",
        )
    _cpu_state_dict_configs(plugin)
    import torch

    # torch's FSDP compares `device_id` with its CPU compute device, which has no index
    for shared in (AcceleratorState._shared_state, PartialState._shared_state):
        shared["device"] = torch.device("cpu")
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def _cpu_state_dict_configs(plugin: Any) -> None:
    """State dict configs without `offload_to_cpu` (the tensors are on CPU already)."""
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        ShardedOptimStateDictConfig,
        ShardedStateDictConfig,
        StateDictType,
    )

    if plugin.state_dict_type == StateDictType.FULL_STATE_DICT:
        plugin.state_dict_config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        plugin.optim_state_dict_config = FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True)
    elif plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT:
        plugin.state_dict_config = ShardedStateDictConfig(offload_to_cpu=False)
        plugin.optim_state_dict_config = ShardedOptimStateDictConfig(offload_to_cpu=False)


def init_optimizer_state(optimizer: Any) -> None:
    """Give a fresh optimizer its state (zeros) before an FSDP (v1) checkpoint is loaded into it.

    accelerate loads a sharded FSDP v1 optimizer checkpoint into the structure of
    `FSDP.optim_state_dict(model, optimizer)`; for an optimizer that has not stepped yet that
    structure has no moments, so nothing is loaded and the resumed run silently restarts Adam
    from zero (measured here: the loss after a resume left the uninterrupted run's at the
    first step). One step with zero gradients and a zero learning rate creates the state without
    moving a weight; the checkpoint then overwrites it.
    """
    import torch

    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
    if opt.state:
        return
    params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    if any(p.grad is not None for p in params):
        return
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = torch.tensor(0.0) if isinstance(g["lr"], torch.Tensor) else 0.0
    opt.step()
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
    for p in params:
        p.grad = None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole model's state dict, gathered from every rank (call it on every rank).

    Returns the tensors on process 0 and None elsewhere (or everywhere when the model is not
    sharded: then the caller saves the model as it is).
    """
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    import torch
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.model_wrapped
    plugin = trainer.accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=torch.cuda.is_available())
        sd = get_model_state_dict(model, options=opts)
        return sd if trainer.args.process_index == 0 else None
    cfg = FullStateDictConfig(offload_to_cpu=torch.cuda.is_available(), rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
        sd = model.state_dict()
    if trainer.args.process_index != 0:
        return None
    return {_clean(k): v.detach().cpu() for k, v in sd.items()}


_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean(name: str) -> str:
    """A parameter name without the FSDP / activation-checkpoint wrappers' parts."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def _save_gathered(model: Any, sd: dict[str, Any], folder: Path) -> None:
    """`save_pretrained` with a gathered state dict (process 0).

    A full model saves as is. PEFT picks the adapter's entries by the names of its LoRA layers
    *in the model*, and inside an FSDP-wrapped model those names contain the wrappers'
    `_fsdp_wrapped_module.` parts while the gathered keys do not: PEFT would match nothing and
    write an empty adapter. So the keys are given the wrapped names for PEFT's selection, and the
    written file gets the clean names back (the ones `PeftModel.from_pretrained` expects).
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a train dependency
        PeftModel = ()  # type: ignore[assignment]
    if not isinstance(model, PeftModel):
        model.save_pretrained(folder, state_dict=sd)
        return
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    wrapped = {_clean(n): n for n in names}
    model.save_pretrained(folder, state_dict={wrapped.get(k, k): v for k, v in sd.items()})
    from safetensors.torch import load_file, save_file

    adapters = list(getattr(model, "peft_config", {}) or ["default"])
    for f in folder.rglob("*.safetensors"):
        tensors = load_file(f)
        save_file(
            {_adapter_key(_clean(k), adapters): v.contiguous() for k, v in tensors.items()},
            f,
            metadata={"format": "pt"},
        )


def _adapter_key(key: str, adapters: list[str]) -> str:
    """PEFT's checkpoint name for a key that still holds the adapter's name (`...lora_A.default.weight`
    -> `...lora_A.weight`): PEFT did not strip it because a wrapper name stood after it."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] in adapters:
        return ".".join(parts[:-1])
    if len(parts) >= 3 and parts[-2] in adapters:
        return ".".join(parts[:-2] + parts[-1:])
    return key


def save_weights(trainer: Any, target: Path, main: bool) -> None:
    """Write the trained weights to `target` (atomically, via target.tmp); every rank calls this."""
    tmp = target.with_name(target.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    if getattr(trainer, "is_deepspeed_enabled", False):
        trainer.save_model(str(tmp))  # every rank: gathers the 16-bit weights (zero3_save_16bit_model)
        if main:  # the Trainer's extras, not weights
            for extra in ("training_args.bin", "README.md"):
                (tmp / extra).unlink(missing_ok=True)
    elif getattr(trainer, "is_fsdp_enabled", False):
        sd = full_state_dict(trainer)  # every rank enters the all-gather
        if main:
            _save_gathered(trainer.accelerator.unwrap_model(trainer.model), sd, tmp)
    elif main:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp)
    if main:
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    _barrier()
