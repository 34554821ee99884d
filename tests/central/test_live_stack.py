"""The central stack live: a real Prometheus scraping two real agents that see real violations.

Two agents with different registries (different departments and units) run
on this host with the network and process collectors; a child process
connects into a network namespace that stands in for the Internet (违规外联),
and a root shell with no login identity runs (an unattributed operation).
Prometheus (Debian's package) scrapes both every second and evaluates the
shipped recording and alerting rules. Then every dashboard query, every
template-variable query and every recording rule must return data, the
违规外联 alert must fire, and no metric may exceed 200 series per agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.central.centralkit import PROM, REPO, rules_every, tool
from tests.integration.agent_harness import AgentProcess, free_port
from tests.integration.netns import VethPair

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sniffing, netns")]

REGISTRY = """\
host: {{id: {host}, unit: {unit}, department: {dept}, custodian: zhangsan, level: secret, zone: intranet}}
departments: [{{name: {dept}}}]
units: [{{name: {unit}, department: {dept}}}]
people: [{{account: zhangsan, uid: 1000, name: 张三, unit: {unit}, clearance: secret}}]
zones: {{default: internet,
        networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}, {{name: loopback, cidrs: [127.0.0.0/8]}}]}}
"""
COLLECTORS = ("  process: {enabled: true}\n  network: {enabled: true, mode: sniff}\n  files: {enabled: false}\n"
              "  media: {enabled: false}\n  host: {enabled: false}\n")
BOARDS = sorted((REPO / "dashboards" / "grafana").glob("*.json"))


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def fill(expr: str, values: dict[str, str]) -> str:
    for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr.replace("$labels", ""), expr
    return expr


def test_dashboards_rules_and_alerts_on_a_live_fleet(tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    siem = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the central log receiver of agent a
    siem.bind(("127.0.0.1", 0))
    siem.settimeout(0.2)
    received: list[bytes] = []
    listening = threading.Event()

    def receive() -> None:  # read all the time, so a busy host's messages never overflow the buffer
        while not listening.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                received.append(siem.recv(65536))
    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    forward = f"forward:\n  syslog: {{address: 'udp://127.0.0.1:{siem.getsockname()[1]}'}}\n"
    agents = []
    for host, unit, dept in (("fleet-a-01", "甲单位信息中心", "甲委员会"), ("fleet-b-01", "乙单位办公室", "乙管理局"),
                             ("fleet-c-01", "丙单位机要室", "乙管理局")):
        d = tmp_path / host
        d.mkdir()
        agents.append(AgentProcess(d, collectors=COLLECTORS, registry=REGISTRY.format(host=host, unit=unit, dept=dept),
                                   extra_config=forward if not agents else ""))
    port = free_port()
    rule_files = rules_every(1, tmp_path)  # the shipped rules, evaluated every second instead of every minute
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": "dutywatch",
                            "static_configs": [{"targets": [f"127.0.0.1:{a.port}" for a in agents]}]}],
    }), encoding="utf-8")
    prom = None
    veth = VethPair()
    try:
        for a in agents:
            a.start()
        agents[0].kill()  # a gap in monitoring, reported as agent.tamper at the next start
        agents[0].start()
        veth.create()
        prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "prom.log").open("wb"))
        base = f"http://127.0.0.1:{port}"
        agents[0].wait(lambda: _ready(base) and len(api(base, "/api/v1/query", query="up == 1")["result"]) == 3,
                       "Prometheus never scraped the three agents", timeout=60)
        down = agents.pop()  # the third host's agent goes down: the fleet panels must show it
        assert down.stop() == 0
        # 违规外联: a connect into the namespace; an unattributed root shell (no loginuid) under sshd's name.
        subprocess.run(["/bin/bash", "-c", f"exec 3<>/dev/tcp/{veth.peer_ip}/8080; read -t 1 -u 3 x; true"],
                       timeout=30, check=False)
        # An attempt to stop auditing (a harmless stand-in binary named systemctl) and a rule reload.
        fake = tmp_path / "bin" / "systemctl"
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\nsleep 1\n", encoding="utf-8")
        fake.chmod(0o755)
        subprocess.run([str(fake), "stop", "auditd"], timeout=30, check=True)
        agents[1].signal(signal.SIGHUP)
        for a in agents:
            a.wait(lambda a=a: a.metric("dutywatch_findings_total", rule="BM-NET-001") >= 1,  # type: ignore[misc]
                   "agent did not find the connection")
            a.wait(lambda a=a: a.metric("dutywatch_findings_total", rule="DB-TAMP-001") >= 1,  # type: ignore[misc]
                   "agent did not find the attempt to stop auditd")

        def firing() -> set[str]:
            res = api(base, "/api/v1/query",
                      query='ALERTS{alertname="DutyWatchIllegalOutboundConnection",alertstate="firing"}')["result"]
            return {r["metric"].get("host", "") for r in res}
        # Scrapes and rule evaluations after the violation: both agents that saw it fire the alert.
        agents[0].wait(lambda: len(firing()) >= 2, "the 违规外联 alert never fired for both hosts", timeout=60)
        fired = api(base, "/api/v1/query", query='ALERTS{alertname="DutyWatchIllegalOutboundConnection"}')["result"]
        # The host tables read a recording rule a few evaluations behind the scrapes: wait for the stopped agent.
        def missing() -> set[str]:
            res = api(base, "/api/v1/query", query="instance:dutywatch_agents_missing:state")["result"]
            return {r["metric"].get("host", "") for r in res}
        agents[0].wait(lambda: bool(missing()), "the host tables never showed the stopped agent", timeout=60)
        assert missing() == {"fleet-c-01"}
        assert {r["metric"]["host"] for r in fired} == {"fleet-a-01", "fleet-b-01"}

        hosts = [a.registry.read_text(encoding="utf-8").split("id: ")[1].split(",")[0] for a in agents]
        # Every multi-value variable at "All"; the host dashboard on agent a.
        fleet = {"$__rate_interval": "1m", "$__range_s": "600", "$__range": "10m", "$__interval": "15s",
                 "$department": ".*", "$unit": ".*", "$host": ".*"}
        one_host = {**fleet, "$instance": f"127.0.0.1:{agents[0].port}", "$host": hosts[0]}
        queries: list[tuple[str, str]] = []
        for path in BOARDS:
            board = json.loads(path.read_text(encoding="utf-8"))
            values = one_host if path.stem == "dutywatch-host" else fleet
            for v in board["templating"]["list"]:
                m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"])
                assert m is not None, v["query"]
                query = f"count by ({m.group(2)}) ({fill(m.group(1), values)})"
                queries.append((f"{path.stem} variable {v['name']}", query))
            for p in panels(board):
                for t in p.get("targets", []):
                    # a panel showing only what is non-zero ("(X) > 0", "none" when empty): X must answer
                    nonzero = re.fullmatch(r"\((.*)\) > 0", t["expr"], re.S)
                    expr = nonzero.group(1) if nonzero else t["expr"]
                    queries.append((f"{path.stem} / {p['title']} / {t.get('refId')}", fill(expr, values)))
        # Every recording rule recorded something: the minute counts only in the minutes that had a count
        # (here: seconds), so each is looked up over the test's time.
        for group in yaml.safe_load((PROM / "dutywatch-recording.yml").read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                queries.append((f"recording rule {rule['record']}", f"last_over_time({rule['record']}[10m])"))

        def empty() -> list[str]:
            return [name for name, q in queries if not api(base, "/api/v1/query", query=q)["result"]]
        # Rates and increases answer once a few scrapes have followed the violation: ask until all do (60 s).
        deadline = time.monotonic() + 60
        while (empty_now := empty()) and time.monotonic() < deadline:
            time.sleep(1)
        print(f"live stack: {len(queries)} queries, {len(queries) - len(empty_now)} returned data")
        assert not empty_now, "queries that returned no series:\n" + "\n".join(empty_now)

        agents[0].wait(lambda: any(b" BM-NET-001 " in m for m in received),
                       "the finding was not forwarded to the central log", timeout=15)
        for a in agents:
            counts = Counter(k.partition("{")[0] for k in a.scrape())
            name, most = counts.most_common(1)[0]
            print(f"live stack: agent {a.port}: {sum(counts.values())} series, largest metric {name} with {most}")
            assert most <= 200, f"{name} has {most} series"
    finally:
        listening.set()
        receiver.join(5)
        siem.close()
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        veth.destroy()
        for a in agents:
            if a.proc is not None and a.proc.poll() is None:
                a.stop()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
