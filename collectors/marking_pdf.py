"""Marking scan of a PDF's text layer, through pypdf.

pypdf maps CID fonts to Unicode through their ToUnicode CMaps, which is how
Chinese PDFs carry text, and bounds its own decompression and parsing work.
On top of that the scan shows pypdf only the first ``max_bytes`` of the file
(a longer file looks truncated to it, and pypdf rebuilds what it can),
reads at most ``max_pages`` pages and checks the time cap between pages. A
scanned PDF without a text layer reads as unmarked: there is nothing to see
without OCR.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO

from collectors.marking_limits import Deadline, Limits, Truncated, Unreadable
from collectors.marking_match import StreamScanner

if TYPE_CHECKING:
    from pypdf import PdfReader


class _Head(io.RawIOBase):
    """A read-only, seekable view of the first ``size`` bytes of a file."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        super().__init__()
        self._f = f
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        self._f.seek(self._pos)
        data = self._f.read(want)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def scan_pdf(f: BinaryIO, size: int, scanner: StreamScanner, limits: Limits, deadline: Deadline) -> None:
    """Scan the text layer of the PDF open as ``f`` into ``scanner``, page by page.

    Raises Unreadable when pypdf cannot make sense of the file or it is
    encrypted with a password, Truncated when the page cap cut the scan short.
    """
    import pypdf  # late: most files are not PDFs, and pypdf costs memory

    per_stream = limits.max_pdf_stream
    # pypdf's own caps (75 MB a stream) are far above what a text scan needs,
    # and it may call an external jbig2dec for images: neither is wanted here.
    with pypdf.apply_configuration(
        maximum_declared_stream_length=limits.max_bytes,
        zlib_maximum_output_length=per_stream,
        lzw_maximum_output_length=per_stream,
        run_length_maximum_output_length=per_stream,
        brotli_maximum_output_length=per_stream,
        jbig2_maximum_output_length=per_stream,
        array_based_stream_maximum_output_length=per_stream,
        image_maximum_buffer_size=per_stream,
        stream_decoding_work_maximum_length=4 * per_stream,
        jbig2dec_binary=None,
    ):
        _scan_pages(pypdf.PdfReader, f, size, scanner, limits, deadline)


def _scan_pages(reader_type: type[PdfReader], f: BinaryIO, size: int, scanner: StreamScanner,
                limits: Limits, deadline: Deadline) -> None:
    view = io.BufferedReader(_Head(f, min(size, limits.max_bytes)), buffer_size=64 * 1024)
    cut = f" (truncated at {limits.max_bytes} bytes)" if size > limits.max_bytes else ""
    try:
        reader = reader_type(view, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("PDF is encrypted with a password")
        pages = len(reader.pages)
    except Unreadable:
        raise
    except Exception as e:  # pypdf raises many kinds (and RecursionError) on hostile input
        raise Unreadable(f"PDF unreadable{cut}: {type(e).__name__}: {e}") from e
    for number in range(1, min(pages, limits.max_pages) + 1):
        deadline.check()
        try:
            text = reader.pages[number - 1].extract_text()
        except Exception as e:  # as above, and a broken page means an unknown marking
            raise Unreadable(f"PDF page {number} unreadable{cut}: {type(e).__name__}: {e}") from e
        scanner.start_part(page=number)
        scanner.feed(text)
        scanner.end_part()
        if scanner.done:
            return
    if pages > limits.max_pages:
        raise Truncated(f"truncated at {limits.max_pages} of {pages} pages")
    if cut:
        raise Truncated(cut.strip(" ()"))
