"""Server-Sent Events as C{jw} reads them: the log stream's events, decoded."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

#: What one event hands on: its name, its decoded JSON data, its id (or None).
EventSink = Callable[[str, Any, "str | None"], None]


class EventParser:
    """
    Reads a C{text/event-stream} body in chunks as they arrive and calls
    C{sink(event, data, id)} for each complete event (comments, the
    heartbeats, are skipped). The data of jobworker's events is one line of
    JSON.

    An event may come in many chunks (a large one in 16 KiB TLS records):
    its pieces are kept apart and joined once it is complete, and each
    chunk is searched once for the blank line that ends an event.
    """

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._pending: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body."""
        start = 0
        if self._pending:
            if self._pending[-1].endswith(b"\n") and chunk.startswith(b"\n"):
                # The blank line straddles the two chunks.
                self._pending[-1] = self._pending[-1][:-1]
                start = 1
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._pending.append(chunk)
                    return
                self._pending.append(chunk[:end])
                start = end + 2
            block = b"".join(self._pending)
            self._pending = []
            self._event(block)
        while True:
            end = chunk.find(b"\n\n", start)
            if end < 0:
                break
            self._event(chunk[start:end])
            start = end + 2
        if start < len(chunk):
            self._pending.append(chunk[start:] if start else chunk)

    def _event(self, block: bytes) -> None:
        name, data, eventId = "message", None, None
        position, size = 0, len(block)
        while position < size:
            end = block.find(b"\n", position)
            if end < 0:
                end = size
            if block.startswith(b"data:", position):
                value = position + 5
                if block.startswith(b" ", value):
                    value += 1
                data = json.loads(block[value:end])
            elif not block.startswith(b":", position):
                field, _, text = block[position:end].partition(b":")
                text = text[1:] if text.startswith(b" ") else text
                if field == b"event":
                    name = text.decode("utf-8", "replace")
                elif field == b"id":
                    eventId = text.decode("utf-8", "replace")
            position = end + 1
        if data is not None:
            self._sink(name, data, eventId)


def outputBytes(data: dict[str, str]) -> bytes:
    """The bytes of an output event's payload (C{text} or C{base64})."""
    if "text" in data:
        return data["text"].encode("utf-8")
    return base64.b64decode(data["base64"])
