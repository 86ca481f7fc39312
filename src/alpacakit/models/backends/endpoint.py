"""Any OpenAI-compatible endpoint as a `ModelBackend`: OpenAI, vLLM, llama.cpp server, Ollama, TGI...

Requests go through the official `openai` SDK (`AsyncOpenAI`) with the SDK's own retries
switched off (`max_retries=0`), so the retry policy is this module's alone and every attempt is
counted in `Completion.attempts`:

- retried: HTTP 408, 409, 429 and 5xx, timeouts, connection errors, and malformed 200 responses
  (a body that is not JSON or has no `choices`: proxies and overloaded servers produce them and
  they usually pass). Delays grow exponentially with full jitter (uniform in
  [0, min(backoff_max_s, backoff_base_s * 2**retry)]); a `Retry-After` (seconds or HTTP date) or
  `retry-after-ms` header wins when present, plus up to 10% jitter so concurrent requests
  do not come back in lockstep (capped at 10 minutes against bogus headers);
- not retried: other 4xx (bad request, wrong key, unknown model): retrying cannot fix them.

A choice whose content is null (a refusal field, a tool call, a server quirk) becomes an empty
`text` with the server's finish_reason: the caller counts and discards empties like any other
unusable answer, instead of a whole batch failing on one odd reply.

The API key is read from the environment variable named by `api_key_env` and never appears in
errors or logs. For a loopback base URL (127.0.0.1, ::1, localhost) a missing variable falls
back to a placeholder key: local servers (vLLM, llama.cpp server, Ollama) usually want none,
and one that does answers 401, which is reported naming the variable.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import os
import random
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from alpacakit.errors import ConfigError, TeacherError
from alpacakit.models.backends.base import Completion, Usage
from alpacakit.teachers.accounting import CostTracker, cost_of, estimate_cost, estimate_prompt_tokens, estimate_tokens

if TYPE_CHECKING:
    from alpacakit.teachers.config import TeacherConfig

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "no-key-needed-for-local-servers"
MAX_RETRY_AFTER_S = 600.0
RETRY_STATUS = frozenset({408, 409, 429})
_FINISH_ALIASES = {
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
}


class EndpointError(TeacherError):
    """A request failed for good. `status` is the last HTTP status (None: no HTTP answer)."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None, attempts: int = 0):
        super().__init__(message, hint)
        self.status = status
        self.attempts = attempts


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(
        self, summary: str, retry_after: float | None = None, status: int | None = None, maybe_billed: bool = False
    ):
        super().__init__(summary)
        self.summary = summary
        self.retry_after = retry_after
        self.status = status
        # The server may have generated (and billed) an answer we never got: a timeout on our
        # side, or a 200 whose body we could not read. 429s, 5xx and refused connections are not.
        self.maybe_billed = maybe_billed


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(env_var: str, base_url: str) -> str:
    """The key from `env_var`; a placeholder for loopback URLs; else a TeacherError naming the variable."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_var or "") or env_var.startswith("sk-"):
        # never echo it: this is where people paste the key itself
        raise ConfigError(
            "teacher.api_key_env must be the name of an environment variable (e.g. OPENAI_API_KEY), "
            "and the value given is not a variable name",
            hint="put the key in an environment variable and give its name; keys never go in config files",
        )
    key = os.environ.get(env_var, "").strip()
    if key:
        return key
    if is_loopback(base_url):
        return LOCAL_PLACEHOLDER_KEY
    raise TeacherError(
        f"environment variable {env_var} is not set (it should hold the API key for {base_url})",
        hint=f"export {env_var}=...  or set teacher.api_key_env to the variable that holds the key",
    )


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry number `retry` (0 = first retry)."""
    if retry_after is not None:
        wait = min(retry_after, MAX_RETRY_AFTER_S)
        return wait + rng.uniform(0, 0.1 * wait)
    return rng.uniform(0, min(cap, base * (2**retry)))


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return fallback


class EndpointModel:
    """A model behind an OpenAI-compatible HTTP API. Build it with `make_backend(config)`.

    `api` (from the config) routes calls: `auto` sends chat() to /chat/completions and
    complete() to /completions (falling back to chat, once and for good, if the endpoint has
    no /completions: 404); `chat` sends both to /chat/completions (complete() becomes one user
    message); `completions` sends complete() to /completions and refuses chat(), since there
    is no template to render messages with.
    """

    def __init__(self, config: TeacherConfig, tracker: CostTracker | None = None):
        self.config = config
        ref = config.model.strip()
        self.model = ref[len("openai:") :] if ref.startswith("openai:") else ref
        if not self.model:
            raise ConfigError("teacher.model is 'openai:' with no model name", hint="e.g. openai:gpt-4o-mini")
        self.name = f"openai:{self.model}"
        base = config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"teacher.base_url {base!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
        self.base_url = base.rstrip("/")
        self.base_urls = [self.base_url]
        for extra in getattr(config, "base_urls", None) or []:
            if not extra.startswith(("http://", "https://")):
                raise ConfigError(
                    f"teacher.base_urls: {extra!r} is not an http(s) URL", hint="e.g. http://10.0.0.2:8000/v1"
                )
            if extra.rstrip("/") not in self.base_urls:
                self.base_urls.append(extra.rstrip("/"))
        # per endpoint: requests in flight, and until when it is skipped after a failure
        self._busy = {u: 0 for u in self.base_urls}
        self._down_until = {u: 0.0 for u in self.base_urls}
        self._clients: dict[str, Any] = {}
        self._key = read_api_key(config.api_key_env, self.base_url)
        self.tracker = tracker
        self.api = config.api
        self._no_completions_route = False
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None

    # ------------------------------------------------------------------ plumbing

    def _bind_loop(self) -> tuple[Any, asyncio.Semaphore]:
        """Client and semaphore for the running event loop.

        Both are tied to the loop they were first used on, so a teacher reused across
        `asyncio.run()` calls gets fresh ones instead of "bound to a different event loop".
        Call `aclose()` before leaving each loop: a client left on a finished loop cannot close
        its idle connections (they are reclaimed by the garbage collector, with a ResourceWarning).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None:
            import openai

            self._loop = loop
            self._sem = asyncio.Semaphore(self.config.max_concurrency)
            self._clients = {
                u: openai.AsyncOpenAI(api_key=self._key, base_url=u, max_retries=0, timeout=self.config.timeout_s)
                for u in self.base_urls
            }
            self._client = self._clients[self.base_url]
        assert self._sem is not None
        return self._client, self._sem

    def _pick_endpoint(self) -> str:
        """The least busy endpoint that is not cooling down after a failure (all cooling down:
        the one that recovers first)."""
        now = time.monotonic()
        up = [u for u in self.base_urls if self._down_until[u] <= now]
        if not up:
            return min(self.base_urls, key=self._down_until.__getitem__)
        return min(up, key=lambda u: (self._busy[u], self.base_urls.index(u)))

    def _scrub(self, text: str) -> str:
        if self._key and len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text

    def describe(self) -> dict[str, Any]:
        """For manifests: which endpoint and model answered (never the key)."""
        return {
            "name": self.model,
            "source": "openai-compatible endpoint",
            "base_url": self.base_url,
            **({"base_urls": self.base_urls} if len(self.base_urls) > 1 else {}),
            "api": "chat" if self._no_completions_route and self.api == "auto" else self.api,
            "path": None,
            "sha256": None,
            "licence": None,
        }

    # ------------------------------------------------------------------ public API

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        if self.api == "completions":
            raise TeacherError(
                f"{self.name} is configured with api=completions (raw text), so it cannot chat",
                hint="set teacher.api=auto or chat, or send a raw prompt with complete()",
            )
        return await self._call("chat", {"messages": messages}, max_tokens, temperature, top_p, stop, seed)

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Completion:
        as_chat = {"messages": [{"role": "user", "content": prompt}]}
        if self.api == "chat" or self._no_completions_route:
            return await self._call("chat", as_chat, max_tokens, temperature, top_p, stop, seed)
        try:
            return await self._call("completions", {"prompt": prompt}, max_tokens, temperature, top_p, stop, seed)
        except EndpointError as e:
            if self.api != "auto" or e.status != 404:
                raise
            log.info("%s has no /completions route (404); sending raw prompts as chat messages", self.base_url)
            self._no_completions_route = True
            return await self._call("chat", as_chat, max_tokens, temperature, top_p, stop, seed)

    async def list_models(self) -> list[str]:
        """Model ids the endpoint serves (GET /models): a cheap reachability and key check."""
        import openai

        client, _ = self._bind_loop()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                page = await client.models.list()
        except openai.APIStatusError as e:
            raise EndpointError(
                self._scrub(f"{self.base_url}/models: HTTP {e.status_code}"), status=e.status_code
            ) from None
        except (openai.APIConnectionError, TimeoutError) as e:
            raise EndpointError(self._scrub(f"{self.base_url}/models: {type(e).__name__}: {e}")) from None
        return [m.id for m in page.data]

    async def aclose(self) -> None:
        clients, self._clients, self._client = list(self._clients.values()), {}, None
        for client in clients:
            try:
                await client.close()
            except RuntimeError:  # its loop is gone: nothing left to close
                pass

    async def __aenter__(self) -> EndpointModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ one call, with retries

    async def _call(
        self,
        route: str,
        payload: dict[str, Any],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: list[str] | None,
        seed: int | None,
    ) -> Completion:
        cfg = self.config
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens if max_tokens is not None else cfg.max_tokens,
            "temperature": temperature if temperature is not None else cfg.temperature,
            "top_p": top_p if top_p is not None else cfg.top_p,
            **payload,
        }
        if stop:
            params["stop"] = list(stop)
        seed = seed if seed is not None else cfg.seed
        if seed is not None:
            params["seed"] = seed
        _, sem = self._bind_loop()
        t0 = time.monotonic()
        attempts = 0
        maybe_billed = 0  # failed attempts the server may have billed (see _Retryable)
        async with sem:
            while True:
                attempts += 1
                base = self._pick_endpoint()
                client = self._clients[base]
                path = "/chat/completions" if route == "chat" else "/completions"
                url = base + path
                self._busy[base] += 1
                try:
                    completion = await self._attempt(client, path, params, route, url)
                    break
                except _Retryable as e:
                    last = e
                    maybe_billed += e.maybe_billed
                    if len(self.base_urls) > 1 and e.status != 429:  # no answer, timeout, 5xx: skip it a while
                        self._down_until[base] = time.monotonic() + self.config.endpoint_cooldown_s
                        log.warning(
                            "%s failed (%s); skipping it for %g s",
                            base,
                            self._scrub(e.summary),
                            self.config.endpoint_cooldown_s,
                        )
                        if (
                            any(self._down_until[u] <= time.monotonic() for u in self.base_urls)
                            and attempts <= cfg.max_retries
                        ):
                            continue  # another endpoint is up: ask it now, no backoff
                except EndpointError as e:
                    e.attempts = attempts
                    if self.tracker is not None:
                        self.tracker.record_failure(attempts)
                    raise
                finally:
                    self._busy[base] -= 1
                if attempts > cfg.max_retries:
                    if self.tracker is not None:
                        self.tracker.record_failure(attempts)
                    raise EndpointError(
                        self._scrub(
                            f"{url}: gave up after {attempts} attempt{'s' if attempts > 1 else ''}; "
                            f"last error: {last.summary}"
                        ),
                        hint="check that the server is up and the base URL is right; raise teacher.max_retries "
                        "or teacher.timeout_s for a slow or busy server",
                        status=last.status,
                        attempts=attempts,
                    )
                delay = backoff_delay(attempts - 1, cfg.backoff_base_s, cfg.backoff_max_s, last.retry_after, self._rng)
                log.info(
                    "%s: attempt %d failed (%s); retrying in %.2f s", url, attempts, self._scrub(last.summary), delay
                )
                await asyncio.sleep(delay)

        completion.attempts = attempts
        completion.latency_s = time.monotonic() - t0
        if maybe_billed:
            # Worst case for each: its prompt and all of max_tokens, at the teacher's price.
            completion.maybe_billed_attempts = maybe_billed
            completion.maybe_billed_usd = maybe_billed * estimate_cost(
                cfg.price, max_tokens=params["max_tokens"], prompt=params.get("prompt"), messages=params.get("messages")
            )
        if self.tracker is not None:
            completion.cost = self.tracker.charge(completion.usage, price=cfg.price, attempts=attempts)
        else:
            completion.cost = cost_of(completion.usage, cfg.price)
        return completion

    async def _attempt(self, client: Any, path: str, params: dict[str, Any], route: str, url: str) -> Completion:
        """One POST through the SDK's own request path (auth, headers, timeouts, typed errors).
        `client.post` sends the JSON body as built here: the typed `create()` first walks the
        params against its TypedDicts and wraps the reply in a response object, ~0.8 ms of CPU
        per request that a 64-in-flight generate run spends on its one event-loop core (the body
        is parsed here anyway, to tell a malformed 200 from a good one)."""
        import httpx
        import openai

        timeout = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout):
                raw = await client.post(path, body=params, cast_to=httpx.Response, options={"timeout": timeout})
                body = raw.content
        except TimeoutError:
            raise _Retryable(f"timed out after {timeout:g} s", maybe_billed=True) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {timeout:g} s", maybe_billed=True) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(e)
            raise _Retryable(f"connection failed ({detail})") from None
        except openai.APIStatusError as e:
            status = e.status_code
            msg = _error_message(e.body, e.message)[:300]
            summary = f"HTTP {status}: {msg}"
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(summary, parse_retry_after(e.response.headers), status) from None
            hint = None
            if status in (401, 403):
                hint = f"check the API key in ${self.config.api_key_env} and that it may use {self.model!r}"
            elif status == 404:
                hint = f"check the model name ({self.model!r}) and the base URL ({self.base_url})"
            raise EndpointError(self._scrub(f"{url}: {summary}"), hint=hint, status=status) from None
        return self._parse(body, route, params, raw.headers.get("x-request-id"))

    def _parse(self, body: bytes, route: str, params: dict[str, Any], request_id: str | None) -> Completion:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            snippet = body[:120].decode("utf-8", "replace")
            raise _Retryable(f"malformed response: not JSON ({snippet!r})", maybe_billed=True) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retryable("malformed response: no choices", maybe_billed=True)
        choice = choices[0]
        if route == "chat":
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(text, list):  # content parts
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            if text is None and isinstance(message, dict):
                text = message.get("refusal")
        else:
            text = choice.get("text")
        text = text if isinstance(text, str) else ""
        finish = choice.get("finish_reason") or "stop"
        finish = _FINISH_ALIASES.get(finish, finish)
        usage_d = data.get("usage") if isinstance(data.get("usage"), dict) else None
        if usage_d and usage_d.get("prompt_tokens") is not None:
            usage = Usage(int(usage_d.get("prompt_tokens") or 0), int(usage_d.get("completion_tokens") or 0))
        else:  # the endpoint reports no usage: estimate, erring high, so budgets stay safe
            usage = Usage(estimate_prompt_tokens(params.get("prompt"), params.get("messages")), estimate_tokens(text))
        return Completion(
            text=text,
            finish_reason=finish,
            usage=usage,
            model=str(data.get("model") or self.model),
            request_id=data.get("id") or request_id,
        )
