"""Fleet-wide figures for a period from Prometheus' HTTP API (``/api/v1/query``, ``query_range``).

Hosts monitored come from ``dutywatch_host_info`` series, agent down time
from ``up{job=...}`` samples, violation and audit counts per unit from
``increase`` of ``dutywatch_findings_total`` over the period.

No data is no data: only a scrape that failed (``up`` 0) is down time.
Time with no sample at all (before Prometheus, or the target, existed;
while Prometheus itself was down) is counted apart as "no data", never as
the agent's down time. Counts are whole numbers (``increase`` extrapolates
to the edges of the range and can give fractions), and a rate per host
and day is given only over at least a day of data, so half an hour of a
noisy host is not projected into a day.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from agent.report.errors import ReportError

MAX_POINTS = 500


@dataclass(frozen=True, slots=True)
class UnitRate:
    """One unit's hosts and findings over the period, from the metrics."""

    department: str
    unit: str
    hosts: int
    violations: int
    audits: int
    per_host_day: float | None  # None: less than a day of data to rate over


@dataclass(frozen=True, slots=True)
class Downtime:
    """How long one scrape target was down (``up`` 0) in the period, and how long Prometheus had no sample."""

    instance: str
    down_seconds: float
    samples: int
    no_data_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class FleetMetrics:
    """What Prometheus says about the whole fleet over the period."""

    url: str
    job: str
    start: float
    end: float
    step: float
    hosts_monitored: int
    units: tuple[UnitRate, ...]
    downtime: tuple[Downtime, ...]
    data_since: float | None = None  # the first sample of the job in the period (None: no sample at all)

    @property
    def down_seconds(self) -> float:
        """Down time summed over targets."""
        return sum(d.down_seconds for d in self.downtime)

    @property
    def no_data_seconds(self) -> float:
        """Time without any sample of the job in the period (before Prometheus or the targets existed)."""
        if self.data_since is None:
            return max(0.0, self.end - self.start)
        return max(0.0, self.data_since - self.start)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class PrometheusClient:
    """A small client of the Prometheus HTTP API on the standard library."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ReportError(f"--prometheus {url!r}: not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        full = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(full, timeout=self.timeout) as resp:  # noqa: S310 - scheme checked above
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise ReportError(f"Prometheus at {self.url} refused {params.get('query')!r}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReportError(f"Prometheus at {self.url} unreachable: {reason}") from exc
        except ValueError as exc:
            raise ReportError(f"Prometheus at {self.url} answered with something that is not JSON") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            raise ReportError(f"Prometheus at {self.url}: {body.get('error') if isinstance(body, dict) else body}")
        return body.get("data", {})

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant vector: (labels, value) per series."""
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data.get("resultType") == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r.get("metric", {}), float(r["value"][1])) for r in data.get("result", [])]

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """A range matrix: (labels, [(time, value)]) per series."""
        data = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                 "step": f"{step:g}"})
        return [(r.get("metric", {}), [(float(t), float(v)) for t, v in r.get("values", [])])
                for r in data.get("result", [])]


def _num(v: float) -> float:
    return 0.0 if math.isnan(v) or math.isinf(v) else v


def fleet_metrics(client: PrometheusClient, start: float, end: float, job: str = "dutywatch") -> FleetMetrics:
    """The fleet's figures over [start, end]."""
    if end <= start:
        raise ReportError("the Prometheus figures need a period with --since before --until")
    rng = f"{max(1, math.ceil(end - start))}s"
    info = f"max_over_time(dutywatch_host_info[{rng}])"
    total = client.query(f"count(count by (host) ({info}))", end)
    hosts = int(total[0][1]) if total else 0
    per_unit = client.query(f"count by (department, unit) (count by (host, department, unit) ({info}))", end)
    alerts = {m.get("unit", ""): _num(v) for m, v in client.query(
        f'sum by (unit) (increase(dutywatch_findings_total{{action=~"alert|block"}}[{rng}]))', end)}
    audits = {m.get("unit", ""): _num(v) for m, v in client.query(
        f'sum by (unit) (increase(dutywatch_findings_total{{action="audit"}}[{rng}]))', end)}
    step = max(1.0, math.ceil((end - start) / MAX_POINTS))
    expected = int((end - start) // step) + 1
    down = []
    first: float | None = None
    for m, values in client.query_range(f"up{{job={_quote(job)}}}", start, end, step):
        failed = sum(1 for _, v in values if v < 1)
        down.append(Downtime(m.get("instance", "?"), failed * step, len(values),
                             max(0, expected - len(values)) * step))
        if values:
            first = values[0][0] if first is None else min(first, values[0][0])
    down.sort(key=lambda d: (-d.down_seconds, d.instance))
    # Rates only over the time Prometheus had data, and only when that is at least a day.
    days = (end - max(start, first)) / 86400.0 if first is not None else 0.0
    units: dict[str, UnitRate] = {}
    for m, n in per_unit:
        u = m.get("unit", "")
        v = round(alerts.get(u, 0.0))
        units[u] = UnitRate(m.get("department", ""), u, int(n), v, round(audits.get(u, 0.0)),
                            v / max(int(n), 1) / days if days >= 1.0 else None)
    for u in set(alerts) | set(audits):
        if u not in units:
            units[u] = UnitRate("", u, 0, round(alerts.get(u, 0.0)), round(audits.get(u, 0.0)), None)
    return FleetMetrics(client.url, job, start, end, step, hosts,
                        tuple(sorted(units.values(), key=lambda r: (r.department, r.unit))), tuple(down), first)
