"""Socket owner lookup against a fixture /proc tree."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from agent.events import Event, Net, Parent, Process
from collectors.base import Sources
from collectors.network import FlowSet, ListenWatcher, NetworkCollector
from collectors.sockmap import (
    TCP_SYN_SENT,
    Found,
    Owner,
    ProcReader,
    SockMap,
    diag_inode,
    diag_socket,
    match_socket,
    parse_table,
    read_tables,
)

# Real lines as an x86 kernel prints them: addresses in host byte order, ports big-endian hex.
HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
TCP = HEAD + (
    # 127.0.0.1:8080 listening, inode 1001
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1\n"
    # 10.0.0.5:40000 -> 93.184.216.34:443 in SYN_SENT, inode 1002
    "   1: 0500000A:9C40 22D8B85D:01BB 02 00000001:00000000 01:00000064 00000000  1000        0 1002 2\n"
    # request socket of 127.0.0.1:8080 <- 127.0.0.1:51000: SYN_RECV, no inode
    "   2: 0100007F:1F90 0100007F:C738 03 00000000:00000000 01:00000064 00000000     0        0 0 2\n"
    "   garbage line\n"
)
TCP6 = HEAD + (
    # [::1]:22 listening, inode 2001
    "   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A"
    " 00000000:00000000 00:00000000 00000000     0        0 2001 1\n"
    # ::ffff:127.0.0.1:45000 -> ::ffff:127.0.0.1:8080 established, inode 2002
    "   1: 0000000000000000FFFF00000100007F:AFC8 0000000000000000FFFF00000100007F:1F90 01"
    " 00000000:00000000 00:00000000 00000000  1000        0 2002 1\n"
)
UDP = HEAD + (
    # 0.0.0.0:53 bound (a DNS server), inode 3001
    "   0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3001 2\n"
    # 0.0.0.0:50000 unconnected client socket, ephemeral port, inode 3002
    "   1: 00000000:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 3002 2\n"
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="fixture lines are little-endian kernel text")

BTIME = 1_700_000_000


def _proc(root: Path, pid: int, sockets: list[int], *, name: str = "curl", exe: str = "/usr/bin/curl",
          ppid: int = 1, uid: int = 1000, loginuid: str = "1000", start_ticks: int = 500) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    for n, inode in enumerate(sockets, start=3):
        os.symlink(f"socket:[{inode}]", d / "fd" / str(n))
    os.symlink("/dev/null", d / "fd" / "0")
    os.symlink(exe, d / "exe")
    os.symlink("/home/u", d / "cwd")
    rest = " ".join(["0"] * 17)
    (d / "stat").write_text(f"{pid} ({name}) S {ppid} {rest} {start_ticks} 0 0\n")
    (d / "status").write_text(f"Name:\t{name}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "cmdline").write_text(f"{exe}\0-s\0https://example.test/\0")
    (d / "loginuid").write_text(loginuid)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "net" / "tcp6").write_text(TCP6)
    (tmp_path / "net" / "udp").write_text(UDP)
    (tmp_path / "stat").write_text(f"cpu 1 2 3\nbtime {BTIME}\n")
    (tmp_path / "sys" / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "sys" / "net" / "ipv4" / "ip_local_port_range").write_text("32768\t60999\n")
    _proc(tmp_path, 1, [], name="systemd", exe="/usr/lib/systemd/systemd", uid=0, loginuid="4294967295")
    _proc(tmp_path, 700, [1001, 3001], name="server", exe="/usr/sbin/server", uid=0, loginuid="4294967295")
    _proc(tmp_path, 4242, [1002, 2002], ppid=700)
    return tmp_path


def test_tables_give_addresses_ports_states_and_inodes(proc: Path) -> None:
    tcp = read_tables(proc, "tcp")
    assert [(e.local_ip, e.local_port, e.remote_ip, e.remote_port, e.inode) for e in tcp] == [
        ("127.0.0.1", 8080, "0.0.0.0", 0, 1001),
        ("10.0.0.5", 40000, "93.184.216.34", 443, 1002),
        ("127.0.0.1", 8080, "127.0.0.1", 51000, 0),
        ("::1", 22, "::", 0, 2001),
        # an IPv4-mapped dual-stack socket is given in IPv4 form, so IPv4 packets find it
        ("127.0.0.1", 45000, "127.0.0.1", 8080, 2002),
    ]
    assert tcp[1].state == TCP_SYN_SENT and tcp[1].uid == 1000


def test_missing_tables_are_empty(tmp_path: Path) -> None:
    assert read_tables(tmp_path, "udp") == []
    assert list(parse_table("header only\n", "tcp", False)) == []


def test_syn_finds_the_connecting_process(proc: Path) -> None:
    assert SockMap(proc).lookup("tcp", "10.0.0.5", 40000, "93.184.216.34", 443) == (1002, 4242)


def test_syn_ack_finds_the_listener_behind_a_request_socket(proc: Path) -> None:
    assert SockMap(proc).lookup("tcp", "127.0.0.1", 8080, "127.0.0.1", 51000) == (1001, 700)


def test_udp_from_a_wildcard_bound_socket(proc: Path) -> None:
    _, pid = SockMap(proc).lookup("udp", "192.0.2.7", 53, "198.51.100.1", 33000)
    assert pid == 700


def test_unknown_socket_gives_nothing(proc: Path) -> None:
    assert SockMap(proc).lookup("tcp", "10.0.0.5", 40001, "93.184.216.34", 443) == (None, None)


def test_exact_four_tuple_wins_over_listener() -> None:
    entries = list(parse_table(TCP6, "tcp", True)) + list(parse_table(TCP, "tcp", False))
    hit = match_socket(entries, "127.0.0.1", 45000, "127.0.0.1", 8080)
    assert hit is not None and hit.inode == 2002


def test_owner_is_cached_and_refreshed_when_the_process_is_gone(proc: Path) -> None:
    m = SockMap(proc)
    assert m.pid_of(1002) == 4242
    scans = m.scans
    assert m.pid_of(2002) == 4242  # learnt during the first scan
    assert m.pid_of(1002) == 4242
    assert m.scans == scans
    # The socket passes to a new process and the old one exits: the stale hit rescans.
    _proc(proc, 5000, [1002])
    for f in (proc / "4242" / "fd").iterdir():
        f.unlink()
    (proc / "4242" / "fd").rmdir()
    for f in (proc / "4242").iterdir():
        f.unlink()
    (proc / "4242").rmdir()
    assert m.pid_of(1002) == 5000
    assert m.scans == scans + 1


def _close_fd(proc: Path, pid: int, fd: int) -> None:
    (proc / str(pid) / "fd" / str(fd)).unlink()


def test_socket_handed_to_another_process_is_not_named_for_its_old_owner(proc: Path) -> None:
    m = SockMap(proc)
    assert m.pid_of(1002) == 4242
    # A fork hands the connection to a child and the parent closes its copy but lives on.
    _proc(proc, 5000, [1002], ppid=4242)
    _close_fd(proc, 4242, 3)
    assert m.pid_of(1002) == 5000
    assert m.lookup("tcp", "10.0.0.5", 40000, "93.184.216.34", 443) == (1002, 5000)


def test_sockets_learnt_in_passing_are_checked_before_use(proc: Path) -> None:
    m = SockMap(proc)
    assert m.pid_of(1002) == 4242  # the scan also noted 2002 at 4242
    _close_fd(proc, 4242, 4)
    _proc(proc, 5000, [2002])
    assert m.pid_of(2002) == 5000


def test_find_gives_the_owner_its_fd_start_time_and_the_socket_uid(proc: Path) -> None:
    got = SockMap(proc).find("tcp", "10.0.0.5", 40000, "93.184.216.34", 443)
    assert got == Found(inode=1002, owner=Owner(pid=4242, fd=3, start=500), uid=1000)
    assert SockMap(proc).find("tcp", "10.0.0.5", 40001, "93.184.216.34", 443) == Found()


def test_a_read_is_confirmed_only_while_the_pid_is_still_the_owner(proc: Path) -> None:
    m = SockMap(proc)
    owner = m.owner_of(1002)
    assert owner is not None and m.confirm(owner, 1002)
    _close_fd(proc, 4242, 3)
    assert m.confirm(owner, 1002)  # closed it (or exiting): still the same process
    (proc / "4242" / "stat").write_text("4242 (curl) S 1 " + " ".join(["0"] * 17) + " 900 0 0\n")
    assert not m.confirm(owner, 1002)  # the pid now names a process started later


def _gone(proc: Path, pid: int) -> None:
    for f in (proc / str(pid) / "fd").iterdir():
        f.unlink()
    (proc / str(pid) / "fd").rmdir()
    for f in (proc / str(pid)).iterdir():
        f.unlink()
    (proc / str(pid)).rmdir()


def test_event_never_carries_a_process_that_took_over_the_owners_pid(proc: Path) -> None:
    """The owner exits and its pid is reused between the socket lookup and the read of the process."""
    def reused(pid: int) -> tuple[Process, Parent] | None:
        _gone(proc, pid)
        _proc(proc, pid, [], name="other", exe="/usr/bin/other", uid=0, start_ticks=900)
        return Process(pid=pid, exe="/usr/bin/other", uid=0, start_time=9.0), Parent()

    c = NetworkCollector({"mode": "sniff"}, Sources(proc_root=proc), process_lookup=reused)
    events: list[Event] = []
    net = Net(proto="tcp", direction="out", local_ip="10.0.0.5", local_port=40000,
              remote_ip="93.184.216.34", remote_port=443)
    c._emit_found(lambda e: events.append(e) is None, "net.connect", net,
                  c.sockmap.find("tcp", "10.0.0.5", 40000, "93.184.216.34", 443))
    (ev,) = events
    assert (ev.process.pid, ev.process.exe, ev.process.uid) == (4242, None, 1000)  # the socket's uid
    assert c.health.drops == {"no_process": 1}


def test_owner_gone_before_the_lookup_leaves_the_socket_uid(proc: Path) -> None:
    _gone(proc, 4242)
    c = NetworkCollector({"mode": "sniff"}, Sources(proc_root=proc))
    events: list[Event] = []
    net = Net(proto="tcp", direction="out", local_ip="10.0.0.5", local_port=40000,
              remote_ip="93.184.216.34", remote_port=443)
    c._emit_found(lambda e: events.append(e) is None, "net.connect", net,
                  c.sockmap.find("tcp", "10.0.0.5", 40000, "93.184.216.34", 443))
    (ev,) = events
    assert (ev.process.pid, ev.process.exe, ev.process.uid) == (None, None, 1000)
    assert c.health.drops == {"no_process": 1}


def test_cache_is_bounded(proc: Path) -> None:
    _proc(proc, 6000, list(range(9000, 9050)))
    m = SockMap(proc, max_entries=10)
    assert m.pid_of(9000) == 6000
    assert m.pid_of(1001) == 700
    scans = m.scans
    for inode in range(9000, 9050):
        assert m.pid_of(inode) == 6000
    assert m.scans > scans  # most of the 50 were forgotten, so some lookups scanned again
    assert m.pid_of(424242) is None


def test_process_fields(proc: Path) -> None:
    (proc / "4242" / "exe").unlink()
    os.symlink("/tmp/dropper (deleted)", proc / "4242" / "exe")
    got = ProcReader(proc)(4242)
    assert got is not None
    p, parent = got
    assert (p.pid, p.ppid, p.name, p.exe, p.uid, p.loginuid) == (4242, 700, "curl", "/tmp/dropper", 1000, 1000)
    assert p.cmdline == "/usr/bin/curl -s https://example.test/"
    assert p.cwd == "/home/u"
    hz = os.sysconf("SC_CLK_TCK")
    assert p.start_time == pytest.approx(BTIME + 500 / hz)
    assert (parent.pid, parent.name, parent.exe) == (700, "server", "/usr/sbin/server")


def test_unset_loginuid_and_gone_process(proc: Path) -> None:
    got = ProcReader(proc)(700)
    assert got is not None and got[0].loginuid is None and got[0].user == "root"
    assert ProcReader(proc)(999) is None


def test_listen_watcher_reports_new_listeners_once(proc: Path) -> None:
    w = ListenWatcher(proc)
    first = w.poll()
    # the UDP client on an ephemeral port is not a service
    assert [(e.proto, e.local_ip, e.local_port) for e in first] == [
        ("tcp", "::1", 22), ("tcp", "127.0.0.1", 8080), ("udp", "0.0.0.0", 53)]
    assert w.poll() == []
    line = "   3: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1\n"
    (proc / "net" / "tcp").write_text(TCP + line)
    assert [(e.local_port, e.inode) for e in w.poll()] == [(3306, 1004)]


def test_flow_set_is_bounded_lru() -> None:
    flows = FlowSet(size=2)
    assert flows.first("a") and flows.first("b")
    assert not flows.first("a")  # refreshes a
    assert flows.first("c")  # evicts b
    assert not flows.first("a")
    assert flows.first("b")


def _ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_live_lookup_by_netlink_matches_the_socket_files() -> None:
    """sock_diag on this kernel finds the same sockets the fd table names (loopback only)."""
    with socket.socket() as lst, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, socket.socket(socket.AF_INET6) as dual:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        port = lst.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as cli:
            lip, lport = cli.getsockname()
            assert diag_inode("tcp", lip, lport, "127.0.0.1", port) == _ino(cli)
            found = diag_socket("tcp", lip, lport, "127.0.0.1", port)
            assert found is not None and found.uid == os.geteuid()
            # the server side sits in the accept queue without a file: its listener answers
            m = SockMap()
            assert m.netlink
            assert m.lookup("tcp", "127.0.0.1", port, lip, lport) == (_ino(lst), os.getpid())
            dual.connect(("::ffff:127.0.0.1", port))  # a dual-stack socket seen by IPv4 packets
            assert diag_inode("tcp", "127.0.0.1", dual.getsockname()[1], "127.0.0.1", port) == _ino(dual)
        srv.bind(("127.0.0.1", 0))
        udp.connect(srv.getsockname())
        ulip, ulport = udp.getsockname()
        assert diag_inode("udp", ulip, ulport, *srv.getsockname()) == _ino(udp)
        assert diag_inode("udp", "127.0.0.1", srv.getsockname()[1], ulip, ulport) == _ino(srv)
        assert diag_inode("tcp", "127.0.0.1", 1, "127.0.0.1", 2) is None


def test_sock_diag_listen_dump_matches_the_proc_tables() -> None:
    """The cheap netlink dump the listen watcher uses sees what /proc/net shows."""
    import socket as so

    from collectors.network import ListenWatcher
    from collectors.sockdiag import dump
    tcp = so.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = so.socket(so.AF_INET6, so.SOCK_DGRAM)
    for port in range(20000, 20100):  # a service port: the kernel's ephemeral range counts as clients
        try:
            udp.bind(("::1", port))
            break
        except OSError:
            continue
    try:
        dump("tcp", 1 << 10)
    except OSError as exc:
        pytest.skip(f"sock_diag not usable here: {exc}")
    fast = ListenWatcher(Path("/proc"))
    slow = ListenWatcher(Path("/proc"))
    slow._netlink = False
    seen = {(e.proto, e.local_ip, e.local_port, e.inode) for e in fast.poll()}
    assert seen == {(e.proto, e.local_ip, e.local_port, e.inode) for e in slow.poll()}
    assert any(p == "tcp" and ip == "127.0.0.1" and port == tcp.getsockname()[1] for p, ip, port, _ in seen)
    assert any(p == "udp" and ip == "::1" and port == udp.getsockname()[1] for p, ip, port, _ in seen)
    tcp.close()
    udp.close()
