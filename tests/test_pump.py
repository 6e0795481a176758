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
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from jobworker.executors.local.pipes import HEAVY, drainInLargeReads
from jobworker.executors.local.pump import MAX_PUMPS, NICE, Pumps
from jobworker.jobs.order import OrderLog, decodeEntries
from jobworker.jobs.spool import OutputSpool, SpoolReader

from .support import sleep
from .test_pipes import WRITER, expected

#: Writes N bytes of the pattern to stdout, then "between" to stderr, then
#: N more to stdout; with a second argument (not empty) it then keeps its
#: stdout open (a grandchild holds it) while the process itself exits; with
#: a third, a file, it writes the second N only once that file exists.
INTERLEAVED = """
import os, sys, time
n = int(sys.argv[1])
block = bytes(range(256)) * 4096
def out(n):
    while n:
        n -= os.write(1, block[:n])
out(n)
os.write(2, b"between")
if len(sys.argv) > 3:  # a go file: the rest only once it is there
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.005)
out(n)
if len(sys.argv) > 2 and sys.argv[2]:  # a leftover, marked
    if os.fork() == 0:
        os.setsid()
        import time
        time.sleep(60)
"""


#: Writes N bytes of the pattern to stdout, then for each further pair of
#: arguments sleeps that many seconds and writes that many bytes more.
BURSTS = """
import os, sys, time
block = bytes(range(256)) * 4096
def out(n):
    while n:
        n -= os.write(1, block[:n])
out(int(sys.argv[1]))
rest = sys.argv[2:]
for pause, n in zip(rest[::2], rest[1::2]):
    time.sleep(float(pause))
    out(int(n))
"""


#: Writes N bytes of the pattern, then K more every 50 ms until the file
#: GO exists (for at most a minute), then N more: the pipe stays busy, and
#: open, for as long as the test needs.
PACED = """
import os, sys, time
block = bytes(range(256)) * 4096
def out(n):
    while n:
        n -= os.write(1, block[:n])
n, go, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
out(n)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
    out(k)
out(n)
"""


def expectedPieces(*sizes: int) -> str:
    """The digest of BURSTS' output: the pattern from its start, each time."""
    block = bytes(range(256)) * 4096
    digest = hashlib.sha256()
    for n in sizes:
        while n:
            digest.update(block[:n])
            n -= len(block[:n])
    return digest.hexdigest()


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
        drainInLargeReads(self.transport, self.heavy, dict(self.spools))

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


def niceOf(tid: int) -> int:
    """A thread of this process's nice value (/proc's stat, field 19)."""
    with open(f"/proc/self/task/{tid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[16])


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
        go = os.path.abspath(self.mktemp())
        self.spawn(job, INTERLEAVED, str(n), "", go)
        # The second half only once stderr is in (however late the reactor
        # is on a loaded machine), so that it is ordered between the halves.
        for _ in range(3000):
            if job.spools[2].size:
                break
            await sleep(0.01)
        open(go, "w").close()
        await job.ended
        self.assertEqual(job.taken, [1])
        self.assertEqual(job.sizesAtEnd, {1: 2 * n, 2: len(b"between")})
        self.assertEqual(digestOf(job.spools[1].path), expectedTwice(n))
        # stdout first, then stderr, then stdout again: where it resumes
        # depends on what the thread had read when stderr arrived (a pipe
        # carries no timestamps); before the switch, the thread's count
        # was taken (SpoolHandoverTests).
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
        """
        A reader following a pumped spool gets every byte, in order, while
        the job still runs (woken by the published growth, not the end).
        """
        n = 16 * HEAVY
        job = Job(self.spools(), Pumps(reactor))
        follower = Collect()
        reader = SpoolReader(job.spools[1], follower, 0, follow=True)
        following = reader.start()
        self.spawn(job, BURSTS, str(n), "3", "0")
        deadline = reactor.seconds() + 10  # type: ignore[attr-defined]
        while follower.size < n:
            self.assertLess(reactor.seconds(), deadline)  # type: ignore[attr-defined]
            await sleep(0.02)
        self.assertFalse(job.exited.called)
        self.assertEqual(job.taken, [1])
        await job.ended
        await following
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
        loses nothing; once its thread is free (the other stream went
        quiet and was given back), a stream still heavy gets it.
        """
        n = 8 * HEAVY
        pumps = Pumps(reactor, limit=1, idle=0.3)
        first, second = Job(self.spools(), pumps), Job(self.spoolsIn("b"), pumps)
        # The first holds the thread (quiet for less than 0.3 s at a time)
        # while the second writes all it has.
        self.spawn(first, BURSTS, str(n), *["0.1", str(HEAVY)] * 8)
        while first.taken != [1]:
            await sleep(0.01)
        self.spawn(second, WRITER, str(n))
        await second.ended
        self.assertEqual(second.taken, [])
        await first.ended
        self.assertEqual(second.spools[1].size, n)
        self.assertEqual(digestOf(second.spools[1].path), expected(n))
        self.assertEqual(first.spools[1].size, 2 * n)
        self.assertEqual(
            digestOf(first.spools[1].path), expectedPieces(n, *[HEAVY] * 8)
        )
        self.assertEqual(pumps.running, 0)

    async def test_theReactorNeverReadsAPumpedPipe(self) -> None:
        """
        Process.resumeProducing starts reading every pipe: not a pumped
        one, which the thread alone reads. Every byte arrives once.
        """
        n = 4 * HEAVY
        job = Job(self.spools(), Pumps(reactor, idle=30))
        transport = self.spawn(job, BURSTS, str(n), "0.5", str(n))
        while job.taken != [1]:
            await sleep(0.01)
        reader = transport.pipes[1]
        transport.pauseProducing()
        transport.resumeProducing()
        self.assertNotIn(reader, reactor.getReaders())  # type: ignore[attr-defined]
        await job.ended
        self.assertEqual(job.spools[1].size, 2 * n)
        self.assertEqual(digestOf(job.spools[1].path), expectedPieces(n, n))

    async def test_aQuietStreamGoesBackToTheReactor(self) -> None:
        """
        A pumped stream quiet for the idle time is read by the reactor
        again and its thread is free; when it turns heavy again, it is
        pumped again. Every byte arrives, once, in order.
        """
        n = 4 * HEAVY
        pumps = Pumps(reactor, limit=1, idle=0.2)
        job = Job(self.spools(maxBytes=3 * n), pumps)
        self.spawn(job, BURSTS, str(n), "0.8", str(n), "0.8", str(2 * n))
        await job.ended
        self.assertEqual(job.taken, [1, 1, 1])
        self.assertEqual((pumps.started, pumps.idled, pumps.running), (3, 2, 0))
        spool = job.spools[1]
        # The cap went back and forth with the stream: 3n kept, n dropped.
        self.assertEqual((spool.size, spool.dropped), (3 * n, n))
        self.assertEqual(digestOf(spool.path), expectedPieces(n, n, n))
        self.assertEqual(pumpsLeft(), [])

    async def test_pastItsCapSmallWritesGoBackToTheReactor(self) -> None:
        """
        A pumped stream past its cap, written a few bytes at a time, goes
        back to the reactor (which paces it: L{pipes.PipeDrain}) however
        long it stays busy: its thread read it write by write, and a tight
        writer cost the server most of a CPU. What it wrote is counted.
        """
        n = 4 * HEAVY
        pumps = Pumps(reactor, limit=1, idle=30.0)  # (never quiet long enough)
        job = Job(self.spools(maxBytes=HEAVY), pumps)
        go = os.path.join(self.folder, "go")
        self.spawn(job, PACED, str(n), go, "3")
        for _ in range(250):
            if pumps.idled:
                break
            await sleep(0.02)
        with open(go, "w"):
            pass
        await job.ended
        self.assertEqual(job.taken[:1], [1])
        self.assertGreaterEqual(pumps.idled, 1)
        spool = job.spools[1]
        self.assertEqual(spool.size, HEAVY)
        self.assertGreaterEqual(spool.dropped, 2 * n - HEAVY)
        self.assertEqual(digestOf(spool.path), expected(HEAVY))
        self.assertEqual(pumpsLeft(), [])

    async def test_thePumpGoesFirstWhenFollowed(self) -> None:
        """
        As root, a pump thread whose stream has a reader runs at a higher
        priority (NICE, relative to the server's) than the server's other
        threads: the job's pipe is drained before the reader is served.
        Unfollowed, it keeps the server's (it would only preempt the job);
        a reader that comes later raises it. Every byte arrives.
        """
        if os.getuid() != 0:
            raise SkipTest("only root may raise a thread's priority")
        base = niceOf(threading.get_native_id())
        n, k = 4 * HEAVY, 4096
        for early in (True, False):
            job = Job(self.spoolsIn(f"early-{early}"), Pumps(reactor, idle=30))
            follower = Collect()
            reader = SpoolReader(job.spools[1], follower, 0, follow=True)
            if early:
                following = reader.start()
            # The job writes on until the priority is seen: the thread, which
            # ends at the pipe's end, is there to be looked at (a job that
            # ended first, on a loaded machine, took it away).
            go = os.path.abspath(self.mktemp())
            self.spawn(job, PACED, str(n), go, str(k))
            while job.taken != [1]:
                await sleep(0.01)
            (thread,) = pumped()
            if not early:
                self.assertEqual(niceOf(thread.native_id), base)
                following = reader.start()
            deadline = reactor.seconds() + 10  # type: ignore[attr-defined]
            while niceOf(thread.native_id) != base + NICE:
                self.assertLess(reactor.seconds(), deadline)  # type: ignore[attr-defined]
                await sleep(0.01)
            self.assertEqual(niceOf(threading.get_native_id()), base)
            open(go, "w").close()
            await job.ended
            await following
            paced = (job.spools[1].size - 2 * n) // k
            expected = expectedPieces(n, *[k] * paced, n)
            self.assertEqual(digestOf(job.spools[1].path), expected)
            self.assertEqual(follower.digest.hexdigest(), expected)
            self.assertEqual(pumpsLeft(), [])

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
        pumps = Pumps(reactor, idle=60)
        job = Job(self.spools(), pumps)
        marker = os.path.abspath(self.mktemp())
        transport = self.spawn(job, INTERLEAVED, str(n), marker)
        await job.exited
        holders = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if readCmdline(pid).endswith(b"\0" + marker.encode()) and pid != os.getpid()
        ]
        self.assertEqual(len(holders), 1)
        self.addCleanup(os.kill, holders[0], 9)
        # The grandchild holds stdout open: the thread waits on the pipe.
        deadline = reactor.seconds() + 10  # type: ignore[attr-defined]
        while job.spools[1].size < 2 * n:
            self.assertLess(reactor.seconds(), deadline)  # type: ignore[attr-defined]
            await sleep(0.02)
        self.assertEqual(job.taken, [1])
        self.assertEqual(pumps.running, 1)
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


class SpoolHandoverTests(SynchronousTestCase):
    """The spool's side of a pump, on its own: grew, takeBack, the order."""

    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        self.order = OrderLog(os.path.join(folder, "order"))
        self.out, self.err = (
            OutputSpool(os.path.join(folder, name), None, None, self.order, index)
            for index, name in enumerate(("stdout", "stderr"))
        )
        self.addCleanup(self.out.close)
        self.addCleanup(self.err.close)

    def entries(self) -> list[tuple[int, int]]:
        with open(self.order.path, "rb") as f:
            return decodeEntries(f.read())

    def test_theThreadsCountIsTakenBeforeASwitch(self) -> None:
        """
        stdout is pumped; stderr (the reactor's) is about to switch the
        order: what the thread wrote so far is published first, so it is
        ordered before stderr's bytes, not after.
        """
        self.out.write(b"a" * 10)
        handover = self.out.handOver()
        assert handover is not None
        self.addCleanup(os.close, handover.fd)
        os.write(handover.fd, b"b" * 20)  # the thread appends ...
        self.order.beforeSwitch.append(lambda: self.out.grew(30, 0, 0, None))
        self.err.write(b"e")  # ... then stderr arrives
        self.out.grew(50, 0, 0, None)
        self.assertEqual(self.entries(), [(0, 0), (1, 0), (0, 30)])
        self.assertEqual((self.out.size, self.err.size), (50, 1))

    def test_grewLogsTheFirstLossOnce(self) -> None:
        """The first lost byte is logged once, with the thread's error."""
        events: list[dict[str, Any]] = []
        self.out.log = Logger(observer=events.append)
        self.out.write(b"x")
        handover = self.out.handOver()
        assert handover is not None
        os.close(handover.fd)
        self.out.grew(1, 0, 5, "No space left on device")
        self.out.grew(1, 0, 9, "No space left on device")
        self.assertEqual([e["error"] for e in events], ["No space left on device"])
        self.assertEqual(self.out.lost, 9)

    def test_takeBackRestoresTheCap(self) -> None:
        """After takeBack, write goes on with the room the thread left."""
        spool = OutputSpool(os.path.join(self.mktemp()), 10, None)
        self.addCleanup(spool.close)
        spool.write(b"abc")
        handover = spool.handOver()
        assert handover is not None and handover.room == 7
        os.write(handover.fd, b"defg")
        os.close(handover.fd)
        spool.grew(7, 0, 0, None)
        spool.takeBack(3)
        spool.write(b"hijkl")
        self.assertEqual((spool.size, spool.dropped), (10, 2))
        with open(spool.path, "rb") as f:
            self.assertEqual(f.read(), b"abcdefghij")

    def test_aClosedSpoolIgnoresLateCounts(self) -> None:
        """Counts that arrive after the spool closed change nothing."""
        self.out.write(b"x")
        self.out.close()
        self.out.grew(100, 3, 4, "late")
        self.assertEqual((self.out.size, self.out.dropped, self.out.lost), (1, 0, 0))


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
