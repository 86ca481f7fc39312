"""Files between stages: JSON / JSONL records, append-only logs, atomic writes, hashes.

Append-only JSONL is how long jobs survive `kill -9`: each record is one line written with a
single `write` and flushed; a torn last line (the process died mid-write) is detected and
cut off on the next open, never parsed as data.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alpacakit.errors import DataError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_text(path: str | Path) -> str:
    """A text file's contents as UTF-8, without a leading byte-order mark (Excel and Notepad write
    one, and it would otherwise become part of the first field's name). A file that is not UTF-8
    is a `DataError` naming the line and the byte, not a UnicodeDecodeError traceback."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file", hint="pass the file inside it")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _encoding_error(path, data, e) from None


def _encoding_error(path: Path, data: bytes, e: UnicodeDecodeError, line_start: int = 0) -> DataError:
    line = data.count(b"\n", 0, e.start) + 1 + line_start
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return DataError(
        f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column})",
        hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`)",
    )


def parse_json(text: str | bytes, where: str) -> Any:
    """json.loads with the two failures users hit named: bad JSON, and nesting too deep for Python."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read", hint="flatten the record") from None


def _json_error(path: Path, lineno: int, err: Exception, what: str) -> DataError:
    return DataError(
        f"{path}:{lineno}: {what}: {err}",
        hint="fix or delete that line; every line of a JSONL file must be one JSON object",
    )


def iter_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line.

    `tolerate_torn_tail` skips an unparsable *last* line that has no newline: what a process
    killed mid-write leaves behind in our own append-only logs.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    fast = _parse_all_lines(lines)
    if fast is not None:
        yield from fast
        return
    torn = not data.endswith(b"\n")
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            obj = parse_json(raw.decode("utf-8"), f"{path}:{i}")
        except UnicodeDecodeError as e:
            if tolerate_torn_tail and torn and i == len(lines):
                return
            raise _encoding_error(path, raw, e, i - 1) from None
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and torn and i == len(lines):
                return
            raise _json_error(path, i, e, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, found {type(obj).__name__}")
        yield i, obj


def _parse_all_lines(lines: list[bytes]) -> list[tuple[int, dict]] | None:
    """Every line parsed by one `json.loads` of `[line, line, ...]`: a million short lines read
    ~2x faster than one call per line. None when anything is off (bad JSON, bad UTF-8, a line
    holding two values, a non-object, a BOM): the line-by-line path then names the line."""
    numbered = [(i, raw) for i, raw in enumerate(lines, start=1) if raw.strip()]
    if not numbered or numbered[0][1].startswith(b"\xef\xbb\xbf"):
        return None
    try:
        items = json.loads(b"[" + b",".join(raw for _, raw in numbered) + b"]")
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if len(items) != len(numbered) or not all(type(obj) is dict for obj in items):
        return None
    return [(i, obj) for (i, _), obj in zip(numbered, items)]


def read_records(path: str | Path, *, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSON list, JSONL or CSV file of records, checking required fields.

    Errors name file:line (for JSON lists: the item index) and the missing field.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        return _read_hf_dataset(path, required)
    required = list(required)
    records: list[tuple[str, dict]] = []
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import io

        for i, row in enumerate(csv.DictReader(io.StringIO(read_text(path), newline="")), start=2):
            records.append((f"{path}:{i}", row))
    else:
        text = read_text(path)
        stripped = text.lstrip()
        if stripped.startswith("["):
            try:
                items = parse_json(text, str(path))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
            for i, obj in enumerate(items):
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: item {i}: expected an object, found {type(obj).__name__}")
                records.append((f"{path}: item {i}", obj))
        else:
            for lineno, obj in iter_jsonl(path):
                records.append((f"{path}:{lineno}", obj))
    for where, obj in records:
        for field in required:
            if field not in obj:
                raise DataError(
                    f"{where}: missing field {field!r} (found fields: {', '.join(sorted(obj)) or 'none'})",
                    hint=f"every record needs {', '.join(repr(r) for r in required)}",
                )
    return [obj for _, obj in records]


def _read_hf_dataset(path: Path, required: Iterable[str]) -> list[dict]:
    try:
        import datasets  # heavy: only for HF folders
    except ImportError:
        raise DataError(
            f"{path} is a folder (an HF datasets folder?) but `datasets` is not installed",
            hint='pip install "alpacakit[train]"',
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    rows = [dict(r) for r in ds]
    for i, r in enumerate(rows):
        for field in required:
            if field not in r:
                raise DataError(f"{path}: row {i}: missing field {field!r}")
    return rows


def jsonl_line(obj: dict[str, Any]) -> bytes:
    """One JSONL line as every writer here writes it: UTF-8, non-ASCII kept, newline-ended."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


class JsonlAppender:
    """Append-only JSONL writer: one `write` per record, flushed (and fsynced if asked).

    On open it truncates a torn last line left by a killed process, so the file always
    holds whole records.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._f = open(self.path, "ab")
        self._fsync = fsync

    def write(self, obj: dict[str, Any], *, sync: bool = True) -> None:
        """Append one record; `sync=False` defers the fsync to a later `sync()` (group commit)."""
        self._f.write(jsonl_line(obj))
        self._f.flush()
        if self._fsync and sync:
            os.fsync(self._f.fileno())

    def write_many(self, objs: list[dict[str, Any]]) -> None:
        """Append several records with one flush (and one fsync if asked): an entry's results at once."""
        if objs:
            self._f.write(b"".join(map(jsonl_line, objs)))
            self._f.flush()
            self.sync()

    def sync(self) -> None:
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a write interrupted by kill -9)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicLineWriter:
    """A file written line by line that replaces `path` only on `commit()` (readers see the old
    file or the whole new one): for rebuilding a large JSONL without holding it in memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._f = os.fdopen(fd, "wb")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(jsonl_line(obj))

    def write_raw(self, line: bytes) -> None:
        """A line already in JSONL form (no newline at its end)."""
        self._f.write(line + b"\n")

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        Path(self._tmp).unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write a whole JSONL file atomically; returns the record count."""
    encode = _UNICODE_JSON.encode  # json.dumps(r, ensure_ascii=False) builds an encoder per call
    lines = [encode(r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


_UNICODE_JSON = json.JSONEncoder(ensure_ascii=False)


_HELD: dict[str, FolderLock] = {}


class FolderLock:
    """One writer per output: an exclusive `flock` on `lock_path`, held until `release()` (or the
    process ends: the kernel drops the lock of a process killed with `kill -9`, so a crash never
    leaves a stale lock behind). A second process that would write the same output (and pay for
    the same requests, appending to the same journal) gets a clear error instead.

    The lock is against other processes: within one process a new lock on the same path takes
    over from an earlier one (what a rerun after an exception in a notebook or a test does, the
    old job still alive in the traceback)."""

    def __init__(
        self, lock_path: str | Path, what: str, target: str | Path | None = None, *, remove_on_release: bool = False
    ):
        import fcntl
        import time as _time

        from alpacakit.errors import ConfigError

        self.path = Path(lock_path)
        self.remove_on_release = remove_on_release  # a lock file beside the output, not inside it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = str(self.path.resolve())
        earlier = _HELD.get(self._key)
        if earlier is not None:
            earlier.release()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{target or self.path.parent} is being written by another alpacakit run ({holder})",
                hint="wait for that run to finish (or stop it), or write to another folder",
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}, {what}, since {_time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD[self._key] = self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            if self.remove_on_release:
                self.path.unlink(missing_ok=True)
            os.close(fd)  # closing the descriptor drops the flock
            if _HELD.get(self._key) is self:
                del _HELD[self._key]

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: module globals may be gone already
            pass
