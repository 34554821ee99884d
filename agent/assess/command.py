"""Running a command for a probe: an argv (never a shell), bounded in time and output."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass

MAX_OUTPUT = 1024 * 1024
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command printed and how it ended; ``error`` says why it gave no usable answer."""

    stdout: str
    returncode: int | None
    error: str | None = None


def run_bounded(argv: list[str], timeout: float = 10.0, max_bytes: int = MAX_OUTPUT) -> CommandResult:
    """Run ``argv`` with the host's standard PATH and an empty stdin; kill it past ``timeout`` or ``max_bytes``."""
    exe = shutil.which(argv[0], path=SAFE_PATH) if "/" not in argv[0] else argv[0]
    if exe is None:
        return CommandResult("", None, f"{argv[0]}: not found in {SAFE_PATH}")
    try:
        proc = subprocess.Popen([exe, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env={"PATH": SAFE_PATH, "LANG": "C", "LC_ALL": "C"},
                                close_fds=True, start_new_session=True)
    except OSError as exc:
        return CommandResult("", None, f"{argv[0]}: cannot run: {exc.strerror}")
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    error = None
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                error = f"{argv[0]}: no answer within {timeout:g} s, killed"
                break
            if not sel.select(left):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if size > max_bytes:
                error = f"{argv[0]}: more than {max_bytes:,} bytes of output, killed"
                break
    finally:
        sel.close()
        if error is not None:
            _kill(proc)
        proc.stdout.close()
    try:
        rc = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        error = error or f"{argv[0]}: did not exit within {timeout:g} s, killed"
        rc = None
    return CommandResult(b"".join(chunks)[:max_bytes].decode("utf-8", "replace"), rc, error)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
