"""
Defects the code reviewer's round of the thirtieth session found: a stop's
signal lost while the job's standby had not taken its request yet, a
timeout taken for a natural exit it raced, the jobs' environments kept for
every dynamic uid ever used, and a 429 for every job started just after the
server was stalled (its verified uids all too old).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.client import config
from jobworker.client.calls import exitStatusOf
from jobworker.executors.local import executor as executorModule
from jobworker.executors.local.executor import LocalExecutor
from jobworker.executors.local.process import JobProcessProtocol
from jobworker.jobs.combined import RUNS_PER_TURN, CombinedReader, TurnBudget
from jobworker.jobs.identity import Identity, PoolExhausted
from jobworker.jobs.records import JobStatus
from jobworker.jobs.stopping import MAX_GRACE
from jobworker.server import logoutput

from .fakes import FakeProcessReactor, noLiveUidProcesses, processExit, processKilled
from .support import CA, JW, LiveServer, jwEnvironment, processAlive, runJW, sleep
from .test_combined import Job, readerOf
from .test_contract import RecordingConsumer
from .test_faults17_local import resume, spawnerOf
from .test_firstrun import jwWith
from .test_identity import Directory, Threads, waitOutput
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


def _state(pid: int) -> str | None:
    """The state letter of C{pid} (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
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
        # (A read rate, and its 4,096 bytes/s under the default
        # --min-io-bps: allowed here.)
        server = await Twistd(self).start(
            "--stop-grace=1", "--min-io-bps=1", "--allow-io-bps"
        )
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
        # Its read queued at the throttle: D state (before it, a stop ends it).
        await server.poll(
            lambda: succeed(_state(job["pid"]) == "D"), 20, "dd in D state"
        )
        started = time.monotonic()
        code, record = await server.json("POST", f"/jobs/{job['id']}/stop", "alice")
        self.assertEqual(code, 200, record)
        self.assertEqual(record["status"], "STOPPED", record)
        self.assertLess(time.monotonic() - started, 30)
        # Its process is gone, not in the kernel still (and its uid free).
        await server.poll(
            lambda: succeed(not processAlive(job["pid"])), 10, "its process's end"
        )


class CombinedReadersShareATurnTests(SynchronousTestCase):
    """
    Combined readers of a job that switched streams at every byte: each
    had its own L{RUNS_PER_TURN} runs a turn, each run a C{pread}; 40 of
    them took 0.4-0.7 s of each turn of the reactor, and every other
    user's request waited that long (attacker round 30).
    """

    def switchingJob(self, runs: int) -> Job:
        job = Job(self.mktemp())
        for _ in range(runs):
            job.write([(0, b"o"), (1, b"e")])
        job.close()
        return job

    def readAll(
        self, runs: int, readers: int, eachTurn: Callable[[list[list[bytes]]], None]
    ) -> list[list[bytes]]:
        """
        C{readers} readers of one budget read a job of C{runs} switches to
        the end (C{eachTurn} called with what each sent, as each turn
        begins); what each sent.
        """
        job = self.switchingJob(runs)
        clock = Clock()
        budget = TurnBudget(clock)
        sent: list[list[bytes]] = [[] for _ in range(readers)]
        started = [
            CombinedReader(
                job.spools,
                job.order,
                RecordingConsumer(),  # type: ignore[arg-type]
                lambda _, data, got=got: got.append(data),  # type: ignore[misc]
                budget=budget,
            )
            for got in sent
        ]
        fill = budget._fill

        def refill() -> None:
            eachTurn(sent)
            fill()

        budget._fill = refill  # type: ignore[method-assign]
        for reader in started:
            reader.start()
        while not all(reader.done.called for reader in started):
            clock.advance(0)
        self.assertEqual(clock.getDelayedCalls(), [])
        for got in sent:
            self.assertEqual(b"".join(got), b"oe" * runs)
        return sent

    def test_oneBudgetForAll(self) -> None:
        """
        However many readers, no more than L{RUNS_PER_TURN} runs are sent
        in a turn; each gets its turn, and every byte.
        """
        between: list[int] = []  # the runs sent between two turns

        def turn(sent: list[list[bytes]]) -> None:
            between.append(sum(len(got) for got in sent) - sum(between))

        self.readAll(3 * RUNS_PER_TURN, 10, turn)
        self.assertGreater(len(between), 10)
        self.assertLessEqual(max(between), RUNS_PER_TURN, between)

    def test_turnsInTurn(self) -> None:
        """
        A reader that spent the budget waits behind the others: in the
        first turns each reader has one (none starves while another that
        came first takes every turn).
        """
        counts: list[list[int]] = []
        self.readAll(
            4 * RUNS_PER_TURN, 3, lambda sent: counts.append([len(g) for g in sent])
        )
        # (The first reader had the first turn as it started, and the next
        # as it waited first.) By the fourth turn, each has sent.
        self.assertTrue(all(counts[3]), counts[:5])

    def test_shortRunsReadAhead(self) -> None:
        """A run of a byte is not a pread of a byte: runs are read ahead."""
        job = self.switchingJob(5000)
        reads: list[int] = []
        realRead = os.pread

        def counting(fd: int, length: int, offset: int) -> bytes:
            reads.append(length)
            return realRead(fd, length, offset)

        self.patch(os, "pread", counting)
        got: list[tuple[int, bytes]] = []
        reader = readerOf(job, got)
        reader.start()
        self.assertTrue(reader.done.called)
        self.assertEqual(b"".join(data for _, data in got), b"oe" * 5000)
        self.assertLess(len(reads), 100, "preads of output and order for 10,000 runs")


class LogReaderThatDoesNotReadTests(TestCase):
    """
    twistd -n writes the server's log to its stdout (a pipe to journald,
    say) from the reactor's thread: once its reader stopped reading and
    the pipe was full, the server answered nothing, ended no job and did
    not stop at SIGTERM until the reader read again (fault round 30).
    """

    async def test_answersWhileTheLogWaits(self) -> None:
        server = await Twistd(self).start("--access-log=on")
        transport = server.protocol.transport
        assert transport is not None
        transport.pauseProducing()  # the log's reader stops reading
        try:
            # An access line each: several times the pipe's 64 KiB.
            for _ in range(1200):
                response = await server.request("GET", "/healthz", None).addTimeout(
                    15, reactor
                )
                await treq.content(response)
                self.assertEqual(response.code, 200)
            job = await server.createJob("true")
            ended = await server.waitEnded(job["id"])
            self.assertEqual(ended["status"], "COMPLETED")
        finally:
            transport.resumeProducing()
        await server.poll(
            lambda: succeed("GET /healthz" in server.protocol.log()[-2000:]),
            30,
            "the log written once read again",
        )

    async def test_stopsWhileTheLogWaits(self) -> None:
        """SIGTERM while the log's reader reads nothing: the server exits."""
        server = await Twistd(self).start("--access-log=on")
        transport = server.protocol.transport
        assert transport is not None
        transport.pauseProducing()
        try:
            for _ in range(800):
                response = await server.request("GET", "/healthz", None).addTimeout(
                    15, reactor
                )
                await treq.content(response)
            os.kill(server.pid, signal.SIGTERM)
            await server.poll(
                lambda: succeed(not processAlive(server.pid)), 20, "the server's exit"
            )
        finally:
            transport.resumeProducing()
        await server.stop()

    async def test_lastLinesWritten(self) -> None:
        """
        twistd's last lines come after the reactor stopped, and it then
        ends by its own SIGTERM (no exit handler runs): they are written.
        """
        server = await Twistd(self).start()
        # Its "listening" line comes before the reactor runs, and with it
        # twistd's SIGTERM handler: a request answered says both are there.
        await treq.content(await server.request("GET", "/healthz", None))
        await server.stop()
        self.assertIn("Server Shut Down.", server.protocol.log())

    def test_linesDroppedPastTheBound(self) -> None:
        """
        Past L{MAX_PENDING} bytes waiting, lines are dropped, and the first
        line taken after says how much was (where they were).
        """
        self.patch(logoutput, "MAX_PENDING", 100)
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        output = logoutput.UnblockedOutput(write)
        self.addCleanup(os.close, write)
        os.set_blocking(write, True)
        # Fill the pipe so the thread's write waits: nothing is read yet.
        filler = b"x" * 65536
        blocker = os.dup(write)
        os.set_blocking(blocker, False)
        try:
            while True:
                os.write(blocker, filler)
        except BlockingIOError:
            pass
        finally:
            os.close(blocker)
            os.set_blocking(write, True)  # (one description: theirs too)
        for i in range(20):
            self.assertEqual(output.write(f"line {i:02d} of twenty\n"), 18)
        self.assertGreater(output.dropped, 0)
        drained = b""
        while len(drained) < 65536 * 16:
            chunk = os.read(read, 65536)
            drained += chunk
            if b"line" in chunk:
                break
        # Taken once what waits is written: the thread may not have taken
        # its last write's bytes off its list yet (a loaded CI), and the
        # line was dropped with them (and then never came).
        for _ in range(3000):
            before = output.dropped
            output.write("after\n")
            if output.dropped == before:
                break
            time.sleep(0.01)
        # (Read until it comes, the thread's pace whatever the machine's
        # load: close() waits 2 s at most, which a loaded CI exceeded.)
        deadline = time.monotonic() + 30
        while not drained.endswith(b"after\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], 1.0)
            if ready:
                drained += os.read(read, 65536)
        output.close()
        text = drained.replace(b"x", b"").decode()
        self.assertIn("line 00 of twenty\n", text)
        self.assertNotIn("line 19 of twenty\n", text)
        self.assertIn(
            f"jobworker: {output.dropped} bytes of log lines were dropped here", text
        )
        self.assertTrue(text.endswith("them\nafter\n"), text)


class NotCompletedIsNotZeroTests(TestCase):
    """
    A job that caught its timeout's TERM and exited 0 is FAILED "timed
    out", its after_ok jobs never run: jw exec -f, jw wait and jw logs -f
    exited 0 for it, and C{jw exec -f ... && deploy} deployed (new user
    round 30).
    """

    def test_exitedZeroButNotCompleted(self) -> None:
        for status in ("FAILED", "STOPPED"):
            job = {"status": status, "exit_code": 0, "signal": None}
            self.assertEqual(exitStatusOf(job), 1, status)
        self.assertEqual(exitStatusOf({"status": "FAILED", "exit_code": 3}), 3)
        self.assertEqual(exitStatusOf({"status": "COMPLETED", "exit_code": 0}), 0)

    async def test_timedOutExitZero(self) -> None:
        server = LiveServer(self)
        script = "trap 'echo cleanup; exit 0' TERM; sleep 30 & wait"
        out, err, code = await runJW(
            server.url, "exec", "-f", "--timeout", "1", "--", "sh", "-c", script
        )
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"cleanup", out)
        self.assertIn(b"timed out after 1 second", err)
        jobId = err.split(b"jw: job ", 1)[1].split()[0].decode()
        out, err, code = await runJW(server.url, "wait", jobId)
        self.assertEqual(code, 1, (out, err))


class ListLabelGivenTwiceTests(TestCase):
    """
    C{jw list --label team=a --label team=b} kept the last value (the
    team=b jobs); the API asks for both, and no job has both (new user
    round 30).
    """

    async def test_bothAsked(self) -> None:
        server = LiveServer(self)
        await server.createJob("true", labels={"team": "a"})
        await server.createJob("true", labels={"team": "b"})
        out, err, code = await runJW(
            server.url, "list", "--json", "--label", "team=a", "--label", "team=b"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["jobs"], [])
        out, err, code = await runJW(server.url, "list", "--json", "--label", "team=b")
        self.assertEqual(
            [j["labels"] for j in json.loads(out)["jobs"]], [{"team": "b"}]
        )


class StdinThatCannotBeReadTests(TestCase):
    """
    C{jw exec -i} whose own stdin cannot be read: said "jw: stdin: ..." and
    left the job waiting for the rest of its stdin for ever (with C{-f},
    jw waited with it); a stdin left non-blocking ended the feed at its
    first EAGAIN (new user round 30).
    """

    def jwExec(self, server: LiveServer, stdin: int, *args: str) -> Deferred[Any]:
        def inThread() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [JW, "exec", "-i", *args, "--", "cat"],
                stdin=stdin,
                capture_output=True,
                env=jwEnvironment(server.url),
                timeout=60,
            )

        return deferToThread(inThread)

    async def test_unreadable(self) -> None:
        """Opened for writing only (EBADF): the job's stdin closed, one line, 1."""
        server = LiveServer(self)
        for follow in (("-f",), ()):
            fd = os.open(os.devnull, os.O_WRONLY)
            try:
                done = await self.jwExec(server, fd, *follow)
            finally:
                os.close(fd)
            self.assertEqual(done.returncode, 1, done)
            lines = done.stderr.decode().splitlines()
            self.assertIn(
                "jw: stdin: jw's stdin cannot be read (Bad file descriptor): the "
                "job's stdin was closed after 0 bytes",
                lines,
            )
            self.assertNotIn("Traceback", done.stderr.decode())
        _code, listing = await server.json("GET", "/jobs", "alice")
        # Each ends once its closed stdin is seen (without -f, jw does not
        # wait for that: a loaded CI listed one RUNNING still).
        ended = [await server.waitEnded(job["id"]) for job in listing["jobs"]]
        self.assertEqual({job["status"] for job in ended}, {"COMPLETED"})

    async def test_nonBlocking(self) -> None:
        """A non-blocking pipe with nothing in it yet: waited on, all sent."""
        server = LiveServer(self)
        read, write = os.pipe()
        os.set_blocking(read, False)
        running = self.jwExec(server, read, "-f")
        await sleep(1.0)  # (jw reads, nothing is there)
        os.close(read)
        os.write(write, b"hello\n")
        os.close(write)
        done = await running
        self.assertEqual((done.returncode, done.stdout), (0, b"hello\n"), done)


class GraceHelpTests(SynchronousTestCase):
    """C{jw stop --help} offered "7d, 2w" for --grace; the server refuses
    more than an hour (new user round 30)."""

    def test_theServersMost(self) -> None:
        done = subprocess.run(
            [JW, "stop", "--help"],
            capture_output=True,
            env=jwEnvironment("https://localhost:1"),
            timeout=60,
            check=True,
        )
        text = " ".join(done.stdout.decode().split())
        self.assertIn(f"seconds before KILL, at most {MAX_GRACE:g}", text)
        self.assertNotIn("7d", text)


class ConfigUserOfATokenTests(TestCase):
    """
    C{jw config} with JW_TOKEN and JW_USER both set named JW_USER's user;
    the token goes first, and the jobs are its user's (new user round 30).
    """

    async def test_theTokensUser(self) -> None:
        server = LiveServer(self)
        code, body = await server.json("POST", "/tokens", "alice", {})
        self.assertEqual(code, 201, body)
        out, err, code = await runJW(
            server.url, "config", user="bob", JW_TOKEN=body["token"]
        )
        self.assertEqual(code, 0, err)
        lines = [" ".join(line.split()) for line in out.decode().splitlines()]
        self.assertIn("user = alice # JW_TOKEN (as the token says)", lines)
        out, err, code = await runJW(server.url, "config", user="bob")
        lines = [" ".join(line.split()) for line in out.decode().splitlines()]
        self.assertIn("user = bob # JW_USER", lines)


class UnreadableBeforeAnythingSentTests(TestCase):
    """
    A job's output that cannot be read at the first read (a disk's EIO,
    the file gone): the connection was cut with no answer at all, and jw
    said it could not connect (fault round 30). Nothing sent yet: a 503
    with the reason.
    """

    async def test_answered(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo hello; exec sleep 60")
        await waitOutput(server, job["id"], b"hello")
        path = os.path.join(server.manager._executor.outputDir(job["id"]), "stdout")
        os.unlink(path)
        for query in ("", "?stream=combined", "?format=sse", "?follow=true"):
            response = await server.request(
                "GET", f"/jobs/{job['id']}/logs{query}", "alice"
            )
            self.assertEqual(response.code, 503, query)
            error = json.loads(await response.content())["error"]
            self.assertEqual(
                error,
                "the job's output cannot be read now (No such file or directory)",
                query,
            )
        out, err, code = await runJW(server.url, "logs", job["id"])
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"cannot be read now", err)
        self.assertNotIn(b"cannot connect", err)
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice")


class LoginKeptByServerTests(SynchronousTestCase):
    """
    A login was kept by the server URL as typed: one made with a trailing
    slash was not found without it (jw asked for the password again), and
    jw logout said "not logged in", the token kept (new user round 30).
    """

    def test_sameServerHowEverTyped(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "tokens.json")
        config.saveToken(path, "https://Vm:19303/", "tok", 2e9, "alice")
        for typed in ("https://vm:19303", "HTTPS://VM:19303/", "https://vm:19303//"):
            self.assertEqual(config.loadToken(path, typed, 1e9), ("tok", True), typed)
            self.assertEqual(config.savedUser(path, typed), "alice")
        self.assertEqual(config.loadToken(path, "https://vm:19304", 1e9), (None, False))
        config.saveToken(path, "https://h", "t2", 2e9, "bob")
        self.assertEqual(config.loadToken(path, "https://h:443/", 1e9), ("t2", True))
        self.assertTrue(config.forgetToken(path, "https://vm:19303"))
        self.assertEqual(
            config.loadToken(path, "https://vm:19303/", 1e9), (None, False)
        )

    def test_keptByAnOlderJw(self) -> None:
        """A login an older jw kept (by the URL as typed) is still found."""
        path = os.path.join(os.path.abspath(self.mktemp()), "tokens.json")
        os.makedirs(os.path.dirname(path), mode=0o700)
        with open(path, "w") as f:
            json.dump(
                {"https://vm:1/": {"token": "old", "expires": 2e9, "user": "a"}}, f
            )
        os.chmod(path, 0o600)
        self.assertEqual(config.loadToken(path, "https://vm:1/", 1e9), ("old", True))
        self.assertTrue(config.forgetToken(path, "https://vm:1/"))
        self.assertFalse(os.path.exists(path))


class TrustedAtLoginReplacedTests(TestCase):
    """
    The CA jw trusted for a server at jw login no longer signs its
    certificate: jw said "not trusted (check --ca / JW_CA ...)", set
    nowhere, and jw login failed the same way; nothing named the file to
    delete (new user round 30).
    """

    async def test_theFileNamed(self) -> None:
        server = LiveServer(self, "--interface=127.0.0.2", ownCertificate=True)
        url = f"https://127.0.0.2:{server.port}"
        home = os.path.realpath(self.mktemp())
        env = jwEnvironment(url, XDG_CONFIG_HOME=home, HOME=home)
        del env["JW_CA"]
        trusted = os.path.join(
            home, "jobworker", "trusted", f"127.0.0.2_{server.port}.pem"
        )
        os.makedirs(os.path.dirname(trusted))
        shutil.copyfile(CA, trusted)  # (the development CA: not this server's)
        for verb in ("list", "status"):
            args = [verb] if verb == "list" else [verb, "0" * 8]
            _out, err, code = await jwWith(env, *args)
            self.assertEqual(code, 1, err)
            self.assertIn(
                f"not signed by the CA trusted for it at jw login ({trusted}): if "
                "its CA was replaced, delete that file and run jw login again",
                err.decode(),
            )
