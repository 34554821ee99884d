"""``dutywatch reload``: make the running agent load its config, registry and rules again, wait for
the outcome, and fail when the new set was rejected (systemd's ExecReload, so that
``systemctl reload dutywatch`` tells the truth)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.commands.common import add_config, config_path
from agent.config import load_config
from agent.daemon.reloadstate import ReloadOutcome, read_outcome
from agent.daemon.runstate import RUN_FILE
from agent.errors import LoadError, LoadErrors


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("reload", help="reload the running agent's config, registry and rules; exit 1 if rejected")
    add_config(p)
    p.add_argument("--pid", type=int, metavar="PID",
                   help="the agent's process (systemd passes $MAINPID; default: the pid in the state directory)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the agent's answer (default 60)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Signal the agent, wait for its reload outcome, print it; 0 only when the new set is in force."""
    try:
        state_dir = load_config(config_path(args)).state_dir
    except (LoadError, LoadErrors) as exc:
        errors = exc.errors if isinstance(exc, LoadErrors) else [exc]
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    pid = args.pid if args.pid is not None else _pid_from(state_dir)
    if pid is None:
        print(f"dutywatch: no running agent found in {state_dir} (give --pid)", file=sys.stderr)
        return 1
    before = read_outcome(state_dir)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"dutywatch: cannot signal the agent (pid {pid}): {exc.strerror}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        now = read_outcome(state_dir)
        if now is not None and _newer(now, before, pid):
            return _report(now)
        time.sleep(0.1)
    print(f"dutywatch: the agent (pid {pid}) did not answer the reload within {args.timeout:.0f} s", file=sys.stderr)
    return 1


def _newer(now: ReloadOutcome, before: ReloadOutcome | None, pid: int) -> bool:
    """An outcome of the process we signalled, made after we looked (a reload it made for SIGHUP)."""
    if now.pid != pid or now.why != "SIGHUP":
        return False
    return before is None or before.pid != pid or now.generation > before.generation


def _report(outcome: ReloadOutcome) -> int:
    if outcome.ok:
        print(f"reloaded: {outcome.rules} rules in force")
        return 0
    print(f"dutywatch: reload rejected; the agent keeps its {outcome.rules} rules in force:", file=sys.stderr)
    for e in outcome.errors:
        print(e, file=sys.stderr)
    return 1


def _pid_from(state_dir: Path) -> int | None:
    try:
        data = json.loads((state_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = data.get("pid") if isinstance(data, dict) else None
    return pid if isinstance(pid, int) and pid > 0 else None
