"""The OS packages, built once per test session with packaging/build.py."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_build() -> ModuleType:
    """packaging/build.py as a module (``packaging`` is also a PyPI package's name)."""
    spec = importlib.util.spec_from_file_location("dutywatch_build", REPO / "packaging" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class Built:
    """The staged tree and the packages made from it."""

    work: Path
    staged: Path
    deb: Path
    rpm: Path


def need(*tools: str) -> None:
    """Fail (not skip) when a build tool is missing: .ci/run installs them all."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install lintian rpm rpmlint debootstrap (see .ci/run)")


@pytest.fixture(scope="session")
def build_module() -> ModuleType:
    """The build script."""
    return load_build()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, build_module: ModuleType) -> Built:
    """Stage once, then build the deb and the rpm from that tree."""
    need("dpkg-deb", "rpmbuild", "strip")
    work = tmp_path_factory.mktemp("package")
    out = work / "dist"
    staged = build_module.stage(work)
    deb = build_module.deb(work, out, staged)
    rpm = build_module.rpm(work, out, staged)
    return Built(work, staged, deb, rpm)


def deb_field(deb: Path, name: str) -> str:
    """One control field of a .deb."""
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()
