"""Output that cannot hurt its reader, on a real agent: hostile names, a 2 MB command line, a planted link.

A program whose file name carries terminal escapes, a newline that would
forge a table row and a bidi override runs from /tmp with a 2 MB command
line; the real agent (netlink process collector) journals it. Every output
an officer reads must show those characters as visible escapes, and the
record must stay small with the command line's full length and SHA-256
kept. Beside it a legitimate program with a Chinese name is shown as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import resource
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.textsafe import VisibleFormatter, cap, visible
from tests.integration.agent_harness import REPO, AgentProcess

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netlink process connector, other uids")
HOSTILE = "\x1b[2J\x1b[1;31mFORGED\x1b[0m\n99999  2026-01-01 00:00:00  critical alert\u202eexe.txt\x9b31m"
TWIN = "报告工具"
ARG = "A" * 100_000
ARGS = 21  # 2.1 MB of arguments
OFF = "  {name}: {{enabled: false}}\n"


def _collectors() -> str:
    out = "  process: {enabled: true, mode: netlink}\n"
    for name in ("network", "files", "media", "host", "audit"):
        out += OFF.format(name=name)
    return out


def _as_zhangsan_with_room() -> None:
    # A larger stack limit raises the kernel's argument-size limit (a quarter of it) above 2 MB.
    resource.setrlimit(resource.RLIMIT_STACK, (64 << 20, 64 << 20))
    os.setgid(1000)
    os.setuid(1000)


def read_through_pty(argv: list[str]) -> bytes:
    """What a terminal would receive from ``argv`` (stdout and stderr on a pseudo-terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=REPO)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(30)
    assert proc.returncode == 0, out
    return out


def _raw_unsafe(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    return [c for c in ("\x1b", "\u202e", "\x9b") if c in text]


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dw15-bin-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.root
@ROOT
def test_hostile_names_and_a_huge_command_line_cannot_hurt_any_reader(tmp_path: Path, bin_dir: Path) -> None:
    hostile, twin = bin_dir / HOSTILE, bin_dir / TWIN
    for p in (hostile, twin):
        shutil.copy("/bin/bash", p)
        p.chmod(0o755)
    agent = AgentProcess(tmp_path, collectors=_collectors())
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="process", mode="netlink") == 1,
                   "process collector not up")
        argv = [str(hostile), "-c", "sleep 2; true", *([ARG] * ARGS)]
        big = subprocess.Popen(argv, preexec_fn=_as_zhangsan_with_room)
        small = subprocess.Popen([str(twin), "-c", "sleep 2; true", "季度报告.docx"], preexec_fn=_as_zhangsan_with_room)
        big.wait(30)
        small.wait(30)

        def found(pid: int) -> list[dict[str, object]]:
            return [r for r in agent.events("--rule", "DB-MAL-001")
                    if r.get("event", {}).get("process", {}).get("pid") == pid]  # type: ignore[union-attr]
        agent.wait(lambda: bool(found(big.pid)) and bool(found(small.pid)), "no DB-MAL-001 for both programs")
    finally:
        agent.stop()
    (rec,) = found(big.pid)
    proc = rec["event"]["process"]  # type: ignore[index]
    full = ("\0".join(argv) + "\0").encode("utf-8")
    digest = hashlib.sha256(full).hexdigest()
    assert proc["exe"] == str(hostile)
    assert len(proc["cmdline"].encode("utf-8")) <= 4096 * 4
    assert len(proc["cmdline"]) <= 4096
    assert proc["cmdline"].endswith(f"[truncated: {len(full)} bytes, sha256 {digest}]")
    with sqlite3.connect(agent.state / "journal.db") as conn:
        (size,) = conn.execute("SELECT length(CAST(body AS BLOB)) FROM records WHERE seq = ?",
                               (rec["seq"],)).fetchone()
    assert size < 32 * 1024, f"a 2 MB command line made a {size}-byte record"

    # The events table, as a terminal receives it.
    table = read_through_pty([sys.executable, "-m", "agent", "events", "--config", str(agent.config),
                              "--rule", "DB-MAL-001", "--lang", "en"])
    assert _raw_unsafe(table) == []
    text = table.decode("utf-8")
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\x0a99999" in text
    assert not any(line.startswith("99999") for line in text.splitlines()), "a forged row appeared"
    assert TWIN in text, "a legitimate Chinese name must be shown as it is"
    assert len([line for line in text.splitlines() if bin_dir.name in line]) == 2  # one row each, nothing forged

    # JSON lines: valid, one record a line, nothing a terminal would act on.
    js = read_through_pty([sys.executable, "-m", "agent", "events", "--config", str(agent.config),
                           "--rule", "DB-MAL-001", "--format", "json"])
    assert _raw_unsafe(js) == []
    mine = [json.loads(line) for line in js.decode("utf-8").splitlines() if bin_dir.name in line]
    assert {r["event"]["process"]["pid"] for r in mine} == {big.pid, small.pid}

    # Reports in every text format.
    for fmt in ("html", "csv", "json"):
        out = tmp_path / f"report.{fmt}"
        r = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(agent.config), "--format", fmt,
                            "--lang", "en", "--out", str(out)], capture_output=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        body = out.read_bytes()
        assert _raw_unsafe(body) == [], fmt
        assert TWIN.encode() in body, fmt

    # The agent's own log.
    assert _raw_unsafe(agent.log.read_bytes()) == []


def test_log_lines_and_caps_show_hostile_text_visibly() -> None:
    import logging
    record = logging.LogRecord("dutywatch", logging.WARNING, __file__, 1, "cannot read %s", (HOSTILE,), None)
    line = VisibleFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.startswith("WARNING cannot read \\x1b[2J")
    assert visible("中文 file name.txt") == "中文 file name.txt"
    short, info = cap("x" * 10_000)
    assert len(short.encode()) <= 4096 and info == {"length": 10_000,
                                                    "sha256": hashlib.sha256(b"x" * 10_000).hexdigest()}
    assert cap("常" * 1000) == ("常" * 1000, None)  # 3000 bytes: within the cap


@pytest.mark.root
@ROOT
def test_report_out_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    from agent.journal.store import Journal
    state = tmp_path / "state"
    with Journal(state, host="h") as j:
        j.append({"type": "finding", "time": time.time(), "host": "h", "rule": "DB-MAL-001",
                  "severity": "high", "action": "alert", "message": {"zh": "x", "en": "x"}, "event": {},
                  "accountable": {}})
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    out_dir = tmp_path / "shared"
    out_dir.mkdir()
    out_dir.chmod(0o1777)
    out = out_dir / "x.html"
    out.symlink_to(victim)
    # The temporary names the writer once used (".x.html.tmp-PID") planted for the next pids.
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    for pid in range(last + 1, last + 400):
        (out_dir / f".x.html.tmp-{pid}").symlink_to(victim)
    r = subprocess.run([sys.executable, "-m", "agent", "report", "--state-dir", str(state), "--format", "html",
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "keep me\n", "the report overwrote the file a planted link points at"
    assert not out.is_symlink() and out.read_text(encoding="utf-8").lstrip().startswith("<!DOCTYPE")
    # The legitimate twin: writing over an existing report of one's own replaces it.
    before = out.stat().st_ino
    r = subprocess.run([sys.executable, "-m", "agent", "report", "--state-dir", str(state), "--format", "csv",
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_ino != before and "序号,时间,主机" in out.read_text(encoding="utf-8-sig")  # the zh CSV
    assert victim.read_text() == "keep me\n"
