"""DutyWatch's Prometheus metrics (DESIGN §8), in a registry of their own.

Values live in small locked tables here and are turned into metric families
only when Prometheus scrapes; collector health is read at that moment from
the collectors' own ``Health`` objects, so nothing is counted twice. Label
values are bounded: rule ids, registry unit names, collector names and event
kinds, each cleaned of control characters and truncated, and every labelled
metric stops growing at ``max_series`` label sets (extra ones fold into
``_other``) so a bug upstream cannot blow up Prometheus.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from agent.events import KIND_SET, KINDS
from agent.textsafe import visible
from collectors.base import Health

PREFIX = "dutywatch_"
SEVERITIES = ("critical", "high", "medium", "low", "info")
ACTIONS = ("alert", "audit", "block")
ENFORCE_KINDS = ("network", "isolate", "media", "copy")
ENFORCE_RESULTS = ("enforced", "dryrun", "failed", "refused", "lifted", "expired", "denied", "allowed",
                   "unconfirmed")
OTHER = "_other"
TAMPER_REASONS = ("unclean_stop", "paused", "journal_rolled_back", "signal", "ptrace")
# Rule evaluation is microseconds per event; a slow rule shows in the upper buckets.
EVAL_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1)

_log = logging.getLogger(__name__)

HealthSource = Callable[[], Mapping[str, Health]]

_RULE_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")


def label_value(value: object, limit: int = 64) -> str:
    """A label value safe to expose: valid UTF-8, control and bidi characters escaped, at most ``limit`` chars."""
    text = "" if value is None else str(value)
    # Lone surrogates (from undecodable file names) cannot be encoded; make them visible.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = visible(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def rule_label(rule: object) -> str:
    """A rule id as a label: only the characters rule ids are made of."""
    return _RULE_UNSAFE.sub("_", label_value(rule, 64)) or OTHER


def _choice(value: object, allowed: Iterable[str]) -> str:
    text = label_value(value, 32)
    return text if text in allowed else OTHER


class _Table:
    """Values of one labelled counter or gauge, yielded as a family at scrape time."""

    def __init__(self, name: str, doc: str, kind: str, labels: tuple[str, ...], max_series: int) -> None:
        self.name = PREFIX + name
        self.doc = doc
        self.kind = kind
        self.labels = labels
        self.max_series = max_series
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def _key(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if key in self._values or len(self._values) < self.max_series:
            return key
        return (OTHER,) * len(self.labels)

    def inc(self, key: tuple[str, ...] = (), n: float = 1.0) -> None:
        """Add ``n`` to the series ``key``."""
        with self._lock:
            k = self._key(key)
            self._values[k] = self._values.get(k, 0.0) + n

    def set(self, key: tuple[str, ...], value: float) -> None:
        """Set the series ``key`` to ``value``."""
        with self._lock:
            self._values[self._key(key)] = value

    def ensure(self, key: tuple[str, ...] = ()) -> None:
        """Make the series ``key`` exist (at 0) so dashboards see it before it moves."""
        with self._lock:
            self._values.setdefault(self._key(key), 0.0)

    def clear(self) -> None:
        """Forget every series (for info metrics whose labels change)."""
        with self._lock:
            self._values.clear()

    def value(self, key: tuple[str, ...] = ()) -> float:
        """The current value of one series, 0 when absent."""
        with self._lock:
            return self._values.get(key, 0.0)

    def family(self, extra: Mapping[tuple[str, ...], float] | None = None) -> Metric:
        """The metric family with ``extra`` series added to this table's."""
        with self._lock:
            values = dict(self._values)
        for key, v in (extra or {}).items():
            values[key] = values.get(key, 0.0) + v
        fam: Metric
        if self.kind == "counter":
            fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        else:
            fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key in sorted(values):
            fam.add_metric(list(key), values[key])
        return fam


class _Histogram:
    """A plain histogram without labels; observe is one bisect and three adds."""

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name = PREFIX + name
        self.doc = doc
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Record one observation."""
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """Record several observations under one lock (the pipeline hands over a batch)."""
        bounds, where = self.bounds, bisect.bisect_left
        with self._lock:
            counts = self._counts
            for v in values:
                counts[where(bounds, v)] += 1
                self._sum += v

    def family(self) -> Metric:
        """The histogram family with cumulative buckets."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, c in zip((*self.bounds, float("inf")), counts, strict=True):
            running += c
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)


class Metrics:
    """Every DutyWatch metric, in its own registry; pass it to the stages that count.

    ``health`` returns the current ``{collector name: Health}`` mapping and is
    called at every scrape. ``process_metrics`` adds the standard
    ``process_*`` series (memory, CPU, open files) of this process.
    """

    def __init__(
        self,
        version: str,
        health: HealthSource | None = None,
        *,
        max_series: int = 2000,
        process_metrics: bool = True,
    ) -> None:
        self.version = label_value(version, 32)
        self._health: HealthSource = health or dict
        self._queue_depth: Callable[[], int] | None = None
        self._finding_keys: dict[tuple[object, ...], tuple[str, str, str, str]] = {}
        self.registry = CollectorRegistry(auto_describe=True)

        def table(name: str, doc: str, kind: str, *labels: str) -> _Table:
            return _Table(name, doc, kind, labels, max_series)

        self.build_info = table("build_info", "DutyWatch build; the value is always 1.", "gauge", "version")
        self.host_info = table(
            "host_info", "This host as the registry describes it; the value is always 1.", "gauge",
            "host", "unit", "department", "level", "network_zone",
        )
        self.events = table("events_total", "Events that entered the pipeline, by kind.", "counter", "kind")
        self.events_own = table(
            "events_own_total", "Events of the agent's own processes (the agent and its descendants), "
            "set aside unevaluated, by kind.", "counter", "kind")
        self.findings = table(
            "findings_total", "Findings by rule, severity, action (alert, audit or block) and accountable unit.",
            "counter", "rule", "severity", "action", "unit",
        )
        self.pipeline_drops = table(
            "events_dropped_total",
            "Events lost before evaluation, by collector and reason (kernel overflow, unreadable "
            "source, queue_full when the pipeline queue was full).",
            "counter", "collector", "reason",
        )
        self.rules_loaded = table("rules_loaded", "Rules in the active rule set.", "gauge")
        self.rules_in_force = table(
            "rules_in_force",
            "1 when the config, registry and rules on disk are the ones in force; 0 while a file on disk "
            "failed to load (the last good set stays active until the file is fixed).", "gauge")
        self.registry_unconfigured = table(
            "registry_unconfigured",
            "1 while the registry is the shipped example (example: true): nothing is monitored or attributed "
            "until the admin describes this host, its units and people there.", "gauge")
        self.tamper = table(
            "tamper_total",
            "Attempts on the agent and its evidence found by the agent itself, by reason (unclean_stop, paused, "
            "journal_rolled_back, signal, ptrace).", "counter", "reason")
        self.rules_reloads = table("rules_reloads_total", "Successful rule set reloads.", "counter")
        self.rules_reload_failures = table(
            "rules_reload_failures_total", "Rule set reloads that failed; the last good set stays active.",
            "counter",
        )
        self.journal_records = table(
            "journal_records_total", "Records in the journal (findings and lifecycle records).", "counter"
        )
        self.journal_size = table("journal_size_bytes", "Size of the journal database on disk.", "gauge")
        self.journal_verify_failures = table(
            "journal_verify_failures_total", "Journal hash chain or signature checks that failed.", "counter"
        )
        self.journal_write_failures = table(
            "journal_write_failures_total",
            "Journal writes that failed (disk full, I/O error); those findings are not stored.",
            "counter",
        )
        self.forward_errors = table(
            "forward_errors_total", "Syslog forwarding errors (connect or send), by target.", "counter",
            "target",
        )
        self.forward_dropped = table(
            "forward_dropped_total",
            "Records the syslog forwarder discarded because its retry buffer was full, by target.",
            "counter", "target",
        )
        self.queue_capacity = table("queue_capacity", "Capacity of the event queue.", "gauge")
        self.pipeline_stalled = table(
            "pipeline_stalled",
            "1 while the pipeline has not taken an event from a non-empty queue for too long, else 0.",
            "gauge",
        )
        self.assessment_checks = table(
            "assessment_checks", "Configuration checks of the last assessment, by policy and result (pass, fail, "
            "not_applicable).", "gauge", "policy", "result")
        self.assessment_last_run = table(
            "assessment_last_run_timestamp_seconds", "When the last configuration assessment finished.", "gauge")
        self.enforcements = table(
            "enforcements_total",
            "Enforcement decisions and their lifting, by kind (network, isolate, media, copy) and result (enforced, "
            "dryrun, failed, refused, lifted, expired, denied, allowed).", "counter", "kind", "result")
        self.policy_info = table(
            "policy_info", "1 for the signed policy bundle in force: its version and who signed it (absent: the "
            "host runs on its local config only).", "gauge", "version", "signer")
        self.policy_refused = table(
            "policy_refused_total", "Policy bundles refused, by reason (signature, scope, version, content); the "
            "policy in force stays.", "counter", "reason")
        self.evidence_exports = table(
            "evidence_exports_total", "Periodic evidence bundles (export.to), by result (ok, failed; a failed period "
            "is tried again).", "counter", "result")
        self.evidence_last_export = table(
            "evidence_last_export_timestamp_seconds", "When the last periodic evidence bundle was written.", "gauge")
        self.evaluation = _Histogram(
            "engine_evaluation_seconds", "Time to evaluate one event against the rule set.", EVAL_BUCKETS
        )
        self.build_info.set((self.version,), 1.0)
        for kind in KINDS:
            self.events.ensure((kind,))
        self.rules_in_force.set((), 1.0)
        for reason in TAMPER_REASONS:
            self.tamper.ensure((reason,))
        for t in (self.rules_loaded, self.rules_reloads, self.rules_reload_failures, self.journal_records,
                  self.journal_size, self.journal_verify_failures, self.journal_write_failures,
                  self.pipeline_stalled, self.registry_unconfigured):
            t.ensure()
        self.registry.register(_Scrape(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)

    # -- what the stages call ------------------------------------------------

    def set_host(self, host: object, unit: object, department: object, level: object,
                 network_zone: object) -> None:
        """Describe this host (from the registry); replaces the previous description."""
        self.host_info.clear()
        self.host_info.set(tuple(label_value(v) for v in (host, unit, department, level, network_zone)), 1.0)

    def event(self, kind: str) -> None:
        """Count one event entering the pipeline."""
        self.events.inc((kind if kind in KIND_SET else OTHER,))

    def events_counted(self, kinds: Mapping[str, int]) -> None:
        """Count events entering the pipeline, ``{kind: n}`` (the worker counts a batch at once)."""
        for kind, n in kinds.items():
            self.events.inc((kind if kind in KIND_SET else OTHER,), float(n))

    def own_event(self, kind: str) -> None:
        """Count one event of the agent's own processes, set aside unevaluated."""
        self.events_own.inc((kind if kind in KIND_SET else OTHER,))

    def finding(self, rule: object, severity: object, action: object, unit: object) -> None:
        """Count one finding; ``unit`` is the registry's unit name, never free text."""
        raw = (rule, severity, action, unit)
        key = self._finding_keys.get(raw)
        if key is None:  # the labels of a (rule, unit) are made once, not per finding of a storm
            key = (rule_label(rule), _choice(severity, SEVERITIES), _choice(action, ACTIONS),
                   label_value(unit) or "unknown")
            if len(self._finding_keys) >= 4096:
                self._finding_keys.clear()
            self._finding_keys[raw] = key
        self.findings.inc(key)

    def expect_rule(self, rule: object, severity: object, action: object, unit: object) -> None:
        """Create a finding series at 0 so alerts on ``increase()`` see the first finding."""
        self.findings.ensure((rule_label(rule), _choice(severity, SEVERITIES), _choice(action, ACTIONS),
                              label_value(unit) or "unknown"))

    def dropped(self, collector: str, reason: str, n: int = 1) -> None:
        """Count events the pipeline itself lost (e.g. ``queue_full``) for a collector."""
        self.pipeline_drops.inc((label_value(collector, 32), label_value(reason, 32)), float(n))

    def observe_evaluation(self, seconds: float) -> None:
        """Record the time one event took through the engine."""
        self.evaluation.observe(seconds)

    def observe_evaluations(self, seconds: Iterable[float]) -> None:
        """Record the time each of a batch of events took through the engine."""
        self.evaluation.observe_many(seconds)

    def set_rules_loaded(self, n: int) -> None:
        """Set the number of rules in the active set."""
        self.rules_loaded.set((), float(n))

    def tampered(self, reason: str) -> None:
        """Count one attempt on the agent or its evidence."""
        self.tamper.inc((_choice(reason, TAMPER_REASONS),))

    def enforced(self, kind: str, result: str, n: int = 1) -> None:
        """Count one enforcement decision, or the lifting of one."""
        self.enforcements.inc((_choice(kind, ENFORCE_KINDS), _choice(result, ENFORCE_RESULTS)), float(n))

    def rules_reloaded(self, ok: bool) -> None:
        """Count a reload attempt, successful or failed; the rules on disk are in force only after a good one."""
        (self.rules_reloads if ok else self.rules_reload_failures).inc()
        self.rules_in_force.set((), 1.0 if ok else 0.0)

    def journal_appended(self, n: int = 1) -> None:
        """Count records written to the journal."""
        self.journal_records.inc((), float(n))

    def set_journal(self, records: int, size_bytes: int) -> None:
        """Set the journal's record count (at start) and size on disk."""
        self.journal_records.set((), float(records))
        self.journal_size.set((), float(size_bytes))

    def set_journal_size(self, size_bytes: int) -> None:
        """Set the journal's size on disk (the record counter only ever rises)."""
        self.journal_size.set((), float(size_bytes))

    def journal_verify_failed(self) -> None:
        """Count a failed journal verification."""
        self.journal_verify_failures.inc()

    def journal_write_failed(self) -> None:
        """Count a failed journal write."""
        self.journal_write_failures.inc()

    def add_forward_target(self, target: str) -> None:
        """Create the forwarding series of ``target`` at 0."""
        self.forward_errors.ensure((label_value(target, 128),))
        self.forward_dropped.ensure((label_value(target, 128),))

    def forward_error(self, target: str) -> None:
        """Count one forwarding error for ``target``."""
        self.forward_errors.inc((label_value(target, 128),))

    def forward_drop(self, target: str, n: int = 1) -> None:
        """Count records the forwarder of ``target`` had to discard."""
        self.forward_dropped.inc((label_value(target, 128),), float(n))

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        """Read the queue depth from ``depth()`` at every scrape."""
        self._queue_depth = depth
        self.queue_capacity.set((), float(capacity))

    def set_assessment(self, counts: Mapping[tuple[str, str], int], when: float) -> None:
        """The last assessment's check counts by (policy, result), and its time."""
        self.assessment_checks.clear()
        for (policy, result), n in counts.items():
            self.assessment_checks.set((label_value(policy), label_value(result)), float(n))
        self.assessment_last_run.set((), when)

    def set_policy(self, version: int | None, signer: str | None) -> None:
        """The policy bundle in force (None: none)."""
        self.policy_info.clear()
        if version is not None:
            self.policy_info.set((str(version), label_value(signer or "")), 1.0)

    def policy_refused_inc(self, reason: str) -> None:
        """Count a refused policy bundle."""
        self.policy_refused.inc((label_value(reason),))

    def evidence_exported(self, ok: bool) -> None:
        """Count a periodic evidence export."""
        self.evidence_exports.inc(("ok" if ok else "failed",))
        if ok:
            self.evidence_last_export.set((), time.time())

    def set_registry_unconfigured(self, unconfigured: bool) -> None:
        """Mark the registry as the shipped example (monitoring held) or as the admin's own."""
        self.registry_unconfigured.set((), 1.0 if unconfigured else 0.0)

    def set_stalled(self, stalled: bool) -> None:
        """Mark the pipeline stalled or moving."""
        self.pipeline_stalled.set((), 1.0 if stalled else 0.0)

    # -- exposition ----------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, OpenMetrics when ``accept`` asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def health_families(self) -> Iterator[Metric]:
        """Collector families read from the collectors' live ``Health``."""
        try:
            healths = dict(self._health())
        except Exception:  # a broken source must not break the whole scrape
            _log.exception("collector health unavailable")
            healths = {}
        up = GaugeMetricFamily(PREFIX + "collector_up",
                               "1 when the collector runs, by collector and mode (reduced-fidelity "
                               "modes such as poll say so here).", labels=("collector", "mode"))
        last = GaugeMetricFamily(PREFIX + "last_event_timestamp_seconds",
                                 "Time of the last event from the collector; 0 before the first one.",
                                 labels=("collector",))
        restarts = CounterMetricFamily(PREFIX + "collector_restarts",
                                       "Times the collector failed or returned early and was restarted.",
                                       labels=("collector",))
        skipped = CounterMetricFamily(PREFIX + "marking_skipped",
                                      "Files whose marking scan did not finish (timeout, queue_full, worker); "
                                      "their events carry file.marking_status unscanned.",
                                      labels=("collector", "reason"))
        drops: dict[tuple[str, ...], float] = {}
        partials: dict[tuple[str, ...], float] = {}
        for name in sorted(healths)[:64]:
            h = healths[name]
            cname = label_value(name, 32)
            up.add_metric([cname, label_value(h.mode, 32)], 1.0 if h.up else 0.0)
            last.add_metric([cname], float(h.last_event_time))
            restarts.add_metric([cname], float(h.restarts))
            drops[(cname, "queue_full")] = 0.0
            # dict() of a dict copies under the GIL, so a concurrent drop() cannot tear it.
            for reason, n in dict(h.drops).items():
                key = (cname, label_value(reason, 32))
                drops[key] = drops.get(key, 0.0) + n
            for reason, n in dict(h.partials).items():
                key = (cname, label_value(reason, 32))
                partials[key] = partials.get(key, 0.0) + n
            for reason, n in sorted(dict(h.marking_skipped).items())[:16]:
                skipped.add_metric([cname, label_value(reason, 32)], float(n))
        partial = CounterMetricFamily(PREFIX + "events_partial",
                                      "Events that went out with part of their data (proc_gone: the process "
                                      "exited before /proc could be read); evaluated, not lost.",
                                      labels=("collector", "reason"))
        for pkey in sorted(partials):
            partial.add_metric(list(pkey), partials[pkey])
        yield partial
        yield skipped
        yield up
        yield last
        yield restarts
        yield self.pipeline_drops.family(drops)

    def families(self) -> Iterator[Metric]:
        """Every DutyWatch metric family, as of now."""
        for t in (self.build_info, self.host_info, self.events, self.events_own, self.findings, self.rules_loaded,
                  self.rules_in_force, self.registry_unconfigured, self.tamper,
                  self.rules_reloads, self.rules_reload_failures, self.journal_records, self.journal_size,
                  self.journal_verify_failures, self.journal_write_failures, self.forward_errors,
                  self.forward_dropped, self.queue_capacity, self.pipeline_stalled, self.assessment_checks,
                  self.assessment_last_run, self.enforcements,
                  self.policy_info, self.policy_refused,
                  self.evidence_exports, self.evidence_last_export):
            yield t.family()
        yield from self.health_families()
        yield self.evaluation.family()
        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Events waiting in the event queue.")
        if self._queue_depth is not None:
            try:
                depth.add_metric([], float(self._queue_depth()))
            except Exception:  # the scrape goes on without this one value
                _log.exception("queue depth unavailable")
        yield depth


class _Scrape:
    """The registry's one custom collector: asks ``Metrics`` for its families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Families for this scrape."""
        return self._metrics.families()

    def describe(self) -> list[Any]:
        """Nothing to pre-describe; names are fixed and unique within this registry."""
        return []
