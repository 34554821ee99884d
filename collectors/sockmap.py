"""Which process owns a socket: socket lookups by address, then /proc/PID/fd links.

A packet names a socket by its addresses; an exact netlink sock_diag
lookup (or, where that is unusable and for fixture trees, the
/proc/net/{tcp,udp}[6] tables) turns them into the socket's inode and uid,
and the ``socket:[inode]`` links under /proc/PID/fd turn the inode into an
owner (pid, fd, start time). The inode -> owner map is cached (bounded LRU)
and refreshed on a miss by a scan that visits the pids that owned sockets
recently first, then the others newest first, and stops at the owner.

A cached owner is used only while its fd link still names the socket (a
socket handed on by fork or SCM_RIGHTS, or a reused pid, must not name the
old owner), and ``confirm`` tells the caller whether its read of the
owner's process was of that same process. A process that exits before its
first packet is looked at has no fd table left (a zombie shows none); the
socket's uid from sock_diag, while the socket lasts, still names the user.
Files are read below a ``proc_root`` so tests use a fixture tree.

``ProcReader`` is a small private reader of /proc/PID, used through the
``ProcessLookup`` signature so a fuller process reader can replace it.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.events import Parent, Process
from collectors.procfs import read_unit

TCP_ESTABLISHED = 0x01
TCP_SYN_SENT = 0x02
TCP_SYN_RECV = 0x03
TCP_LISTEN = 0x0A
UDP_UNCONNECTED = 0x07  # the kernel reports a bound, unconnected UDP socket as TCP_CLOSE

# Tables of the same form: ping sockets list their echo identifier as the local port, raw
# sockets their IP protocol number.
_TABLES = {"tcp": ("tcp", "tcp6"), "udp": ("udp", "udp6"), "udplite": ("udplite", "udplite6"),
           "icmp": ("icmp",), "icmpv6": ("icmp6",), "raw": ("raw", "raw6")}
_WILD = frozenset({"0.0.0.0", "::"})  # noqa: S104  # matching wildcard binds, not binding
_MAPPED = "::ffff:"
_NO_LOGINUID = 4294967295


@dataclass(frozen=True, slots=True)
class SockEntry:
    """One line of a /proc/net table. IPv4-mapped IPv6 addresses are given as IPv4."""

    proto: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    uid: int
    inode: int


def _addr4(hexaddr: str) -> str:
    # The kernel prints the 32-bit word in host byte order.
    return socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(hexaddr, 16)))


def _addr6(hexaddr: str) -> str:
    raw = b"".join(struct.pack("=I", int(hexaddr[i:i + 8], 16)) for i in range(0, 32, 8))
    text = socket.inet_ntop(socket.AF_INET6, raw)
    if text.startswith(_MAPPED) and "." in text:
        return text[len(_MAPPED):]
    return text


def parse_table(text: str, proto: str, v6: bool) -> Iterator[SockEntry]:
    """Entries of one /proc/net table; malformed lines are skipped."""
    addr = _addr6 if v6 else _addr4
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            lip, lport = parts[1].split(":")
            rip, rport = parts[2].split(":")
            yield SockEntry(proto, addr(lip), int(lport, 16), addr(rip), int(rport, 16),
                            int(parts[3], 16), int(parts[7]), int(parts[9]))
        except (ValueError, OSError, struct.error):
            continue


def read_tables(proc_root: Path, proto: str) -> list[SockEntry]:
    """All sockets of ``proto`` (a key of ``_TABLES``), IPv4 and IPv6; missing tables are empty."""
    out: list[SockEntry] = []
    for name in _TABLES[proto]:
        try:
            text = (proc_root / "net" / name).read_text()
        except OSError:
            continue
        out.extend(parse_table(text, proto, name.endswith("6")))
    return out


def match_socket(entries: list[SockEntry], local_ip: str, local_port: int,
                 remote_ip: str | None = None, remote_port: int | None = None) -> SockEntry | None:
    """The socket a packet belongs to: exact 4-tuple first, then a bound or listening one.

    Entries with inode 0 (TCP request and TIME_WAIT sockets own no file) are
    passed over, so a SYN-ACK finds the listener behind it.
    """
    bound: SockEntry | None = None
    wild: SockEntry | None = None
    for e in entries:
        if e.local_port != local_port or e.inode == 0:
            continue
        if e.remote_port == 0 and e.remote_ip in _WILD:
            if e.local_ip == local_ip:
                bound = bound or e
            elif e.local_ip in _WILD:
                wild = wild or e
        elif e.local_ip == local_ip and e.remote_ip == remote_ip and e.remote_port == remote_port:
            return e
    return bound or wild


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_PROTO_NUM = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True, slots=True)
class DiagSock:
    """What sock_diag tells of one socket: its inode (0: it owns no file) and its uid (None when unknown)."""

    inode: int
    uid: int | None


_NO_UID_STATES = frozenset({TCP_SYN_RECV, 0x06})  # request and TIME_WAIT sockets report uid 0 for "none"


def diag_socket(proto: str, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> DiagSock | None:
    """One socket by exact lookup over netlink sock_diag; None when there is none.

    A hash lookup in the kernel, where reading /proc/net/tcp walks the whole
    table (milliseconds on a big host). OSError when sock_diag is unusable.
    """
    fam = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
    local = socket.inet_pton(fam, local_ip).ljust(16, b"\0")
    remote = socket.inet_pton(fam, remote_ip).ljust(16, b"\0")
    # TCP looks the id up as (src=local, dst=remote); the kernel's UDP lookup reads it the other way round.
    if proto == "tcp":
        sockid = struct.pack("!HH", local_port, remote_port) + local + remote
    else:
        sockid = struct.pack("!HH", remote_port, local_port) + remote + local
    body = (struct.pack("=BBBBI", fam, _PROTO_NUM[proto], 0, 0, 0xFFFFFFFF) + sockid
            + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 1, 1, 0) + body)
        reply = nl.recv(8192)
    _, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err in (errno.ENOENT, 0):
            return None
        raise OSError(err, os.strerror(err))
    # struct inet_diag_msg after the 16-byte header: state at 1, then uid and inode, its last two u32s
    state = reply[16 + 1]
    uid, inode = struct.unpack_from("=II", reply, 16 + 64)
    return DiagSock(int(inode), None if proto == "tcp" and state in _NO_UID_STATES else int(uid))


def diag_inode(proto: str, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> int | None:
    """The inode of one socket by exact sock_diag lookup; None when there is none (see ``diag_socket``)."""
    found = diag_socket(proto, local_ip, local_port, remote_ip, remote_port)
    return found.inode if found is not None else None


def _socket_links(fd_dir: Path) -> Iterator[tuple[int, int]]:
    """(inode, fd) of every socket in one fd directory."""
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            try:
                yield int(target[8:-1]), int(name)
            except ValueError:
                continue


def _stat_fields(text: str) -> tuple[str | None, list[str]]:
    """The name and the fields after it of a /proc/PID/stat line (the name may hold spaces and parens)."""
    close = text.rfind(")")
    if close <= 0:
        return None, []
    return text[text.find("(") + 1:close], text[close + 2:].split()


def start_ticks(proc_root: Path, pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot; None when it is gone. (pid, start) names one process."""
    try:
        text = (proc_root / str(pid) / "stat").read_text(errors="replace")
    except OSError:
        return None
    _, fields = _stat_fields(text)
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


@dataclass(frozen=True, slots=True)
class Owner:
    """A process holding a socket: its pid, the fd it holds it at, its start time in ticks (None: unread)."""

    pid: int
    fd: int
    start: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A packet's socket: inode (None: no socket with a file), owner (None: not found) and the socket's uid."""

    inode: int | None = None
    owner: Owner | None = None
    uid: int | None = None


class SockMap:
    """Socket inode -> owning process, cached, checked on every use and refreshed on a miss."""

    def __init__(self, proc_root: Path = Path("/proc"), max_entries: int = 8192, hot_pids: int = 256,
                 netlink: bool | None = None) -> None:
        """Read below ``proc_root``; keep at most ``max_entries`` inodes and ``hot_pids`` recent owners.

        ``netlink`` (default: when ``proc_root`` is the live /proc) finds sockets
        with sock_diag, falling back to the /proc/net tables if that fails.
        """
        self.proc_root = proc_root
        self.max_entries = max_entries
        self.netlink = proc_root == Path("/proc") if netlink is None else netlink
        self._owner: OrderedDict[int, Owner] = OrderedDict()
        self._hot: OrderedDict[int, None] = OrderedDict()
        self._hot_max = hot_pids
        self.scans = 0

    def lookup(self, proto: str, local_ip: str, local_port: int,
               remote_ip: str | None = None, remote_port: int | None = None) -> tuple[int | None, int | None]:
        """The inode of the socket for these addresses (looked up now) and its owner pid, or None for each."""
        found = self.find(proto, local_ip, local_port, remote_ip, remote_port)
        return found.inode, found.owner.pid if found.owner else None

    def find(self, proto: str, local_ip: str, local_port: int,
             remote_ip: str | None = None, remote_port: int | None = None) -> Found:
        """The socket a packet belongs to, its uid and its owner, all looked up now."""
        sock = self.find_socket(proto, local_ip, local_port, remote_ip, remote_port)
        if sock is None:
            return Found()
        if not sock.inode:
            return Found(uid=sock.uid)  # closed by a process that already exited: only its uid is left
        return Found(sock.inode, self.owner_of(sock.inode), sock.uid)

    def find_socket(self, proto: str, local_ip: str, local_port: int,
                    remote_ip: str | None = None, remote_port: int | None = None) -> DiagSock | None:
        """The socket a packet belongs to; one that owns no file gives its listener, else inode 0."""
        if self.netlink and proto in _PROTO_NUM and remote_ip is not None and remote_port is not None:
            try:
                exact = diag_socket(proto, local_ip, local_port, remote_ip, remote_port)
                if exact is not None and exact.inode:
                    return exact
                # no socket, or one that owns no file (SYN_RECV, accept queue, closed): its listener if any
                wildcard = "::" if ":" in local_ip else "0.0.0.0"  # noqa: S104
                bound = diag_socket(proto, local_ip, local_port, wildcard, 0)
                return bound if bound is not None and bound.inode else exact
            except OSError:
                self.netlink = False  # e.g. no sock_diag in this kernel or container
        entry = match_socket(read_tables(self.proc_root, proto), local_ip, local_port, remote_ip, remote_port)
        return DiagSock(entry.inode, entry.uid) if entry else None

    def find_raw(self, number: int, local_ip: str, remote_ip: str) -> Found:
        """The raw socket that sent a packet of IP protocol ``number``, when only one can have.

        A raw socket is named by its protocol alone (or IPPROTO_RAW, which sends
        any), not by ports: with two candidates the packet's sender is unknown,
        and guessing would name the wrong process.
        """
        entries = read_tables(self.proc_root, "raw")
        for num in (number, socket.IPPROTO_RAW):
            fits = [e for e in entries if e.local_port == num and e.inode
                    and e.local_ip in (local_ip, *_WILD) and e.remote_ip in (remote_ip, *_WILD)]
            if len(fits) == 1:
                return Found(fits[0].inode, self.owner_of(fits[0].inode), fits[0].uid)
            if fits:
                return Found()
        return Found()

    def pid_of(self, inode: int) -> int | None:
        """The pid holding socket ``inode`` now (see ``owner_of``)."""
        owner = self.owner_of(inode)
        return owner.pid if owner else None

    def owner_of(self, inode: int) -> Owner | None:
        """The process holding socket ``inode`` now; a cached owner is used only while it still holds it."""
        owner = self._owner.get(inode)
        if owner is not None:
            if self.holds(owner, inode):
                if owner.start is None:
                    owner = self._with_start(owner, inode)
                if owner is not None:
                    self._remember(inode, owner)
                    return owner
            self._owner.pop(inode, None)
        return self._scan(inode)

    def holds(self, owner: Owner, inode: int) -> bool:
        """True while ``owner`` still has socket ``inode`` open at its fd."""
        try:
            return os.readlink(self.proc_root / str(owner.pid) / "fd" / str(owner.fd)) == f"socket:[{inode}]"
        except OSError:
            return False

    def confirm(self, owner: Owner, inode: int) -> bool:
        """After the caller read ``owner``'s process: True when that read was of the owner, not of a reused pid.

        The owner still holding the socket proves it; so does an unchanged start
        time (a process that closed the socket or is exiting is still itself).
        """
        if self.holds(owner, inode):
            return True
        return owner.start is not None and start_ticks(self.proc_root, owner.pid) == owner.start

    def _with_start(self, owner: Owner, inode: int) -> Owner | None:
        start = start_ticks(self.proc_root, owner.pid)
        # read the link again: a pid reused between the two reads would not hold the socket
        if start is None or not self.holds(owner, inode):
            return None
        return Owner(owner.pid, owner.fd, start)

    def _remember(self, inode: int, owner: Owner) -> None:
        self._owner[inode] = owner
        self._owner.move_to_end(inode)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def _candidates(self) -> Iterator[int]:
        hot = list(reversed(self._hot))
        yield from hot
        seen = set(hot)
        try:
            names = os.listdir(self.proc_root)
        except OSError:
            return
        pids = sorted((int(n) for n in names if n.isdigit()), reverse=True)
        yield from (p for p in pids if p not in seen)

    def _scan(self, inode: int) -> Owner | None:
        self.scans += 1
        for pid in self._candidates():
            fd: int | None = None
            for ino, n in _socket_links(self.proc_root / str(pid) / "fd"):
                # Record every socket seen (checked again when used): listener inventories then cost one scan.
                if ino not in self._owner:
                    self._remember(ino, Owner(pid, n))
                if ino == inode and fd is None:
                    fd = n
            if fd is None:
                continue
            owner = self._with_start(Owner(pid, fd), inode)
            if owner is None:
                continue  # it let go of the socket, or exited, while we looked: another may hold it too
            self._remember(inode, owner)
            self._hot[pid] = None
            self._hot.move_to_end(pid)
            while len(self._hot) > self._hot_max:
                self._hot.popitem(last=False)
            return owner
        self._owner.pop(inode, None)
        return None


ProcessLookup = Callable[[int], tuple[Process, Parent] | None]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _boot_time(proc_root: Path) -> float | None:
    for line in (_read(proc_root / "stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def system_user(uid: int | None) -> str | None:
    """The account name of ``uid`` in the system's account database, or None."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class ProcReader:
    """Minimal pid -> Process/Parent reader of /proc/PID/{stat,status,exe,cmdline,cwd,loginuid}."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        """Read below ``proc_root``."""
        self.proc_root = proc_root
        self._btime = _boot_time(proc_root)
        try:
            self._hz = float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError):
            self._hz = 100.0

    def __call__(self, pid: int) -> tuple[Process, Parent] | None:
        """The process and its parent, or None when the pid is gone."""
        proc = self.process(pid)
        if proc is None:
            return None
        parent = Parent()
        if proc.ppid:
            pp = self.process(proc.ppid)
            if pp is not None:
                parent = Parent(pid=pp.pid, name=pp.name, exe=pp.exe, cmdline=pp.cmdline)
        return proc, parent

    def process(self, pid: int) -> Process | None:
        """The Process fields of ``pid``, or None when it is gone."""
        base = self.proc_root / str(pid)
        stat = _read(base / "stat")
        if stat is None:
            return None
        name, fields = _stat_fields(stat)
        ppid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        start: float | None = None
        if len(fields) > 19 and fields[19].isdigit() and self._btime is not None:
            start = round(self._btime + int(fields[19]) / self._hz, 2)
        uid: int | None = None
        for line in (_read(base / "status") or "").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        raw_cmd = _read(base / "cmdline")
        cmdline = raw_cmd.rstrip("\0").replace("\0", " ") if raw_cmd else None
        lu = (_read(base / "loginuid") or "").strip()
        loginuid = int(lu) if lu.isdigit() and int(lu) != _NO_LOGINUID else None
        exe = _link(base / "exe")
        if exe is not None and exe.endswith(" (deleted)"):
            exe = exe[: -len(" (deleted)")]
        return Process(pid=pid, ppid=ppid, name=name, exe=exe, cmdline=cmdline or None,
                       cwd=_link(base / "cwd"), uid=uid, user=system_user(uid), loginuid=loginuid, start_time=start,
                       unit=read_unit(str(base)) if loginuid is None else None)


def ephemeral_range(proc_root: Path) -> tuple[int, int]:
    """The kernel's local port range for outgoing sockets (defaults when unreadable)."""
    text = _read(proc_root / "sys" / "net" / "ipv4" / "ip_local_port_range") or ""
    parts = text.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return 32768, 60999

