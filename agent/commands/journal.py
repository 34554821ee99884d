"""``dutywatch journal pubkey``: print the journal's public signing key."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``journal`` command and its ``pubkey`` subcommand."""
    from agent.journal.locate import add_location_options

    p = sub.add_parser("journal", help="journal tools")
    inner = p.add_subparsers(dest="journal_command", metavar="SUBCOMMAND", required=True)
    pk = inner.add_parser("pubkey", help="print the journal's public signing key (PEM)",
                          description="Print the public half of the journal key; give it to the "
                                      "auditors, who pass it to `dutywatch verify --pubkey`.")
    add_location_options(pk, journal=False)
    pk.add_argument("--fingerprint", action="store_true", help="print only the key's SHA-256 fingerprint")
    pk.set_defaults(func=pubkey)
    cp = inner.add_parser(
        "checkpoint", help="write a signed checkpoint as files OpenSSL checks (message, signature, key)",
        description="Write one checkpoint's signed message, its signature and the public key to DIR, and "
                    "print the `openssl pkeyutl -verify` command that checks them without DutyWatch.")
    add_location_options(cp)
    cp.add_argument("--bundle", metavar="FILE", type=Path, help="take the checkpoint from an evidence bundle")
    cp.add_argument("--seq", type=int, metavar="N", help="the checkpoint at seq N (default: the newest)")
    cp.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write the files to")
    cp.set_defaults(func=checkpoint)


def pubkey(args: argparse.Namespace) -> int:
    """Print the PEM on stdout (the fingerprint on stderr, so the PEM can be redirected)."""
    from agent.journal.locate import state_dir
    from agent.journal.signing import load_private_key
    from agent.journal.store import KEY_FILE

    public = load_private_key(state_dir(args) / KEY_FILE).public()
    if args.fingerprint:
        print(public.fingerprint)
        return 0
    sys.stdout.write(public.pem())
    print(f"crypto suite: {public.suite.describe()}", file=sys.stderr)
    print(f"fingerprint ({public.suite.hash_name}): {public.fingerprint}", file=sys.stderr)
    return 0


def checkpoint(args: argparse.Namespace) -> int:
    """Export a checkpoint; 0 when its signature verifies, 1 (files still written) when not."""
    from agent.journal import interop

    if args.bundle is not None:
        e = interop.from_bundle(args.bundle, args.out, args.seq)
    else:
        from agent.journal.locate import journal_path

        e = interop.from_journal(journal_path(args), args.out, args.seq)
    f = e.fields
    print(f"checkpoint: seq {f['seq']} hash {f['hash']} time {f['time']} host {f['host']}")
    print(f"crypto suite: {e.suite.describe()}")
    print(f"wrote {e.message} (the signed bytes), {e.signature} ({e.suite.sign_name} signature"
          f"{', DER' if e.suite.name == 'gm' else ''}), {e.pubkey}")
    print(f"key fingerprint: {e.fingerprint}")
    print("check it with OpenSSL 3 (prints \"Signature Verified Successfully\"):")
    print(f"  {shlex.join(e.openssl)}")
    if e.openssl_link is not None:
        print(f"the signed head hash is the {e.suite.hash_name} of {e.link} (prev|seq|record, the record at "
              f"seq {f['seq']}):")
        print(f"  {shlex.join(e.openssl_link)}")
    if not e.verified:
        print(f"FAILED: the signature at seq {f['seq']} does not verify with this key", file=sys.stderr)
        return 1
    return 0
