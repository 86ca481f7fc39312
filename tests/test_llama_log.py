"""llama.cpp's log in our processes: its errors reach the user, its warnings only on request
(ALPACAKIT_LLAMA_LOG=warn). llama-cpp-python's own callback reads ggml's levels one off and
printed every warning with verbose=False."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

# SmolLM2 was trained on 8,192 positions: a larger window draws llama.cpp's WARN
# "n_ctx_seq (16384) > n_ctx_train (8192)".
LOAD = """
import sys
from alpacakit.models.backends.llamacpp import open_llama
try:
    open_llama(sys.argv[1], n_ctx=16384)
except Exception as e:
    print("raised", type(e).__name__)
"""


def _load(path: Path, **env: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr


def test_warnings_only_on_request_errors_always(smollm2_gguf: Path) -> None:
    assert "n_ctx_train" not in _load(smollm2_gguf)
    assert "n_ctx_seq (16384) > n_ctx_train (8192)" in _load(smollm2_gguf, ALPACAKIT_LLAMA_LOG="warn")

    # ggml's levels through the installed callback: ERROR shown, WARN not, CONT as what it continues
    calls = (
        "import llama_cpp\nfrom alpacakit.models.backends import llama_log as L\n"
        "L.quiet_llama_logs(llama_cpp)\n"
        "for level, text in ((4, b'E1 '), (5, b'E1-more\\n'), (3, b'W1 '), (5, b'W1-more\\n'), (2, b'I1\\n')):\n"
        "    L._Log.callback(level, text, None)\n"
    )
    res = subprocess.run([sys.executable, "-c", calls], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "E1 E1-more\n", res.stderr
