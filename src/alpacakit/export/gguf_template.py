"""The chat template written into a GGUF (`tokenizer.chat_template`).

llama.cpp and llama-cpp-python's `create_chat_completion` format a conversation with the
Jinja template stored in the file. A model fine-tuned on Alpaca's prompt must be asked in
Alpaca's prompt, not in whatever template its base model shipped with, so the template is
built from the model's saved prompt format (`prompt_format.json`):

- a `template` format (e.g. `alpaca`) becomes a template that renders each user turn as the
  format's no-input prompt (`### Instruction:` ... `### Response:`), each assistant turn as
  its text plus EOS (how training ended every answer), with BOS before each user turn when
  the tokenizer adds one. System messages are dropped: such formats have no place for them;
- a `chat` format carries its own Jinja template, which is used as is.

Literal text is emitted as Jinja string expressions (`{{ "..." }}` with JSON escapes), so a
prompt containing `{{` or `{%` cannot be mistaken for template syntax; both Python's jinja2
and llama.cpp's C++ template engine read these escapes.
"""

from __future__ import annotations

import json
import string
from typing import Any

from alpacakit.errors import ConfigError


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def template_format_to_jinja(fmt: dict[str, Any], *, add_bos: bool) -> str:
    """A Jinja chat template that reproduces a `template` prompt format for single user turns."""
    source = fmt.get("prompt_no_input")
    if not source:
        raise ConfigError(f"prompt format {fmt.get('name')!r} has no 'prompt_no_input' to build a chat template from")
    parts: list[str] = []
    seen = False
    for literal, field, spec, conv in string.Formatter().parse(source):
        parts.append(_literal(literal))
        if field is None:
            continue
        if field == "instruction" and not spec and not conv:
            parts.append("{{ message['content'] }}")
            seen = True
        elif field == "input":
            continue  # a single chat turn has no separate input
        else:
            raise ConfigError(
                f"prompt format {fmt.get('name')!r}: unsupported placeholder {{{field}}} in prompt_no_input",
                hint="use only {instruction} (and {input} in prompt_input)",
            )
    if not seen:
        raise ConfigError(f"prompt format {fmt.get('name')!r}: prompt_no_input has no {{instruction}} placeholder")
    user = ("{{ bos_token }}" if add_bos else "") + "".join(parts)
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        + user
        + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    )


def chat_template_for(
    prompt_format: dict[str, Any] | None, tokenizer_template: str | None, *, add_bos: bool
) -> tuple[str | None, str]:
    """(template or None, where it came from) for the GGUF's `tokenizer.chat_template`."""
    if prompt_format:
        kind = prompt_format.get("kind", "template")
        if kind == "template":
            return template_format_to_jinja(
                prompt_format, add_bos=add_bos
            ), f"prompt format {prompt_format.get('name')!r}"
        if kind == "chat":
            tmpl = (
                prompt_format.get("chat_template") or tokenizer_template or prompt_format.get("fallback_chat_template")
            )
            if tmpl:
                return tmpl, f"chat prompt format {prompt_format.get('name')!r}"
    if tokenizer_template:
        return tokenizer_template, "the tokenizer's chat template"
    return None, "none (no prompt_format.json and no chat template in the tokenizer)"
