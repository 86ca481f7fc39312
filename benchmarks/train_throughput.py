"""Training throughput and memory: Stanford's way, TRL's SFTTrainer and ours, side by side in one run.

    python benchmarks/train_throughput.py [--model gemma-3-270m] [--steps 6] [--batch 4] [--max-length 256]
        [--precision fp32,bf16] [--variants baseline,ours,trl-padded,trl-packed]

Same model (LoRA r 8 on q/v, Alpaca-LoRA's setting), same examples (a seeded sample of
../shared/data/alpaca_data.json, for its real length distribution), same batches in the same
order, same transformers Trainer, same precision of the frozen base weights (each precision in
--precision is a separate pair; LoRA adapters are fp32 in all). Only what differs between the
two is switched:

- baseline (what Stanford's train.py does): each batch padded to its longest example, logits
  for every position, cross-entropy with -100 on prompt and padding;
- ours: padding-free packing (one row per batch; attention runs per example, so examples cannot
  attend to each other) and the chunked loss (hidden states kept only where a response token is
  predicted, projected onto the vocabulary a chunk at a time, gradient computed in the same pass);
- trl-padded: TRL's `SFTTrainer` (a declared dependency) at its best CPU settings without packing:
  batches padded to the longest, completion-only loss (`completion_only_loss=True`; the labels are
  ours, so the same tokens are supervised), no gradient checkpointing, no bf16 autocast (TRL's
  defaults turn both on), its fused chunked LM head (TRL computes log-probs in chunks itself);
- trl-packed: the trainer `alpacakit train --engine trl` runs, built by the same function
  (`trl_engine.build_trainer`): `packing=True` + `padding_free=True` (best-fit-decreasing bins,
  one bin per step, flattened into one row), completion-only loss, TRL's fused LM head. A step
  holds a different number of examples than ours, so compare rates (supervised tokens per
  second), not steps. `--trl-bin` sets the bin: `match` (default) gives TRL's steps as many tokens
  as ours hold on average (the same work per optimizer step: larger steps run faster per token on
  a CPU, and that would be measured instead of the two implementations), `full` keeps
  `batch x max_length`, the bin `--engine trl` uses.

TRL gets the very token ids and labels the others train on (trl_engine's pre-tokenized dataset,
with a completion mask read off our labels), the same LoRA-wrapped model, the same
TrainingArguments (learning rate, seed, precision: one dict for every variant, as `alpacakit
train` builds both engines' from one), and is metered by the same code as ours (`count_batch`).

Each variant runs in its own child process (so peak RSS is its own), one after the other.
Printed: supervised (response) tokens per second over the measured steps (after a warm-up
step), peak RSS, and the ratios ours / baseline per precision, then what alpacakit's default
(`precision: auto`, bf16 where the CPU multiplies bf16 natively) gains over the fp32 baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "ours", "trl-padded", "trl-packed")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "alpaca_data.json"


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs), so that
    the training peak is not hidden under the model-loading peak, which both variants share."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from alpacakit.prompting import PromptFormat
    from alpacakit.train.base_model import load_model, load_tokenizer, resolve_base
    from alpacakit.train.collate import PackedCollator, PaddedCollator
    from alpacakit.train.config import TrainConfig
    from alpacakit.train.data import Sample, Turn, tokenize_samples
    from alpacakit.train.recipe import _ListDataset, _wrap_lora
    from alpacakit.train.trainer import AlpacaTrainer, Meter

    torch.set_num_threads(args.threads)
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    n = args.batch * (args.steps + 1)
    if args.mode == "trl-packed":
        n *= 4  # bins of batch x max_length tokens hold more examples than a batch: enough for every step
    order = list(range(len(records)))
    random.Random(args.seed).shuffle(order)
    picked = [records[i] for i in order[:n]]  # the same examples, in the same order, for every variant
    base = resolve_base(args.model)
    tok = load_tokenizer(base)
    fmt = PromptFormat.load("alpaca").bind(tok)
    rows = tokenize_samples(
        [Sample([Turn(r["instruction"], r.get("input", ""), r["output"])], "bench") for r in picked],
        fmt,
        tok,
        args.max_length,
    )
    cfg = TrainConfig(
        preset="alpaca-lora",
        base=args.model,
        precision=args.precision,
        batch_size=args.batch,
        max_length=args.max_length,
    )
    model = _wrap_lora(load_model(base, precision=args.precision), cfg)
    rss_loaded = _status_mb("VmRSS")
    reset = _reset_peak_rss()

    class Timer(TrainerCallback):
        """Wall time and supervised tokens of each optimizer step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.meter = None
            self.t = 0.0
            self.n = 0

        def on_step_begin(self, *a, **k):  # noqa: ANN002
            self.n = self.meter.supervised
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002
            self.times.append(time.perf_counter() - self.t)
            self.tokens.append(self.meter.supervised - self.n)

    timer = Timer()
    ours = args.mode == "ours"
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = _training_kwargs(args, tmp)
        if args.mode == "trl-packed":
            from alpacakit.train.trl_engine import build_trainer

            # `--engine trl`'s trainer, from the same function; only the bin may differ (--trl-bin)
            st = cfg.stage_list()[0]
            trainer, _ = build_trainer(model, tok, st, rows, [], kwargs, [timer], Meter(), bin_tokens=args.bin_tokens)
        elif args.mode == "trl-padded":
            trainer = _trl_padded(args, kwargs, model, tok, rows, timer)
        else:
            trainer = AlpacaTrainer(
                model=model,
                args=TrainingArguments(**kwargs),
                train_dataset=_ListDataset(rows),
                data_collator=PackedCollator() if ours else PaddedCollator(tok.pad_token_id),
                loss_mode="chunked" if ours else "full",
                callbacks=[timer],
            )
        timer.meter = trainer.meter
        trainer.train()
    if args.mode.startswith("trl") and len(timer.times) < args.steps + 1:
        raise SystemExit(f"{args.mode}: only {len(timer.times)} steps (not enough data for the bins)")
    return _result(args, timer, trainer.meter, rss_loaded, reset)


def _training_kwargs(args: argparse.Namespace, output_dir: str) -> dict:
    """Every variant's TrainingArguments, as keywords: ours builds TrainingArguments from them and
    TRL's `SFTConfig` (a subclass) is built from the same dict, as in `alpacakit train`."""
    return dict(
        output_dir=output_dir,
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.batch,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # TrainingArguments' defaults, spelled out: TRL's SFTConfig turns both on unless told
        bf16=False,
        activation_checkpointing=False,
    )


def _result(args: argparse.Namespace, timer: object, meter: object, rss_loaded: float, reset: bool) -> dict:
    measured_tokens = sum(timer.tokens[1:])  # the first step is warm-up
    measured_time = sum(timer.times[1:])
    return {
        "mode": args.mode,
        "precision": args.precision,
        "supervised_tokens_per_s": measured_tokens / measured_time,
        "s_per_step": measured_time / max(len(timer.times) - 1, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_training_mb": _status_mb("VmHWM") if reset else None,
        "rss_after_load_mb": rss_loaded,
        "supervised_tokens": meter.supervised,
        "tokens_in_batches": meter.tokens,
        "steps": len(timer.times),
        "tokens_per_step": meter.tokens / max(len(timer.times), 1),
    }


def _trl_padded(
    args: argparse.Namespace, kwargs: dict, model: object, tok: object, rows: list, timer: object
) -> object:
    """TRL's SFTTrainer on padded batches of `batch` examples, completion-only loss. trl_engine has
    no padded mode (`--engine trl` refuses `packing: false`), so this SFTConfig is the only one kept
    here; the dataset and the metered trainer are trl_engine's."""
    from trl import SFTConfig

    from alpacakit.train.loss import causal_lm
    from alpacakit.train.trainer import Meter
    from alpacakit.train.trl_engine import dataset, trainer_class

    sargs = SFTConfig(**kwargs, completion_only_loss=True, max_length=args.max_length)
    return trainer_class()(
        model=model,
        args=sargs,
        train_dataset=dataset(rows),
        processing_class=tok,
        callbacks=[timer],
        meter=Meter(),
        attn_implementation=causal_lm(model).config._attn_implementation,  # the model's own (sdpa here)
    )


def _run_variant(args: argparse.Namespace, mode: str, precision: str, rounds: dict, round_no: int) -> dict:
    """One variant at one precision in a fresh process; returns its RESULT."""
    cmd = [
        sys.executable,
        __file__,
        "--mode",
        mode,
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
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--precision",
        precision,
    ]
    if mode == "trl-packed" and args.trl_bin == "match":
        ours = rounds.get(f"ours-{precision}")
        if not ours:
            sys.exit("--trl-bin match needs ours to run first: put ours before trl-packed in --variants")
        cmd += ["--bin-tokens", str(round(ours[-1]["tokens_in_batches"] / ours[-1]["steps"]))]
    print(f"running {mode} ({precision}){f' round {round_no + 1}' if args.rounds > 1 else ''} ...", flush=True)
    # Passive OpenMP waiting: on a machine shared with other jobs, spinning threads make
    # timings swing wildly; every variant gets the same setting.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        sys.exit(f"{mode} ({precision}) failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--steps", type=int, default=6, help="measured steps (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (frozen base weights)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument(
        "--trl-bin",
        choices=("match", "full"),
        default="match",
        help="trl-packed bin size: match = ours' mean tokens per step, full = batch x max length",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variants this many times, alternating (ours, peer, ours, peer, ...), and compare medians: "
        "on a shared machine one pair of runs can swing by 10-20%%",
    )
    ap.add_argument("--bin-tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    if not Path(args.data).exists():
        sys.exit(f"{args.data}: not found (pass --data PATH to an Alpaca JSON file)")
    results: dict[str, dict] = {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "ours" not in variants:
        sys.exit("--variants must include ours (every ratio is against it)")
    rounds: dict[str, list[dict]] = {}
    for round_no in range(args.rounds):
        for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
            for mode in variants:
                r = _run_variant(args, mode, precision, rounds, round_no)
                rounds.setdefault(f"{mode}-{precision}", []).append(r)
    for name, runs in rounds.items():
        # the run with the median rate stands for the variant; every round's rate is kept beside it
        rates = sorted(x["supervised_tokens_per_s"] for x in runs)
        median = next(x for x in runs if x["supervised_tokens_per_s"] == rates[(len(rates) - 1) // 2])
        results[name] = {**median, "rates_per_round": [x["supervised_tokens_per_s"] for x in runs]}
    print(
        f"\nmodel {args.model}, LoRA r8 q/v, batch {args.batch}, max length {args.max_length}, {args.steps} measured "
        f"steps, {args.threads} threads, CPU; trl-packed bins: "
        + (
            "ours' mean tokens per step"
            if args.trl_bin == "match"
            else f"{args.batch * args.max_length} tokens (batch x max length)"
        )
    )
    # Supervised share: with few steps the variants see different examples; compare only when close.
    print(
        f"{'':17s} {'sup tok/s':>10s} {'all tok/s':>10s} {'tok/step':>9s} {'sup share':>10s} {'s/step':>8s} "
        f"{'peak RSS MB':>12s} {'peak in training':>17s} {'RSS after load':>15s}"
    )
    for name, r in results.items():
        share = r["supervised_tokens"] / max(r["tokens_in_batches"], 1)
        print(
            f"{name:17s} {r['supervised_tokens_per_s']:10.2f} {r['tokens_per_step'] / r['s_per_step']:10.2f} "
            f"{r['tokens_per_step']:9.0f} {share:10.3f} {r['s_per_step']:8.2f} {r['peak_rss_mb']:12.0f} "
            f"{r['peak_rss_training_mb'] or 0:17.0f} {r['rss_after_load_mb']:15.0f}"
        )
    summary: dict[str, float] = {}
    for precision in sorted({r["precision"] for r in results.values()}):
        o = results[f"ours-{precision}"]
        for other in [v for v in variants if v != "ours"]:
            b = results[f"{other}-{precision}"]
            speed = o["supervised_tokens_per_s"] / b["supervised_tokens_per_s"]
            mem = o["peak_rss_mb"] / b["peak_rss_mb"]
            key = "" if other == "baseline" else f"_vs_{other}"
            summary[f"speed_ratio{key}_{precision}"] = round(speed, 3)
            summary[f"peak_rss_ratio{key}_{precision}"] = round(mem, 3)
            target = ("   (target >= 2x)", "   (target <= 0.7x)") if other == "baseline" else ("", "")
            per_round = [x / y for x, y in zip(o["rates_per_round"], b["rates_per_round"])]
            spread = f"   (per round: {min(per_round):.2f}x-{max(per_round):.2f}x)" if len(per_round) > 1 else ""
            print(f"\n[{precision}] supervised tokens/s: ours / {other} = {speed:.2f}x{target[0]}{spread}")
            print(f"[{precision}] peak RSS (process):  ours / {other} = {mem:.2f}x{target[1]}")
            if b["peak_rss_training_mb"] and o["peak_rss_training_mb"]:
                print(
                    f"[{precision}] peak RSS (training): ours / {other} = "
                    f"{o['peak_rss_training_mb'] / b['peak_rss_training_mb']:.2f}x"
                )
    if "ours-bf16" in results and "baseline-fp32" in results:
        gain = results["ours-bf16"]["supervised_tokens_per_s"] / results["baseline-fp32"]["supervised_tokens_per_s"]
        summary["ours_bf16_over_baseline_fp32"] = round(gain, 3)
        print(f"\nours with a bf16 base (the default where the CPU has native bf16) / fp32 baseline = {gain:.2f}x")
    print(json.dumps({**summary, **results}))


if __name__ == "__main__":
    main()
