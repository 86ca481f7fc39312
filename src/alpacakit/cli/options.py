"""Command-line flags generated from the config fields, so a setting is written down once.

A verb names the fields it exposes (`@config_options("generate.num", ("teacher.model", "--teacher",
"-t"), ...)`). The decorator rewrites the command's signature (typer reads `inspect.signature`):
one `--flag` per field, typed from the field's annotation, its help the field's description plus
`[default: ...]` read from `AlpacakitConfig()`, and `--config/-c` and `--set` on every verb. The
verb is then called with a ready `AlpacakitConfig` (defaults <- YAML <- --set <- the flags given)
and its own, non-config parameters. `--help` and `alpacakit config show --explain` therefore
cannot disagree: both read the same model.

Only pydantic and the config modules are imported here: `alpacakit --help` must stay instant.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel

CONFIG_PARAM = "config_path"
SET_PARAM = "config_set"
CONFIG_ARG_PARAM = "config_file"
DEFAULT_FILE = "alpacakit.yaml"


@dataclass(frozen=True)
class Flag:
    """One flag that sets `field` (and the `also` fields, to the same value: `--concurrency` is
    both the teacher's max_concurrency and generate's request_batch). Type, default and help
    come from `field`; `decls` are the flag names, derived from the field's name when empty."""

    field: str
    decls: tuple[str, ...] = ()
    also: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field, *self.also)


Spec = str | tuple[str, ...] | Flag


def _as_flag(spec: Spec) -> Flag:
    if isinstance(spec, Flag):
        return spec
    if isinstance(spec, str):
        return Flag(spec)
    return Flag(spec[0], tuple(spec[1:]))


# --------------------------------------------------------------------------- reading the model


@functools.cache
def _defaults() -> BaseModel:
    from alpacakit.config import AlpacakitConfig

    return AlpacakitConfig()


def field_info(dotted: str) -> tuple[Any, Any, str]:
    """(annotation, default, description) of a dotted config field. The default is read from
    `AlpacakitConfig()`, not from the field: a section may be built with its own defaults (the
    evaluated system's max_tokens is 512, a teacher's 1536)."""
    node: Any = _defaults()
    model: type[BaseModel] = type(node)
    parts = dotted.split(".")
    for i, name in enumerate(parts):
        if name not in model.model_fields:
            raise KeyError(f"config field {dotted!r}: {'.'.join(parts[: i + 1])} does not exist")
        field = model.model_fields[name]
        node = getattr(node, name)
        if i < len(parts) - 1:
            model = type(node)
    return field.annotation, node, field.description or ""


def format_default(value: Any) -> str | None:
    """The default as YAML writes it (what `config show` prints); None when there is none to show."""
    if value is None or value == [] or value == {}:
        return None
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _cli_type(annotation: Any) -> Any:
    """The annotation typer gets: Optional stripped (a flag not given is None: the file decides)."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        if len(args) != 1:
            raise TypeError(f"cannot make a flag of {annotation}")
        annotation = args[0]
    if get_origin(annotation) in (Literal, list) or annotation in (str, int, float, bool):
        return annotation
    raise TypeError(f"cannot make a flag of {annotation}")


def _flag_name(field: str) -> str:
    return field.rsplit(".", 1)[-1].replace("_", "-")


def option_for(flag: Flag) -> tuple[Any, Any]:
    """(annotation, typer.Option) of one flag."""
    annotation, default, description = field_info(flag.field)
    cli_type = _cli_type(annotation)
    decls = flag.decls or (f"--{_flag_name(flag.field)}",)
    if cli_type is bool and not any("/" in d for d in decls):
        decls = tuple(f"{d}/--no-{d[2:]}" if d.startswith("--") else d for d in decls)
    shown = format_default(default)
    help_text = description + (f" [default: {shown}]" if shown is not None else "")
    return cli_type | None, typer.Option(None, *decls, help=help_text, show_default=False)


# --------------------------------------------------------------------------- the decorator


def config_path(given: Path | None) -> Path | None:
    """The one place that decides which file a verb reads: the README promises `--config FILE`
    (or `train FILE`), so only a file named on the command line is read. A `./alpacakit.yaml`
    that is not named is not read (a run must not change because of the folder it started in),
    but a note says so, for whoever expected it to be."""
    if given is None and Path(DEFAULT_FILE).is_file():
        print(f"note: ./{DEFAULT_FILE} is not read; pass --config {DEFAULT_FILE} to use it", file=sys.stderr)
    return given


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def _loader(name: str | None) -> Callable[..., Any]:
    if name == "train":
        from alpacakit.train.config import load_train_config

        return load_train_config
    from alpacakit.config import load_config

    return load_config


def _flag_decl(flag: Flag) -> str:
    """The flag's long name as typed (`--num`), for error messages."""
    decls = flag.decls or (f"--{_flag_name(flag.field)}",)
    long = next((d for d in decls if d.startswith("--")), decls[0])
    return long.split("/", 1)[0]


def config_options(*specs: Spec, loader: str | None = None, config_argument: bool = False) -> Callable:
    """Expose config fields as flags of a verb whose first parameter receives the config.

    `loader="train"` reads the file the way `alpacakit train` does (bare train keys allowed;
    `--set lr=...` means train.lr). `config_argument` also takes the file as an optional first
    argument (`alpacakit train FILE`)."""
    flags = [_as_flag(s) for s in specs]
    sections = sorted({f.split(".", 1)[0] for flag in flags for f in flag.fields})

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = list(sig.parameters.values())[1:]  # the first receives the config
        generated: dict[str, Flag] = {}
        params: list[inspect.Parameter] = []
        for flag in flags:
            name = "cfg__" + flag.field.replace(".", "__")
            annotation, option = option_for(flag)
            generated[name] = flag
            params.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
            )
        reads = f" (sections: {', '.join(sections)})" if sections else ""
        example = f"{flags[0].field}={format_default(field_info(flags[0].field)[1]) or 'VALUE'}" if flags else "a.b=1"
        params += [
            inspect.Parameter(
                CONFIG_PARAM,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Path | None,
                default=typer.Option(None, "--config", "-c", help=f"alpacakit.yaml to read{reads}."),
            ),
            inspect.Parameter(
                SET_PARAM,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=list[str] | None,
                default=typer.Option(
                    None, "--set", help=f"Override any field: SECTION.FIELD=VALUE (YAML), e.g. --set {example}."
                ),
            ),
        ]
        head: list[inspect.Parameter] = []
        if config_argument:
            head.append(
                inspect.Parameter(
                    CONFIG_ARG_PARAM,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=Path | None,
                    default=typer.Argument(None, help="Config file (same as --config)."),
                )
            )
        taken = {p.name for p in own}
        clash = taken & {p.name for p in head + params}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} clash with generated ones")
        # the config flags first, the verb's own next, --config and --set last
        ordered = head + params[:-2] + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + params[-2:]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            path = kwargs.pop(CONFIG_PARAM)
            positional = kwargs.pop(CONFIG_ARG_PARAM, None)
            if path is not None and positional is not None:
                from alpacakit.errors import ConfigError

                raise ConfigError("two config files given (an argument and --config)", hint="give one")
            overrides = kwargs.pop(SET_PARAM)
            extra: dict[str, Any] = {}
            names: dict[str, str] = {}  # field -> the flag that set it, for error messages
            for name, flag in generated.items():
                value = kwargs.pop(name)
                if value is None or (isinstance(value, list | tuple) and not value):
                    continue  # not given: the file (or the default) decides
                for field in flag.fields:
                    _set_dotted(extra, field, list(value) if isinstance(value, tuple) else value)
                    names[field] = _flag_decl(flag)
            cfg = _loader(loader)(config_path(path or positional), overrides, extra, names)
            return fn(cfg, **kwargs)

        del wrapper.__wrapped__  # typer must see the new signature, not the function's
        wrapper.__signature__ = sig.replace(parameters=ordered)
        wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
        wrapper.config_flags = generated  # for tests: which flag sets which fields
        return wrapper

    return decorate
