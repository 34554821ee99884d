"""A strict RFC 5424 parser and loopback receivers (UDP, TCP and TLS with RFC 6587 octet counting).

Strict means: anything the ABNF of RFC 5424 does not allow is an error,
plus what a careful receiver would refuse anyway (a backslash in a
PARAM-VALUE that escapes nothing, invalid UTF-8 where UTF-8 is required,
leading zeros in PRI or in the frame length).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

BOM = b"\xef\xbb\xbf"
_TS = re.compile(rb"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_PRINTUSASCII = re.compile(rb"^[!-~]+$")
_SD_NAME = re.compile(rb'[!#-<>-\\^-~]{1,32}')


class SyslogError(ValueError):
    """The bytes are not a valid RFC 5424 message."""


@dataclass
class Message:
    """One parsed message."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes
    utf8: bool = False
    raw: bytes = b""

    @property
    def facility(self) -> int:
        return self.pri >> 3

    @property
    def severity(self) -> int:
        return self.pri & 7

    @property
    def text(self) -> str:
        return self.msg.decode("utf-8")


def _field(data: bytes, pos: int, limit: int, what: str) -> tuple[str, int]:
    end = data.find(b" ", pos)
    if end < 0:
        raise SyslogError(f"{what}: no space after it")
    token = data[pos:end]
    if token != b"-" and (not 1 <= len(token) <= limit or not _PRINTUSASCII.match(token)):
        raise SyslogError(f"{what}: {token[:40]!r} is not 1..{limit} printable US-ASCII characters")
    return token.decode("ascii"), end + 1


def _sd(data: bytes, pos: int) -> tuple[dict[str, dict[str, str]], int]:
    if data[pos:pos + 1] == b"-":
        return {}, pos + 1
    elements: dict[str, dict[str, str]] = {}
    while data[pos:pos + 1] == b"[":
        m = _SD_NAME.match(data, pos + 1)
        if not m:
            raise SyslogError("bad SD-ID")
        sd_id = m.group().decode("ascii")
        if sd_id in elements:
            raise SyslogError(f"SD-ID {sd_id} twice")
        params: dict[str, str] = {}
        pos = m.end()
        while data[pos:pos + 1] == b" ":
            m = _SD_NAME.match(data, pos + 1)
            if not m or data[m.end():m.end() + 2] != b'="':
                raise SyslogError(f"bad SD-PARAM at byte {pos}")
            name = m.group().decode("ascii")
            pos = m.end() + 2
            value = bytearray()
            while True:
                if pos >= len(data):
                    raise SyslogError("unterminated PARAM-VALUE")
                c = data[pos:pos + 1]
                if c == b"\\":
                    nxt = data[pos + 1:pos + 2]
                    if nxt not in (b'"', b"\\", b"]"):
                        raise SyslogError(f"backslash escapes nothing at byte {pos}")
                    value += nxt
                    pos += 2
                elif c == b'"':
                    pos += 1
                    break
                elif c == b"]":
                    raise SyslogError(f"unescaped ] in PARAM-VALUE at byte {pos}")
                else:
                    value += c
                    pos += 1
            try:
                params[name] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SyslogError(f"PARAM-VALUE of {name} is not UTF-8") from exc
        if data[pos:pos + 1] != b"]":
            raise SyslogError(f"SD-ELEMENT not closed at byte {pos}")
        elements[sd_id] = params
        pos += 1
    if not elements:
        raise SyslogError("STRUCTURED-DATA is neither - nor [...]")
    return elements, pos


def parse(data: bytes) -> Message:
    """Parse one message or raise SyslogError saying what is wrong."""
    m = re.match(rb"<(0|[1-9]\d{0,2})>1 ", data)
    if not m or int(m.group(1)) > 191:
        raise SyslogError(f"bad PRI/VERSION in {data[:12]!r}")
    pos = m.end()
    ts, pos = _field(data, pos, 64, "TIMESTAMP")
    if ts != "-" and not _TS.match(ts.encode()):
        raise SyslogError(f"bad TIMESTAMP {ts!r}")
    host, pos = _field(data, pos, 255, "HOSTNAME")
    app, pos = _field(data, pos, 48, "APP-NAME")
    procid, pos = _field(data, pos, 128, "PROCID")
    msgid, pos = _field(data, pos, 32, "MSGID")
    sd, pos = _sd(data, pos)
    msg = b""
    utf8 = False
    if pos < len(data):
        if data[pos:pos + 1] != b" ":
            raise SyslogError(f"no space between STRUCTURED-DATA and MSG at byte {pos}")
        msg = data[pos + 1:]
        if msg.startswith(BOM):
            msg = msg[3:]
            utf8 = True
            try:
                msg.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SyslogError("MSG after BOM is not UTF-8") from exc
    return Message(int(m.group(1)), ts, host, app, procid, msgid, sd, msg, utf8, data)


def read_frames(sock: socket.socket) -> Iterator[bytes]:
    """Octet-counted frames (RFC 6587 3.4.1) as they arrive until the peer closes; strict lengths."""
    buf = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (OSError, ssl.SSLError):
            chunk = b""
        if chunk:
            buf += chunk
        while True:
            space = buf.find(b" ", 0, 12)
            if space < 0:
                if len(buf) >= 12 or (buf and not buf[:1].isdigit()):
                    raise SyslogError(f"bad frame length prefix {buf[:12]!r}")
                break
            head = buf[:space]
            if not re.fullmatch(rb"[1-9]\d*", head):
                raise SyslogError(f"bad frame length {head!r}")
            n = int(head)
            if len(buf) < space + 1 + n:
                break
            yield buf[space + 1:space + 1 + n]
            buf = buf[space + 1 + n:]
        if not chunk:
            if buf:
                raise SyslogError(f"connection closed inside a frame ({len(buf)} bytes left)")
            return


@dataclass
class Receiver:
    """A syslog server on 127.0.0.1 that parses every message strictly."""

    transport: str  # udp | tcp | tls
    port: int = 0
    tls: ssl.SSLContext | None = None
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> Receiver:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        self.port = s.getsockname()[1]
        s.settimeout(0.2)
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        self._sock = s
        self._stop.clear()
        self._spawn(self._udp if self.transport == "udp" else self._accept)
        return self

    def stop(self) -> None:
        self._stop.set()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        self._conns.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n and not self.errors:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _add(self, data: bytes) -> None:
        try:
            msg = parse(data)
        except SyslogError as exc:
            with self._cond:
                self.errors.append(str(exc))
                self._cond.notify_all()
            return
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _udp(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            self._add(data)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    self.errors.append(f"TLS handshake: {exc}")
                    conn.close()
                    continue
            self.connections += 1
            self._conns.append(conn)
            self._spawn(self._stream, conn)

    def _stream(self, conn: socket.socket) -> None:
        try:
            for frame in read_frames(conn):
                self._add(frame)
        except SyslogError as exc:
            with self._cond:
                self.errors.append(str(exc))
                self._cond.notify_all()
        finally:
            conn.close()
