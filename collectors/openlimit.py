"""How many ``file.open`` events one process may cause, and the record of what was held back.

A global budget lets anyone blind the collector: open a few thousand files
elsewhere, then the secret one. Here the budget is per process, repeated
opens of one path by one process are one event (de-duplication, done by the
files collector), and an open of a registered asset is never limited. What
is held back is counted per process and reason, and ``report`` turns the
counts into the text of an ``agent.degraded`` event, so the journal holds
the evidence, not only a metric.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

RATE = 200.0  # file.open events per second and process, sustained
BURST = 400.0
MAX_PROCS = 4096  # buckets kept; the oldest go first
REPORT_EVERY = 5.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    t: float


@dataclass
class OpenLimiter:
    """Per-process token buckets for ``file.open``, and counts of everything not reported."""

    rate: float = RATE
    burst: float = BURST
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    _lost: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _since: float | None = None

    def allow(self, pid: int | None, now: float) -> bool:
        """Whether process ``pid`` may report one more open at ``now`` (monotonic seconds)."""
        key = pid if pid is not None else -1
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_PROCS:
                del self._buckets[next(iter(self._buckets))]
            b = self._buckets[key] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.t) * self.rate)
        b.t = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def lost(self, reason: str, who: str = "", n: int = 1, now: float | None = None) -> None:
        """Count ``n`` operations not reported, for ``reason``, caused by ``who`` (a process, or "")."""
        with self._lock:
            self._lost[(reason, who)] += n
            if self._since is None:
                self._since = now

    def pending(self) -> bool:
        """Whether something was lost since the last report."""
        return bool(self._lost)

    def report(self) -> str | None:
        """The counts since the last report as one line, or None when nothing was lost; counts restart."""
        with self._lock:
            lost, self._lost, self._since = self._lost, Counter(), None
        if not lost:
            return None
        by_reason: Counter[str] = Counter()
        for (reason, _who), n in lost.items():
            by_reason[reason] += n
        parts = []
        for reason, total in by_reason.most_common():
            whos = [(w, n) for (r, w), n in lost.most_common() if r == reason and w][:5]
            detail = ", ".join(f"{w} {n}" for w, n in whos)
            parts.append(f"{total} {reason}" + (f" ({detail})" if detail else ""))
        return "operations not reported: " + "; ".join(parts)
