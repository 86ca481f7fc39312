"""Prompt formats: how an (instruction, input) pair becomes the text a model sees.

Training saves the format it used as `prompt_format.json` in the model folder, and every
later stage (eval, chat, serve, export) loads it back with `PromptFormat.from_model_dir`, so
the prompt a model is asked at inference is byte-for-byte the prompt it was trained on. The
formats themselves are data files in `alpacakit/templates/` (one JSON per format):

- `template` formats (e.g. `alpaca`) are two Python format strings, one for records with an
  input and one without, plus the marker after which the response starts;
- `chat` formats render a list of messages through a jinja chat template. The template is
  copied from the base model's tokenizer when the format is bound to it (or a fallback when the
  base has none), and stored in the saved JSON, so inference needs neither the tokenizer nor
  transformers to rebuild the prompt.

This module imports only the standard library and jinja2 (for chat formats, on first use).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from alpacakit.errors import ConfigError

FORMAT_FILENAME = "prompt_format.json"
_VERSION = 1


def _templates_dir() -> Path:
    return Path(str(resources.files("alpacakit").joinpath("templates")))


def list_formats() -> list[str]:
    """Names of the built-in formats (the JSON files shipped in `alpacakit/templates/`)."""
    return sorted(p.stem for p in _templates_dir().glob("*.json"))


@dataclass
class PromptFormat:
    """One prompt format. Build prompts with `.build(instruction, input)`.

    `add_special_tokens` tells a tokenizer whether to add BOS itself: a `template` prompt is
    plain text (the tokenizer adds BOS, as in Stanford's train.py); a chat template writes its
    own special tokens, so tokenizing must not add them twice.
    """

    name: str
    kind: Literal["template", "chat"] = "template"
    description: str = ""
    prompt_input: str | None = None
    prompt_no_input: str | None = None
    response_split: str | None = None
    # chat formats
    chat_template: str | None = None
    fallback_chat_template: str | None = None
    fallback_stop: list[str] = field(default_factory=list)
    system: str | None = None
    input_joiner: str = "\n\n"
    bos_token: str | None = None
    eos_token: str | None = None
    # extra stop strings an inference engine should use besides the EOS token
    stop: list[str] = field(default_factory=list)
    version: int = _VERSION

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, ref: str | Path | PromptFormat) -> PromptFormat:
        """A built-in name (`alpaca`, `chat`), a path to a format JSON, or a model folder."""
        if isinstance(ref, PromptFormat):
            return ref
        s = str(ref)
        if s in list_formats():
            return cls.from_file(_templates_dir() / f"{s}.json")
        p = Path(s)
        if p.is_dir():
            return cls.from_model_dir(p)
        if p.suffix == ".json" and p.exists():
            return cls.from_file(p)
        raise ConfigError(
            f"unknown prompt format {s!r}",
            hint=f"use one of {', '.join(list_formats())} or a path to a prompt format .json file",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PromptFormat:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: prompt format file not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: prompt format is not valid JSON: {e.msg}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_model_dir(cls, path: str | Path) -> PromptFormat:
        """The format a model in `path` was trained with (its `prompt_format.json`)."""
        f = Path(path) / FORMAT_FILENAME
        if not f.exists():
            raise ConfigError(
                f"{path}: no {FORMAT_FILENAME} (this folder was not written by `alpacakit train`)",
                hint="pass a prompt format explicitly, e.g. --prompt-format alpaca",
            )
        return cls.from_file(f)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "prompt format") -> PromptFormat:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown}", hint=f"allowed keys: {', '.join(sorted(known))}")
        if "name" not in data:
            raise ConfigError(f"{source}: missing 'name'")
        fmt = cls(**data)
        fmt._validate(source)
        return fmt

    def _validate(self, source: str) -> None:
        if self.kind == "template":
            for key in ("prompt_input", "prompt_no_input", "response_split"):
                if not getattr(self, key):
                    raise ConfigError(f"{source}: a template format needs {key!r}")
            for key, fields in (("prompt_input", {"instruction", "input"}), ("prompt_no_input", {"instruction"})):
                try:
                    getattr(self, key).format(instruction="", input="")
                except (KeyError, IndexError, ValueError) as e:
                    raise ConfigError(
                        f"{source}: {key} is not a valid format string ({e!r})",
                        hint=f"use only the placeholders {sorted(fields)}; write literal braces as {{{{ and }}}}",
                    ) from None
        elif self.kind == "chat":
            if not (self.chat_template or self.fallback_chat_template):
                raise ConfigError(f"{source}: a chat format needs 'chat_template' or 'fallback_chat_template'")
        else:
            raise ConfigError(f"{source}: kind must be 'template' or 'chat', found {self.kind!r}")

    # ---------------------------------------------------------------- binding
    def bind(self, tokenizer: Any) -> PromptFormat:
        """A copy tied to `tokenizer`: its BOS/EOS strings and, for chat formats, its chat template.

        A base model without a chat template gets the format's fallback template (and the
        fallback's stop strings), so a chat format always works.
        """
        bos = getattr(tokenizer, "bos_token", None)
        eos = getattr(tokenizer, "eos_token", None)
        if self.kind != "chat":
            return replace(self, bos_token=bos, eos_token=eos)
        if self.chat_template:  # already bound (e.g. loaded from a model folder)
            return replace(self, bos_token=bos or self.bos_token, eos_token=eos or self.eos_token)
        tmpl = getattr(tokenizer, "chat_template", None)
        if isinstance(tmpl, dict):  # named templates: take the default one
            tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
        stop = list(self.stop)
        if not tmpl:
            tmpl = self.fallback_chat_template
            stop += [s for s in self.fallback_stop if s not in stop]
        return replace(self, chat_template=tmpl, bos_token=bos, eos_token=eos, stop=stop)

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer should add BOS/EOS itself when encoding a prompt of this format."""
        return self.kind == "template"

    # ---------------------------------------------------------------- building
    def user_message(self, instruction: str, input: str | None = "") -> str:
        """The user turn of a chat format: the instruction, then the input if there is one."""
        instruction = instruction or ""
        return f"{instruction}{self.input_joiner}{input}" if input else instruction

    def build(self, instruction: str, input: str | None = "") -> str:
        """The prompt for one instruction (and optional input); the response follows it directly."""
        if self.kind == "template":
            tmpl = self.prompt_input if input else self.prompt_no_input
            return tmpl.format(instruction=instruction or "", input=input or "")  # type: ignore[union-attr]
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.user_message(instruction, input)})
        return self.render(messages, add_generation_prompt=True)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """Render chat `messages` ({'role', 'content'} dicts) with the bound chat template."""
        if self.kind != "chat":
            raise ConfigError(f"prompt format {self.name!r} is a template format; render() is for chat formats")
        tmpl = self.chat_template
        if not tmpl:
            raise ConfigError(
                f"chat prompt format {self.name!r} is not bound to a tokenizer yet",
                hint="call PromptFormat.bind(tokenizer) first (training does this and saves the result)",
            )
        return _compile(tmpl).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def split_response(self, text: str) -> str:
        """The response part of a generated text that may still contain the prompt.

        Cuts after the last response marker (template formats), then at the first stop
        string or EOS token text, and strips surrounding whitespace.
        """
        if self.kind == "template" and self.response_split and self.response_split in text:
            text = text.rsplit(self.response_split, 1)[1]
        for s in [*self.stop, *([self.eos_token] if self.eos_token else [])]:
            if s and s in text:
                text = text.split(s, 1)[0]
        return text.strip()

    # ---------------------------------------------------------------- saving
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write `prompt_format.json` into the folder `path` (or to `path` if it ends in .json); atomic."""
        from alpacakit.io import atomic_write_json

        path = Path(path)
        target = path if path.suffix == ".json" else path / FORMAT_FILENAME
        if self.kind == "chat" and not self.chat_template:
            raise ConfigError(f"chat prompt format {self.name!r} must be bound to a tokenizer before saving")
        atomic_write_json(target, self.to_dict())
        return target


# Names that read better in code that only formats prompts.
Prompter = PromptFormat


_COMPILED: dict[str, Any] = {}


def _compile(template: str) -> Any:
    """Compile a chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    if template in _COMPILED:
        return _COMPILED[template]
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ConfigError(f"chat template refused the messages: {message}")

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        from datetime import datetime

        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"chat template: jinja syntax error at line {e.lineno}: {e.message}") from None
    _COMPILED[template] = compiled
    return compiled
