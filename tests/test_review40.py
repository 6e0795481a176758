"""
Defects found by the fortieth session's rounds and the notes of the last
ones, each reproduced here before it was mended.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import threading
from typing import Any

import bcrypt
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import ResponseFailed

from jobworker import __version__
from jobworker.auth.audit import AuditLog
from jobworker.auth.throttle import NETWORK_FACTOR, LoginThrottle
from jobworker.client.show import endLine
from jobworker.errors import BadRequest
from jobworker.executors.local.executor import LocalExecutor
from jobworker.executors.local.process import CHILD_OOM_NOTE, SIGTIMEDWAIT, _taker
from jobworker.executors.local.spawner import REAP_AGAIN, Generation
from jobworker.executors.local.stalls import StallWatch
from jobworker.jobs.limits import Limits
from jobworker.jobs.manager import DELETE_SLICE, REMOVAL_RETRY_FIRST, JobManager
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobStatus
from jobworker.jobs.selection import ANY_JOB, JobFilter
from jobworker.jobs.validation import JobRequest
from jobworker.metrics import methodLabel
from jobworker.peers import networkKey
from jobworker.server import connections
from jobworker.server.options import Options
from jobworker.server.reloads import Reloads
from jobworker.server.selfcert import ensureServerCertificate
from jobworker.server.services import RetentionService, UsersReloadService
from jobworker.units import sizeText

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import (
    CERT,
    KEY,
    ROOT,
    LiveServer,
    basic,
    fillDisk,
    sharedPath,
    sleep,
    smallTmpfs,
)
from .test_auditflood import audit
from .test_limits import requireCgroups
from .test_retention import DAY, SlicedDeletionTestCase
from .test_review39 import closedWithin, halfPosted, readAll, tlsTo


def _usersLine(name: str, role: str) -> str:
    hashed = bcrypt.hashpw(f"{name}-pass".encode(), bcrypt.gensalt(4))
    return f"{name}:{role}:{hashed.decode()}\n"


class RefusedReloadSaidTests(TestCase):
    """
    A SIGHUP whose users file or certificate was refused kept the old ones
    in force (a removed user kept access) with C{/healthz} C{ok} and no
    metric changed: the log alone said so (operator round 39). The probe
    says C{degraded} and C{jobworker_reload_failed} is 1 until a reload
    succeeds; the certificate's end is a metric.
    """

    def setUp(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.cert = os.path.join(folder, "server.pem")
        self.key = os.path.join(folder, "server.key")
        shutil.copy(CERT, self.cert)
        shutil.copy(KEY, self.key)
        os.chmod(self.key, 0o600)
        self.users = sharedPath(self)
        with open(self.users, "w") as f:
            f.write(_usersLine("ada", "Admin"))
        self.server = LiveServer(
            self, f"--users={self.users}", f"--cert={self.cert}", f"--key={self.key}"
        )
        self.reload = next(
            s for s in self.server.service if isinstance(s, UsersReloadService)
        )

    async def health(self) -> dict[str, Any]:
        response = await self.server.http.get(self.server.url + "/healthz")
        self.assertEqual(response.code, 200)
        body: dict[str, Any] = json.loads(await treq.content(response))
        return body

    async def metrics(self) -> str:
        response = await self.server.http.get(
            self.server.url + "/metrics", headers=basic("ada", "ada-pass")
        )
        self.assertEqual(response.code, 200)
        return (await treq.content(response)).decode()

    async def test_usersFileRefused(self) -> None:
        self.assertEqual(await self.health(), {"status": "ok"})
        self.assertIn('jobworker_reload_failed{file="users"} 0.0', await self.metrics())
        with open(self.users, "w") as f:
            f.write("carol:NoSuchRole:xx\n")
        await self.reload.hangUp()
        body = await self.health()
        self.assertEqual(body["status"], "degraded")
        self.assertIn("the users file was not reloaded", body["reload"])
        self.assertIn(body["reload"], body["reason"])
        text = await self.metrics()
        self.assertIn('jobworker_reload_failed{file="users"} 1.0', text)
        self.assertIn('jobworker_reloads_total{file="users",result="failed"} 1.0', text)
        # Mended, and reloaded: ok again.
        with open(self.users, "w") as f:
            f.write(_usersLine("ada", "Admin"))
        await self.reload.hangUp()
        self.assertEqual(await self.health(), {"status": "ok"})
        text = await self.metrics()
        self.assertIn('jobworker_reload_failed{file="users"} 0.0', text)
        self.assertIn('jobworker_reloads_total{file="users",result="ok"} 1.0', text)

    async def test_certificateRefused(self) -> None:
        text = await self.metrics()
        self.assertIn("jobworker_certificate_expiry_timestamp_seconds ", text)
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        await self.reload.hangUp()
        body = await self.health()
        self.assertEqual(body["status"], "degraded")
        self.assertIn("the TLS certificate was not reloaded", body["reload"])
        self.assertNotIn("users file", body["reload"])
        self.assertIn(
            'jobworker_reload_failed{file="certificate"} 1.0', await self.metrics()
        )
        shutil.copy(CERT, self.cert)
        await self.reload.hangUp()
        self.assertEqual(await self.health(), {"status": "ok"})


class UnremovableFolderTriedAgainTests(SlicedDeletionTestCase):
    """
    A deleted job whose output folder could not be removed (a read-only
    file system, a busy mount) kept it for good: logged once, its id
    forgotten (Slurm user round 39). It is noted and tried again later,
    at a growing interval, and after a restart.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("a bind mount (the busy folder) needs root")
        super().setUp()

    def busy(self, jobId: str) -> None:
        """The job's folder, a mount point: neither renamed nor removed."""
        folder = self.folder(jobId)
        subprocess.run(["mount", "--bind", folder, folder], check=True)
        self.addCleanup(self.unmount, folder)

    def unmount(self, folder: str) -> None:
        subprocess.run(["umount", folder], check=False, capture_output=True)

    def test_deleteTriedAgain(self) -> None:
        [jobId] = self.storeEnded(1, DAY)
        self.busy(jobId)
        self.manager.delete(jobId)
        self.assertEqual(self.stored([jobId]), [])
        self.assertEqual(self.withFolder([jobId]), [jobId])
        journal = os.path.join(self.stateDir, "deleted-output")
        with open(journal) as f:
            self.assertIn(jobId, f.read().split())
        # Still busy at the first try: tried again at twice the interval.
        self.reactor.advance(REMOVAL_RETRY_FIRST)
        self.reactor.turns()
        self.assertEqual(self.withFolder([jobId]), [jobId])
        self.unmount(self.folder(jobId))
        self.reactor.advance(REMOVAL_RETRY_FIRST)
        self.reactor.turns()
        self.assertEqual(self.withFolder([jobId]), [jobId])
        self.reactor.advance(REMOVAL_RETRY_FIRST)
        self.reactor.turns()
        self.assertEqual(self.withFolder([jobId]), [])
        self.assertFalse(os.path.exists(journal))

    def test_cleansGoOnMeanwhile(self) -> None:
        """Session review 40: the retry shared the sweep's timer, and every
        DELETE /jobs meanwhile left its folders until it fired."""
        [stuck] = self.storeEnded(1, DAY)
        self.busy(stuck)
        self.manager.delete(stuck)
        others = self.storeEnded(3, DAY, owner="bob")
        self.assertEqual(self.manager.clean(JobFilter(owner="bob"), 10), (3, False))
        self.reactor.turns()
        self.assertEqual(self.withFolder(others), [])
        self.assertEqual(self.withFolder([stuck]), [stuck])
        journal = os.path.join(self.stateDir, "deleted-output")
        with open(journal) as f:
            self.assertEqual(f.read().split(), [stuck])
        self.unmount(self.folder(stuck))
        self.reactor.advance(REMOVAL_RETRY_FIRST)
        self.reactor.turns()
        self.assertEqual(self.withFolder([stuck]), [])
        self.assertFalse(os.path.exists(journal))

    def test_afterARestart(self) -> None:
        ids = self.storeEnded(2, DAY)
        self.busy(ids[0])
        self.assertEqual(self.manager.clean(ANY_JOB, 10), (2, False))
        self.reactor.turns()
        self.assertEqual(self.withFolder(ids), ids[:1])
        self.manager.close()
        self.unmount(self.folder(ids[0]))
        self.manager = self.newManager()
        self.reactor.turns()
        self.assertEqual(self.withFolder(ids), [])


class ReapsHeldBackAskedAgainTests(SynchronousTestCase):
    """
    A reap message the spawner's full socket refused (EAGAIN) waited for
    the next job's end: with none, the children stayed zombies, holding
    their pids and cgroups (code review, round 39). It is sent again
    shortly.
    """

    def test_sentAgain(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        filled = 0
        while True:
            try:
                ours.send(b"x" * 512)
            except BlockingIOError:
                break
            filled += 1
        generation = Generation.__new__(Generation)
        generation.reactor = Clock()
        generation.socket = ours
        generation._unreaped = []
        generation._reapCall = None
        generation._reap([101, 102])
        self.assertEqual(generation._unreaped, [101, 102])
        for _ in range(filled):
            theirs.recv(4096)
        theirs.setblocking(False)
        self.assertRaises(BlockingIOError, theirs.recv, 4096)
        generation.reactor.advance(REAP_AGAIN)
        self.assertEqual(theirs.recv(4096), b"R" + struct.pack("=2i", 101, 102))
        self.assertEqual(generation._unreaped, [])
        self.assertEqual(generation.reactor.getDelayedCalls(), [])


class _Reader:
    """A pipe reader of a fake transport (its fd, a number only)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


class _SwallowingReactor(FakeProcessReactor):
    """spawnProcess as Twisted's Process does it: an error of the
    protocol's makeConnection is logged, not raised. C{closeStdinError}:
    what the transport's C{closeStdin} raises."""

    swallowed: BaseException | None = None
    closeStdinError: BaseException | None = None

    def spawnProcess(self, processProtocol: Any, *args: Any, **kwargs: Any) -> Any:
        real = processProtocol.makeConnection

        def connect(transport: Any) -> None:
            transport.pipes = {1: _Reader(1001), 2: _Reader(1002)}
            error = self.closeStdinError
            if error is not None:

                def closeStdin() -> None:
                    raise error

                transport.closeStdin = closeStdin
            try:
                real(transport)
            except BaseException as e:
                self.swallowed = e

        processProtocol.makeConnection = connect
        return super().spawnProcess(processProtocol, *args, **kwargs)


class HalfMadeJobTests(SynchronousTestCase):
    """
    The pipe-stall watch's thread could not start at the first job (the
    server's pids limit): the error left the job's connectionMade before
    the job knew its process, and the spawn swallowed it: a job never run,
    never timed out, whose stop never answered, its slot and uid held; and
    the watch was never tried again (code review round 40).
    """

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = _SwallowingReactor()
        self.watch = StallWatch(watching=True)
        self.starts = 0

        def cannotStart(thread: threading.Thread) -> None:
            self.starts += 1
            raise RuntimeError("can't start new thread")

        self.patch(threading.Thread, "start", cannotStart)
        state = os.path.abspath(self.mktemp())
        self.killer = GroupKiller()
        executor = LocalExecutor(
            self.reactor,
            os.path.join(state, "jobs"),
            5.0,
            self.killer,
            stallWatch=self.watch,
        )
        self.manager = JobManager(self.reactor, state, executor)
        self.addCleanup(self.manager.close)

    def create(self) -> Any:
        return self.manager.create(
            JobRequest(command="sleep", args=["9"], env={}, cwd=None, timeout=10.0),
            "alice",
        )

    def test_runsAndTheWatchIsTriedAgain(self) -> None:
        """The job runs (the watch is off meanwhile), and the next job's
        pipes try the watch's thread again."""
        job = self.create()
        [spawned] = self.reactor.spawned
        self.assertIsNone(self.reactor.swallowed)
        self.assertEqual(spawned.transport.gate, [b"go\n"])
        self.assertEqual(self.manager.record(job.id).pid, spawned.pid)
        self.assertEqual(self.starts, 1)
        self.create()
        self.assertEqual(self.starts, 2)
        self.reactor.advance(10.0)  # its timeout is armed
        self.assertIn(signal.SIGTERM, self.killer.signalsTo(spawned.pid))

    def test_pipesNotSetUpEndsFailed(self) -> None:
        """Whatever else leaves connectionMade: made whole, killed behind
        its gate, FAILED saying why; a stop answers."""
        self.reactor.closeStdinError = OSError(9, "Bad file descriptor")
        job = self.create()
        [spawned] = self.reactor.spawned
        self.assertIsNone(self.reactor.swallowed)
        self.assertEqual(spawned.transport.gate, [])
        self.assertIn(3, spawned.transport.closedChildFDs)
        self.assertIn(signal.SIGKILL, spawned.transport.signals)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        spawned.kill()
        record = self.manager.record(job.id)
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertIn("cannot start", record.error or "")
        self.assertIn("Bad file descriptor", record.error or "")


class NoExecLockReadTests(SynchronousTestCase):
    """
    A stop's look at whether TERM ends a job read each thread's
    C{/proc/.../wchan} and C{syscall}, which wait for the process's exec lock: a job
    holding it for seconds at each of its own execs froze the server at
    every stop of it (attacker round 40 from inside a job). They are read
    only for a thread asleep, C{syscall} only with no C{wchan} shown. (A
    thread's files here: the C{syscall} file says "in rt_sigtimedwait", so
    a read of it shows in the answer.)
    """

    def task(self, state: str, wchan: str) -> str:
        task = os.path.abspath(self.mktemp())
        os.makedirs(task)
        with open(os.path.join(task, "status"), "w") as f:
            f.write(
                f"Name:\tjob\nState:\t{state} (x)\nTracerPid:\t0\nNSpid:\t42\n"
                "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
                "SigCgt:\t0000000000000000\n"
            )
        with open(os.path.join(task, "wchan"), "w") as f:
            f.write(wchan)
        with open(os.path.join(task, "syscall"), "w") as f:
            f.write(f"{SIGTIMEDWAIT.decode()} 0x0 0x0\n")
        return task

    def setUp(self) -> None:
        if SIGTIMEDWAIT is None:
            raise SkipTest(f"no rt_sigtimedwait number known on {os.uname().machine}")

    def takes(self, state: str, wchan: str) -> object:
        return _taker(self.task(state, wchan), 1 << (signal.SIGTERM - 1))

    def test_runningOrInExec(self) -> None:
        """Running, or in an uninterruptible wait (an exec): neither its
        wchan nor its syscall read (either waits for the exec lock)."""
        self.assertIs(self.takes("R", "0"), True)
        self.assertIs(self.takes("D", "0"), True)
        self.assertIs(self.takes("D", "do_sigtimedwait.isra.0"), True)

    def test_asleepElsewhere(self) -> None:
        """Asleep where its wchan says (not sigwait): not read."""
        self.assertIs(self.takes("S", "hrtimer_nanosleep"), True)

    def test_sigwaitSaid(self) -> None:
        self.assertIs(self.takes("S", "do_sigtimedwait.isra.0"), False)

    def test_hiddenWchanAsleep(self) -> None:
        """A kernel that shows no wchan: read for a thread asleep."""
        self.assertIs(self.takes("S", "0"), False)


class ChildKilledAtMemoryLimitTests(TestCase):
    """
    The memory limit killed a process of the job that was not its main
    one (a compiler under make, a command of a script): the job read
    "exited with code 2", or COMPLETED with its output cut, and nothing
    said the limit was the cause (operator round 40). Its end says so.
    """

    def setUp(self) -> None:
        requireCgroups()

    async def ended(self, script: str) -> dict[str, Any]:
        server = LiveServer(self)
        job = await server.createJob(
            "sh", "-c", script, limits={"memory_bytes": 48 << 20}
        )
        ended: dict[str, Any] = await server.waitEnded(job["id"])
        return ended

    async def test_failed(self) -> None:
        ended = await self.ended("python3 -c 'x = bytearray(512 << 20)' || exit 2")
        self.assertEqual((ended["status"], ended["exit_code"]), ("FAILED", 2))
        self.assertIn("exited with code 2", ended["error"])
        self.assertIn("killed at its memory limit", ended["error"])

    async def test_completed(self) -> None:
        ended = await self.ended("python3 -c 'x = bytearray(512 << 20)'; exit 0")
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))
        self.assertIn("killed at its memory limit", ended["error"])

    async def test_noneKilled(self) -> None:
        """A job the limit did not touch says nothing of it."""
        ended = await self.ended("exit 3")
        self.assertEqual(ended["error"], "exited with code 3")


class EndLineSaysTheMemoryLimitTests(SynchronousTestCase):
    """jw exec -f says the memory limit's note beside the exit status."""

    def final(self, status: str, code: int, error: str | None) -> dict[str, Any]:
        return {"id": "j1", "status": status, "exit_code": code, "error": error}

    def test_failedByItsExit(self) -> None:
        error = f"exited with code 2: {CHILD_OOM_NOTE}"
        self.assertEqual(
            endLine(self.final("FAILED", 2, error)), f"jw: job j1: {error}"
        )

    def test_completed(self) -> None:
        self.assertEqual(
            endLine(self.final("COMPLETED", 0, CHILD_OOM_NOTE)),
            f"jw: job j1: {CHILD_OOM_NOTE}",
        )

    def test_exitAloneNotSaid(self) -> None:
        self.assertIsNone(endLine(self.final("FAILED", 2, "exited with code 2")))
        self.assertIsNone(endLine(self.final("COMPLETED", 0, None)))


class OperatorMetricsTests(TestCase):
    """
    What a dashboard could not tell (operator round 40): a create from a
    list (one C{/jobs} series), a job's start latency (only queued ones
    were measured), throttled logins (the failures' count stopped at the
    throttle's threshold), audit events lost (the log alone said so, and
    C{/healthz} said C{ok}), the running version.
    """

    async def test_seriesAndHealth(self) -> None:
        mount = smallTmpfs(self, "16k")
        server = LiveServer(
            self, "--login-failures=2", f"--audit-log={mount}/audit.log"
        )
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        # (A token: the throttle below holds every password of this client.)
        code, issued = await server.json("POST", "/tokens", "ada")
        self.assertEqual(code, 201)
        bearer = {b"authorization": [f"Bearer {issued['token']}".encode()]}
        codes = []
        for _ in range(4):
            response = await server.http.get(
                server.url + "/jobs", headers=basic("alice", "wrong")
            )
            await treq.content(response)
            codes.append(response.code)
        self.assertEqual(codes, [401, 401, 429, 429])
        self.assertEqual(await self.health(server), {"status": "ok"})
        # The audit log's disk fills: its events are lost, and said so.
        fillDisk(mount)
        # (Lines go on filling the audit log's last page: then none fit.)
        for _ in range(40):
            response = await server.http.post(
                server.url + "/jobs", json={"command": "true"}, headers=bearer
            )
            self.assertEqual(response.code, 201)
            await treq.content(response)
            if (await self.health(server))["status"] != "ok":
                break
        body = await self.health(server)
        self.assertEqual(body["status"], "degraded")
        self.assertIn("audit events are not being written", body["audit"])
        response = await server.http.get(server.url + "/metrics", headers=bearer)
        text = (await treq.content(response)).decode()
        for line in (
            'jobworker_http_requests_total{code="429",method="GET",route="/jobs"} 2.0',
            "jobworker_auth_failures_total 2.0",
            "jobworker_auth_throttled_total 2.0",
            f'jobworker_build_info{{version="{__version__}"}} 1.0',
        ):
            self.assertIn(line, text)
        for series, least in (
            ("jobworker_audit_write_failures_total", 1),
            (
                'jobworker_http_requests_total{code="201",method="POST",route="/jobs"}',
                2,
            ),
            ("jobworker_job_start_seconds_count", 2),
        ):
            [value] = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(series + " ")
            ]
            self.assertGreaterEqual(value, least, series)

    async def health(self, server: LiveServer) -> dict[str, Any]:
        response = await server.http.get(server.url + "/healthz")
        body: dict[str, Any] = json.loads(await treq.content(response))
        return body


class MethodLabelTests(SynchronousTestCase):
    def test_folded(self) -> None:
        """Methods are labels only when known: any other is one C{other}
        (a label per method sent makes series without end)."""
        self.assertEqual(methodLabel(b"DELETE"), "DELETE")
        self.assertEqual(methodLabel(b"BREW"), "other")
        self.assertEqual(methodLabel(None), "other")


class ExampleUnitTests(SynchronousTestCase):
    """
    docs/jobworker.service set no TasksMax (systemd's default, one ceiling
    for every job's processes and the server's threads) nor
    --max-running-per-user, which README tells operators to set (operator
    round 40); its options are the server's.
    """

    def test_unit(self) -> None:
        with open(os.path.join(ROOT, "docs", "jobworker.service")) as f:
            text = f.read()
        self.assertIn("\nTasksMax=infinity\n", text)
        line = text.split("ExecStart=", 1)[1].split("\nExecReload", 1)[0]
        words = shlex.split(line.replace("\\\n", " "))
        self.assertEqual(
            words[:5], [words[0], "--nodaemon", "--pidfile=", "jobworker", "--tls"]
        )
        self.assertIn("--max-running-per-user", words)
        Options().parseOptions(words[4:])


class RetentionAuditedTests(SlicedDeletionTestCase):
    """
    Retention deleted jobs with a count in the server's log alone: no id,
    no audit line, where a user's DELETE /jobs of the same jobs is
    audited with every id (operator round 40). One C{job.expire} line a
    slice.
    """

    def test_linePerSlice(self) -> None:
        old = self.storeEnded(DELETE_SLICE + 3, 2 * DAY)
        kept = self.storeEnded(2, 0.0)
        path = os.path.abspath(self.mktemp())
        audit = AuditLog(path, self.reactor)
        self.addCleanup(audit.close)
        service = RetentionService(self.manager, DAY, self.reactor, audit=audit)
        service.startService()
        self.addCleanup(service.stopService)
        self.reactor.turns()
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([e["event"] for e in lines], ["job.expire"] * 2)
        self.assertEqual([e["deleted"] for e in lines], [DELETE_SLICE, 3])
        self.assertEqual(sorted(lines[0]["jobs"] + lines[1]["jobs"]), sorted(old))
        self.assertEqual(lines[0]["retain_seconds"], DAY)
        self.assertEqual((lines[0]["user"], lines[0]["client"]), (None, "server"))
        self.assertEqual(self.stored(kept), kept)


class OthersOutputReadAuditedTests(TestCase):
    """
    An Admin's read of another user's output (it may hold secrets) left no
    trace: the access log does not name users, the audit log had nothing
    (operator round 40). A C{job.read} line, once a minute of a reader,
    client and job; a user's reads of their own output are not lines.
    """

    async def test_read(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("echo", "SECRET=hunter2")
        await server.waitEnded(job["id"])
        for user in ("alice", "ada", "ada"):
            response = await server.request("GET", f"/jobs/{job['id']}/logs", user)
            self.assertEqual(response.code, 200)
            self.assertEqual(await treq.content(response), b"SECRET=hunter2\n")
        [line] = audit(server, "job.read")
        self.assertEqual(
            (line["user"], line["job"], line["owner"], line["result"]),
            ("ada", job["id"], "alice", "ok"),
        )

    async def test_refusedNotRead(self) -> None:
        """Session review 40: a read refused for its parameters (400) was a
        read "ok", and took the minute's line."""
        server = LiveServer(self)
        job = await server.createJob("echo", "SECRET=hunter2")
        await server.waitEnded(job["id"])
        code, _ = await server.json("GET", f"/jobs/{job['id']}/logs?stream=nope", "ada")
        self.assertEqual(code, 400)
        self.assertEqual(audit(server, "job.read"), [])
        response = await server.request("GET", f"/jobs/{job['id']}/logs", "ada")
        await treq.content(response)
        self.assertEqual(len(audit(server, "job.read")), 1)


class TokenKeyReloadedTests(TestCase):
    """
    A new token key took a restart, which stopped every running job
    (operator round 40): a SIGHUP reads it again. Tokens signed with the
    key before are refused from then on, a log follower let in by one
    included; a key refused (open to others) keeps the one in force.
    """

    async def test_replaced(self) -> None:
        server = LiveServer(self)
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        code, issued = await server.json("POST", "/tokens", "alice")
        self.assertEqual(code, 201)
        bearer = {b"authorization": [f"Bearer {issued['token']}".encode()]}

        async def whoami() -> int:
            response = await server.http.get(server.url + "/whoami", headers=bearer)
            await treq.content(response)
            return int(response.code)

        job = await server.createJob("sleep", "30")
        follower = await server.http.get(
            server.url + f"/jobs/{job['id']}/logs?follow=true", headers=bearer
        )
        self.assertEqual(follower.code, 200)
        followed = treq.content(follower)
        self.assertEqual(await whoami(), 200)
        await reload.hangUp()
        self.assertEqual(await whoami(), 200)  # (the same key: nothing changes)
        path = os.path.join(server.stateDir, "token.key")
        os.unlink(path)
        await reload.hangUp()
        self.assertEqual(await whoami(), 401)
        # Ended (a raw response broken off), not left to its job's end.
        await self.assertFailure(followed.addTimeout(10.0, reactor), ResponseFailed)
        code, again = await server.json("POST", "/tokens", "alice")
        self.assertEqual(code, 201)
        bearer = {b"authorization": [f"Bearer {again['token']}".encode()]}
        self.assertEqual(await whoami(), 200)
        # A key others may write is refused: the one in force stays.
        os.chmod(path, 0o600 | stat.S_IWOTH)  # noqa: S103 (the refusal tried)
        await reload.hangUp()
        self.assertEqual(await whoami(), 200)
        response = await server.http.get(server.url + "/healthz")
        body = json.loads(await treq.content(response))
        self.assertIn("the token key was not reloaded", body["reload"])
        os.chmod(path, 0o600)


class LimitsOverSaidInSizesTests(SynchronousTestCase):
    """A memory limit over the server's maximum was said in bytes alone
    (jw's --memory 1G read 1073741824: new user round 40)."""

    def test_memory(self) -> None:
        policy = JobPolicy(maxima=Limits(memory_bytes=100 << 20))
        error = self.assertRaises(
            BadRequest, policy.checkMaxima, Limits(memory_bytes=1 << 30)
        )
        self.assertEqual(
            error.message,
            "limits.memory_bytes 1073741824 is over this server's maximum "
            "104857600 (1G over 100M)",
        )

    def test_sizeText(self) -> None:
        self.assertEqual(
            [sizeText(n) for n in (512, 1024, 3 << 29, 100 << 20, 1 << 40)],
            ["512", "1K", "1.5G", "100M", "1T"],
        )


class UnauthenticatedGiveWayTests(TestCase):
    """
    Attacker round 40: with no account, connections that asked
    C{GET /healthz} every 3.5 s (never idle 5 s, and served once), or
    sent their headers slowly (each request within --header-timeout),
    held every slot: the eviction spared them, and every user was
    refused. At the cap, a connection none of whose requests was
    authenticated gives way (but one whose credentialed body is coming).
    """

    timeout = 60

    async def test_servedAndSlowHeaders(self) -> None:
        self.patch(connections, "EVICT_SILENT", 0.3)
        server = LiveServer(
            self, "--max-connections=3", "--max-connections-per-client=64"
        )
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        prober = await deferToThread(tlsTo, server.port)
        self.addCleanup(prober.close)
        prober.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await deferToThread(readAll, prober, b"}")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        slow = []
        for _ in range(2):
            sock = await deferToThread(tlsTo, server.port)
            self.addCleanup(sock.close)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            slow.append(sock)
        await sleep(0.6)
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        # The oldest of the client holding the most: the one served.
        self.assertTrue(await deferToThread(closedWithin, prober, 5.0))

    async def test_madeUpCredentials(self) -> None:
        """
        Attacker round 40, second wave: a made-up Authorization header (its
        body a byte every 4 s) was taken for a user's, and held the slot.
        A body whose credentials do not look good gives way.
        """
        self.patch(connections, "EVICT_SILENT", 0.3)
        server = LiveServer(
            self, "--max-connections=3", "--max-connections-per-client=64"
        )
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        made = [
            await deferToThread(halfPosted, server.port, value)
            for value in (base64.b64encode(b"mallory:guess"), b"x")
        ]
        bearer = await deferToThread(tlsTo, server.port)
        bearer.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer jw1.made.up\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
        )
        for sock in (*made, bearer):
            self.addCleanup(sock.close)
        await sleep(0.6)
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        self.assertTrue(await deferToThread(closedWithin, made[0], 5.0))


class LongPollsCappedTests(TestCase):
    """
    Attacker round 40: a Reader's long polls (C{?wait=300} on anyone's
    running job), one a connection, were never capped: they held every
    connection the server takes. They count with the user's log streams
    against --max-log-streams-per-user.
    """

    async def test_capped(self) -> None:
        server = LiveServer(self, "--max-log-streams-per-user=2")
        job = await server.createJob("sleep", "30")
        path = f"/jobs/{job['id']}?wait=30"
        polls = [ensureDeferred(server.json("GET", path, "rita")) for _ in range(2)]
        follow = await server.request("GET", f"/jobs/{job['id']}/logs?follow=1")
        self.assertEqual(follow.code, 200)
        await sleep(0.3)
        code, body = await server.json("GET", path, "rita")
        self.assertEqual(code, 429)
        self.assertIn("log streams and long polls", body["error"])
        # Another user's are their own (alice holds one log stream).
        code, _ = await server.json("GET", f"/jobs/{job['id']}?wait=0.1", "alice")
        self.assertEqual(code, 200)
        await server.json("POST", f"/jobs/{job['id']}/stop")
        for poll in polls:
            code, ended = await poll
            self.assertEqual((code, ended["status"]), (200, "STOPPED"))
        await treq.content(follow)


class IPv6NetworkThrottledTests(SynchronousTestCase):
    """
    Attacker round 40: a new /64 every 4 guesses (under the threshold of
    5), random user names, kept every password check busy: both CPUs on
    bcrypt, a user's first login 503 or 6-9 s. An IPv6 client's /48 is
    throttled too, past eight times the threshold.
    """

    def test_movingOnDoesNotHelp(self) -> None:
        clock = Clock()
        throttle = LoginThrottle(clock, threshold=5)
        guesses = 0
        for net in range(100):
            for n in range(4):
                address = f"2001:db8:0:{net:x}::{n + 1}"
                if throttle.retryAfter(f"user{guesses}", address) > 0:
                    break
                throttle.failed(f"user{guesses}", address)
                guesses += 1
            else:
                continue
            break
        self.assertEqual(guesses, 5 * NETWORK_FACTOR)
        # Another /48 is its own; so is IPv4.
        self.assertEqual(throttle.retryAfter("x", "2001:db8:1::1"), 0)
        self.assertEqual(throttle.retryAfter("x", "192.0.2.1"), 0)
        self.assertEqual(networkKey("2001:db8:0:ff::1"), "2001:db8::/48")
        self.assertIsNone(networkKey("192.0.2.1"))
        self.assertIsNone(networkKey("::1"))

    def test_siteMistypesForgotten(self) -> None:
        """
        Session review 40: a campus /48's own mistyped passwords, one every
        10 minutes from its users' /64s, were never forgotten; past 40 a
        newcomer's right password was refused 240 s. They leak away.
        """
        clock = Clock()
        clock.advance(1_000_000)
        throttle = LoginThrottle(clock)
        for i in range(50):
            if i:
                clock.advance(600)
            address = f"2001:db8:0:{i + 1:x}::10"
            self.assertEqual(throttle.begin(f"user{i}", address), 0.0)
            throttle.finish(f"user{i}", address, False)
        clock.advance(60)  # (a minute after the site's last mistype)
        self.assertEqual(throttle.retryAfter("newcomer", "2001:db8:0:ffff::10"), 0)

    def test_guessesHeldTrustedUsersServed(self) -> None:
        """
        Attacker round 40, second wave: a new /64 every 4 guesses, each as
        soon as it may, for an hour: its bcrypt checks are held to about one
        in 20 s (the /48's leak), and a user who logged in from their /64
        before is never refused (the /48's refusals are of untrusted logins
        alone, as a NAT'd IPv4 site's are, for 30 s at most).
        """
        clock = Clock()
        clock.advance(1_000_000)
        throttle = LoginThrottle(clock)
        throttle.succeeded("carol", "2001:db8:0:77::5")
        guesses = refused = 0
        for _ in range(3600):
            attacker = f"2001:db8:0:{guesses // 4 + 256:x}::1"
            if throttle.retryAfter("x", attacker) == 0:
                throttle.begin(f"x{guesses}", attacker)
                throttle.finish(f"x{guesses}", attacker, False)
                guesses += 1
            if throttle.retryAfter("carol", "2001:db8:0:77::5"):
                refused += 1
            self.assertLessEqual(throttle.retryAfter("dave", "2001:db8:0:78::5"), 30)
            clock.advance(1)
        self.assertLess(guesses, 300)
        self.assertEqual(refused, 0)


def _keyUpdates(sock: ssl.SSLSocket, count: int) -> None:
    """Send C{count} TLS 1.3 KeyUpdate records on C{sock} (OpenSSL's own
    calls, through CPython's SSL object: C{SSL *} after its head)."""
    libssl = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
    libssl.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
    libssl.SSL_version.argtypes = [ctypes.c_void_p]
    pointer = ctypes.c_void_p.from_address(id(sock._sslobj) + 24).value  # type: ignore[attr-defined]
    if libssl.SSL_version(pointer) != 0x0304:
        raise SkipTest("CPython's SSL object is not laid out as this test knows")
    for _ in range(count):
        libssl.SSL_key_update(pointer, 0)
        if libssl.SSL_do_handshake(pointer) != 1:
            return  # (the server closed it)


class KeyUpdateFloodTests(TestCase):
    """
    Attacker round 40: TLS 1.3 KeyUpdate records carry no data, so no HTTP
    limit sees them: 3,000 a read took the reactor 35 ms, and a few
    connections of them stalled every request for seconds. A connection
    past 64 of them (and one a minute of its age) is closed.
    """

    timeout = 60

    async def test_closed(self) -> None:
        server = LiveServer(self)
        sock = await deferToThread(tlsTo, server.port)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await deferToThread(readAll, sock, b"}")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        await deferToThread(_keyUpdates, sock, 6000)
        await sleep(0.5)

        def asked() -> bytes:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return readAll(sock, b"}")
            except OSError:
                return b""

        self.assertEqual(await deferToThread(asked), b"")
        # An ordinary client on a connection of its own is served.
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))

    async def test_shortRequestsServed(self) -> None:
        """
        Session review 40: a first bound on TLS bytes beside the plaintext
        counted each short request's record framing, and cut a keep-alive
        client after 3,658 probes (the request that crossed it acted on,
        its answer lost). Records that carry data are never counted.
        """
        server = LiveServer(self)
        sock = await deferToThread(tlsTo, server.port)
        self.addCleanup(sock.close)

        def probes() -> int:
            answered = 0
            for _ in range(4000):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if readAll(sock, b"}").startswith(b"HTTP/1.1 200"):
                    answered += 1
            return answered

        self.assertEqual(await deferToThread(probes), 4000)


class OwnCAOutOfItsDatesTests(TestCase):
    """
    Fault round 40: a CA made while the clock was ahead (three hours) was
    "not yet valid" to every client for hours once the clock was right, one
    made years back expired for good; renewing the leaf at a SIGHUP or a
    restart did not help, and nothing said so. A new CA starts two days
    back; one out of its dates is an error line and C{/healthz} says so.
    """

    def test_backdated(self) -> None:
        folder = os.path.abspath(self.mktemp())
        own = ensureServerCertificate(folder, ["localhost"])
        with open(own.ca, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(ca.not_valid_before_utc, now - datetime.timedelta(days=1))
        self.assertIsNone(own.caProblem)

    async def test_saidSo(self) -> None:
        stateDir = os.path.abspath(self.mktemp())
        folder = os.path.join(stateDir, "tls")
        own = ensureServerCertificate(folder, ["localhost"])
        with open(own.ca, "rb") as f:
            old = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(folder, "ca.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
        ahead = (
            x509.CertificateBuilder()
            .subject_name(old.subject)
            .issuer_name(old.subject)
            .public_key(old.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(later)
            .not_valid_after(later + datetime.timedelta(days=3650))
        )
        for extension in old.extensions:
            ahead = ahead.add_extension(extension.value, extension.critical)
        made = ahead.sign(key, hashes.SHA256())  # type: ignore[arg-type]
        with open(own.ca, "wb") as f:
            f.write(made.public_bytes(serialization.Encoding.PEM))
        errors: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(errors.append)
        self.addCleanup(globalLogPublisher.removeObserver, errors.append)
        server = LiveServer(self, stateDir=stateDir, ownCertificate=True)
        said = [e for e in errors if "the server's own CA" in str(e.get("problem"))]
        self.assertEqual(len(said), 1)
        self.assertIn("is not valid until", said[0]["problem"])
        # (Asked unverified: every client that checks refuses the CA.)
        answer = await deferToThread(_unverifiedHealth, server.port)
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["status"], "degraded")
        self.assertIn("the server's own CA is not valid until", body["reload"])


def _unverifiedHealth(port: int) -> bytes:
    """GET /healthz through TLS that checks no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.settimeout(20)
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return readAll(sock)


class OwnCADatesAskedEachTimeTests(TestCase):
    """Session review 40: the CA's dates were judged at the start (and a
    SIGHUP) alone: a CA that came into its dates (the clock set right) left
    /healthz degraded, one that expired left it ok. Judged at each ask."""

    async def test_expiresWhileServing(self) -> None:
        reloads = Reloads()
        now = datetime.datetime.now(datetime.UTC)
        reloads.caDates = (
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(seconds=0.3),
        )
        self.assertIsNone(reloads.refused())
        await sleep(0.5)
        self.assertIn("the server's own CA expired on", reloads.refused() or "")
        reloads.caDates = (
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=1),
        )
        self.assertIsNone(reloads.refused())


class ConnectionsPerUserTests(TestCase):
    """
    The verifier of round 40: one Reader's GET /whoami every 3.5 s on
    each of 1,024 connections held every one (authenticated, never idle
    5 s). One user's requests hold --max-connections-per-user connections
    at most; a request on another is a 429, its connection one that gives
    way at --max-connections.
    """

    timeout = 60

    async def test_capped(self) -> None:
        server = LiveServer(self, "--max-connections-per-user=2")
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        credentials = base64.b64encode(b"rita:rita-pass")

        def whoami(sock: ssl.SSLSocket) -> bytes:
            sock.sendall(
                b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Basic " + credentials + b"\r\n\r\n"
            )
            answer = b""
            while not answer.endswith(b"\r\n0\r\n\r\n"):  # (chunked: its end)
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
            return answer[:12]

        socks = []
        for _ in range(3):
            sock = await deferToThread(tlsTo, server.port)
            self.addCleanup(sock.close)
            socks.append(sock)
        answers = [await deferToThread(whoami, sock) for sock in socks]
        self.assertEqual(answers, [b"HTTP/1.1 200"] * 2 + [b"HTTP/1.1 429"])
        # Again on a connection it holds: served; once one closed, a new one.
        self.assertEqual(await deferToThread(whoami, socks[0]), b"HTTP/1.1 200")
        socks[1].close()
        await sleep(0.3)
        self.assertEqual(await deferToThread(whoami, socks[2]), b"HTTP/1.1 200")
        # Another user's are their own.
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
