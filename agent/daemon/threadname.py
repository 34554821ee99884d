"""Name OS threads after their job, so `top -H` and /proc/PID/task show which one is busy."""

from __future__ import annotations

import ctypes
import ctypes.util

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_thread_name(name: str) -> None:
    """Set the calling thread's kernel name (15 bytes at most)."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(f"dw-{name}".encode()[:15]), 0, 0, 0)
