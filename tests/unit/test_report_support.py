"""Journals for report tests, built the way the agent builds them.

Every shipped rule sample's event goes through the registry (Attributor)
and the engine, and each finding's ``to_record()`` is appended to a real
Journal, with lifecycle records around it (start, reload, a tamper gap,
stop), so the report sees findings from every shipped pack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from agent.engine.rules import RuleSet, load_rules
from agent.engine.samples import SampleRunner, sample_files
from agent.events import Event
from agent.journal.store import Journal
from agent.paths import DEMO_REGISTRY, shipped_rules_dir, shipped_samples_dir
from agent.yamlsrc import load_file

T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
DAY = 86400.0
HOST = "js-fgw-0042"


def plain(value: Any) -> Any:
    """YAML-with-locations values as plain dicts, lists and strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def shipped_ruleset() -> RuleSet:
    """The shipped rule packs."""
    return load_rules([shipped_rules_dir()])


def sample_findings(ruleset: RuleSet, registry: Path | None = None, *, t0: float = T0,
                    step: float = 3600.0) -> Iterator[dict[str, Any]]:
    """Finding records of every shipped sample's event, ``step`` seconds apart.

    With ``registry`` every sample is attributed through it (one host);
    otherwise each sample uses its own registry, as ``test-rules`` does.
    """
    runner = SampleRunner(ruleset)
    clock = itertools.count()
    for f in sample_files([shipped_samples_dir()]):
        for item in load_file(f) or []:
            raw = plain(item["event"])
            t = t0 + step * next(clock)
            raw.setdefault("event", {})["time"] = t
            reg = registry or (f.parent / str(item["registry"]) if "registry" in item else DEMO_REGISTRY)
            event = runner.attributor(reg)(Event.from_dict(raw))
            for finding in runner.engine.evaluate(event):
                yield finding.to_record()


def lifecycle(kind: str, t: float, host: str = HOST, **detail: Any) -> dict[str, Any]:
    """A lifecycle record as the agent writes it."""
    return {"type": "lifecycle", "time": t, "host": host, "kind": kind, "detail": detail}


def stepping_clock(start: float = T0, step: float = 1.0) -> Callable[[], float]:
    """A clock that moves ``step`` seconds on each reading."""
    counter = itertools.count()
    return lambda: start + step * next(counter)


def build_journal(state: Path, ruleset: RuleSet, *, registry: Path | None = None, host: str = HOST,
                  extra: list[dict[str, Any]] | None = None, crypto: str = "intl") -> int:
    """A journal of every sample's findings between start/stop records and a tamper gap; returns findings."""
    findings = list(sample_findings(ruleset, registry))
    for rec in findings:
        rec["host"] = host
    end = max(r["time"] for r in findings) + 60
    mid = findings[len(findings) // 2]["time"]
    with Journal(state, host=host, clock=stepping_clock(end), checkpoint_every=25, crypto=crypto) as j:
        j.append(lifecycle("agent.start", T0 - 60, host, version="0.1", rules=len(ruleset.rules)))
        j.append_many(findings[: len(findings) // 2])
        j.append(lifecycle("agent.reload", mid + 1, host, ok=True, why="SIGHUP", rules=len(ruleset.rules),
                           message=f"reloaded (SIGHUP): {len(ruleset.rules)} rules"))
        j.append(lifecycle("config.changed", mid + 2, host, files=["/etc/dutywatch/rules.d/local.yaml"]))
        j.append(lifecycle("agent.start", mid + 3 * 3600, host, version="0.1"))
        j.append(lifecycle("agent.tamper", mid + 3 * 3600 + 1, host, since=mid + 10,
                           until=mid + 3 * 3600, message="monitoring interrupted"))
        j.append_many(findings[len(findings) // 2:] + (extra or []))
        j.append(lifecycle("agent.stop", end, host, message="clean stop"))
    return len(findings) + len(extra or [])


def registry_variant(tmp: Path, host: str, unit: str, department: str) -> Path:
    """The demo registry with another host, unit and department (for fleet tests)."""
    doc = yaml.safe_load(DEMO_REGISTRY.read_text(encoding="utf-8"))
    doc["host"].update({"id": host, "unit": unit, "department": department})
    if not any(u["name"] == unit for u in doc["units"]):
        doc["units"].append({"name": unit, "department": department})
    if not any(d["name"] == department for d in doc["departments"]):
        doc["departments"].append({"name": department})
    path = tmp / f"{host}.registry.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``dutywatch ARGV`` in-process; returns (status, stdout, stderr)."""
    import contextlib
    import io

    from agent import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()
