"""The journal's Ed25519 key, and what it signs: checkpoints, prune anchors, bundles.

Every signed message is canonical JSON with a ``sig`` field naming what it is,
so a signature made for one purpose can never pass for another.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.journal.chain import canonical_bytes
from agent.journal.errors import JournalError
from agent.journal.statedir import FILE_MODE, check_private


def fingerprint(public: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), as ``journal pubkey`` prints it."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_pem(text: str | bytes, where: str) -> Ed25519PublicKey:
    """Read an Ed25519 public key from PEM; JournalError names ``where``."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise JournalError(f"{where}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise JournalError(f"{where}: not an Ed25519 public key")
    return key


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """Read a trusted public key given with ``--pubkey``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read public key: {exc.strerror}") from exc
    return load_public_pem(data, str(path))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the journal key, refusing one that other users can read."""
    check_private(path, "journal signing key")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read journal signing key: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise JournalError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise JournalError(f"{path}: not an Ed25519 private key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The journal key at ``path``; generated 0600 on first run."""
    if path.exists() or path.is_symlink():
        return load_private_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replace a key another process made meanwhile
    except FileExistsError:
        os.unlink(tmp)
        return load_private_key(path)
    os.unlink(tmp)
    return key


def signed_message(purpose: str, fields: dict[str, Any]) -> bytes:
    """The bytes signed for ``purpose`` (checkpoint, anchor, bundle)."""
    return canonical_bytes({"sig": f"dutywatch.{purpose}.v1", **fields})


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs with the journal key; also knows its public half."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        """The public key."""
        return self.key.public_key()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, hex."""
        return fingerprint(self.public)

    def sign(self, purpose: str, fields: dict[str, Any]) -> str:
        """Hex signature over ``signed_message(purpose, fields)``."""
        return self.key.sign(signed_message(purpose, fields)).hex()


def verify_signature(public: Ed25519PublicKey, signature: str, purpose: str, fields: dict[str, Any]) -> bool:
    """True when ``signature`` (hex) is the key's signature over these fields."""
    try:
        public.verify(bytes.fromhex(signature), signed_message(purpose, fields))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True

