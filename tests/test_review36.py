"""
Defects found in the thirty-sixth session's rounds and reviews, each with a
test that failed against the code before its fix.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.errors import BadRequest, ServiceUnavailable
from jobworker.executors.local import process
from jobworker.executors.local.process import JobProcessProtocol
from jobworker.executors.slurm.documents import SlurmError
from jobworker.jobs.identity import Identity, runAsUid
from jobworker.jobs.queue import Waiting
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.scheduling import NO_UID, NoUid, Scheduler
from jobworker.jobs.selection import JobFilter
from jobworker.jobs.stopping import StopRequest
from jobworker.jobs.store import JobStore, StoreError
from jobworker.jobs.validation import parseJSONObject
from jobworker.server.turns import Turns

from .fakes import processExit
from .support import LiveServer, smallTmpfs
from .test_launcher import requireRoot
from .test_process import PID, JobProcessTestCase, StopAsItExitsTests
from .test_review35 import SlurmCase
from .test_slurmunit import state
from .test_store import makeRecord

MiB = 1 << 20


def memoryLimitOf(pid: int) -> int | None:
    """The memory limit of the cgroup v1 process C{pid} is in (None: not
    found)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = [line.split(":", 2)[2].strip() for line in f if ":memory:" in line]
        with open(f"/sys/fs/cgroup/memory{paths[0]}/memory.limit_in_bytes") as f:
            return int(f.read())
    except (OSError, IndexError, ValueError):
        return None


class QueuedLimitsAtTheTurnTests(TestCase):
    """
    Late review 35: a queued job's record held the limits of its time, the
    server's defaults filled in, and those were what it started with after a
    restart: a job queued on a server without cgroups (limits None) ran
    without any on one with them, and one that asked for a limit over the
    maximum set since started over it. The limits it asked for are kept
    while it waits; its turn fills in the defaults and checks the maxima of
    the server as it is then.
    """

    timeout = 120

    async def queued(self, *options: str, **limits: int) -> tuple[str, str]:
        """A job queued (C{sleep 30}) behind another on a server of
        C{options}, which is then stopped: its id and its state folder."""
        state = os.path.abspath(self.mktemp())
        old = LiveServer(self, "--max-running=1", *options, stateDir=state)
        await old.createJob("sleep", "30")
        queued = await old.createJob("sleep", "30", limits=limits)
        self.assertEqual(queued["status"], "PENDING", queued)
        await old.stop()
        return queued["id"], state

    async def started(self, jobId: str, state: str, *options: str) -> dict[str, Any]:
        """The job once it has left the queue, on a server of C{options}."""
        new = LiveServer(self, "--max-running=1", *options, stateDir=state)
        self.server = new
        for _ in range(400):
            _, job = await new.json("GET", f"/jobs/{jobId}", "ada")
            if job["status"] != "PENDING":
                if job["status"] == "RUNNING":
                    self.addCleanup(new.json, "POST", f"/jobs/{jobId}/stop", "ada")
                return job  # type: ignore[no-any-return]
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"job {jobId} still queued: {job}")

    def requireCgroups(self, job: dict[str, Any]) -> None:
        if not (job.get("limits") or {}).get("memory_bytes"):
            raise SkipTest(f"no memory cgroups here: {job}")

    async def test_queuedWithoutCgroupsGetsTheDefaults(self) -> None:
        jobId, state = await self.queued("--cgroups=off")
        job = await self.started(
            jobId, state, "--default-memory=256M", "--max-memory=256M"
        )
        fresh = await self.server.createJob("true")
        self.requireCgroups(fresh)
        self.assertEqual(job["status"], "RUNNING", job)
        self.assertEqual(job["limits"]["memory_bytes"], 256 * MiB, job)
        limit = memoryLimitOf(job["pid"])
        if limit is not None:
            self.assertEqual(limit, 256 * MiB)

    async def test_defaultsOfItsTurn(self) -> None:
        jobId, state = await self.queued("--default-memory=512M", "--max-memory=1G")
        job = await self.started(
            jobId, state, "--default-memory=128M", "--max-memory=256M"
        )
        self.requireCgroups(job)
        self.assertEqual(job["status"], "RUNNING", job)
        self.assertEqual(job["limits"]["memory_bytes"], 128 * MiB, job)

    async def test_askedOverTheMaximumOfItsTurn(self) -> None:
        jobId, state = await self.queued("--max-memory=1G", memory_bytes=512 * MiB)
        job = await self.started(jobId, state, "--max-memory=256M")
        self.assertEqual(job["status"], "FAILED", job)
        self.assertIn(
            "cannot start: limits.memory_bytes 536870912 is over this server's maximum",
            job["error"],
        )

    async def test_askedWhereNoCgroupsNow(self) -> None:
        jobId, state = await self.queued(memory_bytes=256 * MiB)
        job = await self.started(jobId, state, "--cgroups=off")
        self.assertEqual(job["status"], "FAILED", job)
        self.assertIn("no usable cgroups", job["error"])

    async def test_askedForNoneWhereNoCgroupsNow(self) -> None:
        jobId, state = await self.queued("--default-memory=256M")
        job = await self.started(jobId, state, "--cgroups=off")
        self.assertEqual(job["status"], "RUNNING", job)
        self.assertIsNone(job["limits"])


class AskedLimitsStoredTests(SynchronousTestCase):
    """The limits a queued job asked for are stored while it waits, and only
    then."""

    def test_keptWhileQueued(self) -> None:
        store = JobStore(self.mktemp())
        self.addCleanup(store.close)
        record = makeRecord(1)
        record.status = JobStatus.PENDING
        record.queued = True
        record.asked_limits = {"memory_bytes": 5 * MiB}
        store.insert(record)
        again = store.get(record.id)
        assert again is not None
        self.assertEqual(again.asked_limits, {"memory_bytes": 5 * MiB})
        record.queued = False
        record.status = JobStatus.RUNNING
        store.update(record)
        again = store.get(record.id)
        assert again is not None
        self.assertIsNone(again.asked_limits)


class QueuedBeforeAskedLimitsKeptTests(TestCase):
    """A job queued by a server that did not keep the limits it asked for
    (schema 8) has its stored disk rates checked at its turn, as before."""

    timeout = 90

    async def test_ratesStillChecked(self) -> None:
        state = os.path.abspath(self.mktemp())
        old = LiveServer(
            self, "--min-io-bps=1", "--allow-io-bps", "--max-running=1", stateDir=state
        )
        await old.createJob("sleep", "30")
        queued = await old.createJob("true", limits={"io_write_bps": 1})
        if queued["status"] != "PENDING":
            raise SkipTest(f"no disk-rate limits here: {queued}")
        await old.stop()
        db = sqlite3.connect(os.path.join(state, "jobs.sqlite3"))
        with db:
            db.execute("UPDATE jobs SET queued_limits = NULL")
        db.close()
        new = LiveServer(self, "--max-running=1", "--allow-io-bps", stateDir=state)
        ended = await new.waitEnded(queued["id"])
        self.assertEqual(ended["status"], "FAILED", ended)
        self.assertIn(
            "limits.io_write_bps 1 is under this server's minimum", ended["error"]
        )


class AllDigitAccountNameTests(SynchronousTestCase):
    """
    Code review round 36: a user mapped to a Unix account whose name is all
    digits: a record's C{run_as} (the name) was read as a uid number, so
    crash recovery looked for the job's leftovers as another uid (its own
    escaped the kill; another uid's could have been killed).
    """

    def test_nameBeforeNumber(self) -> None:
        requireRoot()
        name, uid = "47474", 47999
        made = subprocess.run(
            ["useradd", "--badname", "-M", "-u", str(uid), "-s", "/bin/sh", name],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise SkipTest(f"cannot make an all-digit account: {made.stderr.strip()}")
        self.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
        self.assertEqual(runAsUid(name), uid)
        # A number no account is named: the server's own uid without a name.
        self.assertEqual(runAsUid("47998"), 47998)


class StaleLookBeforeTheStopTests(JobProcessTestCase):
    """
    CI at 88ea0f4 (1 run of 12): under C{--isolate pid}, a job that traps
    TERM and exits 0 ended COMPLETED on a stop. The look at its handlers
    came before its trap was set; the server's thread then waited (a loaded
    machine) while the shell set it, took the signal and exited 0, all
    before the look after the signal, which found nothing (the init had
    reaped it): the exit was taken for its own. A command seen alive
    without a handler before the signal and gone after is not known; only
    one seen ended before it is sure to have ended on its own.
    """

    def judged(self, alive: bool, *answers: bool | None, **options: Any) -> list[int]:
        """A job whose looks answer C{answers} in turn (the command alive
        before the signal or not); the pids looked at."""
        looks = iter(answers)
        looked: list[int] = []

        def endsBy(pid: int, signum: int) -> bool | None:
            looked.append(pid)
            return next(looks)

        job = self.another(endsBy=endsBy, ended=lambda pid: not alive, **options)
        self.job = job
        self.protocol = JobProcessProtocol(job)
        self.start()
        return looked

    ended = StopAsItExitsTests.ended

    def test_goneAfterTheSignalNotKnown(self) -> None:
        self.judged(True, True, None)
        self.job.stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.STOPPED, "alice", 0))

    def test_aHandlerAfterTheSignal(self) -> None:
        self.judged(True, True, False)
        self.job.stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.STOPPED, "alice", 0))

    def test_stillWithoutOneAfterTheSignal(self) -> None:
        """Exiting on its own as the signal came (review round 29)."""
        looked = self.judged(True, True, True)
        self.job.stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.COMPLETED, None, 0))
        self.assertEqual(looked, [PID, PID])

    def test_endedBeforeTheSignalIsItsOwn(self) -> None:
        looked = self.judged(False, True)
        self.job.stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.COMPLETED, None, 0))
        self.assertEqual(looked, [PID])

    def test_timeoutToo(self) -> None:
        """The timeout's stop is judged the same way (it looked once)."""
        self.judged(True, True, None, timeout=6.0)
        self.clock.advance(6.0)
        status, _, code = self.ended(processExit(0))
        self.assertEqual((status, code), (JobStatus.FAILED, 0))
        self.assertIn("timed out", self.record.error or "")


class TurnClock(Clock):
    """A L{Clock} whose L{turn} runs the calls due when it began, as a
    reactor's turn does (C{Clock.advance} runs those they add too)."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.func(*call.args, **call.kw)


class TurnsTests(SynchronousTestCase):
    """L{Turns}: one step a reactor turn, in order; a cancelled one leaves."""

    def test_oneStepATurn(self) -> None:
        clock = TurnClock()
        turns = Turns(clock)
        ran: list[str] = []
        for name in "abcd":
            turns.take().addCallback(lambda _, name=name: ran.append(name))
        self.assertEqual(ran, ["a"])
        self.assertEqual(len(turns), 3)
        clock.turn()
        self.assertEqual(ran, ["a", "b"])
        clock.turn()
        clock.turn()
        self.assertEqual(ran, ["a", "b", "c", "d"])
        clock.turn()
        # A turn with no step waiting ends the line: the next runs at once.
        turns.take().addCallback(lambda _: ran.append("e"))
        self.assertEqual(ran[-1], "e")

    def test_usersTakeTurns(self) -> None:
        """A user's step waits for one of another's burst at most."""
        clock = TurnClock()
        turns = Turns(clock)
        ran: list[str] = []
        for n in range(4):
            turns.take("rita").addCallback(lambda _, n=n: ran.append(f"rita{n}"))
        turns.take("alice").addCallback(lambda _: ran.append("alice"))
        turns.take("rita").addCallback(lambda _: ran.append("rita4"))
        for _ in range(5):
            clock.turn()
        self.assertEqual(ran, ["rita0", "rita1", "alice", "rita2", "rita3", "rita4"])
        self.assertEqual(len(turns), 0)

    def test_closedRunsEveryStep(self) -> None:
        clock = TurnClock()
        turns = Turns(clock)
        ran: list[str] = []
        for name in "abc":
            turns.take().addCallback(lambda _, name=name: ran.append(name))
        turns.close()
        self.assertEqual(ran, ["a", "b", "c"])
        self.assertEqual(clock.getDelayedCalls(), [])
        turns.take().addCallback(lambda _: ran.append("d"))
        self.assertEqual(ran[-1], "d")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelledLeavesTheLine(self) -> None:
        clock = TurnClock()
        turns = Turns(clock)
        turns.take()
        gone = turns.take()
        ran: list[str] = []
        turns.take().addCallback(lambda _: ran.append("c"))
        gone.addErrback(lambda f: f.trap(CancelledError))
        gone.cancel()
        self.assertEqual(len(turns), 1)
        clock.turn()
        self.assertEqual(ran, ["c"])


class ListingsTakeTurnsTests(TestCase):
    """
    Attacker round 36: 60 listings of 1,000 jobs sent at once, one a
    connection, by a Reader, were all served in one reactor turn: every
    other client waited 3 s, burst after burst. Each page of the list (and
    of a bulk delete) now has a turn of its own: the reactor polls its
    connections between two pages.
    """

    timeout = 60

    async def test_pagesInTurnsOfTheirOwn(self) -> None:
        server = LiveServer(self)
        for _ in range(3):
            await server.createJob("true")
        # Connections made first: then the burst's requests all arrive
        # together, as the attacker's did.
        await gatherResults(
            [ensureDeferred(server.json("GET", "/healthz", None)) for _ in range(12)]
        )
        polls = [0]
        iterate = reactor.doIteration  # type: ignore[attr-defined]

        def counted(delay: float | None) -> None:
            polls[0] += 1
            iterate(delay)

        reactor.doIteration = counted  # type: ignore[attr-defined]
        self.addCleanup(setattr, reactor, "doIteration", iterate)
        seen: list[int] = []
        page = server.manager.page

        def noted(*args: Any, **kwargs: Any) -> Any:
            seen.append(polls[0])
            return page(*args, **kwargs)

        server.manager.page = noted  # type: ignore[method-assign]
        answers = await gatherResults(
            [
                ensureDeferred(server.json("GET", "/jobs?limit=10", "ada"))
                for _ in range(12)
            ]
        )
        self.assertEqual({code for code, _ in answers}, {200})
        self.assertEqual(len(seen), 12)
        # (The first two in one: the first in a poll, the next in the
        # reactor's calls right after it.)
        self.assertEqual(max(seen.count(poll) for poll in seen), 2, seen)
        self.assertEqual(len(set(seen)), 11, seen)


#: A process of three threads whose leader blocks TERM: the others decide.
THREADED = """
import signal, sys, threading
done = threading.Event()
for _ in range(2):
    threading.Thread(target=done.wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("ready", flush=True)
sys.stdin.read()
"""


class ThreadLooksBoundedTests(SynchronousTestCase):
    """
    Attacker round 36: a stop looks at every thread of a job whose leader
    blocks the signal (256 at most), twice, on the reactor's thread; 60
    such jobs of 190 threads stopped at once held it 1.1 s. The threads
    looked at, across jobs, are bounded a tenth of a second; past that, not
    known (the stop stands).
    """

    def setUp(self) -> None:
        child = subprocess.Popen(
            [sys.executable, "-c", THREADED],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.assertEqual(child.stdout.readline() if child.stdout else b"", b"ready\n")
        self.pid = child.pid
        now = [0.0]
        self.now = now
        self.patch(process, "threadLooks", process.LookBudget(5, 0.1, lambda: now[0]))

    def test_pastTheBudgetNotKnown(self) -> None:
        self.assertIs(process.endsByDefault(self.pid, signal.SIGTERM), True)
        self.assertIsNone(process.endsByDefault(self.pid, signal.SIGTERM))
        self.now[0] += 0.1
        self.assertIs(process.endsByDefault(self.pid, signal.SIGTERM), True)


class SecondStopWhileTheFirstIsSentTests(SlurmCase):
    """
    Slurm round 36: a stop of a Slurm job while a first one's signal was on
    its way to Slurm waited for the job's end; when the first failed
    (slurmctld down: a 503), nothing answered the second, which waited for
    ever while the job ran on, and the harder end it asked for was kept:
    the next stop, once Slurm was back, cancelled the job at once, its
    grace of 30 s ignored. The second shares the first's answer, and a
    failed stop leaves nothing behind.
    """

    def heldSignal(self) -> Deferred[None]:
        """The next signal's scancel waits for the Deferred returned."""
        held: Deferred[None] = Deferred()
        realSignal = self.commands.signal

        async def signalHeld(*args: Any, **kwargs: Any) -> None:
            self.commands.signal = realSignal  # type: ignore[method-assign]
            await held

        self.commands.signal = signalHeld  # type: ignore[method-assign]
        return held

    def failedTwice(self) -> JobRecord:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        held = self.heldSignal()
        first = self.manager.stop(record.id, "alice")
        second = self.manager.stop(record.id, "ada", StopRequest(signal.SIGKILL))
        self.assertNoResult(first)
        self.assertNoResult(second)
        held.errback(SlurmError("Unable to contact", unreachable=True))
        self.failureResultOf(first, ServiceUnavailable)
        self.failureResultOf(second, ServiceUnavailable)
        return record

    def test_sharesTheFirstsFailure(self) -> None:
        record = self.failedTwice()
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.assertIsNone(self.manager.record(record.id).stopped_by)

    def test_nextStopHasItsGrace(self) -> None:
        record = self.failedTwice()
        stopped = self.manager.stop(record.id, "alice", StopRequest(grace=30.0))
        self.assertEqual(self.commands.signals[-1], ("101", "TERM"))
        self.reactor.advance(29.0)
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(1.5)
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertNoResult(stopped)

    def test_secondWaitsForTheEndWhenSent(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        held = self.heldSignal()
        first = self.manager.stop(record.id, "alice")
        second = self.manager.stop(record.id, "ada")
        held.callback(None)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.poll({"101": state("CANCELLED", 0, 15)})
        self.assertIs(self.successResultOf(second).status, JobStatus.STOPPED)
        self.assertIs(self.successResultOf(first).status, JobStatus.STOPPED)


def fillDisk(path: str) -> None:
    """Write C{path} until its file system is full (unbuffered)."""
    with open(path, "wb", 0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


def storeAlone(path: str, where: str) -> tuple[str, int]:
    """
    The store's file alone (no WAL: what a crash leaves when the WAL was
    removed), copied to C{where}: its integrity check and its jobs.
    """
    shutil.copyfile(path, where)
    db = sqlite3.connect(where)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        tables = db.execute("SELECT name FROM sqlite_master").fetchall()
        jobs = -1
        if ("jobs",) in tables:
            jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return str(e), -1
    finally:
        db.close()
    return check, jobs


class WalRemovedOnAFullDiskTests(SynchronousTestCase):
    """
    Fault round 36: the store's WAL removed while the disk was full. It was
    checkpointed into the store's own file, which the full disk cut short,
    the only whole copy being the removed WAL: a crash then left a store no
    server would open ("database disk image is malformed"), every job lost.
    The store is written anew beside (and renamed over) its file, which is
    never half written; meanwhile nothing is checkpointed into it.
    """

    def test_fileNeverHalfWritten(self) -> None:
        disk = smallTmpfs(self, "3m")
        path = os.path.join(disk, "jobs.sqlite3")
        store = JobStore(path)
        self.addCleanup(store.close)
        for n in range(60):
            record = makeRecord(n)
            record.args = ["x" * 4000]
            store.insert(record)
        self.assertGreater(os.path.getsize(path + "-wal"), 200_000)
        aside = os.path.abspath(self.mktemp())
        self.assertEqual(storeAlone(path, aside)[0], "ok")
        fillDisk(os.path.join(disk, "ballast"))
        os.unlink(path + "-wal")
        self.assertRaises(StoreError, store.relink)
        # A crash now: the store's file alone opens (the jobs since its last
        # checkpoint lost with the removed WAL, as the crash took them).
        self.assertEqual(storeAlone(path, aside)[0], "ok")
        self.assertEqual(os.listdir(disk).count("jobs.sqlite3.restoring"), 0)
        os.unlink(os.path.join(disk, "ballast"))
        self.assertIsNotNone(store.relink())
        self.assertEqual(storeAlone(path, aside), ("ok", 60))
        self.assertEqual(len(store.page(JobFilter(), limit=100)[0]), 60)


class StoreRemovedBeforeACleanStopTests(TestCase):
    """
    Fault round 36: the store's file removed, then a clean stop within the
    5 s before the server looked: nothing wrote it again, and the next
    start refused to open the jobs ("jobs.sqlite3 is missing, but its -wal
    holds..."). The stop writes it again; and while the file cannot be
    written again, /healthz says so (it said "ok").
    """

    timeout = 60

    async def test_writtenAgainAtTheStop(self) -> None:
        state = os.path.abspath(self.mktemp())
        old = LiveServer(self, stateDir=state)
        ids = [(await old.createJob("true"))["id"] for _ in range(3)]
        for jobId in ids:
            await old.waitEnded(jobId)
        os.unlink(os.path.join(state, "jobs.sqlite3"))
        await old.stop()
        new = LiveServer(self, stateDir=state)
        code, body = await new.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200, body)
        self.assertEqual({job["id"] for job in body["jobs"]}, set(ids))

    async def test_healthSaysSo(self) -> None:
        server = LiveServer(self)
        store = server.manager._store
        real = store.relink

        def refused() -> str | None:
            raise StoreError(
                "jobs.sqlite3 was removed while the server ran, and cannot be "
                "written again: database or disk is full"
            )

        store.relink = refused  # type: ignore[method-assign]
        self.addCleanup(setattr, store, "relink", real)
        manager = server.manager

        def look() -> None:
            # (At once, as the timer would: the timer's call is its own.)
            call = manager._storeLook
            if call is not None and call.active():
                call.cancel()
            manager._lookAtStore()

        look()
        code, body = await server.json("GET", "/healthz", None)
        self.assertEqual((code, body["status"]), (200, "degraded"), body)
        self.assertIn("does not hold every job", body["reason"])
        self.assertIn("cannot be written again", body["store"])
        store.relink = real  # type: ignore[method-assign]
        look()
        code, body = await server.json("GET", "/healthz", None)
        self.assertEqual(body, {"status": "ok"})


class RecoveredOutputSizeTests(SynchronousTestCase):
    """
    Fault round 36: crash recovery counted the size of whatever was at a
    job's output path: a folder there made C{stdout_bytes} 4096, while its
    log served nothing. It counts what the log serves (a regular file's
    bytes, else none).
    """

    def test_folderCountsNothing(self) -> None:
        from jobworker.executors.local.executor import LocalExecutor

        from .fakes import FakeProcessReactor

        jobsDir = os.path.join(os.path.abspath(self.mktemp()), "jobs")
        record = makeRecord(7)
        record.pid = None
        executor = LocalExecutor(FakeProcessReactor(), jobsDir, 5.0)
        os.makedirs(os.path.join(jobsDir, record.id, "stdout"))
        with open(os.path.join(jobsDir, record.id, "stderr"), "wb") as f:
            f.write(b"12345")
        executor.recover([record], "restarted")
        self.assertEqual((record.stdout_bytes, record.stderr_bytes), (0, 5))


class HeldGroup:
    """A job's cgroup whose processes go only after L{heldFor} removals."""

    def __init__(self, heldFor: int) -> None:
        self.heldFor = heldFor
        self.kills = 0

    def kill(self) -> bool:
        self.kills += 1
        return True

    def remove(self) -> bool:
        self.heldFor -= 1
        return self.heldFor < 0


class HeldCgroups:
    version, supported, ioDevice = 1, frozenset({"memory"}), None

    def __init__(self, group: HeldGroup) -> None:
        self.group = group

    def find(self, jobId: str) -> HeldGroup:
        return self.group


class CgroupRemovedOnceItCanBeTests(SynchronousTestCase):
    """
    Fault round 36: a crashed job's process held in the kernel (a frozen
    file system) across the restart kept its cgroup, and its journal line,
    for the new server's whole life. It is tried again every 30 s, and
    forgotten once removed.
    """

    def test_triedAgain(self) -> None:
        from jobworker.executors.local.executor import MADE_CGROUPS, LocalExecutor

        from .fakes import FakeProcessReactor

        jobsDir = os.path.join(os.path.abspath(self.mktemp()), "jobs")
        os.makedirs(jobsDir)
        reactor = FakeProcessReactor()
        group = HeldGroup(heldFor=100)  # (the start-up tries 100 times)
        executor = LocalExecutor(
            reactor,
            jobsDir,
            5.0,
            cgroups=HeldCgroups(group),  # type: ignore[arg-type]
        )
        executor._madeCgroups.note("j")
        executor._killLeftovers("j", None, None, None, {}, None)
        journal = os.path.join(os.path.dirname(jobsDir), MADE_CGROUPS)
        self.assertIn("j", open(journal).read())
        reactor.advance(30)
        self.assertNotIn("j", open(journal).read())
        self.assertEqual(group.kills, 2)
        self.assertEqual(reactor.getDelayedCalls(), [])


class SharedStopCancelledTests(SlurmCase):
    """
    Session review 36: later stops of a Slurm job shared the first stop's
    Deferred; the first client going away (Klein cancels its handler's
    Deferred) cancelled the others' answers too (over HTTP, a 200 with an
    empty body). Each stop has a Deferred of its own.
    """

    def test_firstClientGoneSecondKeepsWaiting(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        first = self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.signals[-1], ("101", "TERM"))
        second = self.manager.stop(record.id, "ada", StopRequest(signal.SIGKILL))
        self.assertNoResult(second)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertNoResult(second)
        self.poll({"101": state("CANCELLED", 0, 15)})
        self.assertIs(self.successResultOf(second).status, JobStatus.STOPPED)


class KillNotJudgedByTheLookAfterTests(StaleLookBeforeTheStopTests):
    """
    Session review 36: no handler takes a KILL: an exit 0 as an Admin's
    KILL came is the job's own end, whatever the look after the signal
    finds (the command reaped already). The look after made it STOPPED.
    """

    def test_killThenExit0(self) -> None:
        looked = self.judged(True, True, None)
        self.job.stop("ada", StopRequest(signal.SIGKILL))
        self.assertEqual(self.ended(processExit(0)), (JobStatus.COMPLETED, None, 0))
        self.assertEqual(looked, [PID])


class ResumedStopFailedTests(SlurmCase):
    """
    Session review 36: a stop resumed after a restart (its TERM not known
    to have gone out) whose signal failed (Slurm out of reach) was only
    logged: the job stayed "being stopped", and every later stop, a KILL
    too, sent nothing and waited for an end nobody brought.
    """

    def test_laterStopSendsSomething(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        # The stop as stored before its signal's answer (what a crash then
        # leaves): stopped_by set, stop_requested_at not.
        self.successResultOf(self.manager.shutdown())
        stored = self.stored(record.id)
        stored.stopped_by = "alice"
        stored.stop_signal = "SIGTERM"
        self.manager._store.update(stored)
        self.manager.close()
        # The restart: Slurm out of reach as the stop is resumed.
        commands = self.commands
        realSignal = commands.signal

        async def unreachable(*args: Any, **kwargs: Any) -> None:
            raise SlurmError("Unable to contact slurm controller", unreachable=True)

        commands.signal = unreachable  # type: ignore[method-assign]
        self.executor = self.makeExecutor()
        manager = self.makeManager()
        manager.recover()
        self.flushLoggedErrors()
        # Slurm is back.
        signals: list[tuple[str, str]] = []

        async def signalled(slurmId: str, name: str, sig: str, owner: Any) -> None:
            signals.append((slurmId, sig))

        commands.signal = realSignal  # type: ignore[method-assign]
        self.reactor.advance(1.0)
        if commands.polls:
            commands.polls[-1].callback({"101": state("RUNNING")})
        self.assertIs(
            manager.record(record.id).status,
            JobStatus.RUNNING,
            manager.record(record.id).error,
        )
        stopping = manager.stop(record.id, "bob")
        self.reactor.advance(30.0)
        for d in commands.polls:
            if not d.called:
                d.callback({"101": state("RUNNING")})
        # Expected: bob's stop signals the job (or is answered); observed:
        # nothing sent, no scancel, the stop waits while the job runs on.
        self.assertTrue(
            commands.signals or commands.cancels or stopping.called,
            f"signals={commands.signals} cancels={commands.cancels} "
            f"answered={stopping.called} status={manager.record(record.id).status}",
        )


#: A job's script: splice, tee and vmsplice on a pipe, and userfaultfd (each
#: answer an errno name or "ok"); then a plain copy, which must still work.
PIPE_LOCKS = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def answer(call):
    try:
        call()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
r, w = os.pipe()
r2, w2 = os.pipe()
a, b = socket.socketpair()
os.write(w, b"x")
print("splice", answer(lambda: os.splice(r, b.fileno(), 1)))
print("tee", answer(lambda: libc.syscall(276, r, w2, 1, 0) >= 0
      or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "tee"))))
buf = ctypes.create_string_buffer(b"y")
iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 1)
print("vmsplice", answer(lambda: libc.syscall(278, w2, iov, 1, 0) >= 0
      or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "vmsplice"))))
print("userfaultfd", answer(lambda: libc.syscall(323, 0) >= 0
      or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "userfaultfd"))))
print("sendfile", answer(lambda: os.sendfile(b.fileno(), r, None, 1)))
params = ctypes.create_string_buffer(120)
print("io_uring_setup", answer(lambda: libc.syscall(425, 4, params) >= 0
      or (_ for _ in ()).throw(OSError(ctypes.get_errno(), "io_uring_setup"))))
print("read", os.read(r, 1).decode())
"""


class PipeLocksRefusedTests(TestCase):
    """
    Attacker round 36b: a job held its own pipe's lock with splice(2)
    between the pipe and an idle (or full) socket: the server's close of
    its stdin froze the whole server until the job was killed by hand, and
    each such job's stdout held the server's thread a second. A dynamic
    uid's job gets ENOSYS from splice, tee, vmsplice and userfaultfd (a
    fault in a page moved into a pipe holds its lock too); programs fall
    back to read and write.
    """

    timeout = 60

    def setUp(self) -> None:
        if platform.machine() != "x86_64":
            raise SkipTest(
                f"the script's call numbers are x86_64's, not {platform.machine()}'s"
            )
        requireRoot()

    async def test_refused(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("/usr/bin/python3", "-c", PIPE_LOCKS, user="bob")
        ended = await server.waitEnded(job["id"])
        response = await server.request("GET", f"/jobs/{job['id']}/logs", "ada")
        text = (await treq.content(response)).decode()
        self.assertEqual(ended["status"], "COMPLETED", (ended, text))
        self.assertEqual(
            text.split("\n"),
            [
                "splice ENOSYS",
                "tee ENOSYS",
                "vmsplice ENOSYS",
                "userfaultfd ENOSYS",
                "sendfile ENOSYS",
                "io_uring_setup ENOSYS",
                "read x",
                "",
            ],
        )


class JSONInUTF8OnlyTests(SynchronousTestCase):
    """
    Code review 36: a request body in UTF-16 or UTF-32 (no BOM) was taken:
    given bytes, C{json.loads} guesses the encoding, and the job ran what a
    proxy or a log reading the body as UTF-8 (JSON's one encoding) saw
    otherwise. Only UTF-8 is JSON here: a 400.
    """

    def test_otherEncodingsRefused(self) -> None:
        text = '{"command": "true"}'
        for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            error = self.assertRaises(
                BadRequest, parseJSONObject, text.encode(encoding)
            )
            self.assertIn("not valid JSON", error.message)
        self.assertEqual(parseJSONObject(text.encode()), {"command": "true"})
        # A byte order mark before UTF-8 is ignored, as before (late review).
        bom = text.encode("utf-8-sig")
        self.assertEqual(parseJSONObject(bom), {"command": "true"})


class OneOwnersRefusalHoldsNoOtherTests(SynchronousTestCase):
    """
    Code review 36: a queued job that could not have a dynamic uid (none
    free) stopped the whole pass: another user's job of a mapped account,
    which needs none, waited a retry (1 s) for each user so held, a running
    slot free. Such jobs start in the same pass; a refusal of the whole
    server's (the store, no process slot) still ends it (the late review:
    every user's job was tried, each a failed spawn).
    """

    def scheduler(
        self, answers: dict[str, bool | NoUid]
    ) -> tuple[Scheduler, list[str]]:
        tried: list[str] = []

        def start(waiting: Waiting) -> bool | NoUid:
            tried.append(waiting.jobId)
            return answers[waiting.owner]

        scheduler = Scheduler(
            start=start,
            mayStartMore=lambda: True,
            mayStart=lambda owner: True,
            finished=lambda record: None,
            load=lambda jobId: makeRecord(0),
            later=lambda: None,
            now=lambda: 0.0,
            soon=lambda: None,
        )
        bob = Identity.ofServer()  # (a mapped account: needs no uid)
        for seq, owner in enumerate(("alice", "ada", "bob", "carol")):
            account = bob if owner == "bob" else None
            scheduler.queue.add(
                Waiting(owner, owner, 0, seq, account), lambda jobId: False
            )
        return scheduler, tried

    def test_mappedAccountsStart(self) -> None:
        scheduler, tried = self.scheduler(
            {"alice": NO_UID, "ada": NO_UID, "bob": True, "carol": NO_UID}
        )
        scheduler.dispatch()
        # (ada's and carol's need a uid too: not tried once none was free.)
        self.assertEqual(tried, ["alice", "bob"])
        self.assertEqual(len(scheduler.queue), 3)

    def test_serverWideRefusalEndsThePass(self) -> None:
        scheduler, tried = self.scheduler(
            {"alice": False, "ada": False, "bob": False, "carol": False}
        )
        scheduler.dispatch()
        self.assertEqual(tried, ["alice"])
        self.assertEqual(len(scheduler.queue), 4)
