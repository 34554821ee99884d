"""Putting a report together: records aggregated, controls mapped to rules, integrity, fleet figures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.controls import CONTROLS
from agent.engine.rules import RuleSet
from agent.report.coverage import HostCoverage, PriorScan
from agent.report.model import Aggregate, Aggregator, RuleRow
from agent.report.prometheus import FleetMetrics
from agent.report.sources import (
    Integrity,
    Period,
    journal_host,
    journal_integrity,
    journal_prior,
    journal_records,
    trusted_key_for,
)

# Controls whose evidence is the journal itself rather than a rule's findings.
BUILT_IN = {
    "GB/T 22239-2019 8.1.4.3": "integrity",
    "GB/T 22239-2019 8.1.5.2": "export",
    "网络安全法 第二十一条": "retention",
}


@dataclass(frozen=True, slots=True)
class ControlRow:
    """One control: the rules that evidence it and what they found in the period."""

    name: str
    area_zh: str
    area_en: str
    items: tuple[str, ...]
    summary_zh: str
    summary_en: str
    rules: tuple[RuleRow, ...]
    findings: int
    built_in: str  # "" or which section evidences it beyond rules

    @property
    def status(self) -> str:
        """``found`` (findings in the period), ``quiet`` (rules, nothing found) or ``none`` (no rule)."""
        if self.findings:
            return "found"
        return "quiet" if self.rules else "none"


@dataclass(frozen=True, slots=True)
class Report:
    """A whole report, ready for any of the four formats."""

    lang: str
    generated: float
    tz: dt.tzinfo
    period: Period
    fleet: bool
    data: Aggregate
    controls: tuple[ControlRow, ...]
    integrity: tuple[Integrity, ...]
    refused: tuple[Integrity, ...]
    prometheus: FleetMetrics | None
    coverage: tuple[HostCoverage, ...] = ()
    span: tuple[float, float] = (0.0, 0.0)  # the period as covered: its start and end in epoch seconds

    @property
    def failed(self) -> tuple[Integrity, ...]:
        """Sources that failed verification or were refused: none of their records is in any figure."""
        return tuple(i for i in self.integrity if not i.ok) + self.refused

    @property
    def monitored(self) -> float:
        """Seconds of the period some agent watched, summed over hosts."""
        return sum(c.monitored for c in self.coverage)

    @property
    def watched_all(self) -> bool:
        """Every host was watched for the whole period."""
        return bool(self.coverage) and all(c.complete for c in self.coverage)

    def when(self, t: float | None) -> str:
        """An epoch time as ISO 8601 with the report's zone offset ("" for None)."""
        if t is None:
            return ""
        return dt.datetime.fromtimestamp(t, self.tz).isoformat(timespec="seconds")

    def short(self, t: float | None) -> str:
        """An epoch time as ``YYYY-MM-DD HH:MM:SS`` in the report's zone, for table cells.

        A no-break space joins date and time, so no renderer splits a time across lines.
        """
        if t is None:
            return "—"
        return dt.datetime.fromtimestamp(t, self.tz).strftime("%Y-%m-%d\u00a0%H:%M:%S")

    def compact(self, t: float | None) -> str:
        """A time as short as the period allows: ``HH:MM:SS`` in a one-day period, else ``MM-DD HH:MM``."""
        if t is None:
            return "—"
        a = dt.datetime.fromtimestamp(self.span[0], self.tz)
        b = dt.datetime.fromtimestamp(max(self.span[0], self.span[1] - 1e-3), self.tz)
        d = dt.datetime.fromtimestamp(t, self.tz)
        if a.date() == b.date() == d.date():  # the day is the period's, named in its header
            return d.strftime("%H:%M:%S")
        if a.year == b.year:
            return d.strftime("%m-%d\u00a0%H:%M")
        return self.short(t)

    def zone(self) -> str:
        """The report's zone as an offset, e.g. ``UTC+08:00``."""
        off = dt.datetime.fromtimestamp(self.generated, self.tz).strftime("%z") or "+0000"
        return f"UTC{off[:3]}:{off[3:]}"


def coverage(ruleset: RuleSet | None, rows: Iterable[RuleRow]) -> tuple[ControlRow, ...]:
    """Every catalogued control with the loaded rules that cite it and their findings in the period.

    A rule that fired in the period but is no longer loaded still counts,
    through the controls its findings carry.
    """
    found = {r.id: r for r in rows}
    per_control: dict[str, dict[str, RuleRow]] = {c.name: {} for c in CONTROLS}
    for rule in ruleset.rules if ruleset else ():
        seen = found.get(rule.id)
        row = seen or RuleRow(rule.id, rule.pack, rule.title.zh, rule.title.en, rule.severity, rule.action,
                              rule.controls, 0, None, None)
        for name in rule.controls:
            if name in per_control:
                per_control[name][rule.id] = row
    for row in found.values():
        for name in row.controls:
            if name in per_control:
                per_control[name].setdefault(row.id, row)
    out = []
    for c in CONTROLS:
        rules = tuple(sorted(per_control[c.name].values(), key=lambda r: r.id))
        out.append(ControlRow(c.name, c.area_zh, c.area_en, c.items, c.summary_zh, c.summary_en, rules,
                              sum(r.count for r in rules), BUILT_IN.get(c.name, "")))
    return tuple(out)


def feed(agg: Aggregator, records: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Add every record to the aggregator."""
    add = agg.add
    for seq, rec in records:
        add(seq, rec)


@dataclass(frozen=True, slots=True)
class Options:
    """How to make a report (what the command line asked for)."""

    period: Period
    lang: str = "zh"
    tz: dt.tzinfo = dt.UTC
    max_rows: int = 1000
    pubkey: Path | None = None
    keys_dir: Path | None = None
    names: tuple[tuple[str, str], ...] = ()  # the registry's people, (account, name): people shown by name


def span_of(period: Period, first_time: float | None, now: float) -> tuple[float, float]:
    """The period in epoch seconds: an open start is the first record, an open end is now."""
    until = period.until if period.until is not None else now
    since = period.since if period.since is not None else (first_time if first_time is not None else until)
    return since, max(since, until)


def prime(agg: Aggregator, scan: PriorScan, since: float | None) -> None:
    """Tell the aggregator which hosts were already being watched when the period began."""
    if since is None:
        return
    for host, p in scan.result().items():
        agg.coverage.prior(host, p, since)


def local_report(journal: Path, opts: Options, ruleset: RuleSet | None, now: float,
                 prometheus: FleetMetrics | None = None) -> Report:
    """The report of one host's journal over the period.

    A journal that fails verification contributes nothing to any figure:
    the report says so on its first page, and why.
    """
    pubkey = opts.pubkey
    if pubkey is None and opts.keys_dir is not None:
        pubkey = trusted_key_for(opts.keys_dir, journal_host(journal))
    agg = Aggregator(opts.tz, max_rows=opts.max_rows, names=dict(opts.names))
    around = journal_prior(journal, opts.period.since, opts.period.until)
    prime(agg, around, opts.period.since)
    feed(agg, journal_records(journal, opts.period))
    around.follow(agg.coverage)
    data = agg.result()
    integrity = journal_integrity(journal, pubkey, data.last_seq)
    if not integrity.ok:
        agg = Aggregator(opts.tz, max_rows=opts.max_rows, names=dict(opts.names))
        data = agg.result()
    span = span_of(opts.period, data.first_time, now)
    host = integrity.host or journal_host(journal)
    cov = agg.coverage.result(*span, hosts=(host,) if host else ())
    return Report(opts.lang, now, opts.tz, opts.period, False, data, coverage(ruleset, data.rules),
                  (integrity,), (), prometheus, cov, span)


def findings_only(records: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The finding records among ``records`` (for CSV)."""
    for seq, rec in records:
        if rec.get("type") == "finding":
            yield seq, rec
