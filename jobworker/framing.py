"""
The binary frame format of C{?stream=combined&format=frames}: both streams
of a job's output in order, at the speed of raw bytes. Pure: the server's
L{jobworker.server.frames} writes it, C{jw} reads it with L{FrameParser}.

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


class FrameParser:
    """
    Frames from bytes as they arrive: L{feed} some, get back the whole
    frames they complete as (tag, payload) pairs.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The frames completed by C{data}, in order."""
        buffer = self._buffer
        buffer += data
        frames = []
        start = 0
        size = HEADER.size
        while len(buffer) - start >= size:
            tag, length = HEADER.unpack_from(buffer, start)
            if length > MAX_PAYLOAD:
                raise FrameError(f"a frame of {length} bytes (at most {MAX_PAYLOAD})")
            end = start + size + length
            if end > len(buffer):
                break
            frames.append((tag, bytes(buffer[start + size : end])))
            start = end
        del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole frame yet."""
        return len(self._buffer)
