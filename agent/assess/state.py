"""What changed between two assessment runs: a finding only when a check's result changes.

The previous run's results are kept in the state directory (``assess-state.json``,
written to a temporary name and renamed). The first run is the baseline: its
results, failures included, are in its snapshot record (and the metrics), not
one finding per check, so installing the agent does not flood the journal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.assess.evaluate import CheckResult


@dataclass(frozen=True, slots=True)
class Change:
    """One check whose result is not what it was."""

    result: CheckResult
    previous: str | None  # None: a check the previous run did not have


def changes(previous: dict[str, str] | None, results: Iterable[CheckResult]) -> list[Change]:
    """The changes of ``results`` against the previous run's check-to-result map."""
    if previous is None:
        return []
    return [Change(r, previous.get(r.check)) for r in results if previous.get(r.check) != r.result]


def result_map(results: Iterable[CheckResult]) -> dict[str, str]:
    """Check id to result."""
    return {r.check: r.result for r in results}


def load_state(path: Path) -> dict[str, str] | None:
    """The previous run's results, or None (none kept, or unreadable: then all is new)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    res = data.get("results") if isinstance(data, dict) else None
    if not isinstance(res, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in res.items()):
        return None
    return res


def save_state(path: Path, results: dict[str, str], when: float) -> None:
    """Keep this run's results for the next comparison (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"time": when, "results": results}, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
