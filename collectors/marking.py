"""Document marking detection (密级标志) for ``file.marking``.

The file and media collectors call :func:`scan_file` on files created or
written under watched paths and removable mounts. It finds the format by
content first (PDF and zip magic bytes), by extension second, reads the
document's text within bounds and reports the highest 密级 whose starred
marking (``机密★10年``) appears, and where it first appears. See
:mod:`collectors.marking_match` for what counts as a marking.

Formats read: PDF, zip documents (OOXML, WPS, ODF, and OFD, GB/T 33190),
OLE2 compound files (legacy Word, Excel, PowerPoint and WPS ``.doc .xls .ppt
.wps .et .dps``), RTF, and text in UTF-8, GB18030, UTF-16 and UTF-32 with or
without a BOM.

A scan never raises for what is in the file: malformed or hostile content
gives ``unreadable`` with a reason, a format it does not read gives
``skipped``, and a scan stopped by its time cap gives ``unscanned``: nothing
is known about the file, which is not the same as clean. The cap is checked
between chunks, parts and pages; a parser stuck inside one page is stopped
only by running the scan in :mod:`collectors.marking_worker`. A file longer than ``max_bytes`` is read only up to it (a
marking belongs at the top of the first page, GB/T 9704), and the result
says so in ``reason`` (``truncated at N bytes``) while still reporting a
marking found in what was read.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from agent.levels import Level
from collectors.base import Clock, translate_os_error
from collectors.marking_limits import MIB, Deadline, Limits, Skipped, TimedOut, Truncated, Unreadable
from collectors.marking_match import Marking, Position, StreamScanner, scan_text
from collectors.marking_ole import OLE_MAGIC, scan_ole
from collectors.marking_pdf import scan_pdf
from collectors.marking_rtf import RTF_MAGIC, scan_rtf
from collectors.marking_text import TextDecoder, XmlText, sniff_encoding
from collectors.marking_zip import scan_zip

__all__ = ["Limits", "Marking", "MarkingResult", "Position", "scan_file", "scan_text"]

Status = Literal["marked", "unmarked", "unreadable", "skipped", "unscanned"]

DEFAULT_MAX_BYTES = 32 * MIB
DEFAULT_MAX_SECONDS = 5.0

TEXT_SUFFIXES = frozenset({".txt", ".md", ".csv", ".html", ".htm", ".xml"})
MARKUP_SUFFIXES = frozenset({".html", ".htm", ".xml"})
WPS_SUFFIXES = frozenset({".wps", ".et", ".dps"})  # OLE2 like .doc, OOXML-like zip, or plain text
OLE_SUFFIXES = frozenset({".doc", ".dot", ".xls", ".xlt", ".ppt", ".pot", ".pps", ".wps", ".et", ".dps", ".wpt",
                          ".ett", ".dpt"})
ZIP_SUFFIXES = frozenset({".docx", ".xlsx", ".pptx", ".docm", ".xlsm", ".pptm", ".odt", ".ods", ".odp", ".ofd"})

_HEAD = 8192
_CHUNK = 64 * 1024
# Formats recognised only to say plainly why they are skipped.
_OTHER_MAGIC = (
    (b"\x7fELF", "ELF executable"), (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"), (b"\x1f\x8b", "gzip archive"), (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!", "RAR archive"),
)


@dataclass(frozen=True, slots=True)
class MarkingResult:
    """What a scan of one file found.

    ``status`` is ``marked`` (``level`` set), ``unmarked``, ``unreadable``
    (content malformed, hostile or encrypted), ``skipped`` (not a format the
    scan reads) or ``unscanned`` (the scan could not finish: time cap, a full
    queue, a worker that died). ``reason`` explains the last three, and on the
    first two says when only part of the file was read.
    """

    status: Status
    level: Level | None = None
    period: str | None = None  # 保密期限 as written: "10年", "长期", "启用前", a date; None if absent
    position: Position | None = None
    reason: str = ""
    text: str | None = None  # the marking as written in the document

    @property
    def complete(self) -> bool:
        """True when the whole document was read (or a 绝密 marking ended the scan)."""
        return self.status in ("marked", "unmarked") and not self.reason


def scan_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    clock: Clock = time.monotonic,
    limits: Limits | None = None,
) -> MarkingResult:
    """Scan the file at ``path`` for a 密级标志 and return the highest found.

    ``max_bytes`` caps the bytes read, ``max_seconds`` the time spent (checked
    between chunks, parts and pages, on ``clock``); ``limits`` sets the other
    bounds (zip members, inflation, pages). Never raises for file content or
    for an unreadable path.
    """
    try:
        fd = _open(Path(path))
    except OSError as e:
        return MarkingResult("unreadable", reason=str(translate_os_error("cannot open", e)))
    try:
        return scan_fd(fd, path, max_bytes=max_bytes, max_seconds=max_seconds, clock=clock, limits=limits)
    finally:
        os.close(fd)


SMALL_FILE = 64 * 1024
"""Files up to this size are read whole in one call and scanned in memory: through a buffered file
a 1 KiB docx costs some thirty system calls (the zip reader seeks to its directory and each member),
a sizeable share of its scan, more so in the confined worker, where every call passes the seccomp filter."""


def scan_fd(
    fd: int,
    name: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    clock: Clock = time.monotonic,
    limits: Limits | None = None,
) -> MarkingResult:
    """Scan a file the caller already opened (and checked); ``name`` only gives its type.

    Scanning through the caller's descriptor leaves no window between the
    caller's checks (no symlink, under a watched root) and the read, in which
    a path could be swapped to point elsewhere. The descriptor stays open.
    """
    bounds = dataclasses.replace(limits or Limits(), max_bytes=max_bytes, max_seconds=max_seconds)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return MarkingResult("skipped", reason="not a regular file")
        if st.st_size <= SMALL_FILE:  # one read, then no seek or read is a system call (see SMALL_FILE)
            data = os.pread(fd, st.st_size, 0)
            return _scan_open(io.BytesIO(data), Path(name), len(data), bounds, Deadline(clock, max_seconds))
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return _scan_open(f, Path(name), st.st_size, bounds, Deadline(clock, max_seconds))
    except OSError as e:
        return MarkingResult("unreadable", reason=str(translate_os_error("cannot read", e)))


def _open(path: Path) -> int:
    # O_NONBLOCK so a FIFO planted under a watched path cannot hang the scan;
    # O_NOATIME so the scan does not disturb what auditors see, where allowed.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def _scan_open(f: BinaryIO, path: Path, size: int, limits: Limits, deadline: Deadline) -> MarkingResult:
    head = f.read(_HEAD)
    suffix = path.suffix.lower()
    scanner = StreamScanner()
    cut = failed = timed_out = ""
    try:
        kind = _kind(head, suffix)
        if kind.startswith("skip:"):
            return MarkingResult("skipped", reason=kind[5:])
        if kind == "pdf":
            scan_pdf(f, size, scanner, limits, deadline)
        elif kind == "zip":
            scan_zip(f, size, scanner, limits, deadline)
        elif kind == "ole":
            scan_ole(f, size, scanner, limits, deadline)
        elif kind == "rtf":
            scan_rtf(f, size, scanner, limits, deadline)
        else:
            _scan_plain(f, size, scanner, limits, deadline, markup=_is_markup(head, suffix))
    except Skipped as e:
        return MarkingResult("skipped", reason=e.reason)
    except Truncated as e:
        cut = e.reason
    except TimedOut as e:
        timed_out = e.reason
    except Unreadable as e:
        failed = e.reason
    except Exception as e:  # a scan must not take the collector down; the reason names it
        failed = f"scan failed: {type(e).__name__}: {e}"
    scanner.end_part()  # text read before a stop still counts
    best = scanner.best
    if best is not None:
        m = best.marking
        return MarkingResult("marked", m.level, m.period, best.position, cut or failed or timed_out, m.text)
    if timed_out:
        return MarkingResult("unscanned", reason=timed_out)
    if failed:
        return MarkingResult("unreadable", reason=failed)
    return MarkingResult("unmarked", reason=cut)


def _kind(head: bytes, suffix: str) -> str:
    """``pdf``, ``zip``, ``ole``, ``rtf``, ``text``, or ``skip:<reason>``; raises Unreadable on a mismatch."""
    # Readers accept junk before the header within the first KiB; a text file
    # that merely mentions %PDF- near its top is still text.
    if head.startswith(b"%PDF-") or (b"%PDF-" in head[:1024] and suffix not in TEXT_SUFFIXES):
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(OLE_MAGIC):
        return "ole"
    if head.lstrip(b"\xef\xbb\xbf")[:5] == RTF_MAGIC:
        return "rtf"
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"skip:{what} is not a document format read"
    if suffix == ".pdf":
        raise Unreadable("not a PDF: no %PDF- header")
    if suffix in ZIP_SUFFIXES or suffix == ".ofd":
        raise Unreadable("not a readable zip: no zip header")
    if suffix in (".rtf", ".doc") and head.startswith(b"{\\rt"):
        return "rtf"
    if suffix in OLE_SUFFIXES - WPS_SUFFIXES - {".doc"}:
        raise Unreadable("not a legacy Office document: no OLE2 compound file header")
    if suffix in TEXT_SUFFIXES or suffix in WPS_SUFFIXES or suffix in (".doc", ".rtf"):
        # Word and WPS save HTML, RTF and plain text under .doc too.
        if b"\x00" in head and sniff_encoding(head) is None:
            raise Unreadable("binary content where text was expected")
        return "text"
    return "skip:not a document format read"


def _is_markup(head: bytes, suffix: str) -> bool:
    # WPS, like Word, can save HTML under its own extensions.
    starts_with_tag = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"
    return suffix in MARKUP_SUFFIXES or (suffix in WPS_SUFFIXES | {".doc"} and starts_with_tag)


def _scan_plain(f: BinaryIO, size: int, scanner: StreamScanner, limits: Limits, deadline: Deadline,
                *, markup: bool) -> None:
    """Scan a text file from its start; tags and character references out of markup first."""
    f.seek(0)
    decoder = TextDecoder()
    xml = XmlText() if markup else None
    scanner.start_part()
    done = 0
    while done < limits.max_bytes:
        deadline.check()
        chunk = f.read(min(_CHUNK, limits.max_bytes - done))
        if not chunk:
            break
        done += len(chunk)
        text = decoder.decode(chunk)
        scanner.feed(xml.feed(text) if xml else text)
        if scanner.done:
            return
    text = decoder.decode(b"", final=True)
    scanner.feed(xml.feed(text) + xml.close() if xml else text)
    scanner.end_part()
    if done >= limits.max_bytes and size > done:
        raise Truncated(f"truncated at {done} bytes")
