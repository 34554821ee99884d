"""Who a process is, read from /proc: the identity every collector attaches to its events.

``ProcReader(proc_root, clock).identity(pid)`` returns the ``Process`` and
``Parent`` groups of DESIGN §4 for a live pid, or None when the pid is gone.
Results are cached in a bounded LRU keyed by pid and checked against the
(pid, start_time) identity: an entry is only returned while the pid still has
the same start time, command name and parent, so a reused pid or an exec is
never answered with the old process (the process collector also calls
``invalidate`` on every exec, since an exec sometimes keeps the name).

All files of one process are read through one open descriptor of its
/proc/PID directory: if the process dies and its pid is reused between two
reads, the later reads fail instead of describing the newcomer.

Text from the kernel is decoded as UTF-8 with invalid bytes kept as
``\\xNN`` escapes, never dropped. A cmdline is its arguments joined with
spaces, cut at ``cmdline_max`` characters with a visible marker. A field that
cannot be read (another user's exe without CAP_SYS_PTRACE, a zombie's cwd)
is None; the rest of the identity is still returned.

Use from a collector (one reader per collector thread; it is not locked)::

    reader = ProcReader(sources.proc_root, sources.clock)
    found = reader.identity(pid)
    process, parent = found if found else (Process(pid=pid), Parent())
"""

from __future__ import annotations

import hashlib
import os
import pwd
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.events import Parent, Process

Clock = Callable[[], float]
_T = TypeVar("_T")
LOGINUID_UNSET = 4294967295
TRUNCATED = "…[truncated]"
_STAT_STARTTIME = 19  # index of starttime among the fields after ") " (field 22 of stat)
_NEGATIVE_USER_TTL = 60.0  # an account added later gets its name within a minute


@dataclass(frozen=True, slots=True)
class StatLine:
    """The parts of /proc/PID/stat that identify a process."""

    comm: str
    state: str
    ppid: int
    start_ticks: int


def parse_stat(raw: bytes) -> StatLine:
    """Parse /proc/PID/stat; the command name may itself contain spaces and parentheses."""
    open_paren = raw.find(b"(")
    close_paren = raw.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError("stat line has no (comm)")
    rest = raw[close_paren + 2:].split()
    if len(rest) <= _STAT_STARTTIME:
        raise ValueError(f"stat line has {len(rest) + 2} fields, expected at least {_STAT_STARTTIME + 3}")
    return StatLine(
        comm=_text(raw[open_paren + 1:close_paren]),
        state=rest[0].decode("ascii", "backslashreplace"),
        ppid=int(rest[1]),
        start_ticks=int(rest[_STAT_STARTTIME]),
    )


def parse_cmdline(raw: bytes, limit: int, whole: tuple[int, str] | None = None) -> str | None:
    """NUL-separated arguments as one space-joined string of at most ``limit`` characters and UTF-8 bytes.

    ``whole`` is the full length and SHA-256 of the command line when only its
    start was read; a cut line then ends with both, so the original can be
    recognised (``…[truncated: 2097152 bytes, sha256 …]``).
    """
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return None
    text = _text(raw.replace(b"\0", b" "))
    if len(text) > limit or whole is not None or (len(text) * 4 > limit and len(text.encode("utf-8")) > limit):
        mark = TRUNCATED if whole is None else f"{TRUNCATED[:-1]}: {whole[0]} bytes, sha256 {whole[1]}]"
        head = text[: max(0, limit - len(mark))]
        budget = max(0, limit - len(mark.encode("utf-8")))
        return head.encode("utf-8")[:budget].decode("utf-8", "ignore") + mark
    return text


def parse_real_uid(status: bytes) -> int | None:
    """The real uid (first number of the ``Uid:`` line) of /proc/PID/status."""
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 else None
    return None


def parse_loginuid(raw: bytes) -> int | None:
    """/proc/PID/loginuid as a uid; the unset value 4294967295 (and junk) is None."""
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return None if value == LOGINUID_UNSET or value < 0 else value


_UNIT_SUFFIXES = (".service", ".scope")


def parse_unit(raw: bytes) -> str | None:
    """The systemd unit of /proc/PID/cgroup: the innermost ``NAME.service`` (or ``.scope``) of its path.

    cgroup v2 (``0::/system.slice/cron.service``) is read first; on a v1 or hybrid host the
    ``name=systemd`` hierarchy says the same. A process in no unit (a slice, the root) is None.
    """
    paths: list[bytes] = []
    for line in raw.splitlines():
        hid, _, rest = line.partition(b":")
        controllers, _, cpath = rest.partition(b":")
        if hid == b"0" and controllers == b"":
            paths.insert(0, cpath)
        elif controllers == b"name=systemd":
            paths.append(cpath)
    for path in paths:
        for part in reversed(path.split(b"/")):
            name = _text(part)
            if name.endswith(_UNIT_SUFFIXES) and name not in _UNIT_SUFFIXES:
                return name
    return None


def read_unit(proc_dir: str | int) -> str | None:
    """The systemd unit of a process from its /proc directory (a path, or an open dir fd); None if unreadable."""
    try:
        if isinstance(proc_dir, int):
            return parse_unit(_read(proc_dir, "cgroup", 4096))
        with open(os.path.join(proc_dir, "cgroup"), "rb") as f:
            return parse_unit(f.read(4096))
    except OSError:
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class _Entry:
    read_at: float
    start_ticks: int
    comm: str
    ppid: int
    process: Process
    parent: Parent | None  # None: read as someone's parent, own parent not read yet


class ProcReader:
    """Reads and caches process identities from a /proc tree.

    ``identity(pid)``: ``(Process, Parent)`` or None when the pid is gone.
    ``cached(pid)``: the last identity read for ``pid`` without touching /proc
    (for exit events, when /proc has nothing left). ``forget(pid)`` removes
    and returns it; ``invalidate(pid)`` only removes it.
    The cache holds at most ``cache_size`` processes, least recently used
    first out, and rereads an entry older than ``max_age`` seconds (a uid
    changed by setuid without an exec shows up within that time). ``clock``
    dates the cache entries and supplies the boot-time fallback.
    """

    def __init__(self, proc_root: Path = Path("/proc"), clock: Clock = time.time, *,
                 cache_size: int = 4096, cmdline_max: int = 4096, max_age: float = 60.0) -> None:
        self._root = proc_root
        self._root_text = os.fspath(proc_root)
        self._clock = clock
        self._cache_size = max(1, cache_size)
        self._cmdline_max = cmdline_max
        self._max_age = max_age
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._users: dict[int, tuple[str | None, float]] = {}
        self._boot: float | None = None
        self._ticks = float(os.sysconf("SC_CLK_TCK"))

    # -- public face -------------------------------------------------------

    def identity(self, pid: int) -> tuple[Process, Parent] | None:
        """Who ``pid`` is now, with its parent; None when the pid no longer exists."""
        entry = self._entry(pid)
        if entry is None or entry.parent is None:
            return None
        return entry.process, entry.parent

    def cached(self, pid: int) -> tuple[Process, Parent] | None:
        """The identity last read for ``pid``, without reading /proc."""
        entry = self._cache.get(pid)
        return None if entry is None else (entry.process, entry.parent or Parent(pid=entry.ppid or None))

    def forget(self, pid: int) -> tuple[Process, Parent] | None:
        """Remove ``pid`` from the cache and return what it held."""
        entry = self._cache.pop(pid, None)
        return None if entry is None else (entry.process, entry.parent or Parent(pid=entry.ppid or None))

    def invalidate(self, pid: int) -> None:
        """Drop ``pid`` from the cache so the next ``identity`` rereads it (after an exec)."""
        self._cache.pop(pid, None)

    def __len__(self) -> int:
        return len(self._cache)

    def boot_time(self) -> float:
        """Boot time in epoch seconds: ``btime`` of /proc/stat, else clock minus /proc/uptime."""
        if self._boot is None:
            self._boot = self._read_boot_time()
        return self._boot

    def user_name(self, uid: int) -> str | None:
        """The account name of ``uid`` from the system's account database, cached."""
        hit = self._users.get(uid)
        now = self._clock()
        if hit is not None and (hit[0] is not None or now - hit[1] < _NEGATIVE_USER_TTL):
            return hit[0]
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        if len(self._users) >= self._cache_size:
            self._users.clear()  # uids are few; a full cache means churn, start over
        self._users[uid] = (name, now)
        return name

    # -- reading -----------------------------------------------------------

    def _entry(self, pid: int, *, with_parent: bool = True) -> _Entry | None:
        try:
            fd = os.open(f"{self._root_text}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._cache.pop(pid, None)
            return None
        try:
            entry = self._cache.get(pid)
            now = self._clock()
            if entry is not None and (now - entry.read_at > self._max_age or not self._still(fd, entry)):
                entry = None
            if entry is None:
                entry = self._read_entry(fd, pid, now)
        finally:
            os.close(fd)
        if entry is None:
            self._cache.pop(pid, None)
            return None
        if with_parent and entry.parent is None:
            entry = _Entry(entry.read_at, entry.start_ticks, entry.comm, entry.ppid, entry.process,
                           self._parent_of(entry.ppid))
        self._cache[pid] = entry
        self._cache.move_to_end(pid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    @staticmethod
    def _still(fd: int, entry: _Entry) -> bool:
        try:
            stat = parse_stat(_read(fd, "stat", 4096))
        except (OSError, ValueError):
            return False
        return (entry.start_ticks, entry.comm, entry.ppid) == (stat.start_ticks, stat.comm, stat.ppid)

    def _cmdline(self, fd: int) -> str | None:
        head, whole = _read_cmdline(fd, self._cmdline_max * 4 + 1)
        return parse_cmdline(head, self._cmdline_max, whole)

    def _read_entry(self, fd: int, pid: int, now: float) -> _Entry | None:
        # exe, cmdline and cwd vanish the moment a process exits (a zombie keeps
        # only stat and status), so they are read first: it is a race with
        # short-lived commands, and every microsecond counts.
        exe = _optional(lambda: _link(fd, b"exe"))
        cmdline = _optional(lambda: self._cmdline(fd))
        cwd = _optional(lambda: _link(fd, b"cwd"))
        try:
            stat = parse_stat(_read(fd, "stat", 4096))
        except (OSError, ValueError):
            return None
        uid = _optional(lambda: parse_real_uid(_read(fd, "status", 8192)))
        loginuid = _optional(lambda: parse_loginuid(_read(fd, "loginuid", 32)))
        process = Process(
            pid=pid,
            ppid=stat.ppid,
            name=stat.comm,
            exe=exe,
            cmdline=cmdline,
            cwd=cwd,
            uid=uid,
            user=None if uid is None else self.user_name(uid),
            loginuid=loginuid,
            start_time=self.boot_time() + stat.start_ticks / self._ticks,
            # Only a process with no login identity needs its unit to be attributed.
            unit=read_unit(fd) if loginuid is None else None,
        )
        return _Entry(now, stat.start_ticks, stat.comm, stat.ppid, process, None)

    def _parent_of(self, ppid: int) -> Parent:
        if ppid <= 0:
            return Parent()
        # One level only: the parent is cached without its own parent, which is
        # read when someone asks for the parent itself. This is what makes an
        # exec storm from one shell cost one parent read.
        entry = self._entry(ppid, with_parent=False)
        if entry is None:
            return Parent(pid=ppid)
        p = entry.process
        return Parent(pid=p.pid, name=p.name, exe=p.exe, cmdline=p.cmdline)

    def _read_boot_time(self) -> float:
        try:
            for line in (self._root / "stat").read_bytes().splitlines():
                if line.startswith(b"btime "):
                    return float(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        try:
            uptime = float((self._root / "uptime").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        return self._clock() - uptime


def _read(dir_fd: int, name: str, limit: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


CMDLINE_HASH_MAX = 64 << 20  # an argument list is at most a quarter of the stack limit; stop hashing past this


def _read_cmdline(dir_fd: int, limit: int) -> tuple[bytes, tuple[int, str] | None]:
    """The first ``limit`` bytes of cmdline, and (full length, SHA-256) when there was more.

    A huge command line is read through to its end once, in large chunks,
    only to count and hash it; only its start is kept.
    """
    fd = os.open("cmdline", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        head = b""
        while len(head) < limit:
            chunk = os.read(fd, limit - len(head))
            if not chunk:
                return head, None
            head += chunk
        h = hashlib.sha256(head)
        size = len(head)
        while size < CMDLINE_HASH_MAX:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
        return head, (size, h.hexdigest())
    finally:
        os.close(fd)


def _link(dir_fd: int, name: bytes) -> str:
    return _text(os.readlink(name, dir_fd=dir_fd))


def _optional(read: Callable[[], _T]) -> _T | None:
    # A field we may not read (another user's exe, a zombie's cwd) is None,
    # not a reason to lose the rest of the identity.
    try:
        return read()
    except (OSError, ValueError):
        return None
