"""
Fault injection round 7, configuration and start-up: a users file whose
bcrypt cost bcrypt refuses (#5), a symlink in place of the disk reserve
(#6), a second server on the same state dir rewriting the first one's
certificate before it was refused (#7), and retention under a step of the
wall clock (#3).
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase, UsersFileError
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.manager import RESERVE_BYTES, JobManager
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.store import JobStore
from jobworker.server import tap, tlssetup
from jobworker.server.options import Options
from jobworker.server.services import RetentionService, UsersReloadService
from jobworker.server.startup import StartupError

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import (
    CERT,
    FREE_UIDS,
    KEY,
    RecordingAuthenticator,
    pythonChild,
    runSync,
    twistdCommand,
)

#: A valid hash of the development users (alice's), and the same with a cost
#: the users file's pattern accepts but bcrypt refuses (it takes 04-31).
HASH = "$2b$10$Cjf7bE7zQ28.0B/HE1ZfLO..SRXQvt06wjyMS4QR4GgIv2vniW3Lm"


def _withCost(cost: str) -> str:
    return HASH.replace("$10$", f"${cost}$", 1)


def _users(bobCost: str) -> str:
    """A users file whose second user's hash has the cost C{bobCost}."""
    return (
        f"alice:Developer:{HASH}\n"
        f"bob:Developer:{_withCost(bobCost)}\n"
        f"ada:Admin:{HASH}\n"
    )


class _Events:
    """Every log event while a test runs, as (level, text)."""

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[tuple[LogLevel, str]] = []

        def observe(event: dict[str, Any]) -> None:
            self.events.append((event.get("log_level"), formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        testCase.addCleanup(globalLogPublisher.removeObserver, observe)

    def containing(self, text: str) -> list[tuple[LogLevel, str]]:
        return [(level, line) for level, line in self.events if text in line]


# -- #5: a bcrypt cost bcrypt refuses ------------------------------------------


class UsersCostTests(SynchronousTestCase):
    """
    C{$2b$03$...} and C{$2b$99$...} matched the users file's pattern, and
    bcrypt refused them only when the dummy hash was made: a traceback at
    start-up, and a SIGHUP that reloaded nothing and said nothing (a removed
    Admin kept access).
    """

    def test_costOutOfRangeRefusedNamingTheLine(self) -> None:
        """A cost below 04 or above 31 is a UsersFileError naming the line."""
        for cost in ("00", "03", "32", "99"):
            error = self.assertRaises(
                UsersFileError, UserDatabase.fromText, _users(cost), "users"
            )
            self.assertIn("users, line 2", str(error))
            self.assertIn(cost, str(error))

    def test_costBoundsAccepted(self) -> None:
        """04 and 31, bcrypt's own bounds, are accepted (nothing is hashed)."""
        for cost in ("04", "31"):
            self.assertEqual(len(UserDatabase.fromText(_users(cost))), 3)

    def test_startupOneLine(self) -> None:
        """The composition root turns it into the one-line start-up error."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(_users("99"))
        options = Options()
        options.parseOptions(
            ["--tls", f"--cert={CERT}", f"--key={KEY}", f"--users={path}"]
        )
        error = self.assertRaises(StartupError, tap._users, options)
        self.assertIn("bad users file", str(error))
        self.assertIn("line 2", str(error))

    def test_startupUnexpectedErrorOneLine(self) -> None:
        """
        Whatever else loading the users file raises is a start-up error too
        (one line, the file named), never a traceback.
        """

        def broken(path: str) -> UserDatabase:
            raise ValueError("Invalid rounds")

        self.patch(UserDatabase, "fromFile", staticmethod(broken))
        options = Options()
        options.parseOptions(["--tls", f"--cert={CERT}", f"--key={KEY}", "--users=u"])
        error = self.assertRaises(StartupError, tap._users, options)
        self.assertIn(f"users file {os.path.abspath('u')}", str(error))
        self.assertIn("Invalid rounds", str(error))


class UsersReloadErrorTests(SynchronousTestCase):
    """A SIGHUP reload that fails, however, says so and keeps the old users."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        self.authenticator = RecordingAuthenticator()
        self.events = _Events(self)

    def service(self, runInThread: Any = None) -> UsersReloadService:
        return UsersReloadService(
            self.path,
            self.authenticator,  # type: ignore[arg-type]
            None,
            runInThread,
        )

    def assertKeptAndSaid(self, done: Deferred[None], why: str) -> None:
        self.successResultOf(done)
        self.assertEqual(self.authenticator.replaced, [])
        lines = self.events.containing("not reloaded")
        self.assertEqual(len(lines), 1, self.events.events)
        level, line = lines[0]
        self.assertIn(level, (LogLevel.error, LogLevel.critical))
        self.assertIn(self.path, line)
        self.assertIn(why, line)

    def test_badCostKeepsOldUsersAndSaysSo(self) -> None:
        """The fault round's file (cost 03): logged naming the line."""
        with open(self.path, "w") as f:
            f.write(_users("03"))
        done = self.service(lambda f, *a: maybeDeferred(f, *a)).reload()
        self.assertKeptAndSaid(done, "line 2")

    def test_unexpectedErrorInThreadLogged(self) -> None:
        """An error of no expected kind from the thread is logged, not lost."""
        done = self.service(lambda f, *a: fail(RuntimeError("surprise"))).reload()
        self.assertKeptAndSaid(done, "surprise")
        self.flushLoggedErrors(RuntimeError)

    def test_unexpectedErrorOnReactorLogged(self) -> None:
        """The same when the file is read on the reactor (no thread)."""

        def broken(path: str) -> UserDatabase:
            raise ValueError("Invalid rounds")

        self.patch(UserDatabase, "fromFile", staticmethod(broken))
        self.assertKeptAndSaid(self.service().reload(), "Invalid rounds")
        self.flushLoggedErrors(ValueError)

    def test_nextReloadWorks(self) -> None:
        """After a failed reload the next one, of a good file, goes through."""
        with open(self.path, "w") as f:
            f.write(_users("99"))
        service = self.service()
        self.successResultOf(service.reload())
        with open(self.path, "w") as f:
            f.write(_users("04"))
        self.successResultOf(service.reload())
        self.assertEqual(len(self.authenticator.replaced), 1)


class UsersCostTwistdTests(SynchronousTestCase):
    """The real twistd: one line on stderr, exit 1, no traceback."""

    def test_oneLineAtStart(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        users = os.path.join(folder, "users")
        with open(users, "w") as f:
            f.write(_users("99"))
        result = runSync(
            *twistdCommand(os.path.join(folder, "state"), f"--users={users}"),
            cwd=folder,
        )
        stderr = result.stderr.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 1, stderr)
        self.assertNotIn("Traceback", stderr + result.stdout.decode())
        lines = [line for line in stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("jobworker: error: bad users file"))
        self.assertIn("line 2", lines[0])


# -- #6: the disk reserve through a symlink ------------------------------------


class ReserveTests(SynchronousTestCase):
    """
    C{state/reserve} a symlink to another file: the start grew that file
    to 1 MiB of NULs. Only the server's own regular file is ever grown.
    """

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.folder = os.path.abspath(self.mktemp())
        self.stateDir = os.path.join(self.folder, "state")
        os.makedirs(self.stateDir)
        self.reserve = os.path.join(self.stateDir, "reserve")
        self.victim = os.path.join(self.folder, "victim.txt")
        with open(self.victim, "wb") as f:
            f.write(b"someone else's\n")
        self.events = _Events(self)

    def start(self) -> JobManager:
        manager = localJobManager(self.reactor, self.stateDir, 1.0, GroupKiller())
        self.addCleanup(manager.close)
        return manager

    def assertVictimUntouched(self) -> None:
        with open(self.victim, "rb") as f:
            self.assertEqual(f.read(), b"someone else's\n")

    def assertSaidOnce(self, why: str) -> None:
        lines = self.events.containing("reserve")
        self.assertEqual(len(lines), 1, self.events.events)
        level, line = lines[0]
        self.assertEqual(level, LogLevel.warn)
        self.assertIn(self.reserve, line)
        self.assertIn(why, line)
        self.assertNotIn("Traceback", line)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_symlinkNotFollowed(self) -> None:
        """A symlink is left as it is, its target untouched; one warning."""
        os.symlink(self.victim, self.reserve)
        manager = self.start()
        self.assertVictimUntouched()
        self.assertTrue(os.path.islink(self.reserve))
        self.assertSaidOnce("symlink")
        # Tried again after a deletion: still nothing grown.
        self.assertFalse(manager._keepReserve(quiet=True))
        self.assertVictimUntouched()

    def test_symlinkToBigFileNotTakenForTheReserve(self) -> None:
        """A symlink to a file of 1 MiB or more is no reserve either."""
        with open(self.victim, "ab") as f:
            f.truncate(2 * RESERVE_BYTES)
        os.symlink(self.victim, self.reserve)
        manager = self.start()
        self.assertFalse(manager._keepReserve(quiet=True))
        self.assertSaidOnce("symlink")

    def test_hardLinkNotGrown(self) -> None:
        """A hard link to another file is not the server's own: not grown."""
        os.link(self.victim, self.reserve)
        self.start()
        self.assertVictimUntouched()
        self.assertSaidOnce("not a regular file of the server's own")

    def test_folderSaid(self) -> None:
        """A folder in its place: one warning, no traceback."""
        os.mkdir(self.reserve)
        self.start()
        self.assertTrue(os.path.isdir(self.reserve))
        self.assertSaidOnce("reserve")

    def test_ownFileMade(self) -> None:
        """The server's own reserve is still made, 1 MiB, 0600, and kept."""
        manager = self.start()
        status = os.lstat(self.reserve)
        self.assertEqual(status.st_size, RESERVE_BYTES)
        self.assertEqual(status.st_mode & 0o777, 0o600)
        self.assertTrue(manager._keepReserve())
        self.assertEqual(self.events.containing("reserve"), [])


class ReserveFifoTests(SynchronousTestCase):
    """A FIFO in place of the reserve, in a child (it hung the start)."""

    def test_fifoNotWaitedOn(self) -> None:
        """Refused at once: the open waited for a reader, for good."""
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        os.mkfifo(os.path.join(stateDir, "reserve"))
        result = pythonChild(
            "import sys\n"
            "from twisted.internet.task import Clock\n"
            "from jobworker.executors.local.executor import localJobManager\n"
            "m = localJobManager(Clock(), sys.argv[1], 1.0)\n"
            "print(m._keepReserve(quiet=True))\n"
            "m.close()\n",
            stateDir,
            timeout=20,
        )
        self.assertEqual(result.stdout.strip(), b"False", result.stderr)


# -- #7: a refused second server changes nothing -------------------------------


class SecondServerTests(SynchronousTestCase):
    """
    A second server on a state dir whose store another holds is refused;
    it rewrote the first one's own certificate and key first.
    """

    def options(self, stateDir: str, *extra: str) -> Options:
        options = Options()
        options.parseOptions(
            [
                "--tls",
                "--port=0",
                f"--dynamic-uids={FREE_UIDS}",
                f"--state-dir={stateDir}",
                *extra,
            ]
        )
        return options

    def test_ownCertificateUntouched(self) -> None:
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir, mode=0o700)
        # The first server: its own certificate, and its store held.
        tlssetup.tlsOptions(self.options(stateDir))
        store = JobStore(os.path.join(stateDir, "jobs.sqlite3"))
        self.addCleanup(store.close)
        tls = os.path.join(stateDir, "tls")

        def snapshot() -> dict[str, tuple[bytes, int]]:
            files = {}
            for name in sorted(os.listdir(tls)):
                path = os.path.join(tls, name)
                with open(path, "rb") as f:
                    files[name] = (f.read(), os.stat(path).st_mtime_ns)
            return files

        before = snapshot()
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        # Another interface: a certificate that must name it would be made.
        exited = self.assertRaises(
            SystemExit,
            tap.makeService,
            self.options(stateDir, "--interface=127.0.0.2"),
            reactor,
        )
        self.assertEqual(exited.code, 1)
        self.assertEqual(errors.getvalue().count("\n"), 1, errors.getvalue())
        self.assertIn("another jobworker uses this state dir", errors.getvalue())
        self.assertEqual(snapshot(), before)


# -- #3: retention and a step of the wall clock --------------------------------

HOUR = 3600.0


class RetentionClockStepTests(SynchronousTestCase):
    """
    C{--retain 1h}: a step of the wall clock 2 h forward for 2 s deleted
    every job that had ended within the hour. Retention counts back from
    the wall clock as of the start plus the time elapsed since (a clock no
    step moves), or from the wall clock if that is earlier.
    """

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.stateDir = os.path.abspath(self.mktemp())
        self.manager = localJobManager(self.reactor, self.stateDir, 1.0, GroupKiller())
        self.addCleanup(self.manager.close)
        #: The elapsed-time clock: moved by the test, never by a step.
        self.elapsed = 1000.0

    def service(self, retain: float) -> RetentionService:
        service = RetentionService(
            self.manager, retain, self.reactor, monotonic=lambda: self.elapsed
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def storeEnded(self, endedAgo: float) -> str:
        ended = self.reactor.seconds() - endedAgo
        record = JobRecord(
            id=str(uuid.uuid4()),
            command="true",
            args=[],
            owner="alice",
            created_at=ended - 1,
            status=JobStatus.COMPLETED,
            exit_code=0,
            started_at=ended - 1,
            ended_at=ended,
        )
        self.manager._store.insert(record)
        return record.id

    def stored(self, jobId: str) -> bool:
        return self.manager._store.get(jobId) is not None

    def passes(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.elapsed += seconds
        self.reactor.advance(seconds)

    def test_forwardStepDeletesNothingEarly(self) -> None:
        """
        A step 2 h forward (the fault round's) deletes none of the jobs that
        ended 10 minutes ago; once an hour has really passed, they go.
        """
        recent = self.storeEnded(600)
        old = self.storeEnded(2 * HOUR)
        self.service(HOUR)
        self.assertFalse(self.stored(old))
        self.reactor.advance(2 * HOUR)  # the step: a round runs at once
        self.assertTrue(self.stored(recent))
        self.reactor.advance(-2 * HOUR)  # and back, 2 s later
        self.passes(2)
        self.assertTrue(self.stored(recent))
        # (The rounds' own timer, a reactor timer, moved with the step: the
        # next round comes 2 h later.)
        self.passes(2 * HOUR + 60)
        self.assertFalse(self.stored(recent))

    def test_forwardStepThatStays(self) -> None:
        """
        A step forward that stays (the clock was behind) never deletes
        early: retention runs that much late instead.
        """
        recent = self.storeEnded(600)
        self.service(HOUR)
        self.reactor.advance(2 * HOUR)
        self.passes(HOUR - 600 - 60)
        self.assertTrue(self.stored(recent))
        self.passes(120)
        self.assertFalse(self.stored(recent))

    def test_backwardStepDeletesNothingEarly(self) -> None:
        """
        A step back: the wall clock is the earlier one, and counts; the
        elapsed time never makes up for it (a job that ended 2 h ago with
        C{--retain 3h} stays while the wall clock says it is younger).
        """
        job = self.storeEnded(2 * HOUR)
        self.service(3 * HOUR)
        self.reactor.advance(-2 * HOUR)
        # 2 h later by the elapsed time, 200 s by the wall clock, past the
        # first round (every 108 s): a round runs.
        self.passes(2 * HOUR + 200)
        self.assertTrue(self.stored(job))
        self.passes(HOUR)
        self.assertFalse(self.stored(job))

    def test_noStepAsBefore(self) -> None:
        """Without a step, a job goes once it ended more than C{retain} ago."""
        job = self.storeEnded(0)
        self.service(HOUR)
        self.passes(HOUR - 60)
        self.assertTrue(self.stored(job))
        self.passes(120)
        self.assertFalse(self.stored(job))

    def test_defaultElapsedClock(self) -> None:
        """Without one given, the service reads a real elapsed-time clock."""
        old = self.storeEnded(2 * HOUR)
        service = RetentionService(self.manager, HOUR, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertFalse(self.stored(old))
