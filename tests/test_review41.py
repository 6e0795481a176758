"""
Defects found by the forty-first session's rounds and the notes of the last
ones, each reproduced here before it was mended.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import socket
import sqlite3
import ssl
import time
from typing import Any
from unittest import mock

import bcrypt
import treq
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.address import IPv6Address
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from jobworker import __version__
from jobworker.auth.audit import AuditLog
from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.throttle import LoginThrottle
from jobworker.auth.tokens import TokenSigner
from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase
from jobworker.errors import JobworkerError, TooManyRequests, Unauthorized
from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.process import (
    CHILD_OOM_NOTE,
    OOM_ERROR,
    OOM_MAYBE_ERROR,
    STOP_MISSED_WITHIN,
    JobProcessProtocol,
)
from jobworker.jobs.manager import COPY_MARK, RETRY_FIRST
from jobworker.jobs.records import JobRecord, JobStatus, memoryKilled
from jobworker.jobs.schema import MIGRATIONS, SCHEMA_VERSION
from jobworker.jobs.store import JobStore
from jobworker.jobs.validation import JobRequest
from jobworker.metrics import Metrics
from jobworker.server import connections
from jobworker.server.selfcert import ensureServerCertificate
from jobworker.server.services import UsersReloadService

from . import test_identity, test_process
from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill, processExit
from .support import CA, LiveServer, RecordingAuthenticator, sleep
from .test_limits import requireCgroups
from .test_mtls import certificateOf
from .test_review39 import closedWithin, readAll, tlsTo


def samples(text: str, name: str) -> dict[str, float]:
    """The series of metric C{name} in exposition C{text}: labels -> value."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            found[series[len(name) :]] = float(value)
    return found


async def metricsText(server: LiveServer, token: str | None = None) -> str:
    """C{GET /metrics} of C{server}, as ada (with her C{token}, if given:
    tokens are issued one a second after a burst)."""
    if token is None:
        code, issued = await server.json("POST", "/tokens", "ada")
        assert code == 201, issued
        token = issued["token"]
    response = await server.http.get(
        server.url + "/metrics",
        headers={b"authorization": [f"Bearer {token}".encode()]},
    )
    assert response.code == 200, response.code
    return (await treq.content(response)).decode()


async def leftThenCounted(
    server: LiveServer, path: str, series: str, answered: bool
) -> str:
    """
    C{GET path} as alice on a connection of its own, left (closed) after
    its answer began (C{answered}) or before; then the metrics once
    C{jobworker_http_requests_total} has C{series} (or after 5 s).
    """
    credentials = base64.b64encode(b"alice:alice-pass")

    def left() -> None:
        sock = tlsTo(server.port)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\n".encode()
            + b"Host: localhost\r\nAuthorization: Basic "
            + credentials
            + b"\r\n\r\n"
        )
        if answered:
            sock.recv(12)
        time.sleep(0.3 if answered else 0.5)
        sock.close()

    await deferToThread(left)
    _, issued = await server.json("POST", "/tokens", "ada")
    for _ in range(100):
        text = await metricsText(server, issued["token"])
        if series in samples(text, "jobworker_http_requests_total"):
            break
        await sleep(0.05)
    return text


class MemoryKilledSaidTests(SynchronousTestCase):
    """Which job errors say the memory limit killed a process of the job."""

    def test_errors(self) -> None:
        for error in (
            OOM_ERROR,
            OOM_MAYBE_ERROR,
            CHILD_OOM_NOTE,
            f"exited with code 2: {CHILD_OOM_NOTE}",
            f"killed by signal SIGTERM: {CHILD_OOM_NOTE}",
            "out of memory (Slurm): exited with code 1",
        ):
            self.assertTrue(memoryKilled(error), error)
        for error in (
            None,
            "exited with code 1",
            # (A command's name is the user's: a job named so is no kill.)
            "command not found: out of memory",
        ):
            self.assertFalse(memoryKilled(error), error)


class OperatorSeriesTests(SynchronousTestCase):
    """
    What an alert could not follow (operator round 40, left then): jobs the
    memory limit killed, output dropped past --max-log-bytes or lost to the
    disk, the room left in the state directory, a store refusing writes
    (/healthz alone said it).
    """

    def record(self, **fields: Any) -> JobRecord:
        return JobRecord(
            id="j1", command="true", args=[], owner="alice", created_at=0.0, **fields
        )

    def test_endedJobs(self) -> None:
        metrics = Metrics()
        metrics.jobRecordEnded(
            self.record(
                status=JobStatus.COMPLETED,
                stdout_bytes=10,
                stdout_dropped=5,
                stderr_dropped=7,
                output_lost=3,
                error=CHILD_OOM_NOTE,
            )
        )
        metrics.jobRecordEnded(
            self.record(status=JobStatus.FAILED, error="exited with code 1")
        )
        text = metrics.render().decode()
        self.assertEqual(
            samples(text, "jobworker_output_dropped_bytes_total"),
            {'{stream="stdout"}': 5.0, '{stream="stderr"}': 7.0},
        )
        self.assertEqual(samples(text, "jobworker_output_lost_bytes_total"), {"": 3.0})
        self.assertEqual(samples(text, "jobworker_jobs_memory_killed_total"), {"": 1.0})
        self.assertEqual(
            samples(text, "jobworker_jobs_ended_total"),
            {'{status="COMPLETED"}': 1.0, '{status="FAILED"}': 1.0},
        )

    def test_stateFolder(self) -> None:
        folder = self.mktemp()
        os.mkdir(folder)
        refusing = [False]
        metrics = Metrics()
        metrics.watchStateFolder(lambda: refusing[0], folder)
        text = metrics.render().decode()
        self.assertEqual(samples(text, "jobworker_store_refusing_writes"), {"": 0.0})
        room = os.statvfs(folder)
        [free] = samples(text, "jobworker_state_dir_free_bytes").values()
        # (Other writers on this machine move it a little between reads.)
        self.assertAlmostEqual(free, room.f_bavail * room.f_frsize, delta=256 << 20)
        [inodes] = samples(text, "jobworker_state_dir_free_inodes").values()
        self.assertGreater(inodes, 0)
        refusing[0] = True
        text = metrics.render().decode()
        self.assertEqual(samples(text, "jobworker_store_refusing_writes"), {"": 1.0})
        # A folder gone: no reading of its room (a 0 would say it is full).
        os.rmdir(folder)
        text = metrics.render().decode()
        self.assertEqual(samples(text, "jobworker_state_dir_free_bytes"), {})
        self.assertEqual(samples(text, "jobworker_store_refusing_writes"), {"": 1.0})


class OperatorSeriesLiveTests(TestCase):
    """The same series from a running server's jobs."""

    async def test_droppedOutput(self) -> None:
        server = LiveServer(self, "--max-log-bytes=4096")
        job = await server.createJob("sh", "-c", "head -c 10000 /dev/zero; echo x >&2")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        text = await metricsText(server)
        self.assertEqual(
            samples(text, "jobworker_output_dropped_bytes_total"),
            {'{stream="stdout"}': 10000.0 - 4096, '{stream="stderr"}': 0.0},
        )
        self.assertEqual(samples(text, "jobworker_jobs_memory_killed_total"), {"": 0.0})
        self.assertEqual(samples(text, "jobworker_store_refusing_writes"), {"": 0.0})
        [free] = samples(text, "jobworker_state_dir_free_bytes").values()
        self.assertGreater(free, 0)

    async def test_memoryKilled(self) -> None:
        requireCgroups()
        server = LiveServer(self)
        job = await server.createJob(
            "python3",
            "-c",
            "x = bytearray(512 << 20)",
            limits={"memory_bytes": 48 << 20},
        )
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "FAILED")
        text = await metricsText(server)
        self.assertEqual(samples(text, "jobworker_jobs_memory_killed_total"), {"": 1.0})


class StoreRefusingSeriesTests(SynchronousTestCase):
    """C{jobworker_store_refusing_writes} follows a real store another
    program locks, then lets go (what /healthz says: fault round 9)."""

    def test_lockedThenFree(self) -> None:
        forbidRealKill(self.patch)
        reactor = FakeProcessReactor()
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        path = os.path.join(stateDir, "jobs.sqlite3")
        metrics = Metrics()
        manager = localJobManager(
            reactor, stateDir, 5.0, GroupKiller(), store=JobStore(path), metrics=metrics
        )
        self.addCleanup(manager.close)

        def refusing() -> dict[str, float]:
            return samples(metrics.render().decode(), "jobworker_store_refusing_writes")

        self.assertEqual(refusing(), {"": 0.0})
        other = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        self.assertRaises(
            JobworkerError, manager.create, JobRequest("true", [], {}, None), "alice"
        )
        self.assertEqual(refusing(), {"": 1.0})
        other.execute("ROLLBACK")
        reactor.advance(RETRY_FIRST * 3)
        self.assertEqual(refusing(), {"": 0.0})
        self.flushLoggedErrors()


class MigrationSaidTests(SynchronousTestCase):
    """
    An upgrade migrated the store and nothing said so: the older server
    then refused the file, and the log did not say why (operator round 40).
    """

    def opened(self, version: int, path: str) -> list[str]:
        db = sqlite3.connect(path, isolation_level=None)
        for migrate in MIGRATIONS[:version]:
            migrate(db)
        db.execute(f"PRAGMA user_version = {version}")
        db.close()
        said: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "jobworker.jobs.store":
                said.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        try:
            JobStore(path).close()
        finally:
            globalLogPublisher.removeObserver(observer)
        return said

    def test_migrated(self) -> None:
        path = self.mktemp()
        said = self.opened(SCHEMA_VERSION - 2, path)
        self.assertEqual(
            [line for line in said if "migrated" in line],
            [
                f"{path}: the job store was migrated from "
                f"schema version {SCHEMA_VERSION - 2} to {SCHEMA_VERSION}; an "
                "older jobworker cannot open it now (a copy made before the "
                "upgrade can)"
            ],
        )

    def test_newOrCurrent(self) -> None:
        """A new store, or one of this version, is not said migrated."""
        self.assertEqual(
            [
                line
                for line in self.opened(SCHEMA_VERSION, self.mktemp())
                if "migrated" in line
            ],
            [],
        )
        path = self.mktemp()
        said: list[str] = []
        globalLogPublisher.addObserver(said.append)
        try:
            JobStore(path).close()
        finally:
            globalLogPublisher.removeObserver(said.append)
        self.assertEqual(
            [e for e in said if "migrated" in str(e.get("log_format"))], []
        )


class DrainTests(TestCase):
    """
    An upgrade stopped every running job (a restart does), and nothing let
    an operator wait for them to end first: no drain mode (operator round
    40, left then). An Admin's C{POST /drain} takes no new job and starts
    no queued one while the running ones go on; C{GET /drain?wait=N} answers
    once none runs; C{DELETE /drain} ends it.
    """

    def audit(self, server: LiveServer) -> list[tuple[str, str, str]]:
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [
            (e["event"], e["user"], e["result"])
            for e in entries
            if e["event"].startswith("server.")
        ]

    async def test_drain(self) -> None:
        server = LiveServer(self, "--max-running=1")
        code, state = await server.json("GET", "/drain", "ada")
        self.assertEqual(
            (code, state),
            (
                200,
                {
                    "draining": False,
                    "since": None,
                    "by": None,
                    "reason": None,
                    "running": 0,
                    "queued": 0,
                },
            ),
        )
        running = await server.createJob(
            "sh", "-c", "read line; echo $line", stdin=True
        )
        queued = await server.createJob("true")
        self.assertEqual(queued["status"], "PENDING")
        code, state = await server.json("POST", "/drain", "ada")
        self.assertEqual(code, 200, state)
        self.assertEqual(
            (state["draining"], state["by"], state["running"], state["queued"]),
            (True, "ada", 1, 1),
        )
        since = state["since"]
        self.assertTrue(since.endswith("Z"), since)
        # Again: the first drain's name and time stay.
        code, again = await server.json("POST", "/drain", "ada")
        self.assertEqual((code, again["since"]), (200, since))
        # No new job.
        response = await server.request("POST", "/jobs", body={"command": "true"})
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"60"])
        body = json.loads(await treq.content(response))
        self.assertIn("the server is draining", body["error"])
        # Said where a balancer looks, and in the metrics.
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual(health["status"], "degraded")
        self.assertEqual(
            health["drain"], "draining: no new job is taken; 1 running, 1 queued"
        )
        text = await metricsText(server)
        self.assertEqual(samples(text, "jobworker_draining"), {"": 1.0})
        # A wait that ends before the job does answers as it is then.
        code, state = await server.json("GET", "/drain?wait=0.2", "ada")
        self.assertEqual((code, state["running"]), (200, 1))
        # The running job goes on; a wait is answered once it ends, and the
        # queued one has not started.
        waiting = server.json("GET", "/drain?wait=30", "ada")
        self.assertEqual(
            await server.sendStdin(running["id"], b"on\n"), (200, mock.ANY)
        )
        code, state = await waiting
        self.assertEqual(
            (code, state["draining"], state["running"], state["queued"]),
            (200, True, 0, 1),
        )
        ended = await server.waitEnded(running["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        code, job = await server.json("GET", f"/jobs/{queued['id']}", "ada")
        self.assertEqual(job["status"], "PENDING")
        # Ended: the queued job starts, new ones are taken.
        code, state = await server.json("DELETE", "/drain", "ada")
        self.assertEqual((code, state["draining"], state["since"]), (200, False, None))
        self.assertEqual((await server.waitEnded(queued["id"]))["status"], "COMPLETED")
        await server.createJob("true")
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual(health, {"status": "ok"})
        self.assertEqual(
            self.audit(server),
            [
                ("server.drain", "ada", "started"),
                ("server.drain", "ada", "already"),
                ("server.resume", "ada", "ended"),
            ],
        )

    async def test_onlyAdmins(self) -> None:
        server = LiveServer(self)
        for method in ("GET", "POST", "DELETE"):
            for user in ("alice", "bob", "rita"):
                code, body = await server.json(method, "/drain", user)
                self.assertEqual(code, 403, (method, user, body))
                self.assertIn("server.drain", body["error"])
            code, body = await server.json(method, "/drain", None)
            self.assertEqual(code, 401, (method, body))
        code, state = await server.json("GET", "/drain", "ada")
        self.assertFalse(state["draining"])
        code, body = await server.json("GET", "/drain?wait=x", "ada")
        self.assertEqual(code, 400, body)
        code, body = await server.json("GET", "/drain?other=1", "ada")
        self.assertEqual(code, 400, body)


class ThrottledRefusalGivesWayTests(TestCase):
    """
    Code review 41: a client the login throttle holds is answered 429 only
    after about as long as a password check (so that the refusal tells
    nothing); meanwhile its request was "being checked", and its
    connection was spared at --max-connections. Eight connections looping
    made-up Basic credentials held every slot of such a server, no account
    needed. A request whose refusal is decided gives way.
    """

    timeout = 60

    async def test_givesWay(self) -> None:
        self.patch(connections, "EVICT_SILENT", 0.3)

        likeACheck = Authenticator._likeACheck

        async def likeALongCheck(self: Authenticator, *args: Any) -> None:
            # (As a check of 20 s would take: the refusals held for long.)
            await likeACheck(self, *args)
            await sleep(20)

        self.patch(Authenticator, "_likeACheck", likeALongCheck)
        server = LiveServer(
            self,
            "--max-connections=3",
            "--max-connections-per-client=64",
            "--login-failures=2",
        )
        code, issued = await server.json("POST", "/tokens", "alice")
        self.assertEqual(code, 201)
        bearer = {b"authorization": [f"Bearer {issued['token']}".encode()]}
        guess = b"Authorization: Basic " + base64.b64encode(b"mallory:guess")
        request = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n" + guess + b"\r\n\r\n"
        for _ in range(2):
            sock = await deferToThread(tlsTo, server.port)
            self.addCleanup(sock.close)
            sock.sendall(request)
            answer = await deferToThread(readAll, sock, b"}")
            self.assertTrue(answer.startswith(b"HTTP/1.1 401"), answer)
            sock.close()
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        held = []
        for _ in range(3):
            sock = await deferToThread(tlsTo, server.port)
            self.addCleanup(sock.close)
            sock.sendall(request)
            held.append(sock)
        await sleep(0.6)
        response = await server.http.get(server.url + "/whoami", headers=bearer)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await treq.content(response))["user"], "alice")
        closed = [await deferToThread(closedWithin, sock, 0.2) for sock in held]
        self.assertIn(True, closed)


def bodyOnItsWay(
    port: int, authorization: bytes | None, certificate: tuple[str, str] | None = None
) -> ssl.SSLSocket:
    """A POST /jobs whose headers are in and whose body's rest is to come."""
    raw = socket.create_connection(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=CA)
    if certificate is not None:
        context.load_cert_chain(*certificate)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.settimeout(20)
    head = b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
    if authorization is not None:
        head += b"Authorization: " + authorization + b"\r\n"
    sock.sendall(
        head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    return sock


class VouchedBodiesCountedTests(TestCase):
    """
    Attacker round 41: a body on its way whose credentials look good (a
    valid token) was spared at --max-connections, and counted against
    --max-connections-per-user only once a handler ran, after the body:
    one Reader's slow bodies held every slot. And a client certificate
    vouched whatever its name: one of no user (a removed user's: there is
    no CRL) held every slot the same. Such a body is the named user's
    connection from its headers on (a 429 past the cap), and a
    certificate vouches only for a user of the users file.
    """

    timeout = 60

    async def test_tokenBodiesCapped(self) -> None:
        self.patch(connections, "EVICT_SILENT", 0.3)
        server = LiveServer(
            self,
            "--max-connections=3",
            "--max-connections-per-client=64",
            "--max-connections-per-user=1",
        )
        code, issued = await server.json("POST", "/tokens", "rita")
        self.assertEqual(code, 201)
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        token = f"Bearer {issued['token']}".encode()
        held = []
        for _ in range(3):
            sock = await deferToThread(bodyOnItsWay, server.port, token)
            self.addCleanup(sock.close)
            held.append(sock)
        await sleep(0.6)
        answers = [await deferToThread(readAll, sock, b"}") for sock in held[1:]]
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        for answer in answers:
            self.assertTrue(answer.startswith(b"HTTP/1.1 429"), answer)
            self.assertIn(b"the most one user may", answer)

    async def test_unknownCertificate(self) -> None:
        self.patch(connections, "EVICT_SILENT", 0.3)
        server = LiveServer(
            self,
            "--max-connections=3",
            "--max-connections-per-client=64",
            f"--client-ca={CA}",
        )
        await server.http._agent._pool.closeCachedConnections()  # type: ignore[attr-defined]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nobody")])
        nobody = certificateOf(self.mktemp(), "nobody", subject)
        held = []
        for _ in range(3):
            sock = await deferToThread(bodyOnItsWay, server.port, None, nobody)
            self.addCleanup(sock.close)
            held.append(sock)
        await sleep(0.6)
        code, body = await server.json("GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        closed = [await deferToThread(closedWithin, sock, 0.2) for sock in held]
        self.assertIn(True, closed)


class MadeUpTokensNotGuessesTests(SynchronousTestCase):
    """
    Attacker round 41: made-up bearer tokens (one HMAC each, no bcrypt)
    from a new /64 every time counted as failed logins of the /48: one as
    soon as the /48's delay ended kept it held, and every untrusted
    password login of the /48 was refused (17 of 17), no password guessed.
    A refused token or certificate is no password guess: the /48 does not
    count it (its own /64, as before).
    """

    def test_madeUpTokens(self) -> None:
        clock = Clock()
        clock.advance(1_000_000)
        throttle = LoginThrottle(clock)
        users = UserDatabase.fromText(
            "bob:Developer:"
            + bcrypt.hashpw(b"bob-pass", bcrypt.gensalt(4)).decode("ascii")
            + "\n"
        )
        authenticator = Authenticator(
            makePortal(users, lambda f, *a: maybeDeferred(f, *a)),
            throttle=throttle,
            tokens=TokenSigner(b"k" * 32, clock, 3600.0),
        )

        def attempt(address: str, authorization: bytes) -> Any:
            request = DummyRequest([b"whoami"])
            request.client = IPv6Address("TCP", address, 4321)
            request.requestHeaders.setRawHeaders(b"authorization", [authorization])
            return ensureDeferred(authenticator.authenticate(request))

        for n in range(200):
            d = attempt(f"2001:db8:0:{n + 1:x}::1", b"Bearer jw1.made.up")
            self.failureResultOf(d, Unauthorized, TooManyRequests)
            clock.advance(0.05)
        # Bob, his right password, from a /64 of the /48 he never used.
        bob = b"Basic " + base64.b64encode(b"bob:bob-pass")
        user = self.successResultOf(attempt("2001:db8:0:ffff::1", bob))
        self.assertEqual(user.name, "bob")

    def test_passwordGuessesStillCounted(self) -> None:
        """Wrong passwords from the /48's /64s still hold it (round 40)."""
        clock = Clock()
        clock.advance(1_000_000)
        throttle = LoginThrottle(clock)
        for n in range(60):
            throttle.failed(f"x{n}", f"2001:db8:0:{n // 4 + 1:x}::1")
        self.assertGreater(throttle.retryAfter("bob", "2001:db8:0:ffff::1"), 0)


class ServedCertificateDatesTests(TestCase):
    """
    Fault round 41: the server certificate the server's own CA signs
    started five minutes back: made while the clock was ten minutes
    ahead, every client refused it once the clock was right, and
    C{/healthz} said "ok" to a probe that does not check certificates. It
    starts two days back, as the CA; one served out of its dates makes
    C{/healthz} degraded.
    """

    def test_leafBackdated(self) -> None:
        own = ensureServerCertificate(os.path.abspath(self.mktemp()), ["localhost"])
        with open(own.cert, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
        now = datetime.datetime.now(datetime.UTC)
        self.assertLess(leaf.not_valid_before_utc, now - datetime.timedelta(days=1))

    async def test_notYetValidSaid(self) -> None:
        folder = os.path.abspath(self.mktemp())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        cert, key = certificateOf(folder, "ahead", subject, notBefore=3600.0)
        server = LiveServer(self, f"--cert={cert}", f"--key={key}")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def probe() -> dict[str, Any]:
            # (As a balancer's probe that checks no certificate.)
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                with context.wrap_socket(raw) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    answer = readAll(sock, b"}")
            body = answer.split(b"\r\n\r\n", 1)[1]
            if b"\r\n" in body.strip():  # (chunked)
                body = body.split(b"\r\n")[1]
            result: dict[str, Any] = json.loads(body)
            return result

        health = await deferToThread(probe)
        self.assertEqual(health["status"], "degraded")
        self.assertIn("the TLS certificate served is not valid until", health["reload"])


class StopIgnoredForAnInstantTests(test_process.JobProcessTestCase):
    """
    Attacker from inside a job, round 41: a command that ignored TERM for
    the instant the stop's (or its timeout's) signal came, then took its
    default back and exited 0 seconds later, was taken for one that exited
    on its own as the stop came (the looks on each side of the signal saw
    TERM fatal): COMPLETED, the stop or timeout unsaid, its after_ok
    dependents run. An end read more than L{STOP_MISSED_WITHIN} after the
    signal is the stop's.
    """

    def test_stopped(self) -> None:
        job = self.another(endsBy=lambda pid, signum: True)
        self.protocol = JobProcessProtocol(job)
        self.start()
        job.stop("alice")
        self.clock.advance(STOP_MISSED_WITHIN + 0.5)
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(
            (self.record.status, self.record.stopped_by, self.record.exit_code),
            (JobStatus.STOPPED, "alice", 0),
        )

    def test_timedOut(self) -> None:
        job = self.another(timeout=1.0, endsBy=lambda pid, signum: True)
        self.transport.exited = lambda: False
        self.protocol = JobProcessProtocol(job)
        self.start()
        self.clock.advance(1.0)
        self.assertEqual(self.killer.signalsTo(test_process.PID), [signal.SIGTERM])
        self.clock.advance(STOP_MISSED_WITHIN + 0.5)
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(
            (self.record.status, self.record.error),
            (JobStatus.FAILED, "timed out after 1 second"),
        )

    def test_anEndAsTheSignalCameStands(self) -> None:
        """(Control: read at once, it is still its own end.)"""
        job = self.another(endsBy=lambda pid, signum: True)
        self.protocol = JobProcessProtocol(job)
        self.start()
        job.stop("alice")
        self.clock.advance(0.05)
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(
            (self.record.status, self.record.stopped_by), (JobStatus.COMPLETED, None)
        )


class StartedDrainingTests(TestCase):
    """
    Operator round 41: nothing let a server start without starting its
    queued jobs (a restored backup tried beside the live server ran them a
    second time). C{--drain} starts it draining.
    """

    async def test_drainOption(self) -> None:
        server = LiveServer(self, "--drain")
        code, state = await server.json("GET", "/drain", "ada")
        self.assertEqual(
            (code, state["draining"], state["by"], state["reason"]),
            (200, True, "jobworker", "the server was started with --drain"),
        )
        code, body = await server.json("POST", "/jobs", body={"command": "true"})
        self.assertEqual(code, 503, body)
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual(health["status"], "degraded")
        self.assertIn("the server was started with --drain", health["drain"])
        code, state = await server.json("DELETE", "/drain", "ada")
        self.assertEqual((code, state["draining"], state["reason"]), (200, False, None))
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        # Audited as an Admin's drain is (the log showed a resume of no
        # drain: session review 41).
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        self.assertEqual(
            [
                (e["event"], e["user"], e["result"], e.get("reason"))
                for e in entries
                if e["event"].startswith("server.")
            ],
            [
                (
                    "server.drain",
                    None,
                    "started",
                    "the server was started with --drain",
                ),
                ("server.resume", "ada", "ended", None),
            ],
        )

    async def test_copyNotedDrainsEachStart(self) -> None:
        """
        Session review 41: a copy of a live server's state dir drained at
        its first start alone; that start closed the records that told it,
        and the next ran the live server's queued jobs. The mark stays in
        the state dir until an Admin ends the drain.
        """
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        with open(os.path.join(stateDir, COPY_MARK), "w") as f:
            f.write("this state dir is a copy of a live jobworker's (pid 1)\n")
        server = LiveServer(self, "--drain", stateDir=stateDir)
        _, state = await server.json("GET", "/drain", "ada")
        self.assertEqual(
            state["reason"],
            "the server was started with --drain; this state dir is a copy of a "
            "live jobworker's (pid 1)",
        )
        await server.json("DELETE", "/drain", "ada")
        self.assertFalse(os.path.exists(os.path.join(stateDir, COPY_MARK)))


class LeftRequestsCountedTests(TestCase):
    """
    Code review 41: a long poll (C{?wait=}) whose client left was never
    counted in C{jobworker_http_requests_total} nor its latency (only a
    finished answer was). Counted as C{499}, once.
    """

    async def test_leftLongPoll(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("sleep", "30")
        series = '{code="499",method="GET",route="/jobs/{id}"}'
        text = await leftThenCounted(
            server, f"/jobs/{job['id']}?wait=20", series, answered=False
        )
        counted = samples(text, "jobworker_http_requests_total").get(series)
        self.assertEqual(counted, 1.0)
        latency = samples(text, "jobworker_http_request_seconds_count")
        self.assertEqual(latency['{method="GET",route="/jobs/{id}"}'], 1.0)
        await server.json("POST", f"/jobs/{job['id']}/stop")


class LeftoversGoneSlotFreedTests(TestCase):
    """
    A job that left a process (C{sleep 60 &}), which went on the TERM of
    the job's end, held its running slot (and its uid, and the shutdown)
    to the end of its grace: a minute with --stop-grace 60 (found timing
    the suite, session 41). It is done with once nothing of it is left.
    """

    serverOptions: tuple[str, ...] = ()

    async def test_slotFreed(self) -> None:
        server = LiveServer(self, "--max-running=1", grace=60)
        left = await server.createJob("sh", "-c", "sleep 60 & echo $!")
        ended = await server.waitEnded(left["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        after = await server.createJob("true")
        # (Queued behind the slot the leftover held: it runs once it is
        # given back, long before the grace's minute.)
        self.assertEqual(
            (await server.waitEnded(after["id"], timeout=10))["status"], "COMPLETED"
        )


class LeftoversGoneSlotFreedWithoutCgroupsTests(LeftoversGoneSlotFreedTests):
    serverOptions = ("--cgroups=off",)


class EndsSaidWithWhyTests(TestCase):
    """
    Operator round 41: the server's log said a job "ended FAILED (exit
    None, signal None)" and never why (a command not found, a timeout, the
    memory limit: in the store alone, gone with the job); a queued job that
    ended without running (its dependency failed) had no line at all; a
    queued job's line read "queued: queued: ...".
    """

    async def test_said(self) -> None:
        said: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            text = formatEvent(event)
            if text:
                said.append(text)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        server = LiveServer(self)
        missing = await server.createJob("no-such-command-41")
        await server.waitEnded(missing["id"])
        # (Queued while the first runs; and one made after its end fails
        # at once, said too.)
        first = await server.createJob("sh", "-c", "sleep 0.5; exit 3")
        after = await server.createJob("true", after_ok=[first["id"]])
        self.assertEqual((await server.waitEnded(after["id"]))["status"], "FAILED")
        late = await server.createJob("true", after_ok=[first["id"]])
        self.assertEqual(late["status"], "FAILED")
        [line] = [s for s in said if f"job {late['id']} of alice ended FAILED" in s]
        self.assertIn("without running: ", line)
        [line] = [s for s in said if f"job {missing['id']} ended FAILED" in s]
        self.assertIn("not found", line)
        [line] = [s for s in said if f"queued job {after['id']}" in s]
        self.assertIn("ended FAILED without running: ", line)
        self.assertIn(first["id"], line)
        self.assertEqual([s for s in said if "queued: queued:" in s], [])
        self.assertNotEqual([s for s in said if f"job {after['id']} of alice" in s], [])


class UsersReloadChangesSaidTests(TestCase):
    """
    Operator round 41: a reload that removed or demoted a user said only
    "reloaded: N users", and the audit log nothing. Who was added, removed,
    given another role, password or account is said in the log line and in
    a C{users.reload} audit event.
    """

    async def test_said(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "users")
        lines = dict(
            line.split(":", 1) for line in DEVELOPMENT_USERS.splitlines() if line
        )

        def write(text: dict[str, str]) -> None:
            with open(path, "w") as f:
                f.write("".join(f"{name}:{rest}\n" for name, rest in text.items()))
            os.chmod(path, 0o600)

        write(lines)
        audit = AuditLog(os.path.join(folder, "audit.log"), Clock())
        self.addCleanup(audit.close)
        authenticator = RecordingAuthenticator()
        authenticator.users = UserDatabase.fromFile(path)
        service = UsersReloadService(
            path,
            authenticator,
            reactor,
            audit=audit,  # type: ignore[arg-type]
        )
        said: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            said.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        await service.reload()
        changed = dict(lines)
        del changed["bob"]
        changed["rita"] = changed["rita"].replace("Reader:", "Developer:", 1)
        role = changed["ada"].split(":", 1)[0]
        changed["ada"] = f"{role}:" + bcrypt.hashpw(b"new", bcrypt.gensalt(4)).decode()
        changed["carol"] = changed["alice"]
        write(changed)
        await service.reload()
        [first, second] = [s for s in said if "reloaded:" in s]
        self.assertTrue(first.endswith("reloaded: 4 users, none changed"), first)
        self.assertTrue(
            second.endswith(
                "reloaded: 4 users (added: carol; removed: bob; role: rita: "
                "Reader -> Developer; password: ada)"
            ),
            second,
        )
        with open(os.path.join(folder, "audit.log")) as f:
            [entry] = [json.loads(line) for line in f]
        self.assertEqual(
            (entry["event"], entry["added"], entry["removed"], entry["role"]),
            ("users.reload", ["carol"], ["bob"], ["rita: Reader -> Developer"]),
        )
        self.assertEqual(entry["password"], ["ada"])


class MonitorRoleTests(TestCase):
    """
    Operator round 41: only an Admin could read C{/metrics}, so a scraper's
    credentials could run commands, stop any job and read every user's
    output. A Monitor reads the metrics and nothing else.
    """

    async def test_metricsOnly(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        users = os.path.join(folder, "users")
        hashed = bcrypt.hashpw(b"prom-pass", bcrypt.gensalt(4)).decode()
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS + f"prom:Monitor:{hashed}\n")
        os.chmod(users, 0o600)
        server = LiveServer(self, f"--users={users}")
        job = await server.createJob("sleep", "30")
        prom = {b"authorization": [b"Basic " + base64.b64encode(b"prom:prom-pass")]}

        async def asked(method: str, path: str, body: Any = None) -> int:
            response = await server.http.request(
                method,
                server.url + path,
                headers={**prom, b"content-type": [b"application/json"]},
                data=None if body is None else json.dumps(body).encode(),
            )
            await treq.content(response)
            return int(response.code)

        self.assertEqual(await asked("GET", "/metrics"), 200)
        for method, path, body in (
            ("GET", "/jobs", None),
            ("GET", f"/jobs/{job['id']}", None),
            ("GET", f"/jobs/{job['id']}/logs", None),
            ("POST", "/jobs", {"command": "true"}),
            ("POST", f"/jobs/{job['id']}/stop", None),
            ("POST", "/tokens", None),
            ("GET", "/drain", None),
            ("GET", "/whoami", None),
        ):
            self.assertEqual(await asked(method, path, body), 403, (method, path))
        self.assertEqual(
            (await server.json("GET", f"/jobs/{job['id']}", "ada"))[1]["status"],
            "RUNNING",
        )
        await server.json("POST", f"/jobs/{job['id']}/stop")


class QueuedStartAuditedTests(TestCase):
    """
    Operator round 41: a queued job's C{job.create} line says C{run_as}
    null (it has no identity yet), and nothing else outside the store said
    which identity it ran as: gone with the record at --retain. Its start
    is a C{job.start} audit line, and a log line, with its C{run_as}.
    """

    async def test_audited(self) -> None:
        server = LiveServer(self, "--max-running=1")
        first = await server.createJob("sleep", "0.3")
        queued = await server.createJob("true")
        self.assertEqual(queued["status"], "PENDING")
        ended = await server.waitEnded(queued["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        [start] = [e for e in entries if e["event"] == "job.start"]
        self.assertEqual(
            (start["job"], start["user"], start["client"], start["run_as"]),
            (queued["id"], "alice", "server", ended["run_as"]),
        )
        self.assertIsNotNone(ended["run_as"])
        self.assertGreater(start["waited_seconds"], 0)
        self.assertNotIn(
            first["id"], [e.get("job") for e in entries if e["event"] == "job.start"]
        )


class SpawnerDeathSaidTests(TestCase):
    """
    Operator round 41: the job spawner killed (the OOM killer, an
    operator's kill) took its running jobs with it, and C{/healthz} said
    "ok" (the log alone told). It says so for a while.
    """

    async def test_said(self) -> None:
        test_identity.requireRoot()
        server = LiveServer(self)
        job = await server.createJob("sleep", "30")
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        if spawner is None or spawner.current is None:
            raise SkipTest("this server starts jobs without the spawner")
        os.kill(spawner.current.pid, signal.SIGKILL)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "FAILED")
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual(
            (code, health["status"], health.get("executor")),
            (200, "degraded", "local"),
        )
        self.assertIn(
            "the job spawner died: its 1 running job(s) were killed", health["reason"]
        )
        # A new one takes jobs meanwhile.
        again = await server.createJob("true")
        self.assertEqual((await server.waitEnded(again["id"]))["status"], "COMPLETED")


class RefusalsCountedTests(TestCase):
    """
    Operator round 41: a full queue, a user's full queue and the creation
    rate were all one 429 of C{POST /jobs} in the metrics, with no line in
    the log: which limit to raise was anyone's guess. Counted by reason.
    """

    async def test_counted(self) -> None:
        server = LiveServer(self, "--max-running=1", "--max-queued=1")
        first = await server.createJob("sleep", "30")
        await server.createJob("true")
        code, _ = await server.json("POST", "/jobs", body={"command": "true"})
        self.assertEqual(code, 429)
        await server.json("POST", "/drain", "ada")
        code, _ = await server.json("POST", "/jobs", body={"command": "true"})
        self.assertEqual(code, 503)
        text = await metricsText(server)
        self.assertEqual(
            samples(text, "jobworker_jobs_refused_total"),
            {
                '{reason="queue_full"}': 1.0,
                '{reason="user_queue_full"}': 0.0,
                '{reason="create_rate"}': 0.0,
                '{reason="draining"}': 1.0,
                '{reason="shutting_down"}': 0.0,
            },
        )
        await server.json("DELETE", "/drain", "ada")
        await server.json("POST", f"/jobs/{first['id']}/stop")


class SessionReview41Tests(TestCase):
    """The session review's other findings on this session's changes."""

    async def test_leftFollowCounted(self) -> None:
        """A follow whose client left was counted 200 (its producer is
        stopped, and the request finished, before it is told): 499."""
        server = LiveServer(self)
        job = await server.createJob("sleep", "30")
        series = '{code="499",method="GET",route="/jobs/{id}/logs"}'
        text = await leftThenCounted(
            server, f"/jobs/{job['id']}/logs?follow=true", series, answered=True
        )
        counted = samples(text, "jobworker_http_requests_total")
        self.assertEqual(counted.get(series), 1.0, counted)
        self.assertNotIn('{code="200",method="GET",route="/jobs/{id}/logs"}', counted)
        await server.json("POST", f"/jobs/{job['id']}/stop")

    async def test_drainRouteAndRefusalSeries(self) -> None:
        """/drain had the route label C{other}; the refusals' series came
        only with the first refusal (an alert missed it)."""
        server = LiveServer(self)
        await server.json("GET", "/drain", "ada")
        text = await metricsText(server)
        self.assertEqual(
            samples(text, "jobworker_http_requests_total").get(
                '{code="200",method="GET",route="/drain"}'
            ),
            1.0,
        )
        self.assertEqual(
            samples(text, "jobworker_jobs_refused_total"),
            {
                f'{{reason="{reason}"}}': 0.0
                for reason in (
                    "queue_full",
                    "user_queue_full",
                    "create_rate",
                    "draining",
                    "shutting_down",
                )
            },
        )

    async def test_drainWaitRevoked(self) -> None:
        """A users reload that demotes the Admin waiting on GET /drain?wait=
        answers the wait at once, 401 (it ran its whole wait)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        users = os.path.join(folder, "users")
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS)
        os.chmod(users, 0o600)
        server = LiveServer(self, f"--users={users}")
        job = await server.createJob("sleep", "30")
        await server.json("POST", "/drain", "ada")
        started = time.monotonic()
        waiting = ensureDeferred(server.json("GET", "/drain?wait=20", "ada"))
        await sleep(0.3)
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS.replace("ada:Admin:", "ada:Reader:"))
        reloader = next(s for s in server.service if isinstance(s, UsersReloadService))
        await reloader.reload()
        code, body = await waiting
        self.assertEqual(code, 403, body)
        self.assertIn("access revoked", body["error"])
        self.assertLess(time.monotonic() - started, 10)
        server.manager.resume("test")
        await server.json("POST", f"/jobs/{job['id']}/stop")


class VersionSaidTests(TestCase):
    """Operator round 41: no line said which build runs (its version
    was 0.1.0 whatever ran). The start says it."""

    def test_said(self) -> None:
        said: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            said.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        LiveServer(self)
        self.assertIn(f"jobworker {__version__} starting", said)
        self.assertNotEqual(__version__, "0.1.0")
