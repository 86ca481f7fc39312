"""Load test for `alpacakit serve`: N concurrent clients against a real server on 127.0.0.1.

Starts `alpacakit serve MODEL` as a subprocess (any free port), then runs the same fixed set
of streamed chat requests (prompts in benchmarks/data/serve_prompts.txt, greedy, fixed
max_tokens) once per concurrency level, by default 1 client and then N clients. For each level
it prints latency percentiles (time to first token and full answer), throughput (requests/s
and generated tokens/s) and the error count, and at the end the N-vs-1 ratios, measured in
this same run.

The server runs with --max-concurrency N (the number of clients, unless --max-concurrency says
otherwise): a local llama.cpp model then decodes the N requests together, one batch per step,
reading the weights once for all of them. Expected on a CPU: N clients get well over one
client's total tokens/s (the batched-decode headroom of benchmarks/batched_decode.py), each
waiting less than N times as long; zero errors. `--max-concurrency 1` shows the serialised
server (throughput about the same at N as at 1). Any error (429, 5xx, broken stream) is a bug
at these settings.

    python benchmarks/serve_load.py                       # smollm2-135m-instruct, 1 vs 4 clients
    python benchmarks/serve_load.py --clients 8 --requests 24 --max-tokens 48
    python benchmarks/serve_load.py --model runs/quickstart/export/model-q4_k_m.gguf
    python benchmarks/serve_load.py --clients 1 --attack slow-body,oversized,cross-site

`--attack` runs a level of well-behaved clients twice, without and then with hostile clients
running at the same time (loopback only, bounded in count and time), and prints both latency
lines: the server must keep answering the well-behaved ones with zero errors for them.
- `slow-body`: clients that send a JSON body one byte every 0.2 s (each holds a connection);
- `oversized`: clients that upload 64 MB chunked bodies, again and again (the server refuses
  them at serve.max_body_bytes, as they stream in);
- `cross-site`: `text/plain` POSTs and foreign Host headers, as a web page on another site
  would send (refused with 415 / 403 before any generation);
- `slow-headers` (slowloris): --sockets connections (default 1000) that each send a request
  line and then one header line every 2 s, never finishing; each reconnects 1 s after the
  server drops it (evicted by a newer one, or 408 after serve.header_timeout_s).
The attackers' own outcomes are counted by status.

`--server-set KEY=VALUE` (repeatable) starts the server with `--set serve.KEY=VALUE`, and
`--server-fd-limit N` with a hard open-file limit of N. The slowloris baseline (the header rules
off, the common 1024-descriptor limit), then the default server under the same limit:

    python benchmarks/serve_load.py --clients 1 --requests 8 --attack slow-headers --server-fd-limit 1024 \
        --server-set header_timeout_s=100000 --server-set max_pending_connections=100000
    python benchmarks/serve_load.py --clients 1 --requests 8 --attack slow-headers --server-fd-limit 1024

Bounded: --requests per level (default 16) and --time-limit seconds overall (default 600).
Exit status 1 if any well-behaved request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "data" / "serve_prompts.txt"


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def start_server(
    model: str, queue: int, threads: int | None, extra: list[str], fd_limit: int | None = None, concurrency: int = 1
) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "alpacakit.cli.main",
        "serve",
        model,
        "--port",
        "0",
        "--queue-size",
        str(queue),
        "--max-concurrency",
        str(concurrency),
        *(["--threads", str(threads)] if threads else []),
        *extra,
    ]

    def limit_fds() -> None:  # in the child: a hard open-file limit, as on a default Linux login
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        preexec_fn=limit_fds if fd_limit else None,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("listening on "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.split()[-1]
    proc.kill()
    raise SystemExit("server did not start:\n" + "".join(seen))


async def one_request(client, url: str, prompt: str, max_tokens: int, level: Level) -> None:  # noqa: ANN001
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                level.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    level.errors.append(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - counted, reported
        level.errors.append(f"{type(e).__name__}: {e}")
        return
    if not done:
        level.errors.append("stream ended without [DONE]")
        return
    level.latencies.append(time.perf_counter() - t0)
    level.ttfts.append(first if first is not None else float("nan"))
    level.tokens += tokens


async def run_level(url: str, clients: int, prompts: list[str], max_tokens: int, deadline: float) -> Level:
    import httpx

    level = Level(clients)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def worker(client) -> None:  # noqa: ANN001
        while not queue.empty() and time.monotonic() < deadline:
            await one_request(client, url, queue.get_nowait(), max_tokens, level)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    level.wall_s = time.perf_counter() - t0
    if not queue.empty():
        level.errors.append(f"time limit reached with {queue.qsize()} request(s) not sent")
    return level


ATTACKS = ("slow-body", "oversized", "cross-site", "slow-headers")


async def attackers(
    url: str, kinds: list[str], n: int, stop: asyncio.Event, outcomes: dict[str, int], sockets: int = 1000
) -> None:
    """Hostile clients until `stop` is set (each loop bounded by the run's time limit)."""
    import httpx

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    async def repeat(client: httpx.AsyncClient, kind: str, body: Any) -> None:
        """POST a fresh `body()` stream as JSON until stopped, counting what comes back."""
        while not stop.is_set():
            try:
                r = await client.post(
                    f"{url}/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"}
                )
                count(f"{kind} HTTP {r.status_code}")
            except httpx.HTTPError as e:
                count(f"{kind} {type(e).__name__}")

    async def slow_body(client: httpx.AsyncClient) -> None:
        async def trickle():  # noqa: ANN202
            for ch in b'{"messages": [{"role": "user", "content": "' + b"x" * 10_000:
                if stop.is_set():
                    return
                yield bytes([ch])
                await asyncio.sleep(0.2)

        await repeat(client, "slow-body", trickle)

    async def oversized(client: httpx.AsyncClient) -> None:
        async def big():  # noqa: ANN202
            yield b'{"messages": "'
            for _ in range(1024):
                if stop.is_set():
                    return
                yield b"x" * 65_536

        await repeat(client, "oversized", big)

    async def cross_site(client: httpx.AsyncClient) -> None:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        while not stop.is_set():
            for headers in (
                {"Content-Type": "text/plain"},
                {"Content-Type": "application/json", "Host": "evil.example"},
            ):
                try:
                    r = await client.post(f"{url}/v1/chat/completions", content=body, headers=headers)
                    count(f"cross-site HTTP {r.status_code}")
                except httpx.HTTPError as e:
                    count(f"cross-site {type(e).__name__}")
            await asyncio.sleep(0.05)

    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def slow_headers(_client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError as e:
                count(f"slow-headers connect {type(e).__name__}")
                await asyncio.sleep(1.0)
                continue
            try:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                while not stop.is_set():
                    try:
                        got = await asyncio.wait_for(reader.read(200), 2.0)
                    except TimeoutError:
                        writer.write(b"X-Trickle: a\r\n")  # still alive: one more header line
                        continue
                    count(
                        "slow-headers got HTTP " + got[9:12].decode()
                        if got.startswith(b"HTTP/")
                        else "slow-headers dropped by the server"
                    )
                    break
            except OSError as e:
                count(f"slow-headers {type(e).__name__}")
            finally:
                writer.close()
            await asyncio.sleep(1.0)

    fns = {"slow-body": slow_body, "oversized": oversized, "cross-site": cross_site, "slow-headers": slow_headers}
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        await asyncio.gather(*(fns[k](client) for k in kinds for _ in range(sockets if k == "slow-headers" else n)))


async def level_under_attack(
    url: str,
    clients: int,
    prompts: list[str],
    max_tokens: int,
    deadline: float,
    kinds: list[str],
    n_attackers: int,
    outcomes: dict[str, int],
    sockets: int,
) -> Level:
    stop = asyncio.Event()
    attack = asyncio.create_task(attackers(url, kinds, n_attackers, stop, outcomes, sockets))
    await asyncio.sleep(3.0)  # let the attackers connect first
    try:
        return await run_level(url, clients, prompts, max_tokens, deadline)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(attack, 30)
        except TimeoutError:
            attack.cancel()


def raise_fd_limit(wanted: int) -> None:
    """This process opens the attackers' sockets: lift its open-file limit to fit them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def report(level: Level) -> None:
    print(
        f"  clients={level.clients:<3} ok={level.ok:<4} errors={len(level.errors):<3} wall={level.wall_s:6.1f}s  "
        f"throughput={level.ok / level.wall_s:5.2f} req/s {level.tokens / level.wall_s:6.1f} tok/s"
    )
    print(
        f"      latency p50/p90/p99 = {pct(level.latencies, 50):.2f} / {pct(level.latencies, 90):.2f} / "
        f"{pct(level.latencies, 99):.2f} s   first token p50/p90 = {pct(level.ttfts, 50):.2f} / "
        f"{pct(level.ttfts, 90):.2f} s"
    )
    for e in level.errors[:5]:
        print(f"      error: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of the second level")
    ap.add_argument("--requests", type=int, default=16, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="the server's --max-concurrency (requests decoded together) [default: --clients]",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the model")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument("--url", default=None, help="use a server that is already running instead of starting one")
    ap.add_argument(
        "--attack", default=None, help=f"comma-separated hostile clients to run alongside: {', '.join(ATTACKS)}"
    )
    ap.add_argument("--attackers", type=int, default=8, help="hostile clients of each kind")
    ap.add_argument("--sockets", type=int, default=1000, help="connections of the slow-headers attack")
    ap.add_argument(
        "--server-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="start the server with --set serve.KEY=VALUE (repeatable)",
    )
    ap.add_argument(
        "--server-fd-limit",
        type=int,
        default=None,
        help="start the server with this hard open-file limit (1024 is a common default)",
    )
    args = ap.parse_args()
    kinds = [k.strip() for k in (args.attack or "").split(",") if k.strip()]
    if any(k not in ATTACKS for k in kinds):
        raise SystemExit(f"--attack: choose from {', '.join(ATTACKS)}")

    base = [line.strip() for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [base[i % len(base)] for i in range(args.requests)]
    deadline = time.monotonic() + args.time_limit
    proc = None
    url = args.url
    if url is None:
        t0 = time.perf_counter()
        raise_fd_limit(args.sockets + 256)
        extra = [a for kv in args.server_set for a in ("--set", f"serve.{kv}")]
        proc, url = start_server(
            args.model,
            queue=max(8, args.clients * 2),
            threads=args.threads,
            extra=extra,
            fd_limit=args.server_fd_limit,
            concurrency=args.max_concurrency or args.clients,
        )
        print(f"server: {args.model} at {url} (started in {time.perf_counter() - t0:.1f} s)")
    try:
        asyncio.run(run_level(url, 1, prompts[:2], args.max_tokens, deadline))  # warm-up, not counted
        levels = []
        if kinds:
            calm = asyncio.run(run_level(url, args.clients, prompts, args.max_tokens, deadline))
            print("without the attack:")
            report(calm)
            outcomes: dict[str, int] = {}
            hit = asyncio.run(
                level_under_attack(
                    url, args.clients, prompts, args.max_tokens, deadline, kinds, args.attackers, outcomes, args.sockets
                )
            )
            who = ", ".join(f"{args.sockets if k == 'slow-headers' else args.attackers} x {k}" for k in kinds)
            print(f"with {who} attacking at the same time:")
            report(hit)
            print("  attackers got: " + ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items())))
            if calm.ok and hit.ok:
                print(
                    f"ratio under attack: p50 latency x{pct(hit.latencies, 50) / pct(calm.latencies, 50):.2f}, "
                    f"p99 latency x{pct(hit.latencies, 99) / pct(calm.latencies, 99):.2f}"
                )
            failed = len(calm.errors) + len(hit.errors)
            print(
                "errors for well-behaved clients: none" if not failed else f"errors for well-behaved clients: {failed}"
            )
            return 1 if failed else 0
        for clients in dict.fromkeys((1, args.clients)):
            level = asyncio.run(run_level(url, clients, prompts, args.max_tokens, deadline))
            levels.append(level)
            report(level)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    one, many = levels[0], levels[-1]
    if len(levels) > 1 and one.ok and many.ok:
        print(
            f"ratio {many.clients} vs 1 client(s): throughput x{(many.ok / many.wall_s) / (one.ok / one.wall_s):.2f}, "
            f"p50 latency x{pct(many.latencies, 50) / pct(one.latencies, 50):.2f}, "
            f"p50 first token x{pct(many.ttfts, 50) / pct(one.ttfts, 50):.2f}"
        )
    failed = sum(len(level.errors) for level in levels)
    print("errors: none" if not failed else f"errors: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
