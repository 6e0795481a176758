"""Login throttling, the audit log, and the per-client connection cap."""

from __future__ import annotations

import json
import os
import socket

import treq
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.throttle import LoginThrottle

from .support import LiveServer, basic, sharedPath, sleep


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
        not the address's: a valid account must not reset a guesser's count.
        """
        self.fail(2)
        self.throttle.succeeded("alice", "10.0.0.1")
        self.assertNotIn(("pair", "alice", "10.0.0.1"), self.throttle._entries)
        self.fail(1)
        self.assertEqual(self.throttle.retryAfter("alice", "10.0.0.1"), 1)


class LiveSecurityTests(TestCase):
    async def test_bruteForceGets429(self) -> None:
        """Repeated wrong passwords from one address get 429 with Retry-After."""
        server = LiveServer(self, "--login-failures=3")
        codes = []
        for _ in range(4):
            response = await server.http.request(
                "GET", server.url + "/jobs", headers=basic("alice", "guess")
            )
            codes.append(response.code)
            retry = response.headers.getRawHeaders(b"retry-after")
            await treq.content(response)
        self.assertEqual(codes, [401, 401, 401, 429])
        self.assertEqual(retry, [b"1"])
        response = await server.request("GET", "/jobs", "alice")
        self.assertEqual(response.code, 429)
        await treq.content(response)
        await sleep(1.1)
        response = await server.request("GET", "/jobs", "alice")
        self.assertEqual(response.code, 200)
        await treq.content(response)

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

    async def test_connectionsPerClient(self) -> None:
        """Past the per-client cap, new connections are closed at once."""
        server = LiveServer(self, "--max-connections-per-client=2")

        def probe() -> list[bytes | None]:
            held = [
                socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)
            ]
            extra = socket.create_connection(("127.0.0.1", server.port))
            extra.settimeout(5)
            try:
                closed = extra.recv(1)
            except TimeoutError:
                closed = None
            for s in [*held, extra]:
                s.close()
            return [closed]

        self.assertEqual(await deferToThread(probe), [b""])
        await sleep(0.2)
        response = await server.request("GET", "/jobs", "alice")
        self.assertEqual(response.code, 200)
        await treq.content(response)


class UsersReloadTests(TestCase):
    async def test_sighupReloadsUsers(self) -> None:
        """SIGHUP rereads the users file; a broken file keeps the old users."""
        import signal

        import bcrypt

        path = sharedPath(self)

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
        os.kill(os.getpid(), signal.SIGHUP)
        await sleep(0.2)
        self.assertEqual(await status("carol", "carol-pass"), 200)
        self.assertEqual(await status("alice", "alice-pass"), 401)
        with open(path, "w") as f:
            f.write("this is not a users file\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await sleep(0.2)
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
