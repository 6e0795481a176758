"""A spool's output leaves the page cache behind its live readers."""

from __future__ import annotations

import ctypes
import mmap
import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.dropbehind import KEEP, NEVER, PAGE, RECHECK, STEP, DropBehind
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


class DropBehindTests(SynchronousTestCase):
    def test_keepsTheNewestOutput(self) -> None:
        """
        The first call comes once the spool holds KEEP + STEP bytes, and
        drops what is older than the newest KEEP; the next comes STEP later.
        """
        advice = Advice()
        drop = DropBehind("spool", advice)
        self.assertEqual(drop.due, KEEP + STEP)
        drop.wrote(3, KEEP + STEP, [])
        self.assertEqual(advice.calls, [(0, STEP)])
        self.assertEqual(drop.due, KEEP + 2 * STEP)
        self.assertEqual(drop.dropped, STEP)

    def test_readersHoldWhatTheyHaveYetToRead(self) -> None:
        """Nothing at or after the slowest reader's offset is dropped."""
        advice = Advice()
        drop = DropBehind("spool", advice)
        drop.wrote(3, KEEP + 4 * STEP, [3 * MiB + 5, 10**12])
        self.assertEqual(advice.calls, [(0, 3 * MiB)])  # rounded down to a page
        advice.calls.clear()
        drop.wrote(3, KEEP + 5 * STEP, [0])
        self.assertEqual(advice.calls, [])  # a reader at 0: nothing to drop

    def test_reachesBackForPagesStillBeingWritten(self) -> None:
        """
        Each call covers RECHECK bytes before its end again, since pages
        the kernel was still writing at one call are only dropped at a later
        one; a long step forward covers everything since the last call.
        """
        advice = Advice()
        drop = DropBehind("spool", advice)
        size = KEEP + STEP
        while size - KEEP < 2 * RECHECK:
            drop.wrote(3, size, [])
            size += STEP
        start, end = advice.calls[-1]
        self.assertEqual(end, size - STEP - KEEP)
        self.assertEqual(start, end - STEP - RECHECK)  # the last call's end
        drop.wrote(3, size + 10 * RECHECK, [])
        self.assertEqual(advice.calls[-1], (end - RECHECK, size + 10 * RECHECK - KEEP))
        covered = sorted(advice.calls)
        reach = 0
        for start, end in covered:
            self.assertLessEqual(start, reach)  # no gap is ever left
            reach = max(reach, end)

    def test_aFileThatCannotBeAdvisedKeepsItsCache(self) -> None:
        """An error (not a regular file system) stops the calls, once."""
        import errno

        advice = Advice(errno.ESPIPE)
        drop = DropBehind("spool", advice)
        drop.wrote(3, KEEP + STEP, [])
        self.assertEqual(drop.due, NEVER)
        self.assertEqual(drop.dropped, 0)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


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
        probe = os.path.join(self.directory, "probe")
        with open(probe, "wb") as f:
            f.write(b"x" * MiB)
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, MiB, os.POSIX_FADV_DONTNEED)
        if any(resident(probe)):
            raise SkipTest(
                f"the file system of {self.directory} keeps dropped pages "
                "(tmpfs?): nothing here to observe"
            )
        os.unlink(probe)

    def spool(self, name: str = "stdout", **kwargs: object) -> OutputSpool:
        return OutputSpool(os.path.join(self.directory, name), **kwargs)  # type: ignore[arg-type]

    def fill(self, spool: OutputSpool, size: int) -> None:
        """Write C{size} bytes, every page of it clean but the last MiB's."""
        chunk = b"\x5a" * MiB
        while spool.size < size - MiB:
            spool.write(chunk[: size - MiB - spool.size])
        fd = os.open(spool.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        spool.write(chunk[: size - spool.size])

    def cachedMiB(self, spool: OutputSpool) -> list[bool]:
        """Per MiB of the spool: whether all of it is in the page cache."""
        pages = resident(spool.path)
        per = MiB // PAGE
        return [all(pages[i : i + per]) for i in range(0, len(pages), per)]

    def test_theNewestOutputStays(self) -> None:
        """Without readers, all but the newest KEEP bytes leave the cache."""
        spool = self.spool()
        self.fill(spool, KEEP + STEP)
        cached = self.cachedMiB(spool)
        self.assertEqual(cached, [False] * (STEP // MiB) + [True] * (KEEP // MiB))
        spool.close()

    def test_aLaggingReaderKeepsWhatItHasYetToRead(self) -> None:
        """
        A follower that has not read yet holds the whole spool in the cache;
        once it has read, the pages go; a reader that left holds nothing.
        """
        spool = self.spool()
        consumer = RecordingConsumer()
        reader = SpoolReader(spool, consumer, 0, follow=True)  # type: ignore[arg-type]
        reader.start()
        reader.pauseProducing()
        self.fill(spool, KEEP + STEP)
        self.assertEqual(self.cachedMiB(spool), [True] * ((KEEP + STEP) // MiB))
        reader.resumeProducing()
        self.assertEqual(sum(map(len, consumer.written)), KEEP + STEP)
        reader.stopProducing()
        self.failureResultOf(reader.done)
        self.fill(spool, KEEP + 2 * STEP)
        cached = self.cachedMiB(spool)
        self.assertEqual(cached, [False] * (2 * STEP // MiB) + [True] * (KEEP // MiB))
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
        streams[1].write(b"e" * MiB)  # the reader takes it (no clock: at once)
        self.assertEqual(reader.position, [0, MiB])
        reader.pauseProducing()
        self.fill(streams[0], KEEP + STEP)
        self.fill(streams[1], KEEP + STEP)
        self.assertEqual(self.cachedMiB(streams[0]), [True] * ((KEEP + STEP) // MiB))
        # stderr: the reader is at 1 MiB, so what is before it may go.
        self.assertEqual(
            self.cachedMiB(streams[1]),
            [False] + [True] * ((KEEP + STEP) // MiB - 1),
        )
        reader.stopProducing()
        self.failureResultOf(reader.done)
        for spool in streams:
            spool.close()
