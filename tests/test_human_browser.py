"""Human A/B end to end: the real CLI in a subprocess, real headless Chromium, real SQLite.

A rater opens their personal link, presses keys and clicks; the judgments land in the database with the
system that was actually on the side they chose; a reload, and a server restart, resume where
they stopped; a second rater in a fresh browser profile gets their own order; the export
computes kappa over what both judged.

Needs Chromium and the Playwright Python package (never `playwright install`: the system
browser is driven through executable_path):
    apt-get install -y chromium chromium-driver && pip install playwright
Skipped when either is missing. ALPACAKIT_CHROMIUM overrides the browser path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ALPACAKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install` needed)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)", allow_module_level=True)

ANSWERS_1 = {
    "Name a primary colour.": "Red.",
    "What is the opposite of cold?": "Hot.",
    "Suggest a name for a pet goldfish.": "Bubbles.",
    "Give a synonym for 'quick'.": "Fast.",
}
ANSWERS_2 = {
    "Name a primary colour.": "Blue is a primary colour.",
    "What is the opposite of cold?": "The opposite of cold is hot.",
    "Suggest a name for a pet goldfish.": "How about 'Captain Fin'?",
    "Give a synonym for 'quick'.": "A synonym for quick is 'rapid'.",
}


def _write(path: Path, generator: str, answers: dict[str, str]) -> Path:
    path.write_text(
        json.dumps(
            [{"instruction": k, "output": v, "generator": generator, "dataset": "demo"} for k, v in answers.items()]
        ),
        encoding="utf-8",
    )
    return path


class Study:
    """`alpacakit eval human` running as a real subprocess on a free port."""

    def __init__(self, args: list[str], cwd: Path, port: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alpacakit.cli.main", "eval", "human", *args, "--port", str(port)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self.links: dict[str, str] = {}  # rater -> personal link, as printed
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("rater "):
                    name, _, link = line[len("rater ") :].strip().rpartition(": ")
                    self.links[name] = link
                if line.startswith("listening on "):
                    self.url = line.split()[-1]
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(90) or not self.url:
            self.stop()
            raise AssertionError("the study server did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _fresh_page(browser: object):
    """A page in a fresh browser profile (own localStorage), as a second rater's machine would be."""
    ctx = browser.new_context()  # type: ignore[attr-defined]
    return ctx, ctx.new_page()


def _wait_done(page: object, n: int) -> None:
    page.wait_for_selector(f'body[data-done="{n}"]', state="attached", timeout=15_000)  # type: ignore[attr-defined]


def _screen(page: object) -> dict[str, str]:
    return {
        k: page.inner_text(sel)
        for k, sel in (  # type: ignore[attr-defined]
            ("instruction", "#instruction"),
            ("A", "#answer-a"),
            ("B", "#answer-b"),
            ("progress", "#progress-text"),
        )
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT j.rater, i.instruction, j.pressed, j.winner, i.output_1, i.output_2 "
            "FROM judgments j JOIN items i ON i.item_id = j.item_id ORDER BY j.id"
        ).fetchall()


@pytest.mark.slow
def test_raters_judge_in_a_real_browser_and_resume(browser: object, tmp_path: Path) -> None:
    a = _write(tmp_path / "outputs-base.json", "base", ANSWERS_1)
    b = _write(tmp_path / "outputs-tuned.json", "tuned", ANSWERS_2)
    db = tmp_path / "eval" / "human.sqlite"
    port = _free_port()  # the same port after the restart: localStorage belongs to host:port
    study = Study(
        [str(a), str(b), "--db", str(db), "--seed", "3", "--rater", "Ana", "--rater", "Bo"], cwd=tmp_path, port=port
    )
    try:
        ctx, page = _fresh_page(browser)
        page.goto(study.url + "/")  # without a personal link: nothing to rate
        page.wait_for_selector("#signin:not([hidden])")
        assert "personal link" in page.inner_text("#signin")
        page.goto(study.links["Ana"])
        page.wait_for_selector("#rate:not([hidden])")
        assert "?t=" not in page.url  # the token leaves the address bar (and the history)
        seen = []
        for n, how in enumerate(("key:a", "key:ArrowRight", "click:#choose-tie"), start=1):
            seen.append(_screen(page))
            assert seen[-1]["progress"] == f"{n - 1} / 4 judged"
            kind, what = how.split(":")
            page.keyboard.press(what) if kind == "key" else page.click(what)
            _wait_done(page, n)
        assert page.inner_text("#progress-text") == "3 / 4 judged"

        rows = _rows(db)
        assert [(r[0], r[2]) for r in rows] == [("ana", "A"), ("ana", "B"), ("ana", "tie")]
        for row, screen in zip(rows, seen):
            _, instruction, pressed, winner, out1, out2 = row
            assert instruction == screen["instruction"]
            if pressed == "tie":
                assert winner == 0
            else:  # the stored winner wrote the text that was on the side the rater chose
                assert (out1, out2)[winner - 1] == screen[pressed]

        # reload: the token comes back from localStorage and the 4th item is shown
        page.reload()
        page.wait_for_selector("#rate:not([hidden])")
        remaining = (set(ANSWERS_1) - {s["instruction"] for s in seen}).pop()
        assert page.inner_text("#instruction") == remaining
        assert page.inner_text("#progress-text") == "3 / 4 judged"
        # undo the tie: the third item comes back
        page.keyboard.press("u")
        _wait_done(page, 2)
        assert page.inner_text("#instruction") == seen[2]["instruction"]
        page.keyboard.press("2")
        _wait_done(page, 3)

        # a second rater in a fresh profile has an order of their own
        ctx2, page2 = _fresh_page(browser)
        page2.goto(study.links["Bo"])
        page2.wait_for_selector("#rate:not([hidden])")
        page2.keyboard.press("b")
        _wait_done(page2, 1)
        page2.keyboard.press("1")
        _wait_done(page2, 2)
        ctx2.close()
    finally:
        study.stop()

    # restart the server without the answer files: Ana's reload still resumes from SQLite
    study = Study(["--db", str(db)], cwd=tmp_path, port=port)
    assert set(study.links) == {"Ana", "Bo"}  # the same links again, for everyone invited before
    try:
        page.goto(study.url + "/")  # a new server process, same browser profile
        page.wait_for_selector("#rate:not([hidden])")
        assert page.inner_text("#progress-text") == "3 / 4 judged"
        assert page.inner_text("#instruction") == remaining
        page.keyboard.press("t")
        _wait_done(page, 4)
        page.wait_for_selector("#finished:not([hidden])")
        ctx.close()
    finally:
        study.stop()

    rows = _rows(db)
    assert sum(r[0] == "ana" for r in rows) == 4 and sum(r[0] == "bo" for r in rows) == 2
    out = tmp_path / "results.json"
    r = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "eval", "human-export", str(db), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["n_judgments"] == 6 and res["n_raters"] == 2
    assert [s["name"] for s in res["systems"]] == ["base", "tuned"]
    (pair,) = res["agreement"]["pairs"]
    assert pair["raters"] == ["Ana", "Bo"] and pair["n"] == 2
