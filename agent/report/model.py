"""One pass over a period's records into bounded tallies and capped lists.

The aggregator sees each record once and keeps only what a report shows:
counters keyed by severity, day, department/unit, operator and rule, and
the first ``max_rows`` violations by severity then time (a heap, so a
period of millions of records needs no more memory than one of thousands).
Every string taken from a record is cut to ``CELL_MAX`` characters here,
before anything renders it.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, field
from typing import Any

from agent.report.assessment import AssessmentTally, HostAssessment
from agent.report.cells import (
    PERSON_ROLES,
    answer_of,
    cut,
    describe_object,
    describe_process,
    group_of,
    lifecycle_text,
    lifecycle_text_zh,
    text_of,
)
from agent.report.coverage import CoverageTracker

SEVERITIES = ("critical", "high", "medium", "low", "info")
RANK = {s: len(SEVERITIES) - i for i, s in enumerate(SEVERITIES)}
UNATTRIBUTED_RULES = frozenset({"ZR-001", "ZR-002"})
CONTINUITY_KINDS = ("agent.start", "agent.stop", "agent.reload", "agent.tamper", "config.changed",
                    "journal.pruned", "journal.resumed", "journal.quarantined", "enforce.action", "enforce.lift")
MAX_KEYS = 5000  # distinct operators, units, days or rules kept; the rest fold into OTHER
MAX_GROUPS = 2000  # rule × person × object groups kept; findings of further groups are counted apart
EXAMPLES = 3  # findings of one group listed one by one; the rest are in its count (and in CSV/JSON)
OTHER = "…"


@dataclass(frozen=True, slots=True)
class Tally:
    """Findings counted by severity (in SEVERITIES order) and by action."""

    by_severity: tuple[int, ...] = (0, 0, 0, 0, 0)
    alerts: int = 0
    audits: int = 0

    @property
    def total(self) -> int:
        """All findings counted."""
        return self.alerts + self.audits


class _Count:
    __slots__ = ("alerts", "audits", "sev")

    def __init__(self) -> None:
        self.sev = [0, 0, 0, 0, 0]
        self.alerts = 0
        self.audits = 0

    def add(self, sev_index: int, alert: bool, n: int = 1) -> None:
        self.sev[sev_index] += n
        if alert:
            self.alerts += n
        else:
            self.audits += n

    def freeze(self) -> Tally:
        return Tally(tuple(self.sev), self.alerts, self.audits)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One finding as listed in the report: who, where, what, under which rule."""

    seq: int
    time: float
    host: str
    rule: str
    severity: str
    action: str
    process: str
    operator: str
    object: str
    unit: str
    department: str
    message_zh: str
    message_en: str
    count: int = 1  # findings this row stands for (a folded record: its count)


@dataclass(frozen=True, slots=True)
class Repeat:
    """Findings of one rule by one person on one object: how many, first and last time, one example."""

    rule: str
    title_zh: str
    title_en: str
    severity: str
    operator: str
    unit: str
    custodian: str
    object: str
    process: str
    count: int
    first: float
    last: float
    host: str


class _Repeats:
    """Findings grouped by rule × person × object, up to MAX_GROUPS groups (the rest counted apart)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str], list[Any]] = {}
        self.folded = 0

    def add(self, key: tuple[str, str, str], sev_index: int, t: float, make: Any, n: int = 1,
            first: float | None = None) -> int:
        """Count one finding; returns how many of its group were seen, this one included (0 when folded)."""
        g = self.groups.get(key)
        if g is None:
            if len(self.groups) >= MAX_GROUPS:
                self.folded += 1
                return 0
            g = self.groups[key] = [sev_index, 0, t, t, make()]
        seen = int(g[1])
        g[1] += n
        g[2] = min(g[2], t if first is None else first)
        g[3] = max(g[3], t)
        return seen + 1

    def freeze(self) -> tuple[Repeat, ...]:
        rows = []
        for (rule, op, obj), (si, n, first, last, ex) in self.groups.items():
            rows.append(Repeat(rule, ex[0], ex[1], SEVERITIES[si], op, ex[2], ex[3], obj, ex[4], n, first, last,
                               ex[5]))
        rows.sort(key=lambda r: (SEVERITIES.index(r.severity), -r.count, r.first, r.rule))
        return tuple(rows)


@dataclass(frozen=True, slots=True)
class GroupRow:
    """Findings of one operating unit under its supervising department."""

    department: str
    unit: str
    tally: Tally
    hosts: tuple[str, ...]
    host_count: int


@dataclass(frozen=True, slots=True)
class PersonRow:
    """Findings one person answers for (谁运行谁负责): as operator, custodian or media holder.

    ``unit`` is the person's own unit (from the registry), ``host_unit`` the
    unit in charge of the host it happened on; ``roles`` the roles held.
    """

    operator: str
    unit: str
    tally: Tally
    rules: tuple[tuple[str, int], ...]
    host_unit: str = ""
    roles: tuple[str, ...] = ()
    account: str = ""  # the person's account, beside the name


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """Findings on data a unit owns (the asset's ``file.owner_unit``), wherever the host."""

    unit: str
    tally: Tally


@dataclass(frozen=True, slots=True)
class RuleRow:
    """What one rule found in the period."""

    id: str
    pack: str
    title_zh: str
    title_en: str
    severity: str
    action: str
    controls: tuple[str, ...]
    count: int
    first: float | None
    last: float | None


@dataclass(frozen=True, slots=True)
class LifecycleRow:
    """A lifecycle record as the continuity section lists it."""

    seq: int
    time: float
    host: str
    kind: str
    text: str
    text_zh: str = ""


@dataclass(frozen=True, slots=True)
class Gap:
    """Monitoring interrupted on ``host`` from ``since`` to ``until`` (an ``agent.tamper`` record)."""

    host: str
    since: float
    until: float

    @property
    def seconds(self) -> float:
        """Length of the gap."""
        return max(0.0, self.until - self.since)


@dataclass(frozen=True, slots=True)
class Run:
    """One run of the agent on a host: from a start to its stop (None when none was recorded)."""

    host: str
    start: float
    stop: float | None
    clean: bool


@dataclass(frozen=True, slots=True)
class Capped:
    """A list kept to its first rows, with how many there were in all and per severity left out."""

    rows: tuple[Evidence, ...]
    total: int
    omitted_by_severity: tuple[int, ...]

    @property
    def omitted(self) -> int:
        """Findings not listed."""
        return self.total - sum(e.count for e in self.rows)


@dataclass(frozen=True, slots=True)
class Continuity:
    """When the agent ran, the gaps, reloads and rule-set changes."""

    events: tuple[LifecycleRow, ...]
    events_total: int
    counts: tuple[tuple[str, int], ...]
    runs: tuple[Run, ...]
    gaps: tuple[Gap, ...]
    gap_seconds: float
    reload_failures: int


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Everything the report shows that comes from the records themselves."""

    records: int
    first_seq: int | None
    last_seq: int | None
    total: Tally
    by_day: tuple[tuple[str, Tally], ...]
    groups: tuple[GroupRow, ...]
    hosts: tuple[str, ...]
    operators: tuple[PersonRow, ...]
    rules: tuple[RuleRow, ...]
    violations: Capped
    unattributed: Capped
    continuity: Continuity
    assessment: tuple[HostAssessment, ...] = ()
    first_time: float | None = None
    owners: tuple[OwnerRow, ...] = ()
    alerts_by_severity: tuple[int, ...] = (0, 0, 0, 0, 0)
    repeats: tuple[Repeat, ...] = ()  # violations grouped
    repeats_folded: int = 0
    unattributed_repeats: tuple[Repeat, ...] = ()
    host_info: tuple[tuple[str, tuple[str, ...]], ...] = ()  # host: (unit, department, custodian, level, zone)
    by_hour: tuple[tuple[str, Tally], ...] = ()  # "YYYY-MM-DD HH:00" in the report's zone
    by_5min: tuple[tuple[float, Tally], ...] = ()  # start of each 5-minute slot (epoch), for short periods


class _Heap:
    """The ``cap`` most severe, earliest findings; counts the rest by severity."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.heap: list[tuple[int, float, int, int, Evidence]] = []
        self.total = 0
        self.by_sev = [0, 0, 0, 0, 0]

    def offer(self, sev_index: int, t: float, seq: int, make: Any, n: int = 1) -> None:
        self.total += n
        self.by_sev[sev_index] += n
        # Min-heap on (rank, -time, -seq, -arrival): its top is the row to drop first. Arrival
        # breaks ties between hosts' bundles, whose seqs repeat.
        key = (len(SEVERITIES) - sev_index, -t, -seq, -self.total)
        if len(self.heap) < self.cap:
            heapq.heappush(self.heap, (*key, make()))
        elif self.cap and key > self.heap[0][:4]:
            heapq.heapreplace(self.heap, (*key, make()))

    def count(self, sev_index: int, n: int = 1) -> None:
        """A finding counted but not offered for listing (a repeat of a group already shown)."""
        self.total += n
        self.by_sev[sev_index] += n

    def freeze(self) -> Capped:
        rows = tuple(x[4] for x in sorted(self.heap, reverse=True))
        left = list(self.by_sev)
        for e in rows:
            left[SEVERITIES.index(e.severity)] -= e.count
        return Capped(rows, self.total, tuple(left))


@dataclass
class Aggregator:
    """Feed records one at a time with ``add``; ``result`` freezes what was seen."""

    tz: dt.tzinfo
    max_rows: int = 1000
    max_unattributed: int = 200
    max_lifecycle: int = 500
    # The registry's people (account -> name): a person named by account is shown by name, account beside it
    names: dict[str, str] = field(default_factory=dict)
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    _total: _Count = field(default_factory=_Count)
    _days: dict[str, _Count] = field(default_factory=dict)
    _groups: dict[tuple[str, str], _Count] = field(default_factory=dict)
    _group_hosts: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _hosts: set[str] = field(default_factory=set)
    _people: dict[tuple[str, str, str], _Count] = field(default_factory=dict)
    _people_rules: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)
    _people_roles: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    _owners: dict[str, _Count] = field(default_factory=dict)
    _rules: dict[str, list[Any]] = field(default_factory=dict)
    _day_cache: tuple[float, float, str] = (0.0, -1.0, "")
    _hour_cache: tuple[float, float, str] = (0.0, -1.0, "")
    _hours: dict[str, _Count] = field(default_factory=dict)
    _slots: dict[float, _Count] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts: dict[str, int] = {}
        for n in self.names.values():
            counts[n] = counts.get(n, 0) + 1
        self._accounts = {n: a for a, n in self.names.items() if counts[n] == 1}
        self._violations = _Heap(self.max_rows)
        self._unattributed = _Heap(self.max_unattributed)
        self._repeats = _Repeats()
        self._host_info: dict[str, tuple[str, ...]] = {}
        # What each host's row was made from: most findings of a host carry the same host group and custodian,
        # so the row is made again only when they change.
        self._host_raw: dict[str, tuple[Any, ...]] = {}
        # person(name, account) answers, by their arguments and types (a few people make most findings)
        self._persons: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._people_accounts: dict[tuple[str, str, str], str] = {}
        self._unattributed_repeats = _Repeats()
        self._life: list[LifecycleRow] = []
        self._life_total = 0
        self._life_counts: dict[str, int] = {}
        self._open: dict[str, float] = {}
        self._runs: list[Run] = []
        self._gaps: list[Gap] = []
        self._gap_seconds = 0.0
        self._reload_failures = 0
        self._assessment = AssessmentTally()
        self.coverage = CoverageTracker()
        self._first_time: float | None = None

    # -- feeding ---------------------------------------------------------

    def add(self, seq: int, rec: dict[str, Any]) -> None:
        """Count one record (a finding or a lifecycle record); others are ignored."""
        self.records += 1
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        host = cut(rec.get("host"), 120)
        if len(self._hosts) < MAX_KEYS:
            self._hosts.add(host)
        t = rec.get("time")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            if self._first_time is None or t < self._first_time:
                self._first_time = float(t)
            life = rec.get("type") == "lifecycle"
            self.coverage.add(host, float(t), cut(rec.get("kind"), 60) if life else None,
                              group_of(rec, "detail") if life else {})
        if rec.get("type") == "lifecycle":
            self._lifecycle(seq, rec, host)
        elif rec.get("type") == "finding":
            self._finding(seq, rec, host)

    def name_of(self, person: Any) -> str:
        """A person's name alone (a narrow column): the registry's name for an account."""
        text = cut(person, 120)
        return self.names.get(text, text)

    def person(self, name: Any, account: Any = None) -> tuple[str, str]:
        """A person's (name, account): the registry's name for an account, the account when known ("" if not)."""
        key = (name, type(name), account, type(account))  # 1 and True are equal keys, but not the same text
        try:
            return self._persons[key]
        except KeyError:
            found = self._person(name, account)
            if len(self._persons) < MAX_KEYS:
                self._persons[key] = found
            return found
        except TypeError:  # a name or account that is no plain value (a damaged record)
            return self._person(name, account)

    def _person(self, name: Any, account: Any) -> tuple[str, str]:
        text = cut(name, 120)
        if not text:
            return "", ""
        acc = cut(account, 60) if isinstance(account, str) else ""
        if text in self.names:  # a record that named the person by account
            acc, text = text, self.names[text]
        acc = acc or self._accounts.get(text, "")
        return text, acc if acc != text else ""

    def who(self, name: Any, account: Any = None) -> str:
        """A person as shown: the name, with the account beside it when known and different ("" for nobody)."""
        text, acc = self.person(name, account)
        return f"{text} ({acc})" if acc else text

    def _day(self, t: float) -> str:
        lo, hi, key = self._day_cache
        if lo <= t < hi:
            return key
        d = dt.datetime.fromtimestamp(t, self.tz)
        start = d.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
        key = start.date().isoformat()
        self._day_cache = (start.timestamp(), end.timestamp(), key)
        return key

    def _hour(self, t: float) -> str:
        lo, hi, key = self._hour_cache
        if lo <= t < hi:
            return key
        d = dt.datetime.fromtimestamp(t, self.tz).replace(minute=0, second=0, microsecond=0)
        key = d.strftime("%Y-%m-%d %H:00")
        self._hour_cache = (d.timestamp(), d.timestamp() + 3600.0, key)
        return key

    @staticmethod
    def _bucket(table: dict[Any, _Count], key: Any, other: Any) -> _Count:
        c = table.get(key)
        if c is None:
            if len(table) >= MAX_KEYS:
                key = other
                c = table.get(key)
            if c is None:
                c = table[key] = _Count()
        return c

    def _finding(self, seq: int, rec: dict[str, Any], host: str) -> None:
        sev = rec.get("severity")
        si = SEVERITIES.index(sev) if sev in RANK else len(SEVERITIES) - 1
        action = rec.get("action")
        alert = action in ("alert", "block")  # a block finding is a violation the agent also acted on
        t = rec.get("time")
        t = float(t) if isinstance(t, (int, float)) else 0.0
        acc = group_of(rec, "accountable")
        dept, unit = cut(acc.get("department"), 120), cut(acc.get("unit"), 120)
        op = acc.get("operator")
        rule = cut(rec.get("rule"), 60)
        # A folded record stands for its count of identical findings (the first was journaled alone).
        folded = group_of(rec, "folded")
        fc = folded.get("count")
        n = fc if isinstance(fc, int) and not isinstance(fc, bool) and 1 <= fc <= 10**9 else 1
        ff = folded.get("first")
        first = float(ff) if n > 1 and isinstance(ff, (int, float)) and not isinstance(ff, bool) else None
        self._total.add(si, alert, n)
        self._bucket(self._days, self._day(t), OTHER).add(si, alert, n)
        self._bucket(self._hours, self._hour(t), OTHER).add(si, alert, n)
        self._bucket(self._slots, t - t % 300.0, -1.0).add(si, alert, n)
        gkey = (dept, unit)
        self._bucket(self._groups, gkey, (OTHER, OTHER)).add(si, alert, n)
        hs = self._group_hosts.setdefault(gkey, set()) if gkey in self._groups else None
        if hs is not None and len(hs) < MAX_KEYS:
            hs.add(host)
        answer = answer_of(rec)
        persons: dict[tuple[str, str, str], str] = {}
        for a in answer:
            role = a.get("role")
            if role in PERSON_ROLES and a.get("name"):
                pname, paccount = self.person(a["name"], a.get("account"))
                pkey = (pname, cut(a.get("unit"), 120), unit)
                persons.setdefault(pkey, str(role))
                if paccount and len(self._people_accounts) < MAX_KEYS:
                    self._people_accounts.setdefault(pkey, paccount)
            elif role == "file.owner_unit" and a.get("name"):
                self._bucket(self._owners, cut(a["name"], 120), OTHER).add(si, alert, n)
        if not persons:
            persons[("", "", unit)] = "operator"  # no one by name: shown as unknown, and apart below
        for pkey, role in persons.items():
            self._bucket(self._people, pkey, (OTHER, OTHER, OTHER)).add(si, alert, n)
            k = pkey if pkey in self._people else (OTHER, OTHER, OTHER)
            pr = self._people_rules.setdefault(k, {})
            if rule in pr or len(pr) < 50:
                pr[rule] = pr.get(rule, 0) + n
            held = self._people_roles.setdefault(k, set())
            if len(held) < len(PERSON_ROLES):
                held.add(role)
        self._rule(rule, rec, t, n)

        def evidence() -> Evidence:
            ev = group_of(rec, "event")
            return Evidence(seq, t, host, rule, SEVERITIES[si], str(action) if alert else "audit",
                            describe_process(ev), cut(op) if op is not None else "", describe_object(ev),
                            unit, dept, text_of(rec.get("message"), "zh"), text_of(rec.get("message"), "en"), n)

        ev_group = group_of(rec, "event")
        hg = group_of(ev_group, "host") or {"unit": unit, "department": dept, "custodian": acc.get("custodian")}
        if host in self._host_info or len(self._host_info) < MAX_KEYS:
            raw = (hg.get("unit"), hg.get("department"), hg.get("custodian"), hg.get("level"), hg.get("zone"),
                   acc.get("custodian"), acc.get("custodian_account"))
            old = self._host_raw.get(host)
            if old != raw or old is None or any(type(a) is not type(b) for a, b in zip(old, raw, strict=True)):
                self._host_raw[host] = raw
                info = [cut(v, 120) for v in raw[:5]]
                # the event's host group holds the custodian's account; the finding's accountable its name
                info[2] = self.who(raw[5] or raw[2], raw[6] or raw[2])
                self._host_info[host] = tuple(info)
        obj = describe_object(ev_group)
        person = cut(op, 120) if op is not None else ""

        def example() -> tuple[str, ...]:
            title = group_of(rec, "title")
            return (cut(title.get("zh")), cut(title.get("en")), unit, self.name_of(acc.get("custodian")),
                    describe_process(ev_group), host)

        if alert:
            shown = self._repeats.add((rule, person, obj), si, t, example, n, first)
            if shown <= EXAMPLES:  # repeats are counted in their group, not listed one by one
                self._violations.offer(si, t, seq, evidence, n)
            else:
                self._violations.count(si, n)
        known = group_of(group_of(rec, "event"), "operator").get("known")
        roles = rec.get("roles")
        # A finding whose rule holds the custodian or unit to account (an interface, a device)
        # is answered for even without an operator; one that names the operator is not.
        wants_operator = not isinstance(roles, list) or "operator" in roles
        if rule in UNATTRIBUTED_RULES or known is False or (op is None and wants_operator):
            proc = group_of(ev_group, "process")
            what = cut(proc.get("exe") or proc.get("name") or "", 120)
            shown = self._unattributed_repeats.add((rule, what, obj), si, t, example, n, first)
            if shown <= EXAMPLES:
                self._unattributed.offer(si, t, seq, evidence, n)
            else:
                self._unattributed.count(si, n)

    def _rule(self, rule: str, rec: dict[str, Any], t: float, n: int = 1) -> None:
        row = self._rules.get(rule)
        if row is None:
            if len(self._rules) >= MAX_KEYS:
                return
            title = group_of(rec, "title")
            controls = rec.get("controls")
            row = self._rules[rule] = [
                cut(rec.get("pack"), 60), cut(title.get("zh")), cut(title.get("en")), cut(rec.get("severity")),
                cut(rec.get("action")),
                tuple(cut(c, 80) for c in controls[:20]) if isinstance(controls, list) else (), 0, t, t]
        row[6] += n
        row[7] = min(row[7], t)
        row[8] = max(row[8], t)

    def _lifecycle(self, seq: int, rec: dict[str, Any], host: str) -> None:
        kind = cut(rec.get("kind"), 60)
        if kind == "agent.heartbeat":
            return  # a sign of life for coverage (fed above), nothing a reader needs listed or counted
        t = rec.get("time")
        t = float(t) if isinstance(t, (int, float)) else 0.0
        if kind in self._life_counts or len(self._life_counts) < 100:
            self._life_counts[kind] = self._life_counts.get(kind, 0) + 1
        detail = group_of(rec, "detail")
        if kind == "agent.start":
            if host in self._open:
                self._add_run(Run(host, self._open[host], None, False))
            self._open[host] = t
        elif kind == "agent.stop":
            self._add_run(Run(host, self._open.pop(host, t), t, True))
        elif kind == "agent.tamper":
            since, until = detail.get("since"), detail.get("until")
            if isinstance(since, (int, float)) and isinstance(until, (int, float)):
                gap = Gap(host, float(since), float(until))
                self._gap_seconds += gap.seconds
                if len(self._gaps) < self.max_lifecycle:
                    self._gaps.append(gap)
        elif kind == "agent.reload" and detail.get("ok") is False:
            self._reload_failures += 1
        elif kind == "assess.snapshot":
            self._assessment.add(host, t, detail)
        if kind in CONTINUITY_KINDS:
            self._life_total += 1
            if len(self._life) < self.max_lifecycle:
                self._life.append(LifecycleRow(seq, t, host, kind, lifecycle_text(rec), lifecycle_text_zh(rec)))

    def _add_run(self, run: Run) -> None:
        if len(self._runs) < self.max_lifecycle:
            self._runs.append(run)

    # -- result ------------------------------------------------------------

    def result(self) -> Aggregate:
        """The tallies and lists seen so far, frozen."""
        runs = list(self._runs)
        for host, start in sorted(self._open.items()):
            if len(runs) < self.max_lifecycle:
                runs.append(Run(host, start, None, False))
        groups = []
        for (dept, unit), c in sorted(self._groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            hosts = sorted(self._group_hosts.get((dept, unit), set()))
            groups.append(GroupRow(dept, unit, c.freeze(), tuple(hosts[:50]), len(hosts)))
        people = [PersonRow(op, unit, c.freeze(),
                            tuple(sorted(self._people_rules.get((op, unit, hu), {}).items(),
                                         key=lambda kv: (-kv[1], kv[0]))[:8]), hu,
                            tuple(r for r in PERSON_ROLES if r in self._people_roles.get((op, unit, hu), set())),
                            self._people_accounts.get((op, unit, hu), ""))
                  for (op, unit, hu), c in self._people.items()]
        people.sort(key=lambda p: (-p.tally.alerts, -p.tally.total, p.operator, p.unit, p.host_unit))
        owners = sorted((OwnerRow(u, c.freeze()) for u, c in self._owners.items()),
                        key=lambda o: (-o.tally.alerts, -o.tally.total, o.unit))
        rules = [RuleRow(rid, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])
                 for rid, row in sorted(self._rules.items())]
        cont = Continuity(tuple(self._life), self._life_total, tuple(sorted(self._life_counts.items())),
                          tuple(sorted(runs, key=lambda r: (r.start, r.host))), tuple(self._gaps),
                          self._gap_seconds, self._reload_failures)
        return Aggregate(self.records, self.first_seq, self.last_seq, self._total.freeze(),
                         tuple((d, c.freeze()) for d, c in sorted(self._days.items())), tuple(groups),
                         tuple(sorted(self._hosts)), tuple(people), tuple(rules),
                         self._violations.freeze(), self._unattributed.freeze(), cont, self._assessment.result(),
                         self._first_time, tuple(owners), tuple(self._violations.by_sev), self._repeats.freeze(),
                         self._repeats.folded, self._unattributed_repeats.freeze(),
                         tuple(sorted(self._host_info.items())),
                         tuple((h, c.freeze()) for h, c in sorted(self._hours.items())),
                         tuple((k, c.freeze()) for k, c in sorted(self._slots.items())))
