"""`alpacakit eval ...`: honest evaluation (human A/B, capability benchmarks, and more).

Each command parses its arguments and calls a library function in `alpacakit.evaluate`;
heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig

app = typer.Typer(
    help="Evaluate: answers to judge, LLM pairwise judging, human A/B judging, capability benchmarks, contamination.",
    no_args_is_help=True,
)


@app.command("human")
def human(
    a: Path | None = typer.Argument(
        None, help="Answers of the first system: AlpacaEval-style JSON [{instruction, output, generator}] (or JSONL)."
    ),
    b: Path | None = typer.Argument(
        None, help="Answers of the second system, same format; matched to the first by instruction."
    ),
    db: Path = typer.Option(
        Path("eval/human-ab.sqlite"), "--db", help="SQLite file holding the study; reuse it to resume."
    ),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on; keep the loopback default unless raters are on other machines.",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Seed of the per-rater item order and left/right placement, fixed when the "
        "study is created [default: random; a known seed would let raters work out the sides].",
    ),
    title: str = typer.Option("Which answer is better?", "--title", help="Heading of the rating page."),
    rater: list[str] | None = typer.Option(
        None, "--rater", help="Invite a rater by name (repeatable); each gets a personal link."
    ),
    raters: int | None = typer.Option(None, "--raters", help="Invite N raters named rater-1 .. rater-N."),
    max_raters: int = typer.Option(50, "--max-raters", help="Most raters a study may have."),
) -> None:
    """Blind A/B rating by people in a local web page, the way Alpaca was evaluated.

    Each invited rater gets a personal link (printed at start; it is their sign-in, so keep
    it to them) and presses A, B or T (tie) for each instruction; system names are never shown
    and the sides are shuffled per rater and item with a random seed. Everything is stored in
    --db at once: stop the server any time and start it again (with or without the two files)
    to continue; earlier raters' links keep working. Several raters can rate at the same time.

    Examples:

      alpacakit eval human eval/outputs-student.json eval/outputs-teacher.json --db eval/human.sqlite --rater Ana --rater Ben

      alpacakit eval human --db eval/human.sqlite          # resume

      alpacakit eval human-export eval/human.sqlite -o eval/human-results.json
    """
    from alpacakit.evaluate.human.app import serve_study

    names = list(rater or []) + [f"rater-{i}" for i in range(1, (raters or 0) + 1)]
    serve_study(db, a, b, host=host, port=port, seed=seed, title=title, raters=names, max_raters=max_raters, echo=print)


@app.command("human-export")
def human_export(
    db: Path = typer.Argument(..., help="The SQLite file of a study (`alpacakit eval human --db`)."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Results JSON: win rates, Cohen's kappa per rater pair, every judgment."
    ),
) -> None:
    """Export a human A/B study: win rates and inter-rater agreement (Cohen's kappa).

    Writes the win rate per system (ties count half; averaged per item over its raters),
    Cohen's kappa for each pair of raters over the items both judged, position bias, and every
    judgment with the system names filled in.
    """
    from alpacakit.evaluate.human.stats import export_results, summary_lines
    from alpacakit.io import atomic_write_json

    res = export_results(db)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output, res)
    for line in summary_lines(res):
        typer.echo(line)
    typer.echo(f"wrote {output}")


@app.command("bench")
@config_options(
    ("eval.system.model", "--model", "-m"),
    "eval.system.base_url",
    "eval.system.api_key_env",
    "eval.bench.tasks",
    ("eval.bench.limit", "--limit", "-n"),
    "eval.bench.prompt",
    "eval.bench.mc_score",
    "eval.bench.max_new_tokens",
    "eval.bench.n_ctx",
    ("eval.system.n_threads", "--threads"),
    "eval.bench.lm_eval_tasks",
    "eval.bench.lm_eval_include",
)
def bench(
    cfg: AlpacakitConfig,
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Result JSON [default: runs/default/eval/bench-SYSTEM.json]."
    ),
    system: str | None = typer.Option(
        None,
        "--system",
        help="Name of the system in the results [default: from -o bench-SYSTEM.json, else the model's name].",
    ),
    base: str | None = typer.Option(
        None, "--base", help="Base model of a LoRA adapter folder, when not where the adapter says."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Capability benchmarks: multiple choice by log-likelihood, short answers by EM and F1.

    Zero-shot, on HF / alpacakit model folders and GGUF models (embedded names too). On an
    OpenAI-compatible endpoint (openai:MODEL --base-url URL) the short-answer tasks run (an API
    gives no log-likelihoods for multiple choice): that is the teacher's row in the report.

    Run it on the base model, the student and the teacher with the same --tasks and --limit:
    the report sets their accuracies side by side (knowledge), next to the pairwise win rate
    (style). Rerunning an interrupted command continues where it stopped.

    Examples:

      alpacakit eval bench --model gemma-3-270m -o runs/demo/eval/bench-base.json

      alpacakit eval bench --model runs/demo/model -o runs/demo/eval/bench-student.json --limit 50

      alpacakit eval bench --model qwen2.5-coder-1.5b-instruct --tasks facts_mc,mmlu_csv/ -o eval/bench-teacher.json

      alpacakit eval bench --model openai:gpt-4o-mini -o eval/bench-teacher.json
    """
    import sys

    from alpacakit.evaluate.bench.runner import run_bench

    sys_cfg, bc = cfg.eval.system, cfg.eval.bench
    model = sys_cfg.model
    if output is None:
        from alpacakit.rundir import RunDir, model_label

        output = RunDir.default().bench(system or model_label(model))
    shown: dict[str, int] = {}

    def report(task: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done - shown.get(task, 0) >= step:
            shown[task] = done
            print(f"  {task}: {done}/{total}", file=sys.stderr, flush=True)

    res = run_bench(
        model,
        tasks=bc.tasks or None,
        limit=bc.limit,
        out=output,
        system=system,
        prompt=bc.prompt,
        mc_score=bc.mc_score,
        max_new_tokens=bc.max_new_tokens,
        n_ctx=bc.n_ctx,
        n_threads=sys_cfg.n_threads,
        base=base,
        lm_eval_tasks=bc.lm_eval_tasks or None,
        lm_eval_include=Path(bc.lm_eval_include) if bc.lm_eval_include else None,
        base_url=sys_cfg.base_url,
        api_key_env=sys_cfg.api_key_env,
        progress=report if progress else None,
    )
    typer.echo(f"{res['system']} ({res.get('prompt', {}).get('mode', 'lm-eval')} prompt):")
    for name, why in (res.get("skipped_tasks") or {}).items():
        typer.echo(f"  {name}: skipped ({why})")
    for name, t in res["tasks"].items():
        extra = f", f1 {t['f1']:.3f}" if t.get("f1") is not None else ""
        typer.echo(f"  {name}: {t['metric']} {t['accuracy']:.3f} (n={t['n']}{extra})")
    if res["overall"]["accuracy"] is not None:
        typer.echo(f"  overall (macro): {res['overall']['accuracy']:.3f}")
    typer.echo(f"wrote {output}")


@app.command("follow")
@config_options(("eval.system.model", "--model", "-m"), ("eval.limit", "--limit", "-n"), "eval.system.base_url")
def follow(
    cfg: AlpacakitConfig,
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="Result JSON, e.g. runs/NAME/eval/follow-student.json "
        "(the answers go to eval/follow/outputs-SYSTEM.json, their journal beside them).",
    ),
    system: str | None = typer.Option(
        None, "--system", help="Name of the system [default: from -o follow-SYSTEM.json]."
    ),
    max_tokens: int = typer.Option(96, "--max-tokens", help="Longest answer (every item is answerable in ~60 words)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Verifiable instruction following: 200+ instructions whose constraints a program checks.

    Each item is a short task plus constraints such as "exactly 3 bullet points", "all lower
    case", "valid JSON with keys name and age", "end with the word Done". Answers are greedy;
    each is scored per item (every constraint met) and per constraint kind, and its ending is
    recorded: by itself (end-of-sequence), by starting a new prompt section, or at the token
    limit. Run it on base and student (and the teacher): `alpacakit report` pairs them item by
    item, with a 95% interval, and uses it as the headline. Resumable like `eval generate`.

    Example:

      alpacakit eval follow --model runs/demo/export/model.gguf -o runs/demo/eval/follow-student.json
    """
    from alpacakit.evaluate.follow.run import run_follow

    # the set, the answer length and greedy answers are what the checks were written for
    cfg.eval.eval_set = "follow"
    cfg.eval.system.max_tokens = max_tokens
    cfg.eval.system.temperature = 0.0
    res = run_follow(cfg.eval.system.model, output, system=system, config=cfg, show_progress=progress)
    typer.echo(
        f"{res['system']}: {res['accuracy']:.1%} of {res['n']} instructions followed "
        f"({res['constraint_accuracy']:.1%} of constraints); ended by itself {res['clean_stop_rate']:.0%} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(res['endings'].items()))})"
    )
    for kind, k in sorted(res["by_kind"].items()):
        typer.echo(f"  {kind}: {k['passed']}/{k['n']}")
    typer.echo(f"wrote {output}")


@app.command("likelihood")
@config_options(("eval.system.model", "--model", "-m"), ("eval.limit", "--limit", "-n"))
def likelihood(
    cfg: AlpacakitConfig,
    answers: Path = typer.Option(
        ...,
        "--answers",
        help="Teacher answers the model never trained on: examples JSONL, "
        "Alpaca JSON or an AlpacaEval outputs file (instruction, input, output).",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Result JSON, e.g. runs/NAME/eval/likelihood-student.json."
    ),
    system: str | None = typer.Option(
        None, "--system", help="Name of the system [default: from -o likelihood-SYSTEM.json]."
    ),
) -> None:
    """How likely a model finds the teacher's own answers: mean NLL per token, per answer.

    Imitation is raising the probability of the teacher's text, so scoring held-out teacher
    answers under the student and under its base (same answers, paired) measures directly how
    much closer to the teacher the student writes, with no generation and no judge.

    Example:

      alpacakit eval likelihood --model gemma-3-270m --answers runs/demo/data/heldout.jsonl -o runs/demo/eval/likelihood-base.json
    """
    from alpacakit.evaluate.likelihood import score_likelihood

    res = score_likelihood(
        cfg.eval.system.model,
        answers,
        output,
        system=system or output.stem.removeprefix("likelihood-"),
        limit=cfg.eval.limit,
    )
    typer.echo(
        f"{res['system']}: {res['mean_nll']:.4f} nats per token (perplexity {res['perplexity']:.2f}) "
        f"over {res['n']} answers; prompt: {res['prompt']['format']}"
    )
    if res.get("skipped_too_long"):
        typer.echo(
            f"left out {len(res['skipped_too_long'])} answers longer than the context window (listed in the file)"
        )
    typer.echo(f"wrote {output}")


# --------------------------------------------------------------------------- answers, LLM judging, contamination


@app.command("generate")
@config_options(
    ("eval.system.model", "--model", "-m"),
    ("eval.eval_set", "--eval-set", "-s"),
    "eval.system.base_url",
    "eval.system.api_key_env",
    "eval.prompt_format",
    ("eval.limit", "--limit", "-n"),
    "eval.instances",
    "eval.system.max_tokens",
    "eval.system.temperature",
    ("eval.system.max_concurrency", "--concurrency"),
)
def generate(
    cfg: AlpacakitConfig,
    output: Path = typer.Option(
        ...,
        "-o",
        "--output",
        help="AlpacaEval-style JSON to write, e.g. runs/NAME/eval/outputs-student.json (its journal goes beside it, in .work/).",
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Generator name written into the file (the report looks for base, student, teacher) [default: from -o outputs-NAME.json, else the model].",
    ),
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Stop cleanly before spending more than this many dollars."
    ),
    batch_api: bool = typer.Option(
        False,
        "--batch-api",
        help="Ask an openai:MODEL system through the OpenAI Batch API: "
        "half the price, answers within 24 h; rerun the same command to collect them after a stop.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Answer an eval set with any system, written as [{instruction, output, generator, dataset}].

    Resumable: kill it and run the same command again; only missing answers are asked for.

    Examples:

      alpacakit eval generate --model gemma-3-270m --name base -o runs/demo/eval/outputs-base.json

      alpacakit eval generate --model runs/demo/model --name student -o runs/demo/eval/outputs-student.json

      alpacakit eval generate --model openai:gpt-4o-mini --name teacher -o eval/outputs-teacher.json \\
          --eval-set user_oriented_instructions.jsonl
    """
    from alpacakit.evaluate.outputs import generate_outputs

    res = generate_outputs(cfg, output, name=name, show_progress=progress, max_cost=max_cost, batch_api=batch_api)
    typer.echo(res.summary())
    if res.status != "complete":
        raise typer.Exit(3 if res.status == "stopped_at_budget" else 1)


@app.command("pairwise")
@config_options(
    ("eval.judge.name", "--judge", "-j"),
    ("eval.judge.model", "--judge-model"),
    "eval.judge.base_url",
    "eval.judge.api_key_env",
    "eval.judge.order",
    "eval.judge.seed",
    ("eval.judge.max_concurrency", "--concurrency"),
    "eval.judge.max_cost",
    "eval.judge.batch_api",
)
def pairwise(
    cfg: AlpacakitConfig,
    model_outputs: Path = typer.Argument(
        ..., help="Answers of the system being rated (AlpacaEval JSON): its win rate is reported."
    ),
    baseline_outputs: Path = typer.Argument(
        ..., help="Answers of the baseline it is compared with (e.g. the teacher's)."
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Result JSON [default: pairwise-MODEL-vs-BASELINE.json beside MODEL_OUTPUTS]."
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Judge only the first N shared instructions."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """An LLM judge compares two systems' answers; win rate (AlpacaEval's definition) with SE and length control.

    Every judgment is journaled: a crash, a rerun or a longer eval set pays for nothing twice.

    Examples:

      alpacakit eval pairwise runs/demo/eval/outputs-student.json runs/demo/eval/outputs-teacher.json

      alpacakit eval pairwise a.json b.json --judge alpacakit_reasoned --judge-model openai:gpt-4o-mini \\
          --set eval.judge.price.input_per_1m=0.15 --set eval.judge.price.output_per_1m=0.6

      alpacakit eval pairwise a.json b.json --judge-model openai:gpt-4o-mini --batch-api    # half price, hours
    """
    from alpacakit.evaluate.pairwise import judge_pairwise

    res = judge_pairwise(model_outputs, baseline_outputs, cfg, out=output, show_progress=progress, limit=limit)
    typer.echo(res.summary())
    if res.status != "complete":
        raise typer.Exit(3)


@app.command("judges")
def judges() -> None:
    """List the built-in judge folders (copy one to write your own)."""
    from alpacakit.evaluate.judges import judges_dir, list_judges

    for name, description in list_judges().items():
        typer.echo(f"{name}: {description}")
    typer.echo(f"(folders in {judges_dir()})")


@app.command("contamination")
@config_options(("eval.eval_set", "--eval-set", "-s"), ("eval.contamination_threshold", "--threshold"))
def contamination(
    cfg: AlpacakitConfig,
    train: Path = typer.Argument(
        ..., help="Training data with an 'instruction' field (JSONL, JSON, CSV or an HF datasets folder)."
    ),
    write_clean: Path | None = typer.Option(
        None, "--write-clean", help="Also write the training data without the copies here (.jsonl or .json)."
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the full report (every pair) as JSON here."),
) -> None:
    """Find training examples whose instruction copies an eval instruction (ROUGE-L F > 0.7).

    Exit status 1 when any is found, so scripts can stop before training on the eval set.

    Example:

      alpacakit eval contamination runs/demo/data/examples.jsonl --write-clean runs/demo/data/clean.jsonl
    """
    from alpacakit.evaluate.contamination import check_contamination
    from alpacakit.io import atomic_write_json

    ev = cfg.eval
    rep = check_contamination(
        train, ev.eval_set, threshold=ev.contamination_threshold, instances=ev.instances, write_clean=write_clean
    )
    if output:
        atomic_write_json(output, rep)
    typer.echo(
        f"{rep['n_contaminated_train']} of {rep['n_train']} training examples copy one of {rep['n_eval']} "
        f"eval instructions (ROUGE-L F > {rep['threshold']}); {rep['n_contaminated_eval']} eval instructions affected"
    )
    for p in rep["pairs"][:10]:
        typer.echo(
            f"  train #{p['train_index']} ~ eval {p['eval_id']} (F={p['rouge_l']:.3f}): {p['train_instruction'][:90]!r}"
        )
    if len(rep["pairs"]) > 10:
        typer.echo(
            f"  ... {len(rep['pairs']) - 10} more" + (f" in {output}" if output else " (use -o to write them all)")
        )
    if "clean" in rep:
        typer.echo(f"wrote {rep['clean']['kept']} examples to {rep['clean']['path']}")
    if rep["n_contaminated_train"]:
        raise typer.Exit(1)
