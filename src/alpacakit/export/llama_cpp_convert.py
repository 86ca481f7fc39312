"""llama.cpp's own converters, version-matched to the llama.cpp that alpacakit runs.

alpacakit's converter (`gguf.py` + `gguf_arch.py`) writes llama, qwen2 and gemma3, and adds
what only it can: `delta-*` files that keep a GGUF base's own tensors. Every other architecture
llama.cpp knows (Mistral, Llama 3.x, Qwen3, Phi, ...) goes through llama.cpp's
`convert_hf_to_gguf.py`, and a LoRA adapter can leave as a GGUF LoRA through
`convert_lora_to_gguf.py`. Both scripts ship in the llama-cpp-python source release whose wheel
we run (`vendor/llama.cpp/`), so the converter always matches the runtime that will load its
output.

Where the scripts come from, in order:
1. `$ALPACAKIT_LLAMA_CPP` - a llama.cpp checkout of your own;
2. `<cache>/llama.cpp-converters/<version>/` - extracted once from that source release
   (`fetch_converters`: the package index's sdist, sha256 checked; about 70 MB downloaded, 2 MB kept).

The scripts run in a subprocess through `llama_cpp_runner`, which adds two things without
touching their code: a pre-tokenizer name for tokenizers llama.cpp does not recognise (the same
one alpacakit's converter would write), and extra metadata (the model's trained prompt format).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from alpacakit.errors import AlpacakitError, ConfigError

_KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
DEFAULT_INDEX = "https://pypi.org/simple"


class ConversionError(AlpacakitError):
    """llama.cpp's converter failed; the message carries the end of its output."""


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ConfigError(
            "llama.cpp's converters are matched to llama-cpp-python, which is not installed",
            hint='pip install "alpacakit[llama]"',
        ) from None


def _cache_root() -> Path:
    from alpacakit.models import cache_dir

    return cache_dir().parent / "llama.cpp-converters"


def converters_dir(*, fetch: bool = True) -> Path:
    """The folder holding convert_hf_to_gguf.py (and conversion/, gguf-py/) for this machine."""
    own = os.environ.get("ALPACAKIT_LLAMA_CPP")
    if own:
        d = Path(own).expanduser()
        if not (d / "convert_hf_to_gguf.py").is_file():
            raise ConfigError(
                f"$ALPACAKIT_LLAMA_CPP={d}: no convert_hf_to_gguf.py there",
                hint="point it at a llama.cpp checkout, or unset it to use the version-matched copy",
            )
        return d
    version = llama_cpp_version()
    d = _cache_root() / version
    if (d / "convert_hf_to_gguf.py").is_file():
        return d
    if not fetch:
        raise ConfigError(
            f"llama.cpp's converters for llama-cpp-python {version} are not in {d}",
            hint="run `alpacakit export converters` once (it downloads them from the package index)",
        )
    return fetch_converters(version, d)


def _sdist_url(version: str, index: str) -> tuple[str, str | None]:
    import httpx

    page = f"{index.rstrip('/')}/llama-cpp-python/"
    try:
        r = httpx.get(page, timeout=60, follow_redirects=True)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise ConfigError(
            f"cannot reach the package index at {page}: {e}",
            hint="set PIP_INDEX_URL to an index you can reach, or $ALPACAKIT_LLAMA_CPP to a llama.cpp checkout",
        ) from None
    name = f"llama_cpp_python-{version}.tar.gz"
    for href in re.findall(r'href="([^"]+)"', r.text):
        if href.split("#")[0].endswith("/" + name) or href.split("#")[0] == name:
            url = httpx.URL(page).join(href.replace("&amp;", "&"))
            digest = href.split("#sha256=")[1] if "#sha256=" in href else None
            return str(url.copy_with(fragment=None)), digest
    raise ConfigError(f"{page} has no {name}", hint="set $ALPACAKIT_LLAMA_CPP to a llama.cpp checkout")


def fetch_converters(version: str, dest: Path, *, index: str | None = None) -> Path:
    """Download llama-cpp-python's sdist for `version` and keep its converter scripts in `dest`."""
    import httpx

    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    url, digest = _sdist_url(version, index)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "sdist.tar.gz"
        h = hashlib.sha256()
        with httpx.stream("GET", url, timeout=300, follow_redirects=True) as r, archive.open("wb") as f:
            r.raise_for_status()
            for chunk in r.iter_bytes(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if digest and h.hexdigest() != digest:
            raise ConfigError(
                f"{url}: sha256 {h.hexdigest()} is not the index's {digest}",
                hint="download again; if it persists, the index or a proxy alters the file",
            )
        staged = Path(tmp) / "converters"
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and any(
                    m.name[len(prefix) :] == k or (k.endswith("/") and m.name[len(prefix) :].startswith(k))
                    for k in _KEEP
                )
                and (m.isfile() or m.isdir())
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(staged, members=members, filter="data")
        if not (staged / "convert_hf_to_gguf.py").is_file():
            raise ConfigError(f"{url} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        (staged / "SOURCE.json").write_text(json.dumps({"url": url, "sha256": h.hexdigest(), "version": version}))
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)
    return dest


def _run(script: str, args: list[str], *, tokenizer_pre: str | None, metadata: dict[str, str] | None) -> None:
    d = converters_dir()
    cmd = [sys.executable, "-m", "alpacakit.export.llama_cpp_runner", str(d), script]
    if tokenizer_pre:
        cmd += ["--alpacakit-pre", tokenizer_pre]
    for key, value in (metadata or {}).items():
        cmd += ["--alpacakit-kv", f"{key}={value}"]
    r = subprocess.run([*cmd, "--", *args], capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-6:])
        raise ConversionError(
            f"llama.cpp's {script} failed:\n{tail}",
            hint="a model type llama.cpp cannot convert is listed by `alpacakit export converters --list`",
        )


def convert_hf(
    folder: str | Path,
    out: str | Path,
    outtype: str = "f16",
    *,
    tokenizer_pre: str | None = None,
    metadata: dict[str, str] | None = None,
    name: str | None = None,
) -> None:
    """A Hugging Face model folder -> GGUF (`outtype`: f32, f16, bf16 or q8_0) with llama.cpp's converter."""
    args = [str(folder), "--outfile", str(out), "--outtype", outtype]
    if name:
        args += ["--model-name", name]
    _run("convert_hf_to_gguf.py", args, tokenizer_pre=tokenizer_pre, metadata=metadata)


def convert_lora(adapter: str | Path, base: str | Path, out: str | Path, outtype: str = "f16") -> None:
    """A PEFT LoRA adapter folder -> GGUF LoRA for llama.cpp (`--lora` in llama.cpp, `lora_path` in
    llama-cpp-python), read against its base model folder."""
    _run(
        "convert_lora_to_gguf.py",
        [str(adapter), "--base", str(base), "--outfile", str(out), "--outtype", outtype],
        tokenizer_pre=None,
        metadata=None,
    )


def supported_architectures() -> list[str]:
    """The Hugging Face architectures (e.g. MistralForCausalLM) this llama.cpp version converts."""
    d = converters_dir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.export.llama_cpp_runner",
            str(d),
            "convert_hf_to_gguf.py",
            "--",
            "--print-supported-models",
            ".",
        ],
        capture_output=True,
        text=True,
    )
    names = re.findall(
        r"^\s*-?\s*([A-Z][A-Za-z0-9_]+(?:ForCausalLM|LMHeadModel|Model|ForConditionalGeneration))\s*$",
        r.stdout + r.stderr,
        flags=re.M,
    )
    return sorted(set(names))


def write_with_llama_cpp(
    loaded: Any, target: Path, quant: str, *, name: str, tokenizer_pre: str | None, say: Any
) -> tuple[int, str, list[str]]:
    """`export_gguf`'s writer for architectures alpacakit's converter does not know: the loaded
    (adapter-merged) model is saved as a plain Hugging Face folder, with the chat template of
    its trained prompt format, then converted by llama.cpp. Returns (tensors, template source, notes)."""
    import gguf
    import torch

    from alpacakit.export.gguf import tokenizer_chat_template
    from alpacakit.export.gguf_template import chat_template_for
    from alpacakit.export.gguf_vocab import _special_behaviour, detect_pre

    add_bos, _ = _special_behaviour(loaded.tokenizer)
    template, source = chat_template_for(
        loaded.prompt_format, tokenizer_chat_template(loaded.tokenizer), add_bos=add_bos
    )
    pre = tokenizer_pre
    if pre is None:
        try:
            pre = detect_pre(json.loads(loaded.tokenizer.backend_tokenizer.to_str()))
        except (ConfigError, AttributeError):
            pre = None  # llama.cpp may still know it (by its own hash), or say it does not
    metadata = {}
    if loaded.prompt_format is not None:
        metadata["alpacakit.prompt_format"] = json.dumps(loaded.prompt_format, ensure_ascii=False)
    dtype = torch.float32 if quant == "f32" else torch.float16
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.hf.") as tmp:
        say(f"saving the model for llama.cpp's converter ({dtype})")
        state = {k: v.detach().to(dtype) for k, v in loaded.model.state_dict().items()}
        loaded.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tok = loaded.tokenizer
        saved_template = getattr(tok, "chat_template", None)
        try:
            if template:
                tok.chat_template = template
            tok.save_pretrained(tmp)
        finally:
            tok.chat_template = saved_template
        cfg_path = Path(tmp) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["torch_dtype"] = cfg["dtype"] = "float32" if quant == "f32" else "float16"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        say(f"converting with llama.cpp's convert_hf_to_gguf.py ({loaded.config.get('model_type')}, {quant})")
        convert_hf(tmp, target, quant, tokenizer_pre=pre, metadata=metadata, name=name)
    n = len(gguf.GGUFReader(target).tensors)
    notes = [f"converted by llama.cpp's convert_hf_to_gguf.py (llama-cpp-python {llama_cpp_version()})"]
    return n, source, notes
