"""Where a report's records come from: the local journal, or verified evidence bundles.

Either way the integrity of the source is checked with the same code as
``dutywatch verify`` (``verify_journal``, ``verify_bundle``), and its
records are streamed, one at a time, never all held in memory.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.crypto.suite import INTL, Suite, SuiteError
from agent.crypto.suite import suite as get_suite
from agent.journal import db
from agent.journal.bundlecheck import verify_bundle
from agent.journal.query import Query, iter_records
from agent.journal.verify import verify_journal
from agent.report.errors import ReportError


@dataclass(frozen=True, slots=True)
class Integrity:
    """The verification of one source: a journal or a bundle, and how an auditor repeats it."""

    kind: str  # journal | bundle
    path: str
    host: str
    ok: bool
    problem: str
    records: int
    first_seq: int
    last_seq: int
    head_hash: str
    fingerprint: str
    key_source: str
    command: str
    suite: str = "intl"  # the crypto suite the source was checked in: intl or gm


@dataclass(frozen=True, slots=True)
class Period:
    """The report's period in epoch seconds; None is open-ended."""

    since: float | None
    until: float | None

    def holds(self, t: Any) -> bool:
        """Whether a record time falls in the period."""
        if not isinstance(t, (int, float)):
            return self.since is None and self.until is None
        return (self.since is None or t >= self.since) and (self.until is None or t <= self.until)


def journal_integrity(path: Path, pubkey: Path | None) -> Integrity:
    """Verify the whole journal, as ``dutywatch verify`` does, and say how to repeat it."""
    r = verify_journal(path, pubkey)
    cmd = ["dutywatch", "verify", "--journal", str(path)]
    cmd += ["--pubkey", str(pubkey) if pubkey is not None else "HOST-PUBKEY.pem"]
    host = ""
    try:
        conn, meta = db.open_reader(path)
        conn.close()
        host = meta.get("host", "")
    except Exception:  # noqa: S110 - the host name is only a label; verify already judged the file
        pass
    return Integrity("journal", str(path), host, r.ok, str(r.problem) if r.problem else "", r.records,
                     r.first_seq, r.last_seq, r.head_hash, r.fingerprint, r.key_source, shlex.join(cmd), r.suite)


def journal_records(path: Path, period: Period) -> Iterator[tuple[int, dict[str, Any]]]:
    """The journal's records in the period, in seq order, from one read snapshot."""
    conn, _ = db.open_reader(path)
    try:
        conn.execute("BEGIN")
        q = Query(since=period.since, until=period.until, types=())
        for row in iter_records(conn, q):
            yield row.seq, row.record
    except sqlite3.Error as exc:
        raise db.translate(path, exc) from exc
    finally:
        conn.close()


def trusted_key_for(keys_dir: Path | None, host: str) -> Path | None:
    """The trusted public key of ``host`` in ``keys_dir`` (``HOST.pem``), if a directory was given."""
    if keys_dir is None:
        return None
    if not host or "/" in host or host.startswith("."):
        raise ReportError(f"bundle names host {host!r}, which cannot name a key file")
    return keys_dir / f"{host}.pem"


def bundle_integrity(path: Path, keys_dir: Path | None) -> Integrity:
    """Check one bundle with ``verify_bundle``; with ``keys_dir``, against its host's trusted key."""
    first = verify_bundle(path)
    key = None
    problem = str(first.problem) if first.problem else ""
    r = first
    if first.ok and keys_dir is not None:
        try:
            key = trusted_key_for(keys_dir, first.host)
        except ReportError as exc:
            problem = str(exc)
        if key is not None and not key.is_file():
            problem = f"no trusted key for host {first.host!r}: {key} does not exist"
        elif key is not None:
            r = verify_bundle(path, key)
            problem = str(r.problem) if r.problem else ""
    cmd = ["dutywatch", "verify", "--bundle", str(path)]
    cmd += ["--pubkey", str(key) if key is not None else "HOST-PUBKEY.pem"]
    return Integrity("bundle", str(path), r.host, not problem, problem, r.records, r.first_seq, r.last_seq,
                     r.head_hash, r.fingerprint, r.key_source, shlex.join(cmd), r.suite)


def bundle_records(path: Path, period: Period) -> Iterator[tuple[int, dict[str, Any]]]:
    """A verified bundle's records in the period.

    The bytes are hashed again as they are read and compared with the signed
    manifest, so a file changed between its check and this read is refused
    rather than half merged.
    """
    suite: Suite = INTL
    digest = suite.new_hash()
    try:
        with path.open("rb") as f:
            for raw in f:
                obj = json.loads(raw)
                if obj.get("kind") == "header":
                    suite = get_suite(obj.get("crypto", INTL.name))
                    digest = suite.new_hash()
                if obj.get("kind") == "manifest":
                    if obj.get(suite.digest_field) != digest.hexdigest():
                        raise ReportError(f"{path}: bundle changed after it was verified; report abandoned")
                    return
                digest.update(raw)
                if obj.get("kind") == "record" and period.holds(obj["record"].get("time")):
                    yield int(obj["seq"]), obj["record"]
    except OSError as exc:
        raise ReportError(f"{path}: cannot read bundle: {exc.strerror}") from exc
    except (ValueError, KeyError, AttributeError, SuiteError) as exc:
        raise ReportError(f"{path}: bundle changed after it was verified ({exc}); report abandoned") from exc
    raise ReportError(f"{path}: bundle lost its manifest after it was verified; report abandoned")
