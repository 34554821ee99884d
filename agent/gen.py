"""Central configs derived from the registry and the agents' web config.

``dutywatch gen alertmanager`` and ``dutywatch gen scrape-config`` call these
pure functions: they take plain values and return documents (dicts ready for
YAML); reading files and writing output is the command's job. Alert label
names (``unit``, ``department``, ``severity``) and the job name ``dutywatch``
match the rules in ``dashboards/prometheus/``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from agent.errors import LoadError, Location, Problems
from agent.yamlsrc import LDict, load_text, where_of

JOB = "dutywatch"
DEFAULT_PORT = 9847
# Alert severities (set by the alert rules) that reach the supervising department too.
ESCALATE = ("page", "critical")
FALLBACK = "dutywatch-fallback"
# Client-auth modes in which the agent refuses a scraper without a certificate.
CLIENT_CERT_REQUIRED = frozenset({"RequireAnyClientCert", "RequireAndVerifyClientCert"})


class UnitLike(Protocol):
    """What routing needs of a registry unit (``agent.registry.Unit``)."""

    @property
    def name(self) -> str: ...
    @property
    def department(self) -> str | None: ...
    @property
    def contact(self) -> Mapping[str, str]: ...


class DepartmentLike(Protocol):
    """What routing needs of a registry department (``agent.registry.Department``)."""

    @property
    def name(self) -> str: ...
    @property
    def contact(self) -> Mapping[str, str]: ...


class RegistryLike(Protocol):
    """What routing needs of the registry (``agent.registry.Registry``)."""

    @property
    def units(self) -> Sequence[UnitLike]: ...
    @property
    def departments(self) -> Sequence[DepartmentLike]: ...


@dataclass(frozen=True, slots=True)
class AlertmanagerOptions:
    """Settings of the generated Alertmanager config that the registry does not hold."""

    smtp_smarthost: str = "localhost:25"
    smtp_from: str = "dutywatch-alertmanager@localhost"
    smtp_require_tls: bool = False
    fallback: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Generated:
    """A generated document and warnings for the operator."""

    doc: dict[str, Any]
    warnings: tuple[str, ...] = ()


def matcher(label: str, value: str, op: str = "=") -> str:
    """An Alertmanager matcher with the value quoted and escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{label}{op}"{escaped}"'


def receiver(name: str, contact: Mapping[str, str]) -> dict[str, Any]:
    """A receiver for a registry contact: its e-mail and webhook (other keys are not routable)."""
    rec: dict[str, Any] = {"name": name}
    if contact.get("email"):
        rec["email_configs"] = [{"to": contact["email"], "send_resolved": True}]
    if contact.get("webhook"):
        rec["webhook_configs"] = [{"url": contact["webhook"], "send_resolved": True}]
    return rec


def _routable(contact: Mapping[str, str]) -> bool:
    return bool(contact.get("email") or contact.get("webhook"))


def unit_receiver(name: str) -> str:
    """The receiver name of a unit."""
    return f"unit:{name}"


def department_receiver(name: str) -> str:
    """The receiver name of a department."""
    return f"department:{name}"


def alertmanager_config(registry: RegistryLike, options: AlertmanagerOptions | None = None) -> Generated:
    """Route each unit's alerts to its contacts; page/critical ones also to its department.

    A unit with no e-mail or webhook of its own falls back to its department's
    receiver. Alerts with no known unit go to their department (by the
    ``department`` label), else to the fallback receiver: the given fallback
    contact, or every department's contact when none is given.
    """
    opts = options or AlertmanagerOptions()
    warnings: list[str] = []
    receivers: list[dict[str, Any]] = []
    dept_names: set[str] = set()
    for d in registry.departments:
        if _routable(d.contact):
            receivers.append(receiver(department_receiver(d.name), d.contact))
            dept_names.add(d.name)
        else:
            warnings.append(f"department {d.name!r} has no e-mail or webhook contact: nothing escalates to it")
    escalate = matcher("severity", "|".join(ESCALATE), "=~")
    routes: list[dict[str, Any]] = []
    seen: set[str] = set()
    for u in registry.units:
        if u.name in seen:
            warnings.append(f"unit {u.name!r} is listed twice: the first entry is used")
            continue
        seen.add(u.name)
        dept = u.department if u.department in dept_names else None
        if u.department and dept is None and u.department not in {d.name for d in registry.departments}:
            warnings.append(f"unit {u.name!r}: department {u.department!r} is not listed under departments")
        if _routable(u.contact):
            receivers.append(receiver(unit_receiver(u.name), u.contact))
            own = unit_receiver(u.name)
        elif dept is not None:
            own = department_receiver(dept)
            warnings.append(f"unit {u.name!r} has no e-mail or webhook contact: its alerts go to {dept!r}")
        else:
            own = FALLBACK
            warnings.append(f"unit {u.name!r} has no contact and no department contact: its alerts go to "
                            f"{FALLBACK}")
        route: dict[str, Any] = {"matchers": [matcher("unit", u.name)], "receiver": own}
        if dept is not None and own != department_receiver(dept):
            # A matching child replaces its parent's receiver, so the unit is
            # notified by the first child and `continue` lets the second one,
            # the department, be notified too.
            route["routes"] = [
                {"matchers": [escalate], "receiver": own, "group_wait": "0s", "continue": True},
                {"matchers": [escalate], "receiver": department_receiver(dept), "group_wait": "0s"},
            ]
        routes.append(route)
    for d in registry.departments:
        if d.name in dept_names:
            routes.append({"matchers": [matcher("department", d.name)], "receiver": department_receiver(d.name)})
    fallback = _fallback(opts, registry, dept_names)
    if not _has_configs(fallback):
        warnings.append(f"{FALLBACK} has no contact: alerts that match no unit or department are dropped")
    receivers.insert(0, fallback)
    doc: dict[str, Any] = {
        "global": {
            "smtp_smarthost": opts.smtp_smarthost,
            "smtp_from": opts.smtp_from,
            "smtp_require_tls": opts.smtp_require_tls,
        },
        "route": {
            "receiver": FALLBACK,
            "group_by": ["alertname", "department", "unit", "host"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": routes,
        },
        # When the whole job is gone, one alert says so instead of one per host.
        "inhibit_rules": [{
            "source_matchers": [matcher("alertname", "DutyWatchNoAgents")],
            "target_matchers": [matcher("alertname", "DutyWatchAgentAbsent")],
            "equal": ["job"],
        }],
        "receivers": receivers,
    }
    return Generated(doc, tuple(warnings))


def _fallback(opts: AlertmanagerOptions, registry: RegistryLike, dept_names: set[str]) -> dict[str, Any]:
    if opts.fallback and _routable(opts.fallback):
        return receiver(FALLBACK, opts.fallback)
    rec: dict[str, Any] = {"name": FALLBACK}
    for d in registry.departments:
        if d.name in dept_names:
            for key, configs in receiver(FALLBACK, d.contact).items():
                if key != "name":
                    rec.setdefault(key, []).extend(configs)
    return rec


def _has_configs(rec: Mapping[str, Any]) -> bool:
    return any(k.endswith("_configs") for k in rec)


# -- scrape config -------------------------------------------------------------

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Target:
    """One agent to scrape, as ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str, where: Location) -> Target:
    """``host``, ``host:port``, ``a.b.c.d:port`` or ``[v6]:port``; the port defaults to 9847."""
    s = text.strip()
    host, port_text = s, ""
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or (end + 1 < len(s) and s[end + 1] != ":"):
            raise LoadError(where, f"bad target {text!r}: expected [address]:port")
        host, port_text = s[1:end], s[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise LoadError(where, f"bad target {text!r}: {host!r} is not an IPv6 address") from None
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif ":" in s:
        raise LoadError(where, f"bad target {text!r}: write an IPv6 address as [address]:port")
    if ":" not in host and not _valid_hostname(host):
        raise LoadError(where, f"bad target {text!r}: {host!r} is not a host name or address")
    port = DEFAULT_PORT
    if port_text or s.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise LoadError(where, f"bad target {text!r}: port must be 1-65535")
        port = int(port_text)
    return Target(host, port)


def _valid_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in host.rstrip(".").split("."))


def parse_targets_file(text: str, path: str) -> list[tuple[Target, Location]]:
    """One target a line, with its place; ``#`` starts a comment. Every bad line is reported."""
    problems = Problems()
    out: list[tuple[Target, Location]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0]
        if not body.strip():
            continue
        where = Location(path, lineno, len(body) - len(body.lstrip()) + 1)
        try:
            out.append((parse_target(body, where), where))
        except LoadError as exc:
            problems.append(exc)
    problems.raise_if_any()
    if not out:
        raise LoadError(Location(path), "no targets in file")
    return out


def unique_targets(targets: Sequence[tuple[Target, Location]]) -> list[Target]:
    """The targets in order; a target named twice is an error naming both places."""
    seen: dict[Target, Location] = {}
    problems = Problems()
    for t, where in targets:
        if t in seen:
            problems.add(where, f"target {t} is already listed at {seen[t]}")
        else:
            seen[t] = where
    problems.raise_if_any()
    return list(seen)


@dataclass(frozen=True, slots=True)
class ScrapeAuth:
    """How Prometheus must connect to the agents, read from their web config."""

    https: bool = False
    client_cert: bool = False
    basic_auth_user: str | None = None


def scrape_auth(text: str, path: str, username: str | None = None) -> ScrapeAuth:
    """Read an exporter-toolkit web config: TLS, whether a client cert is required, the user."""
    doc = load_text(text, path)
    if doc is None:
        return ScrapeAuth()
    if not isinstance(doc, LDict):
        raise LoadError(where_of(doc, Location(path, 1, 1)), "web config must be a mapping")
    problems = Problems()
    https = client_cert = False
    tls = doc.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, LDict):
            problems.add(doc.at("tls_server_config"), "tls_server_config must be a mapping")
        else:
            https = bool(tls.get("cert_file") or tls.get("cert"))
            if not https:
                problems.add(tls.where, "tls_server_config has no cert_file")
            mode = tls.get("client_auth_type", "NoClientCert")
            client_cert = str(mode) in CLIENT_CERT_REQUIRED
    user = None
    users = doc.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, LDict) or not users:
            problems.add(doc.at("basic_auth_users"), "basic_auth_users must be a mapping of user: bcrypt hash")
        elif username is not None:
            if username not in users:
                problems.add(doc.at("basic_auth_users"),
                             f"user {username!r} is not in basic_auth_users ({', '.join(sorted(users))})")
            user = username
        elif len(users) == 1:
            user = next(iter(users))
        else:
            problems.add(doc.at("basic_auth_users"),
                         f"several users ({', '.join(sorted(users))}): choose one with --username")
    problems.raise_if_any()
    return ScrapeAuth(https, client_cert, user)


@dataclass(frozen=True, slots=True)
class ScrapeFiles:
    """Where Prometheus finds its side of TLS and basic auth; relative to its config file."""

    ca_file: str = "dutywatch/ca.crt"
    cert_file: str = "dutywatch/client.crt"
    key_file: str = "dutywatch/client.key"
    password_file: str = "dutywatch/password"  # noqa: S105  (a file name, not a password)
    targets_file: str = "dutywatch/targets.yml"


def scrape_job(targets: Sequence[Target] | None, auth: ScrapeAuth, files: ScrapeFiles | None = None,
               scrape_interval: str = "15s", shard: tuple[int, int] | None = None,
               remote_write: str | None = None) -> dict[str, Any]:
    """The ``dutywatch`` scrape job: static targets when given, else the file_sd target file.

    ``shard`` (k, n): this Prometheus keeps only the targets whose address hashes to k modulo n,
    so n servers share the agents without overlap. ``remote_write``: where every sample also goes
    (the long-term store), with the shard as an external label.
    """
    f = files or ScrapeFiles()
    job: dict[str, Any] = {"job_name": JOB, "scrape_interval": scrape_interval, "metrics_path": "/metrics",
                           "scheme": "https" if auth.https else "http"}
    if auth.https:
        tls: dict[str, Any] = {"ca_file": f.ca_file}
        if auth.client_cert:
            tls |= {"cert_file": f.cert_file, "key_file": f.key_file}
        tls["min_version"] = "TLS12"
        job["tls_config"] = tls
    if auth.basic_auth_user is not None:
        job["basic_auth"] = {"username": auth.basic_auth_user, "password_file": f.password_file}
    if targets is None:
        job["file_sd_configs"] = [{"files": [f.targets_file], "refresh_interval": "1m"}]
    else:
        job["static_configs"] = [{"targets": [str(t) for t in targets]}]
    doc: dict[str, Any] = {}
    if shard is not None:
        k, n = shard
        job["relabel_configs"] = [
            {"source_labels": ["__address__"], "modulus": n, "target_label": "__tmp_shard", "action": "hashmod"},
            {"source_labels": ["__tmp_shard"], "regex": str(k), "action": "keep"},
        ]
        doc["global"] = {"external_labels": {"dutywatch_shard": f"{k}-of-{n}"}}
    doc["scrape_configs"] = [job]
    if remote_write is not None:
        doc["remote_write"] = [{"url": remote_write}]
    return doc


def unit_file_name(unit: str) -> str:
    """A file name for a unit's target file (the unit's own name, made safe)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in unit).strip("._")
    return (keep or "no-unit") + ".yml"


def fleet_file_sd(hosts: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """One file_sd file per unit: ``{file name: content}``, each host's scrape address in its unit's file."""
    by_unit: dict[str, list[str]] = {}
    for h in hosts:
        by_unit.setdefault(unit_file_name(h.unit), []).append(h.address)
    return {name: [{"targets": sorted(addrs)}] for name, addrs in sorted(by_unit.items())}


def file_sd(targets: Sequence[Target]) -> list[dict[str, Any]]:
    """A file_sd target file's content."""
    return [{"targets": [str(t) for t in targets]}]


def dump_yaml(doc: Any, header: str = "") -> str:
    """YAML as people read it: keys in the order built, Chinese left as is."""
    body = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, default_flow_style=False, width=120)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


__all__ = ["AlertmanagerOptions", "Generated", "ScrapeAuth", "ScrapeFiles", "Target",
           "alertmanager_config", "dump_yaml", "file_sd", "fleet_file_sd", "matcher", "parse_target",
           "parse_targets_file",
           "scrape_auth", "scrape_job", "unique_targets"]
