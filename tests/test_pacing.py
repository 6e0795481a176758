"""Followers of a job that writes at full speed take a bounded share of each turn."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.order import OrderLog
from jobworker.jobs.pacing import BUDGET, MIN_SHARE, PRESSING, Allowance, Pacer
from jobworker.jobs.spool import OutputSpool, SpoolReader

from .test_contract import RecordingConsumer

#: One pipe's worth, as a heavy writer's reads bring it.
BIG = bytes(range(256)) * (PRESSING // 256) * 4


class TurnClock(Clock):
    """
    A Clock whose L{turn} runs only the calls due when it starts, as one
    reactor iteration does (C{Clock.advance} would also run the zero-delay
    calls those calls add).
    """

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def received(consumer: RecordingConsumer) -> bytes:
    return b"".join(consumer.written)


class PacerTests(SynchronousTestCase):
    def test_shareSplitsTheBudget(self) -> None:
        """The budget is split among followers, never below the minimum."""
        pacer = Pacer(Clock())
        pacer.followers = 4
        self.assertEqual(pacer.share(), BUDGET // 4)
        pacer.followers = 10**6
        self.assertEqual(pacer.share(), MIN_SHARE)

    def test_pressingOnlyAfterALargeWrite(self) -> None:
        pacer = Pacer(Clock())
        pacer.wrote(PRESSING - 1)
        self.assertFalse(pacer.pressing)
        pacer.wrote(PRESSING)
        self.assertTrue(pacer.pressing)

    def test_allowanceNotPressingIsUnbounded(self) -> None:
        pacer = Pacer(Clock())
        pacer.wrote(10)
        self.assertEqual(Allowance().allowed(pacer, 10**9), 10**9)

    def test_allowancePerWrite(self) -> None:
        """A share per write; then 0 until the next write."""
        pacer = Pacer(Clock())
        pacer.followers = 2
        allowance = Allowance()
        pacer.wrote(PRESSING)
        self.assertEqual(allowance.allowed(pacer, 10**9), BUDGET // 2)
        allowance.sent(BUDGET // 2)
        self.assertEqual(allowance.allowed(pacer, 10**9), 0)
        pacer.wrote(PRESSING)
        self.assertEqual(allowance.allowed(pacer, 10**9), BUDGET // 2)

    def test_nextTurnIsOneTimer(self) -> None:
        """Every waiter is woken by one timer at the next turn."""
        clock = Clock()
        pacer = Pacer(clock)
        woken = []
        for _ in range(5):
            pacer.nextTurn().addCallback(woken.append)
        cancelled = pacer.nextTurn()
        cancelled.addErrback(lambda _: None)
        cancelled.cancel()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(len(woken), 5)


class PacedFollowerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = TurnClock()
        directory = self.mktemp()
        self.order = OrderLog(os.path.join(directory, "order"))
        self.spools = tuple(
            OutputSpool(os.path.join(directory, name), None, self.clock, self.order, i)
            for i, name in enumerate(("stdout", "stderr"))
        )
        self.spool = self.spools[0]

    def follow(self, n: int) -> list[RecordingConsumer]:
        consumers = [RecordingConsumer() for _ in range(n)]
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
        sent = []
        for _ in range(8):
            self.spool.write(BIG)
            self.clock.turn()
            sent.append(sum(len(received(c)) for c in consumers))
        self.assertEqual(sent[-1], 8 * (BUDGET // 16) * 16)
        self.assertLess(sent[-1], 16 * 8 * len(BIG))
        self.spool.close()
        while self.clock.getDelayedCalls():
            self.clock.turn()
        for consumer in consumers:
            self.assertEqual(received(consumer), BIG * 8)
        self.assertEqual(self.spool.pacer.followers, 0)  # type: ignore[union-attr]

    def test_oneFollowerKeepsPace(self) -> None:
        """A single follower's share is the whole budget: a pipe per turn."""
        (consumer,) = self.follow(1)
        for turn in range(1, 5):
            self.spool.write(BIG[:BUDGET])
            self.clock.turn()
            self.assertEqual(len(received(consumer)), turn * BUDGET)

    def test_followersCatchUpWhenTheJobPauses(self) -> None:
        """
        A job that pressed, then went quiet (no write for a turn), does not
        hold its followers back: they send the rest at once.
        """
        consumers = self.follow(4)
        self.spool.write(BIG)
        self.clock.turn()
        self.assertLess(len(received(consumers[0])), len(BIG))
        self.clock.turn()
        self.clock.turn()
        for consumer in consumers:
            self.assertEqual(received(consumer), BIG)

    def test_quietJobNotPaced(self) -> None:
        """Small writes (the pipe never filled) reach followers at once."""
        consumers = self.follow(16)
        for _ in range(10):
            self.spool.write(b"x" * 1000)
        self.clock.turn()
        for consumer in consumers:
            self.assertEqual(received(consumer), b"x" * 10000)

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
        self.clock.turn()
        self.assertLess(sum(map(len, got)), 8 * 2 * len(BIG))
        for spool in self.spools:
            spool.close()
        while self.clock.getDelayedCalls():
            self.clock.turn()
        self.assertEqual(sum(map(len, got)), 8 * 2 * len(BIG))
        for reader in readers:
            self.assertEqual(reader.position, [len(BIG), len(BIG)])
