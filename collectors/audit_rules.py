"""The agent's own kernel audit rules, as ``struct audit_rule_data``, derived from the registry and config.

Every rule carries a filter key starting with ``dutywatch`` so the agent can
find and remove exactly its own rules (and leftovers of a killed run) without
touching anyone else's. The set is bounded by construction:

- ``exec``: execve/execveat (both ABIs: a 32-bit program is no way around it);
- ``net``: connect, and sendto/sendmsg/sendmmsg *with a destination address*
  of family inet or inet6 (a datagram toward another zone is attributed; a
  TCP ``send`` carries no address and matches nothing; AF_UNIX and netlink
  traffic, the bulk of a host's socket calls, never match); and every inet or
  inet6 ``socket`` that succeeded (key ``dutywatch-sock``, no event of its
  own): a connect's record has no socket type, so the transport of a connect
  or send is the one its process asked for when it made that descriptor;
- ``file``: a read/write/attribute watch on every registry asset path (a
  directory tree for ``dir/**``);
- ``mount``: mount, umount, umount2, move_mount;
- ``agent``: kill/tkill/tgkill/ptrace/process_vm_* aimed at the agent's pid;
- ``module``: init_module, finit_module, delete_module.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

KEY_PREFIX = "dutywatch"

AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64

AUDIT_PID = 0
AUDIT_ARCH = 11
AUDIT_EXIT = 103
AUDIT_SUCCESS = 104
AUDIT_WATCH = 105
AUDIT_PERM = 106
AUDIT_DIR = 107
AUDIT_SADDR_FAM = 113
AUDIT_ARG0 = 200
AUDIT_ARG1 = 201
AUDIT_FILTERKEY = 210
_STRING_FIELDS = frozenset({13, 14, 15, 16, 17, 19, 20, 21, 22, 23, AUDIT_WATCH, AUDIT_DIR, 112, AUDIT_FILTERKEY})

AUDIT_EQUAL = 0x40000000
AUDIT_NOT_EQUAL = 0x30000000

AUDIT_PERM_WRITE = 2
AUDIT_PERM_READ = 4
AUDIT_PERM_ATTR = 8

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7

AF_INET, AF_INET6 = 2, 10

# System call numbers per ABI (the names auditctl uses); a name missing on an ABI is skipped there.
SYSCALLS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {
        "execve": 59, "execveat": 322, "socket": 41, "connect": 42, "sendto": 44, "sendmsg": 46, "sendmmsg": 307,
        "mount": 165, "umount2": 166, "move_mount": 429, "kill": 62, "tkill": 200, "tgkill": 234,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "init_module": 175,
        "finit_module": 313, "delete_module": 176,
    },
    AUDIT_ARCH_I386: {
        "execve": 11, "execveat": 358, "socket": 359, "connect": 362, "sendto": 369, "sendmsg": 370, "sendmmsg": 345,
        "socketcall": 102, "mount": 21, "umount": 22, "umount2": 52, "move_mount": 429, "kill": 37,
        "tkill": 238, "tgkill": 270, "ptrace": 26, "process_vm_readv": 347, "process_vm_writev": 348,
        "init_module": 128, "finit_module": 350, "delete_module": 129,
    },
    AUDIT_ARCH_AARCH64: {
        "execve": 221, "execveat": 281, "socket": 198, "connect": 203, "sendto": 206, "sendmsg": 211, "sendmmsg": 269,
        "mount": 40, "umount2": 39, "move_mount": 429, "kill": 129, "tkill": 130, "tgkill": 131,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "init_module": 105,
        "finit_module": 273, "delete_module": 106,
    },
}
_NATIVE = {"x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386), "aarch64": (AUDIT_ARCH_AARCH64,)}
_SOCKETCALL_CONNECT, _SOCKETCALL_SENDTO, _SOCKETCALL_SENDMSG, _SOCKETCALL_SENDMMSG = 3, 11, 16, 20

_HEAD = struct.Struct(f"=III{AUDIT_BITMASK_SIZE}I")
_FIELDS = struct.Struct(f"={AUDIT_MAX_FIELDS}I")


@dataclass(frozen=True, slots=True)
class Rule:
    """One exit-filter audit rule: system calls (or all, for a watch), field conditions, strings."""

    key: str
    syscalls: tuple[int, ...] = ()  # empty: every system call (watches)
    fields: tuple[tuple[int, int, int], ...] = ()  # (field, operator, value)
    strings: tuple[tuple[int, str], ...] = ()  # (field, text): a watch path, then the key is added last
    label: str = ""  # what the rule is for, in the log

    def pack(self) -> bytes:
        """The rule as the kernel's ``struct audit_rule_data``."""
        mask = [0] * AUDIT_BITMASK_SIZE
        if self.syscalls:
            for n in self.syscalls:
                mask[n // 32] |= 1 << (n % 32)
        else:
            mask = [0xFFFFFFFF] * AUDIT_BITMASK_SIZE
        fields: list[int] = []
        values: list[int] = []
        flags: list[int] = []
        buf = b""
        for fld, op, value in self.fields:
            fields.append(fld)
            values.append(value & 0xFFFFFFFF)
            flags.append(op)
        for fld, text in (*self.strings, (AUDIT_FILTERKEY, self.key)):
            raw = text.encode()
            fields.append(fld)
            values.append(len(raw))
            flags.append(AUDIT_EQUAL)
            buf += raw
        if len(fields) > AUDIT_MAX_FIELDS:
            raise ValueError("too many fields in an audit rule")
        pad = [0] * (AUDIT_MAX_FIELDS - len(fields))
        return (_HEAD.pack(AUDIT_FILTER_EXIT, AUDIT_ALWAYS, len(fields), *mask)
                + _FIELDS.pack(*fields, *pad) + _FIELDS.pack(*values, *pad) + _FIELDS.pack(*flags, *pad)
                + struct.pack("=I", len(buf)) + buf)


def rule_key(payload: bytes) -> str | None:
    """The filter key of a rule listed by the kernel (None if it has none or is malformed)."""
    try:
        count = struct.unpack_from("=I", payload, 8)[0]
        off = _HEAD.size
        fields = _FIELDS.unpack_from(payload, off)
        values = _FIELDS.unpack_from(payload, off + _FIELDS.size)
        buflen = struct.unpack_from("=I", payload, off + 3 * _FIELDS.size)[0]
        buf = payload[off + 3 * _FIELDS.size + 4:][:buflen]
    except struct.error:
        return None
    pos = 0
    key = None
    for i in range(min(count, AUDIT_MAX_FIELDS)):
        if fields[i] in _STRING_FIELDS:
            text = buf[pos:pos + values[i]]
            pos += values[i]
            if fields[i] == AUDIT_FILTERKEY:
                key = text.decode("utf-8", "replace")
    return key


def canonical(payload: bytes) -> bytes:
    """A rule without its system-call mask: the kernel lists an "all calls" mask clipped to the calls it
    has, so a watch never reads back as sent. The agent's rules differ in fields, key or strings anyway."""
    return payload[:12] + payload[_HEAD.size:]


def is_own(payload: bytes) -> bool:
    """Whether a listed rule is one of the agent's (its key starts with ``dutywatch``)."""
    key = rule_key(payload)
    return key is not None and key.split("\x01")[0].startswith(KEY_PREFIX)


def native_arches(machine: str | None = None) -> tuple[int, ...]:
    """The audit ABIs of this machine (x86_64 also runs i386 programs)."""
    return _NATIVE.get(machine or os.uname().machine, (AUDIT_ARCH_X86_64,))


def _syscall_rules(arch: int, key: str, names: Iterable[str], extra: tuple[tuple[int, int, int], ...] = (),
                   label: str = "") -> list[Rule]:
    table = SYSCALLS.get(arch, {})
    numbers = tuple(table[n] for n in names if n in table)
    if not numbers:
        return []
    return [Rule(key, numbers, ((AUDIT_ARCH, AUDIT_EQUAL, arch), *extra), label=label)]


def build_rules(asset_paths: Iterable[str], agent_pid: int, *, exec_: bool = True, net: bool = True,
                mounts: bool = True, guard: bool = True, modules: bool = True,
                arches: tuple[int, ...] | None = None, changes_only: Iterable[str] = ()) -> list[Rule]:
    """The rule set for this registry and config, in the order it is added.

    Every rule names ``agent_pid`` (the agent's own calls are not audited), which also keeps
    two agents' rules apart and tells a killed run's leftovers from a live one's.
    """
    rules: list[Rule] = []
    not_me = (AUDIT_PID, AUDIT_NOT_EQUAL, agent_pid)
    for arch in arches or native_arches():
        if exec_:
            rules += _syscall_rules(arch, f"{KEY_PREFIX}-exec", ("execve", "execveat"), (not_me,), label="exec")
        if net:
            for fam in (AF_INET, AF_INET6):
                fam_is = (AUDIT_SADDR_FAM, AUDIT_EQUAL, fam)
                rules += _syscall_rules(arch, f"{KEY_PREFIX}-net", ("connect", "sendto", "sendmsg", "sendmmsg"),
                                        (not_me, fam_is), label="net")
                rules += _syscall_rules(arch, f"{KEY_PREFIX}-sock", ("socket",),
                                        (not_me, (AUDIT_ARG0, AUDIT_EQUAL, fam), (AUDIT_SUCCESS, AUDIT_EQUAL, 1)),
                                        label="socket")
                if "socketcall" in SYSCALLS.get(arch, {}):
                    for call in (_SOCKETCALL_CONNECT, _SOCKETCALL_SENDTO, _SOCKETCALL_SENDMSG, _SOCKETCALL_SENDMMSG):
                        rules += _syscall_rules(arch, f"{KEY_PREFIX}-net", ("socketcall",),
                                                (not_me, fam_is, (AUDIT_ARG0, AUDIT_EQUAL, call)), label="net")
        if mounts:
            rules += _syscall_rules(arch, f"{KEY_PREFIX}-mount", ("mount", "umount", "umount2", "move_mount"),
                                    (not_me,), label="mount")
        if guard:
            rules += _syscall_rules(arch, f"{KEY_PREFIX}-agent", ("kill", "tkill", "tgkill", "process_vm_readv",
                                                                   "process_vm_writev"),
                                    ((AUDIT_ARG0, AUDIT_EQUAL, agent_pid),), label="agent")
            rules += _syscall_rules(arch, f"{KEY_PREFIX}-agent", ("ptrace",),
                                    ((AUDIT_ARG1, AUDIT_EQUAL, agent_pid),), label="agent")
        if modules:
            rules += _syscall_rules(arch, f"{KEY_PREFIX}-module", ("init_module", "finit_module", "delete_module"),
                                    (not_me,), label="module")
    rules += watch_rules(asset_paths, agent_pid, changes_only)
    return rules


def watch_rules(asset_paths: Iterable[str], agent_pid: int, changes_only: Iterable[str] = ()) -> list[Rule]:
    """A read/write/attribute watch per asset path: the directory tree under ``dir/``, else the file.

    ``changes_only`` paths (the agent's own files, read by every ``dutywatch`` command) are watched
    for writes and attribute changes only, unless they are assets too.
    """
    full = AUDIT_PERM_READ | AUDIT_PERM_WRITE | AUDIT_PERM_ATTR
    out: list[Rule] = []
    seen: set[str] = set()
    for raw, perm in [*((a, full) for a in asset_paths), *((c, AUDIT_PERM_WRITE | AUDIT_PERM_ATTR)
                                                           for c in changes_only)]:
        path = raw.rstrip("/") or "/"
        if not raw.startswith("/") or path in seen:
            continue
        seen.add(path)
        kind = AUDIT_DIR if raw.endswith("/") or os.path.isdir(path) else AUDIT_WATCH
        conds = ((AUDIT_PID, AUDIT_NOT_EQUAL, agent_pid), (AUDIT_PERM, AUDIT_EQUAL, perm))
        out.append(Rule(f"{KEY_PREFIX}-file", (), conds, ((kind, path),), label=path))
    return out


# Names of the calls whose records become events (file operations under a watch, besides the rules' own).
_FILE_CALLS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {
        "open": 2, "creat": 85, "openat": 257, "openat2": 437, "truncate": 76, "ftruncate": 77, "rename": 82,
        "mkdir": 83, "rmdir": 84, "link": 86, "unlink": 87, "symlink": 88, "chmod": 90, "fchmod": 91,
        "chown": 92, "fchown": 93, "lchown": 94, "mknod": 133, "setxattr": 188, "lsetxattr": 189,
        "fsetxattr": 190, "mkdirat": 258, "mknodat": 259, "fchownat": 260, "unlinkat": 263, "renameat": 264,
        "linkat": 265, "symlinkat": 266, "fchmodat": 268, "utimensat": 280, "renameat2": 316,
        "open_tree": 428, "fsmount": 432,
    },
    AUDIT_ARCH_I386: {
        "open": 5, "creat": 8, "unlink": 10, "chmod": 15, "rename": 38, "mkdir": 39, "rmdir": 40,
        "truncate": 92, "ftruncate": 93, "openat": 295, "mkdirat": 296, "fchownat": 298, "unlinkat": 301,
        "renameat": 302, "linkat": 303, "symlinkat": 304, "fchmodat": 306, "utimensat": 320, "renameat2": 353,
        "openat2": 437,
    },
    AUDIT_ARCH_AARCH64: {
        "openat": 56, "openat2": 437, "mkdirat": 34, "unlinkat": 35, "symlinkat": 36, "linkat": 37,
        "renameat": 38, "truncate": 45, "ftruncate": 46, "fchmodat": 53, "fchownat": 54, "fchmod": 52,
        "fchown": 55, "utimensat": 88, "renameat2": 276, "setxattr": 5, "lsetxattr": 6,
    },
}
_NAMES: dict[str, dict[int, str]] = {
    f"{arch:x}": {nr: name for name, nr in (*SYSCALLS.get(arch, {}).items(), *_FILE_CALLS.get(arch, {}).items())}
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64)
}


def syscall_name(arch: str, nr: int) -> str | None:
    """The name of system call ``nr`` of a SYSCALL record's ``arch`` (hex), if it is one we know."""
    table = _NAMES.get(arch.lower())
    return table.get(nr) if table is not None else None
