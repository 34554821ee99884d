"""Parsers of host state: os-release, accounts, packages, units, modules, sockets, sysctl.

Each takes a RootFS, so the same code reads the live host and a mounted root.
State that exists only on a running system (loaded modules, listening
sockets, kernel parameters in force) is read from the root's ``/proc``; a
root without one says so instead of guessing.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from agent.assess.rootfs import ProbeError, RootFS

RHEL_IDS = {"rhel", "centos", "fedora", "rocky", "almalinux", "ol", "openeuler", "anolis", "euleros", "kylin",
            "neokylin", "opencloudos", "tencentos", "amzn"}
DEBIAN_IDS = {"debian", "ubuntu", "uos", "deepin", "kali", "linuxmint", "raspbian"}


def os_release(fs: RootFS) -> dict[str, str]:
    """``/etc/os-release`` (or ``/usr/lib/os-release``) as a dict."""
    text = fs.read("/etc/os-release")
    if text is None:
        text = fs.read("/usr/lib/os-release") or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            try:
                parts = shlex.split(v, posix=True)
            except ValueError:
                parts = [v]
            out[k.strip()] = parts[0] if parts else ""
    return out


def family(fs: RootFS) -> str | None:
    """``debian`` or ``rhel`` from ID and ID_LIKE; Kylin and UOS follow whichever they say."""
    rel = os_release(fs)
    ids = [rel.get("ID", "").lower(), *rel.get("ID_LIKE", "").lower().split()]
    for i in ids:
        if i in DEBIAN_IDS:
            return "debian"
        if i in RHEL_IDS:
            return "rhel"
    if fs.exists("/var/lib/dpkg/status"):
        return "debian"
    if fs.exists("/var/lib/rpm"):
        return "rhel"
    return None


@dataclass(frozen=True, slots=True)
class Account:
    """One ``/etc/passwd`` entry joined with its ``/etc/shadow`` fields."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    line: int
    password: str | None = None  # the shadow hash field; None when there is no shadow entry
    last_change: int | None = None
    min_days: int | None = None
    max_days: int | None = None
    warn_days: int | None = None
    inactive: int | None = None
    expire: int | None = None

    @property
    def password_state(self) -> str:
        """``empty``, ``locked`` (``!``/``*`` prefix) or ``set``; ``unknown`` without shadow."""
        if self.password is None:
            return "unknown"
        if self.password == "":
            return "empty"
        if self.password.startswith(("!", "*")):
            return "locked"
        return "set"

    @property
    def login_shell(self) -> bool:
        """Whether the shell lets the account log in."""
        return not self.shell.endswith(("/nologin", "/false", "/sync", "/shutdown", "/halt")) and self.shell != ""


def _int(s: str) -> int | None:
    s = s.strip()
    return int(s) if s.isdigit() else None


def accounts(fs: RootFS) -> list[Account]:
    """Every account, with shadow fields where readable."""
    passwd = fs.lines("/etc/passwd")
    if passwd is None:
        raise ProbeError("/etc/passwd: absent")
    shadow: dict[str, list[str]] = {}
    for line in fs.lines("/etc/shadow") or []:
        f = line.split(":")
        if len(f) >= 2 and f[0]:
            shadow[f[0]] = f + [""] * (9 - len(f))
    out = []
    for n, line in enumerate(passwd, 1):
        f = line.split(":")
        if len(f) < 7 or not f[0] or line.startswith(("#", "+", "-")):
            continue
        uid, gid = _int(f[2]), _int(f[3])
        if uid is None or gid is None:
            continue
        s = shadow.get(f[0])
        pw: str | None = f[1]
        if f[1] == "x":
            pw = s[1] if s is not None else None
        out.append(Account(f[0], uid, gid, f[5], f[6], n, pw,
                           *(_int(s[i]) if s else None for i in range(2, 8))))
    return out


@dataclass(frozen=True, slots=True)
class Group:
    """One ``/etc/group`` entry."""

    name: str
    gid: int
    members: tuple[str, ...]
    line: int


def groups(fs: RootFS) -> list[Group]:
    """Every group."""
    out = []
    for n, line in enumerate(fs.lines("/etc/group") or [], 1):
        f = line.split(":")
        if len(f) < 4 or _int(f[2]) is None:
            continue
        out.append(Group(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m), n))
    return out


def login_defs(fs: RootFS) -> dict[str, tuple[str, int]]:
    """``/etc/login.defs`` keys to (value, line)."""
    out: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(fs.lines("/etc/login.defs") or [], 1):
        f = line.split()
        if len(f) >= 2 and not f[0].startswith("#"):
            out[f[0]] = (f[1], n)
    return out


# -- packages ---------------------------------------------------------------

def dpkg_packages(text: str) -> dict[str, str]:
    """Installed packages of a dpkg status file: name (``:arch`` dropped) to version."""
    out: dict[str, str] = {}
    for para in text.split("\n\n"):
        name = version = status = ""
        for line in para.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Version: "):
                version = line[9:].strip()
            elif line.startswith("Status: "):
                status = line[8:].strip()
        if name and status.endswith(" installed"):
            out[name] = version
    return out


def packages(fs: RootFS, timeout: float = 20.0) -> dict[str, str]:
    """Installed packages: the dpkg status file, else the rpm database (read by the host's rpm)."""
    text = fs.read("/var/lib/dpkg/status", limit=256 * 1024 * 1024)
    if text is not None:
        return dpkg_packages(text)
    if fs.exists("/var/lib/rpm"):
        from agent.assess.command import run_bounded
        argv = ["rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"]
        if not fs.live:
            argv[1:1] = ["--root", fs.root]
        res = run_bounded(argv, timeout=timeout, max_bytes=64 * 1024 * 1024)
        if res.error:
            raise ProbeError(f"rpm database: {res.error}")
        out = {}
        for line in res.stdout.splitlines():
            name, _, ver = line.partition("\t")
            if name and name != "gpg-pubkey":
                out[name] = ver[2:] if ver.startswith("0:") else ver
        return out
    raise ProbeError("no package database (/var/lib/dpkg/status or /var/lib/rpm)")


# -- systemd units -------------------------------------------------------------

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")


def unit_state(fs: RootFS, name: str) -> tuple[str, str]:
    """(state, evidence) of a unit from the files systemd reads: masked, enabled, disabled or absent."""
    for d in ("/etc/systemd/system", "/run/systemd/system"):
        p = f"{d}/{name}"
        try:
            real = fs.real(d) + "/" + name  # the link itself, not what it points to
        except ProbeError:
            continue
        if os.path.islink(real) and os.readlink(real) == "/dev/null":
            return "masked", f"{p} -> /dev/null"
    found = next((f"{d}/{name}" for d in UNIT_DIRS if fs.exists(f"{d}/{name}")), None)
    if found is None:
        return "absent", f"no unit file {name} in {', '.join(UNIT_DIRS)}"
    for d in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"):
        for wants in fs.glob(f"{d}/*.wants"):
            if fs.exists(f"{wants}/{name}") or _islink(fs, f"{wants}/{name}"):
                return "enabled", f"{wants}/{name}"
    return "disabled", f"{found} not linked from any *.wants directory"


def _islink(fs: RootFS, path: str) -> bool:
    try:
        return os.path.islink(fs.real(os.path.dirname(path)) + "/" + os.path.basename(path))
    except ProbeError:
        return False


def enabled_units(fs: RootFS) -> dict[str, str]:
    """Every unit enabled through a ``*.wants`` link, with the target that wants it."""
    out: dict[str, str] = {}
    for d in ("/etc/systemd/system",):
        for wants in fs.glob(f"{d}/*.wants"):
            for name in fs.listdir(wants):
                out.setdefault(name, os.path.basename(wants)[:-6])
    return out


# -- kernel ------------------------------------------------------------------

def loaded_modules(fs: RootFS) -> dict[str, str]:
    """Loaded kernel modules (``/proc/modules``): name to state."""
    text = fs.read("/proc/modules")
    if text is None:
        raise ProbeError("this kernel has no loadable-module support (no /proc/modules)" if fs.live
                         else "no /proc/modules in this root (not a running system)")
    out = {}
    for line in text.splitlines():
        f = line.split()
        if f:
            out[f[0]] = f[4] if len(f) > 4 else ""
    return out


_MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d")


def modprobe_rules(fs: RootFS) -> dict[str, list[tuple[str, str, str]]]:
    """modprobe.d directives per module (``-``/``_`` folded): (directive, argument, path:line)."""
    seen: set[str] = set()
    out: dict[str, list[tuple[str, str, str]]] = {}
    for d in _MODPROBE_DIRS:
        for name in fs.listdir(d):
            if not name.endswith(".conf") or name in seen:
                continue
            seen.add(name)
            path = f"{d}/{name}"
            try:
                lines = fs.lines(path) or []
            except ProbeError:
                continue
            for n, line in enumerate(lines, 1):
                f = line.split(None, 2)
                if len(f) >= 2 and f[0] in ("blacklist", "install", "options", "alias"):
                    mod = f[1].replace("-", "_")
                    out.setdefault(mod, []).append((f[0], f[2] if len(f) > 2 else "", f"{path}:{n}"))
    return out


_SYSCTL_DIRS = ("/usr/lib/sysctl.d", "/lib/sysctl.d", "/run/sysctl.d", "/etc/sysctl.d")


def sysctl_configured(fs: RootFS) -> dict[str, tuple[str, str]]:
    """Kernel parameters set in sysctl.d and sysctl.conf, as systemd-sysctl applies them: key to (value, path:line)."""
    files: dict[str, str] = {}
    for d in _SYSCTL_DIRS:  # a later directory's file of the same name replaces an earlier one's
        for name in fs.listdir(d):
            if name.endswith(".conf"):
                files[name] = f"{d}/{name}"
    ordered = [files[n] for n in sorted(files)] + ["/etc/sysctl.conf"]
    out: dict[str, tuple[str, str]] = {}
    for path in ordered:
        try:
            lines = fs.lines(path) or []
        except ProbeError:
            continue
        for n, line in enumerate(lines, 1):
            s = line.strip().lstrip("-")
            if not s or s[0] in "#;" or "=" not in s:
                continue
            k, _, v = s.partition("=")
            out[k.strip().replace("/", ".")] = (v.strip(), f"{path}:{n}")
    return out


def sysctl_live(fs: RootFS, key: str) -> str | None:
    """The value in force (``/proc/sys``), whitespace folded; None when the root has no /proc."""
    if not fs.exists("/proc/sys/kernel"):
        return None
    text = fs.read("/proc/sys/" + key.replace(".", "/"))
    return None if text is None else " ".join(text.split())


# -- sockets -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket and the process holding it."""

    proto: str
    address: str
    port: int
    inode: int
    process: str | None = None
    pid: int | None = None


def _addr(hexaddr: str) -> str:
    import ipaddress
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listeners(fs: RootFS) -> list[Listener]:
    """TCP sockets in LISTEN and bound UDP sockets, from the root's /proc, with their processes."""
    if not fs.exists("/proc/net/tcp"):
        raise ProbeError("no /proc/net in this root (not a running system)")
    found: list[Listener] = []
    for proto, path, want in (("tcp", "/proc/net/tcp", "0A"), ("tcp6", "/proc/net/tcp6", "0A"),
                              ("udp", "/proc/net/udp", "07"), ("udp6", "/proc/net/udp6", "07")):
        for line in (fs.lines(path) or [])[1:]:
            f = line.split()
            if len(f) < 10 or f[3] != want:
                continue
            host, _, port = f[1].partition(":")
            try:
                found.append(Listener(proto.rstrip("6"), _addr(host), int(port, 16), int(f[9])))
            except ValueError:
                continue
    owners = _socket_owners(fs, {x.inode for x in found})
    return [Listener(x.proto, x.address, x.port, x.inode, *owners.get(x.inode, (None, None))) for x in found]


def _socket_owners(fs: RootFS, inodes: set[int]) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    proc = fs.real("/proc")
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]$", target)
            if m and int(m.group(1)) in inodes and int(m.group(1)) not in out:
                try:
                    with open(f"{proc}/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                out[int(m.group(1))] = (comm, int(pid))
    return out
