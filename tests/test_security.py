"""Login throttling, the audit log, and the per-client connection cap."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from typing import Any

import treq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived

from jobworker.auth.audit import AuditLog
from jobworker.auth.throttle import LoginThrottle
from jobworker.metrics import Metrics
from jobworker.server.api import AUDIT_COMMAND_CHARS
from jobworker.server.connections import ConnectionsPerClient
from jobworker.server.services import UsersReloadService

from .support import LiveServer, basic, sharedPath, waitUntil


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, threshold=3, maximum=8, window=100)

    def fail(self, times: int, user: str = "alice", address: str = "10.0.0.1") -> None:
        for _ in range(times):
            self.throttle.failed(user, address)

    def test_growingDelays(self) -> None:
        """From the threshold on, each failure doubles the wait, up to the cap."""
        self.fail(2)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)
        self.fail(1)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 1)
        self.fail(1)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 2)
        self.fail(5)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 8)
        self.clock.advance(8)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)

    def test_otherAddressUnaffected(self) -> None:
        """An attacker's failures never lock the user out from elsewhere."""
        self.fail(10, address="10.0.0.66")
        self.assertGreater(self.throttle.retryAfter("alice", "10.0.0.66"), 0)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)

    def test_addressWideForAnyUser(self) -> None:
        """Guessing many names from one address is throttled too."""
        for name in ("a", "b", "c"):
            self.throttle.failed(name, "10.0.0.9")
        self.assertGreater(self.throttle.retryAfter("d", "10.0.0.9"), 0)

    def test_forgottenAfterWindow(self) -> None:
        """Failures older than the window are forgotten."""
        self.fail(3)
        self.clock.advance(101)
        self.fail(1)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)

    def test_distributedGuessingThrottledPerUser(self) -> None:
        """
        One user's password guessed from many addresses: after 4 x threshold
        failures that user is throttled from new addresses, for at most
        C{userMaximum} seconds at a time.
        """
        for n in range(11):
            self.throttle.failed("alice", f"10.1.0.{n}")
        self.assertEqual(self.throttle.retryAfter("alice", "10.2.0.1"), 0)
        self.throttle.failed("alice", "10.1.0.99")
        self.assertGreater(self.throttle.retryAfter("alice", "10.2.0.1"), 0)
        for n in range(100):
            self.throttle.failed("alice", f"10.3.0.{n}")
        self.assertLessEqual(self.throttle.retryAfter("alice", "10.2.0.1"), 30)
        # Other users are not affected.
        self.assertEqual(self.throttle.retryAfter("bob", "10.2.0.1"), 0)

    def test_knownAddressNeverLockedOutByOthers(self) -> None:
        """Where alice logged in before, others' guessing never stops her."""
        self.throttle.succeeded("alice", "10.0.0.1")
        self.clock.advance(3600)
        for n in range(200):
            self.throttle.failed("alice", f"10.1.{n // 250}.{n % 250}")
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)
        self.assertGreater(self.throttle.retryAfter("alice", "10.9.9.9"), 0)

    def test_successClearsPairNotAddress(self) -> None:
        """
        A correct login clears that user's failures from that address, but
        not the address's: a valid account must not reset a guesser's count
        (which still holds back other users there; alice herself is now
        known at that address, so the address's count no longer stops her).
        """
        self.fail(2)
        self.throttle.succeeded("alice", "10.0.0.1")
        self.assertNotIn(("pair", "alice", "10.0.0.1"), self.throttle._entries)
        self.fail(1)
        self.assertEqual(self.throttle.retryAfter("bob", "10.0.0.1"), 1)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 0)


def pastTheCap(port: int, sources: list[str]) -> bytes | None:
    """
    Connect from each of C{sources} in turn and hold them; what the last one
    reads: C{b""} if the server closed it at once (past a cap of one fewer),
    None if it kept it open.
    """
    connections = [
        socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        for source in sources
    ]
    last = connections[-1]
    last.settimeout(5)
    try:
        closed: bytes | None = last.recv(1)
    except TimeoutError:
        closed = None
    for each in connections:
        each.close()
    return closed


class LiveSecurityTests(TestCase):
    async def test_bruteForceGets429(self) -> None:
        """Repeated wrong passwords from one address get 429 with Retry-After."""
        server = LiveServer(self, "--login-failures=3")
        codes = []
        for _ in range(4):
            if len(codes) == 2:
                thirdSent = time.monotonic()  # the third failure is after it
            response = await server.http.request(
                "GET", server.url + "/jobs", headers=basic("alice", "guess")
            )
            codes.append(response.code)
            retry = response.headers.getRawHeaders(b"retry-after")
            await treq.content(response)
            if len(codes) == 3:
                lastFailure = time.monotonic()
        if time.monotonic() - thirdSent >= 1.0:
            # So slow a machine that the second of refusal may be over: the
            # rule itself is tested on a fake clock (ThrottleTests).
            self.assertEqual(codes[:3], [401, 401, 401])
            self.assertIn(codes[3], (401, 429))
            return
        self.assertEqual(codes, [401, 401, 401, 429])
        self.assertEqual(retry, [b"1"])

        async def status() -> int:
            response = await server.request("GET", "/jobs", "alice")
            await treq.content(response)
            return int(response.code)

        async def letIn() -> bool:
            code = await status()
            self.assertIn(code, (200, 429))
            return code == 200

        # The right password is refused until the second has passed, then let in.
        first = await status()
        if time.monotonic() - thirdSent < 1.0:
            self.assertEqual(first, 429)
        await waitUntil(letIn, 5.0, "alice to be let in again")
        self.assertGreater(time.monotonic() - lastFailure, 0.8)

    async def test_auditLog(self) -> None:
        """Security events become JSON lines; no password or header in them."""
        server = LiveServer(self)
        job = await server.createJob("sleep", "30")
        await server.json("POST", f"/jobs/{job['id']}/stop", "bob")
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice")
        await server.json("DELETE", f"/jobs/{job['id']}", "alice")
        bad = await server.http.request(
            "GET", server.url + "/jobs", headers=basic("mallory", "hunter2-secret")
        )
        await treq.content(bad)
        path = os.path.join(server.stateDir, "audit.log")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            text = f.read()
        events = [json.loads(line) for line in text.splitlines()]
        summary = [(e["event"], e["user"], e["result"]) for e in events]
        self.assertEqual(
            summary,
            [
                ("job.create", "alice", "RUNNING"),
                ("access.denied", "bob", "refused"),
                ("job.stop", "alice", "requested"),
                ("job.delete", "alice", "ok"),
                ("auth.failure", "mallory", "refused"),
            ],
        )
        self.assertEqual({e["client"] for e in events}, {"127.0.0.1"})
        self.assertEqual(events[0]["job"], job["id"])
        for secret in ("hunter2-secret", "alice-pass", "bob-pass", "Basic "):
            self.assertNotIn(secret, text)

    async def test_createAuditsABoundedCommand(self) -> None:
        """
        job.create names at most AUDIT_COMMAND_CHARS of the command, with
        its length and SHA-256 when cut: a 32 KiB command that never runs
        wrote 32 KiB of audit log per create (19 MB in 10 s: attacker
        round 9). A short command is written whole, without them.
        """
        server = LiveServer(self)
        long = "/nonexistent/" + "A" * 30000
        code, _ = await server.json("POST", "/jobs", "alice", {"command": long})
        self.assertEqual(code, 201)
        await server.createJob("true")
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            text = f.read()
        cut, whole = [json.loads(line) for line in text.splitlines()]
        self.assertEqual(cut["command"], long[:AUDIT_COMMAND_CHARS])
        self.assertEqual(cut["command_chars"], len(long))
        self.assertEqual(
            cut["command_sha256"], hashlib.sha256(long.encode()).hexdigest()
        )
        self.assertLess(len(text), 2 * AUDIT_COMMAND_CHARS + 1000)
        self.assertEqual(whole["command"], "true")
        self.assertNotIn("command_chars", whole)

    async def test_cleanNamesItsJobs(self) -> None:
        """
        DELETE /jobs is audited with the ids of the jobs it deleted (an
        admin's wipe of everyone's jobs was one line with a count), and the
        event is documented.
        """
        server = LiveServer(self)
        jobs = [await server.createJob("true") for _ in range(3)]
        for job in jobs:
            await server.waitEnded(job["id"])
        code, body = await server.json("DELETE", "/jobs?owner=alice", "ada")
        self.assertEqual((code, body["deleted"]), (200, 3))
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            events = [json.loads(line) for line in f]
        [clean] = [e for e in events if e["event"] == "job.clean"]
        self.assertEqual(sorted(clean["jobs"]), sorted(job["id"] for job in jobs))
        self.assertEqual((clean["user"], clean["deleted"]), ("ada", 3))
        with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
            self.assertIn("`job.clean`", f.read())

    async def admittedAgain(self, server: LiveServer) -> None:
        """Once the server has seen them closed, the connections' slots come back."""

        async def admitted() -> bool:
            try:
                response = await server.request("GET", "/jobs", "alice")
            except ResponseNeverReceived:
                return False  # refused: the server has not seen the closes yet
            await treq.content(response)
            self.assertEqual(response.code, 200)
            return True

        await waitUntil(admitted, 5.0, "a connection to be admitted again")

    async def test_answersNotStored(self) -> None:
        """
        A job's output (raw, combined, SSE), its record and a listing say
        no cache may keep them: output may hold secrets, and a browser
        logged in with a client certificate kept it on disk (raw and
        combined answers said nothing; SSE said no-cache: attacker round 27).
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo DB_PASSWORD=hunter2")
        await server.waitEnded(job["id"])
        for path in (
            f"/jobs/{job['id']}/logs",
            f"/jobs/{job['id']}/logs?stream=stdout",
            f"/jobs/{job['id']}/logs?format=sse",
            f"/jobs/{job['id']}",
            "/jobs",
        ):
            response = await server.request("GET", path, "alice")
            await treq.content(response)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(
                response.headers.getRawHeaders(b"cache-control"), [b"no-store"], path
            )

    async def test_connectionsPerClient(self) -> None:
        """Past the per-client cap, new connections are closed at once."""
        server = LiveServer(self, "--max-connections-per-client=2")

        sources = ["127.0.0.1"] * 3
        self.assertEqual(await deferToThread(pastTheCap, server.port, sources), b"")
        await self.admittedAgain(server)

    async def test_loopbackIsOneClient(self) -> None:
        """
        Any local process (another user's job) may connect from any of
        127.0.0.0/8: all of it is one client for the cap, not 16 million
        (a job held every descriptor of the server so).
        """
        server = LiveServer(self, "--max-connections-per-client=2")
        sources = [f"127.0.5.{n}" for n in (1, 2, 3)]
        self.assertEqual(await deferToThread(pastTheCap, server.port, sources), b"")

    async def test_connectionsInAll(self) -> None:
        """
        Past --max-connections, whoever connects, a new connection is closed
        at once: clients from many addresses (each under its own cap) held
        every descriptor of the server, and then no job could start.
        """
        server = LiveServer(
            self, "--max-connections=2", "--max-connections-per-client=64"
        )
        sources = ["127.0.0.1"] * 3
        self.assertEqual(await deferToThread(pastTheCap, server.port, sources), b"")
        await self.admittedAgain(server)


class AuditFileTests(SynchronousTestCase):
    """The audit log's file: private, and let go of at SIGHUP (logrotate)."""

    def test_othersNeverRead(self) -> None:
        """
        An audit log others may read (made so by hand) is made theirs no
        more; a group's read (logrotate's "create 0640 root adm") is left.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        for before, after in ((0o644, 0o640), (0o606, 0o600), (0o640, 0o640)):
            os.chmod(path, before)
            AuditLog(path, Clock()).close()
            self.assertEqual(os.stat(path).st_mode & 0o777, after, oct(before))

    def test_reopenedAtHangUp(self) -> None:
        """
        logrotate moves the file and sends SIGHUP: the next lines go to a
        new file of that name. They went to the moved one, then, once it
        was removed, nowhere.
        """
        path = self.mktemp()
        audit = AuditLog(path, Clock())
        self.addCleanup(audit.close)
        audit.record("job.create", "alice", "127.0.0.1", "RUNNING")
        os.rename(path, path + ".1")
        service = UsersReloadService(None, None, None, reopen=audit.reopen)  # type: ignore[arg-type]
        service.hangUp()
        audit.record("job.stop", "alice", "127.0.0.1", "requested")
        with open(path) as f:
            self.assertEqual([json.loads(line)["event"] for line in f], ["job.stop"])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path + ".1") as f:
            self.assertEqual([json.loads(line)["event"] for line in f], ["job.create"])


class ServerWideCapTests(SynchronousTestCase):
    """The cap in all, apart: clients from addresses of their own."""

    def setUp(self) -> None:
        self.factory = ConnectionsPerClient(Factory.forProtocol(Protocol), 64, total=3)

    def connect(self, host: str) -> ProtocolWrapper | None:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 4000))
        if protocol is not None:
            protocol.makeConnection(StringTransport())
        return protocol

    def test_refusedPastTheTotal(self) -> None:
        """Three clients fill it; a fourth is refused, until one leaves."""
        held = [self.connect(f"198.51.100.{n}") for n in (1, 2, 3)]
        self.assertNotIn(None, held)
        self.assertIsNone(self.connect("203.0.113.9"))
        first = held[0]
        assert first is not None
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect("203.0.113.9"))

    def test_refusalsLoggedOnceASecond(self) -> None:
        """
        A flood of refusals is one line a second, the next line saying how
        many were not logged: a line each would fill the disk.
        """
        clock = Clock()
        events: list[dict[str, Any]] = []
        self.factory = ConnectionsPerClient(
            Factory.forProtocol(Protocol), 64, total=1, clock=clock
        )
        self.factory.log = Logger(observer=events.append)
        self.connect("198.51.100.1")
        for n in range(5):
            self.connect(f"203.0.113.{n + 1}")
        self.assertEqual(len(events), 1)
        clock.advance(1.5)
        self.connect("203.0.113.99")
        self.assertEqual(len(events), 2)
        self.assertIn("(4 more refused since the last line)", formatEvent(events[1]))
        self.assertIn("1 already open in all", formatEvent(events[1]))

    def test_refusalsCounted(self) -> None:
        """Each refusal counts in the metric, by which cap refused it."""
        metrics = Metrics()
        self.factory = ConnectionsPerClient(
            Factory.forProtocol(Protocol), 1, total=2, metrics=metrics
        )
        for host in ("198.51.100.1", "198.51.100.1", "198.51.100.2", "198.51.100.3"):
            self.connect(host)
        text = metrics.render().decode()
        self.assertIn('jobworker_connections_refused_total{cap="client"} 1.0', text)
        self.assertIn('jobworker_connections_refused_total{cap="server"} 1.0', text)


class UsersReloadTests(TestCase):
    async def test_sighupReloadsUsers(self) -> None:
        """SIGHUP rereads the users file; a broken file keeps the old users."""
        import bcrypt

        path = sharedPath(self)
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        async def hangUp() -> dict[str, Any]:
            """SIGHUP; the event logged once the reload of C{path} is over."""
            seen = len(events)
            os.kill(os.getpid(), signal.SIGHUP)

            def reloadEvent() -> dict[str, Any] | None:
                done = [e for e in events[seen:] if e.get("path") == path]
                return done[0] if done else None

            event: dict[str, Any] = await waitUntil(
                reloadEvent, 10.0, "the users file's reload"
            )
            return event

        def line(name: str, role: str) -> str:
            hashed = bcrypt.hashpw(f"{name}-pass".encode(), bcrypt.gensalt(4))
            return f"{name}:{role}:{hashed.decode()}\n"

        with open(path, "w") as f:
            f.write(line("alice", "Developer"))
        server = LiveServer(self, f"--users={path}")

        async def status(user: str, password: str) -> int:
            response = await server.http.request(
                "GET", server.url + "/jobs", headers=basic(user, password)
            )
            await treq.content(response)
            return int(response.code)

        self.assertEqual(await status("alice", "alice-pass"), 200)
        self.assertEqual(await status("carol", "carol-pass"), 401)
        with open(path, "w") as f:
            f.write(line("carol", "Reader"))
        self.assertEqual((await hangUp()).get("count"), 1)
        self.assertEqual(await status("carol", "carol-pass"), 200)
        self.assertEqual(await status("alice", "alice-pass"), 401)
        with open(path, "w") as f:
            f.write("this is not a users file\n")
        self.assertIn("error", await hangUp())
        self.assertEqual(await status("carol", "carol-pass"), 200)


class LogStreamCapTests(TestCase):
    async def test_followersCapped(self) -> None:
        """Past --max-log-streams, a new log request is a 429; slots come back."""
        server = LiveServer(self, "--max-log-streams=2")
        job = await server.createJob("sleep", "30")
        path = f"/jobs/{job['id']}/logs?follow=true"
        held = [await server.request("GET", path) for _ in range(2)]
        bodies = [treq.content(r) for r in held]
        response = await server.request("GET", path)
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        await treq.content(response)
        await server.json("POST", f"/jobs/{job['id']}/stop")
        for body in bodies:
            await body
        response = await server.request("GET", f"/jobs/{job['id']}/logs")
        self.assertEqual(response.code, 200)
        await treq.content(response)
