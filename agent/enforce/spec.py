"""A rule's ``enforce:`` settings: which enforcement its ``block`` findings ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import Location, Problems
from agent.schema import expect_map

KINDS = ("network", "isolate", "media", "copy")
SCOPES = ("destination", "zone")
_BY_EVENT = (("net.", "network"), ("media.", "media"), ("file.", "copy"))


@dataclass(frozen=True, slots=True)
class RuleEnforce:
    """What a block rule enforces: the kind, for network blocks the scope, and a TTL (None: the config's)."""

    kind: str
    scope: str | None = None
    ttl: float | None = None


def default_kind(kinds: frozenset[str]) -> str | None:
    """The enforcement a block rule on these event kinds implies when it names none."""
    found = {k for prefix, k in _BY_EVENT for ev in kinds if ev.startswith(prefix)}
    return found.pop() if len(found) == 1 else None


def parse_rule_enforce(value: Any, where: Location, problems: Problems, kinds: frozenset[str]) -> RuleEnforce | None:
    """``enforce: {kind, scope, ttl}`` of a rule, checked; None (with a problem) when wrong."""
    from agent.config import parse_duration

    if value is None:
        kind = default_kind(kinds)
        if kind is None:
            problems.add(where, "a block rule must say what it enforces: enforce: {kind: network|isolate|media|copy} "
                                "(its events do not name one kind)")
            return None
        return RuleEnforce(kind, "destination" if kind == "network" else None)
    m = expect_map(value, where, problems, "enforce", optional=("kind", "scope", "ttl"))
    if m is None:
        return None
    kind = m.get("kind", default_kind(kinds))
    if kind not in KINDS:
        problems.add(m.at("kind") if "kind" in m else m.where,
                     f"enforce.kind must be one of {', '.join(KINDS)}, not {kind!r}")
        return None
    scope = m.get("scope", "destination" if kind == "network" else None)
    if kind == "network" and scope not in SCOPES:
        problems.add(m.at("scope"), f"enforce.scope must be destination or zone, not {scope!r}")
        return None
    if kind != "network" and "scope" in m:
        problems.add(m.at("scope"), f"enforce.scope applies to network blocks only, not to {kind}")
        return None
    ttl = None
    if "ttl" in m:
        try:
            ttl = parse_duration(m["ttl"])
        except ValueError as exc:
            problems.add(m.at("ttl"), f"enforce.ttl: {exc}")
            return None
        if ttl < 1:
            problems.add(m.at("ttl"), "enforce.ttl must be at least 1s")
            return None
    return RuleEnforce(str(kind), str(scope) if scope is not None else None, ttl)
