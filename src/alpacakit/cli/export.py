"""`alpacakit export ...`: turn stage outputs into formats other tools read."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig

app = typer.Typer(help="Export data (Alpaca JSON, HF datasets) and models (GGUF).", no_args_is_help=True)


@app.command("alpaca")
@config_options()
def alpaca(
    cfg: AlpacakitConfig,
    examples: Path = typer.Argument(..., help="examples.jsonl from `alpacakit generate` (or any instruction records)."),
    output: Path = typer.Option(..., "-o", "--output", help="Alpaca JSON file: [{instruction, input, output}]."),
) -> None:
    """Write Stanford Alpaca's JSON format (a list of {instruction, input, output})."""
    from alpacakit.export.dataset import to_alpaca_json

    n = to_alpaca_json(examples, output)
    typer.echo(f"wrote {n} examples to {output} (data card: {output}.card.md)")


@app.command("hf")
@config_options("export.val_fraction")
def hf(
    cfg: AlpacakitConfig,
    examples: Path = typer.Argument(..., help="examples.jsonl from `alpacakit generate` (or any instruction records)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for `datasets.load_from_disk`."),
) -> None:
    """Write a Hugging Face `datasets` folder (save_to_disk), optionally with a validation split."""
    from alpacakit.export.dataset import to_hf_dataset

    n = to_hf_dataset(examples, output, val_fraction=cfg.export.val_fraction)
    typer.echo(f"wrote {n} examples to {output} (data card: {output}/README.md)")


@app.command("gguf")
@config_options(
    ("export.quant", "--quant", "-q"),
    "export.verify",
    "export.converter",
    "export.tokenizer_pre",
    ("export.n_threads", "--threads"),
)
def gguf(
    cfg: AlpacakitConfig,
    model_dir: Path = typer.Argument(
        ..., help="Trained model folder (HF weights + tokenizer, or a LoRA adapter folder)."
    ),
    output: Path = typer.Option(None, "-o", "--output", help="GGUF file to write (default: ./MODEL-QUANT.gguf)."),
    base: str = typer.Option(
        None,
        "--base",
        help="Base model of an adapter folder, if its adapter_config.json "
        "names one that is not on this machine (folder, .gguf or embedded name).",
    ),
    prompts: Path = typer.Option(
        None, "--prompts", help="Verification prompts, one per line (default: alpacakit's 20 fixed prompts)."
    ),
) -> None:
    """Convert a trained model folder to a GGUF file for llama.cpp (LoRA adapters are merged first).

    The file carries the tokenizer, a chat template in the model's trained prompt format and the
    format itself; FILE.json beside it records the source, sha256 and any verification.

    Examples:

      alpacakit export gguf runs/demo/model                       # auto: compact, verified

      alpacakit export gguf runs/mistral/model --quant q8_0       # any architecture llama.cpp converts
    """
    from alpacakit.errors import AlpacakitError
    from alpacakit.export.gguf import AGREEMENT_THRESHOLD, VERIFIED_QUANTS, check_agreement, export_gguf
    from alpacakit.export.gguf_delta import resolve_quant
    from alpacakit.models.registry import classify, require

    try:
        ref = classify(str(model_dir))
    except AlpacakitError:
        ref = None  # not a model at all: export's own checks say what the folder lacks
    if ref is not None:
        require(ref, "export", "export gguf")  # a .gguf or an endpoint: say so before loading anything

    ec = cfg.export
    requested = ec.quant.lower()
    quant = resolve_quant(requested, model_dir, base)
    if output is None:
        from alpacakit.rundir import model_label

        name = model_label(model_dir.resolve())
        output = Path(f"{name}.gguf" if requested == "auto" else f"{name}-{quant}.gguf")
    prompt_list = None
    if prompts is not None:
        if not prompts.is_file():
            from alpacakit.errors import DataError

            raise DataError(f"{prompts}: no such file", hint="pass a text file with one prompt per line")
        prompt_list = [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    result = export_gguf(
        model_dir,
        output,
        requested,
        base=base,
        tokenizer_pre=ec.tokenizer_pre,
        verify=ec.verify,
        prompts=prompt_list,
        threads=ec.n_threads,
        progress=lambda m: typer.echo(m, err=True),
        converter=ec.converter,
    )
    typer.echo(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.quant}, {result.arch}, "
        f"{result.n_tensors} tensors) in {result.seconds:.1f} s"
    )
    typer.echo(f"chat template: {result.chat_template_source}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"sidecar: {result.sidecar}")
    if result.model_card is not None:
        typer.echo(f"model card: {result.model_card}")
    v = result.verification
    if v:
        typer.echo(
            f"verify: top-1 agreement {v['top1_agreement']:.1%} over {v['positions']} positions "
            f"({v['prompts']} prompts); next-token {v['next_token_agreement']:.1%}; "
            f"tokenizer {v['tokenizer_agreement']:.1%}"
        )
        if v.get("decisive_agreement") is not None:
            typer.echo(
                f"verify: {v['decisive_agreement']:.1%} where the HF model's choice is clear "
                f"({v['decisive_positions']} positions with a lead of at least 0.5 logits)"
            )
        if result.quant in VERIFIED_QUANTS:
            check_agreement(result, AGREEMENT_THRESHOLD)
        elif min(v["top1_agreement"], v["next_token_agreement"]) < AGREEMENT_THRESHOLD:
            typer.echo(
                f"warning: {result.quant} changes the model's answers (agreement below "
                f"{AGREEMENT_THRESHOLD:.0%}); --quant auto keeps them",
                err=True,
            )


@app.command("gguf-lora")
def gguf_lora(
    adapter: Path = typer.Argument(
        ..., help="LoRA adapter folder (adapter_config.json + weights), or a training output folder holding adapter/."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="GGUF LoRA file to write."),
    base: str = typer.Option(
        None, "--base", help="Base model folder, if adapter_config.json names one that is not on this machine."
    ),
    outtype: str = typer.Option("f16", "--outtype", help="f16, f32, bf16 or q8_0."),
) -> None:
    """Convert a LoRA adapter to a GGUF LoRA with llama.cpp's convert_lora_to_gguf.py.

    The base stays one file for many adapters: `llama-cli -m base.gguf --lora FILE`, or
    `Llama(model_path=base.gguf, lora_path=FILE)` in llama-cpp-python. The base GGUF must come
    from the same base weights (e.g. `alpacakit export gguf BASE_FOLDER`).
    """
    from alpacakit.export.gguf import locate
    from alpacakit.export.llama_cpp_convert import convert_lora

    src = locate(adapter, base)
    if src.kind != "adapter":
        from alpacakit.errors import ConfigError

        raise ConfigError(
            f"{adapter} is not a LoRA adapter (no adapter_config.json)",
            hint="`alpacakit export gguf` converts full models",
        )
    from alpacakit.export.gguf import _resolve_base

    base_path = _resolve_base(src.base or "", src.weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    convert_lora(src.weights, base_path, output, outtype)
    typer.echo(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, LoRA of {base_path})")


@app.command("converters")
def converters(
    list_: bool = typer.Option(False, "--list", help="Print the architectures llama.cpp's converter knows."),
) -> None:
    """Fetch (once) llama.cpp's converter scripts matched to the installed llama-cpp-python.

    They come from that release's source package on the package index (sha256 checked) and are
    kept in the alpacakit cache; $ALPACAKIT_LLAMA_CPP=CHECKOUT uses your own llama.cpp instead.
    """
    from alpacakit.export.llama_cpp_convert import converters_dir, supported_architectures

    typer.echo(f"converters: {converters_dir()}")
    if list_:
        for name in supported_architectures():
            typer.echo(f"  {name}")
