"""``dutywatch events``: query the journal's findings and lifecycle records."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from typing import Any

from agent.commands.common import add_period_options, period_of, positive_int


def _values(items: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in items or () for v in item.split(",") if v.strip())


def register(sub: Any) -> None:
    """Add the ``events`` command."""
    from agent.journal.locate import add_location_options

    p = sub.add_parser("events", help="query the journal",
                       description="Print findings (or, with --type, lifecycle records) from the journal in seq "
                                   "order. Filters of one kind take several values, comma-separated or "
                                   "repeated.")
    add_location_options(p)
    add_period_options(p, "as --since")
    p.add_argument("--rule", action="append", metavar="ID", help="rule id")
    p.add_argument("--severity", action="append", metavar="LEVEL", help="critical, high, medium, low, info")
    p.add_argument("--unit", action="append", help="accountable unit (运行单位)")
    p.add_argument("--operator", action="append", help="accountable operator")
    p.add_argument("--type", choices=("finding", "lifecycle", "heartbeat", "all"), default="finding",
                   help="which records: finding (the default), lifecycle (starts, stops, reloads, gaps, "
                        "tampering...), heartbeat (the agent.heartbeat records a quiet agent writes to prove "
                        "it was watching), or all; heartbeats are left out of lifecycle and all unless "
                        "--heartbeats")
    p.add_argument("--heartbeats", action="store_true",
                   help="list agent.heartbeat records with --type lifecycle or all")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--lang", choices=("zh", "en"), default="zh", help="message language in the table")
    p.add_argument("--limit", type=positive_int, help="stop after this many records")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the matching records."""
    from agent.journal import db
    from agent.journal.chain import SEVERITIES
    from agent.journal.errors import JournalError
    from agent.journal.locate import journal_path
    from agent.journal.query import Query, iter_records
    from agent.journal.render import json_line, table_lines

    now = time.time()
    severities = _values(args.severity)
    for s in severities:
        if s not in SEVERITIES:
            raise JournalError(f"--severity {s!r}: not one of {', '.join(SEVERITIES)}")
    since, until = period_of(args, now)
    q = Query(
        since=since, until=until,
        rules=_values(args.rule), severities=severities, units=_values(args.unit),
        operators=_values(args.operator),
        types={"all": (), "heartbeat": ("lifecycle",)}.get(args.type, (args.type,)), limit=args.limit,
        heartbeats="only" if args.type == "heartbeat" else "with" if args.heartbeats else "without",
    )
    path = journal_path(args)
    conn, _ = db.open_reader(path)
    try:
        rows = iter_records(conn, q)
        lines = (json_line(r) for r in rows) if args.format == "json" else table_lines(rows, args.lang)
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, less) has gone; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except sqlite3.Error as exc:
        raise db.translate(path, exc) from exc
    finally:
        conn.close()
    return 0
