"""A province in one process: many simulated agents, a real Prometheus, a real VictoriaMetrics.

``FleetSim`` serves the real exposition of the agent's own ``Metrics`` (the
shipped rules expected, host info set) once per simulated host, with host,
unit and department varied and counters moving: every tenth host keeps
reaching the Internet (BM-NET-001), every host counts events. Hosts are
spread over a few loopback ports (so ``hashmod`` on the address shards them)
and told apart by their metrics path, which the file_sd entries carry.
``Stack`` runs Debian's ``prometheus`` (the shipped recording and alerting
rules, remote-writing) and ``victoria-metrics`` as the long-term store.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.central.centralkit import rules_every

REPO = Path(__file__).resolve().parents[2]
PROM_RULES = REPO / "dashboards" / "prometheus"
# The boards an officer opens for the whole fleet (the host board shows one host).
BOARDS = [REPO / "dashboards" / "grafana" / f"dutywatch-{name}.json" for name in ("fleet-compliance", "accountability")]
# The data source's timeInterval (dashboards/grafana/provisioning): Grafana's smallest step and $__rate_interval base.
SCRAPE_S = 15
HOST, UNIT, DEPT = "HOST-PLACEHOLDER", "UNIT-PLACEHOLDER", "DEPT-PLACEHOLDER"


def template() -> str:
    """A real agent's exposition (shipped rules, host info), with placeholders for the host's labels."""
    from agent.engine.rules import load_rules
    from agent.metrics import Metrics
    from agent.paths import shipped_rules_dir

    m = Metrics("0.0.0-sim", lambda: {})
    for r in load_rules([shipped_rules_dir()]).rules:
        m.expect_rule(r.id, r.severity, r.action, UNIT)
    m.set_host(HOST, UNIT, DEPT, "secret", "intranet")
    body, _ = m.exposition()
    return body.decode()


def series(text: str) -> int:
    """Samples in an exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class FleetSim:
    """``n`` simulated agents behind ``ports`` loopback ports."""

    def __init__(self, n: int, *, units: int = 50, departments: int = 10, ports: int = 16) -> None:
        self.n = n
        self.t0 = time.time()
        self.text = template()
        self.hosts = [(f"sim-{i:05d}", f"单位{i % units:03d}", f"部门{(i % units) % departments:02d}")
                      for i in range(n)]
        self.by_id = {h[0]: (i, h) for i, h in enumerate(self.hosts)}
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.nports = max(1, min(ports, n))
        self.scrapes = 0
        self.pieces: dict[int, tuple[bytes, bytes, bytes]] = {}

    def body(self, host_id: str) -> bytes:
        """One host's exposition now."""
        i, _ = self.by_id[host_id]
        age = time.time() - self.t0
        head, mid, tail = self.pieces.get(i) or self._cut(i)
        # events keep counting; every tenth host keeps reaching the Internet (BM-NET-001)
        bumps = f"{1 + int(age / 20)}.0" if i % 10 == 0 else "0.0"
        self.scrapes += 1
        return head + f"{int(age * 5)}.0".encode() + mid + bumps.encode() + tail

    def _cut(self, i: int) -> tuple[bytes, bytes, bytes]:
        """The host's exposition (its labels in) around its two moving values, made once per host."""
        host, unit, dept = self.hosts[i]
        text = self.text.replace(HOST, host).replace(UNIT, unit).replace(DEPT, dept)
        cuts = []
        bm_net = f'rule="BM-NET-001",severity="critical",unit="{unit}"'
        for line in ('dutywatch_events_total{kind="process.exec"} 0.0',
                     f'dutywatch_findings_total{{action="alert",{bm_net}}} 0.0'):
            start = text.index(line + "\n") + len(line) - 3
            cuts.append((start, start + 3))
        (a0, a1), (b0, b1) = cuts
        assert a1 < b0, "the events line comes before the findings line"
        pieces = (text[:a0].encode(), text[a1:b0].encode(), text[b1:].encode())
        self.pieces[i] = pieces
        return pieces

    def start(self) -> None:
        sim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # Prometheus keeps its connections: no thread and handshake per scrape

            def do_GET(self) -> None:
                parts = self.path.split("/")
                if len(parts) != 4 or parts[1] != "h" or parts[3] != "metrics" or parts[2] not in sim.by_id:
                    self.send_error(404)
                    return
                data = sim.body(parts[2])
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a scraper that went away mid-answer (Prometheus stopping): nothing to report

        for _ in range(self.nports):
            srv = Server(("127.0.0.1", 0), Handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers.append(srv)

    def stop(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()

    def file_sd(self) -> list[dict[str, Any]]:
        """file_sd entries: each host at its port, told apart by its metrics path."""
        out = []
        for i, (host, _, _) in enumerate(self.hosts):
            port = self.servers[i % self.nports].server_address[1]
            # instance: what the host would be called on its own address, so each target is its own series set
            out.append({"targets": [f"127.0.0.1:{port}"],
                        "labels": {"__metrics_path__": f"/h/{host}/metrics", "instance": f"{host}:9847"}})
        return out


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 30) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{urllib.parse.unquote(url)}: HTTP {exc.code}: {exc.read()[:500]!r}") from None


def query(base: str, expr: str, timeout: float = 30) -> tuple[list[Any], float]:
    """An instant query and how long it took (seconds); raises on an error answer."""
    return _answer(base, "query", {"query": expr}, timeout)


def query_range(base: str, expr: str, range_s: int, step: int, timeout: float = 30) -> tuple[list[Any], float]:
    """A range query over the last ``range_s`` seconds at ``step``, its ends on whole steps as Grafana sends
    them, and how long it took (seconds); raises on an error answer."""
    end = int(time.time()) // step * step
    params = {"query": expr, "start": str(end - range_s), "end": str(end), "step": str(step)}
    return _answer(base, "query_range", params, timeout)


def _answer(base: str, api: str, params: dict[str, str], timeout: float) -> tuple[list[Any], float]:
    t = time.perf_counter()
    body = get(f"{base}/api/v1/{api}?{urllib.parse.urlencode(params)}", timeout)
    took = time.perf_counter() - t
    if body.get("status") != "success":
        raise AssertionError(f"{params['query']}: {body}")
    return body["data"]["result"], took


def wait(cond: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(1)


class Stack:
    """Prometheus (shipped rules, scraping the sim, remote-writing) and VictoriaMetrics, in ``tmp``."""

    def __init__(self, tmp: Path, sim: FleetSim, *, interval: str = "5s", rules_every: int | None = None,
                 job: dict[str, Any] | None = None, long_term: bool = True) -> None:
        self.tmp = tmp
        self.sim = sim
        self.interval = interval  # scrape
        self.rules_every = rules_every  # seconds between rule evaluations; None: as shipped (every minute)
        self.job = job  # a scrape job to use instead of the plain one (e.g. a shard's, from gen scrape-config)
        self.long_term = long_term  # False: Prometheus alone, no rules, no remote_write, no VictoriaMetrics
        self.prom_port, self.vm_port = free_port(), free_port()
        self.prom = f"http://127.0.0.1:{self.prom_port}"
        self.vm = f"http://127.0.0.1:{self.vm_port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        prometheus, vm = shutil.which("prometheus"), shutil.which("victoria-metrics")
        assert prometheus and vm, "apt-get install prometheus victoria-metrics"
        sd = self.tmp / "targets.json"
        sd.write_text(json.dumps(self.sim.file_sd()))
        rule_files = (rules_every(self.rules_every, self.tmp) if self.rules_every
                      else [str(p) for p in sorted(PROM_RULES.glob("*.yml"))])
        job = dict(self.job or {"job_name": "dutywatch"})
        job.pop("static_configs", None)
        job["file_sd_configs"] = [{"files": [str(sd)]}]
        doc: dict[str, Any] = {"global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
                               "scrape_configs": [job]}
        if self.long_term:
            doc["rule_files"] = rule_files
            doc["remote_write"] = [{"url": f"{self.vm}/api/v1/write"}]
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        if self.long_term:
            self.procs.append(subprocess.Popen(
                [vm, f"-storageDataPath={self.tmp / 'vm'}", f"-httpListenAddr=127.0.0.1:{self.vm_port}",
                 "-retentionPeriod=2d", "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
                stdout=subprocess.DEVNULL, stderr=(self.tmp / "vm.log").open("wb")))
        self.procs.append(subprocess.Popen(
            [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(self.tmp / "prom.log").open("wb")))

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):  # reaped later; the others still stop
                        p.wait(30)

    def rss_cpu(self, which: int) -> tuple[float, float]:
        """(RSS MiB, CPU seconds) of VictoriaMetrics (0) or Prometheus (1)."""
        pid = self.procs[-1 if which else 0].pid
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, cpu

    def disk_bytes(self) -> int:
        """VictoriaMetrics' data folder size."""
        return sum(p.stat().st_size for p in (self.tmp / "vm").rglob("*") if p.is_file())


@dataclass(frozen=True)
class PanelQuery:
    """One panel query of a fleet board as Grafana sends it: an instant query, or a range query at ``step``."""

    board: str
    title: str
    expr: str
    range: bool
    step: int


def grafana_step(range_s: int, width_px: int = 1920) -> int:
    """The step (s) Grafana gives a range query: the range over the panel's width in pixels (its maximum of
    data points; here a full-width panel on a 1920-pixel screen, the most points a board asks for), rounded
    as Grafana rounds intervals, and never below the data source's timeInterval."""
    raw = range_s / width_px
    for below, step in ((17.5, 15), (25, 20), (45, 30), (90, 60), (210, 120), (450, 300), (750, 600),
                        (1050, 900), (1500, 1200), (2700, 1800), (5400, 3600)):
        if raw < below:
            return max(SCRAPE_S, step)
    return 7200


def board_queries(range_s: int = 3600) -> list[PanelQuery]:
    """Every panel query of the fleet boards, every variable set to all, over the boards' range ``range_s``."""
    step = grafana_step(range_s)
    values = {"$__range_s": str(range_s), "$__range": f"{range_s}s", "$__interval": f"{step}s",
              # Grafana's $__rate_interval: max($__interval + timeInterval, 4 x timeInterval)
              "$__rate_interval": f"{max(step + SCRAPE_S, 4 * SCRAPE_S)}s"}
    out = []
    for path in BOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        top = board.get("panels", [])
        for p in top + [q for outer in top for q in outer.get("panels", [])]:
            for t in p.get("targets", []):
                expr = t.get("expr")
                if expr:
                    for var in ("$department", "$unit", "$host"):
                        expr = expr.replace(var, ".*")
                    for var, value in values.items():
                        expr = expr.replace(var, value)
                    assert "$" not in expr.replace("$labels", ""), expr
                    is_range = bool(t.get("range")) or not t.get("instant", False)
                    out.append(PanelQuery(path.stem.removeprefix("dutywatch-"), str(p.get("title", "")), expr,
                                          is_range, step))
    return out


def run_panel(base: str, q: PanelQuery, range_s: int, timeout: float = 30) -> tuple[list[Any], float]:
    """A panel's query as Grafana runs it, and how long it took (seconds)."""
    if q.range:
        return query_range(base, q.expr, range_s, q.step, timeout)
    return query(base, q.expr, timeout)


def alert_exprs() -> list[tuple[str, str]]:
    """(alert name, expr) of the shipped alerting rules."""
    doc = yaml.safe_load((PROM_RULES / "dutywatch-alerts.yml").read_text(encoding="utf-8"))
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"] if "alert" in r]
