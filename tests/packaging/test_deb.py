"""The Debian package: layout, relocated environment on Debian's Python, conffiles, maintainer scripts,
lintian."""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Built, deb_field, need


@pytest.fixture(scope="module")
def unpacked(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deb's data, extracted (not installed)."""
    into = tmp_path_factory.mktemp("deb-x")
    subprocess.run(["dpkg-deb", "-x", str(built.deb), str(into)], check=True, timeout=120)
    return into


def _listing(deb: Path) -> dict[str, str]:
    """Path -> `dpkg-deb -c` line (modes and owners)."""
    text = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        path = line.split(None, 5)[5].split(" -> ")[0]
        out[path.removeprefix(".").rstrip("/") or "/"] = line
    return out


def test_file_name_and_control_fields(built: Built, build_module: object) -> None:
    version = build_module.version()  # type: ignore[attr-defined]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert built.deb.name == f"dutywatch_{version}_{arch}.deb"
    assert deb_field(built.deb, "Version") == version
    depends = deb_field(built.deb, "Depends")
    for dep in ("python3 (>= 3.11)", "python3.11", "adduser"):
        assert dep in depends
    assert "libpcap" not in depends  # the capture filter is assembled by the agent
    # No upper bound on python3: the package runs on its own interpreter (trixie has its own build).
    assert "<<" not in depends
    assert "python3-venv" not in depends  # the environment is built, not created on the host


def test_layout(built: Built) -> None:
    files = _listing(built.deb)
    for path in ("/opt/dutywatch/bin/dutywatch", "/opt/dutywatch/pyvenv.cfg", "/usr/bin/dutywatch",
                 "/etc/dutywatch/agent.yaml", "/etc/dutywatch/registry.yaml", "/etc/dutywatch/web.yml",
                 "/etc/dutywatch/agent.d", "/etc/dutywatch/rules.d", "/lib/systemd/system/dutywatch.service",
                 "/usr/share/doc/dutywatch/copyright", "/usr/share/doc/dutywatch/changelog.gz",
                 "/usr/share/man/man1/dutywatch.1.gz"):
        assert path in files, path
    assert "-> /opt/dutywatch/bin/dutywatch" in files["/usr/bin/dutywatch"]
    for line in files.values():
        assert " root/root " in line, line


def test_rules_samples_and_dashboards_shipped(built: Built) -> None:
    files = _listing(built.deb)
    for p in (REPO / "rules").rglob("*.yaml"):
        assert f"/usr/share/dutywatch/rules/{p.relative_to(REPO / 'rules')}" in files
    dashboards = [p for p in (REPO / "dashboards").rglob("*") if p.is_file() and not p.name.startswith(".")]
    for p in dashboards:
        assert f"/usr/share/dutywatch/dashboards/{p.relative_to(REPO / 'dashboards')}" in files
    # Rules live in one place only: a second copy in the environment would shadow edits to neither.
    assert not any(p.startswith("/opt/dutywatch/share") for p in files)


def test_conffiles(built: Built, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(built.deb), str(tmp_path)], check=True)
    assert (tmp_path / "conffiles").read_text().split() == [
        "/etc/dutywatch/agent.yaml", "/etc/dutywatch/registry.yaml", "/etc/dutywatch/web.yml"]
    for script in ("postinst", "prerm", "postrm"):
        path = tmp_path / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)
    postinst = (tmp_path / "postinst").read_text()
    assert "[ -d /run/systemd/system ]" in postinst  # start only where systemd runs
    postrm = (tmp_path / "postrm").read_text()
    purge = postrm[postrm.index('if [ "$1" = purge ]'):]
    # The journal goes on purge only, and then only once exported or when the admin says so.
    assert "rm -rf /var/lib/dutywatch" in purge
    assert postrm.count("rm -rf /var/lib/dutywatch") == purge.count("rm -rf /var/lib/dutywatch")
    assert "DUTYWATCH_PURGE_EVIDENCE" in purge and ".keep-on-purge" in purge
    assert "dutywatch export" in (tmp_path / "prerm").read_text()
    assert "dpkg-statoverride --update --add root dutywatch" in postinst and "ldconfig" in postinst


def test_environment_is_relocated_onto_debian_python(unpacked: Path, built: Built) -> None:
    venv = unpacked / "opt" / "dutywatch"
    assert (venv / "bin" / "dutywatch").read_text().startswith("#!/opt/dutywatch/bin/python3\n")
    assert os.readlink(venv / "bin" / "python3.11") == "/usr/bin/python3.11"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg
    leaked = subprocess.run(["grep", "-rlF", str(built.work), str(unpacked)], capture_output=True, text=True).stdout
    assert leaked == ""
    assert not list(venv.rglob("__pycache__"))  # compiled on the host by postinst
    # Debian's interpreter imports everything the agent runs on from the unpacked environment.
    code = ("import sys, agent, collectors, yaml, psutil, prometheus_client, watchdog.observers, cryptography, "
            "bcrypt, pypdf, msgspec; print(sys.version_info[:2], agent.__file__)")
    res = subprocess.run([str(venv / "bin" / "python3"), "-I", "-B", "-c", code], capture_output=True, text=True,
                         cwd=unpacked, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "(3, 11)" in res.stdout and str(venv) in res.stdout


def test_copyright_names_every_bundled_distribution(unpacked: Path) -> None:
    text = (unpacked / "usr/share/doc/dutywatch/copyright").read_text()
    site = unpacked / "opt/dutywatch/lib/python3.11/site-packages"
    names = {re.sub(r"-[^-]+\.dist-info$", "", p.name).lower().replace("_", "-")
             for p in site.glob("*.dist-info")} - {"dutywatch"}
    listed = {m.lower().replace("_", "-") for m in re.findall(r"\(distribution (\S+) ", text)}
    assert names and names == listed


def test_the_project_is_gpl_2_or_later_and_each_bundled_licence_matches_its_metadata(unpacked: Path,
                                                                                        build_module: Any) -> None:
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text().splitlines()[0]
    assert 'license="GPL-2.0-or-later"' in (REPO / "setup.py").read_text()
    text = (unpacked / "usr/share/doc/dutywatch/copyright").read_text()
    own = text.split("\n\n", 2)[1]
    assert "Files: *" in own and "License: GPL-2.0+" in own and "/usr/share/common-licenses/GPL-2" in own
    site = unpacked / "opt/dutywatch/lib/python3.11/site-packages"
    for info in site.glob("*.dist-info"):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"), headersonly=True)
        declared = meta.get("License-Expression")
        key = re.sub(r"[-_.]+", "-", meta["Name"]).lower()
        if key == "dutywatch" or not declared:
            continue
        assert build_module.BUNDLED_LICENCES[key] == declared, (key, declared)
        assert f"(distribution {meta['Name']} " in text


def test_lintian_reports_no_errors(built: Built) -> None:
    need("lintian")
    res = subprocess.run(["lintian", "--no-tag-display-limit", "--display-info", str(built.deb)],
                         capture_output=True, text=True, timeout=600)
    tags = [line for line in res.stdout.splitlines() if re.match(r"^[EWI]: ", line)]
    print("\nlintian:\n  " + "\n  ".join(tags or ["(nothing)"]))
    errors = [t for t in tags if t.startswith("E: ")]
    assert errors == []
    assert res.returncode in (0, 2), res.stderr[-2000:]  # 2: only non-error tags were emitted
