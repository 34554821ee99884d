"""The journal's writer thread: batches records, retries through failures, signs on time.

Records wait in a bounded buffer; a full buffer makes ``put`` wait (the
pipeline then sheds load at its own queue, where drops are counted), so an
accepted finding is never thrown away here. A failed write (disk full, I/O
error) keeps the batch, counts the failure, retries with backoff and, once
writing works again, journals a record of the gap.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.daemon.threadname import set_thread_name
from agent.journal.chain import HEARTBEAT
from agent.journal.errors import JournalError
from agent.journal.store import Journal
from agent.metrics import Metrics

_log = logging.getLogger("dutywatch.journal")
BATCH = 500


class Coalesced:
    """A send made at once when asked, then at most once per ``every`` seconds while asks keep coming.

    What is sent is read at send time (the journal's head), so the one send
    after a burst covers every ask in it. ``due`` sends an owed one whose time
    has come and says how long until the next may go (None: nothing owed).
    """

    def __init__(self, send: Callable[[], None], every: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.every = every
        self.monotonic = monotonic
        self.owed = False
        self._sent = float("-inf")

    def ask(self) -> None:
        """Something new must be sent: now, or when ``every`` has passed since the last send."""
        self.owed = True
        self.due()

    def due(self) -> float | None:
        """Send if owed and allowed; seconds until an owed send may go, None when nothing is owed."""
        if not self.owed:
            return None
        now = self.monotonic()
        wait = self._sent + self.every - now
        if wait > 0:
            return wait
        self.owed = False
        self._sent = now
        self.send()
        return None


class JournalWriter:
    """Owns the Journal on its own thread."""

    def __init__(self, journal: Journal, metrics: Metrics, *, capacity: int = 4096,
                 clock: Callable[[], float] = time.time,
                 on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 prune_every: float = 3600.0, monotonic: Callable[[], float] = time.monotonic,
                 on_idle: Callable[[], float | None] | None = None) -> None:
        self.journal = journal
        self.metrics = metrics
        self.capacity = capacity
        self.clock = clock
        self.on_commit = on_commit
        self.on_checkpoint = on_checkpoint
        # Called after each batch and when a wait ends; returns seconds until it wants to be called again.
        self.on_idle = on_idle
        self._idle_due: float | None = None
        self._size_at = float("-inf")  # monotonic time the size gauge was last set
        self.prune_every = prune_every
        self._buf: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.failing_since: float | None = None
        self.failures = 0
        self.durable_seq = journal.head.seq
        self._last_prune = 0.0
        self.monotonic = monotonic
        self._anchor = (clock(), monotonic())  # wall and monotonic time at start: see _retention_now
        # The newest record time put: a record proves the agent alive then, so a heartbeat is owed only
        # after this long a silence.
        self.last_put = journal.last_time() or 0.0

    def put(self, record: dict[str, Any]) -> None:
        """Queue a record; waits while the buffer is full (never drops)."""
        with self._cond:
            while len(self._buf) >= self.capacity and not self._stop:
                self._cond.wait()  # notified when the writer takes a batch, or at stop
            self._buf.append(record)
            t = record.get("time")
            if isinstance(t, (int, float)) and not isinstance(t, bool) and t > self.last_put:
                self.last_put = float(t)
            self._cond.notify_all()

    def heartbeat(self, now: float, every: float, detail: dict[str, Any]) -> bool:
        """Journal an ``agent.heartbeat`` when no record has been put for ``every`` seconds; True if it did.

        The report counts a run as watched up to its last record, so on a quiet
        host these records are the proof that the agent was alive; a busy host's
        own records are that proof, and it gets none. A clock set back counts as
        time passed, like the checkpoint rule.
        """
        if abs(now - self.last_put) < every:
            return False
        self.put({"type": "lifecycle", "time": now, "host": self.journal.host, "kind": HEARTBEAT,
                  "detail": detail})
        return True

    def pending(self) -> int:
        """Records not yet durable."""
        with self._cond:
            return len(self._buf)

    def start(self) -> None:
        """Start writing."""
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), sign the head and close."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            # The last head is signed here, not by close(), so it is forwarded and witnessed like any other.
            if self.journal.checkpoint() is not None:
                self._forward_checkpoint()
            self.journal.close()
        except (JournalError, sqlite3.Error) as exc:
            _log.error("journal close failed: %s", exc)

    def _run(self) -> None:
        set_thread_name("journal")
        backoff = 0.5
        while True:
            with self._cond:
                if not self._buf and not self._stop:
                    # Until a record comes, or the next checkpoint or prune is due: never a fixed poll.
                    self._cond.wait(self._idle_wait())
                batch = [self._buf.popleft() for _ in range(min(BATCH, len(self._buf)))]
                stopping = self._stop
                self._cond.notify_all()
            if batch:
                if not self._write(batch):
                    with self._cond:
                        self._buf.extendleft(reversed(batch))
                    if stopping and self.clock() - (self.failing_since or self.clock()) > 10:
                        _log.error("journal unavailable at stop; %d records not written", len(self._buf))
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
            self._housekeeping()
            if stopping and not self.pending():
                return

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        signed_before = self.journal.unsigned
        try:
            seqs = self.journal.append_many(self._linked(batch))
        except (JournalError, sqlite3.Error, OSError) as exc:
            self.failures += 1
            self.metrics.journal_write_failed()
            if self.failing_since is None:
                self.failing_since = self.clock()
                _log.error("journal write failed, holding %d records and retrying: %s", len(batch), exc)
            return False
        self.durable_seq = seqs[-1]
        self.metrics.journal_appended(len(seqs))
        for rec, seq in zip(batch, seqs, strict=True):
            rec["seq"] = seq
        if self.on_commit is not None:
            self.on_commit(batch)
        if self.journal.unsigned < signed_before + len(seqs):
            self._forward_checkpoint()
        elif any(r.get("kind") == HEARTBEAT for r in batch):
            self._sign_heartbeat(only=signed_before == 0 and all(r.get("kind") == HEARTBEAT for r in batch))
        if self.failing_since is not None:
            since, n = self.failing_since, self.failures
            self.failing_since, self.failures = None, 0
            _log.warning("journal writable again after %.0f s", self.clock() - since)
            self._write([{"type": "lifecycle", "time": self.clock(), "host": self.journal.host,
                          "kind": "journal.resumed",
                          "detail": {"failed_since": since, "failed_writes": n,
                                     "message": "journal writes failed from the first time to this record; "
                                                "findings were held in memory and written late"}}])
        return True

    def _sign_heartbeat(self, only: bool) -> None:
        """Sign a heartbeat at once, so an agent killed right after it still proves it was alive then.

        A checkpoint over heartbeats alone is not forwarded or witnessed: it signs
        nothing anyone could gain by cutting away, and a quiet host would otherwise
        send one every few minutes. The next checkpoint covers it in the chain.
        """
        try:
            cp = self.journal.checkpoint()
        except (JournalError, sqlite3.Error, OSError) as exc:
            _log.error("signing the heartbeat failed (the timed checkpoint will): %s", exc)
            return
        if cp is not None and not only:
            self._forward_checkpoint()

    def _linked(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records as stored: a ``_seq_of`` reference (an enforcement naming its finding) becomes that seq.

        The finding is either already written (it carries its ``seq``) or earlier in this batch,
        whose seqs follow the head in order; a folded finding has none, and the record keeps
        its rule and time only.
        """
        if not any("_seq_of" in r for r in batch):
            return batch
        base = self.journal.head.seq
        pos = {id(r): base + 1 + i for i, r in enumerate(batch)}
        out = []
        for r in batch:
            ref = r.get("_seq_of")
            if ref is None:
                out.append(r)
                continue
            seq = ref.get("seq") if isinstance(ref.get("seq"), int) else pos.get(id(ref))
            rec = {k: v for k, v in r.items() if k != "_seq_of"}
            detail = dict(rec.get("detail") or {})
            detail["finding"] = {**(detail.get("finding") or {}), "seq": seq}
            rec["detail"] = detail
            out.append(rec)
        return out

    def _forward_checkpoint(self) -> None:
        cp = self.journal.latest_checkpoint()
        if cp is not None and self.on_checkpoint is not None:
            self.on_checkpoint({**cp.fields(), "key": cp.key, "signature": cp.signature,
                                "crypto": self.journal.suite.name})

    def _retention_now(self, now: float) -> float:
        """The time retention ages records by: never later than the wall clock at start plus time elapsed.

        A wall clock set forward (a bad RTC, NTP gone wrong, someone hiding
        their tracks) must not age six months of audit records out in one
        prune; a clock set back only delays pruning.
        """
        wall0, mono0 = self._anchor
        bound = wall0 + (self.monotonic() - mono0) + 60.0
        if now > bound:
            _log.warning("wall clock is %.0f s ahead of the time elapsed since start; retention uses the "
                         "elapsed time", now - bound)
            return bound
        return now

    def _idle_wait(self) -> float:
        """Seconds until housekeeping has something to do: a checkpoint owed by time, or a prune."""
        now = self.clock()
        wait = max(0.0, self.prune_every - abs(now - self._last_prune))
        due = self.journal.due_in(now)
        if self._idle_due is not None:
            wait = min(wait, self._idle_due)
        return wait if due is None else min(wait, due)

    def _housekeeping(self) -> None:
        now = self.clock()
        try:
            if self.journal.due(now) and self.journal.checkpoint() is not None:
                self._forward_checkpoint()
            if abs(now - self._last_prune) >= self.prune_every:
                self._last_prune = now
                self.journal.prune(self._retention_now(now))
            # The size gauge (a query and stat calls): once a second while records keep coming, and
            # whenever the buffer is empty, so the last batch of a storm is shown.
            mono = self.monotonic()
            if not self._buf or mono - self._size_at >= 1.0:
                self._size_at = mono
                self.metrics.set_journal_size(self.journal.stats().size_bytes)
        except (JournalError, sqlite3.Error, OSError) as exc:
            self.metrics.journal_write_failed()
            _log.error("journal housekeeping failed: %s", exc)
        if self.on_idle is not None:
            self._idle_due = self.on_idle()
