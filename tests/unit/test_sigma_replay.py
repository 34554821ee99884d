"""`dutywatch replay` and `dutywatch check` with Sigma rules; the fast event decoder keeps from_json's results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.events import Event, EventDecoder, Process

SIGMA = """\
title: Netcat listener
id: 7d1bfa2b-0000-4000-8000-00000000000a
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Image|endswith: /nc
        CommandLine|contains: ' -l'
    condition: selection
level: high
"""
UNSUPPORTED = """\
title: Uses hashes
id: 7d1bfa2b-0000-4000-8000-00000000000b
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Hashes|contains: 'abc'
    condition: selection
level: low
"""
HIT = {"event": {"kind": "process.exec", "time": 1.7e9},
       "process": {"pid": 7, "exe": "/usr/bin/nc", "cmdline": "nc -lvp 4444", "uid": 1000, "user": "zhangsan"}}
QUIET = {"event": {"kind": "process.exec"}, "process": {"pid": 8, "exe": "/usr/bin/ls", "cmdline": "ls"}}


def rules_dir(tmp_path: Path, *texts: str) -> Path:
    d = tmp_path / "sigma"
    d.mkdir()
    for i, t in enumerate(texts):
        (d / f"r{i}.yml").write_text(t, encoding="utf-8")
    return d


def test_replay_prints_findings_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules_dir(tmp_path, SIGMA)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(x) for x in (QUIET, HIT, QUIET, HIT)) + "\n", encoding="utf-8")
    assert main(["replay", "--rules", str(d), str(events)]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["seq"], r["line"], r["rule"]) for r in records] == [(1, 2, "7d1bfa2b-0000-4000-8000-00000000000a"),
                                                                  (2, 4, "7d1bfa2b-0000-4000-8000-00000000000a")]
    first = records[0]
    assert first["severity"] == "high" and first["accountable"]["operator"] == "张三"
    assert first["event"]["process"]["cmdline"] == "nc -lvp 4444" and first["event"]["host"]["id"]
    assert "4 events, 2 findings, 0 bad lines" in err and "events/s" in err and "peak RSS" in err


def test_replay_reports_bad_lines_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = rules_dir(tmp_path, SIGMA)
    events = tmp_path / "events.jsonl"
    bad_pid = {"event": {"kind": "process.exec"}, "process": {"pid": "seven"}}
    events.write_text("\n".join([json.dumps(bad_pid), "{not json", "", json.dumps(HIT), "[1, 2]"]) + "\n",
                      encoding="utf-8")
    assert main(["replay", "--rules", str(d), str(events)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    assert f"{events}:1: bad event: process.pid must be int, not str 'seven'" in err
    assert f"{events}:2: bad event:" in err and f"{events}:5: bad event: an event is a JSON object" in err
    assert f"{events}:3:" not in err  # blank lines are not events
    assert "1 events, 1 findings, 3 bad lines" in err


def test_replay_skips_an_over_long_line_and_reads_the_next(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from agent.commands.replay import MAX_LINE

    d = rules_dir(tmp_path, SIGMA)
    events = tmp_path / "events.jsonl"
    huge = json.dumps({**HIT, "event": {**HIT["event"], "detail": "x" * (3 * MAX_LINE)}})
    events.write_text("\n".join([json.dumps(HIT), huge, json.dumps(HIT)]) + "\n", encoding="utf-8")
    assert main(["replay", "--rules", str(d), str(events)]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["line"] for line in out.splitlines()] == [1, 3]
    assert f"{events}:2: line longer than {MAX_LINE} bytes" in err
    assert "2 events, 2 findings, 1 bad lines" in err


def test_replay_reads_standard_input_and_uses_the_config(tmp_path: Path) -> None:
    d = rules_dir(tmp_path, SIGMA, UNSUPPORTED)
    (tmp_path / "agent.yaml").write_text(f"rules: [{d}]\nsigma: {{skip_unsupported: true}}\n"
                                         f"registry: {Path(__file__).parents[2] / 'agent/data/demo-registry.yaml'}\n",
                                         encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "agent", "replay", "--config", str(tmp_path / "agent.yaml"), "-"],
                          input=json.dumps(HIT) + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["line"] == 1
    assert "r1.yml:8:9: field 'Hashes'" in proc.stderr and "skipped" in proc.stderr


def test_check_fails_closed_on_unsupported_sigma_unless_told_to_skip(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = rules_dir(tmp_path, SIGMA, UNSUPPORTED)
    registry = Path(__file__).parents[2] / "agent/data/demo-registry.yaml"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"rules: [{d}]\nregistry: {registry}\n", encoding="utf-8")
    assert main(["check", "--config", str(cfg)]) == 1
    _, err = capsys.readouterr()
    assert f"{d / 'r1.yml'}:8:9: field 'Hashes' has no DutyWatch mapping" in err
    cfg.write_text(f"rules: [{d}]\nregistry: {registry}\nsigma: {{skip_unsupported: true}}\n", encoding="utf-8")
    assert main(["check", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert "1 enabled" in out and "1 unsupported Sigma rules skipped" in out
    assert f"{d / 'r1.yml'}:8:9:" in err and "skipped" in err


@pytest.mark.parametrize("text", [
    '{"event":{"kind":"process.exec","time":5}}',
    '{"event":{"kind":"process.exec"},"process":{"pid":true}}',
    '{"event":{"kind":"process.exec"},"process":{"pid":1.0}}',
    '{"event":{"kind":"nope"}}', '{"event":null}', '{"event":{}}', "[]", "not json",
    '{"event":{"kind":"process.exec"},"process":null}',
    '{"event":{"kind":"process.exec"},"host":{"level":"secret","id":"h"}}',
    '{"event":{"kind":"process.exec"},"host":{"level":"bogus"}}',
    '{"event":{"kind":"process.exec","time":NaN}}',
    '{"event":{"kind":"process.exec"},"process":{"pid":1,"pid":2}}',
    '{"event":{"kind":"process.exec"},"zz":{}}', '{"event":{"kind":"process.exec"},"process":{"zz":1}}',
    '{"event":{"kind":"process.exec"},"operator":{"known":1}}',
    '{"event":{"kind":"net.connect","collector":"n"},"net":{"remote_ip":"::1","remote_port":443},"file":{}}',
])
def test_decoder_matches_from_json(text: str) -> None:
    def outcome(fn: object) -> object:
        try:
            e = fn(text)  # type: ignore[operator]
        except ValueError as exc:
            return ("error", str(exc))
        return ("event", e, [type(v) for g in e[3:11] for v in g])

    decode = EventDecoder()
    assert outcome(lambda t: decode(t.encode())) == outcome(Event.from_json)


def test_decoder_round_trips_events() -> None:
    e = Event("process.exec", 1.5, "process", Process(pid=1, ppid=0, name="sh", exe="/bin/sh", cmdline="sh -c 'é'",
                                                      uid=0, loginuid=1000, start_time=2.0))
    assert EventDecoder()(io.BytesIO(e.to_json().encode()).read()) == e
