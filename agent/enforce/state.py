"""Enforcements in force, kept in ``STATE_DIR/enforce.json``, and lift requests beside it.

The file is written to a temporary name and renamed into place, so ``dutywatch
enforce list`` never reads half of it. ``dutywatch enforce lift ID`` drops a
request into ``STATE_DIR/enforce-lift/``; the running agent takes it within a
second, lifts, journals who asked, and removes the request.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "enforce.json"
LIFT_DIR = "enforce-lift"


@dataclass
class Enforcement:
    """One decision in force (or, in dry-run, one that would be)."""

    id: str
    kind: str  # network | isolate | media | copy
    target: str  # an address, zone:NAME, host, or a device
    mode: str  # dryrun | enforce
    rule: str
    severity: str
    since: float
    until: float | None  # None: while the agent runs (preventive blocks, a read-only stick)
    operator: str | None = None
    finding_time: float | None = None
    nets: list[str] = field(default_factory=list)  # what the kernel holds for it (network, isolate)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Enforcement:
        """Back from ``as_dict``; unknown keys are ignored."""
        names = Enforcement.__dataclass_fields__
        return Enforcement(**{k: v for k, v in d.items() if k in names})


@dataclass
class Saved:
    """What ``enforce.json`` holds: the agent that wrote it, its table, and every enforcement."""

    pid: int
    table: str
    time: float
    enforcements: list[Enforcement]


def save(state_dir: Path, saved: Saved) -> None:
    """Write the state atomically."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    data = {"pid": saved.pid, "table": saved.table, "time": saved.time,
            "enforcements": [e.as_dict() for e in saved.enforcements]}
    with open(tmp, "w", encoding="utf-8") as f:
        # No fsync: after a power loss the kernel holds no block either, and a crash of the agent
        # alone leaves the renamed file whole.
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def load(state_dir: Path) -> Saved | None:
    """The saved state, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        return Saved(int(data["pid"]), str(data["table"]), float(data["time"]),
                     [Enforcement.from_dict(e) for e in data.get("enforcements", [])])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(pid: int) -> bool:
    """Whether a process with this id runs (it may be another program after a reuse: callers check more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requester() -> dict[str, Any]:
    """Who is asking (for the journal): uid, account, the login uid behind sudo, pid."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        loginuid = int(Path("/proc/self/loginuid").read_text().strip())
    except (OSError, ValueError):
        loginuid = -1
    who: dict[str, Any] = {"uid": uid, "user": user, "pid": os.getpid()}
    if 0 <= loginuid < 4294967295:
        who["loginuid"] = loginuid
        with contextlib.suppress(KeyError):
            who["login"] = pwd.getpwuid(loginuid).pw_name
    return who


def request_lift(state_dir: Path, ident: str, reason: str) -> Path:
    """Leave a lift request for the running agent."""
    d = state_dir / LIFT_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{ident}.json"
    tmp = d / f".{ident}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"id": ident, "time": time.time(), "reason": reason, "by": requester()}),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def take_requests(state_dir: Path) -> list[dict[str, Any]]:
    """Lift requests waiting, each removed as it is read."""
    d = state_dir / LIFT_DIR
    out = []
    try:
        names = sorted(p for p in d.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        return []
    for p in names:
        try:
            req = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            req = None
        with contextlib.suppress(OSError):
            p.unlink()
        if isinstance(req, dict) and isinstance(req.get("id"), str):
            out.append(req)
    return out
