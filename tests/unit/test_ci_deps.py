"""`make test` installs the Debian packages its tests need (.ci/deps), or says exactly how."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def listing() -> Iterator[Path]:
    """A package list that an unprivileged user can read (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="dw-deps-", dir="/tmp"))
    d.chmod(0o755)
    yield d / "packages"
    shutil.rmtree(d)


REPO = Path(__file__).resolve().parents[2]
DEPS = REPO / ".ci" / "deps"


def _run(listing: Path, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    cmd = [str(DEPS)]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {"PATH": os.environ["PATH"], "DW_DEBIAN_PACKAGES": str(listing)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_ci_run_and_make_test_share_one_install_step() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
    make = (REPO / "Makefile").read_text()
    assert "\ntest: deps " in make and "\t@.ci/deps" in make
    listed = (REPO / ".ci" / "debian-packages").read_text().split()
    assert {"prometheus", "prometheus-alertmanager", "debootstrap", "lintian", "rpm", "poppler-utils"} <= set(listed)


def test_nothing_to_do_when_every_package_is_installed(listing: Path) -> None:
    listing.write_text("# comment\ncoreutils\n\nbash\n")
    listing.chmod(0o644)
    res = _run(listing, as_nobody=True)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""


@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="setpriv (util-linux) is not installed")
def test_without_root_it_stops_and_prints_the_one_command(listing: Path) -> None:
    listing.write_text("coreutils\ndw-no-such-package\n")
    listing.chmod(0o644)
    res = _run(listing, as_nobody=True)
    assert res.returncode == 1
    # Only what is missing is named, in one command to copy.
    assert "'apt-get update && apt-get install -y --no-install-recommends dw-no-such-package'" in res.stderr


def test_an_unreadable_list_fails_instead_of_installing_nothing(listing: Path) -> None:
    listing.write_text("dw-no-such-package\n")
    listing.chmod(0o600)
    res = _run(listing, as_nobody=True)
    assert res.returncode == 1 and "cannot read the package list" in res.stderr
