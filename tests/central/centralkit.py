"""Shared by the central stack's tests: paths, the real promtool and amtool, runbook anchors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
PROM = DASHBOARDS / "prometheus"
RULE_FILES = sorted(PROM.glob("*.yml"))
PROM_TESTS = sorted((PROM / "tests").glob("*.yml"))
README = DASHBOARDS / "README.md"
# The minute counts' group: its two offsets lie one interval apart, behind by a lag (dutywatch-recording.yml).
INCREMENTS = "dutywatch.increments"


def tool(name: str) -> str:
    """The path of a Debian-packaged tool; CI must have it, elsewhere its tests skip."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} not installed (apt-get install prometheus prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool with a time limit, capturing its output."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def github_anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def readme_anchors() -> set[str]:
    """Anchors of every heading in dashboards/README.md."""
    anchors = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            anchors.add(github_anchor(m.group(1)))
    return anchors


def rules_every(seconds: int, out: Path) -> list[str]:
    """The shipped rule files written to ``out`` with every group evaluated every ``seconds`` seconds.

    The minute counts keep meeting exactly: their window becomes the new interval and their lag half of it.
    """
    paths = []
    for src in RULE_FILES:
        doc = yaml.safe_load(src.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            group["interval"] = f"{seconds}s"
            if group["name"] == INCREMENTS:
                lag_ms = seconds * 500
                for rule in group["rules"]:
                    expr = rule["expr"]
                    for old, new in (("offset 30s", f"offset {lag_ms}ms"),
                                     ("offset 90s", f"offset {lag_ms + seconds * 1000}ms"),
                                     ("time() - 90", f"time() - {(lag_ms + seconds * 1000) / 1000}")):
                        assert old in expr, (rule["record"], old)
                        expr = expr.replace(old, new)
                    rule["expr"] = expr
        dst = out / src.name
        dst.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        paths.append(str(dst))
    return paths
