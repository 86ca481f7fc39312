"""Bad files and clashing runs through the real CLI: each gets a clear error that names the
file (and line) and the fix, never a traceback, and nothing already written is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alpacakit.errors import ConfigError
from alpacakit.io import FolderLock


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr


def test_a_latin1_jsonl_names_file_line_and_the_fix(tmp_path):
    f = tmp_path / "data.jsonl"
    good = json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n"
    f.write_bytes(good.encode() + '{"instruction": "Caf\u00e9 au lait?", "output": "Oui."}\n'.encode("latin-1"))
    before = f.read_bytes()
    r = _cli("curate", "stats", str(f))
    _no_traceback(r)
    assert f"{f}:2: not UTF-8 text (byte 0xe9" in r.stderr and "re-save the file as UTF-8" in r.stderr
    assert f.read_bytes() == before


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    f = tmp_path / "prompts.csv"
    f.write_bytes(b"\xef\xbb\xbfinstruction,output\nSay hi.,Hi.\nName a colour.,Blue.\n")
    out = tmp_path / "dedup.jsonl"
    r = _cli("curate", "dedup", str(f), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["instruction"] for line in out.read_text().splitlines()] == ["Say hi.", "Name a colour."]


def test_a_jsonl_with_a_byte_order_mark_reads(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": "Say hi.", "output": "Hi."}).encode() + b"\n")
    r = _cli("curate", "stats", str(f))
    assert r.returncode == 0, r.stderr


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" + "[" * 50_000 + "]" * 50_000 + "]")
    r = _cli("curate", "dedup", str(f), "-o", str(tmp_path / "o.jsonl"))
    _no_traceback(r)
    assert "nested too deeply" in r.stderr and str(f) in r.stderr


def test_a_config_path_that_is_a_folder_is_a_clear_error(tmp_path):
    r = _cli("config", "show", "--config", str(tmp_path))
    _no_traceback(r)
    assert "is a folder, not a config file" in r.stderr


def test_a_second_run_on_the_same_output_folder_is_refused_and_nothing_is_touched(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "examples.jsonl").write_text('{"instruction": "kept", "output": "safe"}\n')
    lock = FolderLock(out / ".lock", "a test holding the folder", out)  # the first run, still going
    try:
        r = _cli(
            "generate", "--teacher", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--num", "5", "-o", str(out)
        )
        _no_traceback(r)
        assert "is being written by another alpacakit run" in r.stderr and "a test holding the folder" in r.stderr
        assert (out / "examples.jsonl").read_text() == '{"instruction": "kept", "output": "safe"}\n'
    finally:
        lock.release()
    # within one process a later lock takes over (a rerun after an exception in a notebook)
    first = FolderLock(out / ".lock", "first")
    second = FolderLock(out / ".lock", "second")
    first.release()  # a no-op now: it must not drop the second's lock
    r = _cli("generate", "--teacher", "openai:m", "--base-url", "http://127.0.0.1:9/v1", "--num", "5", "-o", str(out))
    assert "is being written by another alpacakit run" in r.stderr and "second" in r.stderr
    second.release()


def test_resume_refuses_training_data_that_changed(tmp_path):
    from alpacakit.train.config import load_train_config
    from alpacakit.train.outputs import partial_dir
    from alpacakit.train.recipe import RUN_CONFIG, _config_dict, preflight

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    cfg = load_train_config(
        None, None, {"train": {"preset": "cpu-quick", "data": str(data), "base": "gemma-3-270m"}}
    ).train
    out = tmp_path / "model"
    partial = partial_dir(out)
    partial.mkdir()
    (partial / RUN_CONFIG).write_text(json.dumps(_config_dict(cfg)))
    (partial / "stages" / cfg.stage_list()[0].dirname / "checkpoint-2").mkdir(parents=True)  # it has trained
    preflight(cfg, out, resume=True, overwrite=False)  # same data: resumes
    data.write_text(json.dumps({"instruction": "a", "output": "changed"}) + "\n")
    with pytest.raises(ConfigError, match="the training data .* changed since the interrupted run"):
        preflight(cfg, out, resume=True, overwrite=False)
