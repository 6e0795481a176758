"""
A job's stdin fed from the API, when the job never takes it (fault round
6b): a write still waiting for the pipe when the job closed it (it exited)
was answered 200 "written", for bytes the job never got.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import treq
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    gatherResults,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.calls import errorFor
from jobworker.client.errors import ClientError
from jobworker.client.streams import Streams
from jobworker.client.verbs import InputNotSent, feedStdin, sayInputLeft
from jobworker.errors import Conflict, TooManyRequests
from jobworker.executors.local.stdin import StdinFeed

from .support import LiveServer, sleep
from .test_integration import call


class UnreadStdinTests(TestCase):
    timeout = 60

    async def test_writeTheJobNeverTookIsRefused(self) -> None:
        """
        A job that never reads (sleep 1), fed three writes of 60,000 bytes
        at once: more than the pipe and the server's buffer hold, so one
        waits for room, and gets 409 once the job has exited, not 200.
        """
        server = LiveServer(self)
        job = await server.createJob("sleep", "1", stdin=True)

        async def write() -> tuple[int, dict[str, object]]:
            response, body = await call(
                server,
                "POST",
                f"/jobs/{job['id']}/stdin",
                raw=b"x" * 60000,
                contentType=b"application/octet-stream",
            )
            return response.code, json.loads(body)

        answers = await gatherResults([ensureDeferred(write()) for _ in range(3)])
        codes = sorted(code for code, _ in answers)
        self.assertIn(409, codes, answers)
        self.assertEqual(set(codes), {200, 409}, answers)
        refused = [body["error"] for code, body in answers if code == 409]
        self.assertTrue(
            any("before it took" in str(error) for error in refused), answers
        )


class HeldStdinTests(TestCase):
    """
    Attacker round 8: a client that hung up on each stdin write while the
    job did not read had every body kept in the server's memory (3,225
    writes of 64 KiB in 20 s: 200 MiB more, held after the job ended).
    """

    timeout = 60

    async def test_writeWhileOneWaitsRefused(self) -> None:
        """
        A job that never reads: writes until one waits for room; the next,
        sent while it waits, is 429 at once and nothing of it is kept (it
        was taken into the writer's buffer and waited too).
        """
        server = LiveServer(self)
        job = await server.createJob("sleep", "600", stdin=True)
        path = f"/jobs/{job['id']}/stdin"

        def write() -> Deferred[tuple[Any, bytes]]:
            return ensureDeferred(
                call(
                    server,
                    "POST",
                    path,
                    raw=b"x" * 60000,
                    contentType=b"application/octet-stream",
                )
            )

        # Writes of 60,000 bytes, each given 0.2 s to be answered: once one
        # is not (the pipe and the writer's buffer are full), the next is
        # refused at once. (A slow answer that was not waiting is taken for
        # one: the next write is then answered 200, and the loop goes on.)
        pending: list[Deferred[tuple[Any, bytes]]] = []
        refused = None
        for _ in range(12):
            pending.append(write())
            await sleep(0.2)
            done = pending[-1]
            if done.called and done.result[0].code == 429:
                refused = done.result
                break
        self.assertIsNotNone(refused, "no write was refused")
        response, body = refused  # type: ignore[misc]
        self.assertIn("has not read the last write", json.loads(body)["error"])
        self.assertTrue(response.headers.hasHeader(b"retry-after"))
        waiting = [d for d in pending if not d.called]
        self.assertEqual(len(waiting), 1, "one write waits, and only one")
        stopped = await server.request("POST", f"/jobs/{job['id']}/stop")
        await treq.content(stopped)
        response, body = await waiting[0]
        self.assertEqual(response.code, 409, body)
        for d in pending[:-1]:
            if d is not waiting[0]:
                self.assertEqual((await d)[0].code, 200)


class FeedTests(SynchronousTestCase):
    """L{StdinFeed} alone, its pipe writer a fake."""

    def setUp(self) -> None:
        self.sent: list[bytes] = []
        writer = Writer()
        transport = Transport(writer, self.sent)
        self.feed = StdinFeed(1 << 20)
        self.feed.attach(transport)  # type: ignore[arg-type]
        self.assertIs(writer.producer, self.feed)

    def test_cancelledWaitForgotten(self) -> None:
        """Waiting writes whose clients went away (Klein cancels them) are
        forgotten: empty writes, each hung up on, piled up for as long as
        the job did not read."""
        self.successResultOf(self.feed.write(b"a"))
        self.feed.pauseProducing()
        for _ in range(100):
            gone = self.feed.write(b"")
            gone.cancel()
            self.failureResultOf(gone, CancelledError)
        self.assertEqual(self.feed._waiting, [])
        later = self.feed.write(b"")
        self.feed.resumeProducing()
        self.successResultOf(later)

    def test_bytesWhilePausedRefused(self) -> None:
        """Bytes sent while the writer's buffer is over its mark are refused,
        not kept; an end of file alone is taken."""
        self.feed.pauseProducing()
        with self.assertRaises(TooManyRequests):
            self.feed.write(b"more")
        self.assertEqual((self.sent, self.feed.written), ([], 0))
        self.successResultOf(self.feed.write(b"", eof=True))
        self.assertTrue(self.feed.closed)


class EndWhileAWriteWaitsTests(SynchronousTestCase):
    """
    An end of file while a write waits for the job to read: it was taken,
    and its close answered the waiting write "written" for bytes still in
    the server's buffer, which a job exiting without reading never got
    (review round 29). It is refused as any write is then (429).
    """

    def setUp(self) -> None:
        self.sent: list[bytes] = []
        transport = Transport(Writer(), self.sent)
        self.feed = StdinFeed(1 << 20)
        self.feed.attach(transport)  # type: ignore[arg-type]
        self.successResultOf(self.feed.write(b"a"))
        self.feed.pauseProducing()  # the writer's buffer is over its mark
        self.waiting = self.feed.write(b"")

    def test_refused(self) -> None:
        with self.assertRaises(TooManyRequests):
            self.feed.write(b"", eof=True)
        self.assertFalse(self.feed.closed)
        self.assertNoResult(self.waiting)

    def test_theWaitingWriteIsAnsweredByWhatBecomesOfIt(self) -> None:
        with self.assertRaises(TooManyRequests):
            self.feed.write(b"", eof=True)
        self.feed.stopProducing()  # the job exits without reading
        self.failureResultOf(self.waiting, Conflict)

    def test_takenOnceTheWriteIsAnswered(self) -> None:
        self.feed.resumeProducing()
        self.successResultOf(self.waiting)
        self.successResultOf(self.feed.write(b"", eof=True))
        self.assertTrue(self.feed.closed)


class OffsetTests(SynchronousTestCase):
    """
    L{StdinFeed.write} at an C{offset}: a write whose answer was lost (its
    connection broke, or no answer came in the client's time) can be sent
    again, and the job's stdin gets each byte once.
    """

    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.feed = StdinFeed(1 << 20)
        self.feed.attach(Transport(Writer(), self.sent))  # type: ignore[arg-type]

    def test_inOrder(self) -> None:
        """Writes at the offsets they follow on are taken whole."""
        self.assertEqual(self.successResultOf(self.feed.write(b"abc", offset=0)), 3)
        self.assertEqual(self.successResultOf(self.feed.write(b"de", offset=3)), 2)
        self.assertEqual((self.sent, self.feed.written), ([b"abc", b"de"], 5))

    def test_repeatedWriteNotTakenTwice(self) -> None:
        """A write sent again (same offset, same bytes) takes nothing more,
        and waits for room as the first did, without a 429."""
        self.successResultOf(self.feed.write(b"abc", offset=0))
        self.feed.pauseProducing()
        again = self.feed.write(b"abc", offset=0)
        self.assertNoResult(again)
        self.feed.resumeProducing()
        self.assertEqual(self.successResultOf(again), 0)
        self.assertEqual((self.sent, self.feed.written), ([b"abc"], 3))

    def test_overlapTakesTheRest(self) -> None:
        """A write that begins inside what was taken gives only its rest."""
        self.successResultOf(self.feed.write(b"abc", offset=0))
        self.assertEqual(self.successResultOf(self.feed.write(b"cdef", offset=2)), 3)
        self.assertEqual(self.sent, [b"abc", b"def"])

    def test_gapRefused(self) -> None:
        """A write past what was taken (bytes before it never came) is a
        409, and nothing of it is taken."""
        self.successResultOf(self.feed.write(b"abc", offset=0))
        with self.assertRaises(Conflict) as caught:
            self.feed.write(b"xyz", offset=5)
        self.assertIn("offset 5", caught.exception.message)
        self.assertEqual(self.feed.written, 3)

    def test_repeatedEndOfFile(self) -> None:
        """The write that closed stdin, sent again, is answered as taken;
        another write after the end is still refused."""
        self.successResultOf(self.feed.write(b"abc", eof=True, offset=0))
        self.assertEqual(
            self.successResultOf(self.feed.write(b"abc", eof=True, offset=0)), 0
        )
        with self.assertRaises(Conflict):
            self.feed.write(b"d", offset=3)
        with self.assertRaises(Conflict):
            self.feed.write(b"", eof=True, offset=2)
        self.assertEqual(self.sent, [b"abc", b"<eof>"])

    def test_closedByTheJob(self) -> None:
        """A repeated end of file after the job closed its stdin (not the
        client's end of file) is refused."""
        self.successResultOf(self.feed.write(b"abc", offset=0))
        self.feed.stopProducing()
        with self.assertRaises(Conflict):
            self.feed.write(b"", eof=True, offset=3)


class Writer:
    """A pipe writer: who produces for it."""

    producer: object = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer


class Transport:
    """A process transport with a stdin pipe."""

    def __init__(self, writer: Writer, sent: list[bytes]) -> None:
        self.pipes = {0: writer}
        self._sent = sent

    def writeToChild(self, fd: int, data: bytes) -> None:
        self._sent.append(data)

    def closeStdin(self) -> None:
        self._sent.append(b"<eof>")


class _OldServer:
    """
    A client of a server from before stdin offsets: a write that names
    one is refused as the server refuses an unknown query parameter.
    """

    def __init__(self) -> None:
        self.taken: list[tuple[bytes, bool]] = []
        self.refused = 0

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        if offset is not None:
            self.refused += 1
            raise errorFor(400, b'{"error": "unknown query parameter(s): \'offset\'"}')
        self.taken.append((data, eof))


class OldServerTests(SynchronousTestCase):
    """jw's feed of a server that knows no stdin offsets: as before."""

    def test_fedWithoutOffsets(self) -> None:
        client = _OldServer()
        chunks = [b"a" * 10, b"b" * 5, b""]

        async def read(size: int) -> bytes:
            return chunks.pop(0)

        err = io.BytesIO()
        streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
        done = ensureDeferred(feedStdin(client, "job", streams, read))
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(
            client.taken, [(b"a" * 10, False), (b"b" * 5, False), (b"", True)]
        )
        self.assertEqual(client.refused, 1)
        self.assertEqual(err.getvalue(), b"")


class _Breaking:
    """
    A client whose writes fail as C{script} says, one entry per write: a
    number of seconds the write holds before its connection breaks, or
    None (taken). Time is C{clock}'s; C{pause} only moves it.
    """

    def __init__(self, clock: list[float], script: list[float | None]) -> None:
        self._clock = clock
        self._script = script
        self.writes: list[tuple[bytes, int | None]] = []

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        self.writes.append((data, offset))
        holds = self._script.pop(0) if self._script else None
        if holds is not None:
            self._clock[0] += holds
            raise ClientError("connection reset")

    async def pause(self, seconds: float) -> None:
        self._clock[0] += seconds


class _BrokenOldServer(_OldServer):
    """An old server whose first write without an offset breaks after it
    was taken (its answer lost)."""

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        await super().sendStdin(jobId, data, eof, offset)
        if len(self.taken) == 1:
            raise ClientError("connection reset")

    async def pause(self, seconds: float) -> None:
        pass


def fedWhole(
    testCase: SynchronousTestCase,
    client: Any,
    chunks: list[bytes],
    sayWaiting: bool = True,
) -> bytes:
    """Feed C{chunks} (the last b"": the end) to a job through C{client},
    which must take them all; what jw said."""

    async def read(size: int) -> bytes:
        return chunks.pop(0)

    err = io.BytesIO()
    streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
    testCase.assertIsNone(
        testCase.successResultOf(
            ensureDeferred(feedStdin(client, "job", streams, read, sayWaiting))
        )
    )
    return err.getvalue()


class _RestartingServer:
    """
    A server with a queued job whose stdin is refused (409, PENDING) until
    it starts, and that answers nothing (restarting) to the first
    C{outage} questions about the job.
    """

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.asked = 0
        self.taken: list[bytes] = []
        self.status = "PENDING"

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        if self.status == "PENDING":
            raise ClientError(
                "server answered 409",
                409,
                {"error": "the job has not started yet (PENDING)"},
            )
        self.taken.append(data)

    async def job(self, jobId: str, **options: Any) -> dict[str, Any]:
        self.asked += 1
        if self.asked <= self.outage:
            raise ClientError("cannot connect: connection refused")
        if self.asked > self.outage + 1:
            self.status = "RUNNING"
        return {"id": jobId, "status": self.status}

    async def pause(self, seconds: float) -> None:
        pass


class FeedThroughARestartTests(SynchronousTestCase):
    """
    jw exec -i -f of a queued job, the server restarting meanwhile (no
    answer for a second): the feed goes on once it answers (it ended at the
    first refused connection, and the job waited for its stdin for ever:
    fault round 29).
    """

    def feed(self, client: Any) -> None:
        fedWhole(self, client, [b"hello\n", b""], sayWaiting=False)

    def test_anOutageAsTheJobIsLookedUp(self) -> None:
        client = _RestartingServer(outage=1)
        self.feed(client)
        self.assertEqual(client.taken, [b"hello\n", b""])

    def test_anOutageWhileItIsQueued(self) -> None:
        """Questions while it waits go on through an outage of any length."""
        client = _RestartingServer(outage=0)
        real = client.job

        async def flaky(jobId: str, **options: Any) -> dict[str, Any]:
            if 2 <= client.asked + 1 <= 40:
                client.asked += 1
                raise ClientError("cannot connect: connection refused")
            return await real(jobId, **options)

        client.job = flaky  # type: ignore[method-assign]
        self.feed(client)
        self.assertEqual(client.taken, [b"hello\n", b""])


class ResumedFeedTests(SynchronousTestCase):
    """jw's feed of a job's stdin through broken connections (a review)."""

    def feed(self, client: Any, chunks: list[bytes]) -> bytes:
        """Feed C{chunks} (then the end); what jw said."""
        clock = [1000.0]
        self.patch(time, "monotonic", lambda: clock[0])
        if isinstance(client, _Breaking):
            client._clock = clock

        return fedWhole(self, client, chunks)

    def test_breaksFarApartEachResumed(self) -> None:
        """
        A write the job leaves waiting: its connection breaks at once, then
        again after 600 s (each time sent again, at its offset): the second
        break is a new one, and the write goes on. It gave up (12 s since
        the first break): the rest of stdin, and its end, were never sent.
        """
        client = _Breaking([0.0], [0.5, 600.0, None])
        said = self.feed(client, [b"abc", b"de", b""])
        self.assertEqual(said, b"")
        self.assertEqual(
            client.writes,
            [(b"abc", 0), (b"abc", 0), (b"abc", 0), (b"de", 3), (b"", 5)],
        )

    def test_oldServerWriteNotSentTwice(self) -> None:
        """
        A server from before offsets, whose write's answer is lost: the
        write is not sent again (it may have been taken: the job got it
        twice), and the feed ends in one line.
        """
        client = _BrokenOldServer()
        chunks = [b"hello", b""]

        async def read(size: int) -> bytes:
            return chunks.pop(0)

        err = io.BytesIO()
        streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
        done = ensureDeferred(feedStdin(client, "job", streams, read))
        refused = self.failureResultOf(done, InputNotSent).value
        # Not sent again; the job's stdin closed so that it does not wait
        # for the rest for ever (new user round 28).
        self.assertEqual(client.taken, [(b"hello", False), (b"", True)])
        self.assertEqual(
            str(refused), "stdin: connection reset: the job's stdin was closed"
        )


class _ClosedByTheJob:
    """
    A server whose job closed its stdin (every write is 409) and whose
    record says RUNNING until a long poll of its end: C{final}, or still
    RUNNING.
    """

    def __init__(self, final: dict[str, Any]) -> None:
        self.final = final
        self.waits: list[float] = []

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        raise errorFor(409, b'{"error": "the job\'s stdin is closed"}')

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        self.waits.append(wait)
        if wait:
            return self.final
        return {"id": jobId, "status": "RUNNING", "started_at": "x"}


class ClosedByTheJobTests(SynchronousTestCase):
    """
    The job closed its stdin (or exited, its end not recorded yet) with
    jw's stdin not all sent: the feed waits a moment for the job's end, to
    say how it ended; jw said nothing (exit 0) when the record still said
    RUNNING (new user round 28: 1 to 4 runs in 15).
    """

    def feed(self, final: dict[str, Any]) -> tuple[Any, _ClosedByTheJob]:
        client = _ClosedByTheJob(final)
        chunks = [b"y\n" * 100, b""]

        async def read(size: int) -> bytes:
            return chunks.pop(0)

        err = io.BytesIO()
        streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
        done = ensureDeferred(feedStdin(client, "job", streams, read))
        return self.successResultOf(done), client

    def test_itsEndWaitedFor(self) -> None:
        final = {"id": "job", "status": "COMPLETED", "started_at": "x", "exit_code": 0}
        left, client = self.feed(final)
        self.assertEqual(left, final)
        self.assertGreater(client.waits[-1], 0)

    def test_closedAndRunningOn(self) -> None:
        running = {"id": "job", "status": "RUNNING", "started_at": "x"}
        left, _client = self.feed(running)
        self.assertEqual(left["status"], "RUNNING")
        err = io.BytesIO()
        streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
        self.assertEqual(sayInputLeft(left, streams), 0)
        self.assertEqual(
            err.getvalue(),
            b"jw: job job closed its stdin before jw's stdin ended: "
            b"the rest of it was not sent\n",
        )


class CloseWhileFullTests(TestCase):
    """
    The write that closes a job's stdin, sent while the pipe is full (the
    job does not read yet): its bytes are written once the job reads, then
    the end of file. The pipe was never closed (the writer, its producer
    paused, resumed it instead of closing), and the job waited for input
    for ever while the answer said closed (fault round 28b).
    """

    timeout = 60

    async def test_closedOnceDrained(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "sleep 2; wc -c", stdin=True)
        for eof in ("false", "false", "true"):
            response, body = await call(
                server,
                "POST",
                f"/jobs/{job['id']}/stdin?eof={eof}",
                raw=b"\0" * 60_000,
                contentType=b"application/octet-stream",
            )
            self.assertEqual(response.code, 200, body)
        ended = await server.waitEnded(job["id"], timeout=30)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
        self.assertEqual((await treq.content(response)).split(), [b"180000"])
