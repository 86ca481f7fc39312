"""The transformers backend (`models/backends/hf.py`) that runs model folders from `alpacakit train`.

Models are tiny and built offline from a config (alpacakit.train.tiny): random weights, so
answers are gibberish, but prompts, streaming, stop strings, adapter merging and the saved
prompt format are all exercised for real.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from alpacakit.config import TeacherConfig  # noqa: E402
from alpacakit.errors import TeacherError  # noqa: E402
from alpacakit.models.backends.base import Completion  # noqa: E402
from alpacakit.models.backends.hf import HFModel, find_layout, is_hf_folder  # noqa: E402
from alpacakit.prompting import PromptFormat  # noqa: E402
from alpacakit.serve.history import fold_messages  # noqa: E402

GREEDY = TeacherConfig(model="tiny", temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alpacakit.train.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "chat-model", chat_template=True)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_chat_model: Path) -> HFModel:
    return HFModel(tiny_chat_model, GREEDY)


def collect(stream: Any) -> tuple[list[str], Completion]:
    async def run() -> tuple[list[str], Completion]:
        pieces, final = [], None
        async for item in stream:
            if isinstance(item, Completion):
                final = item
            else:
                pieces.append(item)
        assert final is not None
        return pieces, final

    return asyncio.run(run())


def test_stream_pieces_add_up_to_the_completion(tiny_teacher):
    msgs = [{"role": "user", "content": "hello there"}]
    pieces, final = collect(tiny_teacher.stream_chat(msgs, max_tokens=12))
    assert len(pieces) >= 2
    assert "".join(pieces) == final.text
    assert final.usage.completion_tokens == 12 and final.finish_reason == "length"
    assert final.usage.prompt_tokens == tiny_teacher.count_chat_tokens(msgs)
    again = asyncio.run(tiny_teacher.chat(msgs, max_tokens=12))
    assert again.text == final.text  # greedy is deterministic


def test_chat_uses_the_tokenizers_chat_template_when_no_format_is_saved(tiny_teacher):
    assert tiny_teacher.prompt_format.kind == "chat"
    prompt = tiny_teacher.render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert prompt.index("S") < prompt.index("U")
    assert prompt.rstrip().endswith("assistant")


def test_stop_string_cuts_the_answer_before_it(tiny_teacher):
    msgs = [{"role": "user", "content": "a b c"}]
    full = asyncio.run(tiny_teacher.chat(msgs, max_tokens=12)).text
    k = next(i for i in range(len(full) // 2, len(full)) if full[i].strip() and full[i] not in full[:i])
    stop = full[k : k + 2]
    cut = asyncio.run(tiny_teacher.chat(msgs, max_tokens=12, stop=[stop]))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_complete_is_a_raw_continuation(tiny_teacher):
    c = asyncio.run(tiny_teacher.complete("the cat", max_tokens=5))
    assert c.usage.prompt_tokens == tiny_teacher.count_tokens("the cat") + 1  # + BOS
    assert c.usage.completion_tokens == 5


def test_alpaca_format_folder_builds_the_trained_prompt_and_folds_history(tiny_chat_model, tmp_path):
    root = tmp_path / "run-model"
    shutil.copytree(tiny_chat_model, root / "merged")
    PromptFormat.load("alpaca").save(root)
    assert is_hf_folder(root)
    teacher = HFModel(root, GREEDY)
    assert teacher.layout.weights == root / "merged" and teacher.prompt_format.name == "alpaca"
    fmt = PromptFormat.load("alpaca")
    one = [{"role": "user", "content": "Name a colour."}]
    assert teacher.render_chat(one) == fmt.build("Name a colour.", "")
    two = one + [{"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    instruction, context = fold_messages(two)
    assert instruction == "Another?"
    assert "User: Name a colour." in context and "Assistant: Blue." in context
    assert teacher.render_chat(two) == fmt.build("Another?", context)
    assert asyncio.run(teacher.chat(two, max_tokens=3)).usage.completion_tokens == 3


@pytest.fixture(scope="module")
def lora(tiny_chat_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA adapter (random, non-zero) on the tiny model, and the greedy tokens it should give."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_chat_model),
        LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    adapter = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    prompt = "the dog"
    ids = torch.tensor([tok(prompt)["input_ids"]])

    def greedy(model: Any) -> list[int]:
        with torch.inference_mode():
            out = model.eval().generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
            )
        return out[0, ids.shape[1] :].tolist()

    want = greedy(peft_model.merge_and_unload())
    base_out = greedy(AutoModelForCausalLM.from_pretrained(tiny_chat_model))
    assert want != base_out  # the adapter changes the answer, so matching it below means something
    return {"adapter": adapter, "prompt": prompt, "want": tok.decode(want, skip_special_tokens=True), "tok": tok}


def test_alpacakit_lora_model_folder_is_loaded_with_its_manifest_and_merged(tiny_chat_model, lora, tmp_path):
    root = tmp_path / "model"
    shutil.copytree(lora["adapter"], root / "adapter")
    lora["tok"].save_pretrained(root)
    PromptFormat.load("chat").bind(lora["tok"]).save(root)
    manifest = {
        "kind": "alpacakit.model",
        "complete": True,
        "method": "lora",
        "weights": "adapter",
        "base": {"ref": str(tiny_chat_model), "path": str(tiny_chat_model)},
        "prompt_format": "chat",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    # the adapter records a base path that no longer exists: the manifest's is used
    cfg_path = root / "adapter" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": "/gone/base"}))

    teacher = HFModel(root, GREEDY)
    assert teacher.layout.alpacakit and teacher.layout.adapter == root / "adapter"
    assert not hasattr(teacher.model, "peft_config")  # merged, not a PeftModel
    got = asyncio.run(teacher.complete(lora["prompt"], max_tokens=8))
    assert got.text == lora["want"]

    manifest["complete"] = False
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="incomplete"):
        HFModel(root, GREEDY)


def test_bare_adapter_folder_uses_the_given_base(tiny_chat_model, lora, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora["adapter"], adapter)
    cfg_path = adapter / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": "/gone/base"}))
    with pytest.raises(TeacherError, match="/gone/base"):
        HFModel(adapter, GREEDY)
    teacher = HFModel(adapter, GREEDY, base=str(tiny_chat_model))
    assert asyncio.run(teacher.complete(lora["prompt"], max_tokens=8)).text == lora["want"]


def test_adapter_with_a_missing_base_says_how_to_fix_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(TeacherError) as e:
        find_layout(tmp_path)
    assert "/nowhere/base" in e.value.message and "--base" in e.value.hint


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherError, match="holds no model"):
        find_layout(tmp_path)


def test_hf_model_served_over_http_streams(tiny_teacher):
    from alpacakit.serve.app import create_app
    from alpacakit.serve.backend import ServeBackend
    from alpacakit.serve.config import ServeConfig
    from alpacakit.serve.server import BackgroundServer

    app = create_app(ServeBackend(tiny_teacher), ServeConfig(max_prompt_tokens=50), api_key="")
    with BackgroundServer(app) as srv:
        body = {
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=60) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert text == asyncio.run(tiny_teacher.chat([{"role": "user", "content": "hi"}], max_tokens=6)).text
        too_long = {"model": "x", "messages": [{"role": "user", "content": "word " * 60}]}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=too_long)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_prompt_plus_max_tokens_over_the_context_window_is_400(tiny_teacher):
    from alpacakit.serve.app import create_app
    from alpacakit.serve.backend import ServeBackend
    from alpacakit.serve.config import ServeConfig
    from alpacakit.serve.server import BackgroundServer

    window = tiny_teacher.context_window
    assert window == 512  # the tiny model's max_position_embeddings
    app = create_app(ServeBackend(tiny_teacher), ServeConfig(max_tokens_cap=1000), api_key="")
    with BackgroundServer(app) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "the cat", "max_tokens": window})
        assert r.status_code == 400
        assert "context window of 512" in r.json()["error"]["message"]


def test_generation_past_the_timeout_is_an_error(tiny_chat_model):
    slow = HFModel(tiny_chat_model, TeacherConfig(model="tiny", temperature=0.0, max_tokens=400, timeout_s=0.05))
    with pytest.raises(TeacherError, match="timed out"):
        asyncio.run(slow.complete("the cat", max_tokens=400))


@pytest.mark.slow  # trains a tiny model and starts a subprocess that imports transformers: ~40 s on 2 cores
def test_a_folder_written_by_alpacakit_train_chats_in_the_terminal(tmp_path):
    """End to end with the training stage's real output: train a tiny LoRA model, then
    `alpacakit chat MODEL_DIR` with piped stdin answers with the saved Alpaca prompt."""
    import os
    import re
    import subprocess
    import sys

    from alpacakit.train.config import TrainConfig
    from alpacakit.train.recipe import train
    from alpacakit.train.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    data = tmp_path / "examples.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}) + "\n"
            for w in ["red", "blue", "cat", "dog"]
        )
    )
    out = tmp_path / "run" / "model"
    train(
        TrainConfig(base=str(base), data=str(data), epochs=1, batch_size=4, lr=1e-3, save_steps=50, logging_steps=1),
        output_dir=out,
    )
    assert (out / "adapter").is_dir() and (out / "prompt_format.json").is_file()

    teacher = HFModel(out, GREEDY)
    assert teacher.layout.alpacakit and teacher.prompt_format.name == "alpaca" and teacher.name == "run/model"
    expected = asyncio.run(teacher.chat([{"role": "user", "content": "Repeat the word cat."}], max_tokens=6)).text

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "chat",
            str(out),
            "--temperature",
            "0",
            "--max-tokens",
            "6",
            "--threads",
            "1",
        ],
        input="Repeat the word cat.\nAnd again?\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"history: (\d+) turn", proc.stderr) == ["1", "2"]
    assert proc.stdout.split("\n\n")[0].strip() == expected.strip()
