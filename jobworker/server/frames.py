"""
The response side of C{format=frames} (L{jobworker.framing}): a consumer
that frames both streams' runs, the truncations and the end.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IReactorTime,
)
from zope.interface import implementer

from ..framing import EVENT_TAGS, HEADER, HEARTBEAT_TAG, OUTPUT_TAGS
from .sse import HEARTBEAT


@implementer(IConsumer)
class FrameStream:
    """
    A consumer that frames both streams' output on its way to the
    response; the combined reader hands it each run with L{output}. A
    heartbeat frame goes out every C{HEARTBEAT} seconds of a followed
    stream so clients and proxies know it is alive.
    """

    def __init__(
        self, request: IConsumer, clock: IReactorTime, heartbeat: float = HEARTBEAT
    ) -> None:
        self._request = request
        self._clock = clock
        self._interval = heartbeat
        self._heartbeat: IDelayedCall | None = clock.callLater(heartbeat, self._beat)

    def _beat(self) -> None:
        self._request.write(HEADER.pack(HEARTBEAT_TAG, 0))
        self._heartbeat = self._clock.callLater(self._interval, self._beat)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        # Only the reader's empty flush writes here; output goes by output().
        if data:
            raise ValueError("a frame stream takes output by output()")
        self._request.write(b"")

    def output(self, index: int, data: bytes) -> None:
        """One run of stream C{index} (0 stdout, 1 stderr)."""
        self._request.write(HEADER.pack(OUTPUT_TAGS[index], len(data)) + data)

    def send(self, event: str, data: Any) -> None:
        """An event that is not output (C{truncated}, C{end}) as a JSON frame."""
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        self._request.write(HEADER.pack(EVENT_TAGS[event], len(body)) + body)

    def close(self) -> None:
        """Stop the heartbeat."""
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
