"""The process collector on the real kernel: netlink capture, enrichment, poll fallback, contract.

Storms are bounded in count (2,000 spawns) and every wait has a deadline;
nothing here asserts how fast anything ran.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bench.spawner import spawn

from agent.events import Event
from collectors.base import CollectorError, Sources
from collectors.proc_connector import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    DecodeError,
    decode,
    listen_request,
)
from collectors.process import ProcessCollector

STORM = 2000
TRUE = os.path.realpath("/bin/true")
SLEEP = os.path.realpath("/bin/sleep")

@dataclass
class Run:
    """A collector running on a thread, with everything it emitted."""

    collector: ProcessCollector
    events: list[Event] = field(default_factory=list)
    accept: bool = True
    delay: float = 0.0

    def emit(self, event: Event) -> bool:
        """Record the event (after ``delay`` seconds: a stalled pipeline); accept it unless told not to."""
        if self.delay:
            time.sleep(self.delay)
        self.events.append(event)
        return self.accept

    def of(self, kind: str, pids: set[int] | dict[int, float]) -> dict[int, Event]:
        """The last event of ``kind`` for each of ``pids``."""
        return {e.process.pid: e for e in list(self.events) if e.kind == kind and e.process.pid in pids}

    def wait_for(self, kind: str, pid: int, deadline: float = 10.0) -> Event:
        """The first ``kind`` event for ``pid``, waiting up to ``deadline`` seconds."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for e in list(self.events):
                if e.kind == kind and e.process.pid == pid:
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no {kind} event for pid {pid}")


@contextmanager
def running(collector: ProcessCollector, accept: bool = True) -> Iterator[Run]:
    """Run ``collector`` on a thread for the duration of the block; stop it and check it returned."""
    run = Run(collector, accept=accept)
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            collector.run(run.emit, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name="process-collector", daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not collector.health.up and thread.is_alive() and time.monotonic() < end:
        time.sleep(0.01)
    try:
        yield run
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "run() did not return after stop was set"
    assert not errors, errors
    assert not collector.health.up


def settle(run: Run, pids: dict[int, float], kind: str = "process.exit", deadline: float = 15.0) -> None:
    """Wait until the collector has caught up with the storm (or the deadline passes)."""
    end = time.monotonic() + deadline
    last = -1
    while time.monotonic() < end:
        seen = len(run.of(kind, pids))
        if seen == len(pids) or (seen == last and seen > 0):
            return
        last = seen
        time.sleep(0.3)


# -- decoding (no kernel needed) -----------------------------------------------


def _datagram(what: int, data: bytes, idx: int = CN_IDX_PROC) -> bytes:
    payload = struct.pack("=IIQ", what, 0, 123456789) + data
    cn = struct.pack("=IIIIHH", idx, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_decode_exec_fork_exit_and_ack() -> None:
    (exec_,) = decode(_datagram(PROC_EVENT_EXEC, struct.pack("=ii", 42, 42)))
    assert (exec_.kind, exec_.pid, exec_.tgid, exec_.leader, exec_.timestamp_ns) == ("exec", 42, 42, True, 123456789)
    (fork,) = decode(_datagram(PROC_EVENT_FORK, struct.pack("=iiii", 10, 10, 43, 43)))
    assert (fork.kind, fork.pid, fork.parent_tgid) == ("fork", 43, 10)
    (thread_exit,) = decode(_datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 44, 42, 256, 17, 10, 10)))
    assert (thread_exit.kind, thread_exit.leader, thread_exit.exit_code, thread_exit.parent_tgid) == (
        "exit", False, 256, 10)
    (old_exit,) = decode(_datagram(PROC_EVENT_EXIT, struct.pack("=iiII", 42, 42, 0, 17)))
    assert (old_exit.pid, old_exit.parent_tgid) == (42, None)
    (ack,) = decode(_datagram(PROC_EVENT_NONE, struct.pack("=I", 1)))
    assert (ack.kind, ack.error) == ("ack", 1)


def test_decode_skips_other_connectors_and_reads_several_messages() -> None:
    other = _datagram(PROC_EVENT_EXEC, struct.pack("=ii", 1, 1), idx=7)
    two = _datagram(PROC_EVENT_EXEC, struct.pack("=ii", 5, 5)) + _datagram(PROC_EVENT_EXEC, struct.pack("=ii", 6, 6))
    assert decode(other) == []
    assert [e.pid for e in decode(two)] == [5, 6]


@pytest.mark.parametrize("cut", [20, 40, 52, 58])
def test_decode_rejects_truncated_messages(cut: int) -> None:
    whole = _datagram(PROC_EVENT_FORK, struct.pack("=iiii", 10, 10, 43, 43))
    broken = struct.pack("=I", cut) + whole[4:cut]
    with pytest.raises(DecodeError):
        decode(broken)


def test_listen_request_layout_and_its_ack() -> None:
    raw = listen_request(777, cookie=99)
    length, _type, _flags, _seq, port = struct.unpack_from("=IHHII", raw)
    idx, val, seq, ack, size, _f = struct.unpack_from("=IIIIHH", raw, 16)
    assert (length, port, idx, val, seq, ack, size) == (len(raw), 777, CN_IDX_PROC, CN_VAL_PROC, 99, 99, 4)
    assert struct.unpack_from("=I", raw, 36) == (PROC_CN_MCAST_LISTEN,)
    payload = struct.pack("=IIQI", PROC_EVENT_NONE, 0, 0, 0)
    reply = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 99, 100, len(payload), 0) + payload
    (acked,) = decode(struct.pack("=IHHII", 16 + len(reply), 3, 0, 0, 0) + reply)
    assert (acked.kind, acked.cookie, acked.error) == ("ack", 100, 0)


# -- configuration -----------------------------------------------------------


def test_bad_mode_and_disabled() -> None:
    with pytest.raises(CollectorError, match="auto, netlink, poll"):
        ProcessCollector({"mode": "ebpf"})
    assert ProcessCollector({"enabled": False}).available().mode is None
    assert ProcessCollector({"mode": "poll"}).available().mode == "poll"


# -- netlink on the real kernel ------------------------------------------------


@pytest.mark.root
def test_contract_netlink() -> None:
    collector = ProcessCollector({"mode": "auto"})
    assert collector.available().mode == "netlink"
    with running(collector) as run:
        assert collector.health.mode == "netlink"
        assert collector.health.up
        child = subprocess.Popen(["/bin/sleep", "0.2"])
        child.wait()
        exec_ = run.wait_for("process.exec", child.pid)
        exit_ = run.wait_for("process.exit", child.pid)
    assert (exec_.collector, exec_.process.exe, exec_.process.name) == ("process", SLEEP, "sleep")
    assert exit_.process.exe == SLEEP  # the exit carries the identity cached at exec
    assert exec_.process.cmdline == "/bin/sleep 0.2"
    assert exec_.parent.pid == os.getpid()
    assert collector.health.events >= 2


@pytest.mark.root
def test_netlink_catches_an_exec_storm() -> None:
    collector = ProcessCollector({"mode": "netlink"})
    with running(collector) as run:
        spawned = spawn(STORM, 64, "/bin/true", timeout=300)
        settle(run, spawned)
    execs = run.of("process.exec", spawned)
    with_exe = [e for e in execs.values() if e.process.exe is not None]
    print(f"\nnetlink storm: {len(execs)}/{STORM} execs caught, {len(with_exe)} read before the process ended, "
          f"drops {collector.health.drops}")
    assert len(execs) >= 0.99 * STORM
    # What was read is right; what could not be read is absent, never wrong.
    assert {e.process.exe for e in with_exe} <= {TRUE}
    assert {e.process.name for e in execs.values()} <= {"true", None}
    partial = sum(1 for e in run.events if e.kind == "process.exec" and e.process.exe is None
                  and e.process.cmdline is None)
    assert collector.health.partials.get("proc_gone", 0) == partial


@pytest.mark.root
def test_netlink_storm_of_commands_that_live_a_little_has_the_right_exe() -> None:
    collector = ProcessCollector({"mode": "netlink"})
    with running(collector) as run:
        spawned = spawn(STORM, 200, "/bin/sleep", "0.2", timeout=300)
        settle(run, spawned)
    execs = run.of("process.exec", spawned)
    right = [pid for pid, e in execs.items() if e.process.exe == SLEEP and e.process.cmdline == "/bin/sleep 0.2"]
    print(f"\nnetlink storm of sleep 0.2: {len(right)}/{STORM} with exe and cmdline")
    assert len(right) >= 0.99 * STORM


@pytest.mark.root
def test_loginuid_uid_and_cwd_of_a_child(tmp_path: Path) -> None:
    def become_someone() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write("4242")
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)

    collector = ProcessCollector({"mode": "netlink"})
    with running(collector) as run:
        workdir = tmp_path / "工作 目录"
        workdir.mkdir()
        try:
            child = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3", "一二 三"], cwd=workdir,
                                     preexec_fn=become_someone)
        except subprocess.SubprocessError as exc:
            pytest.skip(f"cannot set a loginuid here ({exc}); loginuid parsing is covered by tests/unit/test_procfs.py")
        child.wait()
        event = run.wait_for("process.exec", child.pid)
    p = event.process
    assert (p.loginuid, p.uid, p.exe, p.cwd) == (4242, 65534, os.path.realpath("/bin/sh"), str(workdir))
    assert p.cmdline == "/bin/sh -c sleep 0.3 一二 三"
    assert p.user is not None  # nobody, or whatever the account database calls 65534
    assert p.ppid == os.getpid() == event.parent.pid
    assert event.parent.exe == os.path.realpath(sys.executable)
    assert p.start_time is not None
    assert abs(p.start_time - time.time()) < 60  # boot time + ticks, not ticks alone


@pytest.mark.root
def test_rejected_events_are_counted() -> None:
    collector = ProcessCollector({"mode": "netlink"})
    with running(collector, accept=False) as run:
        child = subprocess.Popen(["/bin/sleep", "0.1"])
        child.wait()
        run.wait_for("process.exit", child.pid)
    assert collector.health.drops.get("emit_rejected", 0) >= 2


@pytest.mark.root
def test_kernel_overflow_is_counted() -> None:
    # A tiny receive buffer and a pipeline that stalls: the kernel must drop
    # messages, and the collector must say so rather than lose them silently.
    collector = ProcessCollector({"mode": "netlink"}, rcvbuf=4096)
    with running(collector) as run:
        run.delay = 0.002
        spawned = spawn(500, 64, "/bin/true", timeout=300)
        time.sleep(0.5)
    overflows = collector.health.drops.get("kernel_overflow", 0)
    print(f"\nsmall buffer: {overflows} overflow reports for {len(spawned)} execs")
    assert overflows >= 1


# -- poll ----------------------------------------------------------------------


def test_poll_mode_sees_a_process_start_and_end() -> None:
    collector = ProcessCollector({"mode": "poll"}, Sources(), poll_interval=0.05)
    with running(collector) as run:
        assert collector.health.mode == "poll"
        child = subprocess.Popen(["/bin/sleep", "0.5"])
        exec_ = run.wait_for("process.exec", child.pid)
        child.wait()
        exit_ = run.wait_for("process.exit", child.pid)
    assert exec_.process.exe == SLEEP
    assert exit_.process.start_time == exec_.process.start_time


@pytest.mark.root
def test_poll_mode_share_of_an_exec_storm() -> None:
    collector = ProcessCollector({"mode": "poll"}, poll_interval=0.05)
    with running(collector) as run:
        spawned = spawn(STORM, 64, "/bin/true", timeout=300)
        time.sleep(0.2)
    execs = run.of("process.exec", spawned)
    print(f"\npoll storm: {len(execs)}/{STORM} caught ({100 * len(execs) / STORM:.1f}%)")
    # Polling cannot tell a fork from an exec: a child caught before it exec'd is reported
    # running the spawner's program, which is what it was running at that moment.
    assert {e.process.exe for e in execs.values()} <= {TRUE, None, os.path.realpath(sys.executable)}


# Runs in a child interpreter, optionally after dropping to uid 65534 (modules
# are imported first: the interpreter's own files may not be readable by nobody).
START_AS = r"""
import json, os, subprocess, sys, threading, time
import psutil
from collectors.base import CollectorError
from collectors.process import ProcessCollector
if sys.argv[1] == "drop":
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
out = {}
strict = ProcessCollector({"mode": "netlink"})
out["strict"] = strict.available().mode
stop = threading.Event()
stop.set()
try:
    strict.run(lambda e: True, stop)
    out["strict_run"] = "ran"
except CollectorError as exc:
    out["strict_run"] = str(exc)
c = ProcessCollector({"mode": "auto"}, poll_interval=0.05)
a = c.available()
out["mode"], out["reason"] = a.mode, a.reason
events, stop = [], threading.Event()
t = threading.Thread(target=c.run, args=(lambda e: events.append(e) or True, stop))
t.start()
end = time.monotonic() + 20
while not c.health.up and time.monotonic() < end:
    time.sleep(0.05)
child = subprocess.Popen(["/bin/sleep", "0.3"])
out["child"] = child.pid
child.wait()
time.sleep(0.5)
out["running"] = c.health.mode
stop.set()
t.join(10)
out["returned"] = not t.is_alive()
out["exec_exe"] = [e.process.exe for e in events if e.kind == "process.exec" and e.process.pid == child.pid]
out["exits"] = [e.process.pid for e in events if e.kind == "process.exit"]
json.dump(out, sys.stdout)
"""


def start_as(*prefix: str, drop: bool) -> dict[str, Any]:
    """Run START_AS (under ``prefix``, e.g. unshare) and return what it reported."""
    done = subprocess.run([*prefix, sys.executable, "-c", START_AS, "drop" if drop else "keep"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["returned"], "run() did not return after stop"
    assert out["running"] == out["mode"], "run() used another mode than available() reported"
    assert out["exec_exe"] == [SLEEP], "the child's exec was not seen"
    assert out["child"] in out["exits"]
    return out


@pytest.mark.root
def test_unprivileged_start_works_in_the_mode_the_kernel_grants() -> None:
    out = start_as(drop=True)
    print(f"\nunprivileged: {out['mode']} ({out['reason'] or 'kernel accepts unprivileged listeners'})")
    if out["mode"] == "poll":  # kernels before 6.6 reserve the connector to CAP_NET_ADMIN
        assert "CAP_NET_ADMIN" in out["reason"]
        assert out["strict"] is None
        assert "CAP_NET_ADMIN" in out["strict_run"]
    else:
        assert (out["mode"], out["strict"], out["strict_run"]) == ("netlink", "netlink", "ran")


@pytest.mark.root
@pytest.mark.parametrize("drop", [False, True], ids=["root", "unprivileged"])
def test_own_pid_namespace_falls_back_to_poll(drop: bool) -> None:
    # The kernel ignores subscriptions from a container's pid namespace; without
    # the acknowledgement check the collector would sit in netlink mode seeing nothing.
    out = start_as("unshare", "--pid", "--fork", "--mount-proc", drop=drop)
    assert out["mode"] == "poll"
    assert "namespace" in out["reason"]
    # Asked for netlink explicitly, it refuses rather than quietly polling.
    assert out["strict"] is None
    assert "did not acknowledge" in out["strict_run"]
