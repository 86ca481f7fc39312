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
streaming SSE for text steps when the request says "stream": true), and the Batch API's files
and batches endpoints (see "Batches" below).

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

Batches (the real API's shapes: `openai/types/batch.py`, `file_object.py`): POST /v1/files
(multipart, purpose "batch"), GET /v1/files/{id}, GET /v1/files/{id}/content, POST /v1/batches,
GET /v1/batches (newest first), GET /v1/batches/{id}, POST /v1/batches/{id}/cancel. Each input
line is answered through the same script and responder as an online request (and recorded, with
`batch_id` and `custom_id` set and the headers of the POST that created the batch). A batch moves
validating -> in_progress -> finalizing -> completed, one phase every `batch_delay_s` seconds,
worked out when it is read (so clients must poll); its lines are answered during in_progress, a
share at each read. Lines answered 200 go to the output file; others (a step with "status",
"malformed", or {"line_error": {"code", "message"}}: no response at all) to the error file.
`batch_fates` decides how the next batches end, one dict per batch (default: completed):

- {"status": "expired", "answered": N}: N lines answered, then expired; the rest are error
  lines with code batch_expired;
- {"status": "failed", "message": "..."}: fails validation (no line answered, `errors` set);
- {"status": "cancelled", "answered": N}: cancelled (as if from the dashboard) after N lines;
  unanswered lines appear in no file, as with the real API.

`files` and `batches` (by id) hold what was uploaded and created, for tests to inspect.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
    batch_id: str | None = None  # a line of a batch (answered inside the server, not over HTTP)
    custom_id: str | None = None

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
        self.batch_delay_s = 0.0  # seconds per batch phase (validating, in_progress, finalizing)
        self.batch_fates: deque[dict[str, Any]] = deque()
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"object": FileObject JSON, "content": bytes}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> {"object": Batch JSON, ...internal state}
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

    def script(self, steps: Iterable[Step]) -> FakeOpenAIServer:
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
            self.files.clear()
            self.batches.clear()
            self.batch_fates.clear()
        self.batch_delay_s = 0.0
        self.responder = default_responder
        self.api_key = None

    def start(self, timeout: float = 10.0) -> FakeOpenAIServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{self.port}", daemon=True
        )
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

    def __enter__(self) -> FakeOpenAIServer:
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

        self._batch_routes(app)
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
        rec = RecordedRequest(
            path=request.url.path,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            received_at=time.monotonic(),
            received_wall=time.time(),
        )
        with self._lock:
            self._requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.api_key is not None and rec.authorization != f"Bearer {self.api_key}":
                resp = JSONResponse(
                    {
                        "error": {
                            "message": "Incorrect API key provided.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                    status_code=401,
                )
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
            return JSONResponse(
                {"error": {"message": message, "type": "fake_error", "code": status}},
                status_code=status,
                headers=headers,
            )
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
                return JSONResponse(
                    {"id": "x", "object": "chat.completion", "model": body.get("model"), "choices": [choice]}
                )
            raise ValueError(f"unknown malformed kind {malformed!r}")
        if "text" not in step:
            raise ValueError(f"a step needs 'text', 'status', 'sleep' or 'malformed': {step!r}")
        if body.get("stream"):
            model = step.get("model") or body.get("model") or self.model
            return self._stream(str(step["text"]), step.get("finish_reason", "stop"), model, kind, next(self._ids))
        return JSONResponse(self._completion_json(step, body, kind))

    def _completion_json(self, step: Step, body: dict[str, Any], kind: str) -> dict[str, Any]:
        """The JSON of a non-streaming answer to a text step (online, or a batch line's body)."""
        text = str(step["text"])
        finish = step.get("finish_reason", "stop")
        usage = step.get("usage") or {"prompt_tokens": _prompt_words(body), "completion_tokens": _words(text)}
        usage = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
        n = next(self._ids)
        model = step.get("model") or body.get("model") or self.model
        if kind == "chat":
            out: dict[str, Any] = {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            }
        else:
            out = {
                "id": f"cmpl-fake-{n}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }
        if not step.get("no_usage"):
            out["usage"] = usage
        return out

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
            payload = {
                "id": f"fake-{n}",
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> Any:
            for p in pieces:
                yield chunk(p, None)
            yield chunk(None, finish)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ------------------------------------------------------------------ the Batch API

    _BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}

    def _batch_routes(self, app: Any) -> None:
        @app.post("/v1/files")
        async def upload(request: Request) -> Any:
            return await self._managed(request, self._upload)

        @app.get("/v1/files/{file_id}")
        async def file_info(file_id: str, request: Request) -> Any:
            return await self._managed(request, lambda rec, raw: self._file(file_id, content=False))

        @app.get("/v1/files/{file_id}/content")
        async def file_content(file_id: str, request: Request) -> Any:
            return await self._managed(request, lambda rec, raw: self._file(file_id, content=True))

        @app.post("/v1/batches")
        async def create_batch(request: Request) -> Any:
            return await self._managed(request, self._create_batch)

        @app.get("/v1/batches")
        async def list_batches(request: Request) -> Any:
            return await self._managed(request, lambda rec, raw: self._list_batches(request.query_params))

        @app.get("/v1/batches/{batch_id}")
        async def get_batch(batch_id: str, request: Request) -> Any:
            return await self._managed(request, lambda rec, raw: self._batch_json(batch_id))

        @app.post("/v1/batches/{batch_id}/cancel")
        async def cancel_batch(batch_id: str, request: Request) -> Any:
            return await self._managed(request, lambda rec, raw: self._cancel(batch_id))

    async def _managed(self, request: Request, handler: Callable[[RecordedRequest, bytes], Any]) -> Any:
        """Record a files/batches call, check the key, run `handler` (JSON dict, or a Response)."""
        raw = await request.body()
        try:
            body = (
                json.loads(raw)
                if raw and request.headers.get("content-type", "").startswith("application/json")
                else None
            )
        except ValueError:
            body = None
        rec = RecordedRequest(
            path=request.url.path,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            received_at=time.monotonic(),
            received_wall=time.time(),
        )
        with self._lock:
            self._requests.append(rec)
        if self.api_key is not None and rec.authorization != f"Bearer {self.api_key}":
            resp: Any = JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        else:
            out = handler(rec, raw)
            resp = out if isinstance(out, Response) else JSONResponse(out)
        rec.status = resp.status_code
        rec.finished_at = time.monotonic()
        return resp

    @staticmethod
    def _error(status: int, message: str) -> Response:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}},
            status_code=status,
        )

    def _new_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = f"file-fake{next(self._ids)}"
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._lock:
            self.files[file_id] = {"object": obj, "content": content}
        return obj

    def _upload(self, rec: RecordedRequest, raw: bytes) -> Any:
        ctype = rec.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._error(400, "expected multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return self._error(400, "missing file")
        if purpose != "batch":
            return self._error(400, f"this fake server only takes purpose 'batch', got {purpose!r}")
        name, content = fields["file"]
        return self._new_file(name or "upload.jsonl", purpose, content)

    def _file(self, file_id: str, *, content: bool) -> Any:
        with self._lock:
            f = self.files.get(file_id)
        if f is None:
            return self._error(404, f"No such File object: {file_id}")
        if content:
            return Response(f["content"], media_type="application/octet-stream")
        return f["object"]

    def _create_batch(self, rec: RecordedRequest, raw: bytes) -> Any:
        body = rec.body or {}
        with self._lock:
            f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            return self._error(404, f"No such File object: {body.get('input_file_id')}")
        if body.get("endpoint") not in self._BATCH_ENDPOINTS or body.get("completion_window") != "24h":
            return self._error(400, "endpoint must be /v1/chat/completions or /v1/completions; completion_window 24h")
        batch_id = f"batch_fake{next(self._ids)}"
        now = int(time.time())
        errors, lines = [], []
        for n, line in enumerate(f["content"].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                ok = (
                    isinstance(item, dict)
                    and isinstance(item.get("custom_id"), str)
                    and item.get("method") == "POST"
                    and item.get("url") == body["endpoint"]
                    and isinstance(item.get("body"), dict)
                )
            except ValueError:
                ok = False
            if not ok:
                errors.append(
                    {"code": "invalid_request", "line": n, "message": "not a valid batch line", "param": None}
                )
            else:
                lines.append(item)
        if len({x["custom_id"] for x in lines}) != len(lines):
            errors.append(
                {"code": "duplicate_custom_id", "line": None, "message": "custom_id must be unique", "param": None}
            )
        with self._lock:
            fate = dict(self.batch_fates.popleft()) if self.batch_fates else {"status": "completed"}
        if errors:
            fate = {"status": "failed", "errors": errors}
        obj = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": f["object"]["id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "model": (lines[0]["body"].get("model") if lines else None),
        }
        with self._lock:
            self.batches[batch_id] = {
                "object": obj,
                "lines": lines,
                "fate": fate,
                "results": [],
                "started": time.monotonic(),
                "headers": rec.headers,
                "cancel": False,
            }
        return dict(obj)

    def _list_batches(self, query: Any) -> dict[str, Any]:
        with self._lock:
            ids = list(self.batches)[::-1]
        if query.get("after") in ids:
            ids = ids[ids.index(query["after"]) + 1 :]
        limit = int(query.get("limit") or 20)
        data = [self._advance(i) for i in ids[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ids) > limit,
        }

    def _batch_json(self, batch_id: str) -> Any:
        if batch_id not in self.batches:
            return self._error(404, f"No such Batch object: {batch_id}")
        return self._advance(batch_id)

    def _cancel(self, batch_id: str) -> Any:
        b = self.batches.get(batch_id)
        if b is None:
            return self._error(404, f"No such Batch object: {batch_id}")
        obj = self._advance(batch_id)
        if obj["status"] in ("validating", "in_progress"):
            b["cancel"] = True
            b["object"].update(status="cancelling", cancelling_at=int(time.time()))
        return dict(b["object"])

    def _answer_line(self, b: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        """One input line through the script / responder: an output-file (or error-file) line."""
        body, kind = item["body"], self._BATCH_ENDPOINTS[item["url"]]
        step = self._next_step(body)
        rec = RecordedRequest(
            path=item["url"],
            body=body,
            headers=b["headers"],
            received_at=time.monotonic(),
            received_wall=time.time(),
            step=step,
            batch_id=b["object"]["id"],
            custom_id=item["custom_id"],
        )
        n = next(self._ids)
        out: dict[str, Any] = {
            "id": f"batch_req_fake{n}",
            "custom_id": item["custom_id"],
            "response": None,
            "error": None,
        }
        step = {k: v for k, v in step.items() if k != "sleep"} or self._ask_responder(body)  # no waiting in a batch
        if "line_error" in step:
            out["error"] = dict(step["line_error"])
        elif "status" in step:
            status = int(step["status"])
            out["response"] = {
                "status_code": status,
                "request_id": f"req_fake{n}",
                "body": {
                    "error": {
                        "message": step.get("message", f"scripted error {status}"),
                        "type": "fake_error",
                        "code": status,
                    }
                },
            }
        elif step.get("malformed"):
            if step["malformed"] in ("no_choices", "null_content"):
                text = None
                reply = {"id": "x", "object": "chat.completion", "model": body.get("model")}
                if step["malformed"] == "null_content":
                    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                    choice.update(
                        {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
                    )
                    reply["choices"] = [choice]
                out["response"] = {"status_code": 200, "request_id": f"req_fake{n}", "body": reply}
            else:  # an unreadable answer comes back from a batch as a server error line
                out["response"] = {
                    "status_code": 500,
                    "request_id": f"req_fake{n}",
                    "body": {"error": {"message": "The server had an error", "type": "server_error"}},
                }
        else:
            out["response"] = {
                "status_code": 200,
                "request_id": f"req_fake{n}",
                "body": self._completion_json(step, body, kind),
            }
        rec.status = out["response"]["status_code"] if out["response"] else None
        rec.finished_at = time.monotonic()
        with self._lock:
            self._requests.append(rec)
        return out

    def _advance(self, batch_id: str) -> dict[str, Any]:
        """Bring a batch to where its age says it is (answering lines as it goes); its JSON."""
        b = self.batches[batch_id]
        obj, fate, lines = b["object"], b["fate"], b["lines"]
        d = self.batch_delay_s
        phase = (time.monotonic() - b["started"]) / d if d > 0 else 3.0
        now = int(time.time())
        if obj["status"] in ("completed", "failed", "expired", "cancelled"):
            return dict(obj)
        if fate["status"] == "failed":
            if phase >= 1:
                errors = fate.get("errors") or [
                    {
                        "code": "invalid_request",
                        "line": None,
                        "param": None,
                        "message": fate.get("message", "scripted batch failure"),
                    }
                ]
                obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return dict(obj)
        if phase >= 1 and obj["status"] == "validating":
            obj.update(status="in_progress", in_progress_at=now)
        if obj["status"] in ("in_progress", "cancelling"):
            share = 1.0 if phase >= 2 else max(0.0, phase - 1)
            due = min(len(lines), math.ceil(len(lines) * share) if not b["cancel"] else len(b["results"]))
            if fate["status"] in ("expired", "cancelled"):
                due = min(due, int(fate.get("answered", 0)))
                b["cancel"] = b["cancel"] or (fate["status"] == "cancelled" and phase >= 2)
            while len(b["results"]) < due:
                b["results"].append(self._answer_line(b, lines[len(b["results"])]))
            self._count(b)
        if b["cancel"]:
            obj.update(status="cancelled", cancelling_at=obj["cancelling_at"] or now, cancelled_at=now)
            self._write_results(b, rest=None)
        elif fate["status"] == "expired" and phase >= 2:
            obj.update(status="expired", expired_at=now)
            self._write_results(
                b,
                rest={
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                },
            )
        elif phase >= 2 and obj["finalizing_at"] is None:
            obj.update(status="finalizing", finalizing_at=now)
        if obj["status"] == "finalizing" and phase >= 3:
            obj.update(status="completed", completed_at=now)
            self._write_results(b, rest=None)
        return dict(obj)

    @staticmethod
    def _count(b: dict[str, Any]) -> None:
        ok = sum(1 for r in b["results"] if r["response"] and r["response"]["status_code"] == 200)
        b["object"]["request_counts"] = {"total": len(b["lines"]), "completed": ok, "failed": len(b["results"]) - ok}

    def _write_results(self, b: dict[str, Any], rest: dict[str, Any] | None) -> None:
        """Output and error files of a batch that has ended; `rest`: the error of unanswered lines."""
        results = list(b["results"])
        if rest is not None:
            for item in b["lines"][len(results) :]:
                results.append(
                    {
                        "id": f"batch_req_fake{next(self._ids)}",
                        "custom_id": item["custom_id"],
                        "response": None,
                        "error": dict(rest),
                    }
                )
        good = [r for r in results if r["response"] and r["response"]["status_code"] == 200]
        bad = [r for r in results if r not in good]
        self._count(b)
        if rest is not None:
            b["object"]["request_counts"]["failed"] += len(b["lines"]) - len(b["results"])
        for key, rows in (("output_file_id", good), ("error_file_id", bad)):
            if rows:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b["object"][key] = self._new_file(f"{b['object']['id']}_{key[:-8]}.jsonl", "batch_output", data)["id"]
