"""The package's shape: every module imports on its own, config is the bottom layer, and a bad
setting is reported where it was written.

Import checks run in fresh interpreters: a cycle only shows when a module is the *first* of
its cycle to be imported, which a test process that has already imported half the package
never sees.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import alpacakit
from alpacakit.config import load_config
from alpacakit.errors import ConfigError
from alpacakit.train.config import load_train_config

SRC = Path(alpacakit.__file__).parent

# One child per module, each forked from a parent that has loaded third-party libraries only:
# the child's first alpacakit import is the module under test, exactly as in a new interpreter
# (a cycle among our modules shows the same), while pydantic, torch... are loaded once, not 130
# times. A missing *third-party* package (an optional extra such as vllm) is a skip; any other
# ImportError (ours: a cycle, a name that moved) is a failure.
_FORK_SERVER = """
import importlib, multiprocessing, sys
for lib in sys.argv[1].split(","):
    try:
        importlib.import_module(lib)
    except Exception:
        pass
assert not [m for m in sys.modules if m.startswith("alpacakit")], "the parent must not load alpacakit"

def one(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] != "alpacakit":
            return "skip", name, e.name
        return "fail", name, repr(e)
    except BaseException as e:
        return "fail", name, f"{type(e).__name__}: {e}"
    return "ok", name, ""

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
        for status, name, info in pool.imap_unordered(one, sys.argv[2:]):
            print(status, name, " ".join(info.split()), flush=True)
"""


def _third_party_imports() -> list[str]:
    """Top-level packages our modules import at module level, other than the standard library."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return sorted(found - set(sys.stdlib_module_names) - {"alpacakit", "__future__"})


def _modules() -> list[str]:
    """Every module under src/alpacakit, found from the files (walking the package would import it)."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if all(p.isidentifier() for p in parts):
            out.append(".".join(parts))
    return out


def _fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    mods = _modules()
    assert "alpacakit.settings" in mods and "alpacakit.train.config" in mods
    r = _fresh(_FORK_SERVER, ",".join(_third_party_imports()), *mods)
    assert r.returncode == 0, r.stderr
    results = [line.split(" ", 2) for line in r.stdout.splitlines()]
    assert sorted(name for _, name, _ in results) == sorted(mods)
    failed = [f"  {name}: {info}" for status, name, info in results if status == "fail"]
    assert not failed, "modules that fail to import on their own:\n" + "\n".join(failed)


def _alpacakit_modules_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('alpacakit'))))"
    r = _fresh(code)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_settings_is_the_bottom_layer():
    assert _alpacakit_modules_after("alpacakit.settings") == {"alpacakit", "alpacakit.errors", "alpacakit.settings"}


def test_section_modules_import_no_stage_code():
    """A stage's section may build on other sections, never on the stage's own machinery."""

    def allowed(m: str) -> bool:
        parts = m.split(".")
        if m in ("alpacakit", "alpacakit.errors", "alpacakit.settings"):
            return True
        is_package = len(parts) == 2 and (SRC / parts[1]).is_dir()
        return is_package or (len(parts) == 3 and parts[2] == "config")

    for stage in ("teachers", "generate", "curate", "train", "evaluate", "serve"):
        loaded = _alpacakit_modules_after(f"alpacakit.{stage}.config")
        extra = sorted(m for m in loaded if not allowed(m))
        assert not extra, f"alpacakit.{stage}.config imports {extra}"


def test_config_imports_no_heavy_library():
    code = (
        "import sys, alpacakit.config; "
        "print([m for m in ('torch', 'transformers', 'llama_cpp', 'openai') if m in sys.modules])"
    )
    r = _fresh(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_no_untyped_config_parameters():
    pattern = re.compile(r"\bconfig: Any\b")
    found = [
        f"{p.relative_to(SRC.parent)}:{i}"
        for p in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, f"`config: Any` left at {found}"


BAD_YAML = """\
# a config with two bad values
teacher:
  model: qwen2.5-coder-1.5b-instruct
  temperature: 0.5

generate:
  num: 0
  filters:
    max_words: -3
"""


def test_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "alpacakit.yaml"
    path.write_text(BAD_YAML)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{path}:7: generate.num: Input should be greater than or equal to 1" in msg
    assert f"{path}:9: generate.filters.max_words: Input should be greater than or equal to 1" in msg


def test_list_items_and_missing_fields_name_their_line(tmp_path):
    path = tmp_path / "alpacakit.yaml"
    path.write_text("train:\n  stages:\n    - name: one\n    - data: x.jsonl\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:4: train.stages.1.name: Field required")):
        load_config(path)


def test_bad_override_names_the_override(tmp_path):
    with pytest.raises(ConfigError, match=r"--set generate\.num: Input should be greater than or equal to 1"):
        load_config(None, ["generate.num=0"])
    with pytest.raises(ConfigError, match=r"--set generate\.nmu: Extra inputs are not permitted"):
        load_config(None, ["generate.nmu=5"])
    # `alpacakit train --set lr=...` is read as train.lr; the message names what was typed
    with pytest.raises(ConfigError, match=r"--set lr: Input should be greater than 0"):
        load_train_config(None, ["lr=-1"])


def test_a_value_overridden_later_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "alpacakit.yaml"
    path.write_text("generate:\n  num: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["generate.num=0"])
    assert "--set generate.num:" in str(e.value) and ":2:" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(path, None, {"generate": {"num": 0}})  # a named flag: no file line to name
    assert "  generate.num: Input should be" in str(e.value) and ":2:" not in str(e.value)


def test_bare_train_section_names_its_lines(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("base: gemma-3-270m\nlr: -1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: train.lr: Input should be greater than 0")):
        load_train_config(path)
