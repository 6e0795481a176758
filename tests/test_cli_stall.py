"""
A follow behind a network that stalls without closing (fault round 8, item
5): a proxy, a NAT or a middlebox that stops forwarding while its kernel
still acknowledges every segment (keepalive's probes included), or a server
stopped with SIGSTOP. TCP keepalive cannot notice it; the server's heartbeats
stop coming, and the job may end, yet C{jw exec -f} and C{jw logs -f} waited
for ever. Each test runs the real server, a TCP proxy in this process that
stops forwarding on cue (both connections kept open, nothing read any more),
and C{jw} as a child process through it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    ProcessProtocol,
    Protocol,
)
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from jobworker.tls import serverOptions

from .support import CERT, JW, KEY, LiveServer, jwEnvironment, sleep

#: jw's JW_KEEPALIVE here: handshakes give up after 2 s; a stream is taken
#: for stalled after stallSeconds(1), 20 s (a heartbeat comes every 15).
KEEPALIVE = "1"
STALL = 20.0

#: What each followed job prints: a line, a pause, a line.
FIRST, SECOND = b"stall-test-first\n", b"stall-test-second\n"
JOB = ("sh", "-c", "echo stall-test-first; sleep 3; echo stall-test-second")

#: The lines C{jw exec -f} names its job with.
NAMED = re.compile(r"^jw: job \S+ (started|is queued \(PENDING\): .*)$")


class _Side(Protocol):
    """One end of a proxied connection: forwards to its twin unless stalled."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def dataReceived(self, data: bytes) -> None:
        self.link.forward(self, data)

    def connectionLost(self, reason: object = None) -> None:
        self.link.lost(self)


class _Link:
    """
    A connection through L{StallProxy}: the client's side, and the server's
    once connected. Stalled, it reads nothing more from either (their
    kernels' buffers fill, and still acknowledge), forwards nothing, closes
    nothing: for good.
    """

    def __init__(self, proxy: StallProxy) -> None:
        self.proxy = proxy
        self.down = _Side(self)
        self.up: _Side | None = None
        self.pending: list[bytes] = []
        self.stalled = False

    def forward(self, side: _Side, data: bytes) -> None:
        if self.stalled:
            return  # read in the same turn as the stall: never delivered
        if side is self.down:
            if self.up is None:
                self.pending.append(data)
            else:
                self.up.transport.write(data)  # type: ignore[union-attr]
        else:
            self.down.transport.write(data)  # type: ignore[union-attr]

    def connected(self, up: _Side) -> None:
        self.up = up
        if self.stalled:
            self.stall()
            return
        for data in self.pending:
            up.transport.write(data)  # type: ignore[union-attr]
        self.pending = []

    def stall(self) -> None:
        self.stalled = True
        for side in (self.down, self.up):
            if side is not None and side.transport is not None:
                side.transport.pauseProducing()  # type: ignore[attr-defined]

    def lost(self, side: _Side) -> None:
        if self.stalled:
            return  # a stalled middlebox forwards no FIN either
        other = self.up if side is self.down else self.down
        if other is not None and other.transport is not None:
            other.transport.loseConnection()

    def abort(self) -> None:
        for side in (self.down, self.up):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()  # type: ignore[attr-defined]


class StallProxy:
    """
    A TCP proxy on a loopback port to the server's. L{stall} stops every
    connection open then, for good; with C{heal}, connections made after
    it are forwarded again (a middlebox that lost some flows, not the
    route), else they are taken and never forwarded either.
    """

    def __init__(self, testCase: TestCase, serverPort: int) -> None:
        self.serverPort = serverPort
        self.links: list[_Link] = []
        self.frozen = False
        proxy = self

        class Accepting(Factory):
            def buildProtocol(self, addr: Any) -> _Side:
                return proxy._accepted()

        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Accepting(), interface="127.0.0.1"
        )
        testCase.addCleanup(self.close)
        self.url = f"https://localhost:{self.port.getHost().port}"

    def _accepted(self) -> _Side:
        link = _Link(self)
        self.links.append(link)
        if self.frozen:
            link.stalled = True
            reactor.callLater(0, link.stall)  # type: ignore[attr-defined]
            return link.down

        class Dialling(ClientFactory):
            def buildProtocol(self, addr: Any) -> _Side:
                up = _Side(link)
                reactor.callLater(0, link.connected, up)  # type: ignore[attr-defined]
                return up

            def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
                link.down.transport.loseConnection()  # type: ignore[union-attr]

        reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1", self.serverPort, Dialling()
        )
        return link.down

    def stall(self, heal: bool) -> None:
        for link in self.links:
            link.stall()
        self.frozen = not heal

    async def close(self) -> None:
        for link in self.links:
            link.abort()
        await self.port.stopListening()


class Follower(ProcessProtocol):
    """A jw child: its output, its end, and a wait for a word of its output."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.code: int | None = None
        self.done = False
        self.transport: ITransport | None = None
        self._seen: list[tuple[bytes, Deferred[None]]] = []
        self._ends: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._look()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._look()

    def _look(self) -> None:
        for word, d in list(self._seen):
            if word in self.out or word in self.err:
                self._seen.remove((word, d))
                d.callback(None)

    def saw(self, word: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._seen.append((word, d))
        self._look()
        return d

    def ended(self) -> Deferred[None]:
        """A Deferred that fires once jw has exited (its own: a time-out
        of it leaves the others be)."""
        d: Deferred[None] = Deferred()
        if self.done:
            d.callback(None)
        else:
            self._ends.append(d)
        return d

    def processEnded(self, reason: Failure) -> None:
        if isinstance(reason.value, ProcessDone | ProcessTerminated):
            self.code = reason.value.exitCode
        self.done = True
        ends, self._ends = self._ends, []
        for d in ends:
            d.callback(None)


class StallBoundTests(TestCase):
    """How long a follow's stream may be silent before it is stalled."""

    def test_bound(self) -> None:
        """
        Twice JW_KEEPALIVE, as a dead connection fails; never less than a
        heartbeat and its lateness (a healthy stream is never that quiet),
        never more than the request timeout.
        """
        from jobworker.client.quick import (
            HEARTBEAT,
            LATE,
            TIMEOUT,
            handshakeSeconds,
            stallSeconds,
        )
        from jobworker.server.sse import HEARTBEAT as SERVERS

        self.assertEqual(HEARTBEAT, SERVERS)
        self.assertEqual(HEARTBEAT + LATE, 20)
        self.assertEqual(stallSeconds(30), 60)  # the default JW_KEEPALIVE
        self.assertEqual(stallSeconds(12), 24)
        self.assertEqual(stallSeconds(1), 20)
        self.assertEqual(stallSeconds(32767), TIMEOUT)
        self.assertEqual(handshakeSeconds(1), 2)


class PeersTests(TestCase):
    """
    The raw streams of a follow have no heartbeat: the long poll beside
    them breaks them off (L{_Peers}), from its thread, when it gets no
    answer, or when they stay silent after the job's end.
    """

    def reader(self) -> tuple[socket.socket, Any, threading.Thread, list[bytes]]:
        """A socket whose peer says nothing, read in a thread of its own."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        got: list[bytes] = []
        reading = threading.Thread(target=lambda: got.append(ours.recv(10)))
        reading.start()
        return ours, theirs, reading, got

    def test_stalledBreaksEveryRead(self) -> None:
        from jobworker.client.quick import _Peers

        peers = _Peers(20.0)
        ours, _, reading, got = self.reader()
        read = peers.reading(ours)
        peers.look()  # the job has not ended: silence is fine
        reading.join(0.3)
        self.assertTrue(reading.is_alive())
        peers.lost("got no answer in 20 s")
        reading.join(10)
        self.assertFalse(reading.is_alive())
        self.assertEqual(got, [b""])  # its end, as a broken stream's
        self.assertIn("no answer in 20 s", read.broken or "")
        peers.done(read)

    def test_silentAfterTheEnd(self) -> None:
        from jobworker.client.quick import _Peers

        peers = _Peers(0.5)
        quiet, _, quietReading, _ = self.reader()
        busy, busyPeer, busyReading, got = self.reader()
        quietRead, busyRead = peers.reading(quiet), peers.reading(busy)
        peers.ended()
        peers.look()
        time.sleep(0.6)
        busyRead.last = time.monotonic()  # it brought bytes just now
        peers.look()
        quietReading.join(10)
        self.assertFalse(quietReading.is_alive())
        self.assertIn("although the job had ended", quietRead.broken or "")
        self.assertIsNone(busyRead.broken)
        busyPeer.sendall(b"more")
        busyReading.join(10)
        self.assertEqual(got, [b"more"])
        for read in (quietRead, busyRead):
            peers.done(read)

    def test_aLongPollWithNoHandshakeBreaksTheReads(self) -> None:
        """
        The long poll's handshake got no answer (the network stalled while
        it made a new connection): as a long poll that got no answer, it
        breaks the raw reads. It broke nothing: raced with the streams'
        answers (CI, a loaded machine), jw waited for ever.
        """
        import ssl

        from jobworker.client.errors import ClientError
        from jobworker.client.quick import QuickClient, _Peers, drive

        hole = socket.socket()
        self.addCleanup(hole.close)
        hole.bind(("127.0.0.1", 0))
        hole.listen(1)  # taken by the kernel, never answered
        client = QuickClient(
            f"https://127.0.0.1:{hole.getsockname()[1]}",
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            keepalive=1,
        )
        self.addCleanup(client._connection.close)
        client._peers = peers = _Peers(20.0)
        ours, _, reading, got = self.reader()
        read = peers.reading(ours)
        with self.assertRaises(ClientError):
            drive(client.job("some-job", wait=60))
        reading.join(10)
        self.assertFalse(reading.is_alive())
        self.assertEqual(got, [b""])
        self.assertIn("handshake timed out", read.broken or "")
        peers.done(read)

    def test_watchedWhileTheLongPollFails(self) -> None:
        """
        A raw stream that starts (or resumes) after the long poll failed,
        and before one is answered again, is watched: silent for the stall
        bound since, it is broken. It was not: once the long poll had
        given up, nothing told a stalled stream.
        """
        from jobworker.client.quick import _Peers

        peers = _Peers(0.5)
        peers.lost("no TLS handshake in 2 s")
        quiet, _, quietReading, _ = self.reader()
        quietRead = peers.reading(quiet)
        peers.look()
        self.assertIsNone(quietRead.broken)  # not yet the stall bound
        time.sleep(0.6)
        peers.look()
        quietReading.join(10)
        self.assertFalse(quietReading.is_alive())
        self.assertIn("the long poll beside it has failed", quietRead.broken or "")
        peers.done(quietRead)
        # Answered again: the long poll watches them once more.
        peers.answered()
        later, _, laterReading, _ = self.reader()
        laterRead = peers.reading(later)
        time.sleep(0.6)
        peers.look()
        self.assertIsNone(laterRead.broken)
        peers.lost("got no answer in 0.5 s")
        laterReading.join(10)
        peers.done(laterRead)


class TrailingReadTests(TestCase):
    """
    A raw stream whose own connection stalled while the long poll beside
    it is answered (a middlebox that drops some flows, not others): the
    answers say how much output the server holds, and a stream that
    trails it, silent for the stall bound since an answer said so, is
    broken off and resumed. It was not: the output was held back until
    the job's end and the stall bound after it (a long job's, its whole
    run).
    """

    def reader(self) -> tuple[socket.socket, threading.Thread]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        reading = threading.Thread(target=ours.recv, args=(10,))
        reading.start()
        return ours, reading

    def test_aReadThatTrailsTheServer(self) -> None:
        from jobworker.client.quick import _Peers

        peers = _Peers(0.5)
        stalled, stalledReading = self.reader()
        caughtUp, caughtUpReading = self.reader()
        quiet, quietReading = self.reader()
        behind = peers.reading(stalled, "stdout", 4)
        level = peers.reading(caughtUp, "stdout", 10)
        silent = peers.reading(quiet, "stderr", 0)
        # Handing its bytes to a slow reader (a paused pager): not stalled.
        busy = peers.reading(socket.socket(), "stdout", 0)
        self.addCleanup(busy.sock.close)
        busy.handing = True
        peers.answered({"status": "RUNNING", "stdout_bytes": 10, "stderr_bytes": 0})
        peers.look()
        self.assertIsNone(behind.broken)  # not the stall bound yet
        time.sleep(0.3)
        # A later answer, more output: the bound counts from the first
        # answer that had more than the read (a job that writes all the
        # time moves it on at each answer).
        peers.answered({"status": "RUNNING", "stdout_bytes": 20, "stderr_bytes": 0})
        time.sleep(0.3)
        level.last = time.monotonic()  # it brought bytes just now
        level.position = 20
        peers.look()
        stalledReading.join(10)
        self.assertFalse(stalledReading.is_alive())
        self.assertIn("the server had more", behind.broken or "")
        self.assertIsNone(level.broken)
        self.assertIsNone(silent.broken)  # nothing more to bring
        self.assertIsNone(busy.broken)
        for read in (behind, level, silent, busy):
            peers.done(read)
        for sock in (caughtUp, quiet):
            sock.shutdown(socket.SHUT_RDWR)
        caughtUpReading.join(10)
        quietReading.join(10)


class FrozenBehindAFront(Resource):
    """
    A server behind a front that ends TLS (a reverse proxy): it answers
    the job's record while the job is queued, and nothing more once a
    follow is asked (stopped with SIGSTOP; the front still shakes hands).
    """

    isLeaf = True
    JOB_ID = "0123abcd-0000-4000-8000-000000000000"

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False
        self.asked: list[bytes] = []

    def render(self, request: Request) -> Any:
        self.asked.append(request.uri)
        if self.frozen or b"/logs" in request.path or b"/events" in request.path:
            self.frozen = True
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {"id": self.JOB_ID, "status": "PENDING", "owner": "alice"}
        ).encode()


class FrontTests(TestCase):
    """
    A follow of a queued job asks again on a new connection each time the
    stall bound passes, whose handshake fails on a dead path; behind a
    front that still shakes hands for a stopped server, it asked for ever.
    Before it asks again, the job's record is asked for on the new
    connection: no answer in the stall bound, and the follow has failed.
    """

    timeout = 200

    async def test_aStoppedServerBehindAFront(self) -> None:
        resource = FrozenBehindAFront()
        endpoint = SSL4ServerEndpoint(
            reactor, 0, serverOptions(CERT, KEY), interface="127.0.0.1"
        )
        port = await endpoint.listen(Site(resource))
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}"
        env = jwEnvironment(url, JW_KEEPALIVE="1")
        started = time.monotonic()
        _out, err, code = await getProcessOutputAndValue(
            JW, ["logs", "-f", FrozenBehindAFront.JOB_ID], env=env, reactor=reactor
        )
        self.assertNotIn(code, (0, None), err)
        self.assertNotIn(b"Traceback", err)
        self.assertEqual(err.count(b"\n"), 1, err)
        # Twice the stall bound an attempt, two attempts (RESUME_FOR), and
        # a margin: it never ended.
        self.assertLess(time.monotonic() - started, 150, err)


class QuietResumeTests(TestCase):
    """
    A follow of a quiet job (nothing received) whose stream held a while
    before it broke off: a new break, a count of its own. It gave up at
    the second break, however long after the first.
    """

    def test_quietStreamsThatHeldResume(self) -> None:
        from twisted.internet.defer import Deferred

        from jobworker.client import follow
        from jobworker.client.errors import ClientError
        from jobworker.client.follow import FOLLOW_RETRIES, RESUME_FOR, followStream

        class Clock:
            now = 1000.0

            def monotonic(self) -> float:
                return self.now

        clock = Clock()
        self.patch(follow, "time", clock)

        class Quiet:
            """Answers each follow, says nothing, breaks off after C{held}."""

            def __init__(self, held: float, breaks: int) -> None:
                self.held = held
                self.breaks = breaks
                self.asked = 0

            async def logs(self, *args: Any, onStatus: Any, **kwargs: Any) -> None:
                self.asked += 1
                onStatus("RUNNING")
                clock.now += self.held
                if self.asked <= self.breaks:
                    raise ClientError("log stream broke off: nothing came")

            async def pause(self, seconds: float) -> None:
                clock.now += seconds

        breaks = 3 * FOLLOW_RETRIES
        held = Quiet(RESUME_FOR + 60, breaks)
        done = Deferred.fromCoroutine(followStream(held, "id", "stdout", print))
        self.successResultOf(done)
        self.assertEqual(held.asked, breaks + 1)
        cut = Quiet(0.1, breaks)
        done = Deferred.fromCoroutine(followStream(cut, "id", "stdout", print))
        self.failureResultOf(done, ClientError)
        self.assertLessEqual(cut.asked, FOLLOW_RETRIES + 1)


class StalledFollowTests(TestCase):
    """
    jw following through a proxy that stalls: it ends, resumed on a new
    connection when there is a way (nothing lost, nothing twice), else
    with one line and a non-zero status; it waited for ever.
    """

    timeout = 150

    #: Seconds after the stall by which jw must have ended: the stall
    #: bound, the resumption's handshakes (2 s each, RESUME_FOR: 12 s), and
    #: a margin for a loaded machine. It waited for ever.
    ENDS_WITHIN = 60.0

    def spawn(self, url: str, *argv: str, merged: bool) -> Follower:
        """
        Run C{jw argv} against C{url}; C{merged}: its stdout and stderr one
        pipe (a terminal's case: one combined stream, binary frames), else
        apart (its two raw streams, and the long poll of the job's end).
        """
        child = Follower()
        command = [JW, *argv]
        if merged:
            command = ["/bin/sh", "-c", 'exec "$0" "$@" 2>&1', *command]
        env = jwEnvironment(url, JW_KEEPALIVE=KEEPALIVE)
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, command[0], command, env=env
        )
        self.addCleanup(self._kill, transport, child)
        return child

    async def _kill(self, transport: Any, child: Follower) -> None:
        if not child.done:
            transport.signalProcess("KILL")
            await child.ended()

    async def followThrough(
        self,
        server: LiveServer,
        argv: list[str],
        *,
        merged: bool,
        heal: bool,
        stallAt: bytes = FIRST,
        delay: float = 0.0,
    ) -> tuple[Follower, float]:
        """
        Run C{jw argv} through a L{StallProxy}, stall it C{delay} seconds
        after jw has shown C{stallAt}, and wait for jw's end: jw, and the
        seconds it took after the stall.
        """
        proxy = StallProxy(self, server.port)
        child = self.spawn(proxy.url, *argv, merged=merged)
        await child.saw(stallAt).addTimeout(60, reactor)
        await sleep(delay)
        proxy.stall(heal)
        stalled = time.monotonic()
        try:
            await child.ended().addTimeout(self.ENDS_WITHIN + 30, reactor)
        except DeferredTimeout:
            self.fail(
                f"jw {' '.join(argv)} still waited {self.ENDS_WITHIN + 30:g} s "
                f"after the stall; it printed {bytes(child.out)!r} "
                f"{bytes(child.err)!r}"
            )
        return child, time.monotonic() - stalled

    def assertResumed(self, child: Follower, waited: float, merged: bool) -> None:
        """jw went on on a new connection: all the output, once; exit 0."""
        what = (bytes(child.out), bytes(child.err))
        self.assertEqual(child.code, 0, what)
        self.assertNotIn(b"Traceback", child.out + child.err)
        output = child.out
        if merged:
            # jw's own lines ("jw: job ... is queued") go there too.
            output = bytearray(
                b"".join(
                    line
                    for line in child.out.splitlines(keepends=True)
                    if not line.startswith(b"jw: ")
                )
            )
        self.assertEqual(bytes(output), FIRST + SECOND, what)
        self.assertLess(waited, self.ENDS_WITHIN, what)

    def assertGaveUp(self, child: Follower, waited: float, merged: bool) -> None:
        """jw said why in one line and exited non-zero."""
        what = (bytes(child.out), bytes(child.err))
        self.assertNotIn(child.code, (0, None), what)
        said = bytes(child.out if merged else child.err).decode()
        self.assertNotIn("Traceback", said)
        lines = said.splitlines()
        if not merged:
            self.assertTrue(all(line.startswith("jw: ") for line in lines), what)
        failures = [
            line for line in lines if line.startswith("jw: ") and not NAMED.match(line)
        ]
        self.assertEqual(len(failures), 1, what)
        self.assertIn("timed out", failures[0])
        self.assertLess(waited, self.ENDS_WITHIN, what)

    async def test_stalledFollowsEnd(self) -> None:
        """
        C{jw exec -f} (a combined stream, or two raw ones with the long poll
        of the job's end beside them) and C{jw logs -f --stdout}: the
        proxy stalls after the job's first line; healed (new connections
        go through), jw resumes and ends with every byte once and the job's
        status; not healed, jw says so in one line and exits non-zero.

        A follow of a job still in the queue gets no answer until it
        starts, however long that takes: one that waits past the stall
        bound (the job before it runs 26 s) is asked again on a new
        connection and gets everything, once; the proxy stalling while it
        waits, jw gives up in one line.

        All at once, to keep the test short: each takes the stall bound
        (20 s) and more.
        """
        server = LiveServer(self)
        execute = ["exec", "-f", "--", *JOB]
        logged = await server.createJob(JOB[0], *JOB[1:])
        logs = ["logs", "-f", "--stdout", logged["id"]]
        first = await server.createJob("sleep", "26")
        queued = ["exec", "-f", "--after", first["id"], "--", *JOB]
        waiting = b"is queued"

        async def resumed(argv: list[str], merged: bool) -> None:
            child, waited = await self.followThrough(
                server, argv, merged=merged, heal=True
            )
            self.assertResumed(child, waited, merged)

        async def gaveUp(argv: list[str], merged: bool, **how: Any) -> None:
            child, waited = await self.followThrough(
                server, argv, merged=merged, heal=False, **how
            )
            self.assertGaveUp(child, waited, merged)

        async def queuedLong() -> None:
            proxy = StallProxy(self, server.port)
            started = time.monotonic()
            child = self.spawn(proxy.url, *queued, merged=False)
            await child.ended().addTimeout(90, reactor)
            self.assertEqual(bytes(child.out), FIRST + SECOND, bytes(child.err))
            self.assertEqual(child.code, 0, bytes(child.err))
            self.assertIn(waiting, child.err)
            self.assertGreater(time.monotonic() - started, STALL)
            # The job's, each stream's, the long poll's; each stream's again.
            self.assertGreaterEqual(len(proxy.links), 6)

        await gatherResults(
            [
                Deferred.fromCoroutine(resumed(execute, True)),
                Deferred.fromCoroutine(resumed(execute, False)),
                Deferred.fromCoroutine(resumed(logs, False)),
                Deferred.fromCoroutine(gaveUp(execute, True)),
                Deferred.fromCoroutine(gaveUp(execute, False)),
                Deferred.fromCoroutine(queuedLong()),
                # Stalled once the follow's request is on its way (the
                # queued line comes before it).
                Deferred.fromCoroutine(gaveUp(queued, True, stallAt=waiting, delay=3)),
            ],
            consumeErrors=True,
        )
