"""A kernel whose audit configuration is locked (``auditctl -e 2``): the collector uses what it is given.

Locking cannot be undone without a reboot, so it is never done to the test
machine's kernel: the netlink socket is replaced by one that answers as a
locked kernel does (status enabled=2; rule changes and settings refused with
EPERM; the daemon pid may still be set, as the kernel allows). The collector
must not fail, must not claim the events its missing rules would have given
(so the process collector keeps reporting execs), must say so in the log, and
must leave the kernel as found.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import replace

import pytest

import collectors.audit as audit_mod
from collectors.audit import AuditCollector
from collectors.audit_netlink import AUDIT_STATUS_PID, AuditStatus, Message


class LockedKernel:
    """The kernel's side: locked, with the rules someone put in before locking it."""

    def __init__(self) -> None:
        self.status = AuditStatus(enabled=2, failure=1, pid=0, rate_limit=0, backlog_limit=320, lost=0, backlog=0,
                                  backlog_wait_time=15000)
        self.rules = [b"someone-elses-rule"]
        self.changes: list[str] = []


class LockedSocket:
    kernel = LockedKernel()

    def __init__(self, rcvbuf: int = 1 << 20, multicast: bool = False) -> None:
        self.multicast = multicast

    def open(self) -> LockedSocket:
        return self

    def close(self) -> None:
        pass

    def __enter__(self) -> LockedSocket:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def status(self) -> AuditStatus:
        return self.kernel.status

    def set_status(self, mask: int, enabled: int = 0, pid: int = 0, backlog_limit: int = 0, **_: int) -> None:
        if mask != AUDIT_STATUS_PID:
            raise OSError(errno.EPERM, "locked")
        self.kernel.status = replace(self.kernel.status, pid=pid)
        self.kernel.changes.append(f"pid={pid}")

    def list_rules(self) -> list[bytes]:
        return list(self.kernel.rules)

    def add_rule(self, rule: bytes) -> None:
        raise OSError(errno.EPERM, "locked")

    def delete_rule(self, rule: bytes) -> None:
        raise OSError(errno.EPERM, "locked")

    def receive(self, timeout: float | None, batch: int = 64, wake: tuple[int, ...] = ()) -> tuple[list[Message], int]:
        time.sleep(0.05 if timeout is None else min(timeout, 0.05))
        return [], 0


def test_a_locked_kernel_gets_no_own_rules_and_the_collector_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    LockedSocket.kernel = kernel = LockedKernel()
    monkeypatch.setattr(audit_mod, "AuditSocket", LockedSocket)
    c = AuditCollector({}, asset_paths=["/srv/secret"])
    assert c.available().mode == "daemon"  # no daemon registered: the records may still come here
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="dutywatch.collectors.audit"):
        t = threading.Thread(target=c.run, args=(lambda e: True, stop), daemon=True)
        t.start()
        end = time.monotonic() + 5
        while not c.health.up and time.monotonic() < end:
            time.sleep(0.02)
        assert c.health.up and c.health.mode == "daemon"
        # Nothing it would report is claimed: the process, network and files collectors carry on.
        assert not any(c.covers(k) for k in ("process.exec", "net.connect", "file", "media.mount"))
        assert not c.covers_path("/srv/secret/plan.txt")
        assert c.rules_installed == []
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert "rule(s) not added" in caplog.text and "Operation not permitted" in caplog.text
    # Left as found: the rules are the kernel's own, the role given back, no setting changed.
    assert kernel.rules == [b"someone-elses-rule"]
    assert kernel.changes == [f"pid={c.pid}", "pid=0"] and kernel.status.pid == 0
    assert kernel.status.enabled == 2 and kernel.status.backlog_limit == 320
