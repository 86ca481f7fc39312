"""Typed config: YAML file <- --set overrides <- named flags, with readable errors."""

import subprocess
import sys

import pytest

from alpacakit.config import load_config
from alpacakit.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    cfg_file = tmp_path / "alpacakit.yaml"
    cfg_file.write_text("generate:\n  num: 50\n  filters:\n    max_words: 80\nteacher:\n  temperature: 0.5\n")
    cfg = load_config(
        cfg_file,
        ["generate.num=70", "teacher.price.output_per_1m=0.6"],
        {"generate": {"num": None}, "teacher": {"temperature": 0.9}},
    )
    assert cfg.generate.num == 70
    assert cfg.generate.filters.max_words == 80
    assert cfg.teacher.temperature == 0.9
    assert cfg.teacher.price.output_per_1m == 0.6


def test_unknown_field_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"generate\.nmu"):
        load_config(None, ["generate.nmu=5"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  num: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        load_config(bad)


def test_config_show_cli_prints_resolved_yaml():
    out = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "config", "show", "--set", "generate.num=7"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "num: 7" in out


def test_cli_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from alpacakit.cli.main import app; "
        "heavy = [m for m in ('torch', 'llama_cpp', 'openai', 'transformers') if m in sys.modules]; print(heavy)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
