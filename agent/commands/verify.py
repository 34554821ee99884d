"""``dutywatch verify``: check a journal's or a bundle's hash chain and signatures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``verify`` command."""
    from agent.journal.locate import add_location_options

    p = sub.add_parser("verify", help="check the journal's hash chain and signatures, or a bundle's",
                       description="Check every record's hash link, the signed checkpoints and prune "
                                   "anchor; exit 1 naming the first bad record.")
    add_location_options(p)
    p.add_argument("--pubkey", metavar="PATH", type=Path,
                   help="trusted public key (PEM, from `dutywatch journal pubkey`)")
    p.add_argument("--bundle", metavar="FILE", type=Path, help="verify an exported evidence bundle instead")
    p.add_argument("--through", metavar="SEQ", type=int,
                   help="check the chain from its start up to record SEQ and the checkpoint that signs it "
                        "(what a report of a period printed); later records are not read (with --bundle: "
                        "the bundle's excerpt up to SEQ, or the whole bundle when no checkpoint follows SEQ)")
    p.add_argument("--witness", metavar="NAME", help="also check every head the witness holds (journald, or "
                                                     "journald@NAMESPACE) against the journal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify; 0 when everything checks out, 1 naming the first problem."""
    if args.bundle is not None:
        return _bundle(args)
    from agent.journal.locate import journal_path
    from agent.journal.verify import verify_journal

    if args.through is not None:
        return _through(args)
    r = verify_journal(journal_path(args), args.pubkey)
    if not r.ok:
        print(f"FAILED journal {r.path}: {r.problem}", file=sys.stderr)
        print(f"crypto suite: {_suite(r.suite)}", file=sys.stderr)
        if r.records:
            print(f"records {r.first_seq}..{r.last_seq} before it verified", file=sys.stderr)
        return 1
    print(f"OK journal {r.path}")
    print(f"crypto suite: {_suite(r.suite)}")
    if r.records:
        print(f"records: {r.first_seq}..{r.last_seq} ({r.records})")
    else:
        print("records: none")
    print(f"chain head: seq {r.last_seq} hash {r.head_hash or '-'}")
    signed = (f"up to seq {r.signed_seq} by {r.checkpoints} checkpoints" if r.checkpoints
              else "no checkpoint yet")
    print(f"signed: {signed}")
    if r.unsigned:
        print(f"chained, not yet signed: {r.unsigned} records "
              f"({r.last_seq - r.unsigned + 1}..{r.last_seq})")
    print(f"key fingerprint: {r.fingerprint} (from {r.key_source})")
    if args.witness:
        return _witness(args.witness, journal_path(args))
    return 0


def _through(args: argparse.Namespace) -> int:
    """The chain up to one record and the checkpoint that signs it: what a report of a period rests on."""
    from agent.journal.locate import journal_path
    from agent.journal.verify import verify_journal

    seq = args.through
    r = verify_journal(journal_path(args), args.pubkey, through=seq, stop=True)
    if not r.ok:
        print(f"FAILED journal {r.path}: {r.problem}", file=sys.stderr)
        print(f"crypto suite: {_suite(r.suite)}", file=sys.stderr)
        return 1
    if r.through_seq != seq:
        held = f"{r.first_seq}..{r.last_seq}" if r.records else "none"
        print(f"FAILED journal {r.path}: record {seq} is not in the journal (records held: {held})",
              file=sys.stderr)
        return 1
    print(f"OK journal {r.path} through seq {seq}")
    print(f"crypto suite: {_suite(r.suite)}")
    print(f"records: {r.first_seq}..{seq} ({seq - r.first_seq + 1})")
    print(f"chain hash at seq {seq}: {r.through_hash}")
    if r.through_signed_seq:
        from datetime import UTC, datetime
        when = datetime.fromtimestamp(r.through_signed_time, UTC).isoformat(timespec="seconds")
        print(f"signed by: the checkpoint at seq {r.through_signed_seq} ({when})")
    else:
        print(f"signed by: no checkpoint yet (records up to {r.last_seq} chained, not yet signed)")
    print(f"key fingerprint: {r.fingerprint} (from {r.key_source})")
    return 0


def _witness(name: str, path: Path) -> int:
    """Every head the witness holds must be in the journal; exit 1 naming the first that is not."""
    from agent.journal import db
    from agent.journal.witness import missing, parse_witness

    try:
        w = parse_witness(name)
    except ValueError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    if w.name == "audit":
        print("FAILED: the audit trail is a write-only witness here; search it with "
              "`ausearch -m USER -i | grep dutywatch-witness`, or check --witness journald", file=sys.stderr)
        return 2
    conn, meta = db.open_reader(path)
    try:
        try:
            heads = w.heads(meta.get("fingerprint", ""))
        except OSError as exc:
            print(f"FAILED witness {w.name}: cannot read it: {exc}", file=sys.stderr)
            return 1
        bad = missing(conn, heads)
    finally:
        conn.close()
    if bad is not None:
        head, why = bad
        print(f"FAILED witness {w.name}: witnessed {head.kind} seq {head.seq} hash {head.hash} is missing from "
              f"journal {path}: {why}", file=sys.stderr)
        return 1
    print(f"witness {w.name}: {len(heads)} witnessed heads, all in the journal"
          + (f" (last seq {heads[-1].seq})" if heads else ""))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from agent.journal.bundlecheck import verify_bundle

    r = verify_bundle(args.bundle, args.pubkey, through=args.through)
    if not r.ok:
        print(f"FAILED bundle {r.path}: {r.problem}", file=sys.stderr)
        if r.fingerprint:  # the header was read, so its suite is known
            print(f"crypto suite: {_suite(r.suite)}", file=sys.stderr)
        return 1
    period = ", ".join(f"{k} {v}" for k, v in r.period.items() if v is not None) or "everything"
    if args.through is not None:
        print(f"OK bundle {r.path} through seq {r.through_seq}")
        print(f"crypto suite: {_suite(r.suite)}")
        print(f"host: {r.host}")
        print(f"records: {r.first_seq}..{r.through_seq} ({r.through_seq - r.first_seq + 1})")
        print(f"chain hash at seq {r.through_seq}: {r.through_hash}")
        if r.signed_seq:
            from datetime import UTC, datetime
            when = datetime.fromtimestamp(r.signed_time, UTC).isoformat(timespec="seconds")
            print(f"signed by: the checkpoint at seq {r.signed_seq} ({when}); later lines not read")
        else:
            print("signed by: the bundle's signed manifest (no checkpoint after it; the whole bundle checked)")
        print(f"key fingerprint: {r.fingerprint} (from {r.key_source})")
        return 0
    print(f"OK bundle {r.path}")
    print(f"crypto suite: {_suite(r.suite)}")
    print(f"host: {r.host}")
    print(f"period: {period}")
    print(f"records: {r.first_seq}..{r.last_seq} ({r.records}), {r.checkpoints} checkpoints")
    print(f"chain head: seq {r.last_seq} hash {r.head_hash}")
    print(f"key fingerprint: {r.fingerprint} (from {r.key_source})")
    return 0


def _suite(name: str) -> str:
    from agent.crypto.suite import suite

    return suite(name).describe()
