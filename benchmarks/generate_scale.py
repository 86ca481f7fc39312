"""`alpacakit generate` at Alpaca scale against a loopback teacher with a fixed latency.

    python benchmarks/generate_scale.py --data ../shared/data/alpaca_data.json [--num 52000]
        [--concurrency 64] [--latency 0.2] [--kill-at 40000] [--dedup-million] [--set KEY=VALUE]

The teacher is a small OpenAI-compatible HTTP server in its own process (asyncio, keep-alive,
no framework: it must not be the bottleneck). Each answer comes after `--latency` seconds and
continues the numbered list with 17 tasks whose instructions, inputs and outputs are the next
records of the given Alpaca-format file, so dedup sees real instruction text; past the end of
the file, instructions come back with half of their words swapped. (The data file is read
at run time and never copied anywhere.)

Phases, each the real CLI in a subprocess (peak RSS: VmHWM from /proc while it runs; peak PSS:
the highest sum of the processes' PSS seen, which counts the pages forks share once, with each
process's share at that moment and its private dirty pages; the CLI's and its processing
worker's summed):
  0. The client ceiling: the bare `openai` SDK sending the same requests and doing nothing
     with the answers (what an SDK-based client can reach here, in the same run), through the
     typed `chat.completions.create` and through the low-level `post` that alpacakit uses.
  1. `alpacakit generate --num N --concurrency C` from scratch: wall, requests/s and examples/s
     against the ideal (C / latency requests/s), peak RSS, kept - target (overshoot).
  2. The same run killed with SIGKILL once `--kill-at` examples are kept, then rerun: time from
     the rerun's start to its first new request (journal replay), and a check that the
     finished folder has no duplicate instruction, no request answered twice and every
     pre-kill example unchanged.
  3. The finished job rerun: time to find there is nothing to do.
  4. (`--dedup-million`) `alpacakit curate dedup` on 1,000,000 instructions: the file's
     instructions plus word-level mutations of them (a fifth to three fifths of the words
     swapped), so some copies are near-duplicates and some are new.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS_PER_ANSWER = 17
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the teacher


def serve(port: int, data: str, latency: float) -> None:
    """A minimal OpenAI-compatible server: POST /v1/chat/completions and /v1/completions."""
    records = json.loads(Path(data).read_text(encoding="utf-8"))
    vocab = sorted({w for r in records for w in r["instruction"].split()})
    rng = random.Random(0)
    cursor = [0]

    def instruction(i: int) -> str:
        """The file's instructions, then (past its end) the same with half of the words swapped
        for random ones (ROUGE-L ~0.5 with the original): some stay near-duplicates, most are new."""
        text = records[i % len(records)]["instruction"]
        if i < len(records):
            return text
        words = text.split()
        for j in rng.sample(range(len(words)), max(1, len(words) // 2)):
            words[j] = rng.choice(vocab)
        return " ".join(words)

    def answer() -> str:
        parts = []
        for n in range(4, 4 + TASKS_PER_ANSWER):
            r = records[cursor[0] % len(records)]
            text = instruction(cursor[0])
            cursor[0] += 1
            inp = r.get("input") or "<noinput>"
            parts.append(f"{n}. Instruction: {text}\n{n}. Input:\n{inp}\n{n}. Output:\n{r['output'][:600]}\n###")
        return "\n".join(parts)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                path = head.split(b" ", 2)[1]
                await asyncio.sleep(latency)
                text = answer()
                if path.endswith(b"/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    obj = "text_completion"
                out = json.dumps(
                    {
                        "id": f"bench-{cursor[0]}",
                        "object": obj,
                        "created": int(time.time()),
                        "model": "bench-teacher",
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": len(body) // 4,
                            "completion_tokens": len(text) // 4,
                            "total_tokens": (len(body) + len(text)) // 4,
                        },
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(out)).encode()
                    + b"\r\n\r\n"
                    + out
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_teacher(data: str, latency: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--data", data, "--latency", str(latency)])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the loopback teacher did not start")


# ------------------------------------------------------------------------------- the runs


def alpacakit() -> list[str]:
    exe = Path(sys.executable).with_name("alpacakit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "alpacakit"]


SETTINGS: list[str] = []  # --set overrides from the command line, passed to every run


def generate_cmd(out: Path, port: int, num: int, concurrency: int) -> list[str]:
    return [
        *alpacakit(),
        "generate",
        "--teacher",
        "openai:bench-teacher",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--num",
        str(num),
        "--concurrency",
        str(concurrency),
        "--out-dir",
        str(out),
        *(x for kv in SETTINGS for x in ("--set", kv)),
    ]


def _proc_mb(pid: int, file: str, *fields: str) -> list[int]:
    """The `Field:  N kB` lines of /proc/PID/FILE named in `fields`, in MB, in that order, from
    one read (0 for each once the process is gone)."""
    got = dict.fromkeys(fields, 0)
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            field = line.split(maxsplit=1)[0] if line else ""
            if field in got:
                got[field] = int(line.split()[1]) // 1024
    except OSError:
        pass
    return list(got.values())


def _pss_mb(pid: int) -> tuple[int, int]:
    """(proportional set size, private dirty) in MB, from one read of smaps_rollup. PSS counts
    pages shared with other processes (a fork's, copy-on-write) as a share each, so the sum over
    processes is the memory they really hold together. (The read walks the process's page
    tables: done at most 4 times a second, see `run_measured`.)"""
    pss, dirty = _proc_mb(pid, "smaps_rollup", "Pss:", "Private_Dirty:")
    return pss, dirty


def _hwm_mb(pid: int) -> int:
    """Peak RSS of a running process (VmHWM: per address space, so counted from its exec)."""
    return _proc_mb(pid, "status", "VmHWM:")[0]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    """Children, then theirs (the processing worker's copies computing the statistics)."""
    try:
        children = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *_descendants(c))]


LAST_PSS: dict[int, int] = {}  # 0: the highest sum of the processes' PSS seen in the last measured run, MB
LAST_SPLIT: list[tuple[int, int]] = []  # (PSS, private dirty) MB per process at that moment: CLI, worker, copies
LAST_CPU: dict[int, float] = {}  # CPU seconds of the last measured run: 0 = the CLI, 1 = its worker, 2.. its copies


def run_measured(cmd: list[str], *, kill_when=None, log: Path | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MB, exit status) of one CLI run; `kill_when()` True -> SIGKILL.
    The CPU seconds each of its processes used (last seen) go to `LAST_CPU`.

    Peak RSS is read from /proc while the run lasts, not from wait4 (a child forked from this
    large process would report the parent's pages as its own peak), and it is the sum of the
    peaks of the CLI, its processing worker (generate.process_in_worker) and the worker's copies
    of the pool computing the statistics (generate.stats_copies). CPU and peak RSS are read every
    50 ms; PSS every 250 ms, from one read of smaps_rollup per process (each read walks the page
    tables of a process that is working: read 40 times a second, twice, it slowed a 52K run by
    ~2% on 2 cores)."""
    env = {**os.environ, "NO_COLOR": "1"}
    peaks: dict[int, int] = {}
    LAST_CPU.clear()
    LAST_PSS.clear()
    LAST_SPLIT.clear()
    with open(log or os.devnull, "w") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        polls = 0
        while proc.poll() is None:
            split = []
            for n, pid in enumerate((proc.pid, *_descendants(proc.pid))):
                peaks[pid] = max(peaks.get(pid, 0), _hwm_mb(pid))
                LAST_CPU[n] = max(LAST_CPU.get(n, 0.0), cpu_s(pid))
                if polls % 5 == 0:
                    split.append(_pss_mb(pid))
            if sum(p for p, _ in split) > LAST_PSS.get(0, 0):
                LAST_PSS[0] = sum(p for p, _ in split)
                LAST_SPLIT[:] = split
            polls += 1
            if kill_when is not None and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        return time.perf_counter() - t0, sum(peaks.values()), proc.returncode


def split_text() -> str:
    """Where the peak PSS of the last measured run was: each process's PSS (and how much of it
    is private dirty pages, i.e. not shared with the others), at the moment of the peak."""
    names = ["CLI", "worker"] + [f"copy {i}" for i in range(1, len(LAST_SPLIT) - 1)]
    return ", ".join(f"{n} {pss} ({private})" for n, (pss, private) in zip(names, LAST_SPLIT))


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_sent_after(out: Path, t0_wall: float) -> float | None:
    """Wall-clock time of the first request note in sent.jsonl written after `t0_wall`."""
    for note in read_jsonl(out / "sent.jsonl"):
        if note.get("at", 0) >= t0_wall:
            return note["at"]
    return None


def fresh_folder(out: Path) -> Path:
    """An empty run folder: one left by an earlier `--keep` run would make `generate` resume
    (a finished job sends nothing and "finishes" at an absurd request rate)."""
    shutil.rmtree(out, ignore_errors=True)
    return out


def phase_fresh(args, port: int, work: Path) -> dict:
    out = fresh_folder(work / "fresh")
    wall, rss, rc = run_measured(generate_cmd(out, port, args.num, args.concurrency), log=work / "fresh.log")
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    ideal = args.concurrency / args.latency
    return {
        "rc": rc,
        "wall": wall,
        "rss": rss,
        "pss": LAST_PSS.get(0, 0),
        "split": split_text(),
        "requests": c["requests"],
        "kept": c["kept"],
        "req_per_s": c["requests"] / wall,
        "ideal": ideal,
        "of_ideal": c["requests"] / wall / ideal,
        "examples_per_s": c["kept"] / wall,
        "overshoot": c["kept"] - args.num,
        "discards": c["discards_by_reason"],
        "cpu": dict(LAST_CPU),
    }


def phase_kill_resume(args, port: int, work: Path) -> dict:
    out = fresh_folder(work / "killed")
    examples = out / "examples.jsonl"
    cmd = generate_cmd(out, port, args.num, args.concurrency)
    _, _, rc1 = run_measured(cmd, kill_when=lambda: count_lines(examples) >= args.kill_at, log=work / "kill.log")
    before = examples.read_text(encoding="utf-8").splitlines() if examples.exists() else []
    t0 = time.time()
    wall2, rss2, rc2 = run_measured(cmd, log=work / "resume.log")
    first = first_sent_after(out, t0)
    after = examples.read_text(encoding="utf-8").splitlines()
    records = [json.loads(x) for x in after]
    journal = read_jsonl(out / "responses.jsonl")
    indices = [e["index"] for e in journal]
    # A line cut by the kill is repaired away: compare complete lines only.
    intact = before[:-1] if before and not before[-1].endswith("}") else before
    return {
        "killed_at": len(before),
        "kill_rc": rc1,
        "resume_rc": rc2,
        "resume_wall": wall2,
        "resume_rss": rss2,
        "resume_pss": LAST_PSS.get(0, 0),
        "resume_split": split_text(),
        "replay_s": (first - t0) if first else None,
        "duplicate_instructions": len(records) - len({r["instruction"] for r in records}),
        "duplicate_requests": len(indices) - len(set(indices)),
        "pre_kill_changed": sum(1 for a, b in zip(intact, after) if a != b) + max(0, len(intact) - len(after)),
        "kept": len(records),
        "asked_again": json.loads((out / "manifest.json").read_text())["counts"]["asked_again"],
    }


def phase_rerun_finished(args, port: int, work: Path) -> dict:
    out = work / "fresh"
    journal_before = count_lines(out / "responses.jsonl")
    wall, rss, rc = run_measured(generate_cmd(out, port, args.num, args.concurrency), log=work / "rerun.log")
    return {"rc": rc, "wall": wall, "rss": rss, "new_requests": count_lines(out / "responses.jsonl") - journal_before}


CEILING_CALLS = {
    # the typed call most clients make
    "create": "r = await c.chat.completions.create(**body); return r.choices[0].message.content",
    # the SDK's low-level POST, as alpacakit's endpoint client sends it (no typed params/reply)
    "post": "r = await c.post('/chat/completions', body=body, cast_to=httpx.Response); "
    "return json.loads(r.content)['choices'][0]['message']['content']",
}


def phase_client_ceiling(args, port: int, call: str) -> dict:
    """The same number of requests through the bare `openai` SDK (AsyncOpenAI, `concurrency`
    in flight, nothing done with the answers): the most an SDK-based client reaches on this
    machine against this server, measured in the same run, with its CPU seconds."""
    code = f"""
import asyncio, time, json, httpx, openai
async def main():
    c = openai.AsyncOpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    sem = asyncio.Semaphore({args.concurrency})
    body = dict(model="bench", messages=[{{"role": "user", "content": "x " * 2000}}])
    async def one():
        async with sem:
            {CEILING_CALLS[call]}
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range({args.ceiling_requests})))
    print(time.perf_counter() - t0, time.process_time() - c0)
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall, cpu = map(float, out.split())
    return {
        "req_per_s": args.ceiling_requests / wall,
        "of_ideal": args.ceiling_requests / wall / (args.concurrency / args.latency),
        "cpu_ms_per_request": 1000 * cpu / args.ceiling_requests,
    }


def phase_dedup_million(args, work: Path) -> dict:
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    instructions = [r["instruction"] for r in records]
    vocab = sorted({w for text in instructions for w in text.split()})
    rng = random.Random(0)
    path = work / "million.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(args.million):
            words = instructions[i % len(instructions)].split()
            if i >= len(instructions):
                share = rng.choice((0.2, 0.4, 0.6))
                for j in rng.sample(range(len(words)), max(1, int(len(words) * share))):
                    words[j] = rng.choice(vocab)
            f.write(json.dumps({"instruction": " ".join(words), "input": "", "output": ""}) + "\n")
    wall, rss, rc = run_measured(
        [*alpacakit(), "curate", "dedup", str(path), "-o", str(work / "million.out.jsonl")], log=work / "million.log"
    )
    return {"rc": rc, "wall": wall, "rss": rss, "kept": count_lines(work / "million.out.jsonl"), "n": args.million}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_data.json"))
    ap.add_argument("--num", type=int, default=52000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--kill-at", type=int, default=40000, help="0 skips the kill/resume phase")
    ap.add_argument("--dedup-million", action="store_true")
    ap.add_argument("--million", type=int, default=1_000_000)
    ap.add_argument("--phases", default="ceiling,fresh,kill,rerun")
    ap.add_argument("--ceiling-requests", type=int, default=2000)
    ap.add_argument("--keep", help="keep the run folders here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every generate run, e.g. generate.mean_similarity=off",
    )
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.data, args.latency)
    SETTINGS.extend(args.set)
    work = Path(args.keep or tempfile.mkdtemp(prefix="generate_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    phases = set(args.phases.split(","))
    teacher, port = start_teacher(args.data, args.latency)

    def fresh_teacher() -> None:
        """Each phase starts from the file's first record, as a new teacher would."""
        nonlocal teacher, port
        teacher.terminate()
        teacher.wait()
        teacher, port = start_teacher(args.data, args.latency)

    try:
        print(
            f"# generate_scale: num {args.num}, concurrency {args.concurrency}, latency {args.latency}s, "
            f"ideal {args.concurrency / args.latency:.0f} req/s; folders in {work}"
            + ("" if args.keep else " (removed at the end; --keep DIR keeps them)")
        )
        if "ceiling" in phases:
            for call in CEILING_CALLS:
                r = phase_client_ceiling(args, port, call)
                print(
                    f"client ceiling (bare openai SDK, `{call}`, no processing): {r['req_per_s']:.0f} req/s = "
                    f"{r['of_ideal']:.2f}x the ideal, {r['cpu_ms_per_request']:.2f} CPU ms per request"
                )
        if "fresh" in phases:
            fresh_teacher()
            teacher_cpu = cpu_s(teacher.pid)
            r = phase_fresh(args, port, work)
            cpu = r["cpu"]
            print(
                f"fresh: {r['kept']} kept from {r['requests']} requests in {r['wall']:.1f}s | "
                f"{r['req_per_s']:.1f} req/s = {r['of_ideal']:.2f}x the ideal {r['ideal']:.0f} | "
                f"{r['examples_per_s']:.0f} examples/s | peak RSS {r['rss']} MB (PSS {r['pss']} MB) | overshoot {r['overshoot']} "
                f"| discards {r['discards']} | rc {r['rc']}\n"
                f"  CPU seconds: CLI {cpu.get(0, 0):.1f}, its worker {cpu.get(1, 0):.1f}, "
                f"statistics copies {', '.join(f'{v:.1f}' for k, v in sorted(cpu.items()) if k >= 2) or 'none'}, "
                f"the teacher {cpu_s(teacher.pid) - teacher_cpu:.1f} (of {os.cpu_count()} cores x {r['wall']:.1f}s)\n"
                f"  PSS at the peak, MB (private dirty): {r['split']}"
            )
        if "kill" in phases and args.kill_at:
            fresh_teacher()
            r = phase_kill_resume(args, port, work)
            replay = f"{r['replay_s']:.1f}s" if r["replay_s"] is not None else "no new request"
            print(
                f"kill -9 at {r['killed_at']} kept, resume: replay {replay} before the first new request, "
                f"resume run {r['resume_wall']:.1f}s, peak RSS {r['resume_rss']} MB (PSS {r['resume_pss']} MB) | final {r['kept']} kept, "
                f"duplicate instructions {r['duplicate_instructions']}, requests journaled twice "
                f"{r['duplicate_requests']}, pre-kill lines changed {r['pre_kill_changed']}, "
                f"asked again {r['asked_again']} | rc {r['resume_rc']}\n"
                f"  PSS at the peak, MB (private dirty): {r['resume_split']}"
            )
        if "rerun" in phases and "fresh" in phases:
            r = phase_rerun_finished(args, port, work)
            print(
                f"rerun of the finished job: {r['wall']:.1f}s, peak RSS {r['rss']} MB, "
                f"new requests {r['new_requests']} | rc {r['rc']}"
            )
        if args.dedup_million:
            r = phase_dedup_million(args, work)
            print(
                f"curate dedup of {r['n']:,} instructions: {r['wall']:.1f}s, peak RSS {r['rss']} MB, "
                f"{r['kept']:,} kept | rc {r['rc']}"
            )
    finally:
        teacher.terminate()
        teacher.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)  # (a 52K run leaves ~170 MB of folders)


if __name__ == "__main__":
    main()
