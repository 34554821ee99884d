"""The HTTP(S) exporter: ``/metrics``, ``/healthz`` and a landing page.

A threaded ``http.server``; its accept loop is a thread of its own (a request is
served on a thread of its own too, so a slow scraper never holds up the agent), which
blocks in select on the listening socket and a stop pipe with no timeout: a host that
nobody scrapes wakes it never. With a web-config it serves
TLS (optionally requiring client certificates) and basic auth exactly as
the exporter-toolkit does: every path needs the credentials, a plain HTTP
request to the TLS port gets a 400 and is closed, and a TLS handshake runs in
the request's own thread so a slow client cannot hold up the accept loop.
Nothing here names a person, a path or a document: the landing page shows
the endpoints and the version only.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import logging
import os
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from agent.metrics import Metrics
from agent.webconfig import BasicAuth, WebConfig

HealthCheck = Callable[[], tuple[bool, str]]

_log = logging.getLogger(__name__)
_TLS_HANDSHAKE_RECORD = b"\x16"
_PLAIN_TO_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
_HANDSHAKE_TIMEOUT = 10.0


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``, ``:port`` for every address) into host and port."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen must be host:port, not {listen!r}")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":port" asks for every address
    return host, int(port_text)


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    timeout = 0.0  # handle_request() is called only once select() found a connection waiting

    def __init__(self, address: tuple[str, int], app: Exporter, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.ssl_context = ssl_context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            _Handler(request, client_address, self)
            return
        request.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
            if first != _TLS_HANDSHAKE_RECORD:
                if first:
                    request.sendall(_PLAIN_TO_TLS)
                return
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            _log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is routine; keep tracebacks out of the log.
        _log.debug("request from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "dutywatch"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.client_address[0], *args)

    def _authorized(self, auth: BasicAuth) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            pair = base64.b64decode(token.strip(), validate=True).decode("utf-8")
            user, sep, password = pair.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(sep) and auth.check(user, password)

    def _serve(self, with_body: bool) -> None:
        app = self.server.app
        if app.auth is not None and not self._authorized(app.auth):
            self._reply(401, b"Unauthorized\n", "text/plain; charset=utf-8", with_body,
                        extra=(("WWW-Authenticate", 'Basic realm="dutywatch", charset="UTF-8"'),))
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, ctype = app.metrics.exposition(self.headers.get("Accept"))
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            if gzipped:
                body = gzip.compress(body, compresslevel=1)
            self._reply(200, body, ctype, with_body,
                        extra=(("Content-Encoding", "gzip"),) if gzipped else ())
        elif path == "/healthz":
            try:
                ok, why = app.health_check()
            except Exception as exc:  # a broken check is itself unhealthy
                ok, why = False, f"health check failed: {type(exc).__name__}"
            text = "ok\n" if ok else f"{why}\n"
            self._reply(200 if ok else 503, text.encode("utf-8", "replace"),
                        "text/plain; charset=utf-8", with_body)
        elif path == "/":
            self._reply(200, app.landing, "text/html; charset=utf-8", with_body)
        else:
            self._reply(404, b"Not Found\n", "text/plain; charset=utf-8", with_body)

    def _reply(self, status: int, body: bytes, ctype: str, with_body: bool,
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (*self.server.app.headers, *extra):
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)


class Exporter:
    """Serves a ``Metrics`` registry on ``listen`` until stopped.

    ``health_check`` returns ``(ok, reason)``; ``/healthz`` answers 200 "ok"
    or 503 with the reason. ``web_config`` turns on TLS, client certificates,
    basic auth and extra headers.
    """

    def __init__(self, metrics: Metrics, listen: str, *, web_config: WebConfig | None = None,
                 health_check: HealthCheck | None = None) -> None:
        self.metrics = metrics
        self.listen = listen
        self.web_config = web_config or WebConfig()
        self.health_check: HealthCheck = health_check or _always_ok
        self.auth: BasicAuth | None = self.web_config.basic_auth()
        self.headers = self.web_config.headers
        self.landing = _landing_page(metrics.version)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: written at stop, ends the accept loop's wait

    @property
    def tls(self) -> bool:
        """Whether the exporter serves HTTPS."""
        return self.web_config.tls is not None

    @property
    def port(self) -> int:
        """The bound port (useful after listening on port 0)."""
        if self._server is None:
            raise RuntimeError("exporter not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread; raises OSError when the address is taken."""
        if self._server is not None:
            return
        host, port = parse_listen(self.listen)
        self._server = _Server((host, port), self, self.web_config.ssl_context())
        self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]),
                                        name="exporter", daemon=True)
        self._thread.start()
        _log.info("exporter listening on %s:%d (%s)", host, self.port, "https" if self.tls else "http")

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, thread, wake = self._server, self._thread, self._wake
        self._server = self._thread = self._wake = None
        if server is None or wake is None:
            return
        os.write(wake[1], b"x")
        if thread is not None:
            thread.join(timeout=5)
        server.server_close()
        for fd in wake:
            os.close(fd)

    @staticmethod
    def _serve(server: _Server, wake: int) -> None:
        """Accept connections until ``wake`` turns readable (``serve_forever`` would poll twice a second)."""
        with selectors.DefaultSelector() as sel:
            sel.register(server, selectors.EVENT_READ)
            sel.register(wake, selectors.EVENT_READ)
            while True:
                ready = sel.select()
                if any(key.fileobj == wake for key, _ in ready):
                    return
                server.handle_request()  # accept (it is ready: timeout 0) and hand the request to its thread


def _landing_page(version: str) -> bytes:
    v = html.escape(version)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>DutyWatch exporter</title></head>\n"
        f"<body><h1>DutyWatch exporter</h1><p>Version {v}</p>\n<ul>\n"
        "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n"
        "<li><a href=\"/healthz\">/healthz</a>: pipeline health</li>\n"
        "</ul></body></html>\n"
    ).encode()
