"""The HTTP app: an OpenAI-compatible API for one model, and a web chat page.

(fastapi is imported at the top: this module is only imported by `alpacakit serve`.)

Routes
- `GET /`                      the chat page (`serve/static/`: plain HTML, CSS and JS; no CDN)
- `GET /health`                liveness and queue figures (no auth: it reveals nothing private)
- `GET /v1/models`             the one served model
- `POST /v1/chat/completions`  chat, streamed as server-sent events when `"stream": true`
- `POST /v1/completions`       raw text continuation, same streaming

Below the app, `serve/guard.py` bounds connections: headers must arrive within
`header_timeout_s` (408), at most `max_pending_connections` may wait for theirs (the oldest is
evicted), at most `max_connections` may be open (503).

Order of checks for a generation request, cheapest first, so a bad or unauthorised request
never waits in the queue or costs a token: Host header (403) -> API key (401) -> Content-Type
(415) -> body size (413, counted while the body streams in, chunked or not) and body time (408
after `body_timeout_s`) -> JSON and fields
(400, deep nesting included) -> max_tokens cap and prompt length in tokens (400) -> queue place
(429) -> safety filter (400) -> wait for a generation slot (503 after `queue_timeout_s`) ->
generate.

Cross-site requests: a web page the user visits can POST to a loopback server without any
preflight when the body is `text/plain`, and with DNS rebinding it can read the answers. So
bodies must be `application/json` (which a cross-site page cannot send without a CORS preflight,
and CORS stays closed unless `cors_origins` opens it), and a server bound to a loopback address
answers only requests whose Host header names a loopback address or one of `allowed_hosts`.
A 500 says that the server failed, never why: the exception goes to the server log.

A request holds its queue place and generation slot only while its client is there: a client
that disconnects while its request waits in the queue, or while a non-streamed answer is being
generated, or during a stream, frees both at once and cancels its generation within one token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from alpacakit.errors import ConfigError
from alpacakit.models.backends.base import Completion
from alpacakit.serve.config import ServeConfig
from alpacakit.serve.errors import APIError, bad_request, unauthorized
from alpacakit.serve.guard import ConnectionGuard
from alpacakit.serve.queue import Admission, Ticket
from alpacakit.serve.safety import FoldedText
from alpacakit.serve.schemas import ChatCompletionRequest, CompletionRequest, parse_request

log = logging.getLogger("alpacakit.serve")
T = TypeVar("T")

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
# The page loads nothing from anywhere else, and the browser is told to enforce that.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """The host part of a Host header (`[::1]:8000` -> `::1`, `Example.com:80` -> `example.com`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def read_api_key(env_var: str | None) -> str | None:
    """The key clients must present, from the environment variable named `env_var` (None: no auth)."""
    if not env_var:
        return None
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ConfigError(
            f"--api-key-env {env_var}: the environment variable {env_var} is not set or empty",
            hint=f"export {env_var}=<a long random key>  (e.g. from `openssl rand -hex 24`)",
        )
    return key


def create_app(
    backend: Any, config: ServeConfig | None = None, *, safety: Any | None = None, api_key: str | None = None
) -> Any:
    """A FastAPI app serving `backend` (a `ServeBackend`). `api_key` defaults to the value of the
    environment variable `config.api_key_env`; None/empty means no authentication."""
    config = config or ServeConfig()
    if api_key is None:
        api_key = read_api_key(config.api_key_env)
    admission = Admission(config.max_concurrency, config.queue_size, config.queue_timeout_s)
    app = FastAPI(title="alpacakit serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.admission = admission
    app.state.config = config
    guard = ConnectionGuard(config.max_connections, config.max_pending_connections, config.header_timeout_s)
    app.state.connection_guard = guard  # the server builds its HTTP protocol from it (serve/server.py)
    started = int(time.time())

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    # ------------------------------------------------------------------ errors in OpenAI's shape

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(_request: Request, _exc: ClientGone) -> Any:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        msg = {
            404: f"Unknown path {request.url.path}. This server has /v1/models, /v1/chat/completions "
            "and /v1/completions.",
            405: f"Method {request.method} is not allowed on {request.url.path}.",
        }.get(exc.status_code, str(exc.detail))
        err = APIError(exc.status_code, msg, code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code))
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Any:  # pragma: no cover
        return JSONResponse(bad_request(str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> Any:
        log.exception("request failed")  # the details stay in the server's log
        err = APIError(
            500,
            "The server failed to answer this request (an internal error; its operator can find "
            "the details in the server log).",
            type="server_error",
            code="internal_error",
        )
        return JSONResponse(err.body(), status_code=500)

    # ------------------------------------------------------------------ Host check (DNS rebinding)

    allowed = {h.lower() for h in config.allowed_hosts}
    restrict_hosts = is_loopback(config.host) or bool(allowed)

    if restrict_hosts:
        app.add_middleware(_HostCheck, allowed=allowed, bound=config.host)

    # ------------------------------------------------------------------ helpers

    def check_auth(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise unauthorized(
                "You didn't provide an API key. Send it in an Authorization header using Bearer "
                "auth (Authorization: Bearer YOUR_KEY); the server's operator has it."
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise unauthorized(
                "Incorrect API key provided. Send the key the server was started with (Authorization: Bearer YOUR_KEY)."
            )

    async def read_json(request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise APIError(
                415,
                f"The request body must be JSON sent with Content-Type: application/json (got "
                f"{ctype or 'no Content-Type'}).",
                code="unsupported_media_type",
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise APIError(
                413,
                f"The request body is {int(declared)} bytes; this server accepts at most {config.max_body_bytes}.",
                code="body_too_large",
            )
        # Counted as it streams in: a chunked body has no Content-Length to refuse up front.
        chunks, size = [], 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_body_bytes:
                        raise APIError(
                            413,
                            f"The request body is over {config.max_body_bytes} bytes, the most this server accepts.",
                            code="body_too_large",
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise APIError(
                408,
                f"The request body did not arrive within {config.body_timeout_s:g} s.",
                code="body_timeout",
                headers={"Connection": "close"},
            ) from None
        body = b"".join(chunks)
        if not body.strip():
            raise bad_request("The request body is empty; send a JSON object.")
        try:
            return json.loads(body)
        except RecursionError:
            raise bad_request("The JSON body of your request is nested too deeply.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise bad_request(
                f"We could not parse the JSON body of your request{where}: "
                f"{getattr(e, 'msg', e)}. Send valid JSON with Content-Type: application/json."
            ) from None

    def token_limit(req: Any) -> int:
        asked = req.token_limit
        if asked is None:
            return min(config.default_max_tokens, config.max_tokens_cap)
        if asked > config.max_tokens_cap:
            raise bad_request(
                f"{req.token_limit_param} is too large: {asked}. This server allows at most "
                f"{config.max_tokens_cap} completion tokens per request.",
                param=req.token_limit_param,
                code="max_tokens_exceeded",
            )
        return asked

    def check_prompt_length(n: int, max_tokens: int, param: str) -> None:
        if n > config.max_prompt_tokens:
            raise bad_request(
                f"The prompt is {n} tokens long; this server accepts at most {config.max_prompt_tokens} "
                "prompt tokens. Shorten the prompt or the conversation history.",
                param=param,
                code="context_length_exceeded",
            )
        window = backend.context_window
        if window and n + max_tokens > window:
            raise bad_request(
                f"The prompt ({n} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                f"window of {window} tokens. Shorten the prompt or lower max_tokens.",
                param=param,
                code="context_length_exceeded",
            )

    async def screen(text: str, param: str) -> None:
        if safety is None:
            return
        verdict = await safety.check(text)
        if verdict.blocked:
            log.info("refused a request: %s (%s)", verdict.category, verdict.detail)
            raise APIError(
                400,
                f"This request was refused by the server's safety filter (category: "
                f"{verdict.category}; {verdict.detail}).",
                param=param,
                code="content_filter",
            )

    def sampling(req: Any, max_tokens: int) -> dict[str, Any]:
        return {
            "max_tokens": max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop": req.stop,
            "seed": req.seed,
        }

    async def admitted(request: Request, req_check: Any) -> Ticket:
        """Reserve a queue place, run the safety check, then wait for a slot (given up, and the
        place freed, as soon as the client disconnects)."""
        ticket = admission.reserve()
        try:
            await while_connected(request, req_check())
            await while_connected(request, ticket.acquire())
        except BaseException:
            ticket.release()
            raise
        return ticket

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": backend.name, **admission.stats(), **guard.stats()}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        check_auth(request)
        return {
            "object": "list",
            "data": [{"id": backend.name, "object": "model", "created": started, "owned_by": "alpacakit"}],
        }

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Any:
        check_auth(request)
        if model_id != backend.name:
            raise APIError(
                404,
                f"The model '{model_id}' does not exist; this server serves '{backend.name}'.",
                param="model",
                code="model_not_found",
            )
        return {"id": backend.name, "object": "model", "created": started, "owned_by": "alpacakit"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        check_auth(request)
        req = parse_request(ChatCompletionRequest, await read_json(request))
        if not backend.supports_chat:
            raise bad_request(
                f"The model {backend.name!r} has no chat template (it is a base model), so it cannot "
                "answer chat messages. Use /v1/completions with a raw prompt.",
                param="messages",
                code="chat_not_supported",
            )
        max_tokens = token_limit(req)
        messages = req.plain_messages()
        check_prompt_length(backend.count_prompt_tokens(messages=messages), max_tokens, "messages")
        client_text = "\n\n".join(m["content"] for m in messages)  # forged assistant turns included
        ticket = await admitted(request, lambda: screen(client_text, "messages"))
        stream = backend.stream_chat(messages, **sampling(req, max_tokens))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _GuardedStream(_sse("chat", stream, backend.name, include_usage, safety), ticket)
        try:
            text, final, finish = await while_connected(request, _collect(stream, safety))
        finally:
            ticket.release()
        return {
            "id": _id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": backend.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(final),
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        check_auth(request)
        req = parse_request(CompletionRequest, await read_json(request))
        max_tokens = token_limit(req)
        prompt = req.prompt_text
        check_prompt_length(backend.count_prompt_tokens(prompt=prompt), max_tokens, "prompt")
        ticket = await admitted(request, lambda: screen(prompt, "prompt"))
        stream = backend.stream_complete(prompt, **sampling(req, max_tokens))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _GuardedStream(_sse("completion", stream, backend.name, include_usage, safety), ticket)
        try:
            text, final, finish = await while_connected(request, _collect(stream, safety))
        finally:
            ticket.release()
        return {
            "id": _id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": backend.name,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(final),
        }

    # ------------------------------------------------------------------ the web page

    static = resources.files("alpacakit.serve").joinpath("static")

    @app.get("/")
    async def page() -> Any:
        return Response(
            static.joinpath("index.html").read_bytes(), media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS
        )

    @app.get("/static/{name}")
    async def static_file(name: str) -> Any:
        if name not in STATIC_FILES:
            raise APIError(404, f"No static file {name!r}.", code="not_found")
        return Response(static.joinpath(name).read_bytes(), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    return app


# ---------------------------------------------------------------------- generation plumbing


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(c: Completion | None) -> dict[str, int]:
    p = c.usage.prompt_tokens if c else 0
    n = c.usage.completion_tokens if c else 0
    return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _until_disconnected(request: Request) -> None:
    # Called once the body has been read: the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cancelled (and ClientGone raised) as soon as the client disconnects: a
    request queued or generating for nobody frees its place and slot at once."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        log.info("client left; its request was dropped")
        raise ClientGone()
    return task.result()


async def _pieces(
    stream: AsyncIterator[Any], safety: Any | None
) -> AsyncIterator[tuple[str, Completion | None, str | None]]:
    """(text piece, final completion, finish reason override) from a backend stream, cut by the
    safety filter. A blocklist scans the folded answer after every piece and cuts at the match;
    a moderation model checks it in blocks of `answer_block_chars`, each held back until passed.
    The backend stream is always closed, which cancels generation."""
    answer = FoldedText()
    held = ""  # generated, not yet released (waiting for its block's check)
    block = getattr(safety, "answer_block_chars", 0) if safety is not None else 0

    async def release(final: bool) -> bool:
        nonlocal held
        if not held or (not final and len(held) < block):
            return True
        verdict = await safety.check_answer(answer.raw)
        if verdict.blocked:
            log.info("cut an answer: %s", verdict.category)
            return False
        held = ""
        return True

    async with contextlib.aclosing(stream):
        async for item in stream:
            if isinstance(item, Completion):
                text = held
                if block and not await release(final=True):
                    yield "", None, "content_filter"
                    return
                if text:
                    yield text, None, None
                yield "", item, None
                return
            if safety is None:
                yield item, None, None
                continue
            before = len(answer.raw)
            answer.append(item)
            hit = safety.scan_output(answer)
            if hit is not None:
                log.info("cut an answer: %s", hit[0])
                yield (held + item)[: max(0, hit[1] - before + len(held))], None, "content_filter"
                return
            if not block:
                yield item, None, None
                continue
            held += item
            text = held
            if len(held) >= block:
                if not await release(final=False):
                    yield "", None, "content_filter"
                    return
                yield text, None, None


async def _collect(stream: AsyncIterator[Any], safety: Any | None) -> tuple[str, Completion | None, str]:
    parts: list[str] = []
    final: Completion | None = None
    finish: str | None = None
    async for piece, done, override in _pieces(stream, safety):
        parts.append(piece)
        if done is not None:
            final = done
        if override:
            finish = override
    text = "".join(parts)
    return text, final, finish or (final.finish_reason if final else "stop")


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _sse(
    kind: str, stream: AsyncIterator[Any], model: str, include_usage: bool, safety: Any | None
) -> AsyncIterator[bytes]:
    """OpenAI's streaming format: chunks, a last chunk with finish_reason, optional usage, [DONE]."""
    cid, created = _id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}

    final: Completion | None = None
    finish: str | None = None
    try:
        if kind == "chat":
            yield _event(chunk("", None, role=True))
        async for piece, done, override in _pieces(stream, safety):
            if piece:
                yield _event(chunk(piece, None))
            if done is not None:
                final = done
            if override:
                finish = override
        yield _event(chunk(None if kind == "chat" else "", finish or (final.finish_reason if final else "stop")))
        if include_usage:
            yield _event(
                {"id": cid, "object": obj, "created": created, "model": model, "choices": [], "usage": _usage(final)}
            )
    except Exception:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
        log.exception("streamed generation failed")  # the details stay in the server's log
        yield _event(
            {
                "error": {
                    "message": "Generation failed (an internal error; the server's operator can find "
                    "the details in its log).",
                    "type": "server_error",
                    "param": None,
                    "code": "generation_failed",
                }
            }
        )
    yield b"data: [DONE]\n\n"


class _GuardedStream(StreamingResponse):
    """A streamed answer that releases its generation slot however the response ends
    (finished, client gone, error), even if the body was never started."""

    def __init__(self, content: AsyncIterator[bytes], ticket: Ticket):
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._ticket = ticket
        self._content = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._content.aclose()  # type: ignore[attr-defined]
            self._ticket.release()


class _HostCheck:
    """Pure ASGI middleware (it must not wrap `receive`, which the disconnect watch reads): 403
    for a request addressed to a name other than loopback or `allowed` (DNS rebinding)."""

    def __init__(self, app: Any, allowed: set[str], bound: str):
        self.app = app
        self.allowed = allowed
        self.bound = bound

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            name = host_name(header)
            if not (is_loopback(name) or name in self.allowed):
                err = APIError(
                    403,
                    f"This server does not answer for the host {name or '(none)'!r}: it is bound to "
                    f"{self.bound} and answers requests addressed to it (a page on another site cannot "
                    "reach it by renaming itself). Add the name to serve.allowed_hosts to allow it.",
                    code="host_not_allowed",
                )
                await JSONResponse(err.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
