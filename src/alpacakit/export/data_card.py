"""A data card next to every exported dataset: where the examples came from and on what terms.

`alpacakit export alpaca` writes `FILE.card.md` beside the JSON; `export hf` writes `README.md`
inside the dataset folder (the name the Hugging Face hub shows as the card). The card is built
from the `manifest.json` that `alpacakit generate` leaves beside `examples.jsonl`: the teacher
(reference, source, sha256, licence), the terms its output comes with
(`export/data/teacher_terms.yaml`), the seed file's hash, the filters and dedup settings, and
the counts (requests, kept, discarded by reason, tokens, cost). Without a manifest the card says
the provenance is unknown instead of guessing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@lru_cache(maxsize=1)
def _terms_table() -> list[dict[str, Any]]:
    text = resources.files("alpacakit.export").joinpath("data", "teacher_terms.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def teacher_terms(ref: str, licence: str | None) -> dict[str, Any]:
    """{provider, terms, url} for a teacher reference (a local model: its licence)."""
    for row in _terms_table():
        if any(ref.startswith(m) for m in row["match"]):
            return {"provider": row["provider"], "terms": " ".join(row["terms"].split()), "url": row.get("url")}
    if licence:
        return {"provider": "a local model", "terms": f"The model's licence: {licence}.", "url": None}
    return {
        "provider": "unknown",
        "terms": "Unknown: check the licence of the model that wrote these examples.",
        "url": None,
    }


def _manifest_for(examples: Path) -> dict[str, Any] | None:
    m = examples.parent / "manifest.json"
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def build_card(
    examples: str | Path, exported: str | Path, n_records: int, fmt: str, extra: dict[str, Any] | None = None
) -> str:
    """The card's Markdown (YAML front matter first, as dataset cards on the hub carry)."""
    from alpacakit import __version__
    from alpacakit.io import sha256_file

    examples, exported = Path(examples), Path(exported)
    m = _manifest_for(examples)
    teacher = (m or {}).get("teacher") or {}
    cfg = (m or {}).get("config") or {}
    ref = (cfg.get("teacher") or {}).get("model") or teacher.get("name") or "unknown"
    terms = teacher_terms(ref, teacher.get("licence"))
    counts = (m or {}).get("counts") or {}
    gen = cfg.get("generate") or {}
    seeds = ((m or {}).get("inputs") or {}).get("seeds") or {}
    front = {
        "license": "other",
        "license_details": terms["terms"],
        "task_categories": ["text-generation"],
        "size_categories": [_size(n_records)],
        "tags": ["alpacakit", "instruction-tuning", "synthetic"],
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {exported.name}",
        "",
        f"{n_records:,} instruction-following examples ({fmt}), exported by alpacakit {__version__} on "
        f"{datetime.now(UTC).date().isoformat()} from `{examples}`.",
    ]
    if exported.is_file():
        lines.append(f"sha256 of the exported file: `{sha256_file(exported)}`.")
    lines += ["", "## Who wrote them, and on what terms", ""]
    if m is None:
        lines += [
            "Provenance unknown: no `manifest.json` from `alpacakit generate` next to the examples. Record "
            "the model that wrote them and its terms here before sharing this dataset."
        ]
    else:
        lines += [
            f"- Teacher: `{ref}`" + (f" ({teacher.get('source')})" if teacher.get("source") else ""),
            *([f"- Teacher file sha256: `{teacher['sha256']}`"] if teacher.get("sha256") else []),
            *([f"- Upstream model: {teacher['upstream']}"] if teacher.get("upstream") else []),
            f"- Terms ({terms['provider']}): {terms['terms']}" + (f" See {terms['url']}." if terms["url"] else ""),
            "- Check the provider's current terms before using this data, above all commercially.",
        ]
    if m is not None:
        mode = ((m.get("fingerprint") or {}).get("mode")) or (
            "answer" if (m.get("inputs") or {}).get("prompts") else "self-instruct"
        )
        lines += ["", "## How they were made", "", f"- Method: {mode}"]
        if seeds:
            lines.append(
                f"- Seed tasks: {seeds.get('count')} from `{Path(str(seeds.get('path'))).name}` "
                f"(sha256 `{seeds.get('sha256')}`)"
            )
        if gen:
            lines.append(
                f"- Dedup: ROUGE-L F <= {gen.get('similarity_threshold')} against every earlier kept "
                f"instruction (tokenizer: {gen.get('tokenizer', 'rouge_score')})"
            )
            f = gen.get("filters") or {}
            if f:
                lines.append(
                    "- Filters: "
                    + ", ".join(f"{k}={v}" for k, v in f.items() if not isinstance(v, list))
                    + (f", {len(f.get('blacklist') or [])} blacklisted words" if f.get("blacklist") else "")
                )
        if counts:
            reasons = ", ".join(f"{k} {v}" for k, v in (counts.get("discards_by_reason") or {}).items()) or "none"
            lines += [
                f"- Requests: {counts.get('requests', 0):,}; kept {counts.get('kept', 0):,}; "
                f"discarded {counts.get('discarded', 0):,} ({reasons})",
                f"- Tokens: {counts.get('prompt_tokens', 0):,} prompt, {counts.get('completion_tokens', 0):,} "
                f"completion; cost ${float(counts.get('cost_usd', 0.0)):.4f}"
                + (f" ({m['price']})" if m.get("price") else ""),
            ]
        lines.append(f"- Made by alpacakit {m.get('alpacakit_version', '?')}, status {m.get('status', '?')}")
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    lines += [
        "",
        "## Known limits",
        "",
        "Synthetic data copies its teacher's style more readily than its knowledge (Gudibande et al., 2023): "
        "measure a student trained on it with targeted benchmarks (`alpacakit eval bench`), not only with "
        "pairwise preference. Outputs were filtered, not checked for truth.",
        "",
    ]
    return "\n".join(lines)


def _size(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def write_card(
    examples: str | Path, exported: str | Path, n_records: int, fmt: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write the card beside (file) or inside (folder) `exported`; returns its path."""
    from alpacakit.io import atomic_write_text

    exported = Path(exported)
    path = exported / "README.md" if exported.is_dir() else exported.with_name(exported.name + ".card.md")
    atomic_write_text(path, build_card(examples, exported, n_records, fmt, extra))
    return path
