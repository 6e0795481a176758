"""Durable jobs: restarts, crash recovery, output cap, deletion, retention, paging."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.madecgroups import MADE_CGROUPS
from jobworker.jobs import spool as spoolModule
from jobworker.jobs.manager import COPY_MARK, RESTARTED
from jobworker.jobs.records import JobStatus
from jobworker.jobs.recovery import processStartTime
from jobworker.jobs.spool import OutputSpool
from jobworker.jobs.validation import JobRequest
from jobworker.server.options import parseDuration
from jobworker.server.services import RetentionService
from jobworker.units import parseSize

from .support import (
    LiveServer,
    jwEnvironment,
    processAlive,
    sharedPath,
    sleep,
    twistdCommand,
)
from .test_identity import descendants

BINARY = bytes(range(256)) * 4 + b"\x00\xff\xfe not utf-8 \xc3\x28"


class RestartTests(TestCase):
    async def test_gracefulRestartKeepsEverything(self) -> None:
        """Stop the server, start it on the same state dir: jobs and output intact."""
        first = LiveServer(self, grace=1.0)
        # Not in the state dir: no job may read that.
        source = sharedPath(self)
        with open(source, "wb") as f:
            f.write(BINARY)
        done = await first.createJob("cat", source)
        await first.waitEnded(done["id"])
        running = await first.createJob("sh", "-c", "echo begun; exec sleep 300")
        for _ in range(500):
            response = await first.request("GET", f"/jobs/{running['id']}/logs")
            if await treq.content(response):
                break
            await sleep(0.02)
        await first.stop()
        second = LiveServer(self, grace=1.0, stateDir=first.stateDir)
        code, stopped = await second.json("GET", f"/jobs/{running['id']}")
        self.assertEqual(code, 200)
        self.assertEqual(stopped["status"], "STOPPED")
        self.assertEqual(stopped["stopped_by"], "server shutdown")
        self.assertFalse(processAlive(running["pid"]))
        code, completed = await second.json("GET", f"/jobs/{done['id']}")
        self.assertEqual(completed["status"], "COMPLETED")
        self.assertEqual(completed["stdout_bytes"], len(BINARY))
        response = await second.request("GET", f"/jobs/{done['id']}/logs")
        self.assertEqual(await treq.content(response), BINARY)
        response = await second.request("GET", f"/jobs/{running['id']}/logs")
        self.assertEqual(await treq.content(response), b"begun\n")
        code, listing = await second.json("GET", "/jobs")
        self.assertEqual(
            [j["id"] for j in listing["jobs"]], [running["id"], done["id"]]
        )


def startTwistd(
    testCase: TestCase, stateDir: str, logPath: str, *extra: str
) -> subprocess.Popen[bytes]:
    """
    A real twistd jobworker on a free port, logging to C{logPath}, with the
    options C{extra}.
    """
    log = open(logPath, "ab")
    testCase.addCleanup(log.close)
    process = subprocess.Popen(
        twistdCommand(stateDir, *extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )

    def kill() -> None:
        if process.poll() is None:
            process.kill()
            process.wait()

    testCase.addCleanup(kill)
    return process


async def listeningPort(logPath: str, after: int = 0, timeout: float = 20.0) -> int:
    """The port of the newest 'listening on' line past byte C{after} of the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(logPath, "rb") as f:
            f.seek(after)
            found = re.findall(rb"listening on https://[^:]+:(\d+)", f.read())
        if found:
            return int(found[-1])
        await sleep(0.05)
    raise AssertionError("twistd did not start listening")


async def jw(port: int, *args: str) -> tuple[bytes, bytes, int]:
    """Run jw against a local port."""
    from twisted.internet.utils import getProcessOutputAndValue

    from .support import JW

    return await getProcessOutputAndValue(  # type: ignore[no-any-return]
        JW, list(args), env=jwEnvironment(f"https://localhost:{port}"), reactor=reactor
    )


def cleanUpProcesses(testCase: TestCase, *pids: int) -> None:
    """
    At cleanup, SIGKILL each of C{pids} that is still the process it is now
    (same start time: never a reused pid).
    """
    started = {pid: processStartTime(pid) for pid in pids}

    def kill() -> None:
        for pid, start in started.items():
            if start is not None and processStartTime(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    testCase.addCleanup(kill)


#: The command line of the job's leftover in L{CrashRecoveryTests}.
SLEEPER = b"sleep\x00300\x00"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class CrashRecoveryTests(TestCase):
    #: Server options of this variant of the tests.
    serverOptions: tuple[str, ...] = ()

    async def test_sigkillWhileJobsRun(self) -> None:
        """
        After SIGKILL of the server, the restarted server marks running jobs
        FAILED (worker restarted), kills what was left of them, keeps output.
        """
        stateDir = sharedPath(self)
        logPath = sharedPath(self)
        server = startTwistd(self, stateDir, logPath, *self.serverOptions)
        port = await listeningPort(logPath)
        out, err, code = await jw(
            port, "exec", "--", "sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"
        )
        self.assertEqual(code, 0, err)
        jobId = out.strip().decode()
        out, err, code = await jw(port, "exec", "--", "echo", "finished")
        doneId = out.strip().decode()
        grandchild = None
        for _ in range(200):
            out, err, code = await jw(port, "logs", jobId)
            if out.strip():
                grandchild = int(out.strip())
                break
            await sleep(0.05)
        assert grandchild is not None
        # The other job has ended (and its end is stored) before the crash.
        out, err, code = await jw(port, "wait", doneId)
        self.assertEqual(code, 0, err)
        out, _, _ = await jw(port, "status", "--json", jobId)
        self.assertIn(b'"RUNNING"', out)
        leader = int(re.search(rb'"pid": (\d+)', out).group(1))  # type: ignore[union-attr]
        printed = grandchild
        # Its pid as the host sees it, found by its command line: what the
        # job printed is its own PID namespace's under --isolate pid.
        grandchild = next(
            pid for pid in [leader, *descendants(leader)] if _cmdline(pid) == SLEEPER
        )
        cleanUpProcesses(self, leader, grandchild)

        server.kill()
        server.wait()
        self.assertTrue(processAlive(grandchild), "orphans survive a SIGKILLed server")

        size = os.path.getsize(logPath)
        startTwistd(self, stateDir, logPath, *self.serverOptions)
        port = await listeningPort(logPath, after=size)
        out, err, code = await jw(port, "status", "--json", jobId)
        self.assertEqual(code, 0, err)
        self.assertIn(b'"status": "FAILED"', out)
        self.assertIn(RESTARTED.encode(), out)
        self.assertFalse(processAlive(grandchild))
        self.assertFalse(processAlive(leader))
        out, err, code = await jw(port, "logs", jobId)
        self.assertEqual(int(out.strip()), printed)
        out, err, code = await jw(port, "status", "--json", doneId)
        self.assertIn(b'"COMPLETED"', out)
        out, err, code = await jw(port, "logs", doneId)
        self.assertEqual(out, b"finished\n")


class CopiedStateDirTests(TestCase):
    #: Server options of this variant of the tests.
    serverOptions: tuple[str, ...] = ()

    async def test_aCopyLeavesTheLiveServersJobsAlone(self) -> None:
        """
        An operator copies a live server's state dir (C{cp -a}, or the
        store alone with SQLite's backup) and starts a server on the copy,
        to try a restore or an upgrade: the copy took the live server's
        running jobs for its own crashed ones and killed them (their
        sessions, and their cgroups by job id, which all servers share).
        The live server's jobs are left alone, and the copy's records say
        why they ended there.
        """
        live = sharedPath(self)
        liveLog = sharedPath(self)
        startTwistd(self, live, liveLog, *self.serverOptions, "--max-running=1")
        port = await listeningPort(liveLog)
        out, err, code = await jw(port, "exec", "--", "sh", "-c", "sleep 300")
        self.assertEqual(code, 0, err)
        jobId = out.strip().decode()
        # Queued behind it: the live server's to run, not the copy's (it
        # ran on both: operator round 41).
        out, err, code = await jw(port, "exec", "--", "true")
        self.assertEqual(code, 0, err)
        queuedId = out.strip().decode()
        out, _, _ = await jw(port, "status", "--json", jobId)
        leader = int(re.search(rb'"pid": (\d+)', out).group(1))  # type: ignore[union-attr]
        cleanUpProcesses(self, leader, *descendants(leader))
        copy = sharedPath(self)
        subprocess.run(["cp", "-a", live, copy], check=True)
        with sqlite3.connect(os.path.join(live, "jobs.sqlite3")) as source:
            with sqlite3.connect(os.path.join(copy, "jobs.sqlite3")) as target:
                source.backup(target)
        copyLog = sharedPath(self)
        startTwistd(self, copy, copyLog, *self.serverOptions)
        copyPort = await listeningPort(copyLog)
        out, err, code = await jw(copyPort, "status", "--json", jobId)
        self.assertEqual(code, 0, err)
        self.assertIn(b"another live jobworker", out)
        self.assertTrue(processAlive(leader), "the copy killed the live server's job")
        out, _, _ = await jw(port, "status", "--json", jobId)
        self.assertIn(b'"RUNNING"', out)
        with open(copyLog, "rb") as f:
            said = f.read()
        self.assertIn(b"left alone", said)
        self.assertIn(b"its queued jobs are not started here", said)
        out, err, code = await jw(copyPort, "status", "--json", queuedId)
        self.assertIn(b'"PENDING"', out, err)
        # Noted for its next starts (session review 41: the records that
        # told it were closed, and a restart ran the queued job).
        self.assertTrue(os.path.exists(os.path.join(copy, COPY_MARK)))
        if os.path.exists(os.path.join(live, MADE_CGROUPS)):
            # The journal of cgroups made, without the record (the store
            # copied before the job was stored): the cgroup is left too.
            bare = sharedPath(self)
            subprocess.run(["cp", "-a", copy, bare], check=True)
            with sqlite3.connect(os.path.join(bare, "jobs.sqlite3")) as store:
                store.execute("DELETE FROM jobs WHERE id = ?", (jobId,))
            with open(os.path.join(bare, MADE_CGROUPS), "w") as journal:
                journal.write(f"{jobId}\n")
            bareLog = sharedPath(self)
            startTwistd(self, bare, bareLog, *self.serverOptions)
            await listeningPort(bareLog)
            self.assertTrue(processAlive(leader), "a copy's journal killed the job")
            with open(bareLog, "rb") as f:
                self.assertIn(b"holds processes of another live jobworker", f.read())
        out, err, code = await jw(port, "stop", jobId)
        self.assertEqual(code, 0, err)


class CopiedStateDirWithoutCgroupsTests(CopiedStateDirTests):
    """The same without cgroups, and with the exec chain (no spawner)."""

    serverOptions = ("--cgroups=off", "--launcher=exec")


class DaemonTests(TestCase):
    async def test_daemonKeepsRecordsAcrossACrash(self) -> None:
        """
        twistd without -n (a daemon, as the README allows): a job created
        after an outside reader of the store (a backup, the sqlite3 shell)
        is still there after kill -9 and a restart. It was lost: the store
        was opened before twistd forked, without SQLite's locks after it.
        """
        stateDir = sharedPath(self)
        logPath = sharedPath(self)
        pidPath = sharedPath(self)
        command = twistdCommand(stateDir)
        command[1:3] = [f"--pidfile={pidPath}", f"--logfile={logPath}"]
        subprocess.run(command, check=True, timeout=60, stdin=subprocess.DEVNULL)
        port = await listeningPort(logPath)
        with open(pidPath) as f:
            daemon = int(f.read())
        cleanUpProcesses(self, daemon)
        out, err, code = await jw(port, "exec", "--", "true")
        self.assertEqual(code, 0, err)
        reader = sqlite3.connect(os.path.join(stateDir, "jobs.sqlite3"))
        reader.execute("SELECT count(*) FROM jobs").fetchone()
        reader.close()
        out, err, code = await jw(port, "exec", "--", "true")
        self.assertEqual(code, 0, err)
        after = out.strip().decode()
        out, err, code = await jw(port, "wait", after)
        os.kill(daemon, signal.SIGKILL)
        size = os.path.getsize(logPath)
        startTwistd(self, stateDir, logPath)
        port = await listeningPort(logPath, after=size)
        out, err, code = await jw(port, "status", "--json", after)
        self.assertEqual(code, 0, err)
        self.assertIn(b'"COMPLETED"', out)


class DaemonUmaskTests(TestCase):
    """
    An operator's round: twistd without -n sets its umask to 077 when it
    daemonizes, and jobs inherited it (files they made were 0600; under -n
    0644). A job starts with the umask of whoever started the server, with
    or without -n, however it is started.
    """

    #: Server options of this variant of the tests.
    serverOptions: tuple[str, ...] = ()

    async def test_jobsGetTheStartersUmask(self) -> None:
        stateDir = sharedPath(self)
        logPath = sharedPath(self)
        pidPath = sharedPath(self)
        command = twistdCommand(stateDir, *self.serverOptions)
        command[1:3] = [f"--pidfile={pidPath}", f"--logfile={logPath}"]
        subprocess.run(
            command,
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: os.umask(0o027),
        )
        port = await listeningPort(logPath)
        with open(pidPath) as f:
            daemon = int(f.read())
        cleanUpProcesses(self, daemon)
        self.addCleanup(os.kill, daemon, signal.SIGTERM)
        out, err, code = await jw(port, "exec", "-f", "--", "sh", "-c", "umask")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), b"0027")


class DaemonUmaskExecChainTests(DaemonUmaskTests):
    """The same through the exec chain (no launcher), without cgroups."""

    serverOptions = ("--launcher=off", "--cgroups=off")


class DaemonUmaskLauncherExecTests(DaemonUmaskTests):
    """The same with the launcher spawned for each job (no spawner)."""

    serverOptions = ("--launcher=exec",)


class DaemonUmaskUnsandboxedTests(DaemonUmaskTests):
    """The same for jobs that are not sandboxed (the gate shell alone)."""

    serverOptions = ("--allow-root-jobs",)


class CrashRecoveryWithoutCgroupsTests(CrashRecoveryTests):
    """
    The same without cgroups, and with jobs under a fixed account (not a
    dynamic uid, whose leftovers are swept at start-up anyway): what is left
    of a job after a crash is found and killed through its session alone.
    """

    serverOptions = ("--cgroups=off", "--run-as=nobody")


class DamagedStoreTests(TestCase):
    async def test_corruptStateRefused(self) -> None:
        """A state dir whose store is garbage: a one-line error, file untouched."""
        stateDir = sharedPath(self)
        os.makedirs(stateDir)
        storePath = os.path.join(stateDir, "jobs.sqlite3")
        garbage = b"garbage, not a database\n" * 100
        with open(storePath, "wb") as f:
            f.write(garbage)
        result = subprocess.run(
            twistdCommand(stateDir),
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"not a usable jobworker store", result.stderr)
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)
        with open(storePath, "rb") as f:
            self.assertEqual(f.read(), garbage)


class OutputCapTests(TestCase):
    async def test_outputPastCapDiscarded(self) -> None:
        """Past --max-log-bytes output is dropped, the job runs on, all is said."""
        server = LiveServer(self, "--max-log-bytes=1000")
        job = await server.createJob(
            "sh", "-c", "head -c 5000 /dev/zero; echo tail >&2; exit 0"
        )
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        self.assertEqual(ended["stdout_bytes"], 1000)
        self.assertTrue(ended["stdout_truncated"])
        self.assertEqual(ended["stdout_dropped"], 4000)
        self.assertFalse(ended["stderr_truncated"])
        response = await server.request("GET", f"/jobs/{job['id']}/logs")
        self.assertEqual(
            response.headers.getRawHeaders(b"x-output-truncated"), [b"true"]
        )
        self.assertEqual(response.headers.getRawHeaders(b"x-output-dropped"), [b"4000"])
        self.assertEqual(await treq.content(response), b"\x00" * 1000)
        stored = os.path.join(server.stateDir, "jobs", job["id"], "stdout")
        self.assertEqual(os.path.getsize(stored), 1000)


class DiskErrorTests(SynchronousTestCase):
    def test_diskFullCountsLostBytes(self) -> None:
        """Writing to a full device (/dev/full: ENOSPC) loses bytes, raises nothing."""
        spool = OutputSpool("/dev/full")
        self.addCleanup(spool.close)
        spool.write(b"x" * 100)
        spool.write(b"y" * 50)
        self.assertEqual(spool.lost, 150)
        self.assertEqual(spool.size, 0)
        self.flushLoggedErrors()

    def test_createdOnceItCanBe(self) -> None:
        """
        An output file that cannot be created at the job's first byte (a
        full disk, no descriptor left; here a file where its folder goes)
        is tried again a second later: what comes then is kept. It was
        lost for the job's whole life.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        blocker = os.path.join(base, "jobs")
        with open(blocker, "w"):
            pass
        now = [100.0]
        self.patch(spoolModule.time, "monotonic", lambda: now[0])
        path = os.path.join(blocker, "job", "stdout")
        spool = OutputSpool(path)
        self.addCleanup(spool.close)
        spool.write(b"early")
        os.unlink(blocker)
        spool.write(b"still")  # within the second: not tried again
        self.assertEqual((spool.lost, spool.size), (10, 0))
        now[0] += spoolModule.REOPEN_AFTER
        spool.write(b"late")
        self.assertEqual((spool.lost, spool.size), (10, 4))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"late")
        self.flushLoggedErrors()


class DeletionTests(TestCase):
    async def test_deleteRules(self) -> None:
        """Owner or Admin may delete an ended job; never a running one."""
        server = LiveServer(self)
        ended = await server.createJob("echo", "bye")
        await server.waitEnded(ended["id"])
        running = await server.createJob("sleep", "300")
        path = f"/jobs/{ended['id']}"
        for user, expected in (("rita", 403), ("bob", 403), (None, 401)):
            response = await server.request("DELETE", path, user)
            self.assertEqual(response.code, expected, user)
            await treq.content(response)
        code, body = await server.json("DELETE", f"/jobs/{running['id']}", "alice")
        self.assertEqual(code, 409)
        self.assertEqual(body["job"]["status"], "RUNNING")
        code, body = await server.json("DELETE", path, "alice")
        self.assertEqual((code, body), (200, {"deleted": ended["id"]}))
        self.assertFalse(
            os.path.exists(os.path.join(server.stateDir, "jobs", ended["id"]))
        )
        code, _ = await server.json("GET", path)
        self.assertEqual(code, 404)
        code, _ = await server.json("DELETE", path, "ada")
        self.assertEqual(code, 404)

    async def test_adminDeletesAnyEndedJob(self) -> None:
        """Admin deletes another user's ended job."""
        server = LiveServer(self)
        job = await server.createJob("true", user="bob")
        await server.waitEnded(job["id"])
        code, _ = await server.json("DELETE", f"/jobs/{job['id']}", "ada")
        self.assertEqual(code, 200)


class FakeReactor(Clock):
    """A clock that must never spawn: retention tests use jobs that cannot start."""

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no process expected")


class RetentionTests(SynchronousTestCase):
    def test_retentionRemovesOldEndedJobs(self) -> None:
        """--retain removes jobs (record and output) once they are old enough."""
        clock = FakeReactor()
        stateDir = self.mktemp()
        manager = localJobManager(
            clock, stateDir, grace=1.0, signalGroupOf=lambda p, s: False
        )
        self.addCleanup(manager.close)
        request = JobRequest("no-such-command-at-all", [], {}, None)
        old = manager.create(request, "alice")
        clock.advance(parseDuration("1d"))
        young = manager.create(request, "alice")
        self.assertEqual(old.status, JobStatus.FAILED)
        # The fake clock is the elapsed time too: time passes, no step.
        service = RetentionService(
            manager, parseDuration("2d"), clock, monotonic=clock.seconds
        )
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(parseDuration("1d") + 1)
        self.assertEqual({r.id for r in manager.page()[0]}, {young.id})
        self.assertFalse(os.path.exists(os.path.join(stateDir, "jobs", old.id)))
        clock.advance(parseDuration("1d"))
        self.assertEqual(manager.page()[0], [])

    def test_parseDurationAndSize(self) -> None:
        """Option values: durations and sizes with units."""
        self.assertEqual(parseDuration("7d"), 7 * 86400)
        self.assertEqual(parseDuration("90"), 90)
        self.assertEqual(parseDuration("1.5h"), 5400)
        self.assertRaises(ValueError, parseDuration, "soon")
        self.assertRaises(ValueError, parseDuration, "0s")
        self.assertEqual(parseSize("1G"), 1 << 30)
        self.assertEqual(parseSize("256MiB"), 256 << 20)
        self.assertEqual(parseSize("1000"), 1000)
        self.assertRaises(ValueError, parseSize, "lots")


class ListingTests(TestCase):
    async def test_pagingUnderConcurrentInserts(self) -> None:
        """A cursor walk sees each job once while new jobs keep arriving."""
        server = LiveServer(self)
        created = []
        for _ in range(12):
            created.append((await server.createJob("no-such-command-xyz"))["id"])
        seen: list[str] = []
        cursor = None
        while True:
            query = "/jobs?limit=5" + (f"&cursor={cursor}" if cursor else "")
            code, page = await server.json("GET", query)
            self.assertEqual(code, 200)
            seen += [j["id"] for j in page["jobs"]]
            await server.createJob("no-such-command-xyz")
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, list(reversed(created)))

    async def test_filtersAndBadParameters(self) -> None:
        """status/owner filter; bad limit, cursor, status, owner are 400."""
        server = LiveServer(self)
        mine = await server.createJob("true")
        theirs = await server.createJob("true", user="bob")
        await server.waitEnded(mine["id"])
        await server.waitEnded(theirs["id"])
        code, page = await server.json("GET", "/jobs?owner=bob&status=COMPLETED")
        self.assertEqual([j["id"] for j in page["jobs"]], [theirs["id"]])
        code, page = await server.json("GET", "/jobs?status=RUNNING")
        self.assertEqual(page["jobs"], [])
        for query in (
            "limit=0",
            "limit=1001",
            "limit=ten",
            "cursor=abc",
            "status=DONE",
            "owner=%00",
        ):
            code, body = await server.json("GET", f"/jobs?{query}")
            self.assertEqual(code, 400, query)
            self.assertIn("error", body)
