"""Attempts on a real agent as a root insider would make them, each beside its legitimate twin.

kill -9 then delete or forge run.json; SIGSTOP/SIGCONT; a kill by a person;
ptrace of the agent; a program renamed ``dpkg`` writing a system directory,
and another program mounted at dpkg's very path in a mount namespace of its
own, beside a real package install by the real dpkg.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import AgentProcess

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loginuid, ptrace, fanotify")
OFF = "  {name}: {{enabled: false}}\n"


def collectors(**on: str) -> str:
    out = ""
    for name in ("process", "network", "files", "media", "host", "audit"):
        out += f"  {name}: {on[name]}\n" if name in on else OFF.format(name=name)
    return out


def tamper(records: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "agent.tamper" and r["detail"].get("reason") == reason]


def findings(records: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("rule") == rule]


def as_login(uid: int) -> None:
    with open("/proc/self/loginuid", "w") as f:
        f.write(str(uid))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path, collectors=collectors(), extra_config="protect: {pause_after: 3s}\n")
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.stop()


@pytest.mark.root
@ROOT
@pytest.mark.parametrize("run_json", ["deleted", "forged_clean"])
def test_a_kill_is_a_gap_whatever_run_json_says(agent: AgentProcess, run_json: str) -> None:
    agent.start()
    time.sleep(1)
    agent.kill()
    killed_at = time.time()
    run = agent.state / "run.json"
    if run_json == "deleted":
        run.unlink()
    else:
        data = json.loads(run.read_text())
        run.write_text(json.dumps({**data, "alive": time.time(), "clean": True}))
    agent.start()
    assert agent.stop() == 0
    records = agent.events()
    (gap,) = tamper(records, "unclean_stop")
    assert gap["detail"]["since"] <= killed_at <= gap["detail"]["until"]
    assert gap["detail"]["run_state"] == ("missing" if run_json == "deleted" else "claims_clean")
    (zr,) = findings(records, "ZR-005")
    assert "monitoring interrupted" in zr["message"]["en"]
    assert "deleted" in zr["message"]["en"] if run_json == "deleted" else "claimed a clean stop" in zr["message"]["en"]
    # The legitimate twin: a clean stop (by the process that started the agent), then run.json deleted.
    run.unlink()
    agent.start()
    assert agent.stop() == 0
    records = agent.events()
    assert len(tamper(records, "unclean_stop")) == 1 and len(findings(records, "ZR-005")) == 1
    stops = [r for r in records if r.get("kind") == "agent.stop"]
    assert stops and all(s["detail"]["by"] == "parent" for s in stops)
    assert not tamper(records, "signal") and not findings(records, "DB-TAMP-005")


@pytest.mark.root
@ROOT
def test_a_pause_is_journaled_with_its_window_and_a_short_stall_is_not(agent: AgentProcess) -> None:
    agent.start()
    assert agent.proc is not None
    # The twin first: a stall under the threshold (3 s) is no pause.
    agent.signal(signal.SIGSTOP)
    time.sleep(1)
    agent.signal(signal.SIGCONT)
    time.sleep(1.5)
    agent.signal(signal.SIGSTOP)
    stopped = time.time()
    time.sleep(7)
    agent.signal(signal.SIGCONT)
    resumed = time.time()
    agent.wait(lambda: bool(tamper(agent.events(), "paused")), "no pause journaled")
    assert agent.metric("dutywatch_tamper_total", reason="paused") == 1
    assert agent.stop() == 0
    records = agent.events()
    (pause,) = tamper(records, "paused")
    d = pause["detail"]
    assert d["since"] <= stopped + 1.0 and d["until"] >= resumed - 0.5
    assert 6.0 <= d["seconds"] <= 12.0
    (zr,) = findings(records, "ZR-005")
    assert zr["message"]["en"].startswith("Security monitoring on host test-host-01 was interrupted: paused")


@pytest.mark.root
@ROOT
def test_a_kill_by_a_person_names_them_and_the_supervisors_stop_does_not(agent: AgentProcess) -> None:
    agent.start()
    assert agent.proc is not None
    pid = agent.proc.pid
    # 张三 (loginuid 1000) as root, from an interactive shell.
    subprocess.run(["/bin/bash", "-c", f"kill -TERM {pid}; sleep 1; true"], preexec_fn=lambda: as_login(1000),
                   timeout=30, check=True)
    assert agent.proc.wait(30) == 0
    records = agent.events()
    (t,) = tamper(records, "signal")
    assert t["detail"]["by"]["exe"] == os.path.realpath("/bin/bash")
    assert t["detail"]["by"]["loginuid"] == 1000
    (f,) = findings(records, "DB-TAMP-005")
    assert f["accountable"]["operator"] == "张三"
    assert f["event"]["process"]["exe"] == os.path.realpath("/bin/bash")
    assert "SIGTERM" in f["message"]["en"]
    assert not findings(records, "ZR-005")
    # The twin: stopped by its supervisor (here the process that started it), then started and stopped again.
    agent.start()
    assert agent.stop() == 0
    records = agent.events()
    assert len(findings(records, "DB-TAMP-005")) == 1
    last_stop = [r for r in records if r.get("kind") == "agent.stop"][-1]
    assert last_stop["detail"]["by"] == "parent"


TRACER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
if libc.ptrace(PTRACE_SEIZE, int(sys.argv[1]), None, None) != 0:
    sys.exit(f"ptrace: errno {ctypes.get_errno()}")
time.sleep(4)
"""


@pytest.mark.root
@ROOT
def test_ptrace_of_the_agent_names_the_tracer(agent: AgentProcess) -> None:
    agent.start()
    assert agent.proc is not None
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(agent.proc.pid)], preexec_fn=lambda: as_login(1000))
    try:
        agent.wait(lambda: bool(findings(agent.events(), "DB-TAMP-005")), "ptrace not found")
    finally:
        assert tracer.wait(30) == 0
    assert agent.stop() == 0
    (t,) = tamper(agent.events(), "ptrace")
    assert t["detail"]["by"]["pid"] == tracer.pid and t["detail"]["by"]["loginuid"] == 1000
    assert ctypes  # the tracer uses ctypes in its own process


RENAMED = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"dpkg", 0, 0, 0)  # PR_SET_NAME
with open(sys.argv[1], "w") as f:
    f.write("#!/bin/sh\\necho replaced\\n")
"""


def _deb(work: Path) -> Path:
    pkg = work / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "bin").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: dw15-tool\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: Test <test@example.org>\nDescription: test tool\n")
    tool = pkg / "usr" / "bin" / "dw15-tool"
    tool.write_text("#!/bin/sh\necho v1\n")
    tool.chmod(0o755)
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(work / "t.deb")], check=True, capture_output=True)
    return work / "t.deb"


@pytest.mark.root
@ROOT
def test_a_program_renamed_dpkg_gets_no_exemption_and_the_real_dpkg_does(tmp_path: Path) -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not installed")
    work = Path(tempfile.mkdtemp(prefix="dw15-pkg-", dir="/var/tmp"))
    try:
        root = work / "root"
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/bin"):
            (root / d).mkdir(parents=True)
        (root / "var/lib/dpkg/status").touch()
        deb = _deb(work)
        rules = tmp_path / "rules"
        rules.mkdir()
        for f in (Path(__file__).resolve().parents[2] / "rules").glob("*.yaml"):
            shutil.copy(f, rules / f.name)
        # LOCAL-PKG-001 journals, as audit, what the package manager's path writes there: the exemption's
        # process.package is visible for the real dpkg's writes too, which DB-INT-001 lets pass.
        (rules / "zz-local.yaml").write_text(
            f"pack: local\nlists:\n  system_dirs: {{append: [{root}/usr/bin/]}}\nrules:\n"
            "  - id: LOCAL-PKG-001\n    title: {zh: 包管理器路径写入, en: Package manager path wrote}\n"
            f"    when: event.kind in (\"file.write\", \"file.create\", \"file.rename\") and process.exe in "
            f"package_manager_exes and startswith(file.path, \"{root}/usr/bin/\")\n"
            "    severity: info\n    action: audit\n    accountable: [operator]\n    controls: [test]\n"
            "    message: {zh: \"{process.exe} {process.package}\", en: \"{process.exe} {process.package}\"}\n")
        agent = AgentProcess(tmp_path, rules=[str(rules)],
                             collectors=collectors(files=f"{{enabled: true, paths: [{root / 'usr/bin'}]}}"))
        agent.start()
        try:
            agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="files") == 1, "files collector down")
            # The twin first: a real package install by the real dpkg.
            subprocess.run(["dpkg", f"--root={root}", "-i", str(deb)], check=True, capture_output=True, timeout=120)
            assert (root / "usr/bin/dw15-tool").read_text() == "#!/bin/sh\necho v1\n"
            renamed = subprocess.run([sys.executable, "-c", RENAMED, str(root / "usr/bin/ls")],
                                     preexec_fn=lambda: as_login(1000), timeout=30, check=True)
            assert renamed.returncode == 0
            # Another program at dpkg's very path: the shell bind-mounted over /usr/bin/dpkg in a private
            # mount namespace (the kernel's exe path is /usr/bin/dpkg), not the file dpkg installed.
            mounted = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --bind "$0" /usr/bin/dpkg && exec /usr/bin/dpkg -c "$1" "$2"',
                 os.path.realpath("/bin/sh"), 'echo replaced > "$0"; sleep 3', str(root / "usr/bin/cat")],
                preexec_fn=lambda: as_login(1000), timeout=30, capture_output=True, text=True)
            assert mounted.returncode == 0, mounted.stderr
            assert (root / "usr/bin/cat").exists()

            def int001() -> list[dict[str, Any]]:
                return findings(agent.events(), "DB-INT-001")
            agent.wait(lambda: {"ls", "cat"} <= {r["event"]["file"]["path"].rsplit("/", 1)[-1] for r in int001()},
                       "the renamed program's or the mounted program's write was not found")
            time.sleep(3)  # let any finding of dpkg's own writes arrive too
        finally:
            agent.stop()
        found = int001()
        evil = [r for r in found if r["event"]["file"]["path"].endswith("/usr/bin/ls")]
        assert evil[0]["event"]["process"]["name"] == "dpkg"
        assert evil[0]["event"]["process"]["exe"] == os.path.realpath(sys.executable)
        assert evil[0]["accountable"]["operator"] == "张三"
        impostor = [r for r in found if r["event"]["file"]["path"].endswith("/usr/bin/cat")]
        # It stays 3 s after writing, so the files collector reads who it is while it runs.
        assert any(r["event"]["process"].get("exe") == "/usr/bin/dpkg" for r in impostor), impostor
        assert all("package" not in r["event"]["process"] for r in impostor)  # the file it runs is not dpkg's
        assert all(r["accountable"]["operator"] == "张三" for r in impostor)
        seen = findings(agent.events(), "LOCAL-PKG-001")
        real = [r for r in seen if "dw15-tool" in r["event"]["file"]["path"] and r["event"].get("process")]
        assert real and all(r["event"]["process"].get("package") == "dpkg" for r in real), seen
        dpkg_writes = [r for r in found if "dw15-tool" in (r["event"]["file"].get("path") or "")
                       + (r["event"]["file"].get("dest_path") or "")]
        # What the real dpkg did with its identity known is exempt by its exe. Its last rename can come
        # after dpkg has exited, with no process to judge: that one is reported (fail closed), not exempted.
        assert all(not r["event"].get("process") for r in dpkg_writes), "the real dpkg was called a violation"
    finally:
        shutil.rmtree(work, ignore_errors=True)


OWN_SOURCES = {
    "files": {"files": "{enabled: true}"},  # no paths listed: the agent's own files are watched anyway
    "audit": {"audit": "{enabled: true, connect: false, mounts: false, guard: false, modules: false}"},
}


@pytest.mark.root
@ROOT
@pytest.mark.parametrize("source", sorted(OWN_SOURCES))
def test_the_agents_own_code_and_unit_are_watched_without_being_listed(tmp_path: Path, source: str) -> None:
    """A person edits the agent's code and replaces its unit file: DB-TAMP-003 names them; another unit is not it."""
    install = Path(tempfile.mkdtemp(prefix="dw15c-own-", dir="/var/tmp"))
    try:
        code, units = install / "opt-dutywatch", install / "units"
        (code / "agent").mkdir(parents=True)
        units.mkdir()
        (code / "agent" / "core.py").write_text("VERSION = 1\n")
        unit = units / "dutywatch.service"
        unit.write_text("[Service]\nExecStart=/usr/bin/dutywatch run\n")
        rules = tmp_path / "rules"
        rules.mkdir()
        for f in (Path(__file__).resolve().parents[2] / "rules").glob("*.yaml"):
            shutil.copy(f, rules / f.name)
        # Where this install keeps them: the packs name the agent's files, and that is all it takes.
        (rules / "zz-local.yaml").write_text(f"pack: local\nlists:\n  agent_files: {{append: [{code}/, {unit}]}}\n")
        agent = AgentProcess(tmp_path, rules=[str(rules)], collectors=collectors(**OWN_SOURCES[source]),
                             extra_config="journal: {fold_window: 0}\n")
        assert "paths" not in agent.config.read_text()
        agent.start()
        try:
            agent.wait(lambda: agent.metric("dutywatch_collector_up", collector=source) == 1, f"{source} down", 60)
            time.sleep(1)
            edit = ("import os, sys\n"
                    "open(sys.argv[1], 'a').write('BACKDOOR = True\\n')\n"
                    "open(sys.argv[2] + '.new', 'w').write('[Service]\\nExecStart=/bin/true\\n')\n"
                    "os.rename(sys.argv[2] + '.new', sys.argv[2])\n"
                    "open(sys.argv[3], 'w').write('[Service]\\nExecStart=/bin/true\\n')\n")
            subprocess.run([sys.executable, "-c", edit, str(code / "agent" / "core.py"), str(unit),
                            str(units / "other.service")], preexec_fn=lambda: as_login(1000), timeout=30, check=True)

            def tamp() -> list[dict[str, Any]]:
                return findings(agent.events(), "DB-TAMP-003")

            def paths() -> set[str]:
                return {p for r in tamp() for p in (r["event"]["file"].get("path"), r["event"]["file"].get("dest_path"))
                        if p}
            agent.wait(lambda: {str(code / "agent" / "core.py"), str(unit)} <= paths(),
                       "the edit of the agent's code or its unit was not found", 60)
            time.sleep(2)  # anything about the other unit would be journaled by now
        finally:
            agent.stop()
        found = tamp()
        assert all(r["accountable"]["operator"] == "张三" for r in found), found
        assert all(r["event"]["event"]["collector"] == source for r in found)
        assert not any("other.service" in (r["event"]["file"].get("path") or "") + (r["event"]["file"].get(
            "dest_path") or "") for r in found), "a unit that is not the agent's was called tampering"
    finally:
        shutil.rmtree(install, ignore_errors=True)


STOP_REGISTRY = """\
host: {{id: test-host-01, unit: 测试信息中心, department: 测试委员会, custodian: zhangsan, level: secret,
       zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试信息中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试信息中心, clearance: secret}}
  - {{account: lisi, uid: 1001, name: 李四, unit: 测试信息中心, clearance: internal}}
zones:
  default: internet
  networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}, {{name: loopback, cidrs: [127.0.0.0/8]}}]
assets:
  - {{path: "{assets}/**", level: secret, unit: 测试信息中心}}
"""


def _held_at_exec(loginuid: int) -> Any:
    """In the child: its login identity, then stop at the exec (PTRACE_TRACEME), still running the program."""
    def child() -> None:
        as_login(loginuid)
        ctypes.CDLL(None, use_errno=True).ptrace(0, 0, None, None)
    return child


@pytest.mark.root
@ROOT
def test_systemctl_stop_by_a_person_names_them_and_the_custodians_is_audit_only(tmp_path: Path) -> None:
    """The audit source names who ran systemctl stop; the stop record names who was waiting for the stop."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/var/lib/dpkg/info/systemd.list").exists():
        pytest.skip("no systemctl of the systemd package here")
    fake = Path(tempfile.mkdtemp(prefix="dw15c-sc-", dir="/tmp")) / "systemctl"
    shutil.copy(systemctl, fake)
    agent = AgentProcess(tmp_path, registry=STOP_REGISTRY.format(assets=tmp_path / "assets"),
                         collectors=collectors(audit="{enabled: true, connect: false, mounts: false, guard: false, "
                                                     "modules: false}"),
                         extra_config="journal: {fold_window: 0}\n")
    held: list[subprocess.Popen[bytes]] = []
    try:
        agent.start()
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="audit") == 1, "audit down", 60)
        time.sleep(1)
        # Without systemd as PID 1 here systemctl fails at once; its exec, with its loginuid, is the evidence.
        for uid in (1001, 1000):
            subprocess.run([systemctl, "stop", "dutywatch"], preexec_fn=lambda u=uid: as_login(u),  # type: ignore[misc]
                           capture_output=True, timeout=30, check=False)
        agent.wait(lambda: bool(findings(agent.events(), "DB-AUD-004")) and bool(findings(agent.events(),
                                                                                        "DB-TAMP-001")),
                   "the two systemctl stops were not found", 60)
        # As under systemd, where `systemctl stop` waits for the job: a systemctl of each kind still running.
        held = [subprocess.Popen([exe, "stop", "dutywatch.service"], preexec_fn=_held_at_exec(1001))
                for exe in (systemctl, str(fake))]
        time.sleep(0.5)
        agent.signal(signal.SIGTERM)  # the supervisor's stop (here the test; under systemd, PID 1)
        assert agent.stop() == 0
    finally:
        for p in held:
            # Not p.kill(): Popen first polls, and the tracer's wait reports the child's ptrace stop as if it had
            # ended, so no signal would be sent and the stopped child would outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, 0)
        shutil.rmtree(fake.parent, ignore_errors=True)
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
    records = agent.events()
    by_person = [r for r in findings(records, "DB-TAMP-001") if r["event"]["process"].get("loginuid") == 1001]
    assert by_person and all(r["accountable"]["operator"] == "李四" for r in by_person)
    assert all(r["event"]["event"]["collector"] == "audit" for r in by_person)
    assert not [r for r in findings(records, "DB-TAMP-001") if r["event"]["process"].get("loginuid") == 1000]
    (custodian, *_) = findings(records, "DB-AUD-004")
    assert custodian["accountable"]["operator"] == "张三" and custodian["action"] == "audit"
    stop = records[-1]
    assert stop["kind"] == "agent.stop" and stop["detail"]["by"] == "parent"
    asked = stop["detail"]["requested_by"]
    assert [(a["exe"], a["operator_name"], a["loginuid"]) for a in asked] == [(os.path.realpath(systemctl), "李四",
                                                                               1001)]
    assert held[0].pid == asked[0]["pid"]  # the copy outside the package is no one's request
