"""What a process holds open, read from ``/proc`` with plain system calls (the copy guard's slow path).

Each function reads one process's entries and nothing else, never opens a file
the kernel may be asking the guard about (``readlink`` of ``/proc/PID/fd/N``
and its ``fdinfo`` never touch the file itself: not even a ``stat`` that a hung network
filesystem could hold up), and tolerates a
process that exits while it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

MAX_FDS = 4096


@dataclass(slots=True)
class Held:
    """Paths or descriptors found, and whether the table was cut at ``MAX_FDS`` (a gap)."""

    found: list[str]
    cut: bool = False


def start_time(pid: int, proc: str = "/proc") -> str:
    """A process's start time (field 22 of stat): a pid reused by another process is not the same process."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return data.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _names(pid: int, proc: str) -> tuple[list[str], bool]:
    try:
        names = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return [], False
    if len(names) > MAX_FDS:
        return names[:MAX_FDS], True
    return names, False


def _links(names: list[str], pid: int, proc: str) -> Iterator[tuple[str, str]]:
    """(descriptor, absolute path) of each of ``names`` that refers to a path: pipes, sockets and anonymous
    inodes are left out (never a file on a stick, and what they would cost in fdinfo is saved)."""
    base = f"{proc}/{pid}/fd/"
    for n in names:
        try:
            target = os.readlink(base + n)
        except OSError:
            continue
        if target.startswith("/"):
            yield n, target


def paths_open(pid: int, keep: Callable[[str], bool], proc: str = "/proc") -> Held:
    """Absolute paths process ``pid`` holds open that ``keep`` likes."""
    names, cut = _names(pid, proc)
    return Held([target for _, target in _links(names, pid, proc) if keep(target)], cut)


class MountDevs:
    """Which filesystem (``st_dev``) a mount id belongs to, from mountinfo: ids are unique across mount
    namespaces, so a bind mount made in a namespace of a user's own is found through that process's view."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.known: dict[int, int] = {}

    def reset(self) -> None:
        """Forget every id (mounts come and go: an id may be given to a new mount)."""
        self.known = {}

    def dev(self, mnt_id: int, pid: int) -> int:
        """``st_dev`` of mount ``mnt_id`` as process ``pid`` sees it (-1 when unknown)."""
        got = self.known.get(mnt_id)
        if got is not None:
            return got
        for who in ("self", str(pid)):
            try:
                fd = os.open(f"{self.proc}/{who}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    chunks = []
                    while chunk := os.read(fd, 65536):
                        chunks.append(chunk)
                finally:
                    os.close(fd)
            except OSError:
                continue
            for line in b"".join(chunks).splitlines():
                parts = line.split(b" ", 3)
                if len(parts) > 2:
                    major, _, minor = parts[2].partition(b":")
                    self.known[int(parts[0])] = os.makedev(int(major), int(minor))
            got = self.known.get(mnt_id)
            if got is not None:
                return got
        self.known[mnt_id] = -1  # an internal mount (pipes, sockets): not asked again until the next reset
        return -1


def fdinfo(pid: int, n: str, proc: str = "/proc") -> tuple[int, int]:
    """The open flags and the mount id of descriptor ``n`` of process ``pid`` ((-1, -1) when gone)."""
    try:
        fd = os.open(f"{proc}/{pid}/fdinfo/{n}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.read(fd, 4096)
        finally:
            os.close(fd)
        return int(info.split(b"flags:", 1)[1].split()[0], 8), int(info.split(b"mnt_id:", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1, -1


def writable_on(pid: int, devs: Collection[int], mounts: MountDevs, proc: str = "/proc") -> Held:
    """Paths of files process ``pid`` holds open for writing on a filesystem in ``devs`` (by its mount's
    device, so a bind mount or another mount namespace's path to the same filesystem counts)."""
    names, cut = _names(pid, proc)
    base = f"{proc}/{pid}/fd/"
    out = []
    for n, target in _links(names, pid, proc):
        try:
            # The link's own mode tells how the file is open (the owner's w bit: for writing), at half
            # the cost of fdinfo: most path descriptors of a program are read-only and go no further.
            if not os.lstat(base + n).st_mode & stat.S_IWUSR:
                continue
        except OSError:
            continue
        flags, mnt_id = fdinfo(pid, n, proc)
        if flags < 0 or flags & os.O_ACCMODE == os.O_RDONLY or mounts.dev(mnt_id, pid) not in devs:
            continue
        out.append(target)
    return Held(out, cut)


def count_on(devs: Collection[int], mounts: MountDevs, proc: str = "/proc") -> dict[int, int]:
    """How many descriptors of every process refer to a file on each filesystem of ``devs`` (an upper bound
    of the open files there: descriptors shared after a fork count once each)."""
    out = dict.fromkeys(devs, 0)
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        names, _ = _names(pid, proc)
        for n in names:
            _, mnt_id = fdinfo(pid, n, proc)
            if mnt_id >= 0:
                dev = mounts.dev(mnt_id, pid)
                if dev in out:
                    out[dev] += 1
    return out
