"""The audit collector's cheap paths give what the full ones gave: record fields, units, transports, exclusions."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.events import Parent
from collectors.audit_assemble import Assembler
from collectors.audit_records import _FIELD, parse_record, serial_of
from collectors.audit_rules import build_rules, is_own, rule_key, syscall_name

# Records as this kernel writes them (captured), one of each shape the fast paths read.
SYSCALL = ('audit(1764683200.123:104567): arch=c000003e syscall=59 success=yes exit=0 a0=7ffd5c0a1b20 '
           'a1=7f3a2c0b1e40 a2=7ffd5c0a2d58 a3=0 items=2 ppid=123 pid=4567 auid=4294967295 uid=0 gid=0 euid=0 '
           'suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts3 ses=4294967295 comm="quick" '
           'exe="/tmp/dw-audit/quick" subj=unconfined key="dutywatch-exec"')
FAILED = ('audit(1764683200.124:104568): arch=c000003e syscall=42 success=no exit=-111 a0=3 a1=7ffd a2=10 a3=0 '
          'items=0 ppid=1 pid=99 auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 sgid=1000 '
          'fsgid=1000 tty=(none) ses=3 comm=6D7920636174 exe=2F746D702F6D7920636174 key=(null)')
PATHS = ('audit(1764683200.123:104567): item=0 name="/tmp/x" inode=1234567 dev=00:2a mode=0100755 ouid=0 ogid=0 '
         'rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0',
         'audit(1764683200.123:104567): item=1 name=(null) nametype=PARENT cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 '
         'cap_frootid=0')


def _generic(payload: str) -> dict[str, str]:
    return dict(_FIELD.findall(re.sub(r"^audit\([^)]*\):\s?", "", payload)))


def test_the_fast_record_paths_read_what_the_field_by_field_parse_reads() -> None:
    for rtype, payload in ((1300, SYSCALL), (1300, FAILED), (1302, PATHS[0]), (1302, PATHS[1])):
        rec = parse_record(rtype, payload.encode())
        assert rec is not None and rec.serial == serial_of(payload.encode())
        full = _generic(payload)
        assert rec.fields and all(full[k] == v for k, v in rec.fields.items()), rec.fields
        wanted = {"arch", "syscall", "success", "exit", "a0", "a1", "a2", "ppid", "pid", "auid", "uid", "comm", "exe",
                  "key"} if rtype == 1300 else {"item", "name", "inode", "dev", "nametype"}
        assert wanted & full.keys() <= rec.fields.keys()
    # A record of another shape (fields missing, another order) is still read field by field.
    odd = parse_record(1300, b'audit(1.5:7): pid=12 auid=4294967295 comm="x" exe="/bin/x" key=(null)')
    assert odd is not None and odd.fields["pid"] == "12" and odd.fields["key"] == "(null)"
    assert serial_of(b"garbage") is None and serial_of(b"audit(1.2:x): a=b") is None


def _exec(a: Assembler, serial: int, pid: int, ppid: int, exe: str, auid: str = "4294967295") -> list[object]:
    a.feed(1300, f'audit(1.0:{serial}): arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 a3=0 items=1 '
                 f'ppid={ppid} pid={pid} auid={auid} uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 '
                 f'tty=(none) ses=4294967295 comm="x" exe="{exe}" key="dutywatch-exec"'.encode(), 0.0)
    a.feed(1309, f'audit(1.0:{serial}): argc=1 a0="{exe}"'.encode(), 0.0)
    return list(a.feed(1320, f"audit(1.0:{serial}): ".encode(), 0.0))


def test_a_live_process_is_read_and_a_gone_daemons_child_runs_in_its_parents_unit() -> None:
    read: list[int] = []
    parents = {500: Parent(pid=500, name="cron", exe="/usr/sbin/cron"),
               1: Parent(pid=1, name="systemd", exe="/usr/lib/systemd/systemd"),
               700: Parent(pid=700, name="runc", exe="/usr/bin/runc")}
    alive = {10: "cron.service", 30: "docker-abc.scope", 13: "moved.service"}

    def units(pid: int, exe: str | None) -> tuple[bool, str | None]:
        read.append(pid)
        return (True, alive[pid]) if pid in alive else (False, None)

    a = Assembler(syscall_names=syscall_name, parents=parents.get, units=units,
                  parent_units=lambda ppid: (ppid == 500, "cron.service" if ppid == 500 else None))
    (cron,) = _exec(a, 1, 10, 1, "/usr/sbin/cron")  # alive: read
    (job,) = _exec(a, 2, 11, 500, "/bin/sh")  # gone before it was read: its parent's unit
    (grandchild,) = _exec(a, 3, 12, 11, "/bin/true")  # gone too: the unit of the exec seen here
    (again,) = _exec(a, 4, 11, 500, "/bin/other")  # a second exec of pid 11 (it may have moved itself): none
    (contained,) = _exec(a, 5, 30, 700, "/bin/app")  # a container runtime's child: read
    (moved,) = _exec(a, 6, 13, 500, "/bin/job")  # moved by its parent before the exec, still running: read
    (person,) = _exec(a, 7, 40, 500, "/bin/vi", auid="1000")  # a login identity: no unit at all
    assert [e.process.unit for e in (cron, job, grandchild, contained, moved, person)] == [  # type: ignore[attr-defined]
        "cron.service", "cron.service", "cron.service", "docker-abc.scope", "moved.service", None]
    assert read == [10, 11, 12, 11, 30, 13]
    assert again.process.unit is None  # type: ignore[attr-defined]


def _call(a: Assembler, serial: int, syscall: int, pid: int, a0: str, a1: str, a2: str, exit_: str,
          saddr: str | None = None) -> list[object]:
    key = "dutywatch-sock" if syscall == 41 else "dutywatch-net"
    a.feed(1300, f'audit(1.0:{serial}): arch=c000003e syscall={syscall} success=yes exit={exit_} a0={a0} a1={a1} '
                 f'a2={a2} a3=0 items=0 ppid=1 pid={pid} auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 '
                 f'fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=(none) ses=3 comm="c" exe="/bin/c" '
                 f'key="{key}"'.encode(), 0.0)
    if saddr is not None:
        a.feed(1306, f"audit(1.0:{serial}): saddr={saddr}".encode(), 0.0)
    return list(a.feed(1320, f"audit(1.0:{serial}): ".encode(), 0.0))


QUIC = "020001BBC6336405" + "00" * 8  # 198.51.100.5:443
NTP = "0200007BC6336405" + "00" * 8  # 198.51.100.5:123


def test_the_transport_of_a_connect_is_the_one_its_socket_was_made_with() -> None:
    a = Assembler(syscall_names=syscall_name)
    assert _call(a, 1, 41, 50, "2", "80802", "0", "3") == []  # socket(AF_INET, SOCK_DGRAM|CLOEXEC|NONBLOCK): no event
    (udp,) = _call(a, 2, 42, 50, "3", "7ffd", "10", "0", QUIC)
    assert (udp.net.proto, udp.net.remote_port) == ("udp", 443)  # type: ignore[attr-defined]
    _call(a, 3, 41, 50, "2", "1", "0", "3")  # the descriptor closed and made again as a TCP socket
    (tcp,) = _call(a, 4, 42, 50, "3", "7ffd", "10", "-115", QUIC)
    assert tcp.net.proto == "tcp"  # type: ignore[attr-defined]
    (other,) = _call(a, 5, 42, 51, "3", "7ffd", "10", "0", QUIC)  # another process's descriptor 3: not that socket
    assert other.net.proto == "tcp"  # type: ignore[attr-defined]
    _call(a, 6, 41, 52, "a", "2", "88", "4")  # an IPv6 UDP-Lite socket (protocol 136)
    (lite,) = _call(a, 7, 44, 52, "4", "7ffd", "1", "1", NTP)
    assert lite.net.proto == "udplite"  # type: ignore[attr-defined]
    _call(a, 8, 41, 53, "2", "2", "1", "5")  # a ping socket
    (ping,) = _call(a, 9, 42, 53, "5", "7ffd", "10", "0", NTP)
    assert ping.net.proto == "icmp"  # type: ignore[attr-defined]


def test_socket_rules_are_the_agents_own_and_ask_for_inet_sockets_that_were_made() -> None:
    socks = [r for r in build_rules([], 4242) if r.key == "dutywatch-sock"]
    assert socks and all(is_own(r.pack()) and rule_key(r.pack()) == "dutywatch-sock" for r in socks)
    families = {f[2] for r in socks for f in r.fields if f[0] == 200}
    assert families == {2, 10}


CORPUS = Path(__file__).with_name("audit_corpus.jsonl")


def test_real_records_make_the_events_they_made_before_the_fast_paths() -> None:
    # Record sets as this kernel wrote them (an exec of a static program, a dynamic one, through ld.so, from a
    # memfd, of scripts, with a long command line; failed execs; connects; file operations under a watch; a
    # mount; a signal to the agent), each with the events the field-by-field assembly made of them. The unit
    # lookup answers one name for every process, so inheriting it changes nothing here (tested above).
    a = Assembler(syscall_names=syscall_name, units=lambda pid, exe: (True, "constant.service"),
                  parents=lambda p: Parent(pid=p, name=f"n{p}", exe=f"/e/{p}", cmdline=f"c {p}"),
                  asset_prefixes=("/tmp/dw13e-cap-hs1dcp7a/secret",), agent_pid=13008)
    sets = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    kinds = set()
    for s in sets:
        got = []
        for rtype, body in s["records"]:
            got += [e.to_dict() for e in a.feed(rtype, body.encode(), 0.0)]
        assert got == s["events"], s["records"][0]
        kinds |= {e["event"]["kind"] for e in got}
    assert kinds >= {"process.exec", "net.connect", "file.open", "file.write", "file.rename", "file.delete",
                     "media.mount", "media.unmount", "agent.tamper"}


def test_datagrams_are_read_many_to_a_system_call_each_whole() -> None:
    import socket

    from collectors.audit_netlink import _Batches

    class Small(_Batches):
        SLOTS = 4  # a socketpair queues only ~10 datagrams

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        batches = Small()
        assert batches.read(b.fileno()) == []  # nothing queued: no wait, nothing read
        sent = [b"audit(1.0:%d): x=%s" % (i, b"y" * (i * 997)) for i in range(7)]
        for d in sent:
            a.send(d)
        assert batches.read(b.fileno()) == sent[:4]
        assert batches.read(b.fileno()) == sent[4:]
        assert batches.read(b.fileno()) == []
