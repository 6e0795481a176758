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

    A write may name the C{offset} in the job's stdin where its bytes
    begin: one sent again (its answer was lost with its connection, or did
    not come in the client's time) takes only what was not taken yet, so
    each byte reaches the job once.

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
        #: Closed by a write's end of file (not by the job), once it was.
        self._ended = False

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

    def write(
        self, data: bytes, eof: bool = False, offset: int | None = None
    ) -> Deferred[int]:
        """
        Send C{data} (then end of file if C{eof}); fires, with how many of
        its bytes were taken, once the pipe can take more. At an C{offset}
        (where C{data} begins in the job's stdin), bytes taken before are
        not taken again.

        @raise Conflict: stdin was closed already; the C{offset} is past
            what was taken (bytes before it never came).
        @raise PayloadTooLarge: past the job's stdin cap.
        """
        if offset is not None:
            if offset > self.written:
                raise Conflict(
                    f"stdin offset {offset} is past the {self.written} bytes the "
                    "job's stdin has taken: the bytes before it never came"
                )
            if self._ended and eof and offset + len(data) == self.written:
                return succeed(0)  # the write that closed it, sent again
            data = data[self.written - offset :]
        if self.closed or self._transport is None:
            raise Conflict("the job's stdin is closed")
        if self.written + len(data) > self._maxBytes:
            raise PayloadTooLarge(
                f"a job's stdin takes at most {self._maxBytes} bytes "
                "(--max-stdin-bytes)"
            )
        if self._paused and (data or (eof and self._waiting)):
            # Taken, each body would stay in the writer's buffer until the
            # job reads: a client hanging up on each answer filled the
            # server's memory (attacker round 8). An end of file while a
            # write waits too: closing, it answered that write "written"
            # for bytes the job may never read (review round 29).
            raise TooManyRequests(
                "the job has not read the last write to its stdin yet: send "
                "more once that write is answered"
            )
        if data:
            self._transport.writeToChild(0, data)
            self.written += len(data)
        if eof:
            self.close()
            self._ended = True
            return succeed(len(data))
        if not self._paused:
            return succeed(len(data))
        waiting: Deferred[None] = Deferred(self._forget)
        self._waiting.append(waiting)
        taken = len(data)
        return waiting.addCallback(lambda _: taken)

    def _forget(self, waiting: Deferred[Any]) -> None:
        """A waiting write's client went away: it is not answered later
        (firing it again would raise out of the pipe's writer)."""
        if waiting in self._waiting:
            self._waiting.remove(waiting)

    def close(self) -> None:
        """End of file for the job (what is buffered is written first)."""
        if not self.closed and self._transport is not None:
            self.closed = True
            writer = getattr(self._transport, "pipes", {}).get(0)
            unregister = getattr(writer, "unregisterProducer", None)
            if unregister is not None and getattr(writer, "producer", None) is self:
                # A writer whose buffer drains resumes a paused producer
                # instead of closing: the pipe was never closed, and the job
                # waited for input for ever (fault round 28b).
                unregister()
            self._transport.closeStdin()
        self._release()
