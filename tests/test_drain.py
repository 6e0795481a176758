"""
The drain of log responses at shutdown (L{LogStreams.drain}): a follower
whose bytes still move is waited for, a stalled one is not, and the whole
is bounded.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.logs import DRAIN_LIMIT, DRAIN_LOOK, DRAIN_QUIET, LogStreams
from jobworker.server.services import ManagerService

from .support import LiveServer


class Response:
    """A log response as the drain sees it: its bytes sent, its end."""

    def __init__(self) -> None:
        self.sentLength = 0
        self._finished: Deferred[None] = Deferred()

    def notifyFinish(self) -> Deferred[None]:
        return self._finished

    def finish(self) -> None:
        self._finished.callback(None)


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.streams = LogStreams(manager=None, clock=self.clock)  # type: ignore[arg-type]
        self.response = Response()
        self.streams._track(self.response, "alice")  # type: ignore[arg-type]

    def drain(self, seconds: float, sending: bool) -> Deferred[None]:
        """Start the drain; for C{seconds}, the response sends (or not)."""
        drained = self.streams.drain()
        self.go(seconds, sending)
        return drained

    def go(self, seconds: float, sending: bool) -> None:
        """C{seconds} pass, the response sending (or not)."""
        for _ in range(round(seconds / DRAIN_LOOK)):
            if sending:
                self.response.sentLength += 4096
            self.clock.advance(DRAIN_LOOK)

    def test_sendingFollowerWaitedFor(self) -> None:
        """A follower still sending after 5 s (a backlog on a loaded machine)
        is not cut: the drain waits until it has finished. It was cut 5 s
        after the jobs ended, megabytes short."""
        drained = self.drain(DRAIN_QUIET * 3, sending=True)
        self.assertNoResult(drained)
        self.response.finish()
        self.clock.advance(DRAIN_LOOK)
        self.successResultOf(drained)

    def test_stalledFollowerCut(self) -> None:
        """A follower that sends nothing is cut after DRAIN_QUIET seconds."""
        drained = self.drain(DRAIN_QUIET - 2 * DRAIN_LOOK, sending=False)
        self.assertNoResult(drained)
        self.clock.advance(3 * DRAIN_LOOK)
        self.successResultOf(drained)
        self.assertNoResult(self.response.notifyFinish())

    def test_boundedInAll(self) -> None:
        """A follower that never ends (sending for good) holds the shutdown
        DRAIN_LIMIT seconds at most."""
        drained = self.drain(DRAIN_LIMIT - 2 * DRAIN_LOOK, sending=True)
        self.assertNoResult(drained)
        self.go(3 * DRAIN_LOOK, sending=True)
        self.successResultOf(drained)


class KeptConnectionTests(TestCase):
    """What an open connection's finished log responses leave behind."""

    async def test_oneEntryPerConnection(self) -> None:
        """
        Each finished log response on a keep-alive connection was kept (with
        a callback on the connection's close) until that connection closed,
        to be closed at shutdown: some 1 KiB a request, without bound, on
        one connection (streams round 23). One entry a connection.
        """
        server = LiveServer(self)
        job = await server.createJob("echo", "hello")
        await server.waitEnded(job["id"])
        manager = next(s for s in server.service if isinstance(s, ManagerService))
        logs = manager._drain.__self__._logs  # type: ignore[attr-defined]
        for _ in range(30):
            response = await server.request("GET", f"/jobs/{job['id']}/logs")
            self.assertEqual(await response.content(), b"hello\n")
        self.assertLessEqual(len(logs._streamChannels), 1)
