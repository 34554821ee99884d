"""The ``enforce:`` section of agent.yaml: off unless the admin turns it on.

```yaml
enforce:
  mode: off              # off | dryrun | enforce
  ttl: 10m               # how long a reactive block lasts unless its rule says otherwise
  lease: 5m              # the longest a block outlives an agent that died without lifting it
  on_stop: lift          # lift | keep: what a clean stop does with blocks in force
  persist: false         # at start, restore the last run's unexpired blocks (true) or lift them
  table: dutywatch       # the nftables table (family inet) the agent owns
  network:
    mode: reactive       # reactive: block after the first offence | preventive: forbidden zones blocked from start
    reactive: kernel     # kernel: the table blocks a destination at its first packet, a block rule confirms it
                         # | agent: the agent blocks once a block rule has judged the offence
    forbidden: []        # zones to cut; empty: the registry's default zone (the Internet)
    resolvers: null      # DNS resolvers kept open; null: the nameservers of /etc/resolv.conf
    allow: []            # more management addresses (CIDRs) kept open, beside those derived from the config
    isolate_critical: false  # a critical network block isolates the host (all but the management channel)
  media:
    unregistered: readonly   # readonly | deauthorize | off: an unregistered stick on a classified host
  copy:
    enabled: false       # fanotify permission checks on classified assets
```
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent.errors import Location, Problems
from agent.schema import expect_bool, expect_map, expect_str, str_list
from agent.yamlsrc import LDict

MODES = ("off", "dryrun", "enforce")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,30}$")


@dataclass(frozen=True, slots=True)
class EnforceConfig:
    """Validated enforcement settings (see the module docstring)."""

    mode: str = "off"
    ttl: float = 600.0
    lease: float = 300.0
    on_stop: str = "lift"
    persist: bool = False
    table: str = "dutywatch"
    network_mode: str = "reactive"
    reactive_by: str = "kernel"
    forbidden: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    isolate_critical: bool = False
    media_unregistered: str = "readonly"
    copy: bool = False
    resolvers: tuple[str, ...] | None = None
    where: Location | None = None  # the ``enforce:`` key, for problems found against the registry
    network_where: Location | None = None

    @property
    def active(self) -> bool:
        """Whether enforcement decisions are made at all (dry-run or for real)."""
        return self.mode != "off"


def parse_enforce(top: LDict, problems: Problems) -> EnforceConfig:
    """``enforce:`` of the merged config; every key checked with its place."""
    from agent.config import parse_duration

    if "enforce" not in top:
        return EnforceConfig()
    e = expect_map(top["enforce"], top.at("enforce"), problems, "enforce",
                   optional=("mode", "ttl", "lease", "on_stop", "persist", "table", "network", "media", "copy"))
    if e is None:
        return EnforceConfig()
    d = EnforceConfig()
    mode = e.get("mode", d.mode)
    if mode is False:  # YAML reads a bare off as false
        mode = "off"
    if mode not in MODES:
        problems.add(e.at("mode"), f"enforce.mode must be off, dryrun or enforce, not {mode!r}")
        mode = "off"
    durations = {}
    for key, low in (("ttl", 1.0), ("lease", 10.0)):
        durations[key] = getattr(d, key)
        if key in e:
            try:
                durations[key] = parse_duration(e[key])
            except ValueError as exc:
                problems.add(e.at(key), f"enforce.{key}: {exc}")
                continue
            if durations[key] < low:
                problems.add(e.at(key), f"enforce.{key} must be at least {low:g}s")
    on_stop = e.get("on_stop", d.on_stop)
    if on_stop not in ("lift", "keep"):
        problems.add(e.at("on_stop"), f"enforce.on_stop must be lift or keep, not {on_stop!r}")
    persist = expect_bool(e.get("persist", d.persist), e.at("persist"), problems, "enforce.persist")
    table = expect_str(e.get("table", d.table), e.at("table"), problems, "enforce.table") or d.table
    if not _TABLE.match(table):
        problems.add(e.at("table"), f"enforce.table must be a name of letters, digits, - and _, not {table!r}")
    net = _network(e, problems)
    media = "readonly"
    if "media" in e:
        m = expect_map(e["media"], e.at("media"), problems, "enforce.media", optional=("unregistered",))
        if m is not None and "unregistered" in m:
            media = m["unregistered"]
            if media not in ("readonly", "deauthorize", "off") and media is not False:
                problems.add(m.at("unregistered"), "enforce.media.unregistered must be readonly, deauthorize or "
                                                   f"off, not {media!r}")
            media = "off" if media is False else str(media)
    copy = False
    if "copy" in e:
        c = expect_map(e["copy"], e.at("copy"), problems, "enforce.copy", optional=("enabled",))
        if c is not None and "enabled" in c:
            copy = bool(expect_bool(c["enabled"], c.at("enabled"), problems, "enforce.copy.enabled"))
    return EnforceConfig(str(mode), durations["ttl"], durations["lease"], str(on_stop), bool(persist), table,
                         net[0], net[5], *net[1:4], media, copy, net[4], top.key_at("enforce"),
                         e.key_at("network") if "network" in e else top.key_at("enforce"))


def _network(e: LDict, problems: Problems) -> tuple[str, tuple[str, ...], tuple[str, ...], bool,
                                                     tuple[str, ...] | None, str]:
    if "network" not in e:
        return "reactive", (), (), False, None, "kernel"
    n = expect_map(e["network"], e.at("network"), problems, "enforce.network",
                   optional=("mode", "reactive", "forbidden", "allow", "isolate_critical", "resolvers"))
    if n is None:
        return "reactive", (), (), False, None, "kernel"
    mode = n.get("mode", "reactive")
    if mode not in ("reactive", "preventive"):
        problems.add(n.at("mode"), f"enforce.network.mode must be reactive or preventive, not {mode!r}")
    by = n.get("reactive", "kernel")
    if by not in ("kernel", "agent"):
        problems.add(n.at("reactive"), f"enforce.network.reactive must be kernel or agent, not {by!r}")
        by = "kernel"
    forbidden = str_list(n["forbidden"], n.at("forbidden"), problems, "enforce.network.forbidden") \
        if "forbidden" in n else ()
    allow = str_list(n["allow"], n.at("allow"), problems, "enforce.network.allow") if "allow" in n else ()
    for i, a in enumerate(allow):
        try:
            ipaddress.ip_network(a, strict=False)
        except ValueError:
            problems.add(n["allow"].at(i), f"enforce.network.allow: {a!r} is not an address or CIDR")
    dns = None
    if n.get("resolvers") is not None:
        dns = str_list(n["resolvers"], n.at("resolvers"), problems, "enforce.network.resolvers")
        for i, a in enumerate(dns):
            try:
                ipaddress.ip_address(a)
            except ValueError:
                problems.add(n["resolvers"].at(i), f"enforce.network.resolvers: {a!r} is not an address")
    iso = expect_bool(n.get("isolate_critical", False), n.at("isolate_critical"), problems,
                      "enforce.network.isolate_critical")
    return str(mode), forbidden, allow, bool(iso), dns, str(by)
