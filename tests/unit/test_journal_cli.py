"""The journal's commands as a user runs them: events, verify, journal pubkey."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_journal_support import HOST, T0, finding, lifecycle, raw_db, run_cli, stepping_clock

from agent.journal.render import cell_width, fit
from agent.journal.store import Journal
from agent.timespec import TimeSpecError, parse_timespec


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A journal with findings of two rules, severities, units and operators."""
    return _make_state(tmp_path, "intl")


@pytest.fixture
def suite_state(tmp_path: Path, crypto: str) -> Path:
    """The same journal in each crypto suite."""
    return _make_state(tmp_path, crypto)


def _make_state(tmp_path: Path, crypto: str) -> Path:
    s = tmp_path / "state"
    with Journal(s, host=HOST, clock=stepping_clock(T0), checkpoint_every=4, crypto=crypto) as j:
        j.append(lifecycle("agent.start", T0 - 60))
        j.append_many([
            finding(0, severity="critical"),
            finding(1, rule="BM-USB-002", severity="high", unit="省发改委办公室", operator="李四"),
            finding(2, severity="low", action="audit"),
            finding(3, rule="BM-USB-002", severity="critical", operator="李四"),
            finding(4, t=T0 + 86400 * 2, severity="medium"),
        ])
    return s


def _json(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_events_json_has_the_documented_fields(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, out, _ = run_cli(["events", "--state-dir", str(state), "--format", "json"], monkeypatch)
    assert status == 0
    rows = _json(out)
    assert [r["seq"] for r in rows] == [2, 3, 4, 5, 6]  # findings only; the start record is seq 1
    for key in ("seq", "time", "host", "rule", "severity", "action", "message", "event", "accountable"):
        assert key in rows[0]
    assert rows[1]["message"]["zh"].startswith("李四 在涉密计算机上")  # type: ignore[index]
    assert rows[1]["accountable"]["unit"] == "省发改委办公室"  # type: ignore[index]
    assert rows[0]["event"]["net"]["remote_port"] == 443  # type: ignore[index]


@pytest.mark.parametrize(("args", "seqs"), [
    (["--rule", "BM-USB-002"], [3, 5]),
    (["--severity", "critical"], [2, 5]),
    (["--severity", "critical,high"], [2, 3, 5]),
    (["--severity", "high", "--severity", "low"], [3, 4]),
    (["--unit", "省发改委办公室"], [3]),
    (["--operator", "李四", "--severity", "critical"], [5]),
    (["--since", "2024-05-02"], [6]),
    (["--until", "2024-05-01T00:02:30Z"], [2, 3, 4]),
    (["--since", "2024-05-01T00:01:00+00:00", "--until", "2024-05-01T00:03:00Z"], [3, 4, 5]),
    (["--limit", "2"], [2, 3]),
    (["--type", "all", "--limit", "1"], [1]),
    (["--type", "lifecycle"], [1]),
])
def test_events_filters(state: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                        seqs: list[int]) -> None:
    status, out, err = run_cli(["events", "--state-dir", str(state), "--format", "json", *args], monkeypatch)
    assert status == 0, err
    assert [r["seq"] for r in _json(out)] == seqs


def test_events_since_a_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    now = time.time()
    with Journal(tmp_path / "s", host=HOST) as j:
        j.append_many([finding(1, t=now - 3 * 3600), finding(2, t=now - 1800), finding(3, t=now - 60)])
    status, out, _ = run_cli(["events", "--state-dir", str(tmp_path / "s"), "--since", "90m",
                              "--format", "json"], monkeypatch)
    assert status == 0 and [r["seq"] for r in _json(out)] == [2, 3]


def test_events_table_is_aligned_with_chinese_text(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, out, _ = run_cli(["events", "--state-dir", str(state)], monkeypatch)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "SEVERITY"]
    assert len(lines) == 6
    # The message column starts at the same terminal cell on every line.
    marks = ["MESSAGE"] + ["李四 在" if "李四 在" in line else "张三 在" for line in lines[1:]]
    starts = {cell_width(line[: line.index(mark)]) for line, mark in zip(lines, marks, strict=True)}
    assert len(starts) == 1
    assert "省发改委信息中心" in lines[1] and "李四 在涉密计算机上" in lines[2]


def test_events_lang_en(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = run_cli(["events", "--state-dir", str(state), "--lang", "en", "--limit", "1"], monkeypatch)
    assert "张三 connected a classified host" in out


def test_events_bad_options_are_clear(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, _, err = run_cli(["events", "--state-dir", str(state), "--since", "yesterday"], monkeypatch)
    assert status == 1 and "--since 'yesterday'" in err and "90m" in err
    status, _, err = run_cli(["events", "--state-dir", str(state), "--severity", "severe"], monkeypatch)
    assert status == 1 and "--severity 'severe'" in err
    status, _, err = run_cli(["events", "--journal", str(state / "nope.db")], monkeypatch)
    assert status == 1 and "no journal there" in err


def test_fit_counts_wide_characters() -> None:
    assert cell_width("省发改委") == 8 and cell_width("ab") == 2
    assert cell_width(fit("省发改委信息中心", 9)) == 9
    assert fit("省发改委信息中心", 9).endswith("…")
    assert fit("abc", 5, right=True) == "  abc"


def test_verify_command_success_and_failure(suite_state: Path, monkeypatch: pytest.MonkeyPatch,
                                            crypto: str) -> None:
    state = suite_state
    status, out, _ = run_cli(["verify", "--journal", str(state / "journal.db")], monkeypatch)
    assert status == 0
    assert "chain head: seq 6 hash " in out and "key fingerprint: " in out
    assert f"crypto suite: {crypto} (" in out
    with raw_db(state / "journal.db") as c:
        c.execute("UPDATE records SET operator = '王五' WHERE seq = 3")
    status, out, err = run_cli(["verify", "--state-dir", str(state)], monkeypatch)
    assert status == 1
    assert "record 3:" in err and "operator" in err and f"crypto suite: {crypto} (" in err


def test_verify_reports_unsigned_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(tmp_path / "s", host=HOST, checkpoint_every=100)
    j.append_many([finding(i) for i in range(3)])
    try:
        status, out, _ = run_cli(["verify", "--state-dir", str(tmp_path / "s")], monkeypatch)
    finally:
        j.close()
    assert status == 0 and "chained, not yet signed: 3 records (1..3)" in out


def test_pubkey_then_verify_with_it(suite_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    crypto: str) -> None:
    state = suite_state
    status, pem, err = run_cli(["journal", "pubkey", "--state-dir", str(state)], monkeypatch)
    assert status == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert f"crypto suite: {crypto} (" in err
    status, fp, _ = run_cli(["journal", "pubkey", "--fingerprint", "--state-dir", str(state)], monkeypatch)
    assert fp.strip() in err
    (tmp_path / "host.pem").write_text(pem)
    status, out, _ = run_cli(["verify", "--state-dir", str(state), "--pubkey", str(tmp_path / "host.pem")],
                             monkeypatch)
    assert status == 0 and fp.strip() in out


def test_a_missing_config_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status, _, err = run_cli(["events", "--config", str(tmp_path / "agent.yaml")], monkeypatch)
    assert status == 1 and f"{tmp_path / 'agent.yaml'}: cannot read" in err


def test_python_dash_m_agent(state: Path) -> None:

    res = subprocess.run([sys.executable, "-m", "agent", "events", "--state-dir", str(state),
                          "--format", "json", "--limit", "1"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and json.loads(res.stdout)["seq"] == 2


def test_timespec() -> None:
    now = 1_000_000.0
    assert parse_timespec("90m", now) == now - 5400
    assert parse_timespec("24h", now) == now - 86400
    assert parse_timespec("7d", now) == now - 7 * 86400
    assert parse_timespec("1h30m", now) == now - 5400
    assert parse_timespec("2024-05-01T00:00:00Z", now) == T0
    assert parse_timespec("2024-05-01T08:00:00+08:00", now) == T0
    for bad in ("", "7", "7y", "tomorrow", "2024-13-01", "h1"):
        with pytest.raises(TimeSpecError):
            parse_timespec(bad, now)


def test_commands_find_the_journal_through_the_config(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = state.parent / "agent.yaml"
    config.write_text("state_dir: state\n")
    status, out, err = run_cli(["events", "--config", str(config), "--format", "json"], monkeypatch)
    assert status == 0, err
    assert len(_json(out)) == 5
    status, out, err = run_cli(["verify", "--config", str(config)], monkeypatch)
    assert status == 0 and str(state / "journal.db") in out, err
    status, out, _ = run_cli(["journal", "pubkey", "--config", str(config)], monkeypatch)
    assert status == 0 and "BEGIN PUBLIC KEY" in out


@pytest.fixture
def quiet_state(tmp_path: Path) -> Path:
    """A quiet host's journal: a start, heartbeats, a reload, a finding, more heartbeats, a stop."""
    s = tmp_path / "state"
    beat = lifecycle("agent.heartbeat", T0)
    reload = lifecycle("agent.reload", T0 + 600) | {"detail": {"note": "agent.heartbeat"}}  # a near miss
    with Journal(s, host=HOST, clock=stepping_clock(T0), checkpoint_every=4) as j:
        j.append(lifecycle("agent.start", T0 - 60))                        # seq 1
        j.append_many([beat | {"time": T0 + 300 * i} for i in range(3)])  # 2, 3, 4
        j.append(reload)                                                   # 5
        j.append(finding(11))                                              # 6
        j.append_many([beat | {"time": T0 + 900 + 300 * i} for i in range(2)])  # 7, 8
        j.append(lifecycle("agent.stop", T0 + 1600))                       # 9
    return s


@pytest.mark.parametrize(("args", "seqs"), [
    (["--type", "lifecycle"], [1, 5, 9]),
    (["--type", "lifecycle", "--limit", "2"], [1, 5]),
    (["--type", "all"], [1, 5, 6, 9]),
    (["--type", "lifecycle", "--heartbeats"], [1, 2, 3, 4, 5, 7, 8, 9]),
    (["--type", "all", "--heartbeats"], list(range(1, 10))),
    (["--type", "heartbeat"], [2, 3, 4, 7, 8]),
    (["--type", "heartbeat", "--until", "2024-05-01T00:10:00Z"], [2, 3, 4]),
    ([], [6]),
])
def test_events_leave_heartbeats_out_unless_asked(quiet_state: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], seqs: list[int]) -> None:
    status, out, err = run_cli(["events", "--state-dir", str(quiet_state), "--format", "json",
                                "--since", "3650d", *args], monkeypatch)
    assert status == 0, err
    assert [r["seq"] for r in _json(out)] == seqs


def test_events_table_of_lifecycle_records_has_no_heartbeat(quiet_state: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    status, out, _ = run_cli(["events", "--state-dir", str(quiet_state), "--since", "3650d", "--type", "lifecycle"],
                             monkeypatch)
    assert status == 0
    kinds = [line.split()[5] for line in out.splitlines()[1:]]  # SEQ DATE TIME SEVERITY ACTION RULE-or-kind
    assert kinds == ["agent.start", "agent.reload", "agent.stop"]


def test_events_help_says_how_to_see_heartbeats() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "events", "--help"], capture_output=True, text=True,
                       timeout=60, check=True)
    text = " ".join(r.stdout.split())
    assert "heartbeats are left out of lifecycle and all unless --heartbeats" in text
    assert "{finding,lifecycle,heartbeat,all}" in text
