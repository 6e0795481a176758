"""
Defects the thirty-second session found.

Issue 16 (the start path): after a boot every dynamic uid's lock file is
new, and each uid's first use scanned all of C{/proc} (a C{stat} of every
process of the machine) on the reactor's thread, to be sure no process of
it runs (fault round 9: a lock file removed under a live server's job).
Until every uid of the range had been used once (10,000 by default), each
started job paid a scan: 0.8 M of 3.7 M instructions per job on this
machine of about 150 processes, and more on a machine of thousands. One
scan of the whole range now serves the new lock files met within
L{SCAN_REUSED_FOR}; a uid it found running is looked for afresh, and a lock
file naming another server that may have died since this one started is
looked for afresh, as before.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs import identity
from jobworker.jobs.identity import DynamicUids, PoolExhausted


class FirstUseScanTests(SynchronousTestCase):
    """One scan of C{/proc} for a burst of first uses of dynamic uids."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        self.scans: list[range] = []
        self.running: set[int] = set()
        self.now = 100.0

    def scan(self, uids: range) -> set[int]:
        self.scans.append(uids)
        return {uid for uid in self.running if uid in uids}

    def pool(self, first: int, last: int) -> DynamicUids:
        pool = DynamicUids(first, last, self.folder, scan=self.scan)
        pool._now = lambda: self.now
        return pool

    def test_burstScansOnce(self) -> None:
        """Ten first uses within a second: one scan, of the whole range."""
        pool = self.pool(75100, 75109)
        got = [pool.acquire() for _ in range(10)]
        self.assertEqual(sorted(got), list(range(75100, 75110)))
        self.assertEqual(self.scans, [range(75100, 75110)])

    def test_scanAges(self) -> None:
        """A scan serves for L{identity.SCAN_REUSED_FOR} seconds, not after
        (nor after a step of the clock back)."""
        pool = self.pool(75100, 75109)
        pool.acquire()
        self.now += identity.SCAN_REUSED_FOR
        pool.acquire()
        self.now -= 5.0
        pool.acquire()
        self.assertEqual(len(self.scans), 3)

    def test_runningLookedForAfresh(self) -> None:
        """A uid the scan found running is refused only if a scan of it now
        finds it still running: once its processes are gone it is handed
        out at once, not a second later."""
        pool = self.pool(75100, 75100)
        self.running.add(75100)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.running.clear()
        self.assertEqual(pool.acquire(), 75100)
        self.assertEqual(
            self.scans,
            [range(75100, 75101), range(75100, 75101), range(75100, 75101)],
        )

    def test_deadServersUidLookedForAfresh(self) -> None:
        """A lock file naming another server, gone, that took it after this
        one started (it may have died leaving its job) is looked for
        afresh, whatever an earlier scan found: a job of it started since."""
        pool = self.pool(75100, 75101)
        self.assertEqual(pool.acquire(), 75100)
        self.assertEqual(len(self.scans), 1)
        # Another server took 75101 since, started a job as it and died.
        with open(os.path.join(self.folder, "75101"), "wb") as f:
            f.write(b"999999999 1\n")
        self.running.add(75101)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.assertEqual(self.scans[1:], [range(75101, 75102)])
