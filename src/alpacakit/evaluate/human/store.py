"""SQLite storage for human A/B judgments.

Why SQLite: several raters judge at once through one local web server, a rater may close the
browser and come back tomorrow, and the lead wants one file to copy around. SQLite in WAL mode
gives concurrent readers with one writer, survives `kill -9`, and the UNIQUE(rater, item)
constraint makes "one judgment per rater per item" a property of the data, not of the code.

What is stored:

- `systems`: the two answer files (slot 1 = the first file given, slot 2 = the second), with
  the generator name and the file's sha256. A database belongs to exactly these two files:
  reopening it with other files is refused, since old judgments would no longer describe them.
- `items`: one row per instruction present in both files (matched on instruction + input).
- `raters`: a rater is identified by their name, compared case-insensitively with blanks
  collapsed ("Ana  Lee" and "ana lee" are the same person). Over HTTP a rater is whoever holds
  their link: `invite(name)` gives a token (an HMAC of the name under a random secret kept in
  `meta`), so nobody can rate or undo as somebody else, and raters exist only by invitation,
  at most `max_raters` of them.
- `judgments`: one row per (rater, item): which system sat on the left for that rater, what
  they pressed (A = left, B = right, tie), the winning slot, and how long they looked.

Blindness and order: each rater sees the items in their own seeded random order, and for each
(rater, item) a seeded coin decides which system is shown on the left. Both follow from the
seed stored in `meta` and the rater's name, so a reload or a resume shows exactly the same
screen, the server never needs to trust the browser about sides, and position bias is spread
evenly across systems and raters. The side actually shown is stored in every judgment.
"""

from __future__ import annotations

import hashlib
import sqlite3
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alpacakit.errors import ConfigError, DataError

SCHEMA_VERSION = 1
MAX_RATER_LEN = 64
DEFAULT_MAX_RATERS = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS systems (
    slot   INTEGER PRIMARY KEY CHECK (slot IN (1, 2)),
    name   TEXT NOT NULL,
    file   TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    item_id     INTEGER PRIMARY KEY,
    instruction TEXT NOT NULL,
    input       TEXT NOT NULL DEFAULT '',
    output_1    TEXT NOT NULL,
    output_2    TEXT NOT NULL,
    dataset     TEXT
);
CREATE TABLE IF NOT EXISTS raters (
    rater      TEXT PRIMARY KEY,
    display    TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS judgments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rater      TEXT NOT NULL REFERENCES raters(rater),
    item_id    INTEGER NOT NULL REFERENCES items(item_id),
    left_slot  INTEGER NOT NULL CHECK (left_slot IN (1, 2)),
    pressed    TEXT NOT NULL CHECK (pressed IN ('A', 'B', 'tie')),
    winner     INTEGER NOT NULL CHECK (winner IN (0, 1, 2)),
    seconds    REAL,
    created_at TEXT NOT NULL,
    UNIQUE (rater, item_id)
);
CREATE INDEX IF NOT EXISTS judgments_by_rater ON judgments(rater, id);
"""


@dataclass(frozen=True)
class System:
    slot: int
    name: str
    file: str
    sha256: str


@dataclass(frozen=True)
class Item:
    item_id: int
    instruction: str
    input: str
    output_1: str
    output_2: str
    dataset: str | None

    def output(self, slot: int) -> str:
        return self.output_1 if slot == 1 else self.output_2


@dataclass
class Pairing:
    """What `pair_outputs` found: matched items plus what could not be matched (for the user)."""

    items: list[dict[str, Any]]
    names: tuple[str, str]
    only_in_1: int
    only_in_2: int
    duplicates: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def rater_key(name: str) -> str:
    """The identity of a rater: NFKC, blanks collapsed, case-folded."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def clean_rater_name(name: Any) -> str:
    """A display name, or DataError saying what is wrong with it."""
    if not isinstance(name, str):
        raise DataError("the rater name must be text")
    shown = " ".join(unicodedata.normalize("NFKC", name).split())
    if not shown:
        raise DataError("the rater name is empty", hint="type your name (or initials) before rating")
    if len(shown) > MAX_RATER_LEN:
        raise DataError(f"the rater name is longer than {MAX_RATER_LEN} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in shown):
        raise DataError("the rater name contains control characters")
    return shown


def _key_of(rec: dict[str, Any]) -> tuple[str, str]:
    return (str(rec.get("instruction") or "").strip(), str(rec.get("input") or "").strip())


def _generator_name(records: list[dict[str, Any]], path: Path) -> str:
    names = [str(r["generator"]) for r in records if r.get("generator")]
    return names[0] if names else path.stem


def pair_outputs(path_1: str | Path, path_2: str | Path) -> Pairing:
    """Match two AlpacaEval-style files (`[{instruction, output, generator, dataset}]`, also
    JSONL) by instruction (and `input`, when records have one).

    Instructions present in only one file are counted and left out; a repeated instruction
    within a file keeps its first answer (and is counted), since a rater cannot judge two
    answers to "the same" question against one answer from the other system.
    """
    from alpacakit.io import read_records

    p1, p2 = Path(path_1), Path(path_2)
    recs = []
    for p in (p1, p2):
        rs = read_records(p, required=("instruction", "output"))
        for i, r in enumerate(rs):
            if not str(r.get("instruction") or "").strip():
                raise DataError(f"{p}: item {i}: empty instruction")
            if not isinstance(r.get("output"), str):
                raise DataError(
                    f"{p}: item {i}: 'output' must be a string, found {type(r.get('output')).__name__}",
                    hint="each record needs the system's answer as text in 'output'",
                )
        recs.append(rs)
    names = (_generator_name(recs[0], p1), _generator_name(recs[1], p2))
    if names[0] == names[1]:
        names = (f"{names[0]} ({p1.name})", f"{names[1]} ({p2.name})")
        if names[0] == names[1]:
            names = (f"{names[0]} [1]", f"{names[1]} [2]")
    duplicates = 0
    second: dict[tuple[str, str], dict[str, Any]] = {}
    for r in recs[1]:
        k = _key_of(r)
        if k in second:
            duplicates += 1
            continue
        second[k] = r
    items: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for r in recs[0]:
        k = _key_of(r)
        if k in seen:
            duplicates += 1
            continue
        seen.add(k)
        if k not in second:
            continue
        items.append(
            {
                "instruction": k[0],
                "input": k[1],
                "output_1": r["output"],
                "output_2": second[k]["output"],
                "dataset": r.get("dataset") or second[k].get("dataset"),
            }
        )
    only_1 = len(seen - set(second))
    only_2 = len(set(second) - seen)
    if not items:
        raise DataError(
            f"{p1} and {p2} share no instruction, so there is nothing to compare",
            hint="pass two output files written for the same eval set (alpacakit eval generate --eval-set ...)",
        )
    return Pairing(items=items, names=names, only_in_1=only_1, only_in_2=only_2, duplicates=duplicates)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()


class HumanEvalStore:
    """One human A/B study in one SQLite file. Thread-safe: every call opens its own connection
    (cheap for SQLite), so the web server may call it from any worker thread.

        store = HumanEvalStore.open("ab.sqlite", "outputs-student.json", "outputs-teacher.json")
        item = store.next_item("Ana")           # what Ana sees now (None when she is done)
        store.judge("Ana", item.item_id, "A")   # she prefers the left answer
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._order_cache: dict[str, list[int]] = {}
        with self._conn() as c:
            c.executescript(_SCHEMA)
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = self.meta().get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise ConfigError(f"{self.path}: database schema version {version}, this alpacakit reads {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        db: str | Path,
        file_1: str | Path | None = None,
        file_2: str | Path | None = None,
        *,
        seed: int | None = None,
    ) -> HumanEvalStore:
        """Open (or create) the study in `db`. A new database needs both files; an existing one
        is resumed, and files given again must be the very files it was made from. `seed` (of
        the per-rater order and sides) is random when not given: a known seed would let a rater
        work out which side each system is on."""
        db = Path(db)
        if db.exists() and db.is_dir():
            raise ConfigError(f"{db} is a folder; --db must name a SQLite file")
        if db.exists():
            _check_sqlite(db)
        db.parent.mkdir(parents=True, exist_ok=True)
        store = cls(db)
        if store.n_items():
            if (file_1 is None) != (file_2 is None):
                raise ConfigError("give both answer files, or neither to resume the study in " + str(db))
            if file_1 is not None:
                store._check_same_files(Path(file_1), Path(file_2))  # type: ignore[arg-type]
            return store
        if file_1 is None or file_2 is None:
            raise ConfigError(
                f"{db} holds no study yet, so two answer files are needed",
                hint="alpacakit eval human A.json B.json --db " + str(db),
            )
        if seed is None:
            import secrets

            seed = secrets.randbelow(2**31)
        store._create(Path(file_1), Path(file_2), seed)
        return store

    def _create(self, file_1: Path, file_2: Path, seed: int) -> None:
        from alpacakit.io import sha256_file

        pairing = pair_outputs(file_1, file_2)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            if c.execute("SELECT COUNT(*) FROM items").fetchone()[0]:  # someone else created it meanwhile
                c.execute("ROLLBACK")
                self._check_same_files(file_1, file_2)
                return
            for slot, (path, name) in enumerate(zip((file_1, file_2), pairing.names), start=1):
                c.execute(
                    "INSERT INTO systems(slot, name, file, sha256) VALUES (?, ?, ?, ?)",
                    (slot, name, str(path.resolve()), sha256_file(path)),
                )
            c.executemany(
                "INSERT INTO items(item_id, instruction, input, output_1, output_2, dataset) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (i, it["instruction"], it["input"], it["output_1"], it["output_2"], it["dataset"])
                    for i, it in enumerate(pairing.items, start=1)
                ],
            )
            for k, v in {
                "seed": str(seed),
                "created_at": _now(),
                "only_in_1": str(pairing.only_in_1),
                "only_in_2": str(pairing.only_in_2),
                "duplicates": str(pairing.duplicates),
            }.items():
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, v))
            c.execute("COMMIT")

    def _check_same_files(self, file_1: Path, file_2: Path) -> None:
        from alpacakit.io import sha256_file

        systems = self.systems()
        for sys_, path in zip(systems, (file_1, file_2)):
            if not path.exists():
                raise DataError(f"{path}: no such file")
            digest = sha256_file(path)
            if digest != sys_.sha256:
                raise ConfigError(
                    f"{self.path} was made from {sys_.file} (sha256 {sys_.sha256[:12]}...), but {path} differs "
                    f"(sha256 {digest[:12]}...): its judgments would not describe these answers",
                    hint=f"use a new --db for new answer files, or resume with `alpacakit eval human --db {self.path}`",
                )

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=ON")
            yield c
        finally:
            c.close()

    # ------------------------------------------------------------------ reading

    def meta(self) -> dict[str, str]:
        with self._conn() as c:
            return dict(c.execute("SELECT key, value FROM meta").fetchall())

    @property
    def seed(self) -> int:
        return int(self.meta().get("seed", "0"))

    def systems(self) -> list[System]:
        with self._conn() as c:
            return [System(*row) for row in c.execute("SELECT slot, name, file, sha256 FROM systems ORDER BY slot")]

    def n_items(self) -> int:
        with self._conn() as c:
            return int(c.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def item(self, item_id: int) -> Item | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT item_id, instruction, input, output_1, output_2, dataset FROM items WHERE item_id=?", (item_id,)
            ).fetchone()
        return Item(*row) if row else None

    def items(self) -> list[Item]:
        with self._conn() as c:
            return [
                Item(*r)
                for r in c.execute(
                    "SELECT item_id, instruction, input, output_1, output_2, dataset FROM items ORDER BY item_id"
                )
            ]

    def judgments(self) -> list[dict[str, Any]]:
        """Every judgment, oldest first, with the rater's display name."""
        with self._conn() as c:
            c.row_factory = sqlite3.Row
            rows = c.execute(
                "SELECT j.id, j.rater, r.display, j.item_id, j.left_slot, j.pressed, j.winner, j.seconds, j.created_at "
                "FROM judgments j JOIN raters r ON r.rater = j.rater ORDER BY j.id"
            ).fetchall()
        return [dict(r) for r in rows]

    def raters(self) -> list[dict[str, Any]]:
        """[{rater (key), display, done}] for everyone who has judged or signed in."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT r.rater, r.display, (SELECT COUNT(*) FROM judgments j WHERE j.rater = r.rater) "
                "FROM raters r ORDER BY r.first_seen, r.rater"
            ).fetchall()
        return [{"rater": k, "display": d, "done": n} for k, d, n in rows]

    # ------------------------------------------------------------------ the seeded layout

    def order_for(self, rater: str) -> list[int]:
        """The item ids in the order this rater sees them (a seeded shuffle per rater)."""
        key = rater_key(rater)
        if key not in self._order_cache:
            seed = self.seed
            with self._conn() as c:
                ids = [r[0] for r in c.execute("SELECT item_id FROM items")]
            self._order_cache[key] = sorted(ids, key=lambda i: _digest(seed, "order", key, i))
        return self._order_cache[key]

    def left_slot(self, rater: str, item_id: int) -> int:
        """Which system (1 or 2) this rater sees on the left (as answer A) for this item."""
        return 1 + (_digest(self.seed, "side", rater_key(rater), item_id)[0] & 1)

    # ------------------------------------------------------------------ invitations

    def _secret(self) -> bytes:
        """The random key rater links are signed with (made once, kept in the database)."""
        import secrets

        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('link_secret', ?)", (secrets.token_hex(32),))
            return bytes.fromhex(c.execute("SELECT value FROM meta WHERE key='link_secret'").fetchone()[0])

    def _signature(self, key: str) -> str:
        import hmac

        return hmac.new(self._secret(), key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def invite(self, name: str, *, max_raters: int = DEFAULT_MAX_RATERS) -> str:
        """Register `name` as a rater (at most `max_raters` in a study) and return their link token."""
        import base64

        shown = clean_rater_name(name)
        key = rater_key(shown)
        known = {r["rater"] for r in self.raters()}
        if key not in known and len(known) >= max_raters:
            raise ConfigError(
                f"{self.path} already has {len(known)} raters, the most allowed",
                hint="raise --max-raters, or reuse an existing rater's link",
            )
        self.sign_in(shown)
        encoded = base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")
        return f"{encoded}.{self._signature(key)}"

    def rater_for_token(self, token: Any) -> str:
        """The display name of the invited rater `token` belongs to; PermissionError otherwise."""
        import base64
        import hmac

        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 400:
            raise PermissionError("this page needs your personal rating link (ask the study's organiser for it)")
        encoded, signature = token.split(".")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise PermissionError("this rating link is damaged: open the link you were sent again") from None
        if not hmac.compare_digest(signature, self._signature(key)):
            raise PermissionError("this rating link is not valid for this study: open the link you were sent again")
        with self._conn() as c:
            row = c.execute("SELECT display FROM raters WHERE rater=?", (key,)).fetchone()
        if row is None:
            raise PermissionError("this rating link is not valid for this study")
        return row[0]

    # ------------------------------------------------------------------ rating

    def sign_in(self, name: str) -> str:
        """Register a rater (idempotent); returns the display name first used for them."""
        shown = clean_rater_name(name)
        key = rater_key(shown)
        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO raters(rater, display, first_seen) VALUES (?, ?, ?)", (key, shown, _now()))
            return c.execute("SELECT display FROM raters WHERE rater=?", (key,)).fetchone()[0]

    def done_ids(self, rater: str) -> set[int]:
        with self._conn() as c:
            return {r[0] for r in c.execute("SELECT item_id FROM judgments WHERE rater=?", (rater_key(rater),))}

    def progress(self, rater: str) -> dict[str, int]:
        with self._conn() as c:
            done = c.execute("SELECT COUNT(*) FROM judgments WHERE rater=?", (rater_key(rater),)).fetchone()[0]
        return {"done": int(done), "total": self.n_items()}

    def next_item(self, rater: str) -> Item | None:
        """The first item in this rater's order they have not judged (None when finished)."""
        done = self.done_ids(rater)
        for item_id in self.order_for(rater):
            if item_id not in done:
                return self.item(item_id)
        return None

    def judge(self, rater: str, item_id: int, pressed: str, seconds: float | None = None) -> bool:
        """Record what `rater` pressed for `item_id`: 'A' (left), 'B' (right) or 'tie'.

        Returns False (and changes nothing) when this rater already judged this item: a double
        press or a second browser tab must not overwrite the first answer. Use `undo` to redo.
        """
        if pressed not in ("A", "B", "tie"):
            raise DataError(f"a judgment is 'A', 'B' or 'tie', not {pressed!r}")
        shown = clean_rater_name(rater)
        key = rater_key(shown)
        if self.item(item_id) is None:
            raise DataError(f"no item {item_id} in {self.path}")
        left = self.left_slot(key, item_id)
        winner = 0 if pressed == "tie" else (left if pressed == "A" else 3 - left)
        if seconds is not None:
            seconds = max(0.0, min(float(seconds), 86_400.0))
        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO raters(rater, display, first_seen) VALUES (?, ?, ?)", (key, shown, _now()))
            cur = c.execute(
                "INSERT INTO judgments(rater, item_id, left_slot, pressed, winner, seconds, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(rater, item_id) DO NOTHING",
                (key, item_id, left, pressed, winner, seconds, _now()),
            )
            return cur.rowcount == 1

    def undo(self, rater: str) -> int | None:
        """Delete this rater's most recent judgment; returns its item id (None if there was none)."""
        key = rater_key(rater)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(
                "SELECT id, item_id FROM judgments WHERE rater=? ORDER BY id DESC LIMIT 1", (key,)
            ).fetchone()
            if row is None:
                c.execute("ROLLBACK")
                return None
            c.execute("DELETE FROM judgments WHERE id=?", (row[0],))
            c.execute("COMMIT")
        return int(row[1])


def _check_sqlite(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(
            f"{path} exists and is not a SQLite database",
            hint="pass a new file name with --db (e.g. eval/human.sqlite)",
        )
