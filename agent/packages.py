"""Which installed package a program file belongs to, by the package database (``process.package``).

A rule exemption for the package manager must rest on what the program is,
not on what it calls itself: any program can set its name to ``dpkg``, and a
root user can put any file at ``/usr/bin/dpkg``. A program belongs to a
package when the package database lists its path and, on dpkg systems, the
file's content still has the MD5 dpkg recorded for it (``info/PKG.md5sums``);
a file replaced after the package installed it belongs to no package. The
file looked at is the one the process runs (``/proc/PID/exe``), which must be
the file at its exe path: a program bind-mounted over ``/usr/bin/dpkg`` in
another mount namespace, or a process already gone, belongs to no package.

dpkg: the ``/var/lib/dpkg/info/*.list`` files are searched for the path (and
its merged-/usr twin: ``/bin/x`` is ``/usr/bin/x``). rpm (no dpkg database):
``rpm -qf``, once per path. Only programs under the directories packages
install to are looked up (a program in /tmp or /home is no package's), and
answers are cached per path and file identity (device, inode, size, mtime)
for ten minutes: a search of the database costs once per program, not once
per event, and a user cannot make the agent search for every file he runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_ALIASES = (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/"), ("/usr/lib64/", "/lib64/"), ("/usr/lib/", "/lib/"))
_CACHE_LIMIT = 4096
_TTL = 600.0  # seconds an answer is kept (a package removed or installed over a file is seen within this)
_RPM_TIMEOUT = 5.0
_PACKAGED = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/opt/", "/etc/")

Owner = Callable[[str, int | None], str | None]  # (exe path, pid running it) -> package


def merged_twins(path: str) -> list[str]:
    """``path`` and its other name on a merged-/usr system (``/usr/bin/x`` and ``/bin/x``)."""
    out = [path]
    for usr, root in _ALIASES:
        if path.startswith(usr):
            out.append(root + path[len(usr):])
        elif path.startswith(root):
            out.append(usr + path[len(root):])
    return out


def _md5(path: str) -> str | None:
    h = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class PackageOwners:
    """``owners(path)`` is the name of the package that installed the file at ``path`` as it is now, or None."""

    def __init__(self, dpkg_info: Path = Path("/var/lib/dpkg/info"), rpm_db: Path = Path("/var/lib/rpm"), *,
                 rpm: str | None = "rpm", proc_root: Path = Path("/proc"), roots: tuple[str, ...] = _PACKAGED,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.dpkg_info = dpkg_info
        self.proc_root = proc_root
        self.roots = roots
        self.rpm_db = rpm_db
        self.rpm = shutil.which(rpm) if rpm else None
        self.monotonic = monotonic
        self._cache: dict[str, tuple[tuple[int, int, int, int], float, str | None]] = {}
        self.searches = 0  # database searches made (the cost the cache saves)

    def __call__(self, path: str, pid: int | None) -> str | None:
        """The package of the program ``pid`` runs from ``path``; None if unowned, changed, not that file, or gone."""
        if pid is None or not path.startswith(self.roots):
            return None
        return self.of(path, self.running(pid))

    def running(self, pid: int | None) -> tuple[int, int] | None:
        """(device, inode) of the file ``pid`` runs (one stat; read it while the process runs), None if gone."""
        if pid is None:
            return None
        try:
            st = os.stat(f"{self.proc_root}/{pid}/exe")
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def of(self, path: str, running: tuple[int, int] | None) -> str | None:
        """The package of the file at ``path`` if it is the file ``running`` (a process's exe, read earlier)."""
        if running is None or not path.startswith(self.roots):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if running != (st.st_dev, st.st_ino):
            return None
        now = self.monotonic()
        hit = self._cache.get(path)
        if hit is not None and hit[0] == ident and now - hit[1] < _TTL:
            return hit[2]
        self.searches += 1
        owner = self._dpkg(path) if self.dpkg_info.is_dir() else self._rpm(path)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[path] = (ident, now, owner)
        return owner

    # -- dpkg --------------------------------------------------------------
    def _dpkg(self, path: str) -> str | None:
        names = merged_twins(path)
        needles = [n.encode() for n in names]
        try:
            lists = sorted(e.name for e in os.scandir(self.dpkg_info) if e.name.endswith(".list"))
        except OSError:
            return None
        for name in lists:
            try:
                data = (self.dpkg_info / name).read_bytes()
            except OSError:
                continue
            for needle in needles:
                at = data.find(b"\n" + needle + b"\n")
                if at < 0 and not data.startswith(needle + b"\n"):
                    continue
                stem = name[:-len(".list")]
                return stem.partition(":")[0] if self._content_ok(stem, names, path) else None
        return None

    def _content_ok(self, stem: str, names: list[str], path: str) -> bool:
        """Whether the file's MD5 is the one dpkg recorded (True when dpkg recorded none for it)."""
        try:
            lines = (self.dpkg_info / f"{stem}.md5sums").read_bytes().splitlines()
        except OSError:
            return True
        wanted = {n.lstrip("/").encode() for n in names}
        for line in lines:
            digest, _, rel = line.partition(b"  ")
            if rel in wanted:
                return _md5(path) == digest.decode("ascii", "replace")
        return True

    # -- rpm ---------------------------------------------------------------
    def _rpm(self, path: str) -> str | None:
        if self.rpm is None or not self.rpm_db.is_dir():
            return None
        try:
            # --qf: the name alone; -V (content check) is left to rpm's own tools: it costs a full verify.
            r = subprocess.run([self.rpm, "-qf", "--queryformat", "%{NAME}\n", "--", path], capture_output=True,
                               text=True, timeout=_RPM_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        names = r.stdout.split()
        return names[0] if r.returncode == 0 and len(names) == 1 else None


def no_owners(path: str, pid: int | None) -> str | None:
    """An owner lookup that knows no package (rule samples state ``process.package`` themselves)."""
    del path, pid
    return None
