"""A job's stdin fed from the API: written with back-pressure, then closed."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProcessTransport, IPushProducer
from zope.interface import implementer

from ...errors import Conflict, PayloadTooLarge, TooManyRequests


@implementer(IPushProducer)
class StdinFeed:
    """
    The writing end of a job's stdin pipe (C{"stdin": true} jobs). Each
    L{write} hands bytes to the pipe's writer and fires once the writer's
    buffer is below its mark again. A write that comes while the buffer is
    over its mark is refused (429), whether the client waits for each
    answer or not (it may have hung up on the one still waiting): the
    server never holds more than one request's bytes and the writer's
    buffer (64 KiB) per job.

    @ivar written: bytes accepted so far.
    @ivar closed: the pipe is closed (by L{close}, or the job closed its end).
    """

    def __init__(self, maxBytes: int) -> None:
        self._maxBytes = maxBytes
        self._transport: IProcessTransport | None = None
        self._paused = False
        self._waiting: list[Deferred[None]] = []
        self.written = 0
        self.closed = False

    def attach(self, transport: IProcessTransport) -> None:
        """The job's process exists: feed its stdin pipe, as its producer."""
        self._transport = transport
        writer: Any = getattr(transport, "pipes", {}).get(0)
        if writer is not None:
            writer.registerProducer(self, True)

    # IPushProducer: the pipe's writer says when its buffer is full and empty.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._release()

    def stopProducing(self) -> None:
        # The job closed its end of the pipe (or exited): nothing more goes
        # in, and a write still waiting for room was not taken whole (it
        # was answered 200 "written", for bytes the job never got).
        self.closed = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(
                Conflict(
                    "the job's stdin closed (it exited, or closed it) before it "
                    "took all of this write"
                )
            )

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def write(self, data: bytes, eof: bool = False) -> Deferred[None]:
        """
        Send C{data} (then end of file if C{eof}); fires once the pipe can
        take more.

        @raise Conflict: stdin was closed already.
        @raise PayloadTooLarge: past the job's stdin cap.
        """
        if self.closed or self._transport is None:
            raise Conflict("the job's stdin is closed")
        if self.written + len(data) > self._maxBytes:
            raise PayloadTooLarge(
                f"a job's stdin takes at most {self._maxBytes} bytes "
                "(--max-stdin-bytes)"
            )
        if data and self._paused:
            # Taken, each body would stay in the writer's buffer until the
            # job reads: a client hanging up on each answer filled the
            # server's memory (attacker round 8).
            raise TooManyRequests(
                "the job has not read the last write to its stdin yet: send "
                "more once that write is answered"
            )
        if data:
            self._transport.writeToChild(0, data)
            self.written += len(data)
        if eof:
            self.close()
            return succeed(None)
        if not self._paused:
            return succeed(None)
        waiting: Deferred[None] = Deferred(self._forget)
        self._waiting.append(waiting)
        return waiting

    def _forget(self, waiting: Deferred[None]) -> None:
        """A waiting write's client went away: it is not answered later
        (firing it again would raise out of the pipe's writer)."""
        if waiting in self._waiting:
            self._waiting.remove(waiting)

    def close(self) -> None:
        """End of file for the job (what is buffered is written first)."""
        if not self.closed and self._transport is not None:
            self.closed = True
            self._transport.closeStdin()
        self._release()
