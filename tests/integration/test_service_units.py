"""A daemon with no login identity is its systemd unit's service account: a real process in a real cgroup.

PID 1 here is not systemd, so the unit is made the way systemd makes one: a
cgroup v2 directory ``dw15b.slice/dw15b-test.service`` under the cgroup2 mount.
A child moves itself into it, drops to an unregistered uid with no loginuid
and runs a program from /tmp; the real agent (netlink process collector) must
name the registered unit's custodian and raise no ZR-001. Its twin, the same
program by the same uid in an unregistered unit, is a real unknown. The same
holds when the exec is read from the kernel audit trail instead, whose records
carry no cgroup: the audit source reads the unit while the process runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import AgentProcess

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: cgroups, setuid")
STRANGER = 4715  # a uid no one registered and no account has

REGISTRY = """\
host: {{id: test-host-01, unit: 测试信息中心, department: 测试委员会, custodian: zhangsan, level: secret,
       zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试信息中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试信息中心, clearance: secret}}
  - {{account: lisi, uid: 1001, name: 李四, unit: 测试信息中心, clearance: internal}}
service_accounts:
  - {{account: dw15b-svc, custodian: lisi, unit: "dw15b-test.service"}}
zones:
  default: internet
  networks:
    - {{name: intranet, cidrs: [10.0.0.0/8]}}
    - {{name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}}
assets:
  - {{path: "{assets}/**", level: secret, unit: 测试信息中心}}
"""


def _cgroup2_root() -> Path | None:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


@pytest.fixture
def units() -> Iterator[tuple[Path, Path]]:
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 mount")
    top = root / "dw15b.slice"
    registered, other = top / "dw15b-test.service", top / "dw15b-other.service"
    for d in (top, registered, other):
        d.mkdir(exist_ok=True)
    yield registered, other
    for d in (registered, other, top):
        for _ in range(50):  # a cgroup can be removed once its last process has been reaped
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dw15b-bin-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _daemon_in(cgroup: Path) -> Any:
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text("0")  # this process, before it execs
        with open("/proc/self/loginuid", "w") as f:
            f.write("4294967295")  # no login identity, as a service manager's child has none
        os.setgid(STRANGER)
        os.setuid(STRANGER)
    return enter


def _records(agent: AgentProcess, rule: str, pid: int) -> list[dict[str, Any]]:
    return [r for r in agent.events("--rule", rule) if r.get("event", {}).get("process", {}).get("pid") == pid]


SOURCES = {
    "netlink": ("  process: {enabled: true, mode: netlink}\n" + "".join(
        f"  {n}: {{enabled: false}}\n" for n in ("network", "files", "media", "host", "audit")), "process", "netlink"),
    "audit": ("  audit: {enabled: true, connect: false, mounts: false, guard: false, modules: false}\n" + "".join(
        f"  {n}: {{enabled: false}}\n" for n in ("process", "network", "files", "media", "host")), "audit", None),
}


@pytest.mark.root
@ROOT
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_login_less_daemon_is_its_units_custodians_and_an_unregistered_unit_is_unknown(
        tmp_path: Path, units: tuple[Path, Path], bin_dir: Path, source: str) -> None:
    registered, other = units
    prog = bin_dir / "nightly-job"
    shutil.copy("/bin/sleep", prog)
    prog.chmod(0o755)
    collectors, collector, mode = SOURCES[source]
    agent = AgentProcess(tmp_path, collectors=collectors, extra_config="journal: {fold_window: 0}\n",
                         registry=REGISTRY.format(assets=tmp_path / "assets"))
    agent.start()
    try:
        labels = {"collector": collector, **({"mode": mode} if mode else {})}
        agent.wait(lambda: agent.metric("dutywatch_collector_up", **labels) == 1, f"{collector} collector not up",
                   60)
        daemon = subprocess.Popen([str(prog), "2"], preexec_fn=_daemon_in(registered))
        stranger = subprocess.Popen([str(prog), "2"], preexec_fn=_daemon_in(other))
        assert (registered / "cgroup.procs").read_text().split() == [str(daemon.pid)]
        daemon.wait(30)
        stranger.wait(30)
        agent.wait(lambda: bool(_records(agent, "DB-MAL-001", daemon.pid))
                   and bool(_records(agent, "ZR-001", stranger.pid)), "no findings for both programs")
        time.sleep(1)  # anything later for the registered one would be journaled by now
    finally:
        agent.stop()
    (mal,) = _records(agent, "DB-MAL-001", daemon.pid)
    event = mal["event"]
    assert event["event"]["collector"] == collector
    assert event["process"]["unit"] == "dw15b-test.service"
    assert event["process"]["uid"] == STRANGER and event["process"].get("loginuid") is None
    assert event["operator"]["account"] == "lisi" and event["operator"]["name"] == "李四"
    assert event["operator"]["known"] is True
    assert _records(agent, "ZR-001", daemon.pid) == []
    # The twin: same program, same uid, a unit nobody registered.
    (zr,) = _records(agent, "ZR-001", stranger.pid)
    assert zr["event"]["process"]["unit"] == "dw15b-other.service"
    assert zr["event"]["operator"]["known"] is False
