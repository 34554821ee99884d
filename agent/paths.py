"""Where DutyWatch finds what it ships: rule packs, their samples, the demo files."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
DEMO_REGISTRY = DATA_DIR / "demo-registry.yaml"
DEMO_CONFIG = DATA_DIR / "demo-agent.yaml"
DEFAULT_CONFIG = Path("/etc/dutywatch/agent.yaml")
LOCAL_RULES = Path("/etc/dutywatch/rules.d")


def shipped_rules_dir() -> Path:
    """The shipped rule packs: the source tree's, a pip install's, or the OS package's."""
    candidates = (
        PACKAGE_DIR.parent / "rules",  # a checkout or an editable install
        Path(sys.prefix) / "share" / "dutywatch" / "rules",  # pip install
        Path("/usr/share/dutywatch/rules"),  # deb / rpm
    )
    for c in candidates:
        if c.is_dir() and any(c.glob("*.yaml")):
            return c
    return candidates[-1]


def shipped_samples_dir() -> Path:
    """The samples of the shipped packs (``rules/tests``)."""
    return shipped_rules_dir() / "tests"
