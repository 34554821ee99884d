"""Classified copies to sticks, stopped by fanotify permission events; a dead agent leaves the disk usable.

Real loop-device sticks mounted under a media root, a real classified asset
tree, real ``cp``/``cat``/python copies as uid 1000, and the kernel asking
the guard before each open. An unregistered stick and one registered below
the document's level are guarded; a registered stick of the document's level
is the near miss that must work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.copyguard import CopyGuard, Decision, removable_sticks
from agent.registry import load_registry
from tests.integration.agent_harness import REPO
from tests.integration.mediakit import Stick

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: fanotify permission events, loop devices, mount"),
]
USER = 1000
RED_UUID = "5d2c1c70-1c1e-4d3b-9a51-0f9e8d7c6b5a"
LOW_UUID = "6e3d2d81-2d2f-4e4c-8b62-1a0f9e8d7c6b"


class Desk:
    """An asset tree, a media root and three sticks: unregistered, registered secret, registered internal."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="dw19-copy-"))
        self.top.chmod(0o755)
        self.assets = self.top / "classified"
        self.assets.mkdir()
        self.plan = self.assets / "plan.txt"
        self.plan.write_text("机密 five-year plan\n" * 100, encoding="utf-8")
        self.assets.chmod(0o755)
        self.plan.chmod(0o644)
        self.photo = self.top / "holiday.jpg"
        self.photo.write_bytes(b"\xff\xd8 a photo" * 100)
        self.photo.chmod(0o644)
        self.media = self.top / "media"
        self.media.mkdir()
        self.sticks: list[Stick] = []
        self.registry = self.top / "registry.yaml"
        self.registry.write_text(json.dumps({
            "host": {"id": "h", "unit": "U", "department": "D", "custodian": "zhangsan", "level": "secret",
                     "zone": "intranet"},
            "units": [{"name": "U", "department": "D"}],
            "zones": {"default": "internet", "networks": [{"name": "intranet", "cidrs": ["10.0.0.0/8"]}]},
            "people": [{"account": "zhangsan", "uid": 1000, "name": "张三", "unit": "U", "clearance": "secret"}],
            "assets": [{"path": f"{self.assets}/**", "level": "secret", "unit": "U"}],
            "media": [{"serial": RED_UUID, "label": "红盘", "level": "secret", "holder": "zhangsan"},
                      {"serial": LOW_UUID, "label": "内部盘", "level": "internal", "holder": "zhangsan"}],
        }, ensure_ascii=False), encoding="utf-8")

    def stick(self, name: str, uuid: str | None = None) -> Path:
        s = Stick.make(self.top / f"{name}.img", "ext4", fs_id=uuid)
        self.sticks.append(s)
        mnt = self.media / name
        s.mount(mnt)
        os.chown(mnt, USER, USER)
        return mnt

    def close(self) -> None:
        for s in self.sticks:
            s.release()
        shutil.rmtree(self.top, ignore_errors=True)


def as_user(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=USER, group=USER, extra_groups=[], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


@pytest.fixture
def desk() -> Iterator[Desk]:
    d = Desk()
    yield d
    d.close()


class Guard:
    def __init__(self, desk: Desk, dryrun: bool = False) -> None:
        reg = load_registry(desk.registry)
        self.denied: list[Decision] = []
        self.lock = threading.Lock()
        self.guard = CopyGuard(reg.assets, removable_sticks(reg, [str(desk.media)]), self._report, dryrun=dryrun)
        self.guard.start()

    def wait(self, n: int) -> Decision:
        """The ``n``-th denial (reports follow the kernel's answer: wait for it)."""
        deadline = time.monotonic() + 10
        while True:
            with self.lock:
                if len(self.denied) >= n:
                    return self.denied[n - 1]
            assert time.monotonic() < deadline, f"only {len(self.denied)} denials reported"
            time.sleep(0.02)

    def _report(self, d: Decision) -> None:
        with self.lock:
            self.denied.append(d)


def test_a_copy_to_an_unregistered_stick_is_denied_and_a_harmless_one_allowed(desk: Desk) -> None:
    u = desk.stick("u")
    red = desk.stick("red", RED_UUID)
    low = desk.stick("low", LOW_UUID)
    g = Guard(desk)
    try:
        r = as_user("cp", str(desk.plan), str(u / "plan.txt"))
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
        assert not (u / "plan.txt").exists() or (u / "plan.txt").stat().st_size == 0
        d = g.wait(1)
        assert d.pid > 0 and d.asset == str(desk.plan) and d.stick is not None and d.stick.mount == str(u)
        assert not d.stick.registered
        # The near misses: a photo to the same stick, the plan to the registered secret stick.
        assert as_user("cp", str(desk.photo), str(u / "holiday.jpg")).returncode == 0
        assert (u / "holiday.jpg").read_bytes() == desk.photo.read_bytes()
        assert as_user("cp", str(desk.plan), str(red / "plan.txt")).returncode == 0
        assert (red / "plan.txt").read_text(encoding="utf-8") == desk.plan.read_text(encoding="utf-8")
        assert as_user("cat", str(desk.plan)).returncode == 0  # reading the plan on the desk stays allowed
        # A stick registered below the plan's level is guarded too.
        assert as_user("cp", str(desk.plan), str(low / "plan.txt")).returncode != 0
        # The ways round it an ordinary user would try:
        # the shell opens the destination first, then cat opens the plan while holding it for writing;
        r = as_user("sh", "-c", f"cat {desk.plan} > {u / 'x.txt'}")
        assert r.returncode != 0 and (u / "x.txt").stat().st_size == 0
        # read it into memory, close it, then write the bytes in a file of another name;
        r = as_user("/usr/bin/python3", "-c", f"d = open({str(desk.plan)!r}, 'rb').read()\n"
                    f"open({str(u / 'innocent.bin')!r}, 'wb').write(d)")
        assert r.returncode != 0 and "PermissionError" in r.stderr
        assert "the process read" in g.wait(4).why
        # a bind mount of the stick in a mount namespace of one's own: the same filesystem, the same guard.
        alias = desk.top / "alias"
        alias.mkdir()
        os.chown(alias, USER, USER)
        r = as_user("unshare", "-Urm", "sh", "-c", f"mount --bind {u} {alias} && cp {desk.plan} {alias}/plan.txt")
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
        assert g.wait(5).stick is not None  # the last one: caught by the recent read, not a held fd
    finally:
        g.guard.stop()


def test_dryrun_denies_nothing_and_reports_what_it_would_deny(desk: Desk) -> None:
    u = desk.stick("u")
    g = Guard(desk, dryrun=True)
    try:
        assert as_user("cp", str(desk.plan), str(u / "plan.txt")).returncode == 0
        assert g.wait(1).asset == str(desk.plan)
    finally:
        g.guard.stop()


CHILD = r"""
import sys, time
from agent.enforce.copyguard import CopyGuard, removable_sticks
from agent.registry import load_registry
reg = load_registry(sys.argv[1])
# A file on the stick open for writing before the guard starts: counted from /proc, so asset opens are asked about.
held = open(sys.argv[3], "w")
g = CopyGuard(reg.assets, removable_sticks(reg, [sys.argv[2]]), lambda d: None, hold=30.0)
g.start()
print("ready" if g.armed else "not armed", flush=True)
time.sleep(120)
"""


def test_an_agent_killed_mid_decision_leaves_the_file_system_usable(desk: Desk) -> None:
    u = desk.stick("u")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(desk.registry), str(desk.media), str(u / "w.txt")],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        reader = subprocess.Popen(["cat", str(desk.plan)], user=USER, group=USER, extra_groups=[],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert reader.poll() is None  # waiting on the guard, which holds its answer
        child.send_signal(signal.SIGKILL)
        out, _ = reader.communicate(timeout=10)
        assert reader.returncode == 0 and out.startswith("机密 five-year plan")
        assert time.monotonic() - t0 < 10
        # And every later open is answered by the kernel alone.
        assert as_user("cat", str(desk.plan)).returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def test_an_asset_open_waits_only_while_a_file_on_a_guarded_stick_is_open(desk: Desk) -> None:
    """Asset opens are asked about only while they could be a copy's source; the attacker who opens the
    stick first (the kernel asks about that open) still meets a decision on the asset."""
    u = desk.stick("u")
    red = desk.stick("red", RED_UUID)
    g = Guard(desk)
    try:
        assert not g.guard.armed
        for _ in range(3):
            assert as_user("cat", str(desk.plan)).returncode == 0
        assert g.guard.decided == 0  # read without waiting ...
        deadline = time.monotonic() + 10
        while g.guard.seen < 1:  # ... and still learnt (notifications are read in batches)
            assert time.monotonic() < deadline, "the guard never heard of the reads"
            time.sleep(0.05)
        # A file on the registered secret stick open: nothing on it is guarded for a secret document.
        with open(red / "keep.txt", "w"):
            time.sleep(0.3)
            assert not g.guard.armed
        # A file on the unregistered stick open (held by another process, not the reader): armed at once.
        holder = subprocess.Popen(["sh", "-c", f"exec 3>{u / 'held.txt'}; echo open; exec sleep 60"],
                                  user=USER, group=USER, extra_groups=[], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            assert g.guard.armed
            before = g.guard.decided
            assert as_user("cat", str(desk.plan)).returncode == 0  # a decision, and it is allow
            assert g.guard.decided > before
            # The way round the fast path: the shell opens the stick first, then cat opens the plan holding it.
            r = as_user("sh", "-c", f"exec 3>{u / 'inherited.txt'}; cat {desk.plan} >&3")
            assert r.returncode != 0 and (u / "inherited.txt").stat().st_size == 0
            assert "open for writing" in g.wait(1).why
            # Armed, the folders carry only the permission mark: a read is learnt from its decision, so
            # reading the plan, closing it, then writing the stick is still stopped (and a photo is not).
            seen = g.guard.seen
            r = as_user("/usr/bin/python3", "-c", f"d = open({str(desk.plan)!r}).read()\n"
                        f"open({str(u / 'later.txt')!r}, 'w').write(d)")
            assert r.returncode != 0 and g.guard.seen > seen
            assert not (u / "later.txt").exists() or (u / "later.txt").stat().st_size == 0
            assert "read" in g.wait(2).why
            assert as_user("cp", str(desk.photo), str(u / "photo.jpg")).returncode == 0
        finally:
            holder.kill()
            holder.wait(10)
        deadline = time.monotonic() + 10
        while g.guard.armed:  # every stick file closed: the permission mark goes a second later
            assert time.monotonic() < deadline, "the asset folders kept their permission mark"
            time.sleep(0.1)
        before = g.guard.decided
        assert as_user("cat", str(desk.plan)).returncode == 0
        assert g.guard.decided == before
        # Disarmed, the copy is still stopped: the kernel asks about the stick's open.
        assert as_user("cp", str(desk.plan), str(u / "again.txt")).returncode != 0
    finally:
        g.guard.stop()


def test_a_stick_file_opened_before_the_guard_started_is_counted(desk: Desk) -> None:
    """The kernel never asked about an open made before the marks: the guard counts it from /proc, so the
    holder's classified open is still judged (the fast path is not a way round)."""
    u = desk.stick("u")
    holder = subprocess.Popen(["/usr/bin/python3", "-c", f"import sys, time\nf = open({str(u / 'early.txt')!r}, 'w')\n"
                               "print('open', flush=True)\nsys.stdin.readline()\n"
                               f"f.write(open({str(desk.plan)!r}).read())\n"],
                              user=USER, group=USER, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        g = Guard(desk)
        try:
            assert g.guard.armed
            _, err = holder.communicate("go\n", timeout=30)
            assert holder.returncode != 0 and "PermissionError" in err
            assert (u / "early.txt").stat().st_size == 0
            assert "open for writing" in g.wait(1).why
        finally:
            g.guard.stop()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_a_folder_made_in_the_asset_tree_after_start_is_guarded(desk: Desk) -> None:
    u = desk.stick("u")
    g = Guard(desk)
    try:
        new = desk.assets / "2026" / "q3"
        new.mkdir(parents=True)
        deadline = time.monotonic() + 10
        while str(new) not in g.guard._dirs:
            assert time.monotonic() < deadline, "the new folder was never marked"
            time.sleep(0.05)
        secret = new / "budget.txt"
        secret.write_text("机密 budget\n", encoding="utf-8")
        secret.chmod(0o644)
        for d in (desk.assets / "2026", new):
            d.chmod(0o755)
        r = as_user("/usr/bin/python3", "-c", f"d = open({str(secret)!r}, 'rb').read()\n"
                    f"open({str(u / 'budget.txt')!r}, 'wb').write(d)")
        assert r.returncode != 0 and "PermissionError" in r.stderr
        assert g.wait(1).asset == str(secret)
        # A folder moved in from elsewhere, with a folder inside it, is marked as a whole.
        outside = desk.top / "drafts" / "inner"
        outside.mkdir(parents=True)
        (outside / "memo.txt").write_text("机密 memo\n", encoding="utf-8")
        (outside / "memo.txt").chmod(0o644)
        for d in (outside.parent, outside):
            d.chmod(0o755)
        os.rename(outside.parent, desk.assets / "drafts")
        moved = desk.assets / "drafts" / "inner"
        while str(moved) not in g.guard._dirs:
            assert time.monotonic() < deadline, "the moved-in folder was never marked"
            time.sleep(0.05)
        assert as_user("cp", str(moved / "memo.txt"), str(u / "memo.txt")).returncode != 0
        # The near miss: a file outside the tree still goes to the stick.
        assert as_user("cp", str(desk.photo), str(u / "holiday.jpg")).returncode == 0
    finally:
        g.guard.stop()


def test_the_agent_denies_the_copy_and_journals_who_what_and_where(desk: Desk, tmp_path: Path) -> None:
    """The whole agent (in a network namespace of its own, where its nftables table lives)."""
    ns = f"dw19c-{os.getpid() % 100000}"
    u = desk.stick("u")
    state = tmp_path / "state"
    config = tmp_path / "agent.yaml"
    off = "".join(f"  {n}: {{enabled: false}}\n" for n in ("audit", "process", "files", "network", "host"))
    config.write_text(
        f"registry: {desk.registry}\nstate_dir: {state}\nlisten: 127.0.0.1:9847\nassess: {{enabled: false}}\n"
        f"collectors:\n{off}  media: {{enabled: true, roots: [{desk.media}]}}\n"
        f"enforce:\n  mode: enforce\n  table: dw19c\n  media: {{unregistered: off}}\n  copy: {{enabled: true}}\n"
        "  network: {resolvers: []}\n", encoding="utf-8")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed in finally
    agent = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "agent", "run", "--config",
                              str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while as_user("cp", str(desk.plan), str(u / "probe.txt")).returncode == 0:  # until the guard is up
            (u / "probe.txt").unlink()
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, f"the agent never guarded the stick:\n" \
                                                f"{(tmp_path / 'agent.log').read_text()[-3000:]}"
            time.sleep(0.5)
        r = as_user("cp", str(desk.plan), str(u / "plan.txt"))
        assert r.returncode != 0 and "Operation not permitted" in r.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        log.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    out = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(config), "--type", "all",
                          "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    copies = [json.loads(x)["detail"] for x in out.splitlines()
              if x.strip() and json.loads(x).get("kind") == "enforce.action"
              and json.loads(x)["detail"].get("kind") == "copy"]
    assert copies, out[-3000:]
    d = copies[-1]
    assert (d["result"], d["operator"], d["detail"]["asset"]) == ("denied", "张三", str(desk.plan))
    assert d["detail"]["stick"]["mount"] == str(u) and d["detail"]["stick"]["registered"] is False


PARENT = r"""
import sys, time
from agent.enforce.copyproc import CopyGuardProcess
from agent.registry import load_registry
from pathlib import Path
g = CopyGuardProcess(load_registry(sys.argv[1]), [sys.argv[2]], Path("/sys"), lambda d, op: None)
g.start()
print(g.proc.pid, flush=True)
time.sleep(120)
"""


def test_the_guard_process_answers_apart_and_goes_with_the_agent(desk: Desk) -> None:
    """The agent runs the guard as a process of its own: denials come back with the operator; a guard process
    that dies is replaced (and counted); one whose agent is killed ends, and the disk stays usable."""
    from agent.enforce.copyproc import CopyGuardProcess

    u = desk.stick("u")
    denied: list[tuple[Decision, str | None]] = []
    g = CopyGuardProcess(load_registry(desk.registry), [str(desk.media)], Path("/sys"),
                         lambda d, op: denied.append((d, op)), restart_after=0.2)
    g.start()
    try:
        assert g.proc is not None and g.proc.pid != os.getpid()
        assert as_user("cp", str(desk.plan), str(u / "plan.txt")).returncode != 0
        deadline = time.monotonic() + 10
        while not denied:
            assert time.monotonic() < deadline, "no denial reported by the guard's process"
            time.sleep(0.05)
        d, operator = denied[0]
        assert (d.asset, operator, d.stick.mount if d.stick else None) == (str(desk.plan), "张三", str(u))
        assert g.stats()["denied"] == 1
        # The guard's process is killed: the agent starts another, counts it, and copies are denied again.
        first = g.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while g.lost < 1 or g.proc is None or g.proc.pid == first or g.fd < 0:
            assert time.monotonic() < deadline, "no new guard process"
            time.sleep(0.05)
        assert as_user("cp", str(desk.plan), str(u / "plan2.txt")).returncode != 0
    finally:
        g.stop()
    assert g.proc is None
    # The agent killed: its guard process reads the end of its input and ends; the kernel answers alone.
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(desk.registry), str(desk.media)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert as_user("cp", str(desk.plan), str(u / "plan3.txt")).returncode != 0
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the guard process outlived its agent"
            time.sleep(0.05)
        assert as_user("cp", str(desk.plan), str(u / "plan4.txt")).returncode == 0  # no guard: the kernel allows
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
