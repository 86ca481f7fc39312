"""Shared by the hostile-client tests: `start(teacher=None, **serve_config)` -> (base URL, teacher)
of a real uvicorn server on 127.0.0.1 serving a scripted backend, stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from serve_fakes import ScriptedTeacher

from alpacakit.serve.app import create_app
from alpacakit.serve.backend import ServeBackend
from alpacakit.serve.config import ServeConfig
from alpacakit.serve.server import BackgroundServer


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[str, Any]]]:
    servers: list[BackgroundServer] = []

    def _start(teacher: Any = None, **cfg: Any) -> tuple[str, Any]:
        teacher = teacher or ScriptedTeacher()
        srv = BackgroundServer(create_app(ServeBackend(teacher), ServeConfig(**cfg), api_key="")).start()
        servers.append(srv)
        return srv.url, teacher

    yield _start
    for s in servers:
        s.stop()
