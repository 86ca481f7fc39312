"""Training data: records from any supported file, turned into token ids and labels.

Accepted records (one file may not mix shapes):
- Alpaca / our generate output: {"instruction", "input"?, "output", ...metadata}
  (`response` is accepted for `output`, `context` for `input`);
- ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]};
- OpenAI-style: {"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}.
Files: JSONL, a JSON list, CSV, or an HF datasets folder (all via `alpacakit.io.read_records`).

Labels follow Stanford Alpaca's rule: tokenize the prompt, tokenize prompt + response, append
EOS, and label the first len(prompt tokens) positions -100, so the loss is only on the
response and on the EOS that teaches the model to stop. EOS is appended as a token id (never
masked later: padding is masked by position, not by comparing ids with the pad id, which is
the bug that stops models trained with pad == eos from ever stopping).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacakit.errors import DataError
from alpacakit.prompting import PromptFormat

IGNORE = -100

_USER = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "model", "chatgpt", "bot"}
_SYSTEM = {"system"}


@dataclass
class Turn:
    instruction: str
    input: str
    output: str


@dataclass
class Sample:
    """One training record, normalised: an optional system prompt and user/assistant turns."""

    turns: list[Turn]
    where: str
    system: str | None = None


@dataclass
class DataStats:
    files: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    examples: int = 0
    split_multiturn: int = 0
    dropped_empty: int = 0
    dropped_no_response_tokens: int = 0
    truncated: int = 0
    tokens: int = 0
    supervised_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- reading


def data_fingerprint(path: str | Path) -> dict[str, Any]:
    """{path, sha256} of a data file; for a folder, a hash over its files' names and hashes."""
    from alpacakit.io import sha256_file

    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p)}\0{sha256_file(f)}\n".encode())
        return {"path": str(p), "sha256": h.hexdigest()}
    return {"path": str(p), "sha256": sha256_file(p)}


def _text(v: Any) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else str(v)


def record_to_sample(obj: dict[str, Any], where: str) -> Sample | None:
    """Normalise one record; None for a record with nothing to learn (no answer)."""
    if "conversations" in obj or "messages" in obj:
        key = "conversations" if "conversations" in obj else "messages"
        conv = obj[key]
        if not isinstance(conv, list):
            raise DataError(f"{where}: {key!r} must be a list of turns, found {type(conv).__name__}")
        system: str | None = None
        turns: list[Turn] = []
        pending: str | None = None
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict):
                raise DataError(f"{where}: {key}[{j}] must be an object, found {type(msg).__name__}")
            role = msg.get("from", msg.get("role"))
            value = msg.get("value", msg.get("content"))
            if role is None or value is None:
                raise DataError(
                    f"{where}: {key}[{j}] needs 'from'/'value' (ShareGPT) or 'role'/'content' "
                    f"(found keys: {', '.join(sorted(msg)) or 'none'})"
                )
            role = str(role).lower()
            if role in _SYSTEM:
                system = _text(value)
            elif role in _USER:
                if pending is not None:  # two user turns in a row: keep them together
                    pending = f"{pending}\n\n{_text(value)}"
                else:
                    pending = _text(value)
            elif role in _ASSISTANT:
                if pending is None:
                    raise DataError(
                        f"{where}: {key}[{j}] is an assistant turn with no user turn before it",
                        hint="a conversation must start with the user (after an optional system turn)",
                    )
                turns.append(Turn(pending, "", _text(value)))
                pending = None
            else:
                raise DataError(
                    f"{where}: {key}[{j}] has an unknown role {role!r}", hint="roles: human/user, gpt/assistant, system"
                )
        return Sample(turns, where, system) if turns else None
    if "instruction" in obj:
        out = obj.get("output", obj.get("response"))
        if out is None:
            raise DataError(
                f"{where}: record has 'instruction' but no 'output' (found fields: {', '.join(sorted(obj))})",
                hint="every Alpaca record needs 'instruction' and 'output' ('input' is optional)",
            )
        inp = obj.get("input", obj.get("context"))
        return Sample([Turn(_text(obj["instruction"]), _text(inp), _text(out))], where)
    raise DataError(
        f"{where}: unrecognised record (fields: {', '.join(sorted(obj)) or 'none'})",
        hint="expected Alpaca records {instruction, input, output} or ShareGPT {conversations: [{from, value}]} "
        "or {messages: [{role, content}]}",
    )


def load_samples(path: str | Path, stats: DataStats | None = None, max_examples: int | None = None) -> list[Sample]:
    """Read and normalise every record of a data file (errors name file:line or item)."""
    from alpacakit.io import read_records

    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: training data not found",
            hint="set train.data (or --data) to a JSONL/JSON/CSV file or an HF datasets folder",
        )
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records in the file")
    samples: list[Sample] = []
    for i, obj in enumerate(records):
        where = f"{path}: record {i + 1}"
        s = record_to_sample(obj, where)
        if s is None:
            if stats:
                stats.dropped_empty += 1
            continue
        samples.append(s)
        if max_examples and len(samples) >= max_examples:
            break
    if stats is not None:
        stats.files.append({**data_fingerprint(path), "records": len(records)})
        stats.records += len(records)
    return samples


def split_validation(samples: list[Sample], val_size: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out `val_size` (a fraction < 1, or a count) of the samples, chosen with `seed`."""
    if val_size <= 0:
        return samples, []
    n = int(round(val_size * len(samples))) if val_size < 1 else int(val_size)
    n = max(1, n)
    if n >= len(samples):
        raise DataError(
            f"val_size {val_size} would hold out {n} of {len(samples)} examples, leaving none to train on",
            hint="lower val_size or add data",
        )
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


# ---------------------------------------------------------------------------- tokenizing


def stanford_labels(
    tokenizer: Any, prompt: str, response: str, max_length: int, add_special_tokens: bool = True
) -> tuple[list[int], list[int], bool]:
    """Stanford's rule for one example: (input_ids, labels, truncated).

    ids = tokens(prompt + response) + [EOS]; labels = ids with the first len(tokens(prompt))
    positions set to -100; both cut to max_length.
    """
    p_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    ids = tokenizer(prompt + response, add_special_tokens=add_special_tokens)["input_ids"]
    return _finish(ids, len(p_ids), tokenizer.eos_token_id, max_length)


def _finish(ids: list[int], n_prompt: int, eos: int, max_length: int) -> tuple[list[int], list[int], bool]:
    ids = list(ids)
    if not ids or ids[-1] != eos:
        ids.append(eos)
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
    return ids, labels, truncated


def chat_labels(
    tokenizer: Any, fmt: PromptFormat, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Stanford's rule applied turn by turn: every assistant turn (and the final EOS) is
    supervised, everything the template writes around it (roles, user turns) is not."""
    n = len(messages)
    full = fmt.render(messages)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [IGNORE] * len(ids)
    for k in range(n):
        if messages[k]["role"] != "assistant":
            continue
        start = len(
            tokenizer(fmt.render(messages[:k], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        )
        end = len(tokenizer(fmt.render(messages[: k + 1]), add_special_tokens=False)["input_ids"])
        for t in range(start, min(end, len(ids))):
            labels[t] = ids[t]
    eos = tokenizer.eos_token_id
    if ids[-1] != eos:
        ids.append(eos)
        labels.append(eos)
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def sample_examples(sample: Sample, fmt: PromptFormat) -> list[tuple[str, str] | list[dict[str, str]]]:
    """What one sample trains on under `fmt`: (prompt, response) pairs for a template format
    (a multi-turn conversation becomes one pair per turn), one message list for a chat format."""
    if fmt.kind == "template":
        return [(fmt.build(t.instruction, t.input), t.output) for t in sample.turns]
    msgs: list[dict[str, str]] = []
    system = sample.system if sample.system is not None else fmt.system
    if system:
        msgs.append({"role": "system", "content": system})
    for t in sample.turns:
        msgs.append({"role": "user", "content": fmt.user_message(t.instruction, t.input)})
        msgs.append({"role": "assistant", "content": t.output})
    return [msgs]


def tokenize_samples(
    samples: list[Sample], fmt: PromptFormat, tokenizer: Any, max_length: int, stats: DataStats | None = None
) -> list[dict[str, list[int]]]:
    """Token ids and labels for every sample; examples whose response was cut away entirely are dropped."""
    out: list[dict[str, list[int]]] = []
    for s in samples:
        parts = sample_examples(s, fmt)
        if stats is not None and len(parts) > 1:
            stats.split_multiturn += 1
        for part in parts:
            if isinstance(part, tuple):
                ids, labels, truncated = stanford_labels(
                    tokenizer, part[0], part[1], max_length, fmt.add_special_tokens
                )
            else:
                ids, labels, truncated = chat_labels(tokenizer, fmt, part, max_length)
            n_sup = sum(1 for x in labels if x != IGNORE)
            if stats is not None:
                stats.truncated += int(truncated)
            if n_sup == 0:
                if stats is not None:
                    stats.dropped_no_response_tokens += 1
                continue
            out.append({"input_ids": ids, "labels": labels})
            if stats is not None:
                stats.examples += 1
                stats.tokens += len(ids)
                stats.supervised_tokens += n_sup
    return out
