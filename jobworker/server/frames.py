"""
The response side of C{format=frames} (L{jobworker.framing}): a consumer
that frames both streams' runs, the truncations and the end.
"""

from __future__ import annotations

import json
from typing import Any

from ..framing import EVENT_TAGS, HEADER, HEARTBEAT_TAG, OUTPUT_TAGS
from .sse import HeartbeatConsumer


class FrameStream(HeartbeatConsumer):
    """
    A consumer that frames both streams' output on its way to the
    response; the combined reader hands it each run with L{output}. An
    empty heartbeat frame goes out every C{HEARTBEAT} seconds.
    """

    beat = HEADER.pack(HEARTBEAT_TAG, 0)
    _positioned = False

    def write(self, data: bytes) -> None:
        # Only the reader's empty flush writes here; output goes by output().
        if data:
            raise ValueError("a frame stream takes output by output()")
        self._request.write(b"")

    def startsAt(self, position: tuple[int, int] | list[int]) -> None:
        """
        Say at once where the output starts (C{position}: the offsets in
        stdout and stderr), before any of it: a follow cut before the job's
        next byte resumes from there (else it had nothing to resume from,
        asked for its tail again, and lost what came meanwhile).
        """
        if not self._positioned:
            self._positioned = True
            self.send("position", {"stdout": position[0], "stderr": position[1]})

    def output(self, index: int, data: bytes, after: list[int]) -> None:
        """
        One run of stream C{index} (0 stdout, 1 stderr), which ends at the
        offsets C{after}; before the first, where the output starts (a
        tail or an offset starts it where only the server knows).
        """
        if not self._positioned:
            self._positioned = True
            start = list(after)
            start[index] -= len(data)
            self.send("position", {"stdout": start[0], "stderr": start[1]})
        self._request.write(HEADER.pack(OUTPUT_TAGS[index], len(data)) + data)

    def send(self, event: str, data: Any) -> None:
        """An event that is not output (C{truncated}, C{end}) as a JSON frame."""
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        self._request.write(HEADER.pack(EVENT_TAGS[event], len(body)) + body)
