"""A scripted OpenAI-compatible HTTP server for tests (FastAPI + uvicorn in a thread).

Every stage that talks to a model endpoint (generation, judging, the serve tests) is tested
against this server on 127.0.0.1: real HTTP, real `openai` SDK on the client side, and a
script that decides what each request gets back.

    with FakeOpenAIServer() as srv:                    # or the `fake_openai` fixture
        srv.script([{"status": 429, "retry_after": 1}, {"text": "hello"}])
        srv.responder = lambda body: "default answer"   # once the script is used up
        ...  point a client at srv.url (http://127.0.0.1:PORT/v1) ...
        srv.requests[0].headers["authorization"]       # every request is recorded

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (non-streaming, and
streaming SSE for text steps when the request says "stream": true).

A step is a dict; requests take steps in the order they arrive:

- {"text": "...", "finish_reason": "stop" | "length", "usage": {"prompt_tokens": N, "completion_tokens": M}}
  a normal answer. Without "usage", tokens are whitespace word counts of the prompt and the
  text (real tokenizers differ); {"no_usage": true} leaves usage out of the response.
- {"status": 429, "retry_after": 1}: an error response with that status; "retry_after"
  (seconds, or an HTTP-date string) becomes the Retry-After header; "message" sets the error
  message; "headers" adds headers.
- {"sleep": 2.5, ...}: wait that long (a client with a shorter timeout gives up), then play the
  rest of the step, or the responder's answer if nothing else is in it.
- {"malformed": true}: a 200 whose body is not JSON. Other values: "no_choices" (valid JSON,
  no `choices`), "null_content" (a choice whose content is null), "html" (a text/html page).

When the script is empty the `responder` answers: a callable given the request's JSON body,
returning a text (str) or a step (dict). The default echoes the last user message (chat) or
the prompt (completions) as "echo: ...".

Each request is recorded (`requests`: path, JSON body, lower-cased headers, monotonic
arrival and finish times (and the wall-clock arrival time), status, the step played), and `max_in_flight` tracks the most
requests handled at once, so tests can check retries, delays, headers and concurrency
from the server's side. Times come from `time.monotonic()` in the same process as the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

# The key the `fake_teacher_config` fixture puts in the environment (a test value, not a secret).
FAKE_KEY_ENV = "ALPACAKIT_TEST_API_KEY"
FAKE_KEY = "sk-test-0123456789abcdef"

Step = dict[str, Any]
Responder = Callable[[dict[str, Any]], "str | Step"]


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    received_at: float
    finished_at: float | None = None
    received_wall: float = 0.0  # time.time() at arrival, to compare with HTTP dates
    status: int | None = None
    step: Step | None = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def default_responder(body: dict[str, Any]) -> str:
    """Echo the last user message (chat) or the prompt (completions)."""
    if "messages" in body:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        content = (users or body["messages"] or [{}])[-1].get("content", "")
        return f"echo: {content}"
    prompt = body.get("prompt", "")
    return f"echo: {prompt if isinstance(prompt, str) else prompt[0]}"


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released): for "unreachable endpoint" tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _words(text: Any) -> int:
    return len(str(text).split())


def _prompt_words(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(_words(m.get("content") or "") for m in body["messages"])
    prompt = body.get("prompt", "")
    return _words(prompt if isinstance(prompt, str) else " ".join(map(str, prompt)))


class FakeOpenAIServer:
    """The scripted server. `start()` binds 127.0.0.1 on a free port and returns once serving."""

    def __init__(self, *, model: str = "fake-model", api_key: str | None = None, host: str = "127.0.0.1"):
        self.model = model
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get 401
        self.host = host
        self.responder: Responder = default_responder
        self.max_in_flight = 0
        self.in_flight = 0
        self._lock = threading.Lock()
        self._script: deque[Step] = deque()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._epoch = 0  # bumped by reset()/stop(): sleeping steps give up
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port: int | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ test-facing API

    @property
    def url(self) -> str:
        """Base URL for an OpenAI client: http://127.0.0.1:PORT/v1."""
        if self.port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    def script(self, steps: Iterable[Step]) -> "FakeOpenAIServer":
        """Queue steps (appended after any not yet played)."""
        steps = list(steps)
        for s in steps:
            if not isinstance(s, dict):
                raise TypeError(f"a step is a dict, got {type(s).__name__}: {s!r}")
        with self._lock:
            self._script.extend(steps)
        return self

    @property
    def pending(self) -> int:
        """Steps not yet played."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far (chat and completions; /models is not recorded)."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the script, the requests and the counters; restore the default responder and
        drop `api_key`. Requests still sleeping from an earlier test are cut short first, so
        they cannot count towards the next test's `max_in_flight`."""
        self._epoch += 1
        deadline = time.monotonic() + 5
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self.max_in_flight = 0
        self.responder = default_responder
        self.api_key = None

    def start(self, timeout: float = 10.0) -> "FakeOpenAIServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"fake-openai-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake OpenAI server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._epoch += 1  # wake sleeping handlers so shutdown does not wait for them
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the app

    def _build_app(self) -> Any:
        app = FastAPI(title="fake OpenAI-compatible server")

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await self._handle(request, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await self._handle(request, "completions")

        return app

    def _next_step(self, body: dict[str, Any]) -> Step:
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self._ask_responder(body)

    def _ask_responder(self, body: dict[str, Any]) -> Step:
        answer = self.responder(body)
        return {"text": answer} if isinstance(answer, str) else dict(answer)

    async def _handle(self, request: Request, kind: str) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = RecordedRequest(path=request.url.path, body=body, headers={k.lower(): v for k, v in request.headers.items()},
                              received_at=time.monotonic(), received_wall=time.time())
        with self._lock:
            self._requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.api_key is not None and rec.authorization != f"Bearer {self.api_key}":
                resp = JSONResponse({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}}, status_code=401)
            elif not isinstance(body, dict):
                resp = JSONResponse({"error": {"message": "request body is not a JSON object"}}, status_code=400)
            else:
                step = self._next_step(body)
                rec.step = step
                resp = await self._play(step, body, kind)
            rec.status = resp.status_code
            return resp
        finally:
            with self._lock:
                self.in_flight -= 1
            rec.finished_at = time.monotonic()

    async def _play(self, step: Step, body: dict[str, Any], kind: str) -> Any:
        if "sleep" in step:
            epoch, until = self._epoch, time.monotonic() + float(step["sleep"])
            while time.monotonic() < until:
                if self._epoch != epoch:
                    return JSONResponse({"error": {"message": "fake server reset"}}, status_code=503)
                await asyncio.sleep(min(0.02, max(0.0, until - time.monotonic())))
            step = {k: v for k, v in step.items() if k != "sleep"}
            if not step:
                step = self._ask_responder(body)
        if "status" in step:
            headers = {str(k): str(v) for k, v in (step.get("headers") or {}).items()}
            if "retry_after" in step:
                headers["Retry-After"] = str(step["retry_after"])
            status = int(step["status"])
            message = step.get("message", f"scripted error {status}")
            return JSONResponse({"error": {"message": message, "type": "fake_error", "code": status}},
                                status_code=status, headers=headers)
        malformed = step.get("malformed")
        if malformed:
            if malformed in (True, "invalid_json"):
                return Response(b'{"choices": [ this is not json', media_type="application/json")
            if malformed == "html":
                return Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")
            if malformed == "no_choices":
                return JSONResponse({"id": "x", "object": "chat.completion", "model": body.get("model")})
            if malformed == "null_content":
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                if kind == "chat":
                    choice["message"] = {"role": "assistant", "content": None}
                else:
                    choice["text"] = None
                return JSONResponse({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                     "choices": [choice]})
            raise ValueError(f"unknown malformed kind {malformed!r}")
        if "text" not in step:
            raise ValueError(f"a step needs 'text', 'status', 'sleep' or 'malformed': {step!r}")
        text = str(step["text"])
        finish = step.get("finish_reason", "stop")
        usage = step.get("usage") or {"prompt_tokens": _prompt_words(body), "completion_tokens": _words(text)}
        usage = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
        n = next(self._ids)
        model = step.get("model") or body.get("model") or self.model
        if body.get("stream"):
            return self._stream(text, finish, model, kind, n)
        if kind == "chat":
            out: dict[str, Any] = {
                "id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            }
        else:
            out = {
                "id": f"cmpl-fake-{n}", "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }
        if not step.get("no_usage"):
            out["usage"] = usage
        return JSONResponse(out)

    @staticmethod
    def _stream(text: str, finish: str, model: str, kind: str, n: int) -> Any:
        pieces = [p for p in text.replace(" ", " \0").split("\0") if p] or [""]

        def chunk(delta: str | None, reason: str | None) -> str:
            if kind == "chat":
                d = {"content": delta} if delta is not None else {}
                choice = {"index": 0, "delta": d, "finish_reason": reason}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": reason}
                obj = "text_completion"
            payload = {"id": f"fake-{n}", "object": obj, "created": int(time.time()), "model": model,
                       "choices": [choice]}
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> Any:
            for p in pieces:
                yield chunk(p, None)
            yield chunk(None, finish)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
