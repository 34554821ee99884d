"""The agent with `journal: {crypto: gm}`: an SM3/SM2 journal, and a suite that cannot be switched under it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.agent_harness import REPO, AgentProcess

OFF = "".join(f"  {name}: {{enabled: false}}\n" for name in ("process", "network", "files", "media", "host"))


def test_gm_agent_journals_in_sm3_sm2_and_keeps_its_suite(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, collectors=OFF, extra_config="journal:\n  crypto: gm\n")
    agent.start()
    try:
        agent.config.write_text(agent.config.read_text(encoding="utf-8").replace("crypto: gm", "crypto: intl"),
                                encoding="utf-8")
        agent.signal(signal.SIGHUP)
        agent.wait(lambda: agent.metric("dutywatch_rules_reload_failures_total") >= 1,
                   "a reload that changes journal.crypto was not rejected")
        assert agent.healthy()
    finally:
        assert agent.stop() == 0
    assert "journal.crypto changed from gm to intl" in agent.log_text()
    reloads = [r for r in agent.events("--type", "lifecycle") if r.get("kind") == "agent.reload"]
    assert reloads and not reloads[-1]["detail"]["ok"]
    assert any("never mixes suites" in e for e in reloads[-1]["detail"]["errors"])

    r = agent.cli("verify", "--config", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert "crypto suite: gm (SM3 hash chain, SM2 signatures, ID 1234567812345678)" in r.stdout
    assert "agent.start" in {e.get("kind") for e in agent.events("--type", "lifecycle")}

    # the config now says intl: the agent refuses to start on the gm journal, and says what to do
    run = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(agent.config)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert "crypto suite gm since its first record" in run.stderr and "journal.crypto is now intl" in run.stderr
    assert "never mixes suites" in run.stderr
    assert agent.cli("verify", "--config", str(agent.config)).returncode == 0, "the refused start changed nothing"
