"""`alpacakit chat`: a conversation with one model in the terminal, streamed token by token.

`ChatSession` is the library part (history, reset, fitting the history into the context
window, choosing how prompts are built); `run_chat` is the terminal loop the CLI calls.

How prompts are built, in order of preference:
1. the model's own chat template: an instruct GGUF or an alpacakit-exported GGUF (whose
   template is the trained prompt format), or an HF / alpacakit model folder (its saved
   `prompt_format.json`, which folds history for Alpaca-format models; see `history.py`);
2. `--prompt-format NAME|PATH`, or Alpaca's template for a base model without a chat template:
   alpacakit renders the prompt itself and asks for a raw continuation.

When the conversation no longer fits (`n_ctx` minus the answer's `max_tokens`), the oldest
turns are dropped, and the user is told how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

from alpacakit.errors import AlpacakitError, ConfigError
from alpacakit.models.backends.base import Completion

COMMANDS = {"/reset": "forget the conversation", "/exit": "leave (also /quit, Ctrl-D)", "/help": "this list"}


@dataclass
class ChatOptions:
    system: str | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float | None = None
    seed: int | None = None
    context_tokens: int = 4096  # the model's window: history is trimmed to fit it with the answer


class ChatSession:
    """History plus the model. `send(text)` streams the answer and records the turn."""

    def __init__(self, backend: Any, options: ChatOptions | None = None, prompt_format: Any | None = None):
        self.backend = backend  # a serve.backend.ServeBackend
        self.options = options or ChatOptions()
        self.prompt_format = prompt_format  # None: the model applies its own format
        self.history: list[dict[str, str]] = []
        self.dropped = 0  # turns (question + answer) dropped to fit, at the last send

    def reset(self) -> None:
        self.history = []
        self.dropped = 0

    def messages_for(self, text: str) -> list[dict[str, str]]:
        sys_msg = [{"role": "system", "content": self.options.system}] if self.options.system else []
        return [*sys_msg, *self.history, {"role": "user", "content": text}]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        if self.prompt_format is not None:
            return self.backend.count_prompt_tokens(prompt=self.render(messages))
        return self.backend.count_prompt_tokens(messages=messages)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for `messages` when alpacakit builds prompts itself."""
        from alpacakit.serve.history import fold_messages

        fmt = self.prompt_format
        if fmt.kind == "chat":
            return fmt.render(messages, add_generation_prompt=True)
        return fmt.build(*fold_messages(messages))

    def fit(self, text: str) -> list[dict[str, str]]:
        """The messages to send: the newest history that fits the context with the answer."""
        budget = self.options.context_tokens - self.options.max_tokens
        self.dropped = 0
        messages = self.messages_for(text)
        while self.prompt_tokens(messages) > budget and self.history:
            self.history = self.history[2:]  # the oldest question and its answer
            self.dropped += 1
            messages = self.messages_for(text)
        if self.prompt_tokens(messages) > budget:
            raise ConfigError(
                f"this message is too long for the model's context ({self.prompt_tokens(messages)} prompt tokens; "
                f"{budget} fit with a {self.options.max_tokens}-token answer)",
                hint="shorten the message, lower --max-tokens, or raise --n-ctx",
            )
        return messages

    async def send(self, text: str) -> AsyncIterator[str | Completion]:
        """Stream the answer to `text` (pieces, then the Completion) and add the turn to the history.

        An answer that is interrupted (the caller stops iterating) is kept as far as it got.
        """
        messages = self.fit(text)
        o = self.options
        kw = {"max_tokens": o.max_tokens, "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed}
        if self.prompt_format is not None:
            stream = self.backend.stream_complete(self.render(messages), stop=self.prompt_format.stop or None, **kw)
        else:
            stream = self.backend.stream_chat(messages, **kw)
        parts: list[str] = []
        keep = True
        try:
            async for item in stream:
                if not isinstance(item, Completion):
                    parts.append(item)
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            raise  # interrupted: keep the turn as far as it got
        except BaseException:
            keep = False  # failed: the question was not answered
            raise
        finally:
            await stream.aclose()
            if keep:
                answer = "".join(parts).strip()
                self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def choose_prompt_format(backend: Any, name: str | None) -> tuple[Any | None, str | None]:
    """(format or None, a notice for the user). None means: let the model apply its own template."""
    from alpacakit.prompting import PromptFormat

    if name:
        fmt = PromptFormat.load(name)
        if fmt.kind == "chat" and not fmt.chat_template:
            raise ConfigError(
                f"prompt format {fmt.name!r} takes the chat template from a tokenizer, and this model "
                "is run without one",
                hint="use --prompt-format alpaca, or a format .json with a chat_template",
            )
        return fmt, None
    if backend.supports_chat:
        return None, None
    return PromptFormat.load("alpaca"), (
        f"{backend.name} has no chat template (a base model): using the Alpaca "
        "prompt format (--prompt-format to choose another)"
    )


def run_chat(
    backend: Any,
    options: ChatOptions,
    *,
    prompt_format: Any | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stats: bool = True,
) -> int:
    """The terminal loop. Answers go to stdout as they stream; notices and stats to stderr.

    Returns the number of answered messages. Ctrl-C during an answer stops that answer;
    Ctrl-C or Ctrl-D at the prompt leaves.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    session = ChatSession(backend, options, prompt_format)
    interactive = stdin.isatty()
    loop = asyncio.new_event_loop()
    answered = 0

    def note(msg: str) -> None:
        print(msg, file=stderr, flush=True)

    async def answer(text: str) -> Completion | None:
        final = None
        async for item in session.send(text):
            if isinstance(item, Completion):
                final = item
            else:
                stdout.write(item)
                stdout.flush()
        return final

    note(f"chatting with {backend.name}. Commands: " + ", ".join(COMMANDS) + ".")
    try:
        while True:
            if interactive:
                stdout.write("\n> ")
                stdout.flush()
            try:
                line = stdin.readline()
            except KeyboardInterrupt:
                break
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            cmd = text.split()[0].lower()
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                note("(conversation reset)")
                continue
            if cmd == "/help":
                note("\n".join(f"  {c:8} {d}" for c, d in COMMANDS.items()))
                continue
            if text.startswith("/") and cmd not in COMMANDS and len(cmd) > 1 and cmd[1:].isalpha():
                note(f"unknown command {cmd}; commands: " + ", ".join(COMMANDS))
                continue
            t0 = time.monotonic()
            task = loop.create_task(answer(text))
            try:
                final = loop.run_until_complete(task)
            except KeyboardInterrupt:
                task.cancel()  # closes the stream, which stops generation within a token
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
                stdout.write("\n")
                note("(answer stopped)")
                continue
            except AlpacakitError as e:
                note(f"error: {e}")
                continue
            stdout.write("\n\n" if not interactive else "\n")
            stdout.flush()
            answered += 1
            if session.dropped:
                note(f"(dropped the {session.dropped} oldest turn(s) to fit the context window)")
            if stats and final is not None:
                dt = max(time.monotonic() - t0, 1e-6)
                n = final.usage.completion_tokens
                note(
                    f"[{n} tokens in {dt:.1f} s, {n / dt:.1f} tok/s; finish: {final.finish_reason}; "
                    f"history: {len(session.history) // 2} turn(s)]"
                )
    finally:
        loop.run_until_complete(backend.aclose())
        loop.close()
    return answered
