"""
Heavy output streams read by a thread of their own (real processes, real
spool files, the real reactor and threads).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from jobworker.executors.local.pipes import HEAVY, drainInLargeReads
from jobworker.executors.local.pump import MAX_PUMPS, Pumps
from jobworker.jobs.order import OrderLog, decodeEntries
from jobworker.jobs.spool import OutputSpool, SpoolReader

from .support import sleep
from .test_pipes import WRITER, expected

#: Writes N bytes of the pattern to stdout, then "between" to stderr, then
#: N more to stdout; with a third argument it then keeps its stdout open
#: (a grandchild holds it) while the process itself exits.
INTERLEAVED = """
import os, sys
n = int(sys.argv[1])
block = bytes(range(256)) * 4096
def out(n):
    while n:
        n -= os.write(1, block[:n])
out(n)
os.write(2, b"between")
out(n)
if len(sys.argv) > 2:
    if os.fork() == 0:
        os.setsid()
        import time
        time.sleep(60)
"""


def pumped() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jobworker-pump"]


def pumpsLeft() -> list[threading.Thread]:
    """The pump threads still alive once each had 5 s to return."""
    for thread in pumped():
        thread.join(5)
    return pumped()


class Job(ProcessProtocol):
    """What a job's protocol does with its output: spools, pumped if heavy."""

    def __init__(self, spools: dict[int, OutputSpool], pumps: Pumps | None) -> None:
        self.spools = spools
        self.pumps = pumps
        self.sizesAtEnd: dict[int, int] = {}
        self.exited: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.taken: list[int] = []

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]
        drainInLargeReads(self.transport, self.heavy)

    def heavy(self, fd: int, reader: Any) -> bool:
        if self.pumps is None:
            return False
        taken = self.pumps.take(reader, self.spools[fd])
        if taken:
            self.taken.append(fd)
        return taken

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.spools[fd].write(data)

    def processExited(self, reason: Failure) -> None:
        self.exited.callback(None)

    def processEnded(self, reason: Failure) -> None:
        self.sizesAtEnd = {fd: spool.size for fd, spool in self.spools.items()}
        for spool in self.spools.values():
            spool.close()
        self.ended.callback(None)


@implementer(IConsumer)
class Collect:
    """A consumer that hashes what it is sent."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)


def digestOf(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class PumpTests(TestCase):
    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)

    def spools(self, maxBytes: int | None = None) -> dict[int, OutputSpool]:
        order = OrderLog(os.path.join(self.folder, "order"))
        return {
            fd: OutputSpool(
                os.path.join(self.folder, name), maxBytes, reactor, order, fd - 1
            )
            for fd, name in ((1, "stdout"), (2, "stderr"))
        }

    def spawn(self, job: Job, script: str, *args: str) -> Any:
        return reactor.spawnProcess(  # type: ignore[attr-defined]
            job, sys.executable, [sys.executable, "-c", script, *args], env={}
        )

    async def test_everyByteInOrderBeforeTheEnd(self) -> None:
        """
        A heavy stream is read by a thread: every byte reaches the file in
        order, the spool knows its size before the process has ended, the
        other stream's bytes are ordered between, and the thread is gone.
        """
        n = 8 * HEAVY + 4321
        pumps = Pumps(reactor)
        job = Job(self.spools(), pumps)
        self.spawn(job, INTERLEAVED, str(n))
        await job.ended
        self.assertEqual(job.taken, [1])
        self.assertEqual(job.sizesAtEnd, {1: 2 * n, 2: len(b"between")})
        self.assertEqual(digestOf(job.spools[1].path), expectedTwice(n))
        # stdout first, then stderr, then stdout again: where it resumes
        # depends on what the thread had read when stderr arrived (the
        # order is that of arrival at the server, as for the reactor).
        with open(job.spools[1].order.path, "rb") as f:  # type: ignore[union-attr]
            entries = decodeEntries(f.read())
        self.assertEqual(entries[:2], [(0, 0), (1, 0)])
        self.assertEqual(len(entries), 3)
        self.assertEqual(entries[2][0], 0)
        self.assertTrue(0 < entries[2][1] < 2 * n, entries)
        self.assertEqual(pumps.running, 0)
        self.assertEqual(pumps.started, 1)
        self.assertEqual(pumpsLeft(), [])

    async def test_aFollowerGetsEveryByte(self) -> None:
        """A reader following a pumped spool gets every byte, in order."""
        n = 16 * HEAVY
        job = Job(self.spools(), Pumps(reactor))
        follower = Collect()
        reader = SpoolReader(job.spools[1], follower, 0, follow=True)
        following = reader.start()
        self.spawn(job, WRITER, str(n))
        await job.ended
        await following
        self.assertEqual(job.taken, [1])
        self.assertEqual(follower.size, n)
        self.assertEqual(follower.digest.hexdigest(), expected(n))

    async def test_theCapCountsWhatIsDropped(self) -> None:
        """Past the spool's cap, the thread counts bytes dropped, as write does."""
        n = 8 * HEAVY
        cap = 3 * HEAVY + 5
        job = Job(self.spools(maxBytes=cap), Pumps(reactor))
        self.spawn(job, WRITER, str(n))
        await job.ended
        self.assertEqual(job.taken, [1])
        spool = job.spools[1]
        self.assertEqual((spool.size, spool.dropped), (cap, n - cap))
        self.assertEqual(os.path.getsize(spool.path), cap)
        self.assertEqual(digestOf(spool.path), expected(cap))

    async def test_aDiskErrorCountsWhatIsLost(self) -> None:
        """
        A file that refuses writes (/dev/full): the thread counts every byte
        as lost, the spool logs it once, and the job still ends.
        """
        n = 4 * HEAVY
        spools = self.spools()
        spools[1].path = "/dev/full"
        events: list[dict[str, Any]] = []
        spools[1].log = Logger(observer=events.append)
        job = Job(spools, Pumps(reactor))
        self.spawn(job, WRITER, str(n))
        await job.ended
        self.assertEqual(job.taken, [1])
        self.assertEqual((spools[1].size, spools[1].lost), (0, n))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["error"], os.strerror(28))

    async def test_noThreadFreeTheReactorReads(self) -> None:
        """
        With every thread taken, a heavy stream stays with the reactor and
        loses nothing.
        """
        n = 8 * HEAVY
        pumps = Pumps(reactor, limit=1)
        first, second = Job(self.spools(), pumps), Job(self.spoolsIn("b"), pumps)
        self.spawn(first, WRITER, str(n))
        self.spawn(second, WRITER, str(n))
        await first.ended
        await second.ended
        self.assertEqual(sorted([first.taken, second.taken]), [[], [1]])
        for job in (first, second):
            self.assertEqual(job.spools[1].size, n)
            self.assertEqual(digestOf(job.spools[1].path), expected(n))
        self.assertEqual(pumps.running, 0)

    def spoolsIn(self, name: str) -> dict[int, OutputSpool]:
        folder = os.path.join(self.folder, name)
        os.makedirs(folder)
        return {
            fd: OutputSpool(os.path.join(folder, stream), None, reactor)
            for fd, stream in ((1, "stdout"), (2, "stderr"))
        }

    async def test_losingTheConnectionStopsTheThreadFirst(self) -> None:
        """
        A job abandoned after its kill (a process outside it holds the
        pipe): Process.loseConnection stops the thread, and only then is the
        pipe closed and the process's end reported.
        """
        n = 2 * HEAVY
        pumps = Pumps(reactor)
        job = Job(self.spools(), pumps)
        transport = self.spawn(job, INTERLEAVED, str(n), "hold")
        await job.exited
        holders = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if readCmdline(pid).endswith(b"\0hold") and pid != os.getpid()
        ]
        self.assertEqual(len(holders), 1)
        self.addCleanup(os.kill, holders[0], 9)
        # The grandchild holds stdout open: the thread waits on the pipe.
        await sleep(0.2)
        self.assertEqual(job.taken, [1])
        self.assertEqual(len(pumped()), 1)
        self.assertFalse(job.ended.called)
        transport.loseConnection()
        await job.ended
        self.assertEqual(job.sizesAtEnd[1], 2 * n)
        self.assertEqual(pumps.running, 0)
        self.assertEqual(pumpsLeft(), [])


def readCmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0")
    except OSError:
        return b""


def expectedTwice(n: int) -> str:
    block = bytes(range(256)) * 4096
    digest = hashlib.sha256()
    for _ in range(2):
        left = n
        while left:
            digest.update(block[:left])
            left -= len(block[:left])
    return digest.hexdigest()


class OutputThreadsOptionTests(SynchronousTestCase):
    """--output-threads: how many streams may be pumped at once."""

    def parse(self, *argv: str) -> Any:
        from jobworker.server.options import Options

        options = Options()
        options.parseOptions(["--tls", *argv])
        return options

    def test_defaultAndRange(self) -> None:
        from twisted.python.usage import UsageError

        self.assertEqual(self.parse()["output-threads"], MAX_PUMPS)
        self.assertEqual(self.parse("--output-threads=0")["output-threads"], 0)
        for bad in ("-1", "257", "many"):
            self.assertRaises(UsageError, self.parse, f"--output-threads={bad}")

    def test_noneWithZero(self) -> None:
        """With 0 threads, no stream is taken from the reactor."""
        spool = OutputSpool(self.mktemp(), None)
        spool.write(b"x")
        self.addCleanup(spool.close)
        self.assertFalse(Pumps(reactor, limit=0).take(object(), spool))
