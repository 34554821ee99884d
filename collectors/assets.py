"""Registered assets by identity: (device, inode) and, on demand, content hash.

A classified file is known by its inode, not by its name: a hard link, a bind
mount, a path in another mount namespace or under ``/proc/PID/root`` all lead
to the same (device, inode). The index walks every asset glob's tree once
(``load``), then the files collector keeps it fresh from the operations it
sees there (``refresh`` on create, write and rename, ``forget`` on delete).

The content hash of an asset is computed only when a written file of the same
size needs comparing (a copy to removable media), and cached by (device,
inode, size, mtime): a tree of large documents costs nothing until then.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent.globs import compile_glob, literal_prefix

MAX_FILES = 200_000  # an index larger than this is a registry mistake; the rest is reported, not walked
HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class AssetFile:
    """One registered file as the index knows it."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int


def device_name(dev: int) -> str:
    """``st_dev`` as "major:minor", the form mountinfo and audit records use."""
    return f"{os.major(dev)}:{os.minor(dev)}"


def sha256_fd(fd: int, limit: int | None = None) -> str | None:
    """The SHA-256 of what descriptor ``fd`` holds (read with pread, the offset untouched); None past ``limit``."""
    h = hashlib.sha256()
    off = 0
    while True:
        chunk = os.pread(fd, HASH_CHUNK, off)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        off += len(chunk)
        if limit is not None and off > limit:
            return None


class AssetIndex:
    """(device, inode) -> registered path for every file an asset glob covers."""

    def __init__(self, globs: Iterable[str], max_files: int = MAX_FILES) -> None:
        self.globs = tuple(dict.fromkeys(globs))
        self._patterns: tuple[re.Pattern[str], ...] = tuple(compile_glob(g) for g in self.globs)
        self._prefixes = tuple(literal_prefix(g) for g in self.globs)
        self.max_files = max_files
        self.overflow = 0  # files left out because the index was full
        self._by_id: dict[tuple[int, int], AssetFile] = {}
        self._by_path: dict[str, tuple[int, int]] = {}
        self._by_size: dict[int, set[tuple[int, int]]] = {}
        self._hashes: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def covers(self, path: str) -> bool:
        """Whether ``path`` is a registered name (matches an asset glob)."""
        return path.startswith(self._prefixes) and any(p.match(path) for p in self._patterns) if self._prefixes \
            else False

    def roots(self) -> tuple[str, ...]:
        """The directories to walk: each glob's literal prefix, cut back to a directory."""
        out = []
        for prefix in self._prefixes:
            out.append(prefix if prefix.endswith("/") else os.path.dirname(prefix) or "/")
        return tuple(dict.fromkeys(os.path.normpath(r) for r in out))

    def load(self, on_file: Callable[[AssetFile], object] | None = None) -> int:
        """Walk every asset tree and index what the globs cover; the number of files indexed."""
        for root in self.roots():
            for path, st in _walk(root):
                if not stat.S_ISREG(st.st_mode) or not self.covers(path):
                    continue
                f = self._add(AssetFile(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
                if f is not None and on_file is not None:
                    on_file(f)
        return len(self._by_id)

    def refresh(self, path: str) -> AssetFile | None:
        """Index ``path`` as it is now (a registered regular file), or drop it; what was indexed."""
        if not self.covers(path):
            return None
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            self.forget(path)
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._add(AssetFile(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def _add(self, f: AssetFile) -> AssetFile | None:
        path = f.path
        with self._lock:
            self._drop_path(path)
            old = self._by_id.get((f.dev, f.ino))
            if old is None and len(self._by_id) >= self.max_files:
                self.overflow += 1
                return None
            if old is not None:
                self._by_size.get(old.size, set()).discard((old.dev, old.ino))
                if old.path != path and self.covers(old.path) and old.path in self._by_path:
                    # A second registered name of one file: the first stays its name.
                    f = AssetFile(old.path, f.dev, f.ino, f.size, f.mtime_ns)
            self._by_id[(f.dev, f.ino)] = f
            self._by_path[path] = (f.dev, f.ino)
            self._by_size.setdefault(f.size, set()).add((f.dev, f.ino))
        return f

    def forget(self, path: str) -> None:
        """``path`` was deleted: it no longer names an asset."""
        with self._lock:
            self._drop_path(path)

    def moved(self, src: str, dest: str) -> AssetFile | None:
        """``src`` was renamed to ``dest``: a registered file keeps its identity wherever it goes.

        Moved within the registered trees it takes the new name; moved out it
        keeps the registered name it had, which every later name leads back to.
        """
        with self._lock:
            key = self._by_path.pop(src, None)
        if self.covers(dest):
            return self.refresh(dest)
        return self._by_id.get(key) if key is not None else None

    def at(self, path: str) -> AssetFile | None:
        """The indexed file registered under ``path``, or None."""
        key = self._by_path.get(path)
        return self._by_id.get(key) if key is not None else None

    def _drop_path(self, path: str) -> None:
        key = self._by_path.pop(path, None)
        if key is None:
            return
        f = self._by_id.get(key)
        if f is not None and f.path == path:
            del self._by_id[key]
            self._by_size.get(f.size, set()).discard(key)

    def lookup(self, dev: int | None, ino: int | None) -> AssetFile | None:
        """The registered file with this identity, or None."""
        if dev is None or ino is None:
            return None
        return self._by_id.get((dev, ino))

    def files(self) -> list[AssetFile]:
        """Every indexed file (a snapshot)."""
        with self._lock:
            return list(self._by_id.values())

    def same_content(self, fd: int, size: int, limit: int | None = None) -> tuple[str | None, AssetFile | None]:
        """The SHA-256 of ``fd``'s content and the asset holding the same content, if one does.

        Only assets of the same size are hashed (each once per version), so a
        write that matches no asset's size is not hashed at all: its hash is None.
        """
        with self._lock:
            candidates = [self._by_id[k] for k in self._by_size.get(size, ()) if k in self._by_id]
        if not candidates:
            return None, None
        digest = sha256_fd(fd, limit)
        if digest is None:
            return None, None
        for a in candidates:
            if self._asset_hash(a) == digest:
                return digest, a
        return digest, None

    def _asset_hash(self, a: AssetFile) -> str | None:
        key = (a.dev, a.ino, a.size, a.mtime_ns)
        hit = self._hashes.get(key)
        if hit is not None:
            return hit
        try:
            fd = os.open(a.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (a.dev, a.ino):
                return None  # the name now holds another file
            digest = sha256_fd(fd)
        finally:
            os.close(fd)
        if len(self._hashes) > 4 * self.max_files:
            self._hashes.clear()
        self._hashes[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = digest or ""
        return digest if (st.st_size, st.st_mtime_ns) == (a.size, a.mtime_ns) else None


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` with its lstat (symlinks not followed); ``root`` itself when it is a file."""
    try:
        top = os.stat(root, follow_symlinks=False)
    except OSError:
        return
    if not stat.S_ISDIR(top.st_mode):
        yield root, top
        return
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as entries:
                for e in entries:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(e.path)
                    yield e.path, st
        except OSError:
            continue
