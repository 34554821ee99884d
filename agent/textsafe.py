"""Text that cannot hurt its reader, and files that cannot be redirected.

Names, paths and command lines come from whoever made them. Shown raw, an
escape sequence in a file name can clear an officer's screen, hide text or
forge table rows, and a bidi override can make a path read backwards. Every
human-facing output passes such text through ``visible``; unbounded fields
are capped with their full length and SHA-256 kept (``cap``); files written
on a user's request are made under a fresh name that cannot be a planted
link and renamed into place (``write_new``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# C0 and C1 controls, DEL, Unicode line and paragraph separators, bidirectional marks, embeddings,
# overrides and isolates, and lone surrogates (undecodable file-name bytes).
UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[{UNSAFE}]")
CAP_BYTES = 4096


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(text: str) -> str:
    """``text`` with every control, bidi and surrogate character written as a visible escape."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def cap(text: str, limit: int = CAP_BYTES) -> tuple[str, dict[str, Any] | None]:
    """``text`` cut to at most ``limit`` UTF-8 bytes, and what was cut.

    A cut text ends with ``…[truncated: LENGTH bytes, sha256 HEX]``, as the
    process collector marks a command line it read only the start of.

    The second value is None when nothing was cut, else the full length in
    bytes and the SHA-256 of the full text, so the original can still be
    matched against a copy found elsewhere.
    """
    if len(text) * 4 <= limit:
        return text, None
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text, None
    info = {"length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    mark = f"…[truncated: {info['length']} bytes, sha256 {info['sha256']}]"
    head = raw[: max(0, limit - len(mark.encode("utf-8")))].decode("utf-8", "ignore")
    return head + mark, info


def write_new(out: Path, body: Callable[[Any], object], *, binary: bool, mode: int = 0o644) -> None:
    """Write ``out`` through a new file made exclusively (never a planted link) and a rename.

    The temporary name is random and opened with ``O_EXCL | O_NOFOLLOW``, so
    a symlink planted in the directory cannot redirect the write; the rename
    replaces a link at ``out`` itself, never the file it points at. OSError
    goes to the caller.
    """
    directory = out.parent if str(out.parent) else Path(".")
    tmp = directory / f".{out.name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as raw:
            if binary:
                body(raw)
                raw.flush()
            else:
                text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                body(text)
                text.flush()
                text.detach()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class VisibleFormatter(logging.Formatter):
    """A log formatter that makes control and bidi characters in messages visible.

    A hostile file name logged as is could forge a log line or drive the
    terminal of whoever tails the log.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line with the message's unsafe characters escaped."""
        record.message = visible(record.message)
        return super().formatMessage(record)
