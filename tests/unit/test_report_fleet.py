"""Fleet reports: bundles from many hosts, each verified first; bad ones named and left out."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.journal.bundle import export_bundle
from agent.journal.signing import load_private_key
from tests.unit.test_report_support import T0, build_journal, registry_variant, run_cli, shipped_ruleset

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text(encoding="utf-8"))
HOSTS = (("js-fgw-0042", "省发改委信息中心", "省发展和改革委员会"),
         ("js-dsj-0007", "省政务云运维中心", "省大数据管理局"),
         ("js-gat-0101", "省公安厅网安总队", "省公安厅"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three hosts with their own registries: bundles, trusted keys, finding counts; the last host's journal is gm."""
    tmp = tmp_path_factory.mktemp("fleet")
    keys = tmp / "keys"
    keys.mkdir()
    ruleset = shipped_ruleset()
    out: dict[str, Any] = {"keys": keys, "bundles": {}, "counts": {}, "tmp": tmp}
    for host, unit, dept in HOSTS:
        state = tmp / host
        crypto = "gm" if host == HOSTS[-1][0] else "intl"
        n = build_journal(state, ruleset, registry=registry_variant(tmp, host, unit, dept), host=host, crypto=crypto)
        (keys / f"{host}.pem").write_text(load_private_key(state / "journal.key").public().pem())
        b = tmp / f"{host}.bundle"
        export_bundle(state / "journal.db", state / "journal.key", b, since=None, until=None,
                      period={"since": None, "until": None}, clock=lambda: T0 + 30 * 86400)
        out["bundles"][host] = b
        out["counts"][host] = n
    return out


def _fleet_json(tmp: Path, bundles: list[Path], *extra: str) -> tuple[int, dict[str, Any], str]:
    out = tmp / "fleet.json"
    status, _, err = run_cli(["report", "--format", "json", "--lang", "zh", "--out", str(out),
                              "--evidence", *map(str, bundles), *extra])
    doc = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    return status, doc, err


def test_three_registries_grouped_by_department_and_unit(fleet: dict[str, Any], tmp_path: Path) -> None:
    status, doc, err = _fleet_json(tmp_path, list(fleet["bundles"].values()), "--keys", str(fleet["keys"]))
    assert status == 0, err
    assert doc["fleet"] is True and doc["refused"] == []
    assert len(doc["integrity"]) == 3 and all(i["ok"] for i in doc["integrity"])
    assert {i["host"]: i["suite"] for i in doc["integrity"]} == {
        h: "gm" if h == HOSTS[-1][0] else "intl" for h, _, _ in HOSTS}  # each bundle in its own suite
    assert all(i["key_source"].endswith(".pem") for i in doc["integrity"])
    groups = {(g["department"], g["unit"]): g for g in doc["summary"]["by_unit"]}
    for host, unit, dept in HOSTS:
        g = groups[(dept, unit)]
        assert g["hosts"] == [host], (dept, unit, g["hosts"])
    assert doc["summary"]["findings"]["total"] == sum(fleet["counts"].values())
    assert sorted(doc["summary"]["hosts"]) == sorted(h for h, _, _ in HOSTS)
    units = {(u["department"], u["unit"]) for u in doc["accountability"]["units"]}
    assert {(d, u) for _, u, d in HOSTS} <= units


def test_clean_bundle_report_in_html(fleet: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "one.html"
    b = fleet["bundles"]["js-dsj-0007"]
    status, _, err = run_cli(["report", "--format", "html", "--out", str(out), "--evidence", str(b)])
    assert status == 0, err
    html = out.read_text(encoding="utf-8")
    assert "省大数据管理局" in html and "验证通过" in html
    # vouched for through the period's last record (here the bundle's last one, the period being open)
    assert re.search(rf"dutywatch verify --bundle {re.escape(str(b))} --through \d+ --pubkey HOST-PUBKEY.pem", html)


def test_gm_bundle_report_names_its_suite(fleet: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "gm.html"
    b = fleet["bundles"][HOSTS[-1][0]]
    status, _, err = run_cli(["report", "--format", "html", "--lang", "zh", "--out", str(out), "--evidence", str(b),
                              "--keys", str(fleet["keys"])])
    assert status == 0, err
    html = out.read_text(encoding="utf-8")
    assert "验证通过" in html and "gm（国密）：SM3 哈希链，SM2 签名" in html
    # the records are re-hashed with SM3 as they are read: a change after the check is still caught
    from agent.report.errors import ReportError
    from agent.report.sources import Period, bundle_records

    copy = _copy(b, tmp_path / "changed.bundle",
                 lambda lines: [*lines[:5], lines[5].replace(b"js-", b"JS-", 1), *lines[6:]])
    with pytest.raises(ReportError, match="changed after it was verified"):
        list(bundle_records(copy, Period(None, None)))
    assert len(list(bundle_records(b, Period(None, None)))) > 0


def _copy(src: Path, dst: Path, edit: Any) -> Path:
    lines = src.read_bytes().splitlines(keepends=True)
    dst.write_bytes(b"".join(edit(lines)))
    return dst


def _changed_byte(lines: list[bytes]) -> list[bytes]:
    lines[5] = lines[5].replace(b'"severity":"', b'"severity":"x', 1) if b'"severity":"' in lines[5] \
        else lines[5].replace(b"js-", b"JS-", 1)
    return lines


def _removed_record(lines: list[bytes]) -> list[bytes]:
    i = next(k for k, raw in enumerate(lines) if k > 3 and b'"kind":"record"' in raw)
    return lines[:i] + lines[i + 1:]


@pytest.mark.parametrize(("edit", "why"), [(_changed_byte, "modified"), (_removed_record, "missing")])
def test_bad_bundle_named_and_left_out(fleet: dict[str, Any], tmp_path: Path, edit: Any, why: str) -> None:
    good = fleet["bundles"]["js-fgw-0042"]
    bad = _copy(fleet["bundles"]["js-dsj-0007"], tmp_path / "bad.bundle", edit)
    status, doc, err = _fleet_json(tmp_path, [good, bad])
    assert status == 1
    assert f"REFUSED bundle {bad}" in err and why in err
    (refused,) = doc["refused"]
    assert refused["path"] == str(bad) and why in refused["problem"] and not refused["ok"]
    assert [i["path"] for i in doc["integrity"]] == [str(good)]
    # Nothing of the refused bundle was merged.
    assert doc["summary"]["hosts"] == ["js-fgw-0042"]
    assert "省大数据管理局" not in {g["department"] for g in doc["summary"]["by_unit"]}
    assert doc["summary"]["findings"]["total"] == fleet["counts"]["js-fgw-0042"]


def test_bundle_signed_by_another_hosts_key_refused(fleet: dict[str, Any], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for host, _, _ in HOSTS:
        (keys / f"{host}.pem").write_text((fleet["keys"] / f"{host}.pem").read_text())
    # The trusted key on file for js-dsj-0007 is really js-fgw-0042's: its bundle must not pass.
    (keys / "js-dsj-0007.pem").write_text((fleet["keys"] / "js-fgw-0042.pem").read_text())
    bundles = list(fleet["bundles"].values())
    status, doc, err = _fleet_json(tmp_path, bundles, "--keys", str(keys))
    assert status == 1 and "REFUSED bundle" in err
    (refused,) = doc["refused"]
    assert refused["host"] == "js-dsj-0007" and "not by the trusted key" in refused["problem"]
    assert "another host's key" in refused["problem"]
    assert len(doc["integrity"]) == 2
    # js-gat-0101's journal is gm: an Ed25519 key on file for it is refused as well, naming the suites
    (keys / "js-dsj-0007.pem").write_text((fleet["keys"] / "js-dsj-0007.pem").read_text())
    (keys / "js-gat-0101.pem").write_text((fleet["keys"] / "js-dsj-0007.pem").read_text())
    status, doc, err = _fleet_json(tmp_path, bundles, "--keys", str(keys))
    (refused,) = doc["refused"]
    assert status == 1 and refused["host"] == "js-gat-0101"
    assert "suite gm" in refused["problem"] and "Ed25519 key" in refused["problem"]


def test_bundle_without_trusted_key_refused(fleet: dict[str, Any], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    status, doc, err = _fleet_json(tmp_path, [fleet["bundles"]["js-fgw-0042"]], "--keys", str(keys))
    assert status == 1 and "no trusted key for host 'js-fgw-0042'" in err
    assert doc["integrity"] == [] and doc["summary"]["records"] == 0


def _records_of(bundle: Path) -> list[dict[str, Any]]:
    return [o for o in map(json.loads, bundle.read_bytes().splitlines()) if o.get("kind") == "record"]


def test_a_bundle_beyond_the_period_is_vouched_for_through_its_last_record(fleet: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    """A bundle that runs past the period is checked up to the period's last record and the checkpoint signing
    it, not as a whole: damage after that does not refuse the period's evidence, and the report says what it
    vouches for; the printed command repeats exactly that check."""
    b = fleet["bundles"]["js-fgw-0042"]
    recs = _records_of(b)
    lines = b.read_bytes().splitlines(keepends=True)
    cps = [json.loads(x)["seq"] for x in lines if b'"kind":"checkpoint"' in x]
    # the period ends at a record well before the bundle's end, with a checkpoint between it and the end
    mid = next(r for r in recs if r["seq"] < cps[-2] and r["seq"] >= len(recs) // 2)
    until = mid["record"]["time"]
    in_period = [r["seq"] for r in recs if r["record"]["time"] <= until]
    last = max(in_period)
    signer = min(c for c in cps if c >= last)
    # damage a record after that checkpoint: the whole bundle no longer verifies
    damaged = _copy(b, tmp_path / "damaged.bundle", lambda ls: [
        *ls[:-3], ls[-3].replace(b'"host":"js-', b'"host":"JS-', 1), *ls[-2:]])
    status, _, err = run_cli(["verify", "--bundle", str(damaged)])
    assert status == 1 and "FAILED" in err
    period = ["--until", dt.datetime.fromtimestamp(until, dt.UTC).isoformat()]
    status, doc, err = _fleet_json(tmp_path, [damaged], "--keys", str(fleet["keys"]), *period)
    assert status == 0, err
    assert doc["refused"] == []
    (i,) = doc["integrity"]
    assert i["ok"] and i["through_seq"] == last and i["signed_seq"] == signer and i["extends_to"] == recs[-1]["seq"]
    assert i["command"] == (f"dutywatch verify --bundle {damaged} --through {last} --pubkey "
                            f"{fleet['keys'] / 'js-fgw-0042.pem'}")
    assert f"holds records to {recs[-1]['seq']}, beyond the period" in err
    assert doc["summary"]["last_seq"] == last  # the period's records, and nothing after them
    # the printed command checks exactly that, and prints the same hash
    status, out, err = run_cli(i["command"].split()[1:])
    assert status == 0, err
    assert f"chain hash at seq {last}: {i['through_hash']}" in out and f"the checkpoint at seq {signer}" in out
    status, _, err = run_cli(["verify", "--bundle", str(b), "--through", str(recs[-1]["seq"] + 5)])
    assert status == 1 and f"record {recs[-1]['seq'] + 5} is not in the bundle" in err
    # the report says so on page 1 and in the integrity section
    html = tmp_path / "f.html"
    status, _, err = run_cli(["report", "--lang", "zh", "--out", str(html), "--evidence", str(damaged), *period])
    assert status == 0, err
    text = html.read_text(encoding="utf-8")
    assert "只验证到本期间最后一条记录为止" in text
    assert f"证据包含有到第 {recs[-1]['seq']} 条的记录，超出本期间，未验证" in text
    # damage inside the period refuses the bundle, as before
    inside = _copy(b, tmp_path / "inside.bundle", lambda ls: [
        ls[k].replace(b'"host":"js-', b'"host":"JS-', 1) if b'"seq":%d}' % last in ls[k] and
        b'"kind":"record"' in ls[k] else ls[k] for k in range(len(ls))])
    status, doc, err = _fleet_json(tmp_path, [inside], *period)
    assert status == 1 and doc["refused"] and f"record {last}" in doc["refused"][0]["problem"]


def test_a_bundle_changed_after_its_check_through_the_period_is_refused_while_read(fleet: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    from agent.report.errors import ReportError
    from agent.report.sources import Period, bundle_integrity, bundle_records

    b = _copy(fleet["bundles"]["js-fgw-0042"], tmp_path / "b.bundle", lambda ls: ls)
    recs = _records_of(b)
    period = Period(None, recs[len(recs) // 2]["record"]["time"])
    checked = bundle_integrity(b, fleet["keys"], period)
    assert checked.ok and checked.extends_to and 0 < checked.through_seq <= checked.signed_seq <= checked.checked_seq
    assert [s for s, _ in bundle_records(b, period, checked=checked)] == \
        [r["seq"] for r in recs if period.holds(r["record"]["time"])]
    _copy(b, b, lambda ls: [*ls[:5], ls[5].replace(b'"host":"js-', b'"host":"JS-', 1), *ls[6:]])
    with pytest.raises(ReportError, match="changed after it was verified"):
        list(bundle_records(b, period, checked=checked))
