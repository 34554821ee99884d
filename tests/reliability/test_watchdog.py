"""A stuck pipeline is noticed: /healthz 503, dutywatch_pipeline_stalled 1, no more WATCHDOG=1."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

import agent.daemon.agent as agent_mod
from agent.daemon.notify import Notifier
from agent.daemon.pipeline import Stage
from agent.events import Event, Process
from tests.reliability.kit import RunningAgent, config_tree, http_get, metric, wait_for


class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET, read on a thread as systemd would."""

    def __init__(self, path: Path, read: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.path = path
        self.got: list[str] = []
        self.closed = False
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self.closed:
            try:
                self.got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
            except OSError:
                return

    def drain(self, seconds: float) -> list[str]:
        """Every message received during the next ``seconds``."""
        start = len(self.got)
        time.sleep(seconds)
        return self.got[start:]

    def close(self) -> None:
        """Stop reading."""
        self.closed = True
        self.sock.close()


def block_stage(ra: RunningAgent, gate: threading.Event) -> None:
    """Make the pipeline's stage hang on every event until ``gate`` opens."""
    real = ra.agent.pipeline.stage

    def attribute(event: Event) -> object:
        gate.wait(120)
        return real.attribute(event)

    ra.agent.pipeline.stage = Stage(attribute, real.engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("waiting", [1, 50], ids=["one-event-in-hand", "events-queued-behind"])
def test_stuck_stage_fails_health_stops_watchdog_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              waiting: int) -> None:
    monkeypatch.setattr(agent_mod, "STALL_SECONDS", 1.0)
    notify = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})
    gate = threading.Event()
    with RunningAgent(config_tree(tmp_path), notifier=notifier) as ra:
        port = ra.agent.exporter.port
        assert "WATCHDOG=1" in notify.drain(1.0), "no watchdog pings while healthy"
        assert http_get(port, "/healthz")[0] == 200
        block_stage(ra, gate)
        p = Process(pid=4242, name="cat", exe="/usr/bin/cat", uid=1000)
        ra.injector.send([Event("process.exec", None, "inject", p) for _ in range(waiting)])
        try:
            wait_for(lambda: http_get(port, "/healthz")[0] == 503, "healthz never failed on a stuck stage")
            why = http_get(port, "/healthz")[1]
            assert "pipeline stalled" in why
            wait_for(lambda: metric(http_get(port, "/metrics")[1], "dutywatch_pipeline_stalled") == 1,
                     "dutywatch_pipeline_stalled never became 1")
            notify.drain(0.5)  # pings sent before the run loop saw the stall
            assert "WATCHDOG=1" not in notify.drain(1.5), "watchdog still pinged while the pipeline was stuck"
        finally:
            gate.set()
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, "healthz did not recover")
        wait_for(lambda: metric(http_get(port, "/metrics")[1], "dutywatch_pipeline_stalled") == 0,
                 "dutywatch_pipeline_stalled stayed 1")
        assert "WATCHDOG=1" in notify.drain(1.0), "watchdog did not resume"
        assert ra.agent.pipeline.processed >= waiting
    notify.close()


def test_a_manager_that_stops_reading_never_blocks_the_agent(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock", read=False)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000"})
    results = [notifier.send("WATCHDOG=1") for _ in range(5000)]  # far more than a socket queue holds
    assert results[0] and not results[-1]
    with RunningAgent(config_tree(tmp_path), notifier=notifier) as ra:
        time.sleep(1.0)  # the run loop pings every 1 ms into the full queue
    assert not ra.thread.is_alive()
    notify.close()
