"""``dutywatch journal pubkey``: print the journal's public signing key."""

from __future__ import annotations

import argparse
import sys
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
