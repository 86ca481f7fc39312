"""Config machinery every stage's section builds on: the `Section` base, YAML and `--set` layers,
and validation errors that say where the bad value was written.

This is the bottom layer: it imports nothing of alpacakit's but `alpacakit.errors`, so any
stage may define its section on top of it without an import cycle, and `alpacakit.config`
only assembles the sections.

Where a value came from is kept beside the data as `Origins` (key path -> 'FILE:LINE' or
'--set KEY'): pydantic reports an error's `loc`, and the nearest recorded path names the line
to fix. Values given in code or by a verb's named flags have no origin; their errors name the
setting only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from alpacakit.errors import ConfigError

KeyPath = tuple[str, ...]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Origins:
    """Where each setting was written: key path -> 'FILE:LINE' or '--set KEY'.

    Paths are tuples of strings (list indices too), so they compare equal to pydantic's `loc`
    after `str()` whatever type YAML gave a key.
    """

    def __init__(self, where: dict[KeyPath, str | None] | None = None):
        self.where: dict[KeyPath, str | None] = dict(where or {})  # None: set where no line is known

    def nest(self, key: str) -> Origins:
        """The same origins one level down (a bare section wrapped as `{key: section}`)."""
        return Origins({(key, *p): w for p, w in self.where.items()})

    def cover(self, data: dict[str, Any], origins: Origins | None = None) -> None:
        """A higher layer `data` is merged over ours: its values no longer come from here.

        Every leaf it sets forgets our record of that path and everything below it (a merged
        mapping keeps our keys it does not set); then its own `origins` are added. Without
        `origins` (a verb's named flags), its leaves are marked as set where no line is known,
        so that an error there is not blamed on the line of the section around it."""
        leaves = list(_leaf_paths(data))
        self.where = {p: w for p, w in self.where.items() if not any(p[: len(leaf)] == leaf for leaf in leaves)}
        self.where.update(origins.where if origins is not None else dict.fromkeys(leaves))

    def locate(self, loc: tuple[Any, ...]) -> tuple[KeyPath, str] | None:
        """(path, origin) of the longest recorded prefix of `loc`, or None where none is known."""
        path = tuple(str(p) for p in loc)
        for n in range(len(path), 0, -1):
            if path[:n] in self.where:
                where = self.where[path[:n]]
                return None if where is None else (path[:n], where)
        return None


def _leaf_paths(data: dict[str, Any], prefix: KeyPath = ()) -> Any:
    for k, v in data.items():
        path = (*prefix, str(k))
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, path)
        else:
            yield path


# --------------------------------------------------------------------------- layers


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value", hint="e.g. --set generate.num=200")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ['a.b=1', 'a.c=[x, y]'] into a nested dict; values are parsed as YAML."""
    data: dict[str, Any] = {}
    for item in overrides or []:
        key, raw = _split_override(item)
        _set_dotted(data, key, yaml.safe_load(raw) if raw.strip() else None)
    return data


def override_origins(overrides: list[str] | None, keys: list[str] | None = None) -> Origins:
    """Each override's key path -> '--set KEY'. `keys` are the paths the overrides were read as,
    where those differ from what the user typed (`--set lr=1e-4` read as train.lr)."""
    typed = [_split_override(item)[0] for item in overrides or []]
    read = keys if keys is not None else typed
    return Origins({tuple(k.split(".")): f"--set {t}" for t, k in zip(typed, read)})


def flag_origins(flags: dict[str, Any], names: dict[str, str]) -> Origins:
    """The leaves of a verb's named flags -> the flag that set each (`--num`), where known."""
    return Origins({path: names.get(".".join(path)) for path in _leaf_paths(flags)})


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without its None values (and mappings left empty): a flag not given is no setting."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


# --------------------------------------------------------------------------- YAML with lines


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # Notepad's byte-order mark would become part of the first key
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text", hint="re-save the file as UTF-8") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composed node tree is kept, so the lines of keys can be read from it."""


def _record_lines(node: yaml.Node, path: KeyPath, label: str, out: dict[KeyPath, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            out[key] = f"{label}:{key_node.start_mark.line + 1}"  # a later duplicate wins, as in the data
            _record_lines(value_node, key, label, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*path, str(i))
            out[key] = f"{label}:{item.start_mark.line + 1}"
            _record_lines(item, key, label, out)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Origins]:
    """A YAML mapping and the line of every key in it (see `Origins`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder, not a config file", hint="pass the YAML file, e.g. --config alpacakit.yaml"
        )
    loader = _Loader(_read_text(path))
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(data).__name__}")
    lines: dict[KeyPath, str] = {}
    if node is not None:
        _record_lines(node, (), str(path), lines)
    return data, Origins(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping (clear errors for a missing file, a folder, bad YAML, a non-mapping)."""
    return read_yaml(path)[0]


# --------------------------------------------------------------------------- validation


def build(model: type[BaseModel], data: dict[str, Any], source: str = "config", origins: Origins | None = None) -> Any:
    """Validate `data` into `model`, turning pydantic's errors into one readable message: one line
    per error, led by where the value was written when `origins` knows."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [_error_line(err, origins) for err in e.errors()]
        raise ConfigError(f"{source}: invalid settings:\n" + "\n".join(lines)) from None


def _error_line(err: Any, origins: Origins | None) -> str:
    dotted = ".".join(str(p) for p in err["loc"])
    found = origins.locate(err["loc"]) if origins else None
    if found is None:
        return f"  {dotted}: {err['msg']}"
    path, where = found
    if where.startswith("--set ") and ".".join(path) == dotted:
        return f"  {where}: {err['msg']}"  # the override names the setting already
    return f"  {where}: {dotted}: {err['msg']}"
