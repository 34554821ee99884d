"""Confinement of the processes that parse untrusted content (the marking and DNS workers).

:func:`confine` is called once, in the worker, before it reads any request:

- the worker dies with its parent (``PR_SET_PDEATHSIG``);
- where permitted (root), it moves into new, empty network and IPC
  namespaces: no interface but a loopback that is down;
- resource limits: address space, CPU seconds, open files, no file writes
  (``RLIMIT_FSIZE`` 0) and no core dumps;
- as root it gives up root for the ``nobody`` account, which clears every
  capability; in every case it then clears the bounding set where it may,
  the ambient, effective, permitted and inheritable sets, and sets
  ``PR_SET_NO_NEW_PRIVS`` so nothing it could run regains any;
- a seccomp filter (x86-64; built here as classic BPF, no library needed)
  refuses new sockets, process creation and execution, tracing, mounts and
  namespaces, kernel modules and keys, ioctl, and any open for writing,
  and every call that creates, removes, renames or changes the mode or
  owner of a file.

The descriptors of the files to read are passed in over the worker's socket
(SCM_RIGHTS), so it needs no access to any path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import resource
import signal
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
CLONE_NEWNET = 0x40000000
CLONE_NEWIPC = 0x08000000
CLONE_THREAD = 0x00010000
_CAP_VERSION_3 = 0x20080522

# Classic BPF, as seccomp reads it.
_LD_ABS_W = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_O_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | 0x400000  # | __O_TMPFILE

# x86-64 system call numbers refused, and the errno they fail with.
_X86_64_DENY: dict[int, int] = {
    **dict.fromkeys((41, 42, 43, 49, 50, 53, 288), errno.EPERM),  # socket connect accept bind listen socketpair accept4
    **dict.fromkeys((57, 58, 59, 322), errno.EPERM),  # fork vfork execve execveat
    435: errno.ENOSYS,  # clone3: libc falls back to clone, whose flags are checked
    437: errno.ENOSYS,  # openat2: its flags cannot be read here
    16: errno.ENOTTY,  # ioctl (TIOCSTI and the rest); isatty() then says "not a tty"
    **dict.fromkeys((101, 310, 311, 62), errno.EPERM),  # ptrace process_vm_readv/writev kill
    **dict.fromkeys((165, 166, 155, 161, 272, 308), errno.EPERM),  # mount umount2 pivot_root chroot unshare setns
    **dict.fromkeys((175, 313, 176, 246, 320, 169), errno.EPERM),  # modules, kexec, reboot
    **dict.fromkeys((321, 298, 250, 248, 249, 323, 425, 426, 427), errno.EPERM),  # bpf perf keys uffd io_uring
    **dict.fromkeys((303, 304, 319), errno.EPERM),  # name_to_handle_at open_by_handle_at memfd_create
    **dict.fromkeys((133, 259, 90, 91, 268, 92, 93, 94, 260), errno.EPERM),  # mknod chmod chown
    **dict.fromkeys((86, 265, 88, 266, 87, 263, 82, 264, 316, 83, 258, 84, 76, 77, 85), errno.EPERM),  # fs changes
    **dict.fromkeys((105, 106, 113, 114, 117, 119, 116, 126), errno.EPERM),  # set*id setgroups capset
    **dict.fromkeys((135, 167, 168, 103, 164, 227, 159, 163, 179), errno.EPERM),  # personality swap syslog clock...
}
_X86_64_CLONE = 56
_X86_64_OPEN = 2  # flags in args[1]
_X86_64_OPENAT = 257  # flags in args[2]


@dataclass(frozen=True, slots=True)
class Confinement:
    """What :func:`confine` managed to apply; each item says why not where it could not."""

    uid: int
    network: str  # "namespace" or why not
    capabilities: str  # "none" or what is left
    no_new_privs: bool
    seccomp: str  # "filter" or why not
    limits: dict[str, int]
    limits_unset: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """Plain sentences for every protection that is missing."""
        out = [f"resource limit not set: {u}" for u in self.limits_unset]
        if self.capabilities != "none":
            out.append(f"capabilities left: {self.capabilities}")
        if not self.no_new_privs:
            out.append("no_new_privs not set")
        if self.seccomp != "filter":
            out.append(f"no seccomp filter: {self.seccomp}")
        if self.network != "namespace":
            out.append(f"no private network namespace ({self.network}); sockets are refused by seccomp")
        return out


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program() -> bytes | None:
    """The filter as raw sock_filter instructions, or None on an architecture it does not know."""
    if platform.machine() != "x86_64":
        return None
    p = [
        _insn(_LD_ABS_W, 0, 0, 4),  # arch
        _insn(_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_ABS_W, 0, 0, 0),  # nr
        _insn(_JGE, 0, 1, _X32_BIT),  # the x32 ABI would dodge the numbers below
        _insn(_RET, 0, 0, _RET_KILL_PROCESS),
    ]
    for nr, err in sorted(_X86_64_DENY.items()):
        p += [_insn(_JEQ, 0, 1, nr), _insn(_RET, 0, 0, _RET_ERRNO | err)]
    # clone: threads only (CLONE_THREAD set); a new process is refused.
    p += [_insn(_JEQ, 0, 4, _X86_64_CLONE), _insn(_LD_ABS_W, 0, 0, 16), _insn(_JSET, 1, 0, CLONE_THREAD),
          _insn(_RET, 0, 0, _RET_ERRNO | errno.EPERM), _insn(_LD_ABS_W, 0, 0, 0)]
    for nr, arg in ((_X86_64_OPEN, 1), (_X86_64_OPENAT, 2)):
        p += [_insn(_JEQ, 0, 4, nr), _insn(_LD_ABS_W, 0, 0, 16 + 8 * arg), _insn(_JSET, 0, 1, _O_WRITING),
              _insn(_RET, 0, 0, _RET_ERRNO | errno.EACCES), _insn(_LD_ABS_W, 0, 0, 0)]
    p.append(_insn(_RET, 0, 0, _RET_ALLOW))
    return b"".join(p)


def _install_seccomp(libc: ctypes.CDLL, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(program) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if os.getuid() == 0 or os.geteuid() == 0:
        try:
            import pwd
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        except (KeyError, ImportError):
            uid = gid = 65534
        # Not permitted where uid 0 may not change its uid (the noroot securebit): then the
        # capability sets below are what confines it.
        with contextlib.suppress(OSError):
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # leaving uid 0 clears the permitted and effective sets
    header = struct.pack("<Ii", _CAP_VERSION_3, 0)
    data = b"\0" * 24  # two {effective, permitted, inheritable} words, all zero
    _check(libc.capset(ctypes.c_char_p(header), ctypes.c_char_p(data)), "capset")


def clear_ambient_capabilities() -> None:
    """Clear the calling thread's ambient capabilities (capabilities are per thread).

    A program started from this thread then gets no capability from the
    service's AmbientCapabilities=; the thread's own effective set is unchanged.
    """
    _libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def spawn_without_capabilities(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    """Start a worker from a thread of its own whose ambient capabilities are cleared first.

    Under systemd the agent holds its capabilities as ambient ones, which a
    program it starts would inherit; a worker must start with none (it could
    not drop them itself where the service's filter refuses capset). The
    worker then calls :func:`confine` before it reads any request.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            clear_ambient_capabilities()
            box["proc"] = subprocess.Popen(argv, **kw)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="worker-spawn")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    proc: subprocess.Popen[bytes] = box["proc"]
    return proc


def _status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status", "rb") as f:  # bytes: no codec to look up once confined
        for line in f:
            key, _, value = line.partition(b":")
            out[key.decode("latin-1")] = value.strip().decode("latin-1")
    return out


def confine(*, memory: int, cpu_seconds: int, files: int = 32) -> Confinement:
    """Apply every confinement this host allows; never raises for one it cannot apply."""
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before PDEATHSIG was set
        os._exit(1)
    try:
        _check(libc.unshare(CLONE_NEWNET | CLONE_NEWIPC), "unshare")
        network = "namespace"
    except OSError as e:
        network = str(e)
    limits = {"RLIMIT_AS": memory, "RLIMIT_CPU": cpu_seconds, "RLIMIT_NOFILE": files, "RLIMIT_FSIZE": 0,
              "RLIMIT_CORE": 0}
    unset = []
    for name, value in list(limits.items()):
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (OSError, ValueError) as e:  # a service's own system call filter may refuse setrlimit
            unset.append(f"{name}: {e}")
            del limits[name]
    with contextlib.suppress(OSError):  # what is left is read back below and reported
        _drop_capabilities(libc)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a change of uid cleared it
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    program = seccomp_program()
    if program is None:
        seccomp = f"no filter for the {platform.machine()} architecture"
    else:
        try:
            _install_seccomp(libc, program)
            seccomp = "filter"
        except OSError as e:
            seccomp = str(e)
    st = _status()
    caps = {k: st.get(k, "?") for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
    left = {k: v for k, v in caps.items() if v.strip("0")}
    return Confinement(
        uid=os.getuid(),
        network=network,
        capabilities="none" if not left else ", ".join(f"{k}={v}" for k, v in left.items()),
        no_new_privs=st.get("NoNewPrivs") == "1",
        seccomp=seccomp if seccomp != "filter" or st.get("Seccomp") == "2" else "not in force",
        limits=limits,
        limits_unset=tuple(unset),
    )
