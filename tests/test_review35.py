"""
Defects found in the thirty-fifth session's rounds and reviews, each with a
test that failed against the code before its fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from typing import Any

import treq
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from jobworker.auth.audit import AuditLog
from jobworker.auth.users import UserDatabase
from jobworker.errors import BadRequest, NotFound, ServiceUnavailable
from jobworker.executors.local import launcher, pipes
from jobworker.executors.local.cgroups import blockDevice, readAhead
from jobworker.executors.local.pipes import HEAVY, QUIET_READ, PipeDrain
from jobworker.executors.local.sandbox import ROOT_ENVIRONMENT, Sandbox, privateFolders
from jobworker.executors.local.stalls import StallWatch
from jobworker.executors.slurm.documents import SlurmError
from jobworker.executors.slurm.job import STATUS_PATIENCE
from jobworker.jobs.identity import Identities
from jobworker.jobs.limits import MIN_IO_BPS, Limits, ioRateFloor
from jobworker.jobs.records import JobStatus
from jobworker.jobs.store import StoreError
from jobworker.server import tap
from jobworker.server.deadlines import channelWithDeadlines
from jobworker.server.options import Options

from . import test_slurmunit
from .support import LiveServer, waitUntil
from .test_hostile_auth import (
    SHARED,
    USERS_TEXT,
    HeldRunner,
    HostileAuthMixin,
    basicHeader,
)
from .test_hostile_auth import request as authRequest
from .test_launcher import compiled, requireRoot, run, testIdentity
from .test_manager import request
from .test_pipes import FakeReader
from .test_slurmunit import state

#: A shim loaded into the launcher (C{LD_PRELOAD}): the namespace's init
#: (pid 1) sends its process group a SIGTERM right before it forks the
#: command, as a stop that reaches the group at that moment would.
STOP_BEFORE_FORK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

pid_t fork(void) {
    pid_t (*real)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
    if (getpid() == 1)
        kill(0, SIGTERM);
    return real();
}
"""


class StopRightBeforeTheCommandForkTests(TestCase):
    """
    Session review 34, unverified then: under C{--isolate pid} the
    namespace's init looked at the stops pending on it, then forked the
    command. A stop that reached the group between the two stayed pending
    on the init for good (a fork's child starts with none pending): the
    command never got its TERM and ran its grace out. The init now looks
    after the fork, and the command keeps the stops blocked until it has.
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        self.launcher = compiled(self)
        compiler = launcher.findCompiler()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        source = os.path.join(folder, "stop.c")
        with open(source, "w") as f:
            f.write(STOP_BEFORE_FORK)
        self.shim = os.path.join(folder, "stop.so")
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-o", self.shim, source, "-ldl"],
            check=True,
            capture_output=True,
        )
        self.sandbox = Sandbox(
            os.path.join(folder, "jobs"),
            1 << 20,
            frozenset({"pid"}),
            privateFolders(),
            launcher=self.launcher,
        )

    def test_stopBeforeTheForkReachesTheCommand(self) -> None:
        env = {"PATH": "/usr/bin:/bin"}
        argv = self.sandbox.argv(testIdentity(), ["echo", "ran"], None, True, env)
        result = run(
            argv,
            self.sandbox.gate(testIdentity(), None, env),
            env={**ROOT_ENVIRONMENT, "LD_PRELOAD": self.shim},
        )
        self.assertEqual(
            (result.returncode, result.stdout), (-signal.SIGTERM, b""), result.stderr
        )


class SlurmCase(SynchronousTestCase):
    """test_slurmunit's executor set-up (fake reactor and Slurm commands, a
    real store), without its tests."""

    setUp = test_slurmunit.ExecutorTests.setUp
    makeExecutor = test_slurmunit.ExecutorTests.makeExecutor
    makeManager = test_slurmunit.ExecutorTests.makeManager
    submit = test_slurmunit.ExecutorTests.submit
    stored = test_slurmunit.ExecutorTests.stored
    poll = test_slurmunit.ExecutorTests.poll


class WithdrawnJobKeptByTheStoreTests(SlurmCase):
    """
    Code review 35: a Slurm job answered 503 (sbatch could not reach
    slurmctld) is forgotten, record and all; if the store refused to delete
    its record just then, the record said PENDING for good: its end was not
    stored (a withdrawn job's never is), it was in no queue and not live, a
    stop was a 409 "already ended (PENDING)", a DELETE a 409 "stop it
    first", until a restart. It ends FAILED now, stored, and deletable.
    """

    def test_endsFailedWhenItCannotBeForgotten(self) -> None:
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        store = self.manager._store
        realDelete = store.delete

        def failingDelete(jobId: str) -> None:
            raise StoreError("cannot delete a job: disk I/O error", "SQLITE_IOERR")

        store.delete = failingDelete  # type: ignore[method-assign]
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))
        failure = self.failureResultOf(accepted, ServiceUnavailable)
        self.assertIn("Slurm is unreachable", failure.value.message)
        store.delete = realDelete  # type: ignore[method-assign]
        now = self.manager.record(record.id)
        self.assertIs(now.status, JobStatus.FAILED)
        self.assertIn("Slurm is unreachable", now.error or "")
        self.assertIs(self.stored(record.id).status, JobStatus.FAILED)
        self.manager.delete(record.id)
        self.assertRaises(NotFound, self.manager.record, record.id)

    def test_forgottenWhenTheStoreDeletes(self) -> None:
        """As before when the store takes the deletion: no trace, no end
        counted."""
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))
        self.failureResultOf(accepted, ServiceUnavailable)
        self.assertRaises(NotFound, self.manager.record, record.id)
        self.assertIsNone(self.manager._store.get(record.id))


class ScancelRetryForgottenTests(SlurmCase):
    """
    Code review 35: a job whose scancel at the end of its grace failed (Slurm
    out of reach) and which then ended on its own stayed in the stops'
    retry table for the server's life (its end disarmed the retry, whose own
    call was the only one to forget it): one entry per such job.
    """

    def test_retryForgottenAtTheEnd(self) -> None:
        stops = self.executor._stops
        for n in range(3):
            record = self.submit("sleep", "100")
            slurmId = str(101 + n)
            self.poll({slurmId: state("RUNNING")})
            stopped = self.manager.stop(record.id, "alice")
            self.commands.failNext = SlurmError("connect failure", unreachable=True)
            self.reactor.advance(5.0)  # the grace ends: its scancel fails
            self.assertIn(record.id, stops._retrying)
            self.poll({slurmId: state("CANCELLED", 0, 15)})
            self.assertTrue(self.successResultOf(stopped).status.ended)
        self.assertEqual(stops._retrying, {})


class StdinClosedWhileQueuedTests(TestCase):
    """
    New user round 35: Ctrl-C on C{jw exec -i} of a queued job said "its
    stdin closed", but the server refused the close (409, PENDING): once
    started, the job waited for ever on a stdin nobody would close. An
    empty write with C{?eof=true} to a queued job is taken now (audited
    once) and its stdin is closed as it starts; bytes are still refused.
    """

    timeout = 60

    async def test_closedAtItsStart(self) -> None:
        server = LiveServer(self, "--max-running=1")
        first = await server.createJob("sleep", "30")
        queued = await server.createJob("cat", stdin=True)
        self.assertEqual(queued["status"], "PENDING")
        code, body = await server.sendStdin(queued["id"], b"x")
        self.assertEqual(code, 409)
        self.assertIn("empty write with ?eof=true", body["error"])
        for _ in range(2):  # sent again (a lost answer): taken again
            answer = await server.sendStdin(queued["id"], b"")
            self.assertEqual(answer, (200, {"written": 0, "closed": True}))
        code, _ = await server.json("POST", f"/jobs/{first['id']}/stop")
        self.assertEqual(code, 200)  # (its turn comes)
        ended = await server.waitEnded(queued["id"])
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            closes = [
                line for line in f if '"job.stdin"' in line and queued["id"] in line
            ]
        self.assertEqual(len(closes), 1, closes)

    async def test_forgottenIfStoppedWhileQueued(self) -> None:
        server = LiveServer(self, "--max-running=1")
        await server.createJob("sleep", "30")
        queued = await server.createJob("cat", stdin=True)
        code, _ = await server.sendStdin(queued["id"], b"")
        self.assertEqual(code, 200)
        code, _ = await server.json("POST", f"/jobs/{queued['id']}/stop")
        self.assertEqual(code, 200)
        self.assertNotIn(queued["id"], server.manager._stdinClosedEarly)


class NoShellHintTests(TestCase):
    """
    New user round 35: C{jw exec -- 'echo hi | tr a-z A-Z'} (ssh's habit)
    said only "not found in PATH". A command not found whose name holds
    what a shell would read says that no shell runs it, and how to ask for
    one; another name not found is refused as before.
    """

    timeout = 60

    async def refusal(self, server: LiveServer, command: str) -> str:
        code, body = await server.json("POST", "/jobs", "alice", {"command": command})
        if code == 201:
            body = await server.waitEnded(body["id"])
        return str(body.get("error"))

    async def test_hintForAShellLine(self) -> None:
        server = LiveServer(self)
        for command in ("echo hi | tr a-z A-Z", "ls *.txt", "./x; y", "a>b"):
            error = await self.refusal(server, command)
            self.assertIn("not found", error)
            self.assertIn("no shell reads it", error)
            self.assertIn("sh -c", error)
        error = await self.refusal(server, "no-such-command-jw35")
        self.assertIn("not found in PATH", error)
        self.assertNotIn("shell", error)


class PipeWideningWatchedTests(SynchronousTestCase):
    """
    Attacker round 35: a quiet stream's first full read is followed by the
    pipe's resize (C{F_SETPIPE_SZ}), which takes the pipe's lock as a read
    does; it ran after the read's watch was cleared, so a job that held the
    lock in a throttled page fault froze the reactor there, unseen by the
    stall watch (every request, every stop, until root lifted the throttle).
    The resize is watched as the read is.
    """

    def test_resizeInsideTheWatch(self) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        watch = StallWatch(waiting=lambda tid: False, now=lambda: 0.0, watching=False)
        slot = watch.slot(1)
        killer: list[float] = []
        drain = PipeDrain(FakeReader(r), None, None, slot, killer.append)
        seen: list[object] = []
        real = pipes.fcntl.fcntl

        def resize(fd: int, command: int, arg: int) -> int:
            if command == pipes.F_SETPIPE_SZ:
                seen.append(slot.stalled)
            return real(fd, command, arg)

        self.patch(pipes.fcntl, "fcntl", resize)
        os.write(w, b"x" * QUIET_READ)
        drain()
        self.assertEqual(seen, [killer.append])
        self.assertIsNone(slot.stalled)
        self.assertEqual(real(r, getattr(fcntl, "F_GETPIPE_SZ", 1032)), HEAVY)


class IoRateFloorTests(TestCase):
    """
    Attacker round 35: a job limited to C{io_read_bps} 1 read one page of a
    file everyone reads (C{/etc/passwd}, a library) after evicting it: the
    page stayed locked for its whole throttled read, and every process on
    the machine that touched it waited (root's C{id -un 1}, another user's
    job). A disk rate under C{--min-io-bps} is refused: by default four
    read-ahead windows of the limited disk a second, and 1 MiB/s at least
    (a window's pages are locked until all of it is read: at 1 MiB/s, an 8
    MiB read-ahead held them 5-8 s, the fix's review). And no floor bounds
    the hold of a read rate: a job that had 96 MiB read ahead, then a page
    of another file, held that page 3 s at 32 MiB/s; a write rate held
    root's sync 4.5 s (late reviews 35). Disk rates are refused unless the
    operator allows them.
    """

    timeout = 60

    async def create(self, server: LiveServer, limits: dict[str, int]) -> Any:
        return await server.json(
            "POST", "/jobs", "alice", {"command": "true", "limits": limits}
        )

    async def test_ratesRefusedByDefault(self) -> None:
        server = LiveServer(self)
        for name in ("io_read_bps", "io_write_bps"):
            code, body = await self.create(server, {name: 1 << 30})
            self.assertEqual(code, 400, body)
            said = body["error"]
            self.assertIn(f"limits.{name} is not allowed on this server", said)
            self.assertIn("--allow-io-bps", said)

    async def test_underTheFloorRefused(self) -> None:
        server = LiveServer(self, "--allow-io-bps")
        floor = ioRateFloor(readAhead(blockDevice("/")))
        self.assertGreaterEqual(floor, MIN_IO_BPS)
        for name in ("io_read_bps", "io_write_bps"):
            code, body = await self.create(server, {name: floor - 1})
            self.assertEqual(code, 400, body)
            said = body["error"]
            self.assertIn(
                f"limits.{name} {floor - 1} is under this server's minimum {floor}",
                said,
            )
            self.assertIn("--min-io-bps", said)
        code, body = await self.create(server, {"io_read_bps": floor})
        self.assertEqual(code, 201, body)

    def test_floorByReadAhead(self) -> None:
        self.assertEqual(ioRateFloor(None), MIN_IO_BPS)
        self.assertEqual(ioRateFloor(128 << 10), MIN_IO_BPS)
        self.assertEqual(ioRateFloor(8 << 20), 32 << 20)

    async def test_floorSetByTheOperator(self) -> None:
        server = LiveServer(self, "--min-io-bps=4096", "--allow-io-bps")
        code, body = await self.create(server, {"io_write_bps": 4095})
        self.assertEqual(code, 400, body)
        self.assertIn("under this server's minimum 4096", body["error"])
        code, body = await self.create(server, {"io_write_bps": 4096})
        self.assertEqual(code, 201, body)

    def test_floorOverTheCeilingRefused(self) -> None:
        options = Options()
        error = self.assertRaises(
            UsageError,
            options.parseOptions,
            ["--tls", "--max-io-bps=1M", "--min-io-bps=2M"],
        )
        self.assertIn("--min-io-bps 2097152 is over --max-io-bps 1048576", str(error))


class ThrottleWaitersForgottenTests(HostileAuthMixin, SynchronousTestCase):
    """
    Code review 35: an attempt held back by the checks in flight waits on
    its client's list and on its user name's; woken through the client's
    (and then refused, 429), it stayed in its name's list for good: one
    entry per name an unauthenticated client tried, without bound. A woken
    attempt leaves both lists.
    """

    def setUp(self) -> None:
        self.held = HeldRunner()
        self.authenticator = self.makeAuthenticator(
            UserDatabase.fromText(USERS_TEXT), self.held
        )

    def test_namesNotKept(self) -> None:
        for cycle in range(10):
            for n in range(40):
                self.authenticate(
                    self.authenticator,
                    authRequest(SHARED, basicHeader(f"nobody-{cycle}-{n}", "guess")),
                )
            self.held.release()  # the checks fail; the waiters wake
            self.clock.advance(301)
        self.assertEqual(self.throttle._waitersOf, {})
        self.assertEqual(self.throttle._waiters, {})


class RestopsAuditedPerJobTests(SynchronousTestCase):
    """
    Code review 35: the once-a-minute lines of stops of jobs already being
    stopped were counted per user and client, whatever the job: an Admin's
    KILL of a second job had no line naming it, and the line that counted
    the left-out ones said "refused", the job unnamed. Each job is counted
    apart, and that line names the job and the result.
    """

    def lines(self, path: str) -> list[dict[str, Any]]:
        with open(path) as f:
            return [json.loads(line) for line in f]

    def test_eachJobItsOwnLines(self) -> None:
        clock = Clock()
        path = self.mktemp()
        log = AuditLog(path, clock)
        for job in ("A", "B"):
            log.recordSparsely("job.stop", "ada", "1.2.3.4", "requested", job=job)
        log.recordSparsely("job.stop", "ada", "1.2.3.4", "requested", job="B")
        clock.advance(61)
        log.reportLeftOut()
        self.assertEqual(
            [(e["job"], e["result"], e.get("left_out")) for e in self.lines(path)],
            [("A", "requested", None), ("B", "requested", None), ("B", "requested", 1)],
        )


class TimedOutJobRestopsTests(TestCase):
    """
    Code review 35: a job its timeout was stopping is being stopped, but
    each stop of it wrote a full audit line (its C{stopped_by} is unset):
    ten stops, ten lines. One a minute, as for a job a user is stopping.
    """

    timeout = 60

    async def test_onceAMinute(self) -> None:
        server = LiveServer(self, grace=5)
        job = await server.createJob(
            "sh", "-c", "trap '' TERM; sleep 30", timeout_seconds=0.3
        )
        await waitUntil(
            lambda: server.manager.record(job["id"]).error is not None,
            what="the timeout",
        )
        # (Each answers once the job has ended, at the grace's end.)
        answers = await gatherResults(
            [
                ensureDeferred(server.json("POST", f"/jobs/{job['id']}/stop"))
                for _ in range(5)
            ]
        )
        self.assertEqual([code for code, _ in answers], [200] * 5)
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            stops = [line for line in f if '"job.stop"' in line and job["id"] in line]
        self.assertEqual(len(stops), 1, stops)


#: Sends what the channel refuses before any route: headers that never end
#: (408), a request line that is no HTTP (400), a header line too long
#: (431), a body over the cap (413).
RAW_REFUSALS = r"""
for raw in (
    b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n\r\n",
):
    print(send(raw).split(b"\r\n", 1)[0].decode())
"""

#: What L{rawClient}'s scripts start with: C{send(raw)}, the whole answer
#: to C{raw} sent on a TLS connection of its own to the server.
RAW_CLIENT = r"""
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
def send(raw):
    plain = socket.create_connection(("127.0.0.1", port))
    with context.wrap_socket(plain, server_hostname="localhost") as s:
        s.sendall(raw)
        s.settimeout(20)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer
"""


def rawClient(
    script: str, server: LiveServer
) -> Deferred[subprocess.CompletedProcess[bytes]]:
    """Run C{script} (a raw TLS client, after L{RAW_CLIENT}) against
    C{server}, in a thread: the server runs on this process's reactor."""
    return deferToThread(
        subprocess.run,
        [sys.executable, "-c", RAW_CLIENT + script, str(server.port), server.ca],
        capture_output=True,
        timeout=40,
        check=False,
    )


class RefusedRequestsCountedTests(TestCase):
    """
    Code review 35: the 408, 431 and 400 the channel answers before any
    route (headers that never end, a line too long, a request that is no
    HTTP) were not counted in C{jobworker_http_requests_total}: a flood of
    them left no trace there. Counted now, route C{other}.
    """

    timeout = 60

    async def counts(self, server: LiveServer) -> dict[tuple[str, str], float]:
        response = await server.request("GET", "/metrics", "ada")
        text = (await treq.content(response)).decode()
        found = {}
        for line in text.splitlines():
            match = re.match(
                r'jobworker_http_requests_total\{code="(\d+)",method="[^"]+",'
                r'route="([^"]+)"\} (\S+)',
                line,
            )
            if match:
                code, route, value = match.groups()
                found[(route, code)] = found.get((route, code), 0.0) + float(value)
        return found

    async def test_counted(self) -> None:
        server = LiveServer(self, "--header-timeout=1")
        before = await self.counts(server)
        result = await rawClient(RAW_REFUSALS, server)
        self.assertEqual(
            result.stdout.decode().split("\n")[:4],
            [
                "HTTP/1.1 408 Request Timeout",
                "HTTP/1.1 400 Bad Request",
                "HTTP/1.1 431 Request Header Fields Too Large",
                "HTTP/1.1 413 Request Entity Too Large",
            ],
            result.stderr,
        )
        after = await self.counts(server)
        for key in (
            ("other", "408"),
            ("other", "400"),
            ("other", "431"),
            ("/jobs", "413"),
        ):
            self.assertEqual(after.get(key, 0) - before.get(key, 0), 1, (key, after))


class StoppedSlurmJobStatusTests(SlurmCase):
    """
    Slurm user round 35: a stopped job whose TERM took a while to end its
    batch step was read CANCELLED 0:0 at the poll after the cancel at the
    grace's end, the step's own status (killed by SIGTERM) only a poll
    later: it ended STOPPED without a status (`jw wait` 255, not 143). A
    stopped job Slurm says ended without a status waits a while
    (L{STATUS_PATIENCE}) for it; past that, none came.
    """

    def stopped(self) -> tuple[Any, Any]:
        record = self.submit("sleep", "300")
        self.poll({"101": state("RUNNING")})
        stopping = self.manager.stop(record.id, "alice")
        self.reactor.advance(5.0)  # the grace ends: scancel
        return record, stopping

    def test_theStepsStatusTaken(self) -> None:
        record, stopping = self.stopped()
        self.poll({"101": state("CANCELLED")})  # 0:0: the cancel, read first
        self.assertNoResult(stopping)
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.poll({"101": state("CANCELLED", 0, 15)})
        ended = self.successResultOf(stopping)
        self.assertEqual(
            (ended.status, ended.exit_code, ended.signal),
            (JobStatus.STOPPED, None, "SIGTERM"),
        )

    def test_noneCame(self) -> None:
        _, stopping = self.stopped()
        for _ in range(int(STATUS_PATIENCE) + 1):
            self.poll({"101": state("CANCELLED")})
        ended = self.successResultOf(stopping)
        self.assertEqual(
            (ended.status, ended.exit_code, ended.signal),
            (JobStatus.STOPPED, None, None),
        )


#: A chunked POST whose first chunk passes the body cap (413), followed in
#: the same write by a chunk-size line that is no number (malformed).
CHUNKED_THEN_BAD = r"""
big = 70000
raw = (b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
       b"Content-Type: application/json\r\n\r\n"
       + b"%x\r\n" % big + b"a" * big + b"\r\nzz\r\n")
for line in send(raw).split(b"\r\n"):
    if line.startswith(b"HTTP/1.1"):
        print(line.decode())
"""


class OneRefusalOneAnswerTests(RefusedRequestsCountedTests):
    """
    Session review 35: after a 413 of a chunked body, Twisted's parser went
    on with the rest of the same read; a malformed chunk there was refused
    again: a second answer written, and, since refusals are counted, a
    second count (C{other}, 400). One refusal, one answer, one count.
    """

    async def test_counted(self) -> None:
        server = LiveServer(self, "--max-body-bytes=65536")
        before = await self.counts(server)
        result = await rawClient(CHUNKED_THEN_BAD, server)
        self.assertEqual(
            result.stdout.decode().split("\n")[:-1],
            ["HTTP/1.1 413 Request Entity Too Large"],
            result.stderr,
        )
        after = await self.counts(server)
        changed = {
            key: after[key] - before.get(key, 0)
            for key in after
            if after[key] != before.get(key, 0) and key[0] != "/metrics"
        }
        self.assertEqual(changed, {("/jobs", "413"): 1})


class QueuedUnderTheFloorTests(TestCase):
    """
    Session review 35: a job queued at a disk rate the server's floor now
    refuses (queued before the floor, or before the operator raised it)
    started under it, its cgroup throttled to 1 byte/s. Its limits are
    checked against the server's bounds at its turn: FAILED, saying why.
    """

    timeout = 90

    async def queue(self, *extra: str, **limits: int) -> tuple[str, str]:
        """A job of C{limits} queued on a server whose options allow them,
        stopped; its id and its state folder."""
        state = os.path.abspath(self.mktemp())
        old = LiveServer(
            self, "--min-io-bps=1", "--allow-io-bps", "--max-running=1", stateDir=state
        )
        await old.createJob("sleep", "30")
        queued = await old.createJob("true", limits=limits)
        if queued["status"] != "PENDING":
            raise SkipTest(f"no disk-rate limits here: {queued}")
        await old.stop()
        return queued["id"], state

    async def endsAs(self, jobId: str, state: str, *options: str) -> str:
        new = LiveServer(self, "--max-running=1", *options, stateDir=state)
        ended = await new.waitEnded(jobId)
        self.assertEqual(ended["status"], "FAILED", ended)
        return str(ended["error"])

    async def test_underTheFloor(self) -> None:
        jobId, state = await self.queue(io_write_bps=1)
        error = await self.endsAs(jobId, state, "--allow-io-bps")
        self.assertIn(
            "cannot start: limits.io_write_bps 1 is under this server's minimum",
            error,
        )

    async def test_overTheMaximum(self) -> None:
        jobId, state = await self.queue(io_write_bps=1 << 30)
        error = await self.endsAs(
            jobId, state, "--allow-io-bps", "--max-io-bps=64M", "--min-io-bps=1M"
        )
        self.assertIn("is over this server's maximum 67108864", error)

    async def test_notAllowed(self) -> None:
        jobId, state = await self.queue(io_read_bps=1 << 30)
        error = await self.endsAs(jobId, state)
        self.assertIn("cannot start: limits.io_read_bps is not allowed", error)

    async def test_defaultsOfItsTimeNotChecked(self) -> None:
        """A queued job holds the defaults of its time (not what it asked
        for): a maximum lowered since does not fail it (late review 35)."""
        state = os.path.abspath(self.mktemp())
        old = LiveServer(
            self,
            "--default-memory=512M",
            "--max-memory=1G",
            "--max-running=1",
            stateDir=state,
        )
        await old.createJob("sleep", "30")
        queued = await old.createJob("true")
        if queued["status"] != "PENDING":
            raise SkipTest(f"no memory limits here: {queued}")
        await old.stop()
        new = LiveServer(
            self,
            "--default-memory=128M",
            "--max-memory=256M",
            "--max-running=1",
            stateDir=state,
        )
        ended = await new.waitEnded(queued["id"], timeout=40)
        self.assertEqual(ended["status"], "COMPLETED", ended)


class FloorAfterAvailabilityTests(SlurmCase):
    """
    Session review 35: a server that cannot limit disk rates (Slurm, no
    cgroups) named the floor for a rate under it, then refused one above it
    as not available: the first refusal sent the user the wrong way. The
    floor is checked once the rates are known to be available.
    """

    def test_slurmSaysNotAvailable(self) -> None:
        for rate in (1, 2 << 20):
            error = self.assertRaises(
                BadRequest,
                self.manager.create,
                replace(request("true"), limits=Limits(io_read_bps=rate)),
                owner="alice",
            )
            self.assertIn("not available with the Slurm executor", error.message)

    def test_floorCappedAtTheMaximum(self) -> None:
        """--max-io-bps under the computed floor: the floor is that maximum
        (every rate was refused, under the floor or over the maximum)."""
        options = Options()
        options.parseOptions(["--tls", "--max-io-bps=4096", "--allow-io-bps"])
        policy = tap._policy(options, Identities())
        self.assertEqual(policy.minIoBps, 4096)
        policy.checkFloor(Limits(io_write_bps=4096))


class StrayBlankLineTests(SynchronousTestCase):
    """
    Late review 35: the one blank line Twisted lets a client send after a
    request (no request begun) started the headers' deadline: the idle
    connection got a 408 it never asked for, now counted as a request. It
    is idle; a request line dribbled byte by byte is still cut.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        root = Resource()
        root.putChild(b"ok", Data(b"fine", "text/plain"))
        site = Site(root, reactor=self.clock)  # type: ignore[no-untyped-call]
        site.protocol = channelWithDeadlines(10.0, 30.0)  # type: ignore[method-assign, assignment]
        self.channel = site.buildProtocol(None)  # type: ignore[no-untyped-call]
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_idleAfterTheBlankLine(self) -> None:
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"fine", self.transport.value())
        self.transport.clear()
        self.channel.dataReceived(b"\r\n")
        self.clock.advance(11)
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"fine", self.transport.value())

    def test_dribbledRequestLineCut(self) -> None:
        for _ in range(10):
            self.channel.dataReceived(b"G")
            self.clock.advance(1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
