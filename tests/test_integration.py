"""
Integration tests: the real service in-process, real TLS on a loopback port,
real job processes in their own sessions, real sockets and real clients.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.jobs.spool import READ_CHUNK
from jobworker.server.requests import MAX_BODY_BYTES
from jobworker.tls import TrustRootPolicy

from .support import (
    CA,
    LiveServer,
    basic,
    groupMembers,
    killGroupIfOurs,
    processAlive,
    runSync,
    sharedPath,
    sleep,
    startTime,
    waitUntil,
)

#: Every identity a request can carry: the four roles, and three kinds of
#: failed authentication.
IDENTITIES: dict[str, dict[bytes, list[bytes]]] = {
    "alice": basic("alice"),  # Developer, owner of the jobs under test
    "bob": basic("bob"),  # Developer, not the owner
    "rita": basic("rita"),  # Reader
    "ada": basic("ada"),  # Admin
    "anonymous": {},
    "wrongPassword": basic("alice", "not-alices-password"),
    "unknownUser": basic("mallory", "mallory-pass"),
}

UNAUTHENTICATED = ("anonymous", "wrongPassword", "unknownUser")

#: A job that ignores SIGTERM (and so do its children: an ignored signal
#: survives exec) and says so once the trap is in place.
TERM_IGNORING = 'trap "" TERM; echo ready; while :; do sleep 0.1; done'


def expected(**codes: int) -> dict[str, int]:
    """The expected status per identity; failed authentication is always 401."""
    return {**codes, **dict.fromkeys(UNAUTHENTICATED, 401)}


async def call(
    server: LiveServer,
    method: str,
    path: str,
    identity: str = "alice",
    body: Any = None,
    raw: bytes | None = None,
    contentType: bytes = b"application/json",
) -> tuple[Any, bytes]:
    """Send a request with C{identity}'s credentials; (response, body bytes)."""
    headers = dict(IDENTITIES[identity])
    data = raw
    if body is not None:
        data = json.dumps(body).encode("utf-8")
    if body is not None or method in ("POST", "DELETE"):
        headers[b"content-type"] = [contentType]
    response = await server.http.request(
        method, server.url + path, headers=headers, data=data
    )
    return response, await treq.content(response)


async def logs(
    server: LiveServer, jobId: str, user: str = "alice", query: str = ""
) -> tuple[Any, bytes]:
    """GET a job's logs (C{query} is appended verbatim)."""
    return await call(server, "GET", f"/jobs/{jobId}/logs{query}", user)


async def waitGone(pgid: int, *pids: int) -> None:
    """
    Wait (briefly) until the group C{pgid} and C{pids} are gone. A job ends
    once its pipes are closed, and a dying process closes them a moment
    before the kernel is done with it: on a loaded machine, that moment shows.
    """
    await waitUntil(
        lambda: not groupMembers(pgid) and not any(map(processAlive, pids)),
        2.0,
        f"process group {pgid} to be gone",
    )


async def waitForOutput(
    server: LiveServer, jobId: str, needle: bytes, timeout: float = 10.0
) -> bytes:
    """Poll a job's stdout (through the API) until it contains C{needle}."""

    async def check() -> bytes | None:
        response, body = await logs(server, jobId)
        assert response.code == 200, (response.code, body)
        return body if needle in body else None

    return await waitUntil(  # type: ignore[no-any-return]
        check, timeout, f"{needle!r} in the output of job {jobId}"
    )


async def hasPidLine(server: LiveServer, jobId: str) -> bytes | None:
    """The job's stdout once a line of it is a number (a pid), else None."""
    _, body = await logs(server, jobId)
    return body if re.search(rb"^[0-9]+$", body, re.MULTILINE) else None


async def listJobs(server: LiveServer) -> list[dict[str, Any]]:
    """Every job, as an Admin sees them through the API."""
    code, body = await server.json("GET", "/jobs", "ada")
    assert code == 200, (code, body)
    return body["jobs"]  # type: ignore[no-any-return]


def cleanUpGroup(testCase: TestCase, pgid: int | None) -> None:
    """
    At cleanup, SIGKILL what is left of a job's process group; never a group
    whose id was reused by someone else (its leader started at another time).
    """
    if pgid is None:
        return
    testCase.addCleanup(killGroupIfOurs, pgid, startTime(pgid))


def cleanUpProcess(testCase: TestCase, pid: int, pgid: int) -> None:
    """At cleanup, SIGKILL C{pid} if it is (still) the member of C{pgid} seen now."""
    try:
        if os.getpgid(pid) != pgid:
            return
    except OSError:
        return
    started = startTime(pid)

    def kill() -> None:
        if started is not None and startTime(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    testCase.addCleanup(kill)


def isJSONError(response: Any, body: bytes) -> bool:
    """True if the response is a JSON object with an C{error} string."""
    contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
    if not contentType.startswith(b"application/json"):
        return False
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("error"), str)


class HangUpAfterFirstChunk(Protocol):
    """A response body reader that drops the connection on its first chunk."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class RBACMatrixTests(TestCase):
    """Every route against every role, over real TLS with real bcrypt checks."""

    def checkDenial(self, identity: str, response: Any, body: bytes) -> list[str]:
        """Problems with a 401/403 answer: JSON body, WWW-Authenticate on 401."""
        problems = []
        if not isJSONError(response, body):
            problems.append(f"{identity}: {response.code} body is not a JSON error")
        if response.code == 401:
            challenge = response.headers.getRawHeaders(b"www-authenticate", [b""])[0]
            if not challenge.lower().startswith(b"basic realm="):
                problems.append(f"{identity}: 401 without a Basic challenge")
        return problems

    async def matrix(
        self,
        server: LiveServer,
        codes: dict[str, int],
        send: Callable[[str], Awaitable[tuple[Any, bytes]]],
        onSuccess: Callable[[str, Any, bytes], Awaitable[list[str]]] | None = None,
    ) -> None:
        """Send one request per identity; report every mismatch at once."""
        problems: list[str] = []
        for identity, code in codes.items():
            response, body = await send(identity)
            if response.code != code:
                problems.append(
                    f"{identity}: expected {code}, got {response.code}: {body[:200]!r}"
                )
            elif code >= 400:
                problems.extend(self.checkDenial(identity, response, body))
            elif onSuccess is not None:
                problems.extend(await onSuccess(identity, response, body))
        self.assertEqual(problems, [])

    async def test_createMatrix(self) -> None:
        """POST /jobs: Developers and Admins create (201), a Reader may not."""
        server = LiveServer(self)

        async def send(identity: str) -> tuple[Any, bytes]:
            return await call(server, "POST", "/jobs", identity, {"command": "true"})

        async def created(identity: str, response: Any, body: bytes) -> list[str]:
            job = json.loads(body)
            location = response.headers.getRawHeaders(b"location", [b""])[0]
            problems = []
            if job["owner"] != identity:
                problems.append(f"{identity}: owner is {job['owner']!r}")
            if location != f"/jobs/{job['id']}".encode():
                problems.append(f"{identity}: location {location!r}")
            return problems

        await self.matrix(
            server, expected(alice=201, bob=201, rita=403, ada=201), send, created
        )
        owners = sorted(job["owner"] for job in await listJobs(server))
        self.assertEqual(owners, ["ada", "alice", "bob"])

    async def test_listMatrix(self) -> None:
        """GET /jobs: every role lists every job; no credentials, no list."""
        server = LiveServer(self)
        job = await server.createJob("true")

        async def send(identity: str) -> tuple[Any, bytes]:
            return await call(server, "GET", "/jobs", identity)

        async def listed(identity: str, response: Any, body: bytes) -> list[str]:
            ids = [j["id"] for j in json.loads(body)["jobs"]]
            return [] if ids == [job["id"]] else [f"{identity}: listed {ids}"]

        await self.matrix(
            server, expected(alice=200, bob=200, rita=200, ada=200), send, listed
        )

    async def test_statusMatrix(self) -> None:
        """GET /jobs/{id} and /jobs/{id}/status: every role, any owner."""
        server = LiveServer(self)
        job = await server.createJob("true")
        for suffix in ("", "/status"):

            async def send(identity: str, suffix: str = suffix) -> tuple[Any, bytes]:
                return await call(server, "GET", f"/jobs/{job['id']}{suffix}", identity)

            async def shown(identity: str, response: Any, body: bytes) -> list[str]:
                got = json.loads(body)
                if got["id"] != job["id"] or got["owner"] != "alice":
                    return [f"{identity}: wrong job {got}"]
                return []

            await self.matrix(
                server, expected(alice=200, bob=200, rita=200, ada=200), send, shown
            )

    async def test_logsMatrix(self) -> None:
        """GET /jobs/{id}/logs: the owner and Admins; not another Developer."""
        server = LiveServer(self)
        job = await server.createJob("echo", "secret-output")
        await server.waitEnded(job["id"])

        async def send(identity: str) -> tuple[Any, bytes]:
            return await logs(server, job["id"], identity)

        async def read(identity: str, response: Any, body: bytes) -> list[str]:
            return [] if body == b"secret-output\n" else [f"{identity}: got {body!r}"]

        await self.matrix(
            server, expected(alice=200, bob=403, rita=403, ada=200), send, read
        )

    async def test_logsDenialLeaksNoOutput(self) -> None:
        """A refused logs request carries none of the job's output."""
        server = LiveServer(self)
        job = await server.createJob("echo", "secret-output")
        await server.waitEnded(job["id"])
        for identity in ("bob", "rita", *UNAUTHENTICATED):
            response, body = await logs(server, job["id"], identity)
            self.assertIn(response.code, (401, 403), identity)
            self.assertNotIn(b"secret-output", body, identity)

    async def test_stopMatrix(self) -> None:
        """POST /jobs/{id}/stop: the owner and Admins; a denied stop changes nothing."""
        server = LiveServer(self, grace=1.0)
        targets: dict[str, dict[str, Any]] = {}

        async def send(identity: str) -> tuple[Any, bytes]:
            job = await server.createJob("sleep", "300")
            cleanUpGroup(self, job["pid"])
            targets[identity] = job
            return await call(server, "POST", f"/jobs/{job['id']}/stop", identity)

        async def stopped(identity: str, response: Any, body: bytes) -> list[str]:
            got = json.loads(body)
            if got["status"] != "STOPPED" or got["stopped_by"] != identity:
                return [f"{identity}: {got['status']} by {got['stopped_by']}"]
            return []

        codes = expected(alice=200, bob=403, rita=403, ada=200)
        await self.matrix(server, codes, send, stopped)
        for identity, code in codes.items():
            record = server.manager.record(targets[identity]["id"])
            if code == 200:
                self.assertEqual(record.status.value, "STOPPED", identity)
            else:
                self.assertEqual(record.status.value, "RUNNING", identity)
                self.assertIsNone(record.stopped_by, identity)
                self.assertTrue(processAlive(targets[identity]["pid"]), identity)

    async def test_deleteMatrix(self) -> None:
        """DELETE /jobs/{id}: the owner and Admins; a denied delete keeps the job."""
        server = LiveServer(self)
        targets: dict[str, dict[str, Any]] = {}

        async def send(identity: str) -> tuple[Any, bytes]:
            job = await server.createJob("true")
            await server.waitEnded(job["id"])
            targets[identity] = job
            return await call(server, "DELETE", f"/jobs/{job['id']}", identity)

        async def deleted(identity: str, response: Any, body: bytes) -> list[str]:
            jobId = targets[identity]["id"]
            code, _ = await server.json("GET", f"/jobs/{jobId}", "ada")
            return [] if code == 404 else [f"{identity}: job still there ({code})"]

        codes = expected(alice=200, bob=403, rita=403, ada=200)
        await self.matrix(server, codes, send, deleted)
        for identity, code in codes.items():
            if code != 200:
                jobId = targets[identity]["id"]
                status, _ = await server.json("GET", f"/jobs/{jobId}", "ada")
                self.assertEqual(status, 200, identity)


class BulkAndSignalTests(TestCase):
    """Issue 17: DELETE /jobs (jw clean) by role, and stops with a chosen signal."""

    async def test_cleanMatrix(self) -> None:
        """
        DELETE /jobs: a Developer deletes only their own ended jobs, a Reader
        nothing, an Admin anyone's; running jobs are never deleted; naming
        another owner is 403 for a Developer.
        """
        server = LiveServer(self)
        ended: dict[str, str] = {}
        for owner in ("alice", "bob", "ada"):
            job = await server.createJob("true", user=owner)
            await server.waitEnded(job["id"])
            ended[owner] = job["id"]
        running = await server.createJob("sleep", "300", user="alice")
        cleanUpGroup(self, running["pid"])

        async def remaining() -> set[str]:
            return {job["id"] for job in await listJobs(server)}

        code, body = await server.json("DELETE", "/jobs?owner=alice", "bob")
        self.assertEqual(code, 403, body)
        code, body = await server.json("DELETE", "/jobs", "rita")
        self.assertEqual(code, 403, body)
        code, body = await server.json("DELETE", "/jobs?status=RUNNING", "ada")
        self.assertEqual(code, 400, body)
        self.assertEqual(len(await remaining()), 4)
        code, body = await server.json("DELETE", "/jobs", "alice")
        self.assertEqual(
            (code, body), (200, {"deleted": 1, "more": False, "next_cursor": None})
        )
        self.assertEqual(await remaining(), {ended["bob"], ended["ada"], running["id"]})
        code, body = await server.json("DELETE", "/jobs?older_than_seconds=3600", "ada")
        self.assertEqual((code, body["deleted"]), (200, 0))
        code, body = await server.json("DELETE", "/jobs", "ada")
        self.assertEqual((code, body["deleted"]), (200, 2))
        self.assertEqual(await remaining(), {running["id"]})

    async def test_stopWithSignalAndKill(self) -> None:
        """
        A stop with {"signal": "INT"} reaches the job's trap as SIGINT; one
        with {"signal": "KILL"} ends a job that ignores TERM at once, with no
        grace waited for (the server's is 60 s here).
        """
        server = LiveServer(self, grace=60.0)
        ready = sharedPath(self)
        trapping = await server.createJob(
            "sh",
            "-c",
            f'trap "echo got INT; exit 7" INT; touch {ready}; '
            "while :; do sleep 0.05; done",
        )
        cleanUpGroup(self, trapping["pid"])
        await waitUntil(lambda: os.path.exists(ready), what="the trap")
        code, job = await server.json(
            "POST", f"/jobs/{trapping['id']}/stop", "alice", {"signal": "INT"}
        )
        self.assertEqual(code, 200, job)
        self.assertEqual((job["status"], job["exit_code"]), ("STOPPED", 7))
        _, out = await logs(server, trapping["id"], "alice")
        self.assertEqual(out, b"got INT\n")
        stubborn = await server.createJob("sh", "-c", 'trap "" TERM; sleep 300')
        cleanUpGroup(self, stubborn["pid"])
        started = time.monotonic()
        code, job = await server.json(
            "POST", f"/jobs/{stubborn['id']}/stop", "alice", {"signal": "KILL"}
        )
        self.assertEqual(
            (code, job["status"], job["signal"]), (200, "STOPPED", "SIGKILL")
        )
        self.assertLess(time.monotonic() - started, 30)
        for bad in ({"signal": "STOP"}, {"grace_seconds": -1}, {"colour": 1}):
            code, body = await server.json(
                "POST", f"/jobs/{stubborn['id']}/stop", "alice", bad
            )
            self.assertEqual(code, 400, (bad, body))

    async def test_harderStopDuringALongGrace(self) -> None:
        """
        A stop with KILL, or with a grace that ends sooner, while a job is
        being stopped with an hour's grace: the harder one holds (it was
        dropped, the job ran the hour, and the audit log said KILL was sent:
        fault round 6). The first stop's user stays the one who stopped it.
        """
        server = LiveServer(self, grace=2.0)
        for second, who in (
            ({"signal": "KILL"}, "ada"),
            ({"grace_seconds": 1}, "alice"),
            ({}, "alice"),  # the server's grace (2 s here) ends sooner too
        ):
            ready = sharedPath(self)
            stubborn = await server.createJob(
                "sh", "-c", f'trap "" TERM; touch {ready}; while :; do sleep 0.1; done'
            )
            cleanUpGroup(self, stubborn["pid"])
            await waitUntil(partial(os.path.exists, ready), what="the trap")
            first = ensureDeferred(
                server.json(
                    "POST",
                    f"/jobs/{stubborn['id']}/stop",
                    "alice",
                    {"grace_seconds": 3600},
                )
            )
            while (await server.json("GET", f"/jobs/{stubborn['id']}"))[1][
                "stopped_by"
            ] is None:
                await sleep(0.05)
            code, job = await server.json(
                "POST", f"/jobs/{stubborn['id']}/stop", who, second
            )
            self.assertEqual(
                (code, job["status"], job["signal"], job["stopped_by"]),
                (200, "STOPPED", "SIGKILL", "alice"),
            )
            code, job = await first
            self.assertEqual((code, job["status"]), (200, "STOPPED"))

    async def test_shorterGraceForLeftovers(self) -> None:
        """
        The same once the main process ended on the first stop's TERM
        while what it left ignores TERM and holds the job's pipes: a second
        stop with a grace of 1 s kills them then (the hour was waited out,
        and the second stop with it).
        """
        server = LiveServer(self, grace=2.0)
        ready = sharedPath(self)
        job = await server.createJob(
            "sh",
            "-c",
            f'(trap "" TERM; touch {ready}; exec sleep 600) & wait',
        )
        cleanUpGroup(self, job["pid"])
        await waitUntil(partial(os.path.exists, ready), what="the trap")
        first = ensureDeferred(
            server.json(
                "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 3600}
            )
        )
        await sleep(1.0)  # the main process ends on the TERM; the pipes stay open
        code, record = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual((code, record["status"]), (200, "RUNNING"))
        second = ensureDeferred(
            server.json(
                "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 1}
            )
        )
        code, record = await second.addTimeout(30, reactor)
        self.assertEqual(
            (code, record["status"], record["stopped_by"]), (200, "STOPPED", "alice")
        )
        code, record = await first
        self.assertEqual((code, record["status"]), (200, "STOPPED"))


class StdinMatrixTests(TestCase):
    """POST /jobs/{id}/stdin (issue 17): the owner and Admins, every byte in order."""

    checkDenial = RBACMatrixTests.checkDenial
    matrix = RBACMatrixTests.matrix

    async def test_stdinMatrix(self) -> None:
        """Owner and Admin feed a real `cat`; others 403 (or 401) and change nothing."""
        server = LiveServer(self)
        out = sharedPath(self)
        job = await server.createJob("sh", "-c", f"cat > {out}", stdin=True)
        self.assertTrue(job["stdin"])

        async def send(identity: str) -> tuple[Any, bytes]:
            return await call(
                server,
                "POST",
                f"/jobs/{job['id']}/stdin",
                identity,
                raw=f"{identity}\n".encode(),
                contentType=b"application/octet-stream",
            )

        await self.matrix(server, expected(alice=200, bob=403, rita=403, ada=200), send)
        response, body = await call(
            server,
            "POST",
            f"/jobs/{job['id']}/stdin?eof=true",
            raw=b"",
            contentType=b"application/octet-stream",
        )
        self.assertEqual(response.code, 200, body)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"alice\nada\n")

    async def test_closingWriteSentAgainAuditedOnce(self) -> None:
        """
        The write that closed a job's stdin, sent again at its offset (a
        client that lost the answer), is answered as taken and audited once:
        a second C{job.stdin closed} line said it was closed twice.
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "cat >/dev/null; sleep 60", stdin=True)
        for _ in range(2):
            response, body = await call(
                server,
                "POST",
                f"/jobs/{job['id']}/stdin?eof=true&offset=0",
                raw=b"x",
                contentType=b"application/octet-stream",
            )
            self.assertEqual(response.code, 200, body)
        response, body = await call(server, "POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(response.code, 200, body)
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        closed = [
            e
            for e in entries
            if e.get("event") == "job.stdin" and e.get("job") == job["id"]
        ]
        self.assertEqual(len(closed), 1, closed)


class ErrorCodeTests(TestCase):
    """Each error status over the wire, always with a JSON body."""

    async def test_malformedJSONIs400(self) -> None:
        """A body that is not JSON, or not an object, is a 400 JSON error."""
        server = LiveServer(self)
        for raw in (b"{not json", b"", b"[1, 2]", b'{"command": "true"', b"\xff\xfe"):
            response, body = await call(server, "POST", "/jobs", raw=raw)
            self.assertEqual(response.code, 400, raw)
            self.assertTrue(isJSONError(response, body), body)
        self.assertEqual(await listJobs(server), [])

    async def test_badLogParametersAre400(self) -> None:
        """Bad offset, stream or follow values on the logs route are 400s."""
        server = LiveServer(self)
        job = await server.createJob("true")
        for query in (
            "?offset=-1",
            "?offset=abc",
            "?offset=1.5",
            "?stream=stdin",
            "?follow=maybe",
        ):
            response, body = await logs(server, job["id"], query=query)
            self.assertEqual(response.code, 400, query)
            self.assertTrue(isJSONError(response, body), body)

    async def test_unknownJobIs404(self) -> None:
        """Every job route answers 404 for an unknown or malformed job id."""
        server = LiveServer(self)
        for jobId in (str(uuid.uuid4()), "not-a-uuid", str(uuid.uuid4()).upper()):
            for method, suffix in (
                ("GET", ""),
                ("GET", "/status"),
                ("GET", "/logs"),
                ("POST", "/stop"),
            ):
                response, body = await call(
                    server, method, f"/jobs/{jobId}{suffix}", "ada"
                )
                self.assertEqual(response.code, 404, (method, jobId, suffix))
                self.assertTrue(isJSONError(response, body), body)

    async def test_unknownRouteIs404(self) -> None:
        """A path that is no route is a 404 JSON error. (C{/} leads to the
        dashboard: new user round 38.)"""
        server = LiveServer(self)
        for path in ("/nope", "/ui/x/y", "/jobs/x/y/z"):
            response, body = await call(server, "GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertTrue(isJSONError(response, body), body)

    async def test_wrongMethodIs405(self) -> None:
        """A known route with the wrong method is a 405 JSON error with Allow."""
        server = LiveServer(self)
        jobId = str(uuid.uuid4())
        for method, path, allowed in (
            ("PATCH", "/jobs", b"POST"),
            ("PUT", "/jobs", b"DELETE"),
            ("POST", f"/jobs/{jobId}", b"GET"),
            ("GET", f"/jobs/{jobId}/stop", b"POST"),
            ("DELETE", f"/jobs/{jobId}/logs", b"GET"),
        ):
            response, body = await call(server, method, path)
            self.assertEqual(response.code, 405, (method, path))
            self.assertTrue(isJSONError(response, body), body)
            allow = response.headers.getRawHeaders(b"allow", [b""])[0]
            self.assertIn(allowed, allow, (method, path))

    async def test_bodyOver64KiBIs413(self) -> None:
        """A body over 64 KiB is a 413; exactly 64 KiB is still accepted."""
        server = LiveServer(self)
        prefix = b'{"command": "true", "args": ["'
        suffix = b'"]}'
        for size in (MAX_BODY_BYTES + 1, 1024 * 1024):
            raw = prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix
            self.assertEqual(len(raw), size)
            response, body = await call(server, "POST", "/jobs", raw=raw)
            self.assertEqual(response.code, 413, size)
            self.assertTrue(isJSONError(response, body), body)
        self.assertEqual(await listJobs(server), [])
        exact = b'{"command": "true"}'
        exact += b" " * (MAX_BODY_BYTES - len(exact))
        response, body = await call(server, "POST", "/jobs", raw=exact)
        self.assertEqual(response.code, 201, body)

    async def test_stopEndedJobIs409(self) -> None:
        """Stopping a job that already ended is a 409 carrying the job."""
        server = LiveServer(self)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        response, body = await call(server, "POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(response.code, 409)
        self.assertTrue(isJSONError(response, body), body)
        error = json.loads(body)
        self.assertEqual(error["job"]["id"], job["id"])
        self.assertEqual(error["job"]["status"], "COMPLETED")
        self.assertIsNone(error["job"]["stopped_by"])

    async def test_deleteRunningJobIs409(self) -> None:
        """Deleting a job that is still running is a 409; the job keeps running."""
        server = LiveServer(self)
        job = await server.createJob("sleep", "300")
        cleanUpGroup(self, job["pid"])
        response, body = await call(server, "DELETE", f"/jobs/{job['id']}")
        self.assertEqual(response.code, 409)
        self.assertTrue(isJSONError(response, body), body)
        code, current = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual((code, current["status"]), (200, "RUNNING"))
        self.assertTrue(processAlive(job["pid"]))


class StopTests(TestCase):
    """Stopping takes down the whole process group, escalating to SIGKILL."""

    #: Server options of this variant of the tests.
    serverOptions: tuple[str, ...] = ()

    def liveServer(self, grace: float) -> LiveServer:
        """A server for this variant, with a stop grace of C{grace} seconds."""
        return LiveServer(self, grace=grace)

    async def test_stopKillsTermIgnoringJob(self) -> None:
        """A job ignoring SIGTERM is SIGKILLed after the grace; its group is gone."""
        grace = 1.0
        server = self.liveServer(grace)
        job = await server.createJob("sh", "-c", TERM_IGNORING)
        cleanUpGroup(self, job["pid"])
        await waitForOutput(server, job["id"], b"ready")
        self.assertTrue(groupMembers(job["pid"]))
        started = time.monotonic()
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
        elapsed = time.monotonic() - started
        self.assertEqual(code, 200, stopped)
        self.assertEqual(stopped["status"], "STOPPED")
        self.assertEqual(stopped["stopped_by"], "alice")
        self.assertEqual(stopped["signal"], "SIGKILL")
        self.assertIsNone(stopped["exit_code"])
        await waitGone(job["pid"])
        # SIGTERM was ignored, so only the SIGKILL after the grace ended it.
        self.assertGreaterEqual(elapsed, grace * 0.9)
        self.assertLess(elapsed, grace + 3.0)
        _, body = await logs(server, job["id"])
        self.assertEqual(body, b"ready\n")

    async def test_stopKillsBackgroundGrandchild(self) -> None:
        """Stop takes down a background grandchild, not just the main process."""
        server = self.liveServer(1.0)
        job = await server.createJob("sh", "-c", "sleep 300 & echo $!; wait")
        cleanUpGroup(self, job["pid"])
        output = await waitForOutput(server, job["id"], b"\n")
        grandchild = int(output.split()[0])
        cleanUpProcess(self, grandchild, job["pid"])
        self.assertTrue(processAlive(grandchild))
        self.assertEqual(os.getpgid(grandchild), job["pid"])
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop", "ada")
        self.assertEqual(code, 200, stopped)
        self.assertEqual(stopped["status"], "STOPPED")
        self.assertEqual(stopped["stopped_by"], "ada")
        self.assertEqual(stopped["signal"], "SIGTERM")
        await waitGone(job["pid"], grandchild)

    async def test_leftoverInGroupTerminatedAfterMainExits(self) -> None:
        """A grandchild left behind when the main process exits is terminated."""
        server = self.liveServer(1.0)
        job = await server.createJob("sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
        cleanUpGroup(self, job["pid"])
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        self.assertEqual(ended["exit_code"], 0)
        _, output = await logs(server, job["id"])
        self.assertRegex(output, rb"^[0-9]+\n$")
        self.assertEqual(ended["stdout_bytes"], len(output))
        grandchild = int(output)
        cleanUpProcess(self, grandchild, job["pid"])
        await waitUntil(
            lambda: not processAlive(grandchild), 5.0, "the leftover to be terminated"
        )
        self.assertEqual(groupMembers(job["pid"]), [])

    async def test_termIgnoringLeftoverKilledAfterGrace(self) -> None:
        """A leftover ignoring SIGTERM (output redirected) is SIGKILLed after grace."""
        # Long enough that the leftover is seen alive after the job's end and
        # a logs request, on a loaded machine too.
        grace = 3.0
        server = self.liveServer(grace)
        ready = sharedPath(self)
        # The main process exits only once the leftover ignores SIGTERM.
        script = (
            '(trap "" TERM; : >"$1"; exec sleep 300) >/dev/null 2>&1 & echo $!; '
            'while [ ! -e "$1" ]; do sleep 0.01; done'
        )
        job = await server.createJob("sh", "-c", script, "sh", ready)
        cleanUpGroup(self, job["pid"])
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        self.assertEqual(ended["exit_code"], 0)
        _, output = await logs(server, job["id"])
        grandchild = int(output)
        cleanUpProcess(self, grandchild, job["pid"])
        # SIGTERM was sent when the main process exited, and ignored...
        self.assertTrue(processAlive(grandchild))
        # ...so SIGKILL follows after the grace period.
        await waitUntil(
            lambda: not processAlive(grandchild),
            grace + 3.0,
            "the TERM-ignoring leftover to be killed",
        )
        self.assertEqual(groupMembers(job["pid"]), [])
        code, job = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual((code, job["status"]), (200, "COMPLETED"))

    async def test_leftoverHoldingOutputKilledAfterGrace(self) -> None:
        """A TERM-ignoring leftover holding stdout is killed; the job COMPLETES."""
        grace = 1.0
        server = self.liveServer(grace)
        ready = sharedPath(self)
        script = (
            '(trap "" TERM; echo child-said-hi; : >"$1"; exec sleep 300) & '
            'echo $!; while [ ! -e "$1" ]; do sleep 0.01; done'
        )
        job = await server.createJob("sh", "-c", script, "sh", ready)
        cleanUpGroup(self, job["pid"])
        output = await waitForOutput(server, job["id"], b"child-said-hi")
        # The child may speak before its parent has printed its pid.
        output = await waitUntil(
            lambda: hasPidLine(server, job["id"]), 10.0, "the leftover's pid"
        )
        match = re.search(rb"^([0-9]+)$", output, re.MULTILINE)
        assert match is not None, output
        grandchild = int(match.group(1))
        cleanUpProcess(self, grandchild, job["pid"])
        ended = await server.waitEnded(job["id"], timeout=grace + 5.0)
        self.assertEqual(ended["status"], "COMPLETED")
        self.assertEqual(ended["exit_code"], 0)
        await waitGone(job["pid"], grandchild)
        _, body = await logs(server, job["id"])
        self.assertEqual(sorted(body.splitlines()), sorted(output.splitlines()))

    async def test_shutdownKillsStubbornGroupOnce(self) -> None:
        """Server shutdown SIGKILLs a TERM-ignoring group once and is done."""
        grace = 1.0
        messages: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            messages.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = self.liveServer(grace)
        job = await server.createJob("sh", "-c", TERM_IGNORING)
        cleanUpGroup(self, job["pid"])
        await waitForOutput(server, job["id"], b"ready")
        started = time.monotonic()
        await server.stop()
        elapsed = time.monotonic() - started
        await waitGone(job["pid"])
        kills = [m for m in messages if f"process group {job['pid']} killed" in m]
        self.assertEqual(len(kills), 1, kills)
        # One grace period, not two.
        self.assertLess(elapsed, grace * 1.8)


class StopWithoutCgroupsTests(StopTests):
    """
    The same without cgroups (as root, with cgroups, this path never runs),
    and with jobs under a fixed account rather than a dynamic uid (whose
    leftovers are swept when the job is over): stop must reach every process
    through the job's process group alone. The account is one user's (alice
    mapped to nobody): the shared --run-as account's jobs, and those of an
    account several users are mapped to, get a PID namespace each, whose
    init's end kills what the job left.
    """

    serverOptions = ("--cgroups=off",)

    def liveServer(self, grace: float) -> LiveServer:
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            for line in DEVELOPMENT_USERS.splitlines():
                f.write(line + (":nobody\n" if line.startswith("alice:") else "\n"))
        os.chmod(users, 0o600)
        return LiveServer(self, f"--users={users}", grace=grace)


class StopWithoutCgroupsDynamicTests(StopTests):
    """
    The same without cgroups, with dynamic uids (the default as root): a
    uid waiting for its leftovers to die never outlives the server's
    shutdown (no pending call left behind).
    """

    serverOptions = ("--cgroups=off",)


class StopChainTests(StopTests):
    """The same with sandboxed jobs started through the exec chain."""

    serverOptions = ("--launcher=off",)


class NeighbourTests(TestCase):
    """Several servers on one host (separate state dirs) leave each other alone."""

    async def test_secondServerLeavesFirstServersJobsAlone(self) -> None:
        """Starting another server does not kill or touch a running server's jobs."""
        first = LiveServer(self, grace=1.0)
        job = await first.createJob("sleep", "300")
        cleanUpGroup(self, job["pid"])
        self.assertTrue(processAlive(job["pid"]))
        second = LiveServer(self, grace=1.0)
        self.assertTrue(processAlive(job["pid"]), "killed by the second's start")
        other = await second.createJob("true")
        await second.waitEnded(other["id"])
        await second.stop()
        self.assertTrue(processAlive(job["pid"]), "killed by the second's stop")
        code, current = await first.json("GET", f"/jobs/{job['id']}")
        self.assertEqual((code, current["status"]), (200, "RUNNING"), current)
        code, stopped = await first.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual((code, stopped["status"]), (200, "STOPPED"), stopped)
        self.assertEqual(stopped["signal"], "SIGTERM")


class OutputTests(TestCase):
    """Output is spooled byte for byte and served to any number of readers."""

    def writeFile(self, data: bytes) -> str:
        path = sharedPath(self)
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def binaryJob(self) -> tuple[LiveServer, str, bytes, bytes]:
        """A finished job whose stdout and stderr are arbitrary binary data."""
        out = (
            bytes(range(256))
            + b"\x00\x00 invalid UTF-8: \xff\xfe\xc3\x28\xed\xa0\x80\xf8\x88 \r\n\x1b"
            + os.urandom(3 * READ_CHUNK + 17)
            + bytes(range(255, -1, -1))
        )
        err = b"\x00" + os.urandom(READ_CHUNK + 5) + b"\xc0\xaf end without newline"
        server = LiveServer(self)
        job = await server.createJob(
            "sh",
            "-c",
            'cat "$1"; cat "$2" >&2',
            "sh",
            self.writeFile(out),
            self.writeFile(err),
        )
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(ended["stdout_bytes"], len(out))
        self.assertEqual(ended["stderr_bytes"], len(err))
        return server, job["id"], out, err

    async def test_binaryStdoutRoundTrip(self) -> None:
        """Every byte value, NULs and invalid UTF-8 come back from stdout intact."""
        server, jobId, out, _ = await self.binaryJob()
        for query in ("", "?stream=stdout", "?follow=true"):
            response, body = await logs(server, jobId, query=query)
            self.assertEqual(response.code, 200)
            self.assertEqual(len(body), len(out), query)
            self.assertTrue(body == out, f"stdout differs ({query})")
        contentType = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(contentType, [b"application/octet-stream"])

    async def test_binaryStderrRoundTrip(self) -> None:
        """stream=stderr returns the job's stderr byte for byte."""
        server, jobId, _, err = await self.binaryJob()
        for query in ("?stream=stderr", "?stream=stderr&follow=true"):
            response, body = await logs(server, jobId, query=query)
            self.assertEqual(response.code, 200)
            self.assertTrue(body == err, f"stderr differs ({query})")

    async def test_offsetReturnsTail(self) -> None:
        """offset=N returns the bytes from N on (empty past the end)."""
        server, jobId, out, err = await self.binaryJob()
        for offset in (0, 1, 255, 256, READ_CHUNK, READ_CHUNK + 1, len(out) - 1):
            for follow in ("false", "true"):
                response, body = await logs(
                    server, jobId, query=f"?offset={offset}&follow={follow}"
                )
                self.assertEqual(response.code, 200)
                self.assertTrue(body == out[offset:], f"offset={offset} differs")
                if follow == "false":
                    self.assertEqual(response.length, len(out) - offset)
        for offset in (len(out), len(out) + 1, 10**12):
            response, body = await logs(server, jobId, query=f"?offset={offset}")
            self.assertEqual((response.code, body), (200, b""), offset)
            self.assertEqual(response.length, 0)
        response, body = await logs(server, jobId, query="?stream=stderr&offset=7")
        self.assertTrue(body == err[7:], "stderr tail differs")

    async def test_concurrentAndLateFollowersGetIdenticalOutput(self) -> None:
        """Five concurrent followers and a late one all get every byte, then end."""
        server = LiveServer(self)
        go = sharedPath(self)
        script = (
            'echo start; while [ ! -e "$1" ]; do sleep 0.02; done; i=0; '
            'while [ $i -lt 20 ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done'
        )
        job = await server.createJob("sh", "-c", script, "sh", go)
        cleanUpGroup(self, job["pid"])
        expectedOutput = b"start\n" + b"".join(b"line %d\n" % i for i in range(20))
        url = f"{server.url}/jobs/{job['id']}/logs?follow=true"
        responses = await gatherResults(
            [
                server.http.request("GET", url, headers=basic("alice"), unbuffered=True)
                for _ in range(5)
            ]
        ).addTimeout(30, reactor)
        endedWhenDone: list[bool] = []

        def done(body: bytes) -> bytes:
            endedWhenDone.append(server.manager.record(job["id"]).status.ended)
            return body

        bodies = []
        for response in responses:
            self.assertEqual(response.code, 200)
            status = response.headers.getRawHeaders(b"x-job-status")
            self.assertEqual(status, [b"RUNNING"])
            bodies.append(treq.content(response).addCallback(done))
        # The job waits for the go file: no follower can be done yet.
        self.assertFalse(any(d.called for d in bodies))
        self.assertEqual(server.manager.record(job["id"]).status.value, "RUNNING")
        with open(go, "w"):
            pass
        received = await gatherResults(bodies).addTimeout(30, reactor)
        self.assertEqual(endedWhenDone, [True] * 5)
        for body in received:
            self.assertEqual(body, expectedOutput)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        late = await server.http.request(
            "GET", url, headers=basic("alice"), unbuffered=True
        )
        self.assertEqual(late.headers.getRawHeaders(b"x-job-status"), [b"COMPLETED"])
        lateBody = await treq.content(late).addTimeout(30, reactor)
        self.assertEqual(lateBody, expectedOutput)

    async def test_followerGetsHeadersBeforeAnyOutput(self) -> None:
        """A follower of a silent running job gets its 200 and headers at once."""
        server = LiveServer(self)
        go = sharedPath(self)
        script = 'while [ ! -e "$1" ]; do sleep 0.02; done; echo done'
        job = await server.createJob("sh", "-c", script, "sh", go)
        cleanUpGroup(self, job["pid"])
        request = server.http.request(
            "GET",
            f"{server.url}/jobs/{job['id']}/logs?follow=true",
            headers=basic("alice"),
            unbuffered=True,
        )
        arrived: list[object] = []
        request.addBoth(lambda result: arrived.append(result) or result)
        try:
            await waitUntil(lambda: arrived, 5.0, "headers")
        except AssertionError:
            pass
        headersBeforeOutput = bool(arrived)
        # Let the job write and end, so that a request still waiting completes.
        with open(go, "w"):
            pass
        response = await request.addTimeout(30, reactor)
        body = await treq.content(response).addTimeout(30, reactor)
        self.assertEqual(body, b"done\n")
        self.assertTrue(
            headersBeforeOutput,
            "no response headers within 5 s for a follower of a job that has "
            "not written anything yet: they only came with the first output",
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"x-job-status"), [b"RUNNING"])

    async def test_followerDisconnectIsClean(self) -> None:
        """A follower that hangs up mid-stream leaves no error and harms no one."""
        server = LiveServer(self)
        go = sharedPath(self)
        script = 'echo first; while [ ! -e "$1" ]; do sleep 0.02; done; echo second'
        job = await server.createJob("sh", "-c", script, "sh", go)
        cleanUpGroup(self, job["pid"])
        url = f"{server.url}/jobs/{job['id']}/logs?follow=true"
        quitter = await server.http.request(
            "GET", url, headers=basic("alice"), unbuffered=True
        )
        stayer = await server.http.request(
            "GET", url, headers=basic("alice"), unbuffered=True
        )
        stayerBody = treq.content(stayer)
        hungUp = HangUpAfterFirstChunk()
        quitter.deliverBody(hungUp)
        await hungUp.lost.addTimeout(30, reactor)
        self.assertEqual(bytes(hungUp.received), b"first\n")
        self.assertIsNotNone(hungUp.reason)
        with open(go, "w"):
            pass
        self.assertEqual(await stayerBody.addTimeout(30, reactor), b"first\nsecond\n")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        problems = self.flushLoggedErrors()
        self.assertEqual([str(f.value) for f in problems], [])

    async def test_followerFromOffsetWhileRunning(self) -> None:
        """A follower joining mid-run at an offset gets exactly the rest."""
        server = LiveServer(self)
        go = sharedPath(self)
        script = 'echo first; while [ ! -e "$1" ]; do sleep 0.02; done; echo second'
        job = await server.createJob("sh", "-c", script, "sh", go)
        cleanUpGroup(self, job["pid"])
        await waitForOutput(server, job["id"], b"first\n")
        url = f"{server.url}/jobs/{job['id']}/logs?follow=true&offset=3"
        response = await server.http.request(
            "GET", url, headers=basic("alice"), unbuffered=True
        )
        body = treq.content(response)
        self.assertFalse(body.called)
        with open(go, "w"):
            pass
        self.assertEqual(await body.addTimeout(30, reactor), b"st\nsecond\n")


class EnvironmentTests(TestCase):
    """What a job's process sees: a clean environment, its cwd, clear failures."""

    async def test_jobEnvironmentIsCleanAndHasRequestEnv(self) -> None:
        """A job sees PATH, LANG, HOME and its request env, nothing of the server's."""
        os.environ["JOBWORKER_TEST_SECRET"] = "x"
        self.addCleanup(os.environ.pop, "JOBWORKER_TEST_SECRET", None)
        server = LiveServer(self)
        requestEnv = {"FOO": "bar baz", "EMPTY": "", "LANG": "C"}
        job = await server.createJob("env", env=requestEnv)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        _, output = await logs(server, job["id"])
        seen = dict(line.split("=", 1) for line in output.decode().splitlines())
        self.assertNotIn("JOBWORKER_TEST_SECRET", seen)
        for name in ("PATH", "HOME"):
            self.assertTrue(seen.get(name), name)
        self.assertIn("/bin", seen["PATH"].split(":"))
        for name, value in requestEnv.items():
            self.assertEqual(seen.get(name), value, name)
        # The job's identity (USER, LOGNAME, SHELL), and PWD: its own folder.
        identity = {"USER", "LOGNAME", "SHELL", "PWD"}
        allowed = {"PATH", "LANG", "HOME", *identity, *requestEnv}
        leaked = sorted(n for n in os.environ if n in seen and n not in allowed)
        self.assertEqual(leaked, [])
        if "PWD" in seen:
            self.assertNotEqual(seen["PWD"], os.getcwd())
            self.assertNotEqual(seen["PWD"], os.environ.get("PWD"))
        # The environment may hold secrets: the API never shows it.
        self.assertNotIn("env", ended)

    async def test_cwdIsUsed(self) -> None:
        """A job with cwd set runs in that directory."""
        server = LiveServer(self)
        directory = sharedPath(self) + " with space"
        os.makedirs(directory)
        job = await server.createJob("pwd", cwd=directory)
        self.assertEqual(job["cwd"], directory)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        _, output = await logs(server, job["id"])
        self.assertEqual(output, os.path.realpath(directory).encode() + b"\n")

    async def test_badCwdFails(self) -> None:
        """A cwd that does not exist gives a FAILED job (201) with a clear error."""
        server = LiveServer(self)
        missing = sharedPath(self)
        job = await server.createJob("pwd", cwd=missing)
        for record in (job, (await server.json("GET", f"/jobs/{job['id']}"))[1]):
            self.assertEqual(record["status"], "FAILED")
            self.assertIsNone(record["exit_code"])
            self.assertIsNone(record["pid"])
            self.assertIn("working directory", record["error"])
            self.assertIn(missing, record["error"])

    async def test_missingCommandFails(self) -> None:
        """A command that is not in PATH gives a FAILED job (201) with a clear error."""
        server = LiveServer(self)
        job = await server.createJob("jobworker-no-such-command", "arg")
        self.assertEqual(job["status"], "FAILED")
        self.assertIsNone(job["exit_code"])
        self.assertIsNone(job["signal"])
        self.assertIn("jobworker-no-such-command", job["error"])
        self.assertIn("not found", job["error"])
        response, body = await logs(server, job["id"])
        self.assertEqual((response.code, body), (200, b""))

    async def test_missingCommandPathFails(self) -> None:
        """A command path that does not exist gives a FAILED job with a clear error."""
        server = LiveServer(self)
        missing = sharedPath(self)
        job = await server.createJob(missing)
        self.assertEqual(job["status"], "FAILED")
        self.assertIsNone(job["exit_code"])
        self.assertIn(missing, job["error"])


class TLSTests(TestCase):
    """The listener speaks TLS 1.3 only, with a certificate from our CA."""

    def openssl(self) -> str:
        path = shutil.which("openssl")
        if path is None:
            print("openssl is not installed: skipping the s_client checks")
            self.skipTest("openssl is not installed")
        return path

    async def sClient(self, port: int, *options: str) -> tuple[bytes, bytes, int]:
        command = " ".join(
            [
                self.openssl(),
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                *options,
                "</dev/null",
            ]
        )
        result = getProcessOutputAndValue(
            "/bin/sh", ["-c", command], env=dict(os.environ), reactor=reactor
        )
        return await result.addTimeout(30, reactor)  # type: ignore[no-any-return]

    async def test_tls12Refused(self) -> None:
        """openssl s_client limited to TLS 1.2 cannot connect."""
        server = LiveServer(self)
        out, err, code = await self.sClient(server.port, "-tls1_2")
        self.assertNotEqual(code, 0, (out, err))
        self.assertIn(b"Cipher is (NONE)", out)
        self.assertNotIn(b"TLSv1.3", out)

    async def test_tls13Accepted(self) -> None:
        """openssl s_client with TLS 1.3 connects and verifies against our CA."""
        server = LiveServer(self)
        out, err, code = await self.sClient(
            server.port, "-tls1_3", "-CAfile", CA, "-verify_return_error"
        )
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"TLSv1.3", out)
        self.assertIn(b"Verify return code: 0 (ok)", out)

    async def test_clientTrustingOtherCARefused(self) -> None:
        """A client that trusts a different CA refuses the server's certificate."""
        openssl = self.openssl()
        directory = sharedPath(self)
        os.makedirs(directory)
        otherCA = os.path.join(directory, "other-ca.pem")
        result = runSync(
            openssl,
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            os.path.join(directory, "other-ca.key"),
            "-out",
            otherCA,
            "-days",
            "1",
            "-subj",
            "/CN=some other CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        server = LiveServer(self)
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = HTTPClient(
            Agent(reactor, contextFactory=TrustRootPolicy(otherCA), pool=pool)
        )
        self.addCleanup(pool.closeCachedConnections)
        request = client.get(f"{server.url}/jobs", headers=basic("ada"))
        failure = await self.assertFailure(request, ResponseNeverReceived)
        self.assertTrue(
            any(reason.check(SSL.Error) for reason in failure.reasons),
            failure.reasons,
        )
        # The same request trusting the right CA goes through.
        code, _ = await server.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200)
