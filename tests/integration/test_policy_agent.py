"""A running agent takes signed policy from an inbox folder and over HTTPS, and refuses what does not hold."""

from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.central_rule import central_rule
from tests.integration.agent_harness import REPO, AgentProcess
from tests.integration.tlscerts import make_pki

UNIT = "测试信息中心"
OTHER = "另一单位"
ALL_OFF = "".join(f"  {n}: {{enabled: false}}\n" for n in ("process", "network", "files", "media", "host", "audit"))

CENTRAL = f"""\
hosts:
  - {{id: test-host-01, unit: {UNIT}, department: 测试委员会, custodian: lisi, level: secret, zone: intranet}}
  - {{id: test-host-02, unit: {OTHER}, department: 测试委员会, custodian: zhangsan, level: internal, zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: {UNIT}, department: 测试委员会}}, {{name: {OTHER}, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: {UNIT}, clearance: secret}}
  - {{account: lisi, uid: 1001, name: 李四, unit: {UNIT}, clearance: secret}}
zones:
  default: internet
  networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]
"""


def dw(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


class Centre:
    """The province's side: a root key, a unit key certified for one unit, and bundles made with the CLI."""

    def __init__(self, d: Path) -> None:
        self.d = d
        d.mkdir()
        for name in ("root", "unit"):
            r = dw("policy", "keygen", "--out", d / f"{name}.key")
            assert r.returncode == 0, r.stderr
        r = dw("policy", "certify", "--root-key", d / "root.key", "--pubkey", d / "unit.key.pub", "--units", UNIT,
               "--name", f"{UNIT}策略密钥", "--out", d / "unit.cert")
        assert r.returncode == 0, r.stderr

    def bundle(self, version: int, scope: str, rule_id: str, *, signer: str = "root",
               registry: str = CENTRAL) -> Path:
        src = self.d / f"src{version}-{scope}-{signer}"
        (src / "rules").mkdir(parents=True)
        (src / "rules" / "central.yaml").write_text(central_rule(rule_id), encoding="utf-8")
        (src / "central.yaml").write_text(registry, encoding="utf-8")
        out = src / "bundle.json"
        r = dw("policy", "build", "--version", str(version), "--scope", scope, "--rules", src / "rules",
               "--registry", src / "central.yaml", "--out", out)
        assert r.returncode == 0, r.stderr
        sign = ["--key", self.d / "root.key"] if signer == "root" else \
            ["--key", self.d / "unit.key", "--cert", self.d / "unit.cert"]
        r = dw("policy", "sign", out, *sign)
        assert r.returncode == 0, r.stderr
        return out


def policy_records(agent: AgentProcess) -> list[dict[str, Any]]:
    return [r for r in agent.events() if r.get("kind", "").startswith("policy.")]


@pytest.mark.root
def test_bundles_dropped_in_the_inbox_are_taken_or_refused_with_their_reason(tmp_path: Path) -> None:
    centre = Centre(tmp_path / "centre")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    agent = AgentProcess(tmp_path, collectors=ALL_OFF,
                         extra_config=f"policy: {{source: 'dir:{inbox}', keys: [{centre.d / 'root.key.pub'}], "
                                      "every: 1s}\n")

    def drop(bundle: Path, name: str) -> None:
        tmp = inbox / f".{name}"
        tmp.write_bytes(bundle.read_bytes())
        tmp.rename(inbox / name)

    def records(n: int) -> list[dict[str, Any]]:
        agent.wait(lambda: len(policy_records(agent)) >= n, f"{n} policy records", timeout=60)
        return policy_records(agent)

    agent.start()
    try:
        assert agent.metric("dutywatch_policy_info") == 0
        # 1. The root's bundle for every host: taken, its rule in force, its registry entry this host's.
        drop(centre.bundle(1, "*", "CT-001"), "p1.json")
        (applied,) = records(1)
        assert applied["kind"] == "policy.applied"
        assert applied["detail"]["version"] == 1 and applied["detail"]["signer"] == "root"
        assert applied["detail"]["sha256"] == hashlib.sha256(
            (centre.d / "src1-*-root" / "bundle.json").read_bytes()).hexdigest()
        agent.wait(lambda: agent.metric("dutywatch_policy_info", version="1", signer="root") == 1,
                   "policy_info for version 1")
        agent.wait(lambda: "CT-001" in str(agent.scrape()), "CT-001 in force")
        assert any(r.get("kind") == "agent.reload" and "policy version 1" in r["detail"].get("why", "")
                   for r in agent.events())
        assert (inbox / "applied").is_dir() and not (inbox / "p1.json").exists()
        # The central registry's entry for this host is in force: its custodian is now 李四.
        assert "custodian: lisi" in (agent.state / "policy" / "active" / "registry.yaml").read_text()

        # 2. The unit key for its own unit: taken, and named as the signer.
        drop(centre.bundle(2, UNIT, "CT-002", signer="unit"), "p2.json")
        recs = records(2)
        assert recs[-1]["kind"] == "policy.applied" and recs[-1]["detail"]["signer"] == f"{UNIT}策略密钥"
        assert recs[-1]["detail"]["signer_units"] == [UNIT]
        agent.wait(lambda: agent.metric("dutywatch_policy_info", version="2", signer=f"{UNIT}策略密钥") == 1,
                   "policy_info for version 2")

        # 3. Refusals: outside the unit key's scope, an older version, an edited bundle.
        drop(centre.bundle(3, OTHER, "CT-003", signer="unit"), "p3-scope.json")
        old = centre.d / "src1-*-root" / "bundle.json"
        drop(old, "p1-again.json")
        edited = json.loads(centre.bundle(4, "*", "CT-004").read_text())
        edited["policy"]["files"][-1]["text"] = central_rule("CT-004").replace("forbidden-tool", "nothing")
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        drop(tmp_path / "edited.json", "p4-edited.json")
        recs = records(5)
        refused = {r["detail"]["origin"].rsplit("/", 1)[-1]: r for r in recs if r["kind"] == "policy.refused"}
        assert refused["p3-scope.json"]["detail"]["reason"] == "signature" or \
            refused["p3-scope.json"]["detail"]["reason"] == "scope"
        assert refused["p1-again.json"]["detail"]["reason"] == "version"
        assert refused["p4-edited.json"]["detail"]["reason"] == "signature"
        for name in refused:
            moved = list((inbox / "refused").glob(f"*-{name}"))
            assert len(moved) == 1 and (moved[0].parent / (moved[0].name + ".reason")).exists(), name
        alerts = [r for r in agent.events("--rule", "DB-POL-001")]
        assert len(alerts) == 3 and all(r["action"] == "alert" for r in alerts)
        assert agent.metric("dutywatch_policy_refused_total") == 3
        # The policy in force stayed version 2.
        assert agent.metric("dutywatch_policy_info", version="2") == 1
        assert "CT-003" not in str(agent.scrape()) and "CT-004" not in str(agent.scrape())
    finally:
        assert agent.stop() == 0
    # A restart keeps version 2 in force (verified again from the bundle kept in the state directory).
    agent.start()
    try:
        assert agent.metric("dutywatch_policy_info", version="2") == 1
        assert "CT-002" in str(agent.scrape())
    finally:
        assert agent.stop() == 0
    v = agent.cli("verify", "--journal", str(agent.state / "journal.db"))
    assert v.returncode == 0, v.stdout + v.stderr


class _Server(http.server.BaseHTTPRequestHandler):
    body: bytes = b""
    counts: dict[int, int] = {}  # noqa: RUF012 (one server per test)

    def do_GET(self) -> None:
        etag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'
        code = 304 if self.headers.get("If-None-Match") == etag else 200
        self.counts[code] = self.counts.get(code, 0) + 1
        self.send_response(code)
        self.send_header("ETag", etag)
        if code == 200:
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if code == 200:
            self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[type[_Server], int, Path]]:
    pki = make_pki(tmp_path / "pki")
    handler = type("Handler", (_Server,), {"counts": {}})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    if getattr(request, "param", None) == "mutual":
        ctx.verify_mode = ssl.CERT_REQUIRED  # the policy server lets in only agents with a certificate of its CA
        ctx.load_verify_locations(pki.ca)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield handler, srv.server_address[1], pki.ca
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.root
def test_a_bundle_served_over_https_is_pulled_once_and_then_only_checked(
        tmp_path: Path, https_server: tuple[type[_Server], int, Path]) -> None:
    handler, port, ca = https_server
    centre = Centre(tmp_path / "centre")
    handler.body = centre.bundle(1, UNIT, "CT-101", signer="unit").read_bytes()
    agent = AgentProcess(tmp_path, collectors=ALL_OFF,
                         extra_config=f"policy: {{source: 'https://localhost:{port}/policy.json', ca: {ca}, "
                                      f"keys: [{centre.d / 'root.key.pub'}], every: 1s}}\n")
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_policy_info", version="1") == 1, "version 1 from HTTPS")
        agent.wait(lambda: handler.counts.get(304, 0) >= 2, "conditional requests answered 304")
        assert handler.counts[200] == 1
        # A new version published: pulled and taken.
        handler.body = centre.bundle(2, UNIT, "CT-102", signer="unit").read_bytes()
        agent.wait(lambda: agent.metric("dutywatch_policy_info", version="2") == 1, "version 2 from HTTPS")
        # A forged one published (signed by a key no root certified): refused once, not every minute.
        rogue = tmp_path / "rogue.key"
        assert dw("policy", "keygen", "--out", rogue).returncode == 0
        forged = centre.bundle(3, UNIT, "CT-103")
        r = dw("policy", "sign", forged, "--key", rogue)
        assert r.returncode == 0, r.stderr
        handler.body = forged.read_bytes()
        agent.wait(lambda: agent.metric("dutywatch_policy_refused_total", reason="signature") == 1, "forgery refused")
        before = handler.counts.get(304, 0)
        agent.wait(lambda: handler.counts.get(304, 0) >= before + 2, "more conditional requests")
        assert agent.metric("dutywatch_policy_refused_total") == 1
        assert agent.metric("dutywatch_policy_info", version="2") == 1
    finally:
        assert agent.stop() == 0
    refused = [r for r in agent.events() if r.get("kind") == "policy.refused"]
    assert len(refused) == 1 and refused[0]["detail"]["origin"].startswith("https://localhost:")


@pytest.mark.root
@pytest.mark.parametrize("https_server", ["mutual"], indirect=True)
def test_a_policy_server_that_asks_for_a_client_certificate_gets_the_agents_own(
        tmp_path: Path, https_server: tuple[type[_Server], int, Path]) -> None:
    handler, port, ca = https_server
    pki = ca.parent
    centre = Centre(tmp_path / "centre")
    handler.body = centre.bundle(1, UNIT, "CT-201", signer="unit").read_bytes()
    common = f"source: 'https://localhost:{port}/policy.json', ca: {ca}, keys: [{centre.d / 'root.key.pub'}], every: 1s"
    (tmp_path / "stranger").mkdir()
    mine = f"cert: {pki / 'stranger.crt'}, key: {pki / 'stranger.key'}"
    stranger = AgentProcess(tmp_path / "stranger", collectors=ALL_OFF, extra_config=f"policy: {{{common}, {mine}}}\n")
    stranger.start()
    try:
        stranger.wait(lambda: "policy source" in stranger.log_text(), "the refused handshake is logged", 60)
        assert stranger.metric("dutywatch_policy_info") == 0 and handler.counts.get(200, 0) == 0
    finally:
        assert stranger.stop() == 0
    agent = AgentProcess(tmp_path, collectors=ALL_OFF,
                         extra_config=f"policy: {{{common}, cert: {pki / 'client.crt'}, key: {pki / 'client.key'}}}\n")
    agent.start()
    try:
        agent.wait(lambda: agent.metric("dutywatch_policy_info", version="1") == 1, "version 1 over mutual TLS")
    finally:
        assert agent.stop() == 0
