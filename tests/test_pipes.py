"""A job's output pipes: large reads, widened for heavy writers (real processes)."""

from __future__ import annotations

import fcntl
import hashlib
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from jobworker.executors.local.pipes import HEAVY, QUIET_READ, drainInLargeReads

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
