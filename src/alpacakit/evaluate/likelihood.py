"""`alpacakit eval likelihood`: how likely a model finds the teacher's own answers.

Imitation is, literally, raising the probability of the teacher's text. So the most direct
(and the cheapest: one forward pass per answer, no generation, no judge) measure of what
fine-tuning did is the mean per-token negative log-likelihood (NLL) of teacher answers the
student never trained on, under the student and under its base, paired per example. Each
answer is scored in the prompt format the model is asked in (a model's own format, else the
Alpaca template a base model is asked with by `eval generate`), followed by the model's
end-of-sequence token when the teacher's answer ended on its own: knowing when to stop is
part of the teacher's behaviour.

It measures closeness to the teacher's *writing*, style and content alike, not correctness:
the report reads it beside the verifiable-instruction and capability results.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from alpacakit.errors import DataError

FORMAT = "alpacakit-likelihood/1"


def load_answers(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Teacher answers to score: records with `instruction`, optional `input`, and `output`
    (alpacakit examples JSONL, Alpaca JSON, or an AlpacaEval outputs file)."""
    from alpacakit.io import read_records

    recs = read_records(path, required=("instruction", "output"))
    out = []
    for i, r in enumerate(recs):
        if not str(r.get("output") or "").strip():
            continue
        out.append(
            {
                "id": str(r.get("id") or i),
                "instruction": str(r["instruction"]),
                "input": str(r.get("input") or ""),
                "output": str(r["output"]),
                "ended": r.get("finish_reason", "stop") != "length",
            }
        )
    if not out:
        raise DataError(f"{path}: no answers to score", hint="pass records with non-empty 'output' fields")
    return out[:limit] if limit else out


class NothingFits(DataError):
    """Every answer is longer than the model's context window: nothing could be scored."""


def score_likelihood(
    model: str,
    answers_path: str | Path,
    out: str | Path | None = None,
    *,
    system: str | None = None,
    limit: int | None = None,
    n_ctx: int = 2048,
) -> dict[str, Any]:
    """Mean per-token NLL of each answer in `answers_path` under `model`; written to `out` (JSON)."""
    from alpacakit.evaluate.bench.backends import ContextTooLong, open_backend
    from alpacakit.models.registry import LOGLIK, require
    from alpacakit.prompting import PromptFormat

    require(model, LOGLIK, "eval likelihood")  # before reading anything: an endpoint cannot score given text
    answers = load_answers(answers_path, limit)
    t0 = time.monotonic()
    backend = open_backend(model, n_ctx=n_ctx)
    try:
        fmt = backend.native_format
        why = "the model's own prompt format"
        if fmt is None or fmt.kind != "template":
            fmt, why = PromptFormat.load("alpaca"), "the Alpaca template (a base model, as eval generate asks it)"
        eos = backend.eos_text()
        items, skipped = [], []
        for a in answers:
            context = fmt.build(a["instruction"], a["input"])
            continuation = a["output"] + (eos if a["ended"] and eos else "")
            try:
                [(logprob, n)] = backend.loglikelihood(context, [continuation], add_special=fmt.add_special_tokens)
            except ContextTooLong as e:
                # A teacher answer longer than this model's window cannot be scored whole; it is
                # left out and listed (base and student share a window, so they skip alike).
                skipped.append({"id": a["id"], "tokens": e.tokens, "n_ctx": e.n_ctx})
                continue
            items.append({"id": a["id"], "tokens": n, "nll": round(-logprob / n, 5)})
        info = backend.describe()
    finally:
        backend.close()
    if not items:
        raise NothingFits(
            f"{answers_path}: every answer is longer than the context window of {model} ({skipped[0]['n_ctx']} tokens)",
            hint="raise --n-ctx, or score shorter answers",
        )
    mean = sum(i["nll"] for i in items) / len(items)
    result = {
        "format": FORMAT,
        "system": system or info.get("name"),
        "model": model,
        "answers": str(answers_path),
        "prompt": {"format": fmt.name, "why": why, "eos_appended": bool(eos)},
        "n": len(items),
        "mean_nll": round(mean, 5),
        "perplexity": round(math.exp(mean), 3),
        "items": items,
        **({"skipped_too_long": skipped} if skipped else {}),
        "seconds": round(time.monotonic() - t0, 2),
    }
    if out is not None:
        from alpacakit.io import atomic_write_json

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out), result)
    return result
