"""An independent witness of the journal's head: the systemd journal, written with its native protocol.

Root on the host can rewrite the agent's own files, key included, so the
journal alone cannot show that it was cut back. Every signed checkpoint head
(seq, hash, time, signature), and the head after every batch that holds an
alert or a tamper record, is also sent to systemd-journald, a store the
agent does not own (and that the admin may seal with Forward Secure
Sealing): one datagram on ``/run/systemd/journal/socket`` with a fixed
``SYSLOG_IDENTIFIER`` and structured ``DUTYWATCH_*`` fields. At start the
agent reads the last witnessed head back (``journalctl``) and compares it
with its journal; ``dutywatch verify --witness journald`` checks every one.

A namespace (``journald@NAME``) writes to ``systemd-journald@NAME``'s
socket instead, as ``journalctl --namespace=NAME`` reads it. ``audit``
also writes each head to the kernel audit trail (AUDIT_USER_MSG), when the
audit source runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTIFIER = "dutywatch-witness"
_log = logging.getLogger("dutywatch.witness")


@dataclass(frozen=True, slots=True)
class Witnessed:
    """A head the witness holds: ``kind`` is ``checkpoint`` (signed) or ``head`` (after an alert)."""

    seq: int
    hash: str
    time: float
    kind: str
    signature: str | None


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "backslashreplace")
    if b"\n" in data:  # the protocol's binary form: name, newline, 64-bit little-endian length, data
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournaldWitness:
    """Sends heads to systemd-journald and reads them back."""

    def __init__(self, namespace: str | None = None, *, run_dir: Path = Path("/run/systemd")) -> None:
        self.namespace = namespace
        self.socket_path = run_dir / ("journal" if namespace is None else f"journal.{namespace}") / "socket"
        self.name = "journald" if namespace is None else f"journald@{namespace}"
        self._sock: socket.socket | None = None
        self._failing = False

    def available(self) -> bool:
        """Whether journald listens (its socket exists)."""
        return self.socket_path.is_socket()

    def send(self, kind: str, head: dict[str, Any], *, host: str, key: str, journal: str) -> bool:
        """Write one head; False (logged once until it works again) when journald cannot take it."""
        seq, digest = int(head["seq"]), str(head["hash"])
        fields = [
            ("MESSAGE", f"DutyWatch journal {kind} seq {seq} hash {digest}"),
            ("PRIORITY", "6"),
            ("SYSLOG_IDENTIFIER", IDENTIFIER),
            ("DUTYWATCH_KIND", kind),
            ("DUTYWATCH_SEQ", str(seq)),
            ("DUTYWATCH_HASH", digest),
            ("DUTYWATCH_TIME", repr(float(head.get("time", 0.0)))),
            ("DUTYWATCH_HOST", host),
            ("DUTYWATCH_KEY", key),
            ("DUTYWATCH_JOURNAL", journal),
        ]
        if head.get("signature"):
            fields.append(("DUTYWATCH_SIGNATURE", str(head["signature"])))
        data = b"".join(_field(k, v) for k, v in fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, str(self.socket_path))
        except OSError as exc:
            if not self._failing:
                _log.error("witness %s: cannot write the journal head to %s: %s", self.name, self.socket_path,
                           exc.strerror or exc)
            self._failing = True
            self.close()
            return False
        if self._failing:
            _log.warning("witness %s: writing again", self.name)
        self._failing = False
        return True

    def heads(self, key: str, *, last: int | None = None, timeout: float = 60.0) -> list[Witnessed]:
        """The heads witnessed for the journal with signing key ``key``, oldest first (``last``: only the newest N).

        Raises OSError when journalctl cannot be run or fails.
        """
        tool = shutil.which("journalctl")
        if tool is None:
            raise OSError("journalctl is not installed")
        argv = [tool, "--no-pager", "-o", "json", "--output-fields",
                "DUTYWATCH_KIND,DUTYWATCH_SEQ,DUTYWATCH_HASH,DUTYWATCH_TIME,DUTYWATCH_SIGNATURE"]
        if self.namespace is not None:
            argv.append(f"--namespace={self.namespace}")
        if last is not None:
            argv += ["-n", str(last)]
        argv += [f"SYSLOG_IDENTIFIER={IDENTIFIER}", f"DUTYWATCH_KEY={key}"]
        r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if r.returncode != 0:
            text = r.stderr.decode("utf-8", "replace").strip()
            if "No journal files were found" in text or "No entries" in text:
                return []
            raise OSError(f"journalctl failed ({r.returncode}): {text[:300]}")
        return sorted(_parse(r.stdout), key=lambda w: w.seq)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


AUDIT_USER_MSG = 1107
NETLINK_AUDIT = 9
_NLM_F_REQUEST, _NLM_F_ACK, _NLMSG_ERROR = 0x1, 0x4, 2


class AuditWitness:
    """Sends heads to the kernel audit trail as AUDIT_USER_MSG records (needs CAP_AUDIT_WRITE).

    The kernel stamps each with the sender's pid, uid and auid and hands it to
    the audit daemon (``ausearch -m USER -i | grep dutywatch-witness``) or, with
    none, to the kernel log. Write-only: heads are read back from journald.
    """

    name = "audit"

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._failing = False

    def available(self) -> bool:
        """Always tried; a refusal is logged once."""
        return True

    def send(self, kind: str, head: dict[str, Any], *, host: str, key: str, journal: str) -> bool:
        """Write one head as a user message; False (logged once) when the kernel refuses it."""
        text = (f"{IDENTIFIER} kind={kind} seq={int(head['seq'])} hash={head['hash']} "
                f"time={float(head.get('time', 0.0))!r} key={key} host={host}").encode("utf-8", "backslashreplace")
        if head.get("signature"):
            text += f" signature={head['signature']}".encode("ascii", "replace")
        self._seq += 1
        payload = text + b"\0"
        msg = struct.pack("=IHHII", 16 + len(payload), AUDIT_USER_MSG, _NLM_F_REQUEST | _NLM_F_ACK, self._seq, 0)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
                self._sock.bind((0, 0))
                self._sock.settimeout(2.0)
            self._sock.sendto(msg + payload, (0, 0))
            ack = self._sock.recv(8192)
            if len(ack) >= 20 and struct.unpack("=H", ack[4:6])[0] == _NLMSG_ERROR:
                err = struct.unpack("=i", ack[16:20])[0]
                if err:
                    raise OSError(-err, os.strerror(-err))
        except OSError as exc:
            if not self._failing:
                _log.error("witness audit: the kernel refused the journal head: %s", exc.strerror or exc)
            self._failing = True
            self.close()
            return False
        self._failing = False
        return True

    def heads(self, key: str, *, last: int | None = None, timeout: float = 60.0) -> list[Witnessed]:
        """Not read back here (the audit log belongs to the audit daemon)."""
        return []

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _parse(out: bytes) -> Iterator[Witnessed]:
    for line in out.splitlines():
        try:
            e = json.loads(line)
            yield Witnessed(int(e["DUTYWATCH_SEQ"]), str(e["DUTYWATCH_HASH"]), float(e.get("DUTYWATCH_TIME", 0)),
                            str(e.get("DUTYWATCH_KIND", "head")), e.get("DUTYWATCH_SIGNATURE"))
        except (ValueError, KeyError, TypeError):
            continue  # not ours, or damaged: the remaining heads still count


def parse_witness(text: str) -> JournaldWitness | AuditWitness:
    """``journald``, ``journald@NAMESPACE`` or ``audit``; ValueError otherwise."""
    if text == "audit":
        return AuditWitness()
    name, _, ns = text.partition("@")
    if name != "journald" or (_ and not ns):
        raise ValueError(f"unknown witness {text!r}: write journald, journald@NAMESPACE or audit")
    return JournaldWitness(ns or None)


def missing(conn: sqlite3.Connection, heads: list[Witnessed]) -> tuple[Witnessed, str] | None:
    """The first witnessed head the journal does not hold, and why; None when it holds them all.

    A head older than the journal's first kept record was pruned away and
    is not checked; a signed prune anchor shows where the kept chain starts.
    """
    row = conn.execute("SELECT MIN(seq), MAX(seq) FROM records").fetchone()
    first, last = (int(row[0]), int(row[1])) if row and row[0] is not None else (1, 0)
    for w in heads:
        if w.seq < first:
            continue
        if w.seq > last:
            return w, f"the journal ends at seq {last}, before this witnessed head"
        got = conn.execute("SELECT hash FROM records WHERE seq = ?", (w.seq,)).fetchone()
        if got is None:
            return w, "the journal has no record at this seq"
        if str(got[0]) != w.hash:
            return w, f"the journal's record {w.seq} has hash {got[0]}, not the witnessed one"
    return None
