"""Reading a host's files, the live one or a mounted root, without leaving the root.

On a scanned root every symbolic link is resolved inside the root (an
absolute link ``/etc/x -> /etc/shadow`` means ``ROOT/etc/shadow``, never the
scanning host's file), reads are bounded in size, and nothing from the root is
ever executed.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 4 * 1024 * 1024  # a config file larger than this is reported, not read
MAX_LINKS = 40


class ProbeError(Exception):
    """A probe could not read what it needs; the message is the evidence."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat`` says about a file inside the root."""

    path: str
    mode: int
    uid: int
    gid: int
    is_dir: bool
    size: int


class RootFS:
    """A file-system view rooted at ``root`` ("/" for the live host)."""

    def __init__(self, root: str | Path = "/") -> None:
        self.root = os.path.realpath(str(root))
        self.live = self.root == "/"
        self.read_paths: set[str] = set()  # every host path a probe looked at (the agent watches them)

    def real(self, path: str) -> str:
        """The path on the scanning host of ``path`` inside the root, links resolved inside it."""
        if not path.startswith("/"):
            raise ProbeError(f"{path}: not an absolute path")
        if self.live:
            return path
        parts = [p for p in path.split("/") if p]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = os.path.join(self.root, *done, part)
            try:
                st = os.lstat(candidate)
            except OSError:
                done.append(part)
                done.extend(parts)
                break
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_LINKS:
                    raise ProbeError(f"{path}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            done.append(part)
        return os.path.join(self.root, *done)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the root."""
        self.read_paths.add(path)
        try:
            return os.path.exists(self.real(path))
        except ProbeError:
            return False

    def stat(self, path: str) -> FileInfo | None:
        """The file's owner, mode and size, or None when absent."""
        self.read_paths.add(path)
        try:
            st = os.stat(self.real(path))
        except (OSError, ProbeError):
            return None
        return FileInfo(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, stat.S_ISDIR(st.st_mode), st.st_size)

    def read(self, path: str, limit: int = MAX_FILE_BYTES) -> str | None:
        """The file's text (None when absent); ProbeError when it is not a file or too large."""
        self.read_paths.add(path)
        real = self.real(path)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            raise ProbeError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ProbeError(f"{path}: is a directory")
            if not stat.S_ISREG(st.st_mode) and not path.startswith("/proc/"):
                raise ProbeError(f"{path}: not a regular file")
            # /proc and /sys files refuse one huge read (ENOMEM): read in pieces
            chunks, size = [], 0
            while size <= limit:
                piece = os.read(fd, 65536)
                if not piece:
                    break
                chunks.append(piece)
                size += len(piece)
            data = b"".join(chunks)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise ProbeError(f"{path}: larger than {limit // (1024 * 1024)} MiB, not read")
        return data.decode("utf-8", "replace")

    def lines(self, path: str) -> list[str] | None:
        """The file's lines, or None when absent."""
        text = self.read(path)
        return None if text is None else text.splitlines()

    def glob(self, pattern: str) -> list[str]:
        """Paths inside the root matching ``pattern``, sorted, as root paths."""
        self.read_paths.add(os.path.dirname(pattern) or "/")  # a file added there is a change
        if self.live:
            return sorted(glob.glob(pattern))
        base = self.real(os.path.dirname(pattern) or "/")
        names = sorted(glob.glob(os.path.join(glob.escape(base), os.path.basename(pattern))))
        inside = os.path.dirname(pattern)
        return [os.path.join(inside, os.path.basename(n)) for n in names]

    def listdir(self, path: str) -> list[str]:
        """Names in a directory of the root (empty when absent)."""
        self.read_paths.add(path)
        try:
            return sorted(os.listdir(self.real(path)))
        except (OSError, ProbeError):
            return []
