"""The agent end to end: real collectors, real journal, real scrapes, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.agent_harness import AgentProcess
from tests.integration.netns import VethPair

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sniffing, fanotify, namespaces")
OFF = "  {name}: {{enabled: false}}\n"


def collectors(**on: str) -> str:
    out = ""
    for name in ("process", "network", "files", "media", "host", "audit"):
        out += f"  {name}: {on[name]}\n" if name in on else OFF.format(name=name)
    return out


def drop_to(uid: int) -> None:
    os.setgid(uid)
    os.setuid(uid)


@pytest.mark.root
@ROOT
def test_classified_host_reaching_the_internet_is_found_attributed_and_verifiable(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, collectors=collectors(network="{enabled: true, mode: sniff}"))
    veth = VethPair()
    try:
        veth.create()
        agent.start()
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="network", mode="sniff") == 1,
                   "network collector not up in sniff mode")
        # A child owned by zhangsan (uid 1000) opens a TCP connection into the namespace (the "Internet").
        script = f"exec 3<>/dev/tcp/{veth.peer_ip}/8080; read -t 3 -u 3 x; true"
        child = subprocess.Popen(["/bin/bash", "-c", script], preexec_fn=lambda: drop_to(1000))
        try:
            def found() -> bool:
                return any(r.get("rule") == "BM-NET-001" and r["event"].get("process", {}).get("pid") == child.pid
                           for r in agent.events("--rule", "BM-NET-001"))
            agent.wait(found, "no BM-NET-001 finding for the child", timeout=30)
        finally:
            child.wait(10)
        (rec,) = [r for r in agent.events("--rule", "BM-NET-001")
                  if r["event"].get("process", {}).get("pid") == child.pid]
        assert rec["event"]["net"]["remote_ip"] == veth.peer_ip
        assert rec["event"]["net"]["remote_port"] == 8080
        assert rec["event"]["net"]["remote_zone"] == "internet"
        assert rec["event"]["process"]["exe"] == os.path.realpath("/bin/bash")
        # the custodian by the registry's name, the account beside it
        assert rec["accountable"] == {"operator": "张三", "custodian": "张三", "custodian_account": "zhangsan",
                                      "unit": "测试信息中心", "department": "测试委员会"}
        assert rec["severity"] == "critical" and rec["action"] == "alert"
        assert "张三" in rec["message"]["zh"] and veth.peer_ip in rec["message"]["en"]
        assert agent.metric("dutywatch_findings_total", rule="BM-NET-001", severity="critical") >= 1
        assert agent.stop() == 0
        v = agent.cli("verify", "--journal", str(agent.state / "journal.db"))
        assert v.returncode == 0, v.stdout + v.stderr
        assert "chained, not yet signed" not in v.stdout  # a clean stop signs the head
    finally:
        veth.destroy()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()


WRITER = r"""
import os, sys, time
d = sys.argv[1]
for i in range(3000):
    with open(os.path.join(d, f"doc{i % 50}.txt"), "w") as f:
        f.write("x" * 10)
    time.sleep(0.004)
"""


@pytest.mark.root
@ROOT
def test_sigkill_loses_no_durable_record_and_the_gap_is_reported(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, collectors=collectors(files="{enabled: true}"))
    agent.start()
    agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="files") == 1, "files collector not up")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(agent.assets)])
    try:
        agent.wait(lambda: agent.metric("dutywatch_journal_records_total") >= 40, "findings are not streaming")
        durable = int(agent.metric("dutywatch_journal_records_total"))
        agent.kill()
        killed_at = time.time()
    finally:
        writer.kill()
        writer.wait(10)
    assert durable >= 40
    agent.start()
    assert agent.stop() == 0
    v = agent.cli("verify", "--journal", str(agent.state / "journal.db"))
    assert v.returncode == 0, v.stdout + v.stderr
    records = agent.events()
    seqs = {r["seq"] for r in records}
    assert set(range(1, durable + 1)) <= seqs, "a record reported durable before the kill is missing"
    assert any(r.get("rule") == "DB-AUD-003" for r in records)
    gaps = [r for r in records if r.get("rule") == "ZR-005"]
    assert len(gaps) == 1
    assert "monitoring interrupted from" in gaps[0]["message"]["en"]
    assert gaps[0]["accountable"]["custodian"] == "张三" and gaps[0]["accountable"]["unit"] == "测试信息中心"
    lifecycle = [r for r in records if r.get("type") == "lifecycle" and r.get("kind") == "agent.tamper"]
    assert lifecycle and lifecycle[0]["detail"]["since"] <= killed_at <= lifecycle[0]["detail"]["until"]


GOOD_LOCAL = """\
pack: local
rules:
  - id: LOCAL-001
    title: {zh: 本地规则, en: Local rule}
    when: event.kind == "process.exec" and process.name == "forbidden-tool"
    severity: high
    action: alert
    message: {zh: "x", en: "x"}
"""


def test_bad_rules_on_reload_keep_the_last_good_set(tmp_path: Path, repo: Path) -> None:
    local = tmp_path / "rules.d"
    local.mkdir()
    agent = AgentProcess(tmp_path, collectors=collectors(), rules=[str(repo / "rules"), str(local)])
    agent.start()
    try:
        loaded = agent.metric("dutywatch_rules_loaded")
        assert loaded >= 30
        (local / "50-bad.yaml").write_text(GOOD_LOCAL.replace('process.name == "forbidden-tool"',
                                                              'process.pid == "x"'), encoding="utf-8")
        # the change on disk is noticed and rejected
        agent.wait(lambda: agent.metric("dutywatch_rules_reload_failures_total") >= 1, "bad rules not rejected")
        agent.signal(signal.SIGHUP)
        agent.wait(lambda: agent.metric("dutywatch_rules_reload_failures_total") >= 2, "SIGHUP reload not tried")
        assert agent.metric("dutywatch_rules_loaded") == loaded
        assert agent.healthy()
        rejected = [r for r in agent.events("--type", "lifecycle") if r.get("kind") == "agent.reload"]
        assert rejected and all(r["detail"]["ok"] is False for r in rejected)
        assert any(f"{local / '50-bad.yaml'}:5:" in e and "type mismatch" in e
                   for r in rejected for e in r["detail"]["errors"])
        assert "SIGHUP" in {r["detail"]["why"] for r in rejected}
        (local / "50-bad.yaml").write_text(GOOD_LOCAL, encoding="utf-8")
        agent.wait(lambda: agent.metric("dutywatch_rules_loaded") == loaded + 1, "good rules not reloaded")
        assert agent.metric("dutywatch_rules_reloads_total") >= 1
    finally:
        agent.stop()
    assert "reload rejected" in agent.log_text()


def test_reload_command_fails_for_a_rejected_set_and_status_follows_the_set_in_force(tmp_path: Path,
                                                                                       repo: Path) -> None:
    # systemd's ExecReload is `dutywatch reload --pid $MAINPID`: `systemctl reload` must fail when the
    # new set is rejected, and the unit's status line must name the rules in force afterwards.
    local = tmp_path / "rules.d"
    local.mkdir()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    statuses: list[str] = []

    def drain() -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                statuses.extend(line for line in sock.recv(4096).decode().splitlines() if line.startswith("STATUS="))

    agent = AgentProcess(tmp_path, collectors=collectors(), rules=[str(repo / "rules"), str(local)])
    try:
        agent.start(env={"NOTIFY_SOCKET": str(sock_path)})
        loaded = int(agent.metric("dutywatch_rules_loaded"))
        assert agent.proc is not None
        pid = str(agent.proc.pid)
        bad = local / "50-bad.yaml"
        bad.write_text(GOOD_LOCAL.replace('process.name == "forbidden-tool"', 'process.pid == "x"'), encoding="utf-8")
        r = agent.cli("reload", "--config", str(agent.config), "--pid", pid, "--timeout", "30")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"keeps its {loaded} rules in force" in r.stderr
        assert f"{bad}:5:" in r.stderr and "type mismatch" in r.stderr
        drain()
        assert statuses[-1].startswith(f"STATUS=watching with {loaded} rules; a reload was rejected")
        bad.write_text(GOOD_LOCAL, encoding="utf-8")
        r = agent.cli("reload", "--config", str(agent.config), "--pid", pid, "--timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == f"reloaded: {loaded + 1} rules in force"
        drain()
        assert statuses[-1] == f"STATUS=watching with {loaded + 1} rules"
        # Without --pid the command finds the agent through its state directory.
        r = agent.cli("reload", "--config", str(agent.config), "--timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        agent.stop()
        sock.close()


def test_systemd_notifications(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    agent = AgentProcess(tmp_path, collectors=collectors())
    messages: list[str] = []

    def read_until(word: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(word in m for m in messages):
            assert time.monotonic() < deadline, f"no {word} from the agent; got {messages}"
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())

    try:
        agent.start(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
        read_until("READY=1")
        read_until("WATCHDOG=1")
        agent.signal(signal.SIGTERM)
        read_until("STOPPING=1")
        assert agent.stop() == 0
    finally:
        sock.close()


def test_invalid_config_fails_at_start_with_its_place(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, collectors=collectors(), extra_config="queue_size: lots\n")
    r = agent.cli("run", "--config", str(agent.config))
    assert r.returncode == 1
    assert f"{agent.config}:" in r.stdout + r.stderr and "queue_size must be an integer" in r.stdout + r.stderr


def test_live_scrape_is_clean_under_promtool(tmp_path: Path) -> None:
    import shutil
    import urllib.request
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    agent = AgentProcess(tmp_path, collectors=collectors(host="{enabled: true}"))
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_events_total", kind="agent.start") >= 1, "no start event")
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as r:
            body = r.read()
    finally:
        agent.stop()
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr
    text = body.decode()
    for name in ("build_info", "host_info", "events_total", "findings_total", "events_dropped_total",
                 "collector_up", "last_event_timestamp_seconds", "rules_loaded", "rules_reloads_total",
                 "rules_reload_failures_total", "engine_evaluation_seconds_bucket", "journal_records_total",
                 "journal_size_bytes", "journal_verify_failures_total"):
        assert f"dutywatch_{name}" in text, name
    assert "张三" not in text and str(agent.assets) not in text  # no names or paths in labels


def test_the_shipped_example_registry_attributes_nothing_until_it_is_replaced(tmp_path: Path) -> None:
    # A fresh package install starts on the example registry: no finding may name its made-up people.
    from tests.integration.agent_harness import REGISTRY
    real = REGISTRY.format(assets=tmp_path / "assets")
    example = "example: true\n" + real
    agent = AgentProcess(tmp_path, collectors=collectors(process="{enabled: true, mode: poll, interval: 0.05}"),
                         registry=example)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    try:
        agent.start(env={"NOTIFY_SOCKET": str(sock_path)})
        assert agent.metric("dutywatch_registry_unconfigured") == 1
        status = ""
        with contextlib.suppress(TimeoutError):
            while "READY=1" not in status:
                status = sock.recv(4096).decode()
        assert "STATUS=not monitoring:" in status and "example" in status
        assert 'test-host-01' not in "".join(k for k in agent.scrape() if k.startswith("dutywatch_host_info"))
        for _ in range(20):
            subprocess.run(["/bin/sleep", "0.1"], check=True)
        assert agent.metric("dutywatch_events_total") == 0
        r = agent.cli("check", "--config", str(agent.config))
        assert r.returncode == 1
        assert f"{agent.registry}:1:1: this is the shipped example registry" in r.stderr
        records = agent.events()
        assert [r["kind"] for r in records if r.get("type") == "lifecycle"][:2] == ["agent.start", "agent.degraded"]
        assert not [r for r in records if r.get("type") == "finding"]
        assert "张三" not in json.dumps(records, ensure_ascii=False)
        # The admin describes the host: the change on disk starts monitoring, no restart needed.
        agent.registry.write_text(real, encoding="utf-8")
        agent.wait(lambda: agent.metric("dutywatch_registry_unconfigured") == 0, "the real registry was not taken")
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="process") == 1, "monitoring not started")
        subprocess.run(["/bin/sleep", "0.3"], check=True)
        agent.wait(lambda: agent.metric("dutywatch_events_total") > 0, "no event after the registry was configured")
        assert 'host="test-host-01"' in "".join(k for k in agent.scrape() if k.startswith("dutywatch_host_info"))
        # Going back to the example is refused: the registry in force stays.
        agent.registry.write_text(example, encoding="utf-8")
        assert agent.proc is not None
        r = agent.cli("reload", "--config", str(agent.config), "--pid", str(agent.proc.pid))
        assert r.returncode == 1 and "shipped example" in r.stderr
        assert agent.metric("dutywatch_registry_unconfigured") == 0
    finally:
        agent.stop()
        sock.close()
