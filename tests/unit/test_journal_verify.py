"""Tamper evidence: every change made behind the journal's back is named by verify, in both crypto suites."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_journal_support import HOST, finding, raw_db, stepping_clock

from agent.crypto.suite import suite
from agent.journal.signing import Signer, public_pem
from agent.journal.store import Journal
from agent.journal.verify import verify_journal


@pytest.fixture
def journal_db(tmp_path: Path, crypto: str) -> Path:
    """A journal of 30 findings in suite ``crypto``, checkpointed every 10, closed."""
    with Journal(tmp_path / "state", host=HOST, clock=stepping_clock(), checkpoint_every=10,
                 crypto=crypto) as j:
        for start in range(0, 30, 5):
            j.append_many([finding(i) for i in range(start, start + 5)])
    return tmp_path / "state" / "journal.db"


def test_untouched_journal_verifies(journal_db: Path, crypto: str) -> None:
    r = verify_journal(journal_db)
    assert r.ok, r.problem
    assert r.suite == crypto
    assert (r.records, r.first_seq, r.last_seq, r.signed_seq, r.unsigned) == (30, 1, 30, 30, 0)
    assert r.checkpoints == 3


def test_edited_body_is_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        body = c.execute("SELECT body FROM records WHERE seq = 12").fetchone()[0]
        c.execute("UPDATE records SET body = ? WHERE seq = 12", (body.replace("张三", "李四"),))
    r = verify_journal(journal_db)
    assert not r.ok and r.problem is not None
    assert r.problem.seq == 12
    assert "modified" in str(r.problem) and str(r.problem).startswith("record 12:")


@pytest.mark.parametrize(("tamper", "seq", "named"), [
    pytest.param("UPDATE records SET severity = 'low' WHERE seq = 7", 7, "severity", id="edited index column"),
    pytest.param("DELETE FROM records WHERE seq = 15", 15, "missing", id="deleted record"),
    pytest.param("DELETE FROM records WHERE seq <= 3", 1, "1..3", id="deleted first records"),
    pytest.param("DELETE FROM records WHERE seq > 26", 27, "27..30", id="deleted tail, named by its checkpoint"),
])
def test_tampering_is_named(journal_db: Path, tamper: str, seq: int, named: str) -> None:
    with raw_db(journal_db) as c:
        c.execute(tamper)
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == seq
    assert named in r.problem.what


def test_inserted_record_is_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        # Make room at seq 9 and slip in a copy of record 3 linked to record 8.
        for seq in range(30, 8, -1):
            c.execute("UPDATE records SET seq = seq + 1 WHERE seq = ?", (seq,))
        row = c.execute("SELECT time, type, host, rule, severity, action, unit, operator, body "
                        "FROM records WHERE seq = 3").fetchone()
        prev = c.execute("SELECT hash FROM records WHERE seq = 8").fetchone()[0]
        c.execute("INSERT INTO records(seq, time, type, host, rule, severity, action, unit, operator, "
                  "body, prev, hash) VALUES (9,?,?,?,?,?,?,?,?,?,?,?)", (*row, prev, "ab" * 32))
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 9


def test_appended_forgery_is_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        row = c.execute("SELECT time, type, host, rule, severity, action, unit, operator, body, hash "
                        "FROM records WHERE seq = 30").fetchone()
        c.execute("INSERT INTO records(seq, time, type, host, rule, severity, action, unit, operator, "
                  "body, prev, hash) VALUES (31,?,?,?,?,?,?,?,?,?,?,?)", (*row, "cd" * 32))
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 31


def test_reordered_records_are_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        c.execute("UPDATE records SET seq = -1 WHERE seq = 18")
        c.execute("UPDATE records SET seq = 18 WHERE seq = 19")
        c.execute("UPDATE records SET seq = 19 WHERE seq = -1")
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 18
    assert "reordered" in r.problem.what


def test_forged_checkpoint_is_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        c.execute("UPDATE checkpoints SET time = time + 1 WHERE seq = 20")
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 20 and r.problem.subject == "checkpoint"
    assert "forged" in r.problem.what


def test_checkpoint_signed_by_another_key_is_refused(journal_db: Path, crypto: str) -> None:
    other = Signer(suite(crypto).generate_key())
    with raw_db(journal_db) as c:
        seq, digest, t, host = c.execute(
            "SELECT seq, hash, time, host FROM checkpoints WHERE seq = 10").fetchone()
        sig = other.sign("checkpoint", {"seq": seq, "hash": digest, "time": t, "host": host})
        c.execute("UPDATE checkpoints SET key = ?, signature = ? WHERE seq = 10", (other.fingerprint, sig))
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 10
    assert "not by the trusted key" in r.problem.what


def test_rewritten_chain_is_caught_by_checkpoint(journal_db: Path, crypto: str) -> None:
    """Someone who knows the hash formula edits a record and rehashes everything after it."""
    from agent.journal.chain import link_hash

    with raw_db(journal_db) as c:
        rows = c.execute("SELECT seq, body, prev FROM records WHERE seq >= 14 ORDER BY seq").fetchall()
        prev = rows[0][2]
        for seq, body, _ in rows:
            if seq == 14:
                body = body.replace('"critical"', '"info"')
                c.execute("UPDATE records SET severity = 'info' WHERE seq = 14")
            h = link_hash(prev, seq, body.encode(), suite(crypto).new_hash)
            c.execute("UPDATE records SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, h, seq))
            prev = h
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 20
    assert "checkpoint" in r.problem.what


def test_wrong_key_is_refused(journal_db: Path, tmp_path: Path, crypto: str) -> None:
    other = tmp_path / "other.pem"
    other.write_text(public_pem(suite(crypto).generate_key().public()))
    r = verify_journal(journal_db, other)
    assert r.problem is not None and r.problem.subject == "checkpoint" and r.problem.seq == 10
    assert "not by the trusted key" in r.problem.what


def test_key_of_the_other_suite_is_refused(journal_db: Path, tmp_path: Path, crypto: str) -> None:
    other_suite = suite("gm" if crypto == "intl" else "intl")
    other = tmp_path / "other.pem"
    other.write_text(public_pem(other_suite.generate_key().public()))
    r = verify_journal(journal_db, other)
    assert not r.ok and r.problem is not None and r.problem.subject == "journal"
    assert f"suite {crypto}" in r.problem.what and f"{other_suite.sign_name} key" in r.problem.what


def test_altered_suite_mark_is_refused(journal_db: Path, crypto: str) -> None:
    """Flipping the journal's recorded suite makes its own key disagree with it."""
    with raw_db(journal_db) as c:
        c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('crypto', ?)",
                  ("gm" if crypto == "intl" else "intl",))
    r = verify_journal(journal_db)
    assert not r.ok and r.problem is not None and "suite was altered" in r.problem.what


def test_unsigned_tail_is_reported(tmp_path: Path, crypto: str) -> None:
    j = Journal(tmp_path / "s", host=HOST, clock=stepping_clock(), checkpoint_every=10, crypto=crypto)
    j.append_many([finding(i) for i in range(10)])
    j.append_many([finding(i) for i in range(10, 13)])
    r = verify_journal(j.path)  # the writer is still running: 11..13 not yet signed
    assert r.ok and r.signed_seq == 10 and r.unsigned == 3
    j.close()
    assert verify_journal(j.path).unsigned == 0


def test_invalid_utf8_written_into_a_body_is_named(journal_db: Path) -> None:
    with raw_db(journal_db) as c:
        c.execute("UPDATE records SET body = CAST(X'7b22ff227d' AS TEXT) WHERE seq = 4")
    r = verify_journal(journal_db)
    assert r.problem is not None and r.problem.seq == 4


def test_not_a_journal_is_refused(tmp_path: Path) -> None:
    from agent.journal.errors import JournalCorruptError

    p = tmp_path / "x.db"
    sqlite3.connect(p).execute("CREATE TABLE t(x)").connection.close()
    with pytest.raises(JournalCorruptError, match="not a DutyWatch journal"):
        verify_journal(p)
