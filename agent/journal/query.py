"""Reading records back out of the journal, filtered, one at a time."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from agent.journal.chain import HEARTBEAT

# The kind of a lifecycle record, read only where the body is JSON (a damaged one is listed, not fatal).
_KIND = "(CASE WHEN type = 'lifecycle' AND json_valid(body) THEN json_extract(body, '$.kind') END)"


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of ``dutywatch events``; an empty tuple means any value."""

    since: float | None = None
    until: float | None = None
    rules: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    types: tuple[str, ...] = ("finding",)
    limit: int | None = None
    # A quiet agent's heartbeats (288 a day) are evidence for reports but noise in a listing of starts,
    # stops and gaps: with them, without them, or only them.
    heartbeats: Literal["with", "without", "only"] = "with"


@dataclass(frozen=True, slots=True)
class Row:
    """One stored record with its sequence number."""

    seq: int
    record: dict[str, Any]


def _in(column: str, values: tuple[str, ...], where: list[str], params: list[Any]) -> None:
    if values:
        where.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)


def build_sql(q: Query) -> tuple[str, list[Any]]:
    """The SELECT for ``q`` and its parameters; column names are fixed, values bound."""
    where: list[str] = []
    params: list[Any] = []
    if q.since is not None:
        where.append("time >= ?")
        params.append(q.since)
    if q.until is not None:
        where.append("time <= ?")
        params.append(q.until)
    _in("type", q.types, where, params)
    _in("rule", q.rules, where, params)
    _in("severity", q.severities, where, params)
    _in("unit", q.units, where, params)
    _in("operator", q.operators, where, params)
    if q.heartbeats != "with":
        where.append(f"{_KIND} IS {'NOT ' if q.heartbeats == 'without' else ''}?")
        params.append(HEARTBEAT)
    sql = "SELECT seq, body FROM records"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # seq is the order: it survives clock jumps that time does not.
    sql += " ORDER BY seq"
    if q.limit is not None:
        sql += " LIMIT ?"
        params.append(q.limit)
    return sql, params


def iter_records(conn: sqlite3.Connection, q: Query) -> Iterator[Row]:
    """Matching records in seq order, streamed from the cursor (never all in memory)."""
    sql, params = build_sql(q)
    for seq, body in conn.execute(sql, params):
        yield Row(int(seq), json.loads(body))
