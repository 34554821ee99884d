"""``dutywatch policy``: make, sign and check the signed policy bundles the centre sends to hosts.

    dutywatch policy keygen --out root.key                 # a province root key (and root.key.pub)
    dutywatch policy keygen --out unit.key
    dutywatch policy certify --root-key root.key --pubkey unit.key.pub --units 某单位 --name 某单位 --out unit.cert
    dutywatch policy build --version 7 --scope 某单位 --rules rules/ --registry central.yaml --out p7.json
    dutywatch policy sign p7.json --key unit.key --cert unit.cert
    dutywatch policy verify p7.json --root root.key.pub [--host ID]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.crypto.suite import SUITE_NAMES, SuiteError, load_public_pem, suite
from agent.errors import DutyWatchError, LoadError, LoadErrors


def register(sub: Any) -> None:
    """Add ``policy`` and its subcommands."""
    p = sub.add_parser("policy", help="signed policy bundles: keygen, certify, build, sign, verify",
                       description="Make, sign and check the policy bundles (rule packs, assessment policies, "
                                   "config drop-ins, a central registry) that agents take from the centre.")
    inner = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    k = inner.add_parser("keygen", help="make a signing key (private key 0600, public key beside it as .pub)")
    k.add_argument("--out", required=True, type=Path, metavar="FILE")
    k.add_argument("--crypto", choices=SUITE_NAMES, default="intl",
                   help="intl: Ed25519; gm: SM2 (国密). A chain never mixes them.")
    k.set_defaults(func=keygen)

    c = inner.add_parser("certify", help="let a unit key sign bundles for some units (signed by a root key)")
    c.add_argument("--root-key", required=True, type=Path, metavar="FILE")
    c.add_argument("--pubkey", required=True, type=Path, metavar="FILE", help="the unit key's public half")
    c.add_argument("--units", required=True, metavar="NAME,...", help="the units it may sign for")
    c.add_argument("--name", required=True, help="who holds the key, as journals and metrics name the signer")
    c.add_argument("--days", type=float, metavar="N", help="valid for N days (default: until revoked by a new root)")
    c.add_argument("--out", required=True, type=Path, metavar="FILE")
    c.set_defaults(func=certify)

    b = inner.add_parser("build", help="make an unsigned bundle from rule packs, policies, drop-ins, a registry")
    b.add_argument("--version", required=True, type=int, metavar="N", help="higher than any version before")
    b.add_argument("--scope", required=True, metavar="UNIT,...|*", help="the units whose hosts take it; * for all")
    b.add_argument("--rules", action="append", default=[], type=Path, metavar="DIR|FILE")
    b.add_argument("--assess", action="append", default=[], type=Path, metavar="DIR|FILE")
    b.add_argument("--config", action="append", default=[], type=Path, metavar="FILE",
                   help="an agent.d drop-in (it may not set policy or state_dir)")
    b.add_argument("--registry", type=Path, metavar="FILE", help="a central registry (hosts: [...])")
    b.add_argument("--out", required=True, type=Path, metavar="FILE")
    b.set_defaults(func=build)

    s = inner.add_parser("sign", help="sign a built bundle (with a root key, or a unit key and its certificate)")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", required=True, type=Path, metavar="FILE")
    s.add_argument("--cert", type=Path, metavar="FILE", help="the unit key's certificate (not for a root key)")
    s.add_argument("--out", type=Path, metavar="FILE", help="default: sign the bundle in place")
    s.set_defaults(func=sign)

    v = inner.add_parser("verify", help="check a bundle's signature chain (and, with --host, whether it applies)")
    v.add_argument("bundle", type=Path)
    v.add_argument("--root", required=True, action="append", type=Path, metavar="FILE",
                   help="a trusted root public key (repeatable)")
    v.add_argument("--unit", metavar="NAME", help="check that a host of this unit is in scope")
    v.add_argument("--host", metavar="ID", help="check that the central registry has an entry for this host")
    v.set_defaults(func=verify)


def _private(path: Path) -> Any:
    from agent.journal.signing import load_private_key
    return load_private_key(path)


def _public(path: Path) -> Any:
    try:
        return load_public_pem(path.read_bytes())
    except OSError as exc:
        raise DutyWatchError(f"{path}: {exc.strerror}") from exc
    except SuiteError as exc:
        raise DutyWatchError(f"{path}: {exc}") from exc


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    from agent.textsafe import write_new
    write_new(path, lambda f: f.write(data), binary=True, mode=mode)


def keygen(args: argparse.Namespace) -> int:
    """A new key pair; refuses to overwrite a key."""
    if args.out.exists() or args.out.is_symlink():
        raise DutyWatchError(f"{args.out}: exists; a signing key is never overwritten")
    key = suite(args.crypto).generate_key()
    _write_new(args.out, key.private_pem(), 0o600)
    pub = args.out.with_name(args.out.name + ".pub")
    _write_new(pub, key.public().pem().encode("ascii"))
    print(f"{args.out} (private, keep it offline) and {pub}: {key.suite.describe()}, fingerprint "
          f"{key.public().fingerprint}")
    return 0


def certify(args: argparse.Namespace) -> int:
    """A unit key's certificate."""
    from agent.policy.bundle import certify as make
    units = [u.strip() for u in args.units.split(",") if u.strip()]
    until = time.time() + args.days * 86400 if args.days else None
    data = make(_private(args.root_key), _public(args.pubkey), units, name=args.name, until=until)
    _write_new(args.out, data)
    print(f"{args.out}: {args.name} may sign bundles for {', '.join(units)}")
    return 0


def build(args: argparse.Namespace) -> int:
    """An unsigned bundle; every file is checked as the agent will check it."""
    from agent.policy.bundle import ALL, PolicyFile, collect
    from agent.policy.bundle import build as make

    files: list[PolicyFile] = []
    for role, sources in (("rules", args.rules), ("assess", args.assess), ("config", args.config)):
        for src in sources:
            files += collect(role, src)
    if args.registry is not None:
        files += collect("registry", args.registry)
    scope = [s.strip() for s in args.scope.split(",") if s.strip()]
    problems = _check(files, args)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found; no bundle written",
              file=sys.stderr)
        return 1
    _write_new(args.out, make(args.version, scope, files))
    hosts = f", {ALL if ALL in scope else ', '.join(scope)}"
    print(f"{args.out}: policy version {args.version}{hosts}, {len(files)} files (unsigned: run "
          f"`dutywatch policy sign {args.out} --key KEY`)")
    return 0


def _load_role(files: list[Any], role: str, load: Callable[[Path], Any]) -> list[str]:
    """Write one role's files to a temporary folder as an agent would and load them; the problems, named by the
    file's path in the bundle."""
    import tempfile

    mine = [f for f in files if f.role == role]
    if not mine:
        return []
    with tempfile.TemporaryDirectory(prefix="dutywatch-policy-") as tmp:
        for f in mine:
            p = Path(tmp) / f.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f.text, encoding="utf-8")
        try:
            load(Path(tmp) / mine[0].path.split("/", 1)[0])
        except (LoadError, LoadErrors) as exc:
            return [line.replace(tmp + "/", "") for line in str(exc).splitlines()]
    return []


def _check(files: list[Any], args: argparse.Namespace) -> list[str]:
    """Load every file the way an agent would; the problems, located in the source files."""
    from agent.assess.policy import load_policies
    from agent.config import _NOT_FROM_POLICY, _TOP
    from agent.engine.rules import load_rules
    from agent.policy import central
    from agent.yamlsrc import LDict, load_text

    out = _load_role(files, "rules", lambda d: load_rules([d]))
    out += _load_role(files, "assess", lambda d: load_policies([d]))
    for f in files:
        try:
            if f.role == "config":
                doc = load_text(f.text, f.path)
                if not isinstance(doc, LDict):
                    out.append(f"{f.path}:1:1: a config drop-in is a mapping")
                    continue
                for key in doc:
                    if key in _NOT_FROM_POLICY:
                        out.append(f"{doc.key_at(key)}: a drop-in from a policy bundle may not set {key}")
                    elif key not in _TOP:
                        out.append(f"{doc.key_at(key)}: unknown config key {key!r}")
            elif f.role == "registry":
                hosts = central.check(f.text, str(args.registry))
                if not hosts:
                    out.append(f"{args.registry}:1:1: the central registry lists no hosts")
        except (LoadError, LoadErrors) as exc:
            out += str(exc).splitlines()
    return out


def sign(args: argparse.Namespace) -> int:
    """Sign in place (or to --out)."""
    from agent.policy.bundle import sign as do_sign
    cert = args.cert.read_bytes() if args.cert else None
    data = do_sign(args.bundle.read_bytes(), _private(args.key), cert)
    out = args.out or args.bundle
    _write_new(out, data)
    print(f"{out}: signed")
    return 0


def verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain holds (and the host/unit is in scope), 1 with the reason otherwise."""
    from agent.policy import central
    from agent.policy.bundle import PolicyError, describe
    from agent.policy.bundle import verify as check

    roots = [_public(p) for p in args.root]
    try:
        v = check(args.bundle.read_bytes(), roots)
        if args.unit is not None and not v.covers(args.unit):
            raise PolicyError("scope", f"unit {args.unit} is not in the scope ({', '.join(v.scope)})")
        if args.host is not None:
            reg = v.role("registry")
            if reg and central.host_registry(reg[0].text, reg[0].path, args.host) is None:
                raise PolicyError("scope", f"the central registry has no entry for host {args.host!r}")
    except PolicyError as exc:
        print(f"{args.bundle}: refused: {exc}", file=sys.stderr)
        return 1
    print(f"{args.bundle}: ok: {describe(v)}")
    return 0


__all__ = ["register"]
