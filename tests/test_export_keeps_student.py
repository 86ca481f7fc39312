"""The default export keeps what training taught.

The quickstart's student is LoRA-trained on a base that ships as a q4_k_m GGUF. A plain
q4_k_m export re-quantises the small LoRA delta away (measured on the real student: 83.8% top-1
agreement, and answers like the base's). The default (`--quant auto`) copies the base GGUF's
own tensors where training left them unchanged and writes the changed ones q8_0. Here the same
path runs end to end on a tiny model built from a config: base folder -> q4_k_m GGUF (the
"shipped" base) -> LoRA training on that GGUF -> default export -> greedy answers in llama.cpp,
which must be the trained student's and not the base's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("peft")

# instruction -> the one-word answer the student must learn (words from the tiny corpus)
LESSONS = {
    "Name the colour of the sky.": "blue",
    "What do cats drink?": "milk",
    "Say a greeting.": "hello",
    "Which animal barks?": "dog",
}


def _greedy(llm, prompt: str, n: int = 6) -> list[int]:
    llm.reset()
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        if tok == llm.token_eos() or len(out) >= n:
            break
        out.append(tok)
    return out


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
):
    import os

    from alpacakit.export.gguf import export_gguf
    from alpacakit.train.config import load_train_config
    from alpacakit.train.recipe import train
    from alpacakit.train.tiny import make_tiny_model, make_tiny_tokenizer

    root = tmp_path_factory.mktemp("keep")
    os.environ["ALPACAKIT_CACHE"] = str(root / "cache")  # the dequantised base goes to a private cache
    tok = make_tiny_tokenizer()
    # transformers' GGUF reader adds <|endoftext|> to a byte-level BPE vocabulary that lacks it;
    # give the tiny tokenizer one, as real BPE vocabularies have, so the vocabulary round-trips
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    base_dir = root / "base-hf"
    make_tiny_model(tok, arch="llama", hidden=256, layers=2).save_pretrained(base_dir)  # 256: rows fit q4_K blocks
    tok.save_pretrained(base_dir)
    base_gguf = export_gguf(base_dir, root / "base-q4_k_m.gguf", "q4_k_m").path
    data = root / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": q, "input": "", "output": a}) + "\n"
            for _ in range(6)
            for q, a in LESSONS.items()
        )
    )
    cfg = load_train_config(
        None,
        [
            "lr=0.003",
            "epochs=20",
            "max_length=256",
            "batch_size=4",
            "grad_accum=1",
            "precision=fp32",
            "save_steps=1000",
            "lora.dropout=0.0",
            "lora.r=16",
            "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        ],
        {"train": {"preset": "cpu-quick", "data": str(data), "base": str(base_gguf)}},
    ).train
    model = train(cfg, output_dir=root / "model").output_dir
    yield root, Path(model), Path(base_gguf)
    os.environ.pop("ALPACAKIT_CACHE", None)


@pytest.mark.slow
def test_the_default_export_copies_the_base_and_keeps_the_trained_answers(trained):
    from llama_cpp import Llama

    from alpacakit.export.gguf import export_gguf
    from alpacakit.prompting import PromptFormat

    root, model, base_gguf = trained
    res = export_gguf(model, root / "student.gguf", "auto", verify=True, min_agreement=0.95)
    assert res.quant == "delta-f16"
    assert any("copied as stored from the base" in n for n in res.notes)
    v = res.verification
    assert v["top1_agreement"] >= 0.95 and v["next_token_agreement"] >= 0.95

    fmt = PromptFormat.from_model_dir(model)
    student = Llama(str(res.path), n_ctx=256, verbose=False, seed=0)
    base = Llama(str(base_gguf), n_ctx=256, verbose=False, seed=0)
    try:
        hf_answers, gguf_answers, base_answers = [], [], []
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from alpacakit.train.base_model import resolve_base

        hf = (
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(resolve_base(str(base_gguf)).path), model / "adapter"
            )
            .merge_and_unload()
            .eval()
        )
        for q in LESSONS:
            prompt = fmt.build(q, "")
            ids = student.tokenize(prompt.encode(), add_bos=True, special=True)
            with torch.no_grad():
                out = hf.generate(
                    torch.tensor([ids]),
                    max_new_tokens=6,
                    do_sample=False,
                    eos_token_id=student.token_eos(),
                    pad_token_id=0,
                )
            hf_ids = out[0, len(ids) :].tolist()
            hf_answers.append(
                [t for t in hf_ids[: hf_ids.index(student.token_eos())]] if student.token_eos() in hf_ids else hf_ids
            )
            gguf_answers.append(_greedy(student, prompt))
            base_answers.append(_greedy(base, prompt))
        # the exported file answers as the trained student does, token for token ...
        assert gguf_answers == hf_answers
        # ... and training changed those answers: the student is not the base
        assert gguf_answers != base_answers
        texts = [student.detokenize(a).decode().strip() for a in gguf_answers]
        assert sum(t == a for t, a in zip(texts, LESSONS.values())) >= 3, (texts, gguf_answers, base_answers)
    finally:
        student.close()
        base.close()


def test_auto_falls_back_to_q8_0_without_a_gguf_base(tmp_path):
    from alpacakit.export.gguf_delta import resolve_quant
    from alpacakit.train.tiny import make_tiny_base

    folder = make_tiny_base(tmp_path / "plain")
    assert resolve_quant("auto", folder) == "q8_0"
    from alpacakit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the GGUF file"):
        resolve_quant("delta-q8_0", folder)


def test_q4_k_m_loses_what_the_default_keeps(trained):
    """The figure behind the choice: re-quantising everything to q4_k_m agrees less with the
    trained model than the default export does."""
    from alpacakit.export.gguf import ExportError, export_gguf

    root, model, _ = trained
    keep = export_gguf(model, root / "auto.gguf", "auto", verify=True).verification
    q4 = export_gguf(model, root / "q4.gguf", "q4_k_m", verify=True).verification
    assert keep["top1_agreement"] > q4["top1_agreement"]
    with pytest.raises(ExportError, match="does not reproduce the trained model"):
        export_gguf(model, root / "q4b.gguf", "q4_k_m", verify=True, min_agreement=0.999)
