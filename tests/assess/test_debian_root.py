"""``dutywatch assess --root`` on a real Debian 12 root: hardened, then misconfigured as hosts are.

The root comes from debootstrap with the packages a level-3 server runs
(tests/assess/debroot.py, cached). An administrator's hardening is applied
with the root's own tools (chroot: useradd, chage, systemctl enable/mask)
and files; the hardened root must pass or be not applicable, with a reason,
on every check. Then 30 misconfigurations are seeded: exactly the checks they
break fail, each with its evidence. Nothing from the root is executed by the
assessment itself (commands are not applicable on a scanned root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debroot import unpack

from agent.assess.evaluate import CheckResult
from agent.assess.state import changes, result_map

pytestmark = pytest.mark.root
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def sh(root: Path, script: str) -> None:
    """Run an admin's command inside the root (our own root, built by debootstrap)."""
    res = subprocess.run(["chroot", str(root), "/bin/sh", "-ec", script], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"{script}: {res.stdout}{res.stderr}"


def put(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    f.chmod(mode)


def edit(root: Path, path: str, pattern: str, repl: str) -> None:
    f = root / path.lstrip("/")
    text, n = re.subn(pattern, repl, f.read_text(), flags=re.M)
    assert n, f"{pattern!r} not found in {path}"
    f.write_text(text)


def harden(root: Path) -> None:
    """What an administrator does to a fresh Debian 12 server for level 3."""
    put(root, "/etc/security/pwquality.conf", "minlen = 12\nminclass = 3\n")
    edit(root, "/etc/login.defs", r"^PASS_MAX_DAYS\s+\d+", "PASS_MAX_DAYS\t90")
    edit(root, "/etc/login.defs", r"^PASS_MIN_DAYS\s+\d+", "PASS_MIN_DAYS\t1")
    edit(root, "/etc/login.defs", r"^UMASK\s+\d+", "UMASK\t\t027")
    edit(root, "/etc/pam.d/common-auth", r"^(auth\s+\[success=1 default=ignore\]\s+pam_unix\.so.*)$",
         "auth\trequired\t\t\tpam_faillock.so preauth\n\\1\nauth\t[default=die]\t\t\tpam_faillock.so authfail")
    put(root, "/etc/security/faillock.conf", "deny = 5\nunlock_time = 900\n")
    edit(root, "/etc/pam.d/su", r"^#\s*(auth\s+required\s+pam_wheel\.so)\s*$", "\\1")
    put(root, "/etc/profile.d/tmout.sh", "readonly TMOUT=600\nexport TMOUT\n")
    put(root, "/etc/ssh/sshd_config.d/50-l3.conf",
        "PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nClientAliveInterval 300\n"
        "ClientAliveCountMax 2\nLoginGraceTime 30\nMaxAuthTries 3\nAllowGroups sshusers\nX11Forwarding no\n"
        "AllowTcpForwarding no\nLogLevel VERBOSE\n")
    put(root, "/etc/audit/rules.d/50-l3.rules",
        "-w /etc/passwd -p wa -k identity\n-w /etc/shadow -p wa -k identity\n-w /etc/sudoers -p wa -k privilege\n"
        "-a always,exit -F arch=b64 -S adjtimex,settimeofday,clock_settime -k time\n"
        "-a always,exit -F arch=b64 -S execve -F euid=0 -F auid>=1000 -k privileged\n-e 2\n", 0o640)
    put(root, "/etc/rsyslog.d/90-forward.conf", "*.* @@logs.example.gov.cn:6514\n")
    edit(root, "/etc/logrotate.conf", r"^rotate\s+\d+", "rotate 26")
    put(root, "/etc/sysctl.d/90-l3.conf",
        "net.ipv4.ip_forward = 0\nnet.ipv4.conf.all.accept_redirects = 0\nnet.ipv4.conf.all.send_redirects = 0\n"
        "net.ipv4.conf.all.accept_source_route = 0\nnet.ipv4.tcp_syncookies = 1\nkernel.randomize_va_space = 2\n"
        "kernel.kptr_restrict = 1\nkernel.dmesg_restrict = 1\nfs.suid_dumpable = 0\nfs.protected_symlinks = 1\n"
        "fs.protected_hardlinks = 1\nkernel.yama.ptrace_scope = 1\n")
    put(root, "/etc/apt/sources.list", "deb http://deb.debian.org/debian bookworm main\n"
                                        "deb http://deb.debian.org/debian-security bookworm-security main\n")
    put(root, "/etc/modprobe.d/l3-blacklist.conf", "".join(
        f"install {m} /bin/false\n" for m in ("usb-storage", "dccp", "sctp", "rds", "tipc", "cramfs", "freevxfs",
                                              "hfs", "hfsplus", "jffs2")))
    put(root, "/etc/security/limits.d/90-core.conf", "* hard core 0\n")
    with open(root / "etc/fstab", "a") as f:
        f.write("tmpfs /tmp tmpfs defaults,nosuid,nodev,noexec 0 0\n"
                "tmpfs /dev/shm tmpfs defaults,nosuid,nodev,noexec 0 0\n")
    put(root, "/etc/cron.d/aide", "0 5 * * * root /usr/bin/aide --config /etc/aide/aide.conf --check\n")
    sh(root, "systemctl enable nftables.service clamav-freshclam.service >/dev/null 2>&1; "
             "systemctl mask ctrl-alt-del.target >/dev/null 2>&1; "
             "groupadd sshusers; useradd -m -s /bin/bash -G sshusers alice; "
             "usermod -p '$y$j9T$7n9b3y1LHlyzW0lU6N/bQ1$Vp0dPFS7hY8yE9N7iCwQZ5eQEpRnB4Y1u7z2HUn4X1.' alice; "
             "chage -M 90 -m 1 -W 7 alice; chmod 0700 /root")
    assert (root / "etc/systemd/system/sysinit.target.wants/nftables.service").is_symlink()


def dpkg_installed(root: Path, name: str, version: str) -> None:
    """A package's record as dpkg writes it (the archive is not downloaded in the test)."""
    with open(root / "var/lib/dpkg/status", "a") as f:
        f.write(f"\nPackage: {name}\nStatus: install ok installed\nPriority: optional\nSection: net\n"
                f"Architecture: amd64\nVersion: {version}\nDescription: {name}\n")


# Each misconfiguration, as it is made on a real host, and the checks it must fail.
SEEDS: list[tuple[str, tuple[str, ...]]] = [
    ("weak pwquality", ("DW-L3-IA-001",)),
    ("no faillock", ("DW-L3-IA-012",)),
    ("passwords never expire", ("DW-L3-IA-005",)),
    ("no shell timeout", ("DW-L3-IA-015",)),
    ("ssh allows 10 tries", ("DW-L3-IA-019",)),
    ("telnet server installed", ("DW-L3-IA-020",)),
    ("empty password", ("DW-L3-IA-009",)),
    ("sshd permits password login", ("DW-L3-IA-027",)),
    ("extra uid-0 account in the root group", ("DW-L3-AC-001", "DW-L3-IA-010", "DW-L3-AC-007")),
    ("sshd permits root", ("DW-L3-AC-002",)),
    ("system account with a shell", ("DW-L3-AC-003",)),
    ("guest account", ("DW-L3-AC-005",)),
    ("password-less sudo", ("DW-L3-AC-006",)),
    ("su open to all", ("DW-L3-AC-008",)),
    ("shadow readable", ("DW-L3-AC-010",)),
    ("umask 022", ("DW-L3-AC-016",)),
    ("audit rules unlocked", ("DW-L3-AU-007",)),
    ("world-writable audit log", ("DW-L3-AU-012",)),
    ("logs kept 4 weeks", ("DW-L3-AU-015",)),
    ("remote desktop installed", ("DW-L3-IP-003",)),
    ("tor installed", ("DW-L3-IP-004",)),
    ("samba enabled (unneeded listening service)", ("DW-L3-IP-008",)),
    ("no firewall", ("DW-L3-IP-013",)),
    ("ssh tcp forwarding", ("DW-L3-IP-015",)),
    ("ip forwarding", ("DW-L3-IP-016",)),
    ("aslr off", ("DW-L3-IP-021",)),
    ("usb storage allowed", ("DW-L3-IP-028",)),
    ("forbidden module configured to load", ("DW-L3-IP-031",)),
    ("/tmp executable", ("DW-L3-MC-003",)),
    ("unsigned apt source", ("DW-L3-TV-003",)),
]


def seed(root: Path) -> None:
    """Make every misconfiguration of SEEDS."""
    put(root, "/etc/security/pwquality.conf", "minlen = 6\nminclass = 3\n")
    edit(root, "/etc/pam.d/common-auth", r"^auth\s+.*pam_faillock\.so.*\n", "")
    edit(root, "/etc/login.defs", r"^PASS_MAX_DAYS\s+\d+", "PASS_MAX_DAYS\t99999")
    (root / "etc/profile.d/tmout.sh").unlink()
    put(root, "/etc/ssh/sshd_config.d/10-vendor.conf", "MaxAuthTries 10\nPasswordAuthentication yes\n"
                                                       "PermitRootLogin yes\nAllowTcpForwarding yes\n")
    dpkg_installed(root, "telnetd", "0.17+2.4-2+deb12u1")
    put(root, "/usr/sbin/in.telnetd", "", 0o755)
    sh(root, "passwd -d alice >/dev/null; useradd -o -u 0 -g 0 -M -d /root -s /bin/bash toor; "
             "usermod -s /bin/bash www-data; useradd -m -s /bin/bash guest")
    put(root, "/etc/sudoers.d/90-ops", "alice ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    edit(root, "/etc/pam.d/su", r"^(auth\s+required\s+pam_wheel\.so)", "# \\1")
    (root / "etc/shadow").chmod(0o644)
    edit(root, "/etc/login.defs", r"^UMASK\s+\d+", "UMASK\t\t022")
    edit(root, "/etc/audit/rules.d/50-l3.rules", r"^-e 2$", "")
    (root / "var/log/audit").mkdir(parents=True, exist_ok=True)
    put(root, "/var/log/audit/audit.log", "type=DAEMON_START msg=audit(1700000000.000:1): op=start\n", 0o666)
    edit(root, "/etc/logrotate.conf", r"^rotate\s+\d+", "rotate 4")
    dpkg_installed(root, "x11vnc", "0.9.16-9")
    dpkg_installed(root, "tor", "0.4.7.16-1")
    put(root, "/lib/systemd/system/smbd.service", "[Unit]\nDescription=Samba SMB Daemon\n[Service]\n"
                                                  "ExecStart=/usr/sbin/smbd --foreground\n[Install]\n"
                                                  "WantedBy=multi-user.target\n")
    sh(root, "systemctl enable smbd.service >/dev/null 2>&1; systemctl disable nftables.service >/dev/null 2>&1")
    put(root, "/etc/sysctl.d/99-router.conf", "net.ipv4.ip_forward = 1\nkernel.randomize_va_space = 0\n")
    edit(root, "/etc/modprobe.d/l3-blacklist.conf", r"^install usb-storage /bin/false\n", "")
    put(root, "/etc/modules-load.d/usb.conf", "usb-storage\n")
    edit(root, "/etc/fstab", r"^tmpfs /tmp .*\n", "")
    put(root, "/etc/apt/sources.list.d/vendor.list",
        "deb [trusted=yes] http://mirror.example.cn/vendor bookworm main\n")


def assess(root: Path) -> tuple[list[CheckResult], dict[str, object]]:
    """Run the command as a user does, on the root; JSON out."""
    run = subprocess.run([sys.executable, "-m", "agent", "assess", "--root", str(root), "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr
    doc = json.loads(run.stdout)
    results = [CheckResult(r["check"], r["policy"], r["result"], tuple(r["evidence"]), tuple(r["items"]),
                           r["clause"], r["title"]["zh"], r["title"]["en"]) for r in doc["results"]]
    return results, doc


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("chroot") is None or os.geteuid() != 0:
        pytest.fail("needs root and chroot")
    base = tmp_path_factory.mktemp("dw18-debian")
    root = unpack(base / "root")
    harden(root)
    yield root
    shutil.rmtree(base, ignore_errors=True)


def test_hardened_root_passes_or_says_why_not(debian: Path) -> None:
    results, doc = assess(debian)
    assert doc["family"] == "debian"
    bad = [f"{r.check}: {r.evidence}" for r in results if r.result == "fail"]
    assert bad == []
    for r in results:
        assert r.evidence and all(e.strip() for e in r.evidence), r.check
    na = {r.check: r.evidence[0] for r in results if r.result == "not_applicable"}
    assert na["DW-L3-AC-018"] == "for rhel systems; this one is debian"
    assert "a scanned root has no running system" in na["DW-L3-IP-011"]
    assert sum(r.result == "pass" for r in results) >= 60


def test_seeded_misconfigurations_fail_with_evidence_and_only_they(debian: Path) -> None:
    before, _ = assess(debian)
    seed(debian)
    after, _ = assess(debian)
    expected = {c for _, checks in SEEDS for c in checks}
    assert len(SEEDS) >= 25
    failing = {r.check: r for r in after if r.result == "fail"}
    assert set(failing) == expected
    ev = {c: " | ".join(r.evidence) for c, r in failing.items()}
    assert "minlen = 6" in ev["DW-L3-IA-001"]
    assert "telnetd 0.17+2.4-2+deb12u1 installed" in ev["DW-L3-IA-020"]
    assert "toor (uid 0" in ev["DW-L3-AC-001"]
    assert "alice" in ev["DW-L3-IA-009"] and "password empty" in ev["DW-L3-IA-009"]
    assert "/etc/ssh/sshd_config.d/10-vendor.conf:3: PermitRootLogin yes" in ev["DW-L3-AC-002"]
    assert "/var/log/audit/audit.log: mode 0666" in ev["DW-L3-AU-012"]
    assert "/etc/modules-load.d/usb.conf:1: usb-storage" in ev["DW-L3-IP-031"]
    assert "/etc/sysctl.d/99-router.conf:1: net.ipv4.ip_forward = 1" in ev["DW-L3-IP-016"]
    assert "smbd.service state = enabled" in ev["DW-L3-IP-008"]
    assert "/etc/sudoers.d/90-ops:1: alice ALL=(ALL) NOPASSWD: ALL" in ev["DW-L3-AC-006"]

    # Unchanged: no new finding. One fix: exactly one change, to pass.
    again, _ = assess(debian)
    assert changes(result_map(after), again) == []
    put(debian, "/etc/security/pwquality.conf", "minlen = 14\nminclass = 3\n")
    fixed, _ = assess(debian)
    diff = changes(result_map(again), fixed)
    assert [(c.result.check, c.previous, c.result.result) for c in diff] == [("DW-L3-IA-001", "fail", "pass")]
    assert changes(result_map(before), before) == []


def test_hostile_root_is_bounded_and_reported(debian: Path) -> None:
    put(debian, "/etc/ssh/sshd_config.d/00-loop.conf", "Include /etc/ssh/sshd_config\n")
    with open(debian / "etc/login.defs", "a") as f:
        f.write("#" * 80 + "\n" * 1 + ("# padding\n" * 500_000))
    sh(debian, "dpkg --purge --force-depends auditd >/dev/null 2>&1")
    results, _ = assess(debian)
    by = {r.check: r for r in results}
    assert by["DW-L3-AC-002"].result == "fail"
    assert "include loop: /etc/ssh/sshd_config -> /etc/ssh/sshd_config.d/00-loop.conf -> /etc/ssh/sshd_config" \
        in by["DW-L3-AC-002"].evidence[0]
    assert by["DW-L3-IA-005"].result == "fail" and "larger than 4 MiB" in by["DW-L3-IA-005"].evidence[0]
    assert by["DW-L3-AU-001"].result == "fail"
    assert by["DW-L3-AU-002"].result == "not_applicable"
    assert by["DW-L3-AU-002"].evidence == ("auditd or audit not installed",)
