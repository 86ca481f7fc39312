"""Clients that hold the server without asking anything of it (slow headers, slow bodies,
connection floods) and clients that leave: each runs against a real uvicorn server on
127.0.0.1 with alpacakit's connection guard, and a well-behaved client must still get through."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from serve_fakes import ScriptedTeacher, wait_for

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello."}]}


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=5).json()


def _ok(url: str) -> None:
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello, world!"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(4096):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


# ---------------------------------------------------------------------- slow headers (slowloris)


def test_headers_that_never_finish_get_408_and_the_connection_closes(start):
    url, teacher = start(header_timeout_s=0.5)
    s = _connect(url)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")  # never ends
    t0 = time.monotonic()
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5
    s.close()
    assert health(url)["header_timeouts"] == 1 and teacher.calls == []


def test_a_slowloris_flood_does_not_lock_out_a_well_behaved_client(start):
    """More trickling sockets than may wait for headers: each new connection evicts the oldest
    waiting one, so real clients (headers in one packet) still get in, while the flood goes on."""
    url, teacher = start(max_pending_connections=16, header_timeout_s=30)
    flood = []
    for _ in range(120):
        s = _connect(url)
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers left open
        flood.append(s)
    wait_for(lambda: health(url)["connections_evicted"] >= 100)
    for _ in range(5):
        _ok(url)
        for s in flood[-5:]:  # the attackers keep trickling
            try:
                s.sendall(b"X-a: b\r\n")
            except OSError:
                pass
    h = health(url)
    assert h["connections_waiting_for_headers"] <= 16
    assert h["served"] == 5 and teacher.started == 5
    for s in flood:
        s.close()


def test_a_kept_alive_connection_gets_the_header_deadline_again_for_its_next_request(start):
    url, _ = start(header_timeout_s=0.5)
    s = _connect(url)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = b""
    while b'"status":"ok"' not in first:
        first += s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127")  # the second request trickles and stops
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and reply.endswith(b"did not arrive in time.")
    s.close()


def test_one_connection_over_max_connections_gets_503_and_the_rest_keep_working(start):
    url, _ = start(max_connections=8, body_timeout_s=1.0)
    held = []
    for _ in range(8):  # headers complete, body never sent: each holds a connection
        s = _connect(url)
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        held.append(s)
    time.sleep(0.2)
    extra = _connect(url)
    assert _read_all(extra).startswith(b"HTTP/1.1 503")
    extra.close()
    # each held body runs out of time: 408, connection closed, room again
    replies = [_read_all(s) for s in held]
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies), replies[0][:80]
    assert b"body_timeout" in replies[0]
    for s in held:
        s.close()
    wait_for(lambda: health(url)["connections"] <= 1)
    _ok(url)
    assert health(url)["connections_refused"] >= 1


def test_a_body_that_trickles_past_the_deadline_is_408_without_generating(start):
    url, teacher = start(body_timeout_s=0.5)
    s = _connect(url)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reply = b""
    for _ in range(20):  # one byte every 0.1 s: alive, but never finished in time
        try:
            s.sendall(b"1\r\n{\r\n")
        except OSError:
            break
        time.sleep(0.1)
    reply = _read_all(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 408") and teacher.calls == []
    _ok(url)


# ---------------------------------------------------------------------- clients that leave


def test_a_non_streamed_request_whose_client_left_frees_its_slot_at_once(start):
    teacher = ScriptedTeacher(pieces=["tick "], forever=True, piece_delay_s=0.01)
    url, _ = start(teacher, max_concurrency=1, queue_size=0)

    def leave_early() -> None:
        try:
            httpx.post(f"{url}/v1/chat/completions", json=dict(CHAT, max_tokens=1000), timeout=0.5)
        except httpx.TimeoutException:
            pass

    leave_early()  # 1000 pieces at 10 ms: 10 s of generation, but the client leaves after 0.5 s
    wait_for(lambda: teacher.cancelled == 1, timeout=5)
    wait_for(lambda: health(url)["running"] == 0, timeout=5)
    assert teacher.finished == 0
    teacher.forever = False
    after = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
    assert after.status_code == 200 and teacher.finished == 1


def test_a_queued_request_whose_client_left_gives_up_its_place_and_never_runs(start):
    gate = threading.Event()
    teacher = ScriptedTeacher(gate=gate)
    url, _ = start(teacher, max_concurrency=1, queue_size=1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_for(lambda: health(url)["running"] == 1)
        try:  # queued behind the first, then the client gives up
            httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=0.5)
        except httpx.TimeoutException:
            pass
        wait_for(lambda: health(url)["waiting"] == 0)
        # its place is free: another request may queue instead of getting 429
        second = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_for(lambda: health(url)["waiting"] == 1)
        gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert teacher.started == 2  # the abandoned request never generated
