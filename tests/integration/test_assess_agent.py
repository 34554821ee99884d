"""The agent runs the configuration assessment: at start, when a file a check reads changes, journaled and measured."""

from __future__ import annotations

import os
from pathlib import Path

from agent_harness import AgentProcess

OFF = "  {name}: {{enabled: false}}\n"
COLLECTORS = "".join(OFF.format(name=n) for n in ("process", "network", "files", "media", "host", "audit"))


def _policy(tmp: Path, watched: Path) -> Path:
    p = tmp / "site.yaml"
    p.write_text(
        "policy: site\nchecks:\n"
        "  - id: SITE-001\n    title: {zh: 会话超时, en: Session timeout}\n    rationale: {zh: 理由, en: Why}\n"
        "    items: [L3-CES1-02]\n    clause: GB/T 22239-2019 8.1.4.1\n"
        f"    condition: {{config: {{path: {watched}, key: timeout, max: 900}}}}\n"
        "  - id: SITE-002\n    title: {zh: 文件存在, en: File present}\n    rationale: {zh: 理由, en: Why}\n"
        "    items: [L3-CES1-24]\n    clause: GB/T 22239-2019 8.1.4.6\n"
        f"    condition: {{file: {{path: {watched}, mode_max: '0644'}}}}\n", encoding="utf-8")
    return p


def test_agent_assesses_at_start_and_on_change_with_one_finding_per_change(tmp_path: Path) -> None:
    watched = tmp_path / "session.conf"
    watched.write_text("timeout = 600\n")
    watched.chmod(0o644)
    policy = _policy(tmp_path, watched)
    agent = AgentProcess(tmp_path, collectors=COLLECTORS,
                         extra_config=f"assess: {{every: 12h, policies: [{policy}]}}\n")
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_assessment_last_run_timestamp_seconds") > 0,
                   "no assessment at start", 120)
        assert agent.metric("dutywatch_assessment_checks", policy="site", result="pass") == 2
        snaps = [r for r in agent.events() if r.get("kind") == "assess.snapshot"]
        assert len(snaps) == 1
        assert {r["check"]: r["result"] for r in snaps[0]["detail"]["results"]} == {"SITE-001": "pass",
                                                                                    "SITE-002": "pass"}
        assert not [r for r in agent.events() if r.get("type") == "finding"]  # the first run is the baseline

        watched.write_text("timeout = 3600\n")  # one misconfiguration: one change, one finding
        agent.wait(lambda: agent.metric("dutywatch_assessment_checks", policy="site", result="fail") == 1,
                   "the change was not assessed", 120)
        findings = [r for r in agent.events() if r.get("type") == "finding"]
        assert [(f["rule"], f["event"]["assess"]["check"], f["event"]["assess"]["previous"]) for f in findings] \
            == [("ASSESS-001", "SITE-001", "pass")]
        assert "timeout = 3600 (expected at most 900)" in findings[0]["event"]["event"]["detail"]

        os.utime(watched)  # touched, nothing different: a run, no finding
        agent.wait(lambda: len([r for r in agent.events() if r.get("kind") == "assess.snapshot"]) >= 3,
                   "the touch was not assessed", 120)
        assert len([r for r in agent.events() if r.get("type") == "finding"]) == 1
    finally:
        assert agent.stop() == 0
