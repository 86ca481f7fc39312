"""`alpacakit eval pairwise MODEL.json BASELINE.json`: an LLM judge compares two systems' answers.

For every instruction answered by both systems the judge (a folder of data, see
`judges/__init__.py`) sees the two answers as A (first) and B (second) and names the better one
or a tie. Judges prefer whatever is shown first (or second) more often than chance, so by
default every pair is judged in both orders and the two verdicts are averaged; `order: random`
judges one order per instruction, drawn from a seeded generator (half the cost; the bias then
averages out over instructions instead of within each one).

Preferences use AlpacaEval's encoding from the model's side: 2 = the model's answer (MODEL.json)
won, 1 = the baseline's (BASELINE.json) won, 1.5 = tie; the average of two orders can be 1.25
or 1.75; an instruction whose judgments were all unreadable gets None and is left out. The
win rate, its standard error and the length-controlled win rate come from `winrate.py` and
equal the `alpaca-eval` package's numbers on the same preferences.

Each judgment is journaled under a key made of everything that shapes it (judge folder
fingerprint, judge model, the exact prompt), so a rerun, a crash, a longer eval set or another
comparison that needs the same judgment pays for it once. Results:

- `<OUT>.json`: metrics, position-bias diagnostics, judge cost, and one annotation per
  instruction (alpaca_eval's columns: instruction, output_1 = baseline, output_2 = model,
  generator_1, generator_2, annotator, preference), so `pandas.DataFrame(x["annotations"])`
  feeds alpaca_eval's own metric functions;
- `<OUT>.work/`: the journal (responses.jsonl), parsed judgments, unparsable replies, manifest.
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpacakit import __version__
from alpacakit.errors import DataError
from alpacakit.evaluate.judges import Judge, load_judge
from alpacakit.evaluate.outputs import (
    estimator,
    run_pending,
    run_pending_batches,
    stable_index,
    work_dir_for,
)
from alpacakit.jobs import JobOptions, JobTotals, JournaledJob, Request
from alpacakit.manifest import validated

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig

MODEL_FIRST, BASELINE_FIRST = "model_first", "baseline_first"
# Preference (model's side) for a position verdict, by which system was shown first.
_PREFERENCE = {
    MODEL_FIRST: {"first": 2.0, "second": 1.0, "tie": 1.5},
    BASELINE_FIRST: {"first": 1.0, "second": 2.0, "tie": 1.5},
}


def judge_teacher_config(judge: Judge, jc: Any) -> Any:
    """The TeacherConfig that runs `judge`: model and place from config, decoding from the folder."""
    from alpacakit.teachers.config import TeacherConfig

    d = judge.decoding
    return TeacherConfig(
        model=jc.model or judge.model,
        base_url=jc.base_url,
        api_key_env=jc.api_key_env,
        api=judge.api,
        max_concurrency=jc.max_concurrency,
        max_retries=jc.max_retries,
        timeout_s=jc.timeout_s,
        temperature=float(d.get("temperature", 0.0)),
        top_p=float(d.get("top_p", 1.0)),
        max_tokens=int(d.get("max_tokens", 16)),
        seed=jc.seed,
        n_ctx=jc.n_ctx,
        n_threads=jc.n_threads,
        **(
            {"price": jc.price} if "price" in jc.model_fields_set else {}
        ),  # else: the price table's, if it lists the model
    )


def _generator(records: list[dict], path: Path) -> str:
    names = Counter(r["generator"] for r in records)
    return names.most_common(1)[0][0] if names else path.stem


def pair_outputs(model: list[dict], baseline: list[dict]) -> tuple[list[tuple[dict, dict]], list[str], list[str]]:
    """Pairs (model record, baseline record) by instruction text, in the model file's order.

    A text asked k times is paired occurrence by occurrence. Returns the pairs and the
    instructions only one side answered.
    """
    by_text: dict[str, list[dict]] = defaultdict(list)
    for r in baseline:
        by_text[r["instruction"]].append(r)
    used: Counter = Counter()
    pairs, only_model = [], []
    for r in model:
        text = r["instruction"]
        k = used[text]
        if k < len(by_text.get(text, [])):
            pairs.append((r, by_text[text][k]))
            used[text] += 1
        else:
            only_model.append(text)
    only_baseline = [t for t, rs in by_text.items() for _ in range(len(rs) - used[t])]
    return pairs, only_model, only_baseline


class JudgmentProcessor:
    """Journal entry -> parsed judgment (kept) or an unreadable reply (discarded)."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.by_key: dict[str, dict] = {}

    def process(self, entry: dict) -> tuple[list[dict], list[dict]]:
        verdict = self.judge.parse(entry.get("text") or "")
        rec = {
            "key": entry.get("key"),
            "verdict": verdict,
            "reply": entry.get("text"),
            "finish_reason": entry.get("finish_reason"),
            "cost": float(entry.get("cost", 0.0) or 0.0),
            "usage": entry.get("usage") or {},
            "latency_s": float(entry.get("latency_s", 0.0) or 0.0),
            "model": entry.get("model"),
        }
        self.by_key.setdefault(rec["key"], rec)
        if verdict is None:
            return [], [{**rec, "reason": "unparsed"}]
        return [rec], []


@dataclass
class PairwiseResult:
    out_path: Path
    status: str
    metrics: dict[str, Any]
    cost: dict[str, Any]
    position_bias: dict[str, Any]

    def summary(self) -> str:
        m = self.metrics

        def pct(x: Any) -> str:
            return "n/a" if x is None else f"{x:.1f}%"

        se = m.get("standard_error")
        lc = m.get("length_controlled_winrate")
        return (
            f"{self.status}: win rate {pct(m.get('win_rate'))}"
            + (f" (SE {se:.1f})" if se is not None else "")
            + f", length-controlled {pct(lc)} over {m.get('n_total', 0)} instructions "
            f"({m.get('n_wins', 0)} wins, {m.get('n_wins_base', 0)} losses, {m.get('n_draws', 0)} ties); "
            f"judge cost ${self.cost['cost_usd']:.4f} for {self.cost['judgments']} judgments "
            f"({self.cost['paid_this_run']['requests']} new, ${self.cost['paid_this_run']['cost_usd']:.4f}"
            + (", Batch API" if self.cost.get("batch_api_price_factor") else "")
            + f") -> {self.out_path}"
        )


def _plan_orders(order: str, seed: int, instruction: str, occurrence: int) -> list[str]:
    if order == "both":
        return [MODEL_FIRST, BASELINE_FIRST]
    rng = random.Random(json.dumps([seed, instruction, occurrence]))  # per instruction: stable under reordering
    return [MODEL_FIRST if rng.random() < 0.5 else BASELINE_FIRST]


def default_out(model_path: Path, model_gen: str, baseline_gen: str) -> Path:
    def safe(s: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)

    return model_path.parent / f"pairwise-{safe(model_gen)}-vs-{safe(baseline_gen)}.json"


def judge_pairwise(
    model_path: str | Path,
    baseline_path: str | Path,
    config: AlpacakitConfig,
    *,
    out: str | Path | None = None,
    show_progress: bool = True,
    teacher: Any = None,
    limit: int | None = None,
) -> PairwiseResult:
    """Judge MODEL against BASELINE with `config.eval.judge`; resumable; see the module doc.

    `teacher` replaces the judge model (tests). Status: complete, stopped_at_budget, or incomplete
    (with eval.judge.batch_api: judgments whose batch line failed, left for a rerun).
    """
    from alpacakit.evaluate.evalsets import load_outputs
    from alpacakit.evaluate.winrate import summarize
    from alpacakit.io import atomic_write_json

    jc = config.eval.judge
    judge = load_judge(jc.name)
    tcfg = judge_teacher_config(judge, jc)
    from alpacakit.teachers.prices import require_known_price

    require_known_price(tcfg, jc.max_cost, "eval.judge")
    if jc.batch_api:  # the Batch API is an endpoint's: refuse a local judge before any work
        from alpacakit.jobs.batch import require_endpoint

        require_endpoint(tcfg, "eval.judge.batch_api (--batch-api)", teacher)
    model_path, baseline_path = Path(model_path), Path(baseline_path)
    model_recs, base_recs = load_outputs(model_path), load_outputs(baseline_path)
    model_gen, base_gen = _generator(model_recs, model_path), _generator(base_recs, baseline_path)
    pairs, only_model, only_base = pair_outputs(model_recs, base_recs)
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise DataError(
            f"{model_path} and {baseline_path} share no instruction",
            hint="both files must answer the same eval set (the 'instruction' texts are matched exactly)",
        )
    out = Path(out) if out else default_out(model_path, model_gen, base_gen)
    work = work_dir_for(out)
    judge_id = {
        "judge": judge.name,
        "judge_fingerprint": judge.fingerprint,
        "judge_model": tcfg.model,
        "judge_base_url": tcfg.base_url,
    }

    # The plan: one or two judgments per pair, each with a content key.
    plan: list[list[tuple[str, str]]] = []  # per pair: [(order, key)]
    requests: dict[str, Request] = {}
    seen: Counter = Counter()
    for m, b in pairs:
        text = m["instruction"]
        occurrence = seen[text]
        seen[text] += 1
        slots = []
        for order in _plan_orders(jc.order, jc.seed, text, occurrence):
            first, second = (m["output"], b["output"]) if order == MODEL_FIRST else (b["output"], m["output"])
            prompt = judge.render(text, first, second)
            system = judge.system
            if judge.api == "completions" and system:
                prompt, system = f"{system}\n\n{prompt}", None
            key = json.dumps({**judge_id, "system": system, "prompt": prompt}, sort_keys=True, ensure_ascii=False)
            slots.append((order, key))
            if key not in requests:
                idx = stable_index(key)
                requests[key] = Request(
                    index=idx, prompt=prompt, api=judge.api, system=system, meta={"key": key, "order": len(requests)}
                )
        plan.append(slots)

    processor = JudgmentProcessor(judge)
    done: set[int] = set()
    job = JournaledJob(work, processor, done)
    fingerprint = {**judge_id, "order": jc.order, "seed": jc.seed}
    previous = job.read_manifest()  # no settings check needed: keys make every reuse exact
    job.replay()
    pending = {r.index: r for r in requests.values() if r.index not in done}
    cached = len(requests) - len(pending)
    before = job.totals.as_dict()
    started = time.time()
    manifest: dict[str, Any] = {
        "stage": "eval-pairwise",
        "alpacakit_version": __version__,
        "python": platform.python_version(),
        "fingerprint": fingerprint,
        "model": {"generator": model_gen, "path": str(model_path)},
        "baseline": {"generator": base_gen, "path": str(baseline_path)},
        "judge_dir": str(judge.path),
        "output": str(out),
        "created_at": (previous or {}).get("created_at", started),
    }

    def write_manifest(status: str) -> None:
        manifest.update(status=status, counts=job.totals.as_dict(), updated_at=time.time())
        job.write_manifest(validated(manifest))

    write_manifest("running")
    reason = "exhausted"
    sampling: dict[str, Any] = {"max_tokens": tcfg.max_tokens, "temperature": tcfg.temperature, "top_p": tcfg.top_p}
    if tcfg.seed is not None:
        sampling["seed"] = tcfg.seed
    if jc.batch_api:  # half price, verdicts within hours; resumable from the work folder's batches.jsonl
        manifest["batch_api"] = {"price_factor": config.eval.batch.price_factor}
        if pending:
            reason, manifest["batch_api"] = asyncio.run(
                run_pending_batches(
                    job,
                    tcfg,
                    pending,
                    JobOptions(sampling=sampling, max_cost=jc.max_cost),
                    settings=config.eval.batch,
                    progress_totals=JobTotals(requests=cached, kept=cached),
                    target=len(requests),
                    unit="judged",
                    label=f"eval pairwise {model_gen} vs {base_gen}",
                    show_progress=show_progress,
                    heartbeat=lambda: write_manifest("running"),
                )
            )
        pending = {}
    elif pending:
        from alpacakit.jobs.batch import refuse_open_batches

        refuse_open_batches(job)  # an earlier --batch-api run's batches still out: judging live would pay twice
    if pending:
        own = teacher is None

        async def drive() -> str:
            t = teacher
            if own:
                from alpacakit.models.backends import make_backend

                t = make_backend(tcfg)
            try:
                shown = JobTotals(requests=cached, kept=cached)
                return await run_pending(
                    job,
                    t,
                    pending,
                    JobOptions(
                        concurrency=min(tcfg.max_concurrency, getattr(t, "max_concurrency", tcfg.max_concurrency)),
                        sampling=sampling,
                        max_cost=jc.max_cost,
                    ),
                    estimate=estimator(tcfg.price, tcfg.max_tokens),
                    progress_totals=shown,
                    target=len(requests),
                    unit="judged",
                    label=f"eval pairwise {model_gen} vs {base_gen}",
                    show_progress=show_progress,
                    heartbeat=lambda: write_manifest("running"),
                )
            finally:
                if own:
                    await t.aclose()

        reason = asyncio.run(drive())
    status = {"budget": "stopped_at_budget", "incomplete": "incomplete"}.get(reason, "complete")

    annotations, used = _annotate(pairs, plan, processor.by_key, judge, model_gen, base_gen)
    prefs = [a["preference"] for a in annotations]
    metrics = summarize(prefs, [len(a["output_2"]) for a in annotations], [len(a["output_1"]) for a in annotations])
    metrics["n_unparsed_judgments"] = sum(1 for r in used if r["verdict"] is None)
    metrics["n_missing_judgments"] = sum(len(slots) for slots in plan) - len(used)
    after = job.totals.as_dict()
    cost = {
        "judgments": len(used),
        "cached_at_start": cached,
        "cost_usd": round(sum(r["cost"] for r in used), 6),
        "prompt_tokens": sum(int(r["usage"].get("prompt_tokens", 0)) for r in used),
        "completion_tokens": sum(int(r["usage"].get("completion_tokens", 0)) for r in used),
        "judge_seconds": round(sum(r["latency_s"] for r in used), 2),
        "paid_this_run": {
            "requests": after["requests"] - before["requests"],
            "cost_usd": round(after["cost_usd"] - before["cost_usd"], 6),
        },
        "price": tcfg.price.model_dump(),
        **({"batch_api_price_factor": config.eval.batch.price_factor} if jc.batch_api else {}),
    }
    bias = _position_bias(plan, processor.by_key, jc.order)
    result = {
        "model": model_gen,
        "baseline": base_gen,
        "status": status,
        "judge": {
            "name": judge.name,
            "model": tcfg.model,
            "fingerprint": judge.fingerprint,
            "description": judge.description,
            "decoding": judge.decoding,
            "order": jc.order,
            "seed": jc.seed,
        },
        "metrics": metrics,
        "position_bias": bias,
        "cost": cost,
        "unmatched": {
            "only_model": len(only_model),
            "only_baseline": len(only_base),
            "examples": (only_model + only_base)[:5],
        },
        "files": {"model": str(model_path), "baseline": str(baseline_path), "work": str(work)},
        "annotations": annotations,
    }
    write_manifest(status)
    cost["wall_seconds"] = manifest["wall_seconds"]  # the judging job's, over all its runs
    atomic_write_json(out, result)
    job.release()
    return PairwiseResult(out, status, metrics, cost, bias)


def _annotate(
    pairs: list[tuple[dict, dict]],
    plan: list[list[tuple[str, str]]],
    by_key: dict[str, dict],
    judge: Judge,
    model_gen: str,
    base_gen: str,
) -> tuple[list[dict], list[dict]]:
    annotations, used = [], []
    for (m, b), slots in zip(pairs, plan):
        judgments, prefs = [], []
        for order, key in slots:
            rec = by_key.get(key)
            if rec is None:
                judgments.append({"order": order, "verdict": None, "preference": None, "missing": True})
                continue
            used.append(rec)
            pref = _PREFERENCE[order][rec["verdict"]] if rec["verdict"] else None
            if pref is not None:
                prefs.append(pref)
            judgments.append({"order": order, "verdict": rec["verdict"], "preference": pref, "reply": rec["reply"]})
        annotations.append(
            {
                "instruction": m["instruction"],
                "output_1": b["output"],
                "output_2": m["output"],
                "generator_1": base_gen,
                "generator_2": model_gen,
                "annotator": judge.name,
                "dataset": m.get("dataset", ""),
                "preference": sum(prefs) / len(prefs) if prefs else None,
                "judgments": judgments,
            }
        )
    return annotations, used


def _position_bias(plan: list[list[tuple[str, str]]], by_key: dict[str, dict], order: str) -> dict[str, Any]:
    """How often the judge picked the answer shown first, and (both orders) how often it agreed with itself."""
    verdicts = [by_key[k]["verdict"] for slots in plan for _, k in slots if k in by_key and by_key[k]["verdict"]]
    decisive = [v for v in verdicts if v != "tie"]
    out: dict[str, Any] = {
        "first_shown_won": round(sum(v == "first" for v in decisive) / len(decisive), 4) if decisive else None,
        "decisive_judgments": len(decisive),
    }
    if order == "both":
        agree = total = 0
        for slots in plan:
            prefs = [_PREFERENCE[o][by_key[k]["verdict"]] for o, k in slots if k in by_key and by_key[k]["verdict"]]
            if len(prefs) == 2:
                total += 1
                agree += prefs[0] == prefs[1]
        out["orders_agree"] = round(agree / total, 4) if total else None
        out["pairs_with_both_orders"] = total
    return out
