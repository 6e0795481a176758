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
    """

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body."""
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._event(block)

    def _event(self, block: bytes) -> None:
        name, data, eventId = "message", None, None
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.decode("utf-8", "replace")
            elif field == b"data":
                data = json.loads(value)
            elif field == b"id":
                eventId = value.decode("utf-8", "replace")
        if data is not None:
            self._sink(name, data, eventId)


def outputBytes(data: dict[str, str]) -> bytes:
    """The bytes of an output event's payload (C{text} or C{base64})."""
    if "text" in data:
        return data["text"].encode("utf-8")
    return base64.b64decode(data["base64"])
