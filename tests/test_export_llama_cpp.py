"""GGUF export through llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py),
fetched once from the source release of the llama-cpp-python we run (no hub: the package index).

Tiny models built from configs, one per architecture: every file is loaded back in llama.cpp and
must agree with the Hugging Face model on greedy next tokens (the same check every export runs).
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
pytest.importorskip("llama_cpp")

from alpacakit.export.gguf import export_gguf  # noqa: E402
from alpacakit.train.tiny import make_tiny_base  # noqa: E402

ALPACA = Path(__file__).resolve().parents[1] / "src" / "alpacakit" / "templates" / "alpaca.json"
PROMPTS = [
    "Name three colours of the rainbow.",
    "What is 12 + 30? Answer with digits: 42.",
    "def add(a, b):\n    return a + b",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("archs")
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_tiny_base(root / arch, arch=arch, seed=1)
            shutil.copy(ALPACA, made[arch] / "prompt_format.json")
        return made[arch]

    return get


def _kv(path: Path, key: str) -> str | None:
    field = gguf.GGUFReader(path).fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_architectures_only_llama_cpp_converts_export_and_agree(tiny, tmp_path: Path, arch: str) -> None:
    out = tmp_path / f"{arch}.gguf"
    res = export_gguf(tiny(arch), out, "q8_0", verify=True, prompts=PROMPTS)  # converter auto -> llama.cpp
    v = res.verification
    assert v["top1_agreement"] >= 0.95 and v["next_token_agreement"] >= 0.95 and v["tokenizer_agreement"] == 1.0
    assert any("llama.cpp's convert_hf_to_gguf.py" in n for n in res.notes)
    assert json.loads(_kv(out, "alpacakit.prompt_format"))["name"] == "alpaca"  # the trained format travels along
    assert "### Instruction" in _kv(out, "tokenizer.chat_template")
    assert (
        _kv(out, "general.architecture") == {"mistral": "llama", "qwen3": "qwen3"}[arch]
    )  # llama.cpp runs Mistral as llama


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_converter_matches_ours_where_both_work(tiny, tmp_path: Path, arch: str) -> None:
    ours = export_gguf(tiny(arch), tmp_path / "ours.gguf", "f16", verify=True, prompts=PROMPTS, converter="alpacakit")
    theirs = export_gguf(
        tiny(arch), tmp_path / "theirs.gguf", "f16", verify=True, prompts=PROMPTS, converter="llama.cpp"
    )
    for r in (ours, theirs):
        assert r.verification["top1_agreement"] >= 0.99 and r.verification["tokenizer_agreement"] == 1.0


def test_auto_keeps_alpacakits_converter_for_gemma3(tiny, tmp_path: Path) -> None:
    """The tiny Gemma 3 (one sliding layer per global one, query_pre_attn_scalar 256 != head_dim 16)
    is where ours measurably adds something: llama.cpp's converter leaves both to the runtime's
    stock-Gemma defaults (benchmarks/export_converters.py: 24% top-1 agreement, ours 100%)."""
    res = export_gguf(tiny("gemma3"), tmp_path / "g.gguf", "f16", verify=True, prompts=PROMPTS)
    assert not any("llama.cpp's convert_hf_to_gguf.py" in n for n in res.notes)
    assert res.verification["top1_agreement"] >= 0.99


@pytest.mark.slow
def test_a_lora_adapter_leaves_as_a_gguf_lora_that_llama_cpp_applies(tiny, tmp_path: Path) -> None:
    import llama_cpp
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny("mistral")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    with torch.no_grad():  # a visible change, as training would make
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged = peft_model.merge_and_unload().eval()

    base_gguf = tmp_path / "base.gguf"
    export_gguf(base, base_gguf, "f32", verify=False)
    lora_gguf = tmp_path / "lora.gguf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "export",
            "gguf-lora",
            str(adapter),
            "--base",
            str(base),
            "-o",
            str(lora_gguf),
            "--outtype",
            "f32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-1500:]
    assert _kv(lora_gguf, "general.type") == "adapter"

    tok = AutoTokenizer.from_pretrained(base)
    ids = tok("Name three colours of the rainbow.")["input_ids"]
    with torch.no_grad():
        want = merged(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(torch.tensor([ids])).logits[0]
    llm = llama_cpp.Llama(
        model_path=str(base_gguf), lora_path=str(lora_gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2
    )
    llm.eval(ids)
    got = [int(max(range(len(row)), key=row.__getitem__)) for row in llm.scores[: len(ids)].tolist()]
    assert sum(a == b for a, b in zip(got, want)) / len(want) >= 0.9
    assert want != plain.argmax(-1).tolist()  # the adapter changes the answers; llama.cpp applied it


@pytest.mark.slow
def test_the_converters_list_names_what_llama_cpp_converts() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "export", "converters", "--list"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    for name in ("MistralForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM"):
        assert f"  {name}\n" in r.stdout


@pytest.mark.slow
def test_an_architecture_llama_cpp_cannot_convert_names_the_failure(tmp_path: Path) -> None:
    from alpacakit.export.llama_cpp_convert import ConversionError, convert_hf

    folder = make_tiny_base(tmp_path / "m", arch="llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError) as e:
        convert_hf(folder, tmp_path / "x.gguf")
    assert "NoSuchModelForCausalLM" in e.value.message and "--list" in (e.value.hint or "")
    assert not (tmp_path / "x.gguf").exists()
