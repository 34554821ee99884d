"""Where a file written to removable media came from: what its writer read, or what its content is.

A marking can be stripped and a name changed; neither changes where the
bytes came from. A file written to removable media names a registered asset
(``file.source_path``) when

- the process that wrote it, or another process of its session (a shell's
  ``cat secret | gzip > /media/u/a.gz``), read that asset within
  ``READ_WINDOW`` seconds before; or
- its content hashes (SHA-256, ``file.sha256``) to that asset's: a copy made
  long after the read, or by a process we never saw read it.

The hash is only computed when some asset has the file's size, so ordinary
writes to a stick are not read back at all.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict

from collectors.assets import AssetIndex

READ_WINDOW = 120.0  # seconds a read of an asset taints what its process or session writes
HASH_MAX = 256 << 20  # files larger than this are not hashed on the event path (counted instead)
MAX_TRACKED = 4096  # processes and sessions remembered; the oldest go first


class Provenance:
    """Recent reads of assets by process and session, and content matching against the asset index."""

    def __init__(self, assets: AssetIndex, window: float = READ_WINDOW) -> None:
        self.assets = assets
        self.window = window
        self.too_large = 0  # writes not hashed because they exceed HASH_MAX
        self._by_pid: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._by_sid: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, pid: int | None, sid: int | None, asset: str, now: float) -> None:
        """Process ``pid`` (of session ``sid``) read ``asset`` at ``now`` (monotonic seconds)."""
        with self._lock:
            for table, key in ((self._by_pid, pid), (self._by_sid, sid)):
                if key is None or key <= 1:
                    continue
                table[key] = (now, asset)
                table.move_to_end(key)
                if len(table) > MAX_TRACKED:
                    table.popitem(last=False)

    def recent(self, pid: int | None, sid: int | None, now: float) -> str | None:
        """The asset this process, else its session, read within the window before ``now``; None if none."""
        with self._lock:
            for table, key in ((self._by_pid, pid), (self._by_sid, sid)):
                hit = table.get(key) if key is not None else None
                if hit is not None and now - hit[0] <= self.window:
                    return hit[1]
        return None

    def content(self, path: str) -> tuple[str | None, str | None]:
        """(SHA-256, the asset with that content) of the regular file at ``path``; Nones when not computed."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None, None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, None
            if st.st_size > HASH_MAX:
                self.too_large += 1
                return None, None
            digest, asset = self.assets.same_content(fd, st.st_size)
        except OSError:
            return None, None
        finally:
            os.close(fd)
        return digest, asset.path if asset is not None else None
