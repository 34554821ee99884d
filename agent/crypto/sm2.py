"""SM2 signatures (GB/T 32918) with SM3, through the system's OpenSSL 3 libcrypto.

Python's ``hashlib`` is built on the same libcrypto and gives SM3 where
OpenSSL provides it; for SM2 this module calls libcrypto's EVP interface
directly (the calls the SM2(7) manual page shows), so the agent signs with
the library the operating system keeps patched, and a signature checks
with ``openssl pkeyutl`` unchanged. Signatures are DER ``SEQUENCE {r, s}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

DEFAULT_ID = b"1234567812345678"
"""The distinguishing identifier GB/T 35276 and OpenSSL use when none is agreed."""


class SM2Error(Exception):
    """libcrypto refused an operation or lacks SM2."""


_lib: Any = None
_lib_lock = threading.Lock()
_P = ctypes.c_void_p


def _libcrypto_path() -> str:
    """The libcrypto that Python's own hashlib is linked against, else the system's."""
    try:
        import _hashlib  # noqa: F401 - loads libcrypto into this process

        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libcrypto.so" in path:
                    return path
    except (ImportError, OSError):
        pass
    return ctypes.util.find_library("crypto") or "libcrypto.so.3"


def _declare(lib: Any) -> None:
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "OpenSSL_version_num": (ctypes.c_ulong, []),
        "OpenSSL_version": (ctypes.c_char_p, [ctypes.c_int]),
        "ERR_get_error": (ctypes.c_ulong, []),
        "ERR_error_string_n": (None, [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]),
        "ERR_clear_error": (None, []),
        "BIO_new_mem_buf": (_P, [ctypes.c_char_p, ctypes.c_int]),
        "BIO_new": (_P, [_P]),
        "BIO_s_mem": (_P, []),
        "BIO_ctrl": (ctypes.c_long, [_P, ctypes.c_int, ctypes.c_long, _P]),
        "BIO_free": (ctypes.c_int, [_P]),
        "PEM_read_bio_PrivateKey": (_P, [_P, _P, _P, _P]),
        "PEM_read_bio_PUBKEY": (_P, [_P, _P, _P, _P]),
        "PEM_write_bio_PrivateKey": (ctypes.c_int, [_P, _P, _P, _P, ctypes.c_int, _P, _P]),
        "PEM_write_bio_PUBKEY": (ctypes.c_int, [_P, _P]),
        "i2d_PUBKEY": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_void_p)]),
        "EVP_PKEY_is_a": (ctypes.c_int, [_P, ctypes.c_char_p]),
        "EVP_PKEY_free": (None, [_P]),
        "EVP_PKEY_CTX_new_from_name": (_P, [_P, ctypes.c_char_p, ctypes.c_char_p]),
        "EVP_PKEY_CTX_new_from_pkey": (_P, [_P, _P, ctypes.c_char_p]),
        "EVP_PKEY_CTX_free": (None, [_P]),
        "EVP_PKEY_CTX_set1_id": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int]),
        "EVP_PKEY_keygen_init": (ctypes.c_int, [_P]),
        "EVP_PKEY_generate": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_void_p)]),
        "EVP_PKEY_get_octet_string_param": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_char_p,
                                                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
        "EVP_MD_CTX_new": (_P, []),
        "EVP_MD_CTX_free": (None, [_P]),
        "EVP_MD_CTX_set_pkey_ctx": (None, [_P, _P]),
        "EVP_sm3": (_P, []),
        "EVP_DigestSignInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
        "EVP_DigestVerifyInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
        "EVP_DigestSign": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                          ctypes.c_char_p, ctypes.c_size_t]),
        "EVP_DigestVerify": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                            ctypes.c_size_t]),
        "CRYPTO_free": (None, [_P, ctypes.c_char_p, ctypes.c_int]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def libcrypto() -> Any:
    """The loaded libcrypto, checked to be OpenSSL 3 with SM2 and SM3; SM2Error otherwise."""
    global _lib
    with _lib_lock:
        if _lib is None:
            path = _libcrypto_path()
            try:
                lib = ctypes.CDLL(path)
                lib.OpenSSL_version_num.restype = ctypes.c_ulong
                if lib.OpenSSL_version_num() < 0x30000000:
                    raise SM2Error(f"{path}: the gm suite needs OpenSSL 3 (SM2 and SM3), "
                                   f"this is version {lib.OpenSSL_version_num():#x}")
                _declare(lib)
            except (OSError, AttributeError) as exc:
                raise SM2Error(f"the gm suite needs OpenSSL 3's libcrypto, which cannot be loaded: {exc}") from exc
            ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
            if not ctx or not lib.EVP_sm3():
                raise SM2Error(f"{path} ({lib.OpenSSL_version(0).decode()}) does not provide SM2 and SM3")
            lib.EVP_PKEY_CTX_free(ctx)
            _lib = lib
        return _lib


def _errors(lib: Any) -> str:
    out = []
    while (code := lib.ERR_get_error()) != 0:
        buf = ctypes.create_string_buffer(256)
        lib.ERR_error_string_n(code, buf, len(buf))
        out.append(buf.value.decode("ascii", "replace"))
    return "; ".join(out) or "no detail from libcrypto"


def _bio_bytes(lib: Any, bio: int) -> bytes:
    ptr = ctypes.c_void_p()
    n = lib.BIO_ctrl(bio, 3, 0, ctypes.byref(ptr))  # BIO_CTRL_INFO: BIO_get_mem_data
    return ctypes.string_at(ptr, n) if n > 0 and ptr.value else b""


class _Key:
    """An owned ``EVP_PKEY *`` that is an SM2 key."""

    def __init__(self, pkey: int) -> None:
        self._pkey = pkey

    def __del__(self) -> None:
        if self._pkey and _lib is not None:
            _lib.EVP_PKEY_free(self._pkey)
            self._pkey = 0

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo, PEM."""
        lib = libcrypto()
        bio = lib.BIO_new(lib.BIO_s_mem())
        try:
            if lib.PEM_write_bio_PUBKEY(bio, self._pkey) != 1:
                raise SM2Error(f"cannot write the SM2 public key: {_errors(lib)}")
            return _bio_bytes(lib, bio)
        finally:
            lib.BIO_free(bio)

    def public_der(self) -> bytes:
        """SubjectPublicKeyInfo, DER (what the fingerprint is taken over)."""
        lib = libcrypto()
        out = ctypes.c_void_p()
        n = lib.i2d_PUBKEY(self._pkey, ctypes.byref(out))
        if n <= 0 or not out.value:
            raise SM2Error(f"cannot encode the SM2 public key: {_errors(lib)}")
        try:
            return ctypes.string_at(out, n)
        finally:
            lib.CRYPTO_free(out, None, 0)

    def public_point(self) -> bytes:
        """The public point, uncompressed: ``04 || x || y`` (65 bytes)."""
        lib = libcrypto()
        buf = ctypes.create_string_buffer(133)
        n = ctypes.c_size_t()
        if lib.EVP_PKEY_get_octet_string_param(self._pkey, b"encoded-pub-key", buf, len(buf), ctypes.byref(n)) != 1:
            raise SM2Error(f"cannot read the SM2 public point: {_errors(lib)}")
        return buf.raw[:n.value]

    def _ctx(self, init_name: str, distid: bytes) -> tuple[int, int]:
        lib = libcrypto()
        mctx = lib.EVP_MD_CTX_new()
        pctx = lib.EVP_PKEY_CTX_new_from_pkey(None, self._pkey, None)
        if not mctx or not pctx:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)
            raise SM2Error(f"out of memory in libcrypto: {_errors(lib)}")
        ok = lib.EVP_PKEY_CTX_set1_id(pctx, distid, len(distid)) > 0
        if ok:
            lib.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
            ok = getattr(lib, init_name)(mctx, None, lib.EVP_sm3(), None, self._pkey) == 1
        if not ok:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)
            raise SM2Error(f"cannot set up SM2 with SM3: {_errors(lib)}")
        return mctx, pctx


class SM2PublicKey(_Key):
    """An SM2 public key: verifies signatures."""

    def verify(self, signature: bytes, message: bytes, distid: bytes = DEFAULT_ID) -> bool:
        """True when ``signature`` (DER) is this key's SM2-with-SM3 signature over ``message``."""
        lib = libcrypto()
        mctx, pctx = self._ctx("EVP_DigestVerifyInit", distid)
        try:
            rc = lib.EVP_DigestVerify(mctx, signature, len(signature), message, len(message))
        finally:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)
        if rc != 1:
            lib.ERR_clear_error()
        return bool(rc == 1)


class SM2PrivateKey(_Key):
    """An SM2 private key: signs, and knows its public half."""

    def sign(self, message: bytes, distid: bytes = DEFAULT_ID) -> bytes:
        """The DER signature over ``message`` (SM3 over Z || message, Z from ``distid``)."""
        lib = libcrypto()
        mctx, pctx = self._ctx("EVP_DigestSignInit", distid)
        try:
            buf = ctypes.create_string_buffer(80)
            n = ctypes.c_size_t(len(buf))
            if lib.EVP_DigestSign(mctx, buf, ctypes.byref(n), message, len(message)) != 1:
                raise SM2Error(f"SM2 signing failed: {_errors(lib)}")
            return buf.raw[:n.value]
        finally:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)

    def public_key(self) -> SM2PublicKey:
        """The public half, as its own key object."""
        return load_public_pem(self.public_pem())

    def private_pem(self) -> bytes:
        """PKCS#8, PEM, unencrypted (the file is mode 0600)."""
        lib = libcrypto()
        bio = lib.BIO_new(lib.BIO_s_mem())
        try:
            if lib.PEM_write_bio_PrivateKey(bio, self._pkey, None, None, 0, None, None) != 1:
                raise SM2Error(f"cannot write the SM2 private key: {_errors(lib)}")
            return _bio_bytes(lib, bio)
        finally:
            lib.BIO_free(bio)


def generate() -> SM2PrivateKey:
    """A new SM2 key pair from libcrypto's random generator."""
    lib = libcrypto()
    ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
    out = ctypes.c_void_p()
    try:
        if lib.EVP_PKEY_keygen_init(ctx) != 1 or lib.EVP_PKEY_generate(ctx, ctypes.byref(out)) != 1:
            raise SM2Error(f"SM2 key generation failed: {_errors(lib)}")
    finally:
        lib.EVP_PKEY_CTX_free(ctx)
    return SM2PrivateKey(out.value or 0)


def _read_pem(data: bytes, reader: str) -> int:
    lib = libcrypto()
    bio = lib.BIO_new_mem_buf(data, len(data))
    try:
        pkey = getattr(lib, reader)(bio, None, None, None)
    finally:
        lib.BIO_free(bio)
    if not pkey:
        lib.ERR_clear_error()
        raise SM2Error("not a PEM key libcrypto can read")
    if lib.EVP_PKEY_is_a(pkey, b"SM2") != 1:
        lib.EVP_PKEY_free(pkey)
        raise SM2Error("not an SM2 key")
    return int(pkey)


def load_private_pem(data: bytes) -> SM2PrivateKey:
    """An SM2 private key from PEM (PKCS#8 or SEC1); SM2Error when it is not one."""
    return SM2PrivateKey(_read_pem(data, "PEM_read_bio_PrivateKey"))


def load_public_pem(data: bytes) -> SM2PublicKey:
    """An SM2 public key from PEM SubjectPublicKeyInfo; SM2Error when it is not one."""
    return SM2PublicKey(_read_pem(data, "PEM_read_bio_PUBKEY"))


# The recommended curve's parameters (GB/T 32918.5), for Z_A.
_A = bytes.fromhex("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC")
_B = bytes.fromhex("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93")
_GX = bytes.fromhex("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7")
_GY = bytes.fromhex("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0")


def z_value(public_point: bytes, distid: bytes = DEFAULT_ID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA) of GB/T 32918.2 §5.5.

    SM2 signs ``e = SM3(Z_A || M)``; with ``e`` an older ``openssl pkeyutl``
    that lacks ``-rawin`` and ``distid`` can still check a signature.
    """
    import hashlib

    if len(public_point) != 65 or public_point[0] != 4:
        raise SM2Error("Z_A needs the uncompressed public point (04 || x || y)")
    if len(distid) * 8 > 0xFFFF:
        raise SM2Error("the distinguishing identifier is longer than 8191 bytes")
    h = hashlib.new("sm3")
    h.update((len(distid) * 8).to_bytes(2, "big") + distid + _A + _B + _GX + _GY + public_point[1:])
    return h.digest()
