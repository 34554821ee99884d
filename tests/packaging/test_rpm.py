"""The rpm: same tree as the deb, config files kept on upgrade, user and unit handled by its scriptlets,
nothing bundled leaking into the rpm dependency graph, rpmlint clean of errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Built, need


def _rpm_query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def _deb_paths(deb: Path) -> set[str]:
    text = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return {line.split(None, 5)[5].split(" -> ")[0].removeprefix(".").rstrip("/") for line in text.splitlines()}


def test_same_layout_as_the_deb(built: Built) -> None:
    rpm_paths = set(_rpm_query(built.rpm, "-l").split())
    deb_paths = {p for p in _deb_paths(built.deb) if p}
    # Where the two distributions differ by convention: the unit's directory, lintian's overrides,
    # Debian's changelog, and which parent directories each format lists.
    deb_only = {p for p in deb_paths - rpm_paths
                if not p.startswith(("/lib", "/usr/share/lintian", "/usr/share/doc/dutywatch/changelog"))}
    rpm_only = rpm_paths - deb_paths - {"/usr/lib/systemd/system/dutywatch.service", "/var/lib/dutywatch"}
    parents = {"/etc", "/opt", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc", "/usr/share/man",
               "/usr/share/man/man1", "/var", "/var/lib"}
    assert deb_only - parents == set()
    assert rpm_only == set()


def test_config_files_are_kept_on_upgrade(built: Built) -> None:
    assert set(_rpm_query(built.rpm, "--configfiles").split()) == {
        "/etc/dutywatch/agent.yaml", "/etc/dutywatch/registry.yaml", "/etc/dutywatch/web.yml"}
    spec = (REPO / "packaging/rpm/dutywatch.spec").read_text()
    assert spec.count("%config(noreplace)") == 3


def test_private_state_directory_and_config(built: Built) -> None:
    fmt = "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME}\\n]"
    listing = {line.split()[0]: line.split()[1:] for line in _rpm_query(built.rpm, "--qf", fmt).splitlines()}
    assert listing["/var/lib/dutywatch"] == ["drwx------", "dutywatch", "dutywatch"]
    assert listing["/etc/dutywatch"] == ["drwxr-x---", "root", "dutywatch"]


def test_scriptlets_create_the_user_and_handle_the_unit(built: Built) -> None:
    scripts = _rpm_query(built.rpm, "--scripts")
    assert "useradd -r -g dutywatch" in scripts and "groupadd -r dutywatch" in scripts
    # Enabling follows the distribution's presets; bytecode and the first start wait for %posttrans.
    assert "systemctl --no-reload preset dutywatch.service" in scripts
    assert "enable --now" not in scripts
    posttrans = scripts.split("posttrans scriptlet", 1)[1]
    assert "compileall" in posttrans and "ldconfig" in posttrans
    assert "systemctl disable --now dutywatch.service" in scripts
    assert "[ -d /run/systemd/system ]" in scripts
    for section in re.split(r"^\S+ scriptlet.*:$", scripts, flags=re.M)[1:]:
        subprocess.run(["sh", "-n"], input=section, text=True, check=True)


def test_bundled_libraries_stay_out_of_the_dependency_graph(built: Built) -> None:
    provides = _rpm_query(built.rpm, "--provides").split("\n")
    assert [p for p in provides if p and not p.startswith(("dutywatch", "config(dutywatch)"))] == []
    requires = set(_rpm_query(built.rpm, "--requires").split("\n"))
    assert "python3.11" in requires and not [r for r in requires if "libpcap" in r]
    assert not [r for r in requires if "_cffi_backend" in r or "libcrypto" in r]


def test_rpmlint_reports_no_errors(built: Built) -> None:
    need("rpmlint")
    res = subprocess.run(["rpmlint", "-c", str(REPO / "packaging/rpm/rpmlint.toml"), str(built.rpm)],
                         capture_output=True, text=True, timeout=300)
    tags = [line for line in res.stdout.splitlines() if re.search(r": [EW]: ", line)]
    print("\nrpmlint:\n  " + "\n  ".join(tags or ["(nothing)"]) + "\n  " + res.stdout.strip().splitlines()[-1])
    assert [t for t in tags if ": E: " in t] == []
    assert re.search(r"\b0 errors\b", res.stdout)


def test_license_tag_names_the_project_and_every_bundled_licence(built: Built, build_module: Any) -> None:
    tag = _rpm_query(built.rpm, "--queryformat", "%{LICENSE}")
    assert tag.startswith("GPL-2.0-or-later AND ")
    for licence in set(build_module.BUNDLED_LICENCES.values()) & {
            lic for _, _, lic, _ in build_module.bundled(built.staged / "opt/dutywatch")}:
        assert (f"({licence})" if " " in licence else licence) in tag


def test_rpmlint_is_available_from_debian() -> None:
    policy = subprocess.run(["apt-cache", "policy", "rpmlint"], capture_output=True, text=True, timeout=60).stdout
    if "Candidate: (none)" in policy or not policy.strip():
        pytest.skip("rpmlint is not in this machine's Debian repositories")
    need("rpmlint")
