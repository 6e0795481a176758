"""
The audit log when its disk fails it (a fault round, each reproduced
first): a SIGHUP whose reopen failed skipped the users file's reload, so a
revoked user kept access; an event that could not be written was lost
without a word; a line cut short by a full disk swallowed the next event.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.audit import AuditLog
from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase
from jobworker.server.services import UsersReloadService

from .support import fillDisk, pythonChild, smallTmpfs


def lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().split(b"\n")


class AuditFaultTests(SynchronousTestCase):
    def logged(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_hangUpReloadsWhenTheReopenFails(self) -> None:
        """The users file is read again whatever became of the audit log."""
        replaced: list[UserDatabase] = []

        class Authenticator:
            users = UserDatabase.development()

            def replaceUsers(self, users: UserDatabase) -> None:
                replaced.append(users)

        def reopen() -> None:
            raise OSError(28, "No space left on device")

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(DEVELOPMENT_USERS.splitlines()[1] + "\n")
        service = UsersReloadService(
            path,
            Authenticator(),  # type: ignore[arg-type]
            None,
            reopen=reopen,
        )
        logged = self.logged()
        service.hangUp()
        self.assertEqual(len(replaced), 1)
        self.assertTrue(
            any("audit" in str(e.get("log_format", "")) for e in logged), logged
        )
        self.flushLoggedErrors()

    def test_aCutLineDoesNotSwallowTheNext(self) -> None:
        """A file ending mid-line (a write the disk cut short, before a
        restart): the next event starts a line of its own."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'{"time": "2026-12-02T00:00:00Z", "event": "job.cr')
        audit = AuditLog(path, Clock())
        self.addCleanup(audit.close)
        audit.record("job.stop", "alice", "127.0.0.1", "requested")
        self.assertEqual(json.loads(lines(path)[1])["event"], "job.stop")

    def test_fullDisk(self) -> None:
        """
        On a full file system: an event that cannot be written is in the
        server's log, whole; a line written in part is ended before the
        next event, once there is room again.
        """
        mount = smallTmpfs(self, "8k")
        path = os.path.join(mount, "audit.log")
        audit = AuditLog(path, Clock())
        self.addCleanup(audit.close)
        audit.record("job.create", "alice", "127.0.0.1", "RUNNING", job="a" * 36)
        fillDisk(mount)
        logged = self.logged()
        for n in range(40):  # past the end of the audit log's last page
            audit.record("job.create", "alice", "127.0.0.1", "RUNNING", job=f"{n:036}")
        lost = [e["audit"] for e in logged if "audit" in e]
        self.assertTrue(lost, logged)
        self.assertTrue(all(e["event"] == "job.create" for e in lost))
        os.unlink(os.path.join(mount, "filler"))
        audit.record("job.stop", "alice", "127.0.0.1", "requested")
        written = [line for line in lines(path) if line]
        self.assertEqual(json.loads(written[-1])["event"], "job.stop")
        whole = [
            json.loads(line)["job"] for line in written[:-1] if line.endswith(b"}")
        ]
        # Every event is in the file or in the server's log (a cut one in
        # both: the log has it whole).
        for n in range(40):
            job = f"{n:036}"
            self.assertTrue(job in whole or any(e["job"] == job for e in lost), job)


#: A process that writes 3,000 audit events to a FIFO nobody reads, then
#: says how many reached the server's log instead.
_FIFO_CHILD = """
import sys
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from jobworker.auth.audit import AuditLog
seen = []
globalLogPublisher.addObserver(seen.append)
audit = AuditLog(sys.argv[1], Clock())
for n in range(3000):
    audit.record("job.create", "alice", "127.0.0.1", "ok", job=str(n))
print(sum(1 for e in seen if "audit" in e))
"""


class AuditPipeTests(SynchronousTestCase):
    """
    The audit log's path a FIFO (a log shipper's, which stalled, or one put
    there by hand before a SIGHUP): the server blocked in write(2) once the
    pipe's 64 KiB were full, for good, its shutdown included (fault round
    5). The file is written without blocking: what the pipe does not take
    goes whole to the server's log, as what a full disk refuses.
    """

    def test_fullPipeNeverBlocks(self) -> None:
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo, 0o600)
        done = pythonChild(_FIFO_CHILD, fifo)
        self.assertEqual(done.returncode, 0, done.stderr)
        toServerLog = int(done.stdout)
        self.assertGreater(toServerLog, 0)
        self.assertLess(toServerLog, 3000)
