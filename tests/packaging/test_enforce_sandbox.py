"""Removable-media enforcement under the shipped unit's sandbox, run by a real systemd.

A bookworm root (the cached one of test_systemd_boot.py) is booted with systemd-nspawn; two real
loop devices with ext4 filesystems are handed to it. Inside, the agent's media enforcement runs
as a service made of packaging/systemd/dutywatch.service itself, only its start lines swapped
for a script (every sandboxing line as shipped: user, capabilities, no_new_privs,
ProtectSystem=strict, ProtectKernelTunables, PrivateMounts, the device policy and the system call
filter), then again with the enforcement drop-in packaging/systemd/enforce.conf installed in its
``.service.d``, as an admin installs it. The USB half of a stick's
identity is a fixture sysfs tree on a tmpfs mounted below the container's own /sys/devices
(root's, mode 0644, as the kernel's): the sandbox treats it as it treats sysfs.

What must hold: under the shipped unit a stick mounted before the agent started cannot be
remounted (the filter refuses mount(2)) and deauthorising cannot write sysfs; both are reported
and the stick is still kept from being written (device read-only, fail closed). With the drop-in
both work, and the remount is seen outside the service's private mount namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, need
from test_systemd_boot import ENV, Booted, _mounted_under, _tarball
from test_unit_file import UNIT

from tests.integration.mediakit import Stick, usb_sysfs

pytestmark = pytest.mark.root

DROPIN = REPO / "packaging" / "systemd" / "enforce.conf"
# Lines of the unit about starting, stopping and restarting: not the sandbox.
NOT_SANDBOX = {"Type", "NotifyAccess", "ExecStart", "ExecReload", "WatchdogSec", "TimeoutStartSec",
               "TimeoutStopSec", "Restart", "RestartSec"}
FIXTURE = "/sys/devices/virtual/workqueue"  # a tmpfs mounted here in the container holds the fixture sysfs
PROTECT = """
import json, sys
from pathlib import Path
from agent.enforce.media import MediaGuard
how, device, sys_root = sys.argv[1:4]
try:
    print(json.dumps(MediaGuard(how, Path(sys_root)).protect(device, {})))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
# What the copy guard's answering thread asks for: the lowest real-time priority.
import os
try:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    print("realtime ok")
except OSError as exc:
    print(f"realtime refused: {exc}")
"""
REALTIME = """import os
try:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    print("realtime ok")
except OSError as exc:
    print(f"realtime refused: {exc}")
"""


class Box(Booted):
    """A booted bookworm root with the repository (read-only) and the given devices bound in."""

    def __init__(self, root: Path, log: Path, devices: list[str]) -> None:
        self.root, self.suite, self.log = root, "bookworm", log
        self.realtime = ""  # what the last service got when it asked for SCHED_RR 1
        binds = [f"--bind={d}" for d in devices] + [f"--bind-ro={REPO}:/opt/dwsrc"]
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--boot", "--private-network", "--register=no", "--keep-unit",
             "-M", f"dw19d-{os.getpid() % 100000}", *binds], stdout=log.open("w"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        self.init = self._find_init()
        deadline = time.monotonic() + 120
        while self.sh("systemctl is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, f"did not boot:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)

    def protect(self, how: str, device: str, *, dropin: bool) -> dict[str, object]:
        """MediaGuard.protect as a oneshot service made of the shipped unit file (its start lines swapped for
        the script; every sandbox line kept as written), with the drop-in installed as an admin would."""
        lines = []
        for raw in UNIT.read_text().splitlines():
            key = raw.split("=", 1)[0].strip()
            if key in NOT_SANDBOX:
                continue
            lines.append(raw)
            if raw.strip() == "[Service]":
                lines += ["Type=oneshot", "Environment=PYTHONPATH=/opt/dwsrc PYTHONDONTWRITEBYTECODE=1",
                          "StandardOutput=file:/run/dwtest.out", "StandardError=file:/run/dwtest.err",
                          f"ExecStart=/usr/bin/python3.11 /opt/protect.py {how} {device} {FIXTURE}"]
        unit = "\n".join(lines) + "\n"
        setup = (f"cat > /opt/protect.py <<'EOF'\n{PROTECT}EOF\nchmod 644 /opt/protect.py\n"
                 f"cat > /etc/systemd/system/dwtest.service <<'EOF'\n{unit}EOF\n"
                 "rm -rf /etc/systemd/system/dwtest.service.d /run/dwtest.out /run/dwtest.err\n")
        if dropin:
            setup += (f"mkdir -p /etc/systemd/system/dwtest.service.d\n"
                      f"cat > /etc/systemd/system/dwtest.service.d/enforce.conf <<'EOF'\n{DROPIN.read_text()}EOF\n")
        self.sh(setup + "systemctl daemon-reload")
        res = self.sh("systemctl start dwtest.service", check=False, timeout=120)
        out = self.sh("cat /run/dwtest.out /run/dwtest.err", check=False).stdout.strip().splitlines()
        assert res.returncode == 0 and out, f"the service failed: {res.stderr}\n{out}"
        found: dict[str, object] = json.loads(out[0])
        self.realtime = out[1] if len(out) > 1 else ""
        return found

    def plain_realtime(self) -> str:
        """What a plain root service (no sandbox at all) gets when it asks for SCHED_RR 1: a kernel with
        real-time group scheduling refuses it in a service's cgroup whatever the unit says."""
        self.sh(f"cat > /opt/rt.py <<'EOF'\n{REALTIME}EOF\n"
                "printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/python3.11 /opt/rt.py\\n"
                "StandardOutput=file:/run/dwplain.out\\n' > /etc/systemd/system/dwplain.service\n"
                "rm -f /run/dwplain.out; systemctl daemon-reload; systemctl start dwplain.service")
        return self.sh("cat /run/dwplain.out").stdout.strip()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Box, Stick, Stick]]:
    need("systemd-nspawn", "nsenter")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(_tarball("bookworm"))], check=True, timeout=300)
    # Python from the root's own package cache (the container has no network); the service's user.
    subprocess.run(["chroot", str(root), "/bin/sh", "-ec",
                    "apt-get install -y -qq --no-download python3.11 >/dev/null && "
                    "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin dutywatch"],
                   env=ENV, check=True, timeout=600, capture_output=True)
    sticks = [Stick.make(tmp_path / f"{n}.img", "ext4") for n in ("early", "usb")]
    fixture = tmp_path / "sys"
    usb_sysfs(fixture, sticks[1], "DW19DSANDBOX", "0781", "5567")
    usb = fixture / "devices/pci0000:00/0000:00:14.0/usb2/2-1"
    (usb / "authorized").write_text("1\n")
    with tarfile.open(root / "root" / "fixture.tar", "w") as tar:
        tar.add(fixture, arcname=".")
    b = None
    try:
        b = Box(root, tmp_path / "boot.log", [s.device for s in sticks])
        yield b, sticks[0], sticks[1]
    finally:
        if b is not None:
            b.halt()
        for s in sticks:
            s.release()
        if not _mounted_under(root):
            shutil.rmtree(root, ignore_errors=True)


def _writable(b: Box, path: str) -> bool:
    return b.sh(f"echo x > {path}", check=False).returncode == 0


def test_sticks_under_the_shipped_unit_and_with_the_enforcement_dropin(box: tuple[Box, Stick, Stick]) -> None:
    b, early, usb = box
    # A stick mounted before the agent started, written to.
    b.sh(f"mkdir -p /media/early && mount {early.device} /media/early && echo before > /media/early/a.txt")
    # The fixture sysfs below the container's /sys/devices, root's and 0644 like the kernel's.
    b.sh(f"mount -t tmpfs -o mode=755 dwfixture {FIXTURE} && tar -C {FIXTURE} -xf /root/fixture.tar "
         f"&& chown -R root:root {FIXTURE} && chmod 644 {FIXTURE}/devices/pci0000:00/0000:00:14.0/usb2/2-1/authorized")
    authorized = f"{FIXTURE}/devices/pci0000:00/0000:00:14.0/usb2/2-1/authorized"

    # The shipped unit: the remount is refused by the filter and said so; the device is read-only all the same.
    got = b.protect("readonly", early.device, dropin=False)
    print(f"\nshipped unit, readonly, a stick mounted before: {got}")
    assert got.get("remounted") == [] and "/media/early" in got.get("remount_failed", {}), got  # type: ignore
    assert b.realtime.startswith("realtime refused"), b.realtime  # the copy guard answers at normal priority
    assert "drop-in" in str(got["remount_failed"])
    assert b.sh(f"blockdev --getro {early.device}").stdout.strip() == "1"
    assert _writable(b, "/media/early/b.txt")  # the mount made before stays writable: what the drop-in is for
    # Deauthorising: sysfs is read-only to the service; the stick is made read-only instead (fail closed).
    got = b.protect("deauthorize", usb.device, dropin=False)
    print(f"shipped unit, deauthorize: {got}")
    assert got.get("how") == "readonly" and "deauthorising refused" in str(got.get("deauthorize_refused")), got
    assert b.sh(f"cat {authorized}").stdout.strip() == "1"
    assert b.sh(f"blockdev --getro {usb.device}").stdout.strip() == "1"
    b.sh(f"blockdev --setrw {usb.device}")

    # With the enforcement drop-in: the remount holds outside the service's private mount namespace ...
    got = b.protect("readonly", early.device, dropin=True)
    print(f"with enforce.conf, readonly: {got}")
    assert got.get("remounted") == ["/media/early"] and "remount_failed" not in got, got
    # The copy guard's answering thread may take SCHED_RR 1, as a plain root service may (the comparison:
    # a kernel with real-time group scheduling could refuse it to any service's cgroup).
    plain = b.plain_realtime()
    print(f"with enforce.conf, SCHED_RR 1: {b.realtime}; a plain root service: {plain}")
    assert b.realtime == plain == "realtime ok"
    assert not _writable(b, "/media/early/c.txt")
    assert "Read-only file system" in b.sh("echo y >> /media/early/a.txt", check=False).stderr
    assert b.sh("cat /media/early/a.txt").stdout.strip() == "before"  # still readable
    # ... and the USB device is deauthorised.
    got = b.protect("deauthorize", usb.device, dropin=True)
    print(f"with enforce.conf, deauthorize: {got}")
    assert got == {"how": "deauthorize", "authorized": authorized}, got
    assert b.sh(f"cat {authorized}").stdout.strip() == "0"
    b.sh("umount /media/early")
