"""
Defects the thirty-second session found.

Issue 16 (the start path): after a boot every dynamic uid's lock file is
new, and each uid's first use scanned all of C{/proc} (a C{stat} of every
process of the machine) on the reactor's thread, to be sure no process of
it runs (fault round 9: a lock file removed under a live server's job).
Until every uid of the range had been used once (10,000 by default), each
started job paid a scan: 0.8 M of 3.7 M instructions per job on this
machine of about 150 processes, and more on a machine of thousands. One
scan of the whole range now serves the new lock files met within
L{SCAN_REUSED_FOR}; a uid it found running is looked for afresh, and a lock
file naming another server that may have died since this one started is
looked for afresh, as before.

The attacker's: on cgroup v1 a job with no CPU limit (the default) stayed
in the server's own C{cpu} cgroup, so the kernel shared the CPUs among its
processes one by one with the server's thread and every other user's job:
400 busy loops, each in a session of its own (C{setsid}: the kernel's
autogroups go by session), took a small job of alice's from 0.24 s to 25 s
and her C{GET /jobs} from 18 ms to 300 ms. Each job now has a C{cpu} cgroup
of its own, whatever its limits: it weighs one share against the server
and each other job.

The attacker's too: a request whose C{Host} header is not UTF-8 (no
credentials needed) was answered by Klein, a C{text/html} 400 "Non-UTF-8
encoding in URL.", with a traceback in the server's log for each; and a
request for C{*} by twisted.web: C{OPTIONS *} a 200 with no credentials
asked, others a 405 with no body. Each is a JSON 400 now.
"""

from __future__ import annotations

import base64
import copy
import errno
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.errors import ServiceUnavailable
from jobworker.executors.local import cgroups
from jobworker.executors.local.executor import (
    START_TROUBLE_FOR,
    LocalExecutor,
    localJobManager,
)
from jobworker.executors.local.process import JobProcess, JobProcessProtocol
from jobworker.executors.slurm.documents import SlurmError, SlurmState
from jobworker.jobs import identity
from jobworker.jobs.identity import DynamicUids, Identities, PoolExhausted
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.selection import ANY_JOB
from jobworker.jobs.stopping import StopRequest
from jobworker.jobs.store import JobStore, StoreError

from .fakes import (
    FakeProcessReactor,
    GroupKiller,
    forbidRealKill,
    noLiveUidProcesses,
    processExit,
    processKilled,
)
from .support import PASSWORDS, LiveServer, sleep
from .test_limits import output as outputOf
from .test_limits import requireCgroups
from .test_manager import ManagerTestCase, request
from .test_process import JobProcessTestCase
from .test_slurmdefects18 import SlurmCase
from .test_slurmunit import state
from .test_store import makeRecord


class FirstUseScanTests(SynchronousTestCase):
    """One scan of C{/proc} for a burst of first uses of dynamic uids."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        self.scans: list[range] = []
        self.running: set[int] = set()
        self.now = 100.0

    def scan(self, uids: range) -> set[int]:
        self.scans.append(uids)
        return {uid for uid in self.running if uid in uids}

    def pool(self, first: int, last: int) -> DynamicUids:
        pool = DynamicUids(first, last, self.folder, scan=self.scan)
        pool._now = lambda: self.now
        return pool

    def test_burstScansOnce(self) -> None:
        """Ten first uses within a second: one scan, of the whole range."""
        pool = self.pool(75100, 75109)
        got = [pool.acquire() for _ in range(10)]
        self.assertEqual(sorted(got), list(range(75100, 75110)))
        self.assertEqual(self.scans, [range(75100, 75110)])

    def test_scanAges(self) -> None:
        """A scan serves for L{identity.SCAN_REUSED_FOR} seconds, not after
        (nor after a step of the clock back)."""
        pool = self.pool(75100, 75109)
        pool.acquire()
        self.now += identity.SCAN_REUSED_FOR
        pool.acquire()
        self.now -= 5.0
        pool.acquire()
        self.assertEqual(len(self.scans), 3)

    def test_runningLookedForAfresh(self) -> None:
        """A uid the scan found running is refused only if a scan of it now
        finds it still running: once its processes are gone it is handed
        out at once, not a second later."""
        pool = self.pool(75100, 75100)
        self.running.add(75100)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.running.clear()
        self.assertEqual(pool.acquire(), 75100)
        self.assertEqual(
            self.scans,
            [range(75100, 75101), range(75100, 75101), range(75100, 75101)],
        )

    def test_deadServersUidLookedForAfresh(self) -> None:
        """A lock file naming another server, gone, that took it after this
        one started (it may have died leaving its job) is looked for
        afresh, whatever an earlier scan found: a job of it started since."""
        pool = self.pool(75100, 75101)
        self.assertEqual(pool.acquire(), 75100)
        self.assertEqual(len(self.scans), 1)
        # Another server took 75101 since, started a job as it and died.
        with open(os.path.join(self.folder, "75101"), "wb") as f:
            f.write(b"999999999 1\n")
        self.running.add(75101)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.assertEqual(self.scans[1:], [range(75101, 75102)])


class OwnCpuCgroupTests(TestCase):
    """A job with no CPU limit has a C{cpu} cgroup of its own (v1)."""

    timeout = 60

    async def test_cpuCgroupOwnWithoutLimit(self) -> None:
        found = requireCgroups()
        server = LiveServer(self, grace=1.0)
        job = await server.createJob("sh", "-c", "cat /proc/self/cgroup; exec sleep 30")
        text = b""
        for _ in range(500):
            text = await outputOf(server, job["id"])
            if text.endswith(b"\n"):
                break
            await sleep(0.02)
        lines = text.decode().splitlines()
        if isinstance(found, cgroups.CgroupsV1):
            [cpu] = [line for line in lines if "cpu" in line.split(":")[1].split(",")]
        else:
            [cpu] = [line for line in lines if line.startswith("0::")]
        self.assertEqual(cpu.rsplit("/", 1)[-1], job["id"])
        await server.json("POST", f"/jobs/{job['id']}/stop")


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send C{request} as it is over TLS 1.3; the answer's status, headers
    (lower-cased names) and body, read until the server closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as conn:
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    )
    return int(lines[0].split()[1]), headers, body


class RawRequests(TestCase):
    """Requests sent as they are, to a live server."""

    timeout = 60

    async def check(self, request: bytes, error: str) -> None:
        server = LiveServer(self)
        code, headers, body = await deferToThread(exchange, server.port, request)
        self.assertEqual(
            (code, headers.get("content-type")), (400, "application/json"), body
        )
        self.assertIn(error, json.loads(body)["error"])


class OddRequestTests(RawRequests):
    """Requests twisted.web or Klein answered themselves: JSON 400s now."""

    async def test_hostNotUtf8(self) -> None:
        """No traceback is logged (trial fails a test that logs one)."""
        for path in (b"/healthz", b"/jobs", b"/ui/"):
            await self.check(
                b"GET %s HTTP/1.1\r\nHost: \xff\r\nConnection: close\r\n\r\n" % path,
                "Host",
            )

    async def test_hostNotAName(self) -> None:
        """UTF-8, but no host name (an empty label, one of 64 characters):
        werkzeug's BadHost, a 500 in HTML with a traceback logged (the
        session's review); a JSON 400 now."""
        for host in (b"a..b", b"..:1", b"x" * 64 + b".example"):
            await self.check(
                b"GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % host,
                "Host",
            )

    async def test_starTarget(self) -> None:
        for method in (b"OPTIONS", b"GET", b"POST", b"DELETE"):
            await self.check(
                b"%s * HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n" % method,
                "*",
            )


def basicLine(user: str) -> bytes:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return f"Authorization: Basic {token}\r\n".encode()


class HeaderTwiceTests(RawRequests):
    """C{Authorization}, C{Content-Type} or C{Host} twice: a JSON 400."""

    async def test_authorizationTwice(self) -> None:
        await self.check(
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("rita")
            + basicLine("alice")
            + b"Connection: close\r\n\r\n",
            "Authorization",
        )

    async def test_contentTypeTwice(self) -> None:
        body = b'{"command":"true"}'
        await self.check(
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Type: text/plain\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body,
            "Content-Type",
        )

    async def test_hostTwice(self) -> None:
        await self.check(
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n"
            + basicLine("alice")
            + b"Connection: close\r\n\r\n",
            "Host",
        )

    async def test_onceIsServed(self) -> None:
        server = LiveServer(self)
        code, _headers, body = await deferToThread(
            exchange,
            server.port,
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Connection: close\r\n\r\n",
        )
        self.assertEqual(code, 200, body)


#: Holds POSIX write locks on the bytes given of a file until killed.
LOCKER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
print("locked", flush=True)
signal.pause()
"""


class ReadMarksHeldTests(SynchronousTestCase):
    """The WAL read marks held by another program: refused, not waited on."""

    def test_refusedAtOnceWhileHeld(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        db = os.path.join(path, "jobs.sqlite3")
        store = JobStore(db)
        self.addCleanup(store.close)
        record = makeRecord(1)
        store.insert(record)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, db + "-shm", "123", "5"],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(locker.wait)
        self.addCleanup(locker.kill)
        assert locker.stdout is not None
        self.assertEqual(locker.stdout.readline(), b"locked\n")
        with self.assertRaises(StoreError) as first:
            store.get("x")
        self.assertEqual(
            first.exception.reason, "the store is locked by another program"
        )
        began = time.monotonic()
        record.exit_code = 0
        # Reads and writes alike (a job's record made, a job's end).
        for call, argument in (
            (store.get, "x"),
            (store.update, record),
            (store.insert, makeRecord(2)),
            (store.page, ANY_JOB),
        ):
            with self.assertRaises(StoreError) as again:
                call(argument)  # type: ignore[operator]
            self.assertEqual(
                again.exception.reason, "the store is locked by another program"
            )
        self.assertLess(time.monotonic() - began, 2.0)
        self.assertIsNotNone(store.refusal)
        locker.kill()
        locker.wait()
        self.assertIsNone(store.get("x"))
        store.update(record)
        self.assertIsNone(store.refusal)


class ServerShortHealthTests(ManagerTestCase):
    """A start refused for the server's own reason is told by C{health()}."""

    def test_degradedUntilAStartSucceeds(self) -> None:
        self.assertTrue(self.manager.health().up)
        self.reactor.spawnError = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self.assertRaises(ServiceUnavailable, self.manager.create, request(), "alice")
        health = self.manager.health()
        self.assertFalse(health.up)
        assert health.reason is not None
        self.assertIn("cannot start a job", health.reason)
        self.assertIn(os.strerror(errno.EAGAIN), health.reason)
        self.reactor.spawnError = None
        self.manager.create(request(), "alice")
        self.assertTrue(self.manager.health().up)

    def test_degradedForAWhileAfterTheLast(self) -> None:
        self.reactor.spawnError = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        self.assertRaises(ServiceUnavailable, self.manager.create, request(), "alice")
        self.reactor.advance(START_TROUBLE_FOR - 1)
        self.assertFalse(self.manager.health().up)
        self.reactor.advance(1)
        self.assertTrue(self.manager.health().up)

    def test_stepBackKeepsIt(self) -> None:
        """A step of the wall clock back does not end the window at once."""
        self.reactor.spawnError = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self.assertRaises(ServiceUnavailable, self.manager.create, request(), "alice")
        self.reactor.rightNow -= 5.0
        self.assertFalse(self.manager.health().up)

    def test_noDescriptorForTheUidLock(self) -> None:
        """A root server's job needs its dynamic uid's lock file first: no
        descriptor for it is the server's trouble too."""
        if os.getuid() != 0:
            raise SkipTest("dynamic uids need root")
        noLiveUidProcesses(self.patch)
        pool = DynamicUids(75300, 75309, self.mktemp())
        manager = self.managerWith(policy=JobPolicy(identities=Identities(pool=pool)))

        def noDescriptor(uid: int) -> int | None:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        self.patch(pool, "_flock", noDescriptor)
        self.assertRaises(ServiceUnavailable, manager.create, request(), "bob")
        self.assertFalse(manager.health().up)

    def test_jobsOwnFailureIsNoTrouble(self) -> None:
        """A job that cannot start for its own reason (E2BIG) is no
        trouble of the server's."""
        self.reactor.spawnError = OSError(errno.E2BIG, os.strerror(errno.E2BIG))
        self.manager.create(request(), "alice")
        self.assertTrue(self.manager.health().up)


T0 = 1_700_000_000.0
HOUR = 3600.0


class StepBackEndTests(SynchronousTestCase):
    """No end before the start, nor before the creation."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.killer = GroupKiller()
        self.stateDir = os.path.abspath(self.mktemp())

    def manager(self, reactor: FakeProcessReactor, **policy: Any) -> Any:
        return localJobManager(
            reactor, self.stateDir, 5.0, self.killer, policy=JobPolicy(**policy)
        )

    def test_recoveredNotBeforeItsStart(self) -> None:
        first = self.manager(FakeProcessReactor(T0))
        first.start()
        record = first.create(request("sleep", "9"), "alice")
        self.assertIs(record.status, JobStatus.RUNNING)
        first._store.close()  # SIGKILLed: nothing more written
        again = self.manager(FakeProcessReactor(T0 - HOUR))
        self.addCleanup(again.close)
        [closed] = again.recover()
        self.assertIs(closed.status, JobStatus.FAILED)
        self.assertGreaterEqual(closed.ended_at, record.started_at)

    def test_queuedStopNotBeforeItsCreation(self) -> None:
        reactor = FakeProcessReactor(T0)
        manager = self.manager(reactor, maxRunning=1)
        self.addCleanup(manager.close)
        manager.start()
        manager.create(request("sleep", "9"), "alice")
        queued = manager.create(request("sleep", "9"), "alice")
        self.assertIs(queued.status, JobStatus.PENDING)
        reactor.rightNow -= HOUR
        stopped = self.successResultOf(manager.stop(queued.id, "alice"))
        self.assertGreaterEqual(stopped.ended_at, stopped.created_at)


class JobProcessCase(JobProcessTestCase):
    """test_process's case, its job made with options."""

    def jobWith(self, **options: Any) -> JobProcess:
        job = self.another(**options)
        self.protocol = JobProcessProtocol(job)
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        return job


class StopMissedThenCrashTests(JobProcessCase):
    def test_liveAndRecoveredAgree(self) -> None:
        job = self.jobWith(endsBy=lambda pid, signum: True)  # TERM would end it
        saved: list[JobRecord] = []
        job.onStop = lambda record: saved.append(copy.deepcopy(record))
        job.stop("alice")
        # It exited 0 on its own as the TERM came; a leftover holds the pipes.
        self.protocol.processExited(processExit(0))
        self.clock.advance(10)  # (its end is stored a moment on)
        stored = saved[-1]
        self.assertIs(stored.status, JobStatus.RUNNING)
        recovered = LocalExecutor._recoveredEnd(stored)
        self.killer.exists = False
        self.protocol.processEnded(processExit(0))
        live = (self.record.status, self.record.exit_code)
        self.assertEqual(live, (JobStatus.COMPLETED, 0))
        self.assertEqual((recovered[0], recovered[1]), live)


class LongTimeoutTextTests(JobProcessCase):
    def timedOut(self, timeout: float) -> str | None:
        self.jobWith(timeout=timeout)
        self.clock.advance(timeout)
        self.clock.advance(5.0)
        self.killer.exists = False
        self.protocol.processExited(processKilled(signal.SIGKILL))
        self.protocol.processEnded(processKilled(signal.SIGKILL))
        self.assertIs(self.record.status, JobStatus.FAILED)
        return self.record.error

    def test_whole(self) -> None:
        self.assertEqual(self.timedOut(1234567), "timed out after 1234567 seconds")

    def test_fraction(self) -> None:
        self.assertEqual(self.timedOut(0.25), "timed out after 0.25 seconds")


class SlurmHiccupTests(SlurmCase):
    def test_completedWithoutItsCodeIsCompleted(self) -> None:
        record = self.submit("true")
        self.poll({"101": state("RUNNING")})
        self.commands.failExits = SlurmError("squeue: Resource temporarily unavailable")
        self.poll({"101": replace(state("COMPLETED"), exitCode=None)})
        final = self.manager.record(record.id)
        self.assertEqual(
            (final.status, final.exit_code, final.error),
            (JobStatus.COMPLETED, 0, None),
        )

    def test_failedWithoutItsCodeStaysFailed(self) -> None:
        record = self.submit("false")
        self.poll({"101": state("RUNNING")})
        self.commands.failExits = SlurmError("squeue: Resource temporarily unavailable")
        self.poll({"101": replace(state("FAILED"), exitCode=None)})
        final = self.manager.record(record.id)
        self.assertEqual((final.status, final.exit_code), (JobStatus.FAILED, None))

    def test_stopSentWhileSqueueFails(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})

        async def failing(jobId: str) -> SlurmState | None:
            raise SlurmError("squeue: Resource temporarily unavailable")

        self.commands.stateOf = failing  # type: ignore[method-assign]
        stopped = self.manager.stop(record.id, "alice", StopRequest(grace=30.0))
        self.assertNoResult(stopped)
        self.assertEqual(self.commands.signals, [("101", "TERM")])

    def test_stopRefusedWhileSlurmUnreachable(self) -> None:
        """Unreachable is a 503 still (nothing could be sent)."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})

        async def unreachable(jobId: str) -> SlurmState | None:
            raise SlurmError("squeue: Unable to contact slurm controller", True)

        self.commands.stateOf = unreachable  # type: ignore[method-assign]
        self.failureResultOf(self.manager.stop(record.id, "alice"), ServiceUnavailable)
        self.assertEqual(self.commands.signals, [])


class ContentEncodingTests(RawRequests):
    """A body sent with a C{Content-Encoding} (gzip) was read as plain JSON
    (the code review's unverified item, checked): a 415 now, before
    anything is read of it."""

    async def test_gzipRefused(self) -> None:
        body = b'{"command":"true"}'
        server = LiveServer(self)
        code, headers, answer = await deferToThread(
            exchange,
            server.port,
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body,
        )
        self.assertEqual((code, headers.get("content-type")), (415, "application/json"))
        self.assertIn("Content-Encoding", json.loads(answer)["error"])
        self.assertEqual(server.manager.page()[0], [])

    async def test_identityTaken(self) -> None:
        server = LiveServer(self)
        code, _headers, answer = await deferToThread(
            exchange,
            server.port,
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Encoding: identity\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(code, 200, answer)
