"""The SQLite job store: schema, migrations, paging, recovery queries."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs import store
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.schema import MIGRATIONS, SCHEMA_VERSION
from jobworker.jobs.selection import JobFilter
from jobworker.jobs.store import JobStore, StoreError


def makeRecord(n: int, owner: str = "alice") -> JobRecord:
    """A RUNNING record with a recognisable id."""
    return JobRecord(
        id=f"00000000-0000-4000-8000-{n:012d}",
        command="echo",
        args=[str(n), "two words", "\u00e9"],
        owner=owner,
        created_at=1000.0 + n,
        env={"SECRET": "never stored"},
        cwd="/tmp",
        pid=100 + n,
        started_at=1000.5 + n,
    )


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.store = JobStore(self.path)
        self.addCleanup(self.store.close)

    def test_newStoreHasCurrentSchema(self) -> None:
        """A new file is migrated to the current schema version, in WAL mode."""
        self.assertEqual(self.store.version, SCHEMA_VERSION)
        self.assertEqual(len(MIGRATIONS), SCHEMA_VERSION)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_roundTrip(self) -> None:
        """What is inserted and updated comes back equal (but the env)."""
        record = makeRecord(1)
        self.store.insert(record)
        self.assertIsNotNone(record.seq)
        record.stdout_bytes = 12
        record.stdout_dropped = 3
        record.finish(JobStatus.FAILED, 2000.0, exit_code=None, signal="SIGKILL")
        self.store.update(record)
        loaded = self.store.get(record.id)
        assert loaded is not None
        self.assertEqual(loaded.toJSON(), record.toJSON())
        self.assertEqual(loaded.env, {})
        self.assertIsNone(self.store.get("nope"))

    def test_noneIsNull(self) -> None:
        """A None field is stored as SQL NULL (through the store's adapter
        for None), not as text or a number."""
        record = makeRecord(2)
        record.cwd = None
        self.store.insert(record)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        row = db.execute(
            "SELECT typeof(cwd), typeof(exit_code), typeof(name) FROM jobs"
            " WHERE id = ?",
            (record.id,),
        ).fetchone()
        self.assertEqual(row, ("null", "null", "null"))

    def test_environmentNotStored(self) -> None:
        """The job's environment (maybe secrets) never reaches the file."""
        self.store.insert(makeRecord(1))
        self.store.close()
        data = b""
        for suffix in ("", "-wal"):
            if os.path.exists(self.path + suffix):
                with open(self.path + suffix, "rb") as f:
                    data += f.read()
        self.assertNotIn(b"never stored", data)
        self.store = JobStore(self.path)

    def test_pagesNewestFirst(self) -> None:
        """Pages come newest first and the cursor walks every job once."""
        for n in range(7):
            self.store.insert(makeRecord(n))
        seen: list[str] = []
        page, cursor = self.store.page(limit=3)
        seen += [r.id for r in page]
        while cursor is not None:
            page, cursor = self.store.page(limit=3, before=cursor)
            seen += [r.id for r in page]
        self.assertEqual(seen, [makeRecord(n).id for n in reversed(range(7))])

    def test_cursorStableUnderInserts(self) -> None:
        """Jobs inserted between pages neither shift nor repeat a page."""
        for n in range(10):
            self.store.insert(makeRecord(n))
        first, cursor = self.store.page(limit=4)
        for n in range(10, 15):
            self.store.insert(makeRecord(n))
        rest: list[JobRecord] = []
        while cursor is not None:
            page, cursor = self.store.page(limit=4, before=cursor)
            rest += page
        ids = [r.id for r in first + rest]
        self.assertEqual(ids, [makeRecord(n).id for n in reversed(range(10))])

    def test_filters(self) -> None:
        """status and owner filters combine."""
        for n in range(6):
            record = makeRecord(n, owner="alice" if n % 2 else "bob")
            self.store.insert(record)
            if n % 3 == 0:
                record.finish(JobStatus.COMPLETED, 3000.0, exit_code=0)
                self.store.update(record)
        page, _ = self.store.page(JobFilter(owner="alice"))
        self.assertEqual([r.id for r in page], [makeRecord(n).id for n in (5, 3, 1)])
        page, _ = self.store.page(JobFilter(status=JobStatus.COMPLETED, owner="bob"))
        self.assertEqual([r.id for r in page], [makeRecord(0).id])
        running = self.store.running()
        self.assertEqual(
            {r.id for r in running}, {makeRecord(n).id for n in (1, 2, 4, 5)}
        )

    def test_limitBounds(self) -> None:
        """A page is 1 to 1000 jobs."""
        self.assertRaises(ValueError, self.store.page, limit=0)
        self.assertRaises(ValueError, self.store.page, limit=1001)

    def test_endedBeforeAndDelete(self) -> None:
        """Retention finds jobs that ended before a time; delete removes them."""
        for n in range(3):
            record = makeRecord(n)
            self.store.insert(record)
            if n < 2:
                record.finish(JobStatus.COMPLETED, 1100.0 * (n + 1), exit_code=0)
                self.store.update(record)
        self.assertEqual(self.store.endedBefore(1500.0), [makeRecord(0).id])
        self.assertEqual(
            self.store.endedBefore(1e9), [makeRecord(0).id, makeRecord(1).id]
        )
        self.store.delete(makeRecord(0).id)
        self.assertIsNone(self.store.get(makeRecord(0).id))
        self.assertEqual(self.store.count(), 2)

    def test_deleteManyAllOrNone(self) -> None:
        """deleteMany removes every record named, or (on an error) none."""
        for n in range(4):
            self.store.insert(makeRecord(n))
        ids = [makeRecord(n).id for n in range(4)]
        self.store.deleteMany(ids[:2])
        self.assertEqual([self.store.get(i) is None for i in ids], [1, 1, 0, 0])
        unbindable: Any = object()
        self.assertRaises(StoreError, self.store.deleteMany, [ids[2], unbindable])
        self.assertIsNotNone(self.store.get(ids[2]))
        self.assertFalse(self.store._db.in_transaction)
        self.assertEqual(self.store.count(), 2)

    def test_existing(self) -> None:
        """existing: which of some ids have a record."""
        for n in range(3):
            self.store.insert(makeRecord(n))
        asked = [makeRecord(n).id for n in (0, 2, 5)]
        self.assertEqual(self.store.existing(asked), set(asked[:2]))

    def test_refusedCommitEndsTheTransaction(self) -> None:
        """
        A COMMIT SQLite refuses (here a deferred constraint; a full disk
        alike) is rolled back: left open, every later statement would join
        it and never be written.
        """
        db = self.store._db
        db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.execute(
            "CREATE TABLE child (p INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        with self.assertRaises(sqlite3.IntegrityError):
            with self.store._transaction():
                db.execute("INSERT INTO child VALUES (1)")
        self.assertFalse(db.in_transaction)
        self.assertEqual(db.execute("SELECT count(*) FROM child").fetchone()[0], 0)


class MigrationTests(SynchronousTestCase):
    def test_fromEmptyFile(self) -> None:
        """An empty file (version 0) is migrated to the current version."""
        path = self.mktemp()
        open(path, "wb").close()
        store = JobStore(path)
        self.addCleanup(store.close)
        self.assertEqual(store.version, SCHEMA_VERSION)
        store.insert(makeRecord(1))
        self.assertEqual(store.count(), 1)

    def test_populatedStoreKeptOnReopen(self) -> None:
        """Reopening a populated store migrates nothing and loses nothing."""
        path = self.mktemp()
        store = JobStore(path)
        for n in range(50):
            store.insert(makeRecord(n))
        store.close()
        again = JobStore(path)
        self.addCleanup(again.close)
        self.assertEqual(again.count(), 50)
        self.assertEqual(again.version, SCHEMA_VERSION)
        loaded = again.get(makeRecord(7).id)
        assert loaded is not None
        self.assertEqual(loaded.args, ["7", "two words", "\u00e9"])

    def test_fromVersion1(self) -> None:
        """A populated version 1 store is migrated in place, keeping every job."""
        path = self.mktemp()
        db = sqlite3.connect(path, isolation_level=None)
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        for n in range(3):
            db.execute(
                "INSERT INTO jobs (id, owner, command, args, status, created_at) "
                "VALUES (?, 'bob', 'true', '[]', 'COMPLETED', ?)",
                (makeRecord(n).id, 5.0 + n),
            )
        db.close()
        store = JobStore(path)
        self.addCleanup(store.close)
        self.assertEqual(store.version, SCHEMA_VERSION)
        page, _ = store.page()
        self.assertEqual([r.id for r in page], [makeRecord(n).id for n in (2, 1, 0)])
        self.assertIsNone(page[0].limits)
        record = makeRecord(9)
        record.limits = {"memory_bytes": 1 << 20}
        record.timeout_seconds = 2.5
        store.insert(record)
        loaded = store.get(record.id)
        assert loaded is not None
        self.assertEqual(
            (loaded.limits, loaded.timeout_seconds),
            record.limits and ({"memory_bytes": 1 << 20}, 2.5),
        )

    def test_fromVersion2(self) -> None:
        """
        Jobs of a version 2 store (before executors) were all local: after
        the migration they say so, and the later columns start empty.
        """
        path = self.mktemp()
        db = sqlite3.connect(path, isolation_level=None)
        for migrate in MIGRATIONS[:2]:
            migrate(db)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO jobs (id, owner, command, args, status, created_at, "
            "pid, limits, timeout_seconds) "
            "VALUES (?, 'bob', 'sleep', '[\"1\"]', 'RUNNING', 5.0, 321, "
            "'{\"pids\": 10}', 7.5)",
            (makeRecord(1).id,),
        )
        db.close()
        store = JobStore(path)
        self.addCleanup(store.close)
        self.assertEqual(store.version, SCHEMA_VERSION)
        loaded = store.get(makeRecord(1).id)
        assert loaded is not None
        self.assertEqual(loaded.executor, "local")
        self.assertEqual(
            (loaded.slurm_job_id, loaded.node, loaded.run_as),
            (None, None, None),
        )
        self.assertEqual((loaded.owner, loaded.args, loaded.pid), ("bob", ["1"], 321))
        self.assertEqual((loaded.limits, loaded.timeout_seconds), ({"pids": 10}, 7.5))
        self.assertEqual([r.executor for r in store.running()], ["local"])

    def test_corruptFileRefusedUntouched(self) -> None:
        """A file that is not a database: StoreError, and it is not rewritten."""
        path = self.mktemp()
        garbage = b"this is not sqlite\n" * 500
        with open(path, "wb") as f:
            f.write(garbage)
        error = self.assertRaises(StoreError, JobStore, path)
        self.assertIn("not a usable jobworker store", str(error))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), garbage)

    def test_newerSchemaRefused(self) -> None:
        """A store written by a newer jobworker is refused, not downgraded."""
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE jobs (x)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
        db.close()
        error = self.assertRaises(StoreError, JobStore, path)
        self.assertIn("newer", str(error))

    def test_foreignDatabaseRefused(self) -> None:
        """An SQLite file with someone else's tables is refused."""
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE other (x)")
        db.commit()
        db.close()
        error = self.assertRaises(StoreError, JobStore, path)
        self.assertIn("not jobworker's", str(error))


#: Run as a script: open the store, fork as twistd does to become a daemon
#: (the parent leaves at once), then in the child what the server does
#: after the fork; an outside reader (a backup, the sqlite3 shell) comes and
#: goes between two inserts; then the child dies without closing (kill -9).
DAEMON_SCRIPT = """
import os, sqlite3, subprocess, sys
sys.path.insert(0, sys.argv[2])
from tests.test_store import makeRecord
from jobworker.jobs.store import JobStore
store = JobStore(sys.argv[1])
if os.fork():
    os._exit(0)
store.afterFork()
store.insert(makeRecord(1))
subprocess.run([sys.executable, "-c",
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    "c.execute('SELECT count(*) FROM jobs').fetchone(); c.close()", sys.argv[1]],
    check=True)
store.insert(makeRecord(2))
open(sys.argv[1] + ".done", "w").close()
os._exit(0)
"""


class DaemonForkTests(SynchronousTestCase):
    """
    twistd forks to become a daemon after the plugin opened the store, and
    SQLite's POSIX locks do not pass to a child: an outside reader then took
    itself for the last connection, checkpointed and deleted the WAL, and
    every later commit went to a deleted file, lost at the next crash.
    """

    def test_recordsAfterAnOutsideReaderKept(self) -> None:
        import subprocess
        import sys
        import time

        path = os.path.abspath(self.mktemp())
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run(
            [sys.executable, "-c", DAEMON_SCRIPT, path, root], check=True, timeout=30
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(path + ".done"):
            self.assertLess(time.monotonic(), deadline, "the daemon did not finish")
            time.sleep(0.05)
        time.sleep(0.2)  # its exit
        store = JobStore(path)
        self.addCleanup(store.close)
        for n in (1, 2):
            self.assertIsNotNone(store.get(makeRecord(n).id), n)


class LabelIndexTests(SynchronousTestCase):
    """
    A C{?label=} filter read every record's labels (JSON) on the reactor's
    thread: 0.6 s at 300,000 jobs, and any role may ask, every other request
    waiting meanwhile (attacker round 5). Labels are indexed (key, value,
    seq); the search goes through the index.
    """

    def setUp(self) -> None:
        self.store = JobStore(self.mktemp())
        self.addCleanup(self.store.close)
        for n in range(30):
            record = makeRecord(n)
            record.labels = {"team": "a" if n % 3 else "b", "n": str(n)}
            self.store.insert(record)

    def plans(self, call: Any) -> list[str]:
        """The query plans of the statements C{call} makes."""
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)
        try:
            call()
        finally:
            self.store._db.set_trace_callback(None)
        return [
            " / ".join(
                row[3] for row in self.store._db.execute("EXPLAIN QUERY PLAN " + s)
            )
            for s in statements
            # (Not the newest or oldest sequence: the search span's bounds.)
            if not s.startswith(("SELECT max(seq)", "SELECT min(seq)"))
        ]

    def test_pageSearchesTheIndex(self) -> None:
        selection = JobFilter(labels=(("team", "b"), ("n", "9")))
        [plan] = self.plans(lambda: self.store.page(selection))
        self.assertIn("USING PRIMARY KEY (key=? AND value=?", plan)
        self.assertNotIn("SCAN jobs", plan)
        page, _ = self.store.page(selection)
        self.assertEqual([r.id for r in page], [makeRecord(9).id])

    def test_ownerDrivesWithLabels(self) -> None:
        """With an owner, the owner's index drives and labels are checked per
        job: a label on every job, asked with an owner who has none, read
        every index row of it (a review)."""
        selection = JobFilter(owner="nobody", labels=(("team", "a"),))
        [plan] = self.plans(lambda: self.store.page(selection))
        self.assertIn("jobs_owner", plan)
        self.assertEqual(self.store.page(selection)[0], [])
        mine = JobFilter(owner="alice", labels=(("team", "b"), ("n", "3")))
        self.assertEqual([r.id for r in self.store.page(mine)[0]], [makeRecord(3).id])

    def test_pagesInOrder(self) -> None:
        selection = JobFilter(labels=(("team", "a"),))
        first, cursor = self.store.page(selection, limit=7)
        second, _ = self.store.page(selection, limit=100, before=cursor)
        ids = [r.id for r in first + second]
        wanted = [makeRecord(n).id for n in reversed(range(30)) if n % 3]
        self.assertEqual(ids, wanted)
        [plan] = self.plans(lambda: self.store.page(selection, before=cursor))
        self.assertNotIn("SCAN jobs", plan)

    def test_bulkDeleteSearchesTheIndex(self) -> None:
        for n in range(30):
            record = self.store.get(makeRecord(n).id)
            assert record is not None
            record.status, record.ended_at = JobStatus.COMPLETED, 2000.0
            self.store.update(record)
        selection = JobFilter(labels=(("team", "b"),))
        [plan] = self.plans(lambda: self.store.endedMatching(selection, 100))
        self.assertNotIn("SCAN jobs", plan)
        self.assertEqual(
            self.store.endedMatching(selection, 100),
            ([makeRecord(n).id for n in range(0, 30, 3)], None),
        )

    def test_deletedJobsLabelsGo(self) -> None:
        self.store.delete(makeRecord(0).id)
        self.store.deleteMany([makeRecord(1).id, makeRecord(2).id])
        left = self.store._db.execute("SELECT count(*) FROM job_labels").fetchone()[0]
        self.assertEqual(left, 27 * 2)

    def test_fromVersion6(self) -> None:
        """A version 6 store's labels are indexed by the migration."""
        path = self.mktemp()
        db = sqlite3.connect(path, isolation_level=None)
        for migrate in MIGRATIONS[:6]:
            migrate(db)
        db.execute("PRAGMA user_version = 6")
        db.execute(
            "INSERT INTO jobs (id, owner, command, args, status, created_at, labels) "
            "VALUES (?, 'bob', 'true', '[]', 'COMPLETED', 5.0, ?)",
            (makeRecord(1).id, '{"team": "a", "tier": "x y"}'),
        )
        db.close()
        store = JobStore(path)
        self.addCleanup(store.close)
        page, _ = store.page(JobFilter(labels=(("tier", "x y"),)))
        self.assertEqual([r.id for r in page], [makeRecord(1).id])
        loaded = store.get(makeRecord(1).id)
        assert loaded is not None
        self.assertEqual((loaded.stop_signal, loaded.stop_grace), (None, None))

    def test_stopHowStored(self) -> None:
        record = self.store.get(makeRecord(4).id)
        assert record is not None
        record.stop_signal, record.stop_grace = "SIGINT", 30.0
        self.store.update(record)
        loaded = self.store.get(record.id)
        assert loaded is not None
        self.assertEqual((loaded.stop_signal, loaded.stop_grace), ("SIGINT", 30.0))


class StoreLockTests(SynchronousTestCase):
    """
    The store's lock file unlinked by hand while a server runs let a second
    server open the same store, which killed the first's running jobs as a
    crash's leftovers (a fault round). The state dir itself is locked too:
    a folder that holds the store cannot be removed.
    """

    def test_lockFileUnlinked(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        store = JobStore(os.path.join(path, "jobs.sqlite3"))
        self.addCleanup(store.close)
        os.unlink(os.path.join(path, "jobs.sqlite3.lock"))
        error = self.assertRaises(
            StoreError, JobStore, os.path.join(path, "jobs.sqlite3")
        )
        self.assertIn("another jobworker uses this state dir", str(error))

    def test_closedStoreOpensAgain(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        JobStore(os.path.join(path, "jobs.sqlite3")).close()
        JobStore(os.path.join(path, "jobs.sqlite3")).close()


class SearchSpanTests(SynchronousTestCase):
    """
    Two filters or more: one index leads, the rest are tested job by job, so
    a combination that matches nothing read the whole leading index on the
    reactor's thread (90-190 ms at 300,000 jobs, any role: attacker round
    10). A page searches L{store.SEARCH_SPAN} sequence numbers at most and
    ends with a cursor below them; paging on finds every match, in order.
    """

    def setUp(self) -> None:
        self.store = JobStore(self.mktemp())
        self.addCleanup(self.store.close)
        for n in range(3000):
            record = makeRecord(n)
            record.labels = {"team": "common"}
            if n not in (100, 2500):
                record.finish(JobStatus.COMPLETED, 2000.0 + n, exit_code=0)
            self.store.insert(record)
        self.patch(store, "SEARCH_SPAN", 500)

    def steps(self, selection: JobFilter, before: int | None = None) -> int:
        """The SQLite VM steps (in hundreds) one page of C{selection} takes."""
        return self.stepsOf(lambda: self.store.page(selection, limit=10, before=before))

    def stepsOf(self, search: Callable[[], object]) -> int:
        """The SQLite VM steps (in hundreds) C{search} takes."""
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        self.store._db.set_progress_handler(count, 100)
        try:
            search()
        finally:
            self.store._db.set_progress_handler(None, 100)
        return counted[0]

    def walk(self, selection: JobFilter) -> tuple[list[str], int]:
        """Every match, paging on, and how many pages it took."""
        found: list[str] = []
        before, pages = None, 0
        while True:
            records, before = self.store.page(selection, limit=10, before=before)
            found.extend(r.id for r in records)
            pages += 1
            if before is None:
                return found, pages

    def test_spanBounded(self) -> None:
        for selection in (
            JobFilter(owner="alice", status=JobStatus.RUNNING),
            JobFilter(labels=(("team", "common"),), status=JobStatus.RUNNING),
            JobFilter(labels=(("team", "common"), ("team", "none"))),
            JobFilter(status=JobStatus.COMPLETED, idPrefix="ffffff"),
        ):
            bounded = self.steps(selection)
            self.patch(store, "SEARCH_SPAN", 10**9)
            whole = self.steps(selection)
            self.patch(store, "SEARCH_SPAN", 500)
            self.assertLess(bounded * 4, whole, selection)
            found, pages = self.walk(selection)
            expected = (
                [makeRecord(2500).id, makeRecord(100).id]
                if selection.status is JobStatus.RUNNING
                else []
            )
            self.assertEqual(found, expected, selection)
            self.assertEqual(pages, 6, selection)  # 3,000 jobs, 500 a page

    def test_bulkDeleteSpanBounded(self) -> None:
        """
        C{DELETE /jobs} with filters had the listing's shape, unbounded: its
        owner (a Developer's own, always) leads, and the status and the end
        were tested job by job through every job of that owner, on the
        reactor's thread. A search covers L{store.SEARCH_SPAN} sequence
        numbers at most, oldest first, and gives the cursor to go on from;
        going on finds every match, in order.
        """
        for selection in (
            JobFilter(owner="alice", status=JobStatus.FAILED),
            JobFilter(owner="alice", endedBefore=1.0),
            JobFilter(status=JobStatus.COMPLETED, endedBefore=1.0),
        ):
            bounded = self.deleteSteps(selection)
            self.patch(store, "SEARCH_SPAN", 10**9)
            whole = self.deleteSteps(selection)
            self.patch(store, "SEARCH_SPAN", 500)
            self.assertLess(bounded * 4, whole, selection)
        failed = {7, 1200, 2999}
        for n in failed:
            record = makeRecord(n)
            record.finish(JobStatus.FAILED, 3000.0, exit_code=1)
            self.store.update(record)
        found: list[str] = []
        after: int | None = None
        searches = 0
        while True:
            ids, after = self.store.endedMatching(
                JobFilter(owner="alice", status=JobStatus.FAILED), 2, after
            )
            found.extend(ids)
            searches += 1
            if after is None:
                break
        self.assertEqual(found, [makeRecord(n).id for n in sorted(failed)])
        self.assertEqual(searches, 6)  # 3,000 jobs, 500 a search

    def deleteSteps(self, selection: JobFilter) -> int:
        """The SQLite VM steps (in hundreds) a bulk delete's search takes."""
        return self.stepsOf(lambda: self.store.endedMatching(selection, 10))

    def test_pageStopsAtItsBytes(self) -> None:
        """
        A page of large records stops once C{maxBytes} of them are read, and
        its cursor carries on from there: a page of 1,000 records of 60 KB
        read and decoded them all, to send the 4 MiB the answer holds (70
        of them), 70 ms a request for any Reader (attacker round 12).
        """
        big = JobStore(self.mktemp())
        self.addCleanup(big.close)
        for n in range(20):
            record = makeRecord(n)
            record.args = ["x" * 100_000]
            big.insert(record)
        decoded = [0]
        fromRow = store.fromRow

        def counting(row: Any) -> Any:
            decoded[0] += 1
            return fromRow(row)

        self.patch(store, "fromRow", counting)
        records, cursor = big.page(limit=20, maxBytes=300_000)
        self.assertEqual(
            [r.id for r in records], [makeRecord(n).id for n in (19, 18, 17)]
        )
        self.assertEqual(cursor, records[-1].seq)
        self.assertEqual(decoded[0], 3)
        rest, _ = big.page(limit=20, before=cursor)
        self.assertEqual(len(rest), 17)

    def test_fullPagesAsBefore(self) -> None:
        """A page the span fills ends as ever: at its last job; one filter
        alone is never cut (its index holds only its jobs)."""
        selection = JobFilter(owner="alice", status=JobStatus.COMPLETED)
        records, cursor = self.store.page(selection, limit=10)
        self.assertEqual(cursor, records[-1].seq)
        records, cursor = self.store.page(JobFilter(status=JobStatus.RUNNING))
        self.assertEqual(len(records), 2)
        self.assertIsNone(cursor)
