"""GGUF export: a trained model folder becomes a file llama.cpp runs, computing the same thing.

The proof is numerical: the exported file is loaded in llama-cpp-python and its top-1 next
token is compared with the Hugging Face model at every position of fixed prompts. Tiny random
models (built from a config in a second) check each architecture's transforms exactly in f32;
the real SmolLM2 (llama) and Gemma 3 270M (gemma3) check f16 / q8_0 against the >= 95% bar.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from alpacakit.errors import ConfigError  # noqa: E402
from alpacakit.export.gguf import export_gguf, sidecar_path, verify_gguf  # noqa: E402
from alpacakit.prompting import PromptFormat  # noqa: E402

ALPACA = Path(__file__).resolve().parents[1] / "src" / "alpacakit" / "templates" / "alpaca.json"
SHORT_PROMPTS = [
    "Name three colours of the rainbow.",
    "What is 12 + 30? Answer with digits: 42.",
    "Écris une phrase courte sur la mer.",
    "def add(a, b):\n    return a + b",
]


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_llama = pytest.mark.skipif(not _has_llama_cpp(), reason='llama-cpp-python is not installed ("alpacakit[llama]")')


# --------------------------------------------------------------------------- tiny models


def _tiny_model(arch: str, vocab: int, tok: Any) -> Any:
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.1,
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    if arch == "llama3rope":
        from transformers import LlamaConfig, LlamaForCausalLM

        rope = {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope))
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # query_pre_attn_scalar != head_dim and a 4-token window: both must be carried over exactly
        cfg = Gemma3TextConfig(
            **common,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=30.0,
        )
        model = Gemma3ForCausalLM(cfg)
        with torch.no_grad():  # norms start at 0 (= scale 1): make them matter
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.3)
        return model
    raise ValueError(arch)


def _make_tiny(path: Path, arch: str, prompt_format: bool = True) -> Path:
    from alpacakit.train.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    # qwen2: transformers loads the folder's tokenizer as a Qwen2Tokenizer (Qwen's pre-tokenizer
    # regex, one extra <|endoftext|> token), and the embedding is padded to 448 rows like Qwen's
    # own: the export must write [PADn] tokens for the rows no token uses.
    model = _tiny_model(arch, 448 if arch == "qwen2" else len(tok), tok)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if prompt_format:
        shutil.copy(ALPACA, path / "prompt_format.json")
    return path


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: _make_tiny(root / arch, arch) for arch in ("llama", "llama3rope", "qwen2", "gemma3")}


def _read(path: Path) -> dict[str, Any]:
    """Metadata of a GGUF as plain Python values."""
    reader = gguf.GGUFReader(path)
    out = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = fld.contents()
    out["_tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return out


# --------------------------------------------------------------------------- errors


def test_a_folder_without_config_json_says_what_a_model_folder_contains(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    proc = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "export", "gguf", str(tmp_path), "-o", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "no config.json" in err and "notes.txt" in err
    assert "tokenizer.json" in err and "adapter_config.json" in err
    assert not (tmp_path / "x.gguf").exists()


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from alpacakit.train.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(
        ConfigError
    ) as e:  # auto would hand it to llama.cpp's converter (tests/test_export_llama_cpp.py)
        export_gguf(tmp_path / "m", tmp_path / "x.gguf", "f16", converter="alpacakit")
    assert "'gpt2'" in e.value.message
    assert all(a in e.value.hint for a in ("llama", "qwen2", "gemma3", "--converter llama.cpp"))
    assert list(tmp_path.glob("*x.gguf*")) == []  # nothing half-written


def test_an_unfinished_training_run_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["llama"], model)
    (model / "manifest.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(ConfigError, match="not finished"):
        export_gguf(model, tmp_path / "x.gguf", "f16")


def test_an_unknown_pretokenizer_is_refused_with_a_way_out() -> None:
    from alpacakit.export.gguf_vocab import detect_pre

    odd = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "use_regex": False},
            ],
        }
    }
    with pytest.raises(ConfigError) as e:
        detect_pre(odd)
    assert "--tokenizer-pre" in e.value.hint and "qwen2" in e.value.hint
    assert detect_pre({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"


def test_unknown_quantization_lists_the_choices(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        export_gguf(tiny_dirs["llama"], tmp_path / "x.gguf", "q3_k")
    assert "q4_k_m" in e.value.hint


# --------------------------------------------------------------------------- chat template


@pytest.mark.parametrize("add_bos", [True, False])
def test_the_chat_template_renders_the_trained_alpaca_prompt(add_bos: bool) -> None:
    from alpacakit.export.gguf_template import template_format_to_jinja
    from alpacakit.prompting import _compile

    data = json.loads(ALPACA.read_text())
    tmpl = template_format_to_jinja(data, add_bos=add_bos)
    fmt = PromptFormat.from_dict(data)
    for instruction in ("Name three colours.", 'Use {braces}, {{ jinja }} and "quotes" \\ here.\nTwo lines.'):
        got = _compile(tmpl).render(
            messages=[{"role": "user", "content": instruction}],
            add_generation_prompt=True,
            bos_token="<s>",
            eos_token="</s>",
        )
        assert got == ("<s>" if add_bos else "") + fmt.build(instruction)


def test_a_format_with_escaped_braces_keeps_them_literal() -> None:
    from alpacakit.export.gguf_template import template_format_to_jinja
    from alpacakit.prompting import _compile

    data = {
        "name": "braces",
        "kind": "template",
        "prompt_input": "{{x}} {instruction} {input}",
        "prompt_no_input": "{{x}} Q: {instruction}\nA:",
        "response_split": "A:",
    }
    tmpl = template_format_to_jinja(data, add_bos=False)
    out = _compile(tmpl).render(messages=[{"role": "user", "content": "hi"}], bos_token="", eos_token="")
    assert out == PromptFormat.from_dict(data).build("hi") == "{x} Q: hi\nA:"


# --------------------------------------------------------------------------- the file itself


def test_export_writes_tokenizer_prompt_format_and_a_sidecar(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "tiny-q8_0.gguf"
    res = export_gguf(tiny_dirs["llama"], out, "q8_0")
    meta = _read(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tok_json = json.loads((tiny_dirs["llama"] / "tokenizer.json").read_text())
    assert len(meta["tokenizer.ggml.tokens"]) == len(tok_json["model"]["vocab"])
    assert meta["tokenizer.ggml.merges"][0] == " ".join(tok_json["model"]["merges"][0])
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is True
    assert json.loads(meta["alpacakit.prompt_format"]) == json.loads(ALPACA.read_text())
    assert "### Instruction:" in meta["tokenizer.chat_template"]
    assert meta["_tensors"]["blk.0.attn_q.weight"] == "Q8_0" and meta["_tensors"]["blk.0.attn_norm.weight"] == "F32"
    side = json.loads(sidecar_path(out).read_text())
    from alpacakit.io import sha256_file

    assert side["sha256"] == sha256_file(out) == res.sha256
    assert side["quant"] == "q8_0" and side["source"]["model_dir"] == str(tiny_dirs["llama"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["MODEL_CARD.md", "tiny-q8_0.gguf", "tiny-q8_0.gguf.json"]
    assert res.model_card == out.parent / "MODEL_CARD.md"
    # a second quantization in the same folder: one card lists both files
    export_gguf(tiny_dirs["llama"], out.with_name("tiny-f16.gguf"), "f16")
    card = (out.parent / "MODEL_CARD.md").read_text()
    assert "| export | tiny-f16.gguf (f16" in card and "| export | tiny-q8_0.gguf (q8_0" in card


def test_a_model_without_prompt_format_keeps_its_tokenizers_chat_template(tmp_path: Path) -> None:
    from alpacakit.train.tiny import make_tiny_base

    d = make_tiny_base(tmp_path / "m", arch="llama", chat_template=True)
    export_gguf(d, tmp_path / "x.gguf", "f16")
    meta = _read(tmp_path / "x.gguf")
    assert "alpacakit.prompt_format" not in meta
    assert meta["tokenizer.chat_template"] == json.loads((d / "tokenizer_config.json").read_text()).get(
        "chat_template", (d / "chat_template.jinja").read_text() if (d / "chat_template.jinja").exists() else None
    )


# --------------------------------------------------------------------------- llama.cpp agrees


@needs_llama
@pytest.mark.parametrize("arch", ["llama", "llama3rope", "qwen2", "gemma3"])
def test_f32_export_computes_what_the_hf_model_computes(arch: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / f"{arch}.gguf"
    export_gguf(tiny_dirs[arch], out, "f32")
    v = verify_gguf(tiny_dirs[arch], out, SHORT_PROMPTS)
    assert v["top1_agreement"] >= 0.99, v
    assert v["max_logit_diff_median"] < 1e-2, v
    assert v["tokenizer_agreement"] == 1.0, v


@needs_llama
def test_a_lora_adapter_is_merged_before_export(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_dirs["llama"]
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    # the layout `alpacakit train` writes: adapter/, tokenizer, prompt format, manifest naming the base
    model_dir = tmp_path / "run" / "model"
    peft_model.save_pretrained(model_dir / "adapter")
    for f in ("tokenizer.json", "tokenizer_config.json", "prompt_format.json"):
        shutil.copy(base / f, model_dir / f)
    (model_dir / "manifest.json").write_text(
        json.dumps({"complete": True, "base": {"ref": str(base), "path": str(base)}})
    )

    res = export_gguf(model_dir, tmp_path / "merged.gguf", "f32", verify=True, prompts=SHORT_PROMPTS)
    assert res.verification["top1_agreement"] >= 0.99
    assert json.loads(res.sidecar.read_text())["source"]["kind"] == "adapter"
    # exactly the adapted weights differ from an export of the base alone
    export_gguf(base, tmp_path / "base.gguf", "f32")
    base_tensors = {t.name: t.data for t in gguf.GGUFReader(tmp_path / "base.gguf").tensors}
    changed = {
        t.name for t in gguf.GGUFReader(tmp_path / "merged.gguf").tensors if (t.data != base_tensors[t.name]).any()
    }
    assert changed == {f"blk.{i}.attn_{w}.weight" for i in range(2) for w in ("q", "v")}


@needs_llama
def test_q4_k_m_is_made_by_llama_cpp_and_loads(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x-q4_k_m.gguf"
    res = export_gguf(tiny_dirs["qwen2"], out, "q4_k_m")
    meta = _read(out)
    assert meta["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert meta["tokenizer.chat_template"] and meta["alpacakit.prompt_format"]
    assert res.size_bytes < (tmp_path / "x-q4_k_m.gguf").stat().st_size * 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temporaries removed
    v = verify_gguf(tiny_dirs["qwen2"], out, SHORT_PROMPTS[:2])
    assert v["positions"] > 0 and v["tokenizer_agreement"] == 1.0


def test_a_qwen2_tokenizer_is_exported_with_qwen2_pretokenizer_and_padding(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    export_gguf(tiny_dirs["qwen2"], tmp_path / "q.gguf", "f16")
    meta = _read(tmp_path / "q.gguf")
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 448 and tokens[384] == "<|endoftext|>" and tokens[-1] == "[PAD447]"
    assert types[384] == 3 and set(types[385:]) == {5}  # control, then unused


@needs_llama
def test_create_chat_completion_uses_the_trained_prompt(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    out = tmp_path / "x.gguf"
    export_gguf(tiny_dirs["gemma3"], out, "f16")
    llm = Llama(model_path=str(out), n_ctx=256, verbose=False)
    try:
        tmpl = llm.metadata["tokenizer.chat_template"]
        messages = [{"role": "user", "content": "Name three colours."}]
        rendered = Jinja2ChatFormatter(tmpl, eos_token="</s>", bos_token="<s>")(messages=messages)
        assert rendered.prompt == "<s>" + PromptFormat.load("alpaca").build("Name three colours.")
        reply = llm.create_chat_completion(messages=messages, max_tokens=3, temperature=0.0)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["prompt_tokens"] == len(
            llm.tokenize(rendered.prompt.encode(), add_bos=False, special=True)
        )
    finally:
        llm.close()


@needs_llama
def test_chat_with_the_gguf_stops_at_the_trained_formats_stop_strings(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A small student often writes on into a new `### Instruction:`; the stop strings of its
    prompt format, carried in the GGUF, end the answer in chat and serve as in eval."""
    import asyncio

    from alpacakit.config import TeacherConfig
    from alpacakit.models.backends import make_backend

    assert PromptFormat.load("alpaca").stop == ["### Instruction:", "### Input:", "### Response:"]

    def answer(stop: list[str]) -> tuple[list[str], str]:
        folder = tmp_path / f"m{len(stop)}"
        shutil.copytree(tiny_dirs["gemma3"], folder)
        fmt = json.loads(ALPACA.read_text())
        (folder / "prompt_format.json").write_text(json.dumps({**fmt, "stop": stop}))
        out = export_gguf(folder, tmp_path / f"{folder.name}.gguf", "f16").path
        teacher = make_backend(TeacherConfig(model=str(out), temperature=0.0, max_tokens=24))
        try:
            reply = asyncio.run(teacher.chat([{"role": "user", "content": "Name three colours."}]))
            return teacher.format_stop, reply.text
        finally:
            teacher.close()

    no_stop, full = answer([])
    assert no_stop == [] and len(full.strip()) >= 6, full
    cut_at = next(
        i
        for i in range(2, len(full) - 2)
        if full[i : i + 3].strip() == full[i : i + 3] and full.find(full[i : i + 3]) == i
    )
    stops, cut = answer([full[cut_at : cut_at + 3]])
    assert stops == [full[cut_at : cut_at + 3]]
    assert cut == full[:cut_at]


@pytest.mark.slow
@needs_llama
def test_cli_exports_and_prints_the_agreement(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(SHORT_PROMPTS[:2]) + "\n")
    out = tmp_path / "cli.gguf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "export",
            "gguf",
            str(tiny_dirs["llama"]),
            "--quant",
            "f32",
            "-o",
            str(out),
            "--verify",
            "--prompts",
            str(prompts),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "top-1 agreement 100.0%" in proc.stdout or "top-1 agreement 9" in proc.stdout, proc.stdout
    assert json.loads(sidecar_path(out).read_text())["verification"]["prompts"] == 2


# --------------------------------------------------------------------------- real models


def _real_model_dir(name: str, tmp: Path) -> Path:
    """An HF folder of an embedded model (dequantised once into the shared cache), plus Alpaca's format."""
    from alpacakit.models import ModelError
    from alpacakit.train.base_model import resolve_base

    try:
        cached = Path(resolve_base(name).path)
    except ModelError as e:
        pytest.skip(f"{name} is not installed: {e.message}")
    d = tmp / name
    d.mkdir()
    for f in cached.iterdir():
        (d / f.name).symlink_to(f)
    shutil.copy(ALPACA, d / "prompt_format.json")
    return d


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _real_model_dir("smollm2-135m-instruct", tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _real_model_dir("gemma-3-270m", tmp_path_factory.mktemp("real"))


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_real_smollm2_agrees_with_transformers(quant: str, smollm_dir: Path, tmp_path: Path) -> None:
    res = export_gguf(smollm_dir, tmp_path / f"smollm2-{quant}.gguf", quant, verify=True)
    v = res.verification
    assert v["prompts"] == 20 and v["positions"] > 20 * 40
    assert v["top1_agreement"] >= 0.95, v
    assert v["decisive_agreement"] >= 0.99, v  # disagreements are near-ties, not wrong choices
    assert v["next_token_agreement"] >= 0.9, v
    assert v["tokenizer_agreement"] == 1.0, v


@needs_llama
@pytest.mark.slow
def test_real_gemma3_agrees_with_transformers(gemma_dir: Path, tmp_path: Path) -> None:
    from alpacakit.export.gguf import default_prompts

    # 6 of the 20 prompts (~260 positions): Gemma's 262K-token output layer makes each position costly
    res = export_gguf(gemma_dir, tmp_path / "gemma-q8_0.gguf", "q8_0", verify=True, prompts=default_prompts()[:6])
    meta = _read(res.path)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is False
    assert meta["gemma3.attention.sliding_window"] == 512
    v = res.verification
    assert v["top1_agreement"] >= 0.95, v
    assert v["decisive_agreement"] >= 0.99, v
    assert v["tokenizer_agreement"] == 1.0, v
