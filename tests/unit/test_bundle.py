"""Evidence bundles: exported, verified offline, and refused when anything was changed, in both suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_journal_support import HOST, T0, finding, lifecycle, run_cli, stepping_clock

from agent.crypto.suite import suite
from agent.journal.bundle import export_bundle
from agent.journal.bundlecheck import verify_bundle
from agent.journal.errors import BundleError
from agent.journal.signing import Signer, load_private_key, public_pem
from agent.journal.store import Journal

DAY = 86400.0


@pytest.fixture
def state(tmp_path: Path, crypto: str) -> Path:
    """Ten days of findings, one an hour, checkpointed every 50, in suite ``crypto``."""
    s = tmp_path / "state"
    with Journal(s, host=HOST, clock=stepping_clock(T0), checkpoint_every=50, crypto=crypto) as j:
        j.append(lifecycle("agent.start"))
        for start in range(0, 240, 10):
            j.append_many([finding(i, t=T0 + i * 3600) for i in range(start, start + 10)])
    return s


def _export(state: Path, out: Path, since: float | None = None, until: float | None = None) -> Path:
    export_bundle(state / "journal.db", state / "journal.key", out, since=since, until=until,
                  period={"since": since, "until": until}, clock=lambda: T0 + 11 * DAY)
    return out


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def _pem(state: Path, tmp_path: Path) -> Path:
    (tmp_path / "host.pem").write_text(load_private_key(state / "journal.key").public().pem())
    return tmp_path / "host.pem"


def test_period_export_verifies(state: Path, tmp_path: Path, crypto: str) -> None:
    out = _export(state, tmp_path / "b.jsonl", since=T0 + 2 * DAY, until=T0 + 3 * DAY)
    r = verify_bundle(out, _pem(state, tmp_path))
    assert r.ok, r.problem
    assert r.suite == crypto
    header, manifest = json.loads(_lines(out)[0]), json.loads(_lines(out)[-1])
    assert header["crypto"] == crypto
    field = suite(crypto).digest_field  # sha256 or sm3: the manifest names its hash
    assert manifest[field] == suite(crypto).digest(b"".join(_lines(out)[:-1]))
    assert (r.first_seq, r.last_seq, r.records) == (50, 74, 25)  # hours 48..72 are seqs 50..74
    assert r.checkpoints == 1 and r.host == HOST
    assert (out.stat().st_mode & 0o777) == 0o600


def test_changed_byte_is_refused(state: Path, tmp_path: Path) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    lines = _lines(out)
    lines[20] = lines[20].replace("张三".encode(), "李四".encode(), 1)
    out.write_bytes(b"".join(lines))
    r = verify_bundle(out)
    assert r.problem is not None and str(r.problem).startswith("record 20:")
    assert "modified" in r.problem.what


def test_changed_header_is_refused(state: Path, tmp_path: Path, crypto: str) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    data = out.read_bytes()
    out.write_bytes(data.replace(b'"created":', b'"created":1', 1))
    r = verify_bundle(out)
    assert r.problem is not None and suite(crypto).hash_name in r.problem.what


def test_changed_suite_in_the_header_is_refused(state: Path, tmp_path: Path, crypto: str) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    other = "gm" if crypto == "intl" else "intl"
    out.write_bytes(out.read_bytes().replace(f'"crypto":"{crypto}"'.encode(), f'"crypto":"{other}"'.encode(), 1))
    r = verify_bundle(out)
    assert r.problem is not None and "bundle altered" in r.problem.what


def test_every_single_byte_flip_is_refused(state: Path, tmp_path: Path) -> None:
    out = _export(state, tmp_path / "b.jsonl", since=T0, until=T0 + 3 * 3600)
    data = out.read_bytes()
    step = max(1, len(data) // 150)  # a spread of positions, bounded in number
    for pos in range(0, len(data), step):
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        out.write_bytes(bytes(flipped))
        assert not verify_bundle(out).ok, f"byte {pos} changed unnoticed"


def test_removed_record_is_refused(state: Path, tmp_path: Path) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    lines = _lines(out)
    gone = next(i for i, ln in enumerate(lines) if b'"seq":30}' in ln and b'"kind":"record"' in ln)
    del lines[gone]
    out.write_bytes(b"".join(lines))
    r = verify_bundle(out)
    assert r.problem is not None and r.problem.seq == 30 and "missing" in r.problem.what


def test_removed_last_record_is_refused(state: Path, tmp_path: Path) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    lines = _lines(out)
    del lines[-2]  # the last record before the manifest
    out.write_bytes(b"".join(lines))
    r = verify_bundle(out)
    assert r.problem is not None and "manifest" in r.problem.what


def test_truncated_bundle_is_refused(state: Path, tmp_path: Path) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    out.write_bytes(b"".join(_lines(out)[:-1]))
    r = verify_bundle(out)
    assert r.problem is not None and "truncated" in r.problem.what


def test_another_hosts_key_is_refused(state: Path, tmp_path: Path, crypto: str) -> None:
    out = _export(state, tmp_path / "b.jsonl")
    other = tmp_path / "other-host.pem"
    other.write_text(public_pem(suite(crypto).generate_key().public()))
    r = verify_bundle(out, other)
    assert r.problem is not None and "not by the trusted key" in r.problem.what
    other.write_text(public_pem(suite("gm" if crypto == "intl" else "intl").generate_key().public()))
    r = verify_bundle(out, other)
    assert r.problem is not None and "not this host's key" in r.problem.what


def test_resigned_bundle_is_refused_by_its_checkpoints(state: Path, tmp_path: Path, crypto: str) -> None:
    """A forger swaps in their own key and re-signs the manifest: the journal's checkpoints give it away."""
    out = _export(state, tmp_path / "b.jsonl")
    forger = Signer(suite(crypto).generate_key())
    lines = _lines(out)
    header = json.loads(lines[0])
    header.update(public_key=public_pem(forger.public), fingerprint=forger.fingerprint)
    from agent.journal.chain import canonical_bytes

    lines[0] = canonical_bytes(header) + b"\n"
    manifest = json.loads(lines[-1])
    del manifest["signature"]
    manifest[suite(crypto).digest_field] = suite(crypto).digest(b"".join(lines[:-1]))
    lines[-1] = canonical_bytes({**manifest, "signature": forger.sign("bundle", manifest)}) + b"\n"
    out.write_bytes(b"".join(lines))
    r = verify_bundle(out)
    assert r.problem is not None and r.problem.subject == "checkpoint"


def test_empty_period_is_an_error(state: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no records"):
        _export(state, tmp_path / "b.jsonl", since=T0 + 100 * DAY)
    assert not (tmp_path / "b.jsonl").exists()


def test_export_and_verify_commands(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    crypto: str) -> None:
    out = tmp_path / "evidence.jsonl"
    status, text, err = run_cli(["export", "--state-dir", str(state), "--since", "2024-05-03T00:00:00Z",
                                 "--until", "2024-05-04T00:00:00Z", "--out", str(out)], monkeypatch)
    assert status == 0, err
    assert "records 50..74 (25)" in text
    pem = _pem(state, tmp_path)
    status, text, err = run_cli(["verify", "--bundle", str(out), "--pubkey", str(pem)], monkeypatch)
    assert status == 0, err
    assert f"host: {HOST}" in text and "records: 50..74 (25)" in text
    assert f"crypto suite: {suite(crypto).describe()}" in text
    out.write_bytes(out.read_bytes().replace(b'"severity":"critical"', b'"severity":"low"', 1))
    status, _, err = run_cli(["verify", "--bundle", str(out), "--pubkey", str(pem)], monkeypatch)
    assert status == 1 and "FAILED bundle" in err and "record 50:" in err
