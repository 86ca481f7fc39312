"""The OpenAI Batch API's files and batches endpoints, over the official `openai` SDK.

A batch is not a call that returns an answer: it is a JSONL file uploaded, a job created on
it, polled for minutes or hours, and one or two result files downloaded. That is why it has
its own small client instead of going through `EndpointModel`, whose retry loop and
concurrency are about single requests. What the two share: the key (read the same way, from
the variable named by `api_key_env`, and scrubbed from every message) and the parsing of an
answer's body (`parse_body` runs the teacher's own parser, so a batch answer and a live answer
to the same request become the same text, finish reason and usage).

Retries: reads (retrieve, list, download) use the SDK's retries, since repeating them is
harmless. The two calls that create something (upload, create) are sent once: a create
retried after a lost reply could start, and bill, the same batch twice. When one fails the
caller reports it, and the next run looks for the batch by its input file (`find_batch`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from alpacakit.models.backends.base import Completion

# The request lines' `url`, by route (the API takes exactly these paths, whatever the base URL).
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# A batch in one of these states will not change any more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
COMPLETION_WINDOW = "24h"  # the only window the API offers


class BatchClient:
    """Upload, create, poll, download for one endpoint (`cfg`: a TeacherConfig, openai: model)."""

    def __init__(self, cfg: Any):
        from alpacakit.models.backends.endpoint import DEFAULT_BASE_URL, EndpointModel, read_api_key

        self.cfg = cfg
        self.base_url = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._key = read_api_key(cfg.api_key_env, self.base_url)
        self.model = cfg.model.strip().removeprefix("openai:")
        self._parser = EndpointModel(cfg)  # for parse_body only: it sends nothing
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The SDK client, made on first use inside the running event loop."""
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._key, base_url=self.base_url, max_retries=self.cfg.max_retries, timeout=self.cfg.timeout_s
            )
        return self._client

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and len(self._key) >= 4 else text

    async def _call(self, what: str, make: Any, *, once: bool = False) -> Any:
        """Run one SDK call; its failure becomes a TeacherError naming `what` (never the key)."""
        import openai

        from alpacakit.models.backends.endpoint import EndpointError

        client = self.client.with_options(max_retries=0) if once else self.client
        try:
            return await make(client)
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            msg = err.get("message") if isinstance(err, dict) else None
            raise EndpointError(
                self.scrub(f"{self.base_url}: {what}: HTTP {e.status_code}: {msg or e.message}"),
                hint=self._hint(e.status_code),
                status=e.status_code,
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise EndpointError(
                self.scrub(f"{self.base_url}: {what}: {type(e).__name__}: {e}"),
                hint="check that the server is up; rerun the same command to go on from the "
                "batches recorded in batches.jsonl",
            ) from None

    def _hint(self, status: int) -> str | None:
        if status in (401, 403):
            return f"check the API key in ${self.cfg.api_key_env} and that it may use the Batch API"
        if status == 404:
            return f"check the base URL ({self.base_url}): it must serve the Batch API's /files and /batches"
        return None

    async def upload(self, data: bytes, name: str) -> str:
        """Upload a batch input file (purpose 'batch'); its id."""
        f = await self._call(
            "upload the batch input",
            lambda c: c.files.create(file=(name, data, "application/jsonl"), purpose="batch"),
            once=True,
        )
        return f.id

    async def create(self, input_file_id: str, route: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        b = await self._call(
            "create the batch",
            lambda c: c.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINTS[route],
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            ),
            once=True,
        )
        return b.model_dump()

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return (await self._call(f"look at batch {batch_id}", lambda c: c.batches.retrieve(batch_id))).model_dump()

    async def find_batch(self, input_file_id: str, since: float) -> dict[str, Any] | None:
        """The batch made from `input_file_id`, looking back to batches created at `since`
        (the list comes newest first); None when there is none."""

        async def search(c: Any) -> dict[str, Any] | None:
            async for b in c.batches.list(limit=100):
                if b.input_file_id == input_file_id:
                    return b.model_dump()
                if b.created_at < since:
                    return None
            return None

        return await self._call("list batches", search)

    async def download(self, file_id: str) -> bytes:
        resp = await self._call(f"download {file_id}", lambda c: c.files.content(file_id))
        return resp.content

    def parse_body(self, body: Any, route: str, params: dict[str, Any], request_id: str | None) -> Completion | None:
        """A result line's response body as a Completion, exactly as a live answer is read;
        None when it is unusable (no choices: a live request would have been retried)."""
        try:
            return self._parser._parse(json.dumps(body).encode("utf-8"), route, params, request_id)
        except Exception:  # noqa: BLE001 - the teacher's "malformed response" (retryable online)
            return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
