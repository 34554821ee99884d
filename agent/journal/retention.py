"""Where pruning cuts the chain: by age and by size, always a prefix of it; which alerts a size cut carries.

Pruning only ever removes the oldest records by sequence number. Removing by
time alone would cut holes in the chain whenever the clock had jumped; a
record older than the retention period that follows a younger one stays
until the younger one goes.

A cut made for size would push alerts out with the audit and info records
around them. Alerts younger than the retention period are carried instead:
appended again at the head, with their place in the old chain, so a noisy
host loses its audit and info records first and keeps its alerts.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any

DAY = 86400.0
# Cut down to this share of the cap, so a journal at its cap is not pruned
# again for every few records appended.
SIZE_TARGET = 0.9
# At most this share of the cap is held by alerts carried past a size cut; beyond it the oldest go.
CARRY_SHARE = 0.5
CARRY_MAX = 50_000  # records carried by one prune (memory); hourly prunes of a growing journal cut far fewer


@dataclass(frozen=True, slots=True)
class Cut:
    """Records with ``seq < keep_from`` go; ``reason`` is ``age`` or ``size``."""

    keep_from: int
    reason: str


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (free pages not counted)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def age_cut(conn: sqlite3.Connection, first: int, head: int, cutoff: float) -> int:
    """The first seq to keep: the oldest-in-sequence record no older than ``cutoff``."""
    # The unary plus keeps SQLite off the time index, so this walks seq order
    # and stops at the first young record instead of sorting every match.
    row = conn.execute(
        "SELECT seq FROM records WHERE +time >= ? AND seq >= ? ORDER BY seq LIMIT 1", (cutoff, first)
    ).fetchone()
    return int(row[0]) if row else head + 1


def size_cut(conn: sqlite3.Connection, first: int, head: int, cap_bytes: int,
             trigger: float | None = None, *, extra: int = 0, start: int | None = None) -> int:
    """The first seq to keep so that the records fit in ``SIZE_TARGET`` of the cap.

    Nothing is cut while the pages in use stay under ``trigger`` (the cap itself
    by default). ``start`` is a cut already planned (records before it count
    as gone) and ``extra`` the number of records that will be appended again (carried alerts).
    """
    measured = used_bytes(conn)
    count = head - first + 1
    if count <= 0:
        return first
    per_record = measured / count
    begin = first if start is None else start
    used = measured + (extra - (begin - first)) * per_record
    if used <= (cap_bytes if trigger is None else trigger):
        return begin
    drop = math.ceil((used - cap_bytes * SIZE_TARGET) / per_record)
    return min(begin + drop, head + 1)


def carry(conn: sqlite3.Connection, first: int, keep_from: int, cutoff: float,
          budget: int | None) -> list[dict[str, Any]]:
    """The alerts younger than ``cutoff`` before ``keep_from``, as records to append again.

    Each keeps its content and says where it was (``carried``: seq, prev and
    hash in the old chain; a record carried before keeps its first place).
    Past ``budget`` records only the newest are carried: alerts alone must
    not hold the journal over its cap.
    """
    rows = conn.execute("SELECT seq, CAST(body AS BLOB), prev, hash FROM records WHERE seq >= ? AND seq < ? "
                        "AND action = 'alert' AND time >= ? ORDER BY seq DESC", (first, keep_from, cutoff))
    out: list[dict[str, Any]] = []
    for seq, body, prev, digest in rows:
        if budget is not None and len(out) >= budget:
            break
        try:
            rec = json.loads(bytes(body).decode("utf-8", "surrogateescape"))
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        rec.setdefault("carried", {"seq": int(seq), "prev": str(prev), "hash": str(digest)})
        out.append(rec)
    out.reverse()
    return out


def plan(conn: sqlite3.Connection, first: int, head: int, now: float,
         retention_days: float, max_size_mb: float) -> Cut | None:
    """What to prune now, or None when the journal is within both limits."""
    if head < first:
        return None
    by_age = age_cut(conn, first, head, now - retention_days * DAY) if retention_days > 0 else first
    by_size = size_cut(conn, first, head, int(max_size_mb * 1024 * 1024)) if max_size_mb > 0 else first
    keep_from = max(by_age, by_size)
    if keep_from <= first:
        return None
    return Cut(keep_from, "size" if by_size > by_age else "age")
