"""`dutywatch gen alertmanager|scrape-config`: checked by the real amtool and promtool."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml
from centralkit import DASHBOARDS

from agent.cli import main
from agent.errors import LoadError, Location
from agent.gen import (
    AlertmanagerOptions,
    Target,
    alertmanager_config,
    dump_yaml,
    matcher,
    parse_target,
)
from agent.paths import DEMO_CONFIG, DEMO_REGISTRY
from agent.registry import load_registry

Tool = Callable[..., CompletedProcess[str]]


@dataclass(frozen=True)
class U:
    name: str
    department: str | None = None
    contact: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class D:
    name: str
    contact: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reg:
    units: tuple[U, ...]
    departments: tuple[D, ...]


def routes_test(amtool: Tool, config: Path, *labels: str) -> str:
    res = amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def write(tmp_path: Path, reg: Reg, options: AlertmanagerOptions | None = None) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(dump_yaml(alertmanager_config(reg, options).doc), encoding="utf-8")
    return path


# -- alertmanager ---------------------------------------------------------------

def test_demo_registry_routes_every_unit_and_escalates_to_its_department(amtool: Tool, tmp_path: Path) -> None:
    out = tmp_path / "am.yml"
    assert main(["gen", "alertmanager", "--registry", str(DEMO_REGISTRY), "--out", str(out)]) == 0
    res = amtool("check-config", out)
    assert res.returncode == 0, res.stdout + res.stderr
    registry = load_registry(DEMO_REGISTRY)
    assert registry.units
    for unit in registry.units:
        assert unit.department is not None
        own, dept = f"unit:{unit.name}", f"department:{unit.department}"
        assert routes_test(amtool, out, f"unit={unit.name}", "severity=warning") == own
        for severity in ("page", "critical"):
            assert routes_test(amtool, out, f"unit={unit.name}", f"severity={severity}") == f"{own},{dept}"
    assert routes_test(amtool, out, "unit=未登记单位", "department=省大数据管理局") == "department:省大数据管理局"
    assert routes_test(amtool, out, "alertname=DutyWatchNoAgents") == "dutywatch-fallback"


def test_receivers_carry_the_unit_contacts(tmp_path: Path) -> None:
    out = tmp_path / "am.yml"
    assert main(["gen", "alertmanager", "--registry", str(DEMO_REGISTRY), "--out", str(out)]) == 0
    receivers = {r["name"]: r for r in yaml.safe_load(out.read_text(encoding="utf-8"))["receivers"]}
    xxzx = receivers["unit:省发改委信息中心"]
    assert xxzx["email_configs"][0]["to"] == "sec@xxzx.example.gov.cn"
    assert xxzx["webhook_configs"][0]["url"] == "http://127.0.0.1:9099/xxzx"
    assert receivers["department:省大数据管理局"]["email_configs"][0]["to"] == "baomi@dsj.example.gov.cn"


def test_shipped_example_is_what_the_demo_registry_generates() -> None:
    example = (DASHBOARDS / "alertmanager" / "example.yml").read_text(encoding="utf-8")
    generated = dump_yaml(alertmanager_config(load_registry(DEMO_REGISTRY)).doc)
    assert example.endswith(generated), "regenerate dashboards/alertmanager/example.yml"


def test_registry_defaults_to_the_configs(tmp_path: Path) -> None:
    out = tmp_path / "am.yml"
    assert main(["gen", "alertmanager", "--config", str(DEMO_CONFIG), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").endswith(dump_yaml(alertmanager_config(load_registry(DEMO_REGISTRY)).doc))


def test_a_unit_listed_twice_keeps_its_first_entry(amtool: Tool, tmp_path: Path) -> None:
    reg = Reg((U("甲单位", None, {"email": "a@example.gov.cn"}), U("甲单位", None, {"email": "b@example.gov.cn"})), ())
    assert any("listed twice" in w for w in alertmanager_config(reg).warnings)
    path = write(tmp_path, reg)
    assert amtool("check-config", path).returncode == 0


def test_unit_without_contact_falls_back_to_its_department(amtool: Tool, tmp_path: Path) -> None:
    reg = Reg((U("甲单位", "部门", {"email": "a@example.gov.cn"}), U("乙单位", "部门")),
              (D("部门", {"webhook": "http://127.0.0.1:9099/dept"}),))
    gen = alertmanager_config(reg)
    assert any("乙单位" in w for w in gen.warnings)
    path = write(tmp_path, reg)
    assert amtool("check-config", path).returncode == 0
    assert routes_test(amtool, path, "unit=乙单位", "severity=warning") == "department:部门"
    assert routes_test(amtool, path, "unit=乙单位", "severity=page") == "department:部门"
    assert routes_test(amtool, path, "unit=甲单位", "severity=page") == "unit:甲单位,department:部门"


def test_names_with_quotes_and_backslashes_are_matched_exactly(amtool: Tool, tmp_path: Path) -> None:
    odd = 'R&D "东区" \\ 组'
    reg = Reg((U(odd, None, {"email": "rd@example.gov.cn"}), U("R&D", None, {"email": "x@example.gov.cn"})), ())
    path = write(tmp_path, reg, AlertmanagerOptions(fallback={"email": "soc@example.gov.cn"}))
    res = amtool("check-config", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert routes_test(amtool, path, matcher("unit", odd)) == f"unit:{odd}"
    assert routes_test(amtool, path, "unit=R&D") == "unit:R&D"
    assert matcher("unit", 'a"b') == 'unit="a\\"b"'


def test_without_any_contact_unrouted_alerts_are_reported_as_dropped() -> None:
    gen = alertmanager_config(Reg((U("丙单位"),), ()))
    assert any("dropped" in w for w in gen.warnings)
    fallback = gen.doc["receivers"][0]
    assert fallback == {"name": "dutywatch-fallback"}


def test_bad_registry_is_named_with_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text("host: {id: h1}\nunits:\n  - {name: U, colour: red}\n", encoding="utf-8")
    assert main(["gen", "alertmanager", "--registry", str(bad)]) == 1
    assert f"{bad}:3:" in capsys.readouterr().err


# -- scrape config ----------------------------------------------------------------

WEB = """\
tls_server_config:
  cert_file: tls/server.crt
  key_file: tls/server.key
  client_ca_file: tls/ca.crt
  client_auth_type: RequireAndVerifyClientCert
basic_auth_users:
  prometheus: $2b$12$2Kp1MahDh4GEA8Dq1Wuhg.EVe.qRjK8uqmjD0z9K09jnSB0vS3LV2
"""


def test_scrape_config_matches_tls_client_cert_and_basic_auth(promtool: Tool, tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text(WEB, encoding="utf-8")
    (tmp_path / "hosts.txt").write_text("# 信息中心\n10.0.0.1\n10.0.0.2:9847  # 办公室\n[fd00:10::5]:9900\n",
                                        encoding="utf-8")
    out = tmp_path / "prom"
    assert main(["gen", "scrape-config", "--hosts", str(tmp_path / "hosts.txt"), "js-fgw-0042.example.gov.cn",
                 "--web-config", str(tmp_path / "web.yml"), "--out-dir", str(out)]) == 0
    (job,) = yaml.safe_load((out / "dutywatch-scrape.yml").read_text(encoding="utf-8"))["scrape_configs"]
    assert job["job_name"] == "dutywatch" and job["scheme"] == "https"
    assert job["tls_config"]["cert_file"] and job["tls_config"]["key_file"]
    assert job["basic_auth"] == {"username": "prometheus", "password_file": "dutywatch/password"}
    targets = yaml.safe_load((out / "dutywatch" / "targets.yml").read_text(encoding="utf-8"))
    assert targets == [{"targets": ["10.0.0.1:9847", "10.0.0.2:9847", "[fd00:10::5]:9900",
                                    "js-fgw-0042.example.gov.cn:9847"]}]
    # promtool checks that the TLS and password files exist, so it fails until they are in place.
    res = promtool("check", "config", out / "dutywatch-scrape.yml")
    assert res.returncode != 0 and "dutywatch/" in res.stdout + res.stderr
    for name in ("ca.crt", "client.crt", "client.key", "password"):
        (out / "dutywatch" / name).write_text("placeholder\n", encoding="utf-8")
    res = promtool("check", "config", out / "dutywatch-scrape.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_scrape_config_without_web_config_prints_a_plain_static_job(
        promtool: Tool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen", "scrape-config", "--hosts", "127.0.0.1:19847", "localhost"]) == 0
    text = capsys.readouterr().out
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["scheme"] == "http" and "tls_config" not in job and "basic_auth" not in job
    assert job["static_configs"] == [{"targets": ["127.0.0.1:19847", "localhost:9847"]}]
    (tmp_path / "p.yml").write_text(text, encoding="utf-8")
    res = promtool("check", "config", tmp_path / "p.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_client_cert_only_when_the_agents_require_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n", encoding="utf-8")
    assert main(["gen", "scrape-config", "--hosts", "h1", "--web-config", str(web)]) == 0
    (job,) = yaml.safe_load(capsys.readouterr().out)["scrape_configs"]
    assert job["scheme"] == "https" and "cert_file" not in job["tls_config"] and "basic_auth" not in job


def test_bad_targets_are_all_named_with_their_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.0.0.1\n  bad_host!\n10.0.0.2:70000\n10.0.0.1:9847\n", encoding="utf-8")
    assert main(["gen", "scrape-config", "--hosts", str(hosts), "fd00::1"]) == 1
    err = capsys.readouterr().err
    assert f"{hosts}:2:3: bad target" in err
    assert f"{hosts}:3:1: bad target '10.0.0.2:70000': port must be 1-65535" in err
    assert "--hosts argument 2: bad target 'fd00::1'" in err


def test_a_target_listed_twice_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.0.0.1\n", encoding="utf-8")
    assert main(["gen", "scrape-config", "--hosts", str(hosts), "10.0.0.1:9847"]) == 1
    assert f"already listed at {hosts}:1:1" in capsys.readouterr().err


def test_several_basic_auth_users_need_a_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: $2b$12$x\n  ops: $2b$12$y\n", encoding="utf-8")
    assert main(["gen", "scrape-config", "--hosts", "h1", "--web-config", str(web)]) == 1
    assert f"{web}:2:3: several users (ops, prometheus): choose one with --username" in capsys.readouterr().err
    assert main(["gen", "scrape-config", "--hosts", "h1", "--web-config", str(web), "--username", "nobody"]) == 1
    assert "'nobody' is not in basic_auth_users" in capsys.readouterr().err
    assert main(["gen", "scrape-config", "--hosts", "h1", "--web-config", str(web), "--username", "ops"]) == 0
    (job,) = yaml.safe_load(capsys.readouterr().out)["scrape_configs"]
    assert job["basic_auth"]["username"] == "ops"


@pytest.mark.parametrize(("text", "target"), [
    ("10.0.0.1", Target("10.0.0.1", 9847)),
    ("agent-7.example.gov.cn:9100", Target("agent-7.example.gov.cn", 9100)),
    ("[::1]:9847", Target("::1", 9847)),
    ("[fd00:10::5]", Target("fd00:10::5", 9847)),
])
def test_targets_parse(text: str, target: Target) -> None:
    assert parse_target(text, Location("x")) == target


@pytest.mark.parametrize("text", ["", "host:", "host:0", "a b", "-bad.example", "[::1", "[zz::1]:1", "::1"])
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(LoadError):
        parse_target(text, Location("x"))
