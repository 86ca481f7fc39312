"""The training half of the GPU check: our three methods, and TRL's best path as the peer to beat.

For each method, a few optimizer steps through our real CLI (`alpacakit train`), then the saved
model is reloaded in a fresh process and greedily continues one instruction:

- full: full fine-tuning, FSDP full_shard (`--launcher accelerate --accelerate-config fsdp
  --num-processes <GPUs>`, through the launcher even with one GPU), bf16 mixed precision;
- lora: LoRA on a bf16 base;
- qlora: our `qlora` preset (4-bit NF4 base, bf16 compute; CUDA only).

Then the same full and LoRA steps through TRL's `SFTTrainer` at its best GPU settings: packing
with `padding_free=True`, Liger's fused linear cross-entropy (`use_liger_kernel`) when
liger-kernel is installed, flash-attention 2 when flash-attn is installed (else sdpa); the same
base, examples (tokenized by our code, so the same supervised tokens), LoRA layers, precision,
batch, FSDP config and process count. The issue's bar: ours >= 1.0x TRL's supervised tokens/s
at <= its peak GPU memory, per method; where we miss it, TRL's path should be used on GPUs.

Measured the same way on both sides: supervised (response) tokens/s is the median over steps of
one step's supervised tokens over the time between consecutive step ends (the first step, with
its start-up, left out), summed over processes; peak memory is `torch.cuda.max_memory_allocated`
from the start of training, the largest over ranks. Ours come from the run's manifest.json.

    python benchmarks/gpu_train_check.py [--model PATH|embedded] [--data alpaca_data.json]
        [--steps 8] [--methods full,lora,qlora] [--out runs/gpu-check]
    python benchmarks/gpu_train_check.py --cpu-smoke    # same code on CPU, tiny model, 2 steps

No model hub: the base is the embedded Qwen2.5-Coder-1.5B GGUF converted to an HF folder by our
own code (or --model). Writes OUT/gpu_train_check.{json,md}. Exit 2 without a GPU (unless
--cpu-smoke), 1 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca_data.json"
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
METHODS = ("full", "lora", "qlora")
PEERS = ("full", "lora")  # TRL has no peer run for QLoRA here: the issue compares full and LoRA
INSTRUCTION = "Give three tips for staying healthy."
GIB = 1024**3


# ---------------------------------------------------------------------------- shared settings


def train_settings(args: argparse.Namespace, method: str, cuda: bool) -> tuple[str | None, list[str]]:
    """(preset, --set overrides) of one method: the very config both ours and TRL's run read."""
    sets = [
        f"batch_size={args.batch}",
        "grad_accum=1",
        f"max_length={args.max_length}",
        "save_steps=100000",  # a few steps: no checkpoint, only the final save
        "logging_steps=1",  # one throughput window per step
        "val_size=0",
        "seed=0",
    ]
    if method == "full":
        sets.append(f"precision={'bf16-mixed' if cuda else 'fp32'}")  # fp32 master weights, bf16 compute
        return None, sets
    if method == "lora":
        sets.append(f"precision={'bf16' if cuda else 'fp32'}")
        return None, sets
    return "qlora", [*sets, "precision=bf16"]


def load_config(args: argparse.Namespace, method: str, cuda: bool):  # noqa: ANN201
    from alpacakit.train.config import load_train_config

    preset, sets = train_settings(args, method, cuda)
    extra = {
        "train": {
            "preset": preset,
            "data": args.data,
            "base": args.model,
            "method": method,
            "max_examples": args.examples,
            "max_steps": args.steps,
        }
    }
    return load_train_config(None, sets, extra).train


def step_rate(marks: list[tuple[float, int]], world: int) -> float | None:
    """Median supervised tokens/s over step-to-step windows (the first step is left out), times processes."""
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:]) if b[0] > a[0]]
    return statistics.median(rates) * world if rates else None


def gathered_peak() -> list[int] | None:
    """torch.cuda.max_memory_allocated of every rank (None on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    peak = int(torch.cuda.max_memory_allocated())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        peaks: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(peaks, peak)
        return [int(p) for p in peaks]
    return [peak]


# ---------------------------------------------------------------------------- child processes


def trl_child(args: argparse.Namespace) -> None:
    """One TRL SFTTrainer run (every rank under accelerate launch); rank 0 writes --result."""
    import tempfile
    from importlib.util import find_spec

    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from alpacakit.train.base_model import load_model, load_tokenizer, resolve_base
    from alpacakit.train.recipe import _stage_data, _wrap_lora, load_prompt_format
    from alpacakit.train.trainer import Meter

    cuda = torch.cuda.is_available()
    cfg = load_config(args, args.method, cuda)
    st = cfg.stage_list()[0]
    base = resolve_base(cfg.base)
    tok = load_tokenizer(base)
    fmt = load_prompt_format(cfg.prompt_format).bind(tok)
    rows, _, _ = _stage_data(st, cfg, fmt, tok)  # our tokenization and label rule: the same supervised tokens
    liger = cuda and find_spec("liger_kernel") is not None
    attn = "flash_attention_2" if cuda and find_spec("flash_attn") is not None else "sdpa"
    model = load_model(base, precision=cfg.precision, method=cfg.method)
    try:
        model.set_attn_implementation(attn)
    except (ImportError, ValueError) as e:  # e.g. a flash-attn build that does not fit this torch
        print(f"attention {attn} refused ({e}); sdpa instead", flush=True)
        attn = "sdpa"
        model.set_attn_implementation(attn)
    if cfg.method == "lora":
        model = _wrap_lora(model, cfg)
    meter = Meter()
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), meter.supervised))

    class CountingSFTTrainer(SFTTrainer):
        """Counts supervised tokens as ours does; FSDP on CPU as ours (see distributed.py)."""

        def create_accelerator_and_postprocess(self) -> None:
            from alpacakit.train.distributed import enable_fsdp_on_cpu

            super().create_accelerator_and_postprocess()
            if enable_fsdp_on_cpu(self.accelerator):
                self.is_fsdp_enabled = True

        def compute_loss(self, model, inputs, *a, **k):  # noqa: ANN001, ANN002, ANN003
            if model.training:
                labels = inputs["labels"]
                tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else labels.numel()
                meter.add(tokens, int((labels != -100).sum()), 0)
            return super().compute_loss(model, inputs, *a, **k)

    from datasets import Dataset

    data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        sargs = SFTConfig(
            output_dir=tmp,
            max_steps=args.steps,
            per_device_train_batch_size=1,  # one packed row of batch x max_length tokens
            gradient_accumulation_steps=1,
            learning_rate=st.lr,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            bf16=cuda,
            gradient_checkpointing=cfg.gradient_checkpointing,
            completion_only_loss=True,
            packing=True,
            padding_free=True,
            max_length=st.batch_size * st.max_length,
            use_liger_kernel=liger,
        )
        trainer = CountingSFTTrainer(
            model=model, args=sargs, train_dataset=data, processing_class=tok, callbacks=[Clock()]
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    peaks = gathered_peak()
    if int(os.environ.get("RANK", "0")) == 0:
        result = {
            "supervised_tokens_per_s": step_rate(marks, world),
            "peak_cuda_memory_bytes": peaks,
            "steps": len(marks),
            "supervised_tokens_rank0": meter.supervised,
            "tokens_rank0": meter.tokens,
            "world_size": world,
            "settings": {"liger_kernel": liger, "attn_implementation": attn, "packing": True, "padding_free": True},
        }
        Path(args.result).write_text(json.dumps(result), encoding="utf-8")


def generate_child(args: argparse.Namespace) -> None:
    """Reload a finished model folder in this fresh process and greedily continue one instruction."""
    import torch

    from alpacakit.train.merge import load_trained

    cuda = torch.cuda.is_available()
    model, tok, fmt = load_trained(args.model_dir, dtype=torch.bfloat16 if cuda else torch.float32)
    if cuda:
        model.to("cuda")
    enc = tok(fmt.build(INSTRUCTION), return_tensors="pt", add_special_tokens=fmt.add_special_tokens).to(model.device)
    with torch.no_grad():
        ids = model.generate(
            **enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    new = ids[0, enc["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    Path(args.result).write_text(json.dumps({"new_tokens": int(new.numel()), "text": text}), encoding="utf-8")


# ---------------------------------------------------------------------------- the parent


def _run(cmd: list[str], log: Path, timeout: int) -> bool:
    """Run a child with its output in `log`; True on success."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
    with log.open("w", encoding="utf-8") as f:
        try:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu_train_check] timed out after {timeout} s\n")
            return False
    return code == 0


def _fail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    errors = [x.strip() for x in lines if x.lstrip().startswith("error:") or "Error:" in x]
    return f"failed: {(errors or lines or ['no output'])[-1][:300]} (see {log})"


def _accelerate_cmd(args: argparse.Namespace, procs: int, folder: Path) -> list[str]:
    """`accelerate launch` with our shipped FSDP config (its CPU variant without CUDA), as our launcher does."""
    import torch

    from alpacakit.train.launch import _cpu_variant, _free_port, accelerate_config_path

    src = accelerate_config_path("fsdp")
    acfg = src if torch.cuda.is_available() else _cpu_variant(src, folder)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(acfg),
        "--num_processes",
        str(procs),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
    ]


def _child_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--model",
        args.model,
        "--data",
        args.data,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
        "--examples",
        str(args.examples),
    ]


def run_ours(args: argparse.Namespace, method: str, procs: int, cuda: bool, out: Path) -> dict:
    """`alpacakit train` (the real CLI), then a reload and generation in a fresh process."""
    folder = out / f"ours-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    preset, sets = train_settings(args, method, cuda)
    cmd = [sys.executable, "-m", "alpacakit.cli.main", "train", "--base", args.model, "--data", args.data]
    cmd += ["--method", method, "--max-steps", str(args.steps), "--max-examples", str(args.examples)]
    cmd += ["-o", str(folder / "model"), "--overwrite"]
    if preset:
        cmd += ["--preset", preset]
    for s in sets:
        cmd += ["--set", s]
    if method == "full":
        cmd += ["--launcher", "accelerate", "--num-processes", str(procs), "--accelerate-config", "fsdp"]
    t0 = time.perf_counter()
    if not _run(cmd, folder / "train.log", args.timeout):
        return {"status": _fail(folder / "train.log")}
    wall = time.perf_counter() - t0
    manifest = json.loads((folder / "model" / "manifest.json").read_text(encoding="utf-8"))
    stage = manifest["stages"][-1]
    r = {
        "status": "ok",
        "supervised_tokens_per_s": stage.get("supervised_tokens_per_s"),
        "peak_cuda_memory_bytes": stage.get("peak_cuda_memory_bytes"),
        "steps": manifest["steps"],
        "world_size": manifest["world_size"],
        "train_wall_s": round(wall, 1),
        "settings": {"packing": manifest["config"]["packing"], "loss": manifest["config"]["loss"]},
    }
    gen = folder / "generate.json"
    gcmd = [sys.executable, __file__, "--child", "generate", "--model-dir", str(folder / "model"), "--result", str(gen)]
    if _run(gcmd, folder / "generate.log", args.timeout):
        r["generate"] = json.loads(gen.read_text(encoding="utf-8"))
    else:
        r["generate"] = {"error": _fail(folder / "generate.log")}
        r["status"] = "generate " + r["generate"]["error"]
    return r


def run_trl(args: argparse.Namespace, method: str, procs: int, out: Path) -> dict:
    folder = out / f"trl-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    result = folder / "result.json"
    result.unlink(missing_ok=True)
    child = [__file__, "--child", "trl", "--method", method, "--result", str(result), *_child_flags(args)]
    cmd = [*_accelerate_cmd(args, procs, folder), *child] if method == "full" else [sys.executable, *child]
    if not _run(cmd, folder / "train.log", args.timeout) or not result.exists():
        return {"status": _fail(folder / "train.log")}
    return {"status": "ok", **json.loads(result.read_text(encoding="utf-8"))}


def _peak(r: dict) -> int | None:
    peaks = r.get("peak_cuda_memory_bytes")
    return max(peaks) if peaks else None


def verdict(ours: dict, trl: dict | None, cuda: bool) -> dict:
    """The issue's bar for one method: ours >= 1.0x TRL's supervised tokens/s at <= its peak memory."""
    if trl is None:
        return {"verdict": "no TRL peer (QLoRA is ours only)"}
    if ours.get("status") != "ok" or trl.get("status") != "ok":
        return {"verdict": "not measured (a run failed)"}
    speed = ours["supervised_tokens_per_s"] / trl["supervised_tokens_per_s"]
    po, pt = _peak(ours), _peak(trl)
    mem = po / pt if po and pt else None
    out = {"speed_ratio": round(speed, 3), "memory_ratio": round(mem, 3) if mem else None}
    if not cuda:
        out["verdict"] = "CPU smoke: speed only, no GPU memory (not the GPU verdict)"
    elif speed >= 1.0 and mem is not None and mem <= 1.0:
        out["verdict"] = "ours >= 1.0x at <= memory: yes"
    else:
        out["verdict"] = "ours >= 1.0x at <= memory: NO - use TRL's path on GPUs for this method"
    return out


def _fmt_rate(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")[:60]
    return f"{r['supervised_tokens_per_s']:.1f}"


def _fmt_mem(r: dict | None) -> str:
    if r is None or r.get("status") != "ok":
        return "-"
    p = _peak(r)
    return f"{p / GIB:.2f}" if p else "n/a (CPU)"


def markdown(report: dict) -> str:
    head = (
        f"GPU training check: {report['model']}, {report['steps']} steps, batch {report['batch']} x "
        f"{report['max_length']} tokens, {report['processes']} process(es) for FSDP, device {report['device']}\n\n"
    )
    lines = [
        "| method | ours sup tok/s | TRL sup tok/s | ours / TRL | ours peak GiB | TRL peak GiB | mem ours / TRL "
        "| reload + generate | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, row in report["methods"].items():
        if "skipped" in row:
            lines.append(f"| {m} | {row['skipped']} | - | - | - | - | - | - | - |")
            continue
        ours, trl, v = row["ours"], row.get("trl"), row["verdict"]
        gen = ours.get("generate", {})
        g = f"{gen['new_tokens']} tokens" if "new_tokens" in gen else "failed"
        sr = f"{v['speed_ratio']:.2f}x" if v.get("speed_ratio") else "-"
        mr = f"{v['memory_ratio']:.2f}x" if v.get("memory_ratio") else "-"
        lines.append(
            f"| {m} | {_fmt_rate(ours)} | {_fmt_rate(trl)} | {sr} | {_fmt_mem(ours)} | {_fmt_mem(trl)} | {mr} "
            f"| {g} | {v['verdict']} |"
        )
    return head + "\n".join(lines) + "\n"


def _tiny_base(out: Path) -> str:
    from alpacakit.train.tiny import make_tiny_base

    path = out / "tiny-qwen2"
    if not (path / "config.json").exists():
        make_tiny_base(path, arch="qwen2")
    return str(path)


def _data(args: argparse.Namespace, out: Path) -> str:
    """--data, else ../shared/data/alpaca_data.json, else our shipped seed tasks as Alpaca records."""
    if args.data:
        if not Path(args.data).exists():
            raise SystemExit(f"--data {args.data}: not found")
        return args.data
    if DEFAULT_DATA.exists():
        return str(DEFAULT_DATA)
    from alpacakit.generate.seeds import load_seed_tasks

    recs = [{"instruction": t.instruction, "input": t.input, "output": t.output} for t in load_seed_tasks()]
    path = out / "seed_examples.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", help=f"HF folder or embedded name [default: {DEFAULT_MODEL}; tiny model with --cpu-smoke]"
    )
    ap.add_argument("--data", help="Alpaca JSON/JSONL [default: ../shared/data/alpaca_data.json, else seed tasks]")
    ap.add_argument("--steps", type=int, help="optimizer steps per run [default: 8; 2 with --cpu-smoke]")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--processes", type=int, help="processes for full FSDP [default: every GPU; 1 on CPU]")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, help="[default: 512; 256 with --cpu-smoke]")
    ap.add_argument("--examples", type=int, help="examples read from --data [default: enough for the steps]")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's peer runs")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per child run")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the same code on CPU: tiny model, 2 steps")
    ap.add_argument("--child", choices=("trl", "generate"), help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.cpu_smoke else 8)
    args.max_length = args.max_length or (256 if args.cpu_smoke else 512)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "trl":
        trl_child(args)
        return 0
    if args.child == "generate":
        generate_child(args)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("gpu_train_check: no CUDA GPU here; nothing to measure (--cpu-smoke runs the same code on the CPU)")
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    procs = args.processes or (max(torch.cuda.device_count(), 1) if cuda else 1)
    args.model = args.model or (_tiny_base(out) if args.cpu_smoke else DEFAULT_MODEL)
    from alpacakit.train.base_model import resolve_base

    args.model = resolve_base(args.model).path  # an embedded GGUF becomes an HF folder once, here, not per child
    args.data = _data(args, out)
    args.examples = args.examples or args.steps * args.batch * procs * 4
    device = f"{procs} x {torch.cuda.get_device_name(0)}" if cuda else "CPU (smoke)"
    report: dict = {
        "model": args.model,
        "data": args.data,
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "processes": procs,
        "device": device,
        "torch": torch.__version__,
        "methods": {},
    }
    failed = False
    for m in methods:
        if m == "qlora" and not cuda:
            report["methods"][m] = {"skipped": "skipped: needs CUDA (bitsandbytes 4-bit)"}
            continue
        print(f"[{m}] ours: alpacakit train ...", flush=True)
        ours = run_ours(args, m, procs, cuda, out)
        trl = None
        if m in PEERS and not args.no_trl:
            print(f"[{m}] TRL SFTTrainer ...", flush=True)
            trl = run_trl(args, m, procs, out)
        failed |= ours["status"] != "ok" or (trl is not None and trl["status"] != "ok")
        report["methods"][m] = {"ours": ours, "trl": trl, "verdict": verdict(ours, trl, cuda)}
    md = markdown(report)
    (out / "gpu_train_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "gpu_train_check.md").write_text(md, encoding="utf-8")
    print("\n" + md)
    print(f"written: {out / 'gpu_train_check.json'}, {out / 'gpu_train_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
