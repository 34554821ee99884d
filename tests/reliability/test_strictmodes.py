"""Attacks on the agent's inputs: files another user could write are refused, as sshd's StrictModes does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.agent import Agent
from agent.errors import LoadErrors
from agent.strictmodes import check_path
from tests.integration.agent_harness import REPO
from tests.reliability.kit import config_tree

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")]


def check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "check", "--config", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def refused(cfg: Path, path: Path, fix: str) -> str:
    """Both `dutywatch check` and the Agent refuse, naming ``path`` and the fix."""
    r = check(cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert str(path) in r.stderr and fix in r.stderr, r.stderr
    with pytest.raises(LoadErrors) as exc:
        Agent(cfg)
    assert str(path) in str(exc.value) and fix in str(exc.value)
    return r.stderr


def test_a_clean_tree_loads(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    r = check(cfg)
    assert r.returncode == 0, r.stderr


def test_world_writable_rule_file_is_refused(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    rule = tmp_path / "rules" / "baomi.yaml"
    rule.chmod(0o646)
    err = refused(cfg, rule, f"chmod go-w {rule}")
    assert "writable by others" in err


def test_group_writable_rules_directory_is_refused(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    (tmp_path / "rules").chmod(0o775)
    refused(cfg, tmp_path / "rules", "writable by group")


def test_registry_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    os.chown(tmp_path / "registry.yaml", 1000, 1000)
    refused(cfg, tmp_path / "registry.yaml", f"chown root {tmp_path / 'registry.yaml'}")


def test_writable_directory_above_the_config_is_refused(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = config_tree(etc)
    tmp_path.chmod(0o777)  # not sticky: anyone could rename etc/ away and plant their own
    try:
        err = refused(cfg, tmp_path, f"chmod go-w {tmp_path}")
        assert "a directory above config" in err
    finally:
        tmp_path.chmod(0o700)


def test_writable_dropin_directory_is_refused_before_reading_it(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    dropins.chmod(0o777)
    (dropins / "zz.yaml").write_text("collectors: {process: {enabled: false}}\n")
    refused(cfg, dropins, f"chmod go-w {dropins}")


def test_dropin_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    dropins = tmp_path / "agent.d"
    dropins.mkdir()
    dropin = dropins / "zz.yaml"
    dropin.write_text("queue_size: 1024\n")
    os.chown(dropin, 1000, 1000)
    refused(cfg, dropin, "owned by")


def test_symlink_owned_by_another_user_is_refused_even_to_a_good_file(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    link = tmp_path / "registry-link.yaml"
    link.symlink_to(tmp_path / "registry.yaml")
    os.lchown(link, 1000, 1000)
    cfg.write_text(cfg.read_text().replace(f"registry: {tmp_path / 'registry.yaml'}", f"registry: {link}"))
    refused(cfg, link, "owned by")


def test_writable_web_config_is_refused(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    web.chmod(0o666)
    cfg = config_tree(tmp_path, extra=f"web_config: {web}\n")
    refused(cfg, web, f"chmod go-w {web}")


def test_sticky_root_directory_is_accepted_but_its_entries_are_checked(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    good = shared / "rule.yaml"
    good.write_text("rules: []\n")
    assert check_path(good, "rules") == []
    os.chown(good, 1000, 1000)
    (err,) = check_path(good, "rules")
    assert "owned by" in str(err)


def test_the_service_users_own_files_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "rule.yaml"
    f.write_text("rules: []\n")
    os.chown(f, 1000, 1000)
    assert check_path(f, "rules", euid=1000) == []
    assert check_path(f, "rules", euid=1001) != []


def test_test_rules_with_file_arguments_is_exempt(tmp_path: Path) -> None:
    rules = tmp_path / "mine"
    rules.mkdir(mode=0o777)
    rules.chmod(0o777)
    (rules / "r.yaml").write_text((REPO / "rules" / "baomi.yaml").read_text())
    samples = REPO / "rules" / "tests" / "baomi.yaml"
    r = subprocess.run([sys.executable, "-m", "agent", "test-rules", "--rules", str(rules), str(samples)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "refused" not in r.stdout + r.stderr
    assert " passed" in r.stdout


def test_reload_refuses_a_rule_file_made_writable_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    agent = Agent(cfg)
    try:
        before = agent.loaded.rules
        (tmp_path / "rules" / "baomi.yaml").chmod(0o666)
        assert agent.reload("test") is False
        assert agent.loaded.rules == before
    finally:
        agent.writer.start()
        agent.writer.stop()
