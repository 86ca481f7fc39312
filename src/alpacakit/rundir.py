"""The run folder, defined once: `runs/NAME/{data,model,eval,export,report}`.

Why one type: every verb writes into the same layout and `alpacakit report` reads it back.
When the layout lived in the quickstart, the report's globs and three parsers of
`outputs-<label>.json`, each stage could drift from the others. Here the names are properties,
the globs are methods, and two rules live nowhere else: which label an outputs file carries
(`outputs_label`) and which name a model folder goes by (`model_label`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUNS = Path("runs")
OUTPUTS_PREFIX = "outputs-"
#: Folders named after what they hold, not after the model: the name is the folder above.
MODEL_FOLDERS = ("model", "merged", "adapter")


def outputs_label(path: str | Path) -> str | None:
    """`eval/outputs-student.json` -> 'student' (labels may hold dashes and dots); None for a
    file not named `outputs-<label>.<suffix>`."""
    stem = Path(path).stem
    if stem.startswith(OUTPUTS_PREFIX) and len(stem) > len(OUTPUTS_PREFIX):
        return stem[len(OUTPUTS_PREFIX) :]
    return None


def model_label(ref: str | Path) -> str:
    """A readable name for a model reference: `openai:gpt-4o-mini` -> 'gpt-4o-mini', a GGUF
    file -> its stem, `runs/demo/model` (or `.../model/merged`, `.../adapter`) -> 'demo',
    anything else -> its last path part."""
    ref = str(ref).strip().rstrip("/")
    if ref.startswith("openai:"):
        return ref[len("openai:") :]
    p = Path(ref)
    if p.suffix == ".gguf":
        return p.stem
    if p.name in ("merged", "adapter") and p.parent.name:
        return p.parent.name if p.parent.name != "model" else p.parent.parent.name or p.parent.name
    if p.name == "model" and p.parent.name:
        return p.parent.name
    return p.name or ref


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder; nothing here touches the disk except the listing methods."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def default(cls, name: str = "default") -> RunDir:
        """`runs/<name>`: where a verb writes when not told otherwise."""
        return cls(RUNS / name)

    # ------------------------------------------------------------------ folders

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def report(self) -> Path:
        return self.root / "report"

    # ------------------------------------------------------------------ files

    @property
    def examples(self) -> Path:
        """What `generate` keeps."""
        return self.data / "examples.jsonl"

    @property
    def train_file(self) -> Path:
        """The examples minus eval-set copies and the held-out ones: what `train` reads."""
        return self.data / "train.jsonl"

    @property
    def heldout_file(self) -> Path:
        return self.data / "heldout.jsonl"

    @property
    def contamination(self) -> Path:
        return self.eval / "contamination.json"

    @property
    def quickstart_log(self) -> Path:
        return self.root / "quickstart.json"

    def gguf(self, quant: str = "auto") -> Path:
        """The exported student: `model.gguf` for `auto` (its sidecar says what it chose),
        `model-QUANT.gguf` for a named quantization."""
        return self.export / ("model.gguf" if quant == "auto" else f"model-{quant}.gguf")

    def outputs(self, label: str) -> Path:
        return self.eval / f"{OUTPUTS_PREFIX}{label}.json"

    def pairwise(self, model: str, baseline: str) -> Path:
        return self.eval / f"pairwise-{model}-vs-{baseline}.json"

    def bench(self, label: str) -> Path:
        return self.eval / f"bench-{label}.json"

    def follow(self, label: str) -> Path:
        return self.eval / f"follow-{label}.json"

    def likelihood(self, label: str) -> Path:
        return self.eval / f"likelihood-{label}.json"

    def manifest(self, stage: str, label: str | None = None) -> Path:
        """Where `stage` records what it did: generate and curate in data/, train in model/,
        export beside the GGUF (label: the quantization), eval answers in their work folder,
        pairwise and bench results in eval/ (label: what the file is named after)."""
        if stage == "generate":
            return self.data / "manifest.json"
        if stage == "curate":
            return self.data / "curate.json"
        if stage == "train":
            return self.model / "manifest.json"
        if stage == "export":
            gguf = self.gguf(label or "auto")
            return gguf.with_name(gguf.name + ".json")
        if label is None:
            raise ValueError(f"the {stage} manifest needs a label")
        if stage == "eval-generate":
            return self.eval / f"{OUTPUTS_PREFIX}{label}.work" / "manifest.json"
        if stage in ("eval-pairwise", "eval-bench"):
            return self.eval / f"{stage.removeprefix('eval-')}-{label}.json"
        raise ValueError(f"no manifest for stage {stage!r}")

    # ------------------------------------------------------------------ what is there

    def labels(self) -> list[str]:
        """Labels of the `eval/outputs-<label>.json` present, sorted."""
        return sorted(label for p in self._eval_glob(f"{OUTPUTS_PREFIX}*.json") if (label := outputs_label(p)))

    def pairwise_files(self) -> list[Path]:
        return self._eval_glob("pairwise-*.json")

    def bench_files(self) -> list[Path]:
        return self._eval_glob("bench-*.json")

    def work_manifests(self) -> list[Path]:
        """Manifests of the eval jobs' work folders (`eval/*.work/manifest.json`)."""
        return self._eval_glob("*.work/manifest.json")

    def ggufs(self) -> list[Path]:
        return sorted(self.export.glob("*.gguf")) if self.export.is_dir() else []

    def _eval_glob(self, pattern: str) -> list[Path]:
        return sorted(self.eval.glob(pattern)) if self.eval.is_dir() else []
