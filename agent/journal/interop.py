"""A signed checkpoint as plain files that OpenSSL's own command checks.

``dutywatch journal checkpoint`` writes, for one checkpoint of a journal or
an evidence bundle, the exact bytes that were signed (canonical JSON, see
``signing.signed_message``), the signature as raw bytes (Ed25519: 64 bytes;
SM2: DER ``SEQUENCE {r, s}``) and the public key as PEM, then names the
``openssl pkeyutl -verify`` command that checks them without DutyWatch.
Beside them goes the signed record's hash input, ``prev|seq|canonical_json``,
whose ``openssl dgst -sm3`` (or ``-sha256``) is the head hash the
checkpoint signed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.crypto.suite import GM, PublicKey, Suite, SuiteError
from agent.crypto.suite import suite as get_suite
from agent.journal import db
from agent.journal.chain import canonical_bytes
from agent.journal.errors import JournalError
from agent.journal.signing import load_private_key, load_public_pem, signed_message
from agent.journal.statedir import FILE_MODE

KEY_FILE = "journal.key"
FIELDS = ("seq", "hash", "time", "host")


@dataclass(frozen=True, slots=True)
class ExportedCheckpoint:
    """What was written, whether DutyWatch itself verified it, and the OpenSSL command."""

    seq: int
    fields: dict[str, Any]
    suite: Suite
    fingerprint: str
    message: Path
    signature: Path
    pubkey: Path
    verified: bool
    link: Path | None  # the signed record's hash input, when the source holds that record

    @property
    def openssl(self) -> list[str]:
        """``openssl pkeyutl -verify`` for these files (OpenSSL 3)."""
        return openssl_verify_command(self.suite, self.pubkey, self.message, self.signature)

    @property
    def openssl_link(self) -> list[str] | None:
        """``openssl dgst`` over the record's hash input: prints the signed head hash."""
        if self.link is None:
            return None
        return ["openssl", "dgst", "-sm3" if self.suite is GM else "-sha256", str(self.link)]


def openssl_verify_command(suite: Suite, pubkey: Path, message: Path, signature: Path) -> list[str]:
    """The OpenSSL 3 command that checks ``signature`` over the bytes of ``message``.

    SM2 needs the digest and the distinguishing identifier spelled out:
    OpenSSL's command uses an empty identifier unless told.
    """
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pubkey), "-rawin",
           "-in", str(message), "-sigfile", str(signature)]
    if suite is GM:
        cmd += ["-digest", "sm3", "-pkeyopt", "distid:1234567812345678"]
    return cmd


def from_journal(db_path: Path, out_dir: Path, seq: int | None) -> ExportedCheckpoint:
    """Export checkpoint ``seq`` (the newest when None) of the journal at ``db_path``."""
    conn, meta = db.open_reader(db_path)
    try:
        suite = db.suite_of(meta, db_path)
        sql = "SELECT seq, hash, time, host, signature FROM checkpoints"
        row = (conn.execute(sql + " ORDER BY seq DESC LIMIT 1").fetchone() if seq is None
               else conn.execute(sql + " WHERE seq = ?", (seq,)).fetchone())
        rec = None if row is None else conn.execute(
            "SELECT prev, CAST(body AS BLOB) FROM records WHERE seq = ?", (row[0],)).fetchone()
    except sqlite3.Error as exc:
        raise db.translate(db_path, exc) from exc
    finally:
        conn.close()
    if row is None:
        raise JournalError(f"{db_path}: no checkpoint" + (f" at seq {seq}" if seq is not None else " yet"))
    key_file = db_path.parent / KEY_FILE
    public: PublicKey
    if key_file.exists():
        public = load_private_key(key_file).public()
    elif "public_key" in meta:
        public = load_public_pem(meta["public_key"], f"{db_path} (recorded public key)")
    else:
        raise JournalError(f"{db_path}: no key beside it and none recorded")
    link = None if rec is None else _link(str(rec[0]), int(row[0]), bytes(rec[1]))
    return _write(out_dir, suite, public, dict(zip(FIELDS, row[:4], strict=True)), str(row[4]), link)


def _link(prev: str, seq: int, body: bytes) -> bytes:
    """The bytes a record's hash is taken over (``chain.link_hash``)."""
    return prev.encode("utf-8", "surrogatepass") + b"|%d|" % seq + body


def from_bundle(bundle: Path, out_dir: Path, seq: int | None) -> ExportedCheckpoint:
    """Export checkpoint ``seq`` (the last when None) of an evidence bundle."""
    header: dict[str, Any] = {}
    found: dict[str, Any] | None = None
    last_record: dict[str, Any] = {}
    link: bytes | None = None
    try:
        with bundle.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    obj = json.loads(raw)
                except ValueError:
                    raise JournalError(f"{bundle}:{lineno}: not JSON; not a DutyWatch evidence bundle") from None
                if lineno == 1:
                    header = obj if isinstance(obj, dict) and obj.get("kind") == "header" else {}
                    if not header:
                        raise JournalError(f"{bundle}: not a DutyWatch evidence bundle (no header line)")
                elif isinstance(obj, dict) and obj.get("kind") == "record":
                    last_record = obj
                elif isinstance(obj, dict) and obj.get("kind") == "checkpoint" and \
                        (seq is None or obj.get("seq") == seq):
                    found = obj
                    link = None
                    if last_record.get("seq") == obj.get("seq") and isinstance(last_record.get("prev"), str):
                        link = _link(last_record["prev"], int(obj["seq"]), canonical_bytes(last_record.get("record")))
    except OSError as exc:
        raise JournalError(f"{bundle}: cannot read bundle: {exc.strerror}") from exc
    if found is None:
        raise JournalError(f"{bundle}: no checkpoint" + (f" at seq {seq}" if seq is not None else ""))
    try:
        suite = get_suite(str(header.get("crypto", "intl")))
    except SuiteError as exc:
        raise JournalError(f"{bundle}: {exc}") from exc
    public = load_public_pem(str(header.get("public_key", "")), f"{bundle} (bundle's key)")
    return _write(out_dir, suite, public, {k: found.get(k) for k in FIELDS}, str(found.get("signature")), link)


def _write(out_dir: Path, suite: Suite, public: PublicKey, fields: dict[str, Any],
           signature_hex: str, link: bytes | None) -> ExportedCheckpoint:
    if public.suite is not suite:
        raise JournalError(f"the key is {public.suite.sign_name}, the source says suite {suite.name}: "
                           "the source was altered; run dutywatch verify")
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise JournalError(f"checkpoint at seq {fields['seq']}: its signature is not hex (altered)") from None
    message = signed_message("checkpoint", fields)
    out_dir.mkdir(parents=True, exist_ok=True)
    seq = int(fields["seq"])
    paths = (out_dir / f"checkpoint-{seq}.msg", out_dir / f"checkpoint-{seq}.sig", out_dir / "pubkey.pem")
    files = [*zip(paths, (message, signature, public.pem().encode("ascii")), strict=True)]
    link_path = out_dir / f"record-{seq}.link" if link is not None else None
    if link_path is not None and link is not None:
        files.append((link_path, link))
    for path, data in files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return ExportedCheckpoint(seq, fields, suite, public.fingerprint, *paths, public.verify(signature, message),
                              link_path)
