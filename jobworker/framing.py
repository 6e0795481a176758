"""
The binary frame format of C{?stream=combined&format=frames}: both streams
of a job's output in order, at the speed of raw bytes. Pure: the server's
L{jobworker.server.frames} writes it, C{jw} reads it with L{FrameReader}
(output passed through as it arrives); L{FrameParser} gives whole frames.

A frame is a 5-byte header, then its payload::

    tag (1 byte)   length (4 bytes, big-endian)   payload (length bytes)

Tags: C{p} where the output starts (JSON C{{"stdout": offset, "stderr":
offset}}, before the first output frame), C{o} stdout bytes, C{e} stderr
bytes, C{t} a truncation (JSON C{{"stream", "dropped"}}), C{x} the end
(JSON: the job), C{h} a heartbeat (empty). Unknown tags are skipped by
readers (room to grow). A client that adds each output frame's length to
its stream's offset resumes with C{Last-Event-ID: combined:<stdout
offset>:<stderr offset>}, as with SSE.
"""

from __future__ import annotations

import struct

#: The media type of a framed response.
CONTENT_TYPE = "application/x-jobworker-frames"
#: Tag and payload length.
HEADER = struct.Struct(">cI")
#: The tag of each stream's output, by stream index (0 stdout, 1 stderr).
OUTPUT_TAGS = (b"o", b"e")
POSITION_TAG = b"p"
#: The tags of the events that are not output.
EVENT_TAGS = {"position": POSITION_TAG, "truncated": b"t", "end": b"x"}
HEARTBEAT_TAG = b"h"
#: The largest payload a reader accepts (the server sends at most 256 KiB
#: of output, or one job record, per frame).
MAX_PAYLOAD = 16 * 1024 * 1024


class FrameError(ValueError):
    """The bytes are not a frame stream."""


#: What L{FrameReader.feed} returns: tag, payload (or a piece of one), and
#: whether it ends its frame.
Piece = tuple[bytes, "bytes | memoryview", bool]


class FrameReader:
    """
    Frames from bytes as they arrive, output passed through: L{feed} some,
    get back (tag, payload, ends) triples. An output frame's payload (C{o},
    C{e}) comes in pieces as its bytes arrive, each a view of the bytes fed
    (no copy: use it before they change), C{ends} true on its last piece;
    every other frame comes whole, as bytes. A follower writes each piece
    at once and counts it: resuming after the last byte written is exact.
    """

    def __init__(self) -> None:
        #: A header cut between two feeds.
        self._header = bytearray()
        #: The tag of the frame being read (None: a header is next).
        self._tag: bytes | None = None
        #: Payload bytes of that frame still to come.
        self._left = 0
        #: The payload so far of a frame that is not output.
        self._whole = bytearray()

    def feed(self, data: bytes | memoryview) -> list[Piece]:
        """What C{data} completes or carries, in order."""
        view = memoryview(data)
        pieces: list[Piece] = []
        at, size = 0, len(view)
        while at < size:
            if self._tag is None:
                at = self._readHeader(view, at, pieces)
                continue
            take = min(self._left, size - at)
            self._left -= take
            ends = self._left == 0
            if self._tag in OUTPUT_TAGS:
                pieces.append((self._tag, view[at : at + take], ends))
            else:
                self._whole += view[at : at + take]
                if ends:
                    pieces.append((self._tag, bytes(self._whole), True))
                    self._whole.clear()
            at += take
            if ends:
                self._tag = None
        return pieces

    def _readHeader(self, view: memoryview, at: int, pieces: list[Piece]) -> int:
        """Read the next header from C{view} at C{at}; where the rest starts."""
        header = self._header
        if not header and len(view) - at >= HEADER.size:
            tag, length = HEADER.unpack_from(view, at)
            at += HEADER.size
        else:
            taken = view[at : at + HEADER.size - len(header)]
            header += taken
            at += len(taken)
            if len(header) < HEADER.size:
                return at
            tag, length = HEADER.unpack(header)
            header.clear()
        if length > MAX_PAYLOAD:
            raise FrameError(f"a frame of {length} bytes (at most {MAX_PAYLOAD})")
        if length == 0:
            pieces.append((tag, b"", True))
        else:
            self._tag, self._left = tag, length
        return at

    @property
    def pending(self) -> bool:
        """Part of a frame was received, not all of it."""
        return self._tag is not None or bool(self._header)


class FrameParser:
    """
    Whole frames from bytes as they arrive: L{feed} some, get back the
    frames they complete as (tag, payload) pairs (L{FrameReader}'s pieces
    of each output frame joined).
    """

    def __init__(self) -> None:
        self._reader = FrameReader()
        self._output = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        """The frames completed by C{data}, in order."""
        frames = []
        for tag, payload, ends in self._reader.feed(data):
            if not ends:
                self._output += payload
            elif self._output:
                self._output += payload
                frames.append((tag, bytes(self._output)))
                self._output.clear()
            else:
                frames.append((tag, bytes(payload)))
        return frames

    @property
    def pending(self) -> bool:
        """Part of a frame was received, not all of it."""
        return self._reader.pending
