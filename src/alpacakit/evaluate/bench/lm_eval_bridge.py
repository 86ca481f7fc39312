"""Pass standard benchmarks through to EleutherAI's lm-evaluation-harness (`--lm-eval-tasks`).

Our own task files are small and offline; MMLU, NQ-open, ARC and the rest are large and come
from the Hugging Face hub, which only some users can reach. For them, `lm_eval.simple_evaluate`
runs the real thing and this module folds its numbers into our output format, so the report
puts them beside ours. `lm_eval` is imported only here, only when asked for: it is not an
alpacakit dependency (`pip install lm-eval`).

Tasks: lm-eval's own by name, or your task YAMLs from a folder (`include_path`, the CLI's
`--lm-eval-include DIR`). A task over a local file (`dataset_path: json` with `data_files`)
needs no hub; lm-eval reads a relative `data_files` path from the working directory.
`tests/data/lm_eval/` holds such a task, which CI runs through the real package.

Models: a Hugging Face / alpacakit model folder (merged weights, or a LoRA adapter with its
base) or a hub id runs through lm-eval's `hf` model on CPU. A GGUF file cannot be loaded by
lm-eval in process; the error says how to use our own tasks or lm-eval's server models instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError

# Which lm-eval metric becomes our headline "accuracy", in order of preference, and how we name it.
_HEADLINE = (("acc_norm", "acc"), ("acc", "acc"), ("exact_match", "em"), ("em", "em"), ("f1", "f1"))


def _model_args(model: str, base: str | None) -> dict[str, Any]:
    from alpacakit.models import is_embedded
    from alpacakit.models.backends.hf import find_layout, is_hf_folder

    p = Path(model).expanduser()
    if is_embedded(model) or model.endswith(".gguf") or (p.is_dir() and any(p.glob("*.gguf")) and not is_hf_folder(p)):
        raise ConfigError(
            f"lm-evaluation-harness cannot load the GGUF model {model!r} in process",
            hint="run --lm-eval-tasks on the Hugging Face model folder (e.g. the folder `alpacakit train` wrote), "
            "use alpacakit's own tasks (--tasks) on the GGUF file, or serve it (`alpacakit serve FILE`) and point "
            "lm-eval's local-completions model at http://127.0.0.1:8000/v1/completions",
        )
    if p.is_dir():
        layout = find_layout(p, base)
        if layout.weights is not None:
            return {"pretrained": str(layout.weights), "dtype": "float32"}
        return {"pretrained": str(layout.base), "peft": str(layout.adapter), "dtype": "float32"}
    return {"pretrained": model, "dtype": "float32"}  # a hub id: lm-eval fetches it (where a hub is reachable)


def convert_results(raw: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """lm-eval's `results` dict -> our task entries, named `lm_eval:<task>`."""
    out: dict[str, dict[str, Any]] = {}
    results = raw.get("results") or {}
    samples = raw.get("n-samples") or {}
    for task, metrics in results.items():
        # metrics look like {"alias": "mmlu", "acc,none": 0.25, "acc_stderr,none": 0.01, ...}
        flat = {
            k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        head = next(((src, name) for src, name in _HEADLINE if src in flat), None)
        if head is None:
            continue
        n = (samples.get(task) or {}).get("effective")
        entry: dict[str, Any] = {
            "accuracy": float(flat[head[0]]),
            "n": int(n) if n is not None else 0,
            "metric": head[1],
            "source": "lm-evaluation-harness",
            "lm_eval_metric": head[0],
            "lm_eval_metrics": flat,
        }
        if head[1] in ("em", "f1"):
            entry.setdefault("em", flat.get("exact_match", flat.get("em")))
            entry.setdefault("f1", flat.get("f1"))
        out[f"lm_eval:{task}"] = entry
    missing = [t for t in tasks if f"lm_eval:{t}" not in out]
    if missing and not out:
        raise ConfigError(f"lm-evaluation-harness returned no usable metric for {', '.join(missing)}")
    return out


def run_lm_eval(
    model: str,
    tasks: list[str],
    *,
    limit: int | None = None,
    base: str | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    include_path: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `tasks` (lm-eval task names, e.g. mmlu, nq_open, or tasks defined by the YAML files
    in `include_path`) zero-shot on `model`."""
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        return {}
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "--lm-eval-tasks needs EleutherAI's lm-evaluation-harness, which is not installed",
            hint="pip install lm-eval   (its tasks download their data from the Hugging Face hub)",
        ) from None
    extra: dict[str, Any] = {}
    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"--lm-eval-include {folder}: not a folder",
                hint="pass the folder that holds your lm-eval task YAML files",
            )
        from lm_eval.tasks import TaskManager

        extra["task_manager"] = TaskManager(include_path=str(folder))
    args = _model_args(model, base)
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=tasks,
        num_fewshot=0,
        limit=limit,
        batch_size=batch_size,
        device=device,
        **extra,
    )
    if not isinstance(raw, dict):
        raise ConfigError("lm-evaluation-harness returned no results (was this process not its rank 0?)")
    return convert_results(raw, tasks)
