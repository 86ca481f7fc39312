"""`python -m alpacakit.curate.compile_kernels` (run by `make venv`) compiles every numba kernel
of the exact dedup once, so that later runs compile nothing: checked with an empty numba cache
of its own (NUMBA_CACHE_DIR) and numba's own account of what it saved and loaded."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

pytestmark = pytest.mark.slow  # (compiles every kernel: ~10 s on 2 cores)

# What the processes of a large run do with the kernels, each as it does it: the deciding
# worker's compiled index (stats off: its copies compute them), a statistics copy's compiled
# search over a pool past pool_stats._COMPILED_FROM, with the default statistics.
RUN_LIKE = """
import random
from alpacakit.curate.rouge import RougeDeduper

rng = random.Random(1)
vocab = [f"v{i}" for i in range(300)]
texts = [" ".join(rng.choices(vocab, k=rng.randint(2, 16))) for _ in range(2600)]
worker = RougeDeduper(0.7, keep_most_similar=10, mean="sample")
for t in texts[:100]:
    worker.add_seed(t)
copy = RougeDeduper(0.7, keep_most_similar=10, mean="sample")
for t in texts[:2300]:
    copy.add_seed(t)
copy.use_compiled_search(len(copy))
worker.drop_statistics()
worker.use_compiled_decisions(50_000)
assert worker._compiled is not None and copy._pool_stats.compiled
kept = sum(worker.add_if_novel(t).kept for t in texts[100:])
stats = [copy.check(t) for t in texts[2300:]]
print(kept, len(stats))
"""


def _run(args: list[str], cache: Path, cwd: Path) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "NUMBA_DEBUG_CACHE": "1"}
    res = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def test_after_compile_kernels_a_run_compiles_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "numba-cache"
    first = _run(
        [
            sys.executable,
            "-c",
            "import json\nfrom alpacakit.curate import compile_kernels as c\n"
            "r = c.compile_all()\n"
            "print('RESULT ' + json.dumps({'not_reached': c.not_reached(), 'all': sorted(c._dispatchers()), "
            "'compiled': r.compiled}))",
        ],
        cache,
        tmp_path,
    )
    [line] = [line for line in first.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["not_reached"] == []  # every kernel was compiled by one of its paths
    assert result["all"] == result["compiled"] and "search" in result["all"] and "bulk_decide" in result["all"]
    assert "[cache] data saved" in first

    again = _run([sys.executable, "-m", "alpacakit.curate.compile_kernels"], cache, tmp_path)
    assert "load from numba's cache" in again and "[cache] data saved" not in again

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(500)]
    lines = [
        {"instruction": " ".join(rng.choices(vocab, k=rng.randint(3, 90 if i % 500 == 0 else 14)))}
        for i in range(21_000)
    ]
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    cli = Path(sys.executable).with_name("alpacakit")
    dedup = _run([str(cli), "curate", "dedup", str(data), "-o", str(tmp_path / "kept.jsonl")], cache, tmp_path)
    run_like = _run([sys.executable, "-c", RUN_LIKE], cache, tmp_path)
    for out in (dedup, run_like):
        assert "[cache] data loaded" in out  # the compiled paths were taken ...
        assert "[cache] data saved" not in out  # ... and found everything compiled
