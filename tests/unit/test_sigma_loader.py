"""Sigma rules loaded natively: modifiers, wildcards, conditions, unset fields, kinds, errors with places."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.engine.engine import Engine
from agent.engine.rules import RuleSet, load_rules
from agent.errors import LoadErrors
from agent.events import Event, File, Net, Parent, Process

RID = "5d1bfa2b-0000-4000-8000-000000000001"


def sigma(detection: str, category: str = "process_creation", extra: str = "", rid: str = RID) -> str:
    body = textwrap.indent(textwrap.dedent(detection).strip("\n"), "    ")
    return (f"title: Test rule\nid: {rid}\nstatus: test\n{extra}logsource:\n    product: linux\n"
            f"    category: {category}\ndetection:\n{body}\nlevel: high\ntags: [attack.t1059]\n")


def load(tmp_path: Path, text: str, name: str = "rule.yml", **kw: Any) -> RuleSet:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return load_rules([tmp_path / name], **kw)


def fires(rs: RuleSet, e: Event) -> bool:
    return any(r.id == RID for r in Engine(rs).match(e))


def exec_event(exe: str | None = "/usr/bin/x", cmdline: str | None = "x", **kw: Any) -> Event:
    return Event("process.exec", process=Process(pid=1, exe=exe, cmdline=cmdline, **kw))


def test_compiled_rule_carries_sigma_metadata(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    Image|endswith: /curl\ncondition: selection"))
    (r,) = rs.rules
    assert (r.id, r.pack, r.severity, r.action) == (RID, "sigma", "high", "alert")
    assert r.title.en == "Test rule" and "Test rule" in r.title.zh
    assert r.accountable == ("operator", "host.unit") and r.controls == ("GB/T 22239-2019 8.1.4.4",)
    assert r.tags == ("sigma", "attack.t1059")
    assert r.kinds == frozenset({"process.exec"})
    assert "/usr/bin/curl" in r.message_en.render(exec_event("/usr/bin/curl"))


@pytest.mark.parametrize(("detection", "hit", "miss"), [
    # plain values match the whole field, case-insensitively
    ("Image: /usr/bin/Curl", "/usr/bin/curl", "/usr/bin/curl2"),
    ("Image|endswith: /CURL", "/usr/bin/curl", "/usr/bin/curl/x"),
    ("Image|startswith: /OPT/", "/opt/x", "/usr/opt/x"),
    ("Image|contains: BIN/cu", "/usr/bin/curl", "/usr/sbin/wget"),
    # wildcards and their escapes
    ("Image: /usr/*/curl", "/usr/local/bin/curl", "/usr/bin/curlx"),
    ("Image: /usr/bin/c?rl", "/usr/bin/cUrl", "/usr/bin/crl"),
    ("Image: '/tmp/a\\*b'", "/tmp/a*b", "/tmp/aXb"),
    ("Image: '/tmp/a\\?b'", "/tmp/a?b", "/tmp/aXb"),
    ("Image: 'C:\\\\x'", "C:\\x", "C:\\\\x"),
    ("Image: 'C:\\y'", "C:\\y", "C:y"),
    ("Image|contains: '/etc/*.conf'", "/bin/cat /etc/x/y.CONF", "/etc/conf"),
])
def test_string_matching(tmp_path: Path, detection: str, hit: str, miss: str) -> None:
    rs = load(tmp_path, sigma(f"selection:\n    {detection}\ncondition: selection"))
    assert fires(rs, exec_event(hit))
    assert not fires(rs, exec_event(miss))


@pytest.mark.parametrize(("detection", "hit", "miss"), [
    ("CommandLine|contains|all: [' -a ', ' -b ']", "x -b  -a y", "x -a y"),
    ("CommandLine|contains: [' -a ', ' -b ']", "x -b y", "x -c y"),
    ("CommandLine|re: 'b.d'", "abcde", "bd"),              # unanchored search
    ("CommandLine|re: '^-D'", "-D all", "x -D"),
    ("CommandLine|re: '-D'", "auditctl -D", "auditctl -d"),  # case-sensitive by default
    ("CommandLine|re|i: '-D'", "auditctl -d", "auditctl -x"),
    ("CommandLine|cased: Abc", "Abc", "abc"),
    ("CommandLine|windash|contains: ' -s '", "x /s y", "x s y"),
    ("CommandLine|base64|contains: 'hello'", "echo aGVsbG8= | base64 -d", "echo hello"),
])
def test_modifiers(tmp_path: Path, detection: str, hit: str, miss: str) -> None:
    rs = load(tmp_path, sigma(f"selection:\n    {detection}\ncondition: selection"))
    assert fires(rs, exec_event(cmdline=hit))
    assert not fires(rs, exec_event(cmdline=miss))


def test_base64offset_finds_the_text_at_any_offset(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    CommandLine|base64offset|contains: 'curl http'\n"
                              "condition: selection"))
    for pad in ("", "a", "ab"):
        encoded = base64.b64encode(f"{pad}curl http://x".encode()).decode()
        assert fires(rs, exec_event(cmdline=f"echo {encoded} | base64 -d | sh")), pad
    assert not fires(rs, exec_event(cmdline="echo " + base64.b64encode(b"wget http://x").decode()))


def test_numeric_fields_and_comparisons(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    LogonId: 0\n    ProcessId|gt: 100\ncondition: selection"))
    assert fires(rs, Event("process.exec", process=Process(pid=200, loginuid=0)))
    assert not fires(rs, Event("process.exec", process=Process(pid=50, loginuid=0)))
    assert not fires(rs, Event("process.exec", process=Process(pid=200)))  # unset number matches only null


@pytest.mark.parametrize(("condition", "cases"), [
    ("sel_a and not sel_b", {("a",): True, ("a", "b"): False, ("b",): False}),
    ("sel_a or sel_b", {("a",): True, ("b",): True, (): False}),
    ("not (sel_a or sel_b)", {(): True, ("a",): False}),
    ("1 of sel_*", {("b",): True, (): False}),
    ("all of sel_*", {("a", "b"): True, ("a",): False}),
    ("1 of them", {("c",): True, (): False}),
    ("all of them", {("a", "b", "c"): True, ("a", "b"): False}),
    ("sel_a and (sel_b or other_c)", {("a", "c"): True, ("a",): False}),
])
def test_conditions(tmp_path: Path, condition: str, cases: dict[tuple[str, ...], bool]) -> None:
    det = f"""\
        sel_a:
            CommandLine|contains: alpha
        sel_b:
            CommandLine|contains: bravo
        other_c:
            CommandLine|contains: charlie
        _private:
            CommandLine|contains: zulu
        condition: {condition}
    """
    rs = load(tmp_path, sigma(det))
    names = {"a": "alpha", "b": "bravo", "c": "charlie"}
    for present, expected in cases.items():
        cmd = " ".join(names[p] for p in present) or "nothing"
        assert fires(rs, exec_event(cmdline=cmd)) == expected, (condition, present)


def test_list_of_conditions_means_any(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("a:\n    CommandLine|contains: alpha\nb:\n    CommandLine|contains: bravo\n"
                              "condition:\n    - a\n    - b"))
    assert fires(rs, exec_event(cmdline="bravo")) and not fires(rs, exec_event(cmdline="x"))


def test_list_of_maps_is_any_of(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    - Image|endswith: /nc\n    - CommandLine|contains: ncat\n"
                              "condition: selection"))
    assert fires(rs, exec_event("/bin/nc")) and fires(rs, exec_event(cmdline="ncat -l"))
    assert not fires(rs, exec_event("/bin/ls", "ls"))


def test_unset_fields(tmp_path: Path) -> None:
    """Three-valued: a test on an unset field is unknown, so neither a selection nor ``not filter`` holds on it."""
    det = """\
        selection:
            Image|endswith: /bash
        filter:
            ParentImage|endswith: /sshd
        condition: selection and not filter
    """
    rs = load(tmp_path, sigma(det))
    assert not fires(rs, exec_event(exe=None))
    assert not fires(rs, exec_event("/bin/bash"))  # no parent image: not known to be outside the filter
    assert not fires(rs, Event("process.exec", process=Process(exe="/bin/bash"), parent=Parent(exe="/usr/sbin/sshd")))
    assert fires(rs, Event("process.exec", process=Process(exe="/bin/bash"), parent=Parent(exe="/usr/bin/tmux")))
    # A filter known false through one of its fields is false, whatever its others: the rule fires.
    two = load(tmp_path, sigma("selection:\n    Image|endswith: /bash\nfilter:\n    ParentImage|endswith: /sshd\n"
                               "    User: root\ncondition: selection and not filter"), name="two.yml")
    assert fires(two, Event("process.exec", process=Process(exe="/bin/bash", user="alice")))
    assert not fires(two, Event("process.exec", process=Process(exe="/bin/bash", user="root")))
    # ``or`` is true when either side is; ``not (not x)`` is x, unknown stays unknown.
    either = load(tmp_path, sigma("a:\n    Image|endswith: /bash\nb:\n    ParentImage|endswith: /sshd\n"
                                  "condition: a or not b"), name="either.yml")
    assert fires(either, exec_event("/bin/bash")) and not fires(either, exec_event("/bin/ls"))
    assert fires(either, Event("process.exec", process=Process(exe="/bin/ls"), parent=Parent(exe="/bin/tmux")))
    double = load(tmp_path, sigma("a:\n    Image|endswith: /bash\ncondition: not (not a)"), name="double.yml")
    assert fires(double, exec_event("/bin/bash")) and not fires(double, exec_event(exe=None))
    nulls = load(tmp_path, sigma("selection:\n    Image|endswith: /bash\nfilter_null:\n    ParentImage: null\n"
                                 "filter_empty:\n    CommandLine: ''\n"
                                 "condition: selection and not 1 of filter_*"), name="nulls.yml")
    assert not fires(nulls, exec_event("/bin/bash", "bash -i"))  # no parent image: filtered as null
    with_parent = Event("process.exec", process=Process(exe="/bin/bash", cmdline="bash -i"),
                        parent=Parent(exe="/usr/bin/tmux"))
    assert fires(nulls, with_parent)
    assert not fires(nulls, with_parent._replace(process=Process(exe="/bin/bash")))  # unset cmdline reads ''


def test_category_restricts_kinds(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    Image|endswith: /curl\ncondition: selection"))
    proc = Process(exe="/usr/bin/curl")
    assert fires(rs, Event("process.exec", process=proc))
    assert not fires(rs, Event("net.connect", process=proc)) and not fires(rs, Event("process.exit", process=proc))


def test_network_initiated_and_cidr(tmp_path: Path) -> None:
    det = """\
        selection:
            Initiated: 'true'
            DestinationPort: [4444, '5555']
        filter:
            DestinationIp|cidr: 10.0.0.0/8
        condition: selection and not filter
    """
    rs = load(tmp_path, sigma(det, "network_connection"))
    assert rs.rules[0].kinds == frozenset({"net.connect"})
    out = Event("net.connect", net=Net(direction="out", remote_ip="203.0.113.5", remote_port=5555))
    assert fires(rs, out)
    assert not fires(rs, out._replace(net=out.net._replace(remote_ip="10.1.2.3")))
    assert not fires(rs, out._replace(kind="net.accept", net=out.net._replace(direction="in")))
    host = load(tmp_path, sigma("selection:\n    DestinationHostname|endswith: .NGROK.io\ncondition: selection",
                                "network_connection"), name="host.yml")
    assert host.rules[0].kinds == frozenset({"net.connect", "net.accept"})
    assert fires(host, Event("net.connect", net=Net(domain="a.ngrok.io")))


def test_file_event_kinds_and_rename_target(tmp_path: Path) -> None:
    rs = load(tmp_path, sigma("selection:\n    TargetFilename|startswith: /etc/cron.d/\ncondition: selection",
                              "file_event"))
    assert rs.rules[0].kinds == frozenset({"file.create", "file.write", "file.rename"})
    assert fires(rs, Event("file.create", file=File(path="/etc/cron.d/job")))
    assert fires(rs, Event("file.write", file=File(path="/etc/cron.d/job")))
    assert fires(rs, Event("file.rename", file=File(path="/tmp/x", dest_path="/etc/cron.d/job")))
    assert not fires(rs, Event("file.rename", file=File(path="/etc/cron.d/job", dest_path="/tmp/x")))
    assert not fires(rs, Event("file.open", file=File(path="/etc/cron.d/job")))


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    (sigma("selection:\n    Image|expand: x\ncondition: selection"), 9, 9, "unsupported placeholder expansion"),
    (sigma("selection:\n    Image|frobnicate: x\ncondition: selection"), 9, 9, "unsupported modifier 'frobnicate'"),
    (sigma("selection:\n    Hashes|contains: abc\ncondition: selection"), 9, 9, "field 'Hashes' has no DutyWatch"),
    (sigma("selection:\n    DestinationIp: 1.2.3.4\ncondition: selection"), 9, 9, "field 'DestinationIp'"),
    (sigma("selection:\n    Image: x\ncondition: selection", "registry_set"), 6, 15, "category 'registry_set'"),
    (sigma("selection:\n    Image: x\ncondition: selection | count() > 5"), 10, 26, "aggregation"),
    (sigma("keywords:\n    - evil\ncondition: keywords"), 8, 5, "keyword selections"),
    (sigma("selection:\n    Image: x\ncondition: 2 of selection"), 10, 16, "'2 of' is not supported"),
])
def test_unsupported_rules_are_named_with_their_place(tmp_path: Path, text: str, line: int, col: int,
                                                      message: str) -> None:
    with pytest.raises(LoadErrors) as info:
        load(tmp_path, text)
    err = info.value.errors[0]
    assert (err.where.line, err.where.col) == (line, col), str(err)
    assert message in err.message and err.where.path.endswith("rule.yml")
    skipped = load(tmp_path, text, sigma_skip_unsupported=True)
    assert skipped.rules == () and [str(e) for e in skipped.skipped] == [str(err)]


@pytest.mark.parametrize(("text", "message"), [
    (sigma("selection:\n    Image: x\ncondition: selection and filter"), "'filter', which is not a selection"),
    (sigma("selection:\n    Image: x\ncondition: 1 of filter_*"), "names no selection"),
    (sigma("selection:\n    Image: x\ncondition: (selection"), "condition ends too early"),
    (sigma("selection:\n    Image: x"), "needs a condition"),
    ("title: t\ndetection: {selection: {Image: x}, condition: selection}\n", "a Sigma rule needs logsource"),
    (sigma("selection:\n    Image|cidr: 10.0.0.0/8\ncondition: selection").replace("level: high", "level: severe"),
     "level must be one of"),
    (sigma("selection:\n    Initiated: maybe\ncondition: selection", "network_connection"), "'true' or 'false'"),
    (sigma("selection:\n    DestinationIp|cidr: 10.0.0.0/33\ncondition: selection", "network_connection"),
     "bad CIDR"),
])
def test_malformed_rules_fail_even_when_skipping(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LoadErrors) as info:
        load(tmp_path, text, sigma_skip_unsupported=True)
    assert any(message in e.message for e in info.value.errors), [str(e) for e in info.value.errors]


def test_skip_unsupported_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text(sigma("selection:\n    Image|endswith: /nc\ncondition: selection"))
    (tmp_path / "b.yml").write_text(sigma("selection:\n    Hashes: x\ncondition: selection",
                                          rid="5d1bfa2b-0000-4000-8000-000000000002"))
    with pytest.raises(LoadErrors):
        load_rules([tmp_path])
    rs = load_rules([tmp_path], sigma_skip_unsupported=True)
    assert [r.id for r in rs.rules] == [RID]
    assert len(rs.skipped) == 1 and "b.yml:9:9" in str(rs.skipped[0])


def test_packs_and_sigma_files_share_a_directory_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "10-sigma.yml").write_text(sigma("selection:\n    Image|endswith: /nc\ncondition: selection"))
    (tmp_path / "20-local.yaml").write_text(f"pack: local\nrules:\n  - id: {RID}\n    override: {{severity: low}}\n")
    rs = load_rules([tmp_path])
    assert [(r.id, r.severity, r.pack) for r in rs.rules] == [(RID, "low", "sigma")]
    (tmp_path / "30-off.yaml").write_text(f"pack: disable\nrules:\n  - id: {RID}\n    override: {{enabled: false}}\n")
    assert load_rules([tmp_path]).disabled == (RID,)
