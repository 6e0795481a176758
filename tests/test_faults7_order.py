"""
An order file truncated by hand under a running job (fault round 7): later
entries stay in their place, and a combined read sends every byte once, the
Content-Length it announced and no less (it sent half and hung).
"""

from __future__ import annotations

import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.order import decodeEntries, encodeEntry
from jobworker.jobs.spool import OutputUnreadable

from .support import LiveServer, sharedPath, sleep
from .test_combined import CHUNKS, Job, readAll, readerOf
from .test_contract import RecordingConsumer

#: Written before the order file is cut, then after.
BEFORE = [(0, b"o1 "), (1, b"e1 "), (0, b"o2 "), (1, b"e2 ")]
AFTER = [(0, b"o3 "), (1, b"e3 "), (0, b"o4 "), (1, b"e4 ")]


def truncate(path: str, size: int = 0) -> None:
    """C{truncate -s SIZE path}, as the fault round did."""
    with open(path, "r+b") as f:
        f.truncate(size)


def words(data: bytes) -> list[bytes]:
    return sorted(data.split())


def everyWord(chunks: list[tuple[int, bytes]]) -> list[bytes]:
    return words(b"".join(data for _, data in chunks))


class TruncatedOrderLogTests(SynchronousTestCase):
    """L{OrderLog} writes each entry at its own offset."""

    def test_laterEntriesInTheirPlace(self) -> None:
        """
        After a truncation by hand, the next entries land where they belong
        (past a hole, which reads as entries placing nothing new), not at
        the start of the file as though they were the first.
        """
        job = Job(self.mktemp())
        job.write(BEFORE)
        truncate(job.order.path)
        job.write(AFTER)
        job.close()
        with open(job.order.path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), job.order.size)
        self.assertEqual(data[:32], b"\0" * 32)
        self.assertEqual(decodeEntries(data[32:]), [(0, 6), (1, 6), (0, 9), (1, 9)])


class TruncatedOrderReaderTests(SynchronousTestCase):
    """L{CombinedReader} over an order file that does not cover the output."""

    def test_entriesThatSkipBytesLoseNothing(self) -> None:
        """
        An order file whose first entries are gone (what the old server
        left: later entries written at the start of the truncated file)
        still gives every byte once: those no entry places are sent with
        the next run of their stream, not skipped.
        """
        job = Job(self.mktemp())
        job.write(CHUNKS)
        job.close()
        with open(job.order.path, "rb") as f:
            entries = decodeEntries(f.read())
        with open(job.order.path, "wb") as f:
            f.write(b"".join(encodeEntry(s, o) for s, o in entries[2:]))
        merged = b"".join(data for _, data, _ in readAll(*job.stored()))
        self.assertEqual(len(merged), 42)
        self.assertEqual(words(merged), everyWord(CHUNKS))

    def test_endedJobCutWhileRunning(self) -> None:
        """
        The reproduction, ended: cut while running, then written on. Every
        byte once: those no entry places with the next run of their stream
        (o3's, e3's), then the runs after in their order.
        """
        job = Job(self.mktemp())
        job.write(BEFORE)
        truncate(job.order.path)
        job.write(AFTER)
        job.close()
        merged = b"".join(data for _, data, _ in readAll(*job.stored()))
        self.assertEqual(words(merged), everyWord(BEFORE + AFTER))
        self.assertEqual(merged, b"o1 o2 o3 e1 e2 e3 o4 e4 ")

    def test_snapshotOfAShortOrderSendsItsSizes(self) -> None:
        """
        A read of a running job as it is, its order file shorter than the
        size recorded (cut, no switch since): the sizes it announced, every
        byte (it sent none, and the response hung on its Content-Length).
        """
        job = Job(self.mktemp())
        job.write(BEFORE)
        truncate(job.order.path)
        job.write([(1, b"e2b ")])  # the same stream: no entry written
        announced = sum(spool.size for spool in job.spools)
        got: list[tuple[int, bytes]] = []
        reader = readerOf(job, got)
        reader.start()
        self.assertTrue(reader.done.called)
        self.assertEqual(sum(len(data) for _, data in got), announced)
        self.assertEqual(
            words(b"".join(data for _, data in got)),
            everyWord([*BEFORE, (1, b"e2b ")]),
        )

    def test_cutToHalfAnEntry(self) -> None:
        """Cut in the middle of an entry, then written on: every byte once."""
        job = Job(self.mktemp())
        job.write(BEFORE)
        truncate(job.order.path, 8 + 3)
        job.write(AFTER)
        got: list[tuple[int, bytes]] = []
        snapshot = readerOf(job, got)
        snapshot.start()
        self.assertTrue(snapshot.done.called)
        self.assertEqual(
            words(b"".join(data for _, data in got)), everyWord(BEFORE + AFTER)
        )
        job.close()
        merged = b"".join(data for _, data, _ in readAll(*job.stored()))
        self.assertEqual(words(merged), everyWord(BEFORE + AFTER))

    def followed(self, cutBeforeStart: bool, switchAfter: bool) -> None:
        clock = Clock()
        job = Job(self.mktemp(), clock=clock)
        got: list[tuple[int, bytes]] = []
        reader = None
        if not cutBeforeStart:
            reader = readerOf(job, got, follow=True)
            reader.start()
        job.write(BEFORE)
        clock.advance(0)
        truncate(job.order.path)
        if reader is None:
            reader = readerOf(job, got, follow=True)
            reader.start()
        more = AFTER if switchAfter else [(1, b"e2b "), (1, b"e2c ")]
        for chunk in more:
            job.write([chunk])
            clock.advance(0)
        self.assertFalse(reader.done.called)
        job.close()
        self.assertTrue(reader.done.called)
        live = b"".join(data for _, data in got)
        self.assertEqual(words(live), everyWord(BEFORE + more))
        self.assertEqual(len(live), sum(spool.size for spool in job.spools))

    def test_followerFromBeforeTheCut(self) -> None:
        """A follower started before the cut gets every byte once."""
        self.followed(cutBeforeStart=False, switchAfter=True)

    def test_followerFromAfterTheCut(self) -> None:
        """A follower started after the cut gets every byte once."""
        self.followed(cutBeforeStart=True, switchAfter=True)

    def test_followerAfterTheCutNoSwitchSince(self) -> None:
        """
        A follower started after the cut, the job switching no more (the
        order file stays short to the end): every byte once, at the end.
        """
        self.followed(cutBeforeStart=True, switchAfter=False)

    def test_aReaderThatCannotPlaceEveryByteFails(self) -> None:
        """
        Should a reader end without having sent every byte it was to send
        (here: the bytes no entry places are not placed), it fails, so the
        response is cut, rather than ending short of its Content-Length.
        """
        self.patch(CombinedReader, "_unrecorded", lambda self, stream: False)
        job = Job(self.mktemp())
        job.write(CHUNKS)
        job.close()
        truncate(job.order.path, 8)
        streams, order = job.stored()
        reader = CombinedReader(
            streams,
            order,
            RecordingConsumer(),  # type: ignore[arg-type]
            lambda stream, data: None,
        )
        failures: list[Any] = []
        reader.start().addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        failures[0].trap(OutputUnreadable)


#: The reproduction's job: 20 lines to each stream, alternating, then (once
#: the gate $1 is there) 20 more.
HALVES = (
    "half() { i=$1; while [ $i -lt $2 ]; do i=$((i+1)); "
    "echo out$i; echo err$i >&2; done; }; "
    'half 0 20; while [ ! -e "$1" ]; do sleep 0.01; done; half 20 40'
)


def expectedLines() -> list[bytes]:
    return sorted(
        b"%s%d" % (name, i) for name in (b"out", b"err") for i in range(1, 41)
    )


class LiveTruncatedOrderTests(TestCase):
    timeout = 60

    async def read(self, server: LiveServer, path: str) -> tuple[Any, bytes]:
        """A response and its body, failing after 10 s rather than hanging."""
        response = await server.request("GET", path)
        body = await treq.content(response).addTimeout(10, reactor)
        return response, body

    async def test_theReproduction(self) -> None:
        """
        The order file cut while the job runs: a follower from before, a
        snapshot while it runs and a read after it ended all get every
        byte, and a snapshot exactly its Content-Length.
        """
        server = LiveServer(self)
        gate = sharedPath(self)
        job = await server.createJob("sh", "-c", HALVES, "sh", gate)
        following = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined&follow=true"
        )
        followed = treq.content(following)
        half = sum(len(b"out%d\n" % i) for i in range(1, 21))
        while True:
            _, record = await server.json("GET", f"/jobs/{job['id']}")
            if (record["stdout_bytes"], record["stderr_bytes"]) == (half, half):
                break
            await sleep(0.01)
        truncate(os.path.join(server.stateDir, "jobs", job["id"], "order"))
        response, snapshot = await self.read(
            server, f"/jobs/{job['id']}/logs?stream=combined"
        )
        self.assertEqual((response.length, len(snapshot)), (2 * half, 2 * half))
        open(gate, "w").close()
        ended = await server.waitEnded(job["id"])
        response, body = await self.read(
            server, f"/jobs/{job['id']}/logs?stream=combined"
        )
        total = ended["stdout_bytes"] + ended["stderr_bytes"]
        self.assertEqual((response.length, len(body)), (total, total))
        self.assertEqual(sorted(body.split()), expectedLines())
        followedBody = await followed.addTimeout(10, reactor)
        self.assertEqual(sorted(followedBody.split()), expectedLines())
