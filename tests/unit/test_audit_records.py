"""Audit record text decoding and assembly without a kernel: hex fields, split arguments, addresses, user records."""

from __future__ import annotations

from collectors.audit_assemble import Assembler
from collectors.audit_records import argv, device, parse_record, sockaddr, text
from collectors.audit_rules import (
    AUDIT_PERM,
    AUDIT_PERM_ATTR,
    AUDIT_PERM_READ,
    AUDIT_PERM_WRITE,
    Rule,
    build_rules,
    is_own,
    rule_key,
    syscall_name,
    watch_rules,
)


def rec(serial: int, body: str) -> bytes:
    return f"audit(1700000000.250:{serial}): {body}".encode()


def test_header_fields_and_hex_strings() -> None:
    r = parse_record(1300, rec(7, 'pid=12 auid=4294967295 comm=6D7920636174 exe="/usr/bin/cat" key=(null)'))
    assert r is not None and r.serial == 7 and r.time == 1700000000.25
    assert text(r.fields["comm"]) == "my cat"  # spaces force hex: a name cannot forge fields
    assert text(r.fields["exe"]) == "/usr/bin/cat" and text(r.fields["key"]) is None
    assert parse_record(1300, b"garbage") is None


def test_long_arguments_split_over_pieces_are_joined() -> None:
    big = "x" * 10
    fields = {"argc": "3", "a0": '"prog"', "a1_len": "10", "a1[0]": big[:6].encode().hex(),
              "a1[1]": big[6:].encode().hex(), "a2": "2D2D7468696E67"}
    assert argv(fields) == ["prog", big, "--thing"]


def test_socket_addresses() -> None:
    v4 = "02000035C0A80101" + "00" * 8
    assert sockaddr(v4) == ("inet", "192.168.1.1", 53)
    v6 = "0A0001BB00000000" + "00000000000000000000FFFFC6336401" + "00000000"
    assert sockaddr(v6) == ("inet6", "198.51.100.1", 443)
    assert sockaddr("01002F746D702F73")[0] == "unix"
    assert device("fe:01") == "254:1"


def test_user_record_message_fields_are_flattened() -> None:
    body = ("pid=5 uid=0 auid=1000 ses=3 msg='op=PAM:authentication grantors=? acct=\"bob\" exe=\"/usr/bin/su\" "
            "hostname=? addr=? terminal=/dev/pts/1 res=failed'")
    r = parse_record(1100, rec(9, body))
    assert r is not None
    assert text(r.fields["acct"]) == "bob" and r.fields["res"] == "failed" and r.fields["auid"] == "1000"


def test_a_login_failure_is_an_event_once_even_when_read_twice() -> None:
    a = Assembler(syscall_names=syscall_name)
    body = ("pid=5 uid=0 auid=4294967295 ses=4294967295 msg='op=PAM:authentication acct=\"bob\" "
            "exe=\"/usr/sbin/sshd\" hostname=203.0.113.4 addr=203.0.113.4 terminal=ssh res=failed'")
    first = a.feed(1100, rec(11, body), 0.0)
    again = a.feed(1100, rec(11, body), 0.0)  # the same record from the multicast group while handing over
    assert [e.kind for e in first] == ["auth.login"] and again == []
    e = first[0]
    assert (e.auth.account, e.auth.result, e.auth.source_ip, e.auth.service) == ("bob", "failure", "203.0.113.4",
                                                                                  "sshd")
    assert e.process.loginuid is None and e.process.uid is None  # sshd's root is not the operator


def test_exec_assembly_names_the_script_an_interpreter_ran() -> None:
    a = Assembler(syscall_names=syscall_name)
    recs = [
        (1300, 'arch=c000003e syscall=59 success=yes exit=0 items=2 ppid=1 pid=40 auid=1000 uid=1000 comm="python3" '
               'exe="/usr/bin/python3.11" key="dutywatch-exec"'),
        (1309, 'argc=2 a0="python3" a1="x.py"'),
        (1307, 'cwd="/tmp/work"'),
        (1302, 'item=0 name="/usr/bin/python3" inode=5 dev=fe:00 nametype=NORMAL'),
        (1302, 'item=1 name="/lib64/ld-linux-x86-64.so.2" inode=6 dev=fe:00 nametype=NORMAL'),
    ]
    for t, body in recs:
        assert a.feed(t, rec(20, body), 0.0) == []
    (e,) = a.feed(1320, rec(20, ""), 0.0)
    assert e.kind == "process.exec" and e.process.exe == "/usr/bin/python3.11" and e.process.loginuid == 1000
    assert e.file.path == "/tmp/work/x.py" and e.process.cwd == "/tmp/work"


def test_a_daemons_exec_is_named_by_its_unit_and_a_logged_in_users_is_not_looked_up() -> None:
    asked: list[tuple[int, str | None]] = []

    def units(pid: int, exe: str | None) -> tuple[bool, str | None]:
        asked.append((pid, exe))
        return True, "cron.service" if exe == "/usr/sbin/cron" else None

    a = Assembler(syscall_names=syscall_name, units=units)
    events = []
    for serial, pid, auid, exe in ((30, 41, "4294967295", "/usr/sbin/cron"), (31, 42, "1000", "/usr/sbin/cron"),
                                   (32, 43, "4294967295", "/usr/bin/other")):
        a.feed(1300, rec(serial, f'arch=c000003e syscall=59 success=yes exit=0 items=1 ppid=1 pid={pid} '
                                 f'auid={auid} uid=0 comm="x" exe="{exe}" key="dutywatch-exec"'), 0.0)
        a.feed(1309, rec(serial, 'argc=1 a0="x"'), 0.0)
        events += a.feed(1320, rec(serial, ""), 0.0)
    assert [e.process.unit for e in events] == ["cron.service", None, None]
    assert asked == [(41, "/usr/sbin/cron"), (43, "/usr/bin/other")]  # a login identity wins: never looked up


def test_a_rename_over_a_watched_file_names_both_the_source_and_the_destination() -> None:
    a = Assembler(syscall_names=syscall_name, asset_prefixes=("/etc/x/unit.service",))
    recs = [
        (1300, 'arch=c000003e syscall=82 success=yes exit=0 items=4 ppid=1 pid=50 auid=1000 uid=0 comm="mv" '
               'exe="/usr/bin/mv" key="dutywatch-file"'),
        (1307, 'cwd="/etc/x"'),
        (1302, 'item=0 name="/etc/x/" inode=2 dev=fe:00 nametype=PARENT'),
        (1302, 'item=1 name="/etc/x/" inode=2 dev=fe:00 nametype=PARENT'),
        (1302, 'item=2 name="unit.service.new" inode=7 dev=fe:00 nametype=DELETE'),
        (1302, 'item=3 name="unit.service" inode=6 dev=fe:00 nametype=DELETE'),
        (1302, 'item=4 name="unit.service" inode=7 dev=fe:00 nametype=CREATE'),
    ]
    for t, body in recs:
        a.feed(t, rec(60, body), 0.0)
    (e,) = a.feed(1320, rec(60, ""), 0.0)
    assert e.kind == "file.rename" and e.process.loginuid == 1000
    assert (e.file.path, e.file.dest_path, e.file.inode) == ("/etc/x/unit.service.new", "/etc/x/unit.service", 7)


def test_the_agents_own_files_are_watched_for_changes_only_unless_they_are_assets() -> None:
    rules = watch_rules(["/srv/secret/"], 7, changes_only=["/srv/secret/", "/etc/dutywatch/", "/usr/bin/dutywatch"])
    perms = {r.label: next(f[2] for f in r.fields if f[0] == AUDIT_PERM) for r in rules}
    assert perms == {"/srv/secret": AUDIT_PERM_READ | AUDIT_PERM_WRITE | AUDIT_PERM_ATTR,
                     "/etc/dutywatch": AUDIT_PERM_WRITE | AUDIT_PERM_ATTR,
                     "/usr/bin/dutywatch": AUDIT_PERM_WRITE | AUDIT_PERM_ATTR}


def test_rules_round_trip_their_key_and_are_told_apart() -> None:
    rules = build_rules(["/srv/secret/"], 4242)
    assert rules and all(isinstance(r, Rule) for r in rules)
    keys = {rule_key(r.pack()) for r in rules}
    assert {"dutywatch-exec", "dutywatch-net", "dutywatch-file", "dutywatch-agent"} <= keys
    assert all(is_own(r.pack()) for r in rules)
    assert not is_own(Rule("identity", (59,)).pack())


def _module_event(serial: int, syscall: str, outcome: str, name: str | None) -> list[object]:
    a = Assembler(syscall_names=syscall_name)
    a.feed(1300, rec(serial, f'arch=c000003e syscall={syscall} {outcome} a0=3 a1=0 a2=0 items=0 ppid=1 pid=50 '
                             'auid=1000 uid=0 comm="insmod" exe="/usr/bin/kmod" key="dutywatch-module"'), 0.0)
    if name is not None:
        a.feed(1330, rec(serial, f"name={name}"), 0.0)
    return list(a.feed(1320, rec(serial, ""), 0.0))


def test_module_load_and_removal_name_the_module_and_who() -> None:
    # The kernel's KERN_MODULE record as it writes it (a name with a space or quote comes hex-encoded).
    (e,) = _module_event(30, "313", "success=yes exit=0", '"usb_storage"')
    assert (e.kind, e.inventory.name, e.inventory.change) == ("inventory.module", "usb_storage", "added")
    assert e.detail is None
    assert e.process.exe == "/usr/bin/kmod" and e.process.loginuid == 1000
    (e,) = _module_event(31, "175", "success=yes exit=0", "6576696C206D6F64")
    assert (e.inventory.name, e.inventory.change) == ("evil mod", "added")
    (e,) = _module_event(32, "176", "success=yes exit=0", '"loop"')
    assert (e.inventory.name, e.inventory.change) == ("loop", "removed")


def test_a_refused_load_says_why_and_nothing_changed_is_no_event() -> None:
    (e,) = _module_event(33, "313", "success=no exit=-129", None)  # EKEYREJECTED: an unsigned module
    assert (e.inventory.change, e.inventory.name) == ("refused", None)
    assert e.detail is not None and e.detail.startswith("finit_module refused by the kernel: EKEYREJECTED")
    assert _module_event(34, "313", "success=no exit=-17", '"loop"') == []  # EEXIST: loaded before
    assert _module_event(35, "176", "success=no exit=-11", '"loop"') == []  # EAGAIN: in use, stays


def test_a_module_change_reported_by_the_audit_source_is_left_out_of_the_inventory_diff() -> None:
    from agent.events import Event, Inventory
    from collectors.audit import AuditCollector

    c = AuditCollector({})

    def mod(name: str, change: str, collector: str) -> Event:
        return Event("inventory.module", 1.0, collector, inventory=Inventory(name=name, change=change))

    c._module_reported(mod("usb_storage", "added", "audit"))
    assert c.reported_module(mod("usb_storage", "added", "inventory"))  # the diff's copy: left out
    assert not c.reported_module(mod("usb_storage", "added", "inventory"))  # once only: a later load is new
    assert not c.reported_module(mod("floppy", "added", "inventory"))  # never seen by the audit source
    c._module_reported(mod("loop", "added", "audit"))
    c._module_reported(mod("loop", "removed", "audit"))  # loaded and gone again: the diff sees neither
    assert not c.reported_module(mod("loop", "added", "inventory"))
    assert not c.reported_module(mod("loop", "removed", "inventory"))
