"""Model cards: lineage, inherited licences, costs and metrics, for every model we write.

A card answers the questions a user asks before shipping a model: what made it (teacher, base,
data, seed set, with hashes), what terms it inherits, "can I use this commercially?" in one
plain sentence, what it cost, and how it scored. Everything comes from the manifests the stages
already write; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class Terms:
    component: str
    ident: str
    licence: str
    url: str
    commercial: str  # yes | conditions | no | unknown
    terms: str


@lru_cache(maxsize=1)
def _rules() -> list[dict[str, Any]]:
    text = (resources.files("alpacakit.cards") / "licences.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def terms_for(component: str, ident: str | None) -> Terms:
    ident = str(ident or "unknown")
    for rule in _rules():
        if re.search(rule["match"], ident.lower()):
            return Terms(
                component,
                ident,
                rule["licence"],
                rule.get("url", ""),
                str(rule["commercial"]),
                " ".join(str(rule.get("terms", "")).split()),
            )
    return Terms(
        component,
        ident,
        "unknown",
        "",
        "unknown",
        "alpacakit does not know this component's terms: read its licence before you ship.",
    )


def commercial_answer(terms: list[Terms]) -> str:
    """One plain sentence. The strictest component decides."""
    no = [t for t in terms if t.commercial == "no"]
    if no:
        return "No. " + "; ".join(f"the {t.component} ({t.ident}) is under {t.licence}" for t in no) + "."
    unknown = [t for t in terms if t.commercial == "unknown"]
    cond = [t for t in terms if t.commercial == "conditions"]
    if unknown:
        return (
            "Not known: check "
            + ", ".join(f"the {t.component} ({t.ident})" for t in unknown)
            + " before any commercial use"
            + (", and the conditions below." if cond else ".")
        )
    if cond:
        return "Yes, with conditions: " + " ".join(f"{t.component} ({t.licence}): {t.terms}" for t in cond)
    return "Yes: every component is under a permissive licence (keep their notices)."


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _data_manifests(model_manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The generation manifests of the training files, when they sit beside them."""
    found = []
    for f in model_manifest.get("data", []) or []:
        path = Path(f["path"] if isinstance(f, dict) else f)
        m = _read_json(path.parent / "manifest.json")
        if m and m.get("stage") == "generate":
            found.append(m)
    return found


def _fmt_sha(sha: str | None) -> str:
    return f"`{sha[:16]}…`" if sha else "n/a"


def _trained_lineage(
    manifest: dict[str, Any],
    base: dict[str, Any],
    teachers: list[str],
    gens: list[dict[str, Any]],
    data_files: list[Any],
) -> list[str]:
    """The card's opening and lineage table for a model alpacakit trained (from its manifests)."""
    lines: list[str] = []
    method = manifest.get("method", "?")
    lines += [
        f"A student model: **{base.get('ref', 'unknown base')}** fine-tuned ({method}) on instruction data"
        + (f" written by **{', '.join(teachers)}**." if teachers else "."),
        f"Prompt format: `{manifest.get('prompt_format', 'unknown')}` (saved beside the weights and used by "
        "every alpacakit stage).",
        "",
    ]
    lines += ["## Lineage", "", "| what | value |", "|---|---|"]
    lines.append(
        f"| base model | {base.get('ref', '?')} ({base.get('source', '?')}), sha256 {_fmt_sha(base.get('gguf_sha256'))} |"
    )
    for t in teachers:
        lines.append(f"| teacher | {t} |")
    for g in gens:
        seeds = (g.get("inputs") or {}).get("seeds") or {}
        prompts = (g.get("inputs") or {}).get("prompts") or {}
        if seeds:
            lines.append(
                f"| seed tasks | {Path(seeds.get('path', '?')).name} ({seeds.get('count', '?')} tasks), "
                f"sha256 {_fmt_sha(seeds.get('sha256'))} |"
            )
        if prompts:
            lines.append(
                f"| prompts answered | {Path(prompts.get('path', '?')).name}, sha256 {_fmt_sha(prompts.get('sha256'))} |"
            )
    for f in data_files:
        if isinstance(f, dict):
            lines.append(
                f"| training data | {f.get('path')} ({f.get('records', f.get('count', '?'))} records), "
                f"sha256 {_fmt_sha(f.get('sha256'))} |"
            )
        else:
            lines.append(f"| training data | {f} |")
    lines.append(
        f"| training | {manifest.get('steps', '?')} steps, final loss {manifest.get('final_train_loss', '?')} |"
    )
    return lines


def build_card(
    model_dir: str | Path,
    *,
    export: dict[str, Any] | list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Markdown for a trained model folder (and, with `export`, for the GGUF files made from it:
    one sidecar dict or a list of them, as `export_gguf` writes)."""
    model_dir = Path(model_dir)
    exports = [export] if isinstance(export, dict) else list(export or [])
    manifest = _read_json(model_dir / "manifest.json") or {}
    base = manifest.get("base") or {}
    data_files = manifest.get("data") or []
    gens = _data_manifests(manifest)
    teachers = sorted({(g.get("config", {}).get("teacher", {}) or {}).get("model", "unknown") for g in gens})
    name = ", ".join(e.get("file", "?") for e in exports) if exports else model_dir.name

    if not manifest:
        # Not an alpacakit training output (a folder from elsewhere, exported as is): its name is
        # whatever its config says, and its own terms are the only ones it inherits.
        config = _read_json(model_dir / "config.json") or {}
        ident = config.get("_name_or_path") or config.get("_model_name_or_path") or model_dir.name
        terms = [terms_for("model", ident)]
        lines = [
            f"# Model card: {name}",
            "",
            f"**{ident}** ({config.get('model_type', 'unknown architecture')}), exported as is from "
            f"`{model_dir}`: alpacakit did not train it, so its lineage is what that folder says.",
            "",
            "## Lineage",
            "",
            "| what | value |",
            "|---|---|",
            f"| source folder | {model_dir} |",
        ]
    else:
        terms = [terms_for("base model", base.get("ref") or base.get("path"))]
        terms += [terms_for("teacher", t) for t in teachers]
        if not gens:
            terms += [terms_for("training data", (f.get("path") if isinstance(f, dict) else f)) for f in data_files]
        lines = [f"# Model card: {name}", ""] + _trained_lineage(manifest, base, teachers, gens, data_files)
    for e in exports:
        lines.append(
            f"| export | {e.get('file')} ({e.get('quant')}, {(e.get('size_bytes') or 0) / 1e6:.0f} MB), "
            f"sha256 {_fmt_sha(e.get('sha256'))} |"
        )
    lines += ["", "## Licences and terms it inherits", ""]
    for t in terms:
        link = f" ({t.url})" if t.url else ""
        lines.append(f"- **{t.component}** `{t.ident}`: {t.licence}{link}. {t.terms}")
    lines += [
        "",
        "## Can I use this commercially?",
        "",
        commercial_answer(terms),
        "",
        "_This is a summary of the components' published terms, not legal advice._",
        "",
    ]
    lines += ["## Costs", ""]
    for g in gens:
        c = g.get("counts") or {}
        lines.append(
            f"- data: {c.get('kept', '?')} examples kept of {c.get('kept', 0) + c.get('discarded', 0)} parsed, "
            f"{c.get('requests', '?')} teacher requests, "
            f"{c.get('prompt_tokens', 0) + c.get('completion_tokens', 0):,} tokens, ${c.get('cost_usd', 0):.4f}, "
            f"{g.get('wall_seconds', '?')} s"
        )
    dur = (manifest.get("durations_s") or {}).get("total")
    if dur is not None:
        lines.append(f"- training: {dur} s wall clock ({manifest.get('world_size', 1)} process(es))")
    if not gens and dur is None:
        lines.append("- not recorded")
    lines += ["", "## Metrics", ""]
    metrics = dict(metrics or {})
    for e in exports:
        v = e.get("verification") or {}
        if v.get("top1_agreement") is not None:
            metrics[f"{e.get('file')}: greedy top-1 agreement with the Hugging Face model"] = (
                f"{v['top1_agreement']:.1%} over {v.get('positions', '?')} positions"
            )
    if metrics:
        for k, v in metrics.items():
            lines.append(f"- {k}: {v}")
    else:
        lines.append("- none yet: run `alpacakit eval pairwise`, `alpacakit eval bench` and `alpacakit report`.")
    lines += [
        "",
        "## Limitations",
        "",
        "Imitation models learn their teacher's *style* much faster than its *knowledge* (Gudibande et al., "
        '"The False Promise of Imitating Proprietary LLMs", 2023): judge this model on targeted capability '
        "benchmarks, not on how fluent it sounds. It was released without a safety filter; `alpacakit serve "
        "--safety` adds one.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(model_dir: str | Path, out: str | Path | None = None, **kwargs: Any) -> Path:
    from alpacakit.io import atomic_write_text

    out = Path(out) if out else Path(model_dir) / CARD
    atomic_write_text(out, build_card(model_dir, **kwargs))
    return out
