"""The recipes: each prompt format's exact bytes, labels by Stanford's rule, the presets' settings,
Stanford's per-micro-batch loss, and the GPU-only presets' errors on CPU."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from alpacakit.errors import ConfigError  # noqa: E402
from alpacakit.train.collate import PaddedCollator  # noqa: E402
from alpacakit.train.config import TrainConfig, list_presets  # noqa: E402
from alpacakit.train.data import IGNORE, load_samples, tokenize_samples  # noqa: E402
from alpacakit.train.recipe import load_prompt_format  # noqa: E402
from alpacakit.train.tiny import make_tiny_model, make_tiny_tokenizer  # noqa: E402

# Alpaca-shaped records (instruction, input, output), with and without an input
RECORDS = [
    {
        "instruction": "Give three tips for keeping a houseplant alive.",
        "input": "",
        "output": "1. Water it when the top of the soil is dry.\n2. Give it bright, indirect light.\n3. Repot it when the roots fill the pot.",
    },
    {
        "instruction": "Classify the following animal as a mammal, bird or reptile.",
        "input": "Crocodile",
        "output": "Reptile",
    },
    {
        "instruction": "Rewrite the sentence in the passive voice.",
        "input": "The committee approved the budget.",
        "output": "The budget was approved by the committee.",
    },
    {"instruction": "What is the capital of Canada?", "input": "", "output": "The capital of Canada is Ottawa."},
]

PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


def stanford_prompt(rec: dict) -> str:
    """Stanford's train.py PROMPT_DICT, written out: the prompt ends at '### Response:' (no newline)."""
    if rec.get("input", "") != "":
        return (
            PREAMBLE_INPUT
            + "### Instruction:\n"
            + rec["instruction"]
            + "\n\n### Input:\n"
            + rec["input"]
            + "\n\n### Response:"
        )
    return PREAMBLE + "### Instruction:\n" + rec["instruction"] + "\n\n### Response:"


def stanford_preprocess(tokenizer, source: str, output: str, max_length: int) -> tuple[list[int], list[int]]:
    """Stanford's preprocess: tokenize source and source + output + EOS text; mask len(source tokens) labels."""
    source_ids = tokenizer(source, max_length=max_length, truncation=True)["input_ids"]
    ids = tokenizer(source + output + tokenizer.eos_token, max_length=max_length, truncation=True)["input_ids"]
    labels = copy.deepcopy(ids)
    labels[: len(source_ids)] = [IGNORE] * len(source_ids)
    return ids, labels


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def test_alpaca_stanford_format_is_stanfords_prompt_byte_for_byte():
    fmt = load_prompt_format("alpaca-stanford")
    assert fmt.name == "alpaca-stanford"
    assert fmt.build("What is the capital of Canada?") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWhat is the capital of Canada?\n\n### Response:"
    )
    assert fmt.build("Classify the following animal as a mammal, bird or reptile.", "Crocodile") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nClassify the following animal as a "
        "mammal, bird or reptile.\n\n### Input:\nCrocodile\n\n### Response:"
    )
    for rec in RECORDS:
        assert fmt.build(rec["instruction"], rec["input"]).encode() == stanford_prompt(rec).encode()


def test_alpaca_lora_format_adds_the_newline_after_the_response_marker():
    fmt = load_prompt_format("alpaca-lora")
    assert fmt.name == "alpaca-lora"
    assert fmt.build("What is the capital of Canada?").endswith("\n\n### Response:\n")
    for rec in RECORDS:
        assert fmt.build(rec["instruction"], rec["input"]).encode() == (stanford_prompt(rec) + "\n").encode()
    # the built-in `alpaca` format has Alpaca-LoRA's bytes
    builtin = load_prompt_format("alpaca")
    for rec in RECORDS:
        assert builtin.build(rec["instruction"], rec["input"]) == fmt.build(rec["instruction"], rec["input"])


@pytest.mark.parametrize("name", ["alpaca-stanford", "alpaca-lora", "alpaca"])
def test_labels_mask_the_prompt_exactly_as_stanfords_preprocess(tmp_path, tok, name):
    fmt = load_prompt_format(name).bind(tok)
    data = tmp_path / "d.json"
    data.write_text(json.dumps(RECORDS))  # an Alpaca JSON list
    rows = tokenize_samples(load_samples(data), fmt, tok, 512)
    assert len(rows) == len(RECORDS)
    for rec, row in zip(RECORDS, rows):
        ids, labels = stanford_preprocess(tok, fmt.build(rec["instruction"], rec["input"]), rec["output"], 512)
        assert row["input_ids"] == ids and row["labels"] == labels
        n_prompt = len(tok(fmt.build(rec["instruction"], rec["input"]))["input_ids"])
        assert row["labels"][:n_prompt] == [IGNORE] * n_prompt  # every prompt token masked
        assert IGNORE not in row["labels"][n_prompt:] and row["labels"][-1] == tok.eos_token_id  # response + EOS
        assert tok.decode(row["input_ids"][n_prompt:-1]) == rec["output"]
    # truncation cuts the same way (the EOS may be cut off, as in Stanford's)
    short = tokenize_samples(load_samples(data), fmt, tok, 150)  # cuts 3 of the 4 responses short
    assert len(short) == len(RECORDS)
    for rec, row in zip(RECORDS, short):
        ids, labels = stanford_preprocess(tok, fmt.build(rec["instruction"], rec["input"]), rec["output"], 150)
        assert row["input_ids"] == ids and row["labels"] == labels


def test_presets_carry_the_recipes_settings():
    assert {"alpaca", "alpaca-fast", "alpaca-lora", "qlora", "lora-8bit", "cpu-quick"} <= set(list_presets())
    a = TrainConfig(preset="alpaca")
    assert (
        a.method,
        a.prompt_format,
        a.packing,
        a.loss,
        a.loss_average,
        a.lr,
        a.epochs,
        a.effective_batch,
        a.batch_size,
        a.scheduler,
        a.warmup_ratio,
        a.weight_decay,
        a.max_length,
        a.precision,
        a.accelerate_config,
    ) == (
        "full",
        "alpaca-stanford",
        False,
        "full",
        "micro_batch",
        2e-5,
        3,
        128,
        4,
        "cosine",
        0.03,
        0.0,
        512,
        "bf16-mixed",
        "fsdp",
    )
    f = TrainConfig(preset="alpaca-fast")
    assert (f.prompt_format, f.packing, f.loss, f.loss_average) == ("alpaca-stanford", True, "chunked", "tokens")
    assert (f.method, f.lr, f.epochs, f.effective_batch, f.accelerate_config) == ("full", 2e-5, 3, 128, "fsdp")
    lo = TrainConfig(preset="alpaca-lora")
    assert (lo.prompt_format, lo.method, lo.lora.r, lo.lora.target_modules) == (
        "alpaca-lora",
        "lora",
        8,
        ["q_proj", "v_proj"],
    )
    q = TrainConfig(preset="qlora")
    assert (q.method, q.optim, q.lora.r, q.lora.target_modules, q.max_grad_norm) == (
        "qlora",
        "paged_adamw_32bit",
        64,
        ["all-linear"],
        0.3,
    )
    e = TrainConfig(preset="lora-8bit")
    assert (e.method, e.prompt_format, e.lora.target_modules) == ("lora-8bit", "alpaca-lora", ["q_proj", "v_proj"])
    for name in list_presets():  # every preset's prompt format exists
        load_prompt_format(TrainConfig(preset=name).prompt_format)


def _loss(model, batch, average: str, ga: int, num_items: int):
    from alpacakit.train.trainer import AlpacaTrainer

    class Stub:  # compute_loss without a Trainer
        loss_mode = "full"
        loss_chunk = 7
        loss_average = average
        current_gradient_accumulation_steps = ga

        class args:
            average_tokens_across_devices = False
            world_size = 1

        class meter:
            @staticmethod
            def add(*a):
                pass

    return AlpacaTrainer.compute_loss(Stub, model, dict(batch), num_items_in_batch=num_items)


def test_micro_batch_average_is_stanfords_loss_and_differs_from_the_token_average(tok):
    """Stanford (transformers of early 2023): each padded micro-batch's mean over its supervised tokens,
    divided by the accumulation steps. Ours by default: every supervised token of the step weighs the same."""
    model = make_tiny_model(tok).train()
    fmt = load_prompt_format("alpaca-stanford").bind(tok)
    rows = []
    for rec in RECORDS:
        ids, labels = stanford_preprocess(tok, fmt.build(rec["instruction"], rec["input"]), rec["output"], 512)
        rows.append({"input_ids": ids, "labels": labels})
    collate = PaddedCollator(tok.pad_token_id)
    micro = [collate(rows[:2]), collate(rows[2:])]  # one optimizer step of 2 micro-batches
    counts = [int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro]
    assert counts[0] != counts[1]  # the two averages differ only then
    with torch.no_grad():
        hf = [model(**b).loss for b in micro]  # the model's own loss: Stanford's
        ours_mb = [_loss(model, b, "micro_batch", 2, sum(counts)) for b in micro]
        ours_tok = [_loss(model, b, "tokens", 2, sum(counts)) for b in micro]
    for a, b in zip(ours_mb, hf):
        torch.testing.assert_close(a, b / 2, rtol=1e-5, atol=1e-6)
    stanford_step = (hf[0] + hf[1]) / 2
    token_step = (hf[0] * counts[0] + hf[1] * counts[1]) / sum(counts)
    torch.testing.assert_close(sum(ours_mb), stanford_step, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sum(ours_tok), token_step, rtol=1e-5, atol=1e-6)
    assert abs(float(stanford_step - token_step)) > 1e-4


def test_the_alpaca_preset_trains_end_to_end_on_cpu(tmp_path, tok):
    """Stanford's whole recipe in one process on a tiny model (padded batches, logits everywhere,
    per-micro-batch mean, bf16 autocast over fp32 weights); only the sizes are made small."""
    from alpacakit.train.recipe import train
    from alpacakit.train.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(RECORDS * 2))
    cfg = TrainConfig(
        preset="alpaca", base=str(base), data=str(data), epochs=1, effective_batch=4, batch_size=2, save_steps=50
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(cfg, output_dir=tmp_path / "model")
    finally:
        torch.set_num_threads(n)
    m = run.manifest
    assert m["method"] == "full" and m["prompt_format"] == "alpaca-stanford" and m["steps"] == 2
    assert m["base_dtype"] == "float32"  # fp32 master weights; bf16 only in autocast
    assert m["stages"][0]["accumulation"] == 2
    saved = json.loads((tmp_path / "model" / "prompt_format.json").read_text())
    assert saved["prompt_no_input"].endswith("### Response:")
    assert (tmp_path / "model" / "merged" / "model.safetensors").exists()


@pytest.mark.parametrize("preset, what", [("qlora", "method: qlora"), ("lora-8bit", "method: lora-8bit")])
def test_gpu_only_presets_name_the_cpu_alternative(tmp_path, preset, what):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from alpacakit.train.recipe import train

    data = tmp_path / "d.json"
    data.write_text(json.dumps(RECORDS))
    with pytest.raises(ConfigError) as e:
        train(TrainConfig(preset=preset, data=str(data), base=str(tmp_path / "no-base")), output_dir=tmp_path / "m")
    assert what in e.value.message and "CUDA" in e.value.message
    assert "method: lora" in e.value.hint and "alpaca-lora" in e.value.hint
    assert not (tmp_path / "m.partial").exists()  # refused before loading anything


def test_a_paged_optimizer_on_cpu_is_refused_before_loading(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from alpacakit.train.recipe import train

    data = tmp_path / "d.json"
    data.write_text(json.dumps(RECORDS))
    with pytest.raises(ConfigError, match="optim: paged_adamw_32bit needs a CUDA GPU"):
        train(
            TrainConfig(data=str(data), optim="paged_adamw_32bit", base=str(tmp_path / "no-base")),
            output_dir=tmp_path / "m",
        )
