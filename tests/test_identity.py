"""
Every job runs as its owner: the identity rules (unit tests), and on the real
kernel, as root, what one user's job must not be able to do to another's,
under each identity mode (mapped accounts, dynamic uids, a shared --run-as
account with --isolate pid).
"""

from __future__ import annotations

import ctypes
import dataclasses
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
import types
from typing import Any

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase, UsersFileError
from jobworker.executors.local import sandbox
from jobworker.executors.local.executor import LocalExecutor
from jobworker.executors.local.sandbox import (
    MAX_PATH_CHECKS,
    MAX_PTYS,
    WORKDIR,
    RunnableChecks,
    Sandbox,
    SpawnRefused,
    checkRunnable,
)
from jobworker.jobs.identity import (
    DYNAMIC_UIDS,
    LOCK_DIR,
    DynamicUids,
    Identities,
    Identity,
    IdentityError,
    PoolExhausted,
    parseRange,
    rangeClashes,
)
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.recovery import hasLiveParent, processesOf

from .fakes import FakeProcessReactor, noLiveUidProcesses
from .support import CERT, KEY, LiveServer, sharedPath, sleep
from .test_dropbehind import Threads, warnings
from .test_pump import readCmdline

#: Accounts the mapped-mode tests run alice's and bob's jobs as (also used
#: by the Slurm CI cluster).
ACCOUNTS = {"alice": "jwalice", "bob": "jwbob"}


def requireRoot() -> None:
    if os.getuid() != 0:
        raise SkipTest(f"identities need root (running as uid {os.getuid()})")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            raise SkipTest(f"util-linux {tool} is not installed")


def ensureAccounts() -> None:
    """Create the test accounts if missing, homes 0700 (see the README)."""
    for account in ACCOUNTS.values():
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            if shutil.which("useradd") is None:
                raise SkipTest("no useradd to create the test accounts") from None
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/sh", account],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(account)
        # A home others can read lets them read the files of jobs that run
        # in it: the README asks operators for 0700 homes.
        os.chmod(entry.pw_dir, 0o700)


def mappedUsersFile(testCase: TestCase, one: str | None = None) -> str:
    """The development users, alice and bob mapped to their accounts (or
    both to the account C{one})."""
    lines = []
    for line in DEVELOPMENT_USERS.splitlines():
        name = line.split(":", 1)[0]
        if name in ACCOUNTS:
            line += ":" + (one or ACCOUNTS[name])
        lines.append(line)
    path = os.path.abspath(testCase.mktemp())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


# -- unit tests ------------------------------------------------------------------


class RangeTests(SynchronousTestCase):
    def test_parseRange(self) -> None:
        """A range parses; nonsense, tiny uids and one holding nobody do not."""
        self.assertEqual(parseRange("61184-65519"), (61184, 65519))
        self.assertEqual(parseRange("70000-70000"), (70000, 70000))
        for bad in ("61184", "a-b", "500-600", "70000-60000", "65000-66000", ""):
            self.assertRaises(ValueError, parseRange, bad)

    def test_defaultRangeAllocatesWithNoOne(self) -> None:
        """
        The default range is one no other allocator of this kind of machine
        takes from. Dynamic uids have no passwd entry, so a service manager
        that checks NSS before it hands out a uid would not see them: systemd's
        C{DynamicUser=} (61184-65519) and C{systemd-homed} (60001-60513),
        Debian's package users (60000-64999: C{slurm} is 64030), useradd's
        regular users (up to 60000) and its subordinate ranges for rootless
        containers (from 100000).
        """
        first, last = DYNAMIC_UIDS
        self.assertEqual(parseRange(f"{first}-{last}"), (first, last))
        self.assertGreater(first, 65535)
        self.assertLess(last, 100000)
        self.assertGreaterEqual(last - first + 1, 1000, "room for 1,000 live jobs")

    def test_clashesNamed(self) -> None:
        """Users and groups inside the range are named; outside ones not."""
        found = rangeClashes(
            100,
            200,
            users=[("root", 0), ("slurm", 150)],
            groups=[("wheel", 10), ("slurm", 150), ("x", 201)],
        )
        self.assertEqual(found, ["user slurm (150)", "group slurm (150)"])


class DynamicUidsTests(SynchronousTestCase):
    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)
        self.lockDir = self.mktemp()

    def test_twoServersNeverShareAUid(self) -> None:
        """Two pools on one lock folder (two servers) hand out disjoint uids."""
        first = DynamicUids(70000, 70003, self.lockDir)
        second = DynamicUids(70000, 70003, self.lockDir)
        taken = [first.acquire(), second.acquire(), first.acquire(), second.acquire()]
        self.assertEqual(sorted(taken), [70000, 70001, 70002, 70003])
        self.assertRaises(PoolExhausted, first.acquire)
        self.assertRaises(PoolExhausted, second.acquire)

    def test_releasedUidIsReusedLast(self) -> None:
        """A released uid comes back, but only after the others had a turn."""
        pool = DynamicUids(70000, 70002, self.lockDir)
        a = pool.acquire()
        pool.release(a)
        b = pool.acquire()
        self.assertNotEqual(a, b)
        pool.release(b)
        self.assertEqual(pool.acquire(), 70002)
        self.assertEqual(pool.acquire(), a)
        self.assertEqual(len(pool), 2)

    def test_identitiesChoose(self) -> None:
        """Mapped first, then the shared account, then a dynamic uid."""
        pool = DynamicUids(70000, 70001, self.lockDir)
        server = Identity(0, 0, (), "root", "/root", "/bin/sh", "root")
        mapped = Identity(1500, 1500, (27,), "carol", "/home/c", "/bin/sh", "carol")
        looked: list[str] = []

        def lookUp(name: str) -> Identity:
            looked.append(name)
            return mapped

        identities = Identities(pool=pool, server=server, lookUp=lookUp)
        self.assertIs(identities.acquire(mapped), mapped)
        self.assertEqual(looked, ["carol"])  # as it is now, by its name
        dynamic = identities.acquire(None)
        self.assertTrue(dynamic.dynamic)
        self.assertEqual(dynamic.label, f"dynamic:{dynamic.uid}")
        self.assertTrue(identities.sandboxed(dynamic))
        self.assertFalse(identities.sandboxed(server))
        identities.release(dynamic)
        self.assertEqual(len(pool), 0)
        self.assertFalse(mapped.ownPidNamespace)
        shared = Identities(shared=mapped, pool=pool, server=server, lookUp=lookUp)
        # The shared account's jobs are several users': each gets a PID
        # namespace of its own (so does a mapped account of the same uid,
        # and one the users file maps several users to).
        alone = dataclasses.replace(mapped, ownPidNamespace=True)
        self.assertEqual(shared.acquire(None), alone)
        self.assertEqual(shared.acquire(mapped), alone)
        self.assertEqual(identities.acquire(alone), alone)
        self.assertEqual(looked, ["carol", "carol", "carol", "carol"])
        # An account made since the start-up check with a uid in the pool's
        # range would share it with another user's dynamic job: refused.
        inRange = Identity(70001, 70001, (), "carol", "/home/c", "/bin/sh", "carol")
        clashing = Identities(pool=pool, server=server, lookUp=lambda name: inRange)
        with self.assertRaises(IdentityError) as caught:
            clashing.acquire(mapped)
        self.assertIn("--dynamic-uids", str(caught.exception))
        self.assertIs(Identities(server=server).acquire(None), server)


class Directory:
    """
    A fake user database that does not enumerate (SSSD's C{enumerate =
    false}): L{getpwuid} and L{getgrgid} find its entries, C{getpwall} and
    C{getgrall} never list them. C{asked} is every uid L{getpwuid} was asked
    about; C{broken} makes both raise it.
    """

    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}
        self.asked: list[int] = []
        self.broken: Exception | None = None

    def getpwuid(self, uid: int) -> pwd.struct_passwd:
        self.asked.append(uid)
        if self.broken is not None:
            raise self.broken
        name = self.users.get(uid)
        if name is None:
            raise KeyError(f"getpwuid(): uid not found: {uid}")
        return pwd.struct_passwd((name, "x", uid, uid, "", f"/home/{name}", "/bin/sh"))

    def getgrgid(self, gid: int) -> grp.struct_group:
        if self.broken is not None:
            raise self.broken
        name = self.groups.get(gid)
        if name is None:
            raise KeyError(f"getgrgid(): gid not found: {gid}")
        return grp.struct_group((name, "x", gid, []))

    def pool(self, first: int, last: int, lockDir: str) -> DynamicUids:
        """A pool whose uids are looked up in this directory."""
        return DynamicUids(
            first, last, lockDir, getpwuid=self.getpwuid, getgrgid=self.getgrgid
        )


def skipped(events: list[dict[str, Any]]) -> list[int]:
    """The uids of the warnings that a dynamic uid has an entry."""
    return [e["uid"] for e in events if "entry" in e]


class PrimaryGroupRangeTests(SynchronousTestCase):
    """
    Attack round 9: a passwd entry's primary gid in the --dynamic-uids range
    (carol, uid 1500, gid 70005: typical of LDAP, where the group itself may
    not be listed) gave her group to the job of dynamic:70005; neither the
    start-up check nor the per-job one looked at it.
    """

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)

    def test_primaryGroupNamed(self) -> None:
        """A user's primary gid in the range is named; once with its group."""
        found = rangeClashes(
            100,
            200,
            users=[("carol", 1500), ("slurm", 150)],
            groups=[("slurm", 150)],
            primaryGroups=[("carol", 170), ("slurm", 150), ("root", 0)],
        )
        self.assertEqual(
            found,
            [
                "user slurm (150)",
                "group slurm (150)",
                "user carol's primary group (170)",
            ],
        )

    def test_primaryGroupOfTheUserDatabase(self) -> None:
        """By default the primary gids are the passwd entries' own."""
        carol = pwd.struct_passwd(
            ("carol", "x", 1500, 70005, "", "/home/carol", "/bin/sh")
        )
        self.patch(pwd, "getpwall", lambda: [carol])
        self.patch(grp, "getgrall", lambda: [])
        self.assertEqual(
            rangeClashes(70000, 79999), ["user carol's primary group (70005)"]
        )

    def accountWith(self, gid: int, groups: tuple[int, ...]) -> Identity:
        """The identity of a job of carol, whose account has these groups."""
        pool = DynamicUids(70000, 70009, self.mktemp())
        server = Identity(0, 0, (), "root", "/root", "/bin/sh", "root")
        carol = Identity(1500, gid, groups, "carol", "/home/c", "/bin/sh", "carol")
        identities = Identities(pool=pool, server=server, lookUp=lambda name: carol)
        return identities.acquire(carol)

    def test_accountOfAGroupInTheRangeRefused(self) -> None:
        """
        A job of an account whose primary or supplementary group is in the
        range is refused, as one whose uid is: it would share a group with
        another user's dynamic job.
        """
        for gid, groups in ((70005, ()), (1500, (27, 70009)), (1500, (70000,))):
            with self.assertRaises(IdentityError) as caught:
                self.accountWith(gid, groups)
            message = str(caught.exception)
            self.assertIn("--dynamic-uids (70000-70009)", message)
            self.assertIn(str(max(g for g in (gid, *groups) if g >= 70000)), message)

    def test_groupsBesideTheRangeAccepted(self) -> None:
        """Groups just outside the range are no clash."""
        found = self.accountWith(69999, (27, 70010))
        self.assertEqual((found.gid, found.groups), (69999, (27, 70010)))


class DynamicUidLookupTests(SynchronousTestCase):
    """
    Attack round 9: the range was checked by enumeration only (C{getpwall},
    C{getgrall}), which a network user database (SSSD's C{enumerate =
    false}) does not fill, and the pool handed out the uid of a real user of
    the site. A uid is now looked up (C{getpwuid}, C{getgrgid}) before it is
    handed out, as systemd's C{DynamicUser=} does; one with an entry is
    skipped, said once. (A pool not started with L{DynamicUids.verifyAhead}
    looks each uid up as it hands it out: the server's start-up, tests.)
    """

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)

    def test_uidOfAUserOrGroupSkipped(self) -> None:
        directory = Directory()
        directory.users[70000] = "erin"
        directory.groups[70002] = "lab"
        pool = directory.pool(70000, 70003, self.mktemp())
        seen = warnings(self)
        self.assertEqual([pool.acquire(), pool.acquire()], [70001, 70003])
        self.assertRaises(PoolExhausted, pool.acquire)
        pool.release(70001)
        self.assertEqual(pool.acquire(), 70001)
        self.assertEqual(skipped(seen), [70000, 70002], "each said once")
        self.assertIn("erin", seen[0]["entry"])
        self.assertIn("lab", seen[1]["entry"])

    def test_accountOfTheRealUserDatabaseSkipped(self) -> None:
        """
        The real user database (NSS): a range holding only nobody's uid
        hands out none, looked up as it is handed out or ahead of need.
        """
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            raise SkipTest("no nobody account here") from None
        pool = DynamicUids(nobody, nobody, self.mktemp())
        self.assertRaises(PoolExhausted, pool.acquire)
        ahead = DynamicUids(nobody, nobody, self.mktemp())
        threads = Threads()
        ahead.verifyAhead(Clock(), threads)
        self.addCleanup(ahead.stopVerifying)
        self.assertRaises(PoolExhausted, ahead.acquire)
        while threads.pending:
            threads.runNext()
        self.assertRaises(PoolExhausted, ahead.acquire)


class ProbeRangeTests(SynchronousTestCase):
    def test_everyUidWithAnEntryRefused(self) -> None:
        """
        Every uid of the range has a user or group entry the start-up check
        did not list (a network directory): the server refuses to start,
        naming --dynamic-uids (the sandbox probe found no uid; it was a
        traceback).
        """
        from jobworker.server.identitysetup import probeSandbox
        from jobworker.server.startup import StartupError

        directory = Directory()
        directory.users.update({70000: "erin", 70001: "frank"})
        pool = directory.pool(70000, 70001, self.mktemp())
        executor: Any = types.SimpleNamespace(sandbox=object())  # a root server's
        with self.assertRaises(StartupError) as caught:
            probeSandbox(executor, Identities(pool=pool))
        self.assertIn("--dynamic-uids", str(caught.exception))


class DynamicUidsVerifiedAheadTests(SynchronousTestCase):
    """
    In the server, dynamic uids are looked up in the reactor's thread pool
    ahead of need (a network user database can block): a job start looks
    nothing up, and a uid is handed out only if it was found free at most
    C{verifiedFor} seconds before.
    """

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)
        self.directory = Directory()
        self.clock = Clock()
        self.threads = Threads()

    def started(self, ahead: int = 4, first: int = 70000) -> DynamicUids:
        """A pool of ten uids, C{ahead} of them kept verified."""
        pool = self.directory.pool(first, first + 9, self.mktemp())
        pool.verifyAhead(self.clock, self.threads, ahead=ahead, verifiedFor=60.0)
        self.addCleanup(pool.stopVerifying)
        self.runThreads()
        return pool

    def runThreads(self) -> None:
        while self.threads.pending:
            self.threads.runNext()

    def test_nothingLookedUpAsAJobStarts(self) -> None:
        """
        Uids are verified a batch at a time in a thread, the first as the
        pool starts, the next once few are left: L{DynamicUids.acquire}
        looks nothing up, and hands out no uid not verified yet (429, not a
        guess).
        """
        pool = self.started()
        self.assertEqual(self.directory.asked, [70000, 70001, 70002, 70003])
        self.directory.asked.clear()
        self.assertEqual([pool.acquire() for _ in range(3)], [70000, 70001, 70002])
        self.assertEqual(self.directory.asked, [])
        self.assertEqual(len(self.threads.pending), 1, "one batch at a time")
        self.runThreads()
        self.assertEqual(self.directory.asked, [70004, 70005])
        self.assertEqual([pool.acquire() for _ in range(3)], [70003, 70004, 70005])
        self.assertRaises(PoolExhausted, pool.acquire)  # 70006: not verified yet
        self.runThreads()
        self.assertEqual(pool.acquire(), 70006)

    def test_agesInTheServersTime(self) -> None:
        """
        The ages of the lookups are counted in the time given (the server's
        monotonic clock), not the reactor's wall clock: a step of the wall
        clock makes no uid look verified too long ago (or in the future).
        """
        steady = [0.0]
        pool = self.directory.pool(70000, 70009, self.mktemp())
        pool.verifyAhead(
            self.clock, self.threads, ahead=4, verifiedFor=60.0, now=lambda: steady[0]
        )
        self.addCleanup(pool.stopVerifying)
        self.runThreads()
        self.clock.advance(3600.0)  # the wall clock steps an hour ahead
        self.runThreads()
        self.directory.asked.clear()
        self.assertEqual(pool.acquire(), 70000)
        self.assertEqual(self.directory.asked, [])

    def test_firstJobsLookUpTheirOwn(self) -> None:
        """
        Jobs that come while the first batch is being looked up look their
        uid up themselves; not once it is in.
        """
        self.directory.users[70004] = "erin"
        pool = self.directory.pool(70000, 70009, self.mktemp())
        pool.verifyAhead(self.clock, self.threads, ahead=4, verifiedFor=60.0)
        self.addCleanup(pool.stopVerifying)
        self.assertEqual(len(self.threads.pending), 1)
        self.assertEqual(self.directory.asked, [])
        self.assertEqual(pool.acquire(), 70005)  # (70000-70003: the batch's)
        self.assertEqual(self.directory.asked, [70004, 70005])
        self.runThreads()
        self.directory.asked.clear()
        self.assertEqual(pool.acquire(), 70000)
        self.assertEqual(self.directory.asked, [])

    def test_uidWithAnEntrySkipped(self) -> None:
        """A uid the directory has a user or group of is never handed out."""
        self.directory.users[70001] = "erin"
        self.directory.groups[70004] = "lab"
        seen = warnings(self)
        pool = self.started()
        handed = []
        for _ in range(8):
            self.runThreads()
            handed.append(pool.acquire())
        self.assertEqual(sorted(handed), [70000, 70002, 70003, *range(70005, 70010)])
        self.assertRaises(PoolExhausted, pool.acquire)
        for uid in handed:
            pool.release(uid)
        for _ in range(3):  # the range again, and again re-verified
            self.clock.advance(60)
            self.runThreads()
        self.assertEqual(skipped(seen), [70001, 70004], "each said once")

    def test_verifiedAtMostVerifiedForSecondsBefore(self) -> None:
        """
        A directory that stops answering (the thread pool's lookups wait):
        uids verified 60 s ago or more are not handed out (429); once it
        answers, one that became an account's meanwhile is not either.
        """
        pool = self.started()
        self.clock.advance(59)
        self.assertEqual(pool.acquire(), 70000)
        self.clock.advance(1)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.directory.users[70001] = "erin"
        self.runThreads()
        self.assertEqual(pool.acquire(), 70002)

    def test_clockSetLooksUpAgainAtOnce(self) -> None:
        """
        The clock set an hour on (or back) before the next look-up of the
        verified uids, none under way: none of them is handed out, they are
        looked up again at once (not at the next round), and the job's uid
        is looked up as it starts (a 429, before: fault round 27). In the
        server the ages are counted on a clock no step moves.
        """
        pool = self.started()
        for step in (3600, -7200):
            self.clock.rightNow += step
            self.directory.asked.clear()
            uid = pool.acquire()
            self.assertEqual(self.directory.asked[-1], uid)
            pool.release(uid)
            self.assertEqual(len(self.threads.pending), 1)
            self.runThreads()
        self.assertEqual(pool.acquire(), 70000)

    def test_uidGivenBackVerifiedAgain(self) -> None:
        """A pool of one uid: the uid given back half of C{verifiedFor}
        after its lookup began or later is looked up again at once, before
        it is handed out again; one that became a user's meanwhile is not
        handed out."""
        pool = self.directory.pool(70000, 70000, self.mktemp())
        pool.verifyAhead(self.clock, self.threads, verifiedFor=60.0)
        self.addCleanup(pool.stopVerifying)
        self.runThreads()
        self.assertEqual(pool.acquire(), 70000)
        self.assertRaises(PoolExhausted, pool.acquire)
        self.directory.asked.clear()
        self.clock.advance(30)
        pool.release(70000)
        self.runThreads()
        self.assertEqual(self.directory.asked, [70000])
        self.assertEqual(pool.acquire(), 70000)
        self.clock.advance(30)
        self.directory.users[70000] = "erin"
        pool.release(70000)
        self.runThreads()
        self.assertRaises(PoolExhausted, pool.acquire)

    def test_uidComingRoundSoonNotLookedUpAgain(self) -> None:
        """
        A busy server: a uid that comes round again in its turn less than
        half of C{verifiedFor} after its lookup began is handed out on that
        lookup, not looked up once per job; never more than C{verifiedFor}
        after it.
        """
        lookedUp: dict[int, float] = {}
        getpwuid = self.directory.getpwuid

        def noted(uid: int) -> pwd.struct_passwd:
            lookedUp[uid] = self.clock.seconds()
            return getpwuid(uid)

        self.directory.getpwuid = noted  # type: ignore[method-assign]
        pool = self.started(ahead=4)
        for _ in range(3):  # the whole range three times, within 29 s
            for _ in range(10):
                self.runThreads()
                pool.release(pool.acquire())
            self.clock.advance(9)
        self.runThreads()
        self.assertEqual(sorted(self.directory.asked), list(range(70000, 70010)))
        self.directory.asked.clear()
        for _ in range(100):  # 300 s more, the range every 3 s
            for _ in range(10):
                self.runThreads()
                uid = pool.acquire()
                self.assertLess(self.clock.seconds() - lookedUp[uid], 60.0)
                pool.release(uid)
            self.clock.advance(3)
        self.assertGreaterEqual(len(self.directory.asked), 10 * 300 // 60)
        self.assertLessEqual(len(self.directory.asked), 10 * (300 // 30 + 2))
        self.assertLessEqual(pool._lookedUp.keys(), set(range(70000, 70010)))

    def test_uidHandedOutWhileLookedUpAgainComesLast(self) -> None:
        """A uid handed out while it was being looked up again is not kept
        as verified: given back, it is the last to be reused."""
        pool = self.started()
        self.clock.advance(40)  # the verified uids are due again
        self.assertEqual(len(self.threads.pending), 1)
        self.assertEqual(pool.acquire(), 70000)
        self.runThreads()
        pool.release(70000)
        self.assertEqual([pool.acquire() for _ in range(3)], [70001, 70002, 70003])
        self.runThreads()
        self.assertEqual(pool.acquire(), 70004)

    def test_idleServerKeepsItsUidsVerified(self) -> None:
        """After an hour without jobs, a uid is handed out at once: the pool
        verified its uids again on its own, a few each time."""
        pool = self.started()
        for _ in range(180):
            self.clock.advance(20)
            self.runThreads()
        self.assertLessEqual(len(self.directory.asked), 4 + 4 * 180)
        self.assertEqual(pool.acquire(), 70000)

    def test_allHeldIs429(self) -> None:
        """Every uid held: L{PoolExhausted}, saying so."""
        pool = self.started(ahead=64)
        for _ in range(10):
            pool.acquire()
        with self.assertRaises(PoolExhausted) as caught:
            pool.acquire()
        self.assertIn("all 10 dynamic uids are in use", str(caught.exception))

    def test_failedLookupsSaidAndTriedAgain(self) -> None:
        """A batch whose lookups fail is said, and tried again later."""
        pool = self.started(ahead=2)
        seen = warnings(self)
        self.directory.broken = OSError("directory unreachable")
        pool.acquire()
        pool.acquire()
        self.runThreads()
        self.assertIn("directory unreachable", seen[-1]["why"])
        self.assertRaises(PoolExhausted, pool.acquire)
        self.directory.broken = None
        self.runThreads()
        # (70002, whose lookup failed, comes again in its turn.)
        self.assertEqual(pool.acquire(), 70003)

    def test_stopVerifying(self) -> None:
        """Once stopped, the pool schedules nothing."""
        pool = self.started()
        self.assertTrue(self.clock.getDelayedCalls())
        pool.stopVerifying()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_executorStartsAndStopsIt(self) -> None:
        """
        The local executor given the server's thread pool has its pool's
        uids verified there, and stops that when it shuts down.
        """
        pool = self.directory.pool(70000, 70099, self.mktemp())
        reactor = FakeProcessReactor()
        executor = LocalExecutor(
            reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            policy=JobPolicy(identities=Identities(pool=pool)),
            runInThread=self.threads,
        )
        # Nothing before the first job (a server made, never started).
        self.assertEqual((reactor.getDelayedCalls(), self.threads.pending), ([], []))
        executor.identityFor("alice", None)
        self.runThreads()
        self.directory.asked.clear()
        for _ in range(40):
            executor.identityFor("alice", None)
        self.assertEqual(self.directory.asked, [])
        self.assertTrue(self.threads.pending)
        self.assertTrue(reactor.getDelayedCalls())
        self.successResultOf(executor.shutdown([]))
        self.assertEqual(reactor.getDelayedCalls(), [])


class AccountTests(SynchronousTestCase):
    def test_accountFieldParsed(self) -> None:
        """A fourth field maps the user to that account's uid, gid and home."""
        nobody = pwd.getpwnam("nobody")
        if os.getuid() not in (0, nobody.pw_uid):
            raise SkipTest("mapping needs root")
        lines = DEVELOPMENT_USERS.splitlines()
        lines = [
            line + ":nobody" if line.startswith("alice:") else line for line in lines
        ]
        users = UserDatabase.fromText("\n".join(lines))
        entry = users.lookup("alice")
        assert entry is not None and entry.user.account is not None
        account = entry.user.account
        self.assertEqual((account.uid, account.gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(account.label, "nobody")
        self.assertEqual(users.accounts(), {"alice": "nobody"})
        bob = users.lookup("bob")
        assert bob is not None
        self.assertIsNone(bob.user.account)
        self.assertFalse(account.ownPidNamespace)

    def test_accountOfSeveralUsersMarked(self) -> None:
        """An account (by uid) that several lines map users to is marked:
        its jobs get a PID namespace each; an account of one user is not."""
        if os.getuid() != 0:
            raise SkipTest("mapping to two accounts needs root")
        lines = DEVELOPMENT_USERS.splitlines()
        byName = {line.split(":", 1)[0]: line for line in lines}
        users = UserDatabase.fromText(
            f"{byName['alice']}:nobody\n"
            f"{byName['bob']}:nobody\n"
            f"{byName['ada']}:daemon\n"
        )
        marks = {}
        for name in ("alice", "bob", "ada"):
            entry = users.lookup(name)
            assert entry is not None and entry.user.account is not None
            marks[name] = entry.user.account.ownPidNamespace
        self.assertEqual(marks, {"alice": True, "bob": True, "ada": False})

    def test_missingOrRootAccountRefused(self) -> None:
        """An account that does not exist, or root, is refused with its line."""
        base = DEVELOPMENT_USERS.splitlines()[1]
        for account, fragment in (
            ("no-such-account-jw", "no such Unix account"),
            ("root", "is root"),
            ("", "empty Unix account"),
        ):
            with self.assertRaises(UsersFileError) as caught:
                UserDatabase.fromText(f"{base}:{account}\n", source="users")
            self.assertIn("users, line 1", str(caught.exception))
            self.assertIn(fragment, str(caught.exception))
        self.assertRaises(IdentityError, Identity.ofAccount, "root")


class SandboxArgvTests(SynchronousTestCase):
    """The wrappers a sandboxed job starts through, in order."""

    def setUp(self) -> None:
        self.identity = Identity.ofDynamicUid(70005)

    def test_gateInsideSandboxWithoutPidNamespace(self) -> None:
        """Without a PID namespace the gate is the sandbox shell itself."""
        sandbox = Sandbox(self.mktemp(), 1 << 20, folders=["/tmp"])
        argv = sandbox.argv(self.identity, ["id"], None, gated=True)
        self.assertEqual(argv[1], shutil.which("unshare") or "/usr/bin/unshare")
        self.assertIn("read -r _ <&3", argv[argv.index("--") + 3])
        self.assertIn("--reuid=70005", argv)
        self.assertIn("--clear-groups", argv)
        self.assertIn("--no-new-privs", argv)  # a dynamic uid
        self.assertEqual(argv[-1], "id")
        fstab = open(argv[argv.index("--") + 4]).read()
        self.assertIn("hidepid=invisible", fstab)
        self.assertIn(f"{WORKDIR} tmpfs", fstab)
        self.assertIn("uid=70005,gid=70005", fstab)

    def test_gateFirstWithPidNamespace(self) -> None:
        """unshare --fork forks: the gate must run before it, and cwd is
        entered as the job."""
        sandbox = Sandbox(
            self.mktemp(), 1 << 20, isolate=frozenset({"pid"}), folders=["/tmp"]
        )
        argv = sandbox.argv(self.identity, ["pwd"], "/srv/data", gated=True)
        self.assertIn("read -r _ <&3", argv[2])
        self.assertIn("--pid", argv)
        setpriv = next(i for i, a in enumerate(argv) if a.startswith("--reuid"))
        # After setpriv: sh -c 'cd "$0" ...' /srv/data pwd, as the job.
        after = argv[argv.index("--", setpriv) + 1 :]
        self.assertEqual(after[3:], ["/srv/data", "pwd"])
        self.assertIn('cd "$0"', after[2])


class RunnableAsIdentityTests(SynchronousTestCase):
    """The start check is made as the job's identity, and tells nothing more."""

    def setUp(self) -> None:
        self.identity = Identity.ofDynamicUid(70006)
        base = sharedPath(self)
        os.makedirs(base)
        os.chmod(base, 0o755)  # noqa: S103
        self.private = os.path.join(base, "private")
        os.makedirs(os.path.join(self.private, "inner"))
        os.chmod(self.private, 0o700)
        os.chmod(os.path.join(self.private, "inner"), 0o755)  # noqa: S103
        self.secretTool = os.path.join(self.private, "tool")
        with open(self.secretTool, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.secretTool, 0o755)  # noqa: S103
        self.public = os.path.join(base, "public")
        os.makedirs(self.public)
        os.chmod(self.public, 0o755)  # noqa: S103

    def refusal(self, command: str, cwd: str | None = None) -> str:
        with self.assertRaises(SpawnRefused) as caught:
            checkRunnable(
                command, {"PATH": "/usr/bin:/bin"}, cwd, self.identity, WORKDIR
            )
        return str(caught.exception)

    def test_longPathChecksBounded(self) -> None:
        """
        A C{PATH} of thousands of entries made each start check walk each
        one on the server's thread: 100 ms a request with C{/etc} 6,000
        times, and one Developer held every other user's requests for
        seconds (attacker round 6). Each folder is walked once, and at most
        L{MAX_PATH_CHECKS} of them; past that the job's own C{execvp}
        decides, as it does anyway.
        """
        walked: list[str] = []
        runnable = sandbox._runnable

        def counted(path: str, *args: Any) -> bool:
            walked.append(path)
            return runnable(path, *args)

        self.patch(sandbox, "_runnable", counted)
        same = ":".join(["/etc", "/etc/", "/./etc", "//etc"] * 1500)
        with self.assertRaises(SpawnRefused):
            checkRunnable("shadow", {"PATH": same}, None, self.identity, WORKDIR)
        self.assertEqual(walked, ["/etc/shadow"])  # (the first spelling)
        del walked[:]
        distinct = ":".join(f"/nonexistent{n}" for n in range(6000))
        checkRunnable("true", {"PATH": distinct}, None, self.identity, WORKDIR)
        self.assertEqual(len(walked), MAX_PATH_CHECKS)
        del walked[:]
        found = ":".join([*(f"/nonexistent{n}" for n in range(10)), "/usr/bin"])
        checkRunnable("true", {"PATH": found}, None, self.identity, WORKDIR)
        self.assertEqual(walked[-1], "/usr/bin/true")

    def test_thePrivateFoldersAreWorkingDirectories(self) -> None:
        """
        The job's private folders, and its working folder in one, exist in
        every sandboxed job: a working directory there is taken (C{--cwd
        /tmp}, even C{/tmp/job}, the default, were "not found or not
        permitted": new user round 28). What is inside them is the job's
        own, empty at its start: refused.
        """
        hidden = ("/tmp", "/var/tmp", "/dev/shm")
        for cwd in (
            "/tmp",
            "/tmp/",
            "//tmp",
            WORKDIR,
            "/var/tmp",
            "/dev/shm",
            "/tmp/job/..",
        ):
            checkRunnable(
                "true", {"PATH": "/usr/bin:/bin"}, cwd, self.identity, WORKDIR, hidden
            )
        with self.assertRaises(SpawnRefused):
            checkRunnable(
                "true",
                {"PATH": "/usr/bin:/bin"},
                "/tmp/elsewhere",
                self.identity,
                WORKDIR,
                hidden,
            )

    def test_existingAndMissingLookAlike(self) -> None:
        """Inside a folder the job cannot enter, present and absent read the same."""
        if os.getuid() != 0:
            raise SkipTest("as another user the server itself could not look")
        there = self.refusal(self.secretTool)
        missing = self.refusal(os.path.join(self.private, "nothing"))
        self.assertEqual(
            there.replace(self.secretTool, "X"),
            missing.replace(os.path.join(self.private, "nothing"), "X"),
        )
        self.assertIn("not found or not permitted", there)
        inner = os.path.join(self.private, "inner")
        self.assertEqual(
            self.refusal("true", cwd=inner).replace(inner, "X"),
            self.refusal("true", cwd=inner + "-missing").replace(
                inner + "-missing", "X"
            ),
        )

    def test_dotDotTellsNothing(self) -> None:
        """
        C{..} after a name in a folder the job cannot enter: the kernel
        looks the name up there (and fails, as the job), so the check must
        too. It tested the raw path's existence as root, then normalised
        C{NAME/..} away: a command, C{PATH} entry or C{cwd} through an
        existing folder was accepted (and the job failed, 126), through a
        missing one refused, which told the folders of a 0700 home apart
        (attacker round 10).
        """
        if os.getuid() != 0:
            raise SkipTest("as another user the server itself could not look")
        base = os.path.dirname(self.private)
        up = os.path.relpath("/", base)
        answers = []
        for name in ("inner", "missing"):
            through = os.path.join(self.private, name, "..", "..", up)
            command = os.path.join(through, "bin", "sh")
            answers.append(
                [
                    self.refusal(command).replace(command, "X"),
                    self.refusal("true", cwd=through).replace(through, "X"),
                ]
            )
            with self.assertRaises(SpawnRefused) as caught:
                checkRunnable(
                    "sh",
                    {"PATH": os.path.join(through, "bin")},
                    None,
                    self.identity,
                    WORKDIR,
                )
            answers[-1].append(str(caught.exception))
        self.assertEqual(answers[0], answers[1])
        self.assertIn("not found or not permitted", answers[0][0])
        # Where the job can search, ".." is taken as the kernel takes it.
        fine = os.path.join(self.public, "..", "public", "..", up, "bin", "sh")
        checkRunnable(fine, {}, None, self.identity, WORKDIR)
        checkRunnable("sh", {"PATH": os.path.dirname(fine)}, self.public, self.identity)

    def test_symlinksFollowedAsTheJob(self) -> None:
        """A link is followed as the kernel follows it: to what the job can
        reach, it passes; into a folder it cannot enter, or round in a
        loop, it is refused like a missing path."""
        if os.getuid() != 0:
            raise SkipTest("as another user the server itself could not look")
        toSh = os.path.join(self.public, "sh")
        os.symlink("/bin/sh", toSh)
        checkRunnable(toSh, {}, None, self.identity, WORKDIR)
        relative = os.path.join(self.public, "up")
        os.symlink(os.path.relpath("/", self.public), relative)
        checkRunnable(
            os.path.join(relative, "bin", "sh"), {}, None, self.identity, WORKDIR
        )
        hidden = os.path.join(self.public, "secret")
        os.symlink(self.secretTool, hidden)
        loop = os.path.join(self.public, "loop")
        os.symlink(loop, loop)
        for command in (hidden, loop, os.path.join(loop, "sh")):
            self.assertIn("not found or not permitted", self.refusal(command))

    def test_reachableAccepted(self) -> None:
        """What the identity can reach passes; the job's /tmp is its own."""
        checkRunnable("sh", {"PATH": "/usr/bin:/bin"}, self.public, self.identity)
        checkRunnable("/bin/sh", {}, None, self.identity, WORKDIR)
        self.assertIn(
            "not found or not permitted",
            self.refusal("./relative-in-a-fresh-workdir"),
        )
        # (/tmp itself is the job's too: test_thePrivateFoldersAre...)
        with self.assertRaises(SpawnRefused):
            checkRunnable(
                "/bin/sh", {}, "/tmp/inside", self.identity, WORKDIR, hidden=["/tmp"]
            )


class RunnableMemoryTests(SynchronousTestCase):
    """
    The start check's answers are remembered for a second: a runnable
    command is not walked again, a refusal always is, and one job's uid
    never answers for another's when it owns anything on the way.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checks = RunnableChecks(self.clock, ttl=1.0)
        self.folder = sharedPath(self)
        os.makedirs(self.folder)
        os.chmod(self.folder, 0o755)  # noqa: S103
        self.tool = os.path.join(self.folder, "tool")
        self.env = {"PATH": f"{self.folder}:/usr/bin:/bin"}

    def makeTool(self) -> None:
        with open(self.tool, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.tool, 0o755)  # noqa: S103

    def check(self, identity: Identity, cwd: str | None = None) -> None:
        self.checks.check("tool", self.env, cwd, identity, WORKDIR)

    def account(self, uid: int) -> Identity:
        return Identity(uid, uid, (), f"u{uid}", None, "/bin/sh", f"u{uid}")

    def test_runnableRemembered(self) -> None:
        """Found runnable: taken as runnable for a second, then checked again."""
        alice = self.account(70101)
        self.makeTool()
        self.check(alice)
        os.unlink(self.tool)
        self.check(alice)
        self.clock.advance(0.5)
        self.check(alice)
        self.clock.advance(0.5)
        self.assertRaises(SpawnRefused, self.check, alice)

    def test_refusalNotRemembered(self) -> None:
        """A refusal is not remembered: the command made since passes."""
        alice = self.account(70101)
        self.assertRaises(SpawnRefused, self.check, alice)
        self.makeTool()
        self.check(alice)

    def test_anotherAccountOrPlaceChecksAfresh(self) -> None:
        """Another account, working directory or PATH is not answered for."""
        self.makeTool()
        self.check(self.account(70101))
        os.unlink(self.tool)
        self.assertRaises(SpawnRefused, self.check, self.account(70102))
        self.assertRaises(SpawnRefused, self.check, self.account(70101), "/")
        self.env = {"PATH": f"/usr/bin:{self.folder}"}
        self.assertRaises(SpawnRefused, self.check, self.account(70101))

    def test_expiredAnswersDropped(self) -> None:
        """What is remembered is what was checked in the last second."""
        alice = self.account(70101)
        self.makeTool()
        for i in range(10):
            env = {"PATH": f"{self.folder}:/first{i}"}
            self.checks.check("tool", env, None, alice, WORKDIR)
        self.assertEqual(len(self.checks._known), 10)
        self.clock.advance(2)
        for i in range(5):
            env = {"PATH": f"{self.folder}:/later{i}"}
            self.checks.check("tool", env, None, alice, WORKDIR)
        self.assertEqual(len(self.checks._known), 5)

    def test_longOnesNotRemembered(self) -> None:
        """A check with a very long PATH or folder is made every time."""
        alice = self.account(70101)
        self.makeTool()
        self.env["PATH"] += ":/nowhere" * 500
        self.check(alice)
        os.unlink(self.tool)
        self.assertRaises(SpawnRefused, self.check, alice)

    def test_clockBackChecksAfresh(self) -> None:
        """An answer dated later than a second from now (the clock went
        back) is not taken."""
        alice = self.account(70101)
        self.makeTool()
        self.check(alice)
        os.unlink(self.tool)
        self.clock.rightNow -= 60
        self.assertRaises(SpawnRefused, self.check, alice)

    def test_dynamicUidsShareWhatNoneOwns(self) -> None:
        """One dynamic uid's answer serves the next, none owning anything there."""
        self.makeTool()
        self.check(Identity.ofDynamicUid(70006))
        os.unlink(self.tool)
        self.check(Identity.ofDynamicUid(70007))

    def test_ownedOnTheWayNotShared(self) -> None:
        """
        When a dynamic uid owns a folder on the way (as user or group), its
        answer is its own, and it is not given one checked by another.
        """
        if os.getuid() != 0:
            raise SkipTest("giving a folder to another uid needs root")
        first, second = Identity.ofDynamicUid(70006), Identity.ofDynamicUid(70007)
        self.makeTool()
        # The folder is the first uid's: its answer is not shared.
        os.chown(self.folder, first.uid, 0)
        self.check(first)
        os.unlink(self.tool)
        self.assertRaises(SpawnRefused, self.check, second)
        # The folder's group is the second uid's: the first's answer is
        # not given to it.
        self.makeTool()
        os.chown(self.folder, 0, second.gid)
        self.clock.advance(1.0)
        self.check(first)
        os.unlink(self.tool)
        self.check(first)
        self.assertRaises(SpawnRefused, self.check, second)


# -- the real kernel ----------------------------------------------------------


async def output(server: LiveServer, jobId: str) -> bytes:
    response = await server.request("GET", f"/jobs/{jobId}/logs", "ada")
    return bytes(await treq.content(response))


async def waitOutput(server: LiveServer, jobId: str, marker: bytes) -> bytes:
    for _ in range(500):
        data = await output(server, jobId)
        if marker in data:
            return data
        await sleep(0.02)
    raise AssertionError(f"job {jobId} never printed {marker!r}")


#: alice's job: a secret in its environment, a file in its working folder,
#: a pid to report, then it waits.
VICTIM = (
    "echo private-data > mine.txt; echo /tmp-data > /tmp/left; "
    'echo "$$ $(pwd)"; echo ready; exec sleep 300'
)


def attackScript(pid: int, cwd: str, paths: list[str]) -> str:
    """bob's job: try each attack on alice's job; print what worked."""
    lines = [
        f"P={pid}",
        'cat /proc/$P/environ 2>/dev/null | tr "\\0" "\\n" | grep -q SECRET= '
        "&& echo GOT:environ",
        "cat /proc/$P/cmdline 2>/dev/null | grep -q sleep && echo GOT:cmdline",
        "test -e /proc/$P && echo GOT:proc-entry",
        "ls /proc/$P/cwd/ 2>/dev/null | grep -q mine && echo GOT:cwd-via-proc",
        f"cat '{cwd}/mine.txt' 2>/dev/null | grep -q private && echo GOT:workdir",
        # Checked by uid alone (no signal, no Landlock): RLIMIT_CPU at 1 s
        # is a kill (attacker round 8).
        # Before the signals, which may end the target.
        "prlimit --pid $P --cpu=1:1 2>/dev/null && echo GOT:prlimit",
        "renice -n 19 -p $P >/dev/null 2>&1 && echo GOT:renice",
        "taskset -p 1 $P >/dev/null 2>&1 && echo GOT:affinity",
        "kill -0 $P 2>/dev/null && echo GOT:signal-0",
        "kill -TERM $P 2>/dev/null && echo GOT:TERM",
        "kill -KILL $P 2>/dev/null && echo GOT:KILL",
        "cat /tmp/left 2>/dev/null && echo GOT:tmp",
    ]
    for path in paths:
        lines.append(f"head -c1 '{path}' >/dev/null 2>&1 && echo 'GOT:{path}'")
        lines.append(
            f"ls '{path}' >/dev/null 2>&1 && test -d '{path}' && echo 'GOT:ls {path}'"
        )
    lines.append("echo done")
    return "\n".join(lines)


def descendants(pid: int) -> list[int]:
    """Every live descendant of C{pid}, from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


class IdentityModeTests(TestCase):
    """
    For each identity mode: bob's job attacks alice's, which holds a secret.
    Nothing may work: environment, command line, signals, her files, the
    server's files; and nothing of her job may outlive it.
    """

    timeout = 120

    def setUp(self) -> None:
        requireRoot()
        self.key = sharedPath(self)
        shutil.copy(KEY, self.key)
        os.chmod(self.key, 0o600)

    async def attack(
        self, *options: str, safe: bool = True
    ) -> tuple[LiveServer, dict[str, Any], dict[str, Any]]:
        server = LiveServer(self, f"--cert={CERT}", f"--key={self.key}", *options)
        victim = await server.createJob(
            "sh", "-c", VICTIM, env={"SECRET": "alice-db-password"}, user="alice"
        )
        cwd = (
            (await waitOutput(server, victim["id"], b"ready"))
            .split(b"\n")[0]
            .split(b" ", 1)[1]
        )
        # Her job's processes as the host sees them (in a PID namespace the
        # pid it prints, pidText, is its namespace's, not a host pid).
        targets = {victim["pid"], *descendants(victim["pid"])}
        usersFile = next(
            (o.split("=", 1)[1] for o in options if o.startswith("--users=")), None
        )
        state = server.stateDir
        paths = [
            f"{state}/jobs/{victim['id']}/stdout",
            f"{state}/jobs",
            state,
            f"{state}/token.key",
            f"{state}/audit.log",
            f"{state}/jobs.sqlite3",
            self.key,
        ] + ([usersFile] if usersFile else [])
        results = []
        for target in sorted(targets):
            attacker = await server.createJob(
                "sh", "-c", attackScript(target, cwd.decode(), paths), user="bob"
            )
            ended = await server.waitEnded(attacker["id"])
            self.assertEqual(ended["status"], "COMPLETED", ended)
            results.append(await output(server, attacker["id"]))
        self.got = {
            line for result in results for line in result.splitlines() if b"GOT" in line
        }
        for result in results:
            self.assertTrue(result.endswith(b"done\n"), result)
            if not safe:
                continue
            self.assertEqual(
                [line for line in result.splitlines() if line.startswith(b"GOT:")],
                [],
                f"bob's job could do this to alice's: {result!r}",
            )
        _, record = await server.json("GET", f"/jobs/{victim['id']}", "ada")
        if safe:
            self.assertEqual(record["status"], "RUNNING", "bob's job killed alice's")
        return server, victim, record

    async def assertNothingLeft(
        self, server: LiveServer, victim: dict[str, Any], uid: int
    ) -> None:
        """
        Once alice's job is stopped, no process of it is left as her
        identity. (Its processes only: under trial -j, another test's job
        may run as the same account meanwhile.)
        """
        hers = {victim["pid"], *descendants(victim["pid"])}
        code, _ = await server.json("POST", f"/jobs/{victim['id']}/stop", "alice")
        self.assertEqual(code, 200)
        for _ in range(200):
            if not hers & set(processesOf(uid)):
                return
            await sleep(0.02)
        left = hers & set(processesOf(uid))
        self.fail(f"processes of uid {uid} outlived the job: {sorted(left)}")

    async def test_dynamicIdentities(self) -> None:
        """Default as root: a uid per job, private /proc and /tmp."""
        server, victim, record = await self.attack()
        self.assertTrue(record["run_as"].startswith("dynamic:"), record)
        uid = int(record["run_as"].split(":")[1])
        self.assertTrue(70000 <= uid <= 71999)
        await self.assertNothingLeft(server, victim, uid)

    async def test_mappedAccounts(self) -> None:
        """Users mapped to accounts: each job runs as its owner's account."""
        ensureAccounts()
        server, victim, record = await self.attack(f"--users={mappedUsersFile(self)}")
        self.assertEqual(record["run_as"], "jwalice")
        job = await server.createJob("sh", "-c", "id -un; echo $HOME; pwd", user="bob")
        await server.waitEnded(job["id"])
        home = pwd.getpwnam("jwbob").pw_dir
        self.assertEqual(
            (await output(server, job["id"])).decode().split(), ["jwbob", home, home]
        )
        await self.assertNothingLeft(server, victim, pwd.getpwnam("jwalice").pw_uid)

    async def test_sharedAccountWithPidNamespace(self) -> None:
        """--run-as with --isolate pid: one uid, but jobs cannot see each other."""
        _, _, record = await self.attack("--run-as=nobody", "--isolate=pid")
        self.assertEqual(record["run_as"], "nobody")

    def viaLauncher(self) -> bool:
        return "--launcher=off" not in getattr(self, "serverOptions", ())

    async def test_sharedAccountWithoutIsolatePid(self) -> None:
        """
        --run-as without --isolate pid. Through the launcher each job of
        the shared account gets a PID namespace of its own: nothing works
        (bob's job set alice's RLIMIT_CPU to 1 s, a kill, her nice value
        and CPU affinity before, which the kernel checks by uid alone:
        attacker round 8). Through the exec chain (no such namespace: its
        job would be PID 1, which a stop's SIGTERM does not reach), what
        the README's threat model says, seen by the same probe (so the
        probe can see an attack work): jobs sharing a uid signal each
        other, read each other's environment, and change each other's
        limits, priority and CPU affinity.
        """
        if self.viaLauncher():
            _, _, record = await self.attack("--run-as=nobody")
            self.assertEqual(record["run_as"], "nobody")
            return
        await self.attack("--run-as=nobody", safe=False)
        for line in (
            b"GOT:signal-0",
            b"GOT:environ",
            b"GOT:prlimit",
            b"GOT:renice",
            b"GOT:affinity",
        ):
            self.assertIn(line, self.got)

    async def test_accountOfSeveralUsers(self) -> None:
        """
        alice and bob mapped to one account, without --isolate pid: as
        the shared --run-as account, each job gets its own PID namespace
        through the launcher; they share the account's files (its home,
        their working folder), as the threat model says. The exec chain's
        jobs also change each other's limits by uid.
        """
        ensureAccounts()
        users = f"--users={mappedUsersFile(self, ACCOUNTS['alice'])}"
        _, _, record = await self.attack(users, safe=False)
        self.assertEqual(record["run_as"], ACCOUNTS["alice"])
        if self.viaLauncher():
            self.assertEqual(self.got, {b"GOT:workdir"})
            self.assertEqual(record["status"], "RUNNING")
        else:
            self.assertIn(b"GOT:prlimit", self.got)


class SharedAccountStopTests(TestCase):
    """
    A job of the shared --run-as account has a PID namespace of its own
    (through the launcher), under the launcher's init: a stop's SIGTERM
    reaches the command, with cgroups (each process signalled) or without
    (the process group), and nothing of the job is left after it.
    """

    timeout = 60
    serverOptions: tuple[str, ...] = ()

    def setUp(self) -> None:
        requireRoot()

    async def test_stopEndsItByTerm(self) -> None:
        """Stopped by SIGTERM, not by the SIGKILL after a long grace (it
        was, when the command was its namespace's PID 1)."""
        server = LiveServer(self, "--run-as=nobody", grace=40.0)
        job = await server.createJob("sh", "-c", "sleep 300 & echo up; sleep 300")
        await waitOutput(server, job["id"], b"up")
        tree = {job["pid"], *descendants(job["pid"])}
        self.assertGreaterEqual(len(tree), 4)  # the launcher, init, sh, sleeps
        code, _ = await server.json("POST", f"/jobs/{job['id']}/stop", "alice")
        self.assertEqual(code, 200)
        ended = await server.waitEnded(job["id"], timeout=30.0)
        self.assertEqual((ended["status"], ended["signal"]), ("STOPPED", "SIGTERM"))
        uid = pwd.getpwnam("nobody").pw_uid
        for _ in range(200):
            if not tree & set(processesOf(uid)):
                break
            await sleep(0.02)
        self.assertEqual(tree & set(processesOf(uid)), set())


class SharedAccountStopNoCgroupsTests(SharedAccountStopTests):
    serverOptions = ("--cgroups=off",)


class IdentityModeChainTests(IdentityModeTests):
    """The same attacks on jobs started through the exec chain
    (--launcher=off; the default is the compiled launcher)."""

    serverOptions = ("--launcher=off",)


#: A job's script (C{python3 -c}): the kernel's key calls, each answer an
#: id or an errno name. argv: what to do, then its arguments.
KEYS = """
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ADD_KEY, KEYCTL, SEARCH, SESSION, USER = 248, 250, 10, -3, -4
def call(*args):
    got = libc.syscall(*args)
    return str(got) if got >= 0 else errno.errorcode[ctypes.get_errno()]
what = sys.argv[1]
if what == "add":
    ring = {"session": SESSION, "user": USER}[sys.argv[2]]
    print("add", call(ADD_KEY, b"user", sys.argv[3].encode(), b"s3cr3t", 6, ring))
else:
    ring = {"session": SESSION, "user": USER}[sys.argv[2]]
    print("search", call(KEYCTL, SEARCH, ring, b"user", sys.argv[3].encode(), 0))
"""


def keyCalls(testCase: TestCase) -> None:
    """Skip unless the kernel's key calls can be made here as L{KEYS} does."""
    requireRoot()
    if os.uname().machine != "x86_64":
        raise SkipTest("the keyring script uses x86_64's system call numbers")
    if not os.path.exists("/usr/bin/python3"):
        raise SkipTest("the jobs' keyring script needs /usr/bin/python3")


def makeAccount(testCase: TestCase, name: str, uid: int) -> None:
    """A Unix account C{name} with uid and gid C{uid}, removed at cleanup."""
    if shutil.which("useradd") is None:
        raise SkipTest("no useradd to create the test accounts")
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)
    subprocess.run(
        ["useradd", "--no-create-home", "--uid", str(uid), "--user-group", name],
        check=True,
        capture_output=True,
    )
    testCase.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
    testCase.addCleanup(subprocess.run, ["groupdel", name], capture_output=True)


def aliceMappedTo(testCase: TestCase, account: str) -> str:
    """The development users, alice mapped to C{account}: the file's path."""
    path = os.path.abspath(testCase.mktemp())
    with open(path, "w") as f:
        for line in DEVELOPMENT_USERS.splitlines():
            mapped = line.startswith("alice:")
            f.write(line + (f":{account}" if mapped else "") + "\n")
    os.chmod(path, 0o600)
    return path


class ReusedAccountTests(TestCase):
    """
    A mapped account is looked up again for every job: its name is what the
    users file maps to. It was looked up once, when the users file was
    read: after C{userdel} of carol's account and C{useradd} of dave's with
    the same uid, carol's jobs ran as dave and read his files, while the
    record said carol's account (fault round 6).
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()

    async def test_accountGoneThenUidReused(self) -> None:
        uid = 59871
        makeAccount(self, "jwreused1", uid)
        path = aliceMappedTo(self, "jwreused1")
        server = LiveServer(self, f"--users={path}")
        job = await server.createJob("id", "-un", user="alice")
        ended = await server.waitEnded(job["id"])
        self.assertEqual((ended["status"], ended["run_as"]), ("COMPLETED", "jwreused1"))
        self.assertEqual((await output(server, job["id"])).strip(), b"jwreused1")

        subprocess.run(
            ["userdel", "--force", "jwreused1"], check=True, capture_output=True
        )
        subprocess.run(["groupdel", "jwreused1"], capture_output=True)
        makeAccount(self, "jwreused2", uid)
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "id", "args": ["-un"]}
        )
        self.assertEqual(code, 403, body)
        self.assertIn("'jwreused1'", body["error"])
        code, jobs = await server.json("GET", "/jobs", "ada")
        self.assertEqual(len(jobs["jobs"]), 1, jobs)

    async def test_queuedJobsAccountGone(self) -> None:
        """A job queued while its account existed fails when its turn comes,
        if the account is gone by then: it never runs as the uid's new
        holder."""
        uid = 59872
        makeAccount(self, "jwreused3", uid)
        path = aliceMappedTo(self, "jwreused3")
        server = LiveServer(self, f"--users={path}", "--max-running-per-user=1")
        first = await server.createJob("sleep", "1", user="alice")
        queued = await server.createJob("id", "-un", user="alice")
        self.assertEqual(queued["status"], "PENDING", queued)
        subprocess.run(
            ["userdel", "--force", "jwreused3"], check=True, capture_output=True
        )
        subprocess.run(["groupdel", "jwreused3"], capture_output=True)
        makeAccount(self, "jwreused4", uid)
        await server.waitEnded(first["id"])
        ended = await server.waitEnded(queued["id"])
        self.assertEqual(ended["status"], "FAILED", ended)
        self.assertIn("'jwreused3'", ended["error"])
        self.assertEqual(await output(server, queued["id"]), b"")


#: A job's script: io_setup(2) for one event, its answer an errno name or "ok".
AIO = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
context = ctypes.c_ulong(0)
got = libc.syscall(206, 1, ctypes.byref(context))
print("ok" if got == 0 else errno.errorcode[ctypes.get_errno()])
"""


class AsyncIOTests(TestCase):
    """
    The kernel's async I/O contexts are one budget for the whole machine
    (C{fs.aio-max-nr}, 65,536 events): one dynamic uid's job took all of it
    with C{io_setup} in a loop, and every libaio user on the host (a
    database, QEMU) and every other job got C{EAGAIN} while it lived
    (attacker round 5). A dynamic uid's job gets C{ENOSYS} from
    C{io_setup}, as from the key calls (programs fall back to threads).
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def test_dynamicUidHasNoAsyncIO(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("/usr/bin/python3", "-c", AIO, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual((await output(server, job["id"])).strip(), b"ENOSYS")


#: A job's script: a user namespace asked for by clone(2), unshare(2) and
#: clone3(2) (each answer an errno name or "ok"), then a thread and a child
#: process, which must still work.
USERNS = """
import ctypes, errno, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NEWUSER, SIGCHLD = 0x10000000, 17
def answer(got):
    return "ok" if got >= 0 else errno.errorcode[ctypes.get_errno()]
got = libc.syscall(56, NEWUSER | SIGCHLD, 0, 0, 0, 0)
if got == 0:
    os._exit(0)
if got > 0:
    os.waitpid(got, 0)
print("clone", answer(got))
print("unshare", answer(libc.syscall(272, NEWUSER)))
print("clone3", answer(libc.syscall(435, 0, 0)))
seen = []
thread = threading.Thread(target=seen.append, args=("thread",))
thread.start()
thread.join()
seen.append(subprocess.run(["true"]).returncode)
print(*seen)
"""


class UserNamespaceTests(TestCase):
    """
    A job that may make a user namespace is root in it: it mounted a devpts
    of its own there, past its job's cap of L{MAX_PTYS}, and took what the
    host's C{kernel.pty.reserve} leaves (attacker round 5); every such
    namespace is also kernel code that only root reached before. A dynamic
    uid's job gets C{EPERM} for a new user namespace (C{unshare},
    C{clone}), as where the kernel refuses them to unprivileged users, and
    C{ENOSYS} for C{clone3}, whose flags a filter cannot read (the C
    library then uses C{clone}), as Docker's default profile does; its
    threads and children start as before.
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def test_dynamicUidHasNoUserNamespace(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("/usr/bin/python3", "-c", USERNS, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(
            (await output(server, job["id"])).split(b"\n"),
            [b"clone EPERM", b"unshare EPERM", b"clone3 ENOSYS", b"thread 0", b""],
        )


#: A job's script: pseudo-terminals opened until the kernel refuses one.
PTYS = """
import os
held = []
try:
    while len(held) < 5000:
        held.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
except OSError as e:
    print(len(held), sorted(os.listdir("/dev/pts"))[:2], flush=True)
"""


class PseudoTerminalTests(TestCase):
    """
    Jobs shared the host's C{/dev/pts}: one job opened C{/dev/ptmx} until
    the kernel ran out (4,095 of C{kernel.pty.max}), and other jobs'
    C{script}, and root's own ssh logins, got "out of pty devices" while it
    lived (attacker round 5). A sandboxed job gets a devpts instance of its
    own, of L{MAX_PTYS}: the host keeps C{kernel.pty.reserve} for itself.
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        if not os.path.exists("/usr/bin/python3"):
            raise SkipTest("the pty script needs /usr/bin/python3")

    async def assertOwnPtys(self, *options: str) -> None:
        server = LiveServer(self, *options)
        job = await server.createJob("/usr/bin/python3", "-c", PTYS, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        count, first = (await output(server, job["id"])).split(b" ", 1)
        self.assertEqual(int(count), MAX_PTYS)
        self.assertEqual(first.strip(), b"['0', '1']")  # its own, from 0

    async def test_launcher(self) -> None:
        await self.assertOwnPtys()

    async def test_execChain(self) -> None:
        await self.assertOwnPtys("--launcher=off")


class KeyringTests(TestCase):
    """
    The kernel's keyrings are not namespaced: a uid's user keyrings outlive
    its last process, and a session keyring is inherited. A dynamic uid's
    jobs (one user's, then another's, in turn) therefore get no key calls at
    all; every sandboxed job gets a session keyring of its own, never the
    server's.
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def keys(self, server: LiveServer, user: str, *argv: str) -> bytes:
        job = await server.createJob("/usr/bin/python3", "-c", KEYS, *argv, user=user)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        return (await output(server, job["id"])).strip()

    async def test_dynamicUidHasNoKeyrings(self) -> None:
        """
        bob's job (the pool's one uid) cannot put a key in its uid's user
        keyring, where the next job of that uid, alice's, would find it:
        every key call is ENOSYS, as on a kernel without keys.
        """
        uid = 72700
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        self.assertEqual(
            await self.keys(server, "bob", "add", "user", "jw-left"), b"add ENOSYS"
        )
        self.assertEqual(
            await self.keys(server, "alice", "search", "user", "jw-left"),
            b"search ENOSYS",
        )

    async def test_noProcessInfoThroughAPidfd(self) -> None:
        """
        A dynamic uid's job, whose C{/proc} hides every process of another
        uid, could still open a pidfd of any pid (no permission is needed)
        and ask the kernel for its uid, gid and parent (C{PIDFD_GET_INFO},
        kernels 6.13 and later): every process on the host, other users'
        jobs, the spawner and the server among them, with its owner. The
        ioctl is refused with C{ENOTTY}, as older kernels answer it.
        """
        script = (
            "import errno, fcntl, os, struct, sys\n"
            "fd = os.pidfd_open(int(sys.argv[1]))\n"
            "info = bytearray(struct.pack('Q', 7) + bytes(56))\n"
            "try:\n"
            "    fcntl.ioctl(fd, 0xC040FF0B, info, True)\n"
            "    print('answered: ruid', struct.unpack_from('I', info, 28)[0])\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno])\n"
        )
        uid = 72710
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        job = await server.createJob(
            "/usr/bin/python3", "-c", script, str(os.getpid()), user="bob"
        )
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual((await output(server, job["id"])).strip(), b"ENOTTY")

    async def test_noJobHasTheServersSessionKeyring(self) -> None:
        """
        A key in the server's session keyring (a systemd service has one of
        its own) is not found from a job, whose session keyring is its own;
        a job of an account may still use keys, in a session keyring that
        the next job does not share.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        # This process is the server: a session keyring holding a secret.
        self.assertGreater(libc.syscall(250, 1, b"jw-test-server"), 0)
        self.assertGreater(
            libc.syscall(248, b"user", b"jw-server-secret", b"x", 1, -3), 0
        )
        ensureAccounts()
        server = LiveServer(self, "--run-as=jwbob")
        self.assertEqual(
            await self.keys(server, "bob", "search", "session", "jw-server-secret"),
            b"search ENOKEY",
        )
        added = await self.keys(server, "bob", "add", "session", "jw-job-key")
        self.assertTrue(added.startswith(b"add ") and added[4:].isdigit(), added)
        self.assertEqual(
            await self.keys(server, "alice", "search", "session", "jw-job-key"),
            b"search ENOKEY",
        )


def escapee(seconds: int) -> str:
    """A job's script: a leftover that leaves the job's session, ignores
    SIGTERM and sleeps C{seconds} (its mark); then "started"."""
    return (
        f"setsid sh -c 'trap \"\" TERM HUP; exec sleep {seconds}' "
        "</dev/null >/dev/null 2>&1 & echo started"
    )


def escapees(uid: int, seconds: int) -> list[int]:
    """The live processes of C{uid} that L{escapee}(C{seconds}) left."""
    mark = b"sleep\0" + str(seconds).encode()
    return [pid for pid in processesOf(uid) if readCmdline(pid).endswith(mark)]


class DynamicIdentityTests(TestCase):
    timeout = 60
    #: The uid of the tests with a pool of one, outside the range other test
    #: servers take; each variant, which may run at the same time (trial
    #: -j), has its own, and the tests use it plus 0, 50, 60, 70, 80 and
    #: 100: the
    #: variants' are 300 apart (10 apart, 72510 + 60 was 72520 + 50).
    soleUid = 72500
    #: Whether a job's leftovers outlive its end (until the grace's KILL):
    #: with a cgroup they do; without, the group signals miss one that
    #: left the session, and the uid's sweep kills it once the job ends.
    leftoversOutliveTheEnd = True

    def setUp(self) -> None:
        requireRoot()

    async def test_concurrentJobsNeverShareAUid(self) -> None:
        """Jobs alive at the same time have different uids; id agrees."""
        server = LiveServer(self)
        jobs = [
            await server.createJob("sh", "-c", "id -u; echo ready; exec sleep 30")
            for _ in range(4)
        ]
        uids = []
        for job in jobs:
            seen = (await waitOutput(server, job["id"], b"ready")).split()[0]
            self.assertEqual(f"dynamic:{int(seen)}", job["run_as"])
            uids.append(int(seen))
        self.assertEqual(len(set(uids)), 4)
        for job in jobs:
            await server.json("POST", f"/jobs/{job['id']}/stop", "alice")

    async def afterTheFirst(
        self, server: LiveServer, first: dict[str, Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        """
        Once C{first} has COMPLETED, the job of C{body}: created as soon as
        the pool of one uid has it back (429 until then).
        """
        ended = await server.waitEnded(first["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        for _ in range(200):
            code, job = await server.json("POST", "/jobs", "alice", body)
            if code == 201:
                return dict(job)
            self.assertEqual(code, 429, job)
            await sleep(0.05)
        self.fail("the uid never came back")

    async def test_sameUidNextJobFindsNothing(self) -> None:
        """With a pool of one uid, the next job gets the same uid and a fresh
        /tmp, /var/tmp, /dev/shm and working folder; no process survives."""
        uid = self.soleUid
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        first = await server.createJob(
            "sh",
            "-c",
            "for d in /tmp /var/tmp /dev/shm .; do echo x > $d/left-$$; done; "
            "(trap '' TERM HUP; exec sleep 300) >/dev/null 2>&1 & echo started",
        )
        job = await self.afterTheFirst(
            server,
            first,
            {
                "command": "sh",
                "args": ["-c", "ls -A /tmp /var/tmp /dev/shm . | grep left; id -u"],
            },
        )
        self.assertEqual(job["run_as"], f"dynamic:{uid}")
        await server.waitEnded(job["id"])
        self.assertEqual((await output(server, job["id"])).split(), [str(uid).encode()])
        self.assertEqual(processesOf(uid), [])
        self.assertEqual([n for n in os.listdir("/tmp") if n.startswith("left-")], [])

    async def test_escapedLeftoverGoneBeforeTheUidIsReused(self) -> None:
        """
        A leftover that left the job's session and ignores SIGTERM: the
        uid is handed out again only once it is gone (without cgroups, the
        uid's sweep finds and kills it).
        """
        uid = self.soleUid + 50
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        first = await server.createJob("sh", "-c", escapee(301))
        second = await self.afterTheFirst(server, first, {"command": "true"})
        self.assertEqual(second["run_as"], f"dynamic:{uid}")
        self.assertEqual(escapees(uid, 301), [], "the uid was handed out again")
        await server.waitEnded(second["id"])

    async def test_leftoversOfTheLastJobsKilledAtShutdown(self) -> None:
        """
        The server stops with a job running whose leftover left its
        session and ignores SIGTERM: the leftover is gone once the server
        has stopped (its uid's lock ends with the server, and another
        server may hand the uid out).
        """
        uid = self.soleUid + 60
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        job = await server.createJob("sh", "-c", escapee(302) + "; exec sleep 60")
        await waitOutput(server, job["id"], b"started")
        await server.stop()
        self.assertEqual(escapees(uid, 302), [], "a leftover outlived the server")

    async def leftBehind(self, server: LiveServer, seconds: int) -> dict[str, Any]:
        """
        A job whose leftover left its session and ignores TERM, stopped
        with an hour's grace: it has ended STOPPED on the TERM (its main
        process went), and the leftover runs on.
        """
        job = await server.createJob("sh", "-c", escapee(seconds) + "; exec sleep 60")
        await waitOutput(server, job["id"], b"started")
        code, ended = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 3600}
        )
        self.assertEqual((code, ended["status"]), (200, "STOPPED"), ended)
        uid = int(job["run_as"].removeprefix("dynamic:"))
        if self.leftoversOutliveTheEnd:
            self.assertNotEqual(escapees(uid, seconds), [])
        # (Else the uid's sweep, as the uid goes back, kills it soon: gone.)
        return dict(job)

    async def gone(self, uid: int, seconds: int, within: float) -> None:
        """The leftovers of L{leftBehind} are gone within C{within} seconds."""
        deadline = time.monotonic() + within
        while escapees(uid, seconds):
            if time.monotonic() > deadline:
                self.fail(f"a leftover of an ended job lived over {within} s")
            await sleep(0.1)

    async def test_leftoversOfAnEndedJobGetTheServersGrace(self) -> None:
        """
        What a job stopped with an hour's grace left is killed the
        server's grace (2 s) after the job ended, not the hour on, and
        its uid comes back (attacker round 28: one user held every
        dynamic uid for an hour, with no job running).
        """
        uid = self.soleUid + 70
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        await self.leftBehind(server, 303)
        await self.gone(uid, 303, 10.0)

    async def test_adminsKillReachesWhatAnEndedJobLeft(self) -> None:
        """
        The job ended, its leftover under its grace (the server's, 30 s
        here): an Admin's KILL is still 409 (the job has ended), saying
        so, and the leftover is killed at once (it was a 409 and nothing).
        """
        uid = self.soleUid + 80
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}", grace=30.0)
        job = await self.leftBehind(server, 304)
        code, body = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "ada", {"signal": "KILL"}
        )
        self.assertEqual(code, 409, body)
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            stops = [
                e
                for e in map(json.loads, f)
                if e.get("event") == "job.stop" and e.get("user") == "ada"
            ]
        if self.leftoversOutliveTheEnd:
            self.assertIn("processes it left", body["error"])
            # Audited as the stop it is (review of attacker round 28).
            self.assertEqual([e["result"] for e in stops], ["leftovers"], stops)
        else:
            self.assertEqual(stops, [])
        await self.gone(uid, 304, 5.0)

    async def test_privateFoldersAsWorkingDirectories(self) -> None:
        """
        C{"cwd": "/tmp"} (or C{/tmp/job}, C{/dev/shm}): the job starts
        there, in its own (it was "not found or not permitted": new user
        round 28).
        """
        server = LiveServer(self)
        for cwd in ("/tmp", WORKDIR, "/dev/shm"):
            job = await server.createJob("pwd", cwd=cwd)
            ended = await server.waitEnded(job["id"])
            self.assertEqual(ended["status"], "COMPLETED", ended)
            self.assertEqual(await output(server, job["id"]), cwd.encode() + b"\n")

    async def test_poolExhaustedIs429(self) -> None:
        """Every uid held: 429 with Retry-After, nothing recorded."""
        uid = self.soleUid + 100
        server = LiveServer(self, f"--dynamic-uids={uid}-{uid}")
        job = await server.createJob("sleep", "30")
        response = await server.request("POST", "/jobs", "alice", {"command": "true"})
        self.assertEqual(response.code, 429)
        self.assertTrue(response.headers.getRawHeaders(b"retry-after"))
        body = json.loads(await treq.content(response))
        self.assertIn("dynamic uids", body["error"])
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice")

    async def test_errorsAsTheJobSeesThem(self) -> None:
        """A command in a root-only folder: "not found or not permitted",
        the same as a missing one; never what root would see."""
        folder = sharedPath(self)
        os.makedirs(folder, mode=0o700)
        tool = os.path.join(folder, "tool")
        with open(tool, "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(tool, 0o755)  # noqa: S103
        server = LiveServer(self)
        errors = []
        for command in (tool, tool + "-missing"):
            job = await server.createJob(command)
            ended = await server.waitEnded(job["id"])
            self.assertEqual(ended["status"], "FAILED")
            errors.append(ended["error"].replace(command, "X"))
        self.assertEqual(errors[0], errors[1])
        self.assertIn("not found or not permitted", errors[0])

    async def test_auditRecordsRunAs(self) -> None:
        """job.create in the audit log names the identity."""
        server = LiveServer(self)
        job = await server.createJob("true")
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            events = [json.loads(line) for line in f]
        [create] = [e for e in events if e.get("event") == "job.create"]
        self.assertEqual(create["run_as"], job["run_as"])
        self.assertTrue(job["run_as"].startswith("dynamic:"))

    async def test_allowRootJobs(self) -> None:
        """Only the explicit opt-in runs jobs as root."""
        server = LiveServer(self, "--allow-root-jobs")
        job = await server.createJob("id", "-u")
        await server.waitEnded(job["id"])
        self.assertEqual(await output(server, job["id"]), b"0\n")
        self.assertEqual(job["run_as"], "root")

    def test_rangeUsedByAnAccountRefused(self) -> None:
        """A group in the --dynamic-uids range: the server refuses to start."""
        import io
        import sys

        from jobworker.server.options import Options
        from jobworker.server.tap import makeService

        if shutil.which("groupadd") is None:
            raise SkipTest("no groupadd")
        # One left by a run killed before its cleanup would stop this one.
        subprocess.run(["groupdel", "jwtestclash"], check=False, capture_output=True)
        subprocess.run(["groupadd", "-g", "72950", "jwtestclash"], check=True)
        self.addCleanup(subprocess.run, ["groupdel", "jwtestclash"], check=False)
        options = Options()
        options.parseOptions(
            [
                "--tls",
                "--dynamic-uids=72900-72999",
                f"--state-dir={self.mktemp()}",
                f"--cert={CERT}",
                f"--key={KEY}",
            ]
        )
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        self.assertRaises(SystemExit, makeService, options)
        self.assertIn("group jwtestclash (72950)", errors.getvalue())


class DynamicIdentityChainTests(DynamicIdentityTests):
    """The same through the exec chain (--launcher=off)."""

    serverOptions = ("--launcher=off",)
    soleUid = 73200


class DynamicIdentityNoCgroupsTests(DynamicIdentityTests):
    """The same without cgroups: the uid's own sweep finds what is left."""

    serverOptions = ("--cgroups=off",)
    soleUid = 73500
    leftoversOutliveTheEnd = False


class OptionTests(SynchronousTestCase):
    """The identity options refuse what they cannot mean."""

    def parse(self, *argv: str) -> None:
        from jobworker.server.options import Options

        Options().parseOptions(["--tls", *argv])

    def test_refused(self) -> None:
        from twisted.python.usage import UsageError

        for argv in (
            ("--slurm-shared-account",),
            ("--run-as=nobody", "--allow-root-jobs"),
            ("--dynamic-uids=65000-66000",),
            ("--dynamic-uids=lots",),
            ("--tmp-size=1K",),
            ("--launcher=on",),
        ):
            self.assertRaises(UsageError, self.parse, *argv)
        self.parse("--dynamic-uids=70000-70010", "--tmp-size=64M")
        self.parse("--launcher=off")

    def test_sharedSlurmAccountAsRootNeedsAllowRootJobs(self) -> None:
        """As root the service account is root: the opt-in must say so."""
        from twisted.python.usage import UsageError

        if os.getuid() != 0:
            raise SkipTest("only a root server's service account is root")
        slurm = ("--executor=slurm", "--slurm-output-dir=/nonexistent")
        error = self.assertRaises(
            UsageError, self.parse, *slurm, "--slurm-shared-account"
        )
        self.assertIn("--allow-root-jobs", str(error))
        self.parse(*slurm, "--slurm-shared-account", "--allow-root-jobs")


class ReloadTests(SynchronousTestCase):
    """SIGHUP: a users file mapping to a missing account keeps the old users."""

    def test_badMappingKeepsOldUsers(self) -> None:
        from jobworker.server.services import UsersReloadService

        replaced: list[UserDatabase] = []

        class Authenticator:
            def replaceUsers(self, users: UserDatabase) -> None:
                replaced.append(users)

        path = self.mktemp()
        alice = DEVELOPMENT_USERS.splitlines()[1]
        with open(path, "w") as f:
            f.write(alice + "\n")
        service = UsersReloadService(path, Authenticator(), None)  # type: ignore[arg-type]
        service.reload()
        self.assertEqual(len(replaced), 1)
        with open(path, "w") as f:
            f.write(alice + ":no-such-account-jw\n")
        service.reload()
        self.assertEqual(len(replaced), 1)
        with open(path, "w") as f:
            f.write(alice + ":root\n")
        service.reload()
        self.assertEqual(len(replaced), 1)


class RootStagesEnvironmentTests(SynchronousTestCase):
    """
    The request's environment never reaches the stages that run as root:
    where /bin/sh is bash, BASH_FUNC_read%% would otherwise run as root.
    """

    def test_requestEnvOnlyAfterSetpriv(self) -> None:
        from jobworker.executors.local.sandbox import ENV, ROOT_ENVIRONMENT, SETPRIV

        from .fakes import spawnHostileJob

        spawned = spawnHostileJob(self, 70700)
        self.assertEqual(spawned.env, ROOT_ENVIRONMENT)
        args = spawned.args
        self.assertLess(args.index(SETPRIV), args.index(ENV))
        after = args[args.index(ENV) :]
        self.assertIn("SECRET=s3", after)
        self.assertIn("BASH_FUNC_read%%=() { id; }", after)
        self.assertNotIn("SECRET=s3", args[: args.index(ENV)])

    def test_commandWithEqualsRefused(self) -> None:
        """env -i would read such a command as an assignment: 400."""
        from jobworker.executors.local.sandbox import checkCommand

        self.assertIsNotNone(checkCommand("./a=b"))
        self.assertIsNone(checkCommand("/usr/bin/true"))


class ReclaimTests(SynchronousTestCase):
    """At start-up, what a dead server's dynamic jobs left is killed."""

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)

    def test_orphansKilledHeldOnesLeftAlone(self) -> None:
        lockDir = self.mktemp()
        other = DynamicUids(70000, 70009, lockDir)  # a live server
        held = other.acquire()
        pool = DynamicUids(70000, 70009, lockDir)
        killed: list[list[int]] = []
        found = pool.reclaim({held: [11], 70005: [12, 13], 99999: [14]}, killed.append)
        self.assertEqual(found, [70005])
        self.assertEqual(killed, [[12, 13]])
        # Reclaimed uids are held until their processes are gone.
        self.assertNotIn(70005, [pool.acquire() for _ in range(8)])

    def test_liveParentsJobKeptAside(self) -> None:
        """
        Fault round 7: a uid whose lock file a cleaner of /run removed
        under a live server's running job was taken by a second server at
        its start, and the job killed as a dead server's leftover. Its
        processes have a live parent: held, never handed out, not killed.
        """
        lockDir = self.mktemp()
        other = DynamicUids(70000, 70002, lockDir)
        busy = other.acquire()
        os.unlink(os.path.join(lockDir, str(busy)))
        pool = DynamicUids(70000, 70002, lockDir)
        killed: list[list[int]] = []
        found = pool.reclaim(
            {busy: [11], 70002: [12]},
            killed.append,
            lambda uid, pids: uid == busy,
        )
        self.assertEqual((found, killed, pool.keptAside), ([70002], [[12]], [busy]))
        pool.release(70002)
        self.assertEqual(
            {pool.acquire(), pool.acquire()}, {70000, 70001, 70002} - {busy}
        )

    def test_liveParentSeenInProc(self) -> None:
        """L{hasLiveParent} on real processes: a child of this (live) process
        has one; one whose parent exited, reparented to init, has not."""
        requireRoot()
        uid = 71999
        child = subprocess.Popen(["sleep", "30"], user=uid, group=uid)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        started = subprocess.run(
            ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
            user=uid,
            group=uid,
            capture_output=True,
            check=True,
        )
        orphan = int(started.stdout)
        self.addCleanup(os.kill, orphan, signal.SIGKILL)
        with open(f"/proc/{orphan}/stat") as f:
            adopter = int(f.read().rsplit(")", 1)[1].split()[1])
        if adopter != 1:
            raise SkipTest(
                f"a subreaper (pid {adopter}) adopted the orphan, not init: "
                "hasLiveParent takes its processes for a live job's, by design"
            )
        self.assertTrue(hasLiveParent(uid, [child.pid]))
        self.assertFalse(hasLiveParent(uid, [orphan]))
        self.assertTrue(hasLiveParent(uid, [orphan, child.pid]))


class LockFileRemovedTests(TestCase):
    timeout = 60

    async def test_secondServerLeavesTheJobAlone(self) -> None:
        """
        Fault round 7, end to end: server A runs a job as a dynamic uid, a
        cleaner removes that uid's lock file, server B starts with the same
        range: A's job runs on (B killed it, and A recorded it FAILED).
        """
        requireRoot()
        first = LiveServer(self)
        job = await first.createJob("sleep", "60")
        uid = int(job["run_as"].split(":")[1])
        for _ in range(200):  # past its set-up (as root), running as the uid
            if job["pid"] in processesOf(uid):
                break
            await sleep(0.02)
        os.unlink(os.path.join(LOCK_DIR, str(uid)))
        LiveServer(self)
        await sleep(0.5)
        _, record = await first.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(record["status"], "RUNNING", record)
        self.assertIn(job["pid"], processesOf(uid))


class RootGroupAccountTests(SynchronousTestCase):
    def test_primaryGroupRootRefused(self) -> None:
        """An account whose primary group is root's is refused too."""
        if os.getuid() != 0 or shutil.which("useradd") is None:
            raise SkipTest("creating a test account needs root and useradd")
        subprocess.run(["userdel", "jwtestgid0"], check=False, capture_output=True)
        subprocess.run(
            ["useradd", "--no-create-home", "-g", "0", "jwtestgid0"],
            check=True,
            capture_output=True,
        )
        self.addCleanup(subprocess.run, ["userdel", "jwtestgid0"], check=False)
        with self.assertRaises(IdentityError) as caught:
            Identity.ofAccount("jwtestgid0")
        self.assertIn("root's group", str(caught.exception))


class LockFolderGoneTests(SynchronousTestCase):
    """
    The dynamic uids' lock folder removed while the server runs (an
    operator's C{rm -rf /run/jobworker}, a cleaner of C{/run}): the next
    job's uid was a 500 (C{FileNotFoundError}) for every job until a
    restart (a fault round). The folder is made again.
    """

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)

    def test_folderMadeAgain(self) -> None:
        lockDir = self.mktemp()
        pool = DynamicUids(70000, 70003, lockDir)
        first = pool.acquire()
        shutil.rmtree(lockDir)
        second = pool.acquire()
        self.assertNotEqual(first, second)
        self.assertTrue(os.path.exists(os.path.join(lockDir, str(second))))
        self.assertEqual(stat.S_IMODE(os.stat(lockDir).st_mode), 0o700)
        # Both held uids are locked again: another server gets neither.
        other = DynamicUids(70000, 70003, lockDir)
        taken = {other.acquire(), other.acquire()}
        self.assertEqual(taken & {first, second}, set())
        self.assertRaises(PoolExhausted, other.acquire)
