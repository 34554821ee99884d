"""The outcome of the agent's last reload, on disk, so ``dutywatch reload`` (systemd's ExecReload)
can tell whether the rules it asked for are in force.

``state_dir/reload.json`` holds the agent's pid and a generation that grows with every reload
attempt of that process, whether it
succeeded, why it was made, the rule count in force afterwards and the first errors of a
rejected set. It is written to a temporary name and renamed into place, so a reader never sees
half of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

RELOAD_FILE = "reload.json"


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """One reload attempt as the agent saw it."""

    pid: int
    generation: int
    ok: bool
    why: str
    rules: int
    time: float
    errors: tuple[str, ...] = field(default=())


def read_outcome(state_dir: Path) -> ReloadOutcome | None:
    """The last reload attempt, or None when there was none (or the file is not ours)."""
    try:
        data = json.loads((state_dir / RELOAD_FILE).read_text(encoding="utf-8"))
        return ReloadOutcome(int(data["pid"]), int(data["generation"]), bool(data["ok"]), str(data["why"]),
                             int(data["rules"]), float(data["time"]), tuple(str(e) for e in data.get("errors", ())))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def write_outcome(state_dir: Path, outcome: ReloadOutcome) -> None:
    """Write atomically; a failure (disk full) is the caller's to log, never fatal."""
    path = state_dir / RELOAD_FILE
    tmp = path.with_name(f".{RELOAD_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({**asdict(outcome), "errors": list(outcome.errors[:20])}, f, ensure_ascii=False)
    os.replace(tmp, path)
