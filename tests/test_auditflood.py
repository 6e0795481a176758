"""
The audit log cannot be filled by requests that change nothing (attacker
round 6b): a Reader's refused requests, tokens asked for in a loop, a clean
that deletes nothing, and stops of jobs that had ended each wrote a line
(2,000 lines a second from one connection, about 30 GB a day).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth import audit as auditModule
from jobworker.auth.audit import AuditLog
from jobworker.server.api import TOKEN_BURST, TOKEN_RATE

from .support import LiveServer, sleep
from .test_identity import waitOutput


def audit(server: LiveServer, event: str) -> list[dict[str, Any]]:
    """The audit log's C{event} lines."""
    with open(os.path.join(server.stateDir, "audit.log")) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e.get("event") == event]


class AuditFloodTests(TestCase):
    timeout = 60

    async def test_stopOfAnEndedJobNotAudited(self) -> None:
        """A stop refused with 409 (the job had ended) writes no line: it
        wrote "requested", a stop that never was."""
        server = LiveServer(self)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        for _ in range(3):
            code, _body = await server.json("POST", f"/jobs/{job['id']}/stop")
            self.assertEqual(code, 409)
        self.assertEqual(audit(server, "job.stop"), [])
        running = await server.createJob("sleep", "30")
        code, _body = await server.json("POST", f"/jobs/{running['id']}/stop")
        self.assertEqual(code, 200)
        [line] = audit(server, "job.stop")
        self.assertEqual((line["job"], line["result"]), (running["id"], "requested"))

    async def test_repeatedStopsOfAStoppingJobSparse(self) -> None:
        """A job already being stopped: stops of it again, one line a minute
        (each wrote one, whether or not it hastened the end)."""
        server = LiveServer(self, grace=30.0)
        job = await server.createJob(
            "sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.1; done'
        )
        await waitOutput(server, job["id"], b"ready")  # (TERM ignored from now)
        stops = [
            ensureDeferred(server.json("POST", f"/jobs/{job['id']}/stop"))
            for _ in range(5)
        ]
        while (await server.json("GET", f"/jobs/{job['id']}"))[1]["stopped_by"] is None:
            await sleep(0.05)
        for _ in range(5):
            stops.append(ensureDeferred(server.json("POST", f"/jobs/{job['id']}/stop")))
        code, _ = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        self.assertEqual(code, 200)
        await gatherResults(stops)
        lines = audit(server, "job.stop")
        self.assertLessEqual(len(lines), 2, lines)

    async def test_cleanOfNothingNotAudited(self) -> None:
        server = LiveServer(self)
        for _ in range(3):
            code, body = await server.json("DELETE", "/jobs")
            self.assertEqual((code, body["deleted"]), (200, 0))
        self.assertEqual(audit(server, "job.clean"), [])
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        code, body = await server.json("DELETE", "/jobs")
        self.assertEqual((code, body["deleted"]), (200, 1))
        [line] = audit(server, "job.clean")
        self.assertEqual(line["jobs"], [job["id"]])

    async def test_refusalsOnceAMinute(self) -> None:
        """
        A Reader's refused requests: one line a minute per user (see
        L{SparseTests}).
        """
        server = LiveServer(self)
        for _ in range(50):
            code, _body = await server.json(
                "POST", "/jobs", "rita", {"command": "true"}
            )
            self.assertEqual(code, 403)
        lines = audit(server, "access.denied")
        self.assertEqual([line["user"] for line in lines], ["rita"])

    async def test_tokensPaced(self) -> None:
        """Tokens asked for in a loop: past a burst, 429 with Retry-After,
        and no line; every token issued has its line."""
        server = LiveServer(self)
        codes = []
        began = time.monotonic()
        for _ in range(40):
            response = await server.request("POST", "/tokens", "alice")
            codes.append(response.code)
            await response.text()
        took = time.monotonic() - began
        issued = codes.count(201)
        # The burst, and one a second since (TOKEN_RATE): no more.
        self.assertGreaterEqual(issued, TOKEN_BURST)
        self.assertLessEqual(issued, TOKEN_BURST + math.ceil(took * TOKEN_RATE))
        self.assertEqual(codes.count(429), 40 - issued)
        self.assertEqual(len(audit(server, "token.issue")), issued)


class SparseTests(SynchronousTestCase):
    def test_onceAMinuteThenTheCount(self) -> None:
        """One event of one user at most once a minute; the next line says
        how many were left out; other users and events are apart."""
        clock = Clock()
        path = self.mktemp()
        log = AuditLog(path, clock)
        for _ in range(5):
            log.recordSparsely("access.denied", "rita", "1.2.3.4", "refused")
        log.recordSparsely("access.denied", "bob", "1.2.3.4", "refused")
        log.recordSparsely("token.denied", "rita", "1.2.3.4", "refused")
        clock.advance(59)
        log.recordSparsely("access.denied", "rita", "1.2.3.4", "refused")
        clock.advance(1)
        log.recordSparsely("access.denied", "rita", "1.2.3.4", "refused", reason="x")
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(
            [(e["event"], e["user"], e.get("left_out")) for e in lines],
            [
                ("access.denied", "rita", None),
                ("access.denied", "bob", None),
                ("token.denied", "rita", None),
                ("access.denied", "rita", 5),
            ],
        )
        self.assertEqual(lines[-1]["reason"], "x")

    def test_perClientAndTheLastBurstCounted(self) -> None:
        """
        Another address of the same user has lines of its own (a stolen
        token used elsewhere is seen); a burst that stops is counted within
        a minute of its end by L{AuditLog.reportLeftOut}, not only at the
        next refusal, which may never come.
        """
        clock = Clock()
        path = self.mktemp()
        log = AuditLog(path, clock)
        for _ in range(3):
            log.recordSparsely("access.denied", "rita", "1.2.3.4", "refused")
        log.recordSparsely("access.denied", "rita", "5.6.7.8", "refused")
        log.reportLeftOut()  # (too soon: nothing)
        clock.advance(60)
        log.reportLeftOut()
        log.reportLeftOut()  # (once)
        with open(path) as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual(
            [(e["client"], e.get("left_out")) for e in lines],
            [("1.2.3.4", None), ("5.6.7.8", None), ("1.2.3.4", 2)],
        )

    def lines(self, path: str) -> list[dict[str, Any]]:
        with open(path) as f:
            return [json.loads(line) for line in f]

    def test_clientsCountedAsTheThrottlesCountThem(self) -> None:
        """
        Attacker round 8: 200 refusals from 200 loopback addresses wrote 200
        lines (any local process may use any of 127/8's addresses; a remote
        client any of its IPv6 /64's). They are one client, as for the login
        throttle: one line, the next one counts the rest.
        """
        clock = Clock()
        path = self.mktemp()
        log = AuditLog(path, clock)
        for n in range(200):
            log.recordSparsely("access.denied", "rita", f"127.1.0.{n % 250}", "x")
        for n in range(10):
            log.recordSparsely("access.denied", "rita", f"2001:db8::{n}", "x")
        clock.advance(60)
        log.reportLeftOut()
        self.assertEqual(
            [(e["client"], e.get("left_out")) for e in self.lines(path)],
            [
                ("127.1.0.0", None),
                ("2001:db8::0", None),
                ("127.1.0.199", 199),
                ("2001:db8::9", 9),
            ],
        )

    def test_boundedAndCountsKept(self) -> None:
        """Past MAX_SPARSE keys the one written longest ago is forgotten,
        one at a time (not the table rebuilt at each new key), and what it
        had left out is written as it goes."""
        self.patch(auditModule, "MAX_SPARSE", 3)
        clock = Clock()
        path = self.mktemp()
        log = AuditLog(path, clock)
        log.recordSparsely("access.denied", "u0", "1.2.3.4", "x")
        log.recordSparsely("access.denied", "u0", "1.2.3.4", "x")  # left out
        for n in range(1, 5):
            log.recordSparsely("access.denied", f"u{n}", "1.2.3.4", "x")
        self.assertEqual(len(log._sparse), 3)
        self.assertEqual(
            [(e["user"], e.get("left_out")) for e in self.lines(path)],
            [
                ("u0", None),
                ("u1", None),
                ("u2", None),
                ("u0", 1),
                ("u3", None),
                ("u4", None),
            ],
        )
