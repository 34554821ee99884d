"""The journal's SQLite file: schema, opening for writing or reading, error mapping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.crypto.suite import DEFAULT_SUITE, SUITE_NAMES, Suite, SuiteError, suite
from agent.journal.errors import JournalCorruptError, JournalError, JournalLockedError

FORMAT = "dutywatch-journal"
VERSION = "1"
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records(
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL, type TEXT NOT NULL, host TEXT NOT NULL,
    rule TEXT, severity TEXT, action TEXT, unit TEXT, operator TEXT,
    body TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX records_time ON records(time);
CREATE INDEX records_type ON records(type);
CREATE INDEX records_rule ON records(rule);
CREATE INDEX records_severity ON records(severity);
CREATE INDEX records_action ON records(action);
CREATE INDEX records_unit ON records(unit);
CREATE INDEX records_operator ON records(operator);
CREATE TABLE checkpoints(
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, time REAL NOT NULL, host TEXT NOT NULL,
    key TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE anchors(
    seq INTEGER PRIMARY KEY, prev TEXT NOT NULL, time REAL NOT NULL, host TEXT NOT NULL,
    key TEXT NOT NULL, signature TEXT NOT NULL
);
"""

# The body as raw bytes: what was hashed, even if someone wrote invalid UTF-8 into it.
SELECT_CHAIN = (
    "SELECT seq, time, type, host, rule, severity, action, unit, operator, CAST(body AS BLOB), prev, hash"
    " FROM records ORDER BY seq"
)
INSERT_RECORD = (
    "INSERT INTO records(seq, time, type, host, rule, severity, action, unit, operator, body, prev, hash)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
INSERT_ANCHOR = "INSERT OR REPLACE INTO anchors(seq, prev, time, host, key, signature) VALUES (?,?,?,?,?,?)"


def translate(path: Path, exc: sqlite3.Error) -> JournalError:
    """One place that turns SQLite's errors into the journal's own."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return JournalLockedError(f"{path}: journal database is locked by another process ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return JournalCorruptError(str(path), text)
    if "malformed" in text or "not a database" in text:
        return JournalCorruptError(str(path), text)
    return JournalError(f"{path}: journal database error: {text}")


def _check_format(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise translate(path, exc) from exc
    if not {"meta", "records", "checkpoints", "anchors"} <= names:
        raise JournalCorruptError(str(path), "not a DutyWatch journal: its tables are missing")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise JournalCorruptError(str(path), "not a DutyWatch journal: no format mark")
    if meta.get("version") != VERSION:
        raise JournalError(f"{path}: journal format version {meta.get('version')!r}, "
                           f"this DutyWatch reads version {VERSION}")
    return meta


def open_writer(path: Path, meta_init: dict[str, str]) -> tuple[sqlite3.Connection, dict[str, str]]:
    """Open (creating if empty) the journal for appending; returns it and its meta."""
    fresh = path.stat().st_size == 0
    try:
        # The agent opens the journal on its main thread and hands it to the writer
        # thread; one thread uses it at a time, so the same-thread check is lifted.
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise translate(path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if fresh:
            # auto_vacuum must be set before the first table exists.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"{path}: SQLite refused WAL mode (got {mode})")
        # FULL: every commit fsyncs the WAL, so a record survives power loss once
        # append() returns. NORMAL would only survive a crash of this process.
        conn.execute("PRAGMA synchronous=FULL")
        return conn, _init_or_check(conn, path, fresh, meta_init)
    except sqlite3.Error as exc:
        conn.close()
        raise translate(path, exc) from exc
    except JournalError:
        conn.close()
        raise


def _init_or_check(conn: sqlite3.Connection, path: Path, fresh: bool,
                   meta_init: dict[str, str]) -> dict[str, str]:
    if fresh:
        conn.execute("BEGIN IMMEDIATE")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        rows = {"format": FORMAT, "version": VERSION, **meta_init}
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", sorted(rows.items()))
        conn.execute("COMMIT")
    else:
        # Take the write lock once now: another writer holding it (busy past the
        # timeout) is a clear error at start, not a stream of failed writes later.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    return _check_format(conn, path)


def open_reader(path: Path) -> tuple[sqlite3.Connection, dict[str, str]]:
    """Open a journal read-only (verify, events, export); never creates or changes it."""
    if not path.is_file():
        raise JournalError(f"{path}: no journal there")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise translate(path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn, _check_format(conn, path)
    except JournalError:
        conn.close()
        raise


def crypto_of(meta: dict[str, str]) -> str:
    """The crypto suite a journal recorded at its creation (journals from before suites: intl)."""
    return meta.get("crypto", DEFAULT_SUITE)


def suite_of(meta: dict[str, str], path: Path) -> Suite:
    """The journal's crypto suite, ready to use; JournalError when unknown or unavailable."""
    name = crypto_of(meta)
    if name not in SUITE_NAMES:
        raise JournalError(f"{path}: journal uses crypto suite {name!r}, which this DutyWatch does not know")
    try:
        return suite(name)
    except SuiteError as exc:
        raise JournalError(f"{path}: journal uses crypto suite {name}: {exc}") from exc


def peek_crypto(path: Path) -> str | None:
    """The suite an existing journal recorded; None when there is none yet or it cannot be read."""
    try:
        if path.stat().st_size == 0:
            return None
        conn, meta = open_reader(path)
    except (OSError, JournalError):
        return None  # opening it for writing reports what is wrong
    conn.close()
    return crypto_of(meta)
