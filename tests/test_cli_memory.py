"""
Unit tests of the C{jw} command-line client in memory: L{cli.run} with
in-memory L{Streams}, its client over treq's C{StubTreq} of the real API, on a
real L{JobManager} over the fake process reactor. No socket, no process, no
TLS: test_cli keeps a few subprocess smoke tests for those.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import signal
import uuid
from dataclasses import dataclass, field
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.authenticator import Authenticator, _checkPassword, makePortal
from jobworker.auth.tokens import TokenSigner
from jobworker.auth.users import UserDatabase
from jobworker.client import cli
from jobworker.client.http import JobworkerClient
from jobworker.executors.local.executor import localJobManager
from jobworker.server.api import JobsAPI
from jobworker.tls import TrustRootPolicy

from .fakes import FakeProcessReactor, GroupKiller, SpawnedProcess, forbidRealKill
from .support import CA, PASSWORDS, JWAssertions, basic

#: Where the in-memory server "is" (the development CA is trusted for it).
SERVER = "https://localhost:8443"
GRACE = 5.0

#: The development users, parsed once (parsing hashes a dummy password).
DEVELOPMENT_USERS = UserDatabase.development()


@functools.cache
def _cachedCheck(password: bytes, hashed: bytes) -> bool:
    # bcrypt is a pure function: memoised, a few hundred cost-10 checks do
    # not dominate the run (test_auth covers the checker itself).
    return _checkPassword(password, hashed)


def syncRunner(f: Any, *args: Any) -> Deferred[Any]:
    """A synchronous runInThread (memoised for the bcrypt check)."""
    if f is _checkPassword:
        return maybeDeferred(_cachedCheck, *args)
    return maybeDeferred(f, *args)


#: Every key of the API's job object that the brief names.
JOB_KEYS = {
    "id",
    "command",
    "args",
    "owner",
    "status",
    "pid",
    "exit_code",
    "signal",
    "error",
    "created_at",
    "started_at",
    "ended_at",
    "stopped_by",
}

UUID_LINE = re.compile(
    rb"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n\Z"
)


@dataclass
class Run:
    """
    One C{jw} command line under way: its output so far and the Deferred of
    its exit status. As in a real process, the job's stderr and C{jw}'s own
    messages share one stderr, in order.
    """

    out: io.BytesIO = field(default_factory=io.BytesIO)
    err: io.BytesIO = field(default_factory=io.BytesIO)
    abandoned: list[bool] = field(default_factory=list)
    inp: io.BytesIO = field(default_factory=io.BytesIO)
    done: Deferred[int] | None = None

    def __post_init__(self) -> None:
        messages = io.TextIOWrapper(self.err, encoding="utf-8", write_through=True)
        self.streams = cli.Streams(
            self.out,
            self.err,
            messages,
            lambda: self.abandoned.append(True),
            self.inp,
        )


class RefusingHTTP:
    """An HTTP client whose every connection is refused (no server listens)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError())


class MemoryCLITestCase(JWAssertions, SynchronousTestCase):
    """C{jw} against the API in memory, on a fake process reactor."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.manager = localJobManager(self.reactor, self.mktemp(), GRACE, self.killer)
        self.addCleanup(self.manager.close)
        authenticator = Authenticator(
            makePortal(DEVELOPMENT_USERS, syncRunner),
            tokens=TokenSigner(b"k" * 32, self.reactor, 3600.0),
        )
        self.api = JobsAPI(self.manager, authenticator, self.reactor)
        self.http = StubTreq(self.api.resource())
        #: XDG_CONFIG_HOME: no config file, no saved login.
        self.configHome = os.path.abspath(self.mktemp())

    # -- running jw ------------------------------------------------------------

    def connect(
        self,
        reactor: Any,
        server: str,
        caPath: str,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        certPath: str | None = None,
        keyPath: str | None = None,
    ) -> JobworkerClient:
        """L{JobworkerClient.connect}, but over C{StubTreq}: no TLS, no socket."""
        TrustRootPolicy(caPath, certPath, keyPath)  # the files are checked alike
        return JobworkerClient(
            self.http,  # type: ignore[arg-type]
            server,
            reactor=reactor,
            user=user,
            password=password,
            token=token,
        )

    def environ(self, user: str = "alice", **extra: str) -> dict[str, str]:
        """The environment of a C{jw} run as C{user} (as support.jwEnvironment)."""
        env = {
            "XDG_CONFIG_HOME": self.configHome,
            "JW_SERVER": SERVER,
            "JW_CA": CA,
            "JW_USER": user,
            "JW_PASSWORD": PASSWORDS.get(user, ""),
        }
        env.update(extra)
        return env

    def start(
        self, *argv: str, user: str = "alice", connect: Any = None, **extra: str
    ) -> Run:
        """Start C{jw ARGV...}; it runs as far as it can without the test."""
        run = Run()
        run.done = ensureDeferred(
            cli.run(
                self.reactor,
                list(argv),
                self.environ(user, **extra),
                run.streams,
                connect or self.connect,
            )
        )
        self.flush()
        return run

    def flush(self) -> None:
        """
        Deliver every byte in flight between the client and the server (the
        output spool wakes its readers once per reactor turn: run that turn).
        """
        for _ in range(5):
            self.http.flush()
            self.reactor.advance(0)

    def finish(self, run: Run) -> tuple[bytes, bytes, int]:
        """(stdout, stderr, exit status) of a run that has ended."""
        self.flush()
        assert run.done is not None
        code = self.successResultOf(run.done)
        return run.out.getvalue(), run.err.getvalue(), code

    def jw(
        self, *argv: str, user: str = "alice", connect: Any = None, **extra: str
    ) -> tuple[bytes, bytes, int]:
        """Run C{jw ARGV...} to its end: (stdout, stderr, exit status)."""
        return self.finish(self.start(*argv, user=user, connect=connect, **extra))

    # -- the server side -------------------------------------------------------

    def apiJSON(self, method: str, path: str, user: str = "ada") -> tuple[int, Any]:
        """A request straight to the API: (status, decoded body)."""
        headers = basic(user)
        headers[b"content-type"] = [b"application/json"]
        response = self.successResultOf(
            self.http.request(method, SERVER + path, headers=headers)
        )
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def listedIds(self) -> list[str]:
        """The ids the API lists (to check that nothing was created)."""
        code, body = self.apiJSON("GET", "/jobs")
        self.assertEqual(code, 200)
        return [job["id"] for job in body["jobs"]]

    def process(self, jobId: str) -> SpawnedProcess:
        """The fake process of a job."""
        code, job = self.apiJSON("GET", f"/jobs/{jobId}")
        self.assertEqual(code, 200, job)
        [spawned] = [s for s in self.reactor.spawned if s.pid == job["pid"]]
        return spawned

    def endJob(self, jobId: str, code: int = 0, signum: int | None = None) -> None:
        """The job's whole group ends (exit C{code}, or killed by C{signum})."""
        spawned = self.process(jobId)
        self.killer.groupGone(spawned.pid)
        if signum is None:
            spawned.exit(code)
        else:
            spawned.kill(signum)
        self.flush()

    def execId(self, *command: str) -> str:
        """C{jw exec -- COMMAND...}: return the new job's id."""
        out = self.assertSucceeded(self.jw("exec", "--", *command))
        self.assertRegex(out, UUID_LINE)
        return out.decode("ascii").strip()

    def followed(self, *command: str) -> tuple[Run, SpawnedProcess]:
        """C{jw exec --follow -- COMMAND...} under way, and its job's process."""
        run = self.start("exec", "--follow", "--", *command)
        spawned = self.reactor.spawned[-1]
        assert run.done is not None
        self.assertNoResult(run.done)
        return run, spawned

    def started(self, err: bytes) -> bytes:
        """
        C{err} without its first line, which says the job started
        (C{jw exec --follow} names the job before anything else).
        """
        first, _, rest = err.partition(b"\n")
        self.assertRegex(first, rb"\Ajw: job [0-9a-f-]{36} started\Z")
        return rest

    def fields(self, out: bytes) -> list[str]:
        """C{jw status}'s aligned lines as C{key: value}."""
        return [
            re.sub(r":\s+", ": ", line, count=1)
            for line in out.decode("utf-8").splitlines()
        ]

    def statusJSON(self, jobId: str, user: str = "alice") -> dict[str, Any]:
        """C{jw status ID --json}, decoded."""
        out = self.assertSucceeded(self.jw("status", jobId, "--json", user=user))
        job: dict[str, Any] = json.loads(out)
        return job


class ExecTests(MemoryCLITestCase):
    """C{jw exec}, with and without C{--follow}."""

    def test_execPrintsOnlyTheJobId(self) -> None:
        """Without --follow, jw exec prints just the UUID and a newline."""
        out, err, code = self.jw("exec", "--", "sleep", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, b"")
        self.assertRegex(out, UUID_LINE)
        jobId = out.decode("ascii").strip()
        self.assertEqual(str(uuid.UUID(jobId)), jobId)
        job = self.statusJSON(jobId)
        self.assertEqual(job["id"], jobId)
        self.assertEqual(job["status"], "RUNNING")
        self.assertEqual(job["command"], "sleep")
        self.assertEqual(job["args"], ["60"])
        self.assertEqual(job["owner"], "alice")

    def test_followSeparatesStreamsAndExitCode(self) -> None:
        """--follow copies stdout and stderr apart and exits with the job's code."""
        run, spawned = self.followed("sh", "-c", "echo out; echo err >&2; exit 3")
        spawned.output(b"out\n")
        spawned.errors(b"err\n")
        self.flush()
        self.assertEqual(
            (run.out.getvalue(), self.started(run.err.getvalue())), (b"out\n", b"err\n")
        )
        self.killer.groupGone(spawned.pid)
        spawned.exit(3)
        out, err, code = self.finish(run)
        self.assertEqual(out, b"out\n")
        self.assertEqual(self.started(err), b"err\n")
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(code, 3)

    def test_followSucceedsWithZero(self) -> None:
        """--follow exits 0 when the job completes successfully."""
        run, spawned = self.followed("echo", "hello", "world")
        spawned.output(b"hello world\n")
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        out, err, code = self.finish(run)
        self.assertEqual((out, self.started(err), code), (b"hello world\n", b"", 0))

    def test_followKilledBySignal(self) -> None:
        """A job killed by SIGKILL makes jw exec --follow exit 128+9."""
        run, spawned = self.followed("sh", "-c", "kill -9 $$")
        self.killer.groupGone(spawned.pid)
        spawned.kill(signal.SIGKILL)
        out, err, code = self.finish(run)
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(code, 137, (out, err))

    def test_followCommandCannotStart(self) -> None:
        """A command that cannot start exits 127 with one line naming it."""
        out, err, code = self.jw("exec", "--follow", "--", "no-such-command-xyz")
        self.assertEqual(code, 127, (out, err))
        self.assertEqual(out, b"")
        # (Not said to have started: it never did.)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"no-such-command-xyz", err)
        self.assertNotIn(b"Traceback", err)

    def test_followCwdMissing(self) -> None:
        """A working directory that does not exist exits 127 with one line."""
        missing = os.path.abspath(self.mktemp())
        out, err, code = self.jw("exec", "--follow", "--cwd", missing, "--", "pwd")
        self.assertEqual(code, 127, (out, err))
        self.assertEqual(out, b"")
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(missing.encode(), err)

    def test_envReachesJob(self) -> None:
        """--env K=V sets a variable in the job's environment."""
        run = self.start(
            "exec",
            "--follow",
            "--env",
            "GREETING=hi",
            "-e",
            "OTHER=a=b",
            "--",
            "sh",
            "-c",
            'echo "$GREETING" "$OTHER"',
        )
        [spawned] = self.reactor.spawned
        assert spawned.env is not None
        self.assertEqual((spawned.env["GREETING"], spawned.env["OTHER"]), ("hi", "a=b"))
        spawned.output(b"hi a=b\n")
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        out, err, code = self.finish(run)
        self.assertEqual((out, self.started(err), code), (b"hi a=b\n", b"", 0))

    def test_cwdIsUsed(self) -> None:
        """--cwd DIR runs the job in DIR."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        run = self.start("exec", "--follow", "--cwd", directory, "--", "pwd")
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.path, directory)
        spawned.output(directory.encode() + b"\n")
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        out, err, code = self.finish(run)
        self.assertEqual(
            (out, self.started(err), code), (directory.encode() + b"\n", b"", 0)
        )

    def test_envWithoutEqualsIsRejected(self) -> None:
        """--env BAD (no '=') is a one-line usage error and starts no job."""
        result = self.jw("exec", "--env", "BAD", "--", "true")
        self.assertOneLineFailure(result, b"BAD")
        self.assertEqual(self.listedIds(), [])

    def test_execJSON(self) -> None:
        """jw exec --json prints the created job object."""
        out = self.assertSucceeded(self.jw("exec", "--json", "--", "sleep", "60"))
        job = json.loads(out)
        self.assertTrue(JOB_KEYS <= set(job), job)
        self.assertEqual(job["status"], "RUNNING")
        self.assertEqual((job["command"], job["args"]), ("sleep", ["60"]))


class ListAndStatusTests(MemoryCLITestCase):
    """C{jw list} and C{jw status}."""

    def test_listTable(self) -> None:
        """jw list prints a table with a header and a row per job."""
        first = self.execId("sleep", "60")
        self.reactor.advance(1)
        second = self.execId("true")
        out = self.assertSucceeded(self.jw("list"))
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertEqual(
            lines[0].split(),
            ["ID", "OWNER", "STATUS", "EXIT", "AGE", "DURATION", "COMMAND"],
        )
        self.assertTrue(lines[1].startswith(second[:8] + " "), out)
        self.assertTrue(lines[2].startswith(first[:8] + " "), out)
        self.assertIn("sleep 60", lines[2])
        self.assertIn("RUNNING", lines[2])

    def test_listSaysMoreExist(self) -> None:
        """
        A page that is not the last says how many it shows and how to see
        the rest, even when --limit was given; --all shows them all.
        """
        for _ in range(3):
            self.execId("true")
        out, err, code = self.jw("list", "--limit", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.decode().splitlines()), 3, out)
        self.assertEqual(err, b"jw: 2 shown, more exist (--all: every one)\n")
        out, err, code = self.jw("list", "--limit", "2", "--all")
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(len(out.decode().splitlines()), 4, out)

    def test_listEmpty(self) -> None:
        """jw list --json on a fresh server is an empty jobs list."""
        out = self.assertSucceeded(self.jw("list", "--json"))
        self.assertEqual(json.loads(out), {"jobs": [], "next_cursor": None})

    def test_listJSONNewestFirst(self) -> None:
        """jw list --json is the API's page, the newest job first."""
        ids = []
        for _ in range(3):
            ids.append(self.execId("true"))
            self.reactor.advance(1)
        out = self.assertSucceeded(self.jw("list", "--json"))
        body = json.loads(out)
        self.assertEqual(list(body), ["jobs", "next_cursor"])
        self.assertEqual([job["id"] for job in body["jobs"]], ids[::-1])
        stamps = [job["created_at"] for job in body["jobs"]]
        self.assertEqual(stamps, sorted(stamps, reverse=True))

    def test_statusHuman(self) -> None:
        """jw status ID shows the id, the command and the status."""
        jobId = self.execId("sleep", "60")
        out = self.assertSucceeded(self.jw("status", jobId))
        lines = self.fields(out)
        self.assertIn(f"id: {jobId}", lines)
        self.assertIn("status: RUNNING", lines)
        self.assertIn("owner: alice", lines)
        self.assertIn("command: sleep 60", lines)

    def test_statusJSONMatchesAPI(self) -> None:
        """jw status --json is the API's job object, key for key."""
        jobId = self.execId("sh", "-c", "exit 4")
        self.endJob(jobId, 4)
        job = self.statusJSON(jobId)
        code, apiJob = self.apiJSON("GET", f"/jobs/{jobId}", "alice")
        self.assertEqual(code, 200)
        self.assertTrue(JOB_KEYS <= set(job), sorted(job))
        self.assertEqual(job, apiJob)
        self.assertEqual(job["status"], "FAILED")
        self.assertEqual(job["exit_code"], 4)

    def test_readerMayReadStatus(self) -> None:
        """A Reader can see another user's job with jw status."""
        jobId = self.execId("sleep", "60")
        job = self.statusJSON(jobId, user="rita")
        self.assertEqual((job["id"], job["owner"]), (jobId, "alice"))


class StopTests(MemoryCLITestCase):
    """C{jw stop}."""

    def stopped(self, jobId: str, *more: str) -> tuple[bytes, bytes, int]:
        """C{jw stop ID}: the job is signalled, its group ends, jw answers."""
        run = self.start("stop", jobId, *more)
        spawned = self.process(jobId)
        self.assertIn((spawned.pid, signal.SIGTERM), self.killer.calls)
        assert run.done is not None
        self.assertNoResult(run.done)  # the answer waits for the end
        self.endJob(jobId, signum=signal.SIGTERM)
        return self.finish(run)

    def test_stopHuman(self) -> None:
        """jw stop ID prints the job, now STOPPED, stopped by the caller."""
        jobId = self.execId("sleep", "300")
        out = self.assertSucceeded(self.stopped(jobId))
        lines = self.fields(out)
        self.assertIn(f"id: {jobId}", lines)
        self.assertIn("status: STOPPED", lines)
        self.assertIn("stopped_by: alice", lines)

    def test_stopJSONThenAgain(self) -> None:
        """jw stop --json shows STOPPED by alice; a second stop is one-line error."""
        jobId = self.execId("sleep", "300")
        out = self.assertSucceeded(self.stopped(jobId, "--json"))
        job = json.loads(out)
        self.assertEqual(job["id"], jobId)
        self.assertEqual(job["status"], "STOPPED")
        self.assertEqual(job["stopped_by"], "alice")
        self.assertIsNotNone(job["ended_at"])
        again = self.jw("stop", jobId)
        self.assertOneLineFailure(again, b"already ended")
        self.assertEqual(self.statusJSON(jobId)["status"], "STOPPED")

    def test_otherDeveloperCannotStop(self) -> None:
        """bob cannot stop alice's job: one line, and the job keeps running."""
        jobId = self.execId("sleep", "300")
        result = self.jw("stop", jobId, user="bob")
        self.assertOneLineFailure(result, b"forbidden")
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")


class LogsTests(MemoryCLITestCase):
    """C{jw logs}."""

    def binaryJob(self) -> str:
        """A job that wrote binary bytes to both streams, ended."""
        jobId = self.execId(
            "sh", "-c", r"printf '\000\377\376abc'; printf 'e\001\200rr' >&2"
        )
        spawned = self.process(jobId)
        spawned.output(b"\x00\xff\xfeabc")
        spawned.errors(b"e\x01\x80rr")
        self.endJob(jobId, 0)
        self.assertEqual(self.statusJSON(jobId)["status"], "COMPLETED")
        return jobId

    def test_logsRawBytes(self) -> None:
        """
        jw logs prints stdout to stdout and stderr to stderr byte for byte,
        NUL and invalid UTF-8 included; --stdout only stdout.
        """
        jobId = self.binaryJob()
        self.assertEqual(
            self.jw("logs", jobId), (b"\x00\xff\xfeabc", b"e\x01\x80rr", 0)
        )
        self.assertEqual(
            self.jw("logs", "--stdout", jobId), (b"\x00\xff\xfeabc", b"", 0)
        )

    def test_logsStderr(self) -> None:
        """jw logs --stderr prints the job's stderr byte for byte."""
        jobId = self.binaryJob()
        self.assertEqual(self.jw("logs", "--stderr", jobId), (b"e\x01\x80rr", b"", 0))

    def test_logsOffset(self) -> None:
        """jw logs --offset N skips the first N bytes."""
        jobId = self.binaryJob()
        self.assertEqual(self.jw("logs", "--offset", "2", jobId), (b"\xfeabc", b"", 0))
        self.assertEqual(
            self.jw("logs", "--stderr", "--offset", "2", jobId), (b"\x80rr", b"", 0)
        )

    def test_logsNegativeOffset(self) -> None:
        """jw logs --offset -1 is a one-line error."""
        jobId = self.binaryJob()
        result = self.jw("logs", "--offset", "-1", jobId)
        self.assertOneLineFailure(result, b"offset")

    def test_logsFollowStreamsUntilEnd(self) -> None:
        """jw logs --follow streams output as it comes and exits 0 at the end."""
        jobId = self.execId("sh", "-c", "echo first; wait for a flag; echo second")
        spawned = self.process(jobId)
        spawned.output(b"first\n")
        run = self.start("logs", "--follow", jobId)
        self.assertEqual(run.out.getvalue(), b"first\n")
        # The job is still running: jw is following live output.
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")
        assert run.done is not None
        self.assertNoResult(run.done)
        spawned.output(b"second\n")
        self.endJob(jobId, 0)
        self.assertEqual(self.finish(run), (b"first\nsecond\n", b"", 0))
        self.assertEqual(self.statusJSON(jobId)["status"], "COMPLETED")

    def test_logsFollowSlowJob(self) -> None:
        """jw logs --follow on a slowly printing job returns all its output."""
        jobId = self.execId(
            "sh", "-c", "for i in 1 2 3 4; do echo line$i; sleep 0.2; done"
        )
        spawned = self.process(jobId)
        run = self.start("logs", "--follow", jobId)
        for i in range(1, 5):
            spawned.output(f"line{i}\n".encode())
            self.reactor.advance(0.2)
            self.flush()
        self.endJob(jobId, 0)
        self.assertEqual(self.finish(run), (b"line1\nline2\nline3\nline4\n", b"", 0))

    def test_logsFollowExitsWithTheJobsStatus(self) -> None:
        """jw logs --follow exits with the job's status, its stderr on stderr."""
        jobId = self.execId("sh", "-c", "echo oops >&2; exit 5")
        spawned = self.process(jobId)
        run = self.start("logs", "--follow", jobId)
        spawned.errors(b"oops\n")
        self.endJob(jobId, 5)
        self.assertEqual(self.finish(run), (b"", b"oops\n", 5))

    def test_logsUnknownJob(self) -> None:
        """jw logs of an unknown id is a one-line not found."""
        result = self.jw("logs", str(uuid.uuid4()))
        self.assertOneLineFailure(result, b"not found")

    def test_brokenPipe(self) -> None:
        """
        When jw's reader goes away (jw logs -f | head), jw stops quietly with
        the SIGPIPE status, and lets go of its stdout.
        """
        jobId = self.execId("yes")
        run = self.start("logs", "--follow", jobId)

        def gone(data: bytes) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        run.out.write = gone  # type: ignore[method-assign]
        self.process(jobId).output(b"y\n")
        _out, err, code = self.finish(run)
        self.assertEqual((err, code), (b"", cli.EXIT_BROKEN_PIPE))
        self.assertEqual(run.abandoned, [True])


class FailureTests(MemoryCLITestCase):
    """Every failure is one line on stderr and a non-zero exit, never a traceback."""

    def test_wrongPassword(self) -> None:
        """A wrong password is an authentication failure."""
        result = self.jw("list", JW_PASSWORD="wrong")
        self.assertOneLineFailure(result, b"authentication failed")

    def test_unknownUser(self) -> None:
        """An unknown user is an authentication failure."""
        result = self.jw("list", JW_USER="mallory", JW_PASSWORD="x")
        self.assertOneLineFailure(result, b"authentication failed")

    def test_readerCannotExec(self) -> None:
        """A Reader running jw exec is forbidden and no job starts."""
        result = self.jw("exec", "--", "true", user="rita")
        self.assertOneLineFailure(result, b"forbidden")
        self.assertEqual(self.listedIds(), [])
        self.assertEqual(self.reactor.spawned, [])

    def test_statusUnknownId(self) -> None:
        """jw status of a well-formed but unknown id is not found."""
        result = self.jw("status", str(uuid.uuid4()))
        self.assertOneLineFailure(result, b"not found")

    def test_statusMalformedId(self) -> None:
        """jw status of malformed ids is refused (even with slashes or dots)."""
        for bad in ("not-a-uuid", "../../etc/passwd", "..", "%2e%2e"):
            result = self.jw("status", bad)
            self.assertOneLineFailure(result, b"not a job id")
        self.assertOneLineFailure(self.jw("status", "abcdef12"), b"no job id starts")

    def test_serverDown(self) -> None:
        """A refused connection gives a one-line connection failure."""

        def refused(reactor: Any, server: str, *args: Any, **kw: Any) -> Any:
            return JobworkerClient(
                RefusingHTTP(),  # type: ignore[arg-type]
                server,
                reactor=reactor,
            )

        result = self.jw("list", connect=refused)
        self.assertOneLineFailure(result, b"cannot connect", b"refused")
        self.assertEqual(result[2], 1)

    def test_missingCAFile(self) -> None:
        """A CA file that does not exist is a one-line error naming it."""
        missing = os.path.abspath(self.mktemp())
        result = self.jw("list", JW_CA=missing, connect=JobworkerClient.connect)
        self.assertOneLineFailure(result, missing.encode())
        self.assertEqual(result[2], 2)

    def test_garbageCAFile(self) -> None:
        """A CA file that holds no certificate is a one-line error."""
        garbage = os.path.abspath(self.mktemp())
        with open(garbage, "wb") as f:
            f.write(b"this is not a certificate\n")
        result = self.jw("list", JW_CA=garbage, connect=JobworkerClient.connect)
        self.assertOneLineFailure(result, garbage.encode())
        self.assertEqual(result[2], 2)

    def test_plainHTTPServerRefused(self) -> None:
        """--server http://... is refused: https is required."""
        url = SERVER.replace("https://", "http://")
        for connect in (self.connect, JobworkerClient.connect):
            result = self.jw("--server", url, "list", connect=connect)
            self.assertOneLineFailure(result, b"https://")
            self.assertEqual(result[2], 2)

    def test_badCommandLineExitsTwo(self) -> None:
        """
        A wrong command line, whether the parser or the verb's rules find it,
        is one line (no usage before it) and exit status 2, and nothing is
        sent: jw does not even connect (no login, no id lookup, no delete).
        """
        known = self.execId("true")
        connections: list[str] = []

        def counted(reactor: Any, server: str, *args: Any, **kw: Any) -> Any:
            connections.append(server)
            return self.connect(reactor, server, *args, **kw)

        for argv, text in (
            (("exec",), b"needs the command"),
            (("exec", "--memory", "lots", "--", "true"), b"--memory"),
            (("exec", "-e", "NOVALUE", "--", "true"), b"NAME=VALUE"),
            (("exec", "--bogus", "--", "true"), b"--bogus (see jw exec --help)"),
            (("clean", "--older-than", "yesterday"), b"age"),
            (("list", "--limit", "0"), b"--limit"),
            (("list", "--status", "RUNNNING"), b"RUNNNING"),
            (("logs",), b"jw logs --help"),
            (("logs", "--offset", "-1", str(uuid.uuid4())), b"--offset"),
            (("status", "not-a-uuid"), b"not a job id"),
            (("rm", known, "not-an-id"), b"not-an-id"),
            (("logs", "--stdout", "--stderr", known), b"choose one"),
            (("logs", "--tail", "-1", known), b"--tail"),
            (("stop", "--kill", "--signal", "TERM", known), b"--kill"),
            (("wait", "--timeout", "-1", known), b"--timeout"),
            (("exec", "--after", known[:8], "--after", "xyz", "--", "true"), b"xyz"),
            (("clean", "--older-than", "soon"), b"age"),
        ):
            result = self.jw(*argv, connect=counted)
            self.assertOneLineFailure(result, text)
            self.assertEqual(result[2], 2, argv)
            self.assertEqual(connections, [], argv)
        self.assertEqual(self.listedIds(), [known])

    def test_serverWithoutScheme(self) -> None:
        """
        A server given without C{https://} says so, not that no CA is known
        for it (a CA configured or not).
        """
        for verb in ("list", "login"):
            for extra in ({}, {"JW_CA": ""}):
                result = self.jw("--server", "localhost:8443", verb, **extra)
                self.assertOneLineFailure(result, b"https://", b"localhost:8443")
                self.assertEqual(result[2], 2)
        # Nor is a CA fetched, asked about or kept for such an address.
        self.assertFalse(os.path.exists(self.configHome))

    def test_unexpectedErrorIsOneLine(self) -> None:
        """A bug in jw is still one line and exit 1, never a traceback."""

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        self.patch(JobworkerClient, "listJobs", broken)
        result = self.jw("list")
        self.assertOneLineFailure(result, b"unexpected error", b"a bug")
        self.assertEqual(result[2], 1)


class HelpTests(MemoryCLITestCase):
    """C{--help} needs no server and shows examples."""

    def test_topLevelHelp(self) -> None:
        """
        jw --help exits 0, lists the verbs and examples, fits on one screen
        (40 lines), shows no hidden verb; jw config --help has the settings.
        """
        out = self.assertSucceeded(self.jw("--help"))
        self.assertIn(b"examples:", out)
        self.assertIn(b"jw exec -f -- make test", out)
        for verb in (b"exec", b"list", b"status", b"stop", b"logs", b"clean"):
            self.assertIn(verb, out)
        self.assertLessEqual(out.count(b"\n"), 40, out.decode())
        self.assertNotIn(b"SUPPRESS", out)
        self.assertNotIn(b"_ids", out)
        out = self.assertSucceeded(self.jw("config", "--help"))
        self.assertIn(b"JW_USER", out)

    def test_execHelp(self) -> None:
        """jw exec --help exits 0 and shows an example."""
        out = self.assertSucceeded(self.jw("exec", "--help"))
        self.assertIn(b"example:", out)
        self.assertIn(b"jw exec", out)
        self.assertIn(b"--follow", out)

    def test_unknownCommand(self) -> None:
        """An unknown subcommand is one line, with a "did you mean" if close."""
        out, err, code = self.jw("frobnicate")
        self.assertEqual((out, code), (b"", 2))
        self.assertEqual(err, b"jw: unknown command 'frobnicate' (see jw --help)\n")
        out, err, code = self.jw("lsit")
        self.assertEqual((out, code), (b"", 2))
        self.assertIn(b"did you mean 'list'?", err)


class ExecOptionsTests(MemoryCLITestCase):
    """Issue 17, finding 5 (in part): the API's timeout reaches jw exec."""

    def test_timeoutReachesTheJob(self) -> None:
        """jw exec --timeout 30: the record shows timeout_seconds 30."""
        out, err, code = self.jw("exec", "--json", "--timeout", "30", "--", "true")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["timeout_seconds"], 30)

    def test_limitsAreChecked(self) -> None:
        """--memory needs a size; limits the server cannot honour are its 400."""
        self.assertOneLineFailure(
            self.jw("exec", "--memory", "lots", "--", "true"), b"--memory"
        )
        _out, err, code = self.jw("exec", "--memory", "64M", "--", "true")
        # Without cgroups here the server refuses any limit, clearly.
        self.assertNotEqual(code, 0)
        self.assertIn(b"limit", err)


class TokenEnvironmentTests(MemoryCLITestCase):
    """Issue 17, finding 1 (in part): JW_TOKEN for CI, no password anywhere."""

    def test_tokenFromTheEnvironment(self) -> None:
        code, body = self.apiJSON("POST", "/tokens", "alice")
        self.assertEqual(code, 201, body)
        _out, err, code = self.jw(
            "list", JW_TOKEN=body["token"], JW_USER="", JW_PASSWORD=""
        )
        self.assertEqual(code, 0, err)
