"""`dutywatch check`: every bad input is named with path:line:col and exits 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from agent.cli import main

REGISTRY = """\
host: {id: h1, unit: U, department: D, custodian: zs, level: secret, zone: intranet}
units: [{name: U, department: D}]
people: [{account: zs, uid: 1000, name: 张三, unit: U, clearance: secret}]
zones: {default: internet, networks: [{name: intranet, cidrs: [10.0.0.0/8]}]}
"""

GOOD_RULE = """\
pack: t
lists:
  shells: [bash, sh]
macros:
  classified_host: host.level >= "confidential"
rules:
  - id: T-1
    title: {zh: 测试, en: test}
    when: @WHEN@
    severity: high
    action: alert
    message: {zh: "x {process.name}", en: "x {process.name}"}
"""


def setup(tmp_path: Path, rules: str | None = None, registry: str = REGISTRY,
          config: str | None = None) -> Path:
    (tmp_path / "registry.yaml").write_text(registry, encoding="utf-8")
    rdir = tmp_path / "rules"
    rdir.mkdir()
    (rdir / "10-t.yaml").write_text(rules if rules is not None else rule_with("process.pid == 1"),
                                    encoding="utf-8")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config if config is not None else
                   "registry: registry.yaml\nrules: [rules]\nstate_dir: state\n", encoding="utf-8")
    return cfg


def run_check(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check", "--config", str(cfg)])
    out = capsys.readouterr()
    return code, out.err


def rule_with(when: str) -> str:
    return GOOD_RULE.replace("@WHEN@", when)


# (name, rules text, registry text, config text, file, token, message part). The expected
# line:col is where `token` first stands in `file` (the 2nd time with "token#2").
CASES = [
    ("yaml syntax", "pack: t\nrules: [\n  - id: x\n", None, None, "rules/10-t.yaml", "- id", "YAML syntax error"),
    ("unknown key in rule", rule_with("process.pid == 1").replace("    severity: high",
     "    severity: high\n    colour: red"), None, None, "rules/10-t.yaml", "colour", "unknown key 'colour'"),
    ("missing required key", "pack: t\nrules:\n  - id: T-1\n    title: {zh: a, en: b}\n    when: process.pid == 1\n"
     "    severity: high\n    action: alert\n", None, None, "rules/10-t.yaml", "id: T-1",
     "missing required key 'message'"),
    ("duplicate rule id", rule_with("process.pid == 1") + "  - id: T-1\n    title: {zh: a, en: b}\n"
     "    when: process.pid == 2\n    severity: high\n    action: alert\n    message: {zh: a, en: b}\n",
     None, None, "rules/10-t.yaml", "T-1#2", "duplicate rule id 'T-1'"),
    ("unknown field", rule_with("process.colour == 'x'"), None, None, "rules/10-t.yaml", "process.colour",
     "unknown field process.colour"),
    ("type mismatch", rule_with("process.pid == \"x\""), None, None, "rules/10-t.yaml", "process.pid ==",
     "type mismatch: process.pid is int, compared with str"),
    ("unknown function", rule_with("frobnicate(process.name)"), None, None, "rules/10-t.yaml", "frobnicate",
     "unknown function 'frobnicate'"),
    ("unknown list", rule_with("process.name in editors"), None, None, "rules/10-t.yaml", "editors",
     "unknown list 'editors'"),
    ("macro cycle", rule_with("a").replace(
        "  classified_host: host.level >= \"confidential\"", "  a: b and process.pid == 1\n  b: a"),
     None, None, "rules/10-t.yaml", "a\n", "macro cycle: a -> b -> a"),
    ("bad level name", rule_with("host.level >= \"ultra\""), None, None, "rules/10-t.yaml", "host.level >= \"ultra",
     "bad level name 'ultra'"),
    ("bad level in registry", None, REGISTRY.replace("level: secret", "level: 特级"), None, "registry.yaml",
     "特级", "bad level name '特级'"),
    ("bad CIDR in registry", None, REGISTRY.replace("10.0.0.0/8", "10.0.0.0/33"), None, "registry.yaml",
     "10.0.0.0/33", "bad CIDR '10.0.0.0/33'"),
    ("bad CIDR in rule", rule_with("cidr(net.remote_ip, \"300.1.0.0/16\")"), None, None, "rules/10-t.yaml",
     "\"300.1", "bad CIDR '300.1.0.0/16'"),
    ("bad glob in rule", rule_with("glob(file.path, \"/srv/[abc\")"), None, None, "rules/10-t.yaml",
     "\"/srv/[abc", "bad glob"),
    ("bad glob in registry", None, REGISTRY + "assets: [{path: \"/srv/[x\", level: secret}]\n", None,
     "registry.yaml", "\"/srv/[x", "bad glob '/srv/[x'"),
    ("bad regex", rule_with("regex(process.cmdline, \"(unclosed\")"), None, None, "rules/10-t.yaml",
     "\"(unclosed", "bad regex '(unclosed'"),
    ("dunder attribute", rule_with("process.__class__ == 'x'"), None, None, "rules/10-t.yaml", "process.__class__",
     "unknown field process.__class__"),
    ("__import__ call", rule_with("__import__(\"os\")"), None, None, "rules/10-t.yaml", "__import__",
     "unknown function '__import__'"),
    ("open call", rule_with("open(\"/etc/shadow\")"), None, None, "rules/10-t.yaml", "open(",
     "unknown function 'open'"),
    ("method call", rule_with("process.name.startswith('a')"), None, None, "rules/10-t.yaml", "process.name.",
     "only the functions"),
    ("lambda call", rule_with("'(lambda: True)()'"), None, None, "rules/10-t.yaml", "(lambda",
     "only the functions"),
    ("lambda", rule_with("'lambda: True'"), None, None, "rules/10-t.yaml", "lambda",
     "lambda is not allowed"),
    ("comprehension", rule_with("'[x for x in shells]'"), None, None, "rules/10-t.yaml", "[x for",
     "comprehension is not allowed"),
    ("subscript", rule_with("process.cmdline[0] == 'x'"), None, None, "rules/10-t.yaml", "process.cmdline[",
     "subscript is not allowed"),
    ("f-string", rule_with("f'{process.name}' == 'x'"), None, None, "rules/10-t.yaml", "f'{",
     "f-string is not allowed"),
    ("empty when", rule_with("''"), None, None, "rules/10-t.yaml", "''", "when is empty"),
    ("group used as value", rule_with("process == 'x'"), None, None, "rules/10-t.yaml", "process ==",
     "process is a field group"),
    ("unknown event kind", rule_with("event.kind == 'net.conect'"), None, None, "rules/10-t.yaml", "event.kind",
     "unknown event kind 'net.conect'"),
    ("non-condition", rule_with("process.name"), None, None, "rules/10-t.yaml", "process.name\n",
     "expected a condition"),
    ("bad severity", rule_with("process.pid == 1").replace("severity: high", "severity: urgent"), None, None,
     "rules/10-t.yaml", "urgent", "severity must be one of"),
    ("unknown message field", rule_with("process.pid == 1").replace("x {process.name}", "x {proc.name}", 1),
     None, None, "rules/10-t.yaml", "\"x {proc", "unknown field {proc.name} in message"),
    ("unknown config key", None, REGISTRY, "registry: registry.yaml\nrules: [rules]\nstate_dir: s\nlisten_on: x\n",
     "agent.yaml", "listen_on", "unknown key 'listen_on' in config"),
    ("bad collector mode", None, REGISTRY,
     "registry: registry.yaml\nrules: [rules]\ncollectors:\n  process: {mode: ebpf}\n", "agent.yaml", "ebpf",
     "collectors.process.mode must be one of auto, netlink, poll"),
    ("missing registry host", None, "units: []\n", None, "registry.yaml", "units",
     "missing required key 'host' in registry"),
    ("unknown person in registry", None, REGISTRY.replace("custodian: zs", "custodian: nobody"), None,
     "registry.yaml", "nobody", "custodian 'nobody' is not listed under people"),
    ("duplicate yaml key", "pack: t\npack: u\n", None, None, "rules/10-t.yaml", "pack#2", "duplicate key 'pack'"),
    ("override of unknown rule", "pack: t\nrules:\n  - id: NOPE\n    override: {enabled: false}\n", None, None,
     "rules/10-t.yaml", "NOPE", "override of unknown rule 'NOPE'"),
]


def position(text: str, token: str) -> tuple[int, int]:
    """1-based line and column of the n-th occurrence of token (``tok#n``)."""
    tok, _, nth = token.partition("#")
    idx = -1
    for _ in range(int(nth or 1)):
        idx = text.index(tok, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, col


@pytest.mark.parametrize(("name", "rules", "registry", "config", "file", "token", "message"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_named_with_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                           rules: str | None, registry: str | None, config: str | None,
                                           file: str, token: str, message: str) -> None:
    cfg = setup(tmp_path, rules, registry or REGISTRY, config)
    line, col = position((tmp_path / file).read_text(encoding="utf-8"), token)
    code, err = run_check(cfg, capsys)
    assert code == 1, err
    prefix = f"{tmp_path / file}:{line}:{col}: "
    matching = [ln for ln in err.splitlines() if ln.startswith(prefix) and message in ln]
    assert matching, f"expected a line starting {prefix!r} containing {message!r}; got:\n{err}"


def test_good_setup_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = setup(tmp_path)
    code = main(["check", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 0
    assert "rules: 1 enabled" in out


def test_every_problem_is_reported_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = rule_with("process.pid == 'x'") + (
        "  - id: T-2\n    title: {zh: a, en: b}\n    when: frob(process.name)\n"
        "    severity: high\n    action: alert\n    message: {zh: a, en: b}\n")
    cfg = setup(tmp_path, rules, REGISTRY.replace("10.0.0.0/8", "10.0.0.0/99"))
    code, err = run_check(cfg, capsys)
    assert code == 1
    assert "type mismatch" in err and "unknown function 'frob'" in err and "bad CIDR" in err


def test_shipped_demo_config_checks_clean(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(repo / "agent/data/demo-agent.yaml")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "registry" in out.out


def test_forward_and_web_config_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: not-a-bcrypt-hash\n", encoding="utf-8")
    cfg = setup(tmp_path, config="registry: registry.yaml\nrules: [rules]\nstate_dir: s\n"
                                 f"web_config: {web}\nforward:\n  syslog: {{address: 'smtp://x:1'}}\n")
    code, err = run_check(cfg, capsys)
    assert code == 1
    assert f"{cfg}:6:21: address must be udp://, tcp:// or tls://host:port" in err
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("smtp://x:1", "tcp://127.0.0.1:6514"), encoding="utf-8")
    code, err = run_check(cfg, capsys)
    assert code == 1
    assert err.startswith(f"{web}:2:") and "bcrypt" in err


def test_out_of_range_yaml_escapes_are_load_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PyYAML's Python parser raises ValueError/OverflowError here, libyaml a marked error: both are load errors."""
    for i, text in enumerate(('host: null\n"\\U00110000": 1\n', 'host: null\n"\\U100010000": 1\n')):
        case = tmp_path / str(i)
        case.mkdir()
        code, err = run_check(setup(case, registry=text), capsys)
        assert code == 1 and "YAML syntax error" in err and "escape" in err, err
        # libyaml names the place; PyYAML's Python scanner raises without one (then only the file is named).
        assert ("registry.yaml:2:" if yaml.__with_libyaml__ else "registry.yaml:") in err, err


def test_the_readme_rule_example_checks_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Rules\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = setup(tmp_path, rules=example)
    code, err = run_check(cfg, capsys)
    assert code == 0, err


def test_check_without_read_access_says_so_in_one_line_per_file(tmp_path: Path) -> None:
    # As an ordinary user on an installed host: /etc/dutywatch is root's and the dutywatch group's.
    d = Path(tempfile.mkdtemp(prefix="dw-check-", dir="/tmp"))
    try:
        cfg = setup(d)
        d.chmod(0o700)
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "agent", "check", "--config", str(cfg)], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        assert f"{cfg}: cannot read: Permission denied (run as root, or as a member of the dutywatch group)" \
            in res.stderr
    finally:
        shutil.rmtree(d)
