"""End to end on a tiny model built from a config: outputs, learning to stop, merge, stages, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from alpacakit.errors import AlpacakitError, ConfigError, DataError  # noqa: E402
from alpacakit.prompting import PromptFormat  # noqa: E402
from alpacakit.train.config import TrainConfig, list_presets, load_train_config  # noqa: E402
from alpacakit.train.recipe import train  # noqa: E402
from alpacakit.train.tiny import make_tiny_base  # noqa: E402

WORDS = ["red", "blue", "cat", "dog", "sun", "tea", "fox", "bread"]
CLI = [sys.executable, "-m", "alpacakit.cli.main"]


def _records(words=WORDS):
    return [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"} for w in words]


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("data") / "examples.jsonl", _records())


def _cfg(base, data, **kw) -> TrainConfig:
    vals = dict(base=str(base), data=str(data), epochs=1, batch_size=4, lr=1e-3, save_steps=50, logging_steps=1)
    vals.update(kw)
    return TrainConfig(**vals)


@pytest.fixture(scope="module")
def lora_run(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "model"
    train(_cfg(base, data, epochs=2, val_size=2), output_dir=out)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=_env())


# --------------------------------------------------------------------------- outputs


def test_lora_run_writes_a_complete_model_folder(lora_run, data):
    out = lora_run
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert (out / "tokenizer.json").exists()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "logs" / "01-main").glob("events.out.tfevents.*"))
    assert not out.with_name("model.partial").exists()
    assert not (out / "stages").exists()  # checkpoints are gone once the folder is complete
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Can I use this commercially?" in card and "## Lineage" in card


def test_manifest_records_base_data_config_steps_and_losses(lora_run, data):
    from alpacakit.io import sha256_file

    m = json.loads((lora_run / "manifest.json").read_text())
    assert m["complete"] is True and m["method"] == "lora" and m["weights"] == "adapter"
    assert m["base"]["source"] == "folder"
    assert m["data"][0]["sha256"] == sha256_file(data) and m["data"][0]["records"] == len(WORDS)
    assert m["config"]["lr"] == 1e-3 and m["config"]["epochs"] == 2
    assert m["steps"] == 4  # 6 training examples (2 held out), batch 4, 2 epochs
    assert [e["step"] for e in m["losses"]] == [1, 2, 3, 4]
    assert m["eval_losses"] and m["stages"][0]["data"]["validation_examples"] == 2
    assert m["durations_s"]["total"] > 0 and m["versions"]["torch"]


def test_the_saved_prompt_format_is_the_one_used_in_training(lora_run):
    fmt = PromptFormat.from_model_dir(lora_run)
    assert fmt.name == "alpaca" and fmt.eos_token == "</s>"
    assert fmt.build("x") == PromptFormat.load("alpaca").build("x")


def test_merge_folds_the_adapter_into_weights_that_give_the_same_logits(lora_run):
    from alpacakit.train.merge import load_trained, merge

    merged_dir = merge(lora_run)
    assert (merged_dir / "config.json").exists() and (merged_dir / "prompt_format.json").exists()
    assert json.loads((lora_run / "manifest.json").read_text())["merged"]["path"] == "merged"
    adapted, tok, _ = load_trained(lora_run, merged=False)
    merged, _, _ = load_trained(lora_run, merged=True)
    ids = tok("Repeat the word cat.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="already exists"):
        merge(lora_run)


def test_a_finished_folder_is_not_overwritten_without_overwrite(lora_run, base, data):
    with pytest.raises(ConfigError, match="already exists"):
        train(_cfg(base, data), output_dir=lora_run)


# --------------------------------------------------------------------------- learning


def _greedy(model, tok, prompt, n=16):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    return out[0, ids.shape[1] :].tolist()


def test_full_fine_tune_learns_to_answer_and_stop(base, tmp_path):
    """The base never emits EOS; trained on answers that all read "OK.", it answers that and stops,
    also for an instruction it has not seen."""
    from transformers import AutoModelForCausalLM

    from alpacakit.train.merge import load_trained

    d = _write(
        tmp_path / "ok.jsonl", [{"instruction": f"Repeat the word {w}.", "input": "", "output": "OK."} for w in WORDS]
    )
    out = tmp_path / "full"
    cfg = _cfg(
        base,
        d,
        method="full",
        epochs=40,
        lr=1e-2,
        warmup_ratio=0.0,
        scheduler="constant",
        batch_size=8,
        save_steps=1000,
        logging_steps=5,
    )
    train(cfg, output_dir=out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["weights"] == "merged" and (out / "merged" / "model.safetensors").exists()
    assert m["losses"][-1]["loss"] < 0.1 * m["losses"][0]["loss"]
    model, tok, fmt = load_trained(out)
    untrained = AutoModelForCausalLM.from_pretrained(base).eval()
    for w in ("fox", "bread", "lemon"):  # lemon was not in the data
        prompt = fmt.build(f"Repeat the word {w}.")
        assert tok.eos_token_id not in _greedy(untrained, tok, prompt)
        gen = _greedy(model, tok, prompt)
        assert tok.eos_token_id in gen
        assert tok.decode(gen[: gen.index(tok.eos_token_id)]).strip() == "OK."


def test_multi_stage_continues_from_the_previous_stages_weights(base, data, tmp_path):
    """Stage 2 with a vanishing learning rate ends where stage 1 ended, not at a fresh adapter."""
    from safetensors.torch import load_file

    other = _write(tmp_path / "domain.jsonl", _records(["tree", "milk", "rain", "salt"]))
    one = tmp_path / "one"
    train(_cfg(base, data, lr=1e-2, epochs=2), output_dir=one)
    two = tmp_path / "two"
    stages = [{"name": "general", "data": str(data)}, {"name": "domain", "data": str(other), "lr": 1e-12, "epochs": 1}]
    train(_cfg(base, data, lr=1e-2, epochs=2, stages=stages), output_dir=two)
    m = json.loads((two / "manifest.json").read_text())
    assert [s["name"] for s in m["stages"]] == ["general", "domain"]
    assert m["stages"][1]["data"]["train"]["files"][0]["path"] == str(other)
    assert m["steps"] == 4 + 1
    a = load_file(one / "adapter" / "adapter_model.safetensors")
    b = load_file(two / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # stage 1 really trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert (two / "loss.png").exists()


def test_chat_format_training_saves_the_rendered_template(base, tmp_path):
    conv = [{"conversations": [{"from": "human", "value": f"Say {w}."}, {"from": "gpt", "value": w}]} for w in WORDS]
    d = _write(tmp_path / "sharegpt.jsonl", conv)
    out = tmp_path / "chat"
    train(_cfg(base, d, prompt_format="chat", max_steps=1), output_dir=out)
    fmt = PromptFormat.from_model_dir(out)
    assert fmt.kind == "chat" and "<|im_start|>" in fmt.chat_template and "<|im_end|>" in fmt.stop
    assert fmt.build("Say red.").endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------- config and errors


def test_presets_are_listed_with_stanford_and_alpaca_lora_values():
    presets = list_presets()
    assert {"alpaca", "alpaca-lora", "cpu-quick"} <= set(presets)
    a = TrainConfig(preset="alpaca")
    assert (a.method, a.epochs, a.lr, a.scheduler, a.warmup_ratio, a.weight_decay, a.max_length, a.effective_batch) == (
        "full",
        3,
        2e-5,
        "cosine",
        0.03,
        0.0,
        512,
        128,
    )
    b = TrainConfig(preset="alpaca-lora")
    assert (b.method, b.lora.r, b.lora.alpha, b.lora.dropout, b.lora.target_modules, b.lr, b.max_length) == (
        "lora",
        8,
        16,
        0.05,
        ["q_proj", "v_proj"],
        3e-4,
        256,
    )


def test_keys_next_to_a_preset_and_set_overrides_win(tmp_path):
    y = tmp_path / "t.yaml"
    y.write_text("preset: alpaca-lora\nlr: 1.0e-4\ndata: x.jsonl\n")  # a bare train section
    cfg = load_train_config(y, ["lora.r=16", "train.epochs=1"]).train
    assert (cfg.lr, cfg.lora.r, cfg.epochs, cfg.max_length, cfg.data) == (1e-4, 16, 1, 256, "x.jsonl")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as e:
        TrainConfig(preset="nope")
    assert "alpaca-lora" in e.value.hint


def test_effective_batch_that_does_not_divide_is_refused_before_loading(base, data, tmp_path):
    with pytest.raises(ConfigError, match="not a multiple of batch_size"):
        train(_cfg(base, data, effective_batch=10, batch_size=4), output_dir=tmp_path / "m")
    assert not (tmp_path / "m.partial").exists()


def test_lora_targets_that_do_not_exist_list_the_real_layers(base, data, tmp_path):
    with pytest.raises(ConfigError) as e:
        train(_cfg(base, data, lora={"target_modules": ["query_key_value"]}), output_dir=tmp_path / "m")
    assert "q_proj" in e.value.hint


def test_data_with_no_response_tokens_within_max_length_is_a_clear_error(base, data, tmp_path):
    with pytest.raises(DataError, match="max_length 8"):
        train(_cfg(base, data, max_length=8), output_dir=tmp_path / "m")


def test_qlora_on_cpu_says_what_to_do_instead(base, data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError) as e:
        train(_cfg(base, data, method="qlora"), output_dir=tmp_path / "m")
    assert "CUDA" in e.value.message and "method: lora" in e.value.hint


def test_a_hub_id_without_hub_access_suggests_local_models(data, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time otherwise
    with pytest.raises(AlpacakitError) as e:
        train(_cfg("someorg/some-model", data), output_dir=tmp_path / "m")
    assert "gemma-3-270m" in e.value.hint


def test_cli_lists_presets():
    r = _cli("train", "--list-presets")
    assert r.returncode == 0, r.stderr
    assert "alpaca-lora" in r.stdout and "cpu-quick" in r.stdout


@pytest.mark.slow
def test_cli_reports_a_broken_data_file_with_its_line_and_exits_2(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_records()[0]) + "\n" + '{"instruction": "x", "output": \n')
    r = _cli("train", "--base", base, "--data", bad, "-o", tmp_path / "m")
    assert r.returncode == 2
    assert f"{bad}:2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_cli_says_where_it_trains_and_not_deepspeeds_gpu_notice(base, data, tmp_path):
    """On a CPU the header says so; DeepSpeed's "If you have GPU ..., we were unable to detect
    it", which accelerate's import of an installed DeepSpeed printed on every CPU run, is gone."""
    r = _cli("train", "--base", base, "--data", data, "-o", tmp_path / "m", "--set", "max_steps=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch sees no CUDA device" in r.stdout
    out = r.stdout + r.stderr
    assert "Setting accelerator to CPU" not in out and "unable to detect" not in out


def test_cli_refuses_to_start_over_an_interrupted_run(base, data, tmp_path):
    (tmp_path / "m.partial").mkdir()
    r = _cli("train", "--base", base, "--data", data, "-o", tmp_path / "m")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_pad_to_longest_with_length_grouping_trains_too(base, data, tmp_path):
    out = tmp_path / "padded"
    train(_cfg(base, data, packing=False, group_by_length=True, loss="full", max_steps=2), output_dir=out)
    assert json.loads((out / "manifest.json").read_text())["steps"] == 2


def test_running_out_of_memory_is_reported_with_what_to_lower(base, data, tmp_path, monkeypatch):
    """The allocator's error (simulated: a real one would starve the other jobs on the machine)."""
    from alpacakit.train.trainer import AlpacaTrainer

    def oom(self, *a, **k):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(AlpacaTrainer, "training_step", oom)
    with pytest.raises(AlpacakitError) as e:
        train(_cfg(base, data, batch_size=4, max_length=256), output_dir=tmp_path / "m")
    assert "out of memory" in e.value.message and "batch_size 4" in e.value.message
    assert "gradient_checkpointing" in e.value.hint and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_resume_after_a_failed_second_stage_reuses_the_finished_first_stage(base, data, tmp_path, capsys):
    from safetensors.torch import load_file

    domain = tmp_path / "domain.jsonl"
    stages = [{"name": "general", "data": str(data), "epochs": 2}, {"name": "domain", "data": str(domain)}]
    good = "".join(json.dumps(r) + "\n" for r in _records(["tree", "milk", "rain", "salt"]))
    domain.write_text(good)
    whole = tmp_path / "whole"
    train(_cfg(base, data, lr=1e-2, stages=stages), output_dir=whole)

    domain.write_text(good + "{broken\n")
    out = tmp_path / "m"
    with pytest.raises(DataError, match="domain.jsonl:5"):
        train(_cfg(base, data, lr=1e-2, stages=stages), output_dir=out)
    assert (tmp_path / "m.partial" / "stages" / "01-general" / "done.json").exists() and not out.exists()
    domain.write_text(good)
    capsys.readouterr()
    train(_cfg(base, data, lr=1e-2, stages=stages), output_dir=out, resume=True)
    assert "stage general: already finished" in capsys.readouterr().out
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


def test_auto_precision_uses_bf16_only_for_a_frozen_base_on_a_cpu_that_multiplies_bf16(monkeypatch):
    import torch as _torch

    from alpacakit.train import base_model

    monkeypatch.setattr(_torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(base_model, "cpu_has_native_bf16", lambda: True)
    assert base_model.torch_dtype("auto", "lora") == _torch.bfloat16
    assert base_model.torch_dtype("auto", "full") == _torch.float32  # no fp32 master weights on CPU
    assert base_model.torch_dtype("fp32", "lora") == _torch.float32
    monkeypatch.setattr(base_model, "cpu_has_native_bf16", lambda: False)
    assert base_model.torch_dtype("auto", "lora") == _torch.float32
