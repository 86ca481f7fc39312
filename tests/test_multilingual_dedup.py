"""Dedup for non-English data: rouge_score's default tokenizer reads Chinese, Japanese, Russian
or Arabic as zero tokens, so near-duplicates all survive; `--tokenizer multilingual` sees them,
exactly (the bulk path, the streaming deduper and a direct LCS agree) and the English default
is unchanged."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import alpacakit.curate.dedup as dedup
from alpacakit.curate.dedup import dedup_instructions
from alpacakit.curate.rouge import RougeDeduper, f_measure, lcs_length, tokenize, tokenize_multilingual

ZH = ["请写一首关于大海的短诗。", "请写一首关于大海的小诗。", "解释光合作用的过程。", "列出三种常见的水果。"]
RU = [
    "Напишите короткое стихотворение о море.",
    "Напишите короткое стихотворение о море!",
    "Объясните, как работает фотосинтез.",
]
JA = [
    "海についての短い詩を書いてください。",
    "海についての短い詩を書いて下さい。",
    "光合成の仕組みを説明してください。",
]


def test_the_default_tokenizer_sees_nothing_in_these_scripts_and_multilingual_does() -> None:
    assert tokenize(ZH[0]) == [] and tokenize(RU[0]) == []
    assert tokenize_multilingual(ZH[0])[:3] == ["请", "写", "一"]
    assert tokenize_multilingual(RU[0]) == ["напишите", "короткое", "стихотворение", "о", "море"]
    assert tokenize_multilingual("Ｃafé NIÑO 42_x") == ["café", "niño", "42", "x"]  # NFKC, casefold, no underscores


@pytest.mark.parametrize("texts", [ZH, RU, JA])
def test_multilingual_dedup_drops_the_near_duplicate_the_default_keeps(texts: list[str]) -> None:
    assert dedup_instructions(texts) == [True] * len(texts)  # default: every text is empty to it
    keep = dedup_instructions(texts, tokenizer="multilingual")
    assert keep[0] and not keep[1] and keep[2]


@pytest.mark.parametrize("compiled_from", [1 << 60, 0], ids=["numpy", "compiled"])
def test_bulk_and_streaming_and_direct_lcs_agree_on_mixed_scripts(monkeypatch, compiled_from: int) -> None:
    monkeypatch.setattr(dedup, "_COMPILED_FROM", compiled_from)
    rng = random.Random(7)
    words = ["海", "诗", "写", "море", "стих", "光", "合成", "sea", "poem", "café", "42", "水果", "три"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(300)]
    bulk = dedup_instructions(texts, threshold=0.7, tokenizer="multilingual")
    d = RougeDeduper(0.7, tokenizer="multilingual")
    stream = [d.add_if_novel(t).kept for t in texts]
    assert bulk == stream
    kept_tokens: list[list[str]] = []
    direct = []
    for t in texts:
        tok = tokenize_multilingual(t)
        ok = all(f_measure(lcs_length(tok, k), len(k), len(tok)) <= 0.7 for k in kept_tokens)
        direct.append(ok)
        if ok:
            kept_tokens.append(tok)
    assert bulk == direct and 0 < sum(bulk) < len(texts)


@pytest.mark.slow
def test_the_cli_takes_the_tokenizer(tmp_path: Path) -> None:
    src = tmp_path / "zh.jsonl"
    src.write_text(
        "".join(json.dumps({"instruction": t, "output": "…"}, ensure_ascii=False) + "\n" for t in ZH), encoding="utf-8"
    )
    for tok, expect in (("rouge_score", 4), ("multilingual", 3)):
        out = tmp_path / f"out-{tok}.jsonl"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "alpacakit.cli.main",
                "curate",
                "dedup",
                str(src),
                "-o",
                str(out),
                "--tokenizer",
                tok,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert len(out.read_text(encoding="utf-8").splitlines()) == expect
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "curate",
            "dedup",
            str(src),
            "-o",
            str(tmp_path / "x.jsonl"),
            "--tokenizer",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown tokenizer 'nope'" in bad.stderr


def test_generation_in_multilingual_mode_keeps_non_ascii_starts() -> None:
    from alpacakit.config import load_config
    from alpacakit.generate.seeds import SeedTask
    from alpacakit.generate.self_instruct import SelfInstructProcessor

    cfg = load_config(None, ["generate.tokenizer=multilingual"], None)
    seeds = [SeedTask(id="s0", instruction=ZH[2], input="", output="…")]
    proc = SelfInstructProcessor(seeds, cfg, "t")
    assert proc.dedup.tokenizer == "multilingual" and proc.filter.config.drop_non_ascii_start is False
    default = SelfInstructProcessor(seeds, load_config(None, None, None), "t")
    assert default.dedup.tokenizer == "rouge_score" and default.filter.config.drop_non_ascii_start is True
