"""What is in an instruction dataset, at a glance: size, inputs, lengths, the mix of task kinds.

Self-instruct with a small teacher drifts (a code model writes code tasks, a chat model writes
"What is..." questions, nobody writes inputs): these numbers show the drift before a GPU hour is
spent on it. Task kinds are regexes in `data/task_kinds.yaml` (first match wins): a heuristic
for the mix, not a classifier.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _kinds(path: str | Path | None = None) -> list[tuple[str, re.Pattern[str], re.Pattern[str] | None]]:
    from alpacakit.settings import load_yaml

    raw = load_yaml(Path(path) if path else Path(__file__).with_name("data") / "task_kinds.yaml")
    out = []
    for name, spec in raw.items():
        out.append(
            (
                name,
                re.compile(spec["instruction"], re.IGNORECASE),
                re.compile(spec["output"], re.IGNORECASE) if spec.get("output") else None,
            )
        )
    return out


def task_kind(record: dict[str, Any], kinds: list[tuple[str, re.Pattern[str], re.Pattern[str] | None]]) -> str:
    instruction, output = str(record.get("instruction", "")), str(record.get("output", ""))
    for name, pattern, output_pattern in kinds:
        if pattern.search(instruction) or (output_pattern is not None and output_pattern.search(output)):
            return name
    return "other"


@dataclass
class DataStats:
    n: int = 0
    with_input: int = 0
    words: dict[str, list[int]] = field(default_factory=lambda: {"instruction": [], "input": [], "output": []})
    kinds: Counter = field(default_factory=Counter)
    first_words: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        def mean(xs: list[int]) -> float:
            return round(sum(xs) / len(xs), 1) if xs else 0.0

        return {
            "examples": self.n,
            "with_input": self.with_input,
            "with_input_fraction": round(self.with_input / self.n, 3) if self.n else 0.0,
            "mean_words": {k: mean(v) for k, v in self.words.items()},
            "kinds": dict(self.kinds.most_common()),
            "kind_fractions": {k: round(v / self.n, 3) for k, v in self.kinds.most_common()} if self.n else {},
            "top_first_words": dict(self.first_words.most_common(10)),
        }

    def lines(self) -> list[str]:
        d = self.as_dict()
        out = [
            f"{d['examples']} examples; {d['with_input']} with an input ({d['with_input_fraction']:.0%})",
            "mean words: " + ", ".join(f"{k} {v}" for k, v in d["mean_words"].items()),
            "task kinds: " + ", ".join(f"{k} {v} ({d['kind_fractions'][k]:.0%})" for k, v in d["kinds"].items()),
            "first words: " + ", ".join(f"{k} {v}" for k, v in d["top_first_words"].items()),
        ]
        return out


def data_stats(records: list[dict[str, Any]], kinds_file: str | Path | None = None) -> DataStats:
    kinds = _kinds(kinds_file)
    st = DataStats()
    for r in records:
        st.n += 1
        if str(r.get("input", "") or "").strip():
            st.with_input += 1
        for key in st.words:
            st.words[key].append(len(str(r.get(key, "") or "").split()))
        st.kinds[task_kind(r, kinds)] += 1
        first = str(r.get("instruction", "")).split()[:1]
        if first:
            st.first_words[first[0].strip(".,:;!?\"'").lower()] += 1
    return st
