"""Model cards carry lineage from the manifests and a plain answer on commercial use."""

import json

from alpacakit.cards import build_card, commercial_answer, terms_for, write_model_card


def make_run(tmp_path, teacher="qwen2.5-coder-1.5b-instruct", base="gemma-3-270m"):
    data = tmp_path / "data"
    data.mkdir()
    (data / "examples.jsonl").write_text('{"instruction": "x", "input": "", "output": "y"}\n')
    (data / "manifest.json").write_text(
        json.dumps(
            {
                "stage": "generate",
                "config": {"teacher": {"model": teacher}},
                "inputs": {"seeds": {"path": "/x/seed_tasks.jsonl", "sha256": "ab" * 32, "count": 175}},
                "counts": {
                    "kept": 1,
                    "discarded": 3,
                    "requests": 2,
                    "prompt_tokens": 100,
                    "completion_tokens": 50,
                    "cost_usd": 0.0,
                },
                "wall_seconds": 12.5,
            }
        )
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(
        json.dumps(
            {
                "method": "lora",
                "base": {"ref": base, "source": "embedded", "gguf_sha256": "cd" * 32},
                "data": [str(data / "examples.jsonl")],
                "steps": 30,
                "final_train_loss": 1.23,
                "prompt_format": "alpaca",
                "durations_s": {"total": 600},
            }
        )
    )
    return model


def test_card_has_lineage_licences_and_costs(tmp_path):
    card = build_card(make_run(tmp_path))
    assert "gemma-3-270m" in card and "qwen2.5-coder-1.5b-instruct" in card
    assert "seed_tasks.jsonl (175 tasks)" in card
    assert "Gemma Terms of Use" in card and "Apache-2.0" in card
    assert "## Can I use this commercially?\n\nYes, with conditions" in card
    assert "150 tokens, $0.0000" in card and "600 s" in card


def test_openai_teacher_and_llama_base_answers():
    llama = [terms_for("base model", "huggyllama/llama-7b"), terms_for("teacher", "openai:gpt-4o-mini")]
    assert commercial_answer(llama).startswith("No.")
    openai_only = [terms_for("base model", "smollm2-135m-instruct"), terms_for("teacher", "openai:gpt-4o-mini")]
    answer = commercial_answer(openai_only)
    assert answer.startswith("Yes, with conditions") and "compete" in answer
    assert commercial_answer([terms_for("base model", "my-own-model")]).startswith("Not known")


def test_write_model_card_writes_file(tmp_path):
    model = make_run(tmp_path, teacher="smollm2-135m-instruct", base="smollm2-135m-instruct")
    path = write_model_card(model)
    assert path.name == "MODEL_CARD.md"
    assert "Yes: every component is under a permissive licence" in path.read_text()


def test_an_export_card_lists_every_gguf_with_its_agreement(tmp_path):
    exports = [
        {"file": "model-q4_k_m.gguf", "quant": "q4_k_m", "sha256": "ef" * 32, "size_bytes": 253_000_000},
        {
            "file": "model-q8_0.gguf",
            "quant": "q8_0",
            "sha256": "12" * 32,
            "size_bytes": 292_000_000,
            "verification": {"top1_agreement": 0.983, "positions": 512},
        },
    ]
    card = build_card(make_run(tmp_path), export=exports)
    assert card.startswith("# Model card: model-q4_k_m.gguf, model-q8_0.gguf")
    assert (
        "| export | model-q4_k_m.gguf (q4_k_m, 253 MB)" in card and "| export | model-q8_0.gguf (q8_0, 292 MB)" in card
    )
    assert "model-q8_0.gguf: greedy top-1 agreement with the Hugging Face model: 98.3% over 512 positions" in card
    assert "Gemma Terms of Use" in card  # an export inherits the trained model's terms


def test_a_folder_alpacakit_did_not_train_is_carded_as_itself(tmp_path):
    hf = tmp_path / "qwen-hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"_name_or_path": "Qwen/Qwen2.5-Coder-1.5B-Instruct", "model_type": "qwen2"})
    )
    card = build_card(
        hf,
        export={
            "file": "qwen-q8_0.gguf",
            "quant": "q8_0",
            "sha256": "ab" * 32,
            "size_bytes": 1_894_000_000,
            "verification": {"top1_agreement": 0.983, "positions": 290},
        },
    )
    assert "**Qwen/Qwen2.5-Coder-1.5B-Instruct** (qwen2), exported as is" in card
    assert "student" not in card.split("## Lineage")[0] and "fine-tuned" not in card
    assert "| source folder |" in card and "| training |" not in card
    assert "**model** `Qwen/Qwen2.5-Coder-1.5B-Instruct`: Apache-2.0" in card
    assert "98.3% over 290 positions" in card
