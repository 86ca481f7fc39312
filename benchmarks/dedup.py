"""Exact ROUGE-L dedup: ours vs Stanford's pairwise rouge_score loop, measured in one run.

    python benchmarks/dedup.py --data /work/shared/data/alpaca_data.json [--seeds FILE] [--sample 300]

1. Stanford's way (stanford_alpaca generate_instruction.py): tokenize every pool instruction
   once, then score each new instruction against the whole pool with
   `rouge_scorer._score_lcs(new_tokens, pool_tokens)` and keep it if the max F <= 0.7. Run on
   the seeds + the first --sample instructions (single process: its per-pair cost; Stanford's
   multiprocessing pool only adds pickling on top), giving seconds per scored pair.
2. Ours, `dedup_instructions`, on the whole file (plus seeds).
3. Stanford's time for the whole file = seconds per pair x the pairs its loop would score
   (sum over instructions of the pool size when it arrives; the pool is the same since the
   decisions are identical), with seed pairs and instruction pairs costed separately. Printed
   next to ours, with the ratio (wall and CPU clocks).
4. Agreement: on the sample, our keep flags and our exact max similarity (`RougeDeduper`)
   must equal rouge_score's; and the whole-file decisions of the streaming `RougeDeduper` must
   equal the bulk ones when --streaming is given.
5. Optionally (--cli) the whole command `alpacakit curate dedup DATA -o OUT`, timed end to end.
6. `--ab N`: N alternated rounds of `dedup_instructions` on the whole file by its two decision
   paths, the numpy join by chunks and the compiled walk by text (`kernels_jit.bulk_decide`,
   taken from 20K texts when numba loads); the ratio of the medians and a check that the
   decisions are equal; then stops. On the 1M-instruction file of
   `generate_scale.py --phases none --dedup-million --keep DIR` (DIR/million.jsonl):

       python benchmarks/dedup.py --data DIR/million.jsonl --ab 1

Exits 1 if any decision or score differs, or if the ratio is below --min-ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_instructions(path: Path) -> list[str]:
    from alpacakit.io import read_records

    return [r["instruction"] for r in read_records(path, required=["instruction"])]


def default_seeds() -> Path | None:
    from importlib import resources

    for folder in ("seed_data", "seeds"):
        path = Path(str(resources.files("alpacakit.generate") / folder / "seed_tasks.jsonl"))
        if path.exists():
            return path
    return None


def stanford_loop(seeds: list[str], instructions: list[str], threshold: float):
    """Stanford's dedup, as in generate_instruction.py: keep flags, max F per instruction, and
    (pairs, wall s, CPU s) spent on seed pairs and on instruction pairs separately (seeds are
    longer than Alpaca instructions, so each kind is extrapolated with its own cost)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seed_pool = [scorer._tokenizer.tokenize(s) for s in seeds]
    pool: list[list[str]] = []
    keep, max_f = [], []
    cost = {"seed": [0, 0.0, 0.0], "instruction": [0, 0.0, 0.0]}
    for inst in instructions:
        tokens = scorer._tokenizer.tokenize(inst)
        scores = []
        for kind, others in (("seed", seed_pool), ("instruction", pool)):
            w0, c0 = time.perf_counter(), time.process_time()
            scores += [rouge_scorer._score_lcs(tokens, other).fmeasure for other in others]
            acc = cost[kind]
            acc[0] += len(others)
            acc[1] += time.perf_counter() - w0
            acc[2] += time.process_time() - c0
        best = max(scores, default=0.0)
        max_f.append(best)
        keep.append(best <= threshold)
        if keep[-1]:
            pool.append(tokens)
    return keep, max_f, cost


def timed(fn, *args, **kwargs):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def ab_paths(data: list[str], seeds: list[str], t: float, rounds: int) -> int:
    """`rounds` alternated runs of the numpy and the compiled decision paths (same process)."""
    import statistics

    import alpacakit.curate.dedup as dedup

    times: dict[str, list[float]] = {"numpy": [], "compiled": []}
    results = {}
    for r in range(rounds):
        for name, compiled_from in (("numpy", 1 << 60), ("compiled", dedup._COMPILED_FROM)):
            old, dedup._COMPILED_FROM = dedup._COMPILED_FROM, compiled_from
            try:
                keep, wall, cpu = timed(dedup.dedup_instructions, data, seeds, t)
            finally:
                dedup._COMPILED_FROM = old
            times[name].append(wall)
            results[name] = keep
            print(f"  round {r}: {name:8} {wall:.1f}s wall ({cpu:.1f}s CPU), kept {sum(keep)}", flush=True)
    same = results["numpy"] == results["compiled"]
    a, b = statistics.median(times["numpy"]), statistics.median(times["compiled"])
    print(f"bulk dedup of {len(data)}, numpy / compiled: {a:.1f} / {b:.1f}s = {a / b:.2f}x; same decisions: {same}")
    return 0 if same else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="JSON list / JSONL with 'instruction' (e.g. alpaca_data.json)"
    )
    ap.add_argument(
        "--seeds", type=Path, help="self-instruct seed JSONL (default: the packaged seed_tasks.jsonl if present)"
    )
    ap.add_argument("--sample", type=int, default=300, help="instructions timed with Stanford's loop (default 300)")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--min-ratio", type=float, default=10_000.0, help="fail below this speed-up (default 10000)")
    ap.add_argument("--streaming", action="store_true", help="also time the streaming RougeDeduper on the whole file")
    ap.add_argument("--cli", action="store_true", help="also time `alpacakit curate dedup DATA -o OUT` end to end")
    ap.add_argument("--ab", type=int, default=0, metavar="N", help="N rounds of numpy / compiled decisions, then stop")
    args = ap.parse_args()

    from alpacakit.curate.dedup import dedup_instructions
    from alpacakit.curate.rouge import RougeDeduper

    seeds_path = args.seeds or default_seeds()
    seeds = load_instructions(seeds_path) if seeds_path else []
    data = load_instructions(args.data)
    sample = data[: args.sample]
    t = args.threshold
    print(
        f"data: {len(data)} instructions from {args.data}; seeds: {len(seeds)}"
        f"{f' from {seeds_path}' if seeds_path else ' (none found; pass --seeds)'}; threshold {t}"
    )
    if args.ab:
        return ab_paths(data, seeds, t, args.ab)

    ref_keep, ref_max, cost = stanford_loop(seeds, sample, t)
    for kind, (pairs, w, c) in cost.items():
        if pairs:
            print(
                f"rouge_score loop, seeds + first {len(sample)}: {pairs} {kind} pairs in {w:.2f}s wall "
                f"({c:.2f}s CPU) = {w / pairs * 1e6:.1f} us/pair"
            )

    keep, wall, cpu = timed(dedup_instructions, data, seeds, t)
    seed_pairs, inst_pairs, kept_before = len(seeds) * len(data), 0, 0
    for k in keep:
        inst_pairs += kept_before
        kept_before += k

    def estimate(col: int) -> float:
        total = 0.0
        for kind, pairs in (("seed", seed_pairs), ("instruction", inst_pairs)):
            n, *times = cost[kind]
            if pairs:
                per_pair = times[col] / n if n else times[col] / max(cost["instruction"][0], 1)
                total += per_pair * pairs
        return total

    est_wall, est_cpu = estimate(0), estimate(1)
    print(f"ours (dedup_instructions) on all {len(data)}: kept {sum(keep)}, {wall:.2f}s wall ({cpu:.2f}s CPU)")
    print(
        f"Stanford's loop on all {len(data)}: {seed_pairs + inst_pairs:,} pairs -> est. {est_wall:,.0f}s wall "
        f"({est_wall / 3600:.1f} h; {est_cpu:,.0f}s CPU)"
    )
    ratio_wall, ratio_cpu = est_wall / wall, est_cpu / max(cpu, 1e-9)
    print(f"speed-up: {ratio_wall:,.0f}x wall-clock, {ratio_cpu:,.0f}x CPU time (required >= {args.min_ratio:,.0f}x)")

    failures = []
    ours_sample = dedup_instructions(sample, seeds, t)
    if ours_sample != ref_keep:
        bad = [i for i, (a, b) in enumerate(zip(ours_sample, ref_keep)) if a != b]
        failures.append(f"keep/drop differs from rouge_score on sample items {bad[:10]}")
    if keep[: len(sample)] != ref_keep:
        failures.append("the full run's first decisions differ from rouge_score on the sample")
    deduper = RougeDeduper(t, keep_most_similar=1)
    for s in seeds:
        deduper.add_seed(s)
    for i, inst in enumerate(sample):
        r = deduper.add_if_novel(inst)
        if r.kept != ref_keep[i] or r.max_similarity != ref_max[i]:
            failures.append(
                f"sample item {i}: ours kept={r.kept} max={r.max_similarity!r}, "
                f"rouge_score kept={ref_keep[i]} max={ref_max[i]!r}"
            )
            break
    print(f"agreement with rouge_score on the sample (decisions and exact max F): {'OK' if not failures else 'FAILED'}")

    if args.streaming:

        def stream() -> list[bool]:
            d = RougeDeduper(t, keep_most_similar=0, stats=False)
            for s in seeds:
                d.add_seed(s)
            return [d.add_if_novel(x).kept for x in data]

        skeep, swall, scpu = timed(stream)
        print(
            f"streaming RougeDeduper(stats=False) on all {len(data)}: {swall:.2f}s wall ({scpu:.2f}s CPU), "
            f"same decisions as bulk: {skeep == keep}"
        )
        if skeep != keep:
            failures.append("streaming and bulk decisions differ")

    if args.cli:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.jsonl"
            cmd = [sys.executable, "-m", "alpacakit.cli.main", "curate", "dedup", str(args.data), "-o", str(out)]
            if seeds_path:
                cmd += ["--seeds", str(seeds_path)]
            w0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
            cli_wall = time.perf_counter() - w0
            print(f"CLI `{' '.join(cmd[1:])}`: {cli_wall:.2f}s wall, exit {proc.returncode}: {proc.stdout.strip()}")
            if proc.returncode != 0:
                failures.append(f"CLI failed: {proc.stderr.strip()}")
            elif sum(1 for _ in open(out, encoding="utf-8")) != sum(keep):
                failures.append("CLI output count differs")

    if ratio_wall < args.min_ratio:
        failures.append(f"speed-up {ratio_wall:,.0f}x is below {args.min_ratio:,.0f}x")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
