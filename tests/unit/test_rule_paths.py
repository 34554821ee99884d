"""Rule paths as users give them: a SigmaHQ tree with its category folders, an empty folder, and
``--rules`` given once per path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from shared import shared_path

from agent.cli import main
from agent.engine.rules import load_rules
from agent.errors import LoadErrors
from agent.paths import shipped_rules_dir, shipped_samples_dir

SIGMA_LINUX = shared_path("vendor", "sigma", "rules", "linux")


@pytest.mark.skipif(SIGMA_LINUX is None, reason="the vendored Sigma rules (shared/vendor/sigma) are not here")
def test_a_sigmahq_tree_loads_every_rule_of_its_category_folders() -> None:
    assert SIGMA_LINUX is not None
    on_disk = sorted(SIGMA_LINUX.rglob("*.yml"))
    assert on_disk and not list(SIGMA_LINUX.glob("*.yml"))  # every rule sits in a category subfolder
    ruleset = load_rules([SIGMA_LINUX])
    assert len(ruleset.files) == len(on_disk)
    assert len(ruleset.rules) == len(on_disk)


def test_a_folder_without_rule_files_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a rule\n")
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux" / "rule.json").write_text("{}\n")
    with pytest.raises(LoadErrors) as exc:
        load_rules([tmp_path])
    assert f"{tmp_path}: no rule files" in str(exc.value)


def test_an_empty_drop_in_folder_is_fine(tmp_path: Path) -> None:
    empty = tmp_path / "rules.d"
    empty.mkdir()
    assert load_rules([shipped_rules_dir(), empty]).rules


def test_samples_fixtures_and_hidden_folders_below_a_rule_folder_are_not_rules(tmp_path: Path) -> None:
    shutil.copytree(shipped_rules_dir(), tmp_path / "packs", ignore=shutil.ignore_patterns("tests"))
    (tmp_path / "packs" / "tests").mkdir()
    shutil.copy(next(shipped_samples_dir().glob("*.yaml")), tmp_path / "packs" / "tests" / "s.yaml")
    (tmp_path / "packs" / ".git").mkdir()
    (tmp_path / "packs" / ".git" / "x.yaml").write_text("not: [a rule\n")
    sub = tmp_path / "packs" / "local"
    sub.mkdir()
    (sub / "extra.yaml").write_text(
        "pack: local\nrules:\n  - id: LOCAL-1\n    title: {zh: 本地, en: Local}\n"
        "    when: event.kind == \"process.exec\" and process.name == \"nc\"\n"
        "    severity: low\n    action: audit\n    message: {zh: 本地, en: local}\n")
    ids = {r.id for r in load_rules([tmp_path / "packs"]).rules}
    assert "LOCAL-1" in ids
    assert ids >= {r.id for r in load_rules([shipped_rules_dir()]).rules}


def test_test_rules_takes_one_path_per_rules_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packs = shipped_rules_dir()
    samples = next(shipped_samples_dir().glob("baomi.yaml"))
    # The sample file after --rules is a sample file, not a second rule path.
    code = main(["test-rules", "--rules", str(packs), str(samples)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0, last
    assert last.endswith(" 0 failed") and not last.startswith("0 passed")
    # Several rule paths: --rules once for each.
    extra = tmp_path / "extra.yaml"
    extra.write_text("pack: extra\nlists:\n  more_tools: [nc]\n")
    assert main(["test-rules", "--rules", str(packs), "--rules", str(extra), str(samples)]) == 0
