"""The exporter-toolkit web-config file: TLS, client certificates, basic auth, headers.

The format is the one every Prometheus exporter reads
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
so ``promtool check web-config`` validates ours too. Relative file names are
relative to the web-config file itself, as the toolkit does. Unknown keys and
bad values are load errors naming ``path:line:col``; certificates and keys are
loaded here, at load time, so a broken file fails the start and not the first
scrape.

Where Python's TLS differs from Go's, we choose the stricter side:
``RequestClientCert`` and ``RequireAnyClientCert`` verify a presented client
certificate (Python cannot accept one unverified), ``curve_preferences`` is
checked but left to OpenSSL's defaults, and ``http2`` is accepted and
ignored (the exporter speaks HTTP/1.1).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from agent.errors import LoadError, Location
from agent.yamlsrc import LDict, load_file, where_of

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's names for the TLS 1.2 suites it offers, with OpenSSL's names for the same suites.
CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are not configurable in Go either; listing them is allowed and changes nothing.
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
CURVES = frozenset({"CurveP256", "CurveP384", "CurveP521", "X25519"})
# The toolkit allows exactly these response headers, some with a fixed set of values.
HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_BCRYPT = re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$")
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
_HTTP_KEYS = ("http2", "headers")


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """The ``tls_server_config`` section, with file names resolved."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context as this section describes; raises OSError/SSLError."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca_file))
        elif ctx.verify_mode != ssl.CERT_NONE:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if self.cipher_suites:
            names = [CIPHER_SUITES[c] for c in self.cipher_suites if c in CIPHER_SUITES]
            if names:
                ctx.set_ciphers(":".join(names))
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        return ctx


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A loaded web-config: TLS (or None for plain HTTP), extra headers, basic-auth users."""

    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: tuple[tuple[str, str], ...] = ()
    path: str = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server SSL context, or None when TLS is off."""
        return self.tls.context() if self.tls is not None else None

    def basic_auth(self) -> BasicAuth | None:
        """A checker for the configured users, or None when basic auth is off."""
        return BasicAuth(dict(self.users)) if self.users else None


@dataclass
class BasicAuth:
    """Checks basic-auth credentials against bcrypt hashes, caching successes.

    bcrypt costs tens of milliseconds by design; Prometheus scrapes every few
    seconds with the same credentials, so a successful check is remembered
    under a SHA-256 of (user, password, hash) and later scrapes cost a hash.
    Failures are never cached, and an unknown user is checked against a real
    hash so that timing does not tell which users exist.
    """

    users: Mapping[str, str]
    cache_size: int = 64
    _cache: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, user: str, password: str) -> bool:
        """True when ``password`` is ``user``'s."""
        hashed = self.users.get(user)
        decoy = hashed is None
        if decoy:
            hashed = next(iter(self.users.values()))
        assert hashed is not None
        secret = password.encode("utf-8", "surrogateescape")
        key = hashlib.sha256(b"\0".join((user.encode("utf-8", "surrogateescape"), secret,
                                          hashed.encode("ascii")))).digest()
        with self._lock:
            hit = any(hmac.compare_digest(key, k) for k in self._cache) if not decoy else False
        if hit:
            return True
        try:
            ok = bcrypt.checkpw(secret, hashed.encode("ascii"))
        except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
            ok = False
        if not ok or decoy:
            return False
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return True


def _section(data: Any, key: str, parent: LDict, allowed: tuple[str, ...]) -> LDict | None:
    value = data
    if value is None:
        return None
    if not isinstance(value, LDict):
        raise LoadError(parent.at(key), f"{key} must be a mapping")
    for k in value:
        if k not in allowed:
            raise LoadError(value.key_at(k), f"unknown key {k!r} in {key} (allowed: {', '.join(allowed)})")
    return value


def _str(sec: LDict, key: str, default: str | None = None) -> str | None:
    value = sec.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise LoadError(sec.at(key), f"{key} must be a non-empty string")
    return str(value)


def _choice(sec: LDict, key: str, allowed: Mapping[str, Any], default: str) -> str:
    value = _str(sec, key, default) or default
    if value not in allowed:
        raise LoadError(sec.at(key), f"invalid {key} {value!r} (one of: {', '.join(allowed)})")
    return value


def _names(sec: LDict, key: str, allowed: frozenset[str] | Mapping[str, str], what: str) -> tuple[str, ...]:
    value = sec.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LoadError(sec.at(key), f"{key} must be a list")
    out = []
    for item in value:
        if not isinstance(item, str) or item not in allowed:
            raise LoadError(where_of(item, sec.at(key)), f"unknown {what} {item!r}")
        out.append(str(item))
    return tuple(out)


def _file(sec: LDict, key: str, base: Path) -> Path | None:
    name = _str(sec, key)
    if name is None:
        return None
    p = base / name
    if not p.is_file():
        raise LoadError(sec.at(key), f"{key} {str(p)!r}: no such file")
    return p


def _tls(sec: LDict, base: Path) -> TLSServerConfig | None:
    if not sec:
        return None
    cert = _file(sec, "cert_file", base)
    if cert is None:
        raise LoadError(sec.where, "tls_server_config: missing cert_file")
    key = _file(sec, "key_file", base)
    if key is None:
        raise LoadError(sec.where, "tls_server_config: missing key_file")
    auth = _choice(sec, "client_auth_type", CLIENT_AUTH_TYPES, "NoClientCert")
    ca = _file(sec, "client_ca_file", base)
    if ca is not None and auth == "NoClientCert":
        raise LoadError(sec.at("client_ca_file"),
                        "client_ca_file is set but client_auth_type is NoClientCert")
    lo = _choice(sec, "min_version", TLS_VERSIONS, "TLS12")
    hi = _choice(sec, "max_version", TLS_VERSIONS, "TLS13")
    if TLS_VERSIONS[lo] > TLS_VERSIONS[hi]:
        raise LoadError(sec.at("min_version"), f"min_version {lo} is above max_version {hi}")
    known = {**CIPHER_SUITES, **dict.fromkeys(TLS13_SUITES, "")}
    suites = _names(sec, "cipher_suites", known, "cipher suite")
    _names(sec, "curve_preferences", CURVES, "curve")
    prefer = sec.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise LoadError(sec.at("prefer_server_cipher_suites"),
                        "prefer_server_cipher_suites must be true or false")
    cfg = TLSServerConfig(cert_file=cert, key_file=key, client_auth_type=auth, client_ca_file=ca,
                          min_version=lo, max_version=hi, cipher_suites=suites,
                          prefer_server_cipher_suites=prefer)
    try:
        cfg.context()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise LoadError(sec.at("cert_file"), f"cannot use certificate, key or CA: {exc}") from None
    return cfg


def _headers(sec: LDict) -> tuple[tuple[str, str], ...]:
    if "http2" in sec and not isinstance(sec["http2"], bool):
        raise LoadError(sec.at("http2"), "http2 must be true or false")
    raw = _section(sec.get("headers"), "headers", sec, tuple(HEADERS))
    out: list[tuple[str, str]] = []
    for name, value in (raw or {}).items():
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise LoadError(raw.at(name) if raw else sec.where, f"header {name} must be a one-line string")
        allowed = HEADERS[name]
        if value and allowed is not None and value.lower() not in allowed:
            raise LoadError(raw.at(name) if raw else sec.where,
                            f"invalid value for {name} (one of: {', '.join(sorted(allowed))})")
        if value:
            out.append((name, str(value)))
    return tuple(out)


def _users(data: Any, top: LDict) -> tuple[tuple[str, str], ...]:
    users = data
    if users is None:
        return ()
    if not isinstance(users, LDict):
        raise LoadError(top.at("basic_auth_users"), "basic_auth_users must map user names to bcrypt hashes")
    out = []
    for name, hashed in users.items():
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise LoadError(users.at(name), f"password of user {name!r} is not a bcrypt hash "
                            "(make one with: htpasswd -nBC 10 '' | tr -d ':\\n')")
        out.append((str(name), str(hashed)))
    return tuple(out)


def parse_web_config(data: Any, path: str) -> WebConfig:
    """Check a parsed web-config document; file names are relative to ``path``'s folder."""
    if data is None:
        return WebConfig(path=path)
    if not isinstance(data, LDict):
        raise LoadError(where_of(data, Location(path)), "a web-config must be a mapping")
    for k in data:
        if k not in _TOP_KEYS:
            raise LoadError(data.key_at(k), f"unknown key {k!r} (allowed: {', '.join(_TOP_KEYS)})")
    base = Path(path).parent
    tls_sec = _section(data.get("tls_server_config"), "tls_server_config", data, _TLS_KEYS)
    http_sec = _section(data.get("http_server_config"), "http_server_config", data, _HTTP_KEYS)
    return WebConfig(
        tls=_tls(tls_sec, base) if tls_sec is not None else None,
        headers=_headers(http_sec) if http_sec is not None else (),
        users=_users(data.get("basic_auth_users"), data),
        path=path,
    )


def load_web_config(path: str | Path) -> WebConfig:
    """Load and check a web-config file; raise LoadError naming path:line:col."""
    return parse_web_config(load_file(path), str(path))
