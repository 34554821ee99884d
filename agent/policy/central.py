"""A central registry: many hosts, their units and people, from which each host takes its own entry.

The file has the sections of a host's registry (units, departments,
people, service_accounts, zones, assets, media) shared by every host, and
``hosts:``, a list of host entries (the fields of a registry's ``host:``, and
``address``, where the centre scrapes it: ``HOST:PORT``, by default the host
id on port 9847).
A host's registry is the shared sections with ``host:`` set to the entry
whose ``id`` is the host's. Every entry is checked as a registry of its
own, with problems located in the central file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from agent.errors import LoadError, LoadErrors, Location, Problems
from agent.registry import Registry, parse_registry
from agent.schema import expect_list, expect_map
from agent.yamlsrc import LDict, load_text

_SHARED = ("units", "departments", "people", "service_accounts", "zones", "assets", "media")


def _entries(doc: Any, path: str) -> tuple[LDict, list[LDict]]:
    problems = Problems()
    top = expect_map(doc, Location(path, 1, 1), problems, "central registry", required=("hosts",),
                     optional=_SHARED)
    if top is None:
        problems.raise_if_any()
        raise AssertionError("unreachable")
    seq = expect_list(top.get("hosts"), top.at("hosts"), problems, "hosts")
    entries: list[LDict] = []
    ids: dict[str, Location] = {}
    for i, e in enumerate(seq or ()):
        assert seq is not None
        m = expect_map(e, seq.at(i), problems, f"hosts[{i}]", required=("id",),
                       optional=("unit", "department", "custodian", "level", "zone", "address"))
        if m is None:
            continue
        hid = str(m.get("id"))
        if hid in ids:
            problems.add(m.at("id"), f"host {hid!r} is listed twice (first at {ids[hid]})")
        ids[hid] = m.at("id")
        entries.append(m)
    problems.raise_if_any()
    return top, entries


def _host_only(entry: LDict) -> LDict:
    out = LDict({k: v for k, v in entry.items() if k != "address"})
    out.where, out.key_where, out.value_where = entry.where, entry.key_where, entry.value_where
    return out


def _for(top: LDict, entry: LDict) -> LDict:
    entry = _host_only(entry)
    out = LDict({k: v for k, v in top.items() if k != "hosts"})
    out.where = top.where
    out.key_where = dict(top.key_where)
    out.value_where = dict(top.value_where)
    out["host"] = entry
    out.key_where["host"] = entry.where
    out.value_where["host"] = entry.where
    return out


def check(text: str, path: str) -> list[str]:
    """Validate every host's registry; return the host ids. LoadErrors lists every problem."""
    return [str(e["id"]) for e in _checked(text, path)]


def _checked(text: str, path: str) -> list[LDict]:
    """The host entries, each checked as a registry of its own (LoadErrors lists every problem)."""
    top, entries = _entries(load_text(text, path), path)
    problems: list[LoadError] = []
    for e in entries:
        try:
            parse_registry(_for(top, e), path)
        except LoadErrors as exc:
            problems += exc.errors
        except LoadError as exc:
            problems.append(exc)
    if problems:
        raise LoadErrors(problems)
    return entries


def host_registry(text: str, path: str, host_id: str) -> tuple[str, Registry] | None:
    """This host's registry as YAML text (and parsed), or None when the central registry has no entry for it."""
    top, entries = _entries(load_text(text, path), path)
    for e in entries:
        if str(e["id"]) == host_id:
            reg = parse_registry(_for(top, e), path)
            plain = _plain({k: v for k, v in top.items() if k != "hosts"})
            plain["host"] = _plain(_host_only(e))
            header = (f"# This host's entry ({host_id}) of a central registry delivered in a signed policy "
                      "bundle.\n# Do not edit: the agent writes it again from the bundle at every load.\n")
            return header + yaml.safe_dump(plain, allow_unicode=True, sort_keys=False), reg
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class FleetHost:
    """One host of a central registry as the centre scrapes it."""

    id: str
    unit: str
    department: str
    address: str  # HOST:PORT


def fleet(text: str, path: str) -> list[FleetHost]:
    """Every host of a central registry with its unit, department and scrape address (checked)."""
    from agent.gen import parse_target

    problems = Problems()
    out = []
    for e in _checked(text, path):
        addr = str(e.get("address") or e["id"])
        try:
            target = parse_target(addr, e.at("address") if "address" in e else e.at("id"))
        except LoadError as exc:
            problems.append(exc)
            continue
        out.append(FleetHost(str(e["id"]), str(e.get("unit") or ""), str(e.get("department") or ""), str(target)))
    problems.raise_if_any()
    return out
