"""Log responses (raw, SSE, frames; one stream or combined), caps and drain."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ..auth.authenticator import Grant
from ..auth.permissions import User
from ..errors import (
    BadRequest,
    JobworkerError,
    ServiceUnavailable,
    TooManyRequests,
)
from ..framing import CONTENT_TYPE as FRAMES_TYPE
from ..jobs.combined import (
    STREAMS,
    CombinedReader,
    TurnBudget,
    combinedId,
    parseCombinedId,
)
from ..jobs.manager import JobManager
from ..jobs.queries import (
    parseBool,
    parseOffset,
    parseStream,
    parseTail,
)
from ..jobs.records import JobRecord, JobStatus
from ..jobs.spool import (
    SHORT_OF,
    FileProducer,
    OutputSource,
    OutputUnreadable,
    SpoolReader,
    tailOffsetSoon,
)
from .frames import FrameStream
from .peruser import PerUser
from .requests import (
    _arg,
)
from .sse import EventStream, frame, parseLastEventId

#: At shutdown, how long a follower's connection must have been quiet
#: before it is closed (time for its client's last request).
LINGER = 0.3

#: At shutdown, the log responses still sending are waited for while
#: their bytes move: until none has sent a byte for this many seconds...
DRAIN_QUIET = 5.0

#: ... and this many seconds at most in all (a follower reading a backlog
#: slowly, on a loaded machine, still gets it; a stalled one does not hold
#: the shutdown; systemd's C{TimeoutStopSec} in docs/ is 60).
DRAIN_LIMIT = 30.0

#: How often the drain looks at the bytes sent.
DRAIN_LOOK = 0.25


class _Revocable:
    """
    A log response let in on a L{Grant}: ended (L{LogStreams._revoke}) when
    a users reload takes the grant away or the token it came with expires.
    """

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        #: The response's work (L{LogStreams._serve}): cancelled to end it.
        self.work: Deferred[bytes] | None = None
        #: Why it was ended, once it was.
        self.revoked: JobworkerError | None = None

    def stop(self) -> None:
        """Nothing more to watch: the grant released (its expiry off)."""
        self.grant.release()


class LogStreams:
    """
    Every open log response: the caps (in all, per user), the readers that
    send a job's output, and the drain that lets each finish at shutdown.
    """

    log = Logger()

    def __init__(
        self,
        manager: JobManager,
        clock: IReactorTime,
        maxStreams: int = 1000,
        maxStreamsPerUser: int | None = None,
    ) -> None:
        self._manager = manager
        self._clock = clock
        #: The runs every combined reader together sends in a turn.
        self._turns = TurnBudget(clock)
        self._maxStreams = maxStreams
        #: One user may hold this many of the log streams (a quarter of them
        #: by default), so others can still follow their own jobs.
        self._streamsBy = PerUser(
            maxStreamsPerUser
            if maxStreamsPerUser is not None
            else max(1, maxStreams // 4),
            "log streams and long polls (?wait=) open",
        )
        self._streams: set[Deferred[None]] = set()
        #: The connection of each open log response (to close at shutdown),
        #: by the response's end; and each connection whose log responses
        #: ended, by itself, until it closes (one entry a connection: by
        #: response, a keep-alive connection's grew 1 KiB a request).
        self._streamChannels: dict[object, Any] = {}
        #: The job of each open log response (L{_outlives}).
        self._streamJobs: dict[Deferred[None], str] = {}
        #: Each open log response, by its end (what the drain watches).
        self._streamRequests: dict[Deferred[None], IRequest] = {}

    def __len__(self) -> int:
        """How many log responses are open."""
        return len(self._streams)

    async def serve(
        self,
        request: IRequest,
        user: User,
        record: JobRecord,
        grant: Grant | None = None,
        checked: Callable[[], object] | None = None,
    ) -> bytes:
        """
        The logs route, once the user may read this job's logs; C{checked}
        is told once the request's parameters are (a read refused was
        audited as made: session review 40). With the
        C{grant} it was let in on, the response ends (L{_revoked}) once the
        grant is withdrawn: a users reload removed its user, demoted them,
        changed the password it came with or revoked its token; or its
        token expired. Checked then only: the output's way out pays nothing.
        """
        if len(self._streams) >= self._maxStreams:
            raise TooManyRequests(
                f"{len(self._streams)} log streams are open, the most this server "
                "allows",
                retryAfter=1,
            )
        self._streamsBy.check(user.name)
        revocable = self._track(request, user.name, grant, record.id)
        if revocable is None:
            return await self._serve(request, record, checked)
        work = revocable.work = Deferred.fromCoroutine(
            self._serve(request, record, checked)
        )
        try:
            return await work
        except CancelledError:
            if revocable.revoked is None:
                raise  # the client went away, or the server stops
            return self._revoked(request, revocable.revoked)

    def holding(self, user: str) -> AbstractContextManager[None]:
        """
        While it lasts, a long poll (C{GET /jobs/ID?wait=}) of C{user}'s
        counts as one of the long responses one user may hold, with their
        log streams: a Reader's long polls on any running job, one a
        connection, held every connection the server takes (attacker round
        40).

        @raise TooManyRequests: at the cap.
        """
        return self._streamsBy.holding(user)

    def _revoked(self, request: IRequest, error: JobworkerError) -> bytes:
        """
        The end of a response whose grant was withdrawn (L{_revoke}). None
        of it sent yet (a follower of a queued job): the C{error}, as any
        request gets it. SSE: a C{revoked} event saying why (data: the
        error's JSON), then the end. Frames: the end without the job's
        C{x} frame, which a reader knows from the job's end. Raw: broken
        off, as when the output cannot be read: an end would pass for the
        whole output.
        """
        if not getattr(request, "startedWriting", True):
            raise error
        form = _format(request)
        if form == "sse":
            request.write(frame("revoked", error.body()))
        elif form == "raw":
            _cut(request)
            raise CancelledError(error.message)
        return b""

    async def _serve(
        self,
        request: IRequest,
        record: JobRecord,
        checked: Callable[[], object] | None = None,
    ) -> bytes:
        """L{serve}, the response tracked."""
        stream = parseStream(_arg(request, b"stream"))
        offset = parseOffset(_arg(request, b"offset"))
        tail = parseTail(_arg(request, b"tail"))
        form = _format(request)
        sse = form == "sse"
        follow = parseBool(_arg(request, b"follow"), "follow", default=sse)
        # (Every check before the wait for a queued job's start: a request
        # refused after it held a log stream's place until then: review
        # round 29.)
        if form == "frames" and stream != "combined":
            raise BadRequest("format=frames is for stream=combined")
        if stream == "combined" and tail is not None and offset:
            # (Each stream's tail is no point of the combined output: the
            # offset was counted from the tail's start: review round 31.)
            raise BadRequest(
                "tail and offset do not go together with stream=combined "
                "(each stream's last lines are no point of the combined "
                "output): give one of them"
            )
        if stream == "combined" and offset and not record.status.ended:
            why = _unorderedWhy(record, self._manager.order(record.id))
            if why is not None:
                raise BadRequest(
                    f"{why} has no fixed order until it ends: no offset with "
                    "stream=combined (resume by each stream's position: "
                    "Last-Event-ID, or format=frames)"
                )
        if checked is not None:
            checked()
        if follow and record.status is JobStatus.PENDING and not _headOnly(request):
            # A queued job has no output yet: follow it from its start.
            await self._manager.whenStarted(record.id)
            record = self._manager.record(record.id)
        if stream == "combined":
            return await self._combined(request, record, form, follow, offset, tail)
        spool = self._manager.output(record.id, stream)
        lastEventId = request.getHeader(b"last-event-id") if sse else None
        resume = (
            None
            if lastEventId is None
            else parseLastEventId(lastEventId.decode("utf-8", "replace"), stream)
        )
        if resume is not None:
            offset = resume
        elif tail is not None:
            # The last lines, but none before offset (if given).
            offset = max(offset, await self._tail(spool, tail))
        dropped = record.stdout_dropped if stream == "stdout" else record.stderr_dropped
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-job-status", record.status.value.encode("ascii"))
        request.setHeader(b"x-output-truncated", b"true" if dropped else b"false")
        request.setHeader(b"x-output-dropped", str(dropped).encode("ascii"))
        request.setHeader(b"x-output-offset", str(offset).encode("ascii"))
        if sse:
            return await self._events(request, record, stream, spool, offset, follow)
        request.setHeader(b"content-type", b"application/octet-stream")
        if not follow:
            length = max(0, spool.size - offset)
            request.setHeader(b"content-length", str(length).encode("ascii"))
        if _headOnly(request):
            return b""
        await self._send(
            SpoolReader(spool, IConsumer(request), offset, follow), request
        )
        return b""

    async def _events(
        self,
        request: IRequest,
        record: JobRecord,
        stream: str,
        spool: OutputSource,
        offset: int,
        follow: bool,
    ) -> bytes:
        """The logs route as Server-Sent Events, ending with an C{end} event."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if _headOnly(request):
            return b""
        final = self._final(record, follow)
        events = EventStream(IConsumer(request), stream, offset, self._clock)
        try:
            await self._send(SpoolReader(spool, events, offset, follow), request)
            await self._endEvents(events, final, (stream,))
        finally:
            events.close()
            _forget(final)
        return b""

    async def _combined(
        self,
        request: IRequest,
        record: JobRecord,
        form: str,
        follow: bool,
        offset: int,
        tail: int | None,
    ) -> bytes:
        """
        Both streams interleaved in arrival order: raw bytes, SSE events
        (C{stdout}/C{stderr}) whose ids C{combined:<stdout>:<stderr>} hold
        both offsets, so C{Last-Event-ID} resumes with no gap or repeat, or
        binary frames (L{jobworker.server.frames}), resumed the same way.
        C{offset} counts combined bytes; C{tail} starts each stream at its
        own last C{tail} lines.
        """
        streams = (
            self._manager.output(record.id, "stdout"),
            self._manager.output(record.id, "stderr"),
        )
        position = (0, 0)
        if tail is not None:
            position = (
                await self._tail(streams[0], tail),
                await self._tail(streams[1], tail),
            )
        order = self._manager.order(record.id)
        # A Slurm job keeps no order file: followed, its streams' growth is
        # sent as it is seen (jw follows it so on a terminal).
        unordered = record.executor == "slurm"
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-job-status", record.status.value.encode("ascii"))
        dropped = record.stdout_dropped + record.stderr_dropped
        request.setHeader(b"x-output-truncated", b"true" if dropped else b"false")
        request.setHeader(b"x-output-dropped", str(dropped).encode("ascii"))
        consumer = IConsumer(request)
        if form == "raw":
            request.setHeader(b"content-type", b"application/octet-stream")
            if tail is None:
                # (A tail starts each stream at its own place: no offset
                # of the combined output says where.)
                request.setHeader(b"x-output-offset", str(offset).encode("ascii"))
            if not follow:
                length = sum(
                    max(0, source.size - start)
                    for source, start in zip(streams, position, strict=True)
                )
                length = max(0, length - offset)
                request.setHeader(b"content-length", str(length).encode("ascii"))
            if _headOnly(request):
                return b""
            await self._send(
                CombinedReader(
                    streams,
                    order,
                    consumer,
                    lambda _, data: consumer.write(data),
                    position,
                    follow,
                    offset,
                    budget=self._turns,
                    unordered=unordered,
                ),
                request,
            )
            return b""
        lastEventId = request.getHeader(b"last-event-id")
        if lastEventId is not None:
            resumed = parseCombinedId(lastEventId.decode("utf-8", "replace"))
            if resumed is not None:
                position, offset = resumed, 0
        events: EventStream | FrameStream
        sink: Callable[[int, bytes], None]
        if form == "frames":
            request.setHeader(b"content-type", FRAMES_TYPE.encode("ascii"))
            if _headOnly(request):
                return b""
            framed = FrameStream(consumer, self._clock)

            def toFrames(index: int, data: bytes) -> None:
                framed.output(index, data, reader.position)

            events, sink = framed, toFrames
        else:
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            if _headOnly(request):
                return b""
            sse = EventStream(consumer, "combined", 0, self._clock)

            def toEvents(index: int, data: bytes) -> None:
                sse.output(STREAMS[index], data, combinedId(reader.position))

            events, sink = sse, toEvents

        reader = CombinedReader(
            streams,
            order,
            events,
            sink,
            position,
            follow,
            offset,
            budget=self._turns,
            unordered=unordered,
        )
        final = self._final(record, follow)
        try:
            if form == "frames" and offset == 0:
                # (With an offset in combined bytes, the start is known once
                # the order file is read: said with the first output.) Once
                # the files are open: a server short of descriptors has sent
                # nothing yet.
                self._open(reader, request)
                framed.startsAt(position)
            await self._send(reader, request)
            await self._endEvents(events, final, STREAMS)
        finally:
            events.close()
            _forget(final)
        return b""

    async def _tail(self, source: OutputSource, lines: int) -> int:
        """
        Where the last C{lines} lines of C{source} start.

        @raise ServiceUnavailable: its file cannot be read (nothing is sent
            yet: a clear error, not a 500).
        """
        try:
            return await tailOffsetSoon(self._clock, source.path, source.size, lines)
        except OSError as e:
            self.log.error(
                "cannot read {path} for a tail: {error}",
                path=source.path,
                error=e.strerror,
            )
            raise ServiceUnavailable(
                f"the job's output cannot be read now ({e.strerror})"
            ) from None

    def _final(
        self, record: JobRecord, follow: bool
    ) -> Deferred[JobRecord] | JobRecord | None:
        """
        The record an event stream ends with, asked for before it starts:
        the job's end, if followed; the record itself if it has ended; else
        none (a stream of a running job, not followed, has no end event).
        Never looked up after the output was sent: the job may have been
        deleted (or expired) meanwhile, and its end is known.
        """
        if follow:
            return self._manager.whenEnded(record.id)
        return record if record.status.ended else None

    async def _endEvents(
        self,
        events: EventStream | FrameStream,
        final: Deferred[JobRecord] | JobRecord | None,
        streams: tuple[str, ...],
    ) -> None:
        """C{truncated} events where output was dropped, then C{end}."""
        if final is None:
            return
        record = await final if isinstance(final, Deferred) else final
        for stream in streams:
            dropped = getattr(record, f"{stream}_dropped")
            if dropped:
                events.send("truncated", {"stream": stream, "dropped": dropped})
        events.send("end", record.toJSON())

    def _open(self, reader: FileProducer, request: IRequest) -> None:
        """
        C{reader}'s files opened before anything is sent: a server short of
        descriptors (or memory) for them answers 503, to ask again soon.
        """
        try:
            reader.open()
        except OutputUnreadable as e:
            if e.errno not in SHORT_OF:
                raise
            self.log.error("log response refused: {error}", error=e.strerror)
            # (The output's length, set for it, is not the error's.)
            request.responseHeaders.removeHeader(b"content-length")
            raise ServiceUnavailable(
                f"the server cannot open the job's output now ({e.strerror}): "
                "try again",
                retryAfter=1,
            ) from None
        try:
            reader.checkReadable()
        except OutputUnreadable as e:
            # Nothing sent yet: an answer (the connection was cut, which jw
            # took for a server down: fault round 30).
            self._unreadable(request, e)

    def _unreadable(self, request: IRequest, error: OutputUnreadable) -> NoReturn:
        """
        A job's output that cannot be read, nothing sent yet: 503, with the
        reason (the log has the file; the client is not told the server's
        paths: review round 30).
        """
        self.log.error(
            "cannot read a job's output: {error}", error=error.strerror or str(error)
        )
        why = os.strerror(error.errno) if error.errno else "shorter than recorded"
        request.responseHeaders.removeHeader(b"content-length")
        raise ServiceUnavailable(f"the job's output cannot be read now ({why})")

    async def _send(self, reader: FileProducer, request: IRequest) -> None:
        self._open(reader, request)
        try:
            await reader.start()
        except CancelledError:
            reader.stopProducing()
            raise
        except OutputUnreadable as e:
            why = e.strerror or str(e)
            if not getattr(request, "startedWriting", True):
                self._unreadable(request, e)
            # The headers (and maybe some bytes) are out: the only honest
            # end left is a broken one, so the client cannot take what it
            # got for the whole output.
            self.log.error("log response cut: {error}", error=why)
            _cut(request)
            raise CancelledError("the output cannot be read") from e

    def _track(
        self,
        request: IRequest,
        user: str,
        grant: Grant | None = None,
        jobId: str | None = None,
    ) -> _Revocable | None:
        """
        Remember an open log response until it is finished or lost; with
        the C{grant} it was let in on, watch that (users reloads), and end
        it when the token it came with expires: what L{serve} cancels then.
        """
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        self._streams.add(finished)
        self._streamRequests[finished] = request
        if jobId is not None:
            self._streamJobs[finished] = jobId
        self._streamsBy.add(user)
        channel = getattr(request, "channel", None)
        if channel is not None:
            self._streamChannels[finished] = channel
        revocable = None
        if grant is not None:
            watched = revocable = _Revocable(grant)
            grant.watch(lambda error: self._revoke(watched, error), self._clock)

        def done(result: object) -> None:
            if revocable is not None:
                revocable.stop()
            self._streams.discard(finished)
            self._streamRequests.pop(finished, None)
            self._streamJobs.pop(finished, None)
            self._streamsBy.release(user)
            whenClosed = getattr(channel, "whenClosed", None)
            self._streamChannels.pop(finished, None)
            if result is None and whenClosed is not None:
                if channel not in self._streamChannels:
                    # Its last bytes may still be on their way: keep it until
                    # its connection closes, so a shutdown can wait for them.
                    self._streamChannels[channel] = channel
                    whenClosed().addCallback(
                        lambda _: self._streamChannels.pop(channel, None)
                    )
            # (else the client went away: nothing to close at shutdown)

        finished.addBoth(done)
        return revocable

    def _revoke(self, revocable: _Revocable, error: JobworkerError) -> None:
        """
        C{revocable}'s grant was withdrawn (and audited): end its response,
        wherever it is (waiting for a queued job's start, sending, waiting
        for the job's end), as L{serve} says.
        """
        revocable.stop()
        grant = revocable.grant
        self.log.info(
            "log response of {user} from {client} ended: {reason}",
            user=grant.user,
            client=grant.client,
            reason=error.message,
            job=grant.fields.get("job"),
        )
        revocable.revoked = error
        if revocable.work is not None:
            revocable.work.cancel()

    def drain(self, timeout: float = 5.0) -> Deferred[None]:
        """
        At shutdown, after the jobs ended: let every open log response send
        its last bytes and its end (chunked terminator, SSE C{end} event),
        then close its connection and wait until it is closed, so the bytes
        have left the process before the reactor stops. Responses still
        sending are waited for while their bytes move (L{DRAIN_QUIET},
        L{DRAIN_LIMIT}); the closing after them is bounded by C{timeout}
        seconds.
        """
        outliving = [f for f in self._streams if self._outlives(f)]
        if outliving:
            # Their jobs run on (Slurm's), and nothing of them is sent any
            # more: cut at once, their clients resume against the next
            # server (each held the shutdown, and the state dir, for the
            # whole drain: Slurm user round 33).
            self.log.info(
                "shutdown: {count} log response(s) of jobs that outlive the "
                "server cut (their clients resume from where they are)",
                count=len(outliving),
            )
            for finished in outliving:
                request = self._streamRequests.get(finished)
                if request is not None:
                    _cut(request)
        channels = list({id(c): c for c in self._streamChannels.values()}.values())
        pending = [f for f in self._streams if f not in outliving]
        if not pending and not channels:
            return succeed(None)
        return Deferred.fromCoroutine(self._drain(pending, channels, timeout))

    def _outlives(self, finished: Deferred[None]) -> bool:
        """Whether the job of the log response C{finished} runs on after
        the server's jobs were ended at shutdown (a Slurm job does)."""
        jobId = self._streamJobs.get(finished)
        if jobId is None:
            return False
        try:
            return not self._manager.record(jobId).status.ended
        except Exception:
            return False

    async def _drain(
        self, pending: list[Deferred[None]], channels: list[Any], timeout: float
    ) -> None:
        await self._whileSending(pending)
        deadline = self._clock.seconds() + timeout

        async def bounded(waits: list[Deferred[Any]]) -> None:
            if not waits:
                return
            left = max(0.0, deadline - self._clock.seconds())
            both = DeferredList(waits, consumeErrors=True)
            await both.addTimeout(left, self._clock).addErrback(lambda _: None)

        # A client whose stream just ended may ask one more thing on the
        # same connection (jw asks for the job's final status): let each
        # connection fall quiet before closing it.
        while self._clock.seconds() < deadline and any(
            getattr(channel, "idleFor", lambda: float("inf"))() < LINGER
            for channel in channels
        ):
            await deferLater(self._clock, 0.05, lambda: None)
        closing = []
        for channel in channels:
            whenClosed = getattr(channel, "whenClosed", None)
            if whenClosed is None:
                continue
            closing.append(whenClosed())
            channel.loseConnection()
        await bounded(closing)

    async def _whileSending(self, pending: list[Deferred[None]]) -> None:
        """
        Wait for the C{pending} log responses to finish while any of them
        sends: until none has sent a byte for L{DRAIN_QUIET} seconds, or
        for L{DRAIN_LIMIT} seconds in all. (A fixed 5 s cut a follower a
        loaded machine had left megabytes behind: fault suite.)
        """
        now = started = movedAt = self._clock.seconds()
        sent = self._sent(pending)
        while not all(finished.called for finished in pending):
            if now - movedAt >= DRAIN_QUIET or now - started >= DRAIN_LIMIT:
                self.log.warn(
                    "shutdown: {count} log response(s) not finished after "
                    "{seconds:.1f}s (none sent a byte for {quiet:g}s, or "
                    "{limit:g}s passed) are cut",
                    quiet=DRAIN_QUIET,
                    limit=DRAIN_LIMIT,
                    count=sum(not finished.called for finished in pending),
                    seconds=now - started,
                )
                return
            await deferLater(self._clock, DRAIN_LOOK, lambda: None)
            now, before, sent = self._clock.seconds(), sent, self._sent(pending)
            if sent != before:
                movedAt = now

    def _sent(self, pending: list[Deferred[None]]) -> int:
        """The bytes the C{pending} responses have sent so far, and how many
        of them have finished (a finish is progress too)."""
        total = 0
        for finished in pending:
            request = self._streamRequests.get(finished)
            total += getattr(request, "sentLength", 0) if request else 1
        return total


def _format(request: IRequest) -> str:
    """
    C{raw}, C{sse} (asked by C{?format=sse} or C{Accept: text/event-stream})
    or C{frames}.
    """
    form = _arg(request, b"format")
    if form is not None:
        if form not in FORMATS:
            raise BadRequest("format must be raw, sse or frames")
        return form
    accept = request.getHeader(b"accept") or b""
    return "sse" if b"text/event-stream" in accept else "raw"


#: The formats of a log response.
FORMATS = ("raw", "sse", "frames")


def _forget(final: Deferred[JobRecord] | JobRecord | None) -> None:
    """A stream that ended before its job did (its client went away) no
    longer waits for the job's end: a client that reconnects for days
    would leave a waiter each time."""
    if isinstance(final, Deferred) and not final.called:
        final.addErrback(lambda _: None)
        final.cancel()


def _cut(request: IRequest) -> None:
    """Break a response off: its connection aborted, nothing more sent."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None:
        transport.abortConnection()


def _unorderedWhy(record: JobRecord, order: object) -> str | None:
    """
    What keeps a running job's combined output from a fixed order, said as
    the subject of a refusal, or None when its order is fixed.

    A Slurm job keeps no order file: a live follower gets its two files as
    they grow, a later reader in another order (session review 31). Past a
    switch its order file left out (full, or a write failed), a live reader
    places what no entry does as it sees it, a later one otherwise (output
    review 37). Either way an offset of one reader is no place in the next.
    """
    if record.executor == "slurm":
        return "a Slurm job's combined output"
    if getattr(order, "coarse", False):
        return (
            "this job's combined output (its order file is full, or could "
            "not be written)"
        )
    return None


def _headOnly(request: IRequest) -> bool:
    """A C{HEAD}: its headers are all it gets, at once (no body to wait
    for, however long the job may run)."""
    return bytes(request.method) == b"HEAD"
