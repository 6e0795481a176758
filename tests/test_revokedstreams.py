"""
A log response outlives no revocation of its user (attacker round 9): a
follower removed from the users file, demoted, or whose password changed
(SIGHUP), or whose bearer token expired, is cut off there, with an audit
line; a user the reload leaves as they were follows on.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import bcrypt
import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.test.requesthelper import DummyRequest

from jobworker.auth.audit import AuditLog
from jobworker.auth.authenticator import Authenticator, Grant, makePortal
from jobworker.auth.permissions import Permission
from jobworker.auth.tokens import TokenSigner
from jobworker.auth.users import DEVELOPMENT_USERS as DEVELOPMENT_USERS_TEXT
from jobworker.auth.users import UserDatabase, UserEntry
from jobworker.errors import Forbidden, JobworkerError, Unauthorized
from jobworker.framing import EVENT_TAGS, OUTPUT_TAGS, FrameReader
from jobworker.jobs.validation import JobRequest
from jobworker.server.logs import LogStreams
from jobworker.server.services import UsersReloadService
from jobworker.tls import TrustRootPolicy

from .support import PASSWORDS, LiveServer, basic, sleep, waitUntil
from .test_api import (
    DEVELOPMENT_USERS,
    APITestCase,
    Response,
    authHeaders,
    syncRunner,
)

#: A job that prints a numbered line ten times a second, for ever.
TALKER = "i=0; while :; do i=$((i+1)); echo alice-secret-line $i; sleep 0.1; done"


def bearer(token: str) -> dict[bytes, list[bytes]]:
    """The Authorization header of a bearer token."""
    return {b"authorization": [f"Bearer {token}".encode("ascii")]}


class RevokedStreamTests(TestCase):
    """Through a real server: alice's job prints; ada (Admin) follows it."""

    timeout = 90

    def setUp(self) -> None:
        self.users = os.path.abspath(self.mktemp())
        #: Each user's hash, made once: a line rewritten with the same hash
        #: changes only what the test changes (a role).
        self.hashes = {
            name: bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
            for name, password in PASSWORDS.items()
        }
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, **roles: str) -> None:
        """The users file: C{name=role} each (with the test's hashes)."""
        with open(self.users, "w") as f:
            for name, role in roles.items():
                f.write(f"{name}:{role}:{self.hashes[name]}\n")
        os.chmod(self.users, 0o600)

    def server(self, *extra: str) -> LiveServer:
        self.write(alice="Developer", ada="Admin")
        return LiveServer(self, f"--users={self.users}", *extra)

    def streams(self, server: LiveServer) -> HTTPClient:
        """A client whose connections are not kept: a log response that
        ends (or not) leaves none behind in a pool."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=TrustRootPolicy(server.ca), pool=pool)
        return HTTPClient(agent)

    async def reload(self, server: LiveServer) -> None:
        [service] = [s for s in server.service if isinstance(s, UsersReloadService)]
        await service.reload()

    async def hangUp(self) -> None:
        """SIGHUP, as the operator sends it; back once the reload is over."""
        seen = len(self.events)
        os.kill(os.getpid(), signal.SIGHUP)
        await waitUntil(
            lambda: any(e.get("path") == self.users for e in self.events[seen:]),
            10.0,
            "the users file's reload",
        )

    async def token(self, server: LiveServer, user: str) -> str:
        code, body = await server.json("POST", "/tokens", user)
        self.assertEqual(code, 201, body)
        return str(body["token"])

    async def follow(
        self,
        server: LiveServer,
        jobId: str,
        headers: dict[bytes, list[bytes]],
        query: str,
    ) -> tuple[bytearray, Deferred[Any]]:
        """Follow C{jobId}'s output; its bytes so far, and its end."""
        response = await self.streams(server).request(
            "GET", f"{server.url}/jobs/{jobId}/logs?{query}", headers=headers
        )
        self.assertEqual(response.code, 200)
        received = bytearray()
        done = treq.collect(response, received.extend)
        await waitUntil(
            lambda: b"alice-secret-line" in received, 10.0, "the job's output"
        )
        return received, done

    async def ended(self, done: Deferred[Any], cut: bool = False) -> None:
        """The response ends within moments: cleanly, or (C{cut}) broken off."""
        failure: list[BaseException] = []
        try:
            await done.addTimeout(10.0, reactor)
        except defer.TimeoutError:
            self.fail("the log response went on after its access was revoked")
        except Exception as e:
            failure.append(e)
        if cut:
            self.assertTrue(failure, "a raw response is broken off, not ended")
        else:
            self.assertEqual(failure, [])

    async def stillSending(self, received: bytearray) -> None:
        """More output comes."""
        before = len(received)
        await waitUntil(lambda: len(received) > before, 10.0, "more output")

    async def nothingMore(self, received: bytearray) -> None:
        before = len(received)
        await sleep(0.5)
        self.assertEqual(len(received), before)

    def audited(self, server: LiveServer, user: str) -> list[dict[str, Any]]:
        """The C{access.revoked} lines of C{user} in the server's audit log."""
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            lines = [json.loads(line) for line in f]
        return [
            line
            for line in lines
            if line["event"] == "access.revoked" and line["user"] == user
        ]

    async def running(self, server: LiveServer, jobId: str) -> None:
        code, job = await server.json("GET", f"/jobs/{jobId}", "alice")
        self.assertEqual((code, job["status"]), (200, "RUNNING"))

    async def test_removedAdminTokenStream(self) -> None:
        """
        The report's case: ada (Admin) follows alice's job with a bearer
        token; the operator removes her and sends SIGHUP: her stream is cut
        at once (raw: broken off, so it is not taken for the whole output),
        and audited. It went on, for as long as the job ran.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", TALKER)
        token = await self.token(server, "ada")
        received, done = await self.follow(
            server, job["id"], bearer(token), "follow=true"
        )
        self.write(alice="Developer")
        await self.hangUp()
        await self.ended(done, cut=True)
        await self.nothingMore(received)
        await self.running(server, job["id"])
        [line] = self.audited(server, "ada")
        self.assertEqual(line["result"], "ended")
        self.assertEqual(line["job"], job["id"])
        self.assertEqual(line["permission"], "jobs.logs")
        self.assertIn("token", line)
        self.assertIn("no longer a user", line["reason"])

    async def test_removedUsersLongPoll(self) -> None:
        """
        ada long-polls alice's job (C{?wait=300}); the operator removes her
        and sends SIGHUP: she is answered 401 at once, not the job's record
        when it ends (or in 300 s), and it is audited.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", TALKER)
        response = self.streams(server).request(
            "GET", f"{server.url}/jobs/{job['id']}?wait=300", headers=basic("ada")
        )
        await sleep(0.5)
        self.assertNoResult(response)
        self.write(alice="Developer")
        await self.hangUp()
        answered = await response.addTimeout(10.0, reactor)
        self.assertEqual(answered.code, 401)
        body = await answered.json()
        self.assertIn("ada is no longer a user", body["error"])
        await self.running(server, job["id"])
        [line] = self.audited(server, "ada")
        self.assertEqual(line["result"], "ended")
        self.assertEqual(line["job"], job["id"])
        self.assertEqual(line["permission"], "jobs.get")

    async def test_tokenExpiry(self) -> None:
        """
        A stream opened with a token ends when the token does (--token-ttl):
        an SSE follower gets a C{revoked} event, then the end of the response
        (no C{end}: the job runs on).
        """
        server = self.server("--token-ttl=6")  # (time to open the stream)
        job = await server.createJob("sh", "-c", TALKER)
        token = await self.token(server, "ada")
        received, done = await self.follow(
            server, job["id"], bearer(token), "format=sse"
        )
        await self.ended(done)
        text = bytes(received)
        self.assertIn(b"event: revoked", text)
        self.assertIn(b"token expired", text)
        self.assertNotIn(b"event: end", text)
        await self.running(server, job["id"])
        [line] = self.audited(server, "ada")
        self.assertIn("token expired", line["reason"])

    async def test_demotedAdmin(self) -> None:
        """
        ada, demoted to Developer (the same password), may no longer read
        alice's job: her SSE stream (Basic) ends with a C{revoked} event
        saying why. alice's own stream, through the same reload, goes on.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", TALKER)
        adas, adaDone = await self.follow(server, job["id"], basic("ada"), "format=sse")
        alices, alicesDone = await self.follow(
            server, job["id"], basic("alice"), "follow=true"
        )
        self.write(alice="Developer", ada="Developer")
        await self.reload(server)
        await self.ended(adaDone)
        self.assertIn(b"event: revoked", adas)
        self.assertIn(b"covers only your own jobs", adas)
        await self.stillSending(alices)
        self.assertNoResult(alicesDone)
        self.assertEqual(self.audited(server, "alice"), [])
        [line] = self.audited(server, "ada")
        self.assertNotIn("token", line)

    async def test_passwordChanged(self) -> None:
        """
        A stream let in by a password ends when that password is no longer
        the user's (the operator changed it: it may have leaked); here a
        combined stream of frames, which ends without its C{x} frame.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", TALKER)
        received, done = await self.follow(
            server,
            job["id"],
            basic("ada"),
            "stream=combined&format=frames&follow=true",
        )
        self.hashes["ada"] = bcrypt.hashpw(b"ada-pass", bcrypt.gensalt(4)).decode()
        self.write(alice="Developer", ada="Admin")
        await self.reload(server)
        await self.ended(done)
        tags = {tag for tag, _, _ in FrameReader().feed(bytes(received))}
        self.assertIn(OUTPUT_TAGS[0], tags)
        self.assertNotIn(EVENT_TAGS["end"], tags)
        [line] = self.audited(server, "ada")
        self.assertIn("password", line["reason"])

    async def test_unchangedUsersFollowOn(self) -> None:
        """A reload that leaves ada and alice as they were (carol added)
        ends none of their streams, token or password."""
        server = self.server()
        job = await server.createJob("sh", "-c", TALKER)
        token = await self.token(server, "ada")
        adas, adaDone = await self.follow(
            server, job["id"], bearer(token), "follow=true"
        )
        alices, alicesDone = await self.follow(
            server, job["id"], basic("alice"), "format=sse"
        )
        self.write(alice="Developer", ada="Admin", bob="Reader")
        await self.reload(server)
        await self.stillSending(adas)
        await self.stillSending(alices)
        self.assertNoResult(adaDone)
        self.assertNoResult(alicesDone)
        self.assertEqual(
            self.audited(server, "ada") + self.audited(server, "alice"), []
        )

    async def test_queuedJobFollower(self) -> None:
        """
        A follower of a queued job waits for its start before any byte (or
        header) is sent: removed meanwhile, it is answered 401 there and
        then (it waited, and then was sent the job's output).
        """
        server = self.server()
        first = await server.createJob("sleep", "300")
        second = await server.createJob("echo", "hello", after=[first["id"]])
        self.assertEqual(second["status"], "PENDING")
        answer = self.streams(server).request(
            "GET",
            f"{server.url}/jobs/{second['id']}/logs?follow=true",
            headers=basic("ada"),
        )
        await sleep(0.5)
        self.assertNoResult(answer)
        self.write(alice="Developer")
        await self.reload(server)
        try:
            response = await answer.addTimeout(10.0, reactor)
        except (defer.TimeoutError, ResponseNeverReceived):
            self.fail("the queued job's follower was not answered")
        body = await treq.json_content(response)
        self.assertEqual(response.code, 401, body)
        self.assertIn("no longer a user", body["error"])


def developmentUsers(**roles: str | None) -> UserDatabase:
    """
    The development users with C{name=role} changed (None: removed), each
    with the same password hash as before (a role changes alone).
    """
    lines = []
    for line in DEVELOPMENT_USERS_TEXT.splitlines():
        if not line or line.startswith("#"):
            continue
        name, role, hashed = line.split(":")
        role = roles.get(name, role)  # type: ignore[assignment]
        if role is not None:
            lines.append(f"{name}:{role}:{hashed}")
    return UserDatabase.fromText("\n".join(lines) + "\n")


def requestWith(authorization: bytes | None) -> DummyRequest:
    """A request that came with C{authorization} (None: a certificate)."""
    request = DummyRequest([b"jobs"])
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    return request


class GrantTests(SynchronousTestCase):
    """
    L{Authenticator.grant} and the users reload: a watched grant is lost,
    once and audited, when its user is removed, demoted, or changed the
    password or token it came with; never otherwise, nor once released.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.auditPath = self.mktemp()
        audit = AuditLog(self.auditPath, self.clock)
        self.addCleanup(audit.close)
        self.signer = TokenSigner(b"t" * 32, self.clock, 600.0)
        self.authenticator = Authenticator(
            makePortal(DEVELOPMENT_USERS, syncRunner), audit=audit, tokens=self.signer
        )
        self.lost: list[JobworkerError] = []

    def grant(self, authorization: bytes | None, name: str = "ada") -> Grant:
        """ada's (or C{name}'s) grant to read alice's job's logs, watched."""
        entry = DEVELOPMENT_USERS.lookup(name)
        assert entry is not None
        grant = self.authenticator.grant(
            requestWith(authorization), entry.user, Permission.LOGS, "alice", "J"
        )
        grant.watch(self.lost.append)
        return grant

    def token(self, name: str = "ada") -> bytes:
        token, _ = self.signer.issue(name, "Admin" if name == "ada" else "Developer")
        return b"Bearer " + token.encode("ascii")

    def audited(self) -> list[dict[str, Any]]:
        with open(self.auditPath) as f:
            return [json.loads(line) for line in f]

    def test_tokenOfRemovedUser(self) -> None:
        """ada removed: her token's grant is lost (401), audited once."""
        grant = self.grant(self.token())
        self.assertEqual(grant.expires, 1_000_600)
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        [error] = self.lost
        self.assertIsInstance(error, Unauthorized)
        self.assertIn("ada is no longer a user", error.message)
        [line] = self.audited()
        self.assertEqual(
            (line["event"], line["user"], line["result"], line["job"]),
            ("access.revoked", "ada", "ended", "J"),
        )
        self.assertEqual(line["permission"], "jobs.logs")
        self.assertEqual(len(line["token"]), 12)  # a fingerprint, not the token
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.assertEqual(len(self.lost), 1)
        self.assertEqual(len(self.audited()), 1)

    def test_demoted(self) -> None:
        """ada a Developer: alice's job is no longer hers to read (403)."""
        self.grant(authHeaders("ada")[b"authorization"][0])
        self.authenticator.replaceUsers(developmentUsers(ada="Developer"))
        [error] = self.lost
        self.assertIsInstance(error, Forbidden)
        self.assertIn("covers only your own jobs", error.message)
        self.assertNotIn("token", self.audited()[0])

    def test_ownJobStillReadable(self) -> None:
        """alice, whose job it is, may read it as a Developer: kept."""
        self.grant(authHeaders("alice")[b"authorization"][0], "alice")
        self.authenticator.replaceUsers(developmentUsers(ada="Reader"))
        self.assertEqual(self.lost, [])

    def test_tokenRevokedRoleKept(self) -> None:
        """ada's password changed, her role kept: her token's grant is lost."""
        self.grant(self.token())
        users = developmentUsers()
        self.authenticator.replaceUsers(users)
        self.assertEqual(self.lost, [])
        rehashed = adaRehashed(users)
        self.authenticator.replaceUsers(rehashed)
        [error] = self.lost
        self.assertIn("(token)", error.message)

    def test_passwordChanged(self) -> None:
        """A grant of a password is lost when that password is no longer
        the user's; one of a certificate is not."""
        self.grant(authHeaders("ada")[b"authorization"][0])
        self.grant(None)
        users = developmentUsers()
        rehashed = adaRehashed(users)
        self.authenticator.replaceUsers(rehashed)
        [error] = self.lost
        self.assertIn("password", error.message)

    def test_certificateOfRemovedUser(self) -> None:
        """A grant of a certificate is lost once its user is removed."""
        self.grant(None)
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.assertEqual(len(self.lost), 1)

    def test_released(self) -> None:
        """A released grant (its response ended) is not looked at again."""
        self.grant(self.token()).release()
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.assertEqual(self.lost, [])
        self.assertFalse(os.path.getsize(self.auditPath))

    def test_unchanged(self) -> None:
        """A reload that leaves ada as she was keeps all her grants."""
        self.grant(self.token())
        self.grant(authHeaders("ada")[b"authorization"][0])
        self.grant(None)
        self.authenticator.replaceUsers(developmentUsers(bob=None))
        self.assertEqual(self.lost, [])

    def test_expiredTokenRefused(self) -> None:
        """A token that expired before its grant is made: 401."""
        token = self.token()
        self.clock.advance(601)
        entry = DEVELOPMENT_USERS.lookup("ada")
        assert entry is not None
        self.assertRaises(
            Unauthorized,
            self.authenticator.grant,
            requestWith(token),
            entry.user,
            Permission.LOGS,
        )


class ExpiryTests(SynchronousTestCase):
    """L{LogStreams} ends a response let in by a token at its expiry, on its
    clock: one delayed call per such response, gone with the response."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.streams = LogStreams(manager=None, clock=self.clock)  # type: ignore[arg-type]
        self.signer = TokenSigner(b"t" * 32, self.clock, 600.0)
        self.authenticator = Authenticator(
            makePortal(DEVELOPMENT_USERS, syncRunner), tokens=self.signer
        )
        self.ada = DEVELOPMENT_USERS.lookup("ada")
        assert self.ada is not None

    def track(self, authorization: bytes) -> tuple[DummyRequest, Grant, Any]:
        request = requestWith(authorization)
        grant = self.authenticator.grant(
            request, self.ada.user, Permission.LOGS, "alice", "J"
        )
        revocable = self.streams._track(request, "ada", grant)  # type: ignore[arg-type]
        return request, grant, revocable

    def bearer(self) -> bytes:
        token, _ = self.signer.issue("ada", "Admin")
        return b"Bearer " + token.encode("ascii")

    def test_endsAtExpiry(self) -> None:
        """At the token's end the response's work is cancelled, saying why."""
        self.clock.advance(100)
        _, grant, revocable = self.track(self.bearer())
        work: Deferred[bytes] = Deferred()
        revocable.work = work
        [expiry] = self.clock.getDelayedCalls()
        self.assertEqual(expiry.getTime(), grant.expires)
        self.assertEqual(grant.expires, 700)
        self.clock.advance(599.5)
        self.assertNoResult(work)
        self.clock.advance(0.5)
        self.failureResultOf(work, CancelledError)
        self.assertIn("token expired", revocable.revoked.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelledAtEnd(self) -> None:
        """A response that ends first takes its expiry with it, and its
        grant is no longer watched."""
        request, _, revocable = self.track(self.bearer())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        request.finish()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.assertIsNone(revocable.revoked)

    def test_reloadEndsAndCancels(self) -> None:
        """A reload that ends a response cancels its expiry too."""
        _, _, revocable = self.track(self.bearer())
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.assertIn("no longer a user", revocable.revoked.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTokenNoExpiry(self) -> None:
        """A response let in by a password has no expiry."""
        self.track(authHeaders("ada")[b"authorization"][0])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RevokedResponseTests(APITestCase):
    """Through the API on a fake reactor: how each kind of response ends."""

    def bearer(self, user: str = "ada") -> dict[bytes, Any]:
        response = self.call("POST", "/tokens", user)
        self.assertEqual(response.code, 201, response.body)
        token = response.json()["token"]
        return {b"authorization": [f"Bearer {token}".encode("ascii")]}

    def follow(self, path: str, headers: dict[bytes, Any]) -> Deferred[Response]:
        return self.send("GET", path, headers=headers)

    def test_sseAtTokenExpiry(self) -> None:
        """An SSE follower's token expires: a C{revoked} event, then the
        end of the response, with no C{end} event; the job runs on."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(b"secret\n")
        d = self.follow(f"/jobs/{record.id}/logs?format=sse", self.bearer())
        self.assertNoResult(d)
        self.reactor.advance(3599)
        self.treq.flush()
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertIn(b"secret", response.body)
        self.assertTrue(response.body.endswith(b"\n\n"))
        last = response.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        self.assertEqual(
            last,
            b'event: revoked\ndata: {"error":"access revoked: the token expired"}',
        )
        self.assertNotIn(b"event: end", response.body)
        self.assertEqual(self.manager.record(record.id).status.value, "RUNNING")

    def test_framesOfDemotedAdmin(self) -> None:
        """A frames follower demoted: the response ends, without an C{x}."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(b"secret\n")
        d = self.follow(
            f"/jobs/{record.id}/logs?stream=combined&format=frames&follow=true",
            authHeaders("ada"),
        )
        self.assertNoResult(d)
        self.authenticator.replaceUsers(developmentUsers(ada="Developer"))
        self.treq.flush()
        response = self.successResultOf(d)
        tags = [tag for tag, _, _ in FrameReader().feed(response.body)]
        self.assertIn(OUTPUT_TAGS[0], tags)
        self.assertNotIn(EVENT_TAGS["end"], tags)

    def test_queuedFollowerRemoved(self) -> None:
        """The follower of a queued job, removed before it starts: 401."""
        first = self.manager.create(
            JobRequest("sleep", ["300"], {}, None), owner="alice"
        )
        second = self.manager.create(
            JobRequest("echo", [], {}, None, after=(first.id,)), owner="alice"
        )
        d = self.follow(f"/jobs/{second.id}/logs?follow=true", authHeaders("ada"))
        self.assertNoResult(d)
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.treq.flush()
        body = self.assertError(self.successResultOf(d), 401)
        self.assertIn("ada is no longer a user", body["error"])

    def test_otherFollowersUntouched(self) -> None:
        """alice's own follow, through the same reload, ends with her job."""
        record = self.createJob(owner="alice")
        d = self.follow(f"/jobs/{record.id}/logs?follow=true", authHeaders("alice"))
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.treq.flush()
        self.assertNoResult(d)
        self.spawned(record).output(b"more")
        self.endJob(record)
        self.assertEqual(self.successResultOf(d).body, b"more")


def adaRehashed(users: UserDatabase) -> UserDatabase:
    """C{users}, with ada's password hash changed (her role kept)."""
    ada = users.lookup("ada")
    assert ada is not None
    return UserDatabase(
        [
            UserEntry(ada.user, ada.passwordHash[:-1] + b"x"),
            *(e for n in users.names() if (e := users.lookup(n)) and n != "ada"),
        ],
        users.dummyHash,
    )


class RevokedWaitTests(APITestCase):
    """
    C{GET /jobs/ID?wait=N}, a long poll of up to 300 s, held to what it was
    let in on as a log follower is: a users reload that takes its access
    away, or its token's expiry, answers it with the refusal at once, not
    with the record once the job ends.
    """

    bearer = RevokedResponseTests.bearer

    def waitFor(self, record: Any, headers: dict[bytes, Any]) -> Deferred[Response]:
        d = self.send("GET", f"/jobs/{record.id}?wait=300", headers=headers)
        self.assertNoResult(d)
        return d

    def test_removedUserAnsweredAtOnce(self) -> None:
        """ada, removed while she waits on alice's job: a 401 at once,
        audited; the job runs on."""
        record = self.createJob(owner="alice")
        d = self.waitFor(record, authHeaders("ada"))
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.treq.flush()
        body = self.assertError(self.successResultOf(d), 401)
        self.assertIn("ada is no longer a user", body["error"])
        self.assertEqual(self.manager.record(record.id).status.value, "RUNNING")
        self.assertEqual(self.authenticator._grants, {})

    def test_removedUserNotToldTheEnd(self) -> None:
        """The job ending after the reload does not answer her with it."""
        record = self.createJob(owner="alice")
        d = self.waitFor(record, authHeaders("ada"))
        self.authenticator.replaceUsers(developmentUsers(ada=None))
        self.endJob(record)
        self.treq.flush()
        self.assertError(self.successResultOf(d), 401)

    def test_passwordChanged(self) -> None:
        """A wait let in on a password that is no longer ada's: 401."""
        record = self.createJob(owner="alice")
        d = self.waitFor(record, authHeaders("ada"))
        self.authenticator.replaceUsers(adaRehashed(developmentUsers()))
        self.treq.flush()
        body = self.assertError(self.successResultOf(d), 401)
        self.assertIn("password", body["error"])

    def test_tokenExpiresDuringTheWait(self) -> None:
        """A token that expires 100 s into a 300 s wait: 401 then."""
        record = self.createJob(owner="alice")
        headers = self.bearer()
        self.reactor.advance(3500)
        d = self.waitFor(record, headers)
        self.reactor.advance(99)
        self.treq.flush()
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.treq.flush()
        body = self.assertError(self.successResultOf(d), 401)
        self.assertIn("token expired", body["error"])

    def test_unchangedUsersWaitOn(self) -> None:
        """A reload that leaves ada as she was: her wait ends with the job,
        and nothing of it is left watched."""
        record = self.createJob(owner="alice")
        d = self.waitFor(record, self.bearer())
        self.authenticator.replaceUsers(developmentUsers())
        self.treq.flush()
        self.assertNoResult(d)
        self.endJob(record)
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["status"], "COMPLETED")
        self.assertEqual(self.authenticator._grants, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timedOutWaitReleased(self) -> None:
        """A wait that times out leaves no grant watched."""
        record = self.createJob(owner="alice")
        d = self.waitFor(record, authHeaders("ada"))
        self.reactor.advance(300)
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).json()["status"], "RUNNING")
        self.assertEqual(self.authenticator._grants, {})
