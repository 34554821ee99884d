"""Hostile process names, command lines and paths reach every sink without breaking it.

Invalid UTF-8 (as surrogate escapes), newlines, NULs, terminal escapes, fake
syslog headers and 1 MB strings go through a live agent into the journal,
the metrics exposition, syslog (parsed strictly by a loopback receiver) and
the HTML report; the landing page and labels never show a person's name or a path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.events import Event, File, Process
from tests.integration.syslog_strict import Receiver
from tests.reliability.kit import RunningAgent, config_tree, http_get, journal_findings, verify, wait_for

NASTY = [
    "first line\nsecond line\r\n<13>1 - fake - - - - injected",
    "before\x00after",
    "\x1b[2J\x1b]0;owned\x07\x1b[31mred",
    "\x9b31m\x85next\u2028line",
    "bad\udcff\udcfebytes",  # invalid UTF-8 from /proc, kept as surrogate escapes
    'quote" backslash\\ bracket] end\\ {label="x"} # HELP',
    "A" * (1 << 20),
]


def hostile_events(assets: Path) -> list[Event]:
    out = []
    for i, s in enumerate(NASTY):
        p = Process(pid=300000 + i, name=s[:4096], exe=f"/tmp/{s}", cmdline=s, cwd=f"/tmp/{s[:200]}", uid=1000,
                    user="zhangsan", loginuid=1000)
        out.append(Event("process.exec", None, "inject", p))
        out.append(Event("file.open", None, "inject", p, file=File(path=f"{assets}/机密-{s[:300]}.docx")))
    return out


@pytest.fixture
def live(tmp_path: Path):  # type: ignore[no-untyped-def]
    rx = Receiver("tcp").start()
    cfg = config_tree(tmp_path, extra=f"forward: {{syslog: {{address: 'tcp://127.0.0.1:{rx.port}'}}}}\n")
    ra = RunningAgent(cfg).__enter__()
    ra.injector.send(hostile_events(tmp_path / "assets"))
    wait_for(lambda: ra.agent.pipeline.depth() == 0 and ra.agent.writer.pending() == 0, "not journaled")
    yield ra, rx, cfg, tmp_path
    ra.stop()
    rx.stop()


def test_hostile_strings_in_journal_syslog_and_metrics(live) -> None:  # type: ignore[no-untyped-def]
    ra, rx, cfg, tmp = live
    made = ra.agent.pipeline.findings
    assert made >= len(NASTY)
    port = ra.agent.exporter.port
    status, text = http_get(port, "/metrics")
    assert status == 200
    promtool = shutil.which("promtool")
    if promtool is not None:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    # Labels and the landing page: no person, no path, no document title.
    landing = http_get(port, "/")[1]
    for page in (text, landing):
        for secret in ("张三", "zhangsan", "/tmp/", str(tmp), "机密-", "injected", "owned"):
            assert secret not in page, f"{secret!r} shown on a page anyone on the network can read"
    # Syslog: every finding arrives as one strictly valid RFC 5424 message, in order.
    got = rx.wait_for(made, timeout=30)
    assert rx.errors == [], rx.errors
    assert len(got) >= made
    ra.stop()
    v = verify(tmp / "state" / "journal.db")
    assert v.returncode == 0, v.stdout + v.stderr
    found = journal_findings(cfg)
    exes = {r["event"]["process"]["exe"] for r in found}
    assert any("\n" in e for e in exes) and any("\x1b" in e for e in exes), "hostile text was not kept as-is"
    # The 1 MB command line is capped at 4 KiB in the record, its full length and SHA-256 kept.
    import hashlib
    big = [r for r in found if (r["event"]["process"].get("cmdline") or "").startswith("A" * 3000)]
    assert big, "the 1 MB command line was lost"
    want = {"length": 1 << 20, "sha256": hashlib.sha256(b"A" * (1 << 20)).hexdigest()}
    assert all(r["truncated"]["process.cmdline"] == want for r in big)
    assert all(len(r["event"]["process"]["cmdline"].encode()) <= 4096 for r in big)
    json.dumps(found)  # the journal's own reader gave back valid JSON for every record


def test_hostile_strings_in_the_html_report(live) -> None:  # type: ignore[no-untyped-def]
    ra, _rx, cfg, tmp = live
    ra.stop()
    out = tmp / "report.html"
    r = subprocess.run([sys.executable, "-m", "agent", "report", "--config", str(cfg), "--format", "html",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    html = out.read_text(encoding="utf-8")
    assert ("\x1b" not in html and "<13>1 - fake" not in html.replace("&lt;", "<")) or "&lt;13&gt;" in html
    assert "<script" not in html.lower() or html.lower().count("<script") == html.lower().count("<script nonce")
