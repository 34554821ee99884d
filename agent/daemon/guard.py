"""Attempts on the agent itself: who signalled it, who traces it, and when it was frozen.

The agent takes its stop and reload signals synchronously (``sigtimedwait``),
so each comes with the sender's pid and uid; the sender is read from /proc
at once (a shell's ``kill`` builtin is still there; ``/bin/kill`` may just
have gone, and then its real uid is all that is known). A signal from the
service manager is a stop asked through the unit (``systemctl stop``); any
other sender is an attempt on the agent with an operator. A tracer is found
in ``/proc/self/status`` (``TracerPid``). The service manager's signal does
not say who asked for the stop: ``systemctl stop`` waits for the job, so the
asking ``systemctl`` still runs when the signal comes and is looked for in
/proc (its exe must be the systemd package's own ``systemctl``). A pause (SIGSTOP, a frozen cgroup,
a suspended VM) shows on resume as a loop turn that took far longer than
its timeout, measured on the monotonic and boot clocks.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.events import Process

SERVICE_MANAGERS = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init", "/usr/sbin/init")


@dataclass(frozen=True, slots=True)
class Sender:
    """A process that sent the agent a signal or traces it, as /proc showed it (or only its ids)."""

    pid: int
    uid: int | None
    process: Process

    @property
    def service_manager(self) -> bool:
        """Whether this is the init system acting for the unit (``systemctl stop``/``kill``)."""
        return self.pid == 1 or (self.process.exe or "") in SERVICE_MANAGERS

    def describe(self) -> str:
        """``pid 4242 (/usr/bin/bash, uid 0, loginuid 1000)``."""
        p = self.process
        bits = [p.exe or p.name or "gone before it could be read", f"uid {self.uid if p.uid is None else p.uid}"]
        if p.loginuid is not None:
            bits.append(f"loginuid {p.loginuid}")
        return f"pid {self.pid} ({', '.join(bits)})"

    def as_dict(self) -> dict[str, object]:
        """For the lifecycle record's detail."""
        p = self.process
        return {"pid": self.pid, "uid": self.uid, "exe": p.exe, "name": p.name, "cmdline": p.cmdline,
                "loginuid": p.loginuid, "ppid": p.ppid}


def _read(path: Path, limit: int = 4096) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def read_sender(pid: int, uid: int | None, proc: Path = Path("/proc")) -> Sender:
    """What /proc says of ``pid`` now; only the ids when it has gone."""
    base = proc / str(pid)
    try:
        exe: str | None = os.readlink(base / "exe")
    except OSError:
        exe = None
    comm = _read(base / "comm")
    cmd = _read(base / "cmdline")
    status = _read(base / "status") or b""
    login = _read(base / "loginuid")
    real_uid = ppid = None
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            real_uid = int(line.split()[1])
        elif line.startswith(b"PPid:"):
            ppid = int(line.split()[1])
    loginuid = None
    if login is not None and login.strip().isdigit() and int(login) != 0xFFFFFFFF:
        loginuid = int(login)
    name = comm.decode("utf-8", "backslashreplace").strip() if comm else None
    cmdline = cmd.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace") if cmd else None
    if exe is None and name is None:
        return Sender(pid, uid, Process(pid=pid, uid=uid))
    return Sender(pid, uid, Process(pid=pid, ppid=ppid, name=name, exe=exe, cmdline=cmdline,
                                    uid=real_uid if real_uid is not None else uid, loginuid=loginuid))


_STOP_VERBS = frozenset({"stop", "restart", "try-restart", "reload-or-restart", "try-reload-or-restart", "kill",
                         "disable", "mask", "isolate", "freeze"})


def stop_requesters(unit: str, owner: Callable[[str, int | None], str | None],
                    proc: Path = Path("/proc")) -> list[Sender]:
    """The ``systemctl`` processes running now that ask the service manager to stop ``unit``.

    Only the systemd package's own systemctl counts (``owner`` says which package a running
    program is): a program named systemctl elsewhere names no one.
    """
    names = {unit, unit.removesuffix(".service")}
    found: list[Sender] = []
    try:
        pids = [int(d) for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        return found
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        try:
            exe = os.readlink(proc / str(pid) / "exe")
        except OSError:
            continue
        if os.path.basename(exe) != "systemctl":
            continue
        args = (_read(proc / str(pid) / "cmdline") or b"").split(b"\0")
        words = {a.decode("utf-8", "replace") for a in args[1:]}
        if not words & _STOP_VERBS or not words & names or owner(exe, pid) != "systemd":
            continue
        who = read_sender(pid, None, proc)
        if who.process.exe == exe:  # still the same program after all these reads
            found.append(who)
    return found


def tracer_pid(proc: Path = Path("/proc")) -> int:
    """The pid tracing this process (ptrace), 0 when none."""
    for line in (_read(proc / "self" / "status", 65536) or b"").splitlines():
        if line.startswith(b"TracerPid:"):
            return int(line.split()[1])
    return 0


def signal_name(signo: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


@dataclass(frozen=True, slots=True)
class Pause:
    """The agent did not run from ``since`` to ``until`` (wall clock), ``seconds`` long."""

    since: float
    until: float
    seconds: float

    def describe(self) -> str:
        """A plain sentence with ISO times."""
        from datetime import UTC, datetime
        a = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        b = datetime.fromtimestamp(self.until, UTC).isoformat(timespec="seconds")
        return (f"paused: the agent was stopped or frozen from {a} to {b} ({self.seconds:.0f} s); operations in "
                "that window may be unattributed or missing")


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class PauseDetector:
    """Finds loop turns that took longer than ``after`` seconds: the process was not running.

    The monotonic clock stops during system suspend, the boot clock does not;
    the longer of the two is the time the agent lost.
    """

    def __init__(self, after: float, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, boottime: Callable[[], float] = _boottime) -> None:
        self.after = after
        self.wall = wall
        self.monotonic = monotonic
        self.boottime = boottime
        self._last = (monotonic(), boottime())

    def tick(self) -> Pause | None:
        """Call once a loop turn; a Pause when this turn came far too late."""
        mono, boot = self.monotonic(), self.boottime()
        lost = max(mono - self._last[0], boot - self._last[1])
        self._last = (mono, boot)
        if self.after <= 0 or lost < self.after:
            return None
        now = self.wall()
        return Pause(now - lost, now, lost)
