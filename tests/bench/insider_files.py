"""The files and removable-media sections of bench_insider: asset identity per file event, and the mount catch-up.

``bench_assets`` indexes a tree of registered files and times what the files
collector adds to each file event to know assets by inode: the lookup of a
record's (device, inode), for an asset and for an ordinary file, and the
fstat a fanotify record now costs. ``bench_renames`` times what a rename elsewhere on a watched filesystem
costs the rename group, which sees them all and drops those with no watched
side. ``bench_catch_up`` builds a 10,000-file
ext4 stick on a loop device (root only) and times the scan made at mount
for files written before the watches were in place: with every file new,
and with none new (a stick brought in full).
"""

from __future__ import annotations

import os
import select
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from collectors.assets import AssetIndex
from collectors.files import FilesCollector

ROUNDS = 5
ASSET_FILES = 20_000
STICK_FILES = 10_000


def _median_us(fn: Callable[[], object], n: int) -> float:
    rounds = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


def _tree(top: Path, n: int, per_dir: int = 500) -> list[Path]:
    out = []
    for i in range(n):
        d = top / f"d{i // per_dir:03}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:05}.txt"
        p.write_bytes(b"x" * (i % 997 + 1))
        out.append(p)
    return out


def bench_assets() -> None:
    """Index load and the per-event cost of knowing assets by (device, inode)."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-assets-") as tmp:
        top = Path(tmp)
        files = _tree(top / "classified", ASSET_FILES)
        other = top / "ordinary.txt"
        other.write_text("x")
        loads = []
        for _ in range(3):
            index = AssetIndex([f"{top / 'classified'}/**"])
            t = time.perf_counter()
            index.load()
            loads.append(time.perf_counter() - t)
        st, so = os.stat(files[ASSET_FILES // 2]), os.stat(other)
        hit = _median_us(lambda: index.lookup(st.st_dev, st.st_ino), 200_000)
        miss = _median_us(lambda: index.lookup(so.st_dev, so.st_ino), 200_000)
        fd = os.open(other, os.O_RDONLY)
        try:
            fstat = _median_us(lambda: os.fstat(fd), 200_000)
        finally:
            os.close(fd)
        covers = _median_us(lambda: index.covers(str(files[7])), 100_000)
        empty: dict[tuple[int, int], int] = {}
        call = _median_us(lambda: empty.get((st.st_dev, st.st_ino)), 200_000)  # the machine's pace, for ratios
        load = os.getloadavg()[0]
        print(f"asset index of {len(index)} files: load {statistics.median(loads):.3f} s (median of 3)")
        print(f"inode-based asset lookup per file event: {hit:.3f} us for an asset, {miss:.3f} us for another file "
              f"(x{hit / call:.1f} and x{miss / call:.1f} of one dict lookup, {call:.3f} us here); fstat of the "
              f"record's descriptor {fstat:.3f} us; glob check of a path {covers:.3f} us; load average {load:.1f}")


def bench_renames(n: int = 5000) -> None:
    """Per-rename cost of the filesystem-wide rename group for renames outside the watched trees (root only)."""
    if os.geteuid() != 0:
        print("renames elsewhere on a watched filesystem: skipped (needs root)")
        return
    from collectors import fanotify as fan
    with tempfile.TemporaryDirectory(prefix="dw-bench-renames-") as tmp:
        watched, elsewhere = Path(tmp) / "watched", Path(tmp) / "elsewhere"
        watched.mkdir()
        elsewhere.mkdir()
        names = [str(elsewhere / f"f{i:05}") for i in range(n + 1)]
        Path(names[0]).write_text("x")
        costs, kept = [], 0
        for _ in range(ROUNDS):
            w = fan.FanotifyWatcher(lambda r, n: None, lambda why: None)
            try:
                if w.renames is None:
                    print("renames elsewhere on a watched filesystem: no rename group on this kernel")
                    return
                w.mark_tree(str(watched))
                for i in range(n):  # distinct names: the kernel merges identical events
                    os.rename(names[i], names[i + 1])
                os.rename(names[n], names[0])
                t = time.perf_counter()
                while select.select([w.renames.fd], [], [], 0)[0]:
                    kept += len(w.renames.read())
                costs.append((time.perf_counter() - t) / n * 1e6)
            finally:
                w.close()
        print(f"renames elsewhere on a watched filesystem: {statistics.median(costs):.2f} us each to read and drop "
              f"in the rename group ({kept} kept, median of {ROUNDS} rounds of {n})")


def bench_catch_up() -> None:
    """The scan at mount of a 10,000-file stick, all new and none new (needs root for the loop mount)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        print("mount catch-up scan: skipped (needs root and mkfs.ext4)")
        return
    with tempfile.TemporaryDirectory(prefix="dw-bench-stick-") as tmp:
        image, mnt = Path(tmp) / "stick.img", Path(tmp) / "mnt"
        mnt.mkdir()
        subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(STICK_FILES * 2), str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        try:
            _tree(mnt, STICK_FILES)
            subprocess.run(["sync"], check=True)
            for label, since in (("every file new", 0.0), ("no file new", time.time() + 60)):
                times, found = [], 0
                for _ in range(ROUNDS):
                    c = FilesCollector({"paths": []})
                    t = time.perf_counter()
                    found = c.catch_up(str(mnt), since)
                    times.append(time.perf_counter() - t)
                print(f"mount catch-up scan of a {STICK_FILES}-file stick ({label}): "
                      f"{statistics.median(times):.3f} s, {found} files to report (median of {ROUNDS})")
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
