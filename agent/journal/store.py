"""The journal: an append-only, hash-chained, signed SQLite store of findings.

One agent writes a state directory's journal (``journal.lock``); any number
of readers (verify, events, export) open it read-only beside it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from agent.crypto.suite import DEFAULT_SUITE, Suite, SuiteError, suite
from agent.journal import db, retention
from agent.journal.chain import GENESIS, Link, make_link
from agent.journal.errors import JournalError
from agent.journal.signing import Signer, load_or_create_key, public_pem
from agent.journal.statedir import (
    WriterLock,
    check_private,
    create_private_file,
    ensure_state_dir,
)

JOURNAL_FILE = "journal.db"
KEY_FILE = "journal.key"
LOCK_FILE = "journal.lock"


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's last record: its seq and hash (seq 0 and GENESIS when empty)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain's head was ``hash`` at ``seq``."""

    seq: int
    hash: str
    time: float
    host: str
    key: str
    signature: str

    def fields(self) -> dict[str, Any]:
        """The signed fields."""
        return {"seq": self.seq, "hash": self.hash, "time": self.time, "host": self.host}


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune removed, and the lifecycle record that says so."""

    removed: int
    up_to_seq: int
    reason: str
    record_seq: int


@dataclass(frozen=True, slots=True)
class JournalStats:
    """Figures for metrics: records held, first and last seq, bytes on disk."""

    records: int
    first_seq: int
    last_seq: int
    size_bytes: int


class JournalSettings(Protocol):
    """The ``journal:`` section of the config, as the config loader provides it."""

    @property
    def retention_days(self) -> int:
        """Days records are kept."""
        ...

    @property
    def max_size_mb(self) -> int:
        """Size cap of the journal file."""
        ...

    @property
    def checkpoint_every(self) -> int:
        """Records between signed checkpoints."""
        ...

    @property
    def crypto(self) -> str:
        """The crypto suite of a new journal: intl or gm."""
        ...


class Journal:
    """Appends records to ``state_dir/journal.db`` and signs its head now and then.

    A record is durable when ``append``/``append_many`` returns. The caller
    drives the clock: ``due(now)`` says when a timed checkpoint is owed.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        retention_days: float = 180,
        max_size_mb: float = 2048,
        crypto: str = DEFAULT_SUITE,
    ) -> None:
        if checkpoint_every < 1:
            raise JournalError(f"journal.checkpoint_every must be at least 1, not {checkpoint_every}")
        try:
            self.suite: Suite = suite(crypto)
        except SuiteError as exc:
            raise JournalError(f"journal.crypto: {exc}") from exc
        self.state_dir = ensure_state_dir(Path(state_dir))
        self.path = self.state_dir / JOURNAL_FILE
        self.host = host
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.retention_days = retention_days
        self.max_size_mb = max_size_mb
        self._clock = clock
        self._lock = WriterLock(self.state_dir / LOCK_FILE)
        try:
            self._refuse_other_suite(db.peek_crypto(self.path))
            self._signer = Signer(load_or_create_key(self.state_dir / KEY_FILE, self.suite))
            self._conn = self._open()
        except BaseException:
            self._lock.release()
            raise
        self._head, self._signed_seq, self._last_checkpoint = self._load_state()
        self._closed = False

    @classmethod
    def from_settings(cls, state_dir: Path, settings: JournalSettings, *, host: str,
                      clock: Callable[[], float] = time.time) -> Journal:
        """Open with the config's ``journal:`` settings."""
        return cls(state_dir, host=host, clock=clock, checkpoint_every=settings.checkpoint_every,
                   retention_days=settings.retention_days, max_size_mb=settings.max_size_mb,
                   crypto=settings.crypto)

    def _refuse_other_suite(self, recorded: str | None) -> None:
        if recorded is None or recorded == self.suite.name:
            return
        raise JournalError(
            f"{self.path}: this journal has used crypto suite {recorded} since its first record, but "
            f"journal.crypto is now {self.suite.name}; a journal never mixes suites. Set journal.crypto "
            f"back to {recorded}, or start a new journal: stop the agent, move {JOURNAL_FILE} (with its "
            f"-wal and -shm files) and {KEY_FILE} out of {self.state_dir} and keep them for their "
            "retention period (`dutywatch verify --journal` still checks them there)")

    def _open(self) -> sqlite3.Connection:
        create_private_file(self.path)
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{self.path}{suffix}")
            if p.exists():
                check_private(p, "journal file")
        fp = self._signer.fingerprint
        conn, meta = db.open_writer(self.path, {
            "host": self.host, "public_key": public_pem(self._signer.public), "fingerprint": fp,
            "crypto": self.suite.name,
        })
        if db.crypto_of(meta) != self.suite.name:
            conn.close()
            self._refuse_other_suite(db.crypto_of(meta))
        if meta.get("fingerprint") != fp:
            conn.close()
            raise JournalError(
                f"{self.state_dir / KEY_FILE}: key {fp[:16]}… is not the key this journal was "
                f"started with ({meta.get('fingerprint', '?')[:16]}…); restore the original key"
            )
        return conn

    def _load_state(self) -> tuple[Head, int, float]:
        c = self._conn
        row = c.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        anchor = c.execute("SELECT seq, prev FROM anchors ORDER BY seq DESC LIMIT 1").fetchone()
        if row:
            head = Head(int(row[0]), str(row[1]))
        elif anchor:
            head = Head(int(anchor[0]) - 1, str(anchor[1]))
        else:
            head = Head(0, GENESIS)
        cp = c.execute("SELECT seq, time FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        signed = max(int(cp[0]) if cp else 0, int(anchor[0]) - 1 if anchor else 0)
        return head, signed, float(cp[1]) if cp else self._clock()

    # -- appending ---------------------------------------------------------

    @property
    def head(self) -> Head:
        """The last record's seq and hash."""
        return self._head

    @property
    def unsigned(self) -> int:
        """Records chained since the last checkpoint: not yet signed."""
        return self._head.seq - self._signed_seq

    def append(self, record: dict[str, Any]) -> int:
        """Append one record durably; returns its seq."""
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[dict[str, Any]]) -> list[int]:
        """Append records in one transaction; durable on return. Returns their seqs.

        Every record is checked first: one bad record rejects the batch, and
        nothing of it is stored.
        """
        links = self._links(records, self._head)
        if not links:
            return []
        self._transaction(lambda: self._write_links(links))
        return [link.seq for link in links]

    def _links(self, records: Iterable[dict[str, Any]], head: Head) -> list[Link]:
        links: list[Link] = []
        prev, seq = head.hash, head.seq
        new_hash = self.suite.new_hash
        for record in records:
            seq += 1
            link = make_link(prev, seq, record, new_hash)
            links.append(link)
            prev = link.hash
        return links

    def _write_links(self, links: list[Link]) -> None:
        self._insert(links)
        if self.unsigned >= self.checkpoint_every:
            self._write_checkpoint()

    def _insert(self, links: list[Link]) -> None:
        self._conn.executemany(
            db.INSERT_RECORD,
            [(lk.seq, *lk.keys.as_tuple(), lk.body.decode("utf-8"), lk.prev, lk.hash) for lk in links],
        )
        self._head = Head(links[-1].seq, links[-1].hash)

    def _transaction(self, body: Callable[[], Any]) -> Any:
        saved = (self._head, self._signed_seq, self._last_checkpoint)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._head, self._signed_seq, self._last_checkpoint = saved
            raise db.translate(self.path, exc) from exc
        except BaseException:
            self._head, self._signed_seq, self._last_checkpoint = saved
            raise
        return result

    # -- checkpoints -------------------------------------------------------

    def due(self, now: float) -> bool:
        """True when unsigned records wait and a checkpoint is owed by count or by time.

        A clock jump either way counts as time passed: better one checkpoint
        too many than a head left unsigned until the clock catches up.
        """
        if self.unsigned <= 0:
            return False
        return (self.unsigned >= self.checkpoint_every
                or abs(now - self._last_checkpoint) >= self.checkpoint_interval)

    def due_in(self, now: float) -> float | None:
        """Seconds until a checkpoint is owed by time (0: now); None while nothing waits unsigned."""
        if self.unsigned <= 0:
            return None
        if self.unsigned >= self.checkpoint_every:
            return 0.0
        elapsed = abs(now - self._last_checkpoint)
        return max(0.0, self.checkpoint_interval - elapsed)

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head; None when it is signed already."""
        if self.unsigned <= 0:
            return None
        cp: Checkpoint = self._transaction(self._write_checkpoint)
        return cp

    def _write_checkpoint(self) -> Checkpoint:
        now = self._clock()
        fields = {"seq": self._head.seq, "hash": self._head.hash, "time": now, "host": self.host}
        cp = Checkpoint(self._head.seq, self._head.hash, now, self.host, self._signer.fingerprint,
                        self._signer.sign("checkpoint", fields))
        self._conn.execute(
            "INSERT INTO checkpoints(seq, hash, time, host, key, signature) VALUES (?,?,?,?,?,?)",
            (cp.seq, cp.hash, cp.time, cp.host, cp.key, cp.signature),
        )
        self._signed_seq = cp.seq
        self._last_checkpoint = now
        return cp

    # -- retention ---------------------------------------------------------

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest signed checkpoint, for forwarding its head off the host."""
        row = self._conn.execute(
            "SELECT seq, hash, time, host, key, signature FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        return Checkpoint(*row) if row else None

    def last_lifecycle(self) -> tuple[int, str, float] | None:
        """The newest lifecycle record's seq, kind and time: did the last run end with a clean stop?"""
        row = self._conn.execute(
            "SELECT seq, time, CAST(body AS BLOB) FROM records WHERE type = 'lifecycle' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        try:
            kind = json.loads(bytes(row[2]).decode("utf-8", "replace")).get("kind")
        except ValueError:
            kind = None
        return int(row[0]), str(kind), float(row[1])

    def first_missing(self, heads: list[Any]) -> tuple[Any, str] | None:
        """The first of the witnessed ``heads`` this journal does not hold, and why (see ``witness.missing``)."""
        from agent.journal.witness import missing
        return missing(self._conn, heads)

    def last_time(self) -> float | None:
        """The time of the newest record (any type), None when the journal holds none."""
        row = self._conn.execute("SELECT time FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return float(row[0]) if row else None

    def first_seq(self) -> int:
        """The oldest record still held (head + 1 when there is none)."""
        row = self._conn.execute("SELECT MIN(seq) FROM records").fetchone()
        return int(row[0]) if row and row[0] is not None else self._head.seq + 1

    def prune(self, now: float | None = None) -> PruneResult | None:
        """Drop the oldest records beyond the age or size limit; None when within both.

        The chain stays verifiable from its new start through a signed anchor
        (the first kept seq and the hash it follows), and a ``journal.pruned``
        lifecycle record says what went and why.
        """
        now = self._clock() if now is None else now
        cut = retention.plan(self._conn, self.first_seq(), self._head.seq, now,
                             self.retention_days, self.max_size_mb)
        if cut is None:
            return None
        result: PruneResult = self._transaction(lambda: self._write_prune(cut, now))
        # Each step of this pragma frees one page, and execute() steps once;
        # executescript() runs it to the end.
        self._conn.executescript("PRAGMA incremental_vacuum;")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return result

    def _write_prune(self, cut: retention.Cut, now: float) -> PruneResult:
        c = self._conn
        first, head = self.first_seq(), self._head.seq
        keep_from, reason = cut.keep_from, cut.reason
        cap = int(self.max_size_mb * 1024 * 1024) if self.max_size_mb > 0 else 0
        # Alerts younger than the retention period are not what a size cap should cost: audit and info
        # records go first. Each alert in a size cut is appended again ("carried"), with its original seq,
        # prev and hash, so its place in the old chain can still be checked against forwarded heads.
        cutoff = now - self.retention_days * retention.DAY if self.retention_days > 0 else float("-inf")
        carried: list[dict[str, Any]] = []
        per_record = retention.used_bytes(c) / max(1, head - first + 1)
        budget = min(retention.CARRY_MAX, int(cap * retention.CARRY_SHARE / max(per_record, 1.0)))  # in records

        def carry(start: int, end: int) -> None:
            nonlocal budget
            got = retention.carry(c, start, end, cutoff, budget)
            budget -= len(got)
            carried.extend(got)  # ranges come oldest first, each in seq order

        if reason == "size":
            carry(first, keep_from)
        self._delete_before(keep_from)
        if cap:
            # Freed rows leave half-empty pages, so the first estimate can fall
            # short of the size target; cut again, a bounded number of times.
            for _ in range(32):
                more = retention.size_cut(c, keep_from, head, cap, trigger=cap * retention.SIZE_TARGET,
                                          extra=len(carried))
                if more <= keep_from:
                    break
                carry(keep_from, more)
                keep_from, reason = more, "size"
                self._delete_before(keep_from)
        if keep_from > head:
            prev = self._head.hash
        else:
            prev = str(c.execute("SELECT prev FROM records WHERE seq = ?", (keep_from,)).fetchone()[0])
        removed = min(keep_from, head + 1) - first
        fields = {"seq": keep_from, "prev": prev, "time": now, "host": self.host}
        c.execute(db.INSERT_ANCHOR, (keep_from, prev, now, self.host, self._signer.fingerprint,
                   self._signer.sign("anchor", fields)))
        record = {
            "type": "lifecycle", "time": now, "host": self.host, "kind": "journal.pruned",
            "detail": {"removed": removed, "up_to_seq": keep_from - 1, "reason": reason,
                       "retention_days": self.retention_days, "max_size_mb": self.max_size_mb,
                       "alerts_carried": len(carried)},
        }
        links = self._links([record, *carried], self._head)
        self._insert(links)
        self._write_checkpoint()
        return PruneResult(removed, keep_from - 1, reason, links[0].seq)

    def _delete_before(self, keep_from: int) -> None:
        for table in ("records", "checkpoints", "anchors"):
            self._conn.execute(f"DELETE FROM {table} WHERE seq < ?", (keep_from,))  # noqa: S608 - fixed names

    # -- keys, figures, closing -----------------------------------------------

    def public_key_pem(self) -> str:
        """The journal's public key, PEM."""
        return public_pem(self._signer.public)

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint in the journal's suite, hex."""
        return self._signer.fingerprint

    def stats(self) -> JournalStats:
        """Records held and bytes on disk (database plus its WAL)."""
        first = self.first_seq()
        size = sum(Path(f"{self.path}{s}").stat().st_size
                   for s in ("", "-wal") if Path(f"{self.path}{s}").exists())
        return JournalStats(max(0, self._head.seq - first + 1), first, self._head.seq, size)

    def close(self) -> None:
        """Sign the head if anything is unsigned, then close (idempotent)."""
        if self._closed:
            return
        try:
            self.checkpoint()
        finally:
            self._closed = True
            self._conn.close()
            self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
