"""Unit tests for L{jobworker.jobs.manager}: the job table, on a fake reactor."""

from __future__ import annotations

import errno
import os
import pwd
import signal
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.errors import Conflict, NotFound, ServiceUnavailable, TooManyRequests
from jobworker.executors.local.cgroups import CgroupError
from jobworker.executors.local.executor import (
    DEFAULT_PATH,
    SHUTDOWN_GIVES_UP_AFTER,
    SPAWNER_DEADLINE,
    defaultEnvironment,
    localJobManager,
)
from jobworker.executors.local.sandbox import GATE_SCRIPT, POSIX_SHELL, SETSID
from jobworker.jobs import manager
from jobworker.jobs.admission import DISPATCH_RETRY, SHUTDOWN_RETRY_AFTER
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.selection import JobFilter
from jobworker.jobs.spool import OutputSpool, StoredOutput
from jobworker.jobs.stopping import StopRequest
from jobworker.jobs.validation import JobRequest

from .fakes import FakeProcessReactor, GroupKiller, SpawnedProcess, forbidRealKill

GRACE = 5.0
MARKER = "JOBWORKER_TEST_LEAK_MARKER"


def request(
    command: str = "true",
    *args: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> JobRequest:
    """A validated job request."""
    return JobRequest(command=command, args=list(args), env=env or {}, cwd=cwd)


class ManagerTestCase(SynchronousTestCase):
    """A JobManager on a fake process reactor and a fake group killer."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        os.environ[MARKER] = "must-not-leak"
        self.addCleanup(os.environ.pop, MARKER, None)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.stateDir = os.path.abspath(self.mktemp())
        self.manager = localJobManager(self.reactor, self.stateDir, GRACE, self.killer)
        self.addCleanup(self.manager.close)

    def managerWith(self, **options: Any) -> manager.JobManager:
        """Another manager on the same fakes, in a state dir of its own."""
        manager = localJobManager(
            self.reactor, os.path.abspath(self.mktemp()), GRACE, self.killer, **options
        )
        self.addCleanup(manager.close)
        return manager

    def spawnedFor(self, jobId: str) -> SpawnedProcess:
        """The fake process of a job."""
        pid = self.manager.record(jobId).pid
        [spawned] = [s for s in self.reactor.spawned if s.pid == pid]
        return spawned

    def exitGroup(self, jobId: str, code: int = 0) -> None:
        """The job's whole group exits with C{code}."""
        spawned = self.spawnedFor(jobId)
        self.killer.groupGone(spawned.pid)
        spawned.exit(code)

    def signalGroupOf(self, jobId: str, signum: int) -> None:
        """The job's whole group dies of C{signum}."""
        spawned = self.spawnedFor(jobId)
        self.killer.groupGone(spawned.pid)
        spawned.kill(signum)

    def makeFile(self, name: str, mode: int) -> str:
        """A file with C{mode} in a fresh directory; its absolute path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, mode)
        return path

    def assertFailedToStart(self, jobRequest: JobRequest, *fragments: str) -> None:
        """The request gives a FAILED job with an error, and no spawn."""
        record = self.manager.create(jobRequest, owner="alice")
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertIsNone(record.exit_code)
        self.assertIsNone(record.pid)
        self.assertIsNone(record.signal)
        assert record.error is not None
        self.assertTrue(record.error.startswith("cannot start: "), record.error)
        for fragment in fragments:
            self.assertIn(fragment, record.error)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.manager.record(record.id).toJSON(), record.toJSON())


#: Every job starts behind the gate, which the server opens once the store
#: has the job's record.
GATED = [POSIX_SHELL, "-c", GATE_SCRIPT, "jobworker-gate"]

#: The variables every job starts with.
IDENTITY_ENV = {"PATH", "LANG", "HOME", "USER", "LOGNAME", "SHELL"}


class CreateTests(ManagerTestCase):
    """create(): how a job's process is spawned."""

    def test_argvIsSetsidThenCommand(self) -> None:
        """argv is [gate, setsid, command, *args] with the command as given."""
        self.manager.create(request("sh", "-c", "echo hi", ""), owner="alice")
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.executable, POSIX_SHELL)
        self.assertEqual(spawned.args, [*GATED, SETSID, "sh", "-c", "echo hi", ""])

    def test_setsidIsAbsolute(self) -> None:
        """SETSID is an absolute path to an executable."""
        self.assertTrue(os.path.isabs(SETSID))
        self.assertTrue(os.access(SETSID, os.X_OK))

    def test_childFDs(self) -> None:
        """stdin is writable (and closed at once); stdout and stderr are read;
        fd 3 is the gate, opened once the record is stored."""
        self.manager.create(request(), owner="alice")
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.childFDs, {0: "w", 1: "r", 2: "r", 3: "w"})
        self.assertTrue(spawned.transport.stdinClosed)
        self.assertEqual(spawned.transport.gate, [b"go\n"])
        self.assertIn(3, spawned.transport.closedChildFDs)

    def test_noCwd(self) -> None:
        """
        Without cwd a job starts in its HOME (else /), never in the server's
        own working directory (issue 17, finding 9).
        """
        record = self.manager.create(request(), owner="alice")
        home = record.env["HOME"]
        expected = home if os.path.isdir(home) else "/"
        self.assertEqual(self.reactor.spawned[0].path, expected)
        self.assertNotEqual(self.reactor.spawned[0].path, os.getcwd())

    def test_envIsDefaultPlusRequest(self) -> None:
        """env is exactly PATH, LANG, and HOME, USER, LOGNAME, SHELL of the
        job's identity (here the server's user), plus the request's variables."""
        self.manager.create(request(env={"GREETING": "hi", "EMPTY": ""}), "alice")
        [spawned] = self.reactor.spawned
        entry = pwd.getpwuid(os.getuid())
        self.assertEqual(
            spawned.env,
            {
                "PATH": DEFAULT_PATH,
                "LANG": "C.UTF-8",
                "HOME": entry.pw_dir,
                "USER": entry.pw_name,
                "LOGNAME": entry.pw_name,
                "SHELL": entry.pw_shell,
                "GREETING": "hi",
                "EMPTY": "",
            },
        )

    def test_serverEnvironmentDoesNotLeak(self) -> None:
        """Nothing of the server's own environment reaches the job."""
        self.assertEqual(os.environ[MARKER], "must-not-leak")
        record = self.manager.create(request(), owner="alice")
        [spawned] = self.reactor.spawned
        assert spawned.env is not None
        self.assertNotIn(MARKER, spawned.env)
        self.assertEqual(set(spawned.env), IDENTITY_ENV)
        self.assertNotIn(MARKER, record.env)

    def test_requestEnvOverridesDefaults(self) -> None:
        """The request's env is laid over the defaults."""
        self.manager.create(
            request(env={"PATH": "/bin:/usr/bin", "LANG": "C"}), owner="alice"
        )
        env = self.reactor.spawned[0].env
        assert env is not None
        self.assertEqual(env["PATH"], "/bin:/usr/bin")
        self.assertEqual(env["LANG"], "C")

    def test_defaultEnvironment(self) -> None:
        """defaultEnvironment() is PATH, LANG and the identity's four only."""
        self.assertEqual(set(defaultEnvironment()), IDENTITY_ENV)

    def test_recordRunning(self) -> None:
        """A spawned job is RUNNING with its owner, pid and start time."""
        self.reactor.advance(2)
        record = self.manager.create(request("sh", "-c", "x"), owner="bob")
        [spawned] = self.reactor.spawned
        self.assertIs(record.status, JobStatus.RUNNING)
        self.assertEqual(record.owner, "bob")
        self.assertEqual(record.command, "sh")
        self.assertEqual(record.args, ["sh", "-c", "x"][1:])
        self.assertEqual(record.pid, spawned.pid)
        self.assertEqual(record.created_at, self.reactor.seconds())
        self.assertEqual(record.started_at, self.reactor.seconds())
        self.assertEqual(str(uuid.UUID(record.id)), record.id)

    def test_uniqueIds(self) -> None:
        """Every job gets its own id."""
        ids = {self.manager.create(request(), "alice").id for _ in range(20)}
        self.assertEqual(len(ids), 20)

    def test_spoolFiles(self) -> None:
        """Output goes to jobs/<id>/stdout and stderr, created at the first byte."""
        record = self.manager.create(request(), owner="alice")
        directory = os.path.join(self.stateDir, "jobs", record.id)
        self.assertEqual(
            self.manager.output(record.id, "stdout").path,
            os.path.join(directory, "stdout"),
        )
        self.assertEqual(
            self.manager.output(record.id, "stderr").path,
            os.path.join(directory, "stderr"),
        )
        # Files appear with the first byte: a silent job costs no file.
        self.assertFalse(os.path.exists(directory))
        self.manager.output(record.id, "stderr").write(b"oops")
        self.assertFalse(os.path.exists(os.path.join(directory, "stdout")))
        with open(os.path.join(directory, "stderr"), "rb") as f:
            self.assertEqual(f.read(), b"oops")

    def test_outputReachesSpools(self) -> None:
        """Bytes from the fake process end up in the job's spools."""
        record = self.manager.create(request(), owner="alice")
        spawned = self.reactor.spawned[0]
        spawned.output(b"hello\x00")
        spawned.errors(b"oops")
        self.assertEqual(self.manager.output(record.id, "stdout").size, 6)
        self.assertEqual(self.manager.output(record.id, "stderr").size, 4)
        self.assertEqual(self.manager.record(record.id).stdout_bytes, 6)
        self.exitGroup(record.id)
        self.assertEqual((record.stdout_bytes, record.stderr_bytes), (6, 4))

    def test_cwdPassed(self) -> None:
        """A cwd is passed as the spawn path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.manager.create(request(cwd=directory), owner="alice")
        self.assertEqual(self.reactor.spawned[0].path, directory)

    def test_relativeCommandInCwd(self) -> None:
        """A ./command is checked in cwd and passed on unchanged."""
        script = self.makeFile("run.sh", 0o755)
        directory = os.path.dirname(script)
        record = self.manager.create(request("./run.sh", cwd=directory), "alice")
        self.assertIs(record.status, JobStatus.RUNNING)
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.args, [*GATED, SETSID, "./run.sh"])
        self.assertEqual(spawned.path, directory)

    def test_absoluteCommand(self) -> None:
        """An absolute command that is executable is spawned as given."""
        script = self.makeFile("run.sh", 0o700)
        self.manager.create(request(script), owner="alice")
        self.assertEqual(self.reactor.spawned[0].args, [*GATED, SETSID, script])

    def test_completed(self) -> None:
        """A job whose process exits 0 is COMPLETED."""
        record = self.manager.create(request(), owner="alice")
        self.exitGroup(record.id, 0)
        self.assertIs(record.status, JobStatus.COMPLETED)
        self.assertEqual(record.exit_code, 0)


class CreateFailureTests(ManagerTestCase):
    """Commands that cannot start give FAILED jobs, never a spawn."""

    def test_notFoundInPath(self) -> None:
        """A command not in PATH fails, naming the command."""
        self.assertFailedToStart(
            request("jobworker-no-such-command-xyz"),
            "'jobworker-no-such-command-xyz'",
            "not found in PATH",
        )

    def test_notFoundInRequestPath(self) -> None:
        """The job's PATH (not the server's) is searched."""
        self.assertFailedToStart(
            request("true", env={"PATH": os.path.abspath(self.mktemp())}),
            "not found in PATH",
        )

    def test_noSuchFile(self) -> None:
        """A path to nothing fails."""
        missing = os.path.join(os.path.abspath(self.mktemp()), "nothing")
        self.assertFailedToStart(request(missing), "no such file")

    def test_notExecutable(self) -> None:
        """A file without execute permission fails."""
        path = self.makeFile("data.txt", 0o644)
        self.assertFailedToStart(request(path), "is not executable")

    def test_notExecutableInPath(self) -> None:
        """A non-executable file in PATH does not count as found."""
        path = self.makeFile("tool", 0o644)
        self.assertFailedToStart(
            request("tool", env={"PATH": os.path.dirname(path)}), "not found in PATH"
        )

    def test_directory(self) -> None:
        """A directory as command fails."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.assertFailedToStart(request(directory), "is a directory")

    def test_badCwd(self) -> None:
        """A cwd that does not exist fails, naming it."""
        missing = os.path.abspath(self.mktemp())
        self.assertFailedToStart(
            request("true", cwd=missing), "working directory", repr(missing)
        )

    def test_cwdIsFile(self) -> None:
        """A cwd that is a file fails."""
        path = self.makeFile("plain", 0o644)
        self.assertFailedToStart(request("true", cwd=path), "working directory")

    def test_spawnOSError(self) -> None:
        """An OSError of the job's own from spawnProcess (its arguments too
        long) gives a FAILED job with its reason."""
        self.reactor.spawnError = OSError(errno.E2BIG, os.strerror(errno.E2BIG))
        record = self.manager.create(request(), owner="alice")
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertIsNone(record.exit_code)
        self.assertEqual(record.error, f"cannot start: {os.strerror(errno.E2BIG)}")
        self.assertEqual(self.reactor.spawned, [])

    def test_serverCannotSpawnNow(self) -> None:
        """
        The server itself cannot start a process now (no descriptor left,
        no process slot, no memory, the spawner silent): a 503 to try again,
        and nothing stored. It was a FAILED job, a record of the server's
        trouble kept as the user's job's outcome.
        """
        for number in (errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            self.reactor.spawnError = OSError(number, os.strerror(number))
            with self.assertRaises(ServiceUnavailable) as caught:
                self.manager.create(request(), owner="alice")
            self.assertIn(os.strerror(number), caught.exception.message)
        self.assertEqual(self.manager.page()[0], [])
        self.assertEqual(self.reactor.spawned, [])
        # Nothing of those attempts is left in the output folder.
        jobsDir = self.manager._executor._jobsDir  # type: ignore[attr-defined]
        self.assertEqual(os.listdir(jobsDir) if os.path.isdir(jobsDir) else [], [])
        record = self.manager.create(request(), owner="alice")
        self.assertIs(record.status, JobStatus.RUNNING)

    def test_noDescriptorForACgroupIsA503(self) -> None:
        """
        A job's cgroup cannot be made for the server's own reason (EMFILE
        opening its files): a 503 and nothing stored; for the job's own
        (EACCES, say) a FAILED job as before.
        """

        class Refusing:
            version, supported = 1, frozenset({"memory"})

            def __init__(self) -> None:
                self.errno = errno.EMFILE

            def create(self, jobId: str, limits: Any, gid: int = 0) -> Any:
                raise CgroupError(f"cannot open {jobId}: refused", self.errno)

            def find(self, jobId: str) -> None:
                return None

        cgroups = Refusing()
        manager = self.managerWith(cgroups=cgroups)  # type: ignore[arg-type]
        self.assertRaises(ServiceUnavailable, manager.create, request(), "alice")
        self.assertEqual(manager.page()[0], [])
        cgroups.errno = errno.EACCES
        record = manager.create(request(), "alice")
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertEqual(self.reactor.spawned, [])

    def test_aBusyServerTakesNoCreationToken(self) -> None:
        """A 503 of the server's (no process slot) does not count toward the
        user's --create-rate: only jobs it made do."""
        manager = self.managerWith(policy=JobPolicy(createRate=1.0))
        for _ in range(5):
            self.reactor.spawnError = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            self.assertRaises(ServiceUnavailable, manager.create, request(), "alice")
        for _ in range(2):  # the burst, whole
            self.assertIs(manager.create(request(), "alice").status, JobStatus.RUNNING)
        self.assertRaises(TooManyRequests, manager.create, request(), "alice")

    def test_queuedJobWaitsOutABusyServer(self) -> None:
        """
        A queued job the server cannot start when its turn comes (no
        process slot) stays queued, stored as queued, and starts at the next
        try. It was FAILED for good.
        """
        manager = self.managerWith(policy=JobPolicy(maxRunning=1))
        first = manager.create(request("sleep", "9"), "alice")
        queued = manager.create(request("true"), "alice")
        self.assertIs(queued.status, JobStatus.PENDING)
        [spawned] = self.reactor.spawned
        self.reactor.spawnError = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertIs(manager.record(queued.id).status, JobStatus.PENDING)
        stored = manager._store.get(queued.id)
        self.assertEqual((stored.status, stored.queued), (JobStatus.PENDING, True))
        self.assertEqual((stored.run_as, stored.env), (queued.run_as, queued.env))
        self.reactor.advance(DISPATCH_RETRY)
        self.assertIs(manager.record(queued.id).status, JobStatus.RUNNING)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_failedJobIsListedAndEnded(self) -> None:
        """A job that could not start is in the table, ended and cleaned up."""
        record = self.manager.create(request("jobworker-no-such-cmd"), "alice")
        records, following = self.manager.page()
        self.assertEqual([r.id for r in records], [record.id])
        self.assertIsNone(following)
        self.assertIs(records[0].status, JobStatus.FAILED)
        output = self.manager.output(record.id, "stdout")
        self.assertTrue(output.closed)
        self.assertEqual(output.size, 0)


class LookupTests(ManagerTestCase):
    """page(), record() and output()."""

    def test_pageNewestFirst(self) -> None:
        """page() lists every job, newest first."""
        ids = []
        for _ in range(4):
            ids.append(self.manager.create(request(), owner="alice").id)
            self.reactor.advance(1)
        ids.append(self.manager.create(request("jobworker-no-such-cmd"), "bob").id)
        records, following = self.manager.page()
        self.assertEqual([r.id for r in records], list(reversed(ids)))
        self.assertIsNone(following)

    def test_pageEmpty(self) -> None:
        """No jobs, empty page."""
        self.assertEqual(self.manager.page(), ([], None))

    def test_pagesChain(self) -> None:
        """Following the cursor walks every job once, newest first."""
        ids = [self.manager.create(request(), owner="alice").id for _ in range(5)]
        seen: list[str] = []
        before = None
        while True:
            records, before = self.manager.page(limit=2, before=before)
            seen.extend(r.id for r in records)
            if before is None:
                break
        self.assertEqual(seen, list(reversed(ids)))

    def test_pageFilters(self) -> None:
        """page() filters by status and owner."""
        running = self.manager.create(request(), owner="alice")
        failed = self.manager.create(request("jobworker-no-such-cmd"), "bob")
        byStatus, _ = self.manager.page(JobFilter(status=JobStatus.FAILED))
        self.assertEqual([r.id for r in byStatus], [failed.id])
        byOwner, _ = self.manager.page(JobFilter(owner="alice"))
        self.assertEqual([r.id for r in byOwner], [running.id])

    def test_pageRunningUpToDate(self) -> None:
        """A running job in a page shows its current output counts."""
        record = self.manager.create(request(), owner="alice")
        self.spawnedFor(record.id).output(b"abc")
        [listed], _ = self.manager.page()
        self.assertEqual(listed.stdout_bytes, 3)
        self.assertIs(listed.status, JobStatus.RUNNING)

    def test_recordUnknown(self) -> None:
        """record() of an unknown id raises NotFound."""
        self.manager.create(request(), owner="alice")
        error = self.assertRaises(NotFound, self.manager.record, str(uuid.uuid4()))
        self.assertEqual(error.code, 404)

    def test_recordKnown(self) -> None:
        """record() finds a running job by id."""
        record = self.manager.create(request(), owner="alice")
        self.assertEqual(self.manager.record(record.id).toJSON(), record.toJSON())

    def test_recordAfterEnd(self) -> None:
        """An ended job's record is still found, with its final state."""
        record = self.manager.create(request(), owner="alice")
        self.spawnedFor(record.id).output(b"hello")
        self.exitGroup(record.id, 2)
        found = self.manager.record(record.id)
        self.assertIs(found.status, JobStatus.FAILED)
        self.assertEqual(found.exit_code, 2)
        self.assertEqual(found.stdout_bytes, 5)
        self.assertEqual(found.toJSON(), record.toJSON())

    def test_endedRecordsCachedAndForgotten(self) -> None:
        """
        An ended record is read from the store once, then from memory (a
        bounded cache); deleting the job forgets it there too.
        """
        self.patch(manager, "ENDED_RECORDS_CACHED", 2)
        ids = []
        for _ in range(3):
            record = self.manager.create(request(), owner="alice")
            self.exitGroup(record.id, 0)
            ids.append(record.id)
        reads: list[str] = []
        realGet = self.manager._store.get

        def countingGet(jobId: str) -> Any:
            reads.append(jobId)
            return realGet(jobId)

        self.patch(self.manager._store, "get", countingGet)
        for jobId in ids + ids[1:]:
            self.assertIs(self.manager.record(jobId).status, JobStatus.COMPLETED)
        # The third read evicted the first; the last two were in memory.
        self.assertEqual(reads, ids)
        self.manager.delete(ids[2])
        self.assertRaises(NotFound, self.manager.record, ids[2])

    def storeEnded(self, args: list[str]) -> str:
        """A COMPLETED job with these args, in the store only; its id."""
        now = self.reactor.seconds()
        record = JobRecord(
            id=str(uuid.uuid4()),
            command="true",
            args=args,
            owner="alice",
            created_at=now,
            status=JobStatus.COMPLETED,
            exit_code=0,
            started_at=now,
            ended_at=now,
        )
        self.manager._store.insert(record)
        return record.id

    def test_endedRecordsBoundedInBytes(self) -> None:
        """
        The ended-records cache is bounded in bytes too (an estimate from
        each record's strings): reading 700 ended jobs with 30 KB of args
        each (21 MB) keeps it under 16 MiB, the oldest read out first; a
        small record is still kept, one past the cap on one record never
        (nor does it push others out), and a deleted one gives its bytes back.
        """
        ids = [self.storeEnded(["x" * 30_000]) for _ in range(700)]
        for jobId in ids:
            self.manager.record(jobId)
        cache = self.manager._endedRecords
        held = sum(len(r.command) + sum(map(len, r.args)) for r in cache.values())
        self.assertLess(held, 16 << 20)
        self.assertGreater(len(cache), 200)
        self.assertEqual(list(cache), ids[-len(cache) :])
        estimate = self.manager._endedBytes
        self.assertLessEqual(estimate, manager.ENDED_RECORDS_BYTES)
        self.assertEqual(estimate, sum(manager.recordBytes(r) for r in cache.values()))
        small = self.storeEnded(["y"])
        self.manager.record(small)
        self.assertEqual(list(cache)[-1], small)
        huge = self.storeEnded(["z" * manager.ENDED_RECORD_MAX_BYTES])
        before = list(cache)
        self.manager.record(huge)
        self.assertEqual(list(cache), before)
        self.manager.delete(small)
        self.assertNotIn(small, cache)
        self.assertEqual(
            self.manager._endedBytes,
            sum(manager.recordBytes(r) for r in cache.values()),
        )

    def test_recordBytesNotUnderNonAscii(self) -> None:
        """
        The estimate is not under what a record's strings take, whatever
        their characters: it counted 2 bytes a character, and an astral one
        takes 4 in a str and 12 in the record's JSON (7 times more: the
        16 MiB bound held 114 MB), a control character 6 in the JSON.
        """
        import json
        import sys

        for text in ("x" * 8000, "\u00e9" * 8000, "\U0001f600" * 8000, "\x01" * 8000):
            record = self.manager.record(self.storeEnded([text]))
            real = sys.getsizeof(text) + len(json.dumps(text))
            self.assertGreaterEqual(manager.recordBytes(record), real, text[:1])

    def test_outputUnknownJob(self) -> None:
        """output() of an unknown job raises NotFound."""
        self.assertRaises(NotFound, self.manager.output, str(uuid.uuid4()), "stdout")

    def test_outputLiveStreams(self) -> None:
        """output() of a running job gives its live spools, by stream."""
        record = self.manager.create(request(), owner="alice")
        stdout = self.manager.output(record.id, "stdout")
        stderr = self.manager.output(record.id, "stderr")
        self.assertIsInstance(stdout, OutputSpool)
        self.assertIsInstance(stderr, OutputSpool)
        self.assertTrue(stdout.path.endswith("stdout"))
        self.assertTrue(stderr.path.endswith("stderr"))
        self.assertFalse(stdout.closed)

    def test_outputStoredAfterEnd(self) -> None:
        """output() of an ended job is the closed file with its final size."""
        record = self.manager.create(request(), owner="alice")
        self.spawnedFor(record.id).errors(b"boom\n")
        self.exitGroup(record.id, 1)
        stderr = self.manager.output(record.id, "stderr")
        self.assertIsInstance(stderr, StoredOutput)
        self.assertTrue(stderr.closed)
        self.assertEqual(stderr.size, 5)
        with open(stderr.path, "rb") as f:
            self.assertEqual(f.read(), b"boom\n")


class DeleteTests(ManagerTestCase):
    """delete(): ended jobs only."""

    def test_deleteEnded(self) -> None:
        """An ended job's record and output are removed."""
        record = self.manager.create(request(), owner="alice")
        self.exitGroup(record.id)
        self.manager.delete(record.id)
        self.assertRaises(NotFound, self.manager.record, record.id)
        self.assertFalse(os.path.exists(os.path.join(self.stateDir, "jobs", record.id)))
        self.assertEqual(self.manager.page(), ([], None))

    def test_deleteRightAfterStop(self) -> None:
        """A job stopped by SIGTERM whose group is gone can be deleted at once."""
        record = self.manager.create(request(), owner="alice")
        d = self.manager.stop(record.id, by="alice")
        self.signalGroupOf(record.id, signal.SIGTERM)
        self.successResultOf(d)
        self.manager.delete(record.id)
        self.assertRaises(NotFound, self.manager.record, record.id)

    def test_deleteRunningConflict(self) -> None:
        """A running job cannot be deleted."""
        record = self.manager.create(request(), owner="alice")
        error = self.assertRaises(Conflict, self.manager.delete, record.id)
        self.assertEqual(error.body()["job"]["id"], record.id)
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)

    def test_deleteUnknown(self) -> None:
        """Deleting an unknown job raises NotFound."""
        self.assertRaises(NotFound, self.manager.delete, str(uuid.uuid4()))


class StopTests(ManagerTestCase):
    """stop(): signals the group; refuses ended jobs."""

    def test_stopRunning(self) -> None:
        """stop() sends SIGTERM to the group and fires when the job ended."""
        record = self.manager.create(request(), owner="alice")
        d = self.manager.stop(record.id, by="ada")
        self.assertEqual(self.killer.calls, [(record.pid, signal.SIGTERM)])
        self.assertNoResult(d)
        self.signalGroupOf(record.id, signal.SIGTERM)
        stopped = self.successResultOf(d)
        self.assertIs(stopped, record)
        self.assertIs(stopped.status, JobStatus.STOPPED)
        self.assertEqual(stopped.stopped_by, "ada")

    def test_stopKillsAfterGrace(self) -> None:
        """A job ignoring SIGTERM gets SIGKILL after the grace period."""
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice")
        self.reactor.advance(GRACE)
        self.assertEqual(
            self.killer.signalsTo(record.pid or 0), [signal.SIGTERM, signal.SIGKILL]
        )

    def test_stopUnknown(self) -> None:
        """stop() of an unknown job raises NotFound."""
        self.assertRaises(NotFound, self.manager.stop, str(uuid.uuid4()), "ada")

    def test_stopEndedConflict(self) -> None:
        """stop() of an ended job raises Conflict with the job in the body."""
        record = self.manager.create(request(), owner="alice")
        self.exitGroup(record.id, 1)
        calls = list(self.killer.calls)
        error = self.assertRaises(Conflict, self.manager.stop, record.id, "ada")
        self.assertEqual(error.code, 409)
        body = error.body()
        self.assertIn("FAILED", body["error"])
        self.assertEqual(body["job"], record.toJSON())
        self.assertEqual(self.killer.calls, calls)
        self.assertIsNone(record.stopped_by)

    def test_stopFailedToStartConflict(self) -> None:
        """A job that never started cannot be stopped either."""
        record = self.manager.create(request("jobworker-no-such-cmd"), "alice")
        error = self.assertRaises(Conflict, self.manager.stop, record.id, "ada")
        self.assertEqual(error.body()["job"]["status"], "FAILED")

    def test_stopStoppedConflict(self) -> None:
        """A stopped job cannot be stopped again."""
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice")
        self.signalGroupOf(record.id, signal.SIGTERM)
        error = self.assertRaises(Conflict, self.manager.stop, record.id, "ada")
        self.assertEqual(error.body()["job"]["stopped_by"], "alice")


class ShutdownTests(ManagerTestCase):
    """shutdown(): refuse new jobs, stop running ones, wait for them."""

    def test_noJobs(self) -> None:
        """With no jobs, shutdown fires at once."""
        self.successResultOf(self.manager.shutdown())

    def test_onlyEndedJobs(self) -> None:
        """With only ended (and cleaned up) jobs, shutdown fires at once."""
        record = self.manager.create(request(), owner="alice")
        self.exitGroup(record.id)
        self.manager.create(request("jobworker-no-such-cmd"), owner="alice")
        self.successResultOf(self.manager.shutdown())
        self.assertEqual(self.killer.signalsTo(record.pid or 0), [signal.SIGTERM])

    def test_stopsRunningJobs(self) -> None:
        """Every running job gets SIGTERM, stopped by 'server shutdown'."""
        first = self.manager.create(request(), owner="alice")
        second = self.manager.create(request(), owner="bob")
        ended = self.manager.create(request(), owner="bob")
        self.exitGroup(ended.id)
        self.killer.calls.clear()
        self.manager.shutdown()
        self.assertEqual(
            sorted(self.killer.calls),
            sorted([(first.pid, signal.SIGTERM), (second.pid, signal.SIGTERM)]),
        )
        self.assertEqual(first.stopped_by, "server shutdown")
        self.assertEqual(second.stopped_by, "server shutdown")
        self.assertIsNone(ended.stopped_by)
        self.assertIs(ended.status, JobStatus.COMPLETED)

    def test_waitsUntilEveryJobEnded(self) -> None:
        """The Deferred fires only once every job has ended."""
        first = self.manager.create(request(), owner="alice")
        second = self.manager.create(request(), owner="bob")
        d = self.manager.shutdown()
        self.assertNoResult(d)
        self.reactor.advance(GRACE * 3)
        self.assertNoResult(d)
        self.signalGroupOf(first.id, signal.SIGKILL)
        self.assertNoResult(d)
        self.signalGroupOf(second.id, signal.SIGKILL)
        self.reactor.advance(GRACE)
        self.assertIsNone(self.successResultOf(d))
        self.assertIs(first.status, JobStatus.STOPPED)
        self.assertIs(second.status, JobStatus.STOPPED)

    def test_firesWhenJobsExitOnTerm(self) -> None:
        """Jobs that exit on SIGTERM (group gone) let shutdown finish at once."""
        first = self.manager.create(request(), owner="alice")
        second = self.manager.create(request(), owner="bob")
        d = self.manager.shutdown()
        self.signalGroupOf(first.id, signal.SIGTERM)
        self.assertNoResult(d)
        self.signalGroupOf(second.id, signal.SIGTERM)
        self.assertIsNone(self.successResultOf(d))

    def test_waitsForLeftoverGroup(self) -> None:
        """An ended job whose group still has members is waited for."""
        record = self.manager.create(request(), owner="alice")
        self.spawnedFor(record.id).exit(0)
        self.assertIs(record.status, JobStatus.COMPLETED)
        d = self.manager.shutdown()
        self.assertNoResult(d)
        self.reactor.advance(GRACE)
        self.successResultOf(d)
        self.assertEqual(
            self.killer.signalsTo(record.pid or 0), [signal.SIGTERM, signal.SIGKILL]
        )

    def test_givesUpOnWhatNoKillEnds(self) -> None:
        """
        A job whose processes no KILL ends (in D state under an I/O limit)
        held the shutdown for ever, until the service manager killed the
        server (fault round 28b): it is waited for the grace, the spawner's
        deadline and SHUTDOWN_GIVES_UP_AFTER seconds, then said and left
        (the next start kills what is left); no timer is left behind.
        """
        stuck = self.manager.create(request(), owner="alice")
        ended = self.manager.create(request(), owner="bob")
        self.spawnedFor(ended.id).exit(0)  # leftovers, which will not go
        d = self.manager.shutdown()
        self.reactor.advance(GRACE + SPAWNER_DEADLINE)
        self.assertEqual(self.killer.signalsTo(stuck.pid or 0)[-1], signal.SIGKILL)
        self.reactor.advance(SHUTDOWN_GIVES_UP_AFTER - 1)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_keepsUserStopper(self) -> None:
        """A job already being stopped by a user keeps that stopper."""
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice")
        self.manager.shutdown()
        self.assertEqual(record.stopped_by, "alice")
        self.assertEqual(self.killer.signalsTo(record.pid or 0), [signal.SIGTERM])

    def test_shutdownKeepsItsOwnGrace(self) -> None:
        """
        A job a user stopped with a long grace (an hour), ignoring TERM, is
        killed the server's grace after the shutdown began: the shutdown
        waited out the user's hour (and systemd killed the server first).
        """
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice", how=StopRequest(grace=3600.0))
        self.reactor.advance(GRACE / 2)
        self.manager.shutdown()
        self.reactor.advance(GRACE)
        self.assertEqual(
            self.killer.signalsTo(record.pid or 0), [signal.SIGTERM, signal.SIGKILL]
        )
        self.assertEqual(record.stopped_by, "alice")

    def test_shutdownKeepsItsGraceForLeftovers(self) -> None:
        """
        The same for a job whose main process ended at the user's TERM
        while what it left ignores it: its record has ended, its group has
        not, and the shutdown waited out the user's hour for it.
        """
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice", how=StopRequest(grace=3600.0))
        self.spawnedFor(record.id).kill(signal.SIGTERM)  # the group lives on
        self.assertTrue(record.status.ended)
        d = self.manager.shutdown()
        self.reactor.advance(GRACE - 0.1)
        self.assertNotIn(signal.SIGKILL, self.killer.signalsTo(record.pid or 0))
        self.reactor.advance(0.1)
        self.assertEqual(self.killer.signalsTo(record.pid or 0)[-1], signal.SIGKILL)
        self.killer.groupGone(record.pid or 0)
        self.reactor.advance(GRACE)
        self.assertIsNone(self.successResultOf(d))

    def test_shutdownLeavesAShorterGrace(self) -> None:
        """A user's grace shorter than the server's stands."""
        record = self.manager.create(request(), owner="alice")
        self.manager.stop(record.id, by="alice", how=StopRequest(grace=GRACE / 4))
        self.manager.shutdown()
        self.reactor.advance(GRACE / 4)
        self.assertEqual(
            self.killer.signalsTo(record.pid or 0), [signal.SIGTERM, signal.SIGKILL]
        )

    def test_createAfterShutdown(self) -> None:
        """
        create() after shutdown raises ServiceUnavailable (a 503 with
        Retry-After: a restart may follow; it was a 409, a conflict with no
        word of when to try again) and spawns nothing.
        """
        self.manager.shutdown()
        error = self.assertRaises(
            ServiceUnavailable, self.manager.create, request(), owner="alice"
        )
        self.assertEqual(error.code, 503)
        self.assertEqual(error.retryAfter, SHUTDOWN_RETRY_AFTER)
        self.assertIn("shutting down", error.message)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.manager.page(), ([], None))


class StoreFailureTests(ManagerTestCase):
    def test_unrecordableJobIsKilledAnd503(self) -> None:
        """If the store cannot take a new job, its process is killed: a 503."""
        from jobworker.errors import ServiceUnavailable
        from jobworker.jobs.store import StoreError

        def refuse(record: object) -> None:
            raise StoreError("cannot record job: database or disk is full")

        self.patch(self.manager._store, "insert", refuse)
        self.assertRaises(ServiceUnavailable, self.manager.create, request(), "alice")
        [spawned] = self.reactor.spawned
        self.assertIn(signal.SIGKILL, spawned.transport.signals)
        self.assertEqual(self.manager.page()[0], [])
