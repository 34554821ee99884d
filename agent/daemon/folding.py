"""Folding: repeated identical findings within a window become one record with a count.

A root daemon that execs every second, each exec a finding, would fill the
journal with copies and teach the officer to ignore the panel. A finding is
identical to an earlier one when rule, operator and object (the program,
file, peer or medium) agree. The first one is journaled at once, as always;
the repeats within ``window`` seconds of it are only counted, and when the
window closes one record says how many there were and the first and last
time (``folded``: ``{count, first, last, window}``), built from the last
repeat. Every record still goes through the hash chain: nothing is removed
from it, fewer records are written. ``findings_total`` counts every finding.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
MAX_OPEN = 20000  # distinct (rule, operator, object) folds held at once; the oldest closes early past this


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fold_key(record: Record) -> tuple[str, ...]:
    """Rule, operator and object of a finding record."""
    ev = record.get("event") or {}
    proc, f, net, media = (ev.get(g) or {} for g in ("process", "file", "net", "media"))
    acc = record.get("accountable") or {}
    op = (ev.get("operator") or {}).get("account") or acc.get("operator") or f"uid:{proc.get('uid')}"
    obj = f.get("path") or (f"{net.get('remote_ip')}:{net.get('remote_port')}" if net.get("remote_ip") else None) \
        or media.get("serial") or proc.get("exe") or proc.get("name") \
        or (ev.get("event") or {}).get("detail") or ""  # the agent's own events (tamper, policy): what happened
    return (str(record.get("rule")), str(op), str((ev.get("event") or {}).get("kind")), str(f.get("dest_path") or ""),
            str(obj))


@dataclass
class _Fold:
    start: float
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    last_record: Record | None = None


class Folder:
    """Sits between the pipeline and the journal writer; ``tick`` closes windows that have run out."""

    def __init__(self, out: Callable[[Record], None], window: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.out = out
        self.window = window
        self.clock = clock
        self._open: OrderedDict[tuple[str, ...], _Fold] = OrderedDict()
        self._lock = threading.RLock()  # the pipeline worker puts, the main loop ticks
        self.folded = 0  # findings counted into a fold instead of being journaled one by one
        self.sent = 0  # records handed on to the journal (a fold's record counts once)

    def put(self, record: Record) -> None:
        """Journal a record, or count it into the open fold of its kind."""
        with self._lock:  # the pipeline worker and the main loop (lifecycle findings) both put
            if self.window <= 0 or record.get("type") != "finding":
                self.sent += 1
                self.out(record)
                return
            self._put(record)

    def _put(self, record: Record) -> None:
        key = fold_key(record)
        t = float(record.get("time") or self.clock())
        fold = self._open.get(key)
        # Two sources (the audit trail and the process connector) stamp times a little apart and
        # arrive interleaved: a repeat a little older than the fold's first record is still a repeat.
        if fold is not None and -self.window < t - fold.start < self.window:
            if not fold.count:
                fold.first = fold.last = t
            fold.first, fold.last = min(fold.first, t), max(fold.last, t)
            fold.count += 1
            fold.last_record = record
            self.folded += 1
            return
        if fold is not None:
            self._close(key)
        self.sent += 1
        self.out(record)
        self._open[key] = _Fold(t)
        if len(self._open) > MAX_OPEN:
            self._close(next(iter(self._open)))

    def tick(self, now: float | None = None) -> None:
        """Close every fold whose window has run out (call it every second or so)."""
        now = self.clock() if now is None else now
        with self._lock:
            for key in [k for k, f in self._open.items() if now - f.start >= self.window or now < f.start]:
                self._close(key)

    def flush(self) -> None:
        """Close every fold (at stop)."""
        with self._lock:
            for key in list(self._open):
                self._close(key)

    def _close(self, key: tuple[str, ...]) -> None:
        fold = self._open.pop(key)
        if not fold.count or fold.last_record is None:
            return
        rec = copy.deepcopy(fold.last_record)
        last = fold.last
        rec["folded"] = {"count": fold.count, "first": fold.first, "last": last, "window": self.window}
        msg = rec.get("message")
        if isinstance(msg, dict):
            span = f"{_iso(fold.first)} – {_iso(last)}"
            msg["zh"] = f"{msg.get('zh', '')}（{span} 内同样的操作共 {fold.count} 次）"
            msg["en"] = f"{msg.get('en', '')} ({fold.count} times like this, {span})"
        self.sent += 1
        self.out(rec)
