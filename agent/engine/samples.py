"""Rule samples: raw events with the rules they must and must not fire (DESIGN §5).

A sample is the event as a collector emits it, run through attribution with
a registry (the demo registry unless the sample names one, relative to the
sample file) and then the engine. ``run_samples`` also checks coverage:
every shipped rule needs at least one sample that fires it and one that
does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.attribution import Attributor
from agent.engine.engine import Engine
from agent.engine.rules import RuleSet
from agent.errors import LoadError, LoadErrors, Location, Problems
from agent.events import Event
from agent.packages import no_owners
from agent.paths import DEMO_REGISTRY
from agent.registry import load_registry
from agent.schema import expect_int, expect_list, expect_map, expect_str, str_list
from agent.yamlsrc import LDict, load_file, where_of

_SAMPLE_KEYS = ("name", "registry", "event", "fires", "not_fires", "description", "repeat")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one sample, or of one coverage check."""

    where: Location
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    """All outcomes of a run."""

    outcomes: list[Outcome] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)
    spared: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        """How many outcomes passed."""
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def failed(self) -> int:
        """How many outcomes failed."""
        return sum(1 for o in self.outcomes if not o.ok)

    def summary(self) -> str:
        """The closing line: ``N passed, N failed``."""
        return f"{self.passed} passed, {self.failed} failed"


class SampleRunner:
    """Runs sample files against one rule set, caching one attributor per registry."""

    def __init__(self, ruleset: RuleSet, account_name: Callable[[int], str | None] | None = None) -> None:
        self.engine = Engine(ruleset)
        self.ids = {r.id for r in ruleset.rules}
        self.disabled = set(ruleset.disabled)
        self._attributors: dict[Path, Attributor] = {}
        self._account_name = account_name or _no_system_accounts

    def attributor(self, path: Path) -> Attributor:
        """The attributor of a registry file (loaded once)."""
        key = path.resolve()
        if key not in self._attributors:
            self._attributors[key] = Attributor(load_registry(path), self._account_name, no_owners)
        return self._attributors[key]

    def run_file(self, path: Path, report: Report) -> None:
        """Run every sample of one file, adding outcomes to ``report``."""
        try:
            doc = load_file(path)
        except LoadError as exc:
            report.outcomes.append(Outcome(exc.where, path.name, False, exc.message))
            return
        problems = Problems()
        seq = expect_list(doc, Location(str(path), 1, 1), problems, "sample file")
        for p in problems:
            report.outcomes.append(Outcome(p.where, path.name, False, p.message))
        for i, item in enumerate(seq or ()):
            report.outcomes.append(self.run_one(path, item, seq.at(i) if seq else Location(str(path)), report))

    def run_one(self, path: Path, item: object, where: Location, report: Report) -> Outcome:
        """Run one sample."""
        problems = Problems()
        m = expect_map(item, where, problems, "sample", required=("name", "event"), optional=_SAMPLE_KEYS)
        name = "?"
        if m is not None:
            name = expect_str(m.get("name"), m.at("name"), problems, "name") or "?"
        if m is None or problems:
            return Outcome(where, name, False, "; ".join(p.message for p in problems))
        fires = str_list(m["fires"], m.at("fires"), problems, "fires") if "fires" in m else ()
        not_fires = str_list(m["not_fires"], m.at("not_fires"), problems, "not_fires") if "not_fires" in m else ()
        if not fires and not not_fires:
            problems.add(m.where, "a sample must name rules under fires or not_fires")
        for rid, key in [(r, "fires") for r in fires] + [(r, "not_fires") for r in not_fires]:
            if rid not in self.ids:
                state = "disabled" if rid in self.disabled else "not loaded"
                problems.add(m.at(key), f"rule {rid} is {state}")
        if problems:
            return Outcome(where, name, False, "; ".join(p.message for p in problems))
        reg = path.parent / str(m["registry"]) if "registry" in m else DEMO_REGISTRY
        try:
            attribute = self.attributor(reg)
        except LoadError as exc:
            return Outcome(m.at("registry"), name, False, f"registry: {exc}")
        except LoadErrors as exc:
            return Outcome(m.at("registry"), name, False, f"registry: {exc.errors[0]}")
        raw = _plain(m["event"])
        try:
            if not isinstance(raw, dict):
                raise ValueError("event must be a mapping of field groups")
            event = Event.from_dict(raw)
        except ValueError as exc:
            return Outcome(where_of(m["event"], m.at("event")), name, False, f"bad event: {exc}")
        # ``repeat: N``: the event N times over (a count-over-window rule), judged on the last.
        repeat = m.get("repeat", 1)
        if expect_int(repeat, m.at("repeat"), problems, "repeat", minimum=1, maximum=10000) is None:
            return Outcome(where, name, False, "; ".join(p.message for p in problems))
        self.engine.reset_windows()
        attributed = attribute(event)
        for _ in range(int(repeat) - 1):
            self.engine.match(attributed)
        fired = {r.id for r in self.engine.match(attributed)}
        for rid in fires:
            report.fired[rid] = report.fired.get(rid, 0) + 1
        for rid in not_fires:
            report.spared[rid] = report.spared.get(rid, 0) + 1
        missing = [r for r in fires if r not in fired]
        unexpected = [r for r in not_fires if r in fired]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"expected to fire: {', '.join(missing)}")
            if unexpected:
                parts.append(f"must not fire: {', '.join(unexpected)}")
            parts.append(f"fired: {', '.join(sorted(fired)) or 'nothing'}")
            return Outcome(where, name, False, "; ".join(parts))
        return Outcome(where, name, True)


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _no_system_accounts(uid: int) -> str | None:
    # Samples must give the same result on every machine, so they never
    # consult this machine's account database; events carry process.user.
    return None


def sample_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the ``*.yaml`` files of directories named, in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(x for x in p.glob("*.yaml") if x.is_file()))
        else:
            out.append(p)
    return out


def run_samples(ruleset: RuleSet, files: Iterable[Path], coverage_of: Iterable[str] = ()) -> Report:
    """Run sample files; then fail each rule in ``coverage_of`` lacking either kind of sample."""
    runner = SampleRunner(ruleset)
    report = Report()
    for f in sample_files(files):
        runner.run_file(f, report)
    by_id = ruleset.by_id()
    for rid in coverage_of:
        rule = by_id.get(rid)
        where = rule.where if rule else Location("?")
        lacks = [k for k, seen in (("matching", report.fired), ("non-matching", report.spared))
                 if not seen.get(rid)]
        if lacks:
            report.outcomes.append(Outcome(where, f"coverage of {rid}", False,
                                           f"rule {rid} has no {' and no '.join(lacks)} sample"))
    return report


__all__ = ["LDict", "Outcome", "Report", "SampleRunner", "run_samples", "sample_files"]
