"""
Fault round 8, on the dynamic uids' lock files:

 - A server that crashed let its uids' locks go with it, while its jobs
   ran on (until its next start): another server already running handed
   such a uid to a new job, another user's, and two users' jobs ran as
   one uid. A lock file now names the server that took it last; a uid
   whose file names another server, whose processes still run, is not
   handed out.
 - A lock file that could not be made or locked (/run out of space or
   inodes, ENOLCK, EIO) was a 500 with a traceback for every job of an
   unmapped user, each trying the next never-used uid. Such a uid is now
   skipped (said once), the free ones are used, and when none can be
   locked the answer is a 503.
"""

from __future__ import annotations

import os
import shutil
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.jobs.identity import DynamicUids, PoolExhausted, UidLocksFailing
from jobworker.jobs.recovery import processesOf

from .fakes import noLiveUidProcesses
from .support import LiveServer, smallTmpfs
from .twistd import Twistd

#: A uid of the tests' free range (tests/support.py FREE_UIDS) no other
#: test takes on its own.
HANDOFF_UID = 71990


def killAll(uid: int) -> None:
    for pid in processesOf(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class CrashedServersUidTests(TestCase):
    timeout = 90

    async def test_crashedServersUidNotHandedOut(self) -> None:
        """Server B runs; server A takes uid U for alice's job and dies
        (SIGKILL), its job running on as U. B's next job is refused (no
        uid free) rather than run as U beside it."""
        if os.getuid() != 0:
            raise SkipTest("dynamic uids need root")
        uid = HANDOFF_UID
        self.addCleanup(killAll, uid)
        option = f"--dynamic-uids={uid}-{uid}"
        b = LiveServer(self, option)
        a = await Twistd(self).start(option)
        job = await a.createJob("sh", "-c", "echo up; sleep 300")
        self.assertEqual(job["run_as"], f"dynamic:{uid}")
        for _ in range(200):  # running: past its gate
            _, seen = await a.json("GET", f"/jobs/{job['id']}", "ada")
            if seen["stdout_bytes"]:
                break
            await deferLater(reactor, 0.05, lambda: None)
        os.kill(a.pid, signal.SIGKILL)
        await a.protocol.whenEnded()
        for _ in range(100):
            if processesOf(uid):
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertNotEqual(processesOf(uid), [], "A's job did not run on")
        code, body = await b.json(
            "POST", "/jobs", "bob", {"command": "sh", "args": ["-c", "id -u"]}
        )
        self.assertEqual(code, 429, body)
        # Once A's leftovers are gone, B hands the uid out again.
        killAll(uid)
        for _ in range(100):
            if not processesOf(uid):
                break
            await deferLater(reactor, 0.05, lambda: None)
        code, body = await b.json(
            "POST", "/jobs", "bob", {"command": "sh", "args": ["-c", "id -u"]}
        )
        self.assertEqual((code, body.get("run_as")), (201, f"dynamic:{uid}"), body)
        await b.waitEnded(body["id"])


class LockFailureTests(SynchronousTestCase):
    def test_uncreatableLockSkipped(self) -> None:
        """/run out of inodes: the uids whose lock files exist are used,
        the others skipped; none lockable at all is L{UidLocksFailing}
        (an OSError: a 503), not an unhandled error."""
        noLiveUidProcesses(self.patch)
        folder = smallTmpfs(self, "1m,nr_inodes=4")
        pool = DynamicUids(75000, 75009, folder)
        first = pool.acquire()
        second = pool.acquire()
        pool.release(first)
        pool.release(second)
        # Every inode is taken now (the folder, two lock files, one more):
        # new lock files cannot be made.
        with open(os.path.join(folder, "filler"), "w"):
            pass
        got = {pool.acquire() for _ in range(2)}
        self.assertEqual(got, {first, second})
        with self.assertRaises(UidLocksFailing) as caught:
            pool.acquire()
        self.assertIsInstance(caught.exception, OSError)
        self.assertIn("No space left on device", str(caught.exception))


class RemovedLockTests(SynchronousTestCase):
    """
    Fault round 9: the lock folder (or one lock file) removed while server
    A's job runs as uid U, by a cleaner of /run, and made again or not:
    server B made a new, empty lock file for U, locked it at once, and
    handed U to another user's job beside A's. A lock file with no mark
    has no history: U is handed out only if no process of it runs.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        self.running: set[int] = set()

    def pool(self) -> DynamicUids:
        return DynamicUids(
            75100, 75100, self.folder, scan=lambda uids: self.running & set(uids)
        )

    def check(self, remove: object) -> None:
        a, b = self.pool(), self.pool()
        uid = a.acquire()
        self.running.add(uid)  # A's job runs as it
        self.assertRaises(PoolExhausted, b.acquire)
        remove()
        self.assertRaises(PoolExhausted, b.acquire)
        # A's job ended: B may have it.
        self.running.clear()
        a.release(uid)
        self.assertEqual(b.acquire(), uid)

    def test_folderRemoved(self) -> None:
        self.check(lambda: shutil.rmtree(self.folder))

    def test_folderRemovedAndMadeAgain(self) -> None:
        def remake() -> None:
            shutil.rmtree(self.folder)
            os.makedirs(self.folder, mode=0o700)

        self.check(remake)

    def test_lockFileRemoved(self) -> None:
        self.check(lambda: os.unlink(os.path.join(self.folder, "75100")))
