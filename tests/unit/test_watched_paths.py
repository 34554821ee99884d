"""What the agent watches for a reload: the admin's files, not the package's."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from agent.daemon.agent import Agent
from agent.paths import DEMO_REGISTRY, shipped_rules_dir


def test_shipped_packs_are_not_watched_but_local_rules_and_the_registry_are(tmp_path: Path) -> None:
    # During a package upgrade dpkg unpacks the new shipped packs file by file; the old agent must not
    # load them half-unpacked. postinst restarts it once everything is in place.
    local = tmp_path / "rules.d"
    local.mkdir()
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(f"registry: {DEMO_REGISTRY}\nrules: [{shipped_rules_dir()}, {local}]\n"
                        f"state_dir: {tmp_path / 'state'}\n", encoding="utf-8")
    watched = {p.resolve() for p in Agent._watched_paths(load_config(cfg_path))}
    assert shipped_rules_dir().resolve() not in watched
    assert local.resolve() in watched and Path(DEMO_REGISTRY).resolve() in watched
