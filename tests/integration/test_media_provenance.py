"""A file written to a stick is classified by where it came from, not by its marking or its name.

Real loop-mounted ext4 sticks under a media root, real processes of an
ordinary user (uid 61401) copying, compressing and renaming a registered
asset that carries no marking; the events go through attribution and the
shipped rules, and each case has a legitimate copy beside it that must stay
silent.
"""

from __future__ import annotations

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

from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.events import Event
from collectors.files import FilesCollector
from collectors.media import MediaCollector
from tests.integration.mediakit import Stick, attributor

USER = 61401
REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("setpriv"),
                           reason="needs root, mkfs.ext4 (e2fsprogs) and setpriv (util-linux)")


class Desk:
    """The user's files: a registered asset tree, a home folder, a media root, and the agent's view of them."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="dw-prov-"))
        self.classified, self.home, self.media = (self.top / n for n in ("classified", "home", "media"))
        for d in (self.classified, self.home, self.media):
            d.mkdir()
        self.plan = self.classified / "plan.txt"
        self.plan.write_text("2027 年度预算安排（无密级标志的登记资产）\n" * 40)
        self.budget = self.classified / "budget.csv"
        self.budget.write_text("项目,金额\n" + "基建,1000\n" * 300)
        (self.home / "holiday.jpg").write_bytes(os.urandom(4096))
        shutil.copyfile(self.plan, self.home / "old-copy.txt")  # made long ago, by someone else
        for root, dirs, files in os.walk(self.top):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), USER, USER)
        os.chown(self.top, USER, USER)
        self.attribute = attributor(self.top, {
            "host": {"id": "h1", "level": "secret", "custodian": "wang"},
            "people": [{"account": "wang", "uid": USER, "name": "王五", "clearance": "secret"}],
            "assets": [{"path": f"{self.classified}/**", "level": "secret", "unit": "办公室"}],
        })
        self.engine = Engine(load_rules([REPO / "rules"]))

    def rules(self, e: Event) -> set[str]:
        return {r.id for r in self.engine.match(e)}

    def as_user(self, code: str) -> subprocess.Popen[str]:
        """Python run as the user in a session of its own; prints "done", then waits for stdin to close."""
        code = "import os, subprocess, sys, time\n" + textwrap.dedent(code) + \
            "\nprint('done', flush=True)\nsys.stdin.read()"
        child = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--",
                                  "setsid", SYSTEM_PYTHON, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=self.top)
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        return child


class Agent:
    """The media and files collectors together, as the daemon runs them; attributed events."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.media = MediaCollector({"roots": [str(desk.media)]})
        self.files = FilesCollector({"paths": []}, media=self.media, assets=[f"{desk.classified}/**"])
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=c.run, args=(self._emit, self.stop), daemon=True)
                        for c in (self.media, self.files)]
        for t in self.threads:
            t.start()
        self.wait(lambda: self.media.health.up and str(desk.classified) in self.files.watched_roots())

    def _emit(self, e: Event) -> bool:
        with self._lock:
            self.events.append(self.desk.attribute(e))
        return True

    def wait(self, what: Callable[[], bool], limit: float = 15.0) -> None:
        end = time.monotonic() + limit
        while not what():
            if time.monotonic() > end:
                raise AssertionError(f"timed out; events: {[e.to_dict() for e in self.events]}")
            time.sleep(0.05)

    def on(self, path: Path) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.file.path == str(path)]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def desk() -> Iterator[Desk]:
    d = Desk()
    yield d
    shutil.rmtree(d.top, ignore_errors=True)


@pytest.fixture
def stick(desk: Desk) -> Iterator[Stick]:
    s = Stick.make(desk.top / "stick.img", "ext4")
    yield s
    s.release()


def _writable(mnt: Path) -> None:
    os.chown(mnt, USER, USER)


@pytest.mark.root
@needs
def test_copies_of_an_unmarked_asset_under_other_names_are_classified(desk: Desk, stick: Stick) -> None:
    agent = Agent(desk)
    children: list[subprocess.Popen[str]] = []
    try:
        mnt = desk.media / "u"
        stick.mount(mnt)
        _writable(mnt)
        agent.wait(lambda: str(mnt) in agent.files.watched_roots())
        # 1. cp of the asset to a harmless-looking name: the writer read the asset.
        children.append(desk.as_user(f"subprocess.run(['cp', {str(desk.plan)!r}, {str(mnt / 'photo.dat')!r}],"
                                     " check=True)"))
        # 2. Read by one process, compressed onto the stick by another of the same session.
        children.append(desk.as_user(f"""
            data = open({str(desk.budget)!r}, 'rb').read()
            w = subprocess.Popen([sys.executable, '-c', 'import gzip, sys, time; '
                                  'gzip.open(sys.argv[1], "wb").write(sys.stdin.buffer.read()); '
                                  'print("ok", flush=True); time.sleep(10)', {str(mnt / 'b.gz')!r}],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            w.stdin.write(data); w.stdin.close(); w.stdout.readline()
        """))
        # 3. A copy of a copy made long ago, written by a session that read no asset: its content says it.
        # 4. Beside it, in the same session, a holiday photo: nothing to say.
        children.append(desk.as_user(f"""
            for a, b in (({str(desk.home / 'old-copy.txt')!r}, {str(mnt / 'notes.dat')!r}),
                         ({str(desk.home / 'holiday.jpg')!r}, {str(mnt / 'holiday.jpg')!r})):
                with open(a, 'rb') as src, open(b, 'wb') as dst:
                    dst.write(src.read())
        """))
        names = ("photo.dat", "b.gz", "notes.dat", "holiday.jpg")
        agent.wait(lambda: all(agent.on(mnt / n) for n in names))
        time.sleep(1.0)
    finally:
        for c in children:
            c.communicate("")
        agent.close()
    photo, gz, notes, holiday = (agent.on(mnt / n) for n in names)
    (photo_e,) = [e for e in photo if e.kind == "file.create"]
    assert photo_e.file.source_path == str(desk.plan)
    assert "BM-MEDIA-001" in desk.rules(photo_e)
    (gz_e,) = [e for e in gz if e.kind == "file.create"]
    assert gz_e.file.source_path == str(desk.budget), gz_e.to_dict()  # by session: the writer read nothing
    assert "BM-MEDIA-001" in desk.rules(gz_e)
    (notes_e,) = [e for e in notes if e.kind == "file.create"]
    assert notes_e.file.source_path == str(desk.plan)
    assert notes_e.file.sha256 == _sha256(desk.plan)  # by content
    assert "BM-MEDIA-001" in desk.rules(notes_e)
    for e in holiday:
        assert e.file.source_path is None and e.file.level is None
        assert not desk.rules(e) & {"BM-MEDIA-001", "BM-MEDIA-002"}


@pytest.mark.root
@needs
def test_a_copy_made_the_instant_after_mount_is_caught(desk: Desk, stick: Stick) -> None:
    mnt = desk.media / "fast"
    stick.mount(mnt)
    shutil.copyfile(desk.home / "holiday.jpg", mnt / "already-there.jpg")  # on the stick before it came here
    shutil.copyfile(desk.plan, mnt / "old-secret.txt")
    subprocess.run(["umount", str(mnt)], check=True)
    time.sleep(2.5)  # what was on the stick is older than the mount by more than the slack
    agent = Agent(desk)
    try:
        subprocess.run(["sh", "-c", f"mount {stick.device} {mnt} && cp {desk.plan} {mnt}/fast.dat"], check=True)
        agent.wait(lambda: bool(agent.on(mnt / "fast.dat")))
        time.sleep(1.5)
    finally:
        agent.close()
    (fast,) = agent.on(mnt / "fast.dat")
    assert fast.kind == "file.create" and fast.file.on_removable is True
    assert fast.file.source_path == str(desk.plan)
    # Which of the two got there first decides how the copy is known, never whether: written before the
    # watches were on the new mount, the catch-up scan finds it with no writer and knows it by its content;
    # written after (a busy machine runs cp later), fanotify names cp, which read the asset.
    if fast.process.pid is None:
        assert fast.file.sha256 == _sha256(desk.plan), fast.to_dict()
    else:
        assert fast.process.name == "cp", fast.to_dict()
    assert "BM-MEDIA-001" in desk.rules(fast)
    assert agent.on(mnt / "already-there.jpg") == [] and agent.on(mnt / "old-secret.txt") == []


@pytest.mark.root
@needs
def test_a_stick_mounted_in_a_private_mount_namespace_is_seen(desk: Desk, stick: Stick, tmp_path: Path) -> None:
    ours = Stick.make(tmp_path / "ours.img", "ext4")  # mounted here first: a namespace copies it, nothing new
    try:
        ours.mount(desk.media / "ours")
        (desk.media / "hidden").mkdir()
        agent = Agent(desk)
        hider = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount {stick.device} {desk.media / 'hidden'} && cp {desk.plan} {desk.media / 'hidden'}/x.dat "
             "&& echo ok && exec sleep 30"], stdout=subprocess.PIPE, text=True)
        try:
            assert hider.stdout is not None and hider.stdout.readline().strip() == "ok"
            agent.wait(lambda: any(e.kind == "file.create" and (e.file.path or "").endswith("/hidden/x.dat")
                                   for e in agent.events))
            time.sleep(1.0)
        finally:
            hider.kill()
            hider.wait()
            agent.close()
    finally:
        ours.release()
    mounts = [e for e in agent.events if e.kind == "media.mount"]
    assert [e.media.mount for e in mounts if e.media.device == ours.device] == [str(desk.media / "ours")]
    (hidden,) = [e for e in mounts if e.media.device == stick.device]
    assert hidden.media.mount is not None and hidden.media.mount.endswith(f"/root{desk.media / 'hidden'}")
    assert hidden.detail is not None and "another mount namespace" in hidden.detail
    assert "BM-MEDIA-003" in desk.rules(hidden)
    (copy,) = [e for e in agent.events if e.kind == "file.create" and (e.file.path or "").endswith("/hidden/x.dat")]
    assert copy.file.path == f"{hidden.media.mount}/x.dat" and copy.file.on_removable is True
    assert copy.file.source_path == str(desk.plan)
    assert "BM-MEDIA-001" in desk.rules(copy)


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()
