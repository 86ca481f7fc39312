"""The transformers backend (`teachers/hf.py`) that runs model folders from `alpacakit train`.

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
from alpacakit.prompting import PromptFormat  # noqa: E402
from alpacakit.serve.history import fold_messages  # noqa: E402
from alpacakit.teachers.base import Completion  # noqa: E402
from alpacakit.teachers.hf import HFTeacher, find_layout, is_hf_folder  # noqa: E402

GREEDY = TeacherConfig(model="tiny", temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alpacakit.train.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "chat-model", chat_template=True)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_chat_model: Path) -> HFTeacher:
    return HFTeacher(tiny_chat_model, GREEDY)


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
    stop = full[k:k + 2]
    cut = asyncio.run(tiny_teacher.chat(msgs, max_tokens=12, stop=[stop]))
    assert cut.text == full[:full.index(stop)]
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
    teacher = HFTeacher(root, GREEDY)
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


def test_lora_adapter_folder_is_merged_onto_its_base(tiny_chat_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False))
    root = tmp_path / "lora-run"
    peft_model.save_pretrained(root / "adapter")
    cfg_path = root / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tiny_chat_model)
    cfg_path.write_text(json.dumps(cfg))
    base_tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    PromptFormat.load("chat").bind(base_tok).save(root)

    teacher = HFTeacher(root, GREEDY)
    assert teacher.layout.adapter == root / "adapter" and teacher.layout.base == str(tiny_chat_model)
    prompt = "the dog"
    ids = torch.tensor([base_tok(prompt)["input_ids"]])
    merged = peft_model.merge_and_unload().eval()
    with torch.inference_mode():
        want = merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
        plain = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
        base_out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:]
    assert want.tolist() != base_out.tolist()  # the adapter changes the answer, so the check below means something
    got = asyncio.run(teacher.complete(prompt, max_tokens=8))
    assert got.text == base_tok.decode(want, skip_special_tokens=True)


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
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
                "stream": True}
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
    slow = HFTeacher(tiny_chat_model, TeacherConfig(model="tiny", temperature=0.0, max_tokens=400, timeout_s=0.05))
    with pytest.raises(TeacherError, match="timed out"):
        asyncio.run(slow.complete("the cat", max_tokens=400))
