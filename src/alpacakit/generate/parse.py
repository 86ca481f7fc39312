"""A tolerant parser for the teacher's numbered `Instruction / Input / Output` tasks.

Small teachers drift from the format: numbers go missing, `###` separators are dropped,
`Input:` loses its number, a chat model prefaces the list with "Sure! Here are...". The parser
accepts all of that, never raises on model output, and reports every discarded piece with a
reason so the manifest can count them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TASK_START = re.compile(r"(?im)^[ \t]*(?:#+[ \t]*)?(?:(?:task[ \t]*)?\d+[ \t]*[.:)][ \t]*)?instruction[ \t]*:")
_FIELD = re.compile(r"(?im)^[ \t]*(?:\d+[ \t]*[.:)][ \t]*)?(input|output)[ \t]*:[ \t]*")
_NO_INPUT = re.compile(r"^\s*(?:<\s*no[ _-]?input\s*>|no input|none|n/?a)\s*\.?\s*$", re.IGNORECASE)
_TRAILING = re.compile(r"\s*(?:#{3,}\s*)+$")
# A separator line, with whatever a teacher wrote after it ("### (Repeat the pattern 5 more
# times...)"): the task ends there, as in Stanford's split on "###".
_SEPARATOR_LINE = re.compile(r"(?m)^[ \t]*#{3,}.*$")


@dataclass(frozen=True)
class ParsedTask:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class Discard:
    reason: str
    text: str


def parse_tasks(
    continuation: str, first_number: int, finish_reason: str, *, continues_prompt: bool = True
) -> tuple[list[ParsedTask], list[Discard]]:
    """Parse a response that continues a prompt ending with `{first_number}. Instruction:`.

    With `continues_prompt=False` (a chat answer, which starts afresh) any preamble before the
    first `Instruction:` label is ignored instead of being read as the first instruction.

    When the response hit its token limit (`finish_reason == 'length'`) the last task may be
    cut mid-sentence, so it is dropped (reason `truncated`), as Stanford Alpaca did; likewise
    (reason `cut_short`) when we ended the response early (`finish_reason == 'cut'`).
    """
    text = continuation.replace("\r\n", "\n")
    if continues_prompt and not _TASK_START.match(text.lstrip()):
        text = f"{first_number}. Instruction:" + (text if text.startswith((" ", "\n")) else " " + text)
    starts = [m.start() for m in _TASK_START.finditer(text)]
    chunks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    tasks: list[tuple[ParsedTask | None, Discard | None]] = [_parse_chunk(c) for c in chunks]
    if finish_reason in ("length", "cut") and tasks:
        tasks[-1] = (None, Discard("truncated" if finish_reason == "length" else "cut_short", chunks[-1].strip()))
    kept = [t for t, _ in tasks if t is not None]
    discards = [d for _, d in tasks if d is not None]
    return kept, discards


def _strip_separators(text: str) -> str:
    """`_TRAILING.sub("", text)`: trailing runs of three or more `#`, and the whitespace around
    them, go. The regex tries `\\s*` at every position of the text, ~15 us for a 600-character
    task (two thirds of parsing an answer, and most tasks end in `###`); this walks back from
    the end instead. `str.rstrip` and the regex's `\\s` agree on what whitespace is."""
    end = len(text.rstrip())
    stripped = False
    while True:
        start = end
        while start and text[start - 1] == "#":
            start -= 1
        if end - start < 3:
            break
        end, stripped = len(text[:start].rstrip()), True
    return text[:end] if stripped else text


def _parse_chunk(chunk: str) -> tuple[ParsedTask | None, Discard | None]:
    raw = _strip_separators(chunk).strip()
    body = _SEPARATOR_LINE.split(_TASK_START.sub("", raw, count=1), maxsplit=1)[0]
    fields = list(_FIELD.finditer(body))
    names = [m.group(1).lower() for m in fields]
    if "output" not in names:
        return None, Discard("malformed", raw)
    out_i = names.index("output")
    in_i = names.index("input") if "input" in names[:out_i] else None
    instr_end = fields[in_i if in_i is not None else out_i].start()
    instruction = " ".join(body[:instr_end].split())
    if in_i is not None:
        inp = body[fields[in_i].end() : fields[out_i].start()].strip()
    else:
        inp = ""
    # Anything after a second Input/Output label belongs to no task: cut it off.
    out_end = fields[out_i + 1].start() if out_i + 1 < len(fields) else len(body)
    output = _strip_separators(body[fields[out_i].end() : out_end]).strip()
    if _NO_INPUT.match(inp):
        inp = ""
    if not instruction:
        return None, Discard("empty_instruction", raw)
    if not output:
        return None, Discard("empty_output", raw)
    return ParsedTask(instruction, inp, output), None
