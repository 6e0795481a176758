"""
Issue 18: jobs wait instead of bouncing. The fair queue itself (pure), the
manager's queue on the fake process reactor, and a real server restarted
with a full queue.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.permissions import PERMISSIONS, Permission, Role, Scope
from jobworker.errors import (
    BadRequest,
    CannotStartNow,
    Conflict,
    TooManyRequests,
)
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.admission import DISPATCH_RETRY
from jobworker.jobs.identity import PoolExhausted
from jobworker.jobs.manager import SLOT_SLACK
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.queue import NO_JOBS, FairQueue, Waiting
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.scheduling import FAIL_SLICE
from jobworker.jobs.store import StoreError
from jobworker.jobs.validation import JobRequest

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import LiveServer


def waiting(owner: str, seq: int, priority: int = 0, **deps: Any) -> Waiting:
    return Waiting(
        f"{owner}-{seq}",
        owner,
        priority,
        seq,
        after=frozenset(deps.get("after", ())),
        afterOk=frozenset(deps.get("afterOk", ())),
    )


def ended(jobId: str, status: JobStatus) -> JobRecord:
    record = JobRecord(id=jobId, command="x", args=[], owner="x", created_at=0.0)
    record.status = status
    return record


class FairQueueTests(SynchronousTestCase):
    """The order: users in turn, then priority, then age."""

    def drain(self, queue: FairQueue, mayStart: Any = lambda user: True) -> list[str]:
        order = []
        while (entry := queue.next(mayStart)) is not None:
            order.append(entry.jobId)
        return order

    def test_oneUsersThousandDoNotStarveAnother(self) -> None:
        """alice queues 1000, then bob 1: bob's starts second."""
        queue = FairQueue()
        for seq in range(1000):
            queue.add(waiting("alice", seq), lambda jobId: False)
        queue.add(waiting("bob", 1000), lambda jobId: False)
        order = self.drain(queue)
        self.assertEqual(order[:3], ["alice-0", "bob-1000", "alice-1"])
        self.assertEqual(len(order), 1001)

    def test_priorityThenAge(self) -> None:
        """Within one user: higher priority first, then the older."""
        queue = FairQueue()
        for seq, priority in ((1, 0), (2, 5), (3, 0), (4, 5), (5, -3)):
            queue.add(waiting("alice", seq, priority), lambda jobId: False)
        self.assertEqual(
            self.drain(queue), ["alice-2", "alice-4", "alice-1", "alice-3", "alice-5"]
        )

    def test_userAtLimitIsSkipped(self) -> None:
        """A user at their running cap is passed over; others go on."""
        queue = FairQueue()
        queue.add(waiting("alice", 1), lambda jobId: False)
        queue.add(waiting("bob", 2), lambda jobId: False)
        self.assertEqual(self.drain(queue, lambda user: user != "alice"), ["bob-2"])
        self.assertEqual(len(queue), 1)

    def test_dependencies(self) -> None:
        """
        after: ready once the job ended, however; after_ok: fails unless it
        COMPLETED. A blocked job says what it waits for.
        """
        queue = FairQueue()
        queue.add(waiting("alice", 1, after={"a"}), lambda jobId: True)
        queue.add(waiting("alice", 2, afterOk={"a"}), lambda jobId: True)
        queue.add(waiting("alice", 3, afterOk={"b"}), lambda jobId: True)
        self.assertEqual(queue.reason("alice-1"), "waiting for job a")
        self.assertEqual(self.drain(queue), [])
        resolution = queue.ended(ended("a", JobStatus.FAILED))
        self.assertEqual([w.jobId for w in resolution.ready], ["alice-1"])
        self.assertEqual(
            [(w.jobId, why) for w, why in resolution.failed],
            [("alice-2", "dependency a ended FAILED")],
        )
        queue.ended(ended("b", JobStatus.COMPLETED))
        self.assertEqual(self.drain(queue), ["alice-1", "alice-3"])

    def test_failingManyWaitersComparesNone(self) -> None:
        """
        2,000 jobs after_ok on "a", each also waiting on 63 other jobs: "a"
        fails. Each failed job was taken out of its other jobs' waiter lists
        by a linear search that compared entries field by field: a user's
        queue within its caps held the reactor 8-30 s (attacker round 12).
        The waiters are kept by job id: no entry is compared.
        """
        queue = FairQueue()
        others = [f"other-{n}" for n in range(63)]
        for seq in range(2000):
            queue.add(waiting("alice", seq, afterOk={"a", *others}), lambda jobId: True)
        compared = [0]
        equal = Waiting.__eq__

        def counting(self: Waiting, other: object) -> bool:
            compared[0] += 1
            return equal(self, other)

        self.patch(Waiting, "__eq__", counting)
        resolution = queue.ended(ended("a", JobStatus.FAILED))
        self.assertEqual(len(resolution.failed), 2000)
        self.assertEqual(len(queue), 0)
        self.assertEqual(compared[0], 0)
        self.assertEqual(queue._waiters, {})  # (no empty lists left behind)

    def test_removeAndPosition(self) -> None:
        """A stopped job leaves the queue; positions count the user's ready jobs."""
        queue = FairQueue()
        for seq in range(3):
            queue.add(waiting("alice", seq), lambda jobId: False)
        self.assertEqual(queue.position("alice-2"), (3, 3))
        self.assertIsNotNone(queue.remove("alice-1"))
        self.assertEqual(queue.position("alice-2"), (2, 2))
        self.assertEqual(queue.queuedBy("alice"), 2)
        self.assertEqual(self.drain(queue), ["alice-0", "alice-2"])


class _StuckCgroup:
    """A job's cgroup whose processes no KILL ends, until C{gone}."""

    def __init__(self, owner: _StuckCgroups) -> None:
        self._owner = owner

    def openProcs(self) -> list[int]:
        return []

    def addProcess(self, pid: int) -> None:
        pass

    def signal(self, signum: int) -> bool:
        return not self._owner.gone

    def kill(self) -> bool:
        return not self._owner.gone

    def empty(self) -> bool:
        return self._owner.gone

    def remove(self) -> bool:
        return self._owner.gone

    def oomKilled(self) -> bool:
        return False


class _StuckCgroups:
    version, supported = 1, frozenset({"memory"})

    def __init__(self) -> None:
        self.gone = False

    def create(self, jobId: str, limits: Any, gid: int = 0) -> _StuckCgroup:
        return _StuckCgroup(self)

    def find(self, jobId: str) -> None:
        return None


class ManagerQueueTests(SynchronousTestCase):
    """The manager's queue, on the fake process reactor."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()

    def manager(self, **policy: Any) -> Any:
        manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            self.killer,
            policy=JobPolicy(**policy),
        )
        self.addCleanup(manager.close)
        return manager

    def end(self, manager: Any, jobId: str, code: int = 0) -> None:
        pid = manager.record(jobId).pid
        [spawned] = [s for s in self.reactor.spawned if s.pid == pid]
        self.killer.groupGone(spawned.pid)
        spawned.exit(code)

    def unreadableStore(self, manager: Any) -> list[bool]:
        """Every read of the manager's store fails until the list is cleared."""
        get = manager._store.get
        broken: list[bool] = [True]

        def unreadable(jobId: str) -> Any:
            if broken:
                raise StoreError("cannot read a job: disk I/O error")
            return get(jobId)

        self.patch(manager._store, "get", unreadable)
        return broken

    def heldJob(self) -> tuple[Any, JobRecord, list[bool]]:
        """
        A manager running one job at a time, whose queued job's turn came
        when no descriptor was free for its uid's lock (EMFILE): it is held.
        The list: clear it to give descriptors back.
        """
        manager = self.manager(maxRunning=1)
        emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        short = self.failingPool(manager, emfile)
        first = manager.create(self.request(), "alice")
        held = manager.create(self.request(), "alice")
        short.append(True)
        self.end(manager, first.id)
        return manager, held, short

    def failingPool(self, manager: Any, error: Exception) -> list[bool]:
        """The uid pool raises C{error} while the list is not empty."""
        acquire = manager._executor._identities.acquire
        failing: list[bool] = []

        def pool(account: Any) -> Any:
            if failing:
                raise error
            return acquire(account)

        self.patch(manager._executor._identities, "acquire", pool)
        return failing

    def request(self, **fields: Any) -> JobRequest:
        return dataclasses.replace(
            JobRequest(command="sleep", args=["9"], env={}, cwd=None), **fields
        )

    def test_waitsForASlotThenStarts(self) -> None:
        """--max-running 1: the second job is PENDING, then starts at once."""
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        second = manager.create(self.request(), "alice")
        self.assertEqual(second.status, JobStatus.PENDING)
        self.assertIn(
            "queued: position 1 of 1", manager.record(second.id).pending_reason
        )
        self.assertEqual(len(self.reactor.spawned), 1)
        ended = manager.whenEnded(second.id)
        self.end(manager, first.id)
        self.assertEqual(manager.record(second.id).status, JobStatus.RUNNING)
        self.assertIsNone(manager.record(second.id).pending_reason)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertNoResult(ended)
        self.end(manager, second.id, 3)
        self.assertEqual(self.successResultOf(ended).exit_code, 3)

    def test_leftoversHoldTheirSlot(self) -> None:
        """
        A job that ended leaving processes (a C{setsid} child ignoring
        TERM) counts toward the running caps until they are gone: one user
        kept any number of such processes with --max-running-per-user 1
        (attacker round 28). Once the leftovers are killed, the next job
        starts.
        """
        manager = self.manager(maxRunningPerUser=1, maxRunning=5)
        first = manager.create(self.request(), "alice")
        second = manager.create(self.request(), "alice")
        self.assertEqual(second.status, JobStatus.PENDING)
        [spawned] = self.reactor.spawned
        spawned.exit(0)  # its group lives on: leftovers, under the grace
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)
        self.assertEqual(manager.record(second.id).status, JobStatus.PENDING)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(5.0)  # the grace: KILL, and nothing is left
        self.assertEqual(manager.record(second.id).status, JobStatus.RUNNING)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_deletingAJobEndsWhatItLeft(self) -> None:
        """
        A job deleted while what it left runs under its grace: what it left
        is killed at once (no stop reaches it once the job is a 404: it ran
        on for the grace, holding its user's slot), and the next job starts.
        """
        manager = self.manager(maxRunningPerUser=1, maxRunning=5)
        first = manager.create(self.request(), "alice")
        second = manager.create(self.request(), "alice")
        [spawned] = self.reactor.spawned
        spawned.exit(0)  # leftovers, under the grace
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)
        self.assertEqual(manager.record(second.id).status, JobStatus.PENDING)
        manager.delete(first.id)
        self.assertEqual(self.killer.signalsTo(spawned.pid)[-1], signal.SIGKILL)
        self.assertEqual(manager.record(second.id).status, JobStatus.RUNNING)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_aSlotHeldPastItsBoundIsGivenBack(self) -> None:
        """
        What a job left never goes (a process in D state no KILL ends, a
        cgroup that cannot be removed): its slot is given back the server's
        grace plus SLOT_SLACK after the job ended, with a warning; the
        queued job starts (it waited for ever: fault round 28b). Once it
        is gone at last, nothing more is given back.
        """
        stuck = _StuckCgroups()
        manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            self.killer,
            policy=JobPolicy(maxRunningPerUser=1),
            cgroups=stuck,  # type: ignore[arg-type]
        )
        self.addCleanup(manager.close)
        first = manager.create(self.request(), "alice")
        second = manager.create(self.request(), "alice")
        [spawned] = self.reactor.spawned
        spawned.exit(0)
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)
        self.reactor.advance(5.0 + SLOT_SLACK - 1)
        self.assertEqual(manager.record(second.id).status, JobStatus.PENDING)
        self.reactor.advance(1.0)
        self.assertEqual(manager.record(second.id).status, JobStatus.RUNNING)
        self.assertEqual(
            (manager._running, dict(manager._runningBy)), (1, {"alice": 1})
        )
        stuck.gone = True
        self.reactor.advance(1.0)
        self.assertEqual(
            (manager._running, dict(manager._runningBy)), (1, {"alice": 1})
        )

    def test_afterOkAcrossARestart(self) -> None:
        """
        A job queued after_ok of a job the server's crash ended (recovery
        closes it FAILED) fails at the restart, as it would have had the
        server lived; it ran, waiting on nothing.
        """
        stateDir = os.path.abspath(self.mktemp())
        before = localJobManager(self.reactor, stateDir, 5.0, self.killer)
        first = before.create(self.request(), "alice")
        strict = before.create(self.request(after_ok=(first.id,)), "alice")
        loose = before.create(self.request(after=(first.id,)), "alice")
        behind = before.create(self.request(after_ok=(strict.id,)), "alice")
        before.close()  # a crash: nothing ended
        after = localJobManager(self.reactor, stateDir, 5.0, self.killer)
        self.addCleanup(after.close)
        after.recover()
        self.assertEqual(after.record(first.id).status, JobStatus.FAILED)
        failed = after.record(strict.id)
        self.assertEqual(
            (failed.status, failed.error),
            (JobStatus.FAILED, f"dependency {first.id} ended FAILED"),
        )
        self.assertEqual(after.record(behind.id).status, JobStatus.FAILED)
        self.assertEqual(after.record(loose.id).status, JobStatus.RUNNING)

    def test_queuedJobWaitsForAUidGivenBackLate(self) -> None:
        """
        A queued job whose turn comes while the uid pool is empty (the job
        that ended gives its uid back only once nothing of it is left)
        starts once one is back; it stayed PENDING for good.
        """
        manager = self.manager(maxRunning=1)
        held = self.failingPool(manager, PoolExhausted("no dynamic uid is free"))
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        held.append(True)
        self.end(manager, first.id)
        self.assertEqual(manager.record(queued.id).status, JobStatus.PENDING)
        held.clear()  # given back later (a sweep, say)
        self.reactor.advance(DISPATCH_RETRY)
        self.assertEqual(manager.record(queued.id).status, JobStatus.RUNNING)

    def test_noDescriptorForTheUidLockKeepsTheJobQueued(self) -> None:
        """
        The uid pool's lock file cannot be opened when a queued job's turn
        comes (EMFILE): the job stays queued and starts at the next try (the
        OSError escaped the dispatch, and the job was in no queue any more).
        """
        manager = self.manager(maxRunning=1)
        short = self.failingPool(
            manager, OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        )
        short.append(True)  # a new job: a 503, nothing stored
        error = self.assertRaises(CannotStartNow, manager.create, self.request(), "bob")
        self.assertIn(os.strerror(errno.EMFILE), error.message)
        self.assertEqual(manager.page()[0], [])
        text = manager._metrics.render().decode()
        self.assertIn("jobworker_starts_deferred_total 1.0", text)
        short.clear()
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        short.append(True)
        self.end(manager, first.id)
        self.assertIn(queued.id, manager._scheduler.queue)
        short.clear()
        self.reactor.advance(DISPATCH_RETRY)
        self.assertEqual(manager.record(queued.id).status, JobStatus.RUNNING)

    def test_aHeldJobSaysWhy(self) -> None:
        """
        A queued job the server could not start at its turn says why it
        waits, and that it is tried again (it said "position 1 of 1", as if
        nothing held it); once started, nothing.
        """
        manager, held, short = self.heldJob()
        reason = manager.record(held.id).pending_reason
        assert reason is not None
        self.assertTrue(reason.startswith("held: the server cannot start"), reason)
        # A list says the same as the job's own record.
        [listed] = [r for r in manager.page()[0] if r.id == held.id]
        self.assertEqual(listed.pending_reason, reason)
        self.assertIn(os.strerror(errno.EMFILE), reason)
        self.assertIn(f"tried again every {DISPATCH_RETRY:g} s", reason)
        short.clear()
        self.reactor.advance(DISPATCH_RETRY)
        self.assertIsNone(manager.record(held.id).pending_reason)
        self.assertEqual(manager._held, {})

    def test_aHeldNoteGoesStale(self) -> None:
        """
        A job held once and not tried since (here: the queue paused) waits
        for something else: it no longer says it is held.
        """
        manager, held, _ = self.heldJob()
        manager._scheduler.paused = True
        self.reactor.advance(3 * DISPATCH_RETRY)
        reason = manager.record(held.id).pending_reason
        assert reason is not None
        self.assertTrue(reason.startswith("queued: position 1 of 1"), reason)

    def test_retriesAreNotSpawnFailures(self) -> None:
        """
        Each try of a held job counted in jobworker_spawn_failures_total
        (one a second), as did a 503: neither is a job that failed to start.
        They count in jobworker_starts_deferred_total.
        """
        manager, _, _ = self.heldJob()
        for _ in range(3):
            self.reactor.advance(DISPATCH_RETRY)
        text = manager._metrics.render().decode()
        self.assertIn("jobworker_spawn_failures_total 0.0", text)
        self.assertIn("jobworker_starts_deferred_total 4.0", text)

    def test_aNewJobWaitsBehindAHeldOne(self) -> None:
        """
        A queued job held back (the server could not start it at its turn,
        tried again in a second) keeps its place: a job created meanwhile
        queues behind it (it started at once, ahead of older ones).
        """
        manager, held, short = self.heldJob()
        short.clear()
        newer = manager.create(self.request(), "bob")
        self.assertEqual(newer.status, JobStatus.PENDING)
        self.reactor.advance(DISPATCH_RETRY)
        self.assertEqual(manager.record(held.id).status, JobStatus.RUNNING)
        self.assertEqual(manager.record(newer.id).status, JobStatus.PENDING)

    def test_anUnforeseenErrorAtDispatchKeepsTheJobQueued(self) -> None:
        """Whatever a queued job's start raises, the job stays queued (it was
        out of the queue for good) and is tried again; the error is logged."""
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        start = manager._scheduler._start
        calls: list[str] = []

        def once(waiting: Any) -> bool:
            calls.append(waiting.jobId)
            if len(calls) == 1:
                raise RuntimeError("unforeseen")
            return bool(start(waiting))

        self.patch(manager._scheduler, "_start", once)
        self.end(manager, first.id)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(queued.id, manager._scheduler.queue)
        self.reactor.advance(DISPATCH_RETRY)
        self.assertEqual(manager.record(queued.id).status, JobStatus.RUNNING)

    def test_unreadableStoreAtDispatchKeepsTheJobQueued(self) -> None:
        """
        The store cannot be read when a queued job's turn comes: the job
        stays queued, and starts once it can be read. The error escaped a
        job's end (an unhandled error in a Deferred) and the job was in no
        queue any more, PENDING for good.
        """
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        started = manager.whenStarted(queued.id)
        broken = self.unreadableStore(manager)
        self.end(manager, first.id)
        self.assertIn(queued.id, manager._scheduler.queue)
        broken.clear()
        self.reactor.advance(DISPATCH_RETRY)
        self.successResultOf(started)
        self.assertEqual(manager.record(queued.id).status, JobStatus.RUNNING)

    def test_unreadableStoreWhenADependencyFails(self) -> None:
        """
        The store cannot be read when a job's after_ok job fails: the job
        is failed once it can be (it stayed PENDING for good, in no queue,
        and the error escaped the dependency's end).
        """
        manager = self.manager()
        first = manager.create(self.request(), "alice")
        strict = manager.create(self.request(after_ok=(first.id,)), "alice")
        ended = manager.whenEnded(strict.id)
        broken = self.unreadableStore(manager)
        self.end(manager, first.id, 1)
        self.assertNoResult(ended)
        # Still queued (held, never started): to stop, and to wait for.
        self.assertIn(strict.id, manager._scheduler.queue)
        self.assertNoResult(manager.whenEnded(strict.id))
        self.reactor.advance(DISPATCH_RETRY)  # still unreadable: still held
        self.assertIn(strict.id, manager._scheduler.queue)
        broken.clear()
        self.reactor.advance(DISPATCH_RETRY)
        failed = self.successResultOf(ended)
        self.assertEqual(
            (failed.status, failed.error),
            (JobStatus.FAILED, f"dependency {first.id} ended FAILED"),
        )
        self.assertEqual(manager.record(strict.id).status, JobStatus.FAILED)
        self.assertEqual(self.reactor.spawned[1:], [])

    def test_unreadableStoreAtStopKeepsTheJobQueued(self) -> None:
        """A stop of a queued job the store cannot read is an error (a 503
        through the API),
        and the job is still queued, to be stopped once it can."""
        manager = self.manager(maxRunning=1)
        manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        broken = self.unreadableStore(manager)
        self.assertRaises(StoreError, manager.stop, queued.id, "alice")
        self.assertIn(queued.id, manager._scheduler.queue)
        broken.clear()
        stopped = self.successResultOf(manager.stop(queued.id, "alice"))
        self.assertEqual(stopped.status, JobStatus.STOPPED)

    def test_stdinOfAQueuedJob(self) -> None:
        """Input for a job still in the queue is refused, saying it has not
        started (it said "already ended (PENDING)"); once it runs, it goes."""
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(stdin=True), "alice")
        error = self.assertRaises(Conflict, manager.writeStdin, queued.id, b"x", True)
        self.assertIn("not started yet (PENDING)", error.message)
        self.end(manager, first.id)
        self.assertEqual(manager.record(queued.id).status, JobStatus.RUNNING)
        self.successResultOf(manager.writeStdin(queued.id, b"x", True))

    def test_fairAmongUsers(self) -> None:
        """alice's many queued jobs do not keep bob's one waiting past a turn."""
        manager = self.manager(maxRunning=1)
        running = manager.create(self.request(), "alice")
        for _ in range(20):
            manager.create(self.request(), "alice")
        bobs = manager.create(self.request(), "bob")
        self.end(manager, running.id)  # alice's next one starts (her turn)
        [nextAlice] = [r for r in manager.page()[0] if r.status is JobStatus.RUNNING]
        self.end(manager, nextAlice.id)
        self.assertEqual(manager.record(bobs.id).status, JobStatus.RUNNING)

    def test_afterOkFailsWithoutRunning(self) -> None:
        """
        after_ok on a job that fails: FAILED "dependency ... ended FAILED",
        never spawned; after (any end) runs all the same.
        """
        manager = self.manager()
        first = manager.create(self.request(), "alice")
        strict = manager.create(self.request(after_ok=(first.id,)), "alice")
        lenient = manager.create(self.request(after=(first.id,)), "alice")
        self.assertEqual(
            manager.record(strict.id).pending_reason, f"waiting for job {first.id}"
        )
        self.assertEqual(len(self.reactor.spawned), 1)
        self.end(manager, first.id, 1)
        self.assertEqual(manager.record(strict.id).status, JobStatus.FAILED)
        self.assertEqual(
            manager.record(strict.id).error, f"dependency {first.id} ended FAILED"
        )
        self.assertIsNone(manager.record(strict.id).pid)
        self.assertEqual(manager.record(lenient.id).status, JobStatus.RUNNING)
        # Already failed: a new after_ok job fails at once.
        late = manager.create(self.request(after_ok=(first.id,)), "alice")
        self.assertEqual(late.status, JobStatus.FAILED)

    def test_aLongChainFailsWhole(self) -> None:
        """
        A chain of after_ok jobs (each on the one before) whose head fails:
        every link ends FAILED, and a job after the chain's end runs. The
        failures went from link to link by recursion, three frames a link:
        some 320 links overflowed the stack (attacker round 11), and the
        jobs past that point were out of the queue but never ended:
        PENDING for good, neither stoppable nor deletable, another user's
        job hung on the chain included.
        """
        manager = self.manager()
        head = manager.create(self.request(), "bob")
        chain = [head]
        for _ in range(1500):
            chain.append(
                manager.create(self.request(after_ok=(chain[-1].id,)), "alice")
            )
        sibling = manager.create(self.request(after_ok=(head.id,)), "bob")
        cleanUp = manager.create(self.request(after=(chain[-1].id,)), "bob")
        self.end(manager, head.id, 1)
        # (FAIL_SLICE a turn: the reactor runs between the slices.)
        self.assertEqual(manager.record(chain[-1].id).status, JobStatus.PENDING)
        self.reactor.advance(0)
        statuses = {manager.record(job.id).status for job in chain[1:]}
        self.assertEqual(statuses, {JobStatus.FAILED})
        self.assertEqual(manager.record(sibling.id).status, JobStatus.FAILED)
        self.assertEqual(manager.record(cleanUp.id).status, JobStatus.RUNNING)
        self.assertEqual(
            manager.record(chain[-1].id).error,
            f"dependency {chain[-2].id} ended FAILED",
        )

    def test_manyDependentsFailASliceATurn(self) -> None:
        """
        1,000 jobs queued after_ok on one job that fails: FAIL_SLICE of them
        fail in its turn, the rest in the next turns (each is a store read
        and write: 10,000 of them held every request for 2 s: attacker
        round 29). Meanwhile they are queued, held: a stop still reaches
        one, and none starts.
        """
        manager = self.manager()
        head = manager.create(self.request(), "bob")
        waiting = [
            manager.create(self.request(after_ok=(head.id,)), "alice")
            for _ in range(1000)
        ]
        self.end(manager, head.id, 1)

        def failed() -> int:
            return sum(
                manager.record(job.id).status is JobStatus.FAILED for job in waiting
            )

        self.assertEqual(failed(), FAIL_SLICE)
        last = waiting[-1]
        self.assertEqual(manager.record(last.id).status, JobStatus.PENDING)
        self.successResultOf(manager.stop(last.id, "alice"))
        self.assertEqual(manager.record(last.id).status, JobStatus.STOPPED)
        self.reactor.advance(0)  # (the fake runs every next turn in one go)
        self.assertEqual(failed(), len(waiting) - 1)
        self.assertEqual(manager.record(last.id).status, JobStatus.STOPPED)
        self.assertEqual(len(self.reactor.spawned), 1)  # the head alone ran
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_entriesWithoutDependenciesShareOneEmptySet(self) -> None:
        """
        100,000 queued jobs must fit in 64 MiB: an entry without
        dependencies holds the one shared empty set, not two of its own
        (432 of its 745 bytes, measured with tracemalloc).
        """
        manager = self.manager(maxRunning=1)
        manager.create(self.request(), "alice")
        queued = [manager.create(self.request(), "alice") for _ in range(2)]
        entries = [manager._scheduler.queue.get(job.id) for job in queued]
        for entry in entries:
            self.assertIs(entry.after, NO_JOBS)
            self.assertIs(entry.afterOk, NO_JOBS)
            self.assertIs(entry.waitingOn, NO_JOBS)

    def test_unknownDependencyIs400(self) -> None:
        """Only existing jobs can be named (so no cycle can ever be made)."""
        manager = self.manager()
        self.assertRaises(
            BadRequest,
            manager.create,
            self.request(after=(str(uuid.uuid4()),)),
            "alice",
        )

    def test_stopWhileQueued(self) -> None:
        """Stopping a queued job: STOPPED, never started, stopped_by set."""
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        ended = manager.whenEnded(queued.id)
        stopped = self.successResultOf(manager.stop(queued.id, "ada"))
        self.assertEqual(
            (stopped.status, stopped.stopped_by), (JobStatus.STOPPED, "ada")
        )
        self.assertIsNone(stopped.pid)
        self.assertEqual(self.successResultOf(ended).status, JobStatus.STOPPED)
        self.end(manager, first.id)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_queueCaps(self) -> None:
        """Past --max-queued (or the per-user cap): 429."""
        manager = self.manager(maxRunning=1, maxQueued=2, maxQueuedPerUser=1)
        manager.create(self.request(), "alice")
        manager.create(self.request(), "alice")
        self.assertRaises(TooManyRequests, manager.create, self.request(), "alice")
        manager.create(self.request(), "bob")
        self.assertRaises(TooManyRequests, manager.create, self.request(), "carol")


class RestartTests(TestCase):
    timeout = 120

    async def test_restartKeepsTheQueue(self) -> None:
        """
        A real C{twistd jobworker} with --max-running 1 and a full queue is
        stopped with SIGTERM and started again on the same state: every
        PENDING job is still there and PENDING at once, and they all run, in
        their order (a lower-priority one queued first runs last).
        """
        from .twistd import Twistd

        first = await Twistd(self).start("--max-running=1", "--stop-grace=1")
        running = await first.createJob("sleep", "300")
        low = (await first.createJob("true", name="low", priority=-1))["id"]
        queued = [(await first.createJob("true", name=f"q{i}"))["id"] for i in range(5)]
        for jobId in (low, *queued):
            _code, job = await first.json("GET", f"/jobs/{jobId}")
            self.assertEqual(job["status"], "PENDING", job)
        os.kill(first.pid, signal.SIGTERM)
        await first.protocol.whenEnded().addTimeout(30, reactor)
        self.assertIn(f"job {running['id']} ended STOPPED", first.protocol.log())

        again = await Twistd(self, stateDir=first.stateDir).start(
            "--max-running=1", "--stop-grace=1"
        )
        self.assertIn("6 queued job(s) kept across the restart", again.protocol.log())
        _, job = await again.json("GET", f"/jobs/{running['id']}")
        self.assertEqual(job["status"], "STOPPED")  # stopped by the shutdown

        async def ended(jobId: str) -> Any:
            _, job = await again.json("GET", f"/jobs/{jobId}")
            return job if job["status"] not in ("PENDING", "RUNNING") else None

        starts = []
        for jobId in (*queued, low):
            job = await again.poll(lambda j=jobId: ended(j), 30, f"{jobId} to end")
            self.assertEqual(job["status"], "COMPLETED", job)
            starts.append(job["started_at"])
        self.assertEqual(starts, sorted(starts))

    async def test_priorityAboveDefaultIsForAdmins(self) -> None:
        """A Developer may lower a job's priority, not raise it (403); Admins may."""
        server = LiveServer(self)
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "priority": 5}
        )
        self.assertEqual(code, 403, body)
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "priority": -5}
        )
        self.assertEqual((code, body["priority"]), (201, -5))
        code, body = await server.json(
            "POST", "/jobs", "ada", {"command": "true", "priority": 50}
        )
        self.assertEqual((code, body["priority"]), (201, 50))

    async def test_onlyJobsTheUserMaySee(self) -> None:
        """
        A job may wait for any job its owner may read (every role reads
        every job today); with a table where Developers read only their own,
        naming bob's job is the same 400 as naming no job at all.
        """
        server = LiveServer(self)
        bobs = await server.createJob("true", user="bob")
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "after": [bobs["id"]]}
        )
        self.assertEqual(code, 201, body)
        ownOnly = {
            **PERMISSIONS[Role.DEVELOPER],
            Permission.GET: Scope.OWN,
        }
        original = PERMISSIONS[Role.DEVELOPER]
        PERMISSIONS[Role.DEVELOPER] = ownOnly
        self.addCleanup(PERMISSIONS.__setitem__, Role.DEVELOPER, original)
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "after_ok": [bobs["id"]]}
        )
        self.assertEqual(
            (code, body["error"]), (400, f"no job {bobs['id']} to wait for")
        )
        alices = await server.createJob("true")
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "after_ok": [alices["id"]]}
        )
        self.assertEqual(code, 201, body)

    async def test_followAQueuedJob(self) -> None:
        """jw exec --after-ok -f follows a PENDING job from its start to its end."""
        from .support import runJW

        server = LiveServer(self)
        first = await server.createJob("sleep", "1")
        out, err, code = await runJW(
            server.url,
            "exec",
            "--after-ok",
            first["id"][:8],
            "-f",
            "--",
            "echo",
            "then",
        )
        self.assertEqual((out, code), (b"then\n", 0), err)
        done = await server.waitEnded(first["id"])
        self.assertEqual(done["status"], "COMPLETED")
