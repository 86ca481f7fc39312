"""Typed configuration: one YAML file (`alpacakit.yaml`) with a section per verb.

Every field has a description (shown by `alpacakit config show --explain`). Values come from,
lowest to highest priority: the defaults, a YAML file, `--set section.field=value` overrides,
and the named flags of a verb.

This module only assembles: each stage defines its own section in its own `config.py`, on top
of the machinery in `alpacakit.settings`. The names other code has always imported from here
are re-exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from alpacakit.curate.config import CurateConfig, RefusalConfig
from alpacakit.evaluate.config import EvalConfig
from alpacakit.export.config import ExportConfig
from alpacakit.generate.config import FilterConfig, GenerateConfig
from alpacakit.serve.config import ChatConfig, ServeConfig
from alpacakit.settings import (
    Origins,
    Section,
    build,
    deep_merge,
    drop_none,
    flag_origins,
    load_yaml,
    override_origins,
    parse_overrides,
    read_yaml,
)
from alpacakit.teachers.config import BatchApiConfig, Price, TeacherConfig
from alpacakit.train.config import TrainConfig

__all__ = [
    "AlpacakitConfig",
    "BatchApiConfig",
    "CurateConfig",
    "EvalConfig",
    "FilterConfig",
    "GenerateConfig",
    "Price",
    "RefusalConfig",
    "Section",
    "ServeConfig",
    "TeacherConfig",
    "TrainConfig",
    "build",
    "deep_merge",
    "drop_none",
    "load_config",
    "load_yaml",
    "parse_overrides",
]


class AlpacakitConfig(Section):
    """The whole `alpacakit.yaml`. Stages add their sections here as they land."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    flag_names: dict[str, str] | None = None,
) -> AlpacakitConfig:
    """Defaults <- YAML file <- --set overrides <- named flags (`extra`, None values ignored).

    A value that fails validation is reported with the FILE:LINE, `--set KEY` or flag it came from
    (`flag_names`: dotted field -> the verb's flag that set it)."""
    data, origins = read_yaml(path) if path else ({}, Origins())
    over = parse_overrides(overrides)
    data = deep_merge(data, over)
    origins.cover(over, override_origins(overrides))
    if extra:
        flags = drop_none(extra)
        data = deep_merge(data, flags)
        origins.cover(flags, flag_origins(flags, flag_names) if flag_names else None)
    return build(AlpacakitConfig, data, str(path) if path else "settings", origins)
