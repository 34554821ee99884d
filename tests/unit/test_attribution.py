"""Registry loading and attribution: operator, zones, assets, media."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import attribution
from agent.attribution import UNSET_LOGINUID, Attributor
from agent.errors import LoadErrors
from agent.events import Event, File, Iface, Media, Net, Process
from agent.levels import Level
from agent.registry import load_registry
from agent.yamlsrc import load_text

REG = """\
host: {id: h1, unit: 信息中心, department: 发改委, custodian: zs, level: secret, zone: intranet}
units: [{name: 信息中心, department: 发改委}, {name: 办公室, department: 发改委}]
departments: [{name: 发改委}]
people:
  - {account: zs, uid: 1000, name: 张三, unit: 信息中心, clearance: secret}
  - {account: ls, name: 李四, unit: 办公室, clearance: confidential}
service_accounts:
  - {account: www-data, custodian: ls}
  - {account: cron, custodian: ls, unit: cron.service}
  - {account: app, custodian: zs, unit: "app-*.service"}
zones:
  default: internet
  networks:
    - {name: intranet, cidrs: [10.0.0.0/8, "fd00::/8"]}
    - {name: lab, cidrs: [10.9.0.0/16, "fd00:9::/32"]}
    - {name: host9, cidrs: [10.9.9.9/32]}
    - {name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}
assets:
  - {path: "/srv/c/**", level: secret, unit: 信息中心}
  - {path: "/srv/c/ts/**", level: top_secret, unit: 办公室}
  - {path: "/srv/**/*.plan", level: confidential}
media: [{serial: S1, level: secret, holder: zs}]
"""

ACCOUNTS = {1000: "zs", 1001: "ls", 33: "www-data", 0: "root", 4000: "stranger"}


@pytest.fixture
def attr(tmp_path: Path) -> Attributor:
    p = tmp_path / "registry.yaml"
    p.write_text(REG, encoding="utf-8")
    return Attributor(load_registry(p), ACCOUNTS.get)


def op(attr: Attributor, **process: object) -> tuple[str | None, str | None, bool | None]:
    o = attr(Event("process.exec", process=Process(**process))).operator  # type: ignore[arg-type]
    return o.account, o.name, o.known


def test_loginuid_keeps_the_human_behind_sudo(attr: Attributor) -> None:
    assert op(attr, uid=0, loginuid=1000) == ("zs", "张三", True)


def test_uid_when_loginuid_unset(attr: Attributor) -> None:
    assert op(attr, uid=1000, loginuid=UNSET_LOGINUID) == ("zs", "张三", True)
    assert op(attr, uid=1001) == ("ls", "李四", True)  # matched by account name via the system


def test_service_account_maps_to_its_custodian(attr: Attributor) -> None:
    assert op(attr, uid=33) == ("ls", "李四", True)


def test_a_daemon_without_login_identity_is_its_units_custodians(attr: Attributor) -> None:
    # root's cron job: root is no one's account, but cron.service is the service account cron.
    assert op(attr, uid=0, unit="cron.service") == ("ls", "李四", True)
    assert op(attr, uid=0, loginuid=UNSET_LOGINUID, unit="cron.service") == ("ls", "李四", True)
    assert op(attr, uid=4000, unit="app-web.service") == ("zs", "张三", True)  # by glob
    assert op(attr, unit="cron.service") == ("ls", "李四", True)  # no ids at all, still the unit's


def test_a_unit_does_not_launder_a_login_or_name_an_unlisted_daemon(attr: Attributor) -> None:
    # A person who logged in stays themselves (loginuid wins), and an unregistered unit is a real unknown.
    assert op(attr, uid=0, loginuid=1000, unit="cron.service") == ("zs", "张三", True)
    assert op(attr, uid=0, unit="crond.service") == ("root", None, False)
    assert op(attr, uid=0, unit="myapp-web.service") == ("root", None, False)  # the glob is anchored
    assert op(attr, uid=0, unit="cron.service.d") == ("root", None, False)
    assert op(attr, uid=0) == ("root", None, False)


def test_registry_unit_must_be_a_unit_name(tmp_path: Path) -> None:
    p = tmp_path / "registry.yaml"
    p.write_text(REG.replace("unit: cron.service}", "unit: /etc/cron}"), encoding="utf-8")
    with pytest.raises(LoadErrors) as err:
        load_registry(p)
    assert f"{p}:" in str(err.value) and "not a systemd unit name" in str(err.value)


def test_unknown_accounts_are_marked_unknown(attr: Attributor) -> None:
    assert op(attr, uid=4000) == ("stranger", None, False)
    assert op(attr, uid=0) == ("root", None, False)
    assert op(attr, uid=5555) == ("uid:5555", None, False)


def test_a_storm_of_unknown_accounts_keeps_the_caches_bounded_and_the_answers_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Containers and one-off jobs bring thousands of uids no one registered: each is still
    # unknown, the usual accounts stay known, memory stays bounded and the account database is
    # asked once per uid while that uid keeps coming.
    monkeypatch.setattr(attribution, "_CACHE_LIMIT", 64)
    p = tmp_path / "registry.yaml"
    p.write_text(REG, encoding="utf-8")
    asked: list[int] = []

    def lookup(uid: int) -> str | None:
        asked.append(uid)
        return ACCOUNTS.get(uid, f"ns-{uid}" if uid >= 100_000 else None)

    a = Attributor(load_registry(p), lookup)
    for i in range(20_000):
        uid = 100_000 + i
        assert op(a, uid=uid) == (f"ns-{uid}", None, False)
        assert op(a, uid=33) == ("ls", "李四", True)
        assert op(a, uid=4000, user="stranger") == ("stranger", None, False)
        sizes = (len(a._op_cache), len(a._op_old), len(a._names), len(a._names_old))
        assert max(sizes) <= 64, sizes
    assert asked.count(33) == 1 and asked.count(4000) == 0
    assert len(asked) == 20_001  # each one-off uid once, the recurring one once


def test_event_without_a_process_has_no_operator(attr: Attributor) -> None:
    assert attr(Event("media.mount")).operator.known is None


@pytest.mark.parametrize("kind", ["process.exec", "net.connect", "file.open"])
def test_operation_with_no_id_at_all_is_known_false_never_none(attr: Attributor, kind: str) -> None:
    # A process gone before anything could be read: no one answers for it, and ZR-001 must see that.
    e = attr(Event(kind, process=Process(pid=4321)))
    assert e.operator.known is False


def test_user_name_is_filled_in(attr: Attributor) -> None:
    assert attr(Event("process.exec", process=Process(uid=1000))).process.user == "zs"


@pytest.mark.parametrize(("ip", "zone"), [
    ("10.1.2.3", "intranet"), ("10.9.1.1", "lab"), ("10.9.9.9", "host9"), ("11.0.0.1", "internet"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("fd00::1", "intranet"), ("fd00:9::5", "lab"),
    ("2001:db8::1", "internet"), ("::ffff:10.9.9.9", "host9"), ("fe80::1%eth0", "internet"),
])
def test_zones_longest_prefix_wins(attr: Attributor, ip: str, zone: str) -> None:
    e = attr(Event("net.connect", net=Net(remote_ip=ip, local_ip=ip)))
    assert e.net.remote_zone == zone and e.net.local_zone == zone


def test_not_an_address_has_no_zone(attr: Attributor) -> None:
    assert attr(Event("net.connect", net=Net(remote_ip="not-an-ip"))).net.remote_zone is None


@pytest.mark.parametrize(("path", "level", "unit"), [
    ("/srv/c/a.txt", Level.SECRET, "信息中心"),
    ("/srv/c", Level.SECRET, "信息中心"),
    ("/srv/c/ts/deep/x", Level.TOP_SECRET, "办公室"),
    ("/srv/other/y.plan", Level.CONFIDENTIAL, None),
    ("/srv/cx/a.txt", None, None),
    ("/home/a.plan", None, None),
])
def test_assets_by_glob_most_sensitive_wins(attr: Attributor, path: str, level: Level | None,
                                            unit: str | None) -> None:
    f = attr(Event("file.open", file=File(path=path))).file
    assert (f.level, f.owner_unit) == (level, unit)
    # cached: the same answer the second time
    assert attr(Event("file.open", file=File(path=path))).file == f


def test_rename_into_an_asset_takes_the_destination_level(attr: Attributor) -> None:
    f = attr(Event("file.rename", file=File(path="/tmp/x", dest_path="/srv/c/ts/x"))).file
    assert f.level is Level.TOP_SECRET


def test_media_by_serial(attr: Attributor) -> None:
    m = attr(Event("media.mount", media=Media(serial="S1"))).media
    assert (m.registered, m.level, m.holder) == (True, Level.SECRET, "zs")
    assert attr(Event("media.mount", media=Media(serial="X"))).media.registered is False


def test_interface_zone(attr: Attributor) -> None:
    assert attr(Event("iface.up", iface=Iface(name="e", ip="10.9.0.1"))).iface.zone == "lab"


def test_host_group_is_filled(attr: Attributor) -> None:
    h = attr(Event("agent.start")).host
    assert (h.id, h.unit, h.department, h.custodian, h.level, h.zone) == \
        ("h1", "信息中心", "发改委", "zs", Level.SECRET, "intranet")


def test_registry_positions_survive_in_errors(tmp_path: Path) -> None:
    doc = load_text("host: {id: h}\nmedia: [{serial: A, holder: ghost}]\n", "r.yaml")
    from agent.errors import LoadErrors
    from agent.registry import parse_registry
    with pytest.raises(LoadErrors) as info:
        parse_registry(doc, "r.yaml")
    assert str(info.value.errors[0]).startswith("r.yaml:2:")
