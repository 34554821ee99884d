"""Evidence back to the centre: a signed bundle of every period, written where the centre collects them.

``export: {every: 1d, to: DIR}``. At each period boundary (local midnight
for ``1d``; multiples of ``every`` in local time otherwise) the agent
journals an ``evidence.cut`` record and writes the records from the last cut
up to just before this one as a signed evidence bundle
``DIR/HOST/HOST_YYYY-MM-DD.dwe`` (``HOST_FIRST_LAST.dwe`` for several days, both
included, after a time the agent was down; ``HOST_STARTTIME_ENDTIME.dwe`` for
periods shorter than a day).
Consecutive bundles meet exactly, by sequence number, so none loses or
repeats a record, and every period the agent ran in holds at least its
opening cut: a day with no bundle is a day the agent did not run, which the
fleet report shows per host. A period that could not be written (the share
gone, a full disk) is journaled (``evidence.export_failed``) and tried again
at the next look, still from the same record. The state (last seq and
boundary) is ``STATE_DIR/export.json``.

One thread, asleep until the next boundary or a retry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import DutyWatchError

_log = logging.getLogger("dutywatch")
STATE_FILE = "export.json"
RETRY_SECONDS = 300.0
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class ExportState:
    """Where the last bundle ended."""

    last_seq: int
    last_until: float


def local_offset(t: float) -> float:
    """Seconds east of UTC at ``t`` in local time."""
    return float(time.localtime(t).tm_gmtoff)


def boundary_at_or_before(t: float, every: float) -> float:
    """The latest period boundary not after ``t`` (aligned to local midnight for whole days)."""
    off = local_offset(t)
    return (t + off) // every * every - off


def safe_host(host: str) -> str:
    """The host id as a file name."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in host).lstrip(".") or "host"


def bundle_name(host: str, since: float, until: float, every: float) -> str:
    """``HOST_YYYY-MM-DD.dwe`` for one whole local day, else ``HOST_START_END.dwe``."""
    safe = safe_host(host)
    day = "%Y-%m-%d"
    if every % DAY == 0:
        first, last = time.strftime(day, time.localtime(since)), time.strftime(day, time.localtime(until - 1))
        return f"{safe}_{first}.dwe" if first == last else f"{safe}_{first}_{last}.dwe"  # days, last included
    fmt = "%Y-%m-%dT%H%M"
    return f"{safe}_{time.strftime(fmt, time.localtime(since))}_{time.strftime(fmt, time.localtime(until))}.dwe"


class PeriodicExport:
    """Cuts the journal at each boundary and writes the period's bundle."""

    def __init__(self, *, every: float, to: Path, state_dir: Path, journal_path: Path, key_path: Path,
                 host: Callable[[], str], put: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.time, on_result: Callable[[bool], None] | None = None) -> None:
        self.every = every
        self.to = to
        self.state_path = state_dir / STATE_FILE
        self.journal_path = journal_path
        self.key_path = key_path
        self.host = host
        self.put = put
        self.clock = clock
        self.on_result = on_result
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retry_at: float | None = None

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> ExportState | None:
        try:
            doc = json.loads(self.state_path.read_text())
            return ExportState(int(doc["last_seq"]), float(doc["last_until"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise DutyWatchError(f"{self.state_path}: unreadable export state ({exc}); move it aside to export "
                                 "from the journal's first record") from exc

    def _save(self, st: ExportState) -> None:
        from agent.textsafe import write_new
        text = json.dumps({"last_seq": st.last_seq, "last_until": st.last_until}) + "\n"
        write_new(self.state_path, lambda f: f.write(text), binary=False)

    # -- thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Export what is due now, then at every boundary."""
        self._thread = threading.Thread(target=self._run, name="export", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop (an export in progress finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def next_due(self, now: float) -> float:
        """When the next look is due."""
        due = boundary_at_or_before(now, self.every) + self.every
        if self.retry_at is not None:
            due = min(due, self.retry_at)
        return due

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the next boundary tries again; the failure was journaled
                _log.exception("periodic evidence export failed")
            now = self.clock()
            self._stop.wait(max(0.5, self.next_due(now) - now))

    def run_once(self) -> Path | None:
        """Write the bundle of the last closed period if not yet written; its path, or None."""
        from agent.journal import db

        now = self.clock()
        until = boundary_at_or_before(now, self.every)
        st = self.state()
        if st is not None and st.last_until >= until and self.retry_at is None:
            return None
        conn, _ = db.open_reader(self.journal_path)
        try:
            first_row = conn.execute("SELECT min(seq), min(time) FROM records").fetchone()
        finally:
            conn.close()
        if first_row[0] is None:
            return None
        if st is None:
            since = boundary_at_or_before(float(first_row[1]), self.every)
            first = int(first_row[0])
        else:
            since, first = st.last_until, st.last_seq + 1
        if since >= until:
            return None
        cut_id = uuid.uuid4().hex
        self.put({"type": "lifecycle", "time": now, "host": self.host(), "kind": "evidence.cut",
                  "detail": {"since": since, "until": until, "id": cut_id,
                             "message": f"evidence period closed: {_iso(since)} .. {_iso(until)}"}})
        cut_seq = self._wait_for(cut_id)
        out_dir = self.to / safe_host(self.host())
        out = out_dir / bundle_name(self.host(), since, until, self.every)
        try:
            from agent.journal.bundle import export_bundle
            out_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            s = export_bundle(self.journal_path, self.key_path, out, since=None, until=None,
                              period={"since": _iso(since), "until": _iso(until), "every": self.every},
                              clock=self.clock, seqs=(first, cut_seq - 1))
        except (DutyWatchError, OSError) as exc:
            self.retry_at = self.clock() + RETRY_SECONDS
            self.put({"type": "lifecycle", "time": self.clock(), "host": self.host(),
                      "kind": "evidence.export_failed",
                      "detail": {"since": since, "until": until, "to": str(out), "error": str(exc),
                                 "message": f"evidence bundle {out} not written: {exc}"}})
            if self.on_result:
                self.on_result(False)
            _log.error("evidence bundle %s not written: %s (tried again in %.0f s)", out, exc, RETRY_SECONDS)
            return None
        self.retry_at = None
        self._save(ExportState(cut_seq - 1, until))
        self.put({"type": "lifecycle", "time": self.clock(), "host": self.host(), "kind": "evidence.exported",
                  "detail": {"path": str(out), "since": since, "until": until, "first_seq": s.first_seq,
                             "last_seq": s.last_seq, "records": s.records, "digest": s.digest}})
        if self.on_result:
            self.on_result(True)
        _log.info("evidence bundle %s: records %d..%d", out, s.first_seq, s.last_seq)
        return out

    def _wait_for(self, cut_id: str, timeout: float = 60.0) -> int:
        from agent.journal import db

        deadline = time.monotonic() + timeout
        needle = f'%"id":"{cut_id}"%'
        while True:
            conn, _ = db.open_reader(self.journal_path)
            try:
                row = conn.execute("SELECT seq FROM records WHERE type = 'lifecycle' AND body LIKE ? "
                                   "ORDER BY seq DESC LIMIT 1", (needle,)).fetchone()
            finally:
                conn.close()
            if row is not None:
                return int(row[0])
            if time.monotonic() > deadline or self._stop.is_set():
                raise DutyWatchError("the journal did not take the period's cut record in time")
            time.sleep(0.05)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
