"""A Debian bookworm root with the baseline packages a level-3 host runs, cached as a tarball.

Built once with ``debootstrap --variant=minbase --include=...`` (about three minutes with the
machine's Debian mirror) and kept as /var/cache/dutywatch-test/bookworm-assess.tar beside the
packaging tests' bookworm.tar; delete it to start again. Each test unpacks a fresh copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path("/var/cache/dutywatch-test")
TARBALL = CACHE / "bookworm-assess.tar"
PACKAGES = ("systemd", "systemd-sysv", "openssh-server", "auditd", "libpam-pwquality", "sudo", "rsyslog",
            "logrotate", "apparmor", "aide", "kmod", "procps", "iproute2", "chrony", "clamav", "cron",
            "nftables", "login", "passwd")


def make_tarball() -> Path:
    """debootstrap the root with the baseline packages and tar it (once)."""
    if TARBALL.exists():
        return TARBALL
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap (see .ci/run)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"bookworm-assess.new.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    res = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), "bookworm",
                          str(work)], capture_output=True, text=True, timeout=1500)
    if res.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
    part = Path(f"{TARBALL}.{os.getpid()}.part")
    subprocess.run(["tar", "-C", str(work), "-cf", str(part), "."], check=True, timeout=300)
    os.replace(part, TARBALL)
    shutil.rmtree(work)
    return TARBALL


def unpack(dest: Path) -> Path:
    """A fresh copy of the root under ``dest`` (no proc, sys or dev mounted)."""
    make_tarball()
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(TARBALL)], check=True, timeout=300)
    return dest


if __name__ == "__main__":
    print(make_tarball(), file=sys.stderr)
