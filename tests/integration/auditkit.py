"""Helpers for the audit collector's tests: the kernel's audit state, auditd, static programs, a running collector.

Every test that runs the collector checks that ``auditctl -s`` (enabled flag,
daemon pid, backlog limit) and ``auditctl -l`` are as they were before it, and
puts them back itself if not, so one failure cannot leak into the host.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.events import Event
from collectors.audit import AuditCollector

TEST_UID = 4242  # the test person's uid and loginuid (no account needed)
AUDITD = "/sbin/auditd"


def auditctl(*args: str) -> str:
    """auditctl's output (it only reads here, except where a test restores state)."""
    return subprocess.run(["auditctl", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def status() -> dict[str, str]:
    """``auditctl -s`` as a mapping."""
    out = {}
    for line in auditctl("-s").splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def kernel_state() -> tuple[str, str, str, str]:
    """What a run must leave as it found: enabled flag, daemon pid, backlog limit, rule list."""
    st = status()
    return st["enabled"], st["pid"], st["backlog_limit"], auditctl("-l")


def restore(state: tuple[str, str, str, str]) -> None:
    """Put the flag and backlog limit back and delete rules that were not there."""
    enabled, _pid, backlog, rules = state
    now = kernel_state()
    if now[3] != rules and rules.strip() == "No rules":
        auditctl("-D")
    if now[2] != backlog:
        auditctl("-b", backlog)
    if now[0] != enabled and enabled != "2":
        auditctl("-e", enabled)


class KernelLogAudit:
    """Audit records of operations written to the kernel log from now on (with no daemon to take them they go there).

    Read from /dev/kmsg after its end at the start, so lines the ring buffer drops meanwhile cannot hide a
    new one (counting the lines of ``dmesg`` before and after can: the buffer wraps on a busy host). The
    kernel's own note that the audit daemon role changed hands (CONFIG_CHANGE, type 1305: one line when
    the agent gives the role back, as auditd's own stop leaves) is not counted: the flood to keep out of the
    log is the records of the operations the rules audit.
    """

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        """The audit records logged since this object was made (and since the last call)."""
        lines: list[str] = []
        while True:
            try:
                rec = os.read(self._fd, 8192)
            except BlockingIOError:
                return lines
            except BrokenPipeError:  # records overwritten before they were read: the next read goes on
                continue
            msg = rec.decode("utf-8", "replace").split(";", 1)[-1]
            if re.match(r"audit: type=(?!1305\b)\d+", msg):
                lines.append(msg.splitlines()[0])

    def close(self) -> None:
        os.close(self._fd)


def compile_static(source: str, out: Path) -> Path:
    """A static program built from C ``source`` (no loader, no libc to read: it runs and is gone)."""
    src = out.with_suffix(".c")
    src.write_text(source, encoding="utf-8")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
    return out


@contextmanager
def programs(label: str, sources: dict[str, str]) -> Iterator[Path]:
    """A directory under /tmp (a temporary location, as an intruder would use) with a static program built from
    each C source of ``sources`` (name -> source), runnable by the test person; removed afterwards."""
    d = Path("/tmp") / f"dw-audit-{label}-{os.getpid()}"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o755)  # noqa: S103 - the test person runs the programs in it
    try:
        for name, source in sources.items():
            compile_static(source, d / name)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def registry(host_id: str) -> str:
    """The registry the audit tests judge events with: a secret intranet host, 张三 (uid 1000), root, and the test
    person 测试员 (``TEST_UID``, cleared for internal only); loopback and 10/8 are zones, the rest the Internet."""
    return f"""\
host: {{id: {host_id}, unit: 测试中心, department: 测试委员会, custodian: zhangsan, level: secret, zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试中心, clearance: secret}}
  - {{account: root, uid: 0, name: 系统管理员, unit: 测试中心, clearance: top_secret}}
  - {{account: tester, uid: {TEST_UID}, name: 测试员, unit: 测试中心, clearance: internal}}
zones:
  default: internet
  networks: [{{name: loopback, cidrs: [127.0.0.0/8]}}, {{name: intranet, cidrs: [10.0.0.0/8]}}]
"""


TRUE_C = "int main(void) { return 0; }\n"
READER_C = """#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) { char b[256]; int fd = open(argv[1], O_RDONLY); if (fd < 0) return 1;
  while (read(fd, b, sizeof b) > 0) {} return close(fd); }
"""


def as_person(uid: int = TEST_UID) -> Callable[[], None]:
    """A preexec function: the child gets ``uid`` as its login identity (auid) and its real and effective uid."""
    def become() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write(str(uid))
        os.setgid(uid)
        os.setuid(uid)
    return become


@dataclass
class Run:
    """A collector on a thread and everything it emitted, with the monotonic time of each."""

    collector: AuditCollector
    events: list[Event] = field(default_factory=list)
    seen_at: list[float] = field(default_factory=list)

    def emit(self, event: Event) -> bool:
        """Record the event."""
        self.events.append(event)
        self.seen_at.append(time.time())
        return True

    def where(self, pred: Callable[[Event], bool], deadline: float = 15.0, count: int = 1) -> list[Event]:
        """At least ``count`` events matching ``pred``, waiting up to ``deadline`` seconds."""
        end = time.monotonic() + deadline
        while True:
            got = [e for e in list(self.events) if pred(e)]
            if len(got) >= count or time.monotonic() > end:
                return got
            time.sleep(0.05)


@contextmanager
def running(collector: AuditCollector) -> Iterator[Run]:
    """Run ``collector`` until the block ends; the kernel's audit state must come back as it was."""
    before = kernel_state()
    run = Run(collector)
    stop = threading.Event()
    t = threading.Thread(target=collector.run, args=(run.emit, stop), daemon=True)
    t.start()
    try:
        end = time.monotonic() + 10
        while not collector.health.up and time.monotonic() < end and t.is_alive():
            time.sleep(0.02)
        assert collector.health.up, "audit collector never came up"
        yield run
    finally:
        stop.set()
        t.join(20)
        after = kernel_state()
        assert not t.is_alive(), "collector did not stop"
        mine = [r for r in after[3].splitlines() if _names_pid(r, os.getpid())]
        assert not mine, f"rules of this run left in the kernel: {mine}"
        if quiet(before) and quiet(after):
            # Nobody else's agent or auditd around (as on CI): everything exactly as it was.
            if after != before:
                restore(before)
            assert after == before, f"kernel audit state not restored: {before} -> {after}"


def quiet(state: tuple[str, str, str, str]) -> bool:
    """No audit daemon registered and no other agent's rules: the machine is this test's alone."""
    return state[1] == "0" and "dutywatch" not in state[3]


def _names_pid(rule: str, pid: int) -> bool:
    return f"pid!={pid} " in rule or f"a0={pid:#x} ".upper().replace("0X", "0x") in rule \
        or f"a1={pid:#x} ".upper().replace("0X", "0x") in rule


@contextmanager
def auditd(tmp: Path) -> Iterator[int]:
    """Debian's auditd running (no rules of its own loaded); stopped and the kernel put back afterwards."""
    if not os.path.exists(AUDITD) or shutil.which("auditctl") is None:
        raise RuntimeError("auditd is not installed (.ci/run installs it)")
    before = kernel_state()
    Path("/var/log/audit").mkdir(parents=True, exist_ok=True)
    if subprocess.run([AUDITD], timeout=30).returncode != 0:
        # Refused the role (an agent held it when auditd asked, and made room): started again as its
        # service's Restart=on-failure does.
        time.sleep(0.1)
        subprocess.run([AUDITD], check=True, timeout=30)
    pid = 0
    end = time.monotonic() + 15
    while time.monotonic() < end:
        pid = int(status().get("pid", "0"))
        if pid:
            break
        time.sleep(0.1)
    try:
        assert pid, "auditd did not register with the kernel"
        yield pid
    finally:
        stop_auditd()
        if quiet(before):  # never put back settings another agent may have changed meanwhile
            restore(before)


def stop_auditd() -> None:
    """Stop the registered auditd (by the pid the kernel names) and wait until it is gone."""
    pid = int(status().get("pid", "0"))
    if not pid:
        return
    with open(f"/proc/{pid}/comm") as f:
        if f.read().strip() != "auditd":
            return
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 15
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)


def judge(events: list[Event], registry_yaml: str, tmp: Path) -> list[tuple[str, Event]]:
    """(rule id, attributed event) for every finding of the shipped rules on ``events`` under this registry."""
    from agent.attribution import Attributor
    from agent.engine.engine import Engine
    from agent.engine.rules import load_rules
    from agent.paths import shipped_rules_dir
    from agent.registry import load_registry

    reg = tmp / "registry.yaml"
    reg.write_text(registry_yaml, encoding="utf-8")
    attribute = Attributor(load_registry(reg))
    engine = Engine(load_rules([shipped_rules_dir()]))
    out = []
    for e in events:
        a = attribute(e)
        out += [(f.rule.id, a) for f in engine.evaluate(a)]
    return out


# net tcp|udp|connected ADDR PORT: a TCP connect, a UDP sendto, or a UDP connect() then send().
NET_C = """#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
  struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[3]));
  inet_pton(AF_INET, argv[2], &a.sin_addr);
  int tcp = argv[1][0] == 't', connected = argv[1][0] == 'c';
  int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
  if (tcp) connect(s, (struct sockaddr *)&a, sizeof a);
  else if (connected) { connect(s, (struct sockaddr *)&a, sizeof a); send(s, "x", 1, 0); }
  else sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
  return 0; }
"""


@contextmanager
def internet_host(name: str) -> Iterator[str]:
    """A namespace ``name`` behind a veth pair, reachable at an address of 198.51.100.0/24 (TEST-NET-2)."""
    routes = _routes()
    host_if, ns_if = f"{name[:9]}-h", f"{name[:9]}-n"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                    ["ip", "link", "set", ns_if, "netns", name],
                    ["ip", "addr", "add", "198.51.100.201/30", "dev", host_if],
                    ["ip", "link", "set", host_if, "up"],
                    ["ip", "-n", name, "addr", "add", "198.51.100.202/30", "dev", ns_if],
                    ["ip", "-n", name, "link", "set", ns_if, "up"],
                    ["ip", "-n", name, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True)
        yield "198.51.100.202"
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)
        after = _routes()
        assert after == routes, f"routes changed: {routes!r} -> {after!r}"


def _routes() -> list[str]:
    """The default route and any route of the test range (other tests add and remove their own meanwhile)."""
    out = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [r for r in out if r.startswith("default") or "198.51.100." in r]


def wait_for_no_daemon(timeout: float = 180.0) -> None:
    """Wait until no audit daemon is registered (another test's agent may hold the role for a while)."""
    end = time.monotonic() + timeout
    while int(status().get("pid", "0")):
        if time.monotonic() > end:
            raise AssertionError("an audit daemon stays registered; these tests start and stop their own")
        time.sleep(0.5)
