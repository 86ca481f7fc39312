"""Chat history for models whose prompt format has no turns (Alpaca's template).

An Alpaca-format model was trained on one (instruction, input) pair per prompt. `chat` and
`serve` still keep a conversation with it by folding the history into that pair: the newest
user message is the instruction, and the turns before it become the input as a labelled
transcript (the layout is data: `serve/data/history.yaml`). With no earlier turns the input is
empty, so the first question gets exactly the prompt the model was trained on.

Chat-format models render the messages with their own chat template instead; nothing here
applies to them.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from alpacakit.errors import ConfigError


@lru_cache(maxsize=1)
def fold_layout() -> dict[str, Any]:
    text = resources.files("alpacakit.serve").joinpath("data", "history.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def content_text(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of {'type': 'text', 'text': ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def fold_messages(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(instruction, input) for a template prompt format; see the module doc.

    The last message must come from the user: it is the instruction being asked now.
    """
    if not messages:
        raise ConfigError("no messages to answer", hint="send at least one user message")
    last = messages[-1]
    if last.get("role") != "user":
        raise ConfigError(
            f"the last message is from {last.get('role')!r}; this model's prompt format answers a user message",
            hint="end the conversation with a user message",
        )
    layout = fold_layout()
    roles = layout["roles"]
    turns = [
        layout["turn"].format(
            role=roles.get(m.get("role"), str(m.get("role")).title()), content=content_text(m.get("content")).strip()
        )
        for m in messages[:-1]
        if content_text(m.get("content")).strip()
    ]
    instruction = content_text(last.get("content")).strip()
    if not turns:
        return instruction, ""
    return instruction, layout["input_header"] + "\n" + layout["separator"].join(turns)
