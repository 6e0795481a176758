"""
HTTP/1.1 response bodies as C{jw} follows them (L{jobworker.client.quick}):
read straight into one buffer as they arrive, chunked ones decoded here.
Standard library only.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

#: The longest chunk-size or trailer line of a chunked body read.
MAX_LINE = 1024


def bodyPieces(
    response: http.client.HTTPResponse, buffer: bytearray
) -> Iterator[memoryview]:
    """
    The body of C{response} (its headers read) in pieces as they arrive,
    each a view of C{buffer}, valid until the next: read straight into it,
    with no bytes object made per read (C{HTTPResponse.read1} makes one of
    the size asked for, however little TLS hands over: a record at most).
    Chunked bodies are decoded here, C{Content-Length} ones read to their
    length, others to the end of the connection.

    @raise http.client.IncompleteRead: the body was cut short.
    @raise ValueError: a chunk's size line is not one.
    """
    source = response.fp
    view = memoryview(buffer)
    if response.chunked:
        while True:
            line = source.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                raise http.client.IncompleteRead(line)
            size = chunkSize(line)
            if size == 0:
                while source.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield from _exactly(source, view, size)
            if source.read(2) != b"\r\n":
                raise http.client.IncompleteRead(b"")
    elif response.length is not None:
        yield from _exactly(source, view, response.length)
    else:
        while count := source.readinto1(view):
            yield view[:count]


def _exactly(source: Any, view: memoryview, size: int) -> Iterator[memoryview]:
    """C{size} bytes of C{source}, each read into C{view} as it comes."""
    while size:
        count = source.readinto1(view[: min(size, len(view))])
        if not count:
            raise http.client.IncompleteRead(b"", size)
        size -= count
        yield view[:count]


def chunkSize(line: bytes) -> int:
    """
    The size on a chunk's size line (hex digits, then an optional
    extension); nothing else (C{int()} would take a sign, C{0x}, C{_}).

    @raise ValueError: it is not one.
    """
    digits = line.split(b";", 1)[0].rstrip(b"\r\n \t")
    if not 0 < len(digits) <= 16 or digits.strip(HEX_DIGITS):
        raise ValueError(f"bad chunk size line {line[:40]!r}")
    return int(digits, 16)


HEX_DIGITS = b"0123456789abcdefABCDEF"
