"""The journal's key, and what it signs: checkpoints, prune anchors, bundles.

The key belongs to one crypto suite (``agent.crypto.suite``): Ed25519 for
``intl``, SM2 for ``gm``. Every signed message is canonical JSON with a
``sig`` field naming what it is, so a signature made for one purpose can
never pass for another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.crypto.suite import PrivateKey, PublicKey, Suite, SuiteError
from agent.crypto.suite import load_private_pem as _load_private_pem
from agent.crypto.suite import load_public_pem as _load_public_pem
from agent.journal.chain import canonical_bytes
from agent.journal.errors import JournalError
from agent.journal.statedir import FILE_MODE, check_private


def fingerprint(public: PublicKey) -> str:
    """The key's fingerprint in its suite's hash, hex."""
    return public.fingerprint


def public_pem(public: PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), as ``journal pubkey`` prints it."""
    return public.pem()


def load_public_pem(text: str | bytes, where: str) -> PublicKey:
    """Read an Ed25519 or SM2 public key from PEM; JournalError names ``where``."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        return _load_public_pem(data)
    except SuiteError as exc:
        raise JournalError(f"{where}: {exc}") from exc


def load_public_key_file(path: Path) -> PublicKey:
    """Read a trusted public key given with ``--pubkey``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read public key: {exc.strerror}") from exc
    return load_public_pem(data, str(path))


def load_private_key(path: Path) -> PrivateKey:
    """Read the journal key, refusing one that other users can read."""
    check_private(path, "journal signing key")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read journal signing key: {exc.strerror}") from exc
    try:
        return _load_private_pem(data)
    except SuiteError as exc:
        raise JournalError(f"{path}: {exc}") from exc


def load_or_create_key(path: Path, suite: Suite) -> PrivateKey:
    """The journal key at ``path``, which must be of ``suite``; generated 0600 on first run."""
    if path.exists() or path.is_symlink():
        return _of_suite(path, load_private_key(path), suite)
    try:
        key = suite.generate_key()
    except SuiteError as exc:
        raise JournalError(f"journal.crypto {suite.name}: {exc}") from exc
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, key.private_pem())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replace a key another process made meanwhile
    except FileExistsError:
        os.unlink(tmp)
        return _of_suite(path, load_private_key(path), suite)
    os.unlink(tmp)
    return key


def _of_suite(path: Path, key: PrivateKey, suite: Suite) -> PrivateKey:
    if key.suite is not suite:
        raise JournalError(
            f"{path}: an {key.suite.sign_name} key (crypto suite {key.suite.name}), but journal.crypto is "
            f"{suite.name} ({suite.sign_name}); a journal never mixes suites: set journal.crypto back to "
            f"{key.suite.name}, or move this key and its journal aside (keep them for their retention period) "
            "to start a new journal")
    return key


def signed_message(purpose: str, fields: dict[str, Any]) -> bytes:
    """The bytes signed for ``purpose`` (checkpoint, anchor, bundle)."""
    return canonical_bytes({"sig": f"dutywatch.{purpose}.v1", **fields})


class Signer:
    """Signs with the journal key; also knows its public half and suite."""

    __slots__ = ("fingerprint", "key", "public", "suite")

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.suite: Suite = key.suite
        self.public: PublicKey = key.public()
        self.fingerprint: str = self.public.fingerprint

    def sign(self, purpose: str, fields: dict[str, Any]) -> str:
        """Hex signature over ``signed_message(purpose, fields)``."""
        return self.key.sign(signed_message(purpose, fields)).hex()


def verify_signature(public: PublicKey, signature: str, purpose: str, fields: dict[str, Any]) -> bool:
    """True when ``signature`` (hex) is the key's signature over these fields."""
    try:
        raw = bytes.fromhex(signature)
    except (ValueError, TypeError):
        return False
    return public.verify(raw, signed_message(purpose, fields))
