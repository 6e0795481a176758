"""
The queue of jobs waiting to start: fair among users, then by priority,
then first come first served; jobs waiting on other jobs (C{after},
C{after_ok}) are held apart until those end. Pure: no I/O, no reactor.

The next job to start goes round the users that have a job ready: one of
alice's, then one of bob's, then alice's again, so one user's thousand jobs
never starve another's one. Within one user, the highest priority first,
then the oldest.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .identity import Identity
from .records import JobRecord, JobStatus

#: The range of a request's priority; the default is 0 and only Admins may
#: ask for more.
MIN_PRIORITY = -100
MAX_PRIORITY = 100

#: The one empty set of job ids all entries without dependencies share (an
#: empty frozenset built from a list is a new 216-byte object each time:
#: 43 MB for 100,000 queued jobs).
NO_JOBS: frozenset[str] = frozenset()


def jobIds(ids: Iterable[str]) -> frozenset[str]:
    """The job ids C{ids} as a set, the shared L{NO_JOBS} if there are none."""
    return frozenset(ids) or NO_JOBS


def dependencyFailure(dependency: JobRecord) -> str:
    """
    The error of a job that never runs because C{dependency}, one of its
    C{after_ok}, ended otherwise than COMPLETED (whichever executor held it).
    """
    return f"dependency {dependency.id} ended {dependency.status.value}"


@dataclass(eq=False, slots=True)
class Waiting:
    """
    One queued job: what its place needs, and what it still waits for. The
    record itself stays in the store until the job starts (a queue of
    100,000 costs memory per job, not per record).
    """

    jobId: str
    owner: str
    priority: int
    seq: int
    #: The owner's mapped Unix account, if any (the identity is chosen when
    #: the job starts: a dynamic uid is only taken then).
    account: Identity | None = None
    #: Jobs that must end first (any status), and end COMPLETED first.
    after: frozenset[str] = NO_JOBS
    afterOk: frozenset[str] = NO_JOBS
    #: Those of them that have not ended yet (a shared empty one if none:
    #: most jobs wait on nothing, and an empty set costs 200 bytes).
    waitingOn: set[str] | frozenset[str] = NO_JOBS

    @property
    def place(self) -> tuple[int, int, str]:
        """Order within one user: higher priority first, then older."""
        return (-self.priority, self.seq, self.jobId)


@dataclass(frozen=True)
class Resolution:
    """What the end of a job means for the jobs that waited on it."""

    #: Jobs now free of dependencies (ready to start when a slot frees).
    ready: list[Waiting]
    #: Jobs that can never run (an C{after_ok} job ended otherwise), with
    #: the reason.
    failed: list[tuple[Waiting, str]]


class FairQueue:
    """The waiting jobs, ready or blocked on dependencies."""

    def __init__(self) -> None:
        self._entries: dict[str, Waiting] = {}
        #: Per user, the ready jobs as sorted (key, job id): the first
        #: starts next.
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        #: Users with ready jobs, in turn order.
        self._turns: deque[str] = deque()
        #: For each job still running or queued, the jobs waiting on it.
        self._waiters: dict[str, dict[str, Waiting]] = {}
        self._byOwner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, jobId: object) -> bool:
        return jobId in self._entries

    def get(self, jobId: str) -> Waiting | None:
        """The queued job C{jobId}, if it is queued."""
        return self._entries.get(jobId)

    def queuedBy(self, owner: str) -> int:
        """How many jobs C{owner} has queued (ready or blocked)."""
        return self._byOwner.get(owner, 0)

    def owners(self) -> dict[str, int]:
        """How many jobs each user has queued."""
        return dict(self._byOwner)

    def add(self, waiting: Waiting, unfinished: Callable[[str], bool]) -> None:
        """
        Queue a job. C{unfinished(id)} says whether one of its dependencies
        has yet to end (those that have are not waited on).
        """
        dependencies = waiting.after | waiting.afterOk
        if dependencies:
            # (First: should it raise, nothing of the job is queued.)
            waiting.waitingOn = {d for d in dependencies if unfinished(d)} or NO_JOBS
        self._entries[waiting.jobId] = waiting
        self._count(waiting.owner, 1)
        if waiting.waitingOn:
            for dependency in waiting.waitingOn:
                self._waiters.setdefault(dependency, {})[waiting.jobId] = waiting
        else:
            self._makeReady(waiting)

    def _makeReady(self, waiting: Waiting) -> None:
        owner = waiting.owner
        ready = self._ready.setdefault(owner, [])
        bisect.insort(ready, waiting.place)
        if len(ready) == 1:
            self._turns.append(owner)

    def remove(self, jobId: str) -> Waiting | None:
        """Take a job out of the queue (stopped); None if it was not queued."""
        waiting = self._entries.pop(jobId, None)
        if waiting is None:
            return None
        self._count(waiting.owner, -1)
        if waiting.waitingOn:
            for dependency in waiting.waitingOn:
                # By id: a search of the list compared entries field by
                # field, and failing a user's queue held the reactor for
                # seconds (attacker round 12).
                waiters = self._waiters.get(dependency)
                if waiters is not None:
                    waiters.pop(jobId, None)
                    if not waiters:
                        del self._waiters[dependency]
        else:
            self._dropReady(waiting)
        return waiting

    def _dropReady(self, waiting: Waiting) -> None:
        owner = waiting.owner
        ready = self._ready[owner]
        entry = waiting.place
        index = bisect.bisect_left(ready, entry)
        if index < len(ready) and ready[index] == entry:
            del ready[index]
        if not ready:
            del self._ready[owner]
            self._turns.remove(owner)

    def _count(self, owner: str, change: int) -> None:
        count = self._byOwner.get(owner, 0) + change
        if count:
            self._byOwner[owner] = count
        else:
            self._byOwner.pop(owner, None)

    def anyReady(self, mayStart: Callable[[str], bool]) -> bool:
        """Is a job ready that C{mayStart(user)} would let start now?"""
        return any(mayStart(owner) for owner in self._turns)

    def next(
        self,
        mayStart: Callable[[str], bool],
        accept: Callable[[Waiting], bool] | None = None,
    ) -> Waiting | None:
        """
        Take the next job to start: the users with a ready job in turn,
        skipping those C{mayStart(user)} refuses (at their running limit),
        and those whose next job C{accept} refuses; within the user, by
        priority then age. None: nothing may start.
        """
        for _ in range(len(self._turns)):
            owner = self._turns[0]
            self._turns.rotate(-1)
            if not mayStart(owner):
                continue
            jobId = self._ready[owner][0][2]
            if accept is not None and not accept(self._entries[jobId]):
                continue
            waiting = self._entries.pop(jobId)
            self._count(owner, -1)
            self._dropReady(waiting)
            return waiting
        return None

    def ended(self, record: JobRecord) -> Resolution:
        """A job ended: free or fail the jobs that waited on it."""
        ready: list[Waiting] = []
        failed: list[tuple[Waiting, str]] = []
        for waiting in self._waiters.pop(record.id, {}).values():
            if waiting.jobId not in self._entries:
                continue
            if (
                record.id in waiting.afterOk
                and record.status is not JobStatus.COMPLETED
            ):
                self.remove(waiting.jobId)
                failed.append((waiting, dependencyFailure(record)))
                continue
            waiting.waitingOn = set(waiting.waitingOn) - {record.id} or NO_JOBS
            if not waiting.waitingOn:
                self._makeReady(waiting)
                ready.append(waiting)
        return Resolution(ready, failed)

    def position(self, jobId: str) -> tuple[int, int]:
        """
        Where a ready job stands among its owner's ready jobs: (1-based
        place, how many). Users take turns, so that is what it waits for.
        """
        waiting = self._entries[jobId]
        ready = self._ready.get(waiting.owner, [])
        place = bisect.bisect_left(ready, waiting.place) + 1
        return place, len(ready)

    def reason(self, jobId: str) -> str | None:
        """Why a queued job waits, for its record's C{pending_reason}."""
        waiting = self._entries.get(jobId)
        if waiting is None:
            return None
        if waiting.waitingOn:
            return f"waiting for job {min(waiting.waitingOn)}"
        place, count = self.position(jobId)
        return (
            f"queued: position {place} of {count} of {waiting.owner}'s, "
            f"{len(self._turns)} user(s) taking turns"
        )

    def entries(self) -> Iterable[Waiting]:
        """Every queued job."""
        return self._entries.values()
