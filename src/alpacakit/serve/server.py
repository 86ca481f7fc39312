"""Running the app: `serve()` for the CLI (blocks until Ctrl-C), `BackgroundServer` for code
that needs a real server for a while (tests, benchmarks, a pipeline judging through HTTP).

The listening socket is bound here, before uvicorn starts, so port 0 (any free port) works and
the real URL is known and printed; `serve()` prints one line starting with `listening on` that
scripts can wait for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
import time
from typing import Any

from alpacakit.errors import AlpacakitError, ConfigError
from alpacakit.serve.config import ServeConfig

log = logging.getLogger("alpacakit.serve")


def is_loopback_host(host: str) -> bool:
    if host in {"localhost", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; a clear error when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror}",
            hint="pick another --port (or --port 0 for any free one), or stop the process using it",
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    if host in {"0.0.0.0", "[::]"}:
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"http://{host}:{port}"


def uvicorn_config(app: Any, *, graceful_s: float) -> Any:
    """uvicorn's config for one of our apps: h11 with the app's connection guard (serve/guard.py),
    the open-file limit raised to fit `max_connections`, and no access log (prompts are private)."""
    import uvicorn

    from alpacakit.serve.guard import guarded_protocol, raise_fd_limit

    kwargs: dict[str, Any] = {}
    guard = getattr(getattr(app, "state", None), "connection_guard", None)
    if guard is not None:
        guard.max_connections = raise_fd_limit(guard.max_connections)
        kwargs["http"] = guarded_protocol(guard)
    return uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=graceful_s, **kwargs
    )


def build_app(
    model: str,
    config: ServeConfig,
    *,
    base: str | None = None,
    prompt_format: str | None = None,
    api_key: str | None = None,
) -> tuple[Any, Any, Any]:
    """(app, backend, safety) for a model reference: loads the model and the safety filter."""
    from alpacakit.serve.app import create_app, read_api_key
    from alpacakit.serve.backend import ServeBackend, load_teacher
    from alpacakit.serve.safety import make_safety

    key = api_key if api_key is not None else read_api_key(config.api_key_env)  # fail before loading a model
    teacher = load_teacher(
        model,
        timeout_s=config.generation_timeout_s,
        n_ctx=config.n_ctx,
        n_threads=config.n_threads,
        base=base,
        prompt_format=prompt_format,
        max_concurrency=config.max_concurrency,
    )
    backend = ServeBackend(teacher, config.model_name)
    try:
        safety = make_safety(config.safety, config)
    except BaseException:
        _close_quietly(backend)
        raise
    return create_app(backend, config, safety=safety, api_key=key), backend, safety


def _close_quietly(*things: Any) -> None:
    for t in things:
        if t is not None and hasattr(t, "aclose"):
            try:
                asyncio.run(t.aclose())
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass


def serve(
    model: str, config: ServeConfig, *, base: str | None = None, prompt_format: str | None = None, echo: Any = print
) -> None:
    """Load `model` and serve it until interrupted. Prints where it listens and what is enforced."""
    import uvicorn

    if not is_loopback_host(config.host) and not config.api_key_env:
        if not config.insecure_no_key:
            raise ConfigError(
                f"refusing to listen on {config.host} without an API key: anyone who can reach this "
                "machine could use the model (and, in proxy mode, spend your API key)",
                hint="add --api-key-env VAR (clients then send 'Authorization: Bearer $VAR'), or "
                "--insecure-no-key if that is really what you want",
            )
        echo(
            f"warning: listening on {config.host} without an API key (--insecure-no-key): anyone who can reach "
            "this machine can use the model.",
            file=sys.stderr,
        )
    sock = bind_socket(config.host, config.port)  # before loading: a taken port fails in a second, not a minute
    try:
        t0 = time.monotonic()
        app, backend, safety = build_app(model, config, base=base, prompt_format=prompt_format)
    except BaseException:
        sock.close()
        raise
    url = url_of(sock)
    echo(f"model {backend.name} loaded in {time.monotonic() - t0:.1f} s")
    echo(
        f"auth: {'Bearer key from $' + config.api_key_env if config.api_key_env else 'none'}; "
        f"safety: {safety.name if safety else 'none'}; max_tokens <= {config.max_tokens_cap}; "
        f"prompt <= {config.max_prompt_tokens} tokens; {config.max_concurrency} at a time, {config.queue_size} queued"
    )
    echo(f"chat page: {url}/   OpenAI base URL: {url}/v1")
    echo(f"listening on {url}", flush=True)
    server = uvicorn.Server(uvicorn_config(app, graceful_s=5))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        _close_quietly(backend, safety)


class BackgroundServer:
    """An app served by uvicorn in a daemon thread on 127.0.0.1 (a free port by default).

    with BackgroundServer(app) as srv:
        httpx.get(srv.url + "/v1/models")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        import uvicorn

        self._sock = bind_socket(self.host, self.port)
        self.url = url_of(self._sock)
        self._server = uvicorn.Server(uvicorn_config(self.app, graceful_s=2))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="alpacakit-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AlpacakitError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
