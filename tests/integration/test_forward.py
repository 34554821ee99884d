"""The syslog forwarder against strict RFC 5424 receivers on loopback (UDP, TCP, TLS)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from syslog_strict import Message, Receiver, parse
from tlscerts import PKI, make_pki

from agent.errors import LoadError, Location
from agent.forward import SyslogForwarder, SyslogTarget, format_record, parse_target
from agent.metrics import Metrics
from agent.yamlsrc import load_text

AUTHPRIV = 10
HOSTILE = {
    "newline": "first line\nsecond line\r\n<13>1 - fake - - - - injected",
    "nul": "before\x00after",
    "terminal": "\x1b[2J\x1b]0;owned\x07\x1b[31mred",
    "c1": "\x9b31m\x85next\u2028line",
    "surrogate": "bad\udcff\udcfebytes",
    "sd": 'quote" backslash\\ bracket] end\\',
}
BIG = "A" * (1 << 20)


def finding(seq: int, text: str = "ok", unit: str = "省发改委信息中心", rule: str = "BM-NET-001",
            severity: str = "critical") -> dict[str, Any]:
    return {
        "type": "finding", "seq": seq, "time": 1_700_000_000.123456 + seq, "host": "js-fgw-0042",
        "rule": rule, "severity": severity, "action": "alert",
        "message": {"zh": f"张三 在涉密计算机上连接互联网 {text}", "en": f"connected to the Internet {text}"},
        "event": {"event": {"kind": "net.connect"}, "process": {"pid": 4242, "cmdline": text}},
        "accountable": {"operator": "张三", "custodian": "zhangsan", "unit": unit, "department": "省发改委"},
    }


def target(transport: str, port: int, **over: Any) -> SyslogTarget:
    base = {"address": f"{transport}://127.0.0.1:{port}", "facility": "authpriv"}
    return parse_target({**base, **over}, Location("test"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for t in reversed(things):
        if isinstance(t, SyslogForwarder):
            t.stop(timeout=0.5)  # the receiver may be down on purpose: do not wait to flush
        else:
            t.stop()


def server_tls(pki: PKI, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(pki.ca))
    return ctx


def forwarder(cleanup: list[Any], tgt: SyslogTarget, **kw: Any) -> SyslogForwarder:
    fwd = SyslogForwarder(tgt, hostname="agent-host", backoff=(0.02, 0.2), **kw)
    fwd.start()
    cleanup.append(fwd)
    return fwd


def body(m: Message) -> dict[str, Any]:
    assert m.utf8, "MSG must start with a BOM"
    out: dict[str, Any] = json.loads(m.text)
    return out


def wait_until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_text_cannot_break_a_message(name: str) -> None:
    text = HOSTILE[name]
    rec = finding(7, text, unit=text, rule=f"R-{text}")
    rec["host"] = text
    raw = format_record(rec, hostname="h", app_name="dutywatch", procid=1, facility=AUTHPRIV, now=0.0,
                        max_bytes=65536)
    assert not any(b < 0x20 or b == 0x7F for b in raw), "no control byte anywhere in the message"
    assert b"\xc2\x80" not in raw and b"\xc2\x9b" not in raw and b"\xe2\x80\xa8" not in raw
    raw.decode("utf-8")  # valid UTF-8 throughout, even with lone surrogates in the input
    m = parse(raw)
    assert m.msgid.startswith("R-") and len(m.msgid) <= 32
    sd = m.sd["dutywatch@32473"]
    if name == "sd":
        assert sd["unit"] == text and sd["rule"] == "R-" + text  # escaping round-trips exactly
    assert sd["seq"] == "7"
    assert body(m) == rec  # the JSON body carries the record unchanged, lone surrogates as escapes


def test_a_megabyte_string_is_shortened_to_fit() -> None:
    rec = finding(1, BIG)
    raw = format_record(rec, hostname="h", app_name="dutywatch", procid=1, facility=AUTHPRIV, now=0.0,
                        max_bytes=8192)
    assert len(raw) <= 8192
    decoded = body(parse(raw))
    assert decoded["truncated"] is True and decoded["seq"] == 1 and decoded["rule"] == "BM-NET-001"


def test_header_fields() -> None:
    raw = format_record(finding(3), hostname="h", app_name="dutywatch", procid=99, facility=AUTHPRIV,
                        now=0.0, max_bytes=65536)
    m = parse(raw)
    assert (m.facility, m.severity) == (AUTHPRIV, 2)
    assert m.timestamp == "2023-11-14T22:13:23.123456Z"
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("js-fgw-0042", "dutywatch", "99", "BM-NET-001")
    assert m.sd["dutywatch@32473"] == {"rule": "BM-NET-001", "severity": "critical", "action": "alert",
                                       "unit": "省发改委信息中心", "seq": "3"}
    sev = {s: parse(format_record(finding(1, severity=s), hostname="h", app_name="a", procid=1,
                                  facility=16, now=0.0, max_bytes=9000)).pri for s in
           ("critical", "high", "medium", "low", "info")}
    assert sev == {"critical": 130, "high": 131, "medium": 132, "low": 133, "info": 134}


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_delivers_findings_and_checkpoints_in_order(transport: str, cleanup: list[Any], pki: PKI) -> None:
    rx = Receiver(transport, tls=server_tls(pki) if transport == "tls" else None).start()
    cleanup.append(rx)
    over = {"tls": {"ca_file": str(pki.ca)}} if transport == "tls" else {}
    fwd = forwarder(cleanup, target(transport, rx.port, **over))
    records = [finding(1), finding(2, HOSTILE["sd"], unit=HOSTILE["newline"]), finding(3, BIG)]
    for r in records:
        assert fwd.submit(r)
    assert fwd.submit_checkpoint({"seq": 3, "hash": "ab" * 32, "signature": "cd" * 64,
                                  "pubkey_fingerprint": "SHA256:xyz"})
    got = rx.wait_for(4)
    assert rx.errors == []
    assert [m.msgid for m in got] == ["BM-NET-001"] * 3 + ["checkpoint"]
    assert [m.sd["dutywatch@32473"]["seq"] for m in got] == ["1", "2", "3", "3"]
    assert body(got[0]) == records[0]
    assert body(got[1]) == records[1]
    # control characters in structured data become U+FFFD, so no fake message can start there
    assert got[1].sd["dutywatch@32473"]["unit"] == HOSTILE["newline"].replace("\n", "\ufffd").replace(
        "\r", "\ufffd")
    assert body(got[2])["truncated"] is True  # 1 MB does not fit the default message size
    cp = body(got[3])
    assert cp["type"] == "checkpoint" and cp["hash"] == "ab" * 32
    assert got[3].sd["dutywatch@32473"] == {"seq": "3", "hash": "ab" * 32, "key": "SHA256:xyz"}
    assert fwd.errors == 0 and fwd.dropped == 0


def test_a_megabyte_record_travels_whole_when_allowed(cleanup: list[Any]) -> None:
    rx = Receiver("tcp").start()
    cleanup.append(rx)
    fwd = forwarder(cleanup, target("tcp", rx.port, max_message_bytes=4 << 20))
    fwd.submit(finding(1, BIG))
    fwd.submit(finding(2))
    got = rx.wait_for(2)
    assert rx.errors == [] and len(got) == 2
    assert body(got[0])["event"]["process"]["cmdline"] == BIG
    assert body(got[1])["seq"] == 2


def free_port_holder() -> socket.socket:
    """A bound, non-listening TCP socket: connections to its port are refused until it closes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def test_retry_buffer_keeps_order_and_counts_overflow(cleanup: list[Any]) -> None:
    holder = free_port_holder()
    port = holder.getsockname()[1]
    metrics = Metrics("0.1.0", process_metrics=False)
    fwd = forwarder(cleanup, target("tcp", port, buffer=5), stats=metrics)
    assert fwd.submit(finding(0))
    # Record 0 is in flight (connection refused, waiting to retry) once the first error shows.
    assert wait_until(lambda: fwd.errors >= 1)
    results = [fwd.submit(finding(i)) for i in range(1, 8)]
    assert results == [True] * 5 + [False] * 2  # the buffer holds 5; two oldest waiting ones go
    assert fwd.dropped == 2 and fwd.pending() == 5

    holder.close()
    rx = Receiver("tcp", port=port).start()
    cleanup.append(rx)
    got = rx.wait_for(6)
    assert rx.errors == []
    assert [body(m)["seq"] for m in got] == [0, 3, 4, 5, 6, 7]
    scrape = metrics.exposition()[0].decode()
    assert f'dutywatch_forward_dropped_total{{target="tcp://127.0.0.1:{port}"}} 2.0' in scrape
    errors = metrics.forward_errors.value((f"tcp://127.0.0.1:{port}",))
    assert errors == fwd.errors >= 1


def test_reconnects_after_the_receiver_restarts(cleanup: list[Any]) -> None:
    rx = Receiver("tcp").start()
    fwd = forwarder(cleanup, target("tcp", rx.port))
    for i in range(3):
        fwd.submit(finding(i))
    assert len(rx.wait_for(3)) == 3
    rx.stop()
    for i in range(3, 6):
        fwd.submit(finding(i))
    assert wait_until(lambda: fwd.errors >= 1)
    rx2 = Receiver("tcp", port=rx.port).start()
    cleanup.append(rx2)
    got = rx2.wait_for(3)
    assert rx2.errors == []
    assert [body(m)["seq"] for m in got] == [3, 4, 5]  # nothing lost in the dead connection


def test_submit_never_blocks_while_the_receiver_is_down(cleanup: list[Any]) -> None:
    holder = free_port_holder()
    cleanup.append(type("Closer", (), {"stop": lambda self: holder.close()})())
    fwd = forwarder(cleanup, target("tcp", holder.getsockname()[1], buffer=100))
    accepted = sum(fwd.submit(finding(i)) for i in range(20_000))
    assert fwd.pending() == 100
    assert accepted == 20_000 - fwd.dropped
    assert 20_000 - 101 <= fwd.dropped <= 20_000 - 100  # at most one record is in flight


def test_tls_checks_the_server_and_presents_a_client_certificate(cleanup: list[Any], pki: PKI) -> None:
    rx = Receiver("tls", tls=server_tls(pki, require_client=True)).start()
    cleanup.append(rx)
    good = forwarder(cleanup, target("tls", rx.port, tls={
        "ca_file": str(pki.ca), "cert_file": str(pki.client.cert), "key_file": str(pki.client.key),
        "server_name": "localhost"}))
    good.submit(finding(1))
    assert [body(m)["seq"] for m in rx.wait_for(1)] == [1]

    # A forwarder that does not trust the receiver's CA sends nothing and counts errors.
    wrong_ca = forwarder(cleanup, target("tls", rx.port, tls={
        "ca_file": str(pki.stranger.cert), "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key)}))
    wrong_ca.submit(finding(2))
    assert wait_until(lambda: wrong_ca.errors >= 2)
    assert wrong_ca.sent == 0 and len(rx.messages) == 1


@pytest.mark.parametrize(("text", "message"), [
    ("address: tcp://127.0.0.1:514\nport: 1\n", r"cfg:2:1: unknown key 'port'"),
    ("address: http://127.0.0.1:514\n", r"cfg:1:10: address must be udp://, tcp:// or tls://"),
    ("address: tcp://127.0.0.1:514\ntls: {ca_file: /x}\n", r"cfg:2:6: tls settings need a tls:// address"),
    ("address: tls://127.0.0.1:6514\ntls: {cafile: /x}\n", r"cfg:2:7: unknown key 'cafile' in tls"),
    ("address: udp://127.0.0.1:514\nfacility: local9\n", r"cfg:2:11: facility must be"),
    ("address: tls://127.0.0.1:6514\ntls: {ca_file: /nonexistent/ca.pem}\n", r"cfg:2:16: cannot use TLS"),
])
def test_target_errors_name_their_place(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        parse_target(load_text(text, "cfg"), Location("cfg"))


def test_target_defaults(tmp_path: Path) -> None:
    t = parse_target({"address": "tls://[::1]"}, Location("x"))
    assert (t.transport, t.host, t.port, t.label) == ("tls", "::1", 6514, "tls://[::1]:6514")
    assert t.facility == AUTHPRIV and t.app_name == "dutywatch" and t.tls is not None


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("rsyslogd") is None,
                    reason="rsyslog not installed (apt-get install rsyslog)")
def test_rsyslog_receives_what_we_send(tmp_path: Path, cleanup: list[Any]) -> None:
    tcp, udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{tmp_path}")\n'
        'module(load="imtcp")\nmodule(load="imudp")\n'
        f'input(type="imtcp" port="{tcp}" address="127.0.0.1")\n'
        f'input(type="imudp" port="{udp}" address="127.0.0.1")\n'
        'template(name="t" type="list") { property(name="msgid") constant(value="\\t")\n'
        '  property(name="structured-data") constant(value="\\t") property(name="msg")\n'
        '  constant(value="\\n") }\n'
        f'*.* action(type="omfile" file="{out}" template="t")\n')
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _accepts(tcp))
        via_udp = forwarder(cleanup, target("udp", udp))
        via_tcp = forwarder(cleanup, target("tcp", tcp))
        sent = [finding(1, HOSTILE["sd"], unit='单位"]\\'), finding(2, HOSTILE["terminal"])]
        via_tcp.submit(sent[0])
        via_udp.submit(sent[1])
        assert wait_until(lambda: out.exists() and out.read_text("utf-8").count("\n") >= 2)
    finally:
        proc.terminate()
        proc.wait(10)
    lines = sorted(out.read_text("utf-8").splitlines(),
                   key=lambda line: json.loads(line.split("\t")[2][1:])["seq"])
    for line, rec in zip(lines, sent, strict=True):
        msgid, sd, msg = line.split("\t")
        assert msgid == "BM-NET-001"
        assert sd.startswith("[dutywatch@32473 rule=\"BM-NET-001\"") and f'seq="{rec["seq"]}"' in sd
        assert msg.startswith("\ufeff") and json.loads(msg[1:]) == rec
    assert 'unit="单位\\"\\]\\\\"' in lines[0]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
