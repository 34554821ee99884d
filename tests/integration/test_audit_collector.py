"""The audit collector on the real kernel: both modes, the hand-over to auditd, exec storms, what really ran.

Each run checks that the kernel's audit state (enabled flag, daemon pid,
backlog limit, rules) is exactly as before it. Storms are bounded in count
and every wait has a deadline; nothing asserts how fast anything ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import (
    NET_C,
    READER_C,
    TEST_UID,
    TRUE_C,
    KernelLogAudit,
    as_person,
    auditctl,
    auditd,
    internet_host,
    judge,
    programs,
    registry,
    running,
    status,
    wait_for_no_daemon,
)

from collectors.audit import AuditCollector

pytestmark = pytest.mark.root
REGISTRY = registry("dw-audit-host")
SYSTEM_PYTHON = "/usr/bin/python3"  # the test person cannot read a venv under /root


@pytest.fixture(scope="module")
def progs() -> Iterator[Path]:
    """Static programs in a directory under /tmp (a temporary location, as an intruder would use)."""
    with programs("progs", {"quick": TRUE_C, "reader": READER_C, "net": NET_C}) as d:
        yield d


def _no_daemon() -> None:
    wait_for_no_daemon()


def test_daemon_mode_attributes_a_static_exec_and_keeps_the_kernel_log_quiet(progs: Path) -> None:
    _no_daemon()
    kernel_log = KernelLogAudit()
    c = AuditCollector({})
    assert c.available().mode == "daemon"
    with running(c) as run:
        st = status()
        assert st["pid"] == str(os.getpid()) and st["enabled"] == "1"
        assert "dutywatch-exec" in auditctl("-l")
        p = subprocess.Popen([str(progs / "quick"), "an argument", "x"], preexec_fn=as_person())
        p.wait()
        got = run.where(lambda e: e.kind == "process.exec" and e.process.pid == p.pid)
        assert c.health.mode == "daemon"
    assert got, "no exec event for the static program"
    e = got[0]
    assert e.collector == "audit"
    assert e.process.exe == str(progs / "quick")
    assert e.process.loginuid == TEST_UID and e.process.uid == TEST_UID
    assert e.process.cmdline == f"{progs / 'quick'} an argument x"
    assert e.process.ppid == os.getpid()
    st = os.stat(progs / "quick")
    assert e.file.path == str(progs / "quick") and e.file.inode == st.st_ino
    assert e.file.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        assert kernel_log.new_lines() == [], "audit records reached the kernel log"
    finally:
        kernel_log.close()


def test_multicast_beside_auditd_never_takes_its_place(progs: Path, tmp_path: Path) -> None:
    _no_daemon()
    with auditd(tmp_path) as daemon_pid:
        rules_before = auditctl("-l")
        c = AuditCollector({})
        assert c.available().mode == "multicast"
        with running(c) as run:
            assert status()["pid"] == str(daemon_pid)
            p = subprocess.Popen([str(progs / "quick")], preexec_fn=as_person())
            p.wait()
            got = run.where(lambda e: e.kind == "process.exec" and e.process.pid == p.pid)
            assert c.health.mode == "multicast"
        assert status()["pid"] == str(daemon_pid), "auditd lost its role"
        assert auditctl("-l") == rules_before
    assert got and got[0].process.loginuid == TEST_UID and got[0].process.exe == str(progs / "quick")


def test_auditd_starting_later_gets_the_role_and_no_exec_is_lost(progs: Path, tmp_path: Path) -> None:
    _no_daemon()
    c = AuditCollector({})
    with running(c) as run:
        assert c.health.mode == "daemon"
        pids: list[int] = []
        with auditd(tmp_path) as daemon_pid:
            # Execs keep coming while the role changes hands; every one must be reported.
            for _ in range(40):
                p = subprocess.Popen([str(progs / "quick")], preexec_fn=as_person())
                p.wait()
                pids.append(p.pid)
                time.sleep(0.01)
            assert status()["pid"] == str(daemon_pid)
            got = run.where(lambda e: e.kind == "process.exec" and e.process.pid in pids, count=len(pids))
            assert c.health.mode == "multicast"
        assert {e.process.pid for e in got} == set(pids)


def test_rules_deleted_behind_the_agents_back_come_back() -> None:
    _no_daemon()
    if auditctl("-l").strip() != "No rules":
        pytest.fail("the kernel holds audit rules already; this test deletes all rules")
    c = AuditCollector({})
    with running(c):
        assert "dutywatch-exec" in auditctl("-l")
        auditctl("-D")
        assert "dutywatch-exec" not in auditctl("-l")
        end = time.monotonic() + 30
        while time.monotonic() < end and "dutywatch-exec" not in auditctl("-l"):
            time.sleep(0.2)
        assert "dutywatch-exec" in auditctl("-l")


def test_exec_storm_under_load_names_every_program_and_person(progs: Path) -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group.
    n = 2000
    hogs = [subprocess.Popen([sys.executable, "-c", "import time\nend=time.time()+120\nwhile time.time()<end: pass"])
            for _ in range(2)]
    spawner = (
        "import os, sys, json\n"
        "n, prog = int(sys.argv[1]), sys.argv[2]\n"
        "pids = []\n"
        "for _ in range(n):\n"
        "    pid = os.posix_spawn(prog, [prog], {})\n"
        "    os.waitpid(pid, 0)\n"
        "    pids.append(pid)\n"
        "json.dump(pids, sys.stdout)\n")
    c = AuditCollector({})
    try:
        with running(c) as run:
            out = subprocess.run([SYSTEM_PYTHON, "-c", spawner, str(n), str(progs / "quick")], capture_output=True,
                                 text=True, check=True, timeout=300, preexec_fn=as_person())
            import json
            pids = set(json.loads(out.stdout))
            assert len(pids) == n
            got = run.where(lambda e: e.kind == "process.exec" and e.process.pid in pids, deadline=60, count=n)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    good = {e.process.pid for e in got if e.process.exe == str(progs / "quick") and e.process.loginuid == TEST_UID}
    assert len(good) >= n - 2, f"only {len(good)} of {n} execs named with exe and person; drops {c.health.drops}"


def test_what_really_ran_through_interpreters_loader_and_memfd(progs: Path, tmp_path: Path) -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group.
    script_py = Path("/tmp") / f"dw-audit-{os.getpid()}.py"
    script_sh = Path("/tmp") / f"dw-audit-{os.getpid()}.sh"
    script_py.write_text("pass\n")
    script_sh.write_text("#!/bin/sh\ntrue\n")
    script_sh.chmod(0o755)
    loader = next(p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1") if os.path.exists(p))
    dyn = Path("/tmp") / f"dw-audit-{os.getpid()}-true"
    dyn.write_bytes(Path("/bin/true").read_bytes())
    dyn.chmod(0o755)
    memfd_runner = (
        "import os\n"
        "fd = os.memfd_create('dwpayload', 0)\n"
        "os.write(fd, open('/bin/true', 'rb').read())\n"
        "os.execve(fd, ['payload'], {})\n")
    c = AuditCollector({})
    try:
        with running(c) as run:
            runs = {
                "py": subprocess.Popen([SYSTEM_PYTHON, str(script_py)]),
                "sh": subprocess.Popen(["/bin/sh", str(script_sh)]),
                "shebang": subprocess.Popen([str(script_sh)]),
                "ldso": subprocess.Popen([loader, str(dyn)]),
                "memfd": subprocess.Popen([SYSTEM_PYTHON, "-c", memfd_runner]),
            }
            for p in runs.values():
                p.wait()
            want = {"py": str(script_py), "sh": str(script_sh), "shebang": str(script_sh), "ldso": str(dyn),
                    "memfd": "memfd:dwpayload"}
            ev = {k: run.where(lambda e, p=p, k=k: e.kind == "process.exec" and e.process.pid == p.pid  # type: ignore
                               and e.file.path == want[k])
                  for k, p in runs.items()}
    finally:
        for f in (script_py, script_sh, dyn):
            f.unlink(missing_ok=True)
    for k in want:
        assert ev[k], f"{k}: no exec event naming {want[k]}: {[e for e in run.events if e.process.pid == runs[k].pid]}"
    assert ev["shebang"][0].process.exe == os.path.realpath("/bin/sh")
    assert ev["ldso"][0].process.exe == os.path.realpath(loader)
    assert ev["memfd"][0].process.exe == "memfd:dwpayload"
    fired = judge([e[0] for e in ev.values()], REGISTRY, tmp_path)
    assert {e.process.pid for rule, e in fired if rule == "DB-MAL-001"} == {p.pid for p in runs.values()}


def test_short_lived_tcp_and_udp_toward_the_internet_zone_name_process_and_person(progs: Path, tmp_path: Path) -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group. "connected" is a UDP socket
    # connect()ed to a port that is not DNS, then sent to (QUIC, a VPN, a game): the kernel's record of that
    # connect has no socket type, and the event must still say udp.
    n = 30
    c = AuditCollector({})
    pids: dict[str, list[int]] = {"tcp": [], "udp": [], "connected": []}
    with internet_host(f"dw13-n{os.getpid() % 10000}") as addr, running(c) as run:
        for mode in pids:
            for _ in range(n):
                p = subprocess.Popen([str(progs / "net"), mode, addr, "4433"], preexec_fn=as_person())
                p.wait()
                pids[mode].append(p.pid)
        every = set().union(*pids.values())
        got = run.where(lambda e: e.kind == "net.connect" and e.process.pid in every, count=3 * n)
    by_pid = {e.process.pid: e for e in got}
    assert len(got) == len(by_pid) == 3 * n, "one event per connection"
    for mode, proto in (("tcp", "tcp"), ("udp", "udp"), ("connected", "udp")):
        for pid in pids[mode]:
            e = by_pid.get(pid)
            assert e is not None, f"no net.connect for {mode} pid {pid}"
            assert e.process.exe == str(progs / "net") and e.process.loginuid == TEST_UID
            assert (e.net.remote_ip, e.net.remote_port, e.net.proto) == (addr, 4433, proto), mode
    fired = judge(list(by_pid.values()), REGISTRY, tmp_path)
    named = {e.process.pid for rule, e in fired if rule == "BM-NET-001" and e.operator.account == "tester"}
    assert named == set(by_pid)


def test_classified_file_read_by_an_under_cleared_person_fires_every_time(progs: Path, tmp_path: Path) -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group.
    assets = progs / "secret"  # a directory the test person can reach
    assets.mkdir(exist_ok=True)
    os.chmod(assets, 0o755)  # noqa: S103 - the test person reads the asset
    doc = assets / "plan.txt"
    doc.write_text("机密\n" * 50, encoding="utf-8")
    os.chmod(doc, 0o644)
    c = AuditCollector({}, asset_paths=[f"{assets}/"])
    pids: dict[str, list[int]] = {}
    with running(c) as run:
        for name, argv in (("cat", ["/bin/cat", str(doc)]), ("head", ["/usr/bin/head", "-n1", str(doc)]),
                           ("reader", [str(progs / "reader"), str(doc)])):
            for _ in range(10):
                p = subprocess.Popen(argv, preexec_fn=as_person(), stdout=subprocess.DEVNULL)
                p.wait()
                assert p.returncode == 0
                pids.setdefault(name, []).append(p.pid)
        every = {pid for v in pids.values() for pid in v}
        got = run.where(lambda e: e.kind == "file.open" and e.process.pid in every and e.file.path == str(doc),
                        count=30)
    registry = REGISTRY + f'assets: [{{path: "{assets}/**", level: secret, unit: 测试中心}}]\n'
    fired = judge(got, registry, tmp_path)
    hit = {e.process.pid for rule, e in fired if rule == "BM-FILE-003" and e.operator.account == "tester"}
    for name, ps in pids.items():
        assert set(ps) <= hit, f"{name}: BM-FILE-003 missed {sorted(set(ps) - hit)}"
    assert all(e.file.inode == doc.stat().st_ino for e in got)


AGENT_REGISTRY = """\
host: {{id: dw-agent-host, unit: 测试中心, department: 测试委员会, custodian: zhangsan, level: secret, zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试中心, clearance: secret}}
  - {{account: root, uid: 0, name: 系统管理员, unit: 测试中心, clearance: top_secret}}
  - {{account: tester, uid: 4242, name: 测试员, unit: 测试中心, clearance: internal}}
zones: {{default: internet, networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]}}
assets:
  - {{path: "{assets}/**", level: secret, unit: 测试中心}}
"""


def test_the_agent_with_every_collector_reports_each_operation_once(progs: Path, tmp_path: Path) -> None:
    from agent_harness import AgentProcess
    _no_daemon()
    rules_before = auditctl("-l")
    state_before = status()
    cfg = "".join(f"  {n}: {{enabled: true}}\n" for n in ("process", "files", "audit"))
    cfg += "".join(f"  {n}: {{enabled: false}}\n" for n in ("network", "media", "host"))
    # Each read must be its own finding here: folding would hold the repeats until its window ends.
    agent = AgentProcess(tmp_path, collectors=cfg, registry=AGENT_REGISTRY.format(assets=progs / "secret"),
                         extra_config="journal: {fold_window: 0}\n")
    (progs / "secret").mkdir(exist_ok=True)
    doc = progs / "secret" / "plan.txt"
    doc.write_text("x\n")
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="audit", mode="daemon") == 1,
                   "audit collector not up in daemon mode")
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="files") == 1, "files collector not up")
        assert "dutywatch-file" in auditctl("-l")
        pids = []
        for _ in range(5):
            p = subprocess.Popen([str(progs / "reader"), str(doc)], preexec_fn=as_person())
            p.wait()
            pids.append(p.pid)
        agent.wait(lambda: len([r for r in agent.events() if r.get("rule") == "BM-FILE-003"]) >= 5,
                   "BM-FILE-003 missing", timeout=30)
        time.sleep(3)  # anything the other collectors would add has had time to arrive
    finally:
        assert agent.stop() == 0
    records = agent.events()
    mal = [r for r in records if r.get("rule") == "DB-MAL-001" and r["event"]["process"]["pid"] in pids]
    assert sorted(r["event"]["process"]["pid"] for r in mal) == sorted(pids)  # one exec, one finding
    assert all(r["event"]["event"]["collector"] == "audit" for r in mal)
    reads = [r for r in records if r.get("rule") == "BM-FILE-003" and r["event"]["process"]["pid"] in pids]
    assert sorted(r["event"]["process"]["pid"] for r in reads) == sorted(pids)
    assert all(r["accountable"]["operator"] == "测试员" for r in reads + mal)
    assert auditctl("-l") == rules_before
    assert {k: status()[k] for k in ("enabled", "pid", "backlog_limit")} == \
        {k: state_before[k] for k in ("enabled", "pid", "backlog_limit")}


def test_who_mounted_is_told_to_the_media_collector_and_a_mount_alone_is_no_event(tmp_path: Path) -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group.
    point = Path("/tmp") / f"dw-audit-mnt-{os.getpid()}"
    point.mkdir()

    def logged_in() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write(str(TEST_UID))

    c = AuditCollector({})
    try:
        with running(c) as run:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "dwtest", str(point)], check=True,
                           preexec_fn=logged_in)
            who = c.mounted_by(str(point), wait=10)
            subprocess.run(["umount", str(point)], check=True)
            time.sleep(0.5)
            kinds = {e.kind for e in run.events}
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)
        point.rmdir()
    assert who is not None
    process, _parent = who
    assert process.exe == os.path.realpath("/bin/mount") and process.loginuid == TEST_UID
    assert not kinds & {"media.mount", "media.unmount"}  # an ordinary tmpfs is no removable medium


def test_signals_and_ptrace_aimed_at_the_agent_name_who_sent_them() -> None:
    # Either mode: beside another audit daemon the agent reads the multicast group.
    c = AuditCollector({})
    me = os.getpid()
    # A process of the test person tries a liveness probe (signal 0: no event), SIGUSR2 and a ptrace attach
    # on the agent (this process): both refused, as it is not root, and both reported with who tried.
    code = (f"import os, ctypes, contextlib\n"
            f"for sig in (0, 12):\n"
            f"    with contextlib.suppress(PermissionError):\n"
            f"        os.kill({me}, sig)\n"
            f"ctypes.CDLL(None, use_errno=True).ptrace(16, {me}, 0, 0)\n")
    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with running(c) as run:
            p = subprocess.Popen([SYSTEM_PYTHON, "-c", code], preexec_fn=as_person(), stderr=subprocess.PIPE)
            _, err = p.communicate(timeout=30)
            assert b"Traceback" not in err, err
            got = run.where(lambda e: e.kind == "agent.tamper" and e.process.pid == p.pid, count=2)
            time.sleep(0.5)
            got = [e for e in run.events if e.kind == "agent.tamper" and e.process.pid == p.pid]
    finally:
        signal.signal(signal.SIGUSR2, old)
    details = sorted(e.detail or "" for e in got)
    assert len(got) == 2, details
    assert any("signal 12 (SIGUSR2)" in d and "(refused)" in d for d in details)
    assert any("ptrace request 16" in d and "(refused)" in d for d in details)
    assert all(e.process.loginuid == TEST_UID and e.process.exe for e in got)


def test_a_registry_reload_moves_the_watches_without_a_gap_in_the_exec_rules(tmp_path: Path) -> None:
    # Works beside another audit daemon too: the agent's own rules are its business in either mode.
    first, second = tmp_path / "old-assets", tmp_path / "new-assets"
    first.mkdir()
    second.mkdir()
    c = AuditCollector({}, asset_paths=[f"{first}/"])
    with running(c):
        assert f"dir={first}" in auditctl("-l")
        c.set_asset_paths([f"{second}/"])
        end = time.monotonic() + 20
        while time.monotonic() < end and f"dir={second}" not in auditctl("-l"):
            time.sleep(0.1)
        rules = auditctl("-l")
        assert f"dir={second}" in rules and f"dir={first}" not in rules
        assert f"pid!={os.getpid()} -F key=dutywatch-exec" in rules
        assert c.covers_path(str(second / "x")) and not c.covers_path(str(first / "x"))
