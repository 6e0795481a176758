"""
Fault round 9, finding 4: /healthz said "ok" while the store refused every
write (the state dir's disk failing: 31 POSTs a 503, 31 probes "ok"), so a
balancer kept sending every request to a server that could take no job. It
says "degraded" while the store's last write failed and none has succeeded
since, and "ok" again once one does; a probe writes nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.manager import RETRY_FIRST, JobManager
from jobworker.jobs.store import JobStore
from jobworker.metrics import Metrics
from jobworker.server.api import OPENAPI, JobsAPI

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import basic

LOCKED = "the store is locked by another program"


def syncRunner(f: Any, *args: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class StoreHealthTests(SynchronousTestCase):
    """/healthz of a real store that another program locks, then lets go."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        self.path = os.path.join(stateDir, "jobs.sqlite3")
        self.store = JobStore(self.path)
        self.manager: JobManager = localJobManager(
            self.reactor, stateDir, 5.0, GroupKiller(), store=self.store
        )
        self.addCleanup(self.manager.close)
        authenticator = Authenticator(
            makePortal(UserDatabase.development(), syncRunner)
        )
        api = JobsAPI(self.manager, authenticator, self.reactor, Metrics())
        self.http = StubTreq(api.resource())

    def call(self, method: str, path: str, user: str | None = None) -> Any:
        headers = basic(user) if user else {}
        headers[b"content-type"] = [b"application/json"]
        data = json.dumps({"command": "true"}).encode() if method == "POST" else None
        response = self.successResultOf(
            self.http.request(method, "https://x" + path, data=data, headers=headers)
        )
        body = json.loads(self.successResultOf(response.content()))
        self.http.flush()
        return response.code, body

    def lock(self) -> sqlite3.Connection:
        """Another program takes the store's write lock (a backup, a shell)."""
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        return other

    def test_degradedWhileTheStoreRefusesWrites(self) -> None:
        self.assertEqual(self.call("GET", "/healthz"), (200, {"status": "ok"}))
        other = self.lock()
        code, body = self.call("POST", "/jobs", "alice")
        self.assertEqual(code, 503, body)
        code, body = self.call("GET", "/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(
            body,
            {
                "status": "degraded",
                "store": LOCKED,
                "reason": f"the job store refuses writes: {LOCKED}",
            },
        )
        # Still locked at the first try: still degraded.
        self.reactor.advance(RETRY_FIRST)
        self.assertEqual(self.call("GET", "/healthz")[1]["status"], "degraded")
        # Let go: the next try, a write that changes nothing, finds it out,
        # without a job posted (a balancer sends none to a degraded server).
        other.execute("ROLLBACK")
        self.reactor.advance(RETRY_FIRST * 2)
        self.assertEqual(self.call("GET", "/healthz"), (200, {"status": "ok"}))
        self.assertEqual(self.call("POST", "/jobs", "alice")[0], 201)
        self.flushLoggedErrors()

    def test_aWriteThatSucceedsClearsIt(self) -> None:
        other = self.lock()
        self.assertEqual(self.call("POST", "/jobs", "alice")[0], 503)
        other.execute("ROLLBACK")
        self.assertEqual(self.call("POST", "/jobs", "alice")[0], 201)
        self.assertEqual(self.call("GET", "/healthz"), (200, {"status": "ok"}))
        self.flushLoggedErrors()

    def test_readOnlyStore(self) -> None:
        self.store._db.execute("PRAGMA query_only = ON")
        self.assertEqual(self.call("POST", "/jobs", "alice")[0], 503)
        code, body = self.call("GET", "/healthz")
        self.assertEqual((code, body["status"]), (200, "degraded"))
        self.assertIn("read-only", body["store"])
        self.store._db.execute("PRAGMA query_only = OFF")
        self.flushLoggedErrors()

    def test_probesWriteNothing(self) -> None:
        """Health requests make no store write, whether ok or degraded."""
        self.probes = 0
        probeWrite = self.store.probeWrite

        def counted() -> None:
            self.probes += 1
            probeWrite()

        self.patch(self.store, "probeWrite", counted)
        for _ in range(5):
            self.call("GET", "/healthz")
        other = self.lock()
        self.call("POST", "/jobs", "alice")
        for _ in range(5):
            self.call("GET", "/healthz")
        self.assertEqual(self.probes, 0)  # (the timer's, not the requests')
        self.reactor.advance(RETRY_FIRST)
        self.assertEqual(self.probes, 1)
        other.execute("ROLLBACK")
        self.flushLoggedErrors()

    def test_documented(self) -> None:
        """The OpenAPI document allows the degraded body's members, no more."""
        document = json.loads(OPENAPI)
        response = document["paths"]["/healthz"]["get"]["responses"]["200"]
        schema = response["content"]["application/json"]["schema"]
        self.assertIs(schema["additionalProperties"], False)
        other = self.lock()
        self.call("POST", "/jobs", "alice")
        body = self.call("GET", "/healthz")[1]
        self.assertIn("store", body)
        self.assertLessEqual(set(body), set(schema["properties"]))
        self.assertEqual(schema["properties"]["store"], {"type": "string"})
        other.execute("ROLLBACK")
        self.flushLoggedErrors()
