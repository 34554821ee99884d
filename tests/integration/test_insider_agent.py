"""The whole agent against an insider: a secret read through a hard link, then copied to a stick under another name.

The real ``dutywatch run`` with the files and media collectors; an ordinary
user (uid 61401) does the work; the journal, read back with ``dutywatch
events``, must hold the findings with the person and the asset named, and
nothing for the user's ordinary files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_harness import AgentProcess
from tests.integration.mediakit import Stick

USER = 61401
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"
needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("setpriv"),
                           reason="needs root, mkfs.ext4 and setpriv")
OFF = "  {name}: {{enabled: false}}\n"


def _registry(top: Path) -> str:
    return f"""\
host: {{id: test-host-01, unit: 测试信息中心, department: 测试委员会, custodian: zhangsan, level: secret,
       zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试信息中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试信息中心, clearance: secret}}
  - {{account: wang, uid: {USER}, name: 王五, unit: 测试信息中心, clearance: confidential}}
  - {{account: root, uid: 0, name: 系统管理员, unit: 测试信息中心, clearance: top_secret}}
zones: {{default: internet, networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]}}
assets:
  - {{path: "{top}/assets/**", level: secret, unit: 测试信息中心}}
"""


@pytest.fixture
def top() -> Iterator[Path]:
    t = Path(tempfile.mkdtemp(prefix="dw-insider-"))
    yield t
    shutil.rmtree(t, ignore_errors=True)


@pytest.mark.root
@needs
def test_the_agent_names_the_person_and_the_asset_behind_a_hard_link_read_and_a_renamed_copy(top: Path) -> None:
    (top / "assets").mkdir()
    (top / "home").mkdir()
    plan = top / "assets" / "plan.txt"
    plan.write_text("2027 年度预算安排\n" * 50)  # no 密级标志: only the registry knows it is secret
    (top / "home" / "lunch.txt").write_text("午餐\n")
    media = top / "media"
    collectors = "".join(OFF.format(name=n) for n in ("process", "network", "host", "audit"))
    collectors += f"  files: {{enabled: true}}\n  media: {{enabled: true, roots: [{media}]}}\n"
    stick = Stick.make(top / "stick.img", "ext4")
    agent = AgentProcess(top, collectors=collectors, registry=_registry(top))
    os.chmod(top, 0o711)  # noqa: S103 - the user passes through; the agent's own files stay root's
    for d in (top / "assets", top / "home"):
        for p in (d, *d.iterdir()):
            os.chown(p, USER, USER)
    agent.start()
    try:
        stick.mount(media / "u")
        os.chown(media / "u", USER, USER)
        agent.wait(lambda: any(e.get("rule") == "BM-MEDIA-003" for e in agent.events()), "stick not reported")
        code = (f"import os, subprocess, sys\n"
                f"os.link({str(plan)!r}, {str(top / 'home' / 'notes.txt')!r})\n"
                f"open({str(top / 'home' / 'notes.txt')!r}, 'rb').read()\n"
                f"open({str(top / 'home' / 'lunch.txt')!r}, 'rb').read()\n"
                f"subprocess.run(['cp', {str(plan)!r}, {str(media / 'u' / 'photo.dat')!r}], check=True)\n"
                # From another session (a second login of the same person), which read no asset: not tainted.
                f"subprocess.run(['setsid', '-w', 'cp', {str(top / 'home' / 'lunch.txt')!r}, "
                f"{str(media / 'u' / 'lunch.txt')!r}], check=True)\n"
                "print('done', flush=True)\nsys.stdin.read()\n")
        user = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--",
                                 SYSTEM_PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert user.stdout is not None and user.stdout.readline().strip() == "done"
            agent.wait(lambda: {"BM-FILE-003", "BM-MEDIA-001"} <= {e.get("rule") for e in agent.events()},
                       "no finding for the hard link read or the copy")
        finally:
            user.communicate("")
    finally:
        agent.stop()
        stick.release()
    findings = [e for e in agent.events() if e.get("rule")]
    (read,) = [f for f in findings if f["rule"] == "BM-FILE-003"
               and f["event"]["file"]["path"] == str(top / "home" / "notes.txt")]
    assert read["event"]["file"]["source_path"] == str(plan)
    assert read["accountable"]["operator"] == "王五"
    (copy,) = [f for f in findings if f["rule"] == "BM-MEDIA-001"]
    assert copy["event"]["file"]["path"] == str(media / "u" / "photo.dat")
    assert copy["event"]["file"]["source_path"] == str(plan)
    assert str(plan) in copy["message"]["zh"] and str(plan) in copy["message"]["en"]
    assert not [f for f in findings if "lunch" in str(f["event"].get("file", {}).get("path"))]


@pytest.mark.root
@needs
@pytest.mark.parametrize("process", ["off", "on"])  # its own process events, or the process collector's
def test_the_person_is_named_when_the_agent_reads_the_file_events_after_the_processes_were_reaped(
        top: Path, process: str) -> None:
    (top / "assets").mkdir()
    (top / "home").mkdir()
    docs = [top / "assets" / f"{n}.txt" for n in ("budget", "staff", "plan")]
    for d in docs:
        d.write_text("2027 年度预算安排\n" * 50)
    off = ("network", "host", "audit", "media") if process == "on" else ("process", "network", "host", "audit", "media")
    collectors = "".join(OFF.format(name=n) for n in off) + "  files: {enabled: true}\n"
    agent = AgentProcess(top, collectors=collectors, registry=_registry(top))
    os.chmod(top, 0o711)  # noqa: S103 - the user passes through; the agent's own files stay root's
    for d in (top / "assets", top / "home", *docs):
        os.chown(d, USER, USER)
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="files") == 1, "files collector not up")
        as_user = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--"]
        # A machine so busy the agent reads nothing for a moment: each reader has exited and been reaped
        # by the time the agent sees its file event, so /proc no longer knows who it was.
        agent.signal(signal.SIGSTOP)
        try:
            subprocess.run([*as_user, "cat", str(docs[0])], check=True, stdout=subprocess.DEVNULL, timeout=30)
            subprocess.run([*as_user, "head", "-c", "10", str(docs[1])], check=True, stdout=subprocess.DEVNULL,
                           timeout=30)
            subprocess.run([*as_user, "cp", str(docs[2]), str(top / "home" / "copy.txt")], check=True, timeout=30)
        finally:
            agent.signal(signal.SIGCONT)
        agent.wait(lambda: len([e for e in agent.events() if e.get("rule") == "BM-FILE-003"]) >= 3,
                   "the reads of the reaped processes were not all reported", 60)
    finally:
        agent.stop()
    findings = [e for e in agent.events() if e.get("rule")]
    reads = [f for f in findings if f["rule"] == "BM-FILE-003"]
    assert sorted(f["event"]["file"]["path"] for f in reads) == sorted(map(str, docs))
    assert {f["accountable"]["operator"] for f in reads} == {"王五"}
    assert {f["event"]["process"]["uid"] for f in reads} == {USER}
    unattributed = [f["event"] for f in findings if f["accountable"]["operator"] is None
                    and f["event"]["event"]["kind"].startswith("file.")]
    assert not unattributed  # no file operation left without a person
