"""ProcReader against a fixture /proc tree: identity fields, decoding, the (pid, start_time) cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.events import Parent, Process
from collectors.procfs import TRUNCATED, ProcReader, parse_cmdline, parse_loginuid, parse_stat

BTIME = 1_700_000_000
TICKS = os.sysconf("SC_CLK_TCK")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stat_line(pid: int, comm: bytes, ppid: int, start_ticks: int, state: bytes = b"S") -> bytes:
    """A /proc/PID/stat line with the given identity fields (52 fields, as on 6.x kernels)."""
    after = [state, str(ppid).encode(), b"1", b"1", b"0", b"-1", b"4194560"] + [b"0"] * 12
    after += [str(start_ticks).encode()] + [b"0"] * 30
    return str(pid).encode() + b" (" + comm + b") " + b" ".join(after) + b"\n"


def make_proc(root: Path, pid: int, *, comm: bytes = b"bash", ppid: int = 1, start: int = 500,
              uid: int = 1000, loginuid: bytes = b"1000", cmdline: bytes = b"bash\0-l\0",
              exe: str | None = "/usr/bin/bash", cwd: str | None = "/home/zhangsan") -> Path:
    """Write one process directory under the fixture /proc."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_bytes(stat_line(pid, comm, ppid, start))
    (d / "status").write_bytes(b"Name:\t" + comm + f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n".encode())
    (d / "cmdline").write_bytes(cmdline)
    (d / "loginuid").write_bytes(loginuid)
    for name, target in (("exe", exe), ("cwd", cwd)):
        link = d / name
        if link.is_symlink():
            link.unlink()
        if target is not None:
            link.symlink_to(target)
    return d


def proc_of(reader: ProcReader, pid: int) -> Process:
    """The Process group of a pid that must exist."""
    found = reader.identity(pid)
    assert found is not None, f"pid {pid} not found"
    return found[0]


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A fixture /proc: init (1), a login shell (100) and a command it ran (200)."""
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BTIME}\nprocesses 1234\n")
    make_proc(root, 1, comm=b"systemd", ppid=0, start=1, uid=0, loginuid=b"4294967295",
              cmdline=b"/sbin/init\0", exe="/usr/lib/systemd/systemd", cwd="/")
    make_proc(root, 100, ppid=1, start=400)
    make_proc(root, 200, comm=b"python3", ppid=100, start=1234,
              cmdline=b"python3\0-c\0print('hi there')\0", exe="/usr/bin/python3.11")
    return root


def test_identity_reads_every_process_field(proc: Path) -> None:
    found = ProcReader(proc, FakeClock()).identity(200)
    assert found is not None
    process, parent = found
    assert process == Process(
        pid=200, ppid=100, name="python3", exe="/usr/bin/python3.11", cmdline="python3 -c print('hi there')",
        cwd="/home/zhangsan", uid=1000, user=process.user, loginuid=1000, start_time=BTIME + 1234 / TICKS,
    )
    assert parent == Parent(pid=100, name="bash", exe="/usr/bin/bash", cmdline="bash -l")


def test_user_comes_from_the_account_database(proc: Path) -> None:
    make_proc(proc, 300, uid=0)
    make_proc(proc, 301, uid=3_999_999)
    reader = ProcReader(proc, FakeClock())
    assert proc_of(reader, 300).user == "root"
    assert proc_of(reader, 301).user is None


def test_init_has_no_parent_and_unset_loginuid_is_none(proc: Path) -> None:
    found = ProcReader(proc, FakeClock()).identity(1)
    assert found is not None
    process, parent = found
    assert process.loginuid is None
    assert process.uid == 0
    assert parent == Parent()


@pytest.mark.parametrize(("raw", "want"), [
    (b"1000\n", 1000), (b"0", 0), (b"4294967295", None), (b"", None), (b"junk", None), (b"-1", None),
])
def test_loginuid_parsing(raw: bytes, want: int | None) -> None:
    assert parse_loginuid(raw) == want


def test_command_name_with_spaces_and_parentheses(proc: Path) -> None:
    make_proc(proc, 300, comm=b"my (odd) ) name", start=777)
    stat = parse_stat((proc / "300" / "stat").read_bytes())
    assert (stat.comm, stat.ppid, stat.start_ticks) == ("my (odd) ) name", 1, 777)


def test_invalid_utf8_is_kept_as_escapes_not_dropped(proc: Path) -> None:
    make_proc(proc, 300, comm=b"caf\xe9", cmdline=b"/opt/\xff\xfebin\0\xe4\xb8\xad\xe6\x96\x87\0",
              exe="/opt/caf\udce9")
    process = proc_of(ProcReader(proc, FakeClock()), 300)
    assert process.name == "caf\\xe9"
    assert process.cmdline == "/opt/\\xff\\xfebin 中文"
    assert process.exe == "/opt/caf\\xe9"


def test_long_cmdline_is_cut_with_a_marker() -> None:
    raw = b"\0".join([b"x" * 100] * 100) + b"\0"
    text = parse_cmdline(raw, 4096)
    assert text is not None
    assert 4090 <= len(text.encode("utf-8")) <= 4096
    assert text.endswith(TRUNCATED)
    assert parse_cmdline(b"a\0b\0", 4096) == "a b"
    assert parse_cmdline(b"", 4096) is None


def test_reader_bounds_what_it_reads_of_a_huge_cmdline(proc: Path) -> None:
    make_proc(proc, 300, cmdline=b"y" * 1_000_000)
    process = proc_of(ProcReader(proc, FakeClock(), cmdline_max=256), 300)
    assert process.cmdline is not None
    assert 250 <= len(process.cmdline.encode("utf-8")) <= 256
    digest = hashlib.sha256(b"y" * 1_000_000).hexdigest()
    assert process.cmdline.endswith(f"…[truncated: 1000000 bytes, sha256 {digest}]")
    assert process.cmdline.startswith("yyy")


def test_gone_process_is_none_but_its_last_identity_stays_cached(proc: Path) -> None:
    reader = ProcReader(proc, FakeClock())
    assert reader.identity(99999) is None
    first = reader.identity(200)
    for f in (proc / "200").iterdir():
        f.unlink()
    (proc / "200").rmdir()
    assert reader.cached(200) == first
    assert reader.identity(200) is None
    assert reader.cached(200) is None


def test_forget_returns_and_removes(proc: Path) -> None:
    reader = ProcReader(proc, FakeClock())
    found = reader.identity(200)
    assert reader.forget(200) == found
    assert reader.forget(200) is None


def test_zombie_keeps_name_and_uid_but_not_exe_or_cmdline(proc: Path) -> None:
    make_proc(proc, 300, comm=b"true", cmdline=b"", exe=None, cwd=None)
    process = proc_of(ProcReader(proc, FakeClock()), 300)
    assert (process.name, process.uid, process.exe, process.cmdline, process.cwd) == ("true", 1000, None, None, None)


def test_reused_pid_is_read_again(proc: Path) -> None:
    reader = ProcReader(proc, FakeClock())
    assert proc_of(reader, 200).exe == "/usr/bin/python3.11"
    make_proc(proc, 200, comm=b"python3", ppid=100, start=9999, exe="/tmp/evil")
    process = proc_of(reader, 200)
    assert process.exe == "/tmp/evil"
    assert process.start_time == BTIME + 9999 / TICKS


def test_exec_keeping_the_name_needs_invalidate(proc: Path) -> None:
    reader = ProcReader(proc, FakeClock())
    reader.identity(200)
    make_proc(proc, 200, comm=b"python3", ppid=100, start=1234, exe="/usr/bin/python3.12",
              cmdline=b"python3\0other.py\0")
    assert proc_of(reader, 200).exe == "/usr/bin/python3.11"
    reader.invalidate(200)
    assert proc_of(reader, 200).cmdline == "python3 other.py"


def test_exec_changing_the_name_is_noticed_without_help(proc: Path) -> None:
    reader = ProcReader(proc, FakeClock())
    reader.identity(200)
    make_proc(proc, 200, comm=b"curl", ppid=100, start=1234, exe="/usr/bin/curl", cmdline=b"curl\0x\0")
    assert proc_of(reader, 200).exe == "/usr/bin/curl"


def test_old_entries_are_read_again(proc: Path) -> None:
    clock = FakeClock()
    reader = ProcReader(proc, clock, max_age=30.0)
    assert proc_of(reader, 200).uid == 1000
    make_proc(proc, 200, comm=b"python3", ppid=100, start=1234, uid=33)  # setuid without exec
    assert proc_of(reader, 200).uid == 1000
    clock.now += 31
    assert proc_of(reader, 200).uid == 33


def test_cache_is_bounded(proc: Path) -> None:
    for pid in range(1000, 1050):
        make_proc(proc, pid, start=pid)
    reader = ProcReader(proc, FakeClock(), cache_size=8)
    for pid in range(1000, 1050):
        assert reader.identity(pid) is not None
    assert len(reader) <= 8


def test_unreadable_parts_are_none_not_fatal(proc: Path) -> None:
    (proc / "200" / "status").unlink()
    (proc / "200" / "loginuid").unlink()
    (proc / "200" / "exe").unlink()
    process = proc_of(ProcReader(proc, FakeClock()), 200)
    assert (process.uid, process.user, process.loginuid, process.exe) == (None, None, None, None)
    assert process.cmdline == "python3 -c print('hi there')"


def test_parent_gone_keeps_its_pid(proc: Path) -> None:
    make_proc(proc, 300, ppid=4242)
    found = ProcReader(proc, FakeClock()).identity(300)
    assert found is not None
    assert found[1] == Parent(pid=4242)


def test_boot_time_falls_back_to_uptime(proc: Path) -> None:
    (proc / "stat").write_text("cpu 1 2 3\n")
    (proc / "uptime").write_text("1000.50 1800.00\n")
    clock = FakeClock(1_800_000_000.0)
    assert ProcReader(proc, clock).boot_time() == pytest.approx(1_800_000_000.0 - 1000.5)


def test_real_proc_describes_this_process() -> None:
    found = ProcReader().identity(os.getpid())
    assert found is not None
    process, parent = found
    assert process.exe == os.path.realpath("/proc/self/exe")
    assert process.cwd == os.getcwd()
    assert process.uid == os.getuid()
    assert process.ppid == os.getppid() == parent.pid


def test_the_systemd_unit_is_read_from_the_cgroup_path() -> None:
    from collectors.procfs import parse_unit
    assert parse_unit(b"0::/system.slice/cron.service\n") == "cron.service"
    assert parse_unit(b"0::/system.slice/app.service/worker\n") == "app.service"  # a sub-cgroup of its unit
    assert parse_unit(b"0::/user.slice/user-1000.slice/session-3.scope\n") == "session-3.scope"
    # v1/hybrid: the name=systemd hierarchy when the unified one says nothing.
    assert parse_unit(b"12:memory:/x\n1:name=systemd:/system.slice/ssh.service\n0::/\n") == "ssh.service"
    assert parse_unit(b"0::/\n") is None
    assert parse_unit(b"0::/system.slice\n") is None
    assert parse_unit(b"0::/system.slice/.service\n") is None
    assert parse_unit(b"") is None
