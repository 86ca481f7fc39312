"""Typed manifests: what each stage records about what it did, read back as one model per stage.

Why: the report, the model card and the quickstart each read these files; as untyped dicts a
renamed key is found only when a report comes out with "?" in it. The models describe what
the writers write today. Fields a reader relies on are typed; the rest of a stage's free-form
record is kept as extra fields (`extra="allow"`), so validating never loses anything and an
older file with fewer keys still reads.

`read_manifest(path)` picks the model from the file's `stage`, `kind` or `format` key, else
from where the file lies in the run folder (`rundir.RunDir.manifest`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alpacakit.errors import DataError


class Record(BaseModel):
    """A manifest or a part of one: typed where read, open to whatever else the writer adds."""

    model_config = ConfigDict(extra="allow")

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Counts(Record):
    """A journaled job's totals (`JobTotals.as_dict`)."""

    requests: int = 0
    kept: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    teacher_seconds: float = 0.0


class JobManifest(Record):
    """What every journaled job (generate, eval generate, judging) writes in its folder."""

    stage: str
    status: str | None = None
    alpacakit_version: str | None = None
    fingerprint: dict[str, Any] = {}
    counts: Counts = Field(default_factory=Counts)
    created_at: float | None = None
    updated_at: float | None = None
    wall_seconds: float | None = None
    wall_seconds_this_run: float | None = None


class GenerateManifest(JobManifest):
    """`data/manifest.json`: the teacher, its settings and what the generation cost."""

    stage: Literal["generate"] = "generate"
    teacher: dict[str, Any] = {}
    config: dict[str, Any] = {}
    target: int | None = None


class EvalOutputsManifest(JobManifest):
    """`eval/outputs-<label>.work/manifest.json`: one system answering the eval set."""

    stage: Literal["eval-generate"] = "eval-generate"
    generator: str | None = None
    system: dict[str, Any] = {}
    eval_set: dict[str, Any] = {}
    output: str | None = None


class PairwiseJobManifest(JobManifest):
    """The judging job's own folder (`pairwise-*.work/manifest.json`)."""

    stage: Literal["eval-pairwise"] = "eval-pairwise"
    model: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    output: str | None = None


class CurateManifest(Record):
    """`data/curate.json`: examples -> train + held out, eval-set copies dropped."""

    stage: Literal["curate"] = "curate"
    examples: str
    train_file: str
    heldout_file: str
    n_examples: int
    n_contaminated: int
    n_heldout: int
    n_train: int
    contamination: str | None = None


class TrainManifest(Record):
    """`model/manifest.json` (train/recipe.py)."""

    kind: Literal["alpacakit.model"] = "alpacakit.model"
    complete: bool = False
    name: str | None = None
    method: str | None = None
    engine: Literal["alpacakit", "trl"] | None = None  # who ran the steps (train.engine); None: before engines
    base: dict[str, Any] = {}
    steps: int | None = None
    final_train_loss: float | None = None
    cost_usd: float | None = None
    durations_s: dict[str, Any] = {}
    data: list[dict[str, Any]] = []


class ExportManifest(Record):
    """`export/<file>.gguf.json`, the sidecar `export gguf` writes beside the file."""

    kind: Literal["alpacakit.export.gguf"] = "alpacakit.export.gguf"
    file: str
    quant: str
    size_bytes: int | None = None
    sha256: str | None = None
    verification: dict[str, Any] | None = None
    notes: list[str] = []


class PairwiseManifest(Record):
    """`eval/pairwise-<model>-vs-<baseline>.json`: the judge's verdicts and their cost."""

    model: str | None = None
    baseline: str | None = None
    status: str | None = None
    judge: dict[str, Any] = {}
    metrics: dict[str, Any]
    position_bias: dict[str, Any] = {}
    cost: dict[str, Any] = {}


class BenchManifest(Record):
    """`eval/bench-<label>.json` (format alpacakit-bench/1)."""

    format: str | None = None
    system: str | None = None
    model: str | None = None
    tasks: dict[str, dict[str, Any]]
    overall: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    items: list[dict[str, Any]] = []


Manifest = (
    GenerateManifest
    | CurateManifest
    | TrainManifest
    | ExportManifest
    | EvalOutputsManifest
    | PairwiseJobManifest
    | PairwiseManifest
    | BenchManifest
)
M = TypeVar("M", bound=Record)

BY_KEY: dict[str, type[Record]] = {
    "generate": GenerateManifest,
    "curate": CurateManifest,
    "eval-generate": EvalOutputsManifest,
    "eval-pairwise": PairwiseJobManifest,
    "alpacakit.model": TrainManifest,
    "alpacakit.export.gguf": ExportManifest,
}


def model_for(data: dict[str, Any], path: Path | None = None) -> type[Record]:
    """The model of a manifest: its own `stage`/`kind`/`format` key first, then its place."""
    for key in ("stage", "kind"):
        if isinstance(data.get(key), str) and data[key] in BY_KEY:
            return BY_KEY[data[key]]
    if str(data.get("format", "")).startswith("alpacakit-bench/"):
        return BenchManifest
    if path is not None:
        name, folder = path.name, path.parent.name
        if name.endswith(".gguf.json"):
            return ExportManifest
        if name.startswith("pairwise-"):
            return PairwiseManifest
        if name.startswith("bench-"):
            return BenchManifest
        if name == "curate.json":
            return CurateManifest
        if name == "manifest.json":
            if folder == "data":
                return GenerateManifest
            if folder == "model":
                return TrainManifest
            if folder.startswith("outputs-") and folder.endswith(".work"):
                return EvalOutputsManifest
    raise DataError(
        f"{path or 'manifest'}: not a manifest alpacakit knows (no stage/kind key, not in a run folder's place)",
        hint="pass a file a stage wrote: data/manifest.json, model/manifest.json, eval/*.json, export/*.gguf.json",
    )


def parse_manifest(data: Any, path: Path | None = None) -> Manifest:
    where = str(path or "manifest")
    if not isinstance(data, dict):
        raise DataError(f"{where}: a manifest is a JSON object, found {type(data).__name__}")
    model = model_for(data, path)
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise DataError(f"{where}: not a valid {model.__name__}: {errs}") from None


def read_manifest(path: str | Path) -> Manifest:
    """The manifest at `path`, as the model of the stage that wrote it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return parse_manifest(data, path)


def validated(data: dict[str, Any]) -> dict[str, Any]:
    """`data` unchanged, after checking it against its stage's model: a writer calls this just
    before writing, so a manifest that readers would choke on is never written."""
    parse_manifest(data)
    return data


@dataclass
class StageResult(Generic[M]):
    """What a stage entry point (`<stage>/stage.py: run`) returns: its status, a one-line
    summary, the manifest it wrote (typed) and the files it made."""

    stage: str
    status: str
    summary: str
    manifest: M | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status in ("complete", "skipped")
