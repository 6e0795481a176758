"""
The queue's life in the server: who waits on a queued job (its end, its
start), taking queued jobs out in turn when slots free, and the jobs that
end without running (stopped while queued, or a failed C{after_ok}). The
order itself is L{FairQueue}'s; starting a job is the manager's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..relay import relay
from .executor import LiveJob
from .queue import NO_JOBS, FairQueue, Waiting
from .records import JobRecord, JobStatus
from .store import RecordDamaged, StoreError


class NoUid:
    """
    What a queued job's start answers when it needs a dynamic uid and none
    is free (L{NO_UID}): false, as a start refused for the server's reason,
    but other users' jobs of mapped accounts may start (L{Scheduler.dispatch}).
    """

    def __bool__(self) -> bool:
        return False


NO_UID = NoUid()

#: What a queued job whose failure could not be recorded yet waits on.
FAILING = "(its failure, to be recorded)"

#: Queued jobs failed in one reactor turn at most (a dependency failed):
#: each is a store read and write, and 10,000 of them, queued after_ok on
#: one job by one user, held every request for 2 s (attacker round 29).
#: The rest wait in the queue, held, for the next turns (L{Scheduler.nextTurn}).
FAIL_SLICE = 200


class Scheduler:
    """
    The queued jobs of one manager and those waiting on them.

    @param start: starts a queued job now; False if it could not be started
        yet (no identity free): then it is queued again, first of its user.
    @param mayStartMore: whether a slot is free (the server's cap).
    @param mayStart: whether this user may start one more (their cap).
    @param finished: records a queued job's end (store, metrics).
    @param load: a queued job's record, from the store.
    @param later: call L{dispatch} again in a while (a job's record could
        not be read).
    @param soon: call L{nextTurn} at the reactor's next turn.
    @param now: the time.
    """

    log = Logger()

    def __init__(
        self,
        start: Callable[[Waiting], bool | NoUid],
        mayStartMore: Callable[[], bool],
        mayStart: Callable[[str], bool],
        finished: Callable[[JobRecord], None],
        load: Callable[[str], JobRecord],
        later: Callable[[], None],
        now: Callable[[], float],
        soon: Callable[[], None],
    ) -> None:
        self.queue = FairQueue()
        self._later = later
        self._soon = soon
        #: Queued jobs this turn may still fail (L{FAIL_SLICE}); given back
        #: at the next turn (L{nextTurn}), asked for once it runs out.
        self._failBudget = FAIL_SLICE
        self._now = now
        #: Jobs out of the queue to be failed, whose records could not be
        #: read yet: (entry, error, when).
        self._failing: list[tuple[Waiting, str, float]] = []
        self._start = start
        self._mayStartMore = mayStartMore
        self._mayStart = mayStart
        self._finished = finished
        self._load = load
        self._endWaiters: dict[str, list[Deferred[JobRecord]]] = {}
        self._startWaiters: dict[str, list[Deferred[None]]] = {}
        self._dispatching = False
        self._again = False
        #: Ends whose waiters are still to be freed or failed (L{jobEnded}),
        #: and whether a call is taking them in now.
        self._endings: deque[tuple[JobRecord, float]] = deque()
        self._resolving = False
        self.paused = False

    # -- waiting on queued jobs ------------------------------------------------

    def whenEnded(self, jobId: str) -> Deferred[JobRecord]:
        """Fires with a queued job's final record (after it ran, or not)."""
        waiters = self._endWaiters.setdefault(jobId, [])
        d: Deferred[JobRecord] = Deferred(waiters.remove)
        waiters.append(d)
        return d

    def whenStarted(self, jobId: str) -> Deferred[None]:
        """Fires once a queued job started, or ended without starting."""
        if jobId not in self.queue:
            return succeed(None)
        waiters = self._startWaiters.setdefault(jobId, [])
        d: Deferred[None] = Deferred(waiters.remove)
        waiters.append(d)
        return d

    def started(self, jobId: str, job: LiveJob) -> None:
        """A queued job started as C{job}: hand its waiters over."""
        for started in self._startWaiters.pop(jobId, []):
            started.callback(None)
        for ended in self._endWaiters.pop(jobId, []):
            relay(job.whenEnded(), ended)

    def _ended(self, record: JobRecord) -> None:
        for started in self._startWaiters.pop(record.id, []):
            started.callback(None)
        for ended in self._endWaiters.pop(record.id, []):
            ended.callback(record)

    # -- ends ------------------------------------------------------------------

    def stop(self, jobId: str, by: str, when: float) -> JobRecord | None:
        """
        Stop a queued job: STOPPED, never started. None if not queued.

        @raise StoreError: its record cannot be read; it stays queued.
        """
        if jobId not in self.queue:
            return None
        record, damage = self._readable(jobId)
        self.queue.remove(jobId)
        record.stopped_by = by
        self._end(record, JobStatus.STOPPED, when, "stopped while queued" + damage)
        self.dispatch()
        return record

    def fail(self, waiting: Waiting, error: str, when: float) -> None:
        """
        A queued job that cannot start (out of the queue): FAILED, with why;
        at the next L{dispatch} if its record cannot be read now.
        """
        try:
            record, damage = self._readable(waiting.jobId)
        except StoreError:
            self._hold(waiting, error, when)
            self._later()
            return
        self._end(record, JobStatus.FAILED, when, error + damage)

    def _hold(self, waiting: Waiting, error: str, when: float) -> None:
        """
        Back in the queue, held (waiting on its own failure), to be failed
        at a later L{dispatch}: it is still there to stop, and to wait for,
        and never starts.
        """
        held = replace(waiting, after=waiting.after | {FAILING}, waitingOn=NO_JOBS)
        self.queue.add(held, lambda jobId: jobId == FAILING)
        self._failing.append((held, error, when))

    def _failInTurn(self, waiting: Waiting, error: str, when: float) -> None:
        """L{fail}, if this turn may fail one more; else held for a later one."""
        if self._failBudget > 0:
            self._failBudget -= 1
            self.fail(waiting, error, when)
            return
        self._hold(waiting, error, when)
        if self._failBudget == 0:
            self._failBudget = -1  # (the next turn asked for, once)
            self._soon()

    def nextTurn(self) -> None:
        """A new reactor turn: its queued jobs to fail, then L{dispatch}."""
        self._failBudget = FAIL_SLICE
        self.dispatch()

    def _readable(self, jobId: str) -> tuple[JobRecord, str]:
        """
        A queued job's record, to end it with, and what its error says
        besides: nothing; or, if its record is damaged (L{RecordDamaged}),
        what could be read of it (written back whole as it ends, what did
        not parse empty) and a word on the damage.

        @raise StoreError: its record cannot be read now.
        """
        try:
            return self._load(jobId), ""
        except RecordDamaged as e:
            record = e.record
        self.log.error(
            "queued job {job} (seq {seq}): its stored record is damaged "
            "({problem}; it held {text}): ended, written back without it",
            job=jobId,
            seq=record.seq,
            problem=record.problem,
            text=record.text or "nothing quoted",
        )
        record.status = JobStatus.PENDING  # (queued, whatever its row says)
        return record, f" ({record.note})"

    def _end(
        self, record: JobRecord, status: JobStatus, when: float, error: str
    ) -> None:
        record.queued = False
        record.pending_reason = None
        record.finish(status, when, error=error)
        self._finished(record)
        self._ended(record)
        self.jobEnded(record, when)

    def jobEnded(self, record: JobRecord, when: float) -> None:
        """
        Any job ended: the jobs that waited on it may start, or fail. A
        failed one's own end comes back here: it is taken in turn, not
        within this call (a chain of after_ok jobs went one stack frame
        deeper a link, and broke at some 320, leaving jobs out of the queue
        but never ended: attacker round 11).
        """
        self._endings.append((record, when))
        if self._resolving:
            return  # (this end's turn comes in the loop below, running)
        self._resolving = True
        try:
            while self._endings:
                record, when = self._endings.popleft()
                try:
                    self._resolve(record, when)
                except Exception:
                    self.log.failure(
                        "job {job}: the jobs that waited on it cannot be told",
                        job=record.id,
                    )
        finally:
            self._resolving = False

    def _resolve(self, record: JobRecord, when: float) -> None:
        """Free or fail the jobs that waited on C{record}'s job, each alone."""
        for waiting, reason in self.queue.ended(record).failed:
            try:
                self._failInTurn(waiting, reason, when)
            except Exception:
                self.log.failure(
                    "queued job {job}: cannot be failed ({reason})",
                    job=waiting.jobId,
                    reason=reason,
                )

    # -- starting --------------------------------------------------------------

    def dispatch(self) -> None:
        """Start queued jobs while slots are free (re-entrant calls coalesce)."""
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            failing, self._failing = self._failing, []
            for index, (entry, error, when) in enumerate(failing):
                if self._failBudget <= 0:
                    # The rest at the next turns (they stay held meanwhile).
                    self._failing.extend(failing[index:])
                    if self._failBudget == 0:
                        self._failBudget = -1
                        self._soon()
                    break
                if self.queue.remove(entry.jobId) is not None:  # not stopped since
                    self._failBudget -= 1
                    self.fail(entry, error, when)
            self._again = True
            #: Once a job could not have a dynamic uid (none free) in this
            #: pass, only jobs of mapped accounts, which need none, may
            #: start in it, each user's once: one such job held every
            #: other user's back a retry, a slot free (code review 36). Any
            #: other refusal is the whole server's (the store, no process
            #: slot, Slurm): the pass ends, as it did.
            refused: set[str] = set()
            noUid = False

            def mayStart(owner: str) -> bool:
                return owner not in refused and self._mayStart(owner)

            def needsNone(waiting: Waiting) -> bool:
                return not noUid or waiting.account is not None

            while self._again:
                self._again = False
                while not self.paused and self._mayStartMore():
                    waiting = self.queue.next(mayStart, needsNone)
                    if waiting is None:
                        break
                    try:
                        started = self._start(waiting)
                    except RecordDamaged:
                        # It can never start: failed now. (Put back first in
                        # line, it came first again at every try, and every
                        # job behind it waited for ever.)
                        self.fail(waiting, "cannot start", self._now())
                        continue
                    except Exception:
                        # A bug, or a failure nobody foresaw: the job stays
                        # queued (it was in no queue any more), tried again.
                        self.log.failure(
                            "queued job {job} could not be started", job=waiting.jobId
                        )
                        started = False
                        self._later()
                    if started is NO_UID:
                        self.queue.add(waiting, lambda jobId: False)
                        refused.add(waiting.owner)
                        noUid = True
                    elif not started:
                        self.queue.add(waiting, lambda jobId: False)
                        break
        finally:
            self._dispatching = False
