"""国密: SM3 and SM2 against the standards' examples, and the journal's gm suite end to end."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_journal_support import HOST, T0, finding, lifecycle, run_cli, stepping_clock

from agent.config import load_config
from agent.crypto import sm2
from agent.crypto.suite import GM, INTL, load_public_pem, suite
from agent.errors import LoadErrors
from agent.journal.chain import GENESIS, canonical_bytes
from agent.journal.errors import JournalError
from agent.journal.store import Journal
from agent.journal.verify import verify_journal

# GB/T 32918.5-2017 Appendix A (also GM/T 0003.5-2012 A.2): signature on the recommended curve.
STD_X = "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
STD_Y = "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
STD_ID = b"1234567812345678"
STD_MSG = b"message digest"
STD_ZA = "B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3"
STD_E = "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640"
STD_R = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
STD_S = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
# SubjectPublicKeyInfo: id-ecPublicKey with the SM2 curve (1.2.156.10197.1.301), then the point.
SPKI_PREFIX = "3059301306072a8648ce3d020106082a811ccf5501822d034200"


def std_public_pem() -> bytes:
    der = bytes.fromhex(SPKI_PREFIX + "04" + STD_X + STD_Y)
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"


def std_signature() -> bytes:
    """r and s in DER; both have their top bit set, so each INTEGER takes a leading zero."""
    return bytes.fromhex("3046" + "022100" + STD_R + "022100" + STD_S)


# -- known answers --------------------------------------------------------------


@pytest.mark.parametrize(("message", "digest"), [
    pytest.param(b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0", id="abc"),
    pytest.param(b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732", id="abcd*16"),
])
def test_sm3_matches_gbt_32905_examples(message: bytes, digest: str) -> None:
    assert GM.digest(message) == digest
    h = GM.new_hash()  # fed in pieces, as the chain does
    for i in range(0, len(message), 7):
        h.update(message[i:i + 7])
    assert h.hexdigest() == digest


def test_sm2_verifies_the_gbt_32918_example_signature() -> None:
    key = sm2.load_public_pem(std_public_pem())
    assert key.public_point().hex().upper() == "04" + STD_X + STD_Y
    assert key.verify(std_signature(), STD_MSG, STD_ID)
    # a near miss each way: one letter of the message, the identifier, one bit of s
    assert not key.verify(std_signature(), b"message digesT", STD_ID)
    assert not key.verify(std_signature(), STD_MSG, b"ALICE123@YAHOO.COM")
    bad = bytearray(std_signature())
    bad[-1] ^= 1
    assert not key.verify(bytes(bad), STD_MSG, STD_ID)
    # the suite's key wrapper uses the default identifier, which is the standard's
    pub = load_public_pem(std_public_pem())
    assert pub.suite is GM and pub.verify(std_signature(), STD_MSG)


def test_sm2_z_value_matches_gbt_32918_example() -> None:
    point = bytes.fromhex("04" + STD_X + STD_Y)
    z = sm2.z_value(point, STD_ID)
    assert z.hex().upper() == STD_ZA
    assert hashlib.new("sm3", z + STD_MSG).hexdigest().upper() == STD_E
    assert sm2.z_value(point, b"another id") != z
    with pytest.raises(sm2.SM2Error):
        sm2.z_value(point[1:], STD_ID)


def test_sm2_keys_round_trip_and_sign() -> None:
    key = GM.generate_key()
    again = suite("gm").generate_key()
    msg = canonical_bytes({"sig": "dutywatch.checkpoint.v1", "seq": 1})
    sig = key.sign(msg)
    assert key.public().verify(sig, msg)
    assert not again.public().verify(sig, msg), "another key's public half must refuse it"
    assert not key.public().verify(sig, msg + b" ")
    reread = sm2.load_private_pem(key.private_pem())
    assert key.public().verify(reread.sign(msg), msg)
    # the fingerprint is SM3 over the DER SubjectPublicKeyInfo
    der = base64.b64decode("".join(key.public().pem().splitlines()[1:-1]))
    assert key.public().fingerprint == hashlib.new("sm3", der).hexdigest()


def test_a_key_says_its_suite() -> None:
    assert load_public_pem(INTL.generate_key().public().pem().encode()).suite is INTL
    assert load_public_pem(GM.generate_key().public().pem().encode()).suite is GM
    from agent.crypto.suite import SuiteError

    with pytest.raises(SuiteError, match="not an Ed25519 or SM2 public key"):
        load_public_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# -- the journal in gm --------------------------------------------------------


def test_gm_journal_chains_with_sm3_and_records_its_suite(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(), crypto="gm") as j:
        assert j.suite is GM
        j.append(lifecycle("agent.start"))
        j.append(finding(1))
    conn = sqlite3.connect(tmp_path / "s" / "journal.db")
    try:
        (crypto,) = conn.execute("SELECT value FROM meta WHERE key = 'crypto'").fetchone()
        rows = conn.execute("SELECT seq, prev, hash, body FROM records ORDER BY seq").fetchall()
        (cp_sig,) = conn.execute("SELECT signature FROM checkpoints").fetchone()
    finally:
        conn.close()
    assert crypto == "gm"
    prev = GENESIS
    for seq, link, digest, body in rows:
        want = hashlib.new("sm3", prev.encode() + f"|{seq}|".encode() + body.encode()).hexdigest()
        assert (link, digest) == (prev, want)
        assert digest != hashlib.sha256(prev.encode() + f"|{seq}|".encode() + body.encode()).hexdigest()
        prev = digest
    assert bytes.fromhex(cp_sig)[0] == 0x30, "an SM2 signature is DER, SEQUENCE {r, s}"
    r = verify_journal(tmp_path / "s" / "journal.db")
    assert r.ok and r.suite == "gm" and r.records == 2


@pytest.mark.parametrize(("first", "then"), [("intl", "gm"), ("gm", "intl")])
def test_changing_the_suite_of_an_existing_journal_is_refused(tmp_path: Path, first: str, then: str) -> None:
    state = tmp_path / "s"
    with Journal(state, host=HOST, clock=stepping_clock(), crypto=first) as j:
        j.append_many([finding(i) for i in range(3)])
    before = (state / "journal.db").read_bytes()
    with pytest.raises(JournalError) as exc:
        Journal(state, host=HOST, crypto=then)
    text = str(exc.value)
    assert f"used crypto suite {first} since its first record" in text and f"journal.crypto is now {then}" in text
    assert "never mixes suites" in text and "retention period" in text and "journal.key" in text
    assert (state / "journal.db").read_bytes() == before, "a refused open must not touch the journal"
    with Journal(state, host=HOST, clock=stepping_clock(), crypto=first) as j:  # the same suite still opens
        assert j.append(finding(3)) == 4
    assert verify_journal(state / "journal.db").ok
    # moving the journal aside is not enough: the key beside it belongs to the old suite
    (state / "journal.db").rename(tmp_path / "old-journal.db")
    with pytest.raises(JournalError, match=f"crypto suite {first}.*journal.crypto is {then}"):
        Journal(state, host=HOST, crypto=then)
    (state / "journal.key").rename(tmp_path / "old-journal.key")
    with Journal(state, host=HOST, clock=stepping_clock(), crypto=then) as j:
        assert j.append(finding(0)) == 1 and j.suite.name == then
    assert verify_journal(state / "journal.db").suite == then


def test_config_journal_crypto(tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text("host: null\n", encoding="utf-8")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {reg}\nrules: []\nstate_dir: s\n", encoding="utf-8")
    assert load_config(cfg).journal.crypto == "intl"
    cfg.write_text(f"registry: {reg}\nrules: []\nstate_dir: s\njournal:\n  crypto: gm\n", encoding="utf-8")
    assert load_config(cfg).journal.crypto == "gm"
    cfg.write_text(f"registry: {reg}\nrules: []\nstate_dir: s\njournal:\n  crypto: sm2\n", encoding="utf-8")
    with pytest.raises(LoadErrors) as exc:
        load_config(cfg)
    assert f"{cfg}:5:11: journal.crypto must be intl (SHA-256, Ed25519) or gm (SM3, SM2), not 'sm2'" in str(exc.value)


def test_pubkey_prints_an_sm2_key_and_its_sm3_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0), crypto="gm") as j:
        j.append(finding(0))
        fp = j.fingerprint
    status, pem, err = run_cli(["journal", "pubkey", "--state-dir", str(tmp_path / "s")], monkeypatch)
    assert status == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert "crypto suite: gm (SM3 hash chain, SM2 signatures, ID 1234567812345678)" in err
    assert f"fingerprint (SM3): {fp}" in err
    key = load_public_pem(pem.encode())
    assert key.suite is GM and key.fingerprint == fp


# -- OpenSSL's own command checks what DutyWatch signed ------------------------


def readme_openssl_commands(repo: Path, crypto: str) -> list[str]:
    """The README's commands for checking a checkpoint with OpenSSL, as a user would paste them."""
    text = (repo / "README.md").read_text(encoding="utf-8")
    section = text.split("### Checking a checkpoint with OpenSSL", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("openssl ")]
    assert len(lines) == 3 and "-pkeyopt distid:1234567812345678" in lines[0]
    if crypto == "intl":  # the README: "without the last two options", "openssl dgst -sha256"
        lines[0] = lines[0].replace(" -digest sm3 -pkeyopt distid:1234567812345678", "")
        lines[2] = lines[2].replace("-sm3", "-sha256")
    return lines


def run_sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def cp_journal(tmp_path: Path, crypto: str) -> Path:
    """A closed journal of 25 findings in suite ``crypto``, checkpointed every 10 (10, 20, 25)."""
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0), checkpoint_every=10, crypto=crypto) as j:
        for i in range(0, 25, 5):
            j.append_many([finding(k) for k in range(i, i + 5)])
    return tmp_path / "s"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (listed in .ci/debian-packages)")
def test_openssl_checks_an_exported_checkpoint(cp_journal: Path, tmp_path: Path, repo: Path, crypto: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cp"
    status, text, err = run_cli(["journal", "checkpoint", "--state-dir", str(cp_journal), "--seq", "20",
                                 "--out", str(out)], monkeypatch)
    assert status == 0, err
    assert f"crypto suite: {crypto} (" in text and "checkpoint: seq 20 " in text
    verify_cmd, fp_cmd, link_cmd = readme_openssl_commands(repo, crypto)
    printed = text.replace(f"{out}/", "")
    assert verify_cmd.replace("SEQ", "20") in printed and link_cmd.replace("SEQ", "20") in printed, \
        "the commands printed are the README's"
    r = run_sh(verify_cmd.replace("SEQ", "20"), out)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    # the signed head hash is OpenSSL's SM3 (SHA-256) of the record's hash input
    signed = json.loads((out / "checkpoint-20.msg").read_bytes())
    r = run_sh(link_cmd.replace("SEQ", "20"), out)
    assert r.returncode == 0 and r.stdout.split()[-1] == signed["hash"], r.stdout + r.stderr
    fp = run_sh(fp_cmd, out)
    if crypto == "gm":  # the SM2 key's fingerprint is SM3 over its DER form, as the README says
        assert fp.returncode == 0 and fp.stdout.split()[-1] == verify_journal(cp_journal / "journal.db").fingerprint
    # the near misses: the message of checkpoint 20 with checkpoint 10's signature; a changed time
    run_cli(["journal", "checkpoint", "--state-dir", str(cp_journal), "--seq", "10", "--out", str(out)], monkeypatch)
    (out / "checkpoint-20.sig").write_bytes((out / "checkpoint-10.sig").read_bytes())
    r = run_sh(verify_cmd.replace("SEQ", "20"), out)
    assert r.returncode != 0 and "Signature Verification Failure" in r.stdout + r.stderr
    msg = out / "checkpoint-10.msg"
    msg.write_bytes(msg.read_bytes().replace(b'"time":', b'"time":1', 1))
    r = run_sh(verify_cmd.replace("SEQ", "10"), out)
    assert r.returncode != 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (listed in .ci/debian-packages)")
def test_openssl_checks_a_checkpoint_from_a_bundle(cp_journal: Path, tmp_path: Path, repo: Path, crypto: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, out = tmp_path / "evidence.jsonl", tmp_path / "cp"
    status, _, err = run_cli(["export", "--state-dir", str(cp_journal), "--out", str(bundle)], monkeypatch)
    assert status == 0, err
    status, text, err = run_cli(["journal", "checkpoint", "--bundle", str(bundle), "--out", str(out)],
                                monkeypatch)
    assert status == 0 and "checkpoint: seq 25 " in text, err
    verify_cmd, _, link_cmd = readme_openssl_commands(repo, crypto)
    r = run_sh(verify_cmd.replace("SEQ", "25"), out)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    r = run_sh(link_cmd.replace("SEQ", "25"), out)
    assert r.returncode == 0 and r.stdout.split()[-1] == json.loads((out / "checkpoint-25.msg").read_bytes())["hash"]
    # a bundle whose checkpoint was forged: DutyWatch says so, and so does OpenSSL
    bundle.write_bytes(bundle.read_bytes().replace(b'"kind":"checkpoint","seq":25', b'"kind":"checkpoint","seq":24'))
    status, _, err = run_cli(["journal", "checkpoint", "--bundle", str(bundle), "--out", str(out)], monkeypatch)
    assert status == 1 and "does not verify" in err
    r = run_sh(verify_cmd.replace("SEQ", "24"), out)
    assert r.returncode != 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (listed in .ci/debian-packages)")
def test_openssl_agrees_on_the_gbt_32918_example(tmp_path: Path) -> None:
    """The standard's signature checks in OpenSSL both ways: on the message with the ID, and on e = SM3(Z || M)."""
    (tmp_path / "std.pem").write_bytes(std_public_pem())
    (tmp_path / "std.sig").write_bytes(std_signature())
    (tmp_path / "msg").write_bytes(STD_MSG)
    e = hashlib.new("sm3", sm2.z_value(bytes.fromhex("04" + STD_X + STD_Y)) + STD_MSG).digest()
    (tmp_path / "e.bin").write_bytes(e)
    r = run_sh("openssl pkeyutl -verify -pubin -inkey std.pem -rawin -in msg -sigfile std.sig -digest sm3 "
               "-pkeyopt distid:1234567812345678", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_sh("openssl pkeyutl -verify -pubin -inkey std.pem -in e.bin -sigfile std.sig", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_sh("openssl pkeyutl -verify -pubin -inkey std.pem -rawin -in msg -sigfile std.sig -digest sm3", tmp_path)
    assert r.returncode != 0, "without the identifier OpenSSL uses an empty one, which must not verify"


def test_gm_without_sm2_in_libcrypto_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: a host whose OpenSSL lacks SM2 is told at config time, never silently given intl."""
    reg = tmp_path / "registry.yaml"
    reg.write_text("host: null\n", encoding="utf-8")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {reg}\nrules: []\nstate_dir: s\njournal: {{crypto: gm}}\n", encoding="utf-8")
    monkeypatch.setattr(sm2, "_lib", None)
    monkeypatch.setattr(sm2, "_libcrypto_path", lambda: str(tmp_path / "libcrypto-without-sm2.so"))
    with pytest.raises(LoadErrors) as exc:
        load_config(cfg)
    assert f"{cfg}:4:19: journal.crypto gm cannot be used on this host" in str(exc.value)
    assert "OpenSSL 3's libcrypto" in str(exc.value)
    with pytest.raises(JournalError, match=r"journal\.crypto"):
        Journal(tmp_path / "s", host=HOST, crypto="gm")
    assert not (tmp_path / "s" / "journal.key").exists(), "no key of another suite may be made instead"
