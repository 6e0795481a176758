"""
Following a job: its output as it comes, in the job's order; waiting for its
end. The same code runs over either client: the Twisted one
(L{jobworker.client.http}), where it waits on the reactor, and the
standard-library one (L{jobworker.client.quick}), where every call blocks and
the two raw streams are read by two threads (C{client.concurrently}).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..framing import EVENT_TAGS, OUTPUT_TAGS, POSITION_TAG, FrameReader
from .calls import ASK_AGAIN, MAX_TAIL, exitStatusOf
from .errors import ClientError
from .events import EventParser, outputBytes
from .failures import EXIT_TIMED_OUT, loginLapsed
from .readergone import watchedOutput
from .show import endLine, jsonLine
from .streams import Streams

#: The streams by index, as frames number them.
STREAMS = ("stdout", "stderr")

#: A L{JobworkerClient<jobworker.client.http.JobworkerClient>} or a
#: L{QuickClient<jobworker.client.quick.QuickClient>}: both have C{events},
#: C{logs}, C{job}, C{pause}, C{another} and C{concurrently}.
Client = Any

#: How often a follower reconnects after its stream broke off, pausing
#: 0.2 s longer each time, up to L{FOLLOW_PAUSE_MAX}: about 11 s in all,
#: what a server's restart takes (a crash: the job's end is read after it);
#: and for no longer than L{RESUME_FOR} seconds in all (attempts that time
#: out on a dead link take seconds each).
FOLLOW_RETRIES = 10
FOLLOW_PAUSE_MAX = 2.0
RESUME_FOR = 12.0

#: The statuses of a job that has not ended.
_LIVE = ("PENDING", "RUNNING")

#: Seconds each long poll of a job's end asks the server to wait at most.
LONG_POLL = 60.0


async def resuming(
    client: Client,
    attempt: Callable[[], Awaitable[None]],
    progress: Callable[[], object] = lambda: None,
) -> None:
    """
    Run C{attempt} until it completes; when the connection broke (no HTTP
    answer), run it again after a short, growing pause, up to
    L{FOLLOW_RETRIES} times in a row and for L{RESUME_FOR} seconds. A 429
    (the server's log streams are all taken) or a 503 (it cannot serve it
    now) is asked again the same way, after the pause its C{Retry-After}
    asks for. Each attempt resumes where
    the last one left; one that got somewhere (C{progress()} changed: a
    follow of days over a flaky link; or its stream held a while,
    L{_Answers}) starts a new count. A 401 (the token of the login kept
    expired under it) is asked again at once if the login was renewed
    (C{client.renewal}), up to L{RENEWALS} times in a row.
    """
    failures = renewals = 0
    brokeAt: float | None = None
    while True:
        before = progress()
        renewal = getattr(client, "renewal", None)
        sentWith = None if renewal is None else client.bearer()
        try:
            await attempt()
            return
        except ClientError as e:
            moved = progress() != before
            if moved:
                renewals = 0
            if e.status == UNAUTHORIZED and renewal is not None and renewals < RENEWALS:
                renewals += 1
                if await renewal.renew(client, sentWith):
                    continue  # at once, from where it was
            if e.status is not None and e.status not in ASK_AGAIN:
                raise
            now = time.monotonic()
            if moved or brokeAt is None:
                failures, brokeAt = 0, now
            if failures >= FOLLOW_RETRIES or now - brokeAt >= RESUME_FOR:
                raise
            asked = min(e.retryAfter or 0.0, RESUME_FOR)
        failures += 1
        await client.pause(max(min(0.2 * failures, FOLLOW_PAUSE_MAX), asked))


#: The status of a request whose credentials the server refused.
UNAUTHORIZED = 401

#: How many times in a row (nothing received between) a follow renews the
#: login kept, refused under it (L{Renewal<jobworker.client.session.Renewal>}),
#: before it gives up.
RENEWALS = 2


async def renewing(client: Client, call: Callable[[], Awaitable[Any]]) -> Any:
    """
    C{call()}'s answer, a request of a follow's: asked again once if the
    server refused the login kept (a 401) and it was renewed (L{resuming}).
    """
    renewal = getattr(client, "renewal", None)
    sentWith = None if renewal is None else client.bearer()
    try:
        return await call()
    except ClientError as e:
        if e.status != UNAUTHORIZED or renewal is None:
            raise
        if not await renewal.renew(client, sentWith):
            raise
    return await call()


class _Answers:
    """
    When the answers of a follow's attempts came (their C{onStatus}, which
    each answer tells), for L{resuming}: an attempt whose stream broke off
    L{RESUME_FOR} seconds or more after its answer had a stream that held,
    and its break is a new one, even with nothing received (a quiet job's
    follow, whose stalled stream is taken for broken once in a while: it
    gave up at the second break, however long after the first). One cut
    as soon as it is answered still counts, and ends the retries.
    """

    def __init__(self, onStatus: Callable[[str], None] | None = None) -> None:
        self._onStatus = onStatus
        self._answered: float | None = None
        self._held = 0

    def told(self, status: str) -> None:
        """An answer came (C{onStatus})."""
        self._answered = time.monotonic()
        if self._onStatus is not None:
            self._onStatus(status)

    def held(self) -> int:
        """
        How many streams held (asked as an attempt starts, and as it
        fails: C{resuming}'s progress).
        """
        answered, self._answered = self._answered, None
        if answered is not None and time.monotonic() - answered >= RESUME_FOR:
            self._held += 1
        return self._held


async def followCombined(
    client: Client,
    jobId: str,
    streams: Streams,
    follow: bool = True,
    tail: int | None = None,
    onStatus: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """
    Copy the job's stdout to ours and its stderr to ours, in the order the
    job wrote them (the server's C{combined} stream, as binary frames; as
    events from a server without frames), until it ends (C{follow}) or to
    the end of what is there. If the connection breaks, resume after the
    last byte received (no gap, no repeat). C{onStatus}: told the job's
    status as each answer comes (a queued job's, once it starts). A
    C{tail} not followed is the last C{tail} lines of the two streams
    together, as C{tail -n} of what jw shows (L{LastLines}): the server
    starts each stream at its own last C{tail} lines, which hold them
    unless a line of one stream began before the other's sent
    (L{LastLines.whole}); then it is asked again, one line more of each
    (L{serverTail}), which hold them.

    @return: the job's record from the end, or None without one.
    """
    if follow or tail is None:
        reader = await _readCombined(client, jobId, streams, follow, tail, onStatus)
    else:
        # Each stream's last lines first, the one more only if needed: it
        # was asked for always, and a line of hundreds of MB (a progress
        # bar drawn with \r) was downloaded and held to print "done" (new
        # user round 38).
        reader = await _readCombined(client, jobId, streams, False, tail, onStatus)
        if not reader.whole():
            reader = await _readCombined(
                client, jobId, streams, False, tail, onStatus, serverTail(tail)
            )
    reader.release()
    return reader.end


async def _readCombined(
    client: Client,
    jobId: str,
    streams: Streams,
    follow: bool,
    tail: int | None,
    onStatus: Callable[[str], None] | None,
    asked: int | None = None,
) -> _CombinedFollower:
    """
    The combined stream of L{followCombined} read to its end: its reader.
    Not followed, the output is held for the last C{tail} lines; the server
    is asked for C{asked} lines of each stream (C{tail} by default).
    """
    reader = _CombinedFollower(streams, None if follow else tail)
    answers = _Answers(onStatus)
    if asked is None:
        asked = tail

    async def attempt() -> None:
        await stream()
        if follow and reader.end is None and await _live(client, jobId):
            # Ended with no end by a server that withdrew its grant (the
            # token expired, the user changed): cut, and resumed (a 401,
            # then, is a login to renew). It was read as the job's end, the
            # job still running: exit 255 (new user round 39).
            raise ClientError("the output stream ended before the job")

    async def stream() -> None:
        if reader.frames:
            parser = FrameReader()

            def feed(data: bytes) -> None:
                try:
                    # Output is written piece by piece as it comes (no copy).
                    for tag, payload, _ in parser.feed(data):
                        reader.frame(tag, payload)
                except (ValueError, KeyError, TypeError) as e:
                    # FrameError, or JSON that is not what a frame holds.
                    raise ClientError(f"the output stream is malformed: {e}") from None

            try:
                await client.events(
                    jobId,
                    feed,
                    "combined",
                    follow,
                    asked,
                    lastEventId=reader.lastId,
                    frames=True,
                    onStatus=answers.told,
                )
                return
            except ClientError as e:
                if e.status != 400 or reader.lastId is not None:
                    raise
                reader.frames = False  # a server from before frames
        events = EventParser(reader.event)
        await client.events(
            jobId,
            events.feed,
            "combined",
            follow,
            asked,
            lastEventId=reader.lastId,
            onStatus=answers.told,
        )

    await resuming(client, attempt, lambda: (reader.lastId, answers.held()))
    return reader


async def _live(client: Client, jobId: str) -> bool:
    """Has the job not ended yet (its record says)?"""
    job = await client.job(jobId)
    return job.get("status") in _LIVE


class LastLines:
    """
    The last C{count} lines of a job's two streams together, held until
    L{release}: the last lines of what jw shows, as C{tail -n} of it. A
    line begins at the start and after each newline of either stream, in
    the order shown: a line of one stream cut by the other's output ends
    where it is shown to end (stdout's C{Downloading...} then stderr's
    C{warning}, then stdout's C{done}: its last line is C{done}; it was
    C{warning}, stdout's line taken to begin first: new user round 37). A
    last line without its newline counts, as C{tail -n} counts it. What
    cannot be kept any more is let go as it comes.

    The server's tail of the two starts each stream at its own last lines:
    what jw sees is all there was from where both streams have begun (each
    at its first byte sent), and the lines kept are the last ones if they
    begin there or after (L{whole}). One line more of each (L{serverTail})
    always holds them.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        #: (stream index, bytes), the first numbered L{_first}.
        self._pieces: deque[tuple[int, bytes]] = deque()
        self._first = 0
        #: Where the lines kept begin: (piece number, offset).
        self._starts: deque[tuple[int, int]] = deque()
        #: Does the next byte, of either stream, begin a line?
        self._atStart = True
        #: The streams whose bytes before those sent were left out, and
        #: none of whose bytes came yet (None: not known, L{startsAt}).
        self._unseen: set[int] | None = None
        #: Did the server leave out any stream's first bytes?
        self._cut = False
        #: Where the last of those streams began: all was sent from there.
        self._allSent = (0, 0)

    def startsAt(self, offsets: Sequence[int]) -> None:
        """Where in each stream the bytes sent begin (the server's position)."""
        if self._unseen is None:
            self._unseen = {index for index, at in enumerate(offsets) if at > 0}
            self._cut = bool(self._unseen)

    def add(self, index: int, data: bytes | memoryview) -> None:
        """The next C{data} of stream C{index} (0: stdout, 1: stderr)."""
        data = bytes(data)
        if not data:
            return
        number = self._first + len(self._pieces)
        self._pieces.append((index, data))
        if self._unseen and index in self._unseen:
            self._unseen.discard(index)
            self._allSent = (number, 0)
        if self._atStart:
            self._starts.append((number, 0))
        end = data.find(b"\n")
        while 0 <= end < len(data) - 1:
            self._starts.append((number, end + 1))
            end = data.find(b"\n", end + 1)
        self._atStart = data.endswith(b"\n")
        while len(self._starts) > self._count:
            self._starts.popleft()
        # Pieces before the first line kept are no longer needed.
        keepFrom = self._starts[0][0] if self._starts else number + 1
        while self._first < keepFrom:
            self._pieces.popleft()
            self._first += 1

    def whole(self) -> bool:
        """
        Are the lines kept surely the last C{count}? Yes if nothing was
        left out, or if they begin where all was sent from (each stream
        begun) or after: a line begins there only after a newline (of the
        stream before it, sent, or of the one left out before its tail).
        Not known without the server's position (an older one's events).
        """
        if self._count == 0 or (self._unseen is not None and not self._cut):
            return True
        if self._unseen is None or self._unseen:
            return False
        return len(self._starts) == self._count and self._starts[0] >= self._allSent

    def release(self, writers: Sequence[Callable[[bytes], object]]) -> None:
        """Write the lines kept, each stream's to its writer, in order."""
        first, offset = self._starts[0] if self._starts else (self._first, 0)
        for number, (index, data) in enumerate(self._pieces, self._first):
            if number >= first:
                writers[index](data[offset:] if number == first else data)
        self._pieces.clear()
        self._starts.clear()


def serverTail(count: int | None) -> int | None:
    """
    The lines of each stream to ask the server for, for the last C{count}
    lines of the two together when its last C{count} of each did not
    surely hold them (L{LastLines.whole}): one more than C{count}. The
    server starts each stream at its own last lines; a line of one stream
    begun before the other's first byte sent may have begun after a line
    of the other not sent (C{xyz} on stdout, then C{e1} and C{e2} on
    stderr: the last line is C{e2}, and stdout's tail of 1 began the
    output with C{xyz}). With one line more of each, the last C{count}
    begin after the first byte of both.
    """
    return None if count is None else min(count + 1, MAX_TAIL)


class _CombinedFollower:
    """
    Where a combined follow is: what it wrote of each stream, the end. With
    C{tail}, the output is held and only its last C{tail} lines written at
    the end (L{release}), after them what was said of it.
    """

    def __init__(self, streams: Streams, tail: int | None = None) -> None:
        self._streams = streams
        self._shown = [streams.writer(name) for name in STREAMS]
        self._writers = self._shown
        self._last: LastLines | None = None
        self._held: list[dict[str, Any]] = []
        if tail is not None:
            self._last = LastLines(tail)
            self._writers = [functools.partial(self._last.add, i) for i in (0, 1)]
        self.frames = True
        #: The id to resume after (None: nothing received yet).
        self.lastId: str | None = None
        self._position = [0, 0]
        self.end: dict[str, Any] | None = None

    def frame(self, tag: bytes, payload: bytes | memoryview) -> None:
        if tag in OUTPUT_TAGS:
            index = OUTPUT_TAGS.index(tag)
            self._writers[index](payload)
            self._position[index] += len(payload)
            self.lastId = "combined:{}:{}".format(*self._position)
            return
        payload = bytes(payload)  # events come whole, as bytes: no copy
        if tag == POSITION_TAG:
            start = json.loads(payload)
            self._position = [int(start["stdout"]), int(start["stderr"])]
            if self._last is not None:
                self._last.startsAt(self._position)  # (the first one only)
            # Resumed from here if cut before the next output (a tail asked
            # again would skip what came meanwhile).
            self.lastId = "combined:{}:{}".format(*self._position)
        elif tag == EVENT_TAGS["truncated"]:
            self._dropped(json.loads(payload))
        elif tag == EVENT_TAGS["end"]:
            self.end = json.loads(payload)

    def event(self, event: str, data: Any, eventId: str | None) -> None:
        if event in STREAMS:
            self._writers[STREAMS.index(event)](outputBytes(data))
            self.lastId = eventId
        elif event == "truncated":
            self._dropped(data)
        elif event == "end":
            self.end = data

    def _dropped(self, data: dict[str, Any]) -> None:
        if self._last is not None:
            self._held.append(data)  # said after the output held
            return
        sayDropped(self._streams, data.get("stream"), data.get("dropped"))

    def whole(self) -> bool:
        """Is the output held surely a tail's last lines (L{LastLines.whole})?"""
        return self._last is None or self._last.whole()

    def release(self) -> None:
        """The output held (a tail's last lines), then what was said of it."""
        if self._last is None:
            return
        self._last.release(self._shown)
        self._last = None
        for data in self._held:
            self._dropped(data)


def sayDropped(streams: Streams, stream: object, dropped: object) -> None:
    """
    The one line that says output of the job's C{stream} was dropped at
    the server's C{--max-log-bytes}: on every path that shows its output,
    after that output (the exit status stays the job's).
    """
    streams.say(
        f"jw: {bytesOf(dropped)} of the job's {stream} "
        f"{'was' if dropped == 1 else 'were'} dropped (the server's output cap)"
    )


def bytesOf(count: object) -> str:
    """C{count} bytes in words: C{1 byte}, C{5 bytes}."""
    return "1 byte" if count == 1 else f"{count} bytes"


def sayTruncated(
    job: dict[str, Any], streams: Streams, names: tuple[str, ...] = STREAMS
) -> None:
    """
    L{sayDropped} for each of C{names} that the job's record (an ended
    job's: its final counts) says lost bytes at the cap: for the paths that
    read raw streams, whose bodies cannot say it (C{X-Output-Truncated} is
    as of the request, before a follow's output).
    """
    for name in names:
        dropped = job.get(f"{name}_dropped")
        if dropped:
            sayDropped(streams, name, dropped)
    sayLost(job, streams)


def sayLost(job: dict[str, Any] | None, streams: Streams) -> None:
    """
    The one line that says the server could not write some of the job's
    output (C{output_lost}: its disk full or failing): a follow ended with
    exit 0 and said nothing of it.
    """
    lost = job.get("output_lost") if job else None
    if lost:
        streams.say(
            f"jw: {bytesOf(lost)} of the job's output could not be written on the "
            "server (its disk was full or failing): they are not in this output"
        )


async def followOutput(
    client: Client,
    jobId: str,
    streams: Streams,
    follow: bool = True,
    tail: int | None = None,
    onStatus: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """
    The job's stdout to ours and its stderr to ours: in the job's order
    (L{followCombined}) when both of ours go to one place (a terminal,
    C{2>&1}), where order shows; else each stream on its own, raw, which is
    faster (no framing), and no one can tell the order apart. Either way,
    output dropped at the server's cap is said (L{sayDropped}) once the
    job has ended. C{onStatus}: told the job's status as each answer (of
    stdout's, when apart) comes: a job still in the queue is answered once
    it starts.

    @return: the job's final record if it came with the output or was read
        after it (raw streams: to say what was dropped), else None.
    """
    if follow:
        watchReader(client, streams)
    if not follow or streams.sharedDestination():
        ended = await followCombined(client, jobId, streams, follow, tail, onStatus)
        sayLost(ended, streams)
        return ended

    def reader(
        name: str, told: Callable[[str], None] | None = None
    ) -> Callable[[Client], Awaitable[None]]:
        write = streams.writer(name)
        return lambda each: followStream(
            each, jobId, name, write, tail=tail, onStatus=told
        )

    # One of the two answers tells the status: each comes at the start.
    # The record of the job's end is asked for meanwhile, as it ends: a job
    # deleted (or expired) while its streams are still read would have none
    # after them.
    end = _EndWatch(jobId)
    await client.concurrently([reader("stdout", onStatus), reader("stderr"), end.watch])
    # Both streams are at their end: the job has ended, and its record
    # holds the final counts (the caller needs it anyway, for its end).
    final = (
        end.record
        if end.record is not None
        else await renewing(client, lambda: client.job(jobId))
    )
    sayTruncated(final, streams)
    return final


def watchReader(client: Client, streams: Streams) -> None:
    """
    A follow to our stdout, a pipe or a socket, ends as soon as its reader
    has gone (C{| grep -m1 ready}), as C{tail -f} does, not at the job's
    next write, hours later maybe (new user round 40): the client's
    C{watchReader}, where it has one (the standard library's: the one jw
    follows on).
    """
    watch = getattr(client, "watchReader", None)
    fd = streams.outputFd()
    if watch is not None and fd is not None and watchedOutput(fd):
        watch(fd)


class _EndWatch:
    """
    The record of a job's end, long-polled while its raw streams are read
    (L{pollEnd}): what a follow of the two apart ends with, even if the
    job is deleted before they are read to their end. None if it could not
    be had (the follow reads it after the streams then, as it did).
    """

    def __init__(self, jobId: str) -> None:
        self._jobId = jobId
        self.record: dict[str, Any] | None = None

    async def watch(self, client: Client) -> None:
        try:
            self.record = await pollEnd(client, self._jobId)
        except ClientError:
            pass  # the streams decide; the record is asked for after them


async def readStream(
    client: Client,
    jobId: str,
    stream: str,
    streams: Streams,
    offset: int = 0,
    tail: int | None = None,
    follow: bool = False,
    onStatus: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """
    One stream of the job, raw, to our stdout (C{jw logs --stdout},
    C{--stderr}, C{--offset}): to its end, or with C{follow} until the job
    ends (L{followStream}); then, on stderr, what the server's cap dropped
    of it (L{sayTruncated}).

    @return: the job's record: with C{follow}, its final one (long-polled
        while the stream is read, L{_EndWatch}); else the one read before
        the output (what is read is what there was then). Either way a job
        deleted while its output is sent still has it.
    @param onStatus: told the job's status as each answer of a follow comes.
    """
    write = streams.writer("stdout")
    if follow:
        watchReader(client, streams)
        end = _EndWatch(jobId)

        async def read(each: Client) -> None:
            await followStream(each, jobId, stream, write, offset, tail, onStatus)

        await client.concurrently([read, end.watch])
        job = (
            end.record
            if end.record is not None
            else await renewing(client, lambda: client.job(jobId))
        )
    else:
        job = await client.job(jobId)
        await client.logs(jobId, write, stream, offset, tail=tail)
    sayTruncated(job, streams, (stream,))
    return job


async def followStream(
    client: Client,
    jobId: str,
    stream: str,
    write: Callable[[bytes], None],
    offset: int = 0,
    tail: int | None = None,
    onStatus: Callable[[str], None] | None = None,
) -> None:
    """
    Copy one stream to C{write} (raw bytes) until the job ends; if the
    connection breaks, reconnect from the byte after the last one received.
    C{onStatus}: told the job's status as each answer comes.
    """
    position = offset
    answers = _Answers(onStatus)

    def sink(data: bytes) -> None:
        nonlocal position
        write(data)
        position += len(data)

    def started(start: int) -> None:
        # Where the server began (it picks the start of a tail): from then on
        # a reconnection resumes by absolute offset.
        nonlocal position, tail
        position = start
        tail = None

    async def attempt() -> None:
        await client.logs(
            jobId,
            sink,
            stream,
            position,
            follow=True,
            tail=tail,
            onStart=started,
            onStatus=answers.told,
        )

    await resuming(client, attempt, lambda: (position, answers.held()))


async def pollEnd(
    client: Client,
    jobId: str,
    until: float | None = None,
    onStatus: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """
    Long-poll the job until it ends: its final record; None if C{until}
    (on the client's clock) passes first. A poll whose connection broke is
    asked again as a follow resumes (L{resuming}). C{onStatus}: told the
    job's status as each answer comes.
    """
    clock = client.reactor
    job: dict[str, Any] = {}
    wait = asked = 0.0

    async def attempt() -> None:
        nonlocal job, wait, asked
        left = LONG_POLL if until is None else until - clock.seconds()
        wait = max(0.0, min(LONG_POLL, left))
        asked = clock.seconds()
        job = await client.job(jobId, wait=wait)
        if onStatus is not None:
            onStatus(job["status"])

    while True:
        await resuming(client, attempt)
        if job["status"] not in _LIVE:
            return job
        if until is not None and clock.seconds() >= until:
            return None
        # A server that answers "still running" before the wait is over
        # (an old one, or a record it cannot wait on) must not make this a
        # busy loop. (A clock stepped back meanwhile: no longer than that.)
        early = min(wait, 1.0) - max(0.0, clock.seconds() - asked)
        if early > 0:
            await client.pause(early)


#: Seconds before a job's end is long-polled again, once a round of long
#: polls gave up (L{watchEnd}).
WATCH_AGAIN = 5.0


async def watchEnd(client: Client, jobId: str) -> dict[str, Any]:
    """
    The job's final record, long-polled (L{pollEnd}) through an outage of
    any length: a round whose resumptions all failed (no connection, no
    answer, a 429 or 503) is begun again L{WATCH_AGAIN} seconds later, for
    what waits on the job's end has nothing else to end its wait (C{jw
    exec -i}'s stdin, open with nothing written). Another refusal (the job
    deleted, the login refused) fails it.
    """
    while True:
        try:
            job = await pollEnd(client, jobId)
        except ClientError as e:
            if e.status is not None and e.status not in ASK_AGAIN:
                raise
            await client.pause(WATCH_AGAIN)
            continue
        assert job is not None  # (no deadline)
        return job


async def waitFor(client: Client, options: argparse.Namespace, streams: Streams) -> int:
    """
    Long-poll the job until it ends (or the timeout passes): its status.
    Its status is asked for first, with no wait (a poll that ends at once,
    resumed as any): the long poll's first answer comes only as the job
    ends, and a login that ran out before it (a 401) was said as itself,
    exit 1, the job's status not known, where C{jw logs -f} and C{jw exec
    -f} say it is still running, exit 125 (new user round 41).
    """
    deadline = (
        None if options.timeout is None else client.reactor.seconds() + options.timeout
    )
    told: list[str] = []
    try:
        job = await pollEnd(client, options.id, client.reactor.seconds(), told.append)
        if job is None:
            job = await pollEnd(client, options.id, deadline, told.append)
    except ClientError as e:
        raise loginLapsed(options.id, e, told[-1] if told else None, client) from None
    if job is None:
        # As it is now (PENDING or RUNNING): said, and the one document
        # --json promises.
        now = await client.job(options.id)
        streams.say(f"jw: job {options.id} has not ended ({now['status']})")
        if options.json:
            streams.show(jsonLine(now))
        return EXIT_TIMED_OUT
    line = endLine(job)
    if line is not None:
        streams.say(line)
    if options.json:
        streams.show(jsonLine(job))
    return exitStatusOf(job)
