"""The journal's witness, on a real systemd-journald: a journal cut back to its last checkpoint is found.

A namespaced systemd-journald (``systemd-journald NAME``) runs for the test
with its own socket and files, so the test neither needs nor touches the
host's journal; the agent writes to it with the native protocol and reads it
back with ``journalctl --namespace``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.journal.witness import IDENTIFIER, JournaldWitness
from tests.integration.agent_harness import AgentProcess

JOURNALD = Path("/lib/systemd/systemd-journald")
ROOT = pytest.mark.skipif(os.geteuid() != 0 or not JOURNALD.exists(),
                          reason="needs root and systemd-journald (Debian package systemd)")


@pytest.fixture
def journald() -> Iterator[str]:
    ns = f"dw15-{os.urandom(4).hex()}"
    proc = subprocess.Popen([str(JOURNALD), ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = Path(f"/run/systemd/journal.{ns}/socket")
    deadline = time.monotonic() + 20
    while not sock.is_socket():
        assert proc.poll() is None, "systemd-journald exited"
        assert time.monotonic() < deadline, "systemd-journald never opened its socket"
        time.sleep(0.05)
    try:
        yield ns
    finally:
        proc.terminate()
        proc.wait(20)
        machine = Path("/etc/machine-id").read_text().strip()
        for d in (Path(f"/var/log/journal/{machine}.{ns}"), Path(f"/run/log/journal/{machine}.{ns}"),
                  Path(f"/run/systemd/journal.{ns}")):
            shutil.rmtree(d, ignore_errors=True)


def _collectors() -> str:
    return ("  process: {enabled: true, mode: netlink}\n" + "".join(
        f"  {n}: {{enabled: false}}\n" for n in ("network", "files", "media", "host", "audit")))


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.root
@ROOT
def test_a_journal_cut_back_to_its_last_checkpoint_is_found_by_the_witness(tmp_path: Path, journald: str) -> None:
    witness = f"journald@{journald}"
    agent = AgentProcess(tmp_path, collectors=_collectors(), extra_config=f"journal: {{witness: [{witness}]}}\n")
    db = agent.state / "journal.db"
    agent.start()
    assert agent.stop() == 0
    key = agent.cli("journal", "pubkey", "--state-dir", str(agent.state)).stdout
    assert key
    w = JournaldWitness(journald)
    with sqlite3.connect(db) as conn:
        (fp,) = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
    _wait(lambda: bool(w.heads(fp)), "the clean stop's checkpoint was not witnessed")
    assert w.heads(fp)[-1].kind == "checkpoint" and w.heads(fp)[-1].signature

    # The legitimate twin: a restart after a clean stop is no rollback.
    agent.start()
    agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="process", mode="netlink") == 1,
               "process collector not up")
    # A violation: a program run from /tmp.
    bin_dir = Path(tempfile.mkdtemp(prefix="dw15-w-", dir="/tmp"))
    try:
        prog = bin_dir / "tool"
        shutil.copy("/bin/sleep", prog)
        subprocess.run([str(prog), "3"], check=True, timeout=30)
        agent.wait(lambda: any(r.get("rule") == "DB-MAL-001" and r["event"]["process"]["exe"] == str(prog)
                               for r in agent.events("--rule", "DB-MAL-001")), "no DB-MAL-001")
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    _wait(lambda: w.heads(fp)[-1].kind == "head", "the alert's head was not witnessed")
    agent.kill()

    # Cut back to the last signed checkpoint, and remove run.json.
    with sqlite3.connect(db) as conn:
        (signed,) = conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()
        conn.execute("DELETE FROM records WHERE seq > ?", (signed,))
        conn.execute("DELETE FROM checkpoints WHERE seq > ?", (signed,))
    (agent.state / "run.json").unlink()
    plain = agent.cli("verify", "--journal", str(db))
    assert plain.returncode == 0, "the cut journal must verify on its own: that is the point of the witness"
    checked = agent.cli("verify", "--journal", str(db), "--witness", witness)
    assert checked.returncode == 1
    assert "FAILED witness" in checked.stderr and f"the journal ends at seq {signed}" in checked.stderr

    agent.start()
    assert agent.metric("dutywatch_tamper_total", reason="journal_rolled_back") == 1
    assert agent.stop() == 0
    records = agent.events()
    (t,) = [r for r in records if r.get("kind") == "agent.tamper" and r["detail"]["reason"] == "journal_rolled_back"]
    assert t["detail"]["journal_head"]["seq"] == signed
    assert t["detail"]["witnessed_head"]["seq"] > signed
    assert any(r.get("rule") == "ZR-005" and "journal_rolled_back" in r["message"]["en"] for r in records)
    # Nothing else was wrong before the cut: the clean stop before it left no gap.
    assert not [r for r in records if r.get("kind") == "agent.tamper" and r["detail"]["reason"] == "unclean_stop"]


@pytest.mark.root
@ROOT
def test_an_untouched_journal_holds_every_witnessed_head(tmp_path: Path, journald: str) -> None:
    witness = f"journald@{journald}"
    agent = AgentProcess(tmp_path, collectors=_collectors(),
                         extra_config=f"journal: {{witness: [{witness}], checkpoint_every: 1}}\n")
    for _ in range(3):
        agent.start()
        assert agent.stop() == 0
    db = agent.state / "journal.db"
    r = agent.cli("verify", "--journal", str(db), "--witness", witness)
    assert r.returncode == 0, r.stderr
    assert "all in the journal" in r.stdout
    records = agent.events()
    assert not [x for x in records if x.get("kind") == "agent.tamper"]
    # The heads are real journald entries with the fixed identifier and structured fields.
    out = subprocess.run(["journalctl", f"--namespace={journald}", "--no-pager", "-o", "verbose",
                          f"SYSLOG_IDENTIFIER={IDENTIFIER}"], capture_output=True, text=True, timeout=60)
    assert "DUTYWATCH_SEQ=" in out.stdout and "DUTYWATCH_SIGNATURE=" in out.stdout


@pytest.mark.root
@ROOT
def test_the_audit_witness_puts_the_head_in_the_kernel_audit_trail(tmp_path: Path) -> None:
    import select
    import socket
    import struct

    from agent.journal.witness import AUDIT_USER_MSG, NETLINK_AUDIT, AuditWitness
    reader = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    try:
        reader.bind((0, 1))  # AUDIT_NLGRP_READLOG: every record the kernel logs
    except OSError as exc:
        reader.close()
        pytest.skip(f"cannot read the audit multicast group here: {exc}")
    key = os.urandom(8).hex()
    try:
        assert AuditWitness().send("checkpoint", {"seq": 42, "hash": "ab" * 32, "time": 1.5, "signature": "c2ln"},
                                   host="test-host-01", key=key, journal="/var/lib/dutywatch/journal.db")
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and key.encode() not in got:
            if select.select([reader], [], [], 0.5)[0]:
                data = reader.recv(65536)
                length, mtype = struct.unpack("=IH", data[:6])
                if mtype == AUDIT_USER_MSG:
                    got = data[16:length]
    finally:
        reader.close()
    text = got.decode()
    assert f"{IDENTIFIER} kind=checkpoint seq=42 hash={'ab' * 32}" in text and f"key={key}" in text
    assert "signature=c2ln" in text and "pid=" in text  # the kernel stamps who wrote it


def test_the_audit_witness_runs_only_with_the_audit_source(tmp_path: Path) -> None:
    from agent.daemon.agent import Agent
    from tests.reliability.kit import config_tree
    off = "collectors: {process: {enabled: false}, network: {enabled: false}, files: {enabled: false}, " \
          "media: {enabled: false}, host: {enabled: false}, audit: {enabled: false}}\n"
    a = Agent(config_tree(tmp_path, extra=off))
    try:
        assert [w.name for w in a.witnesses] == ["journald"]
    finally:
        a.journal.close()
