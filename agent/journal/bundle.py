"""Signed evidence bundles: a journal excerpt that an auditor verifies offline.

A bundle is one file of JSON lines, each in canonical form:

- a header: host, period, the crypto suite (``intl``: SHA-256 and Ed25519;
  ``gm``: SM3 and SM2, those of the journal), the public key, and where the
  excerpt starts (its first seq and the hash that record follows);
- the records in seq order, each with its chain link, and after a record any
  journal checkpoint that signed it;
- a manifest: counts, the chain head, the suite's hash of every byte before
  it (field ``sha256`` or ``sm3``), all signed with the journal's key.

The excerpt is a contiguous run of seq numbers, from the first record at or
after ``since`` to the last at or before ``until``; a record inside it whose
clock had jumped is kept, so the chain stays whole.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agent.journal import db
from agent.journal.chain import canonical_bytes
from agent.journal.errors import BundleError, JournalError
from agent.journal.signing import Signer, load_private_key, public_pem
from agent.journal.statedir import FILE_MODE

FORMAT = "dutywatch-evidence"
VERSION = 1


@dataclass(frozen=True, slots=True)
class BundleSummary:
    """What an export wrote."""

    path: str
    host: str
    records: int
    checkpoints: int
    first_seq: int
    last_seq: int
    head_hash: str
    digest: str  # the suite's hash of the bundle before its manifest
    fingerprint: str
    suite: str = "intl"


def _line(obj: Any) -> bytes:
    return canonical_bytes(obj) + b"\n"


def _record_line(seq: int, prev: str, digest: str, body: bytes) -> bytes:
    # The stored body is already canonical, so the line is built around it
    # without a parse; keys in sorted order keep the line canonical too.
    return (b'{"hash":"' + digest.encode("ascii") + b'","kind":"record","prev":"' + prev.encode("ascii")
            + b'","record":' + body + b',"seq":' + str(seq).encode("ascii") + b"}\n")


def _seq_range(conn: sqlite3.Connection, since: float | None, until: float | None) -> tuple[int, int] | None:
    lo = conn.execute("SELECT seq FROM records WHERE +time >= ? ORDER BY seq LIMIT 1",
                      (since if since is not None else float("-inf"),)).fetchone()
    hi = conn.execute("SELECT seq FROM records WHERE +time <= ? ORDER BY seq DESC LIMIT 1",
                      (until if until is not None else float("inf"),)).fetchone()
    if lo is None or hi is None or lo[0] > hi[0]:
        return None
    return int(lo[0]), int(hi[0])


def _seq_span(conn: sqlite3.Connection, first: int, last: int) -> tuple[int, int] | None:
    lo = conn.execute("SELECT min(seq) FROM records WHERE seq >= ?", (first,)).fetchone()[0]
    hi = conn.execute("SELECT max(seq) FROM records WHERE seq <= ?", (last,)).fetchone()[0]
    if lo is None or hi is None or lo > hi:
        return None
    return int(lo), int(hi)


def export_bundle(db_path: Path, key_path: Path, out: Path, *, since: float | None, until: float | None,
                  period: dict[str, Any], clock: Callable[[], float],
                  seqs: tuple[int, int] | None = None) -> BundleSummary:
    """Write the bundle for records between ``since`` and ``until`` to ``out``, atomically.

    ``seqs`` (first, last) names the records by sequence number instead: the agent's periodic
    exports cut the journal at a record of their own, so consecutive bundles meet exactly.
    """
    signer = Signer(load_private_key(key_path))
    conn, meta = db.open_reader(db_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if meta.get("fingerprint") != signer.fingerprint:
            raise BundleError(f"{key_path}: not the key of journal {db_path}")
        if db.suite_of(meta, db_path) is not signer.suite:
            raise BundleError(f"{db_path}: journal records crypto suite {db.crypto_of(meta)}, its key "
                              f"{key_path} is {signer.suite.name}; the journal's suite was altered")
        conn.execute("BEGIN")  # one snapshot while the agent goes on appending
        span = _seq_range(conn, since, until) if seqs is None else _seq_span(conn, *seqs)
        if span is None:
            raise BundleError(f"{db_path}: no records in the period asked for; nothing to export")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            summary = _write(conn, f, span, meta, signer, period, clock(), str(out))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        return summary
    except sqlite3.Error as exc:
        raise db.translate(db_path, exc) from exc
    except OSError as exc:
        raise BundleError(f"{out}: cannot write bundle: {exc.strerror}") from exc
    finally:
        conn.close()
        if tmp.exists():
            tmp.unlink()


def _write(conn: sqlite3.Connection, f: BinaryIO, span: tuple[int, int], meta: dict[str, str],
           signer: Signer, period: dict[str, Any], now: float, out: str) -> BundleSummary:
    first, last = span
    prev_row = conn.execute("SELECT prev FROM records WHERE seq = ?", (first,)).fetchone()
    host = meta.get("host", "")
    suite = signer.suite
    digest = suite.new_hash()

    def emit(data: bytes) -> None:
        digest.update(data)
        f.write(data)

    emit(_line({"kind": "header", "bundle": FORMAT, "version": VERSION, "host": host, "created": now,
                "period": period, "crypto": suite.name, "public_key": public_pem(signer.public),
                "fingerprint": signer.fingerprint,
                "start": {"seq": first, "prev": prev_row[0]}}))
    cps = conn.cursor().execute("SELECT seq, hash, time, host, key, signature FROM checkpoints "
                                "WHERE seq >= ? AND seq <= ? ORDER BY seq", (first, last))
    cp = cps.fetchone()
    count = n_cp = 0
    head = ""
    rows = conn.cursor().execute(
        "SELECT seq, CAST(body AS BLOB), prev, hash FROM records WHERE seq >= ? AND seq <= ? ORDER BY seq",
        (first, last))
    for seq, body, prev, h in rows:
        emit(_record_line(seq, prev, h, bytes(body)))
        count += 1
        head = h
        while cp is not None and cp[0] <= seq:
            emit(_line({"kind": "checkpoint", "seq": cp[0], "hash": cp[1], "time": cp[2], "host": cp[3],
                        "key": cp[4], "signature": cp[5]}))
            n_cp += 1
            cp = cps.fetchone()
    if count != last - first + 1:
        raise JournalError(f"journal has gaps between seq {first} and {last}; run dutywatch verify")
    manifest = {"kind": "manifest", "host": host, "records": count, "checkpoints": n_cp,
                "first_seq": first, "last_seq": last, "head_hash": head, suite.digest_field: digest.hexdigest()}
    f.write(_line({**manifest, "signature": signer.sign("bundle", manifest)}))
    return BundleSummary(out, host, count, n_cp, first, last, head, digest.hexdigest(), signer.fingerprint,
                         suite.name)
