"""The state directory's filesystem fills up: the agent keeps running, counts, holds findings, resumes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.kit import (
    RunningAgent,
    config_tree,
    exec_from_tmp,
    http_get,
    journal_findings,
    metric,
    verify,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount tmpfs")]


@contextlib.contextmanager
def small_fs(where: Path, size: str = "6m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the duration."""
    where.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "dwtest", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    probe = fs / "probe"
    pfd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(OSError) as exc:
        os.write(pfd, b"x" * 8192)
    os.close(pfd)
    probe.unlink()
    assert exc.value.errno == errno.ENOSPC
    return filler


def test_disk_full_holds_findings_counts_and_resumes_with_a_gap_record(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with small_fs(tmp_path / "mnt") as fs:
        cfg = config_tree(tmp_path, state=fs / "state")
        with RunningAgent(cfg) as ra:
            port = ra.agent.exporter.port
            ra.injector.send(exec_from_tmp(200))
            wait_for(lambda: ra.agent.writer.durable_seq >= 200, "first findings not journaled")
            filler = fill(fs)
            sent = 0
            # Offer findings until writes fail: SQLite may still fit a few into pages it already holds.
            while metric(http_get(port, "/metrics")[1], "dutywatch_journal_write_failures_total") == 0:
                assert sent < 20000, "journal writes never failed on a full filesystem"
                ra.injector.send(exec_from_tmp(500, 200 + sent))
                sent += 500
                wait_for(lambda: ra.agent.pipeline.depth() == 0, "pipeline did not drain")
            text = http_get(port, "/metrics")[1]
            assert metric(text, "dutywatch_journal_write_failures_total") >= 1
            assert http_get(port, "/healthz")[0] == 200, "a full disk must not look like a hung pipeline"
            assert any("journal write failed" in r.getMessage() for r in caplog.records)
            ra.injector.send(exec_from_tmp(100, 200 + sent))  # accepted while the disk is full
            sent += 100
            wait_for(lambda: ra.agent.pipeline.findings >= 200 + sent, "findings not evaluated while disk full")
            assert ra.agent.writer.pending() > 0
            filler.unlink()
            wait_for(lambda: ra.agent.writer.pending() == 0, "journal did not catch up once space returned", 60)
            assert any("journal writable again" in r.getMessage() for r in caplog.records)
            failures = metric(http_get(port, "/metrics")[1], "dutywatch_journal_write_failures_total")
        found = journal_findings(cfg)
        pids = {r["event"]["process"]["pid"] for r in found}
        assert pids == {100000 + i for i in range(200 + sent)}, "an accepted finding was lost"
        lifecycle = [r for r in journal_findings_all(cfg) if r.get("type") == "lifecycle"]
        (resumed,) = [r for r in lifecycle if r["kind"] == "journal.resumed"]
        assert resumed["detail"]["failed_writes"] >= 1 and resumed["detail"]["failed_since"] > 0
        assert lifecycle[-1]["kind"] == "agent.stop"
        v = verify(fs / "state" / "journal.db")
        assert v.returncode == 0, v.stdout + v.stderr
        print(f"disk full: {sent} findings offered after the fill, {int(failures)} failed writes counted, "
              f"all {len(found)} findings journaled after space returned; verify OK")


def journal_findings_all(cfg: Path) -> list[dict[str, object]]:
    import json
    import sys

    from tests.integration.agent_harness import REPO
    r = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(cfg), "--format", "json",
                        "--type", "all", "--since", "3650d"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
