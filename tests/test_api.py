"""
Unit tests for L{jobworker.server.api}: the Klein routes through treq's StubTreq, on
a real JobManager over the fake process reactor.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from jobworker.auth.authenticator import Authenticator, _checkPassword, makePortal
from jobworker.auth.tokens import TokenSigner
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs import store
from jobworker.jobs.records import JobRecord
from jobworker.jobs.validation import JobRequest
from jobworker.server.api import JobsAPI
from jobworker.server.requests import (
    MAX_BODY_BYTES,
    BoundedRequest,
    boundedRequestClass,
)

from .fakes import FakeProcessReactor, GroupKiller, SpawnedProcess, forbidRealKill
from .support import giveTurns

BASE = "https://jobworker.test"
GRACE = 5.0
USERS = ("alice", "bob", "rita", "ada")
#: Who asks: the four development users, and nobody (no credentials).
NOBODY = None

#: The development users, parsed once (parsing hashes a dummy password).
DEVELOPMENT_USERS = UserDatabase.development()


@functools.cache
def _cachedCheck(password: bytes, hashed: bytes) -> bool:
    # bcrypt.checkpw is a pure function; memoising it keeps a few hundred
    # cost-10 checks from dominating the run. test_auth covers the checker.
    return _checkPassword(password, hashed)


def syncRunner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A synchronous runInThread (memoised for the bcrypt check)."""
    if f is _checkPassword:
        return maybeDeferred(_cachedCheck, *args)
    return maybeDeferred(f, *args)


def authHeaders(user: str | None, password: str | None = None) -> dict[bytes, Any]:
    """Basic credentials for a development user (none for None)."""
    if user is None:
        return {}
    if password is None:
        password = f"{user}-pass"
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {b"authorization": [f"Basic {token}".encode("ascii")]}


class Response:
    """A finished response: code, headers and the whole body."""

    def __init__(self, code: int, headers: Any, length: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        #: The announced Content-Length (an int), or UNKNOWN_LENGTH.
        self.length = length
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """The last value of header C{name}, or None."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


class APITestCase(SynchronousTestCase):
    """The API over a real manager on a fake process reactor."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.manager = localJobManager(self.reactor, self.mktemp(), GRACE, self.killer)
        self.addCleanup(self.manager.close)
        self.authenticator = Authenticator(
            makePortal(DEVELOPMENT_USERS, syncRunner),
            tokens=TokenSigner(b"k" * 32, self.reactor, 3600.0),
        )
        self.api = JobsAPI(self.manager, self.authenticator, self.reactor)
        self.treq = StubTreq(self.api.app.resource())

    # -- requests ---------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: Any = None,
        raw: bytes | None = None,
        password: str | None = None,
        headers: dict[bytes, Any] | None = None,
    ) -> Deferred[Response]:
        """Send a request; a Deferred of the complete L{Response}. C{headers}
        stand instead of C{user}'s credentials."""
        if headers is None:
            headers = self.credentials(user, password)
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if body is not None or method in ("POST", "DELETE"):
            headers[b"content-type"] = [b"application/json"]
        d = self.treq.request(method, BASE + path, headers=headers, data=data)

        def collect(response: Any) -> Deferred[Response]:
            return self.treq.content(response).addCallback(
                lambda content: Response(
                    response.code, response.headers, response.length, content
                )
            )

        d.addCallback(collect)
        self.treq.flush()
        giveTurns(self.api, self.reactor, self.treq.flush)
        return d

    def credentials(self, user: str | None, password: str | None) -> dict[bytes, Any]:
        """The headers that authenticate C{user} (Basic here)."""
        return authHeaders(user, password)

    def call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Response:
        """Send a request that completes at once; its L{Response}."""
        return self.successResultOf(self.send(method, path, *args, **kwargs))

    def assertError(self, response: Response, code: int) -> dict[str, Any]:
        """C{response} is a JSON error with C{code}; its decoded body."""
        self.assertEqual(response.code, code, response.body)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        body = response.json()
        self.assertIsInstance(body, dict)
        self.assertIsInstance(body.get("error"), str)
        self.assertTrue(body["error"].strip())
        return body  # type: ignore[no-any-return]

    # -- jobs -------------------------------------------------------------------

    def createJob(self, owner: str = "alice", command: str = "true") -> JobRecord:
        """A running job, created through the manager."""
        return self.manager.create(JobRequest(command, [], {}, None), owner=owner)

    def spawned(self, record: JobRecord) -> SpawnedProcess:
        """The fake process of a job."""
        [spawned] = [s for s in self.reactor.spawned if s.pid == record.pid]
        return spawned

    def endJob(
        self, record: JobRecord, code: int = 0, signum: int | None = None
    ) -> None:
        """The job's whole group ends (exit C{code}, or killed by C{signum})."""
        spawned = self.spawned(record)
        self.killer.groupGone(spawned.pid)
        if signum is None:
            spawned.exit(code)
        else:
            spawned.kill(signum)
        self.treq.flush()


class RoleMatrixTests(APITestCase):
    """Every route, as every role (and as nobody), gets the expected status."""

    #: route -> expected status per user; alice owns every job used.
    EXPECTED: dict[str, dict[str | None, int]] = {
        "POST /jobs": {"alice": 201, "bob": 201, "rita": 403, "ada": 201, None: 401},
        "GET /jobs": {"alice": 200, "bob": 200, "rita": 200, "ada": 200, None: 401},
        "GET /jobs/{id}": {
            "alice": 200,
            "bob": 200,
            "rita": 200,
            "ada": 200,
            None: 401,
        },
        "GET /jobs/{id}/status": {
            "alice": 200,
            "bob": 200,
            "rita": 200,
            "ada": 200,
            None: 401,
        },
        "POST /jobs/{id}/stop": {
            "alice": 200,
            "bob": 403,
            "rita": 403,
            "ada": 200,
            None: 401,
        },
        "GET /jobs/{id}/logs": {
            "alice": 200,
            "bob": 403,
            "rita": 403,
            "ada": 200,
            None: 401,
        },
        "DELETE /jobs/{id}": {
            "alice": 200,
            "bob": 403,
            "rita": 403,
            "ada": 200,
            None: 401,
        },
        "POST /tokens": {"alice": 201, "bob": 201, "rita": 201, "ada": 201, None: 401},
        # (In this order: ada's POST drains the server, her DELETE ends it.)
        "GET /drain": {"alice": 403, "bob": 403, "rita": 403, "ada": 200, None: 401},
        "POST /drain": {"alice": 403, "bob": 403, "rita": 403, "ada": 200, None: 401},
        "DELETE /drain": {"alice": 403, "bob": 403, "rita": 403, "ada": 200, None: 401},
    }

    def attempt(self, route: str, user: str | None) -> Response:
        """Do C{route} as C{user} on a fresh job of alice's."""
        method, template = route.split(" ")
        if "{id}" not in template:
            path = template
        else:
            record = self.createJob(owner="alice")
            if method == "DELETE":
                self.endJob(record)
            path = template.format(id=record.id)
        body = {"command": "true"} if route == "POST /jobs" else None
        d = self.send(method, path, user, body=body)
        if route == "POST /jobs/{id}/stop" and self.killer.signalsTo(record.pid or 0):
            # An accepted stop answers once the job has ended: end it on TERM.
            self.assertNoResult(d)
            self.assertEqual(self.killer.signalsTo(record.pid or 0), [signal.SIGTERM])
            self.endJob(record, signum=signal.SIGTERM)
        return self.successResultOf(d)

    def test_everyRouteEveryRole(self) -> None:
        """Each route x role combination answers with the expected status."""
        results = {}
        for route in self.EXPECTED:
            for user in (*USERS, NOBODY):
                response = self.attempt(route, user)
                results[(route, user)] = response.code
                if response.code >= 400:
                    self.assertError(response, response.code)
                else:
                    self.assertEqual(
                        response.header(b"content-type"),
                        b"application/octet-stream"
                        if route.endswith("/logs")
                        else b"application/json",
                    )
        expectedAll = {
            (route, user): code
            for route, codes in self.EXPECTED.items()
            for user, code in codes.items()
        }
        self.assertEqual(results, expectedAll)

    def test_unauthenticatedEverywhere(self) -> None:
        """Every route without credentials is 401 with a Basic challenge."""
        record = self.createJob()
        for route in self.EXPECTED:
            method, template = route.split(" ")
            response = self.call(method, template.format(id=record.id), NOBODY)
            self.assertError(response, 401)
            self.assertEqual(
                response.header(b"www-authenticate"), b'Basic realm="jobworker"'
            )

    def test_wrongPassword(self) -> None:
        """A wrong password is 401 with the challenge."""
        response = self.call("GET", "/jobs", "alice", password="bob-pass")
        self.assertError(response, 401)
        self.assertEqual(
            response.header(b"www-authenticate"), b'Basic realm="jobworker"'
        )

    def test_scriptChallengedForBearer(self) -> None:
        """
        A browser script's request (fetch: Sec-Fetch-Mode cors or
        same-origin) is challenged for Bearer, so that no browser puts up a
        password dialog in front of the page; a navigation still for Basic.
        """
        for mode, scheme in (
            (b"cors", b"Bearer"),
            (b"same-origin", b"Bearer"),
            (b"navigate", b"Basic"),
            (b"Navigate ", b"Basic"),
        ):
            d = self.treq.request(
                "POST",
                BASE + "/tokens",
                headers={
                    b"content-type": [b"application/json"],
                    b"sec-fetch-mode": [mode],
                },
                data=b"{}",
            )
            self.treq.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 401, mode)
            self.assertEqual(
                response.headers.getRawHeaders(b"www-authenticate"),
                [scheme + b' realm="jobworker"'],
                mode,
            )

    def test_unknownUser(self) -> None:
        """An unknown user is 401."""
        self.assertError(self.call("GET", "/jobs", "mallory", password="x"), 401)

    def test_forbiddenIsJSON(self) -> None:
        """403 is a JSON error without a challenge."""
        response = self.call("POST", "/jobs", "rita", body={"command": "true"})
        body = self.assertError(response, 403)
        self.assertIn("jobs.create", body["error"])
        self.assertIsNone(response.header(b"www-authenticate"))

    def test_forbiddenStopSendsNothing(self) -> None:
        """A refused stop sends no signal and leaves the job running."""
        record = self.createJob(owner="alice")
        self.assertError(self.call("POST", f"/jobs/{record.id}/stop", "bob"), 403)
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(
            self.call("GET", f"/jobs/{record.id}", "bob").json()["status"], "RUNNING"
        )

    def test_forbiddenDeleteKeepsJob(self) -> None:
        """A refused delete leaves the job in place."""
        record = self.createJob(owner="alice")
        self.endJob(record)
        self.assertError(self.call("DELETE", f"/jobs/{record.id}", "bob"), 403)
        self.assertEqual(self.call("GET", f"/jobs/{record.id}", "bob").code, 200)


class CreateTests(APITestCase):
    """POST /jobs."""

    def test_created(self) -> None:
        """201 with a Location header and the job, RUNNING, owned by the caller."""
        response = self.call(
            "POST", "/jobs", "bob", body={"command": "sh", "args": ["-c", "x"]}
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        job = response.json()
        self.assertEqual(response.header(b"location"), f"/jobs/{job['id']}".encode())
        self.assertEqual(str(uuid.UUID(job["id"])), job["id"])
        self.assertEqual(job["owner"], "bob")
        self.assertEqual(job["status"], "RUNNING")
        self.assertEqual(job["command"], "sh")
        self.assertEqual(job["args"], ["-c", "x"])
        self.assertNotIn("env", job)
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.args[-3:], ["sh", "-c", "x"])
        self.assertEqual(job["pid"], spawned.pid)

    def test_envNotEchoed(self) -> None:
        """The env reaches the process but is not echoed back."""
        response = self.call(
            "POST", "/jobs", body={"command": "true", "env": {"TOKEN": "s3cret"}}
        )
        self.assertEqual(response.code, 201)
        self.assertNotIn(b"s3cret", response.body)
        env = self.reactor.spawned[0].env
        assert env is not None
        self.assertEqual(env["TOKEN"], "s3cret")

    def test_commandNotFoundIsFailedJob(self) -> None:
        """A command that cannot start is still 201, a FAILED job."""
        response = self.call(
            "POST", "/jobs", body={"command": "jobworker-no-such-command"}
        )
        self.assertEqual(response.code, 201)
        job = response.json()
        self.assertEqual(job["status"], "FAILED")
        self.assertIsNone(job["exit_code"])
        self.assertIn("not found in PATH", job["error"])
        self.assertEqual(self.reactor.spawned, [])

    def test_badRequests(self) -> None:
        """Malformed, mistyped, empty, NUL-bearing or unknown-field bodies: 400."""
        bodies: list[bytes] = [
            b"{not json",
            b"",
            b"[]",
            b'"true"',
            json.dumps({"args": ["x"]}).encode(),
            json.dumps({"command": ""}).encode(),
            json.dumps({"command": 5}).encode(),
            json.dumps({"command": "true", "args": "x"}).encode(),
            json.dumps({"command": "true", "args": [1]}).encode(),
            json.dumps({"command": "true", "env": {"A": 1}}).encode(),
            json.dumps({"command": "true", "env": ["A=1"]}).encode(),
            json.dumps({"command": "true", "env": {"A=B": "c"}}).encode(),
            json.dumps({"command": "true", "cwd": 7}).encode(),
            json.dumps({"command": "tr\x00ue"}).encode(),
            json.dumps({"command": "true", "args": ["a\x00"]}).encode(),
            json.dumps({"command": "true", "env": {"A": "\x00"}}).encode(),
            json.dumps({"command": "true", "cwd": "/\x00"}).encode(),
            json.dumps({"command": "true", "user": "root"}).encode(),
            b'{"command": "\xff"}',
        ]
        for raw in bodies:
            response = self.call("POST", "/jobs", "alice", raw=raw)
            self.assertError(response, 400)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.manager.page(), ([], None))

    def test_tooLarge(self) -> None:
        """A body over 64 KiB is 413, and no job is created."""
        raw = b'{"command": "true", "args": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
        self.assertGreater(len(raw), MAX_BODY_BYTES)
        response = self.call("POST", "/jobs", "alice", raw=raw)
        body = self.assertError(response, 413)
        self.assertIn(str(MAX_BODY_BYTES), body["error"])
        self.assertEqual(self.reactor.spawned, [])

    def test_oneByteTooLarge(self) -> None:
        """MAX_BODY_BYTES + 1 bytes is 413."""
        raw = b'{"command": "true"}'.ljust(MAX_BODY_BYTES + 1)
        self.assertError(self.call("POST", "/jobs", "alice", raw=raw), 413)

    def test_exactlyMaxBody(self) -> None:
        """A body of exactly 64 KiB is accepted."""
        raw = b'{"command": "true"}'.ljust(MAX_BODY_BYTES)
        self.assertEqual(len(raw), MAX_BODY_BYTES)
        self.assertEqual(self.call("POST", "/jobs", "alice", raw=raw).code, 201)

    def test_tooLargeNeedsAuthFirst(self) -> None:
        """Without credentials, even a huge body is 401 first."""
        raw = b"x" * (MAX_BODY_BYTES + 10)
        self.assertError(self.call("POST", "/jobs", NOBODY, raw=raw), 401)


def keptBody(
    requestClass: type[BoundedRequest], chunks: list[bytes], length: int | None
) -> bytes:
    """
    What a request of C{requestClass} keeps of a body received in C{chunks},
    announced with C{length} (None: chunked; large: spooled to a file).
    """
    request = requestClass(DummyChannel())
    request.gotLength(length)
    for chunk in chunks:
        request.handleContentChunk(chunk)
    content = request.content
    assert content is not None
    content.seek(0)
    kept: bytes = content.read()
    return kept


class BoundedRequestTests(SynchronousTestCase):
    """
    The body cap bounds what is kept (memory or spool file), not only the
    answer: past the cap, a body is read and dropped.
    """

    def test_hugeBodyKeepsCapPlusOne(self) -> None:
        """
        Of 8 MiB sent in 64 KiB chunks, chunked or announced, only the first
        cap + 1 bytes are kept (enough to tell that the cap was passed).
        """
        chunks = [bytes([n]) * 65536 for n in range(128)]
        body = b"".join(chunks)
        for length in (None, len(body)):
            kept = keptBody(boundedRequestClass(1000), chunks, length)
            self.assertEqual(kept, body[:1001], length)

    def test_defaultCap(self) -> None:
        """Without a configured cap, MAX_BODY_BYTES + 1 bytes are kept."""
        body = b"x" * (4 * MAX_BODY_BYTES)
        kept = keptBody(BoundedRequest, [body], None)
        self.assertEqual(len(kept), MAX_BODY_BYTES + 1)

    def test_bodyUnderCapKeptWhole(self) -> None:
        """A body up to the cap is kept whole, however it is cut into chunks."""
        body = bytes(range(256)) * 4
        chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
        kept = keptBody(boundedRequestClass(len(body)), chunks, len(body))
        self.assertEqual(kept, body)

    def test_formBodiesAreNotParsed(self) -> None:
        """
        A form body (which the API refuses: JSON only) is never parsed into
        the request's args: they hold the query string alone.
        """
        body = b"stream=body&extra=1"
        request = BoundedRequest(DummyChannel())
        request.requestHeaders.setRawHeaders(
            b"content-type", [b"application/x-www-form-urlencoded"]
        )
        request.gotLength(len(body))
        request.handleContentChunk(body)
        request.requestReceived(b"POST", b"/jobs?stream=query", b"HTTP/1.1")
        self.assertEqual(request.args, {b"stream": [b"query"]})


class ListTests(APITestCase):
    """GET /jobs."""

    def test_listNewestFirst(self) -> None:
        """Every job is listed, newest first, with no further page."""
        ids = [self.createJob(owner).id for owner in ("alice", "bob", "ada")]
        body = self.call("GET", "/jobs", "rita").json()
        self.assertEqual([j["id"] for j in body["jobs"]], list(reversed(ids)))
        self.assertIsNone(body["next_cursor"])

    def test_empty(self) -> None:
        """No jobs: an empty list."""
        self.assertEqual(
            self.call("GET", "/jobs").json(), {"jobs": [], "next_cursor": None}
        )

    def test_paging(self) -> None:
        """limit and cursor page through every job once."""
        ids = [self.createJob().id for _ in range(5)]
        seen: list[str] = []
        path = "/jobs?limit=2"
        while True:
            body = self.call("GET", path).json()
            seen.extend(j["id"] for j in body["jobs"])
            if body["next_cursor"] is None:
                break
            self.assertIsInstance(body["next_cursor"], str)
            path = f"/jobs?limit=2&cursor={body['next_cursor']}"
        self.assertEqual(seen, list(reversed(ids)))

    def test_filters(self) -> None:
        """status and owner filter the list."""
        mine = self.createJob("alice")
        theirs = self.createJob("bob")
        self.endJob(theirs, code=1)
        byOwner = self.call("GET", "/jobs?owner=alice").json()["jobs"]
        self.assertEqual([j["id"] for j in byOwner], [mine.id])
        failed = self.call("GET", "/jobs?status=failed").json()["jobs"]
        self.assertEqual([j["id"] for j in failed], [theirs.id])

    def test_badParameters(self) -> None:
        """Bad limit, cursor, status or owner parameters are 400."""
        for query in (
            "limit=0",
            "limit=1001",
            "limit=ten",
            "limit=-1",
            "cursor=abc",
            "cursor=-5",
            "status=DONE",
            "owner=not%20a%20name",
        ):
            self.assertError(self.call("GET", f"/jobs?{query}"), 400)

    def test_hugeLimitIs400(self) -> None:
        """A limit with thousands of digits is 400, not a server error."""
        self.assertError(self.call("GET", "/jobs?limit=" + "9" * 5000), 400)


class StatusTests(APITestCase):
    """GET /jobs/{id} and /jobs/{id}/status."""

    def test_status(self) -> None:
        """Both routes give the same job object."""
        record = self.createJob()
        self.spawned(record).output(b"abc")
        first = self.call("GET", f"/jobs/{record.id}", "rita")
        second = self.call("GET", f"/jobs/{record.id}/status", "rita")
        self.assertEqual(first.code, 200)
        self.assertEqual(first.json(), second.json())
        self.assertEqual(first.json()["id"], record.id)
        self.assertEqual(first.json()["stdout_bytes"], 3)

    def test_ended(self) -> None:
        """An ended job shows its outcome."""
        record = self.createJob()
        self.endJob(record, code=3)
        job = self.call("GET", f"/jobs/{record.id}").json()
        self.assertEqual(job["status"], "FAILED")
        self.assertEqual(job["exit_code"], 3)
        self.assertEqual(job["error"], "exited with code 3")

    def test_endedJobAnsweredFromMemory(self) -> None:
        """
        Polling an ended job gives the same JSON each time (encoded once,
        after the first read from the store), and nothing once it is deleted.
        """
        record = self.createJob()
        self.endJob(record, code=0)
        self.manager._live.clear()  # as after clean-up: read from the store
        first = self.call("GET", f"/jobs/{record.id}")
        self.assertTrue(self.manager.record(record.id).final)
        second = self.call("GET", f"/jobs/{record.id}/status")
        self.assertEqual(first.body, second.body)
        self.assertEqual(second.header(b"content-type"), b"application/json")
        self.assertEqual(second.json()["status"], "COMPLETED")
        self.assertEqual(self.call("DELETE", f"/jobs/{record.id}").code, 200)
        self.assertError(self.call("GET", f"/jobs/{record.id}"), 404)

    def test_unknownJob(self) -> None:
        """An unknown job is 404 on every job route."""
        missing = str(uuid.uuid4())
        for method, path in (
            ("GET", f"/jobs/{missing}"),
            ("GET", f"/jobs/{missing}/status"),
            ("GET", f"/jobs/{missing}/logs"),
            ("POST", f"/jobs/{missing}/stop"),
            ("DELETE", f"/jobs/{missing}"),
        ):
            self.assertError(self.call(method, path, "ada"), 404)

    def test_malformedId(self) -> None:
        """A malformed or non-canonical id is 404."""
        record = self.createJob()
        for jobId in ("nope", "123", record.id.upper(), record.id.replace("-", "")):
            for suffix in ("", "/status", "/logs"):
                self.assertError(self.call("GET", f"/jobs/{jobId}{suffix}", "ada"), 404)
            self.assertError(self.call("POST", f"/jobs/{jobId}/stop", "ada"), 404)


class RoutingErrorTests(APITestCase):
    """Unknown routes and wrong methods are JSON errors too."""

    def test_wrongMethod(self) -> None:
        """A wrong method is 405 with a JSON body and an Allow header."""
        record = self.createJob()
        for method, path, allowed in (
            ("PUT", "/jobs", {b"GET", b"POST", b"DELETE"}),
            ("GET", f"/jobs/{record.id}/stop", {b"POST"}),
            ("POST", f"/jobs/{record.id}/logs", {b"GET"}),
            ("POST", f"/jobs/{record.id}", {b"GET", b"DELETE"}),
        ):
            response = self.call(method, path, "ada")
            body = self.assertError(response, 405)
            self.assertEqual(body, {"error": "method not allowed"})
            allow = response.header(b"allow")
            assert allow is not None, (method, path)
            methods = {m.strip() for m in allow.split(b",")}
            self.assertTrue(allowed <= methods, (method, path, allow))
        self.assertEqual(self.killer.calls, [])

    def test_noSuchRoute(self) -> None:
        """An unknown path is 404 with a JSON body. (C{/} leads to the
        dashboard: new user round 38.)"""
        for path in ("/nope", "/ui/x/y", "/jobs/a/b/c"):
            body = self.assertError(self.call("GET", path, "ada"), 404)
            self.assertEqual(body, {"error": "no such route"})


class StopTests(APITestCase):
    """POST /jobs/{id}/stop."""

    def test_stopWaitsForEnd(self) -> None:
        """The answer comes once the job has ended, STOPPED by the caller."""
        record = self.createJob(owner="alice")
        d = self.send("POST", f"/jobs/{record.id}/stop", "alice")
        self.assertNoResult(d)
        self.assertEqual(self.killer.calls, [(record.pid, signal.SIGTERM)])
        self.endJob(record, signum=signal.SIGTERM)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        job = response.json()
        self.assertEqual(job["status"], "STOPPED")
        self.assertEqual(job["stopped_by"], "alice")
        self.assertEqual(job["signal"], "SIGTERM")

    def test_stopEscalates(self) -> None:
        """A job ignoring SIGTERM is killed after grace; then the answer comes."""
        record = self.createJob(owner="alice")
        d = self.send("POST", f"/jobs/{record.id}/stop", "ada")
        self.reactor.advance(GRACE)
        self.treq.flush()
        self.assertNoResult(d)
        self.assertEqual(
            self.killer.signalsTo(record.pid or 0), [signal.SIGTERM, signal.SIGKILL]
        )
        self.endJob(record, signum=signal.SIGKILL)
        job = self.successResultOf(d).json()
        self.assertEqual(job["status"], "STOPPED")
        self.assertEqual(job["stopped_by"], "ada")
        self.assertEqual(job["signal"], "SIGKILL")

    def test_stopEndedConflict(self) -> None:
        """Stopping an ended job is 409 with the job in the body."""
        record = self.createJob(owner="alice")
        self.endJob(record, code=0)
        response = self.call("POST", f"/jobs/{record.id}/stop", "alice")
        body = self.assertError(response, 409)
        self.assertEqual(body["job"]["id"], record.id)
        self.assertEqual(body["job"]["status"], "COMPLETED")
        self.assertIn("COMPLETED", body["error"])

    def test_stopTwiceConflict(self) -> None:
        """A second stop after the job ended is 409, naming the first stopper."""
        record = self.createJob(owner="alice")
        d = self.send("POST", f"/jobs/{record.id}/stop", "alice")
        self.endJob(record, signum=signal.SIGTERM)
        self.successResultOf(d)
        body = self.assertError(
            self.call("POST", f"/jobs/{record.id}/stop", "ada"), 409
        )
        self.assertEqual(body["job"]["stopped_by"], "alice")
        self.assertEqual(body["job"]["status"], "STOPPED")


class DeleteTests(APITestCase):
    """DELETE /jobs/{id}."""

    def test_deleteEnded(self) -> None:
        """An ended job is deleted and then not found."""
        record = self.createJob(owner="alice")
        self.endJob(record)
        response = self.call("DELETE", f"/jobs/{record.id}", "alice")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"deleted": record.id})
        self.assertError(self.call("GET", f"/jobs/{record.id}", "alice"), 404)

    def test_deleteRightAfterStop(self) -> None:
        """A job stopped by SIGTERM (its group gone) can be deleted at once."""
        record = self.createJob(owner="alice")
        d = self.send("POST", f"/jobs/{record.id}/stop", "alice")
        self.endJob(record, signum=signal.SIGTERM)
        self.assertEqual(self.successResultOf(d).json()["status"], "STOPPED")
        response = self.call("DELETE", f"/jobs/{record.id}", "alice")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json(), {"deleted": record.id})

    def test_deletedWhileItsLeftoversAreKilled(self) -> None:
        """
        A job that ended but whose group still has members (killed after
        the grace) is gone as soon as it is deleted: it was still served,
        record and logs, until its leftovers were dead.
        """
        record = self.createJob(owner="alice")
        other = self.createJob(owner="alice")
        for job in (record, other):
            self.spawned(job).exit(0)  # the group is not gone: leftovers
        self.assertEqual(self.call("GET", f"/jobs/{record.id}", "alice").code, 200)
        response = self.call("DELETE", f"/jobs/{record.id}", "alice")
        self.assertEqual(response.code, 200)
        # The bulk delete takes such a job too (it skipped it, saying no
        # more were left).
        response = self.call("DELETE", "/jobs?status=COMPLETED", "alice")
        self.assertEqual(
            response.json(), {"deleted": 1, "more": False, "next_cursor": None}
        )
        for job in (record, other):
            for path in ("", "/status", "/logs"):
                response = self.call("GET", f"/jobs/{job.id}{path}", "alice")
                self.assertError(response, 404)
        listed = self.call("GET", "/jobs", "alice").json()["jobs"]
        self.assertEqual([job["id"] for job in listed], [])
        # What they left is killed at once (no stop reaches it any more),
        # and waited for until it is gone.
        for job in (record, other):
            self.assertEqual(self.killer.signalsTo(job.pid or 0)[-1], signal.SIGKILL)
        cleaning = self.manager._cleaning
        for job in (record, other):
            self.killer.groupGone(job.pid or 0)
        self.reactor.advance(GRACE)
        self.assertEqual(cleaning, {})
        self.successResultOf(self.manager.shutdown())

    def test_emptyObjectBody(self) -> None:
        """
        A body that is an empty JSON object, however spaced, is no body
        (the OpenAPI document: C{maxProperties: 0}); an object with a member
        is refused and the job stays.
        """
        record = self.createJob(owner="alice")
        self.endJob(record)
        for raw in (b'{"x": 1}', b"\n", b"[]"):
            refused = self.send("DELETE", f"/jobs/{record.id}", "alice", raw=raw)
            self.assertError(self.successResultOf(refused), 400)
        response = self.successResultOf(
            self.send("DELETE", f"/jobs/{record.id}", "alice", raw=b"{ \n }")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"deleted": record.id})

    def test_bulkDeleteGoesOnFromItsCursor(self) -> None:
        """
        One C{DELETE /jobs} searches L{store.SEARCH_SPAN} jobs at most (the
        filters but one are tested job by job): it may delete none and say
        where to go on from. Going on deletes every match, and nothing else.
        """
        self.patch(store, "SEARCH_SPAN", 4)
        jobs = [self.createJob(owner="alice") for _ in range(10)]
        for n, job in enumerate(jobs):
            self.spawned(job).exit(1 if n in (1, 8) else 0)
            self.killer.groupGone(job.pid or 0)
        answers = []
        cursor = ""
        while cursor is not None:
            query = "/jobs?status=FAILED" + (f"&cursor={cursor}" if cursor else "")
            response = self.call("DELETE", query, "alice")
            self.assertEqual(response.code, 200, response.body)
            answers.append(response.json())
            cursor = answers[-1]["next_cursor"]
            self.assertEqual(answers[-1]["more"], cursor is not None)
        self.assertEqual([a["deleted"] for a in answers], [1, 0, 1])
        left = [job["id"] for job in self.call("GET", "/jobs", "alice").json()["jobs"]]
        self.assertEqual(
            sorted(left), sorted(j.id for n, j in enumerate(jobs) if n not in (1, 8))
        )
        self.assertError(self.call("DELETE", "/jobs?cursor=x", "alice"), 400)

    def test_deleteRunningConflict(self) -> None:
        """A running job cannot be deleted: 409."""
        record = self.createJob(owner="alice")
        body = self.assertError(self.call("DELETE", f"/jobs/{record.id}", "ada"), 409)
        self.assertEqual(body["job"]["id"], record.id)


class LogsTests(APITestCase):
    """GET /jobs/{id}/logs."""

    OUTPUT = b"line one\n\x00binary\xff\xfe not utf-8\r\n"

    def test_exactBytes(self) -> None:
        """The body is exactly the bytes the job wrote, as octet-stream."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(self.OUTPUT)
        response = self.call("GET", f"/jobs/{record.id}/logs", "alice")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, self.OUTPUT)
        self.assertEqual(response.header(b"content-type"), b"application/octet-stream")
        self.assertEqual(response.header(b"x-content-type-options"), b"nosniff")
        self.assertEqual(response.header(b"x-job-status"), b"RUNNING")
        self.assertEqual(response.length, len(self.OUTPUT))

    def test_afterEnd(self) -> None:
        """An ended job's output is served from its file, unchanged."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(self.OUTPUT)
        self.endJob(record, code=0)
        response = self.call("GET", f"/jobs/{record.id}/logs", "ada")
        self.assertEqual(response.body, self.OUTPUT)
        self.assertEqual(response.header(b"x-job-status"), b"COMPLETED")

    def test_storedFileShorterThanItsRecord(self) -> None:
        """
        An ended job's file shorter than its record (a power cut before its
        last pages reached the disk): what is there is served, whole, with
        a Content-Length that says so (it was cut, or hung on the record's
        length).
        """
        record = self.createJob(owner="alice")
        self.spawned(record).output(self.OUTPUT)
        self.endJob(record)
        path = self.manager._executor.outputPath(record.id, "stdout")
        os.truncate(path, 9)
        response = self.call("GET", f"/jobs/{record.id}/logs", "alice")
        self.assertEqual((response.code, response.body), (200, self.OUTPUT[:9]))
        self.assertEqual(response.length, 9)
        self.flushLoggedErrors()

    def test_offset(self) -> None:
        """offset skips that many bytes; past the end gives nothing."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(self.OUTPUT)
        response = self.call("GET", f"/jobs/{record.id}/logs?offset=9", "alice")
        self.assertEqual(response.body, self.OUTPUT[9:])
        self.assertEqual(response.length, len(self.OUTPUT) - 9)
        past = self.call("GET", f"/jobs/{record.id}/logs?offset=100000", "alice")
        self.assertEqual(past.code, 200)
        self.assertEqual(past.body, b"")

    def test_combinedOffsetHeader(self) -> None:
        """The raw combined stream names its offset, as a single stream does."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(b"out ")
        self.spawned(record).errors(b"err")
        response = self.call(
            "GET", f"/jobs/{record.id}/logs?stream=combined&offset=2", "alice"
        )
        self.assertEqual(response.body, b"t err")
        self.assertEqual(response.header(b"x-output-offset"), b"2")

    def test_stderr(self) -> None:
        """stream=stderr gives stderr; stdout stays separate."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(b"to stdout")
        self.spawned(record).errors(b"to stderr\x00")
        err = self.call("GET", f"/jobs/{record.id}/logs?stream=stderr", "alice")
        self.assertEqual(err.body, b"to stderr\x00")
        out = self.call("GET", f"/jobs/{record.id}/logs?stream=stdout", "alice")
        self.assertEqual(out.body, b"to stdout")

    def test_empty(self) -> None:
        """No output yet: 200 with an empty body."""
        record = self.createJob(owner="alice")
        response = self.call("GET", f"/jobs/{record.id}/logs", "alice")
        self.assertEqual((response.code, response.body), (200, b""))

    def test_follow(self) -> None:
        """follow=true streams until the job ends."""
        record = self.createJob(owner="alice")
        self.spawned(record).output(b"first ")
        d = self.send("GET", f"/jobs/{record.id}/logs?follow=true", "alice")
        self.assertNoResult(d)
        self.spawned(record).output(b"second\x00")
        self.treq.flush()
        self.assertNoResult(d)
        self.endJob(record)
        response = self.successResultOf(d)
        self.assertEqual(response.body, b"first second\x00")

    def test_badParameters(self) -> None:
        """Bad stream, offset or follow parameters are 400."""
        record = self.createJob(owner="alice")
        for query in (
            "stream=stdin",
            "stream=",
            "offset=-1",
            "offset=abc",
            "offset=1.5",
            "offset=" + "9" * 30,
            "follow=maybe",
            "follow=",
        ):
            response = self.call("GET", f"/jobs/{record.id}/logs?{query}", "alice")
            self.assertError(response, 400)
