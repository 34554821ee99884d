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
        _failed("journal", r.path, r.problem, r.suite)
        if r.records:
            print(f"records {r.first_seq}..{r.last_seq} before it verified", file=sys.stderr)
        return 1
    _ok(f"journal {r.path}", r.suite)
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
    _key(r.fingerprint, r.key_source)
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
        return _failed("journal", r.path, r.problem, r.suite)
    if r.through_seq != seq:
        held = f"{r.first_seq}..{r.last_seq}" if r.records else "none"
        return _failed("journal", r.path, f"record {seq} is not in the journal (records held: {held})")
    _ok(f"journal {r.path} through seq {seq}", r.suite)
    _through_lines(r.first_seq, seq, r.through_hash, r.through_signed_seq, r.through_signed_time, "",
                   f"no checkpoint yet (records up to {r.last_seq} chained, not yet signed)")
    _key(r.fingerprint, r.key_source)
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
        # the suite is known once the header was read
        return _failed("bundle", r.path, r.problem, r.suite if r.fingerprint else None)
    if args.through is not None:
        _ok(f"bundle {r.path} through seq {r.through_seq}", r.suite)
        print(f"host: {r.host}")
        _through_lines(r.first_seq, r.through_seq, r.through_hash, r.signed_seq, r.signed_time,
                       "; later lines not read",
                       "the bundle's signed manifest (no checkpoint after it; the whole bundle checked)")
    else:
        _ok(f"bundle {r.path}", r.suite)
        print(f"host: {r.host}")
        print(f"period: {', '.join(f'{k} {v}' for k, v in r.period.items() if v is not None) or 'everything'}")
        print(f"records: {r.first_seq}..{r.last_seq} ({r.records}), {r.checkpoints} checkpoints")
        print(f"chain head: seq {r.last_seq} hash {r.head_hash}")
    _key(r.fingerprint, r.key_source)
    return 0


def _failed(what: str, path: object, problem: object, suite: str | None = None) -> int:
    """The first problem (and the crypto suite, when known) on standard error; the exit status 1."""
    print(f"FAILED {what} {path}: {problem}", file=sys.stderr)
    if suite is not None:
        print(f"crypto suite: {_suite(suite)}", file=sys.stderr)
    return 1


def _ok(what: str, suite: str) -> None:
    print(f"OK {what}")
    print(f"crypto suite: {_suite(suite)}")


def _through_lines(first: int, seq: int, chain_hash: str, signed_seq: int, signed_time: float, after: str,
                   unsigned: str) -> None:
    """What a check up to record ``seq`` rests on: its records, its chain hash and what signs it."""
    print(f"records: {first}..{seq} ({seq - first + 1})")
    print(f"chain hash at seq {seq}: {chain_hash}")
    if signed_seq:
        from datetime import UTC, datetime
        when = datetime.fromtimestamp(signed_time, UTC).isoformat(timespec="seconds")
        print(f"signed by: the checkpoint at seq {signed_seq} ({when}){after}")
    else:
        print(f"signed by: {unsigned}")


def _key(fingerprint: str, source: str) -> None:
    print(f"key fingerprint: {fingerprint} (from {source})")


def _suite(name: str) -> str:
    from agent.crypto.suite import suite

    return suite(name).describe()
