"""Test PKI: a CA, a loopback server certificate and client certificates, as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class Pair:
    """A certificate and its key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class PKI:
    """Files of one test PKI."""

    ca: Path
    server: Pair
    client: Pair
    stranger: Pair  # a client certificate from a CA the server does not trust


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    path.parent.mkdir(parents=True, exist_ok=True)
    crt = path.with_suffix(".crt")
    pem = path.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return Pair(crt, pem)


def _issue(cn: str, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, *, ca: bool,
           server: bool = False, key: ec.EllipticCurvePrivateKey | None = None,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(signer, hashes.SHA256()), key


def make_pki(directory: Path) -> PKI:
    """Write a CA, a server certificate for localhost/127.0.0.1 and two client certificates."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert, _ = _issue("dutywatch test CA", _name("dutywatch test CA"), ca_key, ca=True, key=ca_key)
    ca = _write(directory / "ca", ca_cert, ca_key).cert
    server = _write(directory / "server",
                    *_issue("localhost", ca_cert.subject, ca_key, ca=False, server=True))
    client = _write(directory / "client", *_issue("prometheus", ca_cert.subject, ca_key, ca=False))
    other_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _write(directory / "stranger",
                      *_issue("prometheus", _name("someone else's CA"), other_key, ca=False))
    return PKI(ca=ca, server=server, client=client, stranger=stranger)
