"""A ctypes binding of fanotify(7): groups, marks, and decoded event records.

Two kinds of group are used. An *fd group* (the classic mode) reports
``FAN_OPEN`` and ``FAN_CLOSE_WRITE`` with the acting pid and an open file
descriptor; the path comes from ``readlink(/proc/self/fd/N)`` and the fd is
closed at once. A *name group* (``FAN_REPORT_DFID_NAME``, Linux 5.9+) reports
directory-entry changes (create, delete, move) with the pid, the parent
directory's file handle and the entry name; the handle is turned back into
a path through a table of the directories this group marked. A third group
(Linux 5.17+) takes only ``FAN_RENAME`` on each watched filesystem as a
whole: the kernel reports both directories of a rename only to a filesystem
mark, and a move out of (or into) a watched tree needs the side that is not
watched, which is opened by its handle (``open_by_handle_at``,
CAP_DAC_READ_SEARCH) to learn its path. Renames with no watched side are
dropped as they are decoded; an overflow of that group costs only the pairing. An fd group
can also mark single files (inode marks): every open of that file is then
reported, through whatever name, mount or mount namespace it was reached, and
each record carries the file's (device, inode).
Both need CAP_SYS_ADMIN. ``FanotifyWatcher`` keeps the two together over
whole directory trees and reads them on one thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from collectors.base import CollectorError, stop_fd, stop_timeout, translate_os_error

log = logging.getLogger(__name__)

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DFID_NAME = 0x400 | 0x800
FAN_REPORT_PIDFD = 0x80

FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
_FAN_MARK_DONT_FOLLOW = 0x4
_FAN_MARK_REMOVE = 0x2

FAN_MODIFY = 0x2
FAN_CLOSE_WRITE = 0x8
FAN_OPEN = 0x20
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_RENAME = 0x10000000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000

FD_MASK = FAN_OPEN | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD
NAME_MASK = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ONDIR

_INFO_DFID_NAME = 2
_INFO_PIDFD = 4
_INFO_OLD_DFID_NAME = 10
_INFO_NEW_DFID_NAME = 12
_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEAD = struct.Struct("=BBH")
_HANDLE_HEAD = struct.Struct("=Ii")
_MAX_HANDLE = 128
_AT_FDCWD = -100
_BUF = 64 * 1024
_DRAIN_READS = 16  # reads of one group per poll before the others get their turn


@dataclass(frozen=True, slots=True)
class FanRecord:
    """One decoded fanotify event: what happened, to which path, by which process."""

    mask: int
    pid: int
    path: str | None
    dest: str | None = None  # FAN_RENAME: the new path (``path`` is the old one)
    dev: int | None = None  # fd groups: the file's st_dev and st_ino
    ino: int | None = None
    # With FAN_REPORT_PIDFD (Linux 5.15+): a pidfd of the acting process, open while the record is handed over
    # (``FanotifyWatcher`` closes it after), or negative: the process had exited and was reaped before the
    # record was read, so /proc/PID is gone or another process's. None: the kernel gives no pidfds.
    pidfd: int | None = None

    @property
    def reaped(self) -> bool:
        """The kernel said the acting process no longer existed when the record was read."""
        return self.pidfd is not None and self.pidfd < 0

    @property
    def overflow(self) -> bool:
        """The kernel's queue overflowed and events were lost before this one."""
        return bool(self.mask & FAN_Q_OVERFLOW)


class _FileHandle(ctypes.Structure):
    _fields_ = (
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * _MAX_HANDLE),
    )


class _Libc:
    """The three C functions this module needs, loaded once per group."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter already uses
        self.init = lib.fanotify_init
        self.init.argtypes = (ctypes.c_uint, ctypes.c_uint)
        self.init.restype = ctypes.c_int
        self.mark = lib.fanotify_mark
        self.mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)
        self.mark.restype = ctypes.c_int
        self.name_to_handle = lib.name_to_handle_at
        self.name_to_handle.argtypes = (
            ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle), ctypes.POINTER(ctypes.c_int), ctypes.c_int,
        )
        self.name_to_handle.restype = ctypes.c_int
        self.open_by_handle = lib.open_by_handle_at
        self.open_by_handle.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        self.open_by_handle.restype = ctypes.c_int


def _errno_error(what: str) -> CollectorError:
    err = ctypes.get_errno()
    return translate_os_error(what, OSError(err, os.strerror(err)))


class FanotifyGroup:
    """One fanotify group: ``fd`` to poll, ``mark_dir`` to watch, ``read`` to drain."""

    def __init__(self, *, names: bool, renames: bool = False) -> None:
        self._libc = _Libc()
        self.names = names or renames
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | (FAN_REPORT_DFID_NAME if self.names else 0)
        # The pidfd pins the acting process: a record read after it was reaped says so, instead of leaving
        # /proc/PID to name whichever process has the pid now. Kernels before 5.15 refuse the flag.
        fd = self._libc.init(flags | FAN_REPORT_PIDFD, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        self.pidfds = fd >= 0
        if fd < 0:
            fd = self._libc.init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            raise _errno_error("fanotify_init")
        self.fd = fd
        self.mask = (FAN_RENAME | FAN_ONDIR) if renames else NAME_MASK if names else FD_MASK
        # Directory file handle -> path, for the name group's records.
        self._dirs: dict[bytes, str] = {}
        # fsid -> a marked directory on that filesystem, to open directory handles the group did not mark
        # (a path, not a descriptor: a held descriptor would keep a removable medium from unmounting).
        self._fs_dirs: dict[bytes, str] = {}

    def close(self) -> None:
        """Release the group; its marks go with it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def mark_dir(self, path: str) -> None:
        """Watch the entries of directory ``path`` (not its subdirectories)."""
        if self._libc.mark(self.fd, FAN_MARK_ADD, self.mask, _AT_FDCWD, os.fsencode(path)) < 0:
            raise _errno_error(f"fanotify_mark {path}")
        if self.names:
            key = self._handle_key(path)
            if key is not None:
                self._dirs[key] = path
            self._remember_fs(path)

    def share_dirs(self, other: FanotifyGroup) -> None:
        """Resolve directory handles through ``other``'s table (the rename group reads the names group's)."""
        self._dirs = other._dirs
        self._fs_dirs = other._fs_dirs

    def mark_renames(self, path: str) -> None:
        """Take every rename on the filesystem holding ``path`` (the rename group)."""
        flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
        if self._libc.mark(self.fd, flags, self.mask, _AT_FDCWD, os.fsencode(path)) < 0:
            raise _errno_error(f"fanotify_mark renames {path}")

    def mark_file(self, path: str, *, remove: bool = False) -> None:
        """Watch one file (fd groups): its inode, reached through any of its names; or stop watching it."""
        flags = (_FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | _FAN_MARK_DONT_FOLLOW
        if self._libc.mark(self.fd, flags, FAN_OPEN | FAN_CLOSE_WRITE, _AT_FDCWD, os.fsencode(path)) < 0:
            raise _errno_error(f"fanotify_mark {path}")

    def _remember_fs(self, path: str) -> None:
        try:
            fsid = struct.pack("=Q", os.statvfs(path).f_fsid)
        except OSError:
            return
        self._fs_dirs.setdefault(fsid, path)

    def _open_handle(self, fsid: bytes, htype: int, handle: bytes) -> str | None:
        """The path of a directory the group did not mark, from its handle (needs CAP_DAC_READ_SEARCH)."""
        where = self._fs_dirs.get(fsid)
        if where is None:
            return None
        try:
            mount_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # not O_PATH: the kernel refuses one
        except OSError:
            return None
        raw = _HANDLE_HEAD.pack(len(handle), htype) + handle
        try:
            fd = self._libc.open_by_handle(mount_fd, raw, os.O_PATH | os.O_CLOEXEC)
        finally:
            os.close(mount_fd)
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)

    def mark_mount(self, path: str) -> None:
        """Watch every file of the filesystem holding ``path`` (fd groups only).

        A filesystem mark, not a mount mark: the service runs in its own mount
        namespace (ProtectSystem=strict), where a mount mark sees no operation
        made through the host's mounts. A removable medium is its own filesystem.
        """
        if self.names:
            raise CollectorError("mount marks do not report names; mark directories instead")
        flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
        if self._libc.mark(self.fd, flags, FAN_OPEN | FAN_CLOSE_WRITE, _AT_FDCWD, os.fsencode(path)) < 0:
            raise _errno_error(f"fanotify_mark mount {path}")

    def forget_under(self, root: str) -> None:
        """Drop the handle table's entries at or below ``root`` (it went away)."""
        prefix = root.rstrip("/") + "/"
        for key, path in list(self._dirs.items()):
            if path == root or path.startswith(prefix):
                del self._dirs[key]
        for fsid, path in list(self._fs_dirs.items()):
            if path == root or path.startswith(prefix):
                del self._fs_dirs[fsid]

    @property
    def marked_dirs(self) -> int:
        """How many directories the name group can resolve."""
        return len(self._dirs)

    def _handle_key(self, path: str) -> bytes | None:
        handle = _FileHandle(handle_bytes=_MAX_HANDLE)
        mount_id = ctypes.c_int()
        if self._libc.name_to_handle(_AT_FDCWD, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0):
            return None
        return _key(handle.handle_type, bytes(handle.f_handle[: handle.handle_bytes]))

    def read(self) -> list[FanRecord]:
        """Drain what the kernel has queued; [] when nothing is waiting."""
        try:
            data = os.read(self.fd, _BUF)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise translate_os_error("fanotify read", exc) from exc
        return list(self._decode(data))

    def _decode(self, data: bytes) -> Iterator[FanRecord]:
        off = 0
        while off + _META.size <= len(data):
            event_len, _vers, _res, meta_len, mask, fd, pid = _META.unpack_from(data, off)
            if event_len < _META.size:
                break
            info = data[off + meta_len: off + event_len]
            off += event_len
            pidfd = _pidfd(info) if self.pidfds else None
            if self.names:
                paths = self._name_paths(info, bool(mask & FAN_RENAME))
                if mask & FAN_RENAME:
                    if paths:  # a rename with no watched side is none of ours
                        yield FanRecord(mask, pid, paths.get(_INFO_OLD_DFID_NAME), paths.get(_INFO_NEW_DFID_NAME),
                                        pidfd=pidfd)
                    elif pidfd is not None and pidfd >= 0:
                        os.close(pidfd)
                else:
                    yield FanRecord(mask, pid, paths.get(_INFO_DFID_NAME), pidfd=pidfd)
            else:
                path, dev, ino = _fd_path(fd)
                yield FanRecord(mask, pid, path, None, dev, ino, pidfd)

    def _name_paths(self, info: bytes, rename: bool = False) -> dict[int, str]:
        """The paths of a record's directory-and-name parts, by info type.

        For a rename, the side in no marked directory is opened by its handle,
        and only when the other side is marked; else the result is empty.
        """
        out: dict[int, str] = {}
        unknown: list[tuple[int, bytes, int, bytes, bytes]] = []
        off = 0
        while off + _INFO_HEAD.size <= len(info):
            kind, _pad, length = _INFO_HEAD.unpack_from(info, off)
            if length == 0:
                break
            if kind in (_INFO_DFID_NAME, _INFO_OLD_DFID_NAME, _INFO_NEW_DFID_NAME):
                # header, fsid (8 bytes), struct file_handle, then the NUL-ended name
                fsid = info[off + _INFO_HEAD.size: off + _INFO_HEAD.size + 8]
                h = off + _INFO_HEAD.size + 8
                nbytes, htype = _HANDLE_HEAD.unpack_from(info, h)
                start = h + _HANDLE_HEAD.size
                handle = info[start: start + nbytes]
                name = info[start + nbytes: off + length].split(b"\0", 1)[0]
                parent = self._dirs.get(_key(htype, handle))
                if parent is not None:
                    out[kind] = _join(parent, name)
                elif rename:
                    unknown.append((kind, fsid, htype, handle, name))
            off += length
        if rename:
            if not out:
                return out
            for kind, fsid, htype, handle, name in unknown:
                parent = self._open_handle(fsid, htype, handle)  # the side of a move we do not watch
                if parent is not None:
                    out[kind] = _join(parent, name)
        return out


def _pidfd(info: bytes) -> int | None:
    """The pidfd of a record's information (FAN_NOPIDFD, or minus an errno, when there is no process)."""
    off = 0
    while off + _INFO_HEAD.size <= len(info):
        kind, _pad, length = _INFO_HEAD.unpack_from(info, off)
        if length == 0:
            break
        if kind == _INFO_PIDFD and length >= _INFO_HEAD.size + 4:
            return int.from_bytes(info[off + _INFO_HEAD.size: off + _INFO_HEAD.size + 4], "little", signed=True)
        off += length
    return None


def _join(parent: str, name: bytes) -> str:
    return parent if name in (b"", b".") else os.path.join(parent, os.fsdecode(name))


def _key(htype: int, handle: bytes) -> bytes:
    return htype.to_bytes(4, "little", signed=True) + handle


def _fd_path(fd: int) -> tuple[str | None, int | None, int | None]:
    """The path, device and inode of a record's descriptor, which is closed here."""
    if fd < 0:
        return None, None, None
    try:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None, None, None
    finally:
        os.close(fd)
    return path.removesuffix(" (deleted)"), st.st_dev, st.st_ino


class FanotifyWatcher:
    """The fd group and (where the kernel has it) the name group, marked over whole directory trees.

    ``run`` reads both groups until stopped and hands each record to
    ``on_record`` (with True for name-group records); losses go to
    ``on_drop`` with a short reason. A directory created under a marked one
    is marked as soon as the name group reports it.
    """

    def __init__(self, on_record: Callable[[FanRecord, bool], None], on_drop: Callable[[str], None],
                 max_marks: int = 20000) -> None:
        self._on_record = on_record
        self._on_drop = on_drop
        self._max_marks = max_marks
        self._marks = 0
        self.fd_group = FanotifyGroup(names=False)  # CollectorError here: no fanotify at all
        self.names: FanotifyGroup | None = None
        self.renames: FanotifyGroup | None = None
        self.names_missing = ""
        self._renamed_fs: set[int] = set()
        self.synced = 0.0  # monotonic: every record of an operation before it has gone to ``on_record``
        self._busy = False  # the reader is reading or handing over (set before its first read after a wait)
        self._fds: list[int] = []
        try:
            self.names = FanotifyGroup(names=True)
            self.renames = FanotifyGroup(names=True, renames=True)
            self.renames.share_dirs(self.names)
        except CollectorError as exc:
            self.names_missing = self.names_missing if self.names is not None else str(exc)

    def close(self) -> None:
        """Release the groups."""
        for g in (self.fd_group, self.names, self.renames):
            if g is not None:
                g.close()

    def mark_tree(self, top: str, *, whole_mount: bool = False) -> None:
        """Mark ``top`` and every directory below it (``whole_mount``: the fd group marks its mount)."""
        if whole_mount:
            try:
                self.fd_group.mark_mount(top)
            except CollectorError:
                self._on_drop("watch_error")
        stack = [top]
        while stack:
            here = stack.pop()
            if self._marks >= self._max_marks:
                self._on_drop("mark_limit")
                return
            for g in (None if whole_mount else self.fd_group, self.names):
                if g is None:
                    continue
                try:
                    g.mark_dir(here)
                except CollectorError:
                    self._on_drop("watch_error")
            self._mark_renames(here)
            self._marks += 1
            # Listed after it is marked: a directory made meanwhile is either listed here or reported by the
            # mark (and marked then). Listing first, as os.walk does, loses one made between the two.
            try:
                with os.scandir(here) as entries:
                    stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
            except OSError:
                self._on_drop("watch_error")

    def unmark_file(self, path: str) -> None:
        """Drop one file's inode mark (it is no longer an asset); a file already gone took its mark with it."""
        try:
            self.fd_group.mark_file(path, remove=True)
        except CollectorError:
            return
        self._marks -= 1

    def _mark_renames(self, path: str) -> None:
        if self.renames is None:
            return
        try:
            dev = os.stat(path).st_dev
        except OSError:
            return
        if dev in self._renamed_fs:
            return
        self._renamed_fs.add(dev)
        try:
            self.renames.mark_renames(path)
        except CollectorError as exc:  # Linux before 5.17, or a filesystem without filesystem marks
            log.info("fanotify: moves across the edge of watched trees on %s have one side only: %s", path, exc)

    def mark_file(self, path: str) -> bool:
        """Mark one file's inode in the fd group; False (and reported) when it cannot be."""
        if self._marks >= self._max_marks:
            self._on_drop("mark_limit")
            return False
        try:
            self.fd_group.mark_file(path)
        except CollectorError:
            self._on_drop("watch_error")
            return False
        self._marks += 1
        return True

    def forget_under(self, root: str) -> None:
        """``root`` went away or moved: its directory handles no longer name paths."""
        if self.names is not None:
            self.names.forget_under(root)

    def run(self, stop: threading.Event) -> None:
        """Read the groups until ``stop`` is set: blocks in poll on them and the stop descriptor, no timeout."""
        groups = {g.fd: g for g in (self.fd_group, self.names, self.renames) if g is not None}
        poller = select.poll()
        for fd in groups:
            poller.register(fd, select.POLLIN)
        wake = stop_fd(stop)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        timeout = stop_timeout(stop, None)
        self._fds = list(groups)
        while not stop.is_set():
            self._busy = False
            ready = poller.poll(None if timeout is None else timeout * 1000)
            self._busy = True
            t = time.monotonic()
            drained = True
            for fd, _ev in ready:
                if fd == wake:
                    continue
                group = groups[fd]
                for _ in range(_DRAIN_READS):
                    try:
                        records = group.read()
                    except CollectorError:
                        self._on_drop("watch_error")
                        return
                    if not records:
                        break
                    self._hand_over(group, records)
                else:
                    drained = False
            if drained:
                self.synced = t  # every group ran dry after t: each record of an operation before t is handed over
        self._busy = False

    def synced_at(self) -> float:
        """A time before which every record has gone to ``on_record`` (now, when the reader waits on empty groups)."""
        t, synced = time.monotonic(), self.synced
        if self._busy or not self._fds:
            return synced
        waiting, _, _ = select.select(self._fds, [], [], 0)
        # Busy again: it woke and read between the two looks, and may not have handed the records over yet.
        return synced if waiting or self._busy else t

    def _hand_over(self, group: FanotifyGroup, records: list[FanRecord]) -> None:
        for r in records:
            try:
                if r.overflow:
                    self._on_drop("kernel_overflow")
                    continue
                if group.names and r.path and r.mask & FAN_CREATE and r.mask & FAN_ONDIR:
                    self.mark_tree(r.path)  # before the new directory fills up
                self._on_record(r, group.names)
            finally:
                if r.pidfd is not None and r.pidfd >= 0:
                    os.close(r.pidfd)
