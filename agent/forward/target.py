"""Where findings are forwarded: the ``forward.syslog`` config and its connection.

``address`` is ``udp://host:port`` (RFC 5426, one message a datagram),
``tcp://host:port`` (RFC 6587 octet counting) or ``tls://host:port``
(RFC 5425: octet counting inside TLS). Unknown keys and bad values are load
errors naming ``path:line:col``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.errors import LoadError, Location
from agent.forward.rfc5424 import FACILITIES
from agent.yamlsrc import where_of

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
# Datagrams beyond ~8 KiB are fragmented and many receivers cut them; streams take more.
DEFAULT_MAX_BYTES = {"udp": 8192, "tcp": 65536, "tls": 65536}
_KEYS = ("address", "tls", "app_name", "facility", "buffer", "max_message_bytes")
_TLS_KEYS = ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """Client TLS settings for a ``tls://`` target."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    def context(self) -> ssl.SSLContext:
        """A client context; verifies the server unless told not to."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """One syslog receiver and how to write to it."""

    transport: str  # udp | tcp | tls
    host: str
    port: int
    tls: TLSOptions | None = None
    app_name: str = "dutywatch"
    facility: int = FACILITIES["authpriv"]
    buffer: int = 10000
    max_message_bytes: int = 65536

    @property
    def label(self) -> str:
        """The target as the ``forward_errors_total{target}`` label shows it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def _fail(cfg: Mapping[str, Any], key: str, where: Location, message: str) -> LoadError:
    at = getattr(cfg, "at", None)
    return LoadError(at(key) if callable(at) else where, message)


def _check_keys(cfg: Mapping[str, Any], allowed: tuple[str, ...], what: str, where: Location) -> None:
    for key in cfg:
        if key not in allowed:
            key_at = getattr(cfg, "key_at", None)
            raise LoadError(key_at(key) if callable(key_at) else where,
                            f"unknown key {key!r} in {what} (allowed: {', '.join(allowed)})")


def _int(cfg: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: Location) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(cfg, key, where, f"{key} must be a whole number from {lo} to {hi}")
    return value


def _tls_options(raw: Any, cfg: Mapping[str, Any], where: Location) -> TLSOptions:
    if not isinstance(raw, Mapping):
        raise _fail(cfg, "tls", where, "tls must be a mapping")
    where = where_of(raw, where)
    _check_keys(raw, _TLS_KEYS, "tls", where)
    values: dict[str, Any] = {}
    for key in _TLS_KEYS[:4]:
        v = raw.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise _fail(raw, key, where, f"{key} must be a non-empty string")
        values[key] = str(v) if v is not None else None
    skip = raw.get("insecure_skip_verify", False)
    if not isinstance(skip, bool):
        raise _fail(raw, "insecure_skip_verify", where, "insecure_skip_verify must be true or false")
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise _fail(raw, "cert_file", where, "cert_file and key_file go together")
    opts = TLSOptions(insecure_skip_verify=skip, **values)
    try:
        opts.context()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise _fail(raw, "ca_file", where, f"cannot use TLS files: {exc}") from None
    return opts


def parse_target(cfg: Any, where: Location) -> SyslogTarget:
    """Check one ``forward.syslog`` section; ``where`` is used for plain dicts."""
    if not isinstance(cfg, Mapping):
        raise LoadError(where_of(cfg, where), "forward.syslog must be a mapping with an address")
    where = where_of(cfg, where)
    _check_keys(cfg, _KEYS, "forward.syslog", where)
    address = cfg.get("address")
    if not isinstance(address, str):
        raise _fail(cfg, "address", where, "address is required, e.g. tcp://127.0.0.1:6514")
    url = urlsplit(address)
    try:
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
    except ValueError:
        port = 0
    if url.scheme not in DEFAULT_PORTS or not url.hostname or not port or url.path or url.query:
        raise _fail(cfg, "address", where,
                    f"address must be udp://, tcp:// or tls://host:port, not {address!r}")
    tls = None
    if "tls" in cfg and cfg["tls"] is not None:
        if url.scheme != "tls":
            raise _fail(cfg, "tls", where, "tls settings need a tls:// address")
        tls = _tls_options(cfg["tls"], cfg, where)
    elif url.scheme == "tls":
        tls = TLSOptions()
    facility = cfg.get("facility", "authpriv")
    if isinstance(facility, str) and facility in FACILITIES:
        facility = FACILITIES[facility]
    if isinstance(facility, bool) or not isinstance(facility, int) or not 0 <= facility <= 23:
        raise _fail(cfg, "facility", where, f"facility must be 0..23 or one of {', '.join(FACILITIES)}")
    app = cfg.get("app_name", "dutywatch")
    if not isinstance(app, str) or not 1 <= len(app) <= 48 or not all(33 <= ord(c) <= 126 for c in app):
        raise _fail(cfg, "app_name", where, "app_name must be 1 to 48 printable ASCII characters")
    return SyslogTarget(
        transport=url.scheme, host=url.hostname, port=port, tls=tls, app_name=str(app), facility=facility,
        buffer=_int(cfg, "buffer", 10000, 1, 10_000_000, where),
        max_message_bytes=_int(cfg, "max_message_bytes", DEFAULT_MAX_BYTES[url.scheme], 480,
                               65000 if url.scheme == "udp" else 16 << 20, where),
    )


class Connection:
    """One open connection to a target; ``send`` frames and writes one message."""

    def __init__(self, target: SyslogTarget, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        if target.transport == "udp":
            self.sock: socket.socket = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self.sock.settimeout(timeout)
                self.sock.connect((target.host, target.port))
            except OSError:
                self.sock.close()
                raise
            return
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
        if target.tls is None:
            self.sock = raw
            return
        try:
            self.sock = target.tls.context().wrap_socket(
                raw, server_hostname=target.tls.server_name or target.host)
        except (OSError, ssl.SSLError):
            raw.close()
            raise

    def peer_closed(self) -> bool:
        """True when a stream peer has hung up (a syslog receiver never talks back)."""
        if self.target.transport == "udp":
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return False
        # Readable can also mean TLS 1.3 session tickets; only an empty read means closed.
        self.sock.setblocking(False)
        try:
            return self.sock.recv(4096) == b""
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def send(self, message: bytes) -> None:
        """Write one message with the transport's framing; raises OSError on failure."""
        if self.target.transport == "udp":
            self.sock.send(message)
            return
        if self.peer_closed():
            # Writing now would vanish into a dead socket; fail so the message is kept and retried.
            raise ConnectionResetError("receiver closed the connection")
        self.sock.sendall(b"%d " % len(message) + message)

    def close(self) -> None:
        """Close the socket, ignoring errors."""
        with contextlib.suppress(OSError):
            self.sock.close()
