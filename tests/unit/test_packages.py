"""The owning package of a running program, from a dpkg database on disk and a real running process."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.attribution import Attributor
from agent.events import Event, File, Process
from agent.packages import PackageOwners, merged_twins
from agent.paths import DEMO_REGISTRY
from agent.registry import load_registry


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """A program installed under usr/bin of a fake root, running, and an empty dpkg info dir."""
    usr = tmp_path / "root" / "usr" / "bin"
    usr.mkdir(parents=True)
    prog = usr / "pm"
    shutil.copy("/bin/sleep", prog)
    info = tmp_path / "info"
    info.mkdir()
    proc = subprocess.Popen([str(prog), "30"])
    yield prog, info, proc
    proc.kill()
    proc.wait()


def owners(info: Path, prog: Path) -> PackageOwners:
    return PackageOwners(info, rpm=None, roots=(str(prog.parents[1]) + "/",))


def install(info: Path, package: str, listed: str, digest: str | None) -> None:
    (info / f"{package}.list").write_text(f"/.\n/usr\n{listed}\n/usr/share/doc/{package}\n")
    if digest is not None:
        (info / f"{package}.md5sums").write_text(f"{digest}  {listed.lstrip('/')}\n")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_the_listed_program_with_its_recorded_content_is_the_packages(
        host: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    prog, info, proc = host
    install(info, "other", "/usr/bin/unrelated", None)
    install(info, "pm:amd64", str(prog), md5(prog))
    o = owners(info, prog)
    assert o(str(prog), proc.pid) == "pm"  # the architecture qualifier is not part of the name
    assert o(str(prog), proc.pid) == "pm" and o.searches == 1  # the second answer is cached


def test_a_program_replaced_after_install_belongs_to_no_package(
        host: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    prog, info, proc = host
    install(info, "pm", str(prog), "0" * 32)  # dpkg recorded other content
    assert owners(info, prog)(str(prog), proc.pid) is None
    (info / "pm.md5sums").write_text(f"{md5(prog)}  {str(prog).lstrip('/')}\n")
    assert owners(info, prog)(str(prog), proc.pid) == "pm"  # its twin: the content dpkg recorded


def test_an_unlisted_program_a_gone_process_or_another_file_at_the_path_is_no_packages(
        host: tuple[Path, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    prog, info, proc = host
    o = owners(info, prog)
    assert o(str(prog), proc.pid) is None  # listed nowhere
    install(info, "pm", str(prog), md5(prog))
    o = owners(info, prog)
    assert o(str(prog), None) is None  # no process to look at
    # The process runs the file that was at the path when it started; the path now holds another file.
    moved = prog.with_name("pm.old")
    os.rename(prog, moved)
    shutil.copy(moved, prog)
    assert o(str(prog), proc.pid) is None
    assert o(str(tmp_path / "elsewhere" / "pm"), proc.pid) is None  # outside the packaged directories
    proc.kill()
    proc.wait()
    shutil.copy(moved, prog)
    assert o(str(prog), proc.pid) is None  # the pid is gone


def test_merged_usr_twins() -> None:
    assert merged_twins("/usr/bin/dpkg") == ["/usr/bin/dpkg", "/bin/dpkg"]
    assert merged_twins("/lib/systemd/systemd") == ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
    assert merged_twins("/opt/x") == ["/opt/x"]


def test_on_the_real_database_a_program_is_its_package_and_not_the_one_whose_path_it_claims() -> None:
    if not Path("/var/lib/dpkg/info/coreutils.list").exists():
        pytest.skip("no dpkg database here")
    o = PackageOwners()
    sleeper = subprocess.Popen(["/bin/sleep", "5"])
    try:
        assert o("/usr/bin/dpkg", sleeper.pid) is None  # claims dpkg's path, runs sleep
        assert o(os.readlink(f"/proc/{sleeper.pid}/exe"), sleeper.pid) == "coreutils"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_attribution_fills_the_package_of_changes_only(
        host: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    prog, info, proc = host
    install(info, "pm", str(prog), md5(prog))
    attribute = Attributor(load_registry(DEMO_REGISTRY), lambda uid: None, owners(info, prog))
    p = Process(pid=proc.pid, exe=str(prog), name="pm", uid=0)
    changed = attribute(Event("file.write", 1.0, "audit", p, file=File(path="/usr/bin/ls")))
    assert changed.process.package == "pm"
    assert attribute(Event("process.exec", 1.0, "process", p)).process.package is None
    given = attribute(Event("file.write", 1.0, "audit", p._replace(package="stated"), file=File(path="/x")))
    assert given.process.package == "stated"
    # The files collector looked while the process ran: its answer (none) is not asked again.
    assert attribute(Event("file.write", 1.0, "files", p, file=File(path="/usr/bin/ls"))).process.package is None


def test_a_storm_of_one_process_changes_asks_the_package_once_but_another_process_is_asked(
        host: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    prog, info, proc = host
    install(info, "pm", str(prog), md5(prog))
    o = owners(info, prog)
    asked: list[int | None] = []

    def counted(path: str, pid: int | None) -> str | None:
        asked.append(pid)
        return o(path, pid)

    attribute = Attributor(load_registry(DEMO_REGISTRY), lambda uid: None, counted)
    p = Process(pid=proc.pid, exe=str(prog), name="pm", uid=0, start_time=1000.0)
    for i in range(100):
        e = attribute(Event("file.write", 1.0, "audit", p, file=File(path=f"/usr/lib/x{i}")))
        assert e.process.package == "pm"
    # Once, or once more a second later on a machine slow enough to spend seconds on 100 events.
    assert set(asked) == {proc.pid} and len(asked) <= 3
    asked.clear()
    # The near miss: another program claiming the same path (another pid) is looked up, and gets none.
    sleeper = subprocess.Popen(["/bin/sleep", "5"])
    try:
        other = p._replace(pid=sleeper.pid, start_time=1001.0)
        assert attribute(Event("file.write", 1.0, "audit", other, file=File(path="/x"))).process.package is None
        assert asked == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
