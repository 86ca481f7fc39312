"""Targeted capability benchmarks: does the student know more, or only sound better?

- `tasks`: our offline task files, MMLU-style CSV loading, the seeded `--limit` selection;
- `scoring`: SQuAD/NQ-open style normalisation, exact match, token F1;
- `backends`: log-likelihoods and greedy answers from HF folders (transformers) and GGUF files
  (llama-cpp-python);
- `runner`: `run_bench`, which writes `eval/bench-<system>.json`;
- `lm_eval_bridge`: `--lm-eval-tasks` pass-through to lm-evaluation-harness.

Only the standard library is imported here; models load inside `run_bench`.
"""

from alpacakit.evaluate.bench.runner import run_bench
from alpacakit.evaluate.bench.scoring import exact_match, normalize_answer, token_f1
from alpacakit.evaluate.bench.tasks import builtin_tasks, load_mc_csv, load_task

__all__ = ["builtin_tasks", "exact_match", "load_mc_csv", "load_task", "normalize_answer", "run_bench", "token_f1"]
