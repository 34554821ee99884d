"""One journal record as one RFC 5424 syslog message.

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [dutywatch@32473 ...] BOM{json}``

Header fields are cut down to printable US-ASCII and their RFC lengths;
structured-data values are UTF-8 with ``"``, ``\\`` and ``]`` escaped and
control characters replaced; the JSON body escapes every control character
(C0, DEL, C1, U+2028/9) and writes lone surrogates as JSON escapes, so no
byte of a message can be taken for framing, a line end or a terminal
command. A record too large for the target has its strings shortened, and
says so with ``"truncated": true``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES: dict[str, int] = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
NOTICE, INFO = 5, 6
# 32473 is the private enterprise number RFC 5612 reserves for documentation and examples.
SD_ID = "dutywatch@32473"
BOM = b"\xef\xbb\xbf"
NIL = "-"
SD_VALUE_LIMIT = 256

_SD_NAME = re.compile(r'^[!#-<>-\\^-~]{1,32}$')  # PRINTUSASCII except '=', ']', '"' and space
_NOT_PRINTUSASCII = re.compile(r"[^!-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029]")  # what json.dumps leaves raw
_SHRINK_STEPS = (4096, 1024, 256, 64, 16)


def header_field(value: object, limit: int) -> str:
    """A header field: printable US-ASCII only, at most ``limit`` chars, ``-`` when empty."""
    text = _NOT_PRINTUSASCII.sub("_", "" if value is None else str(value))[:limit]
    return text or NIL


def sd_value(value: object, limit: int = SD_VALUE_LIMIT) -> str:
    """A PARAM-VALUE: valid UTF-8 text without control characters, escaped, at most ``limit`` chars."""
    text = "" if value is None else str(value)
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    text = _CONTROL.sub("\ufffd", text)[:limit]
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def sd_element(sd_id: str, params: Sequence[tuple[str, object]]) -> str:
    """One SD-ELEMENT; names are ours and checked, values escaped."""
    if not _SD_NAME.match(sd_id):
        raise ValueError(f"invalid SD-ID {sd_id!r}")
    parts = [sd_id]
    for name, value in params:
        if not _SD_NAME.match(name):
            raise ValueError(f"invalid SD-NAME {name!r}")
        parts.append(f'{name}="{sd_value(value)}"')
    return "[" + " ".join(parts) + "]"


def timestamp(epoch: float) -> str:
    """RFC 3339 UTC time with microseconds, as RFC 5424 allows at most."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _shrunk(obj: Any, limit: int) -> Any:
    if isinstance(obj, str):
        return obj if len(obj) <= limit else obj[:limit] + "…"
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k)[:limit]: _shrunk(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_shrunk(v, limit) for v in obj]
    return obj


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
    text = _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    # Lone surrogates can only sit inside JSON strings; written as \udcXX they stay valid JSON.
    return text.encode("utf-8", "backslashreplace")


def json_body(record: Mapping[str, Any], budget: int) -> bytes:
    """The record as compact JSON of at most ``budget`` bytes, shortened if need be."""
    try:
        body = _dumps(record)
    except ValueError:  # NaN or infinity somewhere: normalise and go on
        body = _dumps(_shrunk(record, 1 << 30))
    if len(body) <= budget:
        return body
    for limit in _SHRINK_STEPS:
        small = _shrunk(record, limit)
        small["truncated"] = True
        body = _dumps(small)
        if len(body) <= budget:
            return body
    keep = {k: record.get(k) for k in ("type", "seq", "rule", "severity") if k in record}
    return _dumps({**_shrunk(keep, 64), "truncated": True})[:max(budget, 0)]


def severity_of(record: Mapping[str, Any]) -> int:
    """The syslog severity of a record."""
    kind = record.get("type", "finding")
    if kind == "checkpoint":
        return INFO
    default = INFO if kind == "finding" else NOTICE
    return SEVERITIES.get(str(record.get("severity")), default)


def _structured(record: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(record.get("type", "finding"))
    if kind == "finding":
        acc = record.get("accountable")
        unit = acc.get("unit") if isinstance(acc, Mapping) else None
        params: list[tuple[str, object]] = [
            ("rule", record.get("rule")), ("severity", record.get("severity")),
            ("action", record.get("action")), ("unit", unit), ("seq", record.get("seq")),
        ]
        return str(record.get("rule") or "finding"), sd_element(SD_ID, params)
    if kind == "checkpoint":
        params = [("seq", record.get("seq")), ("hash", record.get("hash")),
                  ("key", record.get("pubkey_fingerprint"))]
        return "checkpoint", sd_element(SD_ID, params)
    return kind, sd_element(SD_ID, [("seq", record.get("seq"))])


def format_record(record: Mapping[str, Any], *, hostname: str, app_name: str, procid: int | str,
                  facility: int, now: float, max_bytes: int) -> bytes:
    """The complete RFC 5424 message for ``record``, at most about ``max_bytes`` long."""
    msgid, sd = _structured(record)
    when = record.get("time")
    epoch = float(when) if isinstance(when, (int, float)) and math.isfinite(when) and when > 0 else now
    pri = facility * 8 + severity_of(record)
    head = " ".join((
        f"<{pri}>1", timestamp(epoch), header_field(record.get("host") or hostname, 255),
        header_field(app_name, 48), header_field(procid, 128), header_field(msgid, 32), sd,
    )).encode("utf-8") + b" " + BOM
    return head + json_body(record, max_bytes - len(head))
