"""Every duration of the agent's config: read in any unit, refused with its place when bad or out of bounds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.errors import LoadErrors

# name, the YAML line (X for the value), how to read it back, what it must be, a good value and its seconds,
# and a value out of bounds
Setting = tuple[str, str, Callable[[Config], float], str, str, float, str]
SETTINGS: list[Setting] = [
    ("protect.pause_after", "protect: {pause_after: X}", lambda c: c.pause_after,
     "be at least 1s (or 0 to turn it off)", "3s", 3.0, "500ms"),
    ("export.every", "export: {to: /tmp/x, every: X}", lambda c: c.export.every,
     "divide a day (15m, 1h, 6h, 1d) or be whole days", "1h", 3600.0, "7m"),
    ("policy.every", "policy: {every: X}", lambda c: c.policy.every, "be at least 1s", "90s", 90.0, "0.5"),
    ("assess.every", "assess: {every: X}", lambda c: c.assess.every, "be at least 1m", "12h", 43200.0, "30s"),
    ("journal.fold_window", "journal: {fold_window: X}", lambda c: c.journal.fold_window,
     "be at least 0 (0 folds nothing)", "0", 0.0, "-1"),
    ("journal.heartbeat", "journal: {heartbeat: X}", lambda c: c.journal.heartbeat,
     "be between 1s and 1h", "10m", 600.0, "2h"),
    ("collectors.host.interval", "collectors: {host: {interval: X}}", lambda c: float(c.collectors["host"]["interval"]),
     "be more than 0", "2m", 120.0, "0"),
]
NAMES = [s[0] for s in SETTINGS]


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "agent.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("setting", SETTINGS, ids=NAMES)
def test_a_duration_is_read_in_its_unit(tmp_path: Path, setting: Setting) -> None:
    _, line, read, _, good, seconds, _ = setting
    assert read(load(tmp_path, line.replace("X", good))) == seconds


@pytest.mark.parametrize("setting", SETTINGS, ids=NAMES)
def test_a_duration_out_of_bounds_is_refused_with_its_place(tmp_path: Path, setting: Setting) -> None:
    name, line, _, must, _, _, out = setting
    with pytest.raises(LoadErrors) as exc:
        load(tmp_path, line.replace("X", out))
    assert f"agent.yaml:1:{line.index('X') + 1}: {name} must {must}, not " in str(exc.value)


@pytest.mark.parametrize("setting", SETTINGS, ids=NAMES)
def test_a_word_is_no_duration(tmp_path: Path, setting: Setting) -> None:
    name, line, *_ = setting
    with pytest.raises(LoadErrors, match=rf"agent\.yaml:1:{line.index('X') + 1}: {name}: bad duration 'soon'"):
        load(tmp_path, line.replace("X", "soon"))
