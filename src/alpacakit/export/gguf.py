"""Export a trained model folder to GGUF, the file llama.cpp (and phones, laptops) run.

    export_gguf("runs/x/model", "x-q4_k_m.gguf", quant="q4_k_m", verify=True)

What goes in, what comes out, and why:

- **In**: a Hugging Face model folder (`config.json`, safetensors, tokenizer files), or a PEFT
  LoRA adapter folder (`adapter_config.json` + the base it names), or a training output folder
  holding `merged/` or `adapter/`. An adapter is merged into its base first
  (`merge_and_unload`): llama.cpp runs one set of weights. The model is loaded in fp32 with
  transformers, so sharded, bf16 and adapter checkpoints all take the same path.
- **Out**: one GGUF file holding the weights (`f32`, `f16`, `q8_0` written here with the
  `gguf` package; `q4_k_m` made by llama.cpp's own quantizer from an f16 intermediate), the
  tokenizer (`gguf_vocab`), the architecture's hyperparameters (`gguf_arch`), a chat template
  that speaks the model's trained prompt format (`gguf_template`) and the format itself,
  verbatim, under `alpacakit.prompt_format`. Next to it, `<file>.json` records the source,
  sha256, quantization and, with `verify`, the agreement figures.
- **Checked**: `verify_gguf` loads the file in llama-cpp-python and compares top-1 next-token
  predictions with the Hugging Face model at every position of fixed prompts (teacher
  forcing: both see the same token ids), and also compares the two tokenizers on the prompt
  text. f16 and q8_0 must agree on at least 95% of positions.

Files are written to a temporary name in the target folder and renamed into place, so a
killed export never leaves a half file under the final name. Heavy imports (torch,
transformers, peft, gguf, llama_cpp) happen inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alpacakit.errors import AlpacakitError, ConfigError, DataError
from alpacakit.train.outputs import partial_dir

QUANTS = ("auto", "f32", "f16", "q8_0", "delta-q8_0", "delta-f16", "q4_k_m")
# quantizations the agreement requirement applies to (q4_k_m trades accuracy for size)
VERIFIED_QUANTS = ("f32", "f16", "q8_0", "delta-q8_0", "delta-f16")
CONVERTERS = ("auto", "alpacakit", "llama.cpp")
AGREEMENT_THRESHOLD = 0.95
_LLAMA_FTYPE_Q4_K_M = 15  # llama.h: LLAMA_FTYPE_MOSTLY_Q4_K_M
_MAX_VERIFY_TOKENS = 256
_GGML_TYPE_F32 = 0
# a position is "decisive" when the HF model's top token leads the runner-up by this many logits
# (a probability ratio of e^0.5 = 1.65): disagreements elsewhere are near-ties that any rounding flips
_DECISIVE_GAP = 0.5

_MODEL_FOLDER_HELP = (
    "a model folder holds config.json, the weights (*.safetensors) and the tokenizer (tokenizer.json, "
    "tokenizer_config.json), plus prompt_format.json when alpacakit trained it; a LoRA adapter folder holds "
    "adapter_config.json and adapter_model.safetensors; `alpacakit train` output holds them in merged/ or adapter/"
)

Progress = Callable[[str], None]


class ExportError(AlpacakitError):
    """The export could not be completed."""


# --------------------------------------------------------------------------- loading the model


@dataclass
class ModelSource:
    """Where a model's parts are: weights (a folder or an adapter on a base), tokenizer, prompt format."""

    given: Path
    weights: Path
    kind: str  # "hf" | "adapter"
    base: str | None = None
    base_path: str | None = None
    tokenizer_dir: Path | None = None
    prompt_format_path: Path | None = None
    manifest_path: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.given),
            "weights": str(self.weights),
            "kind": self.kind,
            "base": self.base,
            "base_path": self.base_path,
            "prompt_format": str(self.prompt_format_path) if self.prompt_format_path else None,
            "manifest": str(self.manifest_path) if self.manifest_path else None,
        }


@dataclass
class LoadedModel:
    """An fp32 transformers model (adapters merged), its tokenizer and its prompt format."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    prompt_format: dict[str, Any] | None
    source: ModelSource
    tied: bool
    seconds: float = 0.0


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists() or (d / "tokenizer.model").exists()


def locate(model_dir: str | Path, base: str | Path | None = None) -> ModelSource:
    """Find the weights, tokenizer, prompt format and manifest of `model_dir` (no loading)."""
    given = Path(model_dir).expanduser()
    if not given.exists():
        partial = partial_dir(given)
        if partial.exists():
            raise ConfigError(
                f"{given} does not exist, but {partial} does: that training run did not finish",
                hint="resume it (rerun the same `alpacakit train` command), then export",
            )
        raise DataError(f"{given}: no such folder", hint=_MODEL_FOLDER_HELP)
    if given.is_file():
        if given.suffix == ".gguf":
            raise ConfigError(f"{given} is already a GGUF file", hint="pass the model folder it came from")
        raise ConfigError(f"{given} is a file, not a model folder", hint=_MODEL_FOLDER_HELP)

    weights = given
    if not (given / "config.json").exists() and not (given / "adapter_config.json").exists():
        if (given / "merged" / "config.json").exists():
            weights = given / "merged"
        elif (given / "adapter" / "adapter_config.json").exists():
            weights = given / "adapter"
        else:
            found = ", ".join(sorted(p.name for p in given.iterdir())[:8]) or "nothing"
            raise ConfigError(
                f"{given} is not a model folder: it has no config.json (found: {found})", hint=_MODEL_FOLDER_HELP
            )

    manifest = _first_existing(weights / "manifest.json", given / "manifest.json")
    if manifest is not None:
        _refuse_incomplete(manifest)
    prompt_format = _first_existing(
        weights / "prompt_format.json", given / "prompt_format.json", weights.parent / "prompt_format.json"
    )

    if (weights / "adapter_config.json").exists() and not (weights / "config.json").exists():
        base_ref = str(base) if base is not None else (_manifest_base(manifest) or _adapter_base(weights))
        tok_dir = weights if _has_tokenizer(weights) else (given if _has_tokenizer(given) else None)
        return ModelSource(
            given,
            weights,
            "adapter",
            base=base_ref,
            tokenizer_dir=tok_dir,
            prompt_format_path=prompt_format,
            manifest_path=manifest,
        )

    if not list(weights.glob("*.safetensors")) and not list(weights.glob("pytorch_model*.bin")):
        raise ConfigError(f"{weights} has config.json but no weights (*.safetensors)", hint=_MODEL_FOLDER_HELP)
    tok_dir = weights if _has_tokenizer(weights) else (given if _has_tokenizer(given) else None)
    if tok_dir is None:
        raise ConfigError(
            f"{weights} has no tokenizer files (tokenizer.json / tokenizer_config.json)",
            hint="save the tokenizer next to the model: tokenizer.save_pretrained(folder)",
        )
    return ModelSource(
        given, weights, "hf", tokenizer_dir=tok_dir, prompt_format_path=prompt_format, manifest_path=manifest
    )


def _refuse_incomplete(manifest: Path) -> None:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{manifest}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        return
    status = str(data.get("status", "")).lower()
    if data.get("complete") is False or status in ("running", "incomplete", "failed", "interrupted"):
        raise ConfigError(
            f"{manifest} says the model is not finished (status: {status or 'complete=false'})",
            hint="finish or resume training first (rerun the same `alpacakit train` command)",
        )


def _manifest_base(manifest: Path | None) -> str | None:
    """The base an `alpacakit train` manifest records: its local path if still there, else its reference."""
    if manifest is None:
        return None
    data = json.loads(manifest.read_text(encoding="utf-8"))
    base = data.get("base") if isinstance(data, dict) else None
    if not isinstance(base, dict):
        return None
    if base.get("path") and Path(base["path"]).exists():
        return str(base["path"])
    return base.get("ref") or base.get("path")


def _adapter_base(adapter: Path) -> str:
    cfg_path = adapter / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_path}:{e.lineno}: not valid JSON: {e.msg}") from None
    ref = cfg.get("base_model_name_or_path")
    if not ref:
        raise ConfigError(
            f"{cfg_path} does not name its base model (base_model_name_or_path)",
            hint="pass the base model folder with --base PATH",
        )
    return str(ref)


def _resolve_base(ref: str, adapter: Path) -> Path:
    """The HF folder of an adapter's base, or a ConfigError.

    A folder is used as is; a .gguf file or an embedded model name goes through the training
    stage's resolver, which dequantises it once into the shared cache (the same folder the
    adapter was trained on).
    """
    for cand in (Path(ref).expanduser(), adapter / ref):
        if cand.is_dir() and (cand / "config.json").exists():
            return cand
    from alpacakit.models import is_embedded

    if is_embedded(ref) or ref.endswith(".gguf") or Path(ref).expanduser().is_file():
        from alpacakit.train.base_model import resolve_base

        return Path(resolve_base(ref).path)
    raise ConfigError(
        f"the adapter in {adapter} was trained on {ref!r}, which is not a local model folder here",
        hint="pass the base model folder (or .gguf file, or embedded model name) with --base; "
        "no model hub is used at export time",
    )


def _require(*modules: str) -> None:
    """A clear error naming the extra to install, instead of an ImportError deep in the export."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"GGUF export needs {', '.join(missing)}, which is not installed",
            hint='pip install "alpacakit[train]"  (torch, transformers, peft, gguf)',
        )


def load_model(model_dir: str | Path, base: str | Path | None = None, progress: Progress | None = None) -> LoadedModel:
    """Load `model_dir` in fp32 with transformers, merging a LoRA adapter into its base."""
    src = locate(model_dir, base)
    _require("torch", "transformers", "gguf", *(["peft"] if src.kind == "adapter" else []))
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tok_dir = src.tokenizer_dir
    if src.kind == "adapter":
        base_path = _resolve_base(src.base or "", src.weights)
        say(f"loading base model {base_path}")
        base_model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        tok_dir = tok_dir or base_path
        from alpacakit.peft_quiet import load_adapter

        say(f"merging LoRA adapter {src.weights}")
        model = load_adapter(base_model, src.weights).merge_and_unload()
        src.base_path = str(base_path)
    else:
        say(f"loading {src.weights}")
        model = AutoModelForCausalLM.from_pretrained(src.weights, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    prompt_format = None
    if src.prompt_format_path is not None:
        try:
            prompt_format = json.loads(src.prompt_format_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{src.prompt_format_path}:{e.lineno}: not valid JSON: {e.msg}") from None
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    cfg = model.config.to_dict()
    return LoadedModel(model, tokenizer, cfg, prompt_format, src, tied, time.perf_counter() - t0)


def _quiet_transformers() -> None:
    """No per-tensor progress bars from transformers in the middle of our own progress lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def tokenizer_chat_template(tokenizer: Any) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    return tmpl or None


# --------------------------------------------------------------------------- writing


@dataclass
class ExportResult:
    """What `export_gguf` wrote, as recorded in the `<file>.json` sidecar."""

    path: Path
    sidecar: Path
    quant: str
    arch: str
    sha256: str
    size_bytes: int
    n_tensors: int
    seconds: float
    chat_template_source: str
    verification: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    model_card: Path | None = None


def _tensor_plan(data: Any, quant: str) -> tuple[Any, Any]:
    """(array to write, raw ggml type or None) for one float32 tensor under a quantization."""
    import gguf
    import numpy as np

    if data.ndim < 2 or quant == "f32":
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), None


def _write_gguf(
    loaded: LoadedModel,
    target: Path,
    quant: str,
    *,
    name: str,
    tokenizer_pre: str | None,
    say: Progress,
    keep: Any = None,
) -> tuple[int, str, list[str]]:
    """Write `loaded` as a GGUF at `target` (f32/f16/q8_0). Returns (tensors, template source, notes).

    `keep` (a `gguf_delta.BaseGGUF`): tensors whose values equal the base's are copied from it as
    stored, the others are written as `quant`."""
    import gguf

    from alpacakit.export.gguf_arch import plan_for
    from alpacakit.export.gguf_template import chat_template_for
    from alpacakit.export.gguf_vocab import build_vocab

    plan = plan_for(loaded.config, tied=loaded.tied)
    n_rows = int(loaded.model.get_input_embeddings().weight.shape[0])
    vocab = build_vocab(loaded.tokenizer, n_rows, pre_override=tokenizer_pre)
    template, template_source = chat_template_for(
        loaded.prompt_format, tokenizer_chat_template(loaded.tokenizer), add_bos=vocab.add_bos
    )
    notes = list(vocab.notes)
    if vocab.padded:
        notes.append(f"{vocab.padded} embedding rows have no token; written as unused [PADn] tokens")

    writer = gguf.GGUFWriter(target, plan.arch)
    writer.add_name(name)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant]
    writer.add_file_type(keep.file_type if keep is not None and keep.file_type is not None else file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    plan.write_hparams(writer)
    vocab.write(writer)
    if template:
        writer.add_chat_template(template)
    if loaded.prompt_format is not None:
        writer.add_string("alpacakit.prompt_format", json.dumps(loaded.prompt_format, ensure_ascii=False))

    say(f"converting tensors ({plan.arch}, {quant})")
    n = 0
    for gname, data in plan.tensors(loaded.model.state_dict()):
        stored = keep.stored(gname, data) if keep is not None else None
        if stored is not None:
            writer.add_tensor(gname, stored.data, raw_dtype=stored.tensor_type)
            keep.copied.append(gname)
            n += 1
            continue
        if keep is not None:
            keep.changed.append(gname)
        arr, raw = _tensor_plan(data, quant)
        if raw is None:
            writer.add_tensor(gname, arr)
        else:
            writer.add_tensor(gname, arr, raw_dtype=raw)
        n += 1
    say(f"writing {n} tensors")
    if keep is not None:
        notes.append(
            f"{len(keep.copied)} tensors copied as stored from the base {keep.path.name} (unchanged by "
            f"fine-tuning); {len(keep.changed)} changed ones written {quant}"
        )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
    return n, template_source, notes


def _quantize_q4_k_m(src: Path, dst: Path, threads: int) -> None:
    """llama.cpp's own k-quant mixture (Q4_K_M) from an f16 GGUF."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(
            "q4_k_m needs llama-cpp-python (llama.cpp's quantizer)",
            hint='pip install "alpacakit[llama]", or export f16 / q8_0, which need only gguf',
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPE_Q4_K_M
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ExportError(
            f"llama.cpp's quantizer failed on {src} (return code {rc})",
            hint="export f16 or q8_0 instead, and report the model type",
        )


def _tmp_path(target: Path, tag: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{tag}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def export_gguf(
    model_dir: str | Path,
    output: str | Path,
    quant: str = "q8_0",
    *,
    base: str | Path | None = None,
    tokenizer_pre: str | None = None,
    verify: bool = False,
    prompts: Sequence[str] | None = None,
    threads: int | None = None,
    name: str | None = None,
    min_agreement: float | None = None,
    progress: Progress | None = None,
    converter: str = "auto",
) -> ExportResult:
    """Convert the model in `model_dir` to a GGUF at `output` and write `<output>.json` beside it.

    `converter`: `alpacakit` (llama, qwen2, gemma3; the only one that writes `delta-*`),
    `llama.cpp` (llama.cpp's own convert_hf_to_gguf.py, version-matched: every architecture it
    knows; see `llama_cpp_convert`) or `auto` (alpacakit's where it can, else llama.cpp's).

    `quant`: f32, f16, q8_0, q4_k_m, `delta-f16` / `delta-q8_0` (the base GGUF's own tensors
    where the fine-tune left them unchanged, f16 / q8_0 where it changed them: see `gguf_delta`)
    or `auto` (delta-f16 for a model fine-tuned from a GGUF on this machine, else q8_0). `base`: the base model of an adapter folder when its
    adapter_config.json names one that is not on this machine. `tokenizer_pre`: the llama.cpp
    pre-tokenizer name, when the tokenizer is not one alpacakit recognises. `verify`: compare the
    file with the Hugging Face model (see `verify_gguf`) and record the figures. `min_agreement`:
    with `verify`, raise an `ExportError` (after writing the file and its sidecar, so the figures
    can be read) when top-1 or next-token agreement is below it.
    """
    from alpacakit.export.gguf_delta import BaseGGUF, plan_quant

    quant = quant.lower()
    if quant not in QUANTS:
        raise ConfigError(f"unknown quantization {quant!r}", hint=f"use one of {', '.join(QUANTS)}")
    if converter not in CONVERTERS:
        raise ConfigError(f"unknown converter {converter!r}", hint=f"use one of {', '.join(CONVERTERS)}")
    requested_auto = quant == "auto"
    quant, base_file = plan_quant(quant, model_dir, base)  # the base is looked up once
    output = Path(output).expanduser()
    if output.is_dir():
        raise ConfigError(f"{output} is a folder", hint="pass the output file name, e.g. -o model-q8_0.gguf")
    say = progress or (lambda _m: None)
    threads = threads or _default_threads()
    t0 = time.perf_counter()
    loaded = load_model(model_dir, base, progress=say)
    output.parent.mkdir(parents=True, exist_ok=True)
    name = name or _model_name(loaded.source)
    from alpacakit.export.gguf_arch import SUPPORTED_ARCHS

    by_llama_cpp = converter == "llama.cpp" or (
        converter == "auto" and loaded.config.get("model_type") not in SUPPORTED_ARCHS
    )
    pre_notes: list[str] = []
    if by_llama_cpp and quant.startswith("delta-"):
        pre_notes.append(
            f"{quant}: only alpacakit's converter keeps a base GGUF's tensors; written "
            f"{quant.removeprefix('delta-')} by llama.cpp's"
        )
        quant, base_file = quant.removeprefix("delta-"), None
    keep = None
    if base_file is not None:
        say(f"reading the base's tensors from {base_file}")
        keep = BaseGGUF.open(base_file)
    write_as = "f16" if quant == "q4_k_m" else quant.removeprefix("delta-")

    tmp_files: list[Path] = []
    try:
        first = _tmp_path(output, write_as)
        tmp_files.append(first)
        if by_llama_cpp:
            from alpacakit.export.llama_cpp_convert import write_with_llama_cpp

            n, template_source, notes = write_with_llama_cpp(
                loaded, first, write_as, name=name, tokenizer_pre=tokenizer_pre, say=say
            )
        else:
            n, template_source, notes = _write_gguf(
                loaded, first, write_as, name=name, tokenizer_pre=tokenizer_pre, say=say, keep=keep
            )
        notes = pre_notes + notes
        final_tmp = first
        if quant == "q4_k_m":
            say("quantizing to q4_k_m with llama.cpp")
            final_tmp = _tmp_path(output, "q4_k_m")
            tmp_files.append(final_tmp)
            _quantize_q4_k_m(first, final_tmp, threads)
        os.replace(final_tmp, output)
        tmp_files.remove(final_tmp)
    finally:
        for p in tmp_files:
            p.unlink(missing_ok=True)

    from alpacakit.io import sha256_file

    result = ExportResult(
        path=output,
        sidecar=sidecar_path(output),
        quant=quant,
        arch=loaded.config.get("model_type", "?"),
        sha256=sha256_file(output),
        size_bytes=output.stat().st_size,
        n_tensors=n,
        seconds=0.0,
        chat_template_source=template_source,
        notes=notes,
    )
    if verify:
        say("verifying against the Hugging Face model")
        result.verification = verify_gguf(model_dir, output, prompts, base=base, threads=threads, loaded=loaded)
    result.seconds = round(time.perf_counter() - t0, 2)
    sidecar = _write_sidecar(result, loaded)
    result.model_card = _write_export_card(result, sidecar, loaded)
    if requested_auto and verify and quant not in ("f16", "f32"):
        try:
            check_agreement(result, min_agreement or AGREEMENT_THRESHOLD)
        except ExportError as e:
            # auto means "the most compact file that answers like the trained model": this one
            # did not, so the same output becomes f16 (twice the size; agreement ~100%).
            say(f"{e.message}; writing f16 instead")
            v = result.verification or {}
            fallback = export_gguf(
                model_dir,
                output,
                "f16",
                base=base,
                tokenizer_pre=tokenizer_pre,
                verify=True,
                prompts=prompts,
                threads=threads,
                name=name,
                min_agreement=min_agreement,
                progress=progress,
                converter=converter,
            )
            fallback.notes.insert(
                0,
                f"auto: {quant} agreed {v.get('top1_agreement', 0):.1%} top-1 / "
                f"{v.get('next_token_agreement', 0):.1%} next token, below "
                f"{min_agreement or AGREEMENT_THRESHOLD:.0%}: written f16 instead",
            )
            return fallback
    if min_agreement is not None and result.verification is not None:
        check_agreement(result, min_agreement)
    return result


def check_agreement(result: ExportResult, minimum: float = AGREEMENT_THRESHOLD) -> None:
    """An `ExportError` naming the figures when the file does not reproduce the trained model."""
    v = result.verification or {}
    low = {k: v[k] for k in ("top1_agreement", "next_token_agreement") if v.get(k) is not None and v[k] < minimum}
    if low:
        figures = ", ".join(f"{k.replace('_', ' ')} {x:.1%}" for k, x in low.items())
        raise ExportError(
            f"{result.path} ({result.quant}) does not reproduce the trained model: {figures}, below {minimum:.0%} "
            f"(figures in {result.sidecar})",
            hint="export with --quant auto (the base's own tensors plus f16 where training changed them), or "
            "--quant f16; q4_k_m re-quantises a small fine-tuning delta away",
        )


def _write_export_card(result: ExportResult, mine: dict[str, Any], loaded: LoadedModel) -> Path:
    """MODEL_CARD.md in the export folder, covering every GGUF there made from the same model
    (their sidecars), so several quantizations share one card that lists them all."""
    from alpacakit.cards import write_model_card

    folder = result.path.parent
    exports = [mine]
    for side in sorted(folder.glob("*.gguf.json")):
        if side == result.sidecar:
            continue
        try:
            other = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            other.get("kind") == mine["kind"]
            and other.get("source") == mine["source"]
            and (folder / str(other.get("file", ""))).is_file()
        ):
            exports.append(other)
    src = loaded.source.manifest_path.parent if loaded.source.manifest_path is not None else loaded.source.given
    return write_model_card(src, folder / "MODEL_CARD.md", export=sorted(exports, key=lambda e: e.get("file", "")))


def _model_name(src: ModelSource) -> str:
    if src.manifest_path is not None:
        try:
            data = json.loads(src.manifest_path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                return data["name"]
        except (OSError, json.JSONDecodeError):
            pass
    from alpacakit.rundir import model_label

    return model_label(src.given.resolve())


def sidecar_path(gguf_path: str | Path) -> Path:
    """`<file>.json` next to the GGUF (e.g. `x-q8_0.gguf.json`)."""
    p = Path(gguf_path)
    return p.with_name(p.name + ".json")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("alpacakit", "gguf", "llama-cpp-python", "transformers", "torch", "peft"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _write_sidecar(result: ExportResult, loaded: LoadedModel) -> dict[str, Any]:
    from alpacakit.io import atomic_write_json, sha256_file
    from alpacakit.manifest import validated

    source = loaded.source.describe()
    if loaded.source.manifest_path is not None:
        source["manifest_sha256"] = sha256_file(loaded.source.manifest_path)
    sidecar = {
        "kind": "alpacakit.export.gguf",
        "file": result.path.name,
        "sha256": result.sha256,
        "size_bytes": result.size_bytes,
        "quant": result.quant,
        "arch": result.arch,
        "tensors": result.n_tensors,
        "source": source,
        "prompt_format": (loaded.prompt_format or {}).get("name"),
        "chat_template": result.chat_template_source,
        "verification": result.verification,
        "notes": result.notes,
        "seconds": result.seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
    }
    atomic_write_json(result.sidecar, validated(sidecar))
    return sidecar


# --------------------------------------------------------------------------- verification


def default_prompts() -> list[str]:
    """The fixed verification instructions (`gguf_data/verify_prompts.txt`, one per line)."""
    text = resources.files("alpacakit.export").joinpath("gguf_data", "verify_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _prompt_texts(
    prompts: Sequence[str], prompt_format: dict[str, Any] | None, tokenizer: Any
) -> tuple[list[str], bool]:
    """The texts the model actually sees (prompts in its trained format) and whether to add BOS/EOS."""
    if not prompt_format:
        return list(prompts), True
    from alpacakit.prompting import PromptFormat

    fmt = PromptFormat.from_dict(prompt_format, source="prompt_format.json")
    if fmt.kind == "chat":
        fmt = fmt.bind(tokenizer)
    return [fmt.build(p, "") for p in prompts], fmt.add_special_tokens


def verify_gguf(
    model_dir: str | Path,
    gguf_path: str | Path,
    prompts: Sequence[str] | None = None,
    *,
    base: str | Path | None = None,
    threads: int | None = None,
    loaded: LoadedModel | None = None,
) -> dict[str, Any]:
    """Compare a GGUF in llama.cpp with the Hugging Face model it was exported from.

    Each prompt (in the model's prompt format, when it has one) is tokenized by the HF
    tokenizer; both models then see those same ids, and the argmax of the logits is compared
    at every position (`top1_agreement`) and at the last one (`next_token_agreement`, the
    token a greedy answer would start with). `decisive_agreement` is the agreement where the HF
    model's top token leads the runner-up by at least 0.5 logits: quantization flips near-ties,
    a broken export also flips clear choices. `tokenizer_agreement` is the share of prompts
    that llama.cpp's own tokenizer splits into exactly the same ids.
    """
    import numpy as np
    import torch

    try:
        import llama_cpp
    except ImportError:
        raise ExportError("verification needs llama-cpp-python", hint='pip install "alpacakit[llama]"') from None
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise DataError(f"{gguf_path}: no such file")
    loaded = loaded or load_model(model_dir, base)
    prompts = list(prompts) if prompts else default_prompts()
    texts, add_special = _prompt_texts(prompts, loaded.prompt_format, loaded.tokenizer)
    tok = loaded.tokenizer
    ids_list = [list(tok(t, add_special_tokens=add_special)["input_ids"])[:_MAX_VERIFY_TOKENS] for t in texts]
    longest = max(len(i) for i in ids_list)

    # The KV cache stays f32 (llama.cpp's runtime default is f16): the figure then measures the
    # file (weights, tokenizer, hyperparameters), not a runtime setting the user can change.
    from alpacakit.models.backends.llama_log import quiet_llama_logs

    quiet_llama_logs(llama_cpp)
    llm = llama_cpp.Llama(
        model_path=str(gguf_path),
        n_ctx=max(64, longest + 8),
        n_batch=max(64, longest + 8),
        logits_all=True,
        verbose=False,
        n_threads=threads or _default_threads(),
        seed=0,
        type_k=_GGML_TYPE_F32,
        type_v=_GGML_TYPE_F32,
    )
    agree = total = last_agree = tok_same = decisive = decisive_agree = 0
    max_diffs: list[float] = []
    mismatched_prompts: list[dict[str, Any]] = []
    try:
        for prompt, text, ids in zip(prompts, texts, ids_list):
            with torch.no_grad():
                hf = loaded.model(torch.tensor([ids])).logits[0].float().numpy()
            llm.reset()
            llm.eval(ids)
            ll = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            hf_top, ll_top = hf.argmax(-1), ll[:, : hf.shape[1]].argmax(-1)
            same = hf_top == ll_top
            top2 = np.partition(hf, -2, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) >= _DECISIVE_GAP
            decisive += int(clear.sum())
            decisive_agree += int((same & clear).sum())
            agree += int(same.sum())
            total += len(ids)
            last_agree += int(same[-1])
            max_diffs.append(float(np.abs(hf - ll[:, : hf.shape[1]]).max()))
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)
            if list(ll_ids)[: len(ids)] == ids and len(ll_ids) >= len(ids):
                tok_same += 1
            elif len(mismatched_prompts) < 3:
                mismatched_prompts.append({"prompt": prompt, "hf": ids[:40], "llama_cpp": list(ll_ids)[:40]})
    finally:
        llm.close()
    return {
        "prompts": len(prompts),
        "positions": total,
        "top1_agreement": round(agree / total, 4),
        "next_token_agreement": round(last_agree / len(prompts), 4),
        "decisive_positions": decisive,
        "decisive_agreement": round(decisive_agree / decisive, 4) if decisive else None,
        "tokenizer_agreement": round(tok_same / len(prompts), 4),
        "max_logit_diff_median": round(float(np.median(max_diffs)), 4),
        "tokenizer_mismatches": mismatched_prompts,
        "threshold": AGREEMENT_THRESHOLD,
    }
