"""Generated workloads for the engine benchmarks: a realistic event mix and extra rules."""

from __future__ import annotations

import random
from pathlib import Path

from agent.events import Event, File, Net, Parent, Process

NAMES = ["bash", "python3", "curl", "ls", "cat", "grep", "vim", "ssh", "git", "make", "gcc", "java", "node",
         "nginx", "postgres", "systemctl", "sed", "awk", "tar", "cp", "mv", "rm", "find", "ps", "top"]
# (uid, loginuid, user): registered people, sudo to root, a service account; unknown accounts are rare.
USERS = [(1000, 1000, "zhangsan"), (1001, 1001, "lisi"), (1002, 1002, "wangwu"), (0, 1000, "root"),
         (33, None, "www-data")]
UNKNOWN = [(0, None, "root"), (1500, 1500, "tempadmin")]


def make_events(n: int, seed: int = 7) -> list[Event]:
    """``n`` distinct raw events: 50% execs, 25% connects (some DNS), 25% file opens; ~3% violations."""
    rnd = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        uid, loginuid, user = rnd.choice(UNKNOWN if rnd.random() < 0.01 else USERS)
        name = rnd.choice(NAMES)
        proc = Process(pid=1000 + i, ppid=999, name=name, exe=f"/usr/bin/{name}", cmdline=f"{name} --job {i % 97}",
                       cwd="/home", uid=uid, user=user, loginuid=loginuid, start_time=1.7e9 + i)
        r = rnd.random()
        bad = rnd.random() < 0.03
        if r < 0.5:
            if bad:
                proc = proc._replace(exe=f"/tmp/.x{i % 50}/{name}", name=name)
            out.append(Event("process.exec", 1.7e9 + i, "process", proc, Parent(pid=999, name="bash")))
        elif r < 0.75:
            kind = "net.dns" if rnd.random() < 0.2 else "net.connect"
            ip = f"203.0.113.{i % 250}" if bad else f"10.{i % 200}.{(i // 200) % 250}.{i % 7 + 1}"
            out.append(Event(kind, 1.7e9 + i, "network", proc,
                             net=Net(proto="tcp", direction="out", local_ip="10.1.2.3", local_port=40000 + i % 20000,
                                     remote_ip=ip, remote_port=53 if kind == "net.dns" else rnd.choice([80, 443, 22]),
                                     domain="oa.intra.gov.cn" if kind == "net.dns" else None)))
        else:
            path = f"/srv/classified/topsecret/doc{i % 300}.docx" if bad else f"/home/u/work/f{i % 5000}.txt"
            out.append(Event("file.open", 1.7e9 + i, "files", proc, file=File(path=path)))
    return out


def write_extra_rules(path: Path, n: int, seed: int = 11) -> None:
    """``n`` generated rules over process, network and file kinds, shaped like real packs.

    60% name/port/domain equality or membership, 25% path prefix or suffix tests,
    15% command-line substring or regex tests.
    """
    rnd = random.Random(seed)
    lines = ["pack: generated", "rules:"]
    for i in range(n):
        r = rnd.random()
        kind = rnd.choice(["process.exec", "net.connect", "file.open", "net.dns", "file.write", "net.listen"])
        if r < 0.6:
            if kind.startswith("process"):
                cond = f'process.name in ("tool{i}", "tool{i}d")'
            elif kind in ("net.connect", "net.listen"):
                cond = f"net.remote_port == {10000 + i}"
            elif kind == "net.dns":
                cond = f'net.domain == "c2-{i}.example.net"'
            else:
                cond = f'basename(file.path) == "secret-{i}.bin"'
        elif r < 0.85:
            field = "process.exe" if kind.startswith("process") else "file.path"
            field = "process.exe" if kind.startswith("net") else field
            cond = f'startswith({field}, "/opt/vendor{i}/") or endswith({field}, ".x{i}")'
        else:
            cond = f'contains(process.cmdline, "--payload-{i}") or regex(process.cmdline, "evil{i}[0-9]+")'
        lines += [
            f"  - id: GEN-{i:04d}",
            "    title: {zh: 生成规则, en: generated rule}",
            f"    when: 'event.kind == \"{kind}\" and ({cond})'",
            "    severity: low",
            "    action: audit",
            "    message: {zh: '{process.name}', en: '{process.name}'}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
