"""
Who a job runs as: a user's mapped Unix account, a dynamic uid of its own,
the shared C{--run-as} account, or the server's own user.

The idea of dynamic identities is systemd's C{DynamicUser=}: a uid from a
range no passwd or group entry uses, held by one live job at a time (a lock
file per uid, shared by every jobworker server of the machine, so two servers
never hand out the same uid), and given back only once nothing of the job is
left. As systemd does, each uid is looked up in the user database
(C{getpwuid}, C{getgrgid}) before it is handed out: a network directory
that does not enumerate (SSSD's C{enumerate = false}) lists none of its
users to the start-up check.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .recovery import processesByUid, processStartTime

#: Where per-job dynamic uids come from by default: in the 65536-524287 gap
#: of systemd.io/UIDS-GIDS, below useradd's subordinate ranges (from 100000,
#: rootless containers). Not systemd's own C{DynamicUser=} range (61184-65519):
#: these uids have no passwd entry, and systemd, which checks NSS before it
#: hands one out, could give a service a uid a job is running as. Nor Debian's
#: package users (60000-64999: C{slurm} is 64030).
DYNAMIC_UIDS = (70000, 79999)

#: Where the per-uid lock files live: one folder for every server of the
#: machine, on a tmpfs that a reboot empties.
LOCK_DIR = "/run/jobworker/dynamic-uids"

#: How long a dynamic uid found free in the user database (no C{getpwuid}
#: nor C{getgrgid} entry) stays good to hand out, in seconds: a uid is
#: handed out at most this long after its lookup began, the bound on how
#: late a user or group given that id since is noticed. A started pool
#: (L{DynamicUids.verifyAhead}) looks its verified uids up again every
#: third of it.
VERIFIED_FOR = 60.0

#: Seconds a round of lookups has been in flight within which a job that
#: finds every verified uid too old looks its own up (the round began
#: after a stall); a round older is taken for a directory that hangs.
ROUND_JUST_BEGUN = 1.0

#: Seconds a scan of C{/proc} for the processes of the pool's range serves
#: the uids met with a new lock file (no server used them since the boot):
#: one scan for a burst of first uses, not one each (a C{stat} of every
#: process of the machine, on the reactor's thread, per started job until
#: every uid had been used once). A uid it found running is looked for
#: afresh. The window this leaves: a lock file removed under another live
#: server (fault round 9) whose job started as that uid since the scan.
SCAN_REUSED_FOR = 1.0

#: How many dynamic uids a started pool keeps verified ahead of need; a
#: batch is looked up (in the thread pool) once half of them are handed out.
VERIFY_AHEAD = 64

#: C{f(*args)} in the reactor's thread pool, its result on a Deferred.
RunInThread = Callable[..., Deferred[Any]]


class IdentityError(ValueError):
    """An identity cannot be used; the message says why."""


@dataclass(frozen=True)
class Identity:
    """
    The Unix identity a job runs as.

    @ivar label: what the job record's C{run_as} shows: the account name,
        C{dynamic:<uid>}, or the server's own user.
    @ivar home: C{HOME} and the default working directory; None for a
        dynamic identity, whose home is its private working directory.
    @ivar ownPidNamespace: each job of it gets a PID namespace of its own
        through the launcher, even without C{--isolate pid}: an account
        whose jobs are several users' (C{--run-as}, or one mapped by
        several users-file lines). The kernel lets a process change
        another of its uid's limits, priority and CPU affinity by pid
        (C{prlimit}: C{RLIMIT_CPU} at 1 s is a kill); neither Landlock nor
        a signal check stops that, a PID namespace does.
    """

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str | None
    shell: str
    label: str
    dynamic: bool = False
    ownPidNamespace: bool = False

    @classmethod
    def ofAccount(cls, name: str) -> Identity:
        """
        The identity of the Unix account C{name}: its uid, primary gid,
        supplementary groups, home and shell from the user database.

        @raise IdentityError: no such account, or it is root, or in root's
            group.
        """
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise IdentityError(f"no such Unix account {name!r}") from None
        if entry.pw_uid == 0:
            raise IdentityError(f"Unix account {name!r} is root: jobs must not be")
        if entry.pw_gid == 0:
            raise IdentityError(
                f"Unix account {name!r} has root's group as its primary group"
            )
        groups = tuple(
            sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) - {entry.pw_gid})
        )
        if 0 in groups:
            raise IdentityError(
                f"Unix account {name!r} is in root's group: jobs must not be"
            )
        return cls(
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=groups,
            name=entry.pw_name,
            home=entry.pw_dir or None,
            shell=entry.pw_shell or "/bin/sh",
            label=entry.pw_name,
        )

    @classmethod
    def ofDynamicUid(cls, uid: int) -> Identity:
        """A dynamic identity: uid and gid C{uid}, no groups, no account."""
        return cls(  # noqa: S604 (a login shell, not a subprocess flag)
            uid=uid,
            gid=uid,
            groups=(),
            name=f"jobworker-{uid}",
            home=None,
            shell="/bin/sh",
            label=f"dynamic:{uid}",
            dynamic=True,
        )

    @classmethod
    def ofServer(cls) -> Identity:
        """The user this server runs as."""
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, os.getgid(), (), str(uid), "/", "/bin/sh", str(uid))
        return cls(
            uid=uid,
            gid=entry.pw_gid,
            groups=(),
            name=entry.pw_name,
            home=entry.pw_dir or "/",
            shell=entry.pw_shell or "/bin/sh",
            label=entry.pw_name,
        )

    def environment(self, workdir: str | None) -> dict[str, str]:
        """C{HOME}, C{USER}, C{LOGNAME} and C{SHELL} of this identity."""
        home = self.home if self.home is not None else workdir
        return {
            "HOME": home or "/",
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
        }

    def setpriv(self, setprivPath: str) -> list[str]:
        """The C{setpriv} argv that becomes this identity, then runs the rest."""
        groups = (
            [f"--groups={','.join(str(g) for g in self.groups)}"]
            if self.groups
            else ["--clear-groups"]
        )
        # A dynamic uid gains nothing from a setuid file (an earlier holder
        # of the uid, another user's job, may have left one behind).
        return [
            setprivPath,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            *groups,
            *(["--no-new-privs"] if self.dynamic else []),
            "--",
        ]

    def mayTraverse(self, st: os.stat_result) -> bool:
        """May this identity search (C{x}) the directory C{st}?"""
        return self._allows(st, 0o1)

    def mayRead(self, st: os.stat_result) -> bool:
        """May this identity read C{st}?"""
        return self._allows(st, 0o4)

    def mayExecute(self, st: os.stat_result) -> bool:
        """May this identity execute the file C{st}?"""
        return self._allows(st, 0o1)

    def _allows(self, st: os.stat_result, bit: int) -> bool:
        """Mode bits as the kernel applies them (ACLs aside)."""
        if self.uid == 0:
            return bit != 0o1 or bool(st.st_mode & 0o111) or _isDir(st)
        if st.st_uid == self.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)


def _isDir(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o040000


def _decimal(text: str) -> bool:
    """ASCII digits only ("²" is a digit to C{str.isdigit}, not to C{int}:
    operator round 38)."""
    return text.isascii() and text.isdigit()


def parseRange(text: str) -> tuple[int, int]:
    """C{"70000-79999"} -> C{(70000, 79999)}.

    @raise ValueError: not a range of at least one uid within 1..2**31-2,
        or one that holds 65534 (nobody).
    """
    first, sep, last = text.partition("-")
    if not sep or not _decimal(first.strip()) or not _decimal(last.strip()):
        raise ValueError(f"not a uid range: {text!r} (e.g. 70000-79999)")
    low, high = int(first), int(last)
    if not 1000 <= low <= high < 2**31 - 1:
        raise ValueError(f"uid range {text!r} must lie within 1000..2147483646")
    if low <= 65534 <= high:
        raise ValueError(f"uid range {text!r} holds 65534 (nobody)")
    return low, high


def rangeClashes(
    first: int,
    last: int,
    users: Iterable[tuple[str, int]] | None = None,
    groups: Iterable[tuple[str, int]] | None = None,
    primaryGroups: Iterable[tuple[str, int]] | None = None,
) -> list[str]:
    """
    The passwd and group entries whose id lies in C{first..last}: a user's
    uid (C{users}, by name), a group's gid (C{groups}) and a user's primary
    gid (C{primaryGroups}, by the user's name; unless a group of that gid is
    named already). Not given, C{users} and C{primaryGroups} are those of
    the passwd entries (C{getpwall}), C{groups} the group entries'
    (C{getgrall}).

    Only what the user database enumerates is seen (a network one, SSSD's
    C{enumerate = false}, lists nothing): L{DynamicUids} also looks each
    uid up before it hands it out.
    """
    if users is None:
        entries = pwd.getpwall()
        users = [(e.pw_name, e.pw_uid) for e in entries]
        if primaryGroups is None:
            primaryGroups = [(e.pw_name, e.pw_gid) for e in entries]
    if groups is None:
        groups = ((e.gr_name, e.gr_gid) for e in grp.getgrall())
    found = [f"user {n} ({i})" for n, i in users if first <= i <= last]
    named = [(n, i) for n, i in groups if first <= i <= last]
    found += [f"group {n} ({i})" for n, i in named]
    seen = {i for _, i in named}
    found += [
        f"user {n}'s primary group ({i})"
        for n, i in primaryGroups or ()
        if first <= i <= last and i not in seen
    ]
    return found


def inRange(identity: Identity, first: int, last: int) -> str | None:
    """
    What of C{identity} lies in C{first..last} (its uid, primary group or a
    supplementary group), said; None if nothing does.
    """
    if first <= identity.uid <= last:
        return f"uid {identity.uid}"
    for gid in (identity.gid, *identity.groups):
        if first <= gid <= last:
            return f"group {gid}"
    return None


def dynamicUid(runAs: str | None) -> int | None:
    """The uid of a record's C{run_as} if it is a dynamic one (C{dynamic:N})."""
    if runAs is None or not runAs.startswith("dynamic:"):
        return None
    number = runAs.removeprefix("dynamic:")
    return int(number) if number.isdigit() else None


def runAsUid(runAs: str | None) -> int | None:
    """
    The uid a record's C{run_as} names: a dynamic one's number, an
    account's (the server's own user's too) as the user database has it
    now; None when not known (none, or an account gone since).
    """
    dynamic = dynamicUid(runAs)
    if dynamic is not None or runAs is None:
        return dynamic
    try:
        return pwd.getpwnam(runAs).pw_uid
    except KeyError:
        # The server's own uid, which has no name, is its number. Only
        # then: an account may be named by digits (code review 36: its
        # name read as a uid, crash recovery looked for another uid's
        # processes).
        return int(runAs) if runAs.isdigit() else None


class PoolExhausted(Exception):
    """Every dynamic uid is held by a live job."""


class UidLocksFailing(OSError):
    """
    No dynamic uid could be had because their lock files cannot be made or
    locked now (C{/run} out of space or inodes, C{ENOLCK}, C{EIO}): the
    server's trouble, a 503. (It was a 500 with a traceback for each job,
    each trying the next never-used uid: fault round 8.)
    """


class DynamicUids:
    """
    The dynamic uid range, each uid held by one live job at a time.

    A uid is held by an exclusive C{flock} on C{<lockDir>/<uid>}, kept open
    while the job lives: a second server on the machine skips it, and the
    kernel drops the lock if this server dies. Uids are handed out in turn
    (not lowest first), so a uid just given back is the last to be reused.

    A uid the user database has a user or group of (C{getpwuid},
    C{getgrgid}: what enumeration does not list, too) is skipped, said once.
    Until L{verifyAhead} each uid is looked up as it is handed out (the
    server's start-up, tests); after, a few are looked up ahead of need in
    the thread pool, and L{acquire} looks nothing up (but while the first
    batch is being looked up).
    """

    log = Logger()

    def __init__(
        self,
        first: int = DYNAMIC_UIDS[0],
        last: int = DYNAMIC_UIDS[1],
        lockDir: str = LOCK_DIR,
        getpwuid: Callable[[int], pwd.struct_passwd] | None = None,
        getgrgid: Callable[[int], grp.struct_group] | None = None,
        scan: Callable[[range], Collection[int]] | None = None,
    ) -> None:
        """
        @param getpwuid: the user database's users by uid (C{pwd.getpwuid}).
        @param getgrgid: its groups by gid (C{grp.getgrgid}).
        @param scan: the uids of a range that have a live process (a scan
            of C{/proc}, L{processesByUid}), asked of a uid whose lock
            file is new or another server's.
        """
        self.first = first
        self.last = last
        self._lockDir = lockDir
        self._getpwuid = getpwuid or pwd.getpwuid
        self._getgrgid = getgrgid or grp.getgrgid
        self._held: dict[int, int] = {}
        self._next = first
        self._scan = scan
        #: The last scan of the range for new lock files (L{_runningNow}):
        #: when, and the uids it found running; None before the first.
        self._scanned: tuple[float, frozenset[int]] | None = None
        #: What a lock file holds once this server took it: its pid and
        #: start time (clock ticks since boot: a pid may be reused).
        pid = os.getpid()
        self._mark = b"%d %d\n" % (pid, processStartTime(pid) or 0)
        #: When this pool began (wall clock, as lock files' times), and the
        #: uids L{reclaim} found running under another server's lock then:
        #: what a server that was alive at this one's start may leave.
        self._startedAt = time.time()
        self._heldByOthersAtStart: set[int] = set()
        #: Uids skipped for another server's leftovers (said once each).
        self._leftBehind: set[int] = set()
        #: The last error of a lock file in this acquire (None: none), and
        #: whether one was said since a lock last worked.
        self._lockError: OSError | None = None
        self._lockFailing = False
        #: Uids L{reclaim} found in use by a live job of no lock: held, never
        #: handed out, never killed.
        self.keptAside: list[int] = []
        #: Uids found with an entry in the user database (said once each).
        self._named: set[int] = set()
        #: Set by L{verifyAhead}: the uids found free, in turn, each with
        #: when its lookup began; its clock; its thread runner (None once
        #: stopped); how many it keeps; how long a lookup stays good.
        self._ready: dict[int, float] = {}
        #: The uids handed out from it, each with when its lookup began:
        #: one that comes round again in its turn less than half of
        #: C{verifiedFor} after is verified by that lookup still (a busy
        #: server looks each uid up once per half of it, not once per job).
        self._lookedUp: dict[int, float] = {}
        self._clock: IReactorTime | None = None
        #: The time the lookups' ages are counted in (L{verifyAhead}).
        self._now: Callable[[], float] = time.monotonic
        self._runInThread: RunInThread | None = None
        self._ahead = VERIFY_AHEAD
        self._verifiedFor = VERIFIED_FOR
        #: A batch is being looked up (since when); one has come in; the
        #: verified uids are due again.
        self._checking = False
        self._roundBegan = 0.0
        self._answered = False
        self._reverifyDue = False
        #: Uids looked up since the last found free (ends a chain of
        #: batches that find only entries); the last batch failed.
        self._fruitless = 0
        self._failing = False
        #: The next look-up of the verified uids.
        self._tick: IDelayedCall | None = None
        os.makedirs(lockDir, mode=0o700, exist_ok=True)

    def __len__(self) -> int:
        """How many uids are held now."""
        return len(self._held)

    @property
    def size(self) -> int:
        """How many uids the range holds."""
        return self.last - self.first + 1

    def acquire(self) -> int:
        """
        A uid no live job of any server holds and no user or group has.
        Once started (L{verifyAhead}): one looked up less than
        C{verifiedFor} seconds ago, in the thread pool.

        @raise PoolExhausted: none is free (once started: none verified
            free yet).
        """
        self._lockError = None
        if self._clock is None:
            return self._acquireLookingUp()
        return self._acquireVerified(self._now())

    def _acquireLookingUp(self) -> int:
        """L{acquire}, each uid looked up here (not started)."""
        for _ in range(self.size):
            uid = self._advance()
            if (
                uid not in self._held
                and self._free(uid, self._entryOf(uid))
                and self._lock(uid)
            ):
                return uid
        raise self._exhausted()

    def _acquireVerified(self, now: float) -> int:
        """
        L{acquire} from the uids verified free, first in turn first; one
        verified too long ago (the directory is slow to answer, the clock
        was set) is looked up again first.
        """
        found = None
        gone = []
        stale = False
        for uid, since in self._ready.items():
            if not 0 <= now - since < self._verifiedFor:
                self._reverifyDue = True
                stale = True
                continue
            gone.append(uid)
            if uid not in self._held and self._lock(uid):
                found = uid
                self._lookedUp[uid] = since
                break
        for uid in gone:  # (held by another server: found again in turn)
            del self._ready[uid]
        # Due again with nothing looking them up: the round that would have
        # did not come (the reactor's timers are late after a step of the
        # wall clock back); or the round looking them up began just now
        # (after a stall of the server: SIGSTOP, a frozen VM). Not a
        # directory that hangs (a round waits on it for longer).
        self._verifyMore()
        late = stale and (
            not self._checking or now - self._roundBegan < ROUND_JUST_BEGUN
        )
        if found is None and (late or (self._checking and not self._answered)):
            # The first jobs, while the first batch is being looked up; or
            # the round is late: looked up here (after a step back, the first
            # job after each quiet minute got a 429 "no dynamic uid is free"
            # with thousands free, for as long as the step: fault round 27;
            # after a stall, those while the round was in flight: review
            # round 30).
            return self._acquireLookingUp()
        if found is None:
            raise self._exhausted()
        return found

    def _advance(self) -> int:
        """The next uid in turn."""
        uid = self._next
        self._next = uid + 1 if uid < self.last else self.first
        return uid

    def _exhausted(self) -> Exception:
        """What L{acquire} raises when it finds no uid: why, in numbers."""
        if len(self._held) >= self.size:
            return PoolExhausted(f"all {self.size} dynamic uids are in use")
        error = self._lockError
        if error is not None:
            return UidLocksFailing(
                error.errno,
                f"no dynamic uid can be locked now ({error.strerror})",
            )
        return PoolExhausted(
            f"no dynamic uid is free now ({len(self._held)} of {self.size} in "
            f"use, {len(self._named)} with a user or group entry, "
            f"{len(self._leftBehind)} with another server's leftovers"
            f"{', the others not verified yet' if self._clock else ''})"
        )

    def _entryOf(self, uid: int) -> str | None:
        """The user or group of the user database that has id C{uid}."""
        try:
            return f"user {self._getpwuid(uid).pw_name}"
        except KeyError:
            pass
        try:
            return f"group {self._getgrgid(uid).gr_name}"
        except KeyError:
            return None

    def _free(self, uid: int, entry: str | None) -> bool:
        """Is C{uid}, whose entry is C{entry}, free? One that is not is said
        (once)."""
        if entry is None:
            self._named.discard(uid)
            return True
        if uid not in self._named:
            self._named.add(uid)
            self.log.warn(
                "dynamic uid {uid} is not used: the user database has {entry} "
                "of that id (choose a --dynamic-uids range no user or group uses)",
                uid=uid,
                entry=entry,
            )
        return False

    def verifyAhead(
        self,
        clock: IReactorTime,
        runInThread: RunInThread,
        ahead: int = VERIFY_AHEAD,
        verifiedFor: float = VERIFIED_FOR,
        now: Callable[[], float] | None = None,
    ) -> None:
        """
        From now on, keep C{ahead} uids verified free, looked up in
        C{runInThread}: the first batch now, another once half are handed
        out; each again once half of C{verifiedFor} has passed (looked for
        every third of it). A uid is handed out only within C{verifiedFor}
        seconds of its lookup's start.

        @param now: the time the lookups' ages are counted in (the server's:
            C{time.monotonic}: a step of the wall clock made every uid look
            verified too long ago, or in the future, and the next job got a
            429 "no dynamic uid is free", fault round 27); C{clock}'s by
            default.
        """
        self._clock = clock
        self._now = now if now is not None else clock.seconds
        self._runInThread = runInThread
        self._ahead = max(1, min(ahead, self.size))
        self._verifiedFor = verifiedFor
        self._tick = clock.callLater(verifiedFor / 3, self._reverify)
        self._verifyMore()

    def stopVerifying(self) -> None:
        """Look nothing up any more (the server stops)."""
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None
        self._runInThread = None

    def _reverify(self) -> None:
        """Look the verified uids that are due up again (and top them up)."""
        assert self._clock is not None
        self._tick = self._clock.callLater(self._verifiedFor / 3, self._reverify)
        self._reverifyDue = True
        now, half = self._now(), self._verifiedFor / 2
        for uid, since in list(self._lookedUp.items()):
            if not 0 <= now - since < half:
                del self._lookedUp[uid]
        self._verifyMore()

    def _verifyMore(self) -> None:
        """
        Look a batch up in a thread, one at a time: the verified uids due
        again (if asked: L{_reverifyDue}), and new ones in turn to make
        C{ahead} (if some are due, or half are handed out).
        """
        runInThread, clock = self._runInThread, self._clock
        if runInThread is None or clock is None or self._checking:
            return
        since = self._now()
        again = self._due(since) if self._reverifyDue else []
        self._reverifyDue = False
        if not again and len(self._ready) > self._ahead // 2:
            return
        uids = again + self._candidates(self._ahead - len(self._ready), since)
        if not uids:
            return
        self._checking = True
        self._roundBegan = since
        checked = maybeDeferred(runInThread, self._lookUp, uids)
        checked.addCallbacks(self._verified, self._notVerified, callbackArgs=(since,))

    def _due(self, now: float) -> list[int]:
        """The verified uids looked up half of C{verifiedFor} ago or more."""
        half = self._verifiedFor / 2
        return [u for u, since in self._ready.items() if not 0 <= now - since < half]

    def _candidates(self, count: int, now: float) -> list[int]:
        """
        The next C{count} uids in turn, neither held nor verified: those
        to look up. One whose last lookup began less than half of
        C{verifiedFor} before C{now} is verified by it again, not looked up.
        """
        found: list[int] = []
        half = self._verifiedFor / 2
        for _ in range(self.size if count > 0 else 0):
            uid = self._advance()
            if uid in self._held or uid in self._ready:
                continue
            since = self._lookedUp.pop(uid, None)
            if since is not None and 0 <= now - since < half:
                self._ready[uid] = since
                count -= 1
            else:
                found.append(uid)
            if len(found) >= count:
                break
        return found

    def _lookUp(self, uids: list[int]) -> dict[int, str | None]:
        """Each uid's entry in the user database (in a thread)."""
        return {uid: self._entryOf(uid) for uid in uids}

    def _verified(self, entries: dict[int, str | None], since: float) -> None:
        """The batch looked up from C{since} is in: keep the free uids."""
        self._checking = False
        self._answered = True
        if self._failing:
            self._failing = False
            self.log.info("dynamic uids: the user database answers again")
        found = False
        for uid, entry in entries.items():
            if not self._free(uid, entry):
                self._ready.pop(uid, None)
            elif uid not in self._held:  # (handed out while looked up again)
                self._ready[uid] = since
                found = True
        self._fruitless = 0 if found else self._fruitless + len(entries)
        if self._reverifyDue or self._fruitless < self.size:
            self._verifyMore()

    def _notVerified(self, failure: Failure) -> None:
        """The batch could not be looked up: said once; tried again later."""
        self._checking = False
        if not self._failing:
            self._failing = True
            self.log.warn(
                "cannot look dynamic uids up in the user database: {why} "
                "(none is handed out unless verified free)",
                why=failure.getErrorMessage(),
            )

    def _lock(self, uid: int, leftovers: bool = True) -> bool:
        """
        Hold C{uid}'s lock; False if another server holds it, if its file
        cannot be made or locked now (skipped, said once), or (unless not
        C{leftovers}) if another server locked it last and processes of
        it still run: that server died with its job running on (a crash),
        and the uid is not handed out until its leftovers are gone.
        """
        try:
            try:
                fd = self._flock(uid)
            except FileNotFoundError:
                # The folder was removed under a running server (rm -rf of
                # /run/jobworker, a cleaner of /run): made again, not a 500
                # for every job until a restart; with the uids this server
                # holds locked again in it (their files went with it:
                # another server would have handed out, or killed, a
                # running job's uid).
                os.makedirs(self._lockDir, mode=0o700, exist_ok=True)
                self._lockHeldAgain()
                fd = self._flock(uid)
        except OSError as e:
            self._lockError = e
            if not self._lockFailing:
                self._lockFailing = True
                self.log.error(
                    "dynamic uid {uid}: its lock file cannot be had ({error}): "
                    "skipped, as is every uid whose lock file cannot be had",
                    uid=uid,
                    error=e.strerror or str(e),
                )
            return False
        if fd is None:
            return False
        self._lockFailing = False
        if leftovers and self._othersLeftovers(uid, fd):
            os.close(fd)
            return False
        self._held[uid] = fd
        return True

    def _othersLeftovers(self, uid: int, fd: int) -> bool:
        """
        Did another server lock C{uid} last, and do processes of it still
        run? Its lock file names the server that took it last (its pid and
        start time, written now if it is not this one's): a server that
        died let its locks go, while its jobs ran on until its next start,
        and another server handed such a uid to a new job beside them
        (fault round 8). A file of this server costs one read. Processes
        are looked for (a scan of /proc) if the file names no server (new,
        or made again after it was removed under a server that held it:
        fault round 9; a scan per uid's first use after a boot), or if the
        server named is gone and it may have died since this one started:
        it took the lock since, or it held the uid, with processes, then.
        What a server dead before left was killed at this one's start
        (L{reclaim}), so a restart costs no scan per uid.
        """
        try:
            last = os.pread(fd, 64, 0)
        except OSError:
            last = b""
        if last == self._mark:
            return False
        # A file with no mark has no history: new since the machine booted,
        # or made again after a cleaner of /run removed it (or its folder)
        # under another live server's running job, whose lock went with it
        # (fault round 9). Looked for once: taken, it has this one's mark.
        if (
            self._runningNow(uid)
            if not last
            else self._mayHaveLeft(uid, fd, last) and self._running(uid)
        ):
            if uid not in self._leftBehind:
                self._leftBehind.add(uid)
                self.log.warn(
                    "dynamic uid {uid} is not used: processes of it still run, {whose}",
                    uid=uid,
                    whose=(
                        "left by the server (pid {}) that locked it last".format(
                            last.split(b" ")[0].decode("ascii", "replace").strip()
                        )
                        if last
                        else "and its lock file was made anew (removed under a "
                        "server that held it?)"
                    ),
                )
            return True
        self._leftBehind.discard(uid)
        try:
            os.pwrite(fd, self._mark, 0)
            os.ftruncate(fd, len(self._mark))
        except OSError:
            pass  # (a full /run: the mark helps, it guarantees nothing)
        return False

    def _flock(self, uid: int) -> int | None:
        """C{uid}'s lock file, locked; None if another holds it."""
        fd = os.open(
            os.path.join(self._lockDir, str(uid)),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    def _runningNow(self, uid: int) -> bool:
        """
        Does a process of C{uid}, whose lock file is new, run? One scan of
        the whole range serves every new file met within
        L{SCAN_REUSED_FOR} (after a boot, each uid's first use); a uid it
        found running is looked for afresh (its processes may have gone).
        """
        now = self._now()
        scanned = self._scanned
        if scanned is None or not 0 <= now - scanned[0] < SCAN_REUSED_FOR:
            running = self._find(range(self.first, self.last + 1))
            scanned = self._scanned = (now, frozenset(running))
        return uid in scanned[1] and self._running(uid)

    def _running(self, uid: int) -> bool:
        """Does a process of C{uid} run (one scan of C{/proc})?"""
        return bool(self._find(range(uid, uid + 1)))

    def _find(self, uids: range) -> Collection[int]:
        """The uids of C{uids} that have a live process."""
        return (self._scan or processesByUid)(uids)

    def _mayHaveLeft(self, uid: int, fd: int, mark: bytes) -> bool:
        """May the server C{mark} names have left processes of C{uid} that
        this one's start did not see (looked for, one scan)? Not if it
        still runs (it gives a uid back once nothing of its job is left)."""
        try:
            pid, started = (int(field) for field in mark.split())
        except ValueError:
            pid = started = 0
        if pid > 0 and processStartTime(pid) == started:
            return False  # alive: what it gave back is empty
        if uid in self._heldByOthersAtStart:
            return True
        try:
            return os.fstat(fd).st_mtime >= self._startedAt
        except OSError:
            return True

    def _lockHeldAgain(self) -> None:
        """Lock each uid held in a new file (L{_lock}'s folder was remade)."""
        for uid, old in list(self._held.items()):
            try:
                fd = self._flock(uid)
            except OSError:
                continue
            if fd is None:
                continue  # another server took it first: nothing to do now
            self._held[uid] = fd
            os.close(old)

    def release(self, uid: int) -> None:
        """Give C{uid} back (only once nothing of its job is left)."""
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)
        self._verifyMore()

    @property
    def lockDir(self) -> str:
        """Where the uids' lock files are."""
        return self._lockDir

    @property
    def uids(self) -> range:
        """The whole range."""
        return range(self.first, self.last + 1)

    def reclaim(
        self,
        processes: dict[int, list[int]],
        kill: Callable[[list[int]], object],
        liveParent: Callable[[int, list[int]], bool] = lambda uid, pids: False,
    ) -> list[int]:
        """
        At start-up, given the live C{processes} of the range by uid: the
        uids left by a server that died, that no live server holds. Each is
        held (so it is not handed out) and its processes are killed; the
        caller releases it once they are gone.

        A uid whose lock no server holds but whose processes descend from a
        live parent (C{liveParent}: another server's job, whose lock file
        was removed under it by a cleaner of /run) is held for good and
        nothing of it killed (L{keptAside}): it killed that server's job.
        """
        found: list[int] = []
        for uid, pids in processes.items():
            if uid not in self.uids or uid in self._held:
                continue
            if not self._lock(uid, leftovers=False):
                # A live server's job (or a lock file that cannot be had):
                # what it leaves if that server dies is looked for.
                self._heldByOthersAtStart.add(uid)
                continue
            if liveParent(uid, pids):
                self.keptAside.append(uid)
                continue
            kill(pids)
            found.append(uid)
        return found


def ownGroup(identity: Identity) -> int | None:
    """
    C{identity}'s primary group, if it is its own (a dynamic uid's, or an
    account's that no other account has as its primary group or lists as a
    member), else None. A job's cgroup folder is readable by its group: a
    shared one (C{users}, a site-wide group) would let another account's
    jobs read it. Only the accounts the user database lists are seen.
    """
    if identity.dynamic:
        return identity.gid
    key = (identity.name, identity.gid)
    now = time.monotonic()
    known = _ownGroups.get(key)
    if known is not None and 0 <= now - known[1] < OWN_GROUP_KEPT:
        return known[0]
    try:
        members = grp.getgrgid(identity.gid).gr_mem
    except KeyError:
        members = []
    found: int | None = identity.gid
    if any(member != identity.name for member in members):
        found = None
    elif any(
        entry.pw_gid == identity.gid and entry.pw_name != identity.name
        for entry in pwd.getpwall()
    ):
        found = None
    if len(_ownGroups) >= 4096:
        _ownGroups.clear()
    _ownGroups[key] = (found, now)
    return found


#: How long L{ownGroup}'s answer for an account is kept (seconds): it reads
#: the whole user database, which a burst of jobs need not read each.
OWN_GROUP_KEPT = 60.0
_ownGroups: dict[tuple[str, int], tuple[int | None, float]] = {}


@dataclass
class Identities:
    """
    How a job's identity is chosen. A user's mapped account comes first;
    an unmapped user's jobs share C{shared} (C{--run-as}), else get a uid of
    their own from C{pool}, else run as the server's own user (a server not
    running as root, or C{--allow-root-jobs}).
    """

    shared: Identity | None = None
    pool: DynamicUids | None = None
    server: Identity = field(default_factory=Identity.ofServer)
    #: An account's identity by its name, as it is now (tests give theirs).
    lookUp: Callable[[str], Identity] = field(default=Identity.ofAccount)

    @property
    def switching(self) -> bool:
        """True when jobs may run as someone other than the server (root)."""
        return self.server.uid == 0

    def acquire(self, account: Identity | None) -> Identity:
        """
        The identity of a new job of a user mapped to C{account} (or not).
        An account (mapped, or the shared one) is looked up again by its
        name, as it is now: its uid could have gone to another account
        (C{userdel}, then C{useradd}) since the users file was read, and
        its groups could have changed.

        @raise PoolExhausted: a dynamic uid was needed and none is free.
        @raise IdentityError: the account cannot be used now (gone, say, or
            its uid or one of its groups in the dynamic uid range).
        """
        if account is not None or self.shared is not None:
            named = account if account is not None else self.shared
            assert named is not None
            found = self.lookUp(named.name)
            pool = self.pool
            clash = None if pool is None else inRange(found, pool.first, pool.last)
            if pool is not None and clash is not None:
                # (Refused at start-up too, if the user database lists it:
                # it would share a uid or group with another user's
                # dynamic jobs.)
                raise IdentityError(
                    f"Unix account {found.name!r} has {clash}, in "
                    f"--dynamic-uids ({pool.first}-{pool.last})"
                )
            shared = self.shared
            if named.ownPidNamespace or (shared and found.uid == shared.uid):
                # Several users' jobs run as this uid (see ownPidNamespace).
                return replace(found, ownPidNamespace=True)
            return found
        if self.pool is not None:
            return Identity.ofDynamicUid(self.pool.acquire())
        return self.server

    def release(self, identity: Identity) -> None:
        """Give a dynamic identity's uid back to the pool."""
        if identity.dynamic and self.pool is not None:
            self.pool.release(identity.uid)

    def sandboxed(self, identity: Identity) -> bool:
        """Does a job of C{identity} get the private /proc, /tmp and namespaces?"""
        return self.switching and identity.uid != 0

    def wouldSandbox(self, account: Identity | None) -> bool:
        """
        L{sandboxed} of the identity L{acquire} would give a job of a user
        mapped to C{account} now (as the users file read it), none taken.
        """
        named = account if account is not None else self.shared
        if named is not None:
            return self.sandboxed(named)
        if self.pool is not None:
            return self.switching  # (a dynamic uid is never 0)
        return self.sandboxed(self.server)
