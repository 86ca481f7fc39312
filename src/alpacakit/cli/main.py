"""Entry point: `alpacakit VERB ...`.

Only typer/rich are imported here; each verb imports its stage (and torch, llama_cpp, openai)
when it runs, so `alpacakit --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from alpacakit.cli import chat as chat_cmd
from alpacakit.cli import config_cmd, curate, export, generate
from alpacakit.cli import eval as eval_cmd
from alpacakit.cli import quickstart as quickstart_cmd
from alpacakit.cli import report as report_cmd
from alpacakit.cli import serve as serve_cmd
from alpacakit.cli import train as train_cmd

app = typer.Typer(
    name="alpacakit",
    help=(
        "The Alpaca formula as software.\n\n"
        "generate -> curate -> train -> eval -> export / chat / serve; `alpacakit quickstart` runs them all.\n\n"
        "Start with `alpacakit generate --help`. Models are named the same way everywhere: an embedded "
        "name (qwen2.5-coder-1.5b-instruct, smollm2-135m-instruct, gemma-3-270m), a .gguf path, a model "
        "folder, or openai:MODEL with --base-url."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("quickstart")(quickstart_cmd.quickstart)
app.command("generate")(generate.generate)
app.command("train")(train_cmd.train)
app.command("merge")(train_cmd.merge)
app.command("chat")(chat_cmd.chat)
app.command("serve")(serve_cmd.serve)
app.add_typer(curate.app, name="curate")
app.add_typer(export.app, name="export")
app.add_typer(config_cmd.app, name="config")
app.add_typer(eval_cmd.app, name="eval")
app.command("report")(report_cmd.report)


INTERRUPTED = "interrupted; rerun the same command to resume (train: add --resume)"


def main() -> None:
    from alpacakit.errors import AlpacakitError

    try:
        app()
    except AlpacakitError as e:
        from rich.console import Console
        from rich.markup import escape

        err = Console(stderr=True)
        # escaped: messages quote file contents and install commands (`pip install "alpacakit[llama]"`)
        # whose brackets rich would otherwise swallow as markup
        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, markup=True, soft_wrap=True)
        if e.hint:
            err.print(f"[bold]fix:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # (before typer runs a verb)
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C in a verb into a silent exit 130: say what to do
            print(INTERRUPTED, file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
