"""The agent's own processes, on a real process tree: the agent, its children and theirs, never a stranger."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.daemon.ownprocs import OwnProcesses
from agent.daemon.pipeline import Pipeline, Stage
from agent.events import Event, Process
from agent.metrics import Metrics
from collectors.procfs import ProcReader

# The stand-in agent: a process that starts a shell, which starts a sleeper (a grandchild).
TREE = ("import subprocess, sys, time\n"
        "p = subprocess.Popen(['/bin/sh', '-c', 'sleep 30 & echo $!; wait'], stdout=subprocess.PIPE, text=True)\n"
        "print(p.pid, p.stdout.readline().strip(), flush=True)\n"
        "time.sleep(30)\n")


@pytest.fixture
def tree() -> Iterator[tuple[int, int, int]]:
    agent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert agent.stdout is not None
    shell, sleeper = map(int, agent.stdout.readline().split())
    yield agent.pid, shell, sleeper
    os.killpg(agent.pid, 9)
    agent.wait(10)


def _proc(pid: int) -> Process:
    found = ProcReader().identity(pid)
    assert found is not None
    return found[0]


def test_the_agent_its_child_and_grandchild_are_its_own_and_a_stranger_is_not(tree: tuple[int, int, int]) -> None:
    agent, shell, sleeper = tree
    own = OwnProcesses(agent)
    assert own(_proc(agent))
    assert own(_proc(shell))  # parent is the agent
    assert own(_proc(sleeper))  # parent is the agent's child
    assert own(_proc(sleeper))  # remembered
    stranger = subprocess.Popen(["sleep", "5"])
    try:
        assert not own(_proc(stranger.pid))  # a sibling of the agent, started by the agent's parent
        assert not own(_proc(os.getpid()))  # the agent's parent
    finally:
        stranger.kill()
        stranger.wait()
    assert not own(Process(pid=4242, ppid=1))
    assert not own(Process(pid=4242))  # nothing to go by


def test_a_grandchild_whose_parent_was_never_seen_is_found_through_proc(tree: tuple[int, int, int]) -> None:
    agent, shell, sleeper = tree
    own = OwnProcesses(agent)
    assert own(_proc(sleeper))  # the shell's own event was missed: /proc's chain says whose it is
    assert own(Process(pid=999999, ppid=shell))  # and the shell is remembered now
    assert not own(_proc(os.getpid()))
    assert not own(Process(pid=999998, ppid=os.getpid()))  # a stranger's child stays a stranger


def test_a_reused_pid_is_a_stranger_and_cannot_adopt_children(tree: tuple[int, int, int]) -> None:
    agent, shell, _ = tree
    own = OwnProcesses(agent)
    real = _proc(shell)
    assert own(real)
    assert real.start_time is not None
    later = real.start_time + 60
    # The same pid with another start time is another process.
    assert not own(real._replace(start_time=later, ppid=1))
    # A process whose parent pid belongs to a remembered descendant, while /proc shows another process there.
    # (Here: a descendant remembered at this test's own pid, which /proc shows started at another time.)
    me = _proc(os.getpid())
    assert me.start_time is not None
    fake = OwnProcesses(agent)
    assert fake(Process(pid=os.getpid(), ppid=agent, start_time=me.start_time - 100))
    assert not fake(Process(pid=777778, ppid=os.getpid(), start_time=time.time()))
    # ...but a descendant that has since exited still passes on to its child (nothing else holds its pid).
    gone = OwnProcesses(agent)
    assert gone(Process(pid=shell, ppid=agent, start_time=real.start_time))
    assert gone(Process(pid=888888, ppid=shell, start_time=time.time()))


class _Engine:
    def __init__(self) -> None:
        self.seen: list[Event] = []

    def match(self, e: Event) -> list[object]:
        self.seen.append(e)
        return []


def test_the_pipeline_does_not_evaluate_the_agents_own_operations(tree: tuple[int, int, int]) -> None:
    agent, shell, sleeper = tree
    engine = _Engine()
    metrics = Metrics("test")
    pipe = Pipeline(Stage(lambda e: e, engine), metrics, own=OwnProcesses(agent))  # type: ignore[arg-type]
    for pid in (shell, sleeper, os.getpid()):
        pipe.process_now(Event("process.exec", collector="process", process=_proc(pid)))
    pipe.process_now(Event("agent.tamper", collector="agent", process=_proc(shell)))  # about the agent: kept
    assert [(e.kind, e.process.pid) for e in engine.seen] == [("process.exec", os.getpid()),
                                                               ("agent.tamper", shell)]
    assert pipe.own == 2
    assert metrics.events_own.value(("process.exec",)) == 2
