"""The files collector on a real kernel: one event per operation, with the process that did it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.events import Event
from agent.levels import Level
from collectors.files import FilesCollector
from collectors.marking import MarkingResult

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify)")

# The child does one operation a second, so the collector sees four separate operations.
CHILD = textwrap.dedent("""
    import os, sys, time
    d = sys.argv[1]
    a, b = os.path.join(d, "a.txt"), os.path.join(d, "b.txt")
    with open(a, "w") as f:
        f.write("first\\n")
    time.sleep(1.0)
    with open(a, "a") as f:
        f.write("second\\n")
    time.sleep(1.0)
    os.rename(a, b)
    time.sleep(1.0)
    os.unlink(b)
    time.sleep(1.0)
    with open(os.path.join(d, "ro.txt")) as f:
        f.read()
    print("done", flush=True)
    sys.stdin.read()  # stay alive so /proc still describes us
""")


class Running:
    """A collector running on a thread, collecting what it emits."""

    def __init__(self, collector: FilesCollector) -> None:
        self.collector = collector
        self.events: list[Event] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=collector.run, args=(self.emit, self.stop), daemon=True)

    def emit(self, e: Event) -> bool:
        self.events.append(e)
        return True

    def wait_for(self, what: Callable[[], bool], limit: float = 15.0) -> None:
        end = time.monotonic() + limit
        while not what():
            if time.monotonic() > end:
                raise AssertionError(f"timed out; events: {[e.to_dict() for e in self.events]}")
            time.sleep(0.05)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(paths: list[str], **kw: object) -> Running:
        r = Running(FilesCollector({"paths": paths}, **kw))  # type: ignore[arg-type]
        r.thread.start()
        r.wait_for(lambda: set(os.path.realpath(p) for p in paths) <= set(r.collector.watched_roots()))
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(timeout=5)
        assert not r.thread.is_alive(), "collector did not honour stop"


@pytest.mark.root
@root_only
def test_child_operations_give_one_event_each_with_the_childs_pid(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    (tmp_path / "ro.txt").write_text("read me\n")  # our own write: not reported
    r = running([str(tmp_path)])
    assert r.collector.health.mode == "fanotify"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        r.wait_for(lambda: any(e.kind == "file.open" for e in r.events))
        time.sleep(1.0)  # anything extra (duplicates) would arrive in this time
    finally:
        child.communicate("")
    a, b, ro = (str(tmp_path / n) for n in ("a.txt", "b.txt", "ro.txt"))
    seen = [(e.kind, e.file.path, e.file.dest_path) for e in r.events]
    assert seen == [
        ("file.create", a, None),
        ("file.write", a, None),
        ("file.rename", a, b),
        ("file.delete", b, None),
        ("file.open", ro, None),
    ]
    for e in r.events:
        assert e.process.pid == child.pid, e.to_dict()
        assert e.process.exe == os.path.realpath(sys.executable)
        assert e.process.uid == 0
        assert e.collector == "files"
        assert e.file.on_removable is None  # no media collector given


@pytest.mark.root
@root_only
def test_marker_sees_written_files_but_not_symlink_escapes(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("机密★\n")
    asked: list[str] = []

    def marker(path: str, fd: int) -> MarkingResult:
        asked.append(path)
        return MarkingResult("marked", Level.SECRET) if "机密★" in os.pread(fd, 1 << 20, 0).decode() \
            else MarkingResult("unmarked")

    r = running([str(watched)], marker=marker)
    script = (f"import os; open({str(watched / 'doc.txt')!r}, 'w').write('机密★ 文件');"
              f"os.symlink({str(outside / 'secret.txt')!r}, {str(watched / 'link.txt')!r})")
    subprocess.run([sys.executable, "-c", script], check=True)
    r.wait_for(lambda: len(r.events) >= 2)
    by_path = {e.file.path: e for e in r.events}
    assert by_path[str(watched / "doc.txt")].file.marking == Level.SECRET
    assert by_path[str(watched / "link.txt")].file.marking is None
    assert str(outside / "secret.txt") not in asked


@pytest.mark.root
@root_only
def test_new_subdirectories_are_watched_with_process_data(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    r = running([str(tmp_path)])
    script = f"import os, time; os.makedirs({str(tmp_path / 'x' / 'y')!r}); time.sleep(0.5); " \
             f"open({str(tmp_path / 'x' / 'y' / 'f')!r}, 'w').write('1'); print(os.getpid())"
    pid = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    f = str(tmp_path / "x" / "y" / "f")
    r.wait_for(lambda: any(e.file.path == f for e in r.events))
    (made,) = [e for e in r.events if e.file.path == f]
    assert made.kind == "file.create"
    assert made.process.pid == pid


UNPRIVILEGED = textwrap.dedent("""
    import json, os, sys, threading, time
    from collectors.files import FilesCollector
    c = FilesCollector({"paths": [sys.argv[1]]})
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    events, stop = [], threading.Event()
    t = threading.Thread(target=c.run, args=(lambda e: events.append(e) or True, stop))
    t.start()
    end = time.monotonic() + 10
    while not c.watched_roots() and time.monotonic() < end:
        time.sleep(0.05)
    open(os.path.join(sys.argv[1], "n.txt"), "w").write("x")
    while not events and time.monotonic() < end:
        time.sleep(0.05)
    stop.set(); t.join()
    print(json.dumps({"available": c.available().mode, "reason": c.available().reason,
                      "mode": c.health.mode, "events": [e.to_dict() for e in events]}))
""")


@pytest.mark.root
@root_only
def test_unprivileged_start_falls_back_to_inotify() -> None:
    d = tempfile.mkdtemp(prefix="dw-files-")
    try:
        os.chown(d, 65534, 65534)  # the unprivileged child may write here
        out = subprocess.run([sys.executable, "-c", UNPRIVILEGED, d], check=True, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=60)
        got = json.loads(out.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(d)
    assert got["available"] == "inotify"
    assert "not permitted" in got["reason"]
    assert got["mode"] == "inotify"
    (e,) = got["events"]
    assert e["event"]["kind"] == "file.create"
    assert e["file"]["path"] == os.path.join(d, "n.txt")
    assert "process" not in e


@pytest.mark.root
@root_only
def test_the_agents_own_file_operations_are_not_reported(tmp_path: Path, running: Callable[..., Running]) -> None:
    r = running([str(tmp_path)])
    (tmp_path / "own.txt").write_text("ours\n")  # written by this process: the collector's own pid
    (tmp_path / "own.txt").unlink()
    script = f"open({str(tmp_path / 'theirs.txt')!r}, 'w').write('x')"
    subprocess.run([sys.executable, "-c", script], check=True)
    r.wait_for(lambda: any(e.file.path == str(tmp_path / "theirs.txt") for e in r.events))
    time.sleep(0.5)
    assert [e.file.path for e in r.events] == [str(tmp_path / "theirs.txt")]


@pytest.mark.root
@root_only
def test_swapping_the_path_during_the_scan_cannot_redirect_it(
        tmp_path: Path, running: Callable[..., Running]) -> None:
    """The scan reads the descriptor the collector checked: replacing the file (or a directory
    on its path) with a symlink to a secret elsewhere, mid-scan, changes nothing it reads."""
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    (outside / "shadow.txt").write_text("绝密★长期 stolen\n")
    seen: list[str] = []

    def marker(path: str, fd: int) -> MarkingResult:
        doc = Path(path)
        doc.unlink()  # the race, won by the attacker: the path now leads outside
        doc.symlink_to(outside / "shadow.txt")
        text = os.pread(fd, 1 << 20, 0).decode()
        seen.append(text)
        return MarkingResult("marked", Level.TOP_SECRET) if "绝密★" in text else MarkingResult("unmarked")

    r = running([str(watched)], marker=marker)
    subprocess.run([sys.executable, "-c", f"open({str(watched / 'doc.txt')!r}, 'w').write('ordinary text')"],
                   check=True)
    r.wait_for(lambda: any(e.file.path == str(watched / "doc.txt") for e in r.events))
    assert seen == ["ordinary text"]
    event = next(e for e in r.events if e.file.path == str(watched / "doc.txt"))
    assert event.file.marking is None
