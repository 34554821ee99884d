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
from agent.journal.chain import canonical_bytes, link_hash
from agent.journal.query import Query, iter_records
from agent.journal.verify import verify_journal
from agent.report.coverage import PriorScan
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
    trusted: bool = False  # the key came from the auditor (--pubkey, --keys), not from the host itself
    through_seq: int = 0  # the last record of the period, its chain hash and the checkpoint that signs it
    through_hash: str = ""
    signed_seq: int = 0
    signed_time: float = 0.0
    # The period a bundle says it covers (its header), and whether it is one of a host's periodic exports
    # (export.every), which together must leave no hole.
    period_since: float | None = None
    period_until: float | None = None
    periodic: bool = False
    # A bundle vouched for through the period's last record: the checkpoint that closes what was checked (seq
    # and chain hash; 0: the whole bundle was), and the last record the bundle holds beyond the period.
    checked_seq: int = 0
    checked_hash: str = ""
    extends_to: int = 0


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


def journal_integrity(path: Path, pubkey: Path | None, through: int | None = None) -> Integrity:
    """Verify the whole journal, as ``dutywatch verify`` does, and say how to repeat it for the period.

    ``through`` is the last record of the period: its chain hash and the
    checkpoint that signs it are what the report vouches for, and the
    printed command (``verify --through``) checks exactly that.
    """
    r = verify_journal(path, pubkey, through=through)
    cmd = ["dutywatch", "verify", "--journal", str(path)]
    if through:
        cmd += ["--through", str(through)]
    cmd += ["--pubkey", str(pubkey) if pubkey is not None else "HOST-PUBKEY.pem"]
    return Integrity("journal", str(path), journal_host(path), r.ok, str(r.problem) if r.problem else "", r.records,
                     r.first_seq, r.last_seq, r.head_hash, r.fingerprint, r.key_source, shlex.join(cmd), r.suite,
                     pubkey is not None, r.through_seq, r.through_hash, r.through_signed_seq,
                     r.through_signed_time)


def journal_host(path: Path) -> str:
    """The host a journal belongs to, from its meta ("" when unreadable)."""
    try:
        conn, meta = db.open_reader(path)
        conn.close()
    except Exception:  # only a label: opening the journal for the report proper names the problem
        return ""
    return meta.get("host", "")


def journal_prior(path: Path, since: float | None, until: float | None = None) -> PriorScan:
    """The records around the period that decide coverage at its edges (see ``PriorScan``)."""
    scan = PriorScan()
    conn, _ = db.open_reader(path)
    try:
        if since is not None:
            life = conn.execute("SELECT host, time, body FROM records WHERE type = 'lifecycle' AND time < ? "
                                "ORDER BY time DESC LIMIT 1", (since,)).fetchone()
            last = conn.execute("SELECT host, time FROM records WHERE time < ? ORDER BY time DESC LIMIT 1",
                                (since,)).fetchone()
            if life is not None:
                scan.add(str(life[0]), float(life[1]), _body(life[2]).get("kind"))
            if last is not None:
                scan.add(str(last[0]), float(last[1]), None)
        if until is not None:
            first = conn.execute("SELECT seq FROM records WHERE time > ? ORDER BY time LIMIT 1", (until,)).fetchone()
            if first is not None:
                for host, t, kind, body in conn.execute(
                        "SELECT host, time, type, body FROM records WHERE seq >= ? ORDER BY seq LIMIT 2", (first[0],)):
                    rec = _body(body)
                    life = kind == "lifecycle"
                    if not scan.after(str(host), float(t), rec.get("kind") if life else None,
                                      rec.get("detail") if life else None):
                        break
    except sqlite3.Error as exc:
        raise db.translate(path, exc) from exc
    finally:
        conn.close()
    return scan


def _body(raw: Any) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
    except (ValueError, TypeError):
        return {}
    return rec if isinstance(rec, dict) else {}


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


def bundle_integrity(path: Path, keys_dir: Path | None, period: Period | None = None) -> Integrity:
    """Check one bundle with ``verify_bundle``; with ``keys_dir``, against its host's trusted key.

    With ``period``, the bundle is vouched for through the period's last record
    (``verify --bundle B --through SEQ``), not as a whole: what lies beyond the
    period is not what the report shows.
    """
    through = reach = None
    beyond = 0
    if period is not None:
        through, reach, last = _period_last(path, period)
        beyond = last if through is not None and last > through else 0
    first = verify_bundle(path, through=through, reach=reach)
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
            r = verify_bundle(path, key, through=through, reach=reach)
            problem = str(r.problem) if r.problem else ""
    cmd = ["dutywatch", "verify", "--bundle", str(path)]
    if through is not None:
        cmd += ["--through", str(through)]
    cmd += ["--pubkey", str(key) if key is not None else "HOST-PUBKEY.pem"]
    hp = r.period if isinstance(r.period, dict) else {}
    if through is not None:
        vouched = (r.through_seq, r.through_hash, r.signed_seq, r.signed_time)
    else:
        vouched = (max(0, r.last_seq), r.head_hash, 0, 0.0)
    return Integrity("bundle", str(path), r.host, not problem, problem, r.records, r.first_seq, r.last_seq,
                     r.head_hash, r.fingerprint, r.key_source, shlex.join(cmd), r.suite, key is not None,
                     *vouched, period_since=_when(hp.get("since")), period_until=_when(hp.get("until")),
                     periodic=hp.get("every") is not None, checked_seq=r.checked_seq,
                     checked_hash=r.checked_hash, extends_to=beyond)


def _period_last(path: Path, period: Period) -> tuple[int | None, int | None, int]:
    """The seq of the bundle's last record in the period (None: none in it), of the second record after the
    period (what coverage reads past its end; None when there is none) and of its last record.

    Read before the check only to choose what to check through; the check
    then proves that record and everything before it.
    """
    found: int | None = None
    after: list[int] = []
    last = 0
    try:
        with path.open("rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    return None, None, 0  # not a bundle line: the whole check names the problem
                if not isinstance(obj, dict) or obj.get("kind") != "record" or not isinstance(obj.get("seq"), int):
                    continue
                last = obj["seq"]
                rec = obj.get("record")
                t = rec.get("time") if isinstance(rec, dict) else None
                if period.holds(t):
                    found = last
                elif period.until is not None and isinstance(t, (int, float)) and t > period.until and len(after) < 2:
                    after.append(last)
    except OSError:
        return None, None, 0
    return found, (after[-1] if after else None), last


def _when(value: Any) -> float | None:
    """An ISO 8601 time of a bundle's period as epoch seconds (None when absent or unreadable)."""
    import datetime as dt
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def bundle_records(path: Path, period: Period, prior: PriorScan | None = None,
                   checked: Integrity | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """A verified bundle's records in the period (and, to ``prior``, what lies around it).

    The bytes are hashed again as they are read and compared with the signed
    manifest, so a file changed between its check and this read is refused
    rather than half merged. A bundle ``checked`` through the period's last
    record (up to the checkpoint signing it) is read only that far, each
    record's link checked again up to that checkpoint's hash.
    """
    suite: Suite = INTL
    digest = suite.new_hash()
    upto = checked.checked_seq if checked is not None and checked.checked_seq else None
    prev = ""
    try:
        with path.open("rb") as f:
            for raw in f:
                obj = json.loads(raw)
                kind = obj.get("kind")
                if kind == "header":
                    suite = get_suite(obj.get("crypto", INTL.name))
                    digest = suite.new_hash()
                    prev = str((obj.get("start") or {}).get("prev", ""))
                if kind == "manifest":
                    if obj.get(suite.digest_field) != digest.hexdigest():
                        raise ReportError(f"{path}: bundle changed after it was verified; report abandoned")
                    return
                digest.update(raw)
                if kind != "record":
                    continue
                rec = obj["record"]
                if upto is not None:
                    assert checked is not None
                    seq = int(obj["seq"])
                    if obj.get("prev") != prev or link_hash(prev, seq, canonical_bytes(rec), suite.new_hash) \
                            != obj.get("hash") or (seq == upto and obj["hash"] != checked.checked_hash):
                        raise ReportError(f"{path}: bundle changed after it was verified; report abandoned")
                    prev = obj["hash"]
                t = rec.get("time")
                if period.holds(t):
                    yield int(obj["seq"]), rec
                elif prior is not None and isinstance(t, (int, float)):
                    life = rec.get("type") == "lifecycle"
                    if period.since is not None and t < period.since:
                        prior.add(str(rec.get("host", "")), float(t), rec.get("kind") if life else None)
                    elif period.until is not None and t > period.until:
                        prior.after(str(rec.get("host", "")), float(t), rec.get("kind") if life else None,
                                    rec.get("detail") if life else None)
                if upto is not None and int(obj["seq"]) >= upto:
                    return  # the end of what was vouched for
    except OSError as exc:
        raise ReportError(f"{path}: cannot read bundle: {exc.strerror}") from exc
    except (ValueError, KeyError, AttributeError, SuiteError) as exc:
        raise ReportError(f"{path}: bundle changed after it was verified ({exc}); report abandoned") from exc
    raise ReportError(f"{path}: bundle lost its manifest after it was verified; report abandoned")
