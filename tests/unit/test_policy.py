"""Signed policy bundles: the chain root -> unit key -> bundle, scope, versions, and what a host takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load_config
from agent.crypto.suite import PrivateKey, suite
from agent.daemon.agent import load_parts
from agent.errors import LoadError, LoadErrors
from agent.policy import central
from agent.policy.bundle import PolicyError, PolicyFile, build, certify, sign, verify
from agent.policy.store import Judge, in_force
from tests.central_rule import central_rule

UNIT_A = "甲单位信息中心"
UNIT_B = "乙单位信息中心"

CENTRAL = f"""\
hosts:
  - {{id: host-a1, unit: {UNIT_A}, department: 测试委员会, custodian: zhangsan, level: secret, zone: intranet}}
  - {{id: host-b1, unit: {UNIT_B}, department: 测试委员会, custodian: lisi, level: internal, zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: {UNIT_A}, department: 测试委员会}}, {{name: {UNIT_B}, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: {UNIT_A}, clearance: secret}}
  - {{account: lisi, uid: 1001, name: 李四, unit: {UNIT_B}, clearance: internal}}
zones:
  default: internet
  networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]
"""

RULE = central_rule("CT-001")

LOCAL_REGISTRY = f"""\
host: {{id: host-a1, unit: {UNIT_A}, department: 测试委员会, custodian: zhangsan, level: secret, zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: {UNIT_A}, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: {UNIT_A}, clearance: secret}}
zones:
  default: internet
  networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]
"""


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    ed = suite("intl")
    return {"root": ed.generate_key(), "other_root": ed.generate_key(), "unit_a": ed.generate_key(),
            "gm": suite("gm").generate_key()}


def files(rule: str = RULE, registry: str | None = CENTRAL, dropin: str | None = None) -> list[PolicyFile]:
    out = [PolicyFile("rules", "rules/central.yaml", rule)]
    if registry is not None:
        out.append(PolicyFile("registry", "registry.yaml", registry))
    if dropin is not None:
        out.append(PolicyFile("config", "agent.d/50-central.yaml", dropin))
    return out


def cert_a(keys: dict[str, PrivateKey], **kw: object) -> bytes:
    return certify(keys["root"], keys["unit_a"].public(), [UNIT_A], name=f"{UNIT_A}密钥", **kw)  # type: ignore[arg-type]


def test_a_root_signed_bundle_verifies_and_names_its_signer(keys: dict[str, PrivateKey]) -> None:
    data = sign(build(3, ["*"], files()), keys["root"])
    v = verify(data, [keys["root"].public()])
    assert (v.version, v.scope, v.signer, v.signer_units) == (3, ("*",), "root", None)
    assert v.covers(UNIT_B) and v.covers(None)
    assert [f.path for f in v.files] == ["registry.yaml", "rules/central.yaml"]


def test_a_unit_key_signs_for_its_own_units_only(keys: dict[str, PrivateKey]) -> None:
    roots = [keys["root"].public()]
    own = sign(build(4, [UNIT_A], files()), keys["unit_a"], cert_a(keys))
    v = verify(own, roots)
    assert v.signer == f"{UNIT_A}密钥" and v.signer_units == (UNIT_A,)
    assert v.covers(UNIT_A) and not v.covers(UNIT_B)
    for scope in ([UNIT_B], [UNIT_A, UNIT_B], ["*"]):
        reach = sign(build(4, scope, files()), keys["unit_a"], cert_a(keys))
        with pytest.raises(PolicyError) as exc:
            verify(reach, roots)
        assert exc.value.reason == "scope"


def test_forgeries_are_refused_with_their_reason(keys: dict[str, PrivateKey]) -> None:
    roots = [keys["root"].public()]
    good = sign(build(5, [UNIT_A], files()), keys["unit_a"], cert_a(keys))
    # A rule changed after signing.
    doc = json.loads(good)
    doc["policy"]["files"][1]["text"] = RULE.replace("forbidden-tool", "something-else")
    # The scope widened after signing (the certificate still says unit A only).
    wider = json.loads(good)
    wider["policy"]["scope"] = [UNIT_A, UNIT_B]
    # A certificate for unit B forged by re-writing the units of A's certificate.
    forged_cert = json.loads(good)
    forged_cert["signature"]["cert"]["units"] = [UNIT_A, UNIT_B]
    # A self-made root: a key certified by a root no host trusts.
    stranger = certify(keys["other_root"], keys["unit_a"].public(), [UNIT_A], name="stranger")
    cases = {
        "edited": (json.dumps(doc).encode(), "signature"),
        "widened": (json.dumps(wider).encode(), "signature"),
        "forged certificate": (json.dumps(forged_cert).encode(), "signature"),
        "untrusted issuer": (sign(build(5, [UNIT_A], files()), keys["unit_a"], stranger), "signature"),
        "no certificate": (sign(build(5, [UNIT_A], files()), keys["unit_a"]), "signature"),
        "unsigned": (build(5, [UNIT_A], files()), "signature"),
        "not a bundle": (b'{"format": "something"}', "content"),
        "expired": (sign(build(5, [UNIT_A], files()), keys["unit_a"], cert_a(keys, until=1.0)), "signature"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(PolicyError) as exc:
            verify(data, roots)
        assert exc.value.reason == reason, (name, str(exc.value))


def test_a_chain_never_mixes_suites(keys: dict[str, PrivateKey]) -> None:
    with pytest.raises(PolicyError, match="never mixes"):
        certify(keys["root"], keys["gm"].public(), [UNIT_A], name="sm2 unit key")
    gm_root = keys["gm"]
    v = verify(sign(build(1, ["*"], files()), gm_root), [gm_root.public()])
    assert v.signer == "root" and v.signer_fingerprint == gm_root.public().fingerprint


def test_file_paths_cannot_leave_the_policy_folder(keys: dict[str, PrivateKey]) -> None:
    for role, path in (("rules", "rules/../../etc/cron.d/x.yaml"), ("config", "agent.d/sub/x.yaml"),
                       ("registry", "other.yaml"), ("rules", "/etc/passwd")):
        doc = json.loads(build(1, ["*"], files()))
        doc["policy"]["files"].append({"role": role, "path": path, "text": "x: 1"})
        data = sign(json.dumps(doc).encode(), keys["root"])
        with pytest.raises(PolicyError) as exc:
            verify(data, [keys["root"].public()])
        assert exc.value.reason == "content", path


def test_the_central_registry_gives_each_host_its_own_entry() -> None:
    assert central.check(CENTRAL, "central.yaml") == ["host-a1", "host-b1"]
    text, reg = central.host_registry(CENTRAL, "central.yaml", "host-b1") or ("", None)
    assert reg is not None and reg.host.unit == UNIT_B and reg.host.custodian == "lisi"
    assert "host-b1" in text
    assert central.host_registry(CENTRAL, "central.yaml", "host-zz") is None
    bad = CENTRAL.replace("custodian: lisi, level: internal", "custodian: lisi, level: ultra")
    with pytest.raises(LoadErrors) as exc:
        central.check(bad, "central.yaml")
    assert "central.yaml:3:" in str(exc.value)


# -- a host judging bundles ------------------------------------------------------------------------

def host(tmp_path: Path, keys: dict[str, PrivateKey], registry: str = LOCAL_REGISTRY) -> tuple[Path, Judge]:
    (tmp_path / "root.pub").write_text(keys["root"].public().pem())
    (tmp_path / "registry.yaml").write_text(registry, encoding="utf-8")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {tmp_path}/registry.yaml\nrules: []\nstate_dir: {tmp_path}/state\n"
                   f"assess: {{enabled: false}}\npolicy: {{source: 'dir:{tmp_path}/inbox', keys: [root.pub]}}\n",
                   encoding="utf-8")
    (tmp_path / "state").mkdir()
    config = load_config(cfg)

    def trial(c: object) -> None:
        load_parts(c)  # type: ignore[arg-type]
    return cfg, Judge(cfg, config, current_unit=lambda: UNIT_A, trial=trial)


def test_a_host_takes_a_newer_bundle_and_never_goes_back(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    cfg, judge = host(tmp_path, keys)
    v5 = sign(build(5, [UNIT_A], files()), keys["unit_a"], cert_a(keys))
    d = judge.offer(v5)
    assert d.accepted, d
    config, overlay = in_force(cfg, load_config(cfg))
    assert overlay is not None and overlay.verified.version == 5
    loaded = load_parts(config)
    assert "CT-001" in {r.id for r in loaded.stage.engine.ruleset.rules}
    assert loaded.registry.host.id == "host-a1" and loaded.registry.host.unit == UNIT_A
    assert judge.offer(v5).reason == "same"
    older = sign(build(4, [UNIT_A], files()), keys["root"])
    d = judge.offer(older)
    assert (d.accepted, d.reason) == (False, "version")
    # Removing the bundle in force does not open the way back: the highest version is kept apart.
    (tmp_path / "state" / "policy" / "current.json").unlink()
    assert judge.offer(older).reason == "version"
    assert judge.offer(sign(build(6, ["*"], files()), keys["root"])).accepted


def test_a_unit_key_cannot_move_a_host_into_its_units(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    # Host b1 belongs to unit B. Unit A's key lists it under unit A in its central registry.
    local_b = LOCAL_REGISTRY.replace("id: host-a1", "id: host-b1")
    _, judge = host(tmp_path, keys, local_b)
    judge.current_unit = lambda: UNIT_B
    grab = CENTRAL.replace(f"id: host-b1, unit: {UNIT_B}", f"id: host-b1, unit: {UNIT_A}")
    d = judge.offer(sign(build(2, [UNIT_A], files(registry=grab)), keys["unit_a"], cert_a(keys)))
    assert (d.accepted, d.reason) == (False, "scope"), d
    assert UNIT_B in d.detail
    # The province root may move it.
    assert judge.offer(sign(build(2, [UNIT_A], files(registry=grab)), keys["root"])).accepted


def test_a_bundle_that_would_not_load_is_refused_and_the_policy_in_force_stays(
        tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    cfg, judge = host(tmp_path, keys)
    assert judge.offer(sign(build(1, ["*"], files()), keys["root"])).accepted
    broken = RULE.replace('process.name == "forbidden-tool"', 'process.name === "x"')
    d = judge.offer(sign(build(2, ["*"], files(rule=broken)), keys["root"]))
    assert (d.accepted, d.reason) == (False, "content")
    assert "rules/central.yaml:" in d.detail
    steal = judge.offer(sign(build(3, ["*"], files(dropin=f"state_dir: {tmp_path}/elsewhere\n")), keys["root"]))
    assert (steal.accepted, steal.reason) == (False, "content") and "state_dir" in steal.detail
    no_entry = judge.offer(sign(build(4, ["*"], files(registry=CENTRAL.replace("host-a1", "host-a2"))),
                                keys["root"]))
    assert (no_entry.accepted, no_entry.reason) == (False, "scope")
    _, overlay = in_force(cfg, load_config(cfg))
    assert overlay is not None and overlay.verified.version == 1


def test_a_bundle_in_force_edited_on_disk_fails_the_load(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    cfg, judge = host(tmp_path, keys)
    assert judge.offer(sign(build(1, ["*"], files()), keys["root"])).accepted
    cur = tmp_path / "state" / "policy" / "current.json"
    cur.write_text(cur.read_text().replace("forbidden-tool", "harmless"))
    with pytest.raises(LoadError, match="does not hold"):
        in_force(cfg, load_config(cfg))
    # The files written from the bundle are written anew at every load: an edit there does not last.
    cur.write_bytes(sign(build(1, ["*"], files()), keys["root"]))
    (tmp_path / "state" / "policy" / "highest").write_text("1\n")
    in_force(cfg, load_config(cfg))
    active = tmp_path / "state" / "policy" / "active" / "rules" / "central.yaml"
    active.write_text(active.read_text().replace("forbidden-tool", "harmless"))
    in_force(cfg, load_config(cfg))
    assert "forbidden-tool" in active.read_text()


def test_a_policy_drop_in_is_merged_after_the_hosts_own(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    cfg, judge = host(tmp_path, keys)
    (tmp_path / "agent.d").mkdir()
    (tmp_path / "agent.d" / "10-local.yaml").write_text("queue_size: 1000\n")
    assert judge.offer(sign(build(1, ["*"], files(dropin="queue_size: 4096\n")), keys["root"])).accepted
    config, _ = in_force(cfg, load_config(cfg))
    assert config.queue_size == 4096
    assert config.state_dir == tmp_path / "state"
