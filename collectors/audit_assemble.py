"""Audit records of one serial to one DutyWatch event.

The kernel writes the records of one system call (SYSCALL, EXECVE, CWD,
PATH..., SOCKADDR, PROCTITLE) with one serial and closes them with EOE;
user-space records (PAM, sudo, useradd) stand alone. ``Assembler.feed``
takes records in any interleaving and returns the events completed; a
serial left open (its EOE lost) is closed by ``flush`` after ``max_age``
seconds. A record read twice (unicast and multicast while the agent hands
the daemon role to auditd) counts once.

Everything an event says comes from the kernel's records, never from /proc
after the fact: ``process.exe`` is the kernel's exe (``memfd:NAME`` for a
program run from memory), ``process.loginuid`` the auid, and for an exec
``file.path`` is what really ran: the script an interpreter was handed, the
program ``ld.so`` was asked to load, else the exe, with its device and inode.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
from collections import OrderedDict
from collections.abc import Callable

from agent.events import Event, File, Inventory, Media, Net, Parent, Process
from collectors.audit_records import (
    Record,
    argv_bytes,
    device,
    ident,
    keys,
    number,
    parse_record,
    proctitle,
    serial_of,
    sockaddr,
    text,
)
from collectors.audit_users import USER_TYPES, UserRecords
from collectors.procfs import parse_cmdline

SYSCALL, PATH, SOCKADDR, CWD, EXECVE, EOE, PROCTITLE, KERN_MODULE = 1300, 1302, 1306, 1307, 1309, 1320, 1327, 1330
_GROUPED = frozenset({SYSCALL, PATH, SOCKADDR, CWD, EXECVE, PROCTITLE, KERN_MODULE, 1303, 1304, 1318, 1321, 1322, 1323,
                      1331})
# Records every exec brings whose fields an event needs rarely or never (the title only when no EXECVE
# came; file capabilities never): read as a header at first, their fields when asked.
_LAZY = frozenset({PROCTITLE, 1321})
_NET_CALLS = frozenset({"connect", "sendto", "sendmsg", "sendmmsg", "socketcall"})
_MOUNT_CALLS = frozenset({"mount", "umount", "umount2", "move_mount"})
_MODULE_CALLS = frozenset({"init_module", "finit_module", "delete_module"})
_GUARD_CALLS = frozenset({"kill", "tkill", "tgkill", "ptrace", "process_vm_readv", "process_vm_writev"})
# Signal 0 only asks whether the agent lives (monitoring does that); SIGCONT and SIGWINCH do nothing to it.
_HARMLESS_SIGNALS = frozenset({0, 18, 28})
_SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 6: "SIGABRT", 9: "SIGKILL", 10: "SIGUSR1", 12: "SIGUSR2",
                 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 19: "SIGSTOP", 20: "SIGTSTP"}
_INTERPRETERS = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "csh", "tcsh", "perl", "python",
                 "ruby", "php", "node", "nodejs", "lua", "tclsh", "wish", "pwsh", "Rscript", "osascript", "awk", "gawk")
_INLINE = frozenset({"-c", "-e", "-m", "-E", "--command", "--eval"})
_TAKES_VALUE = frozenset({"-W", "-X", "-o", "-O", "--rcfile", "--init-file", "-I", "--library-path", "--preload",
                          "--argv0", "--audit"})
_CMDLINE_MAX = 4096
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared with, never bound
_PARENTS = 8192
_DONE = 65536
_SOCKETS = 65536
_SOCK_TYPE_MASK = 0xF  # socket(2)'s type without SOCK_NONBLOCK and SOCK_CLOEXEC
# IP protocol numbers a socket may name, as net.proto spells them (the sniffer's names: collectors.sniff)
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "icmpv6", 132: "sctp", 136: "udplite"}
# socket(2) type -> the transport of protocol 0 (the family's default for that type)
_DEFAULT_TRANSPORT = {1: "tcp", 2: "udp", 5: "sctp", 6: "dccp"}


def _transport(kind: int, proto: int) -> str:
    """net.proto of an inet socket of type ``kind`` and protocol ``proto`` (a ping socket is icmp, a raw one its
    protocol's name or ``raw``)."""
    if proto and proto != 255:
        return _PROTO_NAMES.get(proto, str(proto))
    return _DEFAULT_TRANSPORT.get(kind, "raw" if kind == 3 else str(kind))

ParentLookup = Callable[[int], Parent | None]
# (pid, kernel exe) -> (whether the process still runs that program, its systemd unit then)
UnitLookup = Callable[[int, str | None], tuple[bool, str | None]]
# pid -> (whether its unit is known without reading /proc, the unit): a parent the agent has read already
ParentUnitLookup = Callable[[int], tuple[bool, str | None]]
# Programs that place the processes they start into a unit or container of their own between fork and exec:
# their children's unit is read, never inherited.
_PLACERS = frozenset({"systemd", "init", "runc", "crun", "youki", "runsc", "conmon", "containerd-shim",
                      "containerd-shim-runc-v1", "containerd-shim-runc-v2", "lxc-start", "cgexec", "systemd-run",
                      "systemd-nspawn", "machinectl", "libvirtd", "virtqemud"})


def _title(records: list[Record]) -> list[str]:
    """The PROCTITLE record's arguments (its fields read only now), or none."""
    for r in records:
        if r.type == PROCTITLE:
            full = parse_record(r.type, r.text)
            return proctitle(full.fields.get("proctitle")) if full is not None else []
    return []


def is_loader(exe: str) -> bool:
    """Whether ``exe`` is the dynamic loader (``ld-linux-x86-64.so.2``, ``ld.so``, ``ld64.so.1``)."""
    base = posixpath.basename(exe)
    return base.startswith(("ld-linux", "ld.so", "ld64.so", "ld-musl"))


def is_interpreter(exe: str) -> bool:
    """Whether ``exe`` runs a script named in its arguments (sh, python3.11, perl5.36, ...)."""
    base = posixpath.basename(exe).rstrip("0123456789.")
    return base in _INTERPRETERS


def clean_exe(exe: str | None) -> str | None:
    """The kernel's exe path, with a program run from a memfd named ``memfd:NAME``."""
    if exe is None:
        return None
    if exe.startswith("/memfd:"):
        return exe[1:].removesuffix(" (deleted)")
    return exe


def _first_operand(args: list[str]) -> str | None:
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in _INLINE:
            return None
        if a in _TAKES_VALUE:
            skip = True
            continue
        if a == "--":
            continue
        if a.startswith("-"):
            continue
        return a
    return None


class Assembler:
    """Groups records by serial and builds events; not locked (one reader thread)."""

    def __init__(self, *, syscall_names: Callable[[str, int], str | None], parents: ParentLookup | None = None,
                 units: UnitLookup | None = None, parent_units: ParentUnitLookup | None = None,
                 asset_prefixes: tuple[str, ...] = (), agent_pid: int = 0,
                 max_age: float = 2.0, collector: str = "audit") -> None:
        self._names = syscall_names
        self._parents = parents
        self._units = units
        self._parent_units = parent_units
        self.asset_prefixes = asset_prefixes
        self.agent_pid = agent_pid
        self._max_age = max_age
        self._collector = collector
        # serial -> (first seen, record types, record texts), until its EOE
        self._open: OrderedDict[int, tuple[float, list[int], list[bytes]]] = OrderedDict()
        self._done: OrderedDict[int, None] = OrderedDict()
        self._seen_exec: OrderedDict[int, Parent] = OrderedDict()
        self._exec_units: OrderedDict[int, tuple[str | None, str | None]] = OrderedDict()  # pid -> (exe, unit)
        self._sockets: OrderedDict[tuple[int, int], str] = OrderedDict()  # (pid, fd) -> transport of an inet socket
        self._users = UserRecords(collector)
        self.duplicates = 0
        self.malformed = 0
        self.incomplete = 0

    def feed(self, rtype: int, payload: bytes, now: float) -> list[Event]:
        """Events completed by this record (usually none or one)."""
        if rtype == EOE or rtype in _GROUPED:
            # Only the serial now: a record's fields are read when its call is assembled, and only the
            # records the event needs (an exec's PROCTITLE and BPRM_FCAPS usually never).
            serial = serial_of(payload)
            if serial is None:
                self.malformed += 1
                return []
            if serial in self._done:
                self.duplicates += 1
                return []
            if rtype == EOE:
                return self._close(serial)
            entry = self._open.get(serial)
            if entry is None:
                self._open[serial] = (now, [rtype], [payload])
            elif payload in entry[2]:
                self.duplicates += 1
            else:
                entry[1].append(rtype)
                entry[2].append(payload)
            return []
        if rtype in USER_TYPES:
            rec = parse_record(rtype, payload)
            if rec is None:
                self.malformed += 1
                return []
            if self._mark_done(rec.serial):
                self.duplicates += 1
                return []
            ev = self._users.event(rec)
            return [ev] if ev is not None else []
        return []

    def next_due(self) -> float | None:
        """When (monotonic, as ``flush`` is given) the oldest open serial must be closed; None when none is open."""
        for first, _, _ in self._open.values():
            return first + self._max_age
        return None

    def flush(self, now: float, everything: bool = False) -> list[Event]:
        """Close serials whose EOE never came (older than ``max_age``, or all)."""
        out: list[Event] = []
        while self._open:
            serial, (first, _, _) = next(iter(self._open.items()))
            if not everything and now - first < self._max_age:
                break
            self.incomplete += 1
            out += self._close(serial)
        return out

    def _mark_done(self, serial: int) -> bool:
        if serial in self._done:
            return True
        self._done[serial] = None
        if len(self._done) > _DONE:
            self._done.popitem(last=False)
        return False

    def _close(self, serial: int) -> list[Event]:
        entry = self._open.pop(serial, None)
        self._mark_done(serial)
        if entry is None:
            return []
        types, texts = entry[1], entry[2]
        sc: Record | None = None
        if SYSCALL in types:
            # The call first: a failed exec (a shell or execvp trying each PATH entry: most execs on a busy
            # host) or a socket is done with without reading its other records.
            sc = parse_record(SYSCALL, texts[types.index(SYSCALL)])
            if sc is None:
                self.malformed += 1
                return []
            f = sc.fields
            call = self._names(f.get("arch", ""), number(f.get("syscall")) or -1)
            if call in ("execve", "execveat") and f.get("success") == "no":
                return []
            if call == "socket":
                self._socket(f)
                return []
        records = []
        for rtype, payload in zip(types, texts, strict=True):
            # A lazy record's text is kept; its fields (and time) are read only if asked for.
            if rtype == SYSCALL and sc is not None:
                rec: Record | None = sc
            elif rtype in _LAZY:
                rec = Record(rtype, 0.0, serial, {}, payload)
            else:
                rec = parse_record(rtype, payload)
            if rec is None:
                self.malformed += 1
            else:
                records.append(rec)
        ev = self.build(records)
        return [ev] if ev is not None else []

    # -- building ------------------------------------------------------------
    def build(self, records: list[Record]) -> Event | None:
        """The event of one system call's records, or None if it is none we report."""
        sc = next((r for r in records if r.type == SYSCALL), None)
        if sc is None:
            return None
        f = sc.fields
        call = self._names(f.get("arch", ""), number(f.get("syscall")) or -1) or ""
        execve = [r for r in records if r.type == EXECVE]
        paths = sorted((r for r in records if r.type == PATH), key=lambda r: number(r.fields.get("item")) or 0)
        cwd = next((text(r.fields.get("cwd")) for r in records if r.type == CWD), None)
        is_exec = bool(execve) or call in ("execve", "execveat")
        if is_exec and f.get("success") == "no":
            return None
        ppid = number(f.get("ppid"))
        parent = self._parent(ppid)
        process = self._process(f, cwd, execve, records, ppid, parent, is_exec)
        if is_exec:
            return self._exec(sc, process, paths, parent)
        if call in _NET_CALLS:
            addr = next((r for r in records if r.type == SOCKADDR), None)
            return self._net(sc, call, process, parent, addr)
        if call in _GUARD_CALLS:
            return self._at_agent(sc, call, process, parent)
        if call in _MOUNT_CALLS:
            return self._mount(sc, call, process, parent, paths, records)
        if call in _MODULE_CALLS:
            return self._module(sc, call, process, parent, records)
        if any(k.startswith("dutywatch-file") for k in keys(f.get("key"))) or self._covers(paths, cwd):
            return self._file(sc, call, process, parent, paths, cwd)
        return None

    def _process(self, f: dict[str, str], cwd: str | None, execve: list[Record], records: list[Record],
                 ppid: int | None, parent: Parent, is_exec: bool) -> Process:
        cmd: str | None = None
        if len(execve) == 1:
            raw = b"\0".join(argv_bytes(execve[0].fields))
        elif execve:
            merged: dict[str, str] = {}
            for r in execve:
                for k, v in r.fields.items():
                    merged.setdefault(k, v)
            raw = b"\0".join(argv_bytes(merged))
        else:
            raw = b""
        if raw:
            raw += b"\0"
            # Cut as the process collector cuts /proc's: a long line ends with its full length and hash.
            whole = (len(raw), hashlib.sha256(raw).hexdigest()) if len(raw) > _CMDLINE_MAX else None
            cmd = parse_cmdline(raw, _CMDLINE_MAX, whole)
        pid = number(f.get("pid"))
        if cmd is None:
            # PROCTITLE can be stale (the kernel caches it per task across an exec): the
            # arguments this pid last exec'd with are the better word, when known.
            known = self._seen_exec.get(pid if pid is not None else -1)
            cmd = known.cmdline if known is not None else (" ".join(_title(records)) or None)
        exe, auid = clean_exe(text(f.get("exe"))), ident(f.get("auid"))
        unit = self._unit(pid, exe, ppid, parent, is_exec) if auid is None and pid is not None else None
        return Process(pid=pid, ppid=ppid, name=text(f.get("comm")), exe=exe, cmdline=cmd,
                       cwd=cwd, uid=ident(f.get("uid")), loginuid=auid, unit=unit)

    def _unit(self, pid: int, exe: str | None, ppid: int | None, parent: Parent, is_exec: bool) -> str | None:
        """The systemd unit of a process with no login identity (a daemon); the records carry no cgroup.

        A live process's unit is read from /proc (ms after the call, while it still runs the same program):
        any program may move the child it forks into another cgroup before the exec, so a parent's unit is
        never assumed for a process that can still be asked. A process gone by then ran its first exec in the
        unit its parent had, unless its parent places the processes it starts (the service manager, a
        container runtime); a later call of a process seen exec'ing is in the unit it had then.
        """
        if self._units is None:
            return None
        if not is_exec:
            found = self._exec_units.get(pid)
            if found is not None and found[0] == exe:
                return found[1]
        read, unit = self._units(pid, exe)
        if read or not is_exec:
            return unit
        if pid not in self._seen_exec and ppid is not None and ppid > 1 and parent.exe is not None \
                and posixpath.basename(parent.exe) not in _PLACERS:
            found = self._exec_units.get(ppid)
            if found is not None and found[0] == parent.exe:
                return found[1]
            if self._parent_units is not None:
                known, inherited = self._parent_units(ppid)
                if known:
                    return inherited
        return None

    def _parent(self, ppid: int | None) -> Parent:
        if ppid is None:
            return Parent()
        known = self._seen_exec.get(ppid)
        if known is not None:
            return known
        if self._parents is not None:
            found = self._parents(ppid)
            if found is not None:
                return found
        return Parent(pid=ppid)

    def _exec(self, sc: Record, p: Process, paths: list[Record], parent: Parent) -> Event:
        exe = p.exe or ""
        args = (p.cmdline or "").split(" ") if p.cmdline else []
        program: str | None = exe or None
        target = paths[0] if paths else None
        named = text(target.fields.get("name")) if target is not None else None
        if exe and (is_interpreter(exe) or is_loader(exe)):
            second = text(paths[1].fields.get("name")) if len(paths) > 1 else None
            if named and second and not is_loader(second) and not is_loader(named):
                program = named  # a script run by its #! line: the script, then its interpreter
            else:
                operand = _first_operand(args)
                program = operand
                target = None
        if program and not program.startswith(("/", "memfd:")) and p.cwd:
            program = posixpath.normpath(posixpath.join(p.cwd, program))
        dev = device(target.fields.get("dev")) if target is not None else None
        inode = number(target.fields.get("inode")) if target is not None else None
        if p.pid is not None:
            self._seen_exec[p.pid] = Parent(pid=p.pid, name=p.name, exe=p.exe, cmdline=p.cmdline)
            if len(self._seen_exec) > _PARENTS:
                self._seen_exec.popitem(last=False)
            if p.loginuid is None:
                self._exec_units[p.pid] = (p.exe, p.unit)
                if len(self._exec_units) > _PARENTS:
                    self._exec_units.popitem(last=False)
        return Event("process.exec", sc.time, self._collector, process=p, parent=parent,
                     file=File(path=program, device=dev, inode=inode))

    def _net(self, sc: Record, call: str, p: Process, parent: Parent, addr: Record | None) -> Event | None:
        if addr is None or p.pid == self.agent_pid:
            return None
        fam, ip, port = sockaddr(addr.fields.get("saddr"))
        if fam not in ("inet", "inet6") or ip is None:
            return None
        if call == "connect" and ip in _UNSPECIFIED:
            return None  # AF_UNSPEC-style disconnect of a datagram socket
        # The kernel's record has no socket type: the transport the process asked for when it made the descriptor
        # (see _socket); a descriptor made before the rules, inherited or passed from another process is taken
        # for TCP when connected and UDP when sent to (socketcall's descriptor is in the process's memory).
        fd = number(sc.fields.get("a0"), 16) if call != "socketcall" else None
        proto = self._sockets.get((p.pid, fd)) if p.pid is not None and fd is not None else None
        if proto is None:
            proto = "tcp" if call == "connect" else "udp"
        return Event("net.connect", sc.time, self._collector, process=p, parent=parent,
                     net=Net(proto=proto, direction="out", remote_ip=ip, remote_port=port))

    def _socket(self, f: dict[str, str]) -> None:
        """Remember the transport of an inet socket a process made, by (pid, descriptor), for its connect."""
        pid, fd = number(f.get("pid")), number(f.get("exit"))
        kind, proto = number(f.get("a1"), 16), number(f.get("a2"), 16)
        if pid is None or fd is None or fd < 0 or kind is None:
            return
        self._sockets[(pid, fd)] = _transport(kind & _SOCK_TYPE_MASK, proto or 0)
        if len(self._sockets) > _SOCKETS:
            self._sockets.popitem(last=False)

    def _at_agent(self, sc: Record, call: str, p: Process, parent: Parent) -> Event | None:
        """A signal, ptrace or memory access aimed at the agent, by someone else (an ``agent.tamper`` event)."""
        f = sc.fields
        a0, a1 = number(f.get("a0"), 16), number(f.get("a1"), 16)
        target = a1 if call == "ptrace" else a0
        if not self.agent_pid or target != self.agent_pid or p.pid == self.agent_pid:
            return None
        ok = "" if f.get("success") != "no" else " (refused)"
        if call in ("kill", "tkill", "tgkill"):
            sig = number(f.get("a2"), 16) if call == "tgkill" else a1
            if sig in _HARMLESS_SIGNALS:
                return None
            what = f"signal {sig} ({_SIGNAL_NAMES.get(sig or 0, 'SIG?')}) sent to the agent"
        elif call == "ptrace":
            what = f"ptrace request {a0} on the agent"
        else:
            what = f"{call} of the agent's memory"
        who = f"{p.exe or p.name or '?'} (pid {p.pid}, uid {p.uid}, loginuid {p.loginuid})"
        return Event("agent.tamper", sc.time, self._collector, process=p, parent=parent,
                     detail=f"{what} by {who}{ok}")

    def _mount(self, sc: Record, call: str, p: Process, parent: Parent, paths: list[Record],
               records: list[Record]) -> Event | None:
        if sc.fields.get("success") == "no":
            return None
        names = [text(r.fields.get("name")) for r in paths]
        names = [n for n in names if n]
        if call in ("umount", "umount2"):
            mount = names[0] if names else None
            return Event("media.unmount", sc.time, self._collector, process=p, parent=parent,
                         media=Media(mount=self._abs(mount, p.cwd)))
        # mount(2) looks the target up first, then the source device (a block device's path).
        mount = names[0] if names else None
        device = names[1] if call == "mount" and len(names) > 1 else None
        return Event("media.mount", sc.time, self._collector, process=p, parent=parent,
                     media=Media(device=device, mount=self._abs(mount, p.cwd)))

    def _module(self, sc: Record, call: str, p: Process, parent: Parent, records: list[Record]) -> Event | None:
        """A kernel module loaded or removed (``inventory.module`` added/removed), or a load the kernel refused.

        The module's name is the kernel's (KERN_MODULE record); a load refused before the kernel read
        the name (no support, no capability, a rejected signature) is ``refused`` with no name.
        """
        named = next((r for r in records if r.type == KERN_MODULE), None)
        name = text(named.fields.get("name")) if named is not None else None
        detail = None
        if sc.fields.get("success") != "no":
            change = "removed" if call == "delete_module" else "added"
        else:
            code = -(number(sc.fields.get("exit")) or 0)
            if call == "delete_module" or code == errno.EEXIST:
                return None  # nothing changed: a module in use stays, one already loaded was loaded before
            change = "refused"
            detail = f"{call} refused by the kernel: {errno.errorcode.get(code, str(code))} ({os.strerror(code)})"
        return Event("inventory.module", sc.time, self._collector, process=p, parent=parent, detail=detail,
                     inventory=Inventory(name=name, change=change))

    def _file(self, sc: Record, call: str, p: Process, parent: Parent, paths: list[Record],
              cwd: str | None) -> Event | None:
        ok = sc.fields.get("success") != "no"
        if not ok:
            return None
        chosen = None
        for r in paths:
            name = self._abs(text(r.fields.get("name")), cwd)
            if name is None or r.fields.get("nametype") == "PARENT":
                continue
            chosen = (name, r)
            if not self.asset_prefixes or name.startswith(self.asset_prefixes):
                break
        if chosen is None:
            return None
        path, rec = chosen
        kind = _FILE_KINDS.get(call) or _open_kind(call, sc.fields, rec)
        dest = None
        if kind == "file.rename":
            # rename(2)'s records: both parents, the source, then the destination (the file it replaced, or
            # the new name): the move is from the first name to the other, whichever of them is watched.
            names = [n for r in paths if r.fields.get("nametype") != "PARENT"
                     and (n := self._abs(text(r.fields.get("name")), cwd)) is not None]
            if names:
                path = names[0]
                rec = next(r for r in paths if self._abs(text(r.fields.get("name")), cwd) == path)
                dest = next((n for n in names[1:] if n != path), None)
        return Event(kind, sc.time, self._collector, process=p, parent=parent,
                     file=File(path=path, dest_path=dest, device=device(rec.fields.get("dev")),
                               inode=number(rec.fields.get("inode"))))

    def _covers(self, paths: list[Record], cwd: str | None) -> bool:
        if not self.asset_prefixes:
            return False
        for r in paths:
            name = self._abs(text(r.fields.get("name")), cwd)
            if name is not None and name.startswith(self.asset_prefixes):
                return True
        return False

    @staticmethod
    def _abs(name: str | None, cwd: str | None) -> str | None:
        if name is None:
            return None
        if not name.startswith("/") and cwd:
            return posixpath.normpath(posixpath.join(cwd, name))
        return name


_FILE_KINDS = {
    "unlink": "file.delete", "unlinkat": "file.delete", "rmdir": "file.delete",
    "rename": "file.rename", "renameat": "file.rename", "renameat2": "file.rename",
    "mkdir": "file.create", "mkdirat": "file.create", "creat": "file.create", "link": "file.create",
    "linkat": "file.create", "symlink": "file.create", "symlinkat": "file.create", "mknod": "file.create",
    "truncate": "file.write", "ftruncate": "file.write", "chmod": "file.write", "fchmod": "file.write",
    "fchmodat": "file.write", "chown": "file.write", "fchown": "file.write", "fchownat": "file.write",
    "lchown": "file.write", "setxattr": "file.write", "lsetxattr": "file.write", "utimensat": "file.write",
}
_O_ACCMODE, _O_WRONLY, _O_RDWR = 0o3, 0o1, 0o2


def _open_kind(call: str, f: dict[str, str], path: Record) -> str:
    """open/openat/creat: a create if the PATH says the name was made, a write if opened for writing."""
    if path.fields.get("nametype") == "CREATE":
        return "file.create"
    arg = {"open": "a1", "openat": "a2"}.get(call)
    flags = number(f.get(arg), 16) if arg else None
    if flags is not None and flags & _O_ACCMODE in (_O_WRONLY, _O_RDWR):
        return "file.write"
    return "file.open"
