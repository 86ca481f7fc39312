"""The `eval` section of `alpacakit.yaml`: what answers, who judges, and what the report calls a gain.

Judging *method* (prompt, decoding, parser) lives in judge folders (`evaluate/judges/<name>/`);
this section says which judge folder, which model runs it and where, and what it may cost.

Builds on the teacher section (`alpacakit.teachers.config`); imported by `alpacakit.config` to
assemble `AlpacakitConfig`, and by `alpacakit --help`, so no heavy imports here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from alpacakit.settings import Section
from alpacakit.teachers.config import BatchApiConfig, Price, TeacherConfig


def _system_default() -> TeacherConfig:
    # The model under evaluation: modest sampling, a seed, and room for a full answer.
    return TeacherConfig(model="gemma-3-270m", temperature=0.7, top_p=0.9, max_tokens=512, seed=0, max_concurrency=6)


class JudgeConfig(Section):
    """Which judge folder, and which model runs it. Decoding and parsing come from the folder."""

    name: str = Field(
        "alpacakit_verdict",
        description="A judge folder shipped in alpacakit/evaluate/judges/ "
        "(alpacakit_verdict, alpacakit_reasoned) or a path to your own folder with config.yaml + prompt.txt.",
    )
    model: str | None = Field(
        None,
        description="Judge model reference (embedded name, .gguf, openai:MODEL). Default: the judge folder's `model`.",
    )
    base_url: str | None = Field(None, description="Endpoint base URL for an openai: judge.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the judge's API key.")
    max_concurrency: int = Field(
        6, ge=1, le=64, description="Judge requests in flight at once (a local model decodes them together)."
    )
    timeout_s: float = Field(300.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(6, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.")
    n_ctx: int = Field(4096, ge=256, description="Context window for a local GGUF judge (two answers must fit).")
    n_threads: int | None = Field(None, description="CPU threads for a local GGUF judge.")
    price: Price = Field(default_factory=Price, description="Judge price table, for the cost shown and --max-cost.")
    order: Literal["both", "random"] = Field(
        "both",
        description="both: judge every pair in both presentation orders and average (cancels position bias; "
        "twice the cost); random: one order per instruction, drawn with `seed`.",
    )
    seed: int = Field(0, description="Seed for the random order (and the judge's sampling where supported).")
    max_cost: float | None = Field(None, ge=0, description="Stop judging cleanly before spending more than this.")
    batch_api: bool = Field(
        False,
        description="Judge through the OpenAI Batch API (an openai: judge only): half "
        "the price, verdicts within 24 h. Settings in eval.batch.",
    )


class ReportConfig(Section):
    """What `alpacakit report` calls a gain. Stated in the report next to its verdict."""

    style_gain_points: float = Field(
        10.0, description="Win-rate points against the teacher (student minus base) that count as a style gain."
    )
    knowledge_gain_points: float = Field(
        3.0,
        description="Capability-accuracy points (student minus base, over all benchmark items) that count "
        "as a knowledge gain; must also exceed twice the standard error of the difference.",
    )
    base: str = Field("base", description="System label of the base model in eval/ file names.")
    student: str = Field("student", description="System label of the fine-tuned student.")
    teacher: str = Field("teacher", description="System label of the teacher.")


def _comma_list(v: object) -> object:
    # `--tasks a,b` and `--tasks a --tasks b` and a YAML list all mean the same
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        return v
    return [p.strip() for item in items for p in (item.split(",") if isinstance(item, str) else [item]) if p != ""]


class BenchConfig(Section):
    """`alpacakit eval bench`: which capability tasks, how many items, how they are asked and scored."""

    tasks: list[str] = Field(
        default_factory=list,
        description="Built-in tasks (facts_mc, facts_qa, arithmetic_qa, reading_qa), .jsonl files, MMLU-style "
        ".csv files or folders; comma-separated on the command line. Empty: every built-in task.",
    )
    limit: int | None = Field(
        None, ge=1, description="At most N items per task (the same seeded pick for every model)."
    )
    prompt: str = Field(
        "auto",
        description="auto (the model's own prompt format if it has one, else plain), plain, "
        "or a prompt format (alpaca, chat, a .json file).",
    )
    mc_score: Literal["norm", "raw"] = Field(
        "norm", description="Multiple choice: norm (log-likelihood per byte, the headline) or raw (sum)."
    )
    max_new_tokens: int = Field(32, ge=1, description="Longest short answer generated.")
    n_ctx: int = Field(2048, ge=256, description="Context window for GGUF models.")
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="Also run these lm-evaluation-harness tasks (e.g. mmlu,nq_open); "
        "needs `pip install lm-eval` and hub access.",
    )
    lm_eval_include: str | None = Field(
        None, description="Folder of your own lm-eval task YAMLs (e.g. over a local JSONL: no hub needed)."
    )

    _split = field_validator("tasks", "lm_eval_tasks", mode="before")(_comma_list)


class EvalConfig(Section):
    """Evaluation: answers to judge (eval generate), pairwise judging, contamination, the report."""

    eval_set: str = Field(
        "alpacakit",
        description="Eval set: 'alpacakit' (our 150+ held-out instructions) or a "
        "file: self-instruct user-oriented JSONL, AlpacaEval JSON, or instruction/input records.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N eval items (smoke runs).")
    instances: Literal["first", "all"] = Field(
        "first", description="Self-instruct files: answer each instruction's first instance, or every instance."
    )
    system: TeacherConfig = Field(
        default_factory=_system_default, description="The system under evaluation (its `model` is set by --model)."
    )
    prompt_format: str | None = Field(
        None,
        description="Prompt format for local models (alpaca, chat, or a .json). Default: the model "
        "folder's prompt_format.json; else the GGUF's chat template; else alpaca (base models).",
    )
    template_stop: list[str] = Field(
        default_factory=lambda: ["### Instruction:", "### Input:", "### Response:"],
        description="Where to cut an answer written through a template prompt: a base model continues the "
        "template with invented tasks.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    batch: BatchApiConfig = Field(
        default_factory=BatchApiConfig,
        description="The Batch API for judging (eval.judge.batch_api) and for `eval generate --batch-api`.",
    )
    contamination_threshold: float = Field(
        0.7, ge=0, le=1, description="ROUGE-L F above which a training instruction counts as a copy of an eval one."
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
