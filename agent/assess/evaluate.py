"""Evaluating checks against a host: all/any/none over probe outcomes, applicability first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent.assess.context import HostContext
from agent.assess.policy import Check, Condition, PolicySet
from agent.assess.probes import FAIL, NA, PASS, Outcome
from agent.assess.rootfs import ProbeError

MAX_EVIDENCE = 12


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A check's result on one host and the evidence that decided it."""

    check: str
    policy: str
    result: str
    evidence: tuple[str, ...]
    items: tuple[str, ...]
    clause: str
    title_zh: str
    title_en: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the journal's and ``--format json``'s)."""
        return {"check": self.check, "policy": self.policy, "result": self.result, "evidence": list(self.evidence),
                "items": list(self.items), "clause": self.clause, "title": {"zh": self.title_zh, "en": self.title_en}}


def evaluate(cond: Condition, ctx: HostContext) -> Outcome:
    """The outcome of a condition: all fails on any fail, any passes on any pass, none passes when none does."""
    if cond.op == "probe":
        assert cond.probe is not None
        try:
            return cond.probe(ctx)
        except ProbeError as exc:
            return Outcome(FAIL, (f"could not be evaluated: {exc}",))
        except (OSError, ValueError, UnicodeError) as exc:
            return Outcome(FAIL, (f"could not be evaluated: {type(exc).__name__}: {exc}",))
    outs = [evaluate(c, ctx) for c in cond.parts]
    by = {r: [o for o in outs if o.result == r] for r in (PASS, FAIL, NA)}

    def ev(group: list[Outcome]) -> tuple[str, ...]:
        return tuple(e for o in group for e in o.evidence)[:MAX_EVIDENCE]

    if cond.op == "all":
        if by[FAIL]:
            return Outcome(FAIL, ev(by[FAIL]))
        if by[PASS]:
            return Outcome(PASS, ev(by[PASS]))
        return Outcome(NA, ev(by[NA]))
    if cond.op == "any":
        if by[PASS]:
            return Outcome(PASS, ev(by[PASS]))
        if by[FAIL]:
            return Outcome(FAIL, ev(by[FAIL]))
        return Outcome(NA, ev(by[NA]))
    # none: the negation of any
    if by[PASS]:
        return Outcome(FAIL, ev(by[PASS]))
    if by[FAIL]:
        return Outcome(PASS, ev(by[FAIL]))
    return Outcome(NA, ev(by[NA]))


def applicable(check: Check, ctx: HostContext) -> str | None:
    """None when the check applies, else the reason it does not."""
    if check.families:
        fam = ctx.family
        if fam not in check.families:
            return f"for {', '.join(check.families)} systems; this one is {fam or 'of an unknown family'}"
    if check.packages:
        try:
            pk = ctx.packages()
        except ProbeError as exc:
            return f"needs {' or '.join(check.packages)}: {exc}"
        if not any(n in pk for n in check.packages):
            return f"{' or '.join(check.packages)} not installed"
    if check.files and not any(ctx.fs.exists(f) for f in check.files):
        return f"{' or '.join(check.files)} absent"
    return None


def run_check(check: Check, ctx: HostContext) -> CheckResult:
    """One check's result."""
    reason = applicable(check, ctx)
    out = Outcome(NA, (reason,)) if reason is not None else evaluate(check.condition, ctx)
    return CheckResult(check.id, check.policy, out.result, out.evidence[:MAX_EVIDENCE], check.items, check.clause,
                       check.title.zh, check.title.en)


@dataclass(frozen=True, slots=True)
class Run:
    """One assessment run of a host."""

    root: str
    family: str | None
    started: float
    seconds: float
    results: tuple[CheckResult, ...]
    read_paths: tuple[str, ...]

    def counts(self) -> dict[tuple[str, str], int]:
        """(policy, result) to the number of checks."""
        out: dict[tuple[str, str], int] = {}
        for r in self.results:
            out[(r.policy, r.result)] = out.get((r.policy, r.result), 0) + 1
        return out


def run_policies(policies: PolicySet, root: str = "/", command_timeout: float = 10.0) -> Run:
    """Every enabled check of ``policies`` against the host at ``root``."""
    t0, wall = time.monotonic(), time.time()
    ctx = HostContext(root, command_timeout)
    results = tuple(run_check(c, ctx) for c in policies.checks if c.enabled)
    return Run(ctx.fs.root, ctx.family, wall, time.monotonic() - t0, results,
               tuple(sorted(p for p in ctx.fs.read_paths if not p.startswith("/proc/"))))
