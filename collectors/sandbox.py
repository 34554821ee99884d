"""Confinement of the processes that parse untrusted content (the marking and DNS workers).

:func:`confine` is called once, in the worker, before it reads any request:

- the worker dies with its parent (``PR_SET_PDEATHSIG``);
- where permitted (root), it moves into new, empty network and IPC
  namespaces: no interface but a loopback that is down;
- resource limits: address space, CPU seconds, open files, no file writes
  (``RLIMIT_FSIZE`` 0) and no core dumps; where a service's filter refuses
  them, the worker is made not dumpable and first in line for the OOM
  killer, and the parent stops it past its memory bound (:class:`WorkerProcess`);
- as root it gives up root for the ``nobody`` account, which clears every
  capability; in every case it then clears the bounding set where it may,
  the ambient, effective, permitted and inheritable sets, and sets
  ``PR_SET_NO_NEW_PRIVS`` so nothing it could run regains any;
- a seccomp filter (built here as classic BPF, no library needed; x86-64
  and aarch64, each with its own system call numbers and AUDIT_ARCH, other
  ABIs killed) refuses new sockets, process creation and execution, tracing,
  mounts and namespaces, kernel modules and keys, ioctl, and any open for
  writing, and every call that creates, removes, renames or changes the mode
  or owner of a file. On any other architecture :func:`confine` raises
  :class:`UnsupportedArchitecture` and the worker refuses to start (fail
  closed: the file is reported unscanned, the DNS name unparsed).

The descriptors of the files to read are passed in over the worker's socket
(SCM_RIGHTS), so it needs no access to any path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import platform
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
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
_X32_BIT = 0x40000000
_O_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | 0x400000  # | __O_TMPFILE
# Offsets in struct seccomp_data: nr, arch, instruction pointer, then six 64-bit arguments (the low
# word of each comes first on the little-endian machines below).
_DATA_NR = 0
_DATA_ARCH = 4
_DATA_ARGS = 16

# System calls refused, by name, and the errno they fail with. A name an architecture lacks (x86-64's
# open, fork, chmod... have only their *at/clone forms on aarch64) is simply absent from its table.
DENY: dict[str, int] = {
    **dict.fromkeys(("socket", "connect", "accept", "bind", "listen", "socketpair", "accept4"), errno.EPERM),
    **dict.fromkeys(("fork", "vfork", "execve", "execveat"), errno.EPERM),
    "clone3": errno.ENOSYS,  # libc falls back to clone, whose flags are checked
    "openat2": errno.ENOSYS,  # its flags lie in a structure the filter cannot read
    "ioctl": errno.ENOTTY,  # TIOCSTI and the rest; isatty() then says "not a tty"
    **dict.fromkeys(("ptrace", "process_vm_readv", "process_vm_writev", "kill"), errno.EPERM),
    **dict.fromkeys(("mount", "umount2", "pivot_root", "chroot", "unshare", "setns"), errno.EPERM),
    **dict.fromkeys(("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot"),
                    errno.EPERM),
    **dict.fromkeys(("bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
                     "io_uring_enter", "io_uring_register"), errno.EPERM),
    **dict.fromkeys(("name_to_handle_at", "open_by_handle_at", "memfd_create"), errno.EPERM),
    **dict.fromkeys(("mknod", "mknodat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
                     "fchownat"), errno.EPERM),
    **dict.fromkeys(("link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat",
                     "renameat2", "mkdir", "mkdirat", "rmdir", "truncate", "ftruncate", "creat"), errno.EPERM),
    **dict.fromkeys(("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "capset"),
                    errno.EPERM),
    **dict.fromkeys(("personality", "swapon", "swapoff", "syslog", "settimeofday", "clock_settime", "adjtimex",
                     "acct", "quotactl"), errno.EPERM),
}
# Opens whose flags the filter reads (name -> argument index) and the clone that must make a thread.
OPENS = {"open": 1, "openat": 2}
CLONE = "clone"


@dataclass(frozen=True, slots=True)
class Arch:
    """One architecture's view of the filter: its AUDIT_ARCH value and system call numbers."""

    audit: int  # AUDIT_ARCH_*: a call made through another ABI (32-bit compat) is killed
    numbers: dict[str, int]
    x32: bool = False  # x86-64 only: numbers with the x32 bit set reach the same calls another way


# From the kernel's uapi headers: arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (which aarch64 uses); tests/unit/test_seccomp.py compares both with the installed headers where present.
ARCHES: dict[str, Arch] = {
    "x86_64": Arch(0xC000003E, {
        "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
        "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435, "openat2": 437,
        "open": 2, "openat": 257, "ioctl": 16,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kill": 62,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
        "reboot": 169, "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "memfd_create": 319,
        "mknod": 133, "mknodat": 259, "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92,
        "fchown": 93, "lchown": 94, "fchownat": 260,
        "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266, "unlink": 87, "unlinkat": 263, "rename": 82,
        "renameat": 264, "renameat2": 316, "mkdir": 83, "mkdirat": 258, "rmdir": 84, "truncate": 76,
        "ftruncate": 77, "creat": 85,
        "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119,
        "setgroups": 116, "capset": 126,
        "personality": 135, "swapon": 167, "swapoff": 168, "syslog": 103, "settimeofday": 164,
        "clock_settime": 227, "adjtimex": 159, "acct": 163, "quotactl": 179,
    }, x32=True),
    "aarch64": Arch(0xC00000B7, {
        "socket": 198, "connect": 203, "accept": 202, "bind": 200, "listen": 201, "socketpair": 199,
        "accept4": 242, "clone": 220, "execve": 221, "execveat": 281, "clone3": 435, "openat2": 437,
        "openat": 56, "ioctl": 29,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kill": 129,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
        "reboot": 142, "bpf": 280, "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218,
        "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "memfd_create": 279,
        "mknodat": 33, "fchmod": 52, "fchmodat": 53, "fchmodat2": 452, "fchown": 55, "fchownat": 54,
        "linkat": 37, "symlinkat": 36, "unlinkat": 35, "renameat": 38, "renameat2": 276, "mkdirat": 34,
        "truncate": 45, "ftruncate": 46,
        "setuid": 146, "setgid": 144, "setreuid": 145, "setregid": 143, "setresuid": 147, "setresgid": 149,
        "setgroups": 159, "capset": 91,
        "personality": 92, "swapon": 224, "swapoff": 225, "syslog": 116, "settimeofday": 170,
        "clock_settime": 112, "adjtimex": 171, "acct": 89, "quotactl": 60,
    }),
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class UnsupportedArchitecture(OSError):
    """No seccomp filter is known for this machine: untrusted content is not parsed here (fail closed)."""


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
    fallback: tuple[str, ...] = ()  # what stands in for the limits that could not be set

    def problems(self) -> list[str]:
        """Plain sentences for every protection that is missing."""
        out = []
        if self.limits_unset:
            out.append(f"resource limits not set ({'; '.join(self.limits_unset)}); instead: "
                       f"{', '.join((*self.fallback, 'the parent stops it past its memory bound or time limit'))}")
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


def seccomp_program(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this one) as raw sock_filter instructions.

    Raises :class:`UnsupportedArchitecture` for a machine without a table:
    system call numbers differ per architecture, and a filter built from
    another's numbers would refuse the wrong calls and let the dangerous ones through.
    """
    name = machine if machine is not None else platform.machine()
    arch = ARCHES.get(_ALIASES.get(name, name))
    if arch is None:
        raise UnsupportedArchitecture(
            errno.ENOSYS, f"no seccomp filter for the {name} architecture (known: {', '.join(ARCHES)}); "
            "untrusted content is not parsed on this machine")
    nums = arch.numbers
    p = [
        _insn(_LD_ABS_W, 0, 0, _DATA_ARCH),
        _insn(_JEQ, 1, 0, arch.audit),
        _insn(_RET, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_ABS_W, 0, 0, _DATA_NR),
    ]
    if arch.x32:
        p += [_insn(_JGE, 0, 1, _X32_BIT), _insn(_RET, 0, 0, _RET_KILL_PROCESS)]
    for nr, err in sorted({nums[n]: e for n, e in DENY.items() if n in nums}.items()):
        p += [_insn(_JEQ, 0, 1, nr), _insn(_RET, 0, 0, _RET_ERRNO | err)]
    # clone: threads only (CLONE_THREAD set in the flags, its first argument); a new process is refused.
    p += [_insn(_JEQ, 0, 4, nums[CLONE]), _insn(_LD_ABS_W, 0, 0, _DATA_ARGS), _insn(_JSET, 1, 0, CLONE_THREAD),
          _insn(_RET, 0, 0, _RET_ERRNO | errno.EPERM), _insn(_LD_ABS_W, 0, 0, _DATA_NR)]
    for name_, arg in OPENS.items():
        if name_ not in nums:
            continue
        p += [_insn(_JEQ, 0, 4, nums[name_]), _insn(_LD_ABS_W, 0, 0, _DATA_ARGS + 8 * arg),
              _insn(_JSET, 0, 1, _O_WRITING), _insn(_RET, 0, 0, _RET_ERRNO | errno.EACCES),
              _insn(_LD_ABS_W, 0, 0, _DATA_NR)]
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


def _fallback_limits(libc: ctypes.CDLL) -> list[str]:
    """Where setrlimit is refused (the shipped unit's system call filter leaves out @resources): what
    stands in for the limits. No core dumps (not dumpable), and the kernel's OOM killer takes this
    process first; the parent stops it past its memory bound or time limit (:class:`WorkerProcess`)."""
    done = []
    try:  # before "not dumpable", which makes /proc/self root's
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
            done.append("oom_score_adj 1000")
        finally:
            os.close(fd)
    except OSError:
        pass
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
        done.append("not dumpable")
    return done


def confine(*, memory: int, cpu_seconds: int, files: int = 32) -> Confinement:
    """Apply every confinement this host allows; never raises for one it cannot apply, except the
    seccomp filter: on an architecture without one it raises :class:`UnsupportedArchitecture`."""
    program = seccomp_program()  # first: an unknown architecture stops the worker before anything else
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
    fallback = _fallback_limits(libc) if unset else []
    with contextlib.suppress(OSError):  # what is left is read back below and reported
        _drop_capabilities(libc)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a change of uid cleared it
    if unset:
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # a change of uid set it back
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
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
        fallback=tuple(fallback),
    )


# -- the parent's side of a worker --------------------------------------------------------------------------------

START_TIMEOUT = 20.0  # spawn, imports and confinement; a loaded machine needs seconds
MEMORY_CHECK = 0.1  # while an answer is awaited, the worker's resident size is read this often


class WorkerUnavailable(Exception):
    """The worker could not start, or is in the back-off after a failed start."""


class WorkerLost(Exception):
    """The worker died, hung, passed its memory bound or answered nonsense; it has been replaced."""


class WorkerProcess:
    """The parent's side of one confined worker (``python -m MODULE FD MEMORY CONFINE``).

    Shared by the marking and the DNS workers: it starts the worker without
    capabilities (:func:`spawn_without_capabilities`), reads its hello and
    confinement report, waits for answers with a deadline while it watches the
    worker's resident size, names why a worker died, replaces it (counting
    ``restarts``, and ``killed`` for the ones it had to stop) and backs off
    after a failed start. Not thread-safe: its owner serialises calls, except
    :meth:`kill`, which any thread may call.
    """

    def __init__(self, label: str, module: str, *, memory: int, confine: bool, backoff: float,
                 env: dict[str, str] | None = None, max_answer: int = 1 << 20) -> None:
        self.label = label  # "marking worker", "DNS worker": how messages name it
        self.module = module
        self.memory = memory
        self.confine = confine
        self.backoff = backoff
        self.env = dict(env or {})
        self.max_answer = max_answer
        self.restarts = 0  # workers replaced after a death, a hang, a memory overrun or retirement
        self.killed = 0  # workers stopped by the parent: past their time limit or memory bound
        self.confinement: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._start_error = ""
        self._started_once = False

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def ensure(self) -> socket.socket:
        """The running worker's socket, starting one when none runs; WorkerUnavailable when it cannot."""
        if self._proc is not None and self._sock is not None and self._proc.poll() is None:
            return self._sock
        if time.monotonic() < self._retry_at:
            raise WorkerUnavailable(f"{self.label} unavailable: {self._start_error}")
        try:
            return self._start()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self._start_error = str(e)
            self._retry_at = time.monotonic() + self.backoff
            log.error("%s cannot start (tried again in %.0f s): %s", self.label, self.backoff, e)
            raise WorkerUnavailable(f"{self.label} unavailable: {e}") from e

    def start(self) -> None:
        """Start the worker now, ignoring any back-off; OSError when it cannot start."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()

    def stop(self) -> None:
        """Stop the worker (the next request starts a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def kill(self) -> None:
        """Kill the worker from any thread: a wait in progress ends at once with WorkerLost."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()

    def retire(self) -> None:
        """The worker said it retires (CPU time used): replace it for the next request."""
        self.stop()
        self.restarts += 1

    def lost(self, reason: str) -> WorkerLost:
        """The worker is gone or useless: stop it and count a restart; the error to raise."""
        self.stop()
        self.restarts += 1
        return WorkerLost(reason)

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        """One request; WorkerLost when the worker is gone."""
        sock = self.ensure()
        try:
            if fds:
                socket.send_fds(sock, [data], fds)
            else:
                sock.send(data)
        except OSError as e:
            raise self.lost(f"{self.label} gone: {e}") from e

    def receive(self, deadline: float, late: str) -> Any:
        """The next answer (JSON) by ``deadline`` (monotonic); WorkerLost with ``late`` as the reason
        when none came by then, or with the reason the worker died, passed its memory bound or
        answered nonsense."""
        sock = self._sock
        if sock is None:
            raise self.lost(f"{self.label} gone")
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([sock], [], [], min(max(left, 0.0), MEMORY_CHECK))
            if ready:
                break
            if time.monotonic() >= deadline:
                self.killed += 1
                raise self.lost(late)
            rss = self._resident()
            if rss is not None and rss > self.memory:
                self.killed += 1
                raise self.lost(f"{self.label} passed its memory bound of {self.memory >> 20} MiB "
                                f"({rss >> 20} MiB resident): it was stopped")
        try:
            data = sock.recv(self.max_answer)
        except OSError as e:
            raise self.lost(f"{self.label} gone: {e}") from e
        if not data:
            raise self.lost(self.death())
        try:
            return json.loads(data)
        except ValueError as e:
            raise self.lost(f"{self.label} answered nonsense: {e}") from e

    def death(self) -> str:
        """Why the worker (whose socket just closed) ended."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return f"{self.label} stopped answering"
        if code < 0:
            try:
                return f"{self.label} died ({signal.Signals(-code).name})"
            except ValueError:
                return f"{self.label} died (signal {-code})"
        return f"{self.label} exited with status {code}"

    def _resident(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            with open(f"/proc/{proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _start(self) -> socket.socket:
        self.stop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(__file__).resolve().parent.parent)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1",
               **self.env}
        argv = [sys.executable, "-m", self.module, str(child.fileno()), str(self.memory),
                "1" if self.confine else "0"]
        try:
            proc = spawn_without_capabilities(argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, env=env, cwd="/")
        finally:
            child.close()
        ready, _, _ = select.select([parent], [], [], START_TIMEOUT)
        hello = parent.recv(self.max_answer) if ready else b""
        answer: Any = None
        with contextlib.suppress(ValueError):
            answer = json.loads(hello) if hello else None
        report = answer.get("confinement") if isinstance(answer, dict) else None
        if not isinstance(report, dict):
            proc.kill()
            proc.wait()
            parent.close()
            refused = answer.get("refused") if isinstance(answer, dict) else None
            if refused:
                raise OSError(f"the {self.label} refused to start: {refused}")
            raise OSError(f"the {self.label} did not start (exit status {proc.returncode})")
        self.confinement = report
        if self.confine and report.get("problems") and not self._started_once:
            log.warning("%s runs with less confinement than intended: %s", self.label, "; ".join(report["problems"]))
        self._proc, self._sock = proc, parent
        self._started_once = True
        return parent


# -- the worker's side -------------------------------------------------------------------------------------------


def worker_hello(sock: socket.socket, *, memory: int, cpu_seconds: int, files: int, confine_it: bool
                 ) -> Confinement | None:
    """Confine the worker (unless ``confine_it`` is false: benchmarks only) and tell the parent so.

    On a machine without a seccomp filter the parent is told why and the
    worker exits: it never parses unconfined (fail closed).
    """
    c: Confinement | None = None
    report: dict[str, Any] = {}
    if confine_it:
        try:
            c = confine(memory=memory, cpu_seconds=cpu_seconds, files=files)
        except UnsupportedArchitecture as e:
            sock.send(json.dumps({"ready": False, "refused": e.strerror}).encode())
            sys.exit(3)
        report = {"uid": c.uid, "network": c.network, "capabilities": c.capabilities,
                  "no_new_privs": c.no_new_privs, "seccomp": c.seccomp, "limits": c.limits,
                  "problems": c.problems()}
    sock.send(json.dumps({"ready": True, "confinement": report}).encode())
    return c
