"""The agent's own children (its configuration assessment and the commands that runs) are no one's operations.

A real agent with the netlink process collector and a registry where root is no
one: every root command with no login identity is ZR-001, the test's own one
included (the twin), but the assessment the agent starts, and what it runs, is
set aside and counted in ``dutywatch_events_own_total``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import REGISTRY, REPO, AgentProcess

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the netlink process connector")
NO_ROOT = "\n".join(line for line in REGISTRY.splitlines() if "account: root" not in line) + "\n"
COLLECTORS = "  process: {enabled: true, mode: netlink}\n" + "".join(
    f"  {n}: {{enabled: false}}\n" for n in ("network", "files", "media", "host", "audit"))


def _policy(tmp: Path, watched: Path) -> Path:
    watched.write_text("timeout = 600\n")
    p = tmp / "site.yaml"
    p.write_text(
        "policy: site\nchecks:\n"
        "  - id: SITE-001\n    title: {zh: 会话超时, en: Session timeout}\n    rationale: {zh: 理由, en: Why}\n"
        "    items: [L3-CES1-02]\n    clause: GB/T 22239-2019 8.1.4.1\n"
        f"    condition: {{config: {{path: {watched}, key: timeout, max: 900}}}}\n", encoding="utf-8")
    return p


def _zr(agent: AgentProcess) -> list[dict[str, Any]]:
    return [r["event"]["process"] for r in agent.events("--rule", "ZR-001")]


@pytest.mark.root
@ROOT
def test_the_agents_assessment_is_not_journaled_as_anyones_and_the_same_work_by_a_stranger_is(
        tmp_path: Path) -> None:
    with open("/proc/self/loginuid") as f:
        if f.read().strip() != "4294967295":
            pytest.skip("this test's processes must have no login identity")
    watched = tmp_path / "session.conf"
    agent = AgentProcess(tmp_path, collectors=COLLECTORS, registry=NO_ROOT.format(assets=tmp_path / "assets"),
                         extra_config=f"journal: {{fold_window: 0}}\nassess: {{every: 12h, policies: "
                                      f"[{_policy(tmp_path, watched)}]}}\n")
    agent.start()
    try:
        assert agent.proc is not None
        me = agent.proc.pid
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="process", mode="netlink") == 1,
                   "process collector not up")
        agent.wait(lambda: agent.metric("dutywatch_assessment_last_run_timestamp_seconds") > 0,
                   "no assessment at start", 120)
        # The start run may have begun before the collector was listening: a change makes a second one.
        first = agent.metric("dutywatch_assessment_last_run_timestamp_seconds")
        before = agent.metric("dutywatch_events_own_total", kind="process.exec")
        watched.write_text("timeout = 1200\n")
        agent.wait(lambda: agent.metric("dutywatch_assessment_last_run_timestamp_seconds") > first,
                   "the change was not assessed", 120)
        # The twin: the same interpreter, the same command, as root with no login identity, not the agent's.
        twin = subprocess.run([sys.executable, "-m", "agent", "assess", "--help"], capture_output=True,
                              cwd=REPO, timeout=60)
        assert twin.returncode == 0
        agent.wait(lambda: any("assess --help" in (p.get("cmdline") or "") for p in _zr(agent)),
                   "the stranger's command was not found")
        own = agent.metric("dutywatch_events_own_total", kind="process.exec")
    finally:
        agent.stop()
    assert own > before, "the agent's assessment ran no process the collector saw"
    found = _zr(agent)
    # (Other agents on this machine run their own assessments: those are strangers to this one.)
    mine = [p for p in found if p.get("ppid") == me or
            ("--low-priority" in (p.get("cmdline") or "") and str(tmp_path) in (p.get("cmdline") or ""))]
    assert not mine, mine
