"""The state directory's files: permissions, the writer lock, quarantine.

The journal holds who did what with classified data, and the key proves the
journal is ours; neither may be open to other users. Wider permissions are
refused, never silently narrowed: they mean someone changed them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from agent.journal.errors import JournalLockedError, JournalPermissionError

DIR_MODE = 0o700
FILE_MODE = 0o600


def check_private(path: Path, what: str) -> None:
    """Refuse ``path`` when group or others have any access to it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise JournalPermissionError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
        raise JournalPermissionError(
            f"{path}: {what} has mode {mode:04o}, open to other users; it must be {want:04o} "
            f"or narrower (check who changed it, then chmod {want:o} {path})"
        )


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory 0700 if missing; refuse one that is wider."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask; make it exact
    if not path.is_dir():
        raise JournalPermissionError(f"{path}: state_dir is not a directory")
    check_private(path, "state directory")
    return path


def create_private_file(path: Path) -> None:
    """Create an empty file 0600 if it does not exist (never truncates)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    os.fchmod(fd, FILE_MODE)
    os.close(fd)


class WriterLock:
    """An exclusive lock on ``journal.lock``: one writing agent per state directory.

    A separate file, not the database: closing any descriptor of the database
    would drop SQLite's own POSIX locks on it. The kernel releases the lock
    when the holder dies, so a killed agent never blocks its successor.
    """

    def __init__(self, path: Path) -> None:
        create_private_file(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            raise JournalLockedError(
                f"{path}: the journal is in use by another process (pid {holder}); "
                "stop the other agent first"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def quarantine_corrupt(path: Path, clock: Callable[[], float] = time.time) -> Path:
    """Move a corrupt journal (and its -wal/-shm) aside as ``<name>.corrupt-<timestamp>``.

    Never overwrites: an existing quarantine name gets a counter. Returns the
    new path of the database file. The daemon calls this explicitly after an
    open failed with JournalCorruptError; opening never does it by itself.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    target = base
    n = 1
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        target = base.with_name(f"{base.name}.{n}")
        n += 1
    for suffix in ("-wal", "-shm", ""):  # the database last: an interrupted move leaves it in place
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.link(src, Path(f"{target}{suffix}"))  # link fails where rename would overwrite
            os.unlink(src)
    return target
