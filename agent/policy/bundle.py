"""Signed policy bundles: rule packs, assessment policies, config drop-ins and a central registry.

A bundle is one JSON file::

    {"format": "dutywatch-policy", "format_version": 1,
     "policy": {"version": 7, "created": 1764660000.0, "scope": ["某单位信息中心"],
                "files": [{"role": "rules", "path": "rules/local.yaml", "text": "..."}, ...]},
     "signature": {"signer": "<public key PEM>", "cert": {...} | null, "sig": "<hex>"}}

``policy build`` writes it without a signature; ``policy sign`` adds one.
The signature covers the canonical JSON of ``policy`` together with the
signer's certificate, so neither can be swapped. Keys form a small chain:

- a *root* key (the province's), whose public half every agent trusts
  (``policy.keys`` in agent.yaml), signs bundles of any scope (``*`` for all
  hosts) and certifies unit keys;
- a *unit* key, certified by a root for a list of units (``policy certify``),
  signs only bundles whose scope lies inside those units.

A host is in scope when its unit is listed (or the scope is ``*``). The
version is an integer that only rises: an agent never goes back to an older
bundle, nor accepts another bundle under the version in force.

Keys are those of the journal's crypto suites (Ed25519 for ``intl``, SM2 for
``gm``); a chain may not mix suites.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agent.crypto.suite import PrivateKey, PublicKey, SuiteError, load_public_pem
from agent.errors import DutyWatchError
from agent.journal.signing import signed_message

FORMAT = "dutywatch-policy"
FORMAT_VERSION = 1
CERT_FORMAT = "dutywatch-policy-cert"
ALL = "*"
ROLES = ("rules", "assess", "config", "registry")
# Where each role's files go when a bundle is applied, and what they may be called.
_ROLE_DIR = {"rules": "rules", "assess": "assess", "config": "agent.d", "registry": ""}
_NAME = re.compile(r"^[A-Za-z0-9_.@+-][A-Za-z0-9_.@+ -]*$")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


class PolicyError(DutyWatchError):
    """A bundle, certificate or key that cannot be used; the text says why (``reason: detail``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One file of a bundle: its role and its path inside the applied policy."""

    role: str
    path: str
    text: str


@dataclass(frozen=True, slots=True)
class Cert:
    """A unit key certified by a root key for some units."""

    key: PublicKey
    units: tuple[str, ...]
    name: str
    issued: float
    until: float | None
    issuer: str  # the root key's fingerprint
    sig: str
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Verified:
    """A bundle whose signature chain holds, and what it says."""

    version: int
    scope: tuple[str, ...]
    created: float
    files: tuple[PolicyFile, ...]
    signer: str  # who signed: the certificate's name, or "root"
    signer_fingerprint: str
    signer_units: tuple[str, ...] | None  # None: a root key
    digest: str  # SHA-256 of the bundle's bytes
    raw: bytes

    def covers(self, unit: str | None) -> bool:
        """Whether a host of ``unit`` is in this bundle's scope."""
        return ALL in self.scope or (unit is not None and unit in self.scope)

    def role(self, role: str) -> list[PolicyFile]:
        """The files of one role."""
        return [f for f in self.files if f.role == role]


# -- building -------------------------------------------------------------------------------------

def file_path(role: str, name: str) -> str:
    """Where a file of ``role`` named ``name`` (a relative path) lives in an applied policy."""
    if role not in ROLES:
        raise PolicyError("content", f"unknown file role {role!r} (one of {', '.join(ROLES)})")
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("", ".", "..") or not _NAME.match(p) for p in parts) or name.startswith("/"):
        raise PolicyError("content", f"{role} file name {name!r} is not a plain relative path")
    if role == "registry":
        if name != "registry.yaml":
            raise PolicyError("content", "the central registry must be named registry.yaml")
        return name
    if role == "config" and (len(parts) != 1 or not name.endswith(".yaml")):
        raise PolicyError("content", f"config drop-in {name!r} must be a single NAME.yaml")
    if role in ("rules", "assess") and not name.endswith((".yaml", ".yml")):
        raise PolicyError("content", f"{role} file {name!r} must be a .yaml file")
    return f"{_ROLE_DIR[role]}/{name}"


def collect(role: str, source: Path) -> list[PolicyFile]:
    """The files of ``role`` from a file or a folder (recursively, .yaml/.yml), in name order."""
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
        if not found:
            raise PolicyError("content", f"{source}: no .yaml files")
        pairs = [(p, p.relative_to(source).as_posix()) for p in found]
    elif source.is_file():
        pairs = [(source, "registry.yaml" if role == "registry" else source.name)]
    else:
        raise PolicyError("content", f"{source}: no such file or folder")
    out = []
    for p, name in pairs:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError("content", f"{p}: not UTF-8 text ({exc.reason})") from exc
        out.append(PolicyFile(role, file_path(role, name), text))
    return out


def build(version: int, scope: list[str], files: list[PolicyFile], *, created: float | None = None) -> bytes:
    """An unsigned bundle."""
    if version < 1:
        raise PolicyError("content", "the version must be a positive integer")
    if not scope:
        raise PolicyError("content", "a bundle needs a scope: unit names, or * for every host")
    if ALL in scope and len(scope) > 1:
        raise PolicyError("content", "scope * stands alone")
    paths = [f.path for f in files]
    dup = {p for p in paths if paths.count(p) > 1}
    if dup:
        raise PolicyError("content", f"the same file twice: {', '.join(sorted(dup))}")
    if not files:
        raise PolicyError("content", "a bundle with no files changes nothing")
    policy = {"version": version, "created": time.time() if created is None else created,
              "scope": sorted(set(scope)),
              "files": [{"role": f.role, "path": f.path, "text": f.text} for f in sorted(files, key=lambda f: f.path)]}
    return _dump({"format": FORMAT, "format_version": FORMAT_VERSION, "policy": policy, "signature": None})


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8")


def certify(root: PrivateKey, unit_key: PublicKey, units: list[str], *, name: str,
            until: float | None = None, issued: float | None = None) -> bytes:
    """A certificate: the root key says ``unit_key`` may sign bundles for ``units``."""
    if not units or ALL in units:
        raise PolicyError("certificate", "a unit key is certified for named units, never for *")
    if unit_key.suite is not root.suite:
        raise PolicyError("certificate", f"the unit key is {unit_key.suite.sign_name}, the root key "
                                         f"{root.suite.sign_name}: a chain never mixes crypto suites")
    fields = {"key": unit_key.pem(), "units": sorted(set(units)), "name": name,
              "issued": time.time() if issued is None else issued, "until": until,
              "issuer": root.public().fingerprint}
    sig = root.sign(signed_message("policy-cert", fields)).hex()
    return _dump({"format": CERT_FORMAT, **fields, "sig": sig})


def sign(bundle: bytes, key: PrivateKey, cert: bytes | None = None) -> bytes:
    """The bundle signed with ``key`` (and carrying the unit key's certificate, when given)."""
    doc = _parse(bundle)
    cert_doc = None
    if cert is not None:
        c = _cert(_json(cert, "certificate"))
        if c.key != key.public():
            raise PolicyError("certificate", "the certificate is for another key than the one signing")
        cert_doc = c.raw
    msg = signed_message("policy", {"policy": doc["policy"], "cert": cert_doc})
    doc["signature"] = {"signer": key.public().pem(), "cert": cert_doc, "sig": key.sign(msg).hex()}
    return _dump(doc)


# -- reading and verifying ------------------------------------------------------------------------

def _json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_BUNDLE_BYTES:
        raise PolicyError("content", f"the {what} is {len(data)} bytes, over the limit of {MAX_BUNDLE_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError("content", f"the {what} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PolicyError("content", f"the {what} is not a JSON object")
    return doc


def _parse(data: bytes) -> dict[str, Any]:
    doc = _json(data, "bundle")
    if doc.get("format") != FORMAT:
        raise PolicyError("content", f"not a DutyWatch policy bundle (format {doc.get('format')!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise PolicyError("content", f"bundle format version {doc.get('format_version')!r} is not "
                                     f"{FORMAT_VERSION}; this agent is too old or the file is not a bundle")
    if not isinstance(doc.get("policy"), dict):
        raise PolicyError("content", "the bundle has no policy")
    return doc


def _cert(doc: dict[str, Any], reason: str = "certificate") -> Cert:
    """A certificate read from its JSON; ``reason`` is what a bad one is refused as (verify: signature)."""
    if doc.get("format", CERT_FORMAT) != CERT_FORMAT:
        raise PolicyError(reason, "not a DutyWatch policy certificate")
    try:
        bytes.fromhex(str(doc["sig"]))
        key = load_public_pem(str(doc["key"]).encode("ascii"))
        units = tuple(str(u) for u in doc["units"])
        until = doc.get("until")
        cert = Cert(key, units, str(doc.get("name") or ""), float(doc["issued"]),
                    None if until is None else float(until), str(doc["issuer"]), str(doc["sig"]),
                    {k: v for k, v in doc.items()})
    except (KeyError, TypeError, ValueError, UnicodeEncodeError, SuiteError) as exc:
        raise PolicyError(reason, f"malformed certificate ({exc})") from exc
    cert.raw.setdefault("format", CERT_FORMAT)
    return cert


def _cert_fields(c: Cert) -> dict[str, Any]:
    return {k: c.raw[k] for k in ("key", "units", "name", "issued", "until", "issuer")}


def verify(data: bytes, roots: list[PublicKey], *, now: float | None = None) -> Verified:
    """Check the signature chain of a bundle against the trusted root keys; PolicyError says why not."""
    doc = _parse(data)
    pol = doc["policy"]
    sig = doc.get("signature")
    if not isinstance(sig, dict):
        raise PolicyError("signature", "the bundle is not signed (run `dutywatch policy sign`)")
    try:
        signer = load_public_pem(str(sig["signer"]).encode("ascii"))
        raw_sig = bytes.fromhex(str(sig["sig"]))
    except (KeyError, ValueError, UnicodeEncodeError, SuiteError) as exc:
        raise PolicyError("signature", f"malformed signature ({exc})") from exc
    by_fp = {r.fingerprint: r for r in roots}
    cert_doc = sig.get("cert")
    cert: Cert | None = None
    if signer.fingerprint in by_fp:
        signer_name, units = "root", None
    else:
        if not isinstance(cert_doc, dict):
            raise PolicyError("signature", f"signed by key {signer.fingerprint[:16]}, which is not a trusted "
                                           "root key and carries no certificate")
        cert = _cert(cert_doc, "signature")
        root = by_fp.get(cert.issuer)
        if root is None:
            raise PolicyError("signature", f"the signer's certificate was issued by key {cert.issuer[:16]}, "
                                           "which is not a trusted root key")
        if cert.key != signer:
            raise PolicyError("signature", "the certificate is for another key than the signer's")
        if not root.verify(bytes.fromhex(cert.sig), signed_message("policy-cert", _cert_fields(cert))):
            raise PolicyError("signature", "the signer's certificate does not verify with the root key")
        t = time.time() if now is None else now
        if cert.until is not None and t > cert.until:
            raise PolicyError("signature", f"the signer's certificate ({cert.name}) expired at "
                                           f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(cert.until))}")
        signer_name, units = cert.name or f"unit key {signer.fingerprint[:16]}", cert.units
    if not signer.verify(raw_sig, signed_message("policy", {"policy": pol, "cert": cert_doc})):
        raise PolicyError("signature", f"the signature does not verify: the bundle was changed after "
                                       f"{signer_name} signed it")
    version, scope, created, files = _policy(pol)
    if units is not None:
        if ALL in scope:
            raise PolicyError("scope", f"{signer_name} is a unit key; only a root key signs for every host (*)")
        outside = sorted(set(scope) - set(units))
        if outside:
            raise PolicyError("scope", f"{signer_name} may sign for {', '.join(units)} only, not for "
                                       f"{', '.join(outside)}")
    return Verified(version, scope, created, files, signer_name, signer.fingerprint, units,
                    hashlib.sha256(data).hexdigest(), data)


def _policy(pol: dict[str, Any]) -> tuple[int, tuple[str, ...], float, tuple[PolicyFile, ...]]:
    version = pol.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyError("content", f"bad version {version!r}")
    scope = pol.get("scope")
    if not isinstance(scope, list) or not scope or not all(isinstance(s, str) and s for s in scope):
        raise PolicyError("content", "bad scope (a list of unit names, or [\"*\"])")
    created = pol.get("created")
    if not isinstance(created, (int, float)):
        raise PolicyError("content", "bad creation time")
    files = []
    seen = set()
    for i, f in enumerate(pol.get("files") or []):
        if not isinstance(f, dict) or not all(isinstance(f.get(k), str) for k in ("role", "path", "text")):
            raise PolicyError("content", f"file {i} is malformed")
        role, path = f["role"], f["path"]
        prefix = _ROLE_DIR.get(role)
        if prefix is None:
            raise PolicyError("content", f"file {path!r} has unknown role {role!r}")
        name = path[len(prefix) + 1:] if prefix else path
        if (prefix and not path.startswith(prefix + "/")) or file_path(role, name) != path or path in seen:
            raise PolicyError("content", f"file path {path!r} is not allowed for role {role}")
        seen.add(path)
        files.append(PolicyFile(role, path, f["text"]))
    if not files:
        raise PolicyError("content", "the bundle has no files")
    return version, tuple(scope), float(created), tuple(files)


def describe(v: Verified) -> str:
    """One paragraph for ``policy verify`` and logs."""
    scope = "every host" if ALL in v.scope else ", ".join(v.scope)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v.created))
    roles = ", ".join(f"{len(v.role(r))} {r}" for r in ROLES if v.role(r))
    return (f"policy version {v.version}, built {when}, for {scope}; signed by {v.signer} "
            f"(key {v.signer_fingerprint[:16]}); files: {roles}; sha256 {v.digest}")


__all__ = ["ALL", "Cert", "PolicyError", "PolicyFile", "Verified", "build", "certify", "collect",
           "describe", "file_path", "sign", "verify"]
