"""The rating web app: one page (`static/human.html`, a data file) and a small JSON API.

Blind by construction: the API never sends system names, files or slots to the browser, only
the instruction and two answers labelled A (left) and B (right). The browser sends back what
the rater pressed; the server works out which system that was from the seeded layout in the
store, so nothing the page does can unblind or skew the study.

Who may rate: raters are invited (`serve_study(..., raters=[...])` prints one personal link
each, `/?t=TOKEN`), and every API call carries that token; the server derives the rater from
it, so nobody can rate, or undo, as somebody else, and nobody can add raters. POST bodies must
be `application/json`, which a page on another site cannot send without a CORS preflight.

Routes:
    GET  /                      the page (it reads the token from its link)
    GET  /api/state?t=TOKEN     the rater's current item and progress
    POST /api/judge             {t, item_id, choice: "A"|"B"|"tie", seconds} -> next state
    POST /api/undo              {t} -> state (the last judgment is removed and shown again)
    GET  /api/summary?t=TOKEN   items, raters and how far each has got (no results: still blind)
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from alpacakit.errors import AlpacakitError
from alpacakit.evaluate.human.store import HumanEvalStore, Item

_PAGE = "human.html"


def page_html() -> str:
    return resources.files("alpacakit.evaluate.human").joinpath("static", _PAGE).read_text(encoding="utf-8")


def _item_view(store: HumanEvalStore, rater: str, item: Item) -> dict[str, Any]:
    left = store.left_slot(rater, item.item_id)
    return {
        "item_id": item.item_id,
        "instruction": item.instruction,
        "input": item.input,
        "A": item.output(left),
        "B": item.output(3 - left),
    }


def _state(store: HumanEvalStore, rater: str, **extra: Any) -> dict[str, Any]:
    display = rater
    item = store.next_item(display)
    return {
        "rater": display,
        "item": _item_view(store, display, item) if item else None,
        "finished": item is None,
        "progress": store.progress(display),
        **extra,
    }


def create_app(store: HumanEvalStore, *, title: str = "Which answer is better?") -> Any:
    """The FastAPI app for `store`. Rater errors come back as 400 with a readable message."""
    from fastapi import Body, FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    from alpacakit.serve.guard import ConnectionGuard

    app = FastAPI(title="alpacakit human A/B", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.connection_guard = ConnectionGuard()  # slow or flooding clients: see serve/guard.py
    html = page_html().replace("{{TITLE}}", _escape(title))

    @app.exception_handler(AlpacakitError)
    async def _user_error(_request: Request, exc: AlpacakitError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=400)

    @app.exception_handler(PermissionError)
    async def _not_invited(_request: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.middleware("http")
    async def _json_posts_only(request: Request, call_next: Any) -> Any:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if request.method == "POST" and ctype != "application/json":
            return JSONResponse({"error": "send JSON with Content-Type: application/json"}, status_code=415)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/state")
    def state(t: str = Query("")) -> dict[str, Any]:
        return _state(store, store.rater_for_token(t))

    @app.post("/api/judge")
    def judge(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        rater = store.rater_for_token(body.get("t"))
        item_id = body.get("item_id")
        choice = body.get("choice")
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            from alpacakit.errors import DataError

            raise DataError("item_id must be an integer")
        seconds = body.get("seconds")
        seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
        recorded = store.judge(rater, item_id, str(choice), seconds)
        return _state(store, rater, recorded=recorded)

    @app.post("/api/undo")
    def undo(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        rater = store.rater_for_token(body.get("t"))
        undone = store.undo(rater)
        return _state(store, rater, undone=undone)

    @app.get("/api/summary")
    def summary(t: str = Query("")) -> dict[str, Any]:
        store.rater_for_token(t)
        return {"items": store.n_items(), "raters": [{"name": r["display"], "done": r["done"]} for r in store.raters()]}

    return app


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def serve_study(
    db: str | Path,
    file_1: str | Path | None,
    file_2: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    seed: int | None = None,
    title: str = "Which answer is better?",
    raters: list[str] | None = None,
    max_raters: int = 50,
    echo: Any = print,
) -> None:
    """Open (or create) the study, invite `raters` (plus everyone invited before) and serve the
    page until Ctrl-C. Prints each rater's personal link, then one `listening on URL` line that
    scripts can wait for."""
    import uvicorn

    from alpacakit.serve.server import bind_socket, is_loopback_host, url_of, uvicorn_config

    store = HumanEvalStore.open(db, file_1, file_2, seed=seed)
    for name in raters or []:
        store.invite(name, max_raters=max_raters)
    invited = [r["display"] for r in store.raters()]
    if not invited:
        from alpacakit.errors import ConfigError

        raise ConfigError(
            "no raters: a study is rated by invitation",
            hint="name them: --rater Ana --rater Ben (or --raters 3); each gets a personal link",
        )
    if not is_loopback_host(host):
        echo(
            f"note: listening on {host}: only the links below can rate (each carries its rater's token)",
            file=sys.stderr,
        )
    sock = bind_socket(host, port)
    url = url_of(sock)
    for name in invited:
        echo(f"rater {name}: {url}/?t={store.invite(name, max_raters=max_raters)}")
    names = [s.name for s in store.systems()]
    done = sum(r["done"] for r in store.raters())
    echo(f"study: {store.n_items()} items, {names[0]} vs {names[1]} (hidden from raters); {done} judgments so far")
    echo(f"database: {store.path}  (export: alpacakit eval human-export {store.path} -o results.json)")
    echo(
        "send each rater their own link (it is their sign-in); keys: A or 1 = left, B or 2 = right, T or 3 = tie, "
        "U = undo"
    )
    echo(f"listening on {url}", flush=True)
    server = uvicorn.Server(uvicorn_config(create_app(store, title=title), graceful_s=2))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
