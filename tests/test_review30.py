"""
Defects the code reviewer's round of the thirtieth session found: a stop's
signal lost while the job's standby had not taken its request yet, a
timeout taken for a natural exit it raced, the jobs' environments kept for
every dynamic uid ever used, and a 429 for every job started just after the
server was stalled (its verified uids all too old).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import treq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local import executor as executorModule
from jobworker.executors.local.executor import LocalExecutor
from jobworker.executors.local.process import JobProcessProtocol
from jobworker.jobs.identity import Identity, PoolExhausted
from jobworker.jobs.records import JobStatus

from .fakes import FakeProcessReactor, noLiveUidProcesses, processExit, processKilled
from .support import processAlive, sleep
from .test_faults17_local import resume, spawnerOf
from .test_identity import Directory, Threads
from .test_process import PID, JobProcessTestCase
from .twistd import Twistd


class StopBeforeTheStandbyTookItsRequestTests(TestCase):
    """
    A stop (or a timeout) in a job's first moments, while its standby (the
    process the spawner forked ahead, which becomes the job) has not taken
    the start request yet: its cgroup is empty then, so the stop's signal
    goes to that process itself, which ignored it as the spawner does. The
    job then ran until the grace's SIGKILL.
    """

    async def test_termReachesTheJob(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root (sandboxed jobs go through the spawner)")
        server = await Twistd(self).start()
        # (The spawner starts with the first job; its login paid too.)
        await server.waitEnded((await server.createJob("true"))["id"])
        spawner = spawnerOf(server.pid)
        if spawner is None:
            raise SkipTest(f"no spawner here: {server.protocol.log()[-400:]}")
        self.addCleanup(resume, spawner)
        os.kill(spawner, signal.SIGSTOP)  # the request stays in its socket
        try:
            job = await server.createJob("sleep", "300")
            stopping = server.request(
                "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 30}
            )
            await sleep(0.5)  # (the stop's signal sent meanwhile)
        finally:
            resume(spawner)
        started = time.monotonic()
        response = await stopping
        record = await treq.json_content(response)
        self.assertEqual(response.code, 200, record)
        self.assertEqual(
            (record["status"], record["signal"]), ("STOPPED", "SIGTERM"), record
        )
        self.assertLess(time.monotonic() - started, 20, "waited for the KILL")


class TimeoutAsItExitsTests(JobProcessTestCase):
    """
    A timeout whose TERM reaches the main process as it exits on its own
    (its end not reported yet): the job's own outcome stands, as a user's
    stop's does (review round 29). It was FAILED "timed out", exit 0, and
    its after_ok jobs never ran.
    """

    def timedOut(self, endsBy: bool | None) -> None:
        job = self.another(timeout=6.0, endsBy=lambda pid, signum: endsBy)
        self.transport.exited = lambda: False  # its end not visible yet
        self.protocol = JobProcessProtocol(job)
        self.start()
        self.clock.advance(6.0)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.killer.exists = False

    def outcome(self) -> tuple[JobStatus, int | None, str | None]:
        return (self.record.status, self.record.exit_code, self.record.error)

    def test_exitZeroTheTermCouldNotHaveMade(self) -> None:
        """TERM not caught, ignored or blocked, yet exit 0: its own end."""
        self.timedOut(True)
        self.end(processExit(0))
        self.assertEqual(self.outcome(), (JobStatus.COMPLETED, 0, None))

    def test_exitCodeOfItsOwn(self) -> None:
        """An exit code of its own is its own failure, not the timeout's."""
        self.timedOut(True)
        self.end(processExit(4))
        self.assertEqual(self.outcome(), (JobStatus.FAILED, 4, "exited with code 4"))

    def test_caughtTermExitZeroTimedOut(self) -> None:
        """A job that handles TERM and exits 0 at it was ended by the timeout."""
        self.timedOut(False)
        self.end(processExit(0))
        self.assertEqual(
            self.outcome(), (JobStatus.FAILED, 0, "timed out after 6 seconds")
        )

    def test_killedByTheTimeoutIsTimedOut(self) -> None:
        """(Control: killed by the TERM is the timeout's.)"""
        self.timedOut(True)
        self.end(processKilled(signal.SIGTERM))
        self.assertEqual(
            (self.record.status, self.record.error),
            (JobStatus.FAILED, "timed out after 6 seconds"),
        )


class EnvironmentsKeptTests(SynchronousTestCase):
    """The jobs' environments kept by identity: bounded."""

    def test_boundedWhateverTheUids(self) -> None:
        executor = LocalExecutor(
            FakeProcessReactor(), os.path.abspath(self.mktemp()), 5.0
        )
        kept = executorModule.ENVIRONMENTS_KEPT
        for uid in range(70000, 70000 + 3 * kept):
            env = executor.environment(Identity.ofDynamicUid(uid))
            self.assertIn("HOME", env)
        self.assertLessEqual(len(executor._environments), kept)
        # The last ones are still there (kept, not rebuilt each time).
        last = Identity.ofDynamicUid(70000 + 3 * kept - 1)
        self.assertIs(executor.environment(last), executor.environment(last))


class UidsAfterAStallTests(SynchronousTestCase):
    """
    After the server was stalled (SIGSTOP, a frozen VM) for longer than a
    lookup stays good, every verified uid is too old. The jobs that came
    while the round looking them up again was in flight got a 429 "no
    dynamic uid is free now", with thousands free.
    """

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)
        self.directory, self.clock, self.threads = Directory(), Clock(), Threads()
        self.steady = [0.0]
        self.pool = self.directory.pool(70000, 79999, self.mktemp())
        self.pool.verifyAhead(
            self.clock,
            self.threads,
            ahead=4,
            verifiedFor=60.0,
            now=lambda: self.steady[0],
        )
        self.addCleanup(self.pool.stopVerifying)
        self.runThreads()

    def runThreads(self) -> None:
        while self.threads.pending:
            self.threads.runNext()

    def stall(self, seconds: float) -> None:
        self.steady[0] += seconds

    def test_jobAfterTheLateTimer(self) -> None:
        """
        At SIGCONT the late re-verification timer runs first (a round in
        flight), then the request that waited.
        """
        self.stall(65.0)
        self.clock.advance(65.0)
        self.assertEqual(len(self.threads.pending), 1, "a round is in flight")
        uid = self.pool.acquire()
        self.assertTrue(70000 <= uid <= 79999)

    def test_burstAfterAStall(self) -> None:
        """The first job looks its uid up and starts a round; the next ones too."""
        self.stall(65.0)
        uids = [self.pool.acquire() for _ in range(3)]
        self.assertEqual(len(set(uids)), 3)
        self.runThreads()
        self.directory.asked.clear()
        self.pool.acquire()
        self.assertEqual(self.directory.asked, [], "verified ahead again")

    def test_aRoundThatHangsStillRefuses(self) -> None:
        """
        A round in flight for longer (a directory that hangs): nothing is
        looked up in the reactor's thread, the 429 as before.
        """
        self.stall(65.0)
        self.clock.advance(65.0)
        self.assertEqual(len(self.threads.pending), 1)
        self.stall(5.0)
        self.directory.asked.clear()
        self.assertRaises(PoolExhausted, self.pool.acquire)
        self.assertEqual(self.directory.asked, [])


#: A file of at least 1 MiB on the root file system's device (the one the
#: server's I/O limits throttle), for a direct read under a tiny limit.
def _bigFileOnRoot() -> str | None:
    root = os.stat("/").st_dev
    for path in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        try:
            st = os.stat(os.path.realpath(path))
        except OSError:
            continue
        if st.st_dev == root and st.st_size >= 1 << 20:
            return os.path.realpath(path)
    return None


class ThrottledIOEndsTests(TestCase):
    """
    A job's own I/O limit held its processes in the kernel (D state, a
    direct read queued at 1 byte a second), where no KILL reaches them: a
    stop never answered, its leftovers held their dynamic uid for hours,
    and a Developer could take every uid so (attacker round 30). The KILL
    of a job's cgroup now lifts its I/O limits first.
    """

    async def test_stopOfAThrottledRead(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root (cgroups)")
        big = _bigFileOnRoot()
        if big is None:
            raise SkipTest("no file of 1 MiB on the root file system's device")
        server = await Twistd(self).start("--stop-grace=1")
        code, body = await server.json(
            "POST",
            "/jobs",
            "alice",
            {
                "command": "dd",
                "args": [
                    f"if={big}",
                    "of=/dev/null",
                    "bs=1M",
                    "count=1",
                    "iflag=direct",
                ],
                "limits": {"io_read_bps": 4096},
            },
        )
        if code == 400 and "io" in str(body):
            raise SkipTest(f"no I/O limits here: {body}")
        self.assertEqual(code, 201, body)
        job = body
        self.assertEqual(job["status"], "RUNNING", job)
        await sleep(0.5)  # (its read queued at the throttle: D state)
        started = time.monotonic()
        code, record = await server.json("POST", f"/jobs/{job['id']}/stop", "alice")
        self.assertEqual(code, 200, record)
        self.assertEqual(record["status"], "STOPPED", record)
        self.assertLess(time.monotonic() - started, 30)
        # Its process is gone, not in the kernel still (and its uid free).
        await server.poll(
            lambda: succeed(not processAlive(job["pid"])), 10, "its process's end"
        )
