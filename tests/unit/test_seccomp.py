"""The workers' seccomp filter, run instruction by instruction for x86-64 and aarch64.

The program is classic BPF over struct seccomp_data; a small interpreter here
runs it on made-up system calls of either architecture, so both filters are
checked on any machine. The numbers themselves are compared with the kernel's
headers, and an architecture without a table stops a worker with a clear reason.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
import textwrap
from pathlib import Path

import pytest

from collectors import sandbox
from collectors.sandbox import ARCHES, DENY, UnsupportedArchitecture, seccomp_program

ALLOW = 0x7FFF0000
KILL = 0x80000000
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_ARM = 0x40000028
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD = 0x100, 0x200, 0x400, 0x800, 0x10000
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | 0x80000 | 0x100000 | 0x200000
SIGCHLD = 17
# Calls a parser needs: (x86-64, aarch64) numbers.
NEEDED = {"read": (0, 63), "mmap": (9, 222), "close": (3, 57), "fstat": (5, 80), "lseek": (8, 62),
          "recvmsg": (47, 212), "sendto": (44, 206), "futex": (202, 98), "exit_group": (231, 94)}


def run(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What seccomp would return for system call ``nr`` of ``arch`` with ``args``."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    a, pc = 0, 0
    for _ in range(10_000):
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            (a,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code in (0x15, 0x35, 0x45):  # BPF_JMP | JEQ / JGE / JSET | BPF_K
            taken = a == k if code == 0x15 else a >= k if code == 0x35 else bool(a & k)
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # BPF_RET | BPF_K
            return int(k)
        else:
            raise AssertionError(f"instruction {code:#x} at {pc} is not one this filter should use")
    raise AssertionError("the program does not end")


def errno_of(ret: int) -> int:
    assert ret & 0xFFFF0000 == 0x00050000, hex(ret)
    return ret & 0xFFFF


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_filter_refuses_and_allows_by_this_architectures_numbers(machine: str) -> None:
    arch = ARCHES[machine]
    prog = seccomp_program(machine)
    assert len(prog) // 8 < 4096  # BPF_MAXINSNS
    nums = arch.numbers
    col = 0 if machine == "x86_64" else 1
    for name, pair in NEEDED.items():
        assert run(prog, pair[col], arch.audit) == ALLOW, name
    for name, err in DENY.items():
        if name in nums and name != "clone":
            assert errno_of(run(prog, nums[name], arch.audit)) == err, name
    # Threads yes, processes no.
    assert run(prog, nums["clone"], arch.audit, (THREAD_FLAGS,)) == ALLOW
    assert errno_of(run(prog, nums["clone"], arch.audit, (SIGCHLD,))) == errno.EPERM
    assert errno_of(run(prog, nums["clone"], arch.audit, (CLONE_VM | SIGCHLD,))) == errno.EPERM
    # Reading opens pass; any write flag is refused, in the argument where that architecture's call has it.
    assert run(prog, nums["openat"], arch.audit, (0xFFFFFF9C, 0x1000, os.O_RDONLY | os.O_CLOEXEC)) == ALLOW
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND, 0x400000):
        assert errno_of(run(prog, nums["openat"], arch.audit, (0xFFFFFF9C, 0x1000, flag))) == errno.EACCES
    if "open" in nums:
        assert run(prog, nums["open"], arch.audit, (0x1000, os.O_RDONLY)) == ALLOW
        assert errno_of(run(prog, nums["open"], arch.audit, (0x1000, os.O_WRONLY))) == errno.EACCES
    # Any other ABI on the same machine is killed outright.
    others = [a.audit for m, a in ARCHES.items() if m != machine] + [AUDIT_ARCH_I386, AUDIT_ARCH_ARM]
    for other in others:
        assert run(prog, NEEDED["read"][col], other) == KILL


def test_each_filter_uses_its_own_numbers() -> None:
    """The near miss of a copied table: a number means another call on the other architecture."""
    x86, arm = seccomp_program("x86_64"), seccomp_program("aarch64")
    a_x86, a_arm = ARCHES["x86_64"].audit, ARCHES["aarch64"].audit
    # 56 is clone on x86-64 (flags in the first argument) and openat on aarch64 (flags in the third).
    assert run(x86, 56, a_x86, (THREAD_FLAGS, 0, os.O_WRONLY)) == ALLOW
    assert errno_of(run(arm, 56, a_arm, (THREAD_FLAGS, 0, os.O_WRONLY))) == errno.EACCES
    # 41 is socket on x86-64; 63 is read on aarch64 and uname on x86-64 (both harmless).
    assert errno_of(run(x86, 41, a_x86)) == errno.EPERM
    assert run(arm, 63, a_arm) == ALLOW and run(x86, 63, a_x86) == ALLOW
    # 198 (socket on aarch64) is lremovexattr on x86-64: refused only where it is socket.
    assert errno_of(run(arm, 198, a_arm)) == errno.EPERM
    assert run(x86, 198, a_x86) == ALLOW
    # The x32 ABI reaches x86-64's calls with bit 30 set: killed, not merely refused.
    assert run(x86, 41 | 0x40000000, a_x86) == KILL
    assert run(arm, 41 | 0x40000000, a_arm) == ALLOW  # aarch64 has no such ABI; an unknown number just fails


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    out = {}
    for name, value in re.findall(r"^#define __NR(?:3264)?_(\w+)\s+(\d+)\s*$", text, re.M):
        out[name] = int(value)
    return out


@pytest.mark.parametrize(("machine", "header"), [
    ("x86_64", Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")),
    ("aarch64", Path("/usr/include/asm-generic/unistd.h")),
])
def test_numbers_are_the_kernels(machine: str, header: Path) -> None:
    if not header.exists():
        pytest.fail(f"{header} is missing (Debian package linux-libc-dev)")
    known = _header_numbers(header)
    table = ARCHES[machine].numbers
    checked = {n for n in table if n in known}
    assert {n: table[n] for n in checked} == {n: known[n] for n in checked}
    # Every call of the table is in the headers, but for calls newer than them.
    assert set(table) - checked <= {"fchmodat2"}, set(table) - checked
    # And every refused call the architecture has is in its table.
    assert {n for n in DENY if n in known} <= set(table)


def test_an_unknown_architecture_has_no_filter() -> None:
    with pytest.raises(UnsupportedArchitecture, match="no seccomp filter for the riscv64 architecture"):
        seccomp_program("riscv64")
    assert seccomp_program("arm64") == seccomp_program("aarch64")


def test_confine_refuses_before_it_changes_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.platform, "machine", lambda: "riscv64")
    with pytest.raises(UnsupportedArchitecture):
        sandbox.confine(memory=1 << 30, cpu_seconds=60)
    # This process was left as it was: no filter, no new limits.
    status = Path("/proc/self/status").read_text()
    assert re.search(r"^Seccomp:\s+0$", status, re.M)


def test_worker_on_an_unknown_architecture_refuses_to_start(tmp_path: Path) -> None:
    """Fail closed: the worker says why and exits; the parent reports it, no parsing happens unconfined."""
    (tmp_path / "dw_riscv_worker.py").write_text(textwrap.dedent("""
        import platform, socket, sys
        platform.machine = lambda: "riscv64"
        from collectors.sandbox import worker_hello
        sock = socket.socket(fileno=int(sys.argv[1]))
        worker_hello(sock, memory=1 << 28, cpu_seconds=60, files=8, confine_it=True)
        sock.send(b"parsed")  # never reached
    """))
    repo = str(Path(__file__).resolve().parents[2])
    w = sandbox.WorkerProcess("test worker", "dw_riscv_worker", memory=1 << 28, confine=True, backoff=30.0,
                              env={"PYTHONPATH": f"{tmp_path}:{repo}"})
    try:
        with pytest.raises(sandbox.WorkerUnavailable) as e:
            w.ensure()
        assert "refused to start: no seccomp filter for the riscv64 architecture" in str(e.value)
        assert "untrusted content is not parsed on this machine" in str(e.value)
        with pytest.raises(sandbox.WorkerUnavailable):  # and it is not retried at once
            w.ensure()
        assert w.pid is None
    finally:
        w.stop()


def test_program_fits_a_real_kernel() -> None:
    """The host's own filter is accepted by the kernel (in a child, which it then confines)."""
    if sandbox.platform.machine() not in ARCHES:
        pytest.skip("no filter for this machine")
    r, w = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            libc = sandbox._libc()
            libc.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            sandbox._install_seccomp(libc, seccomp_program())
            try:
                socket.socket()
                w.send(b"allowed")
            except PermissionError:
                w.send(b"refused")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert r.recv(16) == b"refused"
    r.close()
    w.close()
