"""One model layer: every reference kind is classified the same way for every verb, a missing
capability is one clear error naming the alternative, and a trained model folder can now be a
teacher (and judge) like any other model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpacakit.errors import AlpacakitError, ConfigError
from alpacakit.models.registry import BATCH, GPU, LOGLIK, classify, gpu_available, require


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from alpacakit.train.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("reg") / "chat", chat_template=True, seed=2)


def test_each_kind_is_recognised_without_loading_anything(
    chat_folder: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    assert classify("openai:gpt-4o-mini").kind == "endpoint"
    assert classify("llama3", base_url="http://127.0.0.1:11434/v1").kind == "endpoint"
    assert classify("smollm2-135m-instruct").kind == "gguf"
    assert classify(str(smollm2_gguf)).kind == "gguf"
    folder = tmp_path / "holds-a-gguf"
    folder.mkdir()
    (folder / "m.gguf").symlink_to(smollm2_gguf)
    assert classify(str(folder)).kind == "gguf"
    m = classify(str(chat_folder))
    assert m.kind == "hf" and m.can(LOGLIK) and m.can(BATCH)


@pytest.mark.parametrize(
    "ref, message, hint",
    [
        ("meta-llama/Llama-2-7b-hf", "looks like a model hub id", "huggingface-cli download"),
        ("no-such-model", "no-such-model", "smollm2-135m-instruct"),
    ],
)
def test_unknown_references_say_what_is_accepted(ref: str, message: str, hint: str) -> None:
    with pytest.raises(AlpacakitError) as e:
        classify(ref)
    assert message in e.value.message and hint in (e.value.hint or "") + e.value.message


def test_an_empty_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no model"):
        classify(str(tmp_path))


def test_a_missing_capability_names_the_alternative(smollm2_gguf: Path) -> None:
    with pytest.raises(ConfigError) as e:
        require("openai:gpt-4o-mini", LOGLIK, "eval likelihood")
    assert "eval likelihood needs log-likelihoods" in e.value.message and "local weights" in e.value.hint
    with pytest.raises(ConfigError) as e:
        require(str(smollm2_gguf), "export", "export gguf")
    assert "already exported" in e.value.hint
    assert require("smollm2-135m-instruct", LOGLIK, "eval bench").kind == "gguf"


def test_gpu_is_reported_as_this_machine_has_it() -> None:
    torch = pytest.importorskip("torch")
    assert gpu_available("hf") == torch.cuda.is_available()
    assert gpu_available("endpoint") is False
    assert classify("openai:x").can(GPU)  # a capability of the kind; whether this machine has one is gpu_available


@pytest.mark.slow
def test_a_trained_model_folder_is_a_teacher_for_generate(chat_folder: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in ("Name a colour.", "Say hello.")))
    out = tmp_path / "data"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--from-prompts",
            str(prompts),
            "--teacher",
            str(chat_folder),
            "-o",
            str(out),
            "--num",
            "2",
            "--set",
            "teacher.max_tokens=8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-1500:]
    answered = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(answered) == 2 and all(a["request_id"].startswith("hf-") for a in answered)  # transformers answered
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.dumps(manifest).count(str(chat_folder.resolve())) >= 1


def test_a_model_folder_is_a_judge_too(chat_folder: Path) -> None:
    import asyncio

    from alpacakit.config import TeacherConfig
    from alpacakit.models.backends import make_backend
    from alpacakit.models.backends.hf import HFModel

    judge = make_backend(TeacherConfig(model=str(chat_folder), max_tokens=4, temperature=0.0))
    assert isinstance(judge, HFModel)
    out = asyncio.run(judge.chat([{"role": "user", "content": "Which answer is better, A or B?"}]))
    assert out.usage.completion_tokens >= 1


def test_eval_likelihood_on_an_endpoint_stops_before_reading_anything(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "eval",
            "likelihood",
            "--model",
            "openai:gpt-4o-mini",
            "--answers",
            str(tmp_path / "missing.json"),
            "-o",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "needs log-likelihoods of given text" in r.stderr and "local weights" in r.stderr


def test_vllm_models_are_folders_and_say_how_to_install_vllm(
    chat_folder: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    m = classify(f"vllm:{chat_folder}")
    assert m.kind == "vllm" and m.can(BATCH) and not m.can(LOGLIK)
    with pytest.raises(ConfigError, match="vLLM runs model folders"):
        classify(f"vllm:{smollm2_gguf}")
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here: the install hint is not shown")
    except ImportError:
        pass
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Name a colour."}) + "\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--from-prompts",
            str(prompts),
            "--teacher",
            f"vllm:{chat_folder}",
            "-o",
            str(tmp_path / "d"),
            "--num",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and 'pip install "alpacakit[vllm]"' in r.stderr and "Traceback" not in r.stderr


def test_export_refuses_what_is_not_a_model_folder_before_loading(smollm2_gguf: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "export",
            "gguf",
            str(smollm2_gguf),
            "-o",
            str(tmp_path / "x.gguf"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "is a GGUF model, not a model folder" in r.stderr and "already exported" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
