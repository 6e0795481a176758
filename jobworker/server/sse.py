"""Job output framed as Server-Sent Events: one event per chunk, resumable by id."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IReactorTime,
)
from zope.interface import implementer

from ..jobs.validation import MAX_INT64, boundedInteger

#: Seconds between heartbeat comments on an idle stream.
HEARTBEAT = 15.0


def payload(data: bytes) -> dict[str, str]:
    """C{{"text": ...}} for UTF-8 output, else C{{"base64": ...}}."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def frame(event: str, data: Any, eventId: str | None = None) -> bytes:
    """One SSE event; C{data} is sent as one line of JSON."""
    lines = []
    if eventId is not None:
        lines.append(f"id: {eventId}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def parseLastEventId(text: str, stream: str) -> int | None:
    """
    The offset to resume C{stream} from, given a C{Last-Event-ID}
    (C{<stream>:<offset>}, the offset just past the event's bytes), or None
    when it is not an id of this stream (then it is ignored, as a browser's
    EventSource never sends one).
    """
    name, _, offset = text.partition(":")
    if name != stream:
        return None
    return boundedInteger(offset, 0, MAX_INT64)


@implementer(IConsumer)
class HeartbeatConsumer:
    """
    A consumer in front of a log response that writes C{beat} every
    C{heartbeat} seconds, so proxies and clients know an idle followed
    stream is alive; L{close} stops it. The producer's registration passes
    through.
    """

    #: What one heartbeat writes.
    beat = b""

    def __init__(
        self, request: IConsumer, clock: IReactorTime, heartbeat: float = HEARTBEAT
    ) -> None:
        self._request = request
        self._clock = clock
        self._interval = heartbeat
        self._heartbeat: IDelayedCall | None = clock.callLater(heartbeat, self._beat)

    def _beat(self) -> None:
        self._request.write(self.beat)
        self._heartbeat = self._clock.callLater(self._interval, self._beat)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the heartbeat."""
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None


class EventStream(HeartbeatConsumer):
    """
    A consumer that frames raw output as SSE events on its way to the
    response: C{event: stdout|stderr}, C{id: <stream>:<offset after>}, a
    JSON payload saying whether the bytes are text or base64. A comment
    goes out every C{HEARTBEAT} seconds.
    """

    beat = b": heartbeat\n\n"

    def __init__(
        self,
        request: IConsumer,
        stream: str,
        offset: int,
        clock: IReactorTime,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        super().__init__(request, clock, heartbeat)
        self._stream = stream
        self._offset = offset

    def write(self, data: bytes) -> None:
        if not data:
            self._request.write(b"")
            return
        self._offset += len(data)
        self.output(self._stream, data, f"{self._stream}:{self._offset}")

    def output(self, stream: str, data: bytes, eventId: str) -> None:
        """One chunk of C{stream}'s output, with its event id."""
        self._request.write(frame(stream, payload(data), eventId))

    def send(self, event: str, data: Any) -> None:
        """An event that is not output (C{truncated}, C{end})."""
        self._request.write(frame(event, data))
