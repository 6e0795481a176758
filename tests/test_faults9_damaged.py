"""
Fault round 9, finding 2: one damaged stored record (a column whose JSON or
status no longer parses, while SQLite's own checks pass) was a 500 for its
job, for every list crossing it, a traceback instead of a start-up, and a
queue stalled behind it for good. Now: a 503 naming the job, lists without
it (named in the log once), a DELETE by id, a start-up that closes it, and a
queue that fails it and goes on. A real store, the real manager and API, on
a fake process reactor.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from treq.testing import StubTreq
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.manager import JobManager
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobStatus
from jobworker.jobs.store import JobStore
from jobworker.jobs.validation import JobRequest
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import basic, giveTurns

#: What the fault round wrote over a job's args: the same length, one
#: character changed, no longer JSON.
BROKEN_ARGS = '["marker007"}'


def syncRunner(f: Any, *args: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class DamagedRecordTests(SynchronousTestCase):
    """One damaged row among ended jobs, a restart, then the API."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.stateDir = os.path.abspath(self.mktemp())
        os.makedirs(self.stateDir)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def manager(self, **policy: Any) -> JobManager:
        store = JobStore(os.path.join(self.stateDir, "jobs.sqlite3"))
        manager = localJobManager(
            self.reactor,
            self.stateDir,
            5.0,
            self.killer,
            store=store,
            policy=JobPolicy(**policy),
        )
        self.addCleanup(manager.close)
        return manager

    def damage(self, jobId: str, column: str, value: str) -> None:
        """Change one column of one row behind the server's back."""
        db = sqlite3.connect(
            os.path.join(self.stateDir, "jobs.sqlite3"), isolation_level=None
        )
        try:
            db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, jobId))  # noqa: S608
            [(check,)] = db.execute("PRAGMA integrity_check").fetchall()
            self.assertEqual(check, "ok")  # SQLite sees nothing wrong
        finally:
            db.close()

    def ranJob(self, manager: JobManager, command: str, *args: str) -> str:
        """A job that ran to its end (COMPLETED)."""
        record = manager.create(JobRequest(command, list(args), {}, None), "alice")
        [spawned] = [s for s in self.reactor.spawned if s.pid == record.pid]
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        return record.id

    def api(self, manager: JobManager) -> Any:
        authenticator = Authenticator(
            makePortal(UserDatabase.development(), syncRunner)
        )
        api = JobsAPI(manager, authenticator, self.reactor, Metrics())
        http = StubTreq(api.resource())

        def call(method: str, path: str, user: str = "alice") -> tuple[int, Any]:
            headers = basic(user)
            headers[b"content-type"] = [b"application/json"]
            sent = http.request(method, "https://x" + path, headers=headers)
            giveTurns(api, self.reactor, http.flush)
            response = self.successResultOf(sent)
            content = self.successResultOf(response.content())
            http.flush()
            try:
                return response.code, json.loads(content)
            except ValueError:
                return response.code, content

        return call

    def restartedWithDamage(self, column: str, value: str) -> tuple[Any, str, str]:
        """
        Five ended jobs, the third's C{column} damaged, a restart: the API,
        the damaged job's id and another's.
        """
        before = self.manager()
        ids = [self.ranJob(before, "echo", f"marker00{i}") for i in range(5)]
        before.close()
        self.damage(ids[2], column, value)
        after = self.manager()
        after.recover()
        return self.api(after), ids[2], ids[3]

    def damagedLogs(self, jobId: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("job") == jobId and "damaged" in e.get("log_format", "")
        ]

    def test_damagedArgsAre503NamingTheJob(self) -> None:
        """
        GET of the damaged job and of its logs: a 503 that names it and its
        damage (was a 500, a traceback each time); the others are served.
        """
        call, damaged, other = self.restartedWithDamage("args", BROKEN_ARGS)
        for path in (f"/jobs/{damaged}", f"/jobs/{damaged}/logs"):
            code, body = call("GET", path)
            self.assertEqual(code, 503, body)
            self.assertIn(damaged, body["error"])
            self.assertIn("args", body["error"])
        self.assertEqual(call("GET", f"/jobs/{other}")[0], 200)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_wrongShapesInsideAre503(self) -> None:
        """
        JSON that parses, of the wrong shape inside (a number among the
        args, a label's value an object, a limit no job has): a 500 with a
        traceback, or a queue stalled at its turn (a review). Damaged too.
        """
        for column, value in (
            ("args", '["x", 1]'),
            ("labels", '{"a": {"b": 1}}'),
            ("labels", '{"a": 1}'),
            ("limits", '{"nope": 1}'),
            ("limits", '{"pids": "many"}'),
        ):
            self.stateDir = os.path.abspath(self.mktemp())
            os.makedirs(self.stateDir)
            call, damaged, _ = self.restartedWithDamage(column, value)
            code, body = call("GET", f"/jobs/{damaged}")
            self.assertEqual(code, 503, (column, value, body))
            self.assertIn(column, body["error"])
            code, listed = call("GET", "/jobs")
            self.assertEqual(code, 200, listed)
            self.assertNotIn(damaged, [job["id"] for job in listed["jobs"]])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_listsLeaveTheDamagedOneOutNamingItOnce(self) -> None:
        """
        Every list crossing the damaged row was a 500: it is left out (the
        rest listed), and named in the log once, with its seq.
        """
        call, damaged, other = self.restartedWithDamage("args", BROKEN_ARGS)
        for path in ("/jobs", "/jobs?status=COMPLETED", "/jobs"):
            code, body = call("GET", path)
            self.assertEqual(code, 200, body)
            listed = [job["id"] for job in body["jobs"]]
            self.assertEqual(len(listed), 4)
            self.assertNotIn(damaged, listed)
            self.assertIn(other, listed)
        call("GET", f"/jobs/{damaged}")
        [logged] = self.damagedLogs(damaged)
        self.assertIsInstance(logged["seq"], int)
        self.assertIn(BROKEN_ARGS, logged["text"])

    def test_damagedStatusLeftOutOfLists(self) -> None:
        """
        A status that is no status (C{COMPLETEX}): lists were a 500 even
        after every COMPLETED job was deleted.
        """
        call, damaged, _ = self.restartedWithDamage("status", "COMPLETEX")
        code, body = call("GET", "/jobs")
        self.assertEqual((code, len(body["jobs"])), (200, 4), body)
        self.assertEqual(call("DELETE", "/jobs?status=COMPLETED", "ada")[0], 200)
        code, body = call("GET", "/jobs")
        self.assertEqual((code, body["jobs"]), (200, []), body)
        self.assertEqual(call("GET", f"/jobs/{damaged}")[0], 503)

    def test_deleteRemovesADamagedRecord(self) -> None:
        """DELETE /jobs/ID removes it (was a 500: no way but a hand edit)."""
        call, damaged, _ = self.restartedWithDamage("labels", '{"a": ')
        code, body = call("DELETE", f"/jobs/{damaged}")
        self.assertEqual(code, 200, body)
        self.assertEqual(call("GET", f"/jobs/{damaged}")[0], 404)
        self.assertEqual(len(call("GET", "/jobs")[1]["jobs"]), 4)

    def test_runningDamagedRecordDoesNotStopTheStart(self) -> None:
        """
        A job running at a crash, its record damaged: the start-up raised a
        JSONDecodeError (a traceback, no server). It is recovered as any
        other: closed FAILED, the damage in its error, its row whole again.
        """
        before = self.manager()
        record = before.create(JobRequest("sleep", ["99"], {}, None), "alice")
        before.close()  # a crash: the job was running
        self.damage(record.id, "args", '["99"')
        after = self.manager()
        closed = after.recover()
        self.assertEqual([r.id for r in closed], [record.id])
        stored = after.record(record.id)
        self.assertEqual(stored.status, JobStatus.FAILED)
        assert stored.error is not None
        self.assertIn("the worker restarted", stored.error)
        self.assertIn("damaged: args", stored.error)
        self.assertEqual(stored.args, [])  # what could not be read
        self.assertEqual(stored.command, "sleep")  # what could
        self.assertEqual(self.api(after)("GET", f"/jobs/{record.id}")[0], 200)

    def test_damagedQueuedJobFailsAndTheQueueGoesOn(self) -> None:
        """
        A queued job whose record is damaged: its turn came and went for
        ever (back at the head, a traceback a second), and every job behind
        it waited. It is FAILED at its turn, and the next one starts.
        """
        manager = self.manager(maxRunning=1)
        first = manager.create(JobRequest("sleep", ["9"], {}, None), "alice")
        broken = manager.create(JobRequest("true", ["x"], {}, None), "alice")
        behind = manager.create(JobRequest("true", [], {}, None), "bob")
        self.damage(broken.id, "args", BROKEN_ARGS)
        [spawned] = self.reactor.spawned
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)
        failed = manager.record(broken.id)
        self.assertEqual(failed.status, JobStatus.FAILED)
        assert failed.error is not None
        self.assertTrue(failed.error.startswith("cannot start"), failed.error)
        self.assertIn("damaged", failed.error)
        self.assertEqual(manager.record(behind.id).status, JobStatus.RUNNING)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_damagedQueuedJobCanBeStopped(self) -> None:
        """A queued job with a damaged record: stopped (was a 500)."""
        manager = self.manager(maxRunning=1)
        manager.create(JobRequest("sleep", ["9"], {}, None), "alice")
        queued = manager.create(JobRequest("true", [], {}, None), "alice")
        self.damage(queued.id, "queued_env", "{")
        call = self.api(manager)
        code, body = call("POST", f"/jobs/{queued.id}/stop")
        self.assertEqual((code, body["status"]), (200, "STOPPED"), body)
        code, body = call("GET", f"/jobs/{queued.id}")
        self.assertEqual((code, body["status"]), (200, "STOPPED"), body)
        self.assertIn("damaged: queued_env", body["error"])
        self.assertEqual(call("DELETE", f"/jobs/{queued.id}")[0], 200)

    def test_damagedQueueAcrossARestart(self) -> None:
        """
        Queued jobs at a restart, one of them with damaged dependencies:
        the start-up goes on, it fails at its turn, the other starts.
        """
        before = self.manager(maxRunning=1)
        first = before.create(JobRequest("sleep", ["9"], {}, None), "alice")
        broken = before.create(
            JobRequest("true", [], {}, None, after=(first.id,)), "alice"
        )
        other = before.create(JobRequest("true", [], {}, None), "bob")
        before.close()
        self.damage(broken.id, "after_ids", '["' + first.id)
        after = self.manager(maxRunning=1)
        after.recover()
        self.assertEqual(after.record(first.id).status, JobStatus.FAILED)
        self.assertEqual(after.record(broken.id).status, JobStatus.FAILED)
        self.assertEqual(after.record(other.id).status, JobStatus.RUNNING)
