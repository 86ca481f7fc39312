"""Where self-instruct's processing worker spends its time, on a real journal, without HTTP.

    python benchmarks/generate_scale.py --num 52000 --phases fresh --keep /tmp/gs   # makes a journal
    python benchmarks/worker_processing.py --journal /tmp/gs/fresh/responses.jsonl [--copies 1,2] [--ab 3] [--ab-strip 3] [--ab-compiled 2] [--ab-decide 3]

Replays every answer of the journal through `SelfInstructProcessor` with the default settings,
side by side in this process:
  * one process computing everything (`generate.stats_copies=0`): CPU seconds;
  * decisions only (no statistics): what the deciding worker cannot hand off;
  * the worker as `generate` runs it with K forked copies computing the statistics
    (`curate/stats_farm.py`): the decider's CPU, the wall time until every record is whole,
    and the speed-up over one process. Results are compared byte for byte with one process's.
  * `--ab-strip N`: N alternated rounds of decisions only with 2026-12-06's separator
    stripping (the regex, run when a task ends in `###`) and today's walk; then stops.
  * `--ab-compiled N`: N alternated rounds of one process with the default statistics, by the
    numpy search and by the compiled one (`PoolStats.compiled`); then stops.
  * `--ab-decide N`: N alternated rounds of decisions only, by the Python signature index and
    by the compiled one (`RougeDeduper.use_compiled_decisions`); then stops.
  * `--ab N`: N alternated rounds of decisions only with the code before 2026-12-06's changes
    (the trailing-separator regex on every task, the key order re-derived at each 2x growth of
    the pool) and after; the ratio of the medians, and a check that the results are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path

import alpacakit.curate.rouge as rouge
import alpacakit.generate.parse as parse
from alpacakit.config import AlpacakitConfig
from alpacakit.generate.seeds import default_seeds_path, load_seed_tasks
from alpacakit.generate.self_instruct import SelfInstructProcessor

COMPILED_DECISIONS = False  # one_process decides with the compiled index (`--ab-decide`)


def processor(copies: int = 0, stats: bool = True) -> SelfInstructProcessor:
    cfg = AlpacakitConfig()
    cfg.generate.stats_copies = copies
    cfg.generate.num = 52_000  # as `generate --num 52000`: the worker's helpers use the compiled kernels
    if not stats:
        cfg.generate.keep_most_similar, cfg.generate.mean_similarity = 0, "off"
    p = SelfInstructProcessor(load_seed_tasks(default_seeds_path()), cfg, "bench")
    if COMPILED_DECISIONS:
        p.dedup.use_compiled_decisions(cfg.generate.num)
    return p


def dump(results) -> bytes:
    return b"".join(
        json.dumps(r, ensure_ascii=False).encode() + b"\n" for kept, dropped in results for r in kept + dropped
    )


def one_process(entries, stats=True) -> tuple[float, bytes]:
    p = processor(0, stats)
    t = time.process_time()
    results = [p.process(e) for e in entries]
    return time.process_time() - t, dump(results)


def with_copies(entries, copies: int) -> tuple[float, float, float, bytes]:
    """(the decider's CPU s, wall s until every record is whole, the copies' CPU s, results),
    batches of 8 answers."""
    p = processor(copies)
    before = os.times()
    t0, c0 = time.perf_counter(), time.process_time()
    farm = p.fork_helpers()
    results = []
    for i in range(0, len(entries), 8):
        results += [p.process(e) for e in entries[i : i + 8]]
        farm.flush()
        farm.collect()
    while farm.described < farm.submitted:
        wait(farm.connections())
        farm.collect()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    farm.close()  # (reaps the copies, so their CPU time is counted below)
    after = os.times()
    copies_cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return cpu, wall, copies_cpu, dump(results)


def alternate(entries, rounds: int, what: str, stats: bool, before: tuple, after: tuple) -> None:
    """`rounds` alternated runs of one process with the code paths `before` and `after`, each
    (name, switch): switch() sets its path up and returns the undo. Prints the ratio of the
    median CPU seconds and checks that both give the same bytes."""
    times: dict[str, list[float]] = {before[0]: [], after[0]: []}
    ref = None
    for r in range(rounds):
        for name, switch in (before, after):
            undo = switch()
            try:
                dt, out = one_process(entries, stats=stats)
            finally:
                undo()
            times[name].append(dt)
            ref = ref or out
            assert out == ref, f"{before[0]} and {after[0]} gave different results"
            print(f"  round {r}: {name:8} {dt:.1f} CPU s", flush=True)
    b, a = statistics.median(times[before[0]]), statistics.median(times[after[0]])
    print(f"{what}, {before[0]} / {after[0]}: {b:.1f} / {a:.1f} CPU s = {b / a:.2f}x (same results)")


def patched(module, **values):
    """A switch that sets module attributes and returns the undo."""

    def switch():
        old = {k: getattr(module, k) for k in values}
        for k, v in values.items():
            setattr(module, k, v)
        return lambda: [setattr(module, k, v) for k, v in old.items()]

    return switch


def ab(entries, rounds: int) -> None:
    """Decisions only with the code before 2026-12-06's changes and after."""

    def old():
        undo_parse = patched(parse, _strip_separators=lambda t: parse._TRAILING.sub("", t))()
        undo_rouge = patched(rouge, _REORDER_BY_4_FROM=1 << 60)()
        return lambda: (undo_parse(), undo_rouge())

    alternate(entries, rounds, "decisions only", False, ("before", old), ("after", lambda: lambda: None))


def ab_strip(entries, rounds: int) -> None:
    """Decisions only with 2026-12-06's separator stripping (the regex, when the text ends in
    `###`) and with today's walk back from the end."""
    guarded = lambda t: parse._TRAILING.sub("", t) if t.rstrip().endswith("###") else t  # noqa: E731
    before = ("regex", patched(parse, _strip_separators=guarded))
    alternate(entries, rounds, "decisions only, separator", False, before, ("walk", lambda: lambda: None))


def ab_compiled(entries, rounds: int) -> None:
    """One process with the default statistics, by the numpy search and by the compiled one
    (`PoolStats.compiled`, as generate's statistics copies use it)."""
    import alpacakit.curate.pool_stats as pool_stats

    pool_stats.pool_kernel.warm()
    after = ("compiled", patched(pool_stats.PoolStats, compiled=True))
    alternate(entries, rounds, "default statistics, search", True, ("numpy", lambda: lambda: None), after)


def ab_decide(entries, rounds: int) -> None:
    """Decisions only, by the Python signature index and by the compiled one (decide_kernel.py,
    as generate's deciding worker uses it)."""
    after = ("compiled", patched(sys.modules[__name__], COMPILED_DECISIONS=True))
    alternate(entries, rounds, "decisions only, index", False, ("python", lambda: lambda: None), after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--journal", required=True, help="a generate run's responses.jsonl")
    ap.add_argument("--copies", default="1,2", help="numbers of statistics copies to run, comma-separated")
    ap.add_argument("--ab", type=int, default=0, metavar="N", help="N rounds of the before/after decision paths")
    ap.add_argument("--ab-strip", type=int, default=0, metavar="N", help="N rounds of regex/walk separator stripping")
    ap.add_argument("--ab-compiled", type=int, default=0, metavar="N", help="N rounds of numpy/compiled statistics")
    ap.add_argument("--ab-decide", type=int, default=0, metavar="N", help="N rounds of Python/compiled decisions")
    args = ap.parse_args()
    entries = [json.loads(line) for line in Path(args.journal).read_text(encoding="utf-8").splitlines() if line]
    print(f"# {len(entries)} answers from {args.journal}")
    if args.ab:
        ab(entries, args.ab)
    if args.ab_strip:
        ab_strip(entries, args.ab_strip)
        return
    if args.ab_compiled:
        ab_compiled(entries, args.ab_compiled)
        return
    if args.ab_decide:
        ab_decide(entries, args.ab_decide)
        return
    cpu_one, ref = one_process(entries)
    print(f"one process, default statistics: {cpu_one:.1f} CPU s ({len(ref.splitlines())} records)")
    cpu_decide, _ = one_process(entries, stats=False)
    print(f"decisions only: {cpu_decide:.1f} CPU s")
    for k in (int(x) for x in args.copies.split(",") if x):
        cpu, wall, copies_cpu, out = with_copies(entries, k)
        same = "identical" if out == ref else "DIFFERENT"
        print(
            f"{k} copies: decider {cpu:.1f} CPU s, copies {copies_cpu:.1f} CPU s in all, every record whole "
            f"after {wall:.1f} s = {cpu_one / wall:.2f}x one process; results {same}"
        )


if __name__ == "__main__":
    main()
