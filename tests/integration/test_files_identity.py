"""A classified file is known by its inode: every name of it, every move of it, every flood around it.

Each case is what an ordinary user (uid 61401, no capabilities) does on the
real kernel to reach a registered file without its registered name, with a
legitimate operation beside it that must stay unremarkable. The events go
through attribution against a registry, so the level a rule sees is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.attribution import Attributor
from agent.events import Event
from agent.levels import Level
from agent.registry import load_registry
from collectors.files import FilesCollector

USER = 61401
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # one the user may run
needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                           reason="needs root (fanotify), setpriv and unshare (util-linux)")


class Space:
    """A directory tree owned by the test user: classified/, outside/ and busy/."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="dw-ident-"))
        self.classified, self.outside, self.busy = (self.top / n for n in ("classified", "outside", "busy"))
        for d in (self.classified, self.outside, self.busy):
            d.mkdir()
        self.plan = self.classified / "plan.txt"
        self.plan.write_text("机密 规划\n")
        (self.outside / "menu.txt").write_text("午餐菜单\n")
        for root, dirs, files in os.walk(self.top):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), USER, USER)
        os.chown(self.top, USER, USER)
        registry = self.top / "registry.yaml"
        registry.write_text(json.dumps({
            "host": {"id": "h1", "level": "secret"},
            "people": [{"account": "wang", "uid": USER, "name": "王五", "clearance": "confidential"}],
            "assets": [{"path": f"{self.classified}/**", "level": "secret", "unit": "办公室"}],
        }, ensure_ascii=False))
        self.attribute = Attributor(load_registry(registry))

    def python_as_user(self, code: str, wrap: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """Python code run as the user (under ``wrap``), which prints "done" and then stays alive, so that
        /proc still describes it when the collector looks (a short-lived reader may be gone by then)."""
        code = "import os, subprocess, time\n" + code + "\nprint('done', flush=True)\nimport sys\nsys.stdin.read()"
        child = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--", *wrap,
                                  SYSTEM_PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, cwd=self.top)
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        return child

    def as_user(self, script: str, timeout: float = 30.0) -> str:
        """Run a shell script as the unprivileged user; its output."""
        return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--",
                               "sh", "-c", script], check=True, capture_output=True, text=True,
                              timeout=timeout, cwd=self.top).stdout


class Running:
    """The files collector on a thread, its events attributed as the pipeline would."""

    def __init__(self, space: Space, paths: list[str]) -> None:
        self.space = space
        self.collector = FilesCollector({"paths": paths}, assets=[f"{space.classified}/**"])
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self._emit, self.stop), daemon=True)
        self.thread.start()
        self.wait(lambda: str(space.classified) in self.collector.watched_roots())

    def _emit(self, e: Event) -> bool:
        with self._lock:
            self.events.append(self.space.attribute(e))
        return True

    def wait(self, what: Callable[[], bool], limit: float = 15.0) -> None:
        end = time.monotonic() + limit
        while not what():
            if time.monotonic() > end:
                raise AssertionError(f"timed out; events: {[e.to_dict() for e in self.events]}")
            time.sleep(0.05)

    def of(self, kind: str, path: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind and path in (e.file.path, e.file.dest_path)]


@pytest.fixture
def space() -> Iterator[Space]:
    s = Space()
    yield s
    subprocess.run(["umount", "-R", "-l", str(s.outside / "view")], check=False, capture_output=True)
    shutil.rmtree(s.top, ignore_errors=True)


@pytest.fixture
def running(space: Space) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(paths: list[str] | None = None) -> Running:
        r = Running(space, paths or [])
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(timeout=5)
        assert not r.thread.is_alive(), "collector did not honour stop"


def _is_the_plan(e: Event, space: Space) -> None:
    st = os.stat(space.plan)
    assert e.file.source_path == str(space.plan), e.to_dict()
    assert (e.file.device, e.file.inode) == (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino)
    assert e.file.level == Level.SECRET  # what BM-FILE-001/003 compare
    assert e.process.uid == USER and e.operator.account == "wang"


def _sh(cmd: str) -> str:
    return f"subprocess.run({cmd!r}, shell=True, check=True)\n"


def _read(path: Path | str) -> str:
    return f"open({str(path)!r}, 'rb').read()\n"


@pytest.mark.root
@needs
def test_reading_through_a_hard_link_is_reading_the_asset(space: Space, running: Callable[..., Running]) -> None:
    r = running()
    link, menu_link = space.outside / "notes.txt", space.outside / "menu-link.txt"
    child = space.python_as_user(_sh(f"ln {space.plan} {link} && ln {space.outside / 'menu.txt'} {menu_link}")
                                 + _read(menu_link) + _read(link))
    r.wait(lambda: bool(r.of("file.open", str(link))))
    time.sleep(0.5)
    child.communicate("")
    (read,) = r.of("file.open", str(link))
    _is_the_plan(read, space)
    assert r.of("file.open", str(menu_link)) == []  # an ordinary file's second name is nobody's business


@pytest.mark.root
@needs
def test_reading_through_a_bind_mount_in_a_user_namespace(space: Space, running: Callable[..., Running]) -> None:
    r = running()
    view, other = space.outside / "view", space.outside / "other"
    view.mkdir()
    other.mkdir()
    os.chown(view, USER, USER)
    os.chown(other, USER, USER)
    # unshare -Urm: the user is root in a namespace of their own and binds the folders there.
    child = space.python_as_user(_sh(f"mount --bind {space.outside} {other}") + _read(other / "menu.txt")
                                 + _sh(f"mount --bind {space.classified} {view}") + _read(view / "plan.txt"),
                                 wrap=("unshare", "-Urm"))
    r.wait(lambda: any(e.file.source_path for e in r.events if e.kind == "file.open"))
    time.sleep(0.5)
    child.communicate("")
    reads = [e for e in r.events if e.kind == "file.open"]
    (read,) = reads  # the menu, read through the other bind, is not a watched file
    assert read.file.path == str(view / "plan.txt")  # the name as the reader's namespace has it
    _is_the_plan(read, space)


@pytest.mark.root
@needs
def test_reading_through_another_namespaces_root(space: Space, running: Callable[..., Running]) -> None:
    r = running()
    view = space.outside / "view"
    view.mkdir()
    os.chown(view, USER, USER)
    holder = space.python_as_user(_sh(f"mount --bind {space.classified} {view}"), wrap=("unshare", "-Urm"))
    try:
        # The namespace's python is a child of unshare's setpriv chain: find a process inside it.
        inner = subprocess.run(["pgrep", "-f", "-n", "import os, subprocess, time"], capture_output=True,
                               text=True).stdout.split()
        via = f"/proc/{inner[0]}/root{view}/plan.txt"
        reader = space.python_as_user(_read(via))
        r.wait(lambda: any(e.kind == "file.open" and e.file.source_path for e in r.events))
        time.sleep(0.5)
        reader.communicate("")
    finally:
        holder.communicate("")
    (read,) = [e for e in r.events if e.kind == "file.open"]
    _is_the_plan(read, space)


@pytest.mark.root
@needs
def test_a_move_out_of_or_into_the_classified_tree_is_one_rename(
        space: Space, running: Callable[..., Running]) -> None:
    r = running()
    out, back = space.outside / "plan-copy.txt", space.classified / "returned.txt"
    (space.classified / "draft.txt").write_text("草稿\n")
    os.chown(space.classified / "draft.txt", USER, USER)
    time.sleep(0.5)
    moves = [(space.plan, out), (space.outside / "menu.txt", back),
             (space.classified / "draft.txt", space.classified / "draft-2.txt")]
    child = space.python_as_user(
        f"import os, time\nfor a, b in {[(str(a), str(b)) for a, b in moves]!r}:\n    os.rename(a, b)\n"
        f"    time.sleep(0.7)\nos.unlink({str(space.classified / 'draft-2.txt')!r})")
    r.wait(lambda: len(r.events) >= 4)
    time.sleep(1.0)
    child.communicate("")
    seen = [(e.kind, e.file.path, e.file.dest_path, e.process.uid) for e in r.events]
    assert sorted(seen) == sorted([
        ("file.rename", str(space.plan), str(out), USER),
        ("file.rename", str(space.outside / "menu.txt"), str(back), USER),
        ("file.rename", str(space.classified / "draft.txt"), str(space.classified / "draft-2.txt"), USER),
        ("file.delete", str(space.classified / "draft-2.txt"), None, USER),  # a real delete stays one
    ])
    (moved,) = r.of("file.rename", str(out))
    assert moved.file.level == Level.SECRET and moved.operator.account == "wang"
    # Moved out, the file is still the asset: a later read through its new name says so.
    space.as_user(f"cat {out} >/dev/null")
    r.wait(lambda: bool(r.of("file.open", str(out))))
    assert r.of("file.open", str(out))[0].file.source_path == str(space.plan)


@pytest.mark.root
@needs
def test_a_flood_of_opens_elsewhere_does_not_hide_the_asset(space: Space, running: Callable[..., Running]) -> None:
    for i in range(3000):
        (space.busy / f"f{i:04}.txt").write_text("x")
    r = running([str(space.busy)])
    space.as_user(f"for f in {space.busy}/*.txt; do read x < $f; done; true", timeout=120)
    reader = space.python_as_user(_read(space.plan) + _read(space.busy / "f0001.txt"))
    r.wait(lambda: bool(r.of("file.open", str(space.plan))))
    r.wait(lambda: any(e.process.pid == reader.pid for e in r.of("file.open", str(space.busy / "f0001.txt"))))
    reader.communicate("")
    r.wait(lambda: any(e.kind == "agent.degraded" for e in r.events), limit=20)
    (secret,) = r.of("file.open", str(space.plan))
    assert secret.file.level == Level.SECRET and secret.process.uid == USER
    busy = [e for e in r.events if e.kind == "file.open" and (e.file.path or "").startswith(str(space.busy))]
    shell = max({e.process.pid for e in busy}, key=lambda p: sum(e.process.pid == p for e in busy))
    by_shell = [e for e in busy if e.process.pid == shell]
    assert 300 <= len(by_shell) < 3000  # the shell's own budget, not one event per file
    assert any(e.file.path.endswith("f0001.txt") and e.process.pid != shell for e in busy)  # others still seen
    r.wait(lambda: _lost(r.events) >= 3000 - len(by_shell), limit=20)
    degraded = [e for e in r.events if e.kind == "agent.degraded"]
    assert _lost(r.events) == 3000 - len(by_shell), [e.detail for e in degraded]
    assert all(e.collector == "files" and "open_rate" in (e.detail or "") and f"pid {shell} " in (e.detail or "")
               for e in degraded)


def _lost(events: list[Event]) -> int:
    """The operations agent.degraded events say were not reported."""
    return sum(int((e.detail or "").split("operations not reported: ", 1)[1].split()[0])
               for e in events if e.kind == "agent.degraded")


@pytest.mark.root
@needs
def test_a_registry_change_indexes_the_new_assets_and_forgets_the_old(
        space: Space, running: Callable[..., Running]) -> None:
    r = running()
    later = space.top / "later"
    later.mkdir()
    (later / "doc.txt").write_text("新登记的文件\n")
    for p in (later, later / "doc.txt"):
        os.chown(p, USER, USER)
    r.collector.set_assets([f"{later}/**"])  # what a registry reload hands over
    r.wait(lambda: r.collector.assets.at(str(later / "doc.txt")) is not None)
    r.wait(lambda: str(later) in r.collector.watched_roots())
    child = space.python_as_user(_sh(f"ln {later / 'doc.txt'} {space.outside / 'd.txt'} && "
                                     f"ln {space.plan} {space.outside / 'p.txt'}")
                                 + _read(space.outside / "d.txt") + _read(space.outside / "p.txt"))
    r.wait(lambda: bool(r.of("file.open", str(space.outside / "d.txt"))))
    time.sleep(0.5)
    child.communicate("")
    assert r.of("file.open", str(space.outside / "d.txt"))[0].file.source_path == str(later / "doc.txt")
    assert r.of("file.open", str(space.outside / "p.txt")) == []  # no longer registered: its mark is gone
