"""Fleet reports: evidence bundles from many hosts, each verified first, merged into one report.

A bundle that fails its check (changed bytes, removed records, another
host's key) is named in the command's output and in the report, and left
out; nothing of it is merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agent.engine.rules import RuleSet
from agent.report.build import Options, Report, coverage, feed, prime, span_of
from agent.report.coverage import PriorScan
from agent.report.model import Aggregator
from agent.report.prometheus import FleetMetrics
from agent.report.sources import Integrity, Period, bundle_integrity, bundle_records


def check_bundles(bundles: Iterable[Path], keys_dir: Path | None,
                  period: Period | None = None) -> tuple[list[Integrity], list[Integrity]]:
    """Each bundle checked (through the period's last record, with ``period``): (accepted, refused), in order."""
    good: list[Integrity] = []
    bad: list[Integrity] = []
    for b in bundles:
        i = bundle_integrity(b, keys_dir, period)
        (good if i.ok else bad).append(i)
    return good, bad


def fleet_report(good: list[Integrity], bad: list[Integrity], opts: Options, ruleset: RuleSet | None,
                 now: float, prometheus: FleetMetrics | None = None) -> Report:
    """The report merged from verified bundles; refused ones are named and left out."""
    agg = Aggregator(opts.tz, max_rows=opts.max_rows, names=dict(opts.names))
    for i in good:
        scan = PriorScan()
        records = iter(bundle_records(Path(i.path), opts.period, scan, i))
        first = next(records, None)  # the records before the period are read before the first in it
        prime(agg, scan, opts.period.since)
        if first is not None:
            agg.add(*first)
            feed(agg, records)
        scan.follow(agg.coverage)
    data = agg.result()
    span = span_of(opts.period, data.first_time, now)
    for host, spans in missing_periods(good, *span).items():
        agg.coverage.missing_evidence(host, spans)
    cov = agg.coverage.result(*span, hosts=tuple(i.host for i in good if i.host))
    return Report(opts.lang, now, opts.tz, opts.period, True, data, coverage(ruleset, data.rules),
                  tuple(good), tuple(bad), prometheus, cov, span)


def missing_periods(good: Iterable[Integrity], since: float, until: float) -> dict[str, list[tuple[float, float]]]:
    """Per host sending periodic bundles (export.every), the stretches of [since, until] none of them covers.

    A day whose bundle never arrived is a day nothing shows for that host: the
    coverage says so (``no_evidence``) rather than taking a run that spans it
    on trust.
    """
    windows: dict[str, list[tuple[float, float]]] = {}
    for i in good:
        if i.periodic and i.period_since is not None and i.period_until is not None:
            windows.setdefault(i.host, []).append((i.period_since, i.period_until))
    out: dict[str, list[tuple[float, float]]] = {}
    for host, spans in windows.items():
        holes, cur = [], since
        for a, b in sorted(spans):
            if a > cur:
                holes.append((cur, min(a, until)))
            cur = max(cur, b)
            if cur >= until:
                break
        if cur < until:
            holes.append((cur, until))
        out[host] = [(a, b) for a, b in holes if b > a]
    return out


def bundles_records(good: Iterable[Integrity], period: Period) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every accepted bundle's records in the period, bundle after bundle."""
    for i in good:
        yield from bundle_records(Path(i.path), period, checked=i)
