"""SM2 and SM3 in the Python libraries that offer them, side by side, as the README's table.

DutyWatch uses the system's OpenSSL 3 (hashlib for SM3, libcrypto's EVP for
SM2). The other candidates are measured when installed (for example in a
scratch venv: ``pip install tongsuopy gmalglib gmssl``); each missing one is
named and skipped. Figures are the median of 3 runs.
Run: python tests/bench/compare_gm_libraries.py
"""

from __future__ import annotations

import hashlib
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MSG = (b'{"hash":"' + b"a" * 64 + b'","host":"js-fgw-0042","seq":123456,'
       b'"sig":"dutywatch.checkpoint.v1","time":1767225600.123}')
RECORD = b"x" * 400
BULK = b"y" * (1 << 20)


def rate(fn: Callable[[], object], n: int) -> float:
    """Median operations/s of 3 runs of ``n`` calls."""
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append(n / (time.perf_counter() - t))
    return statistics.median(runs)


def openssl() -> tuple[float, float, float, float]:
    from agent.crypto import sm2
    from agent.crypto.suite import GM

    key = sm2.generate()
    pub = key.public_key()
    sig = key.sign(MSG)
    return (rate(lambda: key.sign(MSG), 300), rate(lambda: pub.verify(sig, MSG), 300),
            rate(lambda: hashlib.new("sm3", BULK).digest(), 20), rate(lambda: GM.digest(RECORD), 20000))


def tongsuopy() -> tuple[float, float, float, float]:
    th: Any = importlib.import_module("tongsuopy.crypto.hashes")
    tec: Any = importlib.import_module("tongsuopy.crypto.asymciphers.ec")
    key = tec.generate_private_key(tec.SM2())
    pub = key.public_key()
    sig = key.sign(MSG, tec.ECDSA(th.SM3()))

    def sm3(data: bytes) -> str:
        h = th.Hash(th.SM3())
        h.update(data)
        return str(h.finalize().hex())

    return (rate(lambda: key.sign(MSG, tec.ECDSA(th.SM3())), 300),
            rate(lambda: pub.verify(sig, MSG, tec.ECDSA(th.SM3())), 300),
            rate(lambda: sm3(BULK), 20), rate(lambda: sm3(RECORD), 20000))


def gmalglib() -> tuple[float, float, float, float]:
    g: Any = importlib.import_module("gmalglib")
    sm2: Any = importlib.import_module("gmalglib.sm2")
    sk, pk = g.sm2_generate_keypair()
    sig = sm2.SM2(sk=sk, pk=pk).sign(MSG)
    if not sm2.SM2(pk=pk).verify(MSG, sig) or sm2.SM2(pk=pk).verify(MSG + b" ", sig):
        raise RuntimeError("gmalglib's verify does not behave")
    return (rate(lambda: sm2.SM2(sk=sk, pk=pk).sign(MSG), 300), rate(lambda: sm2.SM2(pk=pk).verify(MSG, sig), 300),
            rate(lambda: g.sm3_digest(BULK), 20), rate(lambda: g.sm3_digest(RECORD).hex(), 20000))


def gmssl() -> tuple[float, float, float, float]:
    gsm2: Any = importlib.import_module("gmssl.sm2")
    gsm3: Any = importlib.import_module("gmssl.sm3")
    func: Any = importlib.import_module("gmssl.func")
    # GB/T 32918.5's example key pair
    c = gsm2.CryptSM2(private_key="3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8",
                      public_key="09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
                                 "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
    sig = c.sign_with_sm3(MSG)
    small = b"y" * 65536  # 1 MB would take minutes
    return (rate(lambda: c.sign_with_sm3(MSG), 10), rate(lambda: c.verify_with_sm3(sig, MSG), 10),
            rate(lambda: gsm3.sm3_hash(func.bytes_to_list(small)), 1) * len(small) / len(BULK),
            rate(lambda: gsm3.sm3_hash(func.bytes_to_list(RECORD)), 200))


def main() -> int:
    """Print one row per library found."""
    candidates: list[tuple[str, str, Callable[[], tuple[float, float, float, float]]]] = [
        ("OpenSSL 3 (system libcrypto)", "", openssl),
        ("tongsuopy", "tongsuopy", tongsuopy),
        ("gmalglib", "gmalglib", gmalglib),
        ("gmssl (pure Python)", "gmssl", gmssl),
    ]
    print("| library | SM2 sign/s | SM2 verify/s | SM3 MB/s | SM3 small/s |")
    print("|---|---:|---:|---:|---:|")
    for name, module, measure in candidates:
        version = ""
        if module:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as dist_version

            try:
                version = " " + dist_version(module)
            except PackageNotFoundError:
                print(f"| {name} | not installed | | | |")
                continue
        else:
            import ssl

            version = f" ({ssl.OPENSSL_VERSION.split(' ')[1]})"
        s, v, mb, small = measure()
        print(f"| {name}{version} | {s:,.0f} | {v:,.0f} | {mb:,.2f} | {small:,.0f} |")
    from agent.crypto.suite import INTL

    key = INTL.generate_key()
    pub, sig = key.public(), key.sign(MSG)
    print(f"| for comparison, intl: Ed25519 and SHA-256 | {rate(lambda: key.sign(MSG), 2000):,.0f} | "
          f"{rate(lambda: pub.verify(sig, MSG), 2000):,.0f} | "
          f"{rate(lambda: hashlib.sha256(BULK).digest(), 20):,.1f} | "
          f"{rate(lambda: INTL.digest(RECORD), 20000):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
