"""A replay workload shaped like real Linux hosts, generated from a seed.

The benchmark's own mix (``sigma_workload.background``) repeats a few users,
addresses and command-line shapes, so every cache on the replay path hits.
Real hosts do not: a server talks to tens of thousands of peers, most of its
processes run as service accounts, and a third of its command lines are
seen once. This generator writes that traffic:

- 60% process creation, 25% network connections (80% outbound), 15% file
  events (create, write, rename, delete);
- remote addresses from a large space: a few hundred hot peers and a long
  tail (tens of thousands distinct per million events); about half in the
  registry's inner zones (intranet, its DMZ and management networks,
  extranet, loopback), the rest on the Internet; IPv4, IPv6 and IPv4-mapped
  IPv6 as dual-stack sockets report them;
- users: mostly service accounts (registered by name with a custodian, no
  uid in the registry, so attribution goes through the account name), root
  daemons, and people working under their login id;
- command lines from a grammar of tools, flags, paths, hosts and URLs, with
  about a third of them distinct (at a million events);
- a planted share (0.2%) built to fire known rules: a witness for each
  SigmaHQ Linux rule one can be built for, and hand-made violations of the
  shipped packs. Each planted line carries the set of rules it must fire,
  computed independently of the engine (the reference matcher for Sigma
  rules, the pack rule's own condition written out by hand); every other
  line must fire nothing.

The host is the e-government application server of ``real-registry.yaml``:
level ``internal`` on the intranet, so Internet peers are allowed (a
classified host would fire on each of them).
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from agent.paths import shipped_rules_dir
from tests.bench.sigma_workload import load_doc, reference_match, rule_files, to_event, witness

REGISTRY = Path(__file__).with_name("real-registry.yaml")
HOST_IP = "10.12.7.21"
HOST_IP6 = "fd00:10:0:7::21"

# -- users -------------------------------------------------------------------
# (uid, account): service accounts, registered by name only (real-registry.yaml).
SERVICES = [(33, "www-data"), (101, "nginx"), (102, "redis"), (103, "mysql"), (104, "postgres"),
            (105, "chrony"), (106, "prometheus"), (107, "node_exporter"), (108, "elasticsearch"),
            (109, "kafka"), (110, "zookeeper"), (111, "tomcat"), (112, "rabbitmq"), (113, "gitlab-runner"),
            (114, "jenkins"), (115, "mongodb"), (998, "systemd-network"), (997, "systemd-resolve"),
            (42, "_apt"), (1, "daemon"), (65534, "nobody"), (116, "zabbix"), (117, "filebeat"),
            (118, "appsvc"), (119, "etl"), (120, "backup")]
PEOPLE = [(1000, "zhangsan"), (1001, "lisi"), (1002, "wangwu"), (1003, "zhaoliu"), (1004, "sunqi"),
          (1005, "zhouba"), (1006, "wujiu"), (1007, "zhengshi")]

# -- the command-line grammar ------------------------------------------------
_WORDS = ["report", "invoice", "order", "user", "audit", "policy", "ledger", "notice", "budget", "project",
          "archive", "contract", "metrics", "session", "export", "import", "summary", "plan", "review", "task"]
_APPS = ["portal", "oa", "gw", "ledger", "approval", "archive", "gis", "hr", "finance", "docs", "sso", "msg"]
_DOMAINS = ["mirrors.aliyun.com", "mirrors.tuna.tsinghua.edu.cn", "repo.huaweicloud.com", "registry.npmmirror.com",
            "pypi.tuna.tsinghua.edu.cn", "api.zwfw.example.gov.cn", "sso.example.gov.cn", "oss.example.gov.cn",
            "ntp.aliyun.com", "sms.example.com.cn", "pay.example.com.cn", "gitlab.example.gov.cn",
            "harbor.example.gov.cn", "es.example.gov.cn", "www.gov.cn", "data.stats.gov.cn"]
_PKGS = ["nginx", "openssl", "libc6", "postgresql-15", "redis-server", "python3", "openjdk-17-jre", "curl",
         "tzdata", "ca-certificates", "libssl3", "systemd", "rsyslog", "logrotate", "chrony", "zlib1g"]


def _hex(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choice("0123456789abcdef") for _ in range(n))


def _word(rnd: random.Random) -> str:
    return rnd.choice(_WORDS)


def _date(rnd: random.Random) -> str:
    return f"2026{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"


def _intranet_host(rnd: random.Random) -> str:
    return f"10.{rnd.choice((12, 12, 12, 20, 31, 64))}.{rnd.randint(0, 40)}.{rnd.randint(2, 250)}"


def _url(rnd: random.Random) -> str:
    host = rnd.choice(_DOMAINS) if rnd.random() < 0.6 else f"{_intranet_host(rnd)}:{rnd.choice((8080, 8443, 9200))}"
    path = "/".join(_word(rnd) for _ in range(rnd.randint(1, 3)))
    query = f"?id={rnd.randint(1, 99999)}&page={rnd.randint(1, 40)}" if rnd.random() < 0.4 else ""
    return f"https://{host}/api/v{rnd.randint(1, 3)}/{path}{query}"


def _app_path(rnd: random.Random) -> str:
    return f"/srv/{rnd.choice(_APPS)}/{rnd.choice(('releases', 'shared', 'storage', 'data'))}/{_word(rnd)}"


# Each template: (weight, exe, user kind, parent exe, cmdline maker). The user kind picks the account:
# "svc" a service account, "root" a root daemon, "person" someone working under their login id.
Maker = Any
TEMPLATES: list[tuple[int, str, str, str, Maker]] = [
    (6, "/usr/sbin/nginx", "svc", "/usr/sbin/nginx", lambda r: "nginx: worker process"),
    (5, "/usr/sbin/php-fpm8.2", "svc", "/usr/sbin/php-fpm8.2", lambda r: f"php-fpm: pool {rnd_app(r)}"),
    (6, "/usr/bin/php8.2", "svc", "/usr/sbin/cron",
     lambda r: f"php /srv/{rnd_app(r)}/artisan {r.choice(('queue:work', 'schedule:run', 'cache:prune'))} "
               f"--tries={r.randint(1, 5)}"),
    (8, "/usr/bin/python3.11", "svc", "/usr/lib/systemd/systemd",
     lambda r: f"python3 /opt/{rnd_app(r)}/worker.py -Q {_word(r)}-{r.randint(1, 24)}"),
    (5, "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "svc", "/usr/lib/systemd/systemd",
     lambda r: f"java -Xmx{r.choice((512, 1024, 2048))}m -jar /opt/{rnd_app(r)}/{rnd_app(r)}-"
               f"{r.randint(1, 4)}.{r.randint(0, 20)}.{r.randint(0, 9)}.jar"),
    (5, "/usr/bin/pg_dump", "svc", "/usr/sbin/cron",
     lambda r: f"pg_dump -Fc -f /var/backups/pg/{rnd_app(r)}_{_date(r)}.dump {rnd_app(r)}db"),
    (4, "/usr/bin/psql", "svc", "/usr/bin/python3.11",
     lambda r: f"psql -h {_intranet_host(r)} -U {rnd_app(r)} -d {rnd_app(r)}db"),
    (6, "/usr/lib/nagios/plugins/check_http", "svc", "/usr/sbin/nagios",
     lambda r: f"check_http -t {r.choice((3, 5, 10))} -u {_url(r)}"),
    (5, "/usr/bin/git", "person", "/usr/bin/bash",
     lambda r: r.choice((f"git -C /srv/repos/{rnd_app(r)} fetch --prune origin", "git status --short",
                         f"git log --oneline -n {r.randint(5, 50)}",
                         f"git checkout release/{r.randint(1, 9)}.{r.randint(0, 30)}",
                         f"git pull --rebase origin {r.choice(('main', 'develop', 'release'))}"))),
    (4, "/usr/bin/rsync", "svc", "/usr/sbin/cron",
     lambda r: f"rsync -az --partial /srv/{rnd_app(r)}/data/ backup@{_intranet_host(r)}:/backup/{rnd_app(r)}/"),
    (4, "/usr/bin/gzip", "root", "/usr/sbin/logrotate",
     lambda r: f"gzip -9 /var/log/{r.choice(('nginx', 'app', 'postgresql'))}/{_word(r)}.log.{r.randint(1, 14)}"),
    (3, "/usr/sbin/logrotate", "root", "/usr/sbin/cron", lambda r: "/usr/sbin/logrotate /etc/logrotate.conf"),
    (4, "/usr/sbin/cron", "root", "/usr/sbin/cron", lambda r: "/usr/sbin/cron -f -P"),
    (3, "/usr/bin/run-parts", "root", "/usr/sbin/cron", lambda r: "run-parts --report /etc/cron.hourly"),
    (3, "/usr/bin/tar", "svc", "/usr/bin/bash",
     lambda r: f"tar -czf /var/backups/{rnd_app(r)}-{_date(r)}.tar.gz -C /srv/{rnd_app(r)} releases"),
    (4, "/usr/bin/node", "svc", "/usr/lib/systemd/systemd",
     lambda r: f"node /srv/{rnd_app(r)}/dist/server.js --port {r.choice((3000, 3001, 4000))}"),
    (3, "/usr/bin/dpkg-query", "root", "/usr/bin/python3.11",
     lambda r: f"dpkg-query -W -f=${{Version}} {r.choice(_PKGS)}"),
    (3, "/usr/bin/df", "svc", "/usr/sbin/zabbix_agentd", lambda r: r.choice(("df -h", "df -P /srv", "df -i /var"))),
    (3, "/usr/bin/du", "svc", "/usr/sbin/zabbix_agentd", lambda r: f"du -sh {_app_path(r)}"),
    (3, "/usr/bin/sort", "svc", "/usr/bin/bash",
     lambda r: f"sort -u -o /srv/etl/out/{_word(r)}-{r.randint(1, 500)}.csv"),
    (2, "/usr/bin/ls", "person", "/usr/bin/bash", lambda r: f"ls -la {_app_path(r)}"),
    (2, "/usr/bin/vim.basic", "person", "/usr/bin/bash",
     lambda r: f"vim /srv/{rnd_app(r)}/shared/config/{_word(r)}.yml"),
    (2, "/usr/bin/less", "person", "/usr/bin/bash", lambda r: f"less /var/log/app/{rnd_app(r)}-{_date(r)}.log"),
    (3, "/usr/bin/redis-cli", "svc", "/usr/bin/bash",
     lambda r: f"redis-cli -h {_intranet_host(r)} -p 6379 {r.choice(('ping', 'info memory', 'dbsize'))}"),
    (3, "/usr/bin/openssl", "root", "/usr/bin/bash",
     lambda r: f"openssl x509 -noout -enddate -in /etc/ssl/certs/{r.choice(_DOMAINS)}.pem"),
    (2, "/usr/bin/make", "person", "/usr/bin/bash",
     lambda r: f"make -j{r.choice((2, 4))} {r.choice(('build', 'test', 'dist'))}"),
    (3, "/usr/bin/awk", "svc", "/usr/bin/bash",
     lambda r: f"awk -F, {{print ${r.randint(1, 9)}}} /srv/etl/in/{_word(r)}_{_date(r)}.csv"),
    (3, "/usr/bin/sed", "svc", "/usr/bin/bash",
     lambda r: f"sed -n {r.randint(1, 400)},{r.randint(401, 900)}p /srv/etl/in/{_word(r)}_{_date(r)}.csv"),
    (2, "/usr/bin/unzip", "svc", "/usr/bin/python3.11",
     lambda r: f"unzip -o -q /srv/docs/inbox/{_word(r)}-{_hex(r, 8)}.zip -d /srv/docs/spool/{_hex(r, 6)}"),
    (3, "/usr/bin/convert", "svc", "/usr/bin/php8.2",
     lambda r: f"convert /srv/docs/spool/{_hex(r, 12)}.png -resize {r.choice((640, 1024, 1920))}x "
               f"/srv/docs/thumbs/{_hex(r, 12)}.jpg"),
    (2, "/usr/bin/ssh", "person", "/usr/bin/bash",
     lambda r: f"ssh -o BatchMode=yes deploy@{_intranet_host(r)} uptime"),
    (2, "/usr/bin/date", "svc", "/usr/bin/bash", lambda r: "date +%s"),
    (2, "/usr/bin/sleep", "svc", "/usr/bin/bash", lambda r: f"sleep {r.choice((1, 5, 30, 60))}"),
    (2, "/usr/bin/mkdir", "svc", "/usr/bin/python3.11", lambda r: f"mkdir -p /srv/docs/spool/{_hex(r, 10)}"),
    (2, "/usr/bin/wc", "svc", "/usr/bin/bash", lambda r: f"wc -l /srv/etl/in/{_word(r)}_{_date(r)}.csv"),
    (2, "/usr/bin/chronyc", "svc", "/usr/sbin/zabbix_agentd",
     lambda r: r.choice(("chronyc tracking", "chronyc -n sources"))),
    (2, "/usr/bin/ps", "svc", "/usr/sbin/zabbix_agentd",
     lambda r: r.choice(("ps -eo pid,rss,comm", "ps -p 1 -o etimes="))),
]


def rnd_app(r: random.Random) -> str:
    return r.choice(_APPS)


_CUMULATIVE = list(itertools.accumulate(t[0] for t in TEMPLATES))
_TOTAL = _CUMULATIVE[-1]


@dataclass
class _State:
    """What the generator remembers: the recent command lines (reused, as hosts repeat themselves)."""

    rnd: random.Random
    recent: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    pid: int = 30000


def _account(rnd: random.Random, who: str) -> dict[str, Any]:
    if who == "root" or (who == "svc" and rnd.random() < 0.03):
        return {"uid": 0, "user": "root"}
    if who == "person" or rnd.random() < 0.06:
        uid, name = rnd.choice(PEOPLE)
        if who != "person":  # a person running a service's command: sudo -u, with their login id
            suid, sname = rnd.choice(SERVICES)
            return {"uid": suid, "user": sname, "loginuid": uid}
        return {"uid": uid, "user": name, "loginuid": uid}
    uid, name = rnd.choice(SERVICES)
    return {"uid": uid, "user": name}


# The share of command lines made fresh (most of them distinct); the others repeat a recent one.
_FRESH = 0.8
_RECENT = 64


def _process(st: _State) -> dict[str, Any]:
    rnd = st.rnd
    n = bisect.bisect_right(_CUMULATIVE, rnd.randrange(_TOTAL))
    _, exe, who, parent_exe, make = TEMPLATES[n]
    recent = st.recent.setdefault(n, [])
    if len(recent) < _RECENT or rnd.random() < _FRESH:
        cmdline = make(rnd)
        cwd = rnd.choice(("/", "/srv", f"/srv/{rnd_app(rnd)}", "/var/lib", "/tmp", "/home/zhangsan"))
        if len(recent) < _RECENT:
            recent.append((cmdline, cwd))
        else:
            recent[rnd.randrange(_RECENT)] = (cmdline, cwd)
    else:
        cmdline, cwd = recent[min(int(rnd.expovariate(0.15)), _RECENT - 1)]
    st.pid = st.pid + rnd.randint(1, 9) if st.pid < 4_000_000 else 300
    proc = {"pid": st.pid, "ppid": rnd.randint(300, 30000), "name": exe.rsplit("/", 1)[1][:15], "exe": exe,
            "cmdline": cmdline, "cwd": cwd, **_account(rnd, who)}
    pname = parent_exe.rsplit("/", 1)[1]
    return {"process": proc, "parent": {"pid": proc["ppid"], "name": pname[:15], "exe": parent_exe,
                                        "cmdline": parent_exe if pname != "bash" else "-bash"}}


# -- addresses ---------------------------------------------------------------
# (share, maker): the remote address space. Hot peers repeat; the tail is wide.

def _v4(rnd: random.Random, a: int, b_lo: int, b_hi: int) -> str:
    return f"{a}.{rnd.randint(b_lo, b_hi)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"


def _tail(rnd: random.Random) -> str:
    r = rnd.random()
    if r < 0.30:  # the intranet
        return _v4(rnd, 10, 0, 255)
    if r < 0.36:  # its DMZ (a longer prefix inside 10/8)
        return f"10.250.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
    if r < 0.40:  # the extranet
        return _v4(rnd, 172, 16, 31)
    if r < 0.42:  # management network
        return f"192.168.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
    if r < 0.47:  # intranet IPv6
        return f"fd00:10:{rnd.randint(0, 0xffff):x}:{rnd.randint(0, 0xffff):x}::{rnd.randint(1, 0xffff):x}"
    if r < 0.55:  # Internet IPv6
        return (f"240{rnd.choice('0e8')}:{rnd.randint(0x3000, 0x3fff):x}:{rnd.randint(0, 0xffff):x}:"
                f"{rnd.randint(0, 0xffff):x}::{rnd.randint(1, 0xffff):x}")
    a = rnd.choice((1, 14, 36, 39, 42, 47, 58, 59, 60, 61, 101, 106, 110, 111, 112, 113, 114, 115, 116, 117,
                    118, 119, 120, 121, 122, 123, 124, 125, 139, 140, 175, 180, 182, 183, 202, 203, 210, 211,
                    218, 219, 220, 221, 222, 223))
    return f"{a}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"


@dataclass
class _Peers:
    hot: list[str]
    pool: list[str]


def _peers(rnd: random.Random, n: int) -> _Peers:
    hot = [_tail(rnd) for _ in range(300)]
    # The tail: a pool about as large as one net event in six, so most draws are new addresses.
    pool = [_tail(rnd) for _ in range(max(1000, n // 24))]
    return _Peers(hot, pool)


def _mapped(rnd: random.Random, ip: str) -> str:
    # Dual-stack listeners report IPv4 peers as IPv4-mapped IPv6.
    return f"::ffff:{ip}" if ":" not in ip and rnd.random() < 0.3 else ip


def _net(st: _State, peers: _Peers) -> dict[str, Any]:
    rnd = st.rnd
    ev = _process(st)
    out = rnd.random() < 0.8
    remote = rnd.choice(peers.hot) if rnd.random() < 0.5 else rnd.choice(peers.pool)
    loop = rnd.random() < 0.06
    if loop:
        local, remote = ("127.0.0.1", "127.0.0.1") if rnd.random() < 0.8 else ("::1", "::1")
    elif ":" in remote:
        local = HOST_IP6
    else:
        local = HOST_IP
    net: dict[str, Any] = {"proto": "tcp" if rnd.random() < 0.9 else "udp", "direction": "out" if out else "in",
                           "local_ip": local, "remote_ip": remote}
    if out:
        net["local_port"] = rnd.randint(32768, 60999)
        net["remote_port"] = rnd.choice((443, 443, 443, 80, 5432, 6379, 3306, 53, 8080, 9092, 9200, 123, 22))
        if net["remote_port"] == 22:  # ssh only inside
            net["remote_ip"] = _intranet_host(rnd)
        if rnd.random() < 0.15 and not loop:
            net["domain"] = rnd.choice(_DOMAINS)
    else:
        net["local_port"] = rnd.choice((443, 443, 80, 8080, 5432, 22))
        net["remote_port"] = rnd.randint(1024, 65535)
        if net["local_port"] == 22 and not loop:  # ssh from the intranet only (DB-RA-002)
            net["remote_ip"] = _intranet_host(rnd)
        if local == HOST_IP:
            net["local_ip"], net["remote_ip"] = _mapped(rnd, HOST_IP), _mapped(rnd, net["remote_ip"])
            if net["local_ip"] != HOST_IP and not net["remote_ip"].startswith("::ffff:"):
                net["local_ip"] = HOST_IP
    return {"event": {"kind": "net.connect" if out else "net.accept"}, **ev, "net": net}


def _file(st: _State) -> dict[str, Any]:
    rnd = st.rnd
    ev = _process(st)
    kind = rnd.choice(("file.create", "file.write", "file.write", "file.write", "file.rename", "file.delete"))
    r = rnd.random()
    if r < 0.25:
        path = f"/var/log/{rnd.choice(('nginx', 'app', 'postgresql'))}/{_word(rnd)}.log"
    elif r < 0.45:
        path = f"/srv/{rnd_app(rnd)}/storage/cache/{_hex(rnd, 2)}/{_hex(rnd, 2)}/{_hex(rnd, 40)}"
    elif r < 0.60:
        path = f"/var/lib/postgresql/15/main/base/{rnd.randint(16384, 16420)}/{rnd.randint(16384, 99999)}"
    elif r < 0.72:
        path = f"/srv/docs/spool/{_hex(rnd, 10)}/{_word(rnd)}-{rnd.randint(1, 9999)}.pdf"
    elif r < 0.82:
        path = f"/srv/internal/{_word(rnd)}/{_word(rnd)}-{_date(rnd)}.xlsx"  # an internal-level asset
    elif r < 0.92:
        path = f"/home/{rnd.choice(PEOPLE)[1]}/docs/{_word(rnd)}-{rnd.randint(1, 300)}.docx"
    else:
        path = f"/var/cache/app/sess_{_hex(rnd, 26)}"
    f: dict[str, Any] = {"path": path}
    if kind == "file.rename":
        f = {"path": path + f".{_hex(rnd, 6)}.tmp", "dest_path": path}
    return {"event": {"kind": kind}, **ev, "file": f}


# -- the planted share ---------------------------------------------------------

# Sigma field -> where the engine reads it, for the reference matcher's view of an event.
_SIGMA_PROCESS = {"Image": ("process", "exe"), "CommandLine": ("process", "cmdline"),
                  "CurrentDirectory": ("process", "cwd"), "User": ("process", "user"),
                  "ProcessId": ("process", "pid"), "ParentProcessId": ("process", "ppid"),
                  "LogonId": ("process", "loginuid"), "ParentImage": ("parent", "exe"),
                  "ParentCommandLine": ("parent", "cmdline")}
_SIGMA_NET = {"DestinationIp": ("net", "remote_ip"), "DestinationPort": ("net", "remote_port"),
              "DestinationHostname": ("net", "domain"), "SourceIp": ("net", "local_ip"),
              "SourcePort": ("net", "local_port"), "Protocol": ("net", "proto")}
_CATEGORY_OF = {"process.exec": "process_creation", "net.connect": "network_connection",
                "net.accept": "network_connection", "file.create": "file_event", "file.write": "file_event",
                "file.rename": "file_event"}


def sigma_view(ev: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The Sigma category of a raw event and its Sigma field values (unset fields absent)."""
    kind = ev["event"]["kind"]
    cat = _CATEGORY_OF.get(kind)
    table = dict(_SIGMA_PROCESS)
    if cat == "network_connection":
        table.update(_SIGMA_NET)
    out = {name: ev.get(g, {}).get(k) for name, (g, k) in table.items()}
    out = {k: v for k, v in out.items() if v is not None}
    if cat == "network_connection":
        out["Initiated"] = "true" if kind == "net.connect" else "false"
    if cat == "file_event":
        target = ev["file"].get("dest_path") if kind == "file.rename" else ev["file"].get("path")
        if target is not None:
            out["TargetFilename"] = target
    return cat, out


class SigmaOracle:
    """Which vendored Sigma rules fire on a raw event, by the reference matcher (not the engine)."""

    def __init__(self, root: Path) -> None:
        self.docs: dict[str, list[dict[str, Any]]] = {}
        for path in rule_files(root):
            doc = load_doc(path)
            self.docs.setdefault(doc["logsource"]["category"], []).append(doc)

    def fired(self, ev: dict[str, Any]) -> frozenset[str]:
        """The ids of the Sigma rules that fire on ``ev``."""
        cat, fields = sigma_view(ev)
        if cat is None:
            return frozenset()
        return frozenset(d["id"] for d in self.docs.get(cat, []) if reference_match(d, fields))


class PackOracle:
    """Which shipped-pack rules fire on a raw event of this workload's host, their conditions written out by hand.

    Covers the pack rules an exec, network or file event of an internal-level
    intranet host can meet; the lists come from the packs' own files. The
    workload's tests check the engine against it on every planted event.
    """

    def __init__(self, rules_dir: Path, registry: Path = REGISTRY) -> None:
        lists: dict[str, list[Any]] = {}
        for pack in ("accountability", "baomi", "dengbao"):
            lists.update(yaml.safe_load((rules_dir / f"{pack}.yaml").read_text(encoding="utf-8")).get("lists", {}))
        self.lists = lists
        reg = yaml.safe_load(registry.read_text(encoding="utf-8"))
        self.people = {p["uid"]: p["account"] for p in reg["people"]}
        self.accounts = set(self.people.values()) | {s["account"] for s in reg["service_accounts"]}

    def _known(self, p: dict[str, Any]) -> bool:
        login = p.get("loginuid")
        if login is not None and login != 4294967295:
            return login in self.people  # replay reads no account database: an unregistered login id is unknown
        uid = p.get("uid")
        return uid in self.people or p.get("user") in self.accounts

    def fired(self, ev: dict[str, Any]) -> frozenset[str]:
        """The ids of the pack rules that fire on ``ev``."""
        L, kind = self.lists, ev["event"]["kind"]
        p, parent, net, f = (ev.get(g, {}) for g in ("process", "parent", "net", "file"))
        name, path, dest = p.get("name"), f.get("path"), f.get("dest_path")
        out = set()
        if kind in L["watched_kinds"] and ("uid" in p or "loginuid" in p) and not self._known(p):
            out.add("ZR-001")
        if kind == "process.exec":
            if p.get("uid") == 0 and p.get("loginuid") is None and name in L["shells"] \
                    and parent.get("name") in L["session_parents"]:
                out.add("ZR-002")
            out.update(rid for rid, names in (("DB-AUD-001", "privilege_tools"), ("DB-AUD-002", "account_tools"))
                       if name in L[names])
            ran = (str(p.get("exe", "")), str(f.get("path", "")))
            if any(x.startswith(tuple(L["temp_dirs"])) for x in ran) or ran[0].startswith("memfd:"):
                out.add("DB-MAL-001")
        changed = kind in ("file.write", "file.create", "file.delete", "file.rename")
        paths = [x for x in (path, dest) if x is not None]
        exe = p.get("exe")
        if changed and any(x.startswith(tuple(L["system_dirs"])) for x in paths) \
                and exe not in L["package_manager_exes"]:
            out.add("DB-INT-001")
        if changed and path is not None and (path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow",
                                                      "/etc/sudoers")
                                             or path.startswith(("/etc/sudoers.d/", "/etc/pam.d/",
                                                                 "/etc/ssh/sshd_config"))) \
                and exe not in L["account_tool_exes"] and exe not in L["package_manager_exes"]:
            out.add("DB-INT-002")
        if changed and any(x.startswith("/etc/dutywatch/") for x in paths):
            out.add("DB-TAMP-003")
        if kind in ("file.delete", "file.rename") and path is not None and (
                path.startswith(("/var/log/audit/", "/var/log/dutywatch/"))
                or path in ("/var/log/auth.log", "/var/log/secure", "/var/log/wtmp", "/var/log/btmp",
                            "/var/log/lastlog")):
            out.add("DB-TAMP-004")
        if any(x.startswith("/srv/classified/") for x in paths) and kind != "file.delete":
            out.update(("BM-FILE-001", "DB-AUD-003"))  # a secret asset on an internal-level host
        if kind in ("net.connect", "net.accept") and str(net.get("local_ip", "")).startswith("172."):
            out.add("BM-NET-005")  # a local address in the extranet: another zone than the host's
        if kind == "net.accept" and net.get("local_port") in L["admin_ports"] \
                and not str(net.get("remote_ip", "")).startswith(("10.", "127.")):
            out.add("DB-RA-002")
        return frozenset(out)


def _person(uid: int = 1000, name: str = "zhangsan") -> dict[str, Any]:
    return {"pid": 4242, "ppid": 4200, "uid": uid, "user": name, "loginuid": uid}


def pack_violations() -> list[tuple[dict[str, Any], frozenset[str]]]:
    """Hand-made events that break one shipped-pack rule each, with the rules' ids (their conditions, by hand)."""
    exe = {"name": "bash", "exe": "/usr/bin/bash", "cmdline": "-bash"}
    return [
        # ZR-001: an account no one answers for (not a person, not a registered service account).
        ({"event": {"kind": "process.exec"},
          "process": {"pid": 5150, "ppid": 1, "name": "syncd", "exe": "/opt/syncd/bin/syncd",
                      "cmdline": "/opt/syncd/bin/syncd --daemon", "uid": 1500, "user": "syncd"},
          "parent": {"pid": 1, "name": "systemd", "exe": "/usr/lib/systemd/systemd"}}, frozenset({"ZR-001"})),
        # DB-RA-002: ssh accepted from the Internet.
        ({"event": {"kind": "net.accept"}, "process": {"pid": 812, "name": "sshd", "exe": "/usr/sbin/sshd",
                                                       "cmdline": "sshd: /usr/sbin/sshd -D", "uid": 0, "user": "root"},
          "net": {"proto": "tcp", "direction": "in", "local_ip": HOST_IP, "local_port": 22,
                  "remote_ip": "45.155.205.12", "remote_port": 51234}}, frozenset({"DB-RA-002"})),
        # BM-NET-005 (一机两网): a connection from an address in another zone than the host's.
        ({"event": {"kind": "net.connect"}, "process": {**_person(), "name": "curl", "exe": "/usr/bin/curl",
                                                        "cmdline": "curl -s https://oss.example.gov.cn/x"},
          "net": {"proto": "tcp", "direction": "out", "local_ip": "172.20.1.9", "local_port": 40112,
                  "remote_ip": "172.20.1.1", "remote_port": 443}}, frozenset({"BM-NET-005"})),
        # DB-TAMP-003: the agent's configuration edited.
        ({"event": {"kind": "file.write"}, "process": {**_person(), "name": "vim.basic", "exe": "/usr/bin/vim.basic",
                                                       "cmdline": "vim /etc/dutywatch/agent.yaml"},
          "file": {"path": "/etc/dutywatch/agent.yaml"}}, frozenset({"DB-TAMP-003"})),
        # BM-FILE-001 and DB-AUD-003: a secret asset on this internal-level host.
        ({"event": {"kind": "file.write"},
          "process": {**_person(), "name": "libreoffice", "exe": "/usr/bin/libreoffice",
                      "cmdline": "libreoffice --writer"},
          "file": {"path": "/srv/classified/plans/2026-budget.docx"}}, frozenset({"BM-FILE-001", "DB-AUD-003"})),
        # DB-AUD-002: an account tool.
        ({"event": {"kind": "process.exec"}, "process": {**_person(), "name": "useradd", "exe": "/usr/sbin/useradd",
                                                         "cmdline": "useradd -m tempops"},
          "parent": exe}, frozenset({"DB-AUD-002"})),
    ]


def planted_events(root: Path | None) -> list[tuple[dict[str, Any], frozenset[str]]]:
    """The planted events and the rules each must fire (Sigma by the reference matcher, packs by hand)."""
    sigma = SigmaOracle(root) if root is not None else None
    packs = PackOracle(shipped_rules_dir())
    out: list[tuple[dict[str, Any], frozenset[str]]] = []
    if root is not None:
        for path in rule_files(root):
            doc = load_doc(path)
            fields = witness(doc)
            if fields is not None:
                out.append((to_event(doc["logsource"]["category"], fields), frozenset()))
    out += pack_violations()
    return [(ev, ids | packs.fired(ev) | (sigma.fired(ev) if sigma is not None else frozenset()))
            for ev, ids in out]


# -- the stream ----------------------------------------------------------------

PLANTED_RATIO = 0.002
_INNER = [ipaddress.ip_network(c) for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                                            "fd00:10::/32", "::1/128")]


@dataclass
class Workload:
    """What was written: the planted lines (1-based) with the rule ids each must fire, and the mix's shape."""

    events: int = 0
    planted: dict[int, frozenset[str]] = field(default_factory=dict)
    rules: int = 0  # distinct rules the planted events must fire
    execs: int = 0
    cmdlines: set[str] = field(default_factory=set)
    cmdline_chars: int = 0
    cmdline_max: int = 0
    remotes: set[str] = field(default_factory=set)
    net: int = 0
    inner: int = 0  # network events whose peer is in a registry zone (not the Internet)
    service: int = 0  # events run as a service account or root, no person's login id
    files: int = 0

    def add(self, ev: dict[str, Any]) -> None:
        """Count one benign event into the shape."""
        p = ev["process"]
        if "loginuid" not in p:
            self.service += 1
        if "net" in ev:
            self.net += 1
            ip = ev["net"]["remote_ip"]
            self.remotes.add(ip)
            addr = ipaddress.ip_address(ip)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            self.inner += any(addr in net for net in _INNER)
        elif "file" in ev:
            self.files += 1
        else:
            self.execs += 1
            c = p["cmdline"]
            self.cmdlines.add(c)
            self.cmdline_chars += len(c)
            self.cmdline_max = max(self.cmdline_max, len(c))

    def describe(self) -> str:
        """The mix in one line."""
        n = max(self.events - len(self.planted), 1)
        return (f"{self.execs / n:.0%} exec, {self.net / n:.0%} network, {self.files / n:.0%} file; "
                f"{len(self.cmdlines) / max(self.execs, 1):.0%} of command lines distinct "
                f"({self.cmdline_chars / max(self.execs, 1):.0f} characters on average, up to {self.cmdline_max}); "
                f"{len(self.remotes):,} distinct peers, {self.inner / max(self.net, 1):.0%} in the registry's zones; "
                f"{self.service / n:.0%} of events by service accounts and root daemons; "
                f"{len(self.planted):,} planted ({self.rules} rules)")


def events(n: int, root: Path | None, seed: int = 22, planted_ratio: float = PLANTED_RATIO
           ) -> Iterator[tuple[dict[str, Any] | None, bytes, frozenset[str] | None]]:
    """``n`` events: (the benign event or None, its JSON line, the rule ids a planted one must fire or None)."""
    rnd = random.Random(seed)
    st = _State(rnd)
    peers = _peers(rnd, n)
    planted = [(msgspec.json.encode(ev), ids) for ev, ids in planted_events(root)]
    encode = msgspec.json.encode
    t = 1.78e9
    k = 0
    for _ in range(n):
        t += rnd.expovariate(1000.0)
        if planted and rnd.random() < planted_ratio:
            line, ids = planted[k % len(planted)]
            k += 1
            yield None, line + b"\n", ids
            continue
        r = rnd.random()
        if r < 0.60:
            ev = {"event": {"kind": "process.exec"}, **_process(st)}
        else:
            ev = _net(st, peers) if r < 0.85 else _file(st)
        ev["event"] = {**ev["event"], "time": round(t, 6),
                       "collector": "proc" if r < 0.60 else "network" if r < 0.85 else "files"}
        yield ev, encode(ev) + b"\n", None


def write_workload(path: Path, n: int, root: Path | None, seed: int = 22) -> Workload:
    """Write ``n`` events to ``path``; return where the planted ones are and the mix's shape."""
    w = Workload(events=n)
    with path.open("wb") as f:
        for lineno, (ev, line, ids) in enumerate(events(n, root, seed), 1):
            f.write(line)
            if ids is not None:
                w.planted[lineno] = ids
            elif ev is not None:
                w.add(ev)
    w.rules = len(set().union(*w.planted.values())) if w.planted else 0
    return w


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.bench.real_workload OUT N``: the events, and OUT.json with the planted lines and shape.

    The benchmark writes the workload in a child process: a replay started
    from a process inherits its peak RSS in the kernel's accounting, and the
    generator's bookkeeping (every distinct command line) is large.
    """
    import json
    import sys

    from tests.bench.sigma_workload import vendor_root

    out, n = (argv if argv is not None else sys.argv[1:])[:2]
    w = write_workload(Path(out), int(n), vendor_root())
    Path(out + ".json").write_text(json.dumps({"events": w.events, "rules": w.rules, "shape": w.describe(),
                                               "planted": {str(k): sorted(v) for k, v in w.planted.items()}}),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()


__all__ = ["HOST_IP", "REGISTRY", "PackOracle", "SigmaOracle", "Workload", "events", "pack_violations",
           "planted_events", "sigma_view", "write_workload"]
