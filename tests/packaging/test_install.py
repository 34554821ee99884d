"""Install the deb into a fresh Debian bookworm root and use it as an admin would.

The root is made once with ``debootstrap --variant=minbase bookworm`` (with the
packages the deb depends on downloaded, not installed) and cached as
/var/cache/dutywatch-test/bookworm.tar; delete that file to start from a new
debootstrap. Each run unpacks the tarball, mounts proc, sys and dev into it,
and unmounts them in a finalizer before anything is deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Built, need

pytestmark = pytest.mark.root

CACHE = Path("/var/cache/dutywatch-test")
TARBALL = CACHE / "bookworm.tar"
# Exactly the unit's AmbientCapabilities (test_unit_file.py checks the unit against its comments).
CAPS = "net_admin,sys_admin,net_raw,sys_ptrace,dac_read_search,audit_control,audit_read"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}


def sh(root: Path, script: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell script inside the root, bounded in time."""
    res = subprocess.run(["chroot", str(root), "/bin/sh", "-ec", script], env=ENV, capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"in the root: {script}\nexit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def make_tarball() -> None:
    """debootstrap a minbase bookworm, pre-download the deb's dependencies, and tar it."""
    need("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "bookworm.new"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(work)], check=True, timeout=900,
                   capture_output=True)
    shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
    sh(work, "apt-get update -qq && apt-get install -y -qq --download-only python3 python3.11",
       timeout=600)
    subprocess.run(["tar", "-C", str(work), "-cf", str(TARBALL) + ".part", "."], check=True, timeout=300)
    os.replace(str(TARBALL) + ".part", TARBALL)
    shutil.rmtree(work)


def mounted_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(str(root) + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


@contextlib.contextmanager
def fresh_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh bookworm root with proc, sys and dev mounted; unmounted and deleted afterwards."""
    if not TARBALL.exists():
        make_tarball()
    base = tmp_path_factory.mktemp("bookworm")
    r = base / "root"
    r.mkdir()
    subprocess.run(["tar", "-C", str(r), "-xf", str(TARBALL)], check=True, timeout=300)
    shutil.copy("/etc/resolv.conf", r / "etc/resolv.conf")
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sysfs"]),
                           ("dev", ["--rbind", "/dev"])):
            subprocess.run(["mount", *args, str(r / what)], check=True, timeout=30)
            if what == "dev":
                subprocess.run(["mount", "--make-rslave", str(r / what)], check=True, timeout=30)
        yield r
    finally:
        for point in mounted_under(r):
            if subprocess.run(["umount", point], timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", point], timeout=30)
        # Never delete through a mount that is still there: it would reach the host's /dev.
        if not mounted_under(r):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh bookworm root for the deb."""
    with fresh_root(tmp_path_factory) as r:
        yield r


@pytest.fixture(scope="module")
def installed(root: Path, built: Built) -> Path:
    """The deb installed with apt into the root, as an admin would."""
    shutil.copy(built.deb, root / "tmp" / built.deb.name)
    started = time.monotonic()
    sh(root, f"apt-get install -y -qq /tmp/{built.deb.name}", timeout=600)
    print(f"\napt-get install took {time.monotonic() - started:.0f} s")
    return root


CONFIGURED_REGISTRY = """\
host: {id: pkg-test-host, unit: 测试信息中心, department: 测试委员会, custodian: wangwu, level: secret,
       zone: intranet}
departments: [{name: 测试委员会}]
units: [{name: 测试信息中心, department: 测试委员会}]
people: [{account: wangwu, uid: 1000, name: 王五, unit: 测试信息中心, clearance: secret}]
zones: {default: internet, networks: [{name: intranet, cidrs: [10.0.0.0/8]},
        {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}]}
"""


def test_check_names_the_example_registry_and_test_rules_pass(installed: Path) -> None:
    # The shipped registry is an example: check says so, with the line to remove and what to do.
    res = sh(installed, "dutywatch check", check=False)
    assert res.returncode == 1
    assert "/etc/dutywatch/registry.yaml:" in res.stderr and "shipped example registry" in res.stderr
    assert "systemctl reload dutywatch" in res.stderr
    res = sh(installed, "dutywatch test-rules", timeout=300)
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed", last), last


def test_user_state_directory_and_enabled_unit(installed: Path) -> None:
    account = sh(installed, "getent passwd dutywatch").stdout.split(":")
    assert account[5] == "/nonexistent" and "nologin" in account[6]
    st = (installed / "var/lib/dutywatch").stat()
    assert st.st_mode & 0o777 == 0o700
    assert st.st_uid == int(account[2])
    link = installed / "etc/systemd/system/multi-user.target.wants/dutywatch.service"
    assert os.readlink(link) == "/lib/systemd/system/dutywatch.service"
    etc = (installed / "etc/dutywatch").stat()
    assert etc.st_mode & 0o777 == 0o750 and etc.st_gid == int(account[3])
    # postinst compiled the environment's bytecode, which the service user could not write.
    assert list((installed / "opt/dutywatch/lib/python3.11/site-packages/agent").glob("__pycache__/*.pyc"))


def _recv(sock: socket.socket, want: str, deadline: float) -> list[str]:
    seen: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            lines = sock.recv(4096).decode().splitlines()
        except TimeoutError:
            break
        seen += lines
        if want in lines:
            return seen
    pytest.fail(f"no {want} from the agent; it sent {seen}")


def _deny_write_execute() -> None:
    """The unit's MemoryDenyWriteExecute=yes, where the kernel has PR_SET_MDWE (Linux 6.3+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(65, 1, 0, 0, 0)  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN; inherited across fork and exec


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_service(installed: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], socket.socket, Path]:
    """``dutywatch run`` on the packaged config as the unit runs it: user dutywatch, its capabilities only."""
    notify_path = installed / "run" / f"dutywatch-test-{name}.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o777)
    caps = CAPS.replace(",", ",+")
    agent_cmd = (f"exec chroot {installed} setpriv --reuid=dutywatch --regid=dutywatch --clear-groups "
                 f"--inh-caps=+{caps} --ambient-caps=+{caps} --no-new-privs /usr/bin/dutywatch run")
    env = dict(ENV, NOTIFY_SOCKET=f"/run/dutywatch-test-{name}.sock", WATCHDOG_USEC="2000000")
    log = tmp_path / f"agent-{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", agent_cmd], env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_deny_write_execute)
    return proc, notify, log


def _stop_service(proc: subprocess.Popen[bytes], notify: socket.socket, log: Path) -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            _recv(notify, "STOPPING=1", time.monotonic() + 30)
            assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        Path(notify.getsockname()).unlink(missing_ok=True)
        notify.close()
        print(log.read_text()[-3000:])


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_run_as_service_user_holds_on_the_example_then_monitors_with_every_collector(installed: Path,
                                                                                      tmp_path: Path) -> None:
    """The first start (a fresh install) names no one; once configured every collector is in full mode."""
    service_uid = int(sh(installed, "id -u dutywatch").stdout)
    port = free_port()
    dropin = installed / "etc/dutywatch/agent.d/10-test-listen.yaml"
    dropin.write_text(f'listen: "127.0.0.1:{port}"\n')
    registry = installed / "etc/dutywatch/registry.yaml"
    example = registry.read_text()
    proc, notify, log = _run_service(installed, tmp_path, "example")
    try:
        seen = _recv(notify, "READY=1", time.monotonic() + 120)
        assert any(line.startswith("STATUS=not monitoring:") and "example registry" in line for line in seen)
        _recv(notify, "WATCHDOG=1", time.monotonic() + 10)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        caps = re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.M)
        assert uids and caps
        cap_eff = int(caps.group(1), 16)
        print(f"\nagent pid {proc.pid}: uid {uids.group(1)} (dutywatch is {service_uid}), CapEff {cap_eff:#x}")
        assert int(uids.group(1)) == int(uids.group(2)) == service_uid
        # 1<<2 DAC_READ_SEARCH, 1<<12 NET_ADMIN, 1<<13 NET_RAW, 1<<19 SYS_PTRACE, 1<<21 SYS_ADMIN,
        # 1<<30 AUDIT_CONTROL, 1<<37 AUDIT_READ
        assert cap_eff == (1 << 2) | (1 << 12) | (1 << 13) | (1 << 19) | (1 << 21) | (1 << 30) | (1 << 37)
        metrics = _metrics(port)
        assert re.search(r"^dutywatch_registry_unconfigured 1", metrics, re.M)
        assert "example-host-0001" not in metrics and "示例" not in metrics
        assert not re.search(r'^dutywatch_collector_up\{.*\} 1', metrics, re.M)
    finally:
        _stop_service(proc, notify, log)
    journal = sh(installed, "dutywatch events --type all --format json").stdout
    assert "张三" not in journal and "zhangsan" not in journal and "example-host-0001" not in journal
    # The admin describes the host: the next start monitors with every collector in its full mode.
    registry.write_text(CONFIGURED_REGISTRY)
    sh(installed, "chmod 0640 /etc/dutywatch/registry.yaml && chgrp dutywatch /etc/dutywatch/registry.yaml")
    proc, notify, log = _run_service(installed, tmp_path, "configured")
    try:
        seen = _recv(notify, "READY=1", time.monotonic() + 120)
        assert any(line.startswith("STATUS=watching with ") for line in seen), seen
        full = {"process": ("netlink",), "network": ("sniff",), "files": ("fanotify",), "media": ("mountinfo",),
                "host": ("netlink",), "audit": ("daemon", "multicast")}
        deadline = time.monotonic() + 60
        while True:  # collectors come up one by one after READY
            metrics = _metrics(port)
            modes = dict(re.findall(r'^dutywatch_collector_up\{collector="(\w+)",mode="(\w+)"\} 1', metrics, re.M))
            if set(modes) >= set(full) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"collector modes on the first configured start: {modes}")
        assert re.search(r"^dutywatch_registry_unconfigured 0", metrics, re.M)
        assert 'host="pkg-test-host"' in metrics
        for name, wanted in full.items():
            assert modes.get(name) in wanted, (name, modes)
    finally:
        _stop_service(proc, notify, log)
        registry.write_text(example)
        dropin.unlink()
    state = installed / "var/lib/dutywatch"
    owners = {p.name: p.stat().st_uid for p in state.iterdir()}
    assert owners and set(owners.values()) == {service_uid}, owners
    assert "journal.db" in owners
    sh(installed, "dutywatch verify --journal /var/lib/dutywatch/journal.db")


def test_reinstall_keeps_the_edited_config(installed: Path, built: Built) -> None:
    config = installed / "etc/dutywatch/agent.yaml"
    edited = config.read_text().replace("queue_size: 65536", "queue_size: 4096  # sized for this host")
    config.write_text(edited)
    sh(installed, f"apt-get install -y -qq --reinstall /tmp/{built.deb.name}", timeout=600)
    assert config.read_text() == edited
    res = sh(installed, "dutywatch check", check=False)
    # The edited config loads; the only problem left is the example registry the admin has yet to replace.
    assert res.stdout.strip().endswith("1 problem found") or res.stderr.strip().endswith("1 problem found")
    assert "shipped example registry" in res.stderr


def test_remove_exports_the_evidence_and_purge_keeps_it(installed: Path) -> None:
    local = installed / "etc/dutywatch/rules.d/local.yaml"
    local.write_text("pack: local\nrules: []\n")
    assert (installed / "var/lib/dutywatch/journal.db").exists()  # written by the runs above
    res = sh(installed, "apt-get remove -y -qq dutywatch", timeout=300)
    assert "the journal is exported as /var/backups/dutywatch/evidence-" in res.stdout
    assert (installed / "var/lib/dutywatch/journal.db").exists()
    assert (installed / "etc/dutywatch/agent.yaml").exists()
    assert not (installed / "opt/dutywatch/bin").exists()
    res = sh(installed, "apt-get purge -y -qq dutywatch", timeout=300)
    assert "the evidence is kept in /var/backups/dutywatch" in res.stdout
    bundles = sorted((installed / "var/backups/dutywatch").glob("evidence-*.bundle"))
    keys = sorted((installed / "var/backups/dutywatch").glob("evidence-*.pub.pem"))
    assert len(bundles) == 1 and len(keys) == 1
    # The bundle verifies against its key with the agent from this checkout (the package is gone).
    res = subprocess.run([sys.executable, "-m", "agent", "verify", "--bundle", str(bundles[0]), "--pubkey",
                          str(keys[0])], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stdout + res.stderr
    left = []
    for top in ("etc", "opt", "usr", "var", "lib", "run"):
        for dirpath, dirnames, filenames in os.walk(installed / top):
            for name in dirnames + filenames:
                if "dutywatch" in name or "dutywatch" in dirpath[len(str(installed)):]:
                    left.append(str(Path(dirpath, name).relative_to(installed)))
    assert sorted(left) == ["etc/dutywatch", "etc/dutywatch/rules.d", "etc/dutywatch/rules.d/local.yaml",
                            "var/backups/dutywatch", *(str(p.relative_to(installed)) for p in bundles + keys)]
    assert sh(installed, "getent passwd dutywatch", check=False).returncode != 0
    assert sh(installed, "getent group dutywatch", check=False).returncode != 0
    assert sh(installed, "dpkg-statoverride --list", check=False).stdout.count("dutywatch") == 0
    with contextlib.suppress(FileNotFoundError):
        assert "dutywatch" not in (installed / "etc/passwd").read_text()


def test_purge_deletes_the_evidence_only_when_the_admin_says_so(installed: Path, built: Built) -> None:
    sh(installed, f"apt-get install -y -qq /tmp/{built.deb.name}", timeout=600)
    sh(installed, "dutywatch export --journal /var/lib/dutywatch/journal.db --out /tmp/x.bundle", check=False)
    sh(installed, "DUTYWATCH_PURGE_EVIDENCE=yes apt-get purge -y -qq dutywatch", timeout=300)
    assert not (installed / "var/lib/dutywatch").exists()
    assert not (installed / "var/backups/dutywatch").exists()


def test_rpm_upgrade_keeps_the_compiled_bytecode(tmp_path_factory: pytest.TempPathFactory, built: Built,
                                                 build_module: Any, tmp_path: Path) -> None:
    # The old package's %preun runs after the new one's %post: bytecode must survive an upgrade.
    need("rpm")
    second = build_module.rpm(built.work, tmp_path / "dist", built.staged, release="2")
    with fresh_root(tmp_path_factory) as r:
        sh(r, "apt-get install -y -qq python3.11", timeout=300)  # from the root's cached archives
        site = r / "opt/dutywatch/lib/python3.11/site-packages/agent/__pycache__"

        def rpm(*args: str) -> None:
            res = subprocess.run(["rpm", "--root", str(r), "--nodeps", *args], capture_output=True, text=True,
                                 timeout=600)
            assert res.returncode == 0, res.stderr[-3000:]

        rpm("-i", str(built.rpm))
        compiled = sorted(p.name for p in site.glob("*.pyc"))
        assert compiled
        rpm("-U", str(second))
        assert sorted(p.name for p in site.glob("*.pyc")) == compiled
        rpm("-e", "dutywatch")
        assert not site.exists()
