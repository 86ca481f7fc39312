"""Self-instruct generation, Stanford Alpaca's way by default.

Each request shows the teacher our requirements and N seed tasks, and asks it to continue the
numbered list. Every task in the answer is parsed, filtered (`filters.py`) and kept only if its
ROUGE-L F-measure with every instruction already in the pool (seeds, then kept ones, in order)
is <= the threshold. The pool grows as examples are kept (exact streaming dedup, `curate/rouge.py`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit.config import AlpacakitConfig
from alpacakit.generate.filters import InstructionFilter
from alpacakit.generate.parse import parse_tasks
from alpacakit.generate.prompt import PromptBuilder
from alpacakit.generate.seeds import SeedTask, default_seeds_path, load_seed_tasks
from alpacakit.io import sha256_file
from alpacakit.jobs import JobTotals, Request

if TYPE_CHECKING:
    from alpacakit.curate.rouge import DedupResult


class SelfInstructProcessor:
    """Journal entry -> kept examples + discards. Deterministic given the entry sequence."""

    def __init__(self, seeds: list[SeedTask], config: AlpacakitConfig, teacher_name: str):
        from alpacakit.curate.rouge import RougeDeduper

        g = config.generate
        filters = g.filters
        if g.tokenizer == "multilingual" and filters.drop_non_ascii_start:  # that rule is for English data
            filters = filters.model_copy(update={"drop_non_ascii_start": False})
        count_words = None
        if g.tokenizer == "multilingual":
            from alpacakit.curate.rouge import tokenize_multilingual

            count_words = lambda text: len(tokenize_multilingual(text))  # noqa: E731
        self.filter = InstructionFilter(filters, count_words)
        # keep_most_similar=0 with mean_similarity=off: decisions only (no search below the threshold)
        stats = g.keep_most_similar > 0 or g.mean_similarity != "off"
        self.dedup = RougeDeduper(
            threshold=g.similarity_threshold,
            keep_most_similar=g.keep_most_similar,
            stats=stats,
            mean=g.mean_similarity,
            tokenizer=g.tokenizer,
        )
        for s in seeds:
            self.dedup.add_seed(s.instruction)
        self.teacher_name = teacher_name
        self.stats_copies = (auto_stats_copies() if g.stats_copies is None else g.stats_copies) if stats else 0
        self._target = g.num
        self._farm = None

    def fork_helpers(self, keep_out: tuple = ()):
        """In the processing worker (jobs/worker.py), before its first entry: from now on the
        statistics are computed by `generate.stats_copies` forked copies of the pool
        (`curate/stats_farm.py`) and this process only decides, with the compiled index for a
        large run. Returns the farm (the worker waits on it, then writes each entry's results
        once they are complete), or None."""
        expected_pool = len(self.dedup) + self._target
        if self.stats_copies:
            from alpacakit.curate.stats_farm import StatsFarm

            self.dedup.use_compiled_search(expected_pool)  # loaded here once, for every copy
            self._farm = StatsFarm(self.dedup, self.stats_copies, keep_out)
            self.dedup.drop_statistics()
        if not self.dedup.stats:
            self.dedup.use_compiled_decisions(expected_pool)  # (after the forks: the copies never decide)
        return self._farm

    def _candidates(self, entry: dict) -> tuple[list, list[dict]]:
        """(tasks that pass the filters, discards made before dedup), in answer order."""
        finish = "cut" if entry.get("cut") else entry.get("finish_reason", "stop")
        tasks, parse_discards = parse_tasks(
            entry.get("text") or "", entry.get("first_number", 4), finish, continues_prompt=entry.get("api") != "chat"
        )
        req = entry["index"]
        discards = [{"request": req, "reason": d.reason, "text": d.text[:2000]} for d in parse_discards]
        if not tasks and not parse_discards:
            discards.append({"request": req, "reason": "empty_response", "text": (entry.get("text") or "")[:2000]})
        passed = []
        for t in tasks:
            reason = self.filter.reason(t.instruction)
            if reason:
                discards.append({"request": req, "reason": reason, "instruction": t.instruction})
            else:
                passed.append(t)
        return passed, discards

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]:
        req = entry["index"]
        tasks, discards = self._candidates(entry)
        kept = []
        for t in tasks:
            if self._farm is None:
                result = self.dedup.add_if_novel(t.instruction)
                dropped = not result.kept
            else:  # the statistics come later, from a copy of the pool (fork_helpers)
                result, hits = None, self.dedup.decide_and_add(t.instruction)
                dropped = bool(hits)
            if dropped:
                record = {"request": req, "reason": "near_duplicate", "instruction": t.instruction}
                describe, out = _describe_dropped, discards
            else:
                record = {
                    "instruction": t.instruction,
                    "input": t.input,
                    "output": t.output,
                    "teacher": self.teacher_name,
                    "request": req,
                    "seed_ids": entry.get("seed_ids", []),
                }
                describe, out = _describe_kept, kept
            out.append(record)
            if result is not None:
                describe(record, result)
            else:
                self._farm.submit(t.instruction, hits, functools.partial(describe, record))
        return kept, discards

    def restore(self, entry: dict, kept: list[dict], discards: list[dict]) -> tuple[list[dict], list[dict]] | None:
        """Take an earlier run's results for this entry when they are the ones `process` would
        derive: the same filter discards, and every task that passed the filters either kept
        (same instruction, input and output) or dropped as a near-duplicate, in order. The kept
        ones join the pool without the search that gave their statistics: processing is
        deterministic, so those statistics are still the ones it would compute."""
        tasks, pre = self._candidates(entry)
        old_pre = [d for d in discards if d.get("reason") != "near_duplicate"]
        dropped = [d for d in discards if d.get("reason") == "near_duplicate"]
        if old_pre != pre or len(kept) + len(dropped) != len(tasks):
            return None
        ki = di = 0
        for t in tasks:
            if ki < len(kept) and (kept[ki].get("instruction"), kept[ki].get("input"), kept[ki].get("output")) == (
                t.instruction,
                t.input,
                t.output,
            ):
                ki += 1
            elif di < len(dropped) and dropped[di].get("instruction") == t.instruction:
                di += 1
            else:
                return None
        for r in kept:
            self.dedup.add_known(r["instruction"])
        return kept, discards


def auto_stats_copies() -> int:
    """One copy per core beyond the two that the event loop and the deciding worker use, 1 to 4.
    Each copy indexes every pool entry and describes its share, so on two cores one copy does
    the same work in less CPU: a 52K run there, alternated, took a median 12.95 s with one copy
    against 13.6 s with two (PSS 367 against 424 MB), now that the search is compiled (two had
    been faster while it ran in numpy: 34 s against 40 s). Past four, the decider is the slower
    side."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores - 2))


def _describe_kept(record: dict, result: DedupResult) -> None:
    record["max_similarity"] = result.max_similarity
    record["avg_similarity"] = result.mean_similarity
    record["most_similar_instructions"] = result.most_similar


def _describe_dropped(record: dict, result: DedupResult) -> None:
    record["max_similarity"] = result.max_similarity
    record["most_similar"] = dict(list(result.most_similar.items())[:3])


@dataclass
class SelfInstructPlan:
    """Everything the runner needs: the processor, the request factory, and the fingerprint
    that a resumed run must match."""

    processor: SelfInstructProcessor
    make_request: Callable[[int], Request]
    indices: Iterator[int]
    fingerprint: dict[str, Any]
    inputs: dict[str, Any]


def tasks_written(writing: list[tuple[Request, str]]) -> int:
    """Tasks already complete in answers still being written (the last one may be unfinished
    and is not counted, as if the answers were cut now)."""
    n = 0
    for req, text in writing:
        tasks, _ = parse_tasks(text, req.meta.get("first_number", 1), "length", continues_prompt=req.api != "chat")
        n += len(tasks)
    return n


def runaway_answer(threshold: float, max_task_chars: int) -> Callable[[Request, str], bool]:
    """For the job engine (`alpacakit.jobs`): True when an answer being written has stopped producing new tasks.

    Small teachers degenerate in two ways (seen with Qwen2.5-Coder 1.5B): they start repeating
    their own earlier instructions word for word, and from the first repeat on write almost
    nothing new (in one trial 13 of the 14 tasks after a first repeat were repeats); or one output
    runs on for thousands of characters until the token limit. Every such token is wasted
    (repeats are dropped by ROUGE-L anyway, a cut-off task as truncated), and a local teacher
    writes ~2-4 tokens/s per answer, so the answer is cut at the first repeat (ROUGE-L F above
    `threshold` against an earlier task of the same answer) or when the unfinished task passes
    `max_task_chars`."""
    from alpacakit.curate.rouge import rouge_l_f

    checked: dict[int, int] = {}  # request index -> tasks already compared

    def check(req: Request, text: str) -> bool:
        tasks, discards = parse_tasks(
            text, req.meta.get("first_number", 1), "length", continues_prompt=req.api != "chat"
        )
        if discards and len(discards[-1].text) > max_task_chars:
            return True
        instructions = [t.instruction.lower() for t in tasks]
        start = checked.get(req.index, 1)
        checked[req.index] = max(start, len(instructions))
        return any(
            rouge_l_f(instructions[i], instructions[j]) > threshold
            for i in range(start, len(instructions))
            for j in range(i)
        )

    return check


def target_in_sight(target: int) -> Callable[[JobTotals, list[tuple[Request, str]]], bool]:
    """For the job engine (`alpacakit.jobs`): True when the tasks already complete in the answers being written,
    kept at the rate seen so far, would reach `target`. Those answers are then cut there
    instead of being written to their end (a local teacher writes ~4 tokens/s per answer when
    6 share the CPU: the last answer's tail was minutes of waiting for examples past the target).
    An estimate that proves too high only means more requests are sent afterwards."""

    def check(totals: JobTotals, writing: list[tuple[Request, str]]) -> bool:
        complete = tasks_written(writing)
        seen = totals.kept + sum(totals.discards.values())
        keep_rate = totals.kept / seen if seen >= 20 else 0.5
        return complete > 0 and totals.kept + keep_rate * complete >= target

    return check


def enough_in_flight(target: int, most_per_answer: int = 0) -> Callable[[JobTotals, list[tuple[Request, str]]], bool]:
    """For the job engine (`alpacakit.jobs`): True when the answers in flight will probably reach `target` by
    themselves (each expected to keep at least as many tasks as a finished answer kept on
    average), so a new request would only pay for its prompt and then be cut.

    Answers journaled but still at the processing worker (`totals.pending`) count like requests
    in flight; and while they could reach the target (`totals.pending_most`, see `most_kept`)
    nothing is sent: their reports come within milliseconds, and a request sent on a guess
    would be an overshoot that processing in this process would not have made."""

    def check(totals: JobTotals, writing: list[tuple[Request, str]]) -> bool:
        if totals.pending and totals.kept + totals.pending_most >= target:
            return True
        processed = totals.requests - totals.pending
        if processed >= 3:
            per_request = totals.kept / processed
        elif totals.pending:
            # The worker has not reported enough to go by yet (it starts, or the machine is busy):
            # count each answer at the most it could keep, rather than send freely meanwhile
            # (a busy machine sent 128 requests for --num 2000 that way: 166 examples over).
            per_request = totals.pending_most / totals.pending
        elif processed or most_per_answer:
            # Too few answers to go by, or none yet: the floor below (the most one answer has kept,
            # or what one is asked for) decides. Sending freely here sent the whole first wave:
            # `--num 100 --concurrency 64` paid for 64 answers and kept 1,085 examples.
            per_request = 0.0
        else:
            return False
        # Every answer still to come is counted at the most one answer has kept so far (before any
        # kept anything: at `most_per_answer`, the tasks one answer is asked for), not at the
        # mean: a request goes out only if even that leaves the target short, so the answers in
        # flight cannot overshoot it by more than one request. (At the mean, judged on the early,
        # stale sample a lagging worker gives, too many went out: --num 2000 overshot by 3.)
        per_request = max(per_request, totals.best_kept or most_per_answer)
        seen = totals.kept + sum(totals.discards.values())
        keep_rate = totals.kept / seen if seen else 0.0
        expected = sum(max(per_request, keep_rate * tasks_written([w]) if w[1] else 0.0) for w in writing)
        return totals.kept + expected + per_request * totals.pending >= target

    return check


def most_kept(entry: dict) -> int:
    """The most examples processing `entry` can keep: every task starts at an `Instruction:`
    label (the first one may be the prompt's), so at most one more than the labels written."""
    if entry.get("failed"):
        return 0
    return (entry.get("text") or "").lower().count("instruction") + 1


def build_plan(config: AlpacakitConfig, api: str, teacher_name: str, done: set[int]) -> SelfInstructPlan:
    """`done` is the job's live set of answered request indices (filled by its replay)."""
    g = config.generate
    if g.language.strip().lower() != "english" and g.tokenizer == "rouge_score":
        import sys

        print(
            f"warning: generate.language is {g.language} but generate.tokenizer is rouge_score, which reads only "
            "[a-z0-9] words: near-duplicates in other scripts go unnoticed. Set generate.tokenizer=multilingual.",
            file=sys.stderr,
        )
    seeds_path = Path(g.seeds) if g.seeds else default_seeds_path()
    seeds = load_seed_tasks(seeds_path)
    builder = PromptBuilder(
        seeds,
        num_examples=g.num_prompt_instructions,
        tasks_per_request=g.tasks_per_request,
        rng_seed=g.rng_seed,
        header_path=g.prompt,
        input_requests=g.input_requests,
        language=g.language,
    )
    prompt_sha = hashlib.sha256((builder.header + builder.example + "\n".join(builder.task_types)).encode()).hexdigest()

    def make_request(index: int) -> Request:
        r = builder.build(index)
        return Request(
            index=index,
            prompt=r.prompt,
            api=api,
            stop=r.stop if api == "completions" else (),
            meta={"seed_ids": list(r.seed_ids), "first_number": r.first_new_number},
        )

    return SelfInstructPlan(
        processor=SelfInstructProcessor(seeds, config, teacher_name),
        make_request=make_request,
        indices=(i for i in range(g.max_requests or 10 + 2 * g.num) if i not in done),
        fingerprint={
            "mode": "self-instruct",
            "teacher": config.teacher.model,
            "api": api,
            "seeds_sha256": sha256_file(seeds_path),
            "prompt_sha256": prompt_sha,
            "rng_seed": g.rng_seed,
            "num_prompt_instructions": g.num_prompt_instructions,
            "tasks_per_request": g.tasks_per_request,
            # added later: only when set, so runs journaled before it still resume
            **({"input_requests": g.input_requests} if g.input_requests else {}),
            "similarity_threshold": g.similarity_threshold,
            **({"tokenizer": g.tokenizer} if g.tokenizer != "rouge_score" else {}),  # (added later, as above)
            **({"language": g.language} if g.language != "English" else {}),  # (likewise)
            "filters": g.filters.model_dump(),
        },
        inputs={"seeds": {"path": str(seeds_path), "sha256": sha256_file(seeds_path), "count": len(seeds)}},
    )
