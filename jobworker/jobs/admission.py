"""
How jobs are admitted: started at once, queued (PENDING) behind the
server's or the user's running limit or their dependencies, or ended at once
(a failed C{after_ok}); starting queued jobs when a slot frees; the queue
again after a restart; the creation rate. The half of the L{JobManager
<jobworker.jobs.manager.JobManager>} that decides where a new job goes; the
manager keeps the registry (find, stop, delete, ends, the store write).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import (
    BadRequest,
    CannotStartNow,
    JobworkerError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from ..metrics import Metrics
from .buckets import TokenBuckets
from .draining import DRAIN_RETRY_AFTER, Draining
from .executor import Executor, LiveJob, OwnerCheck
from .identity import Identity, IdentityError
from .limits import Limits
from .placement import SlurmRequest
from .policy import JobPolicy, JobReactor
from .queue import Waiting, dependencyFailure, jobIds
from .records import JobRecord, JobStatus
from .scheduling import NO_UID, NoUid, Scheduler
from .store import JobStore, QueuedEntry, StoreError
from .validation import JobRequest

#: Seconds before queued jobs are tried again after the store refused one.
DISPATCH_RETRY = 1.0

#: The C{Retry-After} of a job refused because the server is shutting down
#: (a restart is the likely next thing: a supervisor's restart delay plus
#: the stop grace of the jobs it is waiting for).
SHUTDOWN_RETRY_AFTER = 10

#: The C{Retry-After} of a job refused past a queue cap (--max-queued, or the
#: user's): room comes only once a queued job starts or is removed, not in a
#: second (jw said "retry in 1 s": operator round 40).
QUEUE_FULL_RETRY_AFTER = 10


def createBurst(rate: float) -> float:
    """The most jobs one user may create at once under C{--create-rate}."""
    return max(1.0, 2 * rate)


class Admission:
    """
    Where a new job goes, and when a queued one starts. Mixed into
    L{JobManager<jobworker.jobs.manager.JobManager>}, which provides the
    attributes and the registry methods declared here.
    """

    log = Logger()

    _reactor: JobReactor
    _executor: Executor
    _store: JobStore
    _policy: JobPolicy
    _metrics: Metrics
    _scheduler: Scheduler
    _bootId: str | None
    _shuttingDown: bool
    _drain: Draining
    _running: int
    _runningBy: dict[str, int]
    _live: dict[str, LiveJob]
    _createBuckets: TokenBuckets | None
    _held: dict[str, tuple[float, str]]
    _stdinClosedEarly: set[str]
    _ownerCheck: OwnerCheck | None
    _dispatchTimer: IDelayedCall | None = None
    #: Told each queued job that starts, and how long it waited (the audit
    #: log's C{job.start}).
    queuedStarted: Callable[[JobRecord, float], object] | None = None
    _nextTurnTimer: IDelayedCall | None = None

    def record(self, jobId: str) -> JobRecord:
        raise NotImplementedError  # the manager's

    def _stored(self, jobId: str) -> JobRecord:
        raise NotImplementedError  # the manager's

    def _find(self, jobId: str) -> JobRecord | None:
        raise NotImplementedError  # the manager's

    def _watch(self, job: LiveJob) -> None:
        raise NotImplementedError  # the manager's

    def _storeFinal(self, record: JobRecord) -> None:
        raise NotImplementedError  # the manager's

    def _storeOrKeep(self, record: JobRecord, what: str) -> None:
        raise NotImplementedError  # the manager's

    def create(
        self, request: JobRequest, owner: str, account: Identity | None = None
    ) -> JobRecord:
        """
        Start a job for C{owner}, whose Unix account (users file) is
        C{account}. A command that cannot start gives a FAILED job, not an
        error.

        @raise CannotStartNow: the server cannot start a process now (no
            descriptor or process slot): nothing is stored.
        @raise ServiceUnavailable: the server is shutting down, or drains.
        """
        if self._shuttingDown:
            self._refused("shutting_down")
            raise ServiceUnavailable(
                "the server is shutting down", retryAfter=SHUTDOWN_RETRY_AFTER
            )
        if self._drain.on:
            self._refused("draining")
            raise ServiceUnavailable(
                "the server is draining (an Admin's POST /drain: it is to be "
                "restarted once its running jobs end): it takes no new job "
                "until the drain ends",
                retryAfter=DRAIN_RETRY_AFTER,
            )
        self._takeCreateToken(owner)
        try:
            return self._admit(request, owner, account)
        except ServiceUnavailable as e:
            # The server's trouble (no process to be had, a store that
            # cannot record the job, Slurm out of reach): the user's try is
            # not counted (a store's refusal took a token: stop 54's note).
            if isinstance(e, CannotStartNow):
                self._metrics.startsDeferred.inc()
            self._refundCreateToken(owner)
            raise

    def _admit(
        self, request: JobRequest, owner: str, account: Identity | None
    ) -> JobRecord:
        """L{create}, once the creation rate allowed it."""
        executor = self._executor
        limits = executor.limitsFor(request.limits)
        timeout = request.timeout or self._policy.defaultTimeout
        if request.slurm is not None and executor.name != "slurm":
            raise BadRequest(
                '"slurm" options are for a server whose jobs run in Slurm (one '
                "started with --executor slurm); this one runs them on its own "
                "machine"
            )
        dependencies = self._dependencies(request)
        failedDependency = next(
            (
                dependencyFailure(d)
                for d in dependencies
                if d.id in request.after_ok
                and d.status.ended
                and d.status is not JobStatus.COMPLETED
            ),
            None,
        )
        unended = [d for d in dependencies if not d.status.ended]
        waits = bool(unended) and not self._executorHolds(unended)
        if failedDependency is not None or waits or not self._mayStartNow(owner):
            executor.checkQueued(request, account)
            # (Its timeout as asked: one it did not ask for is the default
            # of its turn, as its limits are: code review 38.)
            return self._enqueue(
                request, owner, account, limits, request.timeout, failedDependency
            )
        identity = executor.identityFor(owner, account)
        try:
            executor.checkRequest(request, identity)
        except Exception:
            executor.release(identity)
            raise
        record = self._newRecord(request, owner, limits, timeout)
        record.env = {**executor.environment(identity), **request.env}
        record.run_as = identity.label
        try:
            job = executor.launch(record, request, limits, timeout, identity)
        except CannotStartNow as e:
            self.log.warn(
                "a job of {user} was not started: {error}", user=owner, error=e.message
            )
            raise
        try:
            self._store.insert(record)
        except StoreError as e:
            # Never leave a process the store does not know about.
            job.abort(str(e))
            self.log.error("{error}", error=str(e))
            raise ServiceUnavailable(
                f"the job could not be recorded: {e.reason}"
            ) from None
        job.recorded()
        if record.status.ended:
            self._metrics.spawnFailures.inc()
            self._metrics.jobEnded(record.status.value)
        else:
            self._metrics.jobsStarted.inc()
            self._observeStart(record)
            self._watch(job)
        return record

    def _observeStart(self, record: JobRecord) -> None:
        """A job's creation to its start, in C{jobworker_job_start_seconds}
        (none measured a job started at once: operator round 40)."""
        if record.started_at is not None:
            self._metrics.startSeconds.observe(
                max(0.0, record.started_at - record.created_at)
            )

    def _newRecord(
        self,
        request: JobRequest,
        owner: str,
        limits: Limits,
        timeout: float | None,
    ) -> JobRecord:
        return JobRecord(
            id=str(uuid.uuid4()),
            command=request.command,
            args=list(request.args),
            owner=owner,
            created_at=self._reactor.seconds(),
            cwd=request.cwd,
            boot_id=self._bootId,
            limits=self._executor.recordedLimits(limits),
            timeout_seconds=timeout,
            executor=self._executor.name,
            name=request.name,
            labels=dict(request.labels),
            stdin=request.stdin,
            priority=request.priority,
            after=list(request.after),
            after_ok=list(request.after_ok),
            slurm={} if request.slurm is None else request.slurm.given(),
        )

    def _dependencies(self, request: JobRequest) -> list[JobRecord]:
        """The jobs a request waits for; an unknown id is a 400."""
        found = []
        for jobId in (*request.after, *request.after_ok):
            try:
                found.append(self.record(jobId))
            except NotFound:
                raise BadRequest(f"no job {jobId} to wait for") from None
        return found

    def _executorHolds(self, unended: list[JobRecord]) -> bool:
        """
        Whether the executor holds a new job until C{unended} end (Slurm's
        C{--dependency}), so that it is handed over at once. Never while a
        running cap is set: then the queue decides when a job is handed over.
        """
        return not self._policy.capsRunning and self._executor.holdsDependencies(
            unended
        )

    # -- the queue -------------------------------------------------------------

    def _mayStartMore(self) -> bool:
        cap = self._policy.maxRunning
        return (
            not self._shuttingDown
            and not self._drain.on
            and (cap is None or self._running < cap)
        )

    def _mayStart(self, owner: str) -> bool:
        cap = self._policy.maxRunningPerUser
        return cap is None or self._runningBy[owner] < cap

    def _mayStartNow(self, owner: str) -> bool:
        # Never ahead of a queued job that may start (one held back for a
        # second: the server could not start it at its turn).
        return (
            self._mayStartMore()
            and self._mayStart(owner)
            and not self._scheduler.queue.anyReady(self._mayStart)
        )

    def _enqueue(
        self,
        request: JobRequest,
        owner: str,
        account: Identity | None,
        limits: Limits,
        timeout: float | None,
        failedDependency: str | None,
    ) -> JobRecord:
        """
        Keep a job that cannot start now in the queue (in the store too,
        PENDING), or record it FAILED at once if a dependency already failed.

        @raise TooManyRequests: past C{--max-queued} or the per-user cap.
        """
        queue = self._scheduler.queue
        policy = self._policy
        if failedDependency is None:
            if len(queue) >= policy.maxQueued:
                self._refused("queue_full")
                raise TooManyRequests(
                    f"{len(queue)} jobs are queued, the most this server allows "
                    "(--max-queued): one more may wait once a queued job starts "
                    "or is removed",
                    retryAfter=QUEUE_FULL_RETRY_AFTER,
                )
            if queue.queuedBy(owner) >= policy.maxQueuedPerUser:
                self._refused("user_queue_full")
                raise TooManyRequests(
                    f"you have {queue.queuedBy(owner)} jobs queued, the most one "
                    "user may (--max-queued-per-user): one more may wait once "
                    "one of them starts or is removed",
                    retryAfter=QUEUE_FULL_RETRY_AFTER,
                )
        record = self._newRecord(request, owner, limits, timeout)
        record.env = dict(request.env)
        record.run_as = account.label if account is not None else None
        record.status = JobStatus.PENDING
        record.queued = True
        record.asked_limits = dict(request.limits.given())
        if failedDependency is not None:
            record.queued = False
            record.env = {}
            record.finish(JobStatus.FAILED, record.created_at, error=failedDependency)
        # Which dependencies it waits on, read before the record is stored:
        # a read that failed after it left a job the client was told had
        # failed, stored and in no queue (a review).
        unfinished = (
            set()
            if record.status.ended
            else {
                jobId
                for jobId in (*request.after, *request.after_ok)
                if not self.record(jobId).status.ended
            }
        )
        try:
            self._store.insert(record)
        except StoreError as e:
            self.log.error("{error}", error=str(e))
            raise ServiceUnavailable(
                f"the job could not be recorded: {e.reason}"
            ) from None
        if record.status.ended:
            self._metrics.jobEnded(record.status.value)
            self.log.info(
                "job {job} of {user} ended {status} without running: {error}",
                job=record.id,
                user=owner,
                status=record.status.value,
                error=record.error,
            )
            return record
        assert record.seq is not None
        entry = Waiting(
            record.id,
            owner,
            record.priority,
            record.seq,
            account,
            jobIds(request.after),
            jobIds(request.after_ok),
        )
        queue.add(entry, unfinished.__contains__)
        record.pending_reason = queue.reason(record.id)
        # (Its reason begins "queued: ..." as a rule: the line read
        # "queued: queued: ...", operator round 41.)
        self.log.info(
            "job {job} of {user} {reason}",
            job=record.id,
            user=owner,
            reason=record.pending_reason,
        )
        return record

    def _limitsAtItsTurn(self, record: JobRecord) -> Limits:
        """
        The limits a queued job starts with: those it asked for, the
        server's defaults (as they are now) filling the rest, each within
        the server's bounds as they are now. (The record held the limits of
        the server that queued it: a job queued without cgroups ran without
        limits on a server restarted with them, one over a maximum lowered
        since ran over it; late review 35.)

        @raise BadRequest: what it asked for is refused now.
        """
        asked = record.asked_limits
        if asked is not None or record.limits is None:
            # (No limits stored, none kept: queued where no limit could be
            # asked for, without cgroups.)
            return self._executor.limitsFor(Limits(**(asked or {})))
        # Queued by a server that did not keep what it asked for (schema 8):
        # its disk rates checked against the server's rules as they are now
        # (a job queued at 1 byte/s started at 1 byte/s, session review
        # 35), not its other limits, which may be the defaults of its time.
        stored = Limits(**record.limits)
        rates = Limits(io_read_bps=stored.io_read_bps, io_write_bps=stored.io_write_bps)
        self._policy.checkMaxima(rates)
        self._policy.checkFloor(rates)
        return stored

    def _startQueued(self, waiting: Waiting) -> bool | NoUid:
        """
        Start a queued job now; False to keep it queued, and try again in a
        while (no identity free, the store unreadable, no process to be had).
        """
        try:
            record = self._stored(waiting.jobId)
        except StoreError as e:
            self.log.error(
                "job {job} stays queued: {error}", job=waiting.jobId, error=str(e)
            )
            self._dispatchLater()
            return False
        account = waiting.account
        check = self._ownerCheck
        if check is not None:
            why, account = check(record.owner, record.run_as)
            if why is not None:
                # Queued before its owner was removed, demoted or mapped to
                # another account: it starts only as a new request would.
                self._scheduler.fail(
                    waiting, f"cannot start: {why}", self._reactor.seconds()
                )
                return True
            # (The account as the users file has it now: one that several
            # users are mapped to gives each job a PID namespace, which an
            # account looked up again by its name after a restart lost.)
        executor = self._executor
        try:
            limits = self._limitsAtItsTurn(record)
        except BadRequest as e:
            self._scheduler.fail(
                waiting, f"cannot start: {e.message}", self._reactor.seconds()
            )
            return True
        try:
            identity = executor.identityFor(record.owner, account)
        except (TooManyRequests, CannotStartNow) as e:
            # A uid comes back once nothing of its last job is left: that
            # may be after the end that called this. (Or no descriptor
            # was left to take one.)
            self._holdBack(record.id, e.message)
            # (No uid free: a job of a mapped account may start meanwhile.)
            return NO_UID if isinstance(e, TooManyRequests) else False
        except JobworkerError as e:
            # Its account cannot be used now (removed since it was queued).
            self._scheduler.fail(
                waiting, f"cannot start: {e.message}", self._reactor.seconds()
            )
            return True
        request = JobRequest(
            command=record.command,
            args=list(record.args),
            env=dict(record.env),
            cwd=record.cwd,
            limits=limits,
            timeout=record.timeout_seconds or self._policy.defaultTimeout,
            name=record.name,
            labels=dict(record.labels),
            stdin=record.stdin,
            slurm=SlurmRequest.fromGiven(record.slurm) if record.slurm else None,
        )
        now = self._reactor.seconds()
        try:
            executor.checkRequest(request, identity)
        except ServiceUnavailable as e:
            # The server's trouble, not the job's (Slurm out of reach): it
            # waits for its next try. (It was FAILED "try again later", to
            # nobody: its client had its 201 long before; code review 34.)
            executor.release(identity)
            self._holdBack(record.id, e.message)
            return False
        except JobworkerError as e:
            executor.release(identity)
            self._scheduler.fail(waiting, f"cannot start: {e.message}", now)
            return True
        queuedAs = (record.env, record.run_as, record.limits, record.timeout_seconds)

        def requeue() -> None:
            # (The record may be the one kept in memory: see _storeOrKeep.)
            record.env, record.run_as, record.limits, record.timeout_seconds = queuedAs
            record.status = JobStatus.PENDING
            record.queued = True

        record.env = {**executor.environment(identity), **request.env}
        record.run_as = identity.label
        record.limits = executor.recordedLimits(limits)
        record.timeout_seconds = request.timeout
        record.status = JobStatus.RUNNING
        record.queued = False
        record.pending_reason = None
        try:
            # Stored as started before anything runs: a store that cannot
            # take it (a full disk) keeps the job queued, to be tried again,
            # instead of failing it for good.
            self._store.update(record)
        except StoreError as e:
            executor.release(identity)
            requeue()
            self.log.error(
                "job {job} stays queued: {error}", job=record.id, error=str(e)
            )
            self._dispatchLater()
            return False
        try:
            job = executor.launch(
                record, request, request.limits, request.timeout, identity
            )
        except CannotStartNow as e:
            # The server's trouble, not the job's: it waits its turn again.
            requeue()
            self.log.warn(
                "job {job} stays queued: {error}", job=record.id, error=e.message
            )
            self._storeOrKeep(record, "stays queued")
            self._holdBack(record.id, e.message)
            return False
        self._held.pop(record.id, None)
        self._metrics.pendingSeconds.observe(max(0.0, now - record.created_at))
        try:
            self._store.update(record)
        except StoreError as e:
            job.abort(str(e))
            self.log.error("{error}", error=str(e))
        job.recorded()
        if record.id in self._stdinClosedEarly and not record.status.ended:
            self._closeStdinAtStart(job)
        if record.status.ended:
            self._metrics.spawnFailures.inc()
            self._scheduler.started(record.id, job)
            self._queuedEnded(record)
            self._scheduler.jobEnded(record, now)
        else:
            self._metrics.jobsStarted.inc()
            self._observeStart(record)
            self._watch(job)
            self._scheduler.started(record.id, job)
            # Who it runs as, known only now: its job.create line said
            # none, and once --retain removed the record nothing tied the
            # uid to the job (operator round 41).
            waited = max(0.0, now - record.created_at)
            self.log.info(
                "queued job {job} of {user} started as {run_as} after {waited:.1f} s",
                job=record.id,
                user=record.owner,
                run_as=record.run_as,
                waited=waited,
            )
            if self.queuedStarted is not None:
                self.queuedStarted(record, waited)
        return True

    def _holdBack(self, jobId: str, why: str) -> None:
        """
        A queued job's turn came and the server could not start it: it
        stays queued, says why (its C{pending_reason}), and is tried again
        in L{DISPATCH_RETRY} seconds.
        """
        self._metrics.startsDeferred.inc()
        self._held[jobId] = (
            self._reactor.seconds(),
            f"held: the server cannot start it now ({why}); tried again every "
            f"{DISPATCH_RETRY:g} s",
        )
        self._dispatchLater()

    def _heldReason(self, jobId: str) -> str | None:
        """
        Why a queued job is held, if its last try was held back and there
        was no try since: past the next one it waits for something else
        (its turn, its user's limit), which the queue says.
        """
        held = self._held.get(jobId)
        if held is None:
            return None
        when, why = held
        if self._reactor.seconds() - when > 2 * DISPATCH_RETRY:
            del self._held[jobId]
            return None
        return why

    def _dispatchLater(self) -> None:
        """Start queued jobs again in a while (one could not start now)."""
        timer = self._dispatchTimer
        if (timer is None or not timer.active()) and not self._shuttingDown:
            self._dispatchTimer = self._reactor.callLater(
                DISPATCH_RETRY, self._scheduler.dispatch
            )

    def _dispatchSoon(self) -> None:
        """The queue's next slice of jobs to fail, at the reactor's next turn."""
        timer = self._nextTurnTimer
        if (timer is None or not timer.active()) and not self._shuttingDown:
            self._nextTurnTimer = self._reactor.callLater(0, self._scheduler.nextTurn)

    def _closeStdinAtStart(self, job: LiveJob) -> None:
        """A queued job whose stdin was closed before its start: closed now."""
        jobId = job.record.id
        self._stdinClosedEarly.discard(jobId)
        closing = job.writeStdin(b"", True, 0)

        def failed(failure: Failure) -> None:
            self.log.error(
                "job {job}: its stdin, closed before it started, cannot be "
                "closed: {error}",
                job=jobId,
                error=failure.getErrorMessage(),
            )

        closing.addErrback(failed)

    def _queuedEnded(self, record: JobRecord) -> None:
        """A queued job ended without running: store it, count it, say it
        (the log said nothing: operator round 41)."""
        self._held.pop(record.id, None)
        self._stdinClosedEarly.discard(record.id)
        self._storeFinal(record)
        self._metrics.jobEnded(record.status.value)
        self.log.info(
            "queued job {job} of {user} ended {status} without running: {error}",
            job=record.id,
            user=record.owner,
            status=record.status.value,
            error=record.error or "no reason given",
        )

    def _refused(self, reason: str) -> None:
        """A new job refused, for C{reason}: counted (they were all one
        C{429} or C{503} of C{POST /jobs}: operator round 41)."""
        self._metrics.refused.labels(reason).inc()

    def whenStarted(self, jobId: str) -> Deferred[None]:
        """Fires once a job has started (at once unless it is queued)."""
        return self._scheduler.whenStarted(jobId)

    def _takeCreateToken(self, owner: str) -> None:
        """
        The per-user creation rate limit (a token bucket: C{createRate} per
        second, bursts of twice that).

        @raise TooManyRequests: with the seconds until the next token.
        """
        buckets = self._createBuckets
        if buckets is None:
            return
        wait = buckets.take(owner, self._reactor.seconds())
        if wait > 0:
            self._refused("create_rate")
            raise TooManyRequests(
                f"you are creating jobs faster than {buckets.rate:g} a second",
                retryAfter=max(1, math.ceil(wait)),
            )

    def _failedBefore(
        self, entry: QueuedEntry, unfinished: Callable[[str], bool]
    ) -> JobRecord | None:
        """One of C{entry}'s after_ok jobs that has ended otherwise than
        COMPLETED, if any."""
        for jobId in entry.afterOk:
            if unfinished(jobId):
                continue
            found = self._find(jobId)
            if found is not None and found.status is not JobStatus.COMPLETED:
                return found
        return None

    def _refundCreateToken(self, owner: str) -> None:
        """Give back the token a creation the server could not make took."""
        if self._createBuckets is not None:
            self._createBuckets.giveBack(owner)

    def _requeue(self, entries: list[QueuedEntry]) -> None:
        """After a restart: the queue as it was, in order, then start what may."""
        waiting = {entry.jobId for entry in entries}

        def unfinished(jobId: str) -> bool:
            if jobId in waiting or jobId in self._live:
                return True
            found = self._find(jobId)
            return found is not None and not found.status.ended

        accounts: dict[str, Identity | None] = {}
        now = self._reactor.seconds()
        for entry in entries:
            failed = self._failedBefore(entry, unfinished)
            if failed is not None:
                # Its after_ok job ended otherwise (before the restart, or
                # closed by the recovery just now): it never runs.
                waiting.discard(entry.jobId)
                self._scheduler.fail(
                    Waiting(entry.jobId, entry.owner, entry.priority, entry.seq),
                    dependencyFailure(failed),
                    now,
                )
                continue
            runAs = entry.runAs
            if runAs and not runAs.startswith("dynamic:") and runAs not in accounts:
                try:
                    accounts[runAs] = Identity.ofAccount(runAs)
                except IdentityError:
                    accounts[runAs] = None  # gone: the users file decides at start
            self._scheduler.queue.add(
                Waiting(
                    entry.jobId,
                    entry.owner,
                    entry.priority,
                    entry.seq,
                    accounts.get(runAs or ""),
                    jobIds(entry.after),
                    jobIds(entry.afterOk),
                ),
                unfinished,
            )
        if entries:
            self.log.info(
                "{count} queued job(s) kept across the restart", count=len(entries)
            )
        self._scheduler.dispatch()
