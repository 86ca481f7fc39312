"""The run folder (`RunDir`), typed manifests and the quickstart's settings overlay.

Manifests are read back from what real stages write (curate on a small JSONL, generate against
the scripted OpenAI server); the quickstart is only resolved, never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAIServer
from test_generate import config as generate_config
from test_generate import responder, write_seeds

from alpacakit.errors import ConfigError, DataError
from alpacakit.manifest import (
    BenchManifest,
    CurateManifest,
    GenerateManifest,
    PairwiseManifest,
    TrainManifest,
    read_manifest,
    validated,
)
from alpacakit.rundir import RunDir, model_label, outputs_label


def test_the_layout_is_one_set_of_names(tmp_path):
    rd = RunDir(tmp_path / "runs" / "demo")
    assert RunDir.default() == RunDir(Path("runs/default")) and RunDir.default("x").root == Path("runs/x")
    assert [p.name for p in (rd.data, rd.model, rd.eval, rd.export, rd.report)] == [
        "data",
        "model",
        "eval",
        "export",
        "report",
    ]
    assert rd.examples == rd.data / "examples.jsonl" and rd.train_file.name == "train.jsonl"
    assert rd.heldout_file.name == "heldout.jsonl" and rd.name == "demo"
    assert rd.gguf() == rd.export / "model.gguf" and rd.gguf("q8_0") == rd.export / "model-q8_0.gguf"
    assert rd.outputs("student") == rd.eval / "outputs-student.json"
    assert rd.pairwise("student", "base") == rd.eval / "pairwise-student-vs-base.json"
    assert rd.manifest("generate") == rd.data / "manifest.json"
    assert rd.manifest("train") == rd.model / "manifest.json"
    assert rd.manifest("export", "f16") == rd.export / "model-f16.gguf.json"
    assert rd.manifest("eval-generate", "base") == rd.eval / "outputs-base.work" / "manifest.json"
    assert rd.manifest("eval-bench", "teacher") == rd.bench("teacher")
    with pytest.raises(ValueError):
        rd.manifest("eval-generate")
    assert rd.labels() == [] and rd.pairwise_files() == []  # nothing there yet: no error


@pytest.mark.parametrize("label", ["student", "gpt-4o-mini", "qwen2.5-coder-1.5b", "a.b-c.d", "x-q4_k_m"])
def test_an_outputs_label_round_trips(tmp_path, label):
    rd = RunDir(tmp_path)
    assert outputs_label(rd.outputs(label)) == label
    rd.eval.mkdir(exist_ok=True)
    rd.outputs(label).write_text("[]")
    (rd.eval / "pairwise-a-vs-b.json").write_text("{}")
    (rd.eval / "outputs-.json").write_text("[]")  # no label: not listed
    assert rd.labels() == [label]


def test_files_not_named_for_a_label_have_none():
    assert outputs_label("eval/student.json") is None and outputs_label("outputs-.json") is None
    assert outputs_label(Path("x/outputs-a-b.jsonl")) == "a-b"


def test_a_model_is_named_after_its_run_folder():
    assert model_label("openai:gpt-4o-mini") == "gpt-4o-mini"
    assert model_label("runs/demo/model") == "demo" and model_label("runs/demo/model/") == "demo"
    assert model_label("runs/demo/model/merged") == "demo" and model_label("runs/demo/adapter") == "demo"
    assert model_label("runs/demo/merged") == "demo"
    assert model_label("/x/student-q4_k_m.gguf") == "student-q4_k_m"
    assert model_label("gemma-3-270m") == "gemma-3-270m"


def test_eval_names_systems_by_the_same_two_rules(tmp_path):
    from alpacakit.evaluate.evalsets import load_outputs
    from alpacakit.evaluate.outputs import system_name

    assert system_name("runs/demo/model/merged") == model_label("runs/demo/model/merged") == "demo"
    path = RunDir(tmp_path).outputs("qwen2.5-coder-1.5b")
    path.parent.mkdir()
    path.write_text(json.dumps([{"instruction": "i", "output": "o"}]))  # no generator: the file names it
    assert load_outputs(path)[0]["generator"] == "qwen2.5-coder-1.5b"


def _small_jsonl(path: Path, n: int = 12) -> Path:
    rows = [
        {"instruction": f"Describe the colour number {i} of zqx{i} plainly.", "input": "", "output": f"It is {i}."}
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_curate_stage_writes_a_typed_manifest(tmp_path):
    from alpacakit.config import AlpacakitConfig
    from alpacakit.curate import stage

    rd = RunDir(tmp_path / "run")
    _small_jsonl(rd.examples)
    res = stage.run(AlpacakitConfig().curate, rd, heldout=2)
    m = read_manifest(rd.manifest("curate"))
    assert isinstance(m, CurateManifest) and m == res.manifest
    assert m.n_examples == 12 and m.n_heldout == 2 and m.n_train == 12 - m.n_contaminated - 2
    assert sum(1 for _ in rd.heldout_file.open()) == 2 and sum(1 for _ in rd.train_file.open()) == m.n_train
    assert res.complete and "held out" in res.summary


def test_a_real_generation_reads_back_as_a_generate_manifest(tmp_path):
    from alpacakit.generate import stage

    rd = RunDir(tmp_path / "run")
    with FakeOpenAIServer() as server:
        server.responder = responder(3)
        cfg = generate_config(server, write_seeds(tmp_path / "seeds.jsonl"), num=4)
        res = stage.run(cfg, rd, show_progress=False)
    assert res.status == "complete" and isinstance(res.manifest, GenerateManifest)
    m = read_manifest(rd.manifest("generate"))
    assert isinstance(m, GenerateManifest) and m.counts.kept >= 4 and m.status == "complete"
    assert m.config["generate"]["num"] == 4 and "discards_by_reason" in m.counts.extras()
    assert validated(json.loads(rd.manifest("generate").read_text()))["stage"] == "generate"


def test_manifests_dispatch_on_their_key_or_their_place(tmp_path):
    rd = RunDir(tmp_path)
    for path, data in (
        (rd.manifest("train"), {"kind": "alpacakit.model", "complete": True, "steps": 3, "base": {"ref": "b"}}),
        (rd.pairwise("student", "base"), {"model": "student", "baseline": "base", "metrics": {"win_rate": 50}}),
        (rd.bench("base"), {"system": "base", "tasks": {"t": {"accuracy": 0.5}}}),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    assert isinstance(read_manifest(rd.manifest("train")), TrainManifest)
    assert isinstance(read_manifest(rd.pairwise("student", "base")), PairwiseManifest)
    assert isinstance(read_manifest(rd.bench("base")), BenchManifest)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(DataError, match="not a manifest"):
        read_manifest(tmp_path / "other.json")
    with pytest.raises(DataError, match="TrainManifest"):
        validated({"kind": "alpacakit.model", "steps": "many"})


def test_the_report_finds_everything_through_the_run_folder(tmp_path):
    from alpacakit.evaluate.report import collect

    rd = RunDir(tmp_path / "runs" / "demo")
    rd.eval.mkdir(parents=True)
    for label in ("base", "student", "qwen2.5-coder-1.5b"):
        rd.outputs(label).write_text(json.dumps([{"instruction": "i", "output": "o", "generator": label}]))
    rd.pairwise("student", "base").write_text(json.dumps({"model": "student", "baseline": "base", "metrics": {}}))
    rd.bench("base").write_text(json.dumps({"system": "base", "tasks": {}}))
    rd.manifest("generate").parent.mkdir(parents=True)
    rd.manifest("generate").write_text(json.dumps({"stage": "generate", "counts": {"kept": 7}}))
    found = collect(rd)
    assert sorted(found["outputs"]) == ["base", "qwen2.5-coder-1.5b", "student"]
    assert [p["_file"] for p in found["pairwise"]] == ["pairwise-student-vs-base.json"]
    assert list(found["bench"]) == ["base"] and found["data_manifest"].counts.kept == 7
    assert found["train_manifest"] is None and found["problems"] == []


def test_the_quickstart_profile_is_an_overlay_on_alpacakit_yaml(tmp_path):
    from alpacakit.quickstart import load_profile

    yaml_file = tmp_path / "alpacakit.yaml"
    yaml_file.write_text(
        "generate:\n  num: 30\nteacher:\n  temperature: 0.5\neval:\n  limit: 5\nquickstart:\n  heldout: 3\n"
    )
    s = load_profile("tiny", ["generate.num=50", "quickstart.bench_limit=2"], yaml_file)
    assert s.config.generate.num == 50  # --set over the yaml over the profile (8)
    assert s.config.eval.limit == 5 and s.quickstart.heldout == 3  # the yaml over the profile
    assert s.quickstart.bench_limit == 2 and s.quickstart.follow_limit == 24  # the profile where nothing else says
    assert s.config.teacher.model == "smollm2-135m-instruct" and s.config.teacher.max_tokens == 384
    assert s.config.teacher.temperature == 0.5  # merged into the profile's teacher section, not replacing it
    assert s.config.train.epochs == 1 and s.config.train.preset == "cpu-quick"
    assert s.config.eval.system.max_tokens == 96 and s.config.serve == type(s.config.serve)()  # defaults below
    assert s.dump()["generate"]["num"] == 50 and s.dump()["quickstart"]["min_agreement"] == 0.95
    with pytest.raises(ConfigError, match="eval_limit"):
        load_profile("tiny", ["quickstart.eval_limit=3"])  # the old names are gone: eval.limit
