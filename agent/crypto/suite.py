"""Crypto suites: which hash and which signature a journal, bundle or policy uses.

``intl``: SHA-256 and Ed25519 (the ``cryptography`` package). ``gm`` (国密):
SM3 (GB/T 32905) and SM2 signatures (GB/T 32918) with the default
distinguishing identifier ``1234567812345678``, both from the system's
OpenSSL 3. Anything that hashes or signs takes a :class:`Suite` and the
keys it makes, so it never names an algorithm itself; a key read from PEM
knows its suite, which lets a verifier tell an Ed25519 key from an SM2 one.

Fingerprints follow the suite: SHA-256 of the raw 32-byte Ed25519 key for
``intl``; SM3 of the DER SubjectPublicKeyInfo for ``gm`` (the same as
``openssl pkey -pubin -in pub.pem -outform DER | openssl dgst -sm3``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

SUITE_NAMES = ("intl", "gm")
DEFAULT_SUITE = "intl"


class SuiteError(Exception):
    """A suite cannot be used here, or a key is not of the suite asked for."""


class Hasher(Protocol):
    """The part of a ``hashlib`` object the suites use."""

    def update(self, data: bytes, /) -> None:
        """Feed bytes."""

    def hexdigest(self) -> str:
        """The digest, hex."""

    def digest(self) -> bytes:
        """The digest, raw."""


class PublicKey(ABC):
    """A suite's public key: verifies signatures, prints as PEM, has a fingerprint."""

    suite: Suite

    @abstractmethod
    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's signature over ``message``."""

    @abstractmethod
    def pem(self) -> str:
        """SubjectPublicKeyInfo, PEM."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """The suite's hash of the key, hex (see the module docstring)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


class PrivateKey(ABC):
    """A suite's private key: signs, and knows its public half."""

    suite: Suite

    @abstractmethod
    def sign(self, message: bytes) -> bytes:
        """The signature over ``message`` (Ed25519: 64 raw bytes; SM2: DER r, s)."""

    @abstractmethod
    def public(self) -> PublicKey:
        """The public half."""

    @abstractmethod
    def private_pem(self) -> bytes:
        """PKCS#8, PEM, unencrypted."""


@dataclass(frozen=True, slots=True)
class Suite:
    """One suite: its names and its operations."""

    name: str
    hash_name: str
    sign_name: str
    digest_field: str  # the manifest field that carries a bundle's digest
    new_hash: Callable[[], Hasher]
    generate_key: Callable[[], PrivateKey]

    def describe(self) -> str:
        """``gm (SM3 hash chain, SM2 signatures, ID 1234567812345678)``, as verify prints it."""
        extra = ", ID 1234567812345678" if self.name == "gm" else ""
        return f"{self.name} ({self.hash_name} hash chain, {self.sign_name} signatures{extra})"

    def digest(self, data: bytes) -> str:
        """The suite's hash of ``data``, hex."""
        h = self.new_hash()
        h.update(data)
        return h.hexdigest()


# -- intl: Ed25519 through ``cryptography`` ----------------------------------


class _EdPublic(PublicKey):
    def __init__(self, key: Any) -> None:
        self.key = key
        self.suite = INTL

    def verify(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return str(self.key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii"))

    @property
    def fingerprint(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()


class _EdPrivate(PrivateKey):
    def __init__(self, key: Any) -> None:
        self.key = key
        self.suite = INTL

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message))

    def public(self) -> PublicKey:
        return _EdPublic(self.key.public_key())

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))


def _ed_generate() -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return _EdPrivate(Ed25519PrivateKey.generate())


# -- gm: SM3 through hashlib, SM2 through libcrypto ---------------------------

_sm3_template: Any = None


def _sm3() -> Hasher:
    global _sm3_template
    if _sm3_template is None:
        try:
            _sm3_template = hashlib.new("sm3")
        except ValueError:
            raise SuiteError("the gm suite needs SM3, which this Python's OpenSSL does not provide "
                             "(OpenSSL 3 has it in its default provider)") from None
    h: Hasher = _sm3_template.copy()  # copying a fresh context is twice as fast as a name lookup
    return h


class _SMPublic(PublicKey):
    def __init__(self, key: Any) -> None:
        self.key = key
        self.suite = GM
        self._fp: str | None = None

    def verify(self, signature: bytes, message: bytes) -> bool:
        return bool(self.key.verify(signature, message))

    def pem(self) -> str:
        return str(self.key.public_pem().decode("ascii"))

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = GM.digest(self.key.public_der())
        return self._fp


class _SMPrivate(PrivateKey):
    def __init__(self, key: Any) -> None:
        self.key = key
        self.suite = GM

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message))

    def public(self) -> PublicKey:
        return _SMPublic(self.key.public_key())

    def private_pem(self) -> bytes:
        return bytes(self.key.private_pem())


def _sm2_generate() -> PrivateKey:
    from agent.crypto import sm2

    try:
        return _SMPrivate(sm2.generate())
    except sm2.SM2Error as exc:
        raise SuiteError(str(exc)) from exc


INTL = Suite("intl", "SHA-256", "Ed25519", "sha256", hashlib.sha256, _ed_generate)
GM = Suite("gm", "SM3", "SM2", "sm3", _sm3, _sm2_generate)
_BY_NAME = {"intl": INTL, "gm": GM}


def suite(name: str) -> Suite:
    """The suite called ``name``; SuiteError names the choices otherwise."""
    try:
        s = _BY_NAME[name]
    except KeyError:
        raise SuiteError(f"unknown crypto suite {name!r}: use one of {', '.join(SUITE_NAMES)}") from None
    if s is GM:  # fail now, with the reason, not at the first record or checkpoint
        _sm3()
        from agent.crypto import sm2

        try:
            sm2.libcrypto()
        except sm2.SM2Error as exc:
            raise SuiteError(str(exc)) from exc
    return s


# -- reading keys: the PEM says which suite -----------------------------------


def load_public_pem(data: bytes) -> PublicKey:
    """An Ed25519 or SM2 public key from PEM SubjectPublicKeyInfo; SuiteError otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # an SM2 key is unsupported there: libcrypto next
        key = None
    if isinstance(key, Ed25519PublicKey):
        return _EdPublic(key)
    from agent.crypto import sm2

    try:
        return _SMPublic(sm2.load_public_pem(data))
    except sm2.SM2Error as exc:
        kind = f"a {type(key).__name__.lstrip('_')}" if key is not None else "no"
        raise SuiteError(f"not an Ed25519 or SM2 public key ({kind} key: {exc})") from None


def load_private_pem(data: bytes) -> PrivateKey:
    """An Ed25519 or SM2 private key from PEM; SuiteError otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # as above: SM2 goes to libcrypto
        key = None
    if isinstance(key, Ed25519PrivateKey):
        return _EdPrivate(key)
    from agent.crypto import sm2

    try:
        return _SMPrivate(sm2.load_private_pem(data))
    except sm2.SM2Error as exc:
        raise SuiteError(f"not an Ed25519 or SM2 private key ({exc})") from None
