"""llama.cpp's log: errors only, or down to the level ALPACAKIT_LLAMA_LOG names.

ggml numbers its log levels, since 2024 (ggml.h), NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4 and
CONT 5 (the rest of the previous message). llama-cpp-python's callback still reads the older
numbering (INFO 1, WARN 2, ERROR 3), so with verbose=False every llama.cpp warning came out as an
error would: "llama_kv_cache_iswa: using full-size SWA cache (ref: ...)" on each load of a
Gemma 3 GGUF (12 times in a tiny quickstart), "n_ctx_seq (4096) > n_ctx_train (512)". Every
place that loads a GGUF in process installs this callback first (`quiet_llama_logs`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

LEVELS = {"error": 4, "warn": 3, "info": 2, "debug": 1}
_NONE, _CONT = 0, 5


class _Log:
    """The installed callback (kept alive here: llama.cpp holds only a pointer to it) and
    whether the message being continued is shown."""

    callback: Any = None
    showing = False


def quiet_llama_logs(llama_cpp: Any) -> None:
    """Route llama.cpp's log through our callback, once per process: errors, or down to
    ALPACAKIT_LLAMA_LOG=warn|info|debug when looking into llama.cpp itself."""
    if _Log.callback is not None:
        return
    least = LEVELS.get(os.environ.get("ALPACAKIT_LLAMA_LOG", "error").strip().lower(), LEVELS["error"])

    def log(level: int, text: bytes, _user_data: Any) -> None:
        if level != _CONT:
            _Log.showing = level == _NONE or level >= least
        if _Log.showing:
            print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)

    _Log.callback = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(_Log.callback, ctypes.c_void_p(0))
