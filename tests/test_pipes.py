"""A job's output pipes: large reads, widened for heavy writers (real processes)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.executors.local.pipes import (
    CAPPED_PACE,
    HEAVY,
    QUIET_READ,
    PipeDrain,
    drainInLargeReads,
)

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: Writes N bytes of a pattern that is not all one byte, to stdout and, with
#: a second argument, a few bytes to stderr.
WRITER = """
import os, sys
n = int(sys.argv[1])
block = bytes(range(256)) * 4096
while n:
    n -= os.write(1, block[:n])
if len(sys.argv) > 2:
    os.write(2, b"quiet")
"""


class Collect(ProcessProtocol):
    """Everything the child wrote, the sizes of the reads, the pipe sizes."""

    def __init__(self) -> None:
        self.out = hashlib.sha256()
        self.outBytes = 0
        self.err = b""
        self.reads: list[int] = []
        self.pipeSizes: dict[int, int] = {}
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]
        drainInLargeReads(self.transport)

    def _pipeSize(self, fd: int) -> None:
        pipe = self.transport.pipes[fd]  # type: ignore[union-attr]
        self.pipeSizes[fd] = fcntl.fcntl(pipe.fileno(), F_GETPIPE_SZ)

    def outReceived(self, data: bytes) -> None:
        self.out.update(data)
        self.outBytes += len(data)
        self.reads.append(len(data))
        self._pipeSize(1)

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._pipeSize(2)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def expected(n: int) -> str:
    block = bytes(range(256)) * 4096
    digest = hashlib.sha256()
    while n:
        digest.update(block[:n])
        n -= len(block[:n])
    return digest.hexdigest()


class PipeDrainTests(TestCase):
    def run_writer(self, n: int, *extra: str) -> Deferred[Collect]:
        protocol = Collect()
        reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol,
            sys.executable,
            [sys.executable, "-c", WRITER, str(n), *extra],
            env={},
        )
        return protocol.ended.addCallback(lambda _: protocol)

    async def test_heavyStreamEveryByteInLargeReads(self) -> None:
        """
        A stream that fills its pipe gets a 1 MiB pipe and reads larger than
        Twisted's 8 KiB; every byte arrives, in order.
        """
        n = 8 * HEAVY + 12345
        protocol: Any = await self.run_writer(n, "stderr too")
        self.assertEqual(protocol.outBytes, n)
        self.assertEqual(protocol.out.hexdigest(), expected(n))
        self.assertEqual(protocol.pipeSizes[1], HEAVY)
        self.assertGreater(max(protocol.reads), QUIET_READ)

    async def test_quietStreamKeepsDefaultPipe(self) -> None:
        """A stream that writes a little keeps the default pipe."""
        protocol: Any = await self.run_writer(100, "stderr too")
        self.assertEqual(protocol.err, b"quiet")
        self.assertEqual(protocol.pipeSizes[2], QUIET_READ)
        self.assertEqual(protocol.outBytes, 100)

    def test_transportWithoutPipes(self) -> None:
        """A transport with no pipes (a test's fake) is left alone."""
        drainInLargeReads(object())


class FakeReader:
    """A process output reader over a real pipe, on a L{Clock}."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reactor = Clock()
        self.reads: list[bytes] = []
        self.reading = True
        self.disconnected = False
        self.disconnecting = False

    def fileno(self) -> int:
        return self.fd

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Spool:
    full = False


class CappedStreamTests(SynchronousTestCase):
    """
    Output past its stream's cap is read and dropped: a job writing a few
    bytes at a time (an attacker's 40 jobs of C{while :; do echo a; done},
    each limited to 50 millicores) woke the server's reactor for each,
    and cost it most of a CPU that no limit of the jobs' counted. Past the
    cap, a small read pauses the stream for L{CAPPED_PACE}; a full read
    (a heavy writer) does not.
    """

    def setUp(self) -> None:
        r, self.w = os.pipe()
        os.set_blocking(r, False)
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, self.w)
        self.reader = FakeReader(r)
        self.spool = Spool()
        self.drain = PipeDrain(self.reader, None, self.spool)

    def test_underTheCapEveryReadAtOnce(self) -> None:
        for _ in range(3):
            os.write(self.w, b"a\n")
            self.drain()
        self.assertEqual(self.reader.reads, [b"a\n"] * 3)
        self.assertTrue(self.reader.reading)
        self.assertEqual(self.reader.reactor.getDelayedCalls(), [])

    def test_pastTheCapSmallReadsPaced(self) -> None:
        self.spool.full = True
        os.write(self.w, b"a\n")
        self.drain()
        self.assertFalse(self.reader.reading)
        os.write(self.w, b"b\n" * 100)
        self.reader.reactor.advance(CAPPED_PACE - 0.001)
        self.assertFalse(self.reader.reading)
        self.reader.reactor.advance(0.001)
        self.assertTrue(self.reader.reading)
        self.drain()  # what came meanwhile, in one read
        self.assertEqual(self.reader.reads, [b"a\n", b"b\n" * 100])

    def test_pastTheCapFullReadsNotPaced(self) -> None:
        """Nor offered to a thread, which would read it write by write."""
        offered: list[Any] = []
        self.drain = PipeDrain(self.reader, offered.append, self.spool)
        self.spool.full = True
        os.write(self.w, b"x" * QUIET_READ)  # the default pipe, full
        self.drain()
        self.assertEqual(len(self.reader.reads[0]), QUIET_READ)
        self.assertTrue(self.reader.reading)
        self.assertEqual(self.reader.reactor.getDelayedCalls(), [])
        self.assertEqual(offered, [])
        self.spool.full = False
        os.write(self.w, b"x" * HEAVY)  # (the pipe was widened to it)
        self.drain()
        self.assertEqual(offered, [self.reader])

    def test_notResumedOnceDisconnected(self) -> None:
        """
        Its connection lost, or its connectionLost on its way (its
        loseConnection ran): no resume.
        """
        for flag in ("disconnected", "disconnecting"):
            self.spool.full = True
            os.write(self.w, b"a\n")
            self.drain()
            setattr(self.reader, flag, True)
            self.reader.reactor.advance(CAPPED_PACE)
            self.assertFalse(self.reader.reading, flag)
            setattr(self.reader, flag, False)
            self.reader.startReading()
