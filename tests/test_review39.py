"""
Defects found in the thirty-ninth session's rounds (and left by earlier
ones), each reproduced here before its fix.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.auth.users import UserDatabase
from jobworker.client.streams import Streams
from jobworker.client.verbs import doIds
from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.stalls import abortFuseOf
from jobworker.jobs import removal
from jobworker.jobs import spool as spool_module
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.recovery import (
    groupTakenOver,
    killUid,
    processesOf,
    sessionMembers,
)
from jobworker.jobs.removal import ASIDE, AsideRemoval
from jobworker.jobs.spool import OutputSpool, OutputTrouble
from jobworker.server import connections, unread

from . import (
    test_cli_round6,
    test_identity,
    test_mtls,
    test_queue,
    test_review38,
    test_twistd,
)
from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import CA, CERT, JW, LiveServer, sleep, smallTmpfs, writePEM
from .test_auditflood import audit
from .test_prompt import converse
from .test_review31 import THREAD_EXIT


class ThreadCalls:
    """
    A reactor's C{callFromThread}, as a deterministic test sees it: each
    call is kept until the test runs it, on the test's thread.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))

    def runAll(self) -> int:
        """Run what the thread handed over; how many."""
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
        return len(calls)


def filledFolder(path: str, files: int) -> None:
    """C{path}, made, with C{files} files and a folder of them."""
    os.makedirs(os.path.join(path, "sub"), exist_ok=True)
    for i in range(files):
        with open(os.path.join(path, "sub" if i % 2 else "", f"f{i}"), "w") as f:
            f.write("x")


class OutputRemovedAsideTests(SynchronousTestCase):
    """
    Known since Slurm user round 38: a deleted job's output folder of
    150,000 files (a Slurm job's folder is its account's to fill) was
    removed on the reactor's thread, holding every request and every job's
    pipes while it went. It is renamed aside there (one system call), and
    removed by a thread of its own; a stop leaves the rest to the next
    start.
    """

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.threadCalls = ThreadCalls()
        self.removal = AsideRemoval(self.threadCalls)
        #: Each removal waits for this before it starts, and says when done.
        self.go = threading.Event()
        self.begun = threading.Event()
        self.done = threading.Semaphore(0)
        self.removedOn: list[str] = []
        real = removal.removeTree

        def held(path: str) -> None:
            self.removedOn.append(threading.current_thread().name)
            self.begun.set()
            if threading.current_thread() is not threading.main_thread():
                self.assertTrue(self.go.wait(30))
            try:
                real(path)
            finally:
                self.done.release()

        self.patch(removal, "removeTree", held)

    def manager(self) -> Any:
        manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            self.killer,
            policy=JobPolicy(),
            outputRemoval=self.removal,
        )
        self.addCleanup(manager.close)
        self.addCleanup(self.go.set)
        return manager

    def finished(self) -> None:
        """Let the thread go, and wait for its removal."""
        self.go.set()
        self.assertTrue(self.done.acquire(timeout=30))

    def endedJob(self, files: int) -> tuple[Any, Any, str]:
        """A manager, an ended job of it, and its output folder of C{files}."""
        manager = self.manager()
        record = manager.create(test_queue.ManagerQueueTests.request(self), "alice")
        test_queue.ManagerQueueTests.end(self, manager, record.id)
        folder = manager._executor.outputDir(record.id)
        filledFolder(folder, files)
        return manager, record, folder

    def test_deleteLeavesTheRemovalToAThread(self) -> None:
        manager, record, folder = self.endedJob(200)
        aside = os.path.join(os.path.dirname(folder), ASIDE + record.id)
        reserveAgain: list[bool] = []
        self.patch(manager, "_reserveAgain", lambda: reserveAgain.append(True))
        self.removal.removed = manager._reserveAgain

        manager.delete(record.id)
        # Gone for every request at once; its files still there, aside,
        # while the reactor's thread goes on.
        self.assertFalse(os.path.lexists(folder))
        self.assertEqual(len(os.listdir(os.path.join(aside, "sub"))), 100)
        self.assertTrue(self.begun.wait(30))
        self.assertEqual(self.removedOn, ["jobworker-output-removal"])

        self.finished()
        self.assertFalse(os.path.lexists(aside))
        reserveAgain.clear()
        self.assertEqual(self.threadCalls.runAll(), 1)
        self.assertEqual(reserveAgain, [True])

    def test_leftAsideRemovedAtTheStart(self) -> None:
        """What a stop left aside is removed when the server starts again."""
        manager = self.manager()
        jobs = os.path.dirname(manager._executor.outputDir("x"))
        left = os.path.join(jobs, ASIDE + "0123")
        filledFolder(left, 10)
        kept = os.path.join(jobs, "kept")
        os.makedirs(kept)
        manager.start()
        self.finished()
        self.assertFalse(os.path.lexists(left))
        self.assertTrue(os.path.isdir(kept))

    def test_noThreadRemovedHere(self) -> None:
        """A thread that cannot be started (C{pids.max}): removed here, now."""
        manager, record, folder = self.endedJob(20)

        def noThread(thread: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        self.patch(threading.Thread, "start", noThread)
        manager.delete(record.id)
        self.assertEqual(self.removedOn, ["MainThread"])
        self.assertEqual(os.listdir(os.path.dirname(folder)), [])


class RevokedCertificateOnAKeptConnectionTests(TestCase):
    """
    Attacker round 39: a client certificate that stopped letting in while
    its connection was kept (its CA removed from C{--client-ca}, or its
    end passed) was refused at each request with a line of the audit log,
    never throttled, the connection kept: 5,000 lines (1 MB) in 3 s of one
    connection, a GB an hour. The connection is closed once the first
    refusal is answered, and the refusal audited once a minute.
    """

    timeout = 60
    secondCA = test_mtls.KeptConnectionTests.secondCA
    kept = test_mtls.KeptConnectionTests.kept
    ask = test_mtls.KeptConnectionTests.ask

    async def test_closedAndAuditedOnce(self) -> None:
        server, http, removeCA = self.secondCA()
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        await removeCA()
        response = await http.get(server.url + "/whoami")
        await treq.content(response)
        self.assertEqual(response.code, 401)
        # The next request needs a new connection, whose handshake the
        # server refuses: the kept one is closed.
        failure = await ensureDeferred(
            self.ask(http, server, "GET", "/whoami")
        ).addErrback(lambda f: f.value)
        self.assertIsInstance(failure, Exception, repr(failure))
        [line] = [
            line
            for line in audit(server, "auth.failure")
            if "not signed by a CA" in line.get("reason", "")
        ]
        self.assertEqual(line["user"], "alice")


#: A job's leftover: it leaves the job's session, says its pid, lets go of
#: the job's pipes, and ends its first thread (C{SYS_exit}) while another
#: sleeps on: C{/proc/PID/stat} reads C{Z} as it runs.
LEADER_ENDS = f"""
import ctypes, os, threading, time
if os.fork() == 0:
    os.setsid()
    threading.Thread(target=time.sleep, args=(120,)).start()
    os.write(1, b"%d\\n" % os.getpid())
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    ctypes.CDLL(None).syscall({THREAD_EXIT}, 0)
time.sleep(1)
"""


#: The same, its one live thread starting another and ending, over and over.
LEADER_ENDS_THREADS_CHURN = LEADER_ENDS.replace(
    "threading.Thread(target=time.sleep, args=(120,)).start()",
    "def churn():\n        threading.Thread(target=churn).start()\n"
    "    threading.Thread(target=churn).start()",
)


def threadsRunning(pid: int) -> bool:
    """Does a thread of C{pid} run (not a zombie's)?"""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            return True
    return False


def requireThreadExit() -> None:
    if THREAD_EXIT is None:
        raise SkipTest(f"SYS_exit's number is not known on {os.uname().machine}")


class LeaderThreadEndedTests(SynchronousTestCase):
    """
    Attacker round 39 from inside a job: a process whose first thread
    ended with C{SYS_exit} reads C{Z} in C{/proc/PID/stat} while its other
    threads run on. Every scan for what a uid or a job left took it for
    gone: without cgroups, its dynamic uid went to another user's job while
    it ran (it lowered that job's C{RLIMIT_CPU}: killed after 1 s), and a
    restart's recovery left it; the FUSE abort of round 38 found none of
    its tables. Looked at thread by thread.
    """

    def started(self, script: str = LEADER_ENDS) -> int:
        requireThreadExit()
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        self.addCleanup(child.wait)
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        self.addCleanup(os.kill, pid, signal.SIGKILL)
        for _ in range(200):
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        else:
            self.fail("its first thread never ended")
        self.assertTrue(threadsRunning(pid))
        return pid

    def test_foundByUid(self) -> None:
        pid = self.started()
        self.assertIn(pid, processesOf(os.geteuid()))

    def test_foundWhileItsThreadsComeAndGo(self) -> None:
        """Its only live thread starts another and ends, over and over:
        found at every scan (its threads listed one by one missed it one
        scan in nine: the verifier of round 39)."""
        pid = self.started(LEADER_ENDS_THREADS_CHURN)
        uid = os.geteuid()
        missed = sum(pid not in processesOf(uid) for _ in range(300))
        self.assertEqual(missed, 0)

    def test_foundBySession(self) -> None:
        pid = self.started()
        self.assertIn(pid, sessionMembers().get(pid, []))

    def test_holdsItsGroup(self) -> None:
        pid = self.started()
        self.assertTrue(groupTakenOver(pid, os.geteuid() + 1))

    def test_fuseTablesOfItsThreads(self) -> None:
        """Its first thread has no mount table now: its others are read."""
        proc, connections = test_review38.FuseAbortedTests.tables(self)  # type: ignore[arg-type]
        os.makedirs(os.path.join(proc, "1300", "task", "1300"))
        os.makedirs(os.path.join(proc, "1300", "task", "1301"))
        os.rename(
            os.path.join(proc, "1234", "mountinfo"),
            os.path.join(proc, "1300", "task", "1301", "mountinfo"),
        )
        said = abortFuseOf([1300], proc=proc, connections=connections)
        self.assertEqual(said, [45, 47, 48])


class DetachedFuseTests(SynchronousTestCase):
    """
    Attacker round 39b from inside a job: a FUSE file system the job
    detached (C{umount2(MNT_DETACH)}) after mapping a file of it is in no
    mount table while its connection lives: the abort found nothing, and
    the server's write to the job's stdin waited in the kernel for good.
    The devices of the files the job maps are its connections too.
    """

    def test_mappedDeviceAborted(self) -> None:
        proc, connections = test_review38.FuseAbortedTests.tables(self)  # type: ignore[arg-type]
        os.makedirs(os.path.join(proc, "1400", "task", "1400"))
        os.makedirs(os.path.join(proc, "1400", "task", "1401"))
        with open(os.path.join(proc, "1400", "task", "1401", "maps"), "w") as f:
            f.write(
                "55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1311 /usr/bin/python3\n"
                "7f00c0000000-7f00c0021000 rw-p 00000000 00:00 0\n"
                "7f00c1000000-7f00c1001000 rw-s 00000000 00:2f 7 /m/f (deleted)\n"
                "7f00c2000000-7f00c2001000 rw-s 00000000 00:2e 9 /host/f\n"
                "7f00c3000000-7f00c3001000 rw-s 00000000 00:31 4 /tmp/x\n"
            )
        said = abortFuseOf([1400], proc=proc, connections=connections)
        # 0x2f: the job's own; 0x2e (46) the host's, never; 0x31: no FUSE
        # connection (a tmpfs, say): nothing to abort.
        self.assertEqual(said, [47])


class LeaderThreadEndedLeftoverTests(TestCase):
    """
    The same through a server without cgroups and a pool of one uid: the
    leftover is gone before its uid is handed out again.
    """

    timeout = 60
    afterTheFirst = test_identity.DynamicIdentityTests.afterTheFirst

    async def test_goneBeforeTheUidIsReused(self) -> None:
        test_identity.requireRoot()
        requireThreadExit()
        uid = 74390
        server = LiveServer(self, "--cgroups=off", f"--dynamic-uids={uid}-{uid}")
        first = await server.createJob("python3", "-c", LEADER_ENDS)
        await server.waitEnded(first["id"])
        pid = int(await test_identity.output(server, first["id"]))
        self.addCleanup(subprocess.run, ["kill", "-9", str(pid)], check=False)
        second = await self.afterTheFirst(server, first, {"command": "true"})
        self.assertEqual(second["run_as"], f"dynamic:{uid}")
        self.assertFalse(threadsRunning(pid), "the uid was handed out again")
        await server.waitEnded(second["id"])


def silentFor(
    port: int, seconds: float, handshake: bool = False, said: bytes = b""
) -> bytes | None:
    """
    Connect and say nothing (after a TLS handshake, if C{handshake}, and
    C{said}); what the connection reads within C{seconds}: C{b""} once the
    server closed it, None if it kept it.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        if handshake:
            context = ssl.create_default_context(cafile=CA)
            sock = context.wrap_socket(sock, server_hostname="localhost")
            sock.sendall(said)
        sock.settimeout(seconds)
        try:
            return sock.recv(1)
        except TimeoutError:
            return None
        except (ssl.SSLError, ConnectionResetError):
            return b""
    finally:
        sock.close()


class SilentConnectionsTests(TestCase):
    """
    Attacker round 39: a connection that sent nothing (no TLS handshake,
    or no request after it) was kept for the idle timeout, a minute:
    --header-timeout ran from a request's first byte. Bare connects from
    17 addresses held every connection the server takes, and every other
    client was refused, tokens and certificates included. The first
    request's headers are due within --header-timeout of the accept; at
    the server's cap a new connection takes the place of the one idle
    longest.
    """

    timeout = 60

    async def test_silentSocketClosed(self) -> None:
        server = LiveServer(self, "--header-timeout=1")
        self.assertEqual(await deferToThread(silentFor, server.port, 10.0), b"")

    async def test_silentAfterTheHandshakeClosed(self) -> None:
        server = LiveServer(self, "--header-timeout=1")
        closed = await deferToThread(silentFor, server.port, 10.0, True)
        self.assertEqual(closed, b"")

    async def test_blankLineIsNoRequest(self) -> None:
        """A blank line (Twisted takes one after a request) is no first
        request: the connection is closed all the same (session review)."""
        server = LiveServer(self, "--header-timeout=1")
        closed = await deferToThread(silentFor, server.port, 10.0, True, b"\r\n")
        self.assertEqual(closed, b"")

    async def test_idleGivesWayAtTheCap(self) -> None:
        """Two slots held by silent sockets: a request gets one of them; a
        request in progress (a follower) is never the one closed."""
        self.patch(connections, "EVICT_IDLE", 0.2)
        server = LiveServer(
            self, "--max-connections=2", "--max-connections-per-client=64"
        )
        job = await server.createJob("sh", "-c", "echo up; sleep 30")
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        await server.http.get(server.url + "/whoami")  # (the pool's closed)
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        follower = await server.request(
            "GET", f"/jobs/{job['id']}/logs?follow=true&stream=stdout"
        )
        self.assertEqual(follower.code, 200)
        silent = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(silent.close)
        await sleep(0.5)
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        silent.settimeout(5)
        self.assertEqual(await deferToThread(silent.recv, 1), b"")
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertIn(code, (200, 202), stopped)
        self.assertEqual(await treq.content(follower), b"up\n")


def unreadAnswers(port: int, count: int, authorization: str) -> list[bytes]:
    """
    C{count} TLS connections, each asking for the list of jobs and reading
    its status line only (a small receive buffer: the rest stays with the
    server); their status lines. The connections are kept open.
    """
    context = ssl.create_default_context(cafile=CA)
    lines, kept = [], []
    for _ in range(count):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port))
        sock = context.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(
            b"GET /jobs?limit=1000 HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: " + authorization.encode() + b"\r\n\r\n"
        )
        sock.settimeout(10)
        lines.append(sock.recv(12))
        kept.append(sock)
        time.sleep(0.2)  # (the rest of its answer written meanwhile)
    unreadAnswers.kept = kept  # type: ignore[attr-defined]
    return lines


class UnreadListPagesTests(TestCase):
    """
    Attacker round 39: a Reader who asked for a page of jobs (up to 4 MiB)
    and never read it held it in the server's memory for 75 s, and asked
    again on another connection: 400 connections held 1.7 GB. A user's
    large answers their clients have not read are bounded: past the bound,
    a large one is a 429 until they are read.
    """

    timeout = 60

    async def test_boundedPerUser(self) -> None:
        self.patch(unread, "UNREAD_PER_USER", 300 << 10)
        self.patch(unread, "COUNTED", 16 << 10)
        server = LiveServer(self)
        for n in range(12):
            await server.createJob("true", f"{n}" + "x" * 8000)
        code, page = await server.json("GET", "/jobs?limit=1000")
        self.assertEqual(code, 200)
        self.assertEqual(len(page["jobs"]), 12)
        token = "Basic " + base64.b64encode(b"alice:alice-pass").decode()
        lines = await deferToThread(unreadAnswers, server.port, 8, token)
        kept = unreadAnswers.kept  # type: ignore[attr-defined]
        self.addCleanup(lambda: [s.close() for s in kept])
        self.assertEqual(lines[0], b"HTTP/1.1 200")
        self.assertIn(b"HTTP/1.1 429", lines)
        # Small answers go on; a large one waits for the unread ones.
        code, body = await server.json("GET", "/jobs?limit=1")
        self.assertEqual(code, 200, body)
        code, body = await server.json("GET", "/jobs?limit=1000")
        self.assertEqual(code, 429, body)
        self.assertIn("not read", body["error"])
        for sock in kept:
            sock.close()
        for _ in range(100):
            code, body = await server.json("GET", "/jobs?limit=1000")
            if code == 200:
                break
            await sleep(0.1)
        self.assertEqual(code, 200, body)


class ContractRoundTests(TestCase):
    """
    Contract round 39: where the document, the audit log, /metrics and the
    server disagreed.
    """

    timeout = 60

    async def test_integralPriority(self) -> None:
        """C{-1.0} is the integer -1 (JSON has one number type), as a
        limit's C{64.0} is 64: it was a 400."""
        server = LiveServer(self)
        job = await server.createJob("true", priority=-1.0)
        self.assertEqual(job["priority"], -1)
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "priority": -1.5}
        )
        self.assertEqual(code, 400, body)

    async def test_refusedPermissionAudited(self) -> None:
        """A Developer's priority raise names jobs.prioritize (it named the
        route's jobs.create); a token's POST /tokens names tokens.create."""
        server = LiveServer(self)
        code, body = await server.json(
            "POST", "/jobs", "bob", {"command": "true", "priority": 5}
        )
        self.assertEqual(code, 403, body)
        code, issued = await server.json("POST", "/tokens", "ada")
        self.assertEqual(code, 201, issued)
        response = await server.request(
            "POST",
            "/tokens",
            None,
            headers={b"authorization": [f"Bearer {issued['token']}".encode()]},
        )
        await treq.content(response)
        self.assertEqual(response.code, 403)
        lines = audit(server, "access.denied")
        self.assertEqual(
            [(line["user"], line.get("permission")) for line in lines],
            [("bob", "jobs.prioritize"), ("ada", "tokens.create")],
        )

    async def test_cleanNamesItsAge(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        await sleep(1.1)
        code, body = await server.json("DELETE", "/jobs?older_than_seconds=1")
        self.assertEqual((code, body["deleted"]), (200, 1), body)
        [line] = audit(server, "job.clean")
        self.assertEqual(line["older_than_seconds"], 1)

    async def test_metricsAsDocumented(self) -> None:
        """The text format 0.0.4, as the document says and as it is
        written (the header followed the library: 1.0.0); no C{_created}
        series (named nowhere)."""
        server = LiveServer(self)
        response = await server.request("GET", "/metrics", "ada")
        text = (await treq.content(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        self.assertIn("jobworker_", text)
        self.assertNotIn("_created", text)

    def test_createdJobLinks(self) -> None:
        """A created job links to its other operations (the contract run's
        stateful phase reached stop and stdin with random ids only)."""
        with open(
            os.path.join(
                os.path.dirname(removal.__file__), "..", "data", "openapi.json"
            )
        ) as f:
            document = json.load(f)
        links = document["paths"]["/jobs"]["post"]["responses"]["201"]["links"]
        self.assertEqual(
            {link["operationId"] for link in links.values()},
            {"getJob", "getJobStatus", "stopJob", "writeStdin", "jobLogs", "deleteJob"},
        )
        operations = {
            operation["operationId"]
            for methods in document["paths"].values()
            for operation in methods.values()
        }
        for link in links.values():
            self.assertIn(link["operationId"], operations)


class OutputLostSaidTests(TestCase):
    """
    Fault round 39: with the state dir's disk full, running jobs lost their
    output (counted, logged once a job) while C{/healthz} said C{ok}, until
    a store write happened to fail too. A job's output that could not be
    written keeps it degraded for 30 s, with why.
    """

    timeout = 60

    def test_toldOfFailedWritesOnly(self) -> None:
        clock = Clock()
        trouble = OutputTrouble(clock)
        path = os.path.abspath(self.mktemp())
        spool = OutputSpool(path, clock=clock, trouble=trouble)
        spool.write(b"kept\n")
        self.assertIsNone(trouble.recent())
        full = os.open("/dev/full", os.O_WRONLY)
        os.close(spool._fd)  # type: ignore[arg-type]
        spool._fd = full
        self.addCleanup(spool.close)
        spool.write(b"lost\n")
        self.assertEqual(spool.lost, 5)
        self.assertEqual(
            trouble.recent(), "job output is being lost: No space left on device"
        )
        clock.advance(spool_module.OUTPUT_TROUBLE_FOR - 1)
        self.assertIsNotNone(trouble.recent())
        clock.advance(1)
        self.assertIsNone(trouble.recent())

    async def test_fullStateDir(self) -> None:
        self.patch(spool_module, "OUTPUT_TROUBLE_FOR", 2.0)
        disk = smallTmpfs(self, "12m")
        server = LiveServer(self, stateDir=os.path.join(disk, "state"))
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual((code, health["status"]), (200, "ok"), health)
        job = await server.createJob("sh", "-c", "head -c 30000000 /dev/zero; sleep 1")
        ended = await server.waitEnded(job["id"])
        self.assertGreater(ended["output_lost"], 0, ended)
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual(health["status"], "degraded", health)
        self.assertIn("job output is being lost", health["reason"])
        code, body = await server.json("DELETE", f"/jobs/{job['id']}")
        self.assertEqual(code, 200, body)
        for _ in range(100):
            code, health = await server.json("GET", "/healthz", None)
            if health["status"] == "ok":
                break
            await sleep(0.1)
        self.assertEqual(health["status"], "ok", health)


class SpawnerNamedWithoutCgroupsTests(TestCase):
    """
    Code review 39: under C{--cgroups off} the start-up line said jobs were
    spawned by the server for each job; the spawner forks them, cgroups or
    not (as README says).
    """

    def test_theSpawnerNamed(self) -> None:
        test_identity.requireRoot()
        with capturedLogs() as events:
            LiveServer(self, "--cgroups=off")
        [line] = [
            formatEvent(e)
            for e in events
            if "sandboxed jobs start through" in (formatEvent(e) or "")
        ]
        self.assertIn(
            "forked ahead of each job by a long-lived copy, the spawner", line
        )
        self.assertNotIn("spawned by the server", line)


def tlsTo(port: int, rcvbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=CA)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.settimeout(20)
    return sock


def halfPosted(port: int, credentials: bytes) -> ssl.SSLSocket:
    """A POST /tokens of C{credentials} (Basic) whose body's last byte is
    still to come."""
    sock = tlsTo(port)
    sock.sendall(
        b"POST /tokens HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Basic " + credentials + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
    )
    return sock


def readAll(sock: ssl.SSLSocket, end: bytes | None = None) -> bytes:
    """What the connection brings until it is closed, or brings C{end}
    (past what a chunked answer may add), or 20 s pass."""
    data = b""
    while end is None or not data.rstrip(b"\r\n0").endswith(end.rstrip(b"\n")):
        try:
            piece = sock.recv(65536)
        except (OSError, ssl.SSLError):
            return data
        if not piece:
            return data
        data += piece
    return data


class EvictionSparesWorkInProgressTests(TestCase):
    """
    Session review 39: at --max-connections, a connection was taken for
    idle once its answer was handed to the transport (a slow reader's
    page was cut), and while its request's body was on its way (a pause
    inside a body, within --body-timeout, was aborted). Neither is closed
    to make room: a silent one is.
    """

    timeout = 60

    async def test_unreadAnswerAndHalfABody(self) -> None:
        self.patch(connections, "EVICT_IDLE", 0.3)
        server = LiveServer(
            self, "--max-connections=3", "--max-connections-per-client=64"
        )
        for n in range(60):
            await server.createJob("true", f"{n}" + "x" * 16000)
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        credentials = base64.b64encode(b"alice:alice-pass")
        reader = await deferToThread(tlsTo, server.port, 4096)
        self.addCleanup(reader.close)
        reader.sendall(
            b"GET /jobs?limit=1000 HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Basic " + credentials + b"\r\n\r\n"
        )
        head = await deferToThread(reader.recv, 12)
        self.assertEqual(head, b"HTTP/1.1 200")
        poster = await deferToThread(halfPosted, server.port, credentials)
        self.addCleanup(poster.close)
        silent = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(silent.close)
        await sleep(0.8)
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        self.assertTrue(await deferToThread(closedWithin, silent, 5.0))
        poster.sendall(b"}")
        answer = await deferToThread(poster.recv, 12)
        self.assertEqual(answer, b"HTTP/1.1 201")
        page = head + await deferToThread(readAll, reader, b"}\n")
        # (Whole: every job, and the end of its answer.)
        self.assertEqual(page.count(b'"command":"true"'), 60, page[-300:])
        self.assertTrue(page.rstrip(b"\r\n0").endswith(b"}"), page[-300:])


def closedWithin(sock: socket.socket, seconds: float) -> bool:
    """Does the server close (or reset) C{sock} within C{seconds}?"""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class FakeWrapper:
    def __init__(self, channel: FakeChannel) -> None:
        self.wrappedProtocol = channel


class FakeChannel:
    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.looks = 0

    def evictableFor(self) -> float:
        self.looks += 1
        return self.idle

    def spareable(self, after: float) -> bool:
        return False


class EvictionLooksTests(SynchronousTestCase):
    """
    Session review 39: each connect at the cap read every connection
    (0.5-0.9 ms with 1,024): a look that finds none idle is not made again
    for a second.
    """

    def test_lookAgainLater(self) -> None:
        clock = Clock()
        factory = connections.ConnectionsPerClient(None, 64, total=2, clock=clock)
        channels = [FakeChannel(0.0), FakeChannel(0.0)]
        for channel in channels:
            factory._hosts[FakeWrapper(channel)] = "h"  # type: ignore[index]
        self.assertIsNone(factory._anIdleOne())
        self.assertEqual([c.looks for c in channels], [1, 1])
        self.assertIsNone(factory._anIdleOne())
        self.assertEqual([c.looks for c in channels], [1, 1])
        clock.advance(connections.EVICT_LOOK_AGAIN)
        channels[1].idle = connections.EVICT_IDLE
        found = factory._anIdleOne()
        self.assertIs(found.wrappedProtocol, channels[1])  # type: ignore[union-attr]


class RemovalThreadGoesOnTests(SynchronousTestCase):
    """Session review 39: an error other than an C{OSError} ended the
    removal thread: every later deleted folder was left aside."""

    def test_goesOn(self) -> None:
        calls = ThreadCalls()
        remover = AsideRemoval(calls)
        real = removal.removeTree
        done = threading.Semaphore(0)
        seen: list[str] = []

        def flaky(path: str) -> None:
            seen.append(path)
            try:
                if len(seen) == 1:
                    raise MemoryError()
                real(path)
            finally:
                done.release()

        self.patch(removal, "removeTree", flaky)
        folders = []
        for name in ("one", "two"):
            path = os.path.join(os.path.abspath(self.mktemp()), name)
            filledFolder(path, 3)
            folders.append(path)
            remover.remove(path)
        for _ in folders:
            self.assertTrue(done.acquire(timeout=30))
        self.assertFalse(
            os.path.lexists(os.path.join(os.path.dirname(folders[1]), ASIDE + "two"))
        )
        self.assertTrue(
            os.path.lexists(os.path.join(os.path.dirname(folders[0]), ASIDE + "one"))
        )
        with capturedLogs() as events:
            self.assertEqual(calls.runAll(), 2)
        said = [e for e in events if "cannot remove" in (formatEvent(e) or "")]
        self.assertEqual(len(said), 1)


class NothingToLoseGivesWayTests(TestCase):
    """
    The verifier of round 39: no connection was ever idle 5 s when bare
    connects were renewed every 4 s, or when a body came a byte every 2 s
    with no credentials (held for --body-timeout): every slot was held,
    and every other client refused. At the cap, a connection with nothing
    to lose gives way, of the client that holds the most: one that never
    sent a request, or one whose body comes with no credentials (it can
    only be refused). A body with credentials is never cut.
    """

    timeout = 60

    async def test_uncredentialedBodyAndSilentSocket(self) -> None:
        self.patch(connections, "EVICT_SILENT", 0.3)
        server = LiveServer(
            self, "--max-connections=3", "--max-connections-per-client=64"
        )
        # (Credentials bcrypt took: a body with made-up ones gives way too,
        # attacker round 40, second wave.)
        await server.json("GET", "/whoami")
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        credentials = base64.b64encode(b"alice:alice-pass")
        poster = await deferToThread(halfPosted, server.port, credentials)
        self.addCleanup(poster.close)
        anonymous = await deferToThread(tlsTo, server.port)
        self.addCleanup(anonymous.close)
        anonymous.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        silent = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(silent.close)
        pool = server.http._agent._pool  # type: ignore[attr-defined]
        await sleep(0.6)
        # The oldest with nothing to lose: the body with no credentials.
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        self.assertTrue(await deferToThread(closedWithin, anonymous, 5.0))
        await pool.closeCachedConnections()
        another = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(another.close)
        await sleep(0.6)
        # Then the socket that never sent a request.
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        self.assertTrue(await deferToThread(closedWithin, silent, 5.0))
        poster.sendall(b"}")
        answer = await deferToThread(poster.recv, 12)
        self.assertEqual(answer, b"HTTP/1.1 201")


class CompletionIdsTests(SynchronousTestCase):
    """
    jw security round 39: bash's C{compgen -W} expands the words jw's
    C{_ids} prints, and a server's "id" of C{$(id)} ran as the user at a
    TAB. Only ids of a job id's form are printed.
    """

    def test_onlyJobIds(self) -> None:
        good = "3f2c1a9e-0b1d-4c5e-8f7a-9b0c1d2e3f4a"

        class Listing:
            async def listJobs(self, limit: int) -> tuple[list[Any], None]:
                return [{"id": "$(touch /tmp/owned)"}, {"id": good}, {"id": 7}], None

        out = io.BytesIO()
        streams = Streams(out=out, err=io.BytesIO(), inp=None)
        code = self.successResultOf(
            ensureDeferred(doIds(None, Listing(), streams, None))  # type: ignore[arg-type]
        )
        self.assertEqual((code, out.getvalue()), (0, good.encode() + b"\n"))


class UsersFileLinesTests(SynchronousTestCase):
    """
    Operator round 39: the users file's lines also ended at a form feed,
    NEL or U+2028: a line commented out with one in it was a live Admin
    (and grep '^mallory' found nothing). A line ends at a newline alone; a
    byte-order mark is taken away.
    """

    HASH = "$2b$04$" + "a" * 53

    def test_commentedOutStaysOut(self) -> None:
        for separator in ("\f", "\x85", "\u2028", "\v", "\x1c"):
            text = (
                f"alice:Developer:{self.HASH}\n"
                f"# old{separator}mallory:Admin:{self.HASH}\n"
            )
            users = UserDatabase.fromText(text)
            self.assertIsNone(users.lookup("mallory"), repr(separator))
            self.assertIsNotNone(users.lookup("alice"))

    def test_byteOrderMark(self) -> None:
        users = UserDatabase.fromText(f"\ufeffalice:Developer:{self.HASH}\r\n")
        self.assertIsNotNone(users.lookup("alice"))


class StateOfAnotherUserTests(SynchronousTestCase):
    """
    Operator round 39: a state dir, a store or a token key owned by
    another user than root or the server's was used without a word: its
    owner edited a queued job's command and account in the store, and it
    ran as that account at the next start (the users file and the keys of
    TLS were refused so already). Refused, in one line.
    """

    runTwistd = test_twistd.StartupErrorTests.runTwistd
    refused = test_twistd.StartupErrorTests.refused

    def setUp(self) -> None:
        test_identity.requireRoot()

    def test_stateDir(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state, mode=0o700)
        os.chown(state, 65534, 65534)
        line = self.refused(f"--state-dir={state}")
        self.assertIn("owned by uid 65534", line)
        self.assertEqual(os.listdir(state), [])

    def test_store(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state, mode=0o700)
        store = os.path.join(state, "jobs.sqlite3")
        open(store, "w").close()
        os.chown(store, 65534, 65534)
        self.assertIn("owned by uid 65534", self.refused(f"--state-dir={state}"))

    def test_tokenKey(self) -> None:
        key = os.path.join(os.path.abspath(self.mktemp()), "token.key")
        os.makedirs(os.path.dirname(key), mode=0o700)
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(key, 0o600)
        os.chown(key, 65534, 65534)
        line = self.refused(f"--token-key={key}")
        self.assertIn("owned by uid 65534", line)


#: A process that forks its successor and exits, over and over (a pid
#: listed is gone when looked at, its successor made after the listing),
#: each holding the pipe it was given (argv[1]): its end comes once none
#: is left.
HOPPER = """
import os, sys
os.write(int(sys.argv[1]), b"up")
while True:
    if os.fork():
        os._exit(0)
"""


def pipeEnds(fd: int, seconds: float) -> bool:
    """Does the pipe C{fd} reach its end (every writer gone) in time?"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready and os.read(fd, 4096) == b"":
            return True
    return False


class HopperKilledByUidTests(SynchronousTestCase):
    """
    Attacker round 39b from inside a job: without cgroups, a leftover
    forking successors as its job ended escaped the uid's scans of /proc
    (each pid gone when looked at), and its dynamic uid went to another
    user's job (5 runs of 5). Every process of the uid is killed at once
    (kill(-1) as the uid) before the scan.
    """

    def test_allAtOnce(self) -> None:
        test_identity.requireRoot()
        requireThreadExit()  # (a machine whose system call numbers are known)
        uid = 74392
        self.addCleanup(killUid, uid)
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        hopper = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                sys.executable,
                "-c",
                HOPPER,
                str(writeEnd),
            ],
            pass_fds=(writeEnd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(writeEnd)
        self.addCleanup(hopper.wait)
        self.assertEqual(os.read(readEnd, 2), b"up")
        self.assertFalse(pipeEnds(readEnd, 0.3))  # (hopping)
        self.assertTrue(killUid(uid))
        self.assertEqual(os.getresuid(), (0, 0, 0))  # (this thread root again)
        self.assertTrue(pipeEnds(readEnd, 5.0))

    def test_notRoot(self) -> None:
        self.assertFalse(killUid(0))


class DevelopmentCAWarnedTests(TestCase):
    """
    jw security round 39: jw login's trust on first use showed the public
    development CA's fingerprint like any other: kept, anyone with its
    published key could pose as the server (and take the password next).
    It says what that CA is.
    """

    timeout = 120

    async def test_warned(self) -> None:
        # A server whose chain is its certificate and the development CA.
        chain = os.path.abspath(self.mktemp())
        with open(CERT, "rb") as cert, open(CA, "rb") as ca:
            writePEM(chain, cert.read() + ca.read())
        server = LiveServer(self, f"--cert={chain}")
        env = test_cli_round6.isolated(self, JW_SERVER=server.url)
        code, seen = await deferToThread(
            converse, [JW, "login"], env, [(b"[y/N] ", b"n\n")]
        )
        self.assertIn(b"public development CA", seen)
        self.assertLess(seen.index(b"public development CA"), seen.index(b"[y/N]"))
        self.assertNotEqual(code, 0, seen)
