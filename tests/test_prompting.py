"""Prompt formats: data files, building, binding to a tokenizer, saving and loading back."""

from __future__ import annotations

import json

import pytest

from alpacakit.errors import ConfigError
from alpacakit.prompting import FORMAT_FILENAME, Prompter, PromptFormat, list_formats


def test_builtin_formats_are_data_files():
    assert {"alpaca", "chat"} <= set(list_formats())


def test_alpaca_prompt_without_input_ends_with_the_response_marker():
    p = PromptFormat.load("alpaca").build("Name a colour.")
    assert p.startswith("Below is an instruction that describes a task. Write a response")
    assert "### Instruction:\nName a colour.\n\n### Response:\n" in p
    assert "### Input:" not in p
    assert p.endswith("### Response:\n")


def test_alpaca_prompt_with_input_has_the_input_section():
    p = PromptFormat.load("alpaca").build("Translate to French.", "cat")
    assert "paired with an input that provides further context" in p
    assert "### Instruction:\nTranslate to French.\n\n### Input:\ncat\n\n### Response:\n" in p


def test_braces_in_the_instruction_are_kept_verbatim():
    p = PromptFormat.load("alpaca").build('Format {x} as JSON: {"a": 1}', "{y}")
    assert 'Format {x} as JSON: {"a": 1}' in p and "\n{y}\n" in p


def test_split_response_takes_the_text_after_the_last_marker_and_cuts_at_eos():
    fmt = PromptFormat.load("alpaca").bind(type("T", (), {"bos_token": "<s>", "eos_token": "</s>"})())
    text = fmt.build("Say hi.") + " Hello there.</s>garbage"
    assert fmt.split_response(text) == "Hello there."


def test_template_tokenizes_with_special_tokens_chat_without():
    assert PromptFormat.load("alpaca").add_special_tokens is True
    assert PromptFormat.load("chat").add_special_tokens is False


def test_saved_format_loads_back_identically(tmp_path):
    fmt = PromptFormat.load("alpaca")
    fmt.save(tmp_path)
    again = PromptFormat.from_model_dir(tmp_path)
    assert again == fmt
    assert again.build("a", "b") == fmt.build("a", "b")


def test_prompter_is_the_same_class():
    assert Prompter is PromptFormat


def test_from_model_dir_without_a_format_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as e:
        PromptFormat.from_model_dir(tmp_path)
    assert FORMAT_FILENAME in e.value.message and e.value.hint


def test_unknown_format_name_lists_the_builtin_ones():
    with pytest.raises(ConfigError) as e:
        PromptFormat.load("vicuna-v9")
    assert "alpaca" in e.value.hint


def test_a_custom_format_file_with_a_bad_placeholder_is_refused(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(
        json.dumps(
            {
                "name": "mine",
                "prompt_input": "{instruction} {context}",
                "prompt_no_input": "{instruction}",
                "response_split": "A:",
            }
        )
    )
    with pytest.raises(ConfigError) as e:
        PromptFormat.load(str(f))
    assert "prompt_input" in e.value.message


def test_a_custom_format_file_works(tmp_path):
    f = tmp_path / "qa.json"
    f.write_text(
        json.dumps(
            {
                "name": "qa",
                "prompt_input": "Q: {instruction}\nC: {input}\nA: ",
                "prompt_no_input": "Q: {instruction}\nA: ",
                "response_split": "A:",
            }
        )
    )
    fmt = PromptFormat.load(str(f))
    assert fmt.build("why?") == "Q: why?\nA: "


# --- chat formats -----------------------------------------------------------------------


def test_chat_format_renders_exactly_like_the_tokenizers_chat_template():
    from alpacakit.train.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer(chat_template=True)
    fmt = PromptFormat.load("chat").bind(tok)
    msgs = [{"role": "user", "content": "Name a colour.\n\nwarm"}, {"role": "assistant", "content": "Red."}]
    assert fmt.render(msgs) == tok.apply_chat_template(msgs, tokenize=False)
    assert fmt.build("Name a colour.", "warm") == tok.apply_chat_template(
        msgs[:1], tokenize=False, add_generation_prompt=True
    )


def test_chat_format_on_a_base_without_template_uses_the_fallback_and_its_stop():
    from alpacakit.train.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer(chat_template=False)
    fmt = PromptFormat.load("chat").bind(tok)
    p = fmt.build("Hi")
    assert p.startswith("<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_end|>" in fmt.stop


def test_unbound_chat_format_cannot_build_or_save(tmp_path):
    fmt = PromptFormat.load("chat")
    with pytest.raises(ConfigError):
        fmt.build("x")
    with pytest.raises(ConfigError):
        fmt.save(tmp_path)


def test_bound_chat_format_saves_its_template_so_inference_needs_no_tokenizer(tmp_path):
    from alpacakit.train.tiny import make_tiny_tokenizer

    tok = make_tiny_tokenizer(chat_template=True)
    fmt = PromptFormat.load("chat").bind(tok)
    fmt.save(tmp_path)
    again = PromptFormat.from_model_dir(tmp_path)
    assert again.chat_template == tok.chat_template
    assert again.build("Hello", "") == fmt.build("Hello", "")
