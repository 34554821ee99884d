"""Verify a journal file: chain, index columns, checkpoints and prune anchor."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.crypto.suite import PublicKey, Suite
from agent.journal import db
from agent.journal.chain import GENESIS
from agent.journal.errors import JournalError
from agent.journal.signing import fingerprint, load_private_key, load_public_key_file, load_public_pem
from agent.journal.walk import ChainWalker, Problem, check_signed

KEY_FILE = "journal.key"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a verification; ``problem`` is None when everything checked out."""

    path: str
    records: int
    first_seq: int
    last_seq: int
    head_hash: str
    signed_seq: int
    checkpoints: int
    fingerprint: str
    key_source: str
    problem: Problem | None
    suite: str = "intl"
    through_seq: int = 0  # with ``through``: the record asked for, its chain hash and the checkpoint signing it
    through_hash: str = ""
    through_signed_seq: int = 0
    through_signed_time: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the chain and every signature verified."""
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Records after the last checkpoint: chained, not yet signed."""
        return max(0, self.last_seq - max(self.signed_seq, self.first_seq - 1))


def trusted_key(db_path: Path, pubkey: PublicKey | Path | None,
                meta: dict[str, str]) -> tuple[PublicKey, str]:
    """The key to verify with, and where it came from.

    A key given by the auditor wins; next the journal's own key file beside
    it; last the public key the journal recorded about itself, which proves
    only that the file is consistent, so the report says so.
    """
    if isinstance(pubkey, PublicKey):
        return pubkey, "given key"
    if pubkey is not None:
        return load_public_key_file(pubkey), str(pubkey)
    key_file = db_path.parent / KEY_FILE
    if key_file.exists():
        try:
            return load_private_key(key_file).public(), str(key_file)
        except JournalError:
            pass
    if "public_key" not in meta:
        raise JournalError(f"{db_path}: no public key recorded; pass --pubkey")
    return (load_public_pem(meta["public_key"], f"{db_path} (recorded public key)"),
            "the journal's own record of its key (pass --pubkey to check against a trusted copy)")


def verify_journal(db_path: Path, pubkey: PublicKey | Path | None = None, through: int | None = None,
                   stop: bool = False) -> VerifyReport:
    """Check the journal at ``db_path`` in its own crypto suite; the report names the first bad record.

    With ``through`` the report also gives that record's chain hash and the
    first checkpoint at or after it (the signature that covers it); with
    ``stop`` the walk ends there, so records written later do not matter.
    """
    db_path = Path(db_path)
    conn, meta = db.open_reader(db_path)
    try:
        suite = db.suite_of(meta, db_path)
        public, source = trusted_key(db_path, pubkey, meta)
        if public.suite is not suite:
            problem = Problem(0, f"the journal records crypto suite {suite.describe()}, but the key from "
                                 f"{source} is an {public.suite.sign_name} key (suite {public.suite.name}): "
                                 "not this journal's key, or the journal's suite was altered", "journal")
            return VerifyReport(str(db_path), 0, 1, 0, "", 0, 0, public.fingerprint, source, problem, suite.name)
        try:
            # One read snapshot for every query, while the agent goes on writing.
            conn.execute("BEGIN")
            return _walk(conn, db_path, public, source, suite, through, stop)
        except sqlite3.Error as exc:
            raise db.translate(db_path, exc) from exc
    finally:
        conn.close()


def _walk(conn: sqlite3.Connection, path: Path, public: PublicKey, source: str, suite: Suite,
          through: int | None = None, stop: bool = False) -> VerifyReport:
    fp = fingerprint(public)
    signed_seq = 0
    n_checkpoints = 0
    at: list[Any] = [0, "", 0, 0.0]  # through: seq, hash, signing checkpoint seq, its time

    def report(problem: Problem | None, walker: ChainWalker) -> VerifyReport:
        return VerifyReport(str(path), walker.count, first, walker.expected_seq - 1, walker.last_hash,
                            signed_seq, n_checkpoints, fp, source, problem, suite.name, *at)

    anchor = conn.execute(
        "SELECT seq, prev, time, host, key, signature FROM anchors ORDER BY seq DESC LIMIT 1").fetchone()
    if anchor:
        first = int(anchor[0])
        walker = ChainWalker(first, str(anchor[1]), f"the signed prune anchor at seq {first}", suite)
        bad = check_signed(public, "prune anchor", first, anchor[4], anchor[5], "anchor",
                           {"seq": first, "prev": anchor[1], "time": anchor[2], "host": anchor[3]})
        if bad:
            return report(bad, walker)
    else:
        first = 1
        walker = ChainWalker(1, GENESIS, "the start of the journal", suite)
    checkpoints = conn.cursor().execute(
        "SELECT seq, hash, time, host, key, signature FROM checkpoints ORDER BY seq")
    cp = checkpoints.fetchone()
    records = conn.cursor().execute(db.SELECT_CHAIN)
    for seq, *cols, body, prev, digest in records:
        bad = walker.check(seq, prev, digest, bytes(body), tuple(cols))
        if bad:
            return report(bad, walker)
        if seq == through:
            at[0], at[1] = seq, str(digest)
        while cp is not None and cp[0] <= seq:
            bad = _check_checkpoint(public, cp, digest if cp[0] == seq else None)
            if bad:
                return report(bad, walker)
            if cp[0] == seq:
                signed_seq = seq
                if through is not None and at[0] and not at[2]:
                    at[2], at[3] = seq, float(cp[2])
            n_checkpoints += 1
            cp = checkpoints.fetchone()
        if stop and through is not None and seq >= through and (at[2] or at[0] == 0):
            return report(None, walker)
    if cp is not None:
        last = walker.expected_seq - 1
        gone = f"{last + 1}..{cp[0]}" if cp[0] > last + 1 else f"{cp[0]}"
        return report(Problem(last + 1, f"missing (records {gone} deleted from the end; a checkpoint "
                                        f"signed the chain up to seq {cp[0]})"), walker)
    return report(None, walker)


def _check_checkpoint(public: PublicKey, cp: tuple[int, str, float, str, str, str],
                      record_hash: str | None) -> Problem | None:
    seq, digest, when, host, key, signature = cp
    bad = check_signed(public, "checkpoint", seq, key, signature, "checkpoint",
                       {"seq": seq, "hash": digest, "time": when, "host": host})
    if bad:
        return bad
    if record_hash is not None and record_hash != digest:
        return Problem(seq, f"does not match the signed checkpoint at seq {seq} "
                            "(record modified and the chain rewritten after it)")
    return None
