"""The files collector's marking: a re-read is answered from the cache, a changed file is scanned again
(even with its mtime put back), and files the marking queue has no room for go out unscanned."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.events import Event
from agent.levels import Level
from collectors.files import MARK_BATCH, MARK_QUEUE, FilesCollector
from collectors.marking import MarkingResult

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify)")


def run(collector: FilesCollector) -> tuple[list[Event], threading.Event, threading.Thread]:
    events: list[Event] = []
    stop = threading.Event()
    t = threading.Thread(target=collector.run, args=(lambda e: events.append(e) or True, stop), daemon=True)
    t.start()
    end = time.monotonic() + 15
    while not collector.watched_roots() and time.monotonic() < end:
        time.sleep(0.05)
    return events, stop, t


def wait(what: Callable[[], bool], events: list[Event], limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not what():
        if time.monotonic() > end:
            raise AssertionError(f"timed out; events: {[e.to_dict() for e in events]}")
        time.sleep(0.05)


def read(path: Path) -> None:
    # A reader that stays a moment, as a viewer does.
    subprocess.run([sys.executable, "-c", f"import time; open({str(path)!r}).read(); time.sleep(0.5)"], check=True)


@pytest.mark.root
@root_only
def test_rereads_come_from_the_cache_and_a_change_is_scanned_again(tmp_path: Path) -> None:
    doc = tmp_path / "通知.txt"
    doc.write_text("机密★10年\n通知\n")
    scanned: list[str] = []

    def marker(path: str, fd: int) -> MarkingResult:
        text = os.pread(fd, 1 << 16, 0).decode()
        scanned.append(text)
        return MarkingResult("marked", Level.SECRET) if "机密★" in text else MarkingResult("unmarked")

    collector = FilesCollector({"paths": [str(tmp_path)]}, marker=marker)
    events, stop, t = run(collector)
    try:
        opens = lambda: [e for e in events if e.kind == "file.open" and e.file.path == str(doc)]  # noqa: E731
        read(doc)
        read(doc)
        wait(lambda: len(opens()) >= 2, events)
        assert [e.file.marking for e in opens()] == [Level.SECRET, Level.SECRET]
        assert len(scanned) == 1  # the second read cost no scan
        # Same size, new content, mtime put back: ctime still tells.
        st = doc.stat()
        doc.write_text("普通文件12\n通知\n")  # as many bytes as 机密★10年
        os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert doc.stat().st_size == st.st_size and doc.stat().st_mtime_ns == st.st_mtime_ns
        time.sleep(1.5)  # past the collector's write window, so the next read is a read
        before = len(opens())
        read(doc)
        wait(lambda: len(opens()) > before, events)
        assert opens()[-1].file.marking is None and opens()[-1].file.marking_status == "unmarked"
    finally:
        stop.set()
        t.join(timeout=10)


@pytest.mark.root
@root_only
def test_files_the_marking_queue_cannot_hold_go_out_unscanned(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_marker(path: str, fd: int) -> MarkingResult:
        release.wait(30)  # a scan that takes its time (a worker on a hostile file)
        return MarkingResult("unmarked")

    collector = FilesCollector({"paths": [str(tmp_path)]}, marker=slow_marker)
    events, stop, t = run(collector)
    n = MARK_QUEUE + 40
    try:
        script = (f"import os\nfor i in range({n}):\n"
                  f"    open(os.path.join({str(tmp_path)!r}, f'f{{i}}.txt'), 'w').write('x')")
        subprocess.run([sys.executable, "-c", script], check=True)
        wait(lambda: collector.health.marking_skipped.get("queue_full", 0) > 0, events, 30)
        skipped = [e for e in events if e.file.marking_status == "unscanned"]
        assert skipped and all(e.kind in ("file.create", "file.write") for e in skipped)
        release.set()
        wait(lambda: sum(1 for e in events if e.kind == "file.create") >= n, events, 60)
        assert collector.health.marking_skipped["queue_full"] == len(
            [e for e in events if e.file.marking_status == "unscanned"])
    finally:
        release.set()
        stop.set()
        t.join(timeout=10)


@pytest.mark.root
@root_only
def test_a_renamed_document_carries_its_marking(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "desk").mkdir()
    doc = tmp_path / "inbox" / "通知.txt"
    doc.write_text("机密★10年\n通知\n")
    plain = tmp_path / "inbox" / "周报.txt"
    plain.write_text("本周工作\n")

    def marker(path: str, fd: int) -> MarkingResult:
        found = "机密★" in os.pread(fd, 1 << 16, 0).decode()
        return MarkingResult("marked", Level.SECRET) if found else MarkingResult("unmarked")

    collector = FilesCollector({"paths": [str(tmp_path)]}, marker=marker)
    events, stop, t = run(collector)
    try:
        moved, moved_plain = tmp_path / "desk" / "通知.txt", tmp_path / "desk" / "周报.txt"
        subprocess.run([sys.executable, "-c", f"import os; os.rename({str(doc)!r}, {str(moved)!r}); "
                        f"os.rename({str(plain)!r}, {str(moved_plain)!r})"], check=True)
        renames = lambda: {e.file.dest_path: e for e in events if e.kind == "file.rename"}  # noqa: E731
        wait(lambda: len(renames()) >= 2, events)
        assert renames()[str(moved)].file.marking is Level.SECRET
        assert renames()[str(moved_plain)].file.marking is None  # the near miss
        assert renames()[str(moved_plain)].file.marking_status == "unmarked"
    finally:
        stop.set()
        t.join(timeout=10)


@pytest.mark.root
@root_only
def test_a_burst_goes_to_the_marker_in_batches_and_each_file_keeps_its_own_result(tmp_path: Path) -> None:
    """A marker with ``many`` (the marking worker's) gets queued files together, at most MARK_BATCH at once;
    results go back to the right events."""
    release = threading.Event()
    batches: list[int] = []

    class Marker:
        def __call__(self, path: str, fd: int) -> MarkingResult:
            return self.many([(path, fd)])[0]

        def many(self, files: list[tuple[str, int]]) -> list[MarkingResult]:
            release.wait(30)  # the first scan takes its time: the burst queues up behind it
            batches.append(len(files))
            return [MarkingResult("marked", Level.SECRET) if "机密★" in os.pread(fd, 4096, 0).decode()
                    else MarkingResult("unmarked") for _, fd in files]

    collector = FilesCollector({"paths": [str(tmp_path)]}, marker=Marker())
    events, stop, t = run(collector)
    n = 60
    try:
        script = (f"import os\nfor i in range({n}):\n"
                  f"    open(os.path.join({str(tmp_path)!r}, f'f{{i}}.txt'), 'w').write("
                  f"'机密★\\n' if i % 3 == 0 else '正文\\n')")
        subprocess.run([sys.executable, "-c", script], check=True)
        time.sleep(2.0)  # the collector's write window passes and the files queue for their scan
        release.set()
        created = lambda: {e.file.path: e for e in events if e.kind == "file.create"}  # noqa: E731
        wait(lambda: len(created()) >= n, events, 60)
        for i in range(n):
            e = created()[str(tmp_path / f"f{i}.txt")]
            assert e.file.marking == (Level.SECRET if i % 3 == 0 else None), i
            assert e.file.marking_status == ("marked" if i % 3 == 0 else "unmarked"), i
        assert sum(batches) == n  # each file scanned once
        assert max(batches) > 1 and max(batches) <= MARK_BATCH
    finally:
        release.set()
        stop.set()
        t.join(timeout=10)
