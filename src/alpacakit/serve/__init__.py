"""Running the student: `alpacakit chat` (terminal) and `alpacakit serve` (an OpenAI-compatible
HTTP API with a web chat page).

- `config.py`   the `serve` section of alpacakit.yaml (ServeConfig)
- `backend.py`  any model reference -> a model backend, plus streaming and token counting
- `app.py`      the FastAPI app (routes, validation, auth, SSE); `schemas.py`, `errors.py`
- `queue.py`    bounded concurrency and the 429 queue; `safety.py` the optional filter
- `server.py`   running it (CLI, or `BackgroundServer` in a thread)
- `chat.py`     the terminal chat; `history.py` folds chat history for Alpaca-format models
- `static/`     the web page (HTML, CSS, JS); `data/` blocklist, moderation prompt, history layout

Nothing here imports torch, llama_cpp or fastapi at package import time.
"""
