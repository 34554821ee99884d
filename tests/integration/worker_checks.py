"""What every confined worker must show in /proc, checked the same way for the marking and the DNS worker."""

from __future__ import annotations

import os
from pathlib import Path


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def proc_limits(pid: int) -> dict[str, list[str]]:
    """/proc/PID/limits: each limit's [soft, hard]."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        out[line[:26].strip()] = line[26:].split()[:2]
    return out


def assert_confined(pid: int, confinement: dict[str, object], *, files: int, memory: int) -> None:
    """A worker started by root: nobody, no capability in any set, no_new_privs, the seccomp filter, its
    own network namespace, no confinement problem, and its limits (open files, no file writes, memory)."""
    st = proc_status(pid)
    assert st["Uid"].split()[:2] == ["65534", "65534"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, cap
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert confinement["problems"] == []
    limits = proc_limits(pid)
    assert limits["Max open files"] == [str(files)] * 2
    assert limits["Max file size"] == ["0", "0"]
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max address space"] == [str(memory)] * 2
