"""Recursive inotify watches read by the caller's thread, on a real kernel.

The watcher has no thread: the test polls its descriptor as the files collector's
joining thread does. What it must keep from watchdog's observer: new subdirectories
watched at once (and what was made in them before), a move's halves paired, a move out
held for its second half and then a delete, the order of operations kept, a directory
moved within the tree still watched under its new name; and what the kernel drops
(``IN_Q_OVERFLOW``) reported, with the trees watched again.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import Event, Media
from collectors.files import FilesCollector
from collectors.watch import CLOSED, CREATED, DELETED, MODIFIED, MOVE_DELAY, MOVED, FsOp, TreeWatcher

OVERFLOW_FILES = 9000  # two records each (create, close after writing): past the kernel's 16384 by default


def _queue_limit() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


class Tree:
    """A watcher and what it handed over, read the way the files collector reads it."""

    def __init__(self) -> None:
        self.ops: list[FsOp] = []
        self.errors: list[str] = []
        self.lost: list[str] = []
        self.overflows = 0
        self.w = TreeWatcher(self.ops.append, self.errors.append, on_lost=self.lost.append,
                             on_overflow=self._overflow)

    def _overflow(self) -> None:
        self.overflows += 1

    def pump(self, seconds: float = 0.3) -> None:
        """Wait on the descriptor and the held moves for ``seconds``, reading as they come."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            due = self.w.due()
            wait = left if due is None else max(0.0, min(left, due - time.monotonic()))
            ready, _, _ = select.select([self.w.fileno()], [], [], wait)
            if ready:
                self.w.read()
            self.w.release()

    def seen(self) -> list[tuple[str, str, str | None]]:
        return [(o.what, o.path, o.dest) for o in self.ops]


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    yield t
    t.w.close()


def test_new_subdirectories_are_watched_and_their_early_content_reported(tmp_path: Path, tree: Tree) -> None:
    assert tree.w.add(str(tmp_path))
    a, b = tmp_path / "a", tmp_path / "a" / "b"
    # Made faster than anyone can add a watch: b and f exist before a's watch does.
    subprocess.run([sys.executable, "-c", f"import os; os.makedirs({str(b)!r}); open({str(b / 'f')!r}, 'w').close()"],
                   check=True)
    tree.pump()
    created = {(o.path, o.is_dir) for o in tree.ops if o.what == CREATED}
    assert {(str(a), True), (str(b), True), (str(b / "f"), False)} <= created
    tree.ops.clear()
    (b / "g").write_text("later")  # the new, deepest directory is watched
    tree.pump()
    assert (CREATED, str(b / "g"), None) in tree.seen() and (CLOSED, str(b / "g"), None) in tree.seen()
    assert tree.w.watches() == 3


def test_an_entry_seen_by_both_the_listing_and_the_new_watch_is_one_create(tmp_path: Path, tree: Tree) -> None:
    assert tree.w.add(str(tmp_path))
    script = (f"import os\nfor i in range(30):\n    os.makedirs(os.path.join({str(tmp_path)!r}, f'a{{i}}', 'b'))\n"
              f"    open(os.path.join({str(tmp_path)!r}, f'a{{i}}', 'b', 'f'), 'w').write('x')\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    tree.pump(1.0)
    created = [o.path for o in tree.ops if o.what == CREATED]
    assert len(created) == 90 and len(set(created)) == 90, sorted(p for p in created if created.count(p) > 1)
    tree.ops.clear()
    f = str(tmp_path / "a0" / "b" / "f")
    os.unlink(f)  # the near miss: made again after a delete, it is a create again
    Path(f).write_text("y")
    tree.pump()
    assert tree.seen() == [(DELETED, f, None), (CREATED, f, None), (MODIFIED, f, None), (CLOSED, f, None)]


def test_reading_a_file_wakes_no_one(tmp_path: Path, tree: Tree) -> None:
    (tmp_path / "doc.txt").write_text("x")
    assert tree.w.add(str(tmp_path))
    for _ in range(50):
        (tmp_path / "doc.txt").read_text()
    ready, _, _ = select.select([tree.w.fileno()], [], [], 0.2)
    assert ready == [], "an open or a read-only close was asked of the kernel"
    with (tmp_path / "doc.txt").open("a") as f:  # the near miss: a write is an operation
        f.write("y")
    tree.pump()
    assert tree.seen() == [(MODIFIED, str(tmp_path / "doc.txt"), None), (CLOSED, str(tmp_path / "doc.txt"), None)]


def test_a_move_is_one_operation_and_a_moved_directory_stays_watched(tmp_path: Path, tree: Tree) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    assert tree.w.add(str(tmp_path))
    os.rename(tmp_path / "f", tmp_path / "g")
    os.rename(tmp_path / "d", tmp_path / "e")
    tree.pump()
    assert tree.seen() == [(MOVED, str(tmp_path / "f"), str(tmp_path / "g")),
                           (MOVED, str(tmp_path / "d"), str(tmp_path / "e"))]
    tree.ops.clear()
    (tmp_path / "e" / "sub" / "new").write_text("x")
    tree.pump()
    assert (CREATED, str(tmp_path / "e" / "sub" / "new"), None) in tree.seen()  # named by the new path


def test_a_move_out_is_a_delete_after_the_wait_and_what_follows_keeps_its_place(tmp_path: Path, tree: Tree) -> None:
    watched, outside = tmp_path / "w", tmp_path / "out"
    (watched / "dir").mkdir(parents=True)
    outside.mkdir()
    (watched / "a").write_text("x")
    assert tree.w.add(str(watched))
    os.rename(watched / "a", outside / "a")
    (watched / "a").write_text("again")  # the same name made again right after: it must not overtake the move
    tree.pump(0.1)
    assert tree.ops == [], "a move's first half waits for its second, and what follows waits behind it"
    due = tree.w.due()
    assert due is not None and due - time.monotonic() <= MOVE_DELAY
    tree.pump(MOVE_DELAY + 0.2)
    assert tree.seen()[:2] == [(DELETED, str(watched / "a"), None), (CREATED, str(watched / "a"), None)]
    assert tree.w.due() is None
    tree.ops.clear()
    os.rename(watched / "dir", outside / "dir")
    tree.pump(MOVE_DELAY + 0.2)
    assert tree.seen() == [(DELETED, str(watched / "dir"), None)]
    (outside / "dir" / "x").write_text("elsewhere now")  # its old watch is gone with it
    os.rename(outside / "a", watched / "b")  # a move in: a create
    tree.pump()
    assert tree.seen()[1:] == [(CREATED, str(watched / "b"), None)]


def test_a_deleted_root_is_reported_lost_and_removing_a_nested_root_keeps_the_outer(tmp_path: Path,
                                                                                     tree: Tree) -> None:
    outer, inner, other = tmp_path / "outer", tmp_path / "outer" / "inner", tmp_path / "other"
    inner.mkdir(parents=True)
    other.mkdir()
    for r in (outer, inner, other):
        assert tree.w.add(str(r))
    tree.w.remove(str(inner))
    (inner / "f").write_text("x")  # still under the outer root
    tree.pump()
    assert (CREATED, str(inner / "f"), None) in tree.seen()
    assert tree.w.roots() == (str(outer), str(other))
    tree.ops.clear()
    other.rmdir()
    tree.pump()
    assert tree.seen() == [(DELETED, str(other), None)]
    assert tree.lost == [str(other)]
    assert tree.w.roots() == (str(outer),)
    assert not tree.w.add(str(tmp_path / "missing")) and tree.errors == [str(tmp_path / "missing")]


@pytest.mark.skipif(_queue_limit() >= 2 * OVERFLOW_FILES, reason="the kernel's inotify queue is larger than the test")
def test_an_overflow_is_reported_and_directories_made_meanwhile_are_watched(tmp_path: Path, tree: Tree) -> None:
    flood = tmp_path / "flood"
    flood.mkdir()
    assert tree.w.add(str(tmp_path))
    for i in range(OVERFLOW_FILES):  # no one reads meanwhile: the kernel's queue fills and overflows
        (flood / f"{i}").write_text("x")
    (tmp_path / "late").mkdir()  # its create is lost: only walking the tree again finds it
    tree.pump(1.0)
    assert tree.overflows == 1
    tree.ops.clear()
    (tmp_path / "late" / "f").write_text("x")
    tree.pump()
    assert (CREATED, str(tmp_path / "late" / "f"), None) in tree.seen()


class _SlowMedium:
    """A media collector whose answer takes long, as a catch-up of a big stick holds the joining thread."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.held = threading.Event()
        self.go = threading.Event()

    def removable_mounts(self) -> tuple[Media, ...]:
        if self.hold.is_set() and not self.go.is_set():
            self.held.set()
            self.go.wait(60)  # set by the test once the flood is made
        return ()

    def removable_mount_for(self, path: str) -> Media | None:
        return None


@pytest.mark.skipif(_queue_limit() >= 2 * OVERFLOW_FILES, reason="the kernel's inotify queue is larger than the test")
def test_the_collector_counts_what_inotify_dropped_and_runs_no_watch_thread(tmp_path: Path) -> None:
    medium = _SlowMedium()
    flood = tmp_path / "flood"
    flood.mkdir()
    c = FilesCollector({"paths": [str(tmp_path)]}, media=medium)
    events: list[Event] = []

    def emit(e: Event) -> bool:
        events.append(e)
        return True

    stop = threading.Event()
    before = set(threading.enumerate())
    t = threading.Thread(target=c.run, args=(emit, stop), daemon=True)
    t.start()
    try:
        end = time.monotonic() + 10
        while not c.watched_roots() and time.monotonic() < end:
            time.sleep(0.05)
        started = {x.name for x in set(threading.enumerate()) - before - {t}}
        assert started <= {"files-fanotify", "files-marking", "files-pids"}, started
        medium.hold.set()
        c._wake()
        assert medium.held.wait(10)
        subprocess.run([sys.executable, "-c", f"import os\nfor i in range({OVERFLOW_FILES}): "
                        f"open(os.path.join({str(flood)!r}, str(i)), 'w').write('x')"], check=True)
        medium.go.set()
        end = time.monotonic() + 30
        while not c.health.drops.get("inotify_overflow") and time.monotonic() < end:
            time.sleep(0.05)
        assert c.health.drops.get("inotify_overflow") == 1
        end = time.monotonic() + 30
        while not any(e.kind == "agent.degraded" for e in events) and time.monotonic() < end:
            time.sleep(0.1)
        (degraded,) = [e for e in events if e.kind == "agent.degraded"]
        assert "inotify_overflow" in (degraded.detail or "")
    finally:
        medium.go.set()
        stop.set()
        t.join(timeout=10)
    assert not t.is_alive()

