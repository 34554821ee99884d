"""The exporter on a real socket: promtool on a live scrape, web-config TLS and basic auth."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tlscerts import PKI, make_pki

from agent.errors import LoadError
from agent.exporter import Exporter, parse_listen
from agent.metrics import Metrics
from agent.webconfig import load_web_config
from collectors.base import Health

REPO = Path(__file__).resolve().parents[2]
SHIPPED_WEB_YML = REPO / "packaging" / "etc" / "web.yml"
PASSWORD = "s3cret-scrape"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # low cost keeps tests quick


def promtool() -> str:
    """The promtool binary; CI must have it, elsewhere the test is skipped with the reason."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: apt-get install prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def get(port: int, path: str = "/metrics", *, headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def client_context(pki: PKI, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


@pytest.fixture
def serve() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for e in started:
        e.stop()


def start(serve: list[Exporter], exporter: Exporter) -> int:
    exporter.start()
    serve.append(exporter)
    return exporter.port


def busy_metrics() -> tuple[Metrics, Health]:
    health = Health(mode="poll", up=True)
    health.drop("overflow", 3)
    health.saw(1_700_000_000.5)
    m = Metrics("0.1.0", lambda: {"process": health, "network": Health(mode="off")})
    m.set_host("js-fgw-0042", "省发改委信息中心", "省发展和改革委员会", "secret", "intranet")
    for kind in ("process.exec", "net.connect", "net.connect"):
        m.event(kind)
    m.finding("BM-NET-001", "critical", "alert", "省发改委信息中心")
    m.finding("AU-PRIV-001", "info", "audit", 'unit "with" \\ quotes\nand newline')
    m.dropped("process", "queue_full", 2)
    m.observe_evaluation(4e-5)
    m.add_forward_target("tcp://127.0.0.1:6514")
    m.forward_error("tcp://127.0.0.1:6514")
    m.watch_queue(lambda: 7, 65536)
    return m, health


def test_live_scrape_is_clean_under_promtool(serve: list[Exporter]) -> None:
    tool = promtool()
    m, health = busy_metrics()
    port = start(serve, Exporter(m, "127.0.0.1:0"))
    status, headers, body = get(port)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    check = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}

    def sample(name: str, **labels: str) -> float:
        return samples[("dutywatch_" + name, tuple(sorted(labels.items())))]

    unit = "省发改委信息中心"
    assert sample("findings_total", action="alert", rule="BM-NET-001", severity="critical", unit=unit) == 1
    assert sample("events_total", kind="net.connect") == 2
    assert sample("events_total", kind="media.mount") == 0  # exists before any event
    assert sample("events_dropped_total", collector="process", reason="overflow") == 3
    assert sample("events_dropped_total", collector="process", reason="queue_full") == 2
    assert sample("collector_up", collector="process", mode="poll") == 1
    assert sample("collector_up", collector="network", mode="off") == 0
    assert sample("queue_depth") == 7

    # Health is read at scrape time: a new drop shows up without telling Metrics.
    health.drop("overflow", 5)
    body2 = get(port)[2].decode()
    assert 'dutywatch_events_dropped_total{collector="process",reason="overflow"} 8.0' in body2


def test_openmetrics_when_asked(serve: list[Exporter]) -> None:
    m, _ = busy_metrics()
    port = start(serve, Exporter(m, "127.0.0.1:0"))
    status, headers, body = get(port, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_healthz_reports_a_stuck_pipeline(serve: list[Exporter]) -> None:
    state = {"ok": True}

    def check() -> tuple[bool, str]:
        return (True, "ok") if state["ok"] else (False, "pipeline stalled for 42s")

    port = start(serve, Exporter(Metrics("0.1.0"), "127.0.0.1:0", health_check=check))
    assert get(port, "/healthz")[::2] == (200, b"ok\n")
    state["ok"] = False
    assert get(port, "/healthz")[::2] == (503, b"pipeline stalled for 42s\n")


def test_landing_page_lists_endpoints_and_version_only(serve: list[Exporter]) -> None:
    m, _ = busy_metrics()
    port = start(serve, Exporter(m, "127.0.0.1:0"))
    status, headers, body = get(port, "/")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "/metrics" in text and "/healthz" in text and "0.1.0" in text
    assert "省发改委信息中心" not in text and "js-fgw-0042" not in text
    assert get(port, "/nope")[0] == 404


def test_shipped_web_config_passes_promtool_and_loads(tmp_path: Path, pki: PKI) -> None:
    tool = promtool()
    # The shipped file names tls/... relative to itself, as installed in /etc/dutywatch.
    etc = tmp_path / "etc"
    (etc / "tls").mkdir(parents=True)
    shutil.copy(SHIPPED_WEB_YML, etc / "web.yml")
    shutil.copy(pki.server.cert, etc / "tls" / "server.crt")
    shutil.copy(pki.server.key, etc / "tls" / "server.key")
    shutil.copy(pki.ca, etc / "tls" / "prometheus-ca.crt")
    res = subprocess.run([tool, "check", "web-config", str(etc / "web.yml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = load_web_config(etc / "web.yml")
    assert cfg.tls is not None and cfg.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert [u for u, _ in cfg.users] == ["prometheus"]
    # Without the certificates in place both promtool and the agent refuse the file.
    (etc / "tls" / "server.key").unlink()
    assert subprocess.run([tool, "check", "web-config", str(etc / "web.yml")], capture_output=True,
                          timeout=60).returncode != 0
    with pytest.raises(LoadError, match=r"web\.yml:\d+:\d+: key_file .* no such file"):
        load_web_config(etc / "web.yml")


def write_web(tmp_path: Path, pki: PKI, extra: str = "") -> Path:
    p = tmp_path / "web.yml"
    p.write_text(f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
                 f"{extra}basic_auth_users:\n  prometheus: {HASH}\n"
                 "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    return p


def test_tls_and_basic_auth(serve: list[Exporter], tmp_path: Path, pki: PKI) -> None:
    web = load_web_config(write_web(tmp_path, pki))
    if tool := shutil.which("promtool"):
        assert subprocess.run([tool, "check", "web-config", str(web.path)], timeout=60).returncode == 0
    port = start(serve, Exporter(Metrics("0.1.0"), "127.0.0.1:0", web_config=web))
    ctx = client_context(pki)

    status, headers, body = get(port, headers=basic("prometheus", PASSWORD), context=ctx)
    assert status == 200 and b"dutywatch_build_info" in body
    assert headers["x-frame-options"] == "deny"
    # A second scrape with the same credentials is served from the cache and still right.
    assert get(port, headers=basic("prometheus", PASSWORD), context=ctx)[0] == 200

    for creds in (basic("prometheus", "wrong"), basic("nobody", PASSWORD), {}, {"Authorization": "Basic !!"}):
        status, headers, _ = get(port, headers=creds, context=ctx)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic ")
    assert get(port, "/healthz", context=ctx)[0] == 401  # every path is protected

    # Plain HTTP to the TLS port is refused with a 400 and never reaches the metrics.
    status, _, body = get(port, headers=basic("prometheus", PASSWORD))
    assert status == 400 and b"dutywatch_" not in body


def test_client_certificate_required(serve: list[Exporter], tmp_path: Path, pki: PKI) -> None:
    extra = f"  client_ca_file: {pki.ca}\n  client_auth_type: RequireAndVerifyClientCert\n"
    web = load_web_config(write_web(tmp_path, pki, extra))
    port = start(serve, Exporter(Metrics("0.1.0"), "127.0.0.1:0", web_config=web))
    creds = basic("prometheus", PASSWORD)

    good = client_context(pki, (pki.client.cert, pki.client.key))
    assert get(port, headers=creds, context=good)[0] == 200
    for ctx in (client_context(pki), client_context(pki, (pki.stranger.cert, pki.stranger.key))):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(port, headers=creds, context=ctx)


def test_tls_port_survives_garbage_and_silent_clients(serve: list[Exporter], tmp_path: Path,
                                                       pki: PKI) -> None:
    web = load_web_config(write_web(tmp_path, pki))
    port = start(serve, Exporter(Metrics("0.1.0"), "127.0.0.1:0", web_config=web))
    silent = socket.create_connection(("127.0.0.1", port))  # never says anything
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken handshake
        s.settimeout(10)
        try:
            answer = s.recv(100)
        except ConnectionError:
            answer = b""
        assert answer == b"" or answer.startswith(b"\x15")  # closed, at most after a TLS alert
    try:
        assert get(port, headers=basic("prometheus", PASSWORD), context=client_context(pki))[0] == 200
    finally:
        silent.close()


@pytest.mark.parametrize(("text", "message"), [
    ("tls_server_config:\n  cert_file: x\n  bogus: 1\n", r":3:3: unknown key 'bogus'"),
    ("basic_auth_users:\n  a: plaintext\n", r":2:6: password of user 'a' is not a bcrypt hash"),
    ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", r":3:29: invalid value"),
    ("tls_server_config:\n  key_file: k\n", r":2:3: tls_server_config: missing cert_file"),
    ("rate_limit: {interval: 1s}\n", r":1:1: unknown key 'rate_limit'"),
])
def test_web_config_errors_name_their_place(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "web.yml"
    p.write_text(text)
    with pytest.raises(LoadError, match=message):
        load_web_config(p)


def test_listen_forms() -> None:
    assert parse_listen("0.0.0.0:9847") == ("0.0.0.0", 9847)
    assert parse_listen(":9847") == ("0.0.0.0", 9847)
    assert parse_listen("[::1]:9847") == ("::1", 9847)
    with pytest.raises(ValueError, match="host:port"):
        parse_listen("localhost")
