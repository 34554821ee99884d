"""The agent's run state on disk: when it was last alive, and whether it stopped cleanly.

At start, a previous run that never wrote a clean stop means monitoring was
interrupted from its last heartbeat until now: that gap becomes an
``agent.tamper`` event (GB/T 22239-2019 8.1.4.3: the audit process must not
be interrupted unnoticed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

RUN_FILE = "run.json"
_log = logging.getLogger("dutywatch")


@dataclass(frozen=True, slots=True)
class Gap:
    """Monitoring was down from ``since`` (last heartbeat) to ``until`` (this start).

    ``run_state`` says what run.json claimed (``unclean``, ``missing``,
    ``claims_clean``, ``unreadable``): the journal decides, not the file.
    """

    since: float
    until: float
    pid: int | None
    run_state: str = "unclean"

    def describe(self) -> str:
        """A plain sentence with ISO times, for the finding's detail."""
        from datetime import UTC, datetime
        a = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        b = datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds")
        text = f"monitoring interrupted from {a} to {b} ({self.until - self.since:.0f} s; previous pid {self.pid})"
        if self.run_state == "missing":
            text += "; the run state file had been deleted"
        elif self.run_state == "claims_clean":
            text += "; the run state file claimed a clean stop the journal does not hold"
        elif self.run_state == "unreadable":
            text += "; the run state file was unreadable"
        return text


class RunState:
    """Reads and writes ``state_dir/run.json`` atomically (write to a temp name, rename)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / RUN_FILE
        self.started = 0.0
        self.failing = False

    def previous_gap(self, now: float) -> Gap | None:
        """The gap left by the previous run, if it did not stop cleanly."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return Gap(now, now, None)  # unreadable state is itself a sign of interference
        if not isinstance(data, dict) or data.get("clean"):
            return None
        alive = data.get("alive")
        since = float(alive) if isinstance(alive, (int, float)) else now
        pid = data.get("pid") if isinstance(data.get("pid"), int) else None
        return Gap(since, now, pid)

    def last_alive(self) -> float | None:
        """When the previous run was last known to be watching (clean stop or not); None on a first start."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        alive = data.get("alive") if isinstance(data, dict) else None
        return float(alive) if isinstance(alive, (int, float)) and not isinstance(alive, bool) else None

    def gap_against(self, now: float, last_lifecycle: tuple[int, str, float] | None,
                    last_record: float | None) -> Gap | None:
        """The gap left by the previous run, judged by the journal's last lifecycle record.

        A journal whose last lifecycle record is not ``agent.stop`` was not
        stopped cleanly, whatever run.json says or whether it exists; run.json
        only narrows when the previous run was last alive, never widens it
        past the journal's own last record.
        """
        claimed = self.previous_gap(now)
        if last_lifecycle is None or last_lifecycle[1] == "agent.stop":
            return claimed if claimed is not None and last_lifecycle is None else None
        floor = max(t for t in (last_lifecycle[2], last_record) if t is not None)
        state, since, pid = self._claim()
        since = since if since is not None and floor <= since <= now else floor
        return Gap(since, now, pid, state)

    def _claim(self) -> tuple[str, float | None, int | None]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "missing", None, None
        except (OSError, ValueError):
            return "unreadable", None, None
        if not isinstance(data, dict):
            return "unreadable", None, None
        alive = data.get("alive")
        pid = data.get("pid") if isinstance(data.get("pid"), int) else None
        if data.get("clean"):
            return "claims_clean", None, pid
        return "unclean", float(alive) if isinstance(alive, (int, float)) else None, pid

    def beat(self, now: float, clean: bool = False) -> bool:
        """Record that the agent is alive now (or stopped cleanly now); False when it could not.

        A failed write (disk full) is logged once and never raised: the agent
        keeps monitoring, and the stale heartbeat only makes the next start
        report a longer gap than there was, never a shorter one.
        """
        if not self.started:
            self.started = now
        data = {"pid": os.getpid(), "started": self.started, "alive": now, "clean": clean}
        tmp = self.path.with_name(f".{RUN_FILE}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self.failing:
                _log.error("cannot write the heartbeat %s: %s", self.path, exc.strerror or exc)
            self.failing = True
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False
        if self.failing:
            _log.warning("heartbeat %s written again", self.path)
        self.failing = False
        return True
