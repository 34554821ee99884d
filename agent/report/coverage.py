"""When each host was watched in the period, from its own journal: runs, gaps, pauses, silence.

A conclusion such as "no violations" is only true of time an agent was
watching, so every report first works out, per host, which part of the
period was monitored. Monitored time is a run of the agent (from its
``agent.start`` to its ``agent.stop``, or, for a run that ended without a
stop, to its last record, the last sign of life the journal holds: a quiet
agent journals a signed ``agent.heartbeat`` after ``journal.heartbeat`` of
silence, so a killed one is proven up to that), less
every window an ``agent.tamper`` record names (a gap found at the next
start, a pause). The rest of the period is unmonitored and said where it
lies: before the first start, between runs (gaps), after the last sign of
life.

A run that began before the period is known from the state just before it
(``Prior``: the last lifecycle record and the last record before the start
of the period), so a period cut in the middle of a run is not mistaken for
one in which nothing ran.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

MAX_WINDOWS = 2000  # runs and tamper windows kept per host; beyond, the oldest are merged
MAX_LISTED = 50  # unmonitored stretches listed per host in a report


@dataclass(frozen=True, slots=True)
class Prior:
    """A host's state just before the period: was the agent running, and when was it last seen."""

    running: bool
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class Stretch:
    """An unmonitored stretch of the period; ``where`` is before, gap or after."""

    since: float
    until: float
    where: str

    @property
    def seconds(self) -> float:
        """Its length."""
        return max(0.0, self.until - self.since)


@dataclass(frozen=True, slots=True)
class HostCoverage:
    """How much of the period one host was watched, and where it was not."""

    host: str
    since: float
    until: float
    monitored: float
    before: float
    gaps: float
    after: float
    stretches: tuple[Stretch, ...]
    runs: int
    still_running: bool = False  # the last run had not stopped by the end of what the journal holds

    @property
    def length(self) -> float:
        """The period's length."""
        return max(0.0, self.until - self.since)

    @property
    def unmonitored(self) -> float:
        """Time in the period no agent watched."""
        return self.before + self.gaps + self.after

    @property
    def share(self) -> float:
        """The monitored share of the period, 0..1 (0 for an empty period)."""
        return self.monitored / self.length if self.length > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Watched for the whole period (to the second)."""
        return self.length > 0 and self.unmonitored < 1.0


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _minus(spans: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    holes = _union(holes)
    for a, b in spans:
        cur = a
        for h0, h1 in holes:
            if h1 <= cur or h0 >= b:
                continue
            if h0 > cur:
                out.append((cur, h0))
            cur = max(cur, h1)
            if cur >= b:
                break
        if cur < b:
            out.append((cur, b))
    return out


def _clip(spans: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if min(b, hi) > max(a, lo)]


@dataclass
class _Host:
    runs: list[tuple[float, float]] = field(default_factory=list)
    holes: list[tuple[float, float]] = field(default_factory=list)
    open_since: float | None = None
    last_seen: float | None = None
    starts: int = 0

    def close(self, end: float | None) -> None:
        if self.open_since is not None:
            stop = end if end is not None else self.open_since
            self.runs.append((self.open_since, max(stop, self.open_since)))
            self.open_since = None
            if len(self.runs) > MAX_WINDOWS:
                self.runs = _union(self.runs)[-MAX_WINDOWS:]


class CoverageTracker:
    """Fed every record of the period in seq order (``add``), plus each host's ``Prior``; ``result`` per host."""

    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._no_evidence: dict[str, list[tuple[float, float]]] = {}

    def missing_evidence(self, host: str, spans: list[tuple[float, float]]) -> None:
        """Stretches no evidence bundle of ``host`` covers: unmonitored as far as the report can tell."""
        self._no_evidence.setdefault(host, []).extend(spans)

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _Host()
        return h

    def prior(self, host: str, p: Prior, since: float) -> None:
        """The host's state before the period: a run still open at its start begins there."""
        h = self._host(host)
        if p.running and p.last_seen is not None:
            h.open_since = min(p.last_seen, since)
            h.last_seen = p.last_seen
            h.starts += 1

    def add(self, host: str, t: float, kind: str | None, detail: dict[str, Any]) -> None:
        """One record of ``host`` at ``t``; ``kind`` is the lifecycle kind, None for a finding."""
        h = self._host(host)
        if kind == "agent.start":
            # A run that never stopped ends at its last record (a heartbeat on a quiet host), not at the
            # time the next start's gap record names: that comes from an unsigned state file.
            h.close(h.last_seen)
            h.open_since = t
            h.starts += 1
        elif kind == "agent.stop":
            if h.open_since is None:  # stopped, but its start lies before anything seen
                h.open_since = h.last_seen if h.last_seen is not None else t
            h.close(t)
        else:
            if h.open_since is None:
                # A record is written by a running agent: it was watching from here at least.
                h.open_since = t
                h.starts += 1
            if kind == "agent.tamper":
                a, b = detail.get("since"), detail.get("until")
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and _number(a) and _number(b) \
                        and b > a:
                    h.holes.append((float(a), float(b)))
                    if len(h.holes) > MAX_WINDOWS:
                        h.holes = _union(h.holes)[-MAX_WINDOWS:]
        h.last_seen = t if h.last_seen is None else max(h.last_seen, t)

    def hosts(self) -> tuple[str, ...]:
        """Every host seen."""
        return tuple(sorted(self._hosts))

    def result(self, since: float, until: float, hosts: tuple[str, ...] = ()) -> tuple[HostCoverage, ...]:
        """Coverage of [since, until] for every host seen (and each of ``hosts``, seen or not)."""
        out = []
        for name in sorted(set(self._hosts) | set(hosts)):
            h = self._hosts.get(name, _Host())
            runs = list(h.runs)
            if h.open_since is not None:
                runs.append((h.open_since, h.last_seen if h.last_seen is not None else h.open_since))
            missing = _union(self._no_evidence.get(name, []))
            watched = _clip(_minus(_minus(_union(runs), h.holes), missing), since, until)
            c = _relabel(_cover(name, since, until, watched, h.starts), missing)
            out.append(replace(c, still_running=True) if h.open_since is not None else c)
        return tuple(out)


def _cover(host: str, since: float, until: float, watched: list[tuple[float, float]], runs: int) -> HostCoverage:
    monitored = sum(b - a for a, b in watched)
    stretches: list[Stretch] = []
    if not watched:
        if until > since:
            stretches.append(Stretch(since, until, "before"))
        return HostCoverage(host, since, until, 0.0, max(0.0, until - since), 0.0, 0.0, tuple(stretches), runs)
    before = watched[0][0] - since
    after = until - watched[-1][1]
    if before > 0:
        stretches.append(Stretch(since, watched[0][0], "before"))
    gaps = 0.0
    for (_, b), (a2, _) in itertools.pairwise(watched):
        gaps += a2 - b
        if len(stretches) < MAX_LISTED:
            stretches.append(Stretch(b, a2, "gap"))
    if after > 0:
        stretches.append(Stretch(watched[-1][1], until, "after"))
    return HostCoverage(host, since, until, monitored, max(0.0, before), gaps, max(0.0, after), tuple(stretches),
                        runs)


def _relabel(cv: HostCoverage, missing: list[tuple[float, float]]) -> HostCoverage:
    """Unmonitored stretches where a host's evidence bundles leave a hole are said to be that (no_evidence)."""
    if not missing:
        return cv
    out: list[Stretch] = []
    for x in cv.stretches:
        cur = x.since
        for a, b in missing:
            if b <= cur or a >= x.until:
                continue
            if a > cur:
                out.append(Stretch(cur, a, x.where))
            out.append(Stretch(max(a, cur), min(b, x.until), "no_evidence"))
            cur = min(b, x.until)
        if cur < x.until:
            out.append(Stretch(cur, x.until, x.where))
    return HostCoverage(cv.host, cv.since, cv.until, cv.monitored, cv.before, cv.gaps, cv.after,
                        tuple(out[:MAX_LISTED]), cv.runs)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class PriorScan:
    """Records around the period: the last lifecycle kind and record time per host before it (``add``), and
    the first records after it (``after``), which tell whether a run open at its end went on past it."""

    def __init__(self) -> None:
        self._kind: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self.later: list[tuple[str, float, str | None, dict[str, Any]]] = []

    def after(self, host: str, t: float, kind: Any, detail: Any) -> bool:
        """A record after the period, in seq order; False once enough are held (the first, and the gap record
        that follows a start)."""
        if len(self.later) >= 2 or (self.later and self.later[0][2] != "agent.start"):
            return False
        self.later.append((host, t, kind if isinstance(kind, str) else None,
                           detail if isinstance(detail, dict) else {}))
        return True

    def follow(self, tracker: CoverageTracker) -> None:
        """Hand the records after the period to ``tracker`` (they only extend or end runs; clipped away)."""
        for host, t, kind, detail in self.later:
            tracker.add(host, t, kind, detail)

    def add(self, host: str, t: float, kind: Any) -> None:
        """One record before the period; ``kind`` its lifecycle kind, None for any other record."""
        if isinstance(kind, str):
            self._kind[host] = kind
        self._seen[host] = max(t, self._seen.get(host, t))

    def result(self) -> dict[str, Prior]:
        """Per host: running unless its last lifecycle record was a clean stop."""
        return {h: Prior(self._kind.get(h) != "agent.stop", t) for h, t in self._seen.items()}
