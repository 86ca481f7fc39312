"""`alpacakit curate stats`: the mix of a dataset, from the CLI, on any record file."""

import json
import subprocess
import sys

from alpacakit.curate.stats import data_stats


def test_counts_inputs_lengths_and_task_kinds():
    st = data_stats(
        [
            {"instruction": "Write a Python function that reverses a list.", "input": "", "output": "def rev(x): ..."},
            {"instruction": "Classify the sentiment of this review.", "input": "Great phone!", "output": "positive"},
            {"instruction": "Calculate the area of a 3 by 4 rectangle.", "input": "", "output": "12"},
            {"instruction": "Tell me about owls.", "input": "", "output": "Owls hunt at night."},
        ]
    ).as_dict()
    assert st["examples"] == 4 and st["with_input"] == 1 and st["with_input_fraction"] == 0.25
    assert st["kinds"] == {"code": 1, "classification": 1, "maths": 1, "other": 1}
    assert st["mean_words"]["output"] == 2.2  # (3 + 1 + 1 + 4) / 4, rounded


def test_cli_prints_json_and_names_a_broken_file(tmp_path):
    good = tmp_path / "data.jsonl"
    good.write_text(json.dumps({"instruction": "Explain why the sky is blue.", "output": "Scattering."}) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "curate", "stats", str(good), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["kinds"] == {"explanation": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "output": "x"}\n{not json\n')
    r = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "curate", "stats", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and f"{bad}:2" in r.stderr
