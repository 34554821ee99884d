"""What a process holds open, read from /proc: the copy guard's holder test on a real process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce import procfds


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[int, Path, Path, Path]]:
    read, write, both = tmp_path / "read.txt", tmp_path / "write.txt", tmp_path / "both.txt"
    read.write_text("r")
    both.write_text("b")
    p = subprocess.Popen(["sh", "-c", f"exec 3<{read} 4>{write} 5<>{both} 6</dev/null; echo ok; exec sleep 60"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ok"
    try:
        yield p.pid, read, write, both
    finally:
        p.kill()
        p.wait()


def test_paths_open_lists_files_and_leaves_pipes_out(holder: tuple[int, Path, Path, Path]) -> None:
    pid, read, write, both = holder
    held = procfds.paths_open(pid, lambda p: True)
    assert {str(read), str(write), str(both), "/dev/null"} <= set(held.found) and not held.cut
    assert not any(p.startswith("pipe:") for p in held.found)  # its stdout is a pipe
    assert procfds.paths_open(pid, lambda p: p.endswith("read.txt")).found == [str(read)]


def test_writable_on_finds_only_files_open_for_writing_on_the_given_filesystem(
        holder: tuple[int, Path, Path, Path]) -> None:
    pid, _read, write, both = holder
    dev = os.stat(write).st_dev
    mounts = procfds.MountDevs()
    assert sorted(procfds.writable_on(pid, {dev}, mounts).found) == sorted([str(write), str(both)])
    # The near miss: the same files, another filesystem asked about.
    assert procfds.writable_on(pid, {dev + 1}, mounts).found == []
    assert procfds.count_on({dev}, mounts)[dev] >= 3  # read, write and both (and anything else there)
