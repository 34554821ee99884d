"""The assessment language, its probes and the shipped policy's samples, on real files and commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.assess.context import HostContext
from agent.assess.evaluate import run_check, run_policies
from agent.assess.policy import load_policies, shipped_policy_dir
from agent.assess.samples import run_samples
from agent.cli import main
from agent.errors import LoadErrors

POLICY_HEAD = "policy: t\nchecks:\n"


def _policy(tmp_path: Path, body: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(POLICY_HEAD + body)
    return p


def _check(cid: str, condition: str, applies: str = "") -> str:
    return (f"  - id: {cid}\n    title: {{zh: 标题, en: Title}}\n    rationale: {{zh: 理由, en: Why}}\n"
            f"    items: [L3-CES1-01]\n    clause: GB/T 22239-2019 8.1.4.1\n{applies}    condition: {condition}\n")


def _root(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for path, text in files.items():
        f = root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    return root


def _run_one(policy: Path, root: Path, timeout: float = 10.0) -> tuple[str, tuple[str, ...]]:
    ps = load_policies([policy])
    r = run_check(ps.checks[0], HostContext(str(root), timeout))
    return r.result, r.evidence


def test_every_shipped_check_passes_and_fails_on_its_samples() -> None:
    ps = load_policies([shipped_policy_dir()])
    assert len(ps.checks) >= 60
    rep = run_samples(ps, sorted((shipped_policy_dir() / "tests").glob("*.yaml")))
    assert rep.failed == []
    assert all({"pass", "fail"} <= rep.covered[c.id] for c in ps.checks)


def test_shipped_policy_maps_items_and_lists_what_a_host_cannot_prove() -> None:
    ps = load_policies([shipped_policy_dir()])
    items = {i for c in ps.checks for i in c.items}
    for needed in ("L3-CES1-01", "L3-CES1-02", "L3-CES1-03", "L3-CES1-06", "L3-CES1-07", "L3-CES1-08",
                   "L3-CES1-12", "L3-CES1-14", "L3-CES1-15", "L3-CES1-17", "L3-CES1-18", "L3-CES1-19",
                   "L3-CES1-21", "L3-CES1-23", "L3-CES1-24"):
        assert needed in items
    assert {u.item for u in ps.unprovable} >= {"L3-CES1-04", "L3-CES1-11"}
    assert {c.families for c in ps.checks} >= {("debian",), ("rhel",)}


def test_check_names_every_policy_mistake_at_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _policy(tmp_path, _check("A-1", "{sshd: {key: permitrootlogin, equals: no}}")
                  + _check("A-2", "{registry: {path: /x}}")
                  + _check("A-3", "{lines: {path: /etc/x, regex: '('}}")
                  + _check("A-1", "{file: {path: /etc/x}}")
                  + "  - id: A-4\n    title: {zh: t, en: t}\n    rationale: {zh: r, en: r}\n"
                    "    items: [L3-CES1-99]\n    clause: c\n    condition: {all: []}\n"
                  + _check("A-5", "{sysctl: {key: net.ipv4.ip_forward}}"))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {Path('agent/data/demo-registry.yaml').resolve()}\nassess: {{policies: [{bad}]}}\n")
    assert main(["check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:14:17: unknown probe 'registry'" in err
    assert f"{bad}:20:46: A-3.condition.lines.regex: bad regular expression" in err
    assert f"{bad}:21:5: duplicate check id 'A-1' (first at {bad}:3:5)" in err
    assert f"{bad}:30:13: A-4: 'L3-CES1-99' is not a level-3" in err
    assert f"{bad}:32:22: A-4.condition.all must not be empty" in err
    assert f"{bad}:38:25: A-5.condition.sysctl needs a test" in err
    assert err.count(str(bad)) == 7  # six problems, one naming the first A-1 too


def test_config_assess_every_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {Path('agent/data/demo-registry.yaml').resolve()}\nassess:\n  every: 12 hours\n")
    assert main(["check", "--config", str(cfg)]) == 1
    assert f"{cfg}:3:10: assess.every: bad duration" in capsys.readouterr().err
    cfg.write_text(f"registry: {Path('agent/data/demo-registry.yaml').resolve()}\nassess: {{every: 12h}}\n")
    assert main(["check", "--config", str(cfg)]) == 0


def test_local_policy_overrides_by_id(tmp_path: Path) -> None:
    shipped = _policy(tmp_path, _check("X-1", "{file: {path: /etc/a, exists: true}}")
                      + _check("X-2", "{file: {path: /etc/b, exists: true}}"), "10-shipped.yaml")
    local = tmp_path / "local"
    local.mkdir()
    (local / "site.yaml").write_text("policy: site\nchecks:\n" + _check("X-1", "{file: {path: /etc/a, exists: false}}")
                                     + "  - id: X-2\n    override: {enabled: false}\n")
    ps = load_policies([shipped, local])
    assert [(c.id, c.enabled) for c in ps.checks] == [("X-1", True), ("X-2", False)]
    res = run_policies(ps, str(_root(tmp_path, {})))
    assert [(r.check, r.result) for r in res.results] == [("X-1", "pass")]
    (local / "zz.yaml").write_text("policy: z\nchecks:\n  - id: NOPE\n    override: {enabled: false}\n")
    with pytest.raises(LoadErrors, match=r"zz.yaml:3:5: override of unknown check 'NOPE'"):
        load_policies([shipped, local])


def test_sshd_include_loop_is_reported_not_followed_forever(tmp_path: Path) -> None:
    pol = _policy(tmp_path, _check("S-1", "{sshd: {key: permitrootlogin, equals: 'no'}}"))
    root = _root(tmp_path, {"/etc/ssh/sshd_config": "Include /etc/ssh/a.conf\n",
                            "/etc/ssh/a.conf": "Include b.conf\n", "/etc/ssh/b.conf": "Include /etc/ssh/a.conf\n"})
    result, evidence = _run_one(pol, root)
    assert result == "fail"
    assert "include loop: /etc/ssh/a.conf -> /etc/ssh/b.conf -> /etc/ssh/a.conf" in evidence[0]


def test_pam_include_loop_and_a_huge_config_are_bounded(tmp_path: Path) -> None:
    pol = _policy(tmp_path, _check("P-1", "{pam: {service: common-auth, module: pam_faillock.so}}")
                  + _check("P-2", "{config: {path: /etc/login.defs, key: PASS_MAX_DAYS, max: 90}}"))
    root = _root(tmp_path, {"/etc/pam.d/common-auth": "@include other\n", "/etc/pam.d/other": "@include common-auth\n"})
    with open(root / "etc/login.defs", "w") as f:
        f.write("# padding\n" * 600_000)  # about 6 MB
    ps = load_policies([pol])
    ctx = HostContext(str(root))
    t0 = time.monotonic()
    r1, r2 = run_check(ps.checks[0], ctx), run_check(ps.checks[1], ctx)
    assert time.monotonic() - t0 < 30
    assert (r1.result, r2.result) == ("fail", "fail")
    assert "include loop" in r1.evidence[0]
    assert "larger than 4 MiB, not read" in r2.evidence[0]


def test_a_hanging_command_is_killed_and_reported(tmp_path: Path) -> None:
    pol = _policy(tmp_path, _check("C-1", "{command: {argv: [sleep, '600'], timeout: 1, regex: x}}")
                  + _check("C-2", "{command: {argv: [/usr/bin/yes], timeout: 20, regex: y}}")
                  + _check("C-3", "{command: {argv: [uname, -s], regex: '^Linux$'}}")
                  + _check("C-4", "{command: {argv: [uname, -s], regex: '^Linux$', expect: absent}}"))
    ps = load_policies([pol])
    ctx = HostContext("/", command_timeout=1.0)
    t0 = time.monotonic()
    hang = run_check(ps.checks[0], ctx)
    assert time.monotonic() - t0 < 10
    assert hang.result == "fail" and "no answer within 1 s, killed" in hang.evidence[0]
    flood = run_check(ps.checks[1], ctx)
    assert flood.result == "fail" and "bytes of output, killed" in flood.evidence[0]
    assert run_check(ps.checks[2], ctx).result == "pass"
    assert run_check(ps.checks[3], ctx).result == "fail"
    out = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True, text=True)
    assert str(os.getpid()) not in out.stdout  # nothing left running from the probe's group


def test_commands_are_never_run_from_a_scanned_root(tmp_path: Path) -> None:
    root = _root(tmp_path, {"/usr/bin/uname": "#!/bin/sh\ntouch /tmp/dw18-pwned\n"})
    pol = _policy(tmp_path, _check("C-1", "{command: {argv: [uname], regex: x}}"))
    result, evidence = _run_one(pol, root)
    assert result == "not_applicable"
    assert "commands are not run from a scanned root" in evidence[0]


def test_links_in_a_scanned_root_stay_inside_it(tmp_path: Path) -> None:
    root = _root(tmp_path, {"/etc/os-release": "ID=debian\n", "/srv/login.defs": "PASS_MAX_DAYS 30\n"})
    os.symlink("/srv/login.defs", root / "etc/login.defs")  # absolute: means ROOT/srv/login.defs
    os.symlink("../../../../../../../../etc/gshadow", root / "etc/shadow")  # climbs no higher than the root
    pol = _policy(tmp_path, _check("L-1", "{config: {path: /etc/login.defs, key: PASS_MAX_DAYS, max: 90}}")
                  + _check("L-2", "{accounts: {where: {password: empty}}}"))
    ps = load_policies([pol])
    ctx = HostContext(str(root))
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    r1 = run_check(ps.checks[0], ctx)
    assert r1.result == "pass" and r1.evidence[0] == "/etc/login.defs:1: PASS_MAX_DAYS 30"
    r2 = run_check(ps.checks[1], ctx)
    assert r2.result == "pass"  # the host's /etc/shadow was not read: no shadow in the root
    assert ctx.accounts()[0].password_state == "unknown"


def test_applicability_and_all_any_none(tmp_path: Path) -> None:
    root = _root(tmp_path, {"/etc/os-release": "ID=ubuntu\nID_LIKE=debian\n", "/etc/a": "k = 1\n"})
    pol = _policy(tmp_path, _check("F-1", "{file: {path: /etc/a}}", "    applies: {family: [rhel]}\n")
                  + _check("F-2", "{any: [{file: {path: /etc/zz}}, {config: {path: /etc/a, key: k, equals: 1}}]}")
                  + _check("F-3", "{none: [{file: {path: /etc/a}}]}")
                  + _check("F-4", "{all: [{file: {path: /etc/a}}, {command: {argv: ['true'], regex: x}}]}")
                  + _check("F-5", "{file: {path: /etc/a}}", "    applies: {package: [openssh-server]}\n"))
    res = {r.check: r for r in run_policies(load_policies([pol]), str(root)).results}
    assert res["F-1"].result == "not_applicable" and "for rhel systems; this one is debian" in res["F-1"].evidence[0]
    assert res["F-2"].result == "pass" and res["F-2"].evidence == ("/etc/a:1: k = 1",)
    assert res["F-3"].result == "fail"
    assert res["F-4"].result == "pass"  # the command part is not applicable on a root, the file part decides
    assert res["F-5"].result == "not_applicable"


def test_assess_command_json_and_exit_status(tmp_path: Path) -> None:
    root = _root(tmp_path, {"/etc/os-release": "ID=debian\n", "/etc/passwd": "root:x:0:0::/root:/bin/bash\n"})
    pol = _policy(tmp_path, _check("J-1", "{accounts: {where: {uid: 0}, except: [root]}}")
                  + _check("J-2", "{package: {name: telnetd, installed: false}}"))
    run = subprocess.run([sys.executable, "-m", "agent", "assess", "--root", str(root), "--policy", str(pol),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    doc = json.loads(run.stdout)
    assert run.returncode == 1  # J-2 fails: no package database to prove telnetd absent
    by = {r["check"]: r for r in doc["results"]}
    assert by["J-1"]["result"] == "pass"
    assert by["J-2"]["result"] == "fail" and "no package database" in by["J-2"]["evidence"][0]
    assert "/etc/passwd" in doc["read_paths"]


def test_inventory_diff_makes_change_events_rules_judge(tmp_path: Path) -> None:
    from agent.assess.inventory import diff, snapshot
    from agent.assess.rootfs import RootFS
    root = _root(tmp_path, {"/etc/os-release": "ID=debian\n",
                            "/etc/passwd": "root:x:0:0::/root:/bin/bash\nzhangsan:x:1000:1000::/home/z:/bin/bash\n",
                            "/etc/group": "root:x:0:\n",
                            "/var/lib/dpkg/status": "Package: openssh-server\nStatus: install ok installed\n"
                                                    "Version: 1:9.2p1-2\n",
                            "/proc/modules": "ext4 1 1 - Live 0x0\n"})
    before = snapshot(RootFS(str(root)), commands=False)
    assert diff(None, before) == []  # the first inventory is the baseline
    assert diff(before, snapshot(RootFS(str(root)), commands=False)) == []
    with open(root / "etc/passwd", "a") as f:
        f.write("temp01:x:1005:1005::/home/temp01:/bin/bash\ntoor:x:0:0::/root:/bin/bash\n")
    with open(root / "var/lib/dpkg/status", "a") as f:
        f.write("\nPackage: x11vnc\nStatus: install ok installed\nVersion: 0.9.16-9\n")
    (root / "proc/modules").write_text("ext4 1 1 - Live 0x0\nusb_storage 1 0 - Live 0x0\n")
    events = diff(before, snapshot(RootFS(str(root)), commands=False))
    got = sorted((e.kind, e.inventory.name, e.inventory.change, e.process.uid) for e in events)
    assert got == [("inventory.account", "temp01", "added", 1005), ("inventory.account", "toor", "added", 0),
                   ("inventory.module", "usb_storage", "added", None),
                   ("inventory.package", "x11vnc", "added", None)]
    # Through attribution and the shipped rules, as the agent runs them.
    from agent.attribution import Attributor
    from agent.engine.engine import Engine
    from agent.engine.rules import load_rules
    from agent.paths import DEMO_REGISTRY, shipped_rules_dir
    from agent.registry import load_registry
    attr, engine = Attributor(load_registry(DEMO_REGISTRY)), Engine(load_rules([shipped_rules_dir()]))
    fired = sorted(f.rule.id for e in events for f in engine.evaluate(attr(e)))
    assert fired == ["INV-ACC-001", "INV-ACC-002", "INV-MOD-002", "INV-PKG-001", "INV-PKG-003"]
    # An unreadable package database is not every package removed.
    (root / "var/lib/dpkg/status").unlink()
    assert [e.kind for e in diff(before, snapshot(RootFS(str(root)), commands=False))
            if e.kind == "inventory.package"] == []


def test_usb_storage_history_from_the_kernel_log() -> None:
    from agent.assess.inventory import parse_usb_log
    log = [
        "2026-05-01T09:00:01+0800 h kernel: usb 1-1: New USB device found, idVendor=0781, idProduct=5581",
        "2026-05-01T09:00:01+0800 h kernel: usb 1-1: Product: Ultra",
        "2026-05-01T09:00:01+0800 h kernel: usb 1-1: SerialNumber: 4C530001230517115055",
        "2026-05-01T09:00:01+0800 h kernel: usb-storage 1-1:1.0: USB Mass Storage device detected",
        "2026-05-01T09:05:00+0800 h kernel: usb 1-2: New USB device found, idVendor=046d, idProduct=c52b",
        "2026-05-01T09:05:00+0800 h kernel: usb 1-2: Product: USB Receiver",
    ]
    (rec,) = parse_usb_log(log)
    assert rec["vendor_id"] == "0781" and rec["product"] == "Ultra" and rec["serialnumber"] == "4C530001230517115055"
    assert rec["time"].startswith("2026-05-01T09:00:01")


def test_a_bad_policy_fails_the_agent_load_like_a_bad_rule(tmp_path: Path) -> None:
    from agent.daemon.agent import load_all
    bad = _policy(tmp_path, _check("B-1", "{sysctl: {key: kernel.x, max: high}}"))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {Path('agent/data/demo-registry.yaml').resolve()}\nstate_dir: {tmp_path / 's'}\n"
                   f"assess: {{policies: [{bad}]}}\n")
    with pytest.raises(LoadErrors, match=rf"{bad}:8:46: B-1.condition.sysctl.max must be a number"):
        load_all(cfg)
    cfg.write_text(cfg.read_text().replace("assess: {", "assess: {enabled: false, "))
    assert load_all(cfg).rules > 0


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u2", 1), ("1:9.2p1-2+deb12u3", "1:9.2p1-2+deb12u3", 0),
    ("9.9", "1:1.0", -1), ("1.0~rc1", "1.0", -1), ("1.0", "1.0-0", 0), ("2.10", "2.9", 1), ("1.0a", "1.0", 1),
    ("8.7p1-38.el9_4.1", "8.7p1-38.el9", 1), ("1.0+b1", "1.0", 1), ("1.01", "1.1", 0)])
def test_package_versions_sort_as_dpkg_does(a: str, b: str, sign: int) -> None:
    from agent.assess.versions import compare
    c = compare(a, b)
    assert (c > 0) - (c < 0) == sign
    if shutil.which("dpkg"):
        op = {1: "gt", 0: "eq", -1: "lt"}[sign]
        assert subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


def test_package_version_minimum(tmp_path: Path) -> None:
    root = _root(tmp_path, {"/var/lib/dpkg/status": "Package: openssh-server\nStatus: install ok installed\n"
                                                    "Version: 1:9.2p1-2+deb12u2\n"})
    pol = _policy(tmp_path, _check("V-1", "{package: {name: openssh-server, version_min: '1:9.2p1-2+deb12u3'}}")
                  + _check("V-2", "{package: {name: openssh-server, version_min: '1:9.2p1-2'}}"))
    res = {r.check: r for r in run_policies(load_policies([pol]), str(root)).results}
    assert res["V-1"].result == "fail"
    assert res["V-1"].evidence == ("openssh-server 1:9.2p1-2+deb12u2 installed, older than 1:9.2p1-2+deb12u3",)
    assert res["V-2"].result == "pass"


def test_the_agents_runs_are_at_low_priority(tmp_path: Path) -> None:
    # Commands a check runs inherit the assessment's priority: nice and ionice report it.
    pol = _policy(tmp_path, _check("N-1", "{command: {argv: [nice], regex: '^10$'}}")
                  + _check("N-2", "{command: {argv: [ionice], regex: '^idle'}}"))
    run = subprocess.run([sys.executable, "-m", "agent", "assess", "--low-priority", "--policy", str(pol),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    res = {r["check"]: r for r in json.loads(run.stdout)["results"]}
    assert res["N-1"]["result"] == "pass", res["N-1"]["evidence"]
    assert res["N-2"]["result"] == "pass", res["N-2"]["evidence"]
    if os.nice(0) != 0:
        return  # the suite itself runs niced: the plain run would be too
    plain = subprocess.run([sys.executable, "-m", "agent", "assess", "--policy", str(pol), "--format", "json"],
                           capture_output=True, text=True, timeout=60)
    assert {r["check"]: r["result"] for r in json.loads(plain.stdout)["results"]} == {"N-1": "fail", "N-2": "fail"}
