"""Answer-mode curation drops refusals, boilerplate, empty, truncated and duplicate answers."""

import subprocess
import sys

from alpacakit.curate.clean import AnswerCleaner
from alpacakit.io import iter_jsonl, write_jsonl


def rec(output, instruction="Name a prime number."):
    return {"instruction": instruction, "input": "", "output": output}


def test_reasons():
    c = AnswerCleaner()
    assert c.reason(rec("7")) is None
    assert c.reason(rec("7")) == "exact_duplicate"
    assert c.reason(rec("   ")) == "empty_output"
    assert c.reason(rec("Eleven"), "length") == "truncated"
    assert c.reason(rec("As an AI language model, I cannot have favourites.")) == "refusal"
    assert c.reason(rec("I'm sorry, but I can't help with that.")) == "refusal"
    assert c.reason(rec("My knowledge cutoff is 2021, but 13 is prime.")) == "boilerplate"
    assert c.reason(rec("Thirteen is prime; as an aside, AI is a broad field.")) is None


def test_clean_cli_counts_reasons(tmp_path):
    src = tmp_path / "answers.jsonl"
    write_jsonl(src, [rec("2"), rec("2"), rec("As an AI model I won't."), rec("", "Say nothing at all.")])
    out, dropped = tmp_path / "clean.jsonl", tmp_path / "dropped.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "curate",
            "clean",
            str(src),
            "-o",
            str(out),
            "--discards",
            str(dropped),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "kept 1" in r.stdout and "exact_duplicate 1" in r.stdout and "refusal 1" in r.stdout
    assert [o["output"] for _, o in iter_jsonl(out)] == ["2"]
    assert sorted(o["reason"] for _, o in iter_jsonl(dropped)) == ["empty_output", "exact_duplicate", "refusal"]
