"""``dutywatch export``: write a signed evidence bundle for central audit."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.commands.common import add_period_options, period_of


def register(sub: Any) -> None:
    """Add the ``export`` command."""
    from agent.journal.locate import add_location_options

    p = sub.add_parser("export", help="signed evidence bundle for central audit",
                       description="Write the journal's records of a period, their checkpoints and the "
                                   "public key to one signed file; `dutywatch verify --bundle` checks it.")
    add_location_options(p)
    add_period_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="the bundle to write")
    p.set_defaults(func=run)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def run(args: argparse.Namespace) -> int:
    """Export and say what went into the bundle."""
    from agent.journal.bundle import export_bundle
    from agent.journal.locate import journal_path
    from agent.journal.store import KEY_FILE

    now = time.time()
    since, until = period_of(args, now)
    path = journal_path(args)
    s = export_bundle(path, path.parent / KEY_FILE, args.out, since=since, until=until,
                      period={"since": _iso(since), "until": _iso(until)}, clock=lambda: now)
    print(f"wrote {s.path}: host {s.host}, records {s.first_seq}..{s.last_seq} ({s.records}), "
          f"{s.checkpoints} checkpoints")
    print(f"crypto suite: {s.suite}")
    print(f"{'sm3' if s.suite == 'gm' else 'sha256'} {s.digest}")
    print(f"key fingerprint: {s.fingerprint}")
    return 0
