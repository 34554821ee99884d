"""The hash chain: canonical JSON of a record and how each hash links to the last.

A record's hash is the journal suite's hash (SHA-256 for ``intl``, SM3 for
``gm``) over ``prev_hash | seq | canonical_json``. The
sequence number is inside the hash so that renumbering rows (moving a record)
breaks the chain just as editing one does; time is only data in the record.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.crypto.suite import Hasher
from agent.journal.errors import RecordError

GENESIS = "0" * 64
SEVERITIES = ("critical", "high", "medium", "low", "info")
ACTIONS = ("alert", "audit", "block")
RECORD_TYPES = ("finding", "lifecycle")
# The lifecycle record a quiet agent journals every journal.heartbeat to prove it was watching.
HEARTBEAT = "agent.heartbeat"


def canonical_bytes(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8; NaN and infinities are refused.

    Strings carrying undecodable file-name bytes (surrogate escapes) are kept
    as ``\\udcXX`` JSON escapes, which read back to the same string.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace")


def link_hash(prev: str, seq: int, body: bytes, new_hash: Callable[[], Hasher] = hashlib.sha256) -> str:
    """The hash of record ``seq`` whose canonical JSON is ``body``, following ``prev``.

    ``new_hash`` is the journal suite's hash constructor (``Suite.new_hash``).
    """
    h = new_hash()
    h.update(prev.encode("utf-8", "surrogatepass"))
    h.update(b"|%d|" % seq)
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class IndexKeys:
    """The columns a record is indexed by for queries."""

    time: float
    type: str
    host: str
    rule: str | None
    severity: str | None
    action: str | None
    unit: str | None
    operator: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        """The keys in column order: time, type, host, rule, severity, action, unit, operator."""
        return (self.time, self.type, self.host, self.rule, self.severity, self.action,
                self.unit, self.operator)


INDEX_COLUMNS = ("time", "type", "host", "rule", "severity", "action", "unit", "operator")


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def index_keys(record: Any) -> IndexKeys:
    """Check a record's shape and return its index keys; RecordError says what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"a journal record is a mapping, not {type(record).__name__}")
    rtype = record.get("type")
    if rtype not in RECORD_TYPES:
        raise RecordError(f"record type must be one of {', '.join(RECORD_TYPES)}, not {rtype!r}")
    t = record.get("time")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise RecordError(f"{rtype} record: time must be a finite number of epoch seconds, not {t!r}")
    host = record.get("host")
    if not isinstance(host, str):
        raise RecordError(f"{rtype} record: host must be a string, not {host!r}")
    if rtype == "lifecycle":
        if not isinstance(record.get("kind"), str) or not record["kind"]:
            raise RecordError(
                f"lifecycle record: kind must be a non-empty string, not {record.get('kind')!r}"
            )
        return IndexKeys(float(t), rtype, host, None, None, None, None, None)
    rule = record.get("rule")
    if not isinstance(rule, str) or not rule:
        raise RecordError(f"finding record: rule must be a non-empty string, not {rule!r}")
    severity = record.get("severity")
    if severity not in SEVERITIES:
        raise RecordError(
            f"finding {rule}: severity must be one of {', '.join(SEVERITIES)}, not {severity!r}"
        )
    action = record.get("action")
    if action not in ACTIONS:
        raise RecordError(f"finding {rule}: action must be alert, audit or block, not {action!r}")
    acc = record.get("accountable")
    acc = acc if isinstance(acc, dict) else {}
    return IndexKeys(float(t), rtype, host, rule, severity, action,
                     _str_or_none(acc.get("unit")), _str_or_none(acc.get("operator")))


@dataclass(frozen=True, slots=True)
class Link:
    """One stored record: its place in the chain and its canonical body."""

    seq: int
    prev: str
    hash: str
    body: bytes
    keys: IndexKeys


def make_link(prev: str, seq: int, record: dict[str, Any],
              new_hash: Callable[[], Hasher] = hashlib.sha256) -> Link:
    """Validate, canonicalise and hash one record as number ``seq`` after ``prev``."""
    keys = index_keys(record)
    try:
        body = canonical_bytes(record)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{keys.type} record is not plain JSON data: {exc}") from exc
    return Link(seq, prev, link_hash(prev, seq, body, new_hash), body, keys)
