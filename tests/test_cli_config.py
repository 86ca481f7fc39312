"""Every verb reads its section of alpacakit.yaml, and its flags are generated from the config fields.

Each verb is run in-process with an `alpacakit.yaml` holding a distinctive value in the verb's
section; the library function the verb calls is replaced by one that records what it was given
and stops, so no model is loaded. The help test holds `--help` to the config model: every
generated flag shows the field's description and its default from `AlpacakitConfig()`, the same
text `alpacakit config show --explain` prints.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from alpacakit.cli.main import app
from alpacakit.config import AlpacakitConfig
from alpacakit.errors import ConfigError

# Commands with nothing to configure: no --config either.
NO_SETTINGS = {"merge", "curate stats", "eval human", "eval human-export", "eval judges", "export gguf-lora"}
NO_SETTINGS |= {"export converters", "quickstart"}


class Stop(Exception):
    """Raised by a stand-in library function once it has recorded its arguments."""


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def stand_in(monkeypatch: pytest.MonkeyPatch, target: str) -> dict[str, Any]:
    """Replace `module.function` with a recorder that stops the verb; returns what it saw."""
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen["args"], seen["kwargs"] = args, kwargs
        raise Stop

    monkeypatch.setattr(target, fake)
    return seen


def write_yaml(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "alpacakit.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def stopped(r: Any) -> None:
    assert isinstance(r.exception, Stop), (r.output, r.exception)


# --------------------------------------------------------------------------- --help agrees with the model


def _commands(cmd: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if hasattr(cmd, "commands"):  # a group (typer ships its own click)
        return [c for name, sub in cmd.commands.items() for c in _commands(sub, f"{prefix} {name}".strip())]
    return [(prefix, cmd)]


ALL = _commands(typer.main.get_command(app))


def _field(dotted: str) -> tuple[Any, str]:
    """(default in AlpacakitConfig(), description) of a dotted field, walked independently of options.py."""
    node: Any = AlpacakitConfig()
    description = ""
    for name in dotted.split("."):
        description = type(node).model_fields[name].description or ""
        node = getattr(node, name)
    return node, description


@functools.cache
def _explained() -> str:
    r = run("config", "show", "--explain")
    assert r.exit_code == 0, r.output
    return r.output


def test_every_verb_with_settings_takes_config_and_set() -> None:
    names = {name for name, _ in ALL}
    assert {"generate", "train", "chat", "serve", "report", "eval bench", "export gguf"} <= names
    for name, cmd in ALL:
        opts = {o for p in cmd.params for o in p.opts}
        if name not in NO_SETTINGS:
            assert {"--config", "-c", "--set"} <= opts, name
        if name not in NO_SETTINGS | {"config show", "export alpaca"}:
            assert getattr(cmd.callback, "config_flags", None), f"{name}: no flag generated from the config"


@pytest.mark.parametrize("name,cmd", ALL, ids=[n for n, _ in ALL])
def test_help_shows_each_fields_description_and_default(name: str, cmd: Any) -> None:
    flags = getattr(cmd.callback, "config_flags", {})
    if name in NO_SETTINGS:
        assert not flags
    for param in cmd.params:
        flag = flags.get(param.name)
        if flag is None:
            continue
        default, description = _field(flag.field)
        assert param.default is None  # a flag not given leaves the file's value alone
        assert param.help.startswith(description), (name, param.opts)
        assert f"# {flag.field}: {description}" in _explained()
        shown = re.search(r"\[default: (.*)\]$", param.help)
        if default in (None, [], {}):
            assert shown is None, (name, param.opts)
        else:
            assert shown is not None, (name, param.opts)
            assert yaml.safe_load(shown.group(1)) == default, (name, param.opts)
    r = run(*name.split(), "--help")
    assert r.exit_code == 0, r.output
    for param in cmd.params:
        if param.name in flags:
            assert param.opts[0] in r.output


def test_hand_written_flag_names_still_work() -> None:
    opts = {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} for name, cmd in ALL}
    assert {"--num", "-n", "--teacher", "-t", "--concurrency", "--batch-api", "--no-batch-api"} <= opts["generate"]
    assert {"--preset", "-p", "--data", "-d", "--base", "-b", "--out", "-o", "--accelerate-config"} <= opts["train"]
    assert {"--model", "-m", "--eval-set", "-s", "--limit", "-n", "--concurrency"} <= opts["eval generate"]
    assert {"--judge", "-j", "--judge-model", "--batch-api", "--no-batch-api"} <= opts["eval pairwise"]
    assert {"--model", "-m", "--tasks", "--limit", "-n", "--threads", "--n-ctx", "--mc-score"} <= opts["eval bench"]
    assert {"--quant", "-q", "--verify", "--no-verify", "--threads", "--converter"} <= opts["export gguf"]
    assert {"--port", "-p", "--threads", "--insecure-no-key", "--allowed-host"} <= opts["serve"]
    assert {"--max-tokens", "--temperature", "--top-p", "--seed", "--stats", "--no-stats", "--n-ctx"} <= opts["chat"]
    assert {"--keep-truncated", "--patterns"} <= opts["curate clean"]
    assert {"--style-gain", "--knowledge-gain", "--base", "--student", "--teacher"} <= opts["report"]


# --------------------------------------------------------------------------- which file is read


def test_a_bad_value_names_the_yaml_file(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path, {"export": {"val_fraction": 3}})
    r = run("export", "alpaca", tmp_path / "x.jsonl", "-o", tmp_path / "y.json", "--config", cfg)
    assert isinstance(r.exception, ConfigError)
    assert str(cfg) in r.exception.message and "val_fraction" in r.exception.message


def test_a_bad_flag_value_names_the_flag_and_a_bad_file_value_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "alpacakit.yaml"
    cfg.write_text("generate:\n  filters:\n    max_words: -3\n", encoding="utf-8")
    r = run("generate", "--num", "-3", "--temperature", "-1", "--config", cfg, "-o", tmp_path / "out")
    assert isinstance(r.exception, ConfigError)
    lines = r.exception.message.splitlines()
    assert any(line.strip().startswith("--num: generate.num:") for line in lines), lines
    assert any(line.strip().startswith("--temperature: teacher.temperature:") for line in lines), lines
    assert any(line.strip().startswith(f"{cfg}:3: generate.filters.max_words:") for line in lines), lines
    assert not (tmp_path / "out").exists()  # nothing written


def test_alpacakit_yaml_in_the_working_folder_is_not_read_unless_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(tmp_path, {"generate": {"num": 7}})
    monkeypatch.chdir(tmp_path)
    r = run("config", "show")
    assert r.exit_code == 0, r.output
    assert "num: 100" in r.output and "note: ./alpacakit.yaml is not read" in r.output
    r = run("config", "show", "-c", "alpacakit.yaml")
    assert "num: 7" in r.output and "note:" not in r.output


# --------------------------------------------------------------------------- one verb at a time


def test_generate_reads_teacher_and_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.generate.runner.generate")
    cfg = write_yaml(tmp_path, {"generate": {"num": 7, "max_cost": 1.5}, "teacher": {"model": "from-yaml"}})
    stopped(run("generate", "-c", cfg, "--concurrency", 3, "--no-progress"))
    c = seen["args"][0]
    assert (c.generate.num, c.generate.max_cost, c.teacher.model) == (7, 1.5, "from-yaml")
    assert c.teacher.max_concurrency == c.generate.request_batch == 3  # one flag, two fields
    stopped(run("generate", "-c", cfg, "-n", 9, "--set", "teacher.model=from-set"))
    c = seen["args"][0]
    assert (c.generate.num, c.teacher.model) == (9, "from-set")  # flags over --set over the file


def test_curate_dedup_reads_curate(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    rows = [{"instruction": "Write a poem about the sea."}, {"instruction": "Write a poem about the sea today."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run("curate", "dedup", data, "-o", out).exit_code == 0
    assert len(out.read_text().splitlines()) == 1  # ROUGE-L F 0.92 > 0.7
    cfg = write_yaml(tmp_path, {"curate": {"threshold": 0.95}})
    r = run("curate", "dedup", data, "-o", out, "-c", cfg)
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 2


def test_curate_clean_reads_curate_refusals(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    rows = [
        {"instruction": "Name a colour.", "output": "Blue."},
        {"instruction": "Name a fruit.", "output": "An apple, crisp and sweet."},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    cfg = write_yaml(tmp_path, {"curate": {"refusals": {"min_output_chars": 10}}})
    r = run("curate", "clean", data, "-o", out, "-c", cfg)
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["instruction"] for x in out.read_text().splitlines()] == ["Name a fruit."]


def test_train_reads_train_from_argument_or_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.train.recipe.train")
    full = write_yaml(tmp_path, {"train": {"lr": 1.5e-5, "data": "d.jsonl"}})
    stopped(run("train", full))
    assert seen["args"][0].lr == 1.5e-5
    bare = tmp_path / "bare.yaml"
    bare.write_text("lr: 2.5e-5\nbase: from-yaml\n", encoding="utf-8")  # just train keys
    stopped(run("train", "--config", bare, "-o", tmp_path / "m", "--set", "max_steps=3"))
    c = seen["args"][0]
    assert (c.lr, c.base, c.max_steps, seen["kwargs"]["output_dir"]) == (2.5e-5, "from-yaml", 3, tmp_path / "m")
    r = run("train", full, "--config", bare)
    assert isinstance(r.exception, ConfigError)


def test_eval_generate_reads_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.outputs.generate_outputs")
    cfg = write_yaml(tmp_path, {"eval": {"eval_set": "mine.jsonl", "system": {"model": "m", "temperature": 0.25}}})
    stopped(run("eval", "generate", "-o", tmp_path / "o.json", "-c", cfg, "--max-tokens", 77))
    e = seen["args"][0].eval
    assert (e.eval_set, e.system.model, e.system.temperature, e.system.max_tokens) == ("mine.jsonl", "m", 0.25, 77)


def test_eval_pairwise_reads_eval_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.pairwise.judge_pairwise")
    cfg = write_yaml(tmp_path, {"eval": {"judge": {"order": "random", "seed": 5, "model": "j"}}})
    stopped(run("eval", "pairwise", tmp_path / "a.json", tmp_path / "b.json", "-c", cfg, "--seed", 6))
    j = seen["args"][2].eval.judge
    assert (j.order, j.seed, j.model) == ("random", 6, "j")


def test_eval_bench_reads_eval_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.bench.runner.run_bench")
    cfg = write_yaml(
        tmp_path,
        {"eval": {"system": {"model": "yaml-model", "n_threads": 3}, "bench": {"tasks": ["facts_mc"], "limit": 4}}},
    )
    stopped(run("eval", "bench", "-c", cfg, "--mc-score", "raw", "--no-progress"))
    (model,), kw = seen["args"], seen["kwargs"]
    assert (model, kw["tasks"], kw["limit"], kw["n_threads"], kw["mc_score"]) == (
        "yaml-model",
        ["facts_mc"],
        4,
        3,
        "raw",
    )
    assert kw["out"] == Path("runs/default/eval/bench-yaml-model.json") and kw["n_ctx"] == 2048
    stopped(run("eval", "bench", "-m", "x", "--tasks", "facts_mc,reading_qa", "--tasks", "arithmetic_qa"))
    assert seen["kwargs"]["tasks"] == ["facts_mc", "reading_qa", "arithmetic_qa"]


def test_eval_follow_reads_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.follow.run.run_follow")
    cfg = write_yaml(tmp_path, {"eval": {"limit": 5, "system": {"model": "yaml-model", "temperature": 0.9}}})
    stopped(run("eval", "follow", "-o", tmp_path / "f.json", "-c", cfg, "--no-progress"))
    c = seen["kwargs"]["config"].eval
    assert seen["args"][0] == "yaml-model"
    assert (c.limit, c.eval_set, c.system.temperature, c.system.max_tokens) == (5, "follow", 0.0, 96)


def test_eval_likelihood_reads_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.likelihood.score_likelihood")
    cfg = write_yaml(tmp_path, {"eval": {"limit": 6, "system": {"model": "yaml-model"}}})
    stopped(
        run("eval", "likelihood", "--answers", tmp_path / "a.jsonl", "-o", tmp_path / "likelihood-x.json", "-c", cfg)
    )
    assert seen["args"][0] == "yaml-model" and seen["kwargs"]["limit"] == 6


def test_eval_contamination_reads_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.contamination.check_contamination")
    cfg = write_yaml(tmp_path, {"eval": {"contamination_threshold": 0.42, "eval_set": "mine.jsonl"}})
    stopped(run("eval", "contamination", tmp_path / "t.jsonl", "-c", cfg))
    assert seen["args"][1] == "mine.jsonl" and seen["kwargs"]["threshold"] == 0.42


def test_export_gguf_reads_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("alpacakit.export.gguf_delta.resolve_quant", lambda requested, model_dir, base: requested)
    seen = stand_in(monkeypatch, "alpacakit.export.gguf.export_gguf")
    cfg = write_yaml(tmp_path, {"export": {"quant": "q8_0", "verify": False, "n_threads": 2}})
    stopped(run("export", "gguf", tmp_path / "model", "-o", tmp_path / "m.gguf", "-c", cfg, "--converter", "llama.cpp"))
    kw = seen["kwargs"]
    assert seen["args"][2] == "q8_0" and (kw["verify"], kw["threads"], kw["converter"]) == (False, 2, "llama.cpp")


def test_export_hf_reads_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.export.dataset.to_hf_dataset")
    cfg = write_yaml(tmp_path, {"export": {"val_fraction": 0.25}})
    stopped(run("export", "hf", tmp_path / "x.jsonl", "-o", tmp_path / "ds", "-c", cfg))
    assert seen["kwargs"]["val_fraction"] == 0.25


def test_export_alpaca_reads_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.export.dataset.to_alpaca_json")
    cfg = write_yaml(tmp_path, {"export": {"quant": "q8_0"}})
    stopped(run("export", "alpaca", tmp_path / "x.jsonl", "-o", tmp_path / "a.json", "-c", cfg))
    assert seen["args"][1] == tmp_path / "a.json"


def test_chat_reads_chat_and_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = stand_in(monkeypatch, "alpacakit.serve.backend.load_teacher")
    cfg = write_yaml(tmp_path, {"serve": {"n_ctx": 1024, "n_threads": 3}, "chat": {"seed": 11}})
    stopped(run("chat", "some-model", "-c", cfg))
    assert loaded["args"] == ("some-model",)
    assert {k: loaded["kwargs"][k] for k in ("n_ctx", "n_threads", "seed")} == {
        "n_ctx": 1024,
        "n_threads": 3,
        "seed": 11,
    }

    monkeypatch.setattr("alpacakit.serve.backend.load_teacher", lambda *a, **k: object())
    monkeypatch.setattr("alpacakit.serve.backend.ServeBackend", lambda teacher: teacher)
    monkeypatch.setattr("alpacakit.serve.chat.choose_prompt_format", lambda backend, fmt: (fmt, None))
    seen = stand_in(monkeypatch, "alpacakit.serve.chat.run_chat")
    cfg = write_yaml(tmp_path, {"chat": {"temperature": 0.05, "max_tokens": 33, "system": "Be brief.", "stats": False}})
    stopped(run("chat", "some-model", "-c", cfg, "--top-p", 0.5))
    options = seen["args"][1]
    assert (options.temperature, options.max_tokens, options.system, options.top_p) == (0.05, 33, "Be brief.", 0.5)
    assert seen["kwargs"]["stats"] is False


def test_serve_reads_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.serve.server.serve")
    cfg = write_yaml(tmp_path, {"serve": {"port": 8123, "queue_size": 3, "allowed_hosts": ["a.example"]}})
    stopped(run("serve", "some-model", "-c", cfg, "--max-tokens-cap", 100))
    s = seen["args"][1]
    assert (s.port, s.queue_size, s.allowed_hosts, s.max_tokens_cap, s.default_max_tokens) == (
        8123,
        3,
        ["a.example"],
        100,
        100,  # capped to the largest a request may ask for
    )
    stopped(run("serve", "some-model", "-c", cfg, "--allowed-host", "b.example"))
    assert seen["args"][1].allowed_hosts == ["b.example"]


def test_report_reads_eval_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stand_in(monkeypatch, "alpacakit.evaluate.report.build_report")
    cfg = write_yaml(tmp_path, {"eval": {"report": {"style_gain_points": 4.5, "student": "mine"}}})
    stopped(run("report", tmp_path, "-c", cfg, "--teacher", "gpt"))
    r = seen["args"][1].eval.report
    assert (r.style_gain_points, r.student, r.teacher, r.base) == (4.5, "mine", "gpt", "base")


def test_config_show_reads_the_file(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path, {"chat": {"temperature": 0.31}})
    r = run("config", "show", "-c", cfg)
    assert r.exit_code == 0 and "temperature: 0.31" in r.output
