"""The order file's cap: bounded like the streams, and nothing lost past it."""

from __future__ import annotations

import os

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.order import OrderLog, decodeEntries

from .support import LiveServer
from .test_combined import Job, assertResumesAtEveryByte, readAll, readerOf

#: Bytes each stream may take (so the order file too): 20 entries.
CAP = 160
#: What the job writes: 30 distinct tokens per stream, alternating, 5 bytes
#: each (150 a stream, under the cap): 60 switches, so the order file is
#: full after the 20th and the last 40 tokens are placed by no entry.
ALTERNATING = [
    (index % 2, b"%s%03d;" % (b"oe"[index % 2 : index % 2 + 1], index // 2))
    for index in range(60)
]


def ofStream(chunks: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(data for index, data in chunks if index == stream)


class OrderCapTests(SynchronousTestCase):
    """
    The order file takes at most the job's cap (--max-log-bytes), as each
    stream does; past it no entry is written, and a combined reader sends
    the bytes no entry places after those placed: coarser order, every byte
    of both streams once.
    """

    def test_theOrderFileIsBoundedByTheCap(self) -> None:
        """
        A job alternating 1-byte writes to its two streams wrote an entry
        per byte, 8 times its output: the order file grew past the cap the
        streams were held to. It stops at the cap (whole entries).
        """
        job = Job(self.mktemp(), maxBytes=100)
        job.write([(0, b"a"), (1, b"b")] * 1000)
        job.close()
        self.assertEqual([spool.size for spool in job.spools], [100, 100])
        self.assertEqual(os.path.getsize(job.order.path), 96)
        self.assertTrue(job.order.full)
        with open(job.order.path, "rb") as f:
            entries = decodeEntries(f.read())
        self.assertEqual(entries, [(i % 2, i // 2) for i in range(12)])

    def test_theLeastCapRules(self) -> None:
        """Given two caps (one per stream), the order file keeps the least."""
        order = OrderLog(os.path.join(self.mktemp(), "order"))
        order.bound(100)
        order.bound(50)
        order.bound(70)
        for index in range(10):
            order.switch(index % 2, index)
        order.close()
        self.assertEqual((order.size, os.path.getsize(order.path)), (48, 48))
        self.assertTrue(order.full)

    def test_noCapNoBound(self) -> None:
        """Spools without a cap leave the order file without one."""
        job = Job(self.mktemp())
        job.write([(0, b"a"), (1, b"b")] * 100)
        job.close()
        self.assertEqual(os.path.getsize(job.order.path), 200 * 8)
        self.assertFalse(job.order.full)

    def test_aCapUnderAnEntryKeepsTheFirst(self) -> None:
        """
        A cap smaller than an entry still records where the output starts:
        a follower of a job with no entry at all would wait for its end.
        """
        clock = Clock()
        job = Job(self.mktemp(), maxBytes=4, clock=clock)
        got: list[tuple[int, bytes]] = []
        reader = readerOf(job, got, follow=True)
        reader.start()
        job.write([(0, b"ab"), (1, b"cd"), (0, b"ef")])
        clock.advance(0)
        self.assertEqual(os.path.getsize(job.order.path), 8)
        self.assertEqual(sorted(got), [(0, b"abef"), (1, b"cd")])
        job.close()
        self.assertTrue(reader.done.called)

    def test_readAfterTheEndEveryByteOnce(self) -> None:
        """
        Read once the job has ended: the runs the entries place, in the
        order written; then the rest of each stream, whole (the last two
        entries' runs reach to their stream's end).
        """
        job = Job(self.mktemp(), maxBytes=CAP)
        job.write(ALTERNATING)
        job.close()
        self.assertEqual(os.path.getsize(job.order.path), CAP)
        got = readAll(*job.stored())
        for stream in (0, 1):
            self.assertEqual(
                b"".join(data for index, data, _ in got if index == stream),
                ofStream(ALTERNATING, stream),
            )
        placed = CAP // 8 - 2
        self.assertEqual(
            b"".join(data for _, data, _ in got),
            b"".join(data for _, data in ALTERNATING[:placed])
            + ofStream(ALTERNATING[placed:], 0)
            + ofStream(ALTERNATING[placed:], 1),
        )

    def test_resumeFromEveryByteAfterTheCap(self) -> None:
        """From any byte of a capped job's combined output, the rest follows
        with no gap and no repeat."""
        job = Job(self.mktemp(), maxBytes=CAP)
        job.write(ALTERNATING)
        job.close()
        read = [(stream, data) for stream, data, _ in readAll(*job.stored())]
        assertResumesAtEveryByte(self, job, read)

    def test_followersGetEveryByteOnce(self) -> None:
        """
        Followers, one from the start, one that starts once the order file
        is full, each woken at times that fall anywhere (every 7th write),
        get every byte of both streams once, each stream in its order.
        """
        clock = Clock()
        job = Job(self.mktemp(), maxBytes=CAP, clock=clock)
        early: list[tuple[int, bytes]] = []
        late: list[tuple[int, bytes]] = []
        readers = [readerOf(job, early, follow=True)]
        readers[0].start()
        for index, chunk in enumerate(ALTERNATING):
            job.write([chunk])
            if index == 30:
                self.assertTrue(job.order.full)
                readers.append(readerOf(job, late, follow=True))
                readers[1].start()
            if index % 7 == 0:
                clock.advance(0)
        self.assertFalse(any(reader.done.called for reader in readers))
        job.close()
        self.assertTrue(all(reader.done.called for reader in readers))
        for got in (early, late):
            for stream in (0, 1):
                self.assertEqual(ofStream(got, stream), ofStream(ALTERNATING, stream))
        # What the entries place, the early follower got in the order written.
        placed = CAP // 8 - 2
        self.assertEqual(
            b"".join(data for _, data in early)[: 5 * placed],
            b"".join(data for _, data in ALTERNATING[:placed]),
        )


class LiveOrderCapTests(TestCase):
    timeout = 60

    async def test_theOperatorsJob(self) -> None:
        """
        The job that showed the defect (1-byte writes alternating between
        stdout and stderr) under --max-log-bytes: its order file stays
        within the cap, and its combined output is every byte of both.
        """
        server = LiveServer(self, "--max-log-bytes=1000")
        job = await server.createJob(
            "python3",
            "-c",
            "import os, time\n"
            "for _ in range(1500):\n"
            "    os.write(1, b'a'); time.sleep(.0003)\n"
            "    os.write(2, b'b'); time.sleep(.0003)\n",
        )
        following = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined&follow=true"
        )
        followed = await treq.content(following)
        ended = await server.waitEnded(job["id"])
        self.assertEqual((ended["stdout_bytes"], ended["stderr_bytes"]), (1000, 1000))
        folder = os.path.join(server.stateDir, "jobs", job["id"])
        self.assertLessEqual(os.path.getsize(os.path.join(folder, "order")), 1000)
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined"
        )
        body = await treq.content(response)
        for output in (followed, body):
            self.assertEqual(sorted(output), sorted(b"a" * 1000 + b"b" * 1000))
