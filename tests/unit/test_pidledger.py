"""The process ledger answers who a pid was after the process is gone, from the kernel's process events.

Fed with decoded connector events and a /proc tree under the test's control:
what a reaped process, a uid change, a login uid set by a login program and a
reused pid look like to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from files_support import collector, op, record

import collectors.fanotify as fan
from agent.events import Process
from collectors.files import WINDOW, FilesCollector
from collectors.pidledger import PidLedger
from collectors.proc_connector import ProcEvent
from collectors.watch import CREATED

S = 1_000_000_000


def proc(root: Path, pid: int, *, uid: int, loginuid: int, name: str = "sh", ppid: int = 1) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "status").write_text(f"Name:\t{name}\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "loginuid").write_text(str(loginuid))
    (d / "comm").write_text(name + "\n")


def fork(pid: int, parent: int, t: float) -> ProcEvent:
    return ProcEvent("fork", pid, pid, int(t * S), parent_pid=parent, parent_tgid=parent)


def created_by_a_gone_process(c: FilesCollector, flush: Callable[[float], None], pid: int) -> None:
    """A file created at 2.0 s by ``pid``, whose record fanotify's reader read when /proc had nothing but the
    pid (the process was gone); the collector flushed until it is reported."""
    record(c, "/d/copy.txt", fan.FAN_CREATE, pid, 2.0, gone=True)
    op(c, CREATED, "/d/copy.txt", 2.0)
    c._fan_synced = 2.5
    for t in (2.1, 2.0 + 3 * WINDOW, 4.0, 6.0):
        flush(t)


def test_a_reaped_process_keeps_the_ids_it_had(tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=0, loginuid=1000, name="bash")  # a root shell of a person who logged in
    ledger = PidLedger(str(tmp_path))
    ledger.feed(fork(200, 100, 1.0))
    ledger.feed(ProcEvent("uid", 200, 200, int(1.1 * S), ruid=1001, euid=1001))  # setuid before exec
    ledger.feed(ProcEvent("exec", 200, 200, int(1.2 * S)))  # gone before its exe could be read
    ledger.feed(ProcEvent("exit", 200, 200, int(1.3 * S), exit_code=0))
    p = ledger.who(200, 2.0)
    assert p is not None and (p.uid, p.loginuid, p.ppid) == (1001, 1000, 100)
    assert p.exe is None  # not the shell's: it had exec'd something else
    assert ledger.who(201, 2.0) is None  # never seen: no answer rather than a guess


def test_a_login_uid_set_after_the_parent_was_first_seen_is_taken_at_fork(tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=0, loginuid=4294967295, name="login")
    ledger = PidLedger(str(tmp_path))
    ledger.feed(fork(150, 100, 1.0))  # the login program's session process, no login uid yet
    proc(tmp_path, 150, uid=0, loginuid=1000, name="login")  # pam_loginuid writes it in the process itself
    ledger.feed(fork(160, 150, 2.0))  # then the person's shell
    p = ledger.who(160, 3.0)
    assert p is not None and p.loginuid == 1000
    unset = ledger.who(150, 3.0)
    assert unset is not None and unset.loginuid is None  # the kernel's "unset" is no one


def test_a_reused_pid_is_answered_with_the_life_that_had_it(tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=1000, loginuid=1000)
    proc(tmp_path, 101, uid=1001, loginuid=1001)
    ledger = PidLedger(str(tmp_path))
    ledger.feed(fork(300, 100, 1.0))
    ledger.feed(ProcEvent("exit", 300, 300, int(1.5 * S)))
    ledger.feed(fork(300, 101, 2.0))  # the same pid, another person's process
    first, second = ledger.who(300, 1.8), ledger.who(300, 2.5)
    assert first is not None and first.uid == 1000
    assert second is not None and second.uid == 1001


def test_exited_lives_are_bounded(tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=1000, loginuid=1000)
    ledger = PidLedger(str(tmp_path), keep=10.0, limit=50)
    for i in range(200):
        ledger.feed(fork(1000 + i, 100, 1.0 + i / 1000))
        ledger.feed(ProcEvent("exit", 1000 + i, 1000 + i, int((1.0 + i / 1000) * S)))
    assert len(ledger) <= 51  # the parent, and the newest 50 exits
    assert ledger.who(1199, 2.0) is not None and ledger.who(1000, 2.0) is None
    ledger.feed(fork(5000, 100, 30.0))
    ledger.feed(ProcEvent("exit", 5000, 5000, 30 * S))
    assert ledger.who(1199, 40.0) is None  # past ``keep`` seconds after its exit


def test_a_file_record_read_after_its_process_was_reaped_names_the_person(tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=0, loginuid=4294967295, name="python3")
    ledger = PidLedger(str(tmp_path))
    ledger.feed(fork(400, 100, 1.0))
    ledger.feed(ProcEvent("uid", 400, 400, int(1.1 * S), ruid=1000, euid=1000))
    ledger.feed(ProcEvent("exit", 400, 400, int(1.4 * S)))
    ledger.synced = 2.2  # it has read the kernel's process events up to 2.2 s
    c, out, flush = collector(ledger)
    created_by_a_gone_process(c, flush, 400)
    (e,) = out
    assert (e.kind, e.process.pid, e.process.uid, e.detail) == ("file.create", 400, 1000, None)


def test_a_reaped_reader_is_not_named_by_its_fork_alone_while_the_ledger_is_behind(tmp_path: Path) -> None:
    """The agent was held up: when the record is read, the ledger has read the fork (root's python) but
    not yet the change of user and the exec that followed. The open waits for the ledger, then names the
    user, not root."""
    proc(tmp_path, 100, uid=0, loginuid=4294967295, name="python3")
    ledger = PidLedger(str(tmp_path))
    ledger.feed(fork(400, 100, 1.0))
    ledger.synced = 1.05  # read up to the fork
    c, out, flush = collector(ledger)
    record(c, "/d/a/budget.txt", fan.FAN_OPEN, 400, 2.0, gone=True)
    flush(2.0 + 2 * WINDOW)
    assert out == []  # the ledger is behind the record: the open waits
    ledger.feed(ProcEvent("uid", 400, 400, int(1.1 * S), ruid=61401, euid=61401))
    ledger.feed(ProcEvent("exit", 400, 400, int(1.4 * S)))
    ledger.synced = 2.4
    flush(2.5)
    (e,) = out
    assert (e.kind, e.process.pid, e.process.uid) == ("file.open", 400, 61401)


def test_without_a_record_of_the_process_the_event_says_why_no_one_is_named(tmp_path: Path) -> None:
    c, out, flush = collector()
    c.ledger_problem = "not permitted"
    created_by_a_gone_process(c, flush, 401)
    (e,) = out
    assert e.process.pid == 401 and e.process.uid is None
    assert e.detail is not None and "process 401 was gone" in e.detail and "not permitted" in e.detail


def test_fed_by_the_process_collector_it_reads_no_proc_per_event_and_learns_from_what_it_is_told(
        tmp_path: Path) -> None:
    proc(tmp_path, 100, uid=0, loginuid=4294967295, name="sshd")
    ledger = PidLedger(str(tmp_path), reads_proc=False)
    ledger.feed(fork(150, 100, 1.0))  # the session process
    ledger.feed(ProcEvent("uid", 150, 150, int(1.1 * S), ruid=1000, euid=1000))
    ledger.feed(ProcEvent("exec", 150, 150, int(1.2 * S)))
    # The process collector read it at its exec: the shell, with the login uid pam_loginuid set.
    ledger.seen(Process(pid=150, name="bash", exe="/usr/bin/bash", uid=1000, loginuid=1000))
    ledger.feed(fork(160, 150, 2.0))
    ledger.feed(ProcEvent("exit", 160, 160, int(2.1 * S)))
    p = ledger.who(160, 3.0)
    assert p is not None and (p.uid, p.loginuid, p.exe) == (1000, 1000, "/usr/bin/bash")
