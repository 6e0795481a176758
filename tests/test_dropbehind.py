"""A spool's output leaves the page cache behind its live readers."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.dropbehind import (
    KEEP,
    MOST,
    NEVER,
    PAGE,
    RECHECK,
    STEP,
    DropBehind,
)
from jobworker.jobs.order import OrderLog
from jobworker.jobs.spool import OutputSpool, SpoolReader

from .test_contract import RecordingConsumer

MiB = 1 << 20


class Advice:
    """A fake C{posix_fadvise}: what was asked, optionally failing."""

    def __init__(self, error: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.error = error

    def __call__(self, fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        self.calls.append((offset, offset + length))


class Threads:
    """A fake C{runInThread}: each call waits until the test runs it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, f, args))
        return d

    def runNext(self) -> None:
        d, f, args = self.pending.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


def warnings(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """The warnings logged while C{case} runs."""
    seen: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.warn:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return seen


class DropBehindTests(SynchronousTestCase):
    def setUp(self) -> None:
        #: Any open file: each call gets a duplicate of it.
        self.fd = os.open(os.devnull, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    def test_keepsTheNewestOutput(self) -> None:
        """
        The first call comes once the spool holds KEEP + STEP bytes, and
        drops what is older than the newest KEEP; the next comes STEP later.
        """
        advice = Advice()
        drop = DropBehind("spool", advise=advice)
        self.assertEqual(drop.due, KEEP + STEP)
        drop.wrote(self.fd, KEEP + STEP, [])
        self.assertEqual(advice.calls, [(0, STEP)])
        self.assertEqual(drop.due, KEEP + 2 * STEP)
        self.assertEqual(drop.dropped, STEP)

    def test_readersHoldWhatTheyHaveYetToRead(self) -> None:
        """Nothing at or after the slowest reader's offset is dropped."""
        advice = Advice()
        drop = DropBehind("spool", advise=advice)
        drop.wrote(self.fd, KEEP + 4 * STEP, [3 * MiB + 5, 10**12])
        self.assertEqual(advice.calls, [(0, 3 * MiB)])  # rounded down to a page
        advice.calls.clear()
        drop.wrote(self.fd, KEEP + 5 * STEP, [0])
        self.assertEqual(advice.calls, [])  # a reader at 0: nothing to drop

    def test_reachesBackForPagesStillBeingWritten(self) -> None:
        """
        Each call covers RECHECK bytes before the last one's end again,
        since pages the kernel was still writing at one call are only
        dropped at a later one; no range is ever skipped, and none is
        longer than MOST (a reader that catches up gigabytes at once).
        """
        advice = Advice()
        drop = DropBehind("spool", advise=advice)
        size = KEEP + STEP
        while size - KEEP < 2 * RECHECK:
            drop.wrote(self.fd, size, [])
            size += STEP
        start, end = advice.calls[-1]
        self.assertEqual(end, size - STEP - KEEP)
        self.assertEqual(start, end - STEP - RECHECK)  # the last call's end
        size += 10 * MOST
        for _ in range(40):
            drop.wrote(self.fd, size, [])
        reach = 0
        for start, end in advice.calls:
            self.assertLessEqual(start, reach)  # no gap is ever left
            self.assertLessEqual(end - start, MOST)
            reach = max(reach, end)
        self.assertEqual(reach, size - KEEP)

    def test_aReaderWhoComesLateIsFollowed(self) -> None:
        """
        A reader attached late re-reads old output into the cache: as it
        moves on, what it read is dropped again, with no gap.
        """
        advice = Advice()
        drop = DropBehind("spool", advise=advice)
        size = 10 * RECHECK
        drop.wrote(self.fd, size, [])
        advice.calls.clear()
        for position in range(0, 9 * RECHECK, 2 * RECHECK):
            drop.wrote(self.fd, size, [position])
        reach = 0
        for start, end in advice.calls:
            self.assertLessEqual(start, reach)
            reach = max(reach, end)
        self.assertEqual(reach, 8 * RECHECK)

    def test_aFileThatCannotBeAdvisedKeepsItsCache(self) -> None:
        """An error stops the calls, with one warning."""
        seen = warnings(self)
        advice = Advice(errno.ESPIPE)
        drop = DropBehind("spool", advise=advice)
        drop.wrote(self.fd, KEEP + STEP, [])
        self.assertEqual(drop.due, NEVER)
        self.assertEqual(drop.dropped, 0)
        drop.sweep(self.fd, KEEP + 10 * STEP, [])
        self.assertEqual(len(seen), 1)
        self.assertIn("spool", seen[0]["path"])

    def test_inAThreadOneAtATimeOnItsOwnDescriptor(self) -> None:
        """
        In a thread, the call gets a descriptor of its own (closed after),
        one call runs at a time per spool, and its end is recorded once it
        is done; a failure there warns and stops the calls.
        """
        advice = Advice()
        threads = Threads()
        drop = DropBehind("spool", threads, advice)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        drop.wrote(w, KEEP + STEP, [])
        self.assertEqual(len(threads.pending), 1)
        own = threads.pending[0][2][0]
        self.assertNotEqual(own, w)
        drop.wrote(w, KEEP + 2 * STEP, [])  # still running: skipped
        self.assertEqual(len(threads.pending), 1)
        self.assertEqual(drop.dropped, 0)
        threads.runNext()
        self.assertEqual(advice.calls, [(0, STEP)])
        self.assertEqual(drop.dropped, STEP)
        self.assertRaises(OSError, os.fstat, own)  # closed in the thread
        seen = warnings(self)
        advice.error = errno.EBADF
        drop.wrote(w, KEEP + 3 * STEP, [])
        threads.runNext()
        self.assertEqual(drop.due, NEVER)
        self.assertEqual(len(seen), 1)


def resident(path: str) -> list[bool]:
    """For each page of the file at C{path}, whether it is in the page cache."""
    size = os.path.getsize(path)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    vector = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Mapping a file reads nothing into the cache; mincore only looks.
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return [bool(flag & 1) for flag in vector]


def skipUnlessDropping(directory: str) -> None:
    """Skip, saying why, if the file system of C{directory} keeps its cache."""
    probe = os.path.join(directory, "probe")
    with open(probe, "wb") as f:
        f.write(b"x" * UNIT)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, UNIT, os.POSIX_FADV_DONTNEED)
    try:
        if any(resident(probe)):
            raise SkipTest(
                f"the file system of {directory} keeps dropped pages "
                "(tmpfs?): nothing here to observe"
            )
    finally:
        os.unlink(probe)


#: The sizes of L{SpoolCacheTests}' spools, small to leave little on disk:
#: what they keep, how often they call, how far back.
UNIT = 64 * 1024
TEST_KEEP = 16 * UNIT
TEST_STEP = 4 * UNIT
TEST_RECHECK = 32 * UNIT


class SpoolCacheTests(SynchronousTestCase):
    """
    Real files: which pages of a spool the kernel still caches (mincore)
    after the spool handed some back. Each test first writes back what it
    wrote (fsync from its own descriptor), so the pages are clean and the
    kernel drops them at once, as it does a moment later in a server.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        skipUnlessDropping(self.directory)

    def spool(self, name: str = "stdout", **kwargs: Any) -> OutputSpool:
        path = os.path.join(self.directory, name)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        drop = DropBehind(path, keep=TEST_KEEP, step=TEST_STEP, recheck=TEST_RECHECK)
        return OutputSpool(path, dropBehind=drop, **kwargs)

    def fill(self, spool: OutputSpool, size: int) -> None:
        """Write up to C{size} bytes, every page clean but the last UNIT's."""
        chunk = b"\x5a" * UNIT
        while spool.size < size - UNIT:
            spool.write(chunk[: size - UNIT - spool.size])
        fd = os.open(spool.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        spool.write(chunk[: size - spool.size])

    def cached(self, spool: OutputSpool) -> str:
        """Per UNIT of the spool: C{+} all of it is cached, C{.} not."""
        pages = resident(spool.path)
        per = UNIT // PAGE
        return "".join(
            "+" if all(pages[i : i + per]) else "." for i in range(0, len(pages), per)
        )

    def test_theNewestOutputStays(self) -> None:
        """Without readers, all but the newest KEEP bytes leave the cache."""
        spool = self.spool()
        self.fill(spool, TEST_KEEP + TEST_STEP)
        self.assertEqual(spool.size, TEST_KEEP + TEST_STEP)
        self.assertEqual(self.cached(spool), "...." + "+" * 16)
        spool.close()

    def test_closingSweepsOnceMore(self) -> None:
        """
        At its close a spool hands back what was written since its last
        call, but for the newest KEEP.
        """
        spool = self.spool()
        self.fill(spool, TEST_KEEP + TEST_STEP)
        self.fill(spool, TEST_KEEP + TEST_STEP + 3 * UNIT)
        self.assertEqual(self.cached(spool), "...." + "+" * 19)
        spool.close()
        self.assertEqual(self.cached(spool), "......." + "+" * 16)

    def test_aLaggingReaderKeepsWhatItHasYetToRead(self) -> None:
        """
        A follower that has not read yet holds the whole spool in the
        cache; once it has read, the pages go.
        """
        spool = self.spool()
        consumer = RecordingConsumer()
        reader = SpoolReader(spool, consumer, 0, follow=True)  # type: ignore[arg-type]
        reader.start()
        reader.pauseProducing()
        self.fill(spool, TEST_KEEP + TEST_STEP)
        self.assertEqual(self.cached(spool), "+" * 20)
        reader.resumeProducing()
        self.assertEqual(sum(map(len, consumer.written)), spool.size)
        self.fill(spool, TEST_KEEP + 2 * TEST_STEP)
        self.assertEqual(self.cached(spool), "." * 8 + "+" * 16)
        reader.stopProducing()
        self.failureResultOf(reader.done)
        spool.close()

    def test_aReaderThatLeftHoldsNothing(self) -> None:
        """
        A follower that leaves while it lags (its client went away) no
        longer holds the pages it had not read.
        """
        spool = self.spool()
        reader = SpoolReader(spool, RecordingConsumer(), 0, follow=True)  # type: ignore[arg-type]
        reader.start()
        reader.pauseProducing()
        self.fill(spool, TEST_KEEP + TEST_STEP)
        self.assertEqual(self.cached(spool), "+" * 20)
        reader.stopProducing()
        self.failureResultOf(reader.done)
        self.fill(spool, TEST_KEEP + 2 * TEST_STEP)
        self.assertEqual(self.cached(spool), "." * 8 + "+" * 16)
        spool.close()

    def test_aReaderStoppedBeforeItStartedNeverHolds(self) -> None:
        """A reader stopped before its start never attaches."""
        spool = self.spool()
        reader = SpoolReader(spool, RecordingConsumer(), 0, follow=True)  # type: ignore[arg-type]
        reader.stopProducing()
        self.failureResultOf(reader.done)
        reader.start()
        self.fill(spool, TEST_KEEP + TEST_STEP)
        self.assertEqual(self.cached(spool), "...." + "+" * 16)
        spool.close()

    def test_combinedReaderHoldsEachStreamAtItsOwnPosition(self) -> None:
        """A combined follower holds each stream from where it is in it."""
        order = OrderLog(os.path.join(self.directory, "order"))
        streams = (
            self.spool("stdout", order=order, index=0),
            self.spool("stderr", order=order, index=1),
        )
        consumer = RecordingConsumer()
        reader = CombinedReader(
            streams,
            order,
            consumer,  # type: ignore[arg-type]
            lambda _, data: consumer.write(data),
            follow=True,
        )
        reader.start()
        streams[1].write(b"e" * UNIT)  # the reader takes it (no clock: at once)
        self.assertEqual(reader.position, [0, UNIT])
        reader.pauseProducing()
        self.fill(streams[0], TEST_KEEP + TEST_STEP)
        self.fill(streams[1], TEST_KEEP + TEST_STEP)
        self.assertEqual(self.cached(streams[0]), "+" * 20)
        # stderr: the reader is at UNIT, so what is before it may go.
        self.assertEqual(self.cached(streams[1]), "." + "+" * 19)
        reader.stopProducing()
        self.failureResultOf(reader.done)
        for spool in streams:
            spool.close()


class ServerTests(TestCase):
    async def test_aServerHandsBackWhatNobodyReads(self) -> None:
        """
        A real twistd: the output of a job nobody follows leaves the page
        cache as it is written (in the server's threads), but for the
        newest KEEP.
        """
        from .twistd import Twistd

        server = Twistd(self)
        os.makedirs(server.workDir, exist_ok=True)
        skipUnlessDropping(server.workDir)
        await server.start()
        chunk = 8 * MiB
        # In steps, with time between them for the disk to take each.
        script = (
            f"for i in 1 2 3 4 5 6 7 8 9 10; do head -c {chunk} /dev/zero; "
            "sleep 0.2; done"
        )
        job = await server.createJob("sh", "-c", script)

        async def ended() -> Any:
            _, record = await server.json("GET", f"/jobs/{job['id']}")
            return record if record["status"] not in ("PENDING", "RUNNING") else None

        record = await server.poll(ended, 60, "the job to end")
        self.assertEqual(record["status"], "COMPLETED", record)
        self.assertEqual(record["stdout_bytes"], 10 * chunk)
        pages = resident(os.path.join(server.stateDir, "jobs", job["id"], "stdout"))
        older = pages[: (10 * chunk - KEEP) // PAGE]
        # The kernel drops a page only once it is on disk: most, not all.
        self.assertLess(sum(older), len(older) // 2, f"{sum(older)} of {len(older)}")
        await server.stop()


class PrivateFolderTests(SynchronousTestCase):
    """
    The jobs folder removed under a running server was made again 0755 by
    the next job's output (C{os.makedirs} gives the folders above the leaf
    the default mode), so every user could list the job ids in it (fault
    round 5). Each folder made is 0700.
    """

    def test_everyFolderMadeIsPrivate(self) -> None:
        top = os.path.abspath(self.mktemp())
        os.makedirs(top)
        folder = os.path.join(top, "jobs", "7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1")
        spool = OutputSpool(os.path.join(folder, "stdout"))
        spool.write(b"x")
        spool.close()
        order = OrderLog(os.path.join(top, "other", "job", "order"))
        order.switch(0, 0)
        for path in (folder, os.path.dirname(folder), os.path.join(top, "other")):
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o700, path)
