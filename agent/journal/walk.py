"""Checks one record after another against the chain; shared by journal and bundle checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.crypto.suite import INTL, PublicKey, Suite
from agent.journal.chain import INDEX_COLUMNS, canonical_bytes, index_keys, link_hash
from agent.journal.errors import RecordError
from agent.journal.signing import fingerprint, verify_signature


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong: which record, checkpoint or anchor (by seq), and what."""

    seq: int
    what: str
    subject: str = "record"

    def __str__(self) -> str:
        if self.subject == "record":
            return f"record {self.seq}: {self.what}"
        if self.subject in ("bundle", "journal"):
            return f"{self.subject}: {self.what}"
        return f"{self.subject} at seq {self.seq}: {self.what}"


def _short(h: str) -> str:
    return f"{h[:16]}…"


class ChainWalker:
    """Follows the chain record by record; each ``check`` returns the first problem or None."""

    def __init__(self, start_seq: int, start_prev: str | None, start_what: str, suite: Suite = INTL) -> None:
        self.new_hash = suite.new_hash
        self.expected_seq = start_seq
        self.expected_prev = start_prev  # None: take the first record's link on trust (a bundle's start)
        self.start_what = start_what
        self.last_hash = start_prev or ""
        self.count = 0

    def check(self, seq: int, prev: str, digest: str, body: bytes,
              columns: tuple[Any, ...] | None = None) -> Problem | None:
        """Check one record; ``columns`` are its stored index columns, when it has them."""
        want = self.expected_seq
        if seq > want:
            gone = f"{want}" if seq == want + 1 else f"{want}..{seq - 1}"
            after = self.start_what if self.count == 0 else f"record {want - 1}"
            return Problem(want, f"missing (records {gone} deleted; next present is {seq}, after {after})")
        if seq < want:
            return Problem(seq, f"out of order: it comes after record {want - 1} "
                                "(record reordered or duplicated)")
        if self.expected_prev is not None and prev != self.expected_prev:
            after = self.start_what if self.count == 0 else f"record {seq - 1}"
            return Problem(seq, f"does not follow {after}: it links to {_short(prev)}, which is not "
                                f"{_short(self.expected_prev)} (record inserted, removed or reordered)")
        if link_hash(prev, seq, body, self.new_hash) != digest:
            return Problem(seq, "content does not match its hash (record modified)")
        problem = _check_body(seq, body, columns)
        if problem:
            return problem
        self.expected_seq = seq + 1
        self.expected_prev = digest
        self.last_hash = digest
        self.count += 1
        return None


def _check_body(seq: int, body: bytes, columns: tuple[Any, ...] | None) -> Problem | None:
    try:
        record = json.loads(body)
    except ValueError:
        return Problem(seq, "not valid JSON (record modified)")
    if canonical_bytes(record) != body:
        return Problem(seq, "not in canonical JSON form (record modified)")
    try:
        keys = index_keys(record).as_tuple()
    except RecordError as exc:
        return Problem(seq, f"not a valid record: {exc}")
    if columns is not None:
        for name, stored, real in zip(INDEX_COLUMNS, columns, keys, strict=True):
            if stored != real:
                return Problem(seq, f"index column {name} says {stored!r} but the record says "
                                    f"{real!r} (record modified)")
    return None


def check_signed(public: PublicKey, what: str, seq: int, key: str, signature: str,
                 purpose: str, fields: dict[str, Any]) -> Problem | None:
    """Check a checkpoint's or anchor's signature; name a wrong key apart from a forgery."""
    if verify_signature(public, signature, purpose, fields):
        return None
    fp = fingerprint(public)
    if key != fp:
        return Problem(seq, f"signed by key {_short(key)}, not by the trusted key {_short(fp)} "
                            "(wrong key, or a journal from another host)", what)
    return Problem(seq, f"signature does not verify with key {_short(fp)} (forged or altered {what})", what)
