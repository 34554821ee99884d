"""Notice changes on disk to the config, drop-ins, registry and rule files.

A cheap stat of each file (and the listing of each rule directory) every
few seconds: these files are few and change rarely, and polling also
catches edits made while an inotify watch would have been lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Signature = tuple[tuple[str, int, int, int], ...]


def _stat(p: Path) -> tuple[str, int, int, int]:
    try:
        st = os.stat(p)
        return (str(p), st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return (str(p), -1, -1, -1)


class FileWatcher:
    """Remembers a signature of some files and directories; reports which changed."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = tuple(paths)
        self._sig = self.signature()

    def _files(self) -> list[Path]:
        out: list[Path] = []
        for p in self.paths:
            if p.is_dir():
                out.append(p)
                out.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml")))
            else:
                out.append(p)
        return out

    def signature(self) -> Signature:
        """The current (path, mtime, size, inode) of every watched file."""
        return tuple(_stat(p) for p in self._files())

    def changed(self) -> list[str]:
        """Paths that changed since the last call (empty when none)."""
        sig = self.signature()
        if sig == self._sig:
            return []
        old = dict((s[0], s[1:]) for s in self._sig)
        new = dict((s[0], s[1:]) for s in sig)
        self._sig = sig
        return sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))

    def reset(self, paths: Iterable[Path]) -> None:
        """Watch another set of paths (after a reload changed them)."""
        self.paths = tuple(paths)
        self._sig = self.signature()
