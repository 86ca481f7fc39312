"""Request bodies of the OpenAI API subset we serve, validated strictly.

Unknown fields are refused (OpenAI does the same: "Unrecognized request argument supplied"),
and fields OpenAI has but this server cannot honour (tools, logprobs, n > 1, ...) are refused
by name rather than silently ignored: a client that asked for five choices and got one, or for
JSON mode and got prose, would be misled.

Responses are built as plain dicts in `app.py`; their shape is what the `openai` SDK parses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alpacakit.serve.errors import APIError, bad_request

MAX_STOPS = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def plain(self) -> dict[str, str]:
        """{'role', 'content'} as a chat template expects; OpenAI's 'developer' role is a system message."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Strict):
    include_usage: bool = False


def _unsupported(name: str, why: str = "") -> str:
    return f"{name} is not supported by this server" + (f": {why}" if why else "")


class _Sampling(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = Field(None, description="Accepted and echoed as the served model: one model per server.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, found {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Sampling:
        if self.n not in (None, 1):
            raise _Refuse("n", _unsupported("n > 1", "send separate requests"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise _Refuse(name, _unsupported(name))
        if self.logit_bias:
            raise _Refuse("logit_bias", _unsupported("logit_bias"))
        if self.logprobs not in (None, False, 0):
            raise _Refuse("logprobs", _unsupported("logprobs"))
        if self.stream_options is not None and not self.stream:
            raise _Refuse("stream_options", "stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _chat_checks(self) -> ChatCompletionRequest:
        if self.tools or self.tool_choice not in (None, "none"):
            raise _Refuse("tools", _unsupported("tool calling"))
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _Refuse("response_format", _unsupported("response_format other than text"))
        if self.top_logprobs:
            raise _Refuse("top_logprobs", _unsupported("top_logprobs"))
        if self.messages[-1].role != "user":
            raise _Refuse("messages", f"the last message must have role 'user', found {self.messages[-1].role!r}")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def plain_messages(self) -> list[dict[str, str]]:
        return [m.plain() for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_checks(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise _Refuse("prompt", "send one prompt per request (a list of exactly one string is also accepted)")
        if self.echo:
            raise _Refuse("echo", _unsupported("echo"))
        if self.suffix:
            raise _Refuse("suffix", _unsupported("suffix"))
        if self.best_of not in (None, 1):
            raise _Refuse("best_of", _unsupported("best_of > 1"))
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_tokens"

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class _Refuse(ValueError):
    """A whole-request refusal naming the field (raised inside validators)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def parse_request(model: type[_Sampling], data: Any) -> Any:
    """Validate a decoded JSON body into `model`, or raise a 400 APIError naming the field."""
    if not isinstance(data, dict):
        raise bad_request(f"The request body must be a JSON object, found {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _as_api_error(e) from None


def _as_api_error(e: ValidationError) -> APIError:
    err = e.errors()[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _Refuse):
        return bad_request(ctx_error.message, param=ctx_error.param)
    loc = [str(p) for p in err["loc"]]
    # drop pydantic's union branch names ("str", "list[TextPart]") from the location
    loc = [p for p in loc if not (p in {"str", "list[TextPart]", "list[str]", "TextPart"} or p.startswith("function-"))]
    param = ".".join(loc) if loc else None
    if err["type"] == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param)
    msg = err["msg"].removeprefix("Value error, ")
    return bad_request(f"Invalid value for '{param}': {msg}.", param=param)
