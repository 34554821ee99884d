"""The journal store: appending, checkpoints, clocks, permissions, locks, corruption."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from test_journal_support import HOST, T0, finding, lifecycle, stepping_clock

from agent.errors import DutyWatchError
from agent.journal.errors import (
    JournalCorruptError,
    JournalError,
    JournalLockedError,
    JournalPermissionError,
    RecordError,
)
from agent.journal.statedir import quarantine_corrupt
from agent.journal.store import Journal
from agent.journal.verify import verify_journal


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_records_get_consecutive_seqs_across_reopen(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock()) as j:
        assert j.append(lifecycle("agent.start")) == 1
        assert j.append_many([finding(i) for i in range(3)]) == [2, 3, 4]
        assert j.append_many([]) == []
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock()) as j:
        assert j.append(lifecycle("agent.stop")) == 5
    assert verify_journal(tmp_path / "s" / "journal.db").records == 5


def test_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "var" / "dutywatch"
    old = os.umask(0o022)
    try:
        with Journal(state, host=HOST) as j:
            j.append(finding(1))
            assert _mode(state) == 0o700
            for name in ("journal.db", "journal.db-wal", "journal.db-shm", "journal.key"):
                assert _mode(state / name) == 0o600, name
    finally:
        os.umask(old)


def test_wide_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # noqa: S103 - the wide mode under test
    with pytest.raises(JournalPermissionError, match=r"mode 0755.*0700"):
        Journal(state, host=HOST)
    assert not (state / "journal.db").exists()


def test_wide_key_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "s", host=HOST).close()
    os.chmod(tmp_path / "s" / "journal.key", 0o644)
    with pytest.raises(JournalPermissionError, match=r"journal.key: journal signing key has mode 0644"):
        Journal(tmp_path / "s", host=HOST)


def test_wide_journal_file_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "s", host=HOST).close()
    os.chmod(tmp_path / "s" / "journal.db", 0o640)
    with pytest.raises(JournalPermissionError, match=r"journal\.db"):
        Journal(tmp_path / "s", host=HOST)


def test_replaced_key_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "s", host=HOST).close()
    (tmp_path / "s" / "journal.key").unlink()
    with pytest.raises(JournalError, match="not the key this journal was started with"):
        Journal(tmp_path / "s", host=HOST)


def test_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST), \
            pytest.raises(JournalLockedError, match=f"pid {os.getpid()}"):
        Journal(tmp_path / "s", host=HOST)
    Journal(tmp_path / "s", host=HOST).close()  # free again once the first closed


def test_locked_database_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.journal import db

    Journal(tmp_path / "s", host=HOST).close()
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    other = sqlite3.connect(tmp_path / "s" / "journal.db", isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JournalLockedError, match="locked"):
            Journal(tmp_path / "s", host=HOST)
    finally:
        other.close()


def test_corrupt_file_is_reported_not_touched_then_quarantined(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST) as j:
        j.append(finding(1))
    db_path = tmp_path / "s" / "journal.db"
    junk = b"this is not sqlite" * 100
    db_path.write_bytes(junk)
    with pytest.raises(JournalCorruptError, match="journal is corrupt") as info:
        Journal(tmp_path / "s", host=HOST)
    assert isinstance(info.value, DutyWatchError)
    assert db_path.read_bytes() == junk  # a plain open never moves or rewrites it
    moved = quarantine_corrupt(db_path, clock=lambda: T0)
    assert moved.name == "journal.db.corrupt-20240501T000000Z"
    assert moved.read_bytes() == junk and not db_path.exists()
    db_path.write_bytes(junk)
    again = quarantine_corrupt(db_path, clock=lambda: T0)
    assert again != moved and moved.read_bytes() == junk  # never overwritten
    with Journal(tmp_path / "s", host=HOST) as j:  # a fresh journal starts at 1
        assert j.append(lifecycle("agent.start")) == 1


def test_bad_records_are_refused_whole_batch(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST) as j:
        j.append(finding(0))
        bad = [finding(1), {**finding(2), "severity": "urgent"}]
        with pytest.raises(RecordError, match="severity must be one of"):
            j.append_many(bad)
        with pytest.raises(RecordError, match="plain JSON"):
            j.append({**finding(3), "event": {"when": object()}})
        with pytest.raises(RecordError, match="time must be a finite number"):
            j.append({**finding(3), "time": float("nan")})
        with pytest.raises(RecordError, match="kind"):
            j.append({"type": "lifecycle", "time": T0, "host": HOST})
        assert j.append(finding(4)) == 2  # nothing of the refused batches was stored
    assert verify_journal(tmp_path / "s" / "journal.db").ok


def test_undecodable_file_names_are_kept(tmp_path: Path) -> None:
    name = b"/srv/classified/\xff\xfe.doc".decode("utf-8", "surrogateescape")
    rec = finding(1)
    rec["event"]["file"] = {"path": name}
    with Journal(tmp_path / "s", host=HOST) as j:
        j.append(rec)
    assert verify_journal(tmp_path / "s" / "journal.db").ok


def test_checkpoint_every_and_due(tmp_path: Path) -> None:
    now = [T0]
    with Journal(tmp_path / "s", host=HOST, clock=lambda: now[0], checkpoint_every=5) as j:
        j.append_many([finding(i) for i in range(4)])
        assert j.unsigned == 4
        assert not j.due(T0 + 30)
        assert j.due(T0 + 60)  # a minute with unsigned records
        j.append(finding(4))
        assert j.unsigned == 0  # the fifth record brought a checkpoint
        assert not j.due(T0 + 3600)  # nothing to sign
        j.append(finding(5))
        assert j.due(T0 - 3600)  # the clock jumped back an hour: sign rather than wait
        cp = j.checkpoint()
        assert cp is not None and cp.seq == 6
        assert j.checkpoint() is None


def test_clock_jumps_do_not_change_order(tmp_path: Path) -> None:
    times = [T0, T0 + 10, T0 - 86400, T0 + 86400 * 365, T0 + 20]
    with Journal(tmp_path / "s", host=HOST) as j:
        seqs = [j.append(finding(i, t=t)) for i, t in enumerate(times)]
    assert seqs == [1, 2, 3, 4, 5]
    r = verify_journal(tmp_path / "s" / "journal.db")
    assert r.ok and r.last_seq == 5
    conn = sqlite3.connect(tmp_path / "s" / "journal.db")
    assert [row[0] for row in conn.execute("SELECT time FROM records ORDER BY seq")] == times
    conn.close()


def test_public_key_and_fingerprint(tmp_path: Path) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    with Journal(tmp_path / "s", host=HOST) as j:
        pem = j.public_key_pem()
        key = serialization.load_pem_public_key(pem.encode())
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert j.fingerprint == hashlib.sha256(raw).hexdigest()
