"""`dutywatch test-rules`: shipped samples pass, failures and missing coverage are reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.engine.rules import load_rules
from agent.engine.samples import run_samples
from agent.paths import shipped_rules_dir, shipped_samples_dir


def test_shipped_samples_all_pass_and_cover_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["test-rules"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, "\n".join(out)
    passed, failed = out[-1].split(", ")
    assert failed == "0 failed"
    n_rules = len(load_rules([shipped_rules_dir()]).rules)
    assert int(passed.split()[0]) >= 2 * n_rules


def test_every_shipped_rule_has_both_kinds_of_sample() -> None:
    rs = load_rules([shipped_rules_dir()])
    report = run_samples(rs, [shipped_samples_dir()])
    for r in rs.rules:
        assert report.fired.get(r.id), f"{r.id} has no matching sample"
        assert report.spared.get(r.id), f"{r.id} has no non-matching sample"


def test_rule_without_samples_fails_coverage(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("""\
pack: t
rules:
  - id: T-1
    title: {zh: a, en: b}
    when: process.name == "x"
    severity: low
    action: audit
    message: {zh: a, en: b}
""", encoding="utf-8")
    samples = tmp_path / "s.yaml"
    samples.write_text("""\
- name: fires
  event: {event: {kind: process.exec}, process: {name: x}}
  fires: [T-1]
""", encoding="utf-8")
    report = run_samples(load_rules([tmp_path / "r.yaml"]), [samples], coverage_of=["T-1"])
    assert report.summary() == "1 passed, 1 failed"
    assert "no non-matching sample" in report.outcomes[-1].detail


def test_wrong_expectation_fails_with_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "mine.yaml"
    samples.write_text("""\
- name: curl to the Internet should not fire (wrong on purpose)
  event:
    event: {kind: net.connect}
    process: {pid: 1, name: curl, uid: 1000, loginuid: 1000}
    net: {remote_ip: 203.0.113.9, remote_port: 443}
  not_fires: [BM-NET-001]
- name: unknown rule
  event: {event: {kind: net.connect}}
  fires: [NOPE-1]
""", encoding="utf-8")
    code = main(["test-rules", str(samples)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[-1] == "0 passed, 2 failed"
    assert any(line.startswith(f"FAIL {samples}:1:3:") and "must not fire: BM-NET-001" in line for line in out)
    assert any("rule NOPE-1 is not loaded" in line for line in out)


def test_python_dash_m_agent_runs_test_rules() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent", "test-rules"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
