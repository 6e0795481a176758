"""Followers of a job that writes at full speed take a bounded share of each turn."""

from __future__ import annotations

import base64
import hashlib
import os

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.order import OrderLog
from jobworker.jobs.pacing import (
    GRANT,
    MAX_CREDIT,
    PRESSING,
    QUIET,
    SHARE,
    Pacer,
)
from jobworker.jobs.spool import OutputSpool, SpoolReader

from .support import LiveServer
from .test_contract import RecordingConsumer, parseEvents

#: One pipe's worth, as a heavy writer's reads bring it.
BIG = bytes(range(256)) * (PRESSING // 256) * 4
#: A write that earns its readers exactly one grant.
PACE = (BIG * (GRANT * SHARE // len(BIG) + 1))[: GRANT * SHARE]


class Tally(RecordingConsumer):
    """A consumer that keeps only the size and digest of what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.digest.update(data)


def digestOf(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PacerTests(SynchronousTestCase):
    def test_pressingOnlyAfterALargeWrite(self) -> None:
        """A large write presses; a small one, or a quiet spell, does not."""
        clock = Clock()
        pacer = Pacer(clock)
        pacer.wrote(PRESSING - 1)
        self.assertFalse(pacer.pressing)
        pacer.wrote(PRESSING)
        self.assertTrue(pacer.pressing)
        clock.advance(QUIET)
        self.assertFalse(pacer.pressing)
        pacer.wrote(PRESSING)
        pacer.ended()
        self.assertFalse(pacer.pressing)

    def test_pressingByRateNotByReadSize(self) -> None:
        """
        Many small writes in quick succession press (a fast reader makes
        small reads); the same writes spread out do not.
        """
        clock = Clock()
        pacer = Pacer(clock)
        for _ in range(2 * PRESSING // 8192):
            pacer.wrote(8192)
            self.assertFalse(pacer.pressing)
            clock.advance(QUIET * 2)
        for _ in range(PRESSING // 8192):
            pacer.wrote(8192)
            clock.advance(QUIET / 1000)
        self.assertTrue(pacer.pressing)
        clock.advance(QUIET)  # the window ends: the next writes still press
        pacer.wrote(8192)
        self.assertTrue(pacer.pressing)

    def test_notPressingIsUnbounded(self) -> None:
        pacer = Pacer(Clock())
        pacer.wrote(10)
        self.assertEqual(pacer.grant(10**9), 10**9)

    def test_grantsAShareOfWhatWasWritten(self) -> None:
        """One byte per SHARE written, in grants, credit capped."""
        pacer = Pacer(Clock())
        pacer.wrote(GRANT * SHARE)
        self.assertEqual(pacer.grant(10**9), GRANT)
        self.assertEqual(pacer.grant(10**9), 0)
        for _ in range(10):
            pacer.wrote(GRANT * SHARE)
        granted = 0
        while share := pacer.grant(10**9):
            granted += share
        self.assertEqual(granted, MAX_CREDIT)

    def test_eachWriteWakesWhomItsCreditPays(self) -> None:
        """
        Waiting readers are woken in line, as many per write as its credit
        pays grants for; the rest cost nothing until their turn.
        """
        clock = Clock()
        pacer = Pacer(clock)
        pacer.wrote(PRESSING)
        pacer.grant(GRANT)
        woken: list[int] = []
        for n in range(5):
            pacer.wait().addCallback(lambda _, n=n: woken.append(n))
        cancelled = pacer.wait()
        cancelled.addErrback(lambda _: None)
        cancelled.cancel()
        pacer.wrote(GRANT * SHARE)
        self.assertEqual(woken, [0])
        pacer.wrote(2 * GRANT * SHARE)
        self.assertEqual(woken, [0, 1, 2])
        pacer.ended()
        self.assertEqual(woken, [0, 1, 2, 3, 4])

    def test_lineReleasedWhenTheJobGoesQuiet(self) -> None:
        """A job that stops writing releases every waiting reader."""
        clock = Clock()
        pacer = Pacer(clock)
        pacer.wrote(PRESSING)
        pacer.grant(GRANT)
        woken: list[None] = []
        pacer.wait().addCallback(woken.append)
        clock.advance(QUIET / 2)
        pacer.wrote(PRESSING // 4)
        clock.advance(QUIET / 2)
        self.assertEqual(woken, [])  # it wrote within QUIET: still pressing
        clock.advance(QUIET)
        self.assertEqual(woken, [None])
        self.assertEqual(clock.getDelayedCalls(), [])


class PacedFollowerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        directory = self.mktemp()
        self.order = OrderLog(os.path.join(directory, "order"))
        self.spools = tuple(
            OutputSpool(os.path.join(directory, name), None, self.clock, self.order, i)
            for i, name in enumerate(("stdout", "stderr"))
        )
        self.spool = self.spools[0]

    def follow(self, n: int) -> list[Tally]:
        consumers = [Tally() for _ in range(n)]
        for consumer in consumers:
            SpoolReader(self.spool, consumer, 0, True).start()  # type: ignore[arg-type]
        return consumers

    def test_followersLagWhileTheJobPresses(self) -> None:
        """
        While every turn brings a full pipe, 16 followers each send their
        share per turn, not all there is; once the job ends they catch up,
        every byte, in order.
        """
        consumers = self.follow(16)
        for _ in range(8):
            self.spool.write(PACE)
            self.clock.advance(0)
        sent = sorted(c.size for c in consumers)
        # A grant per write, in line: (the first one served, from the
        # spool's wake, was first to be denied too, so first in line.)
        self.assertEqual(sent, [0] * 9 + [GRANT] * 6 + [2 * GRANT])
        # Waiting followers cost no timer per turn: only the spool's wake
        # and the pacer's release check are pending.
        self.assertLessEqual(len(self.clock.getDelayedCalls()), 2)
        self.spool.close()
        while self.clock.getDelayedCalls():
            self.clock.advance(0)
        for consumer in consumers:
            self.assertEqual(consumer.digest.hexdigest(), digestOf(PACE * 8))

    def test_oneFollowerLagsThenCatchesUp(self) -> None:
        """
        Even a single follower takes only its share while the job presses,
        and gets the rest once the stream closes.
        """
        (consumer,) = self.follow(1)
        for turn in range(1, 5):
            self.spool.write(PACE)
            self.clock.advance(0)
            self.assertEqual(consumer.size, turn * GRANT)
        self.spool.close()
        while self.clock.getDelayedCalls():
            self.clock.advance(0)
        self.assertEqual(consumer.digest.hexdigest(), digestOf(PACE * 4))

    def test_followersCatchUpWhenTheJobPauses(self) -> None:
        """
        A job that pressed, then went quiet (no write for a turn), does not
        hold its followers back: they send the rest at once.
        """
        consumers = self.follow(4)
        self.spool.write(BIG)
        self.clock.advance(0)
        self.assertLess(consumers[0].size, len(BIG))
        self.clock.advance(QUIET)
        self.clock.advance(0)
        for consumer in consumers:
            self.assertEqual(consumer.digest.hexdigest(), digestOf(BIG))

    def test_followerGoneWhileWaitingIsForgotten(self) -> None:
        """
        A follower whose client went away while it waited in line leaves the
        line: later writes wake the others, and nothing fails.
        """
        consumers = [Tally() for _ in range(3)]
        readers = [
            SpoolReader(self.spool, consumer, 0, True)  # type: ignore[arg-type]
            for consumer in consumers
        ]
        for reader in readers:
            reader.start().addErrback(lambda _: None)
        self.spool.write(PACE)
        self.clock.advance(0)
        readers[1].stopProducing()
        self.assertTrue(readers[1].done.called)
        for _ in range(3):
            self.spool.write(PACE)
            self.clock.advance(0)
        self.spool.close()
        self.clock.advance(0)
        for index in (0, 2):
            self.assertEqual(consumers[index].digest.hexdigest(), digestOf(PACE * 4))
        self.assertLess(consumers[1].size, 4 * len(PACE))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_quietJobNotPaced(self) -> None:
        """Small writes (the pipe never filled) reach followers at once."""
        consumers = self.follow(16)
        for _ in range(10):
            self.spool.write(b"x" * 1000)
        self.clock.advance(0)
        for consumer in consumers:
            self.assertEqual(consumer.digest.hexdigest(), digestOf(b"x" * 10000))

    def test_combinedFollowerPaced(self) -> None:
        """A combined follower is paced too, and gets every byte in order."""
        consumer = RecordingConsumer()
        got: list[bytes] = []
        readers = [
            CombinedReader(
                self.spools,
                self.order,
                consumer,  # type: ignore[arg-type]
                lambda _, data: got.append(data),
                follow=True,
                clock=self.clock,
            )
            for _ in range(8)
        ]
        for reader in readers:
            reader.start()
        self.spools[0].write(BIG)
        self.spools[1].write(BIG)
        self.clock.advance(0)
        self.assertLess(sum(map(len, got)), 8 * 2 * len(BIG))
        for spool in self.spools:
            spool.close()
        while self.clock.getDelayedCalls():
            self.clock.advance(0)
        self.assertEqual(sum(map(len, got)), 8 * 2 * len(BIG))
        for reader in readers:
            self.assertEqual(reader.position, [len(BIG), len(BIG)])


class PacedFollowersLiveTests(TestCase):
    """The real server: a job writing at full speed, followed four ways."""

    #: 48 MiB of a pattern, 1 MiB per write, after the followers attached.
    SCRIPT = (
        "import os, time\n"
        "time.sleep(1)\n"
        "block = bytes(range(256)) * 4096\n"
        "for _ in range(48):\n"
        "    os.write(1, block)\n"
    )

    async def test_everyFollowerEveryByte(self) -> None:
        """
        Raw, SSE and combined followers of a job that presses each get every
        byte, in order, while the job writes far faster than they are paced.
        """
        server = LiveServer(self)
        job = await server.createJob("python3", "-c", self.SCRIPT)
        expected = hashlib.sha256(bytes(range(256)) * 4096 * 48).hexdigest()
        paths = [f"/jobs/{job['id']}/logs?follow=true"] * 2 + [
            f"/jobs/{job['id']}/logs?stream=combined&follow=true"
        ]
        responses = [await server.request("GET", path) for path in paths]
        events = await server.request(
            "GET",
            f"/jobs/{job['id']}/logs?follow=true",
            headers={b"accept": [b"text/event-stream"]},
        )
        bodies = [await treq.content(response) for response in responses]
        for body in bodies:
            self.assertEqual(hashlib.sha256(body).hexdigest(), expected)
        output = [
            base64.b64decode(e["data"]["base64"])
            if "base64" in e["data"]
            else e["data"]["text"].encode("utf-8")
            for e in parseEvents(await treq.content(events))
            if e["event"] == "stdout"
        ]
        self.assertEqual(hashlib.sha256(b"".join(output)).hexdigest(), expected)
        record = await server.manager.whenEnded(job["id"])
        self.assertEqual(record.stdout_bytes, 48 << 20)
