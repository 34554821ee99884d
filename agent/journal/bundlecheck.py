"""Offline verification of an evidence bundle (see agent.journal.bundle for the format)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.crypto.suite import INTL, SUITE_NAMES, Hasher, PublicKey, Suite, SuiteError, suite
from agent.journal.bundle import FORMAT, VERSION
from agent.journal.chain import canonical_bytes
from agent.journal.errors import JournalError
from agent.journal.signing import fingerprint, load_public_key_file, load_public_pem, verify_signature
from agent.journal.walk import ChainWalker, Problem, check_signed


@dataclass(frozen=True, slots=True)
class BundleReport:
    """The outcome of checking a bundle; ``problem`` is None when it verified."""

    path: str
    host: str
    period: dict[str, Any]
    records: int
    checkpoints: int
    first_seq: int
    last_seq: int
    head_hash: str
    fingerprint: str
    key_source: str
    problem: Problem | None
    suite: str = "intl"
    # With ``through``: the record asked for, its chain hash, and what signs it: the first checkpoint at or
    # after it (its seq and time), or the bundle's manifest when no checkpoint follows it (signed_seq 0).
    through_seq: int = 0
    through_hash: str = ""
    signed_seq: int = 0
    signed_time: float = 0.0
    # The last checkpoint checked (the first at or after ``reach``): where a reader of the excerpt may stop.
    checked_seq: int = 0
    checked_hash: str = ""

    @property
    def ok(self) -> bool:
        """True when every record, checkpoint and the manifest verified."""
        return self.problem is None


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _bundle_problem(what: str, seq: int = 0) -> _Refused:
    return _Refused(Problem(seq, what, "bundle" if seq == 0 else "record"))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as f:
            yield from enumerate(f, start=1)
    except OSError as exc:
        raise JournalError(f"{path}: cannot read bundle: {exc.strerror}") from exc


def _parse(lineno: int, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
        canonical = canonical_bytes(obj) + b"\n"
    except ValueError:
        raise _bundle_problem(f"line {lineno} is not valid JSON (bundle altered)") from None
    if not isinstance(obj, dict) or canonical != raw:
        raise _bundle_problem(f"line {lineno} is not in canonical form (bundle altered)")
    return obj


class _Checker:
    def __init__(self, path: Path, pubkey: PublicKey | Path | None) -> None:
        self.path = path
        self.pubkey = pubkey
        self.suite: Suite = INTL
        self.digest: Hasher = INTL.new_hash()
        self.header: dict[str, Any] = {}
        self.public: PublicKey | None = None
        self.source = ""
        self.walker = ChainWalker(0, None, "the bundle's start")
        self.checkpoints = 0
        self.manifest: dict[str, Any] | None = None
        self.through: int | None = None
        self.at: tuple[int, str] = (0, "")  # the record asked for: seq, chain hash
        self.signed: tuple[int, float] | None = None  # the checkpoint signing it: seq, time
        self.reach = 0  # read on to the first checkpoint at or after this record
        self.checked: tuple[int, str] | None = None  # that checkpoint: seq, chain hash

    def header_line(self, obj: dict[str, Any]) -> None:
        if obj.get("kind") != "header" or obj.get("bundle") != FORMAT:
            raise _bundle_problem("not a DutyWatch evidence bundle (no header line)")
        if obj.get("version") != VERSION:
            raise _bundle_problem(
                f"bundle format version {obj.get('version')!r}; this DutyWatch reads {VERSION}")
        self.header = obj
        crypto = obj.get("crypto", INTL.name)  # bundles from before suites are intl
        if crypto not in SUITE_NAMES:
            raise _bundle_problem(f"the header names crypto suite {crypto!r}, which this DutyWatch does not know")
        try:
            self.suite = suite(crypto)
        except SuiteError as exc:
            raise JournalError(f"{self.path}: bundle uses crypto suite {crypto}: {exc}") from exc
        self.digest = self.suite.new_hash()
        try:
            embedded = load_public_pem(str(obj.get("public_key", "")), f"{self.path} (bundle's key)")
        except JournalError:
            raise _bundle_problem("the header's public key is unreadable (bundle altered)") from None
        if embedded.suite is not self.suite:
            raise _bundle_problem(f"the header says crypto suite {self.suite.name} but holds an "
                                  f"{embedded.suite.sign_name} key (bundle altered)")
        if fingerprint(embedded) != obj.get("fingerprint"):
            raise _bundle_problem("the header's key fingerprint does not match its key (bundle altered)")
        if self.pubkey is None:
            self.public = embedded
            self.source = "the bundle's own key (pass --pubkey to check against the host's trusted key)"
        else:
            if isinstance(self.pubkey, PublicKey):
                self.public, self.source = self.pubkey, "given key"
            else:
                self.public, self.source = load_public_key_file(self.pubkey), str(self.pubkey)
            if self.public.suite is not self.suite:
                raise _bundle_problem(
                    f"signed in crypto suite {self.suite.describe()}, but the trusted key {self.source} is an "
                    f"{self.public.suite.sign_name} key (suite {self.public.suite.name}): not this host's key")
            trusted = fingerprint(self.public)
            if trusted != fingerprint(embedded):
                raise _bundle_problem(
                    f"signed by key {fingerprint(embedded)[:16]}… (host {obj.get('host')!r}), not by the "
                    f"trusted key {trusted[:16]}… (another host's key, or a re-signed bundle)")
        start = obj.get("start")
        if not (isinstance(start, dict) and isinstance(start.get("seq"), int)
                and isinstance(start.get("prev"), str)):
            raise _bundle_problem("the header does not say where the excerpt starts (bundle altered)")
        self.walker = ChainWalker(start["seq"], start["prev"], "the bundle's signed start", self.suite)

    def body_line(self, lineno: int, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        if kind == "record":
            seq, record = obj.get("seq"), obj.get("record")
            if not isinstance(seq, int) or not isinstance(obj.get("prev"), str) or \
                    not isinstance(obj.get("hash"), str):
                raise _bundle_problem(
                    f"line {lineno}: a record line without seq, prev and hash (bundle altered)")
            bad = self.walker.check(seq, obj["prev"], obj["hash"], canonical_bytes(record))
            if bad:
                raise _Refused(bad)
            if seq == self.through:
                self.at = (seq, obj["hash"])
        elif kind == "checkpoint":
            self._checkpoint(lineno, obj)
        else:
            raise _bundle_problem(f"line {lineno}: unexpected {kind!r} line (bundle altered)")

    def _checkpoint(self, lineno: int, obj: dict[str, Any]) -> None:
        assert self.public is not None
        seq = obj.get("seq")
        if not isinstance(seq, int) or seq != self.walker.expected_seq - 1 or self.walker.count == 0:
            raise _bundle_problem(f"line {lineno}: checkpoint at seq {seq} out of place (bundle altered)")
        fields = {k: obj.get(k) for k in ("seq", "hash", "time", "host")}
        bad = check_signed(self.public, "checkpoint", seq, str(obj.get("key")), str(obj.get("signature")),
                           "checkpoint", fields)
        if bad:
            raise _Refused(bad)
        if obj.get("hash") != self.walker.last_hash:
            raise _Refused(Problem(seq, f"does not match the signed checkpoint at seq {seq} "
                                        "(record modified)"))
        self.checkpoints += 1
        if self.at[0] and self.signed is None:
            t = obj.get("time")
            self.signed = (seq, float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0)
        if self.signed is not None and seq >= self.reach:
            self.checked = (seq, self.walker.last_hash)

    def manifest_line(self, obj: dict[str, Any]) -> None:
        assert self.public is not None
        fields = {k: v for k, v in obj.items() if k != "signature"}
        if not verify_signature(self.public, str(obj.get("signature")), "bundle", fields):
            raise _bundle_problem("the manifest's signature does not verify (manifest altered or forged)")
        if obj.get(self.suite.digest_field) != self.digest.hexdigest():
            raise _bundle_problem(
                f"content changed after signing: its {self.suite.hash_name} differs from the signed manifest")
        w = self.walker
        if obj.get("records") != w.count:
            raise _bundle_problem(f"holds {w.count} records, the signed manifest says {obj.get('records')} "
                                  "(records removed or added)")
        if obj.get("last_seq") != w.expected_seq - 1 or obj.get("head_hash") != w.last_hash:
            raise _bundle_problem(f"ends at record {w.expected_seq - 1}, the signed manifest says "
                                  f"{obj.get('last_seq')} (records removed from the end)")
        if obj.get("checkpoints") != self.checkpoints:
            raise _bundle_problem(f"holds {self.checkpoints} checkpoints, the signed manifest says "
                                  f"{obj.get('checkpoints')} (checkpoints removed)")
        self.manifest = obj


def verify_bundle(path: Path, pubkey: PublicKey | Path | None = None, through: int | None = None,
                  reach: int | None = None) -> BundleReport:
    """Check every line of the bundle at ``path``; the report names the first thing wrong.

    With ``through`` only the excerpt up to record ``through`` and the first
    signed checkpoint at or after it is checked (what a report of a period that
    ends there rests on); lines after that checkpoint are not read. With no
    checkpoint after it, the bundle's signed manifest must verify, so the whole
    bundle is checked. ``reach`` reads on to the first checkpoint at or after
    that later record (a report also needs the first records after its period).
    """
    c = _Checker(Path(path), pubkey)
    c.through = through
    c.reach = max(through or 0, reach or 0)
    problem: Problem | None = None
    try:
        for lineno, raw in _lines(c.path):
            if c.checked is not None:
                break  # the record asked for is signed: what follows is not part of what is vouched for
            if c.manifest is not None:
                raise _bundle_problem(f"line {lineno}: data after the signed manifest (bundle altered)")
            obj = _parse(lineno, raw)
            if lineno == 1:
                c.header_line(obj)
            elif obj.get("kind") == "manifest":
                c.manifest_line(obj)
                continue
            else:
                c.body_line(lineno, obj)
            c.digest.update(raw)
        if not c.header:
            raise _bundle_problem("empty file: not a DutyWatch evidence bundle")
        if c.manifest is None and c.checked is None:
            raise _bundle_problem("ends without its signed manifest (bundle truncated)")
        if through is not None and not c.at[0]:
            first = c.walker.expected_seq - c.walker.count
            raise _bundle_problem(f"record {through} is not in the bundle (it holds records "
                                  f"{first}..{c.walker.expected_seq - 1})")
    except _Refused as refused:
        problem = refused.problem
    w = c.walker
    period = c.header.get("period")
    signed = c.signed or (0, 0.0)
    checked = c.checked or (0, "")
    return BundleReport(str(path), str(c.header.get("host", "")), period if isinstance(period, dict) else {},
                        w.count, c.checkpoints, w.expected_seq - w.count, w.expected_seq - 1, w.last_hash,
                        fingerprint(c.public) if c.public else "", c.source, problem, c.suite.name,
                        c.at[0], c.at[1], signed[0], signed[1], checked[0], checked[1])
