"""
One jobworker job that is a Slurm batch job: its acceptance by sbatch, its
states as the poll reports them, its stop, and its end (once).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import Conflict, ServiceUnavailable
from ...jobs.ending import Ending
from ...jobs.identity import Identity
from ...jobs.records import JobRecord, JobStatus
from ...jobs.stopping import DEFAULT_STOP, StopRequest
from .dependencies import NEVER_SATISFIED, DependencyVerdict
from .documents import SlurmError, SlurmState
from .outcomes import (
    FINAL,
    NEVER_STARTS,
    NEVER_STARTS_AFTER,
    QUEUED,
    outcomeOf,
    ranIn,
)
from .output import SlurmOutput
from .submission import jobName

#: Seconds after a job is first seen running that the server removes its
#: argv and env files if the batch script has not (it removes them as soon as
#: it has read them). Not at once: Slurm says RUNNING before the node has
#: started the script (a prolog may run first).
SECRETS_GRACE = 60.0

#: Seconds after a job refused for its owner (L{SlurmJob.refuseStart}) was
#: last cancelled that a poll finding it still queued cancels it again.
RECANCEL_AFTER = 5.0

#: Seconds Slurm's submit time of a job may lie before its record's
#: creation and still be ours: the two hosts' clocks may differ a little.
#: Any time after is ours: sbatch may wait for slurmctld, the job for its
#: turn in jobworker's own queue (a running cap, a dependency) for hours,
#: and the completion log's entry gives its start for its submit time.
SUBMIT_SLACK = 600.0

#: Seconds a stop of a job Slurm had ended already (L{EndedInSlurm}) waits
#: for a poll to record that end, to answer with it; past them (Slurm's
#: accounting cannot be read: the poll keeps such a job as it is) it answers
#: 409 all the same.
ENDED_ANSWER_AFTER = 30.0

#: Seconds a job Slurm cancelled for a failed C{after_ok} waits for that
#: dependency's end to reach jobworker's records (squeue says COMPLETING
#: while a cancelled job is cleaned up), to say which one failed. Past it,
#: it ends with Slurm's own words.
DEPENDENCY_PATIENCE = 60.0

#: Seconds a stopped job that Slurm says ended without a status (CANCELLED
#: 0:0) waits for its batch step's own: the cancel at the end of its grace
#: is read first, the step's status (killed by its TERM) a poll or two
#: later; taken at once, the job ended with no status, its TERM lost (`jw
#: wait` exited 255, not 143: Slurm round 35). Past them, none came (its
#: node stopped answering).
STATUS_PATIENCE = 10.0


def isOurs(record: JobRecord, state: SlurmState) -> bool:
    """
    Whether the Slurm job C{state} describes is C{record}'s: by name (and
    submit time: not before the record), never by number alone. Slurm
    numbers jobs again from its first number once its state is lost, so
    another job may have the number.
    """
    if state.name != jobName(record.id):
        return False
    if state.submitTime is None:
        return True
    return state.submitTime >= record.created_at - SUBMIT_SLACK


class EndedInSlurm(Exception):
    """A stop found the job ended in Slurm already: nothing to stop."""


class SlurmHost(Protocol):
    """What a L{SlurmJob} asks of its executor."""

    def save(self, record: JobRecord) -> None: ...

    def now(self) -> float: ...

    def elapsed(self) -> float: ...

    def callLater(self, delay: float, f: Callable[[], None]) -> IDelayedCall: ...

    def outputPath(self, jobId: str, stream: str) -> str: ...

    def removeSecrets(self, jobId: str) -> None: ...

    def failedDependency(self, record: JobRecord) -> DependencyVerdict: ...

    def forget(self, job: SlurmJob) -> None: ...

    def cancel(self, job: SlurmJob) -> None: ...

    def hasten(self, job: SlurmJob, how: StopRequest) -> None: ...

    async def terminate(
        self, job: SlurmJob, how: StopRequest = DEFAULT_STOP
    ) -> None: ...


class SlurmJob:
    """A jobworker job that is a Slurm batch job."""

    log = Logger()

    def __init__(
        self,
        executor: SlurmHost,
        record: JobRecord,
        identity: Identity | None = None,
    ) -> None:
        self._executor = executor
        self.record = record
        #: Who the job runs as; None for a re-attached job until it is
        #: needed (then looked up from the record's C{run_as}).
        self.identity = identity
        self.stdout = SlurmOutput(executor.outputPath(record.id, "stdout"))
        self.stderr = SlurmOutput(executor.outputPath(record.id, "stderr"))
        #: What sbatch said: the record, or a failure (Slurm unreachable).
        self._acceptance: JobRecord | Failure | None = None
        self._acceptWaiters: list[Deferred[JobRecord]] = []
        self._ending = Ending(record, executor.elapsed)
        self._cleaned: Deferred[None] = Deferred()
        #: Since when Slurm says it will never start it (L{NEVER_STARTS}).
        self._neverSince: float | None = None
        #: The last poll saw it CONFIGURING (its nodes booting): a node in
        #: its end then proves no start (L{outcomes.ranIn}).
        self._configuring = False
        self._stopRequested = False
        #: The first stop's answer while it is to come, and the later stops
        #: that share it.
        self._stopAnswer: Deferred[JobRecord] | None = None
        self._stopSharers: list[Deferred[JobRecord]] = []
        self._killCall: IDelayedCall | None = None
        #: When a harder stop that came before the first one's scancel was
        #: armed wants it (reactor seconds; see SlurmStops.hasten).
        self.hastenedTo: float | None = None
        #: Set at recovery when sbatch's answer was lost: the reason to give
        #: if no Slurm job of this job's name turns up.
        self.lookUpReason: str | None = None
        #: Slurm's queue has it, as this job's, unended: sbatch took it,
        #: or the last poll's squeue listed it so. Only then may a new job
        #: be handed to Slurm to wait for it (an id Slurm has purged counts
        #: as met: an after_ok job ran though its dependency had failed
        #: while the server was down, Slurm round 34).
        self.inQueue = False
        #: When this server first saw the job running (see L{SECRETS_GRACE}).
        self._runningSince: float | None = None
        self._secretsRemoved = False
        #: One of its C{after_ok} ended otherwise than COMPLETED: Slurm
        #: cancels it (or jobworker did, where Slurm would still run it).
        self._dependencyFailed = False
        #: When Slurm was first seen to have cancelled it for a dependency.
        self._cancelledSince: float | None = None
        #: When Slurm was first seen to have ended it stopped, without a
        #: status (L{STATUS_PATIENCE}).
        self._statuslessSince: float | None = None
        #: Slurm itself saw it end otherwise than COMPLETED: Slurm cancels
        #: the jobs held on it (afterok) without jobworker's help.
        self.failedInSlurm = False
        #: Why its owner may no longer start it (L{refuseStart}), and when
        #: it was last cancelled for that.
        self._refused: str | None = None
        self._cancelledAt = 0.0

    def snapshot(self) -> JobRecord:
        record = self.record
        if not record.status.ended:
            record.stdout_bytes = self.stdout.size
            record.stderr_bytes = self.stderr.size
        return record

    def whenAccepted(self) -> Deferred[JobRecord]:
        d: Deferred[JobRecord] = Deferred()
        if self._acceptance is None:
            self._acceptWaiters.append(d)
        else:
            self._relayAcceptance(d)
        return d

    def _relayAcceptance(self, d: Deferred[JobRecord]) -> None:
        if isinstance(self._acceptance, Failure):
            d.errback(self._acceptance)
        elif self._acceptance is not None:
            d.callback(self._acceptance)

    def settle(self, outcome: JobRecord | Failure) -> None:
        """sbatch has answered (or the job was re-attached)."""
        if self._acceptance is not None:
            return
        self._acceptance = outcome
        waiters, self._acceptWaiters = self._acceptWaiters, []
        for d in waiters:
            self._relayAcceptance(d)

    def whenEnded(self) -> Deferred[JobRecord]:
        return self._ending.whenEnded()

    def whenCleanedUp(self) -> Deferred[None]:
        if self._cleaned.called:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._cleaned.addCallback(lambda _: d.callback(None))
        return d

    # -- submission ------------------------------------------------------------

    def submitted(self, slurmJobId: str) -> None:
        self.record.slurm_job_id = slurmJobId
        self.inQueue = True
        self._executor.save(self.record)
        self.settle(self.record)
        if self._stopRequested or self._dependencyFailed or self._refused:
            self._executor.cancel(self)

    def refused(self, error: SlurmError) -> None:
        """sbatch said no: a job that cannot start (FAILED), or 503."""
        if error.unreachable:
            # Settled first: a job answered 503 is forgotten before its end
            # is taken in (it was counted an ended FAILED job, and its end
            # stored: code review round 34). One that nobody waits for (it
            # started from jobworker's queue) ends FAILED.
            self.settle(
                Failure(
                    ServiceUnavailable(
                        f"Slurm is unreachable, try again later ({error})"
                    )
                )
            )
            self._finish(JobStatus.FAILED, error=f"Slurm is unreachable: {error}")
            return
        self._finish(JobStatus.FAILED, error=f"Slurm refused the job: {error}")
        self.settle(self.record)

    def unwritable(self, why: str) -> None:
        """
        The server could not write the job's files (C{--slurm-output-dir}
        full, read-only): it cannot start, and Slurm was never asked (it
        read "Slurm refused the job": Slurm user round 38).
        """
        self._finish(JobStatus.FAILED, error=f"cannot start: {why}")
        self.settle(self.record)

    # -- state -----------------------------------------------------------------

    def update(self, state: SlurmState, now: float) -> None:
        """Take in what Slurm says of the job."""
        record = self.record
        if state.state not in FINAL:
            self._configuring = state.state == "CONFIGURING"
        if state.state in QUEUED and state.state != "CONFIGURING":
            if record.status is JobStatus.RUNNING:
                self._requeued(state)
                return
        if state.state in QUEUED:
            reason = state.reason if state.reason not in ("", "None") else None
            never = NEVER_STARTS.get(reason) if reason is not None else None
            if never is None:
                self._neverSince = None
            elif record.status is JobStatus.PENDING:
                now = self._executor.now()
                if self._neverSince is None:
                    self._neverSince = now
                elif now - self._neverSince >= NEVER_STARTS_AFTER:
                    self._neverStarts(state.reason, never)
                    return
            if record.status is JobStatus.PENDING and reason != record.pending_reason:
                record.pending_reason = reason
                self._executor.save(record)
            if self._refused is not None and record.status is JobStatus.PENDING:
                # Still queued a while after it was refused: its scancel
                # failed (slurmctld out of reach). Slurm would run it.
                now = self._executor.now()
                if now - self._cancelledAt >= RECANCEL_AFTER:
                    self._cancelledAt = now
                    self._executor.cancel(self)
            return
        if state.state in FINAL:
            self._ended(state)
            return
        if record.status is JobStatus.PENDING:
            record.status = JobStatus.RUNNING
            record.pending_reason = None
            record.started_at = self._startedAt(state, now)
            # Its end is stamped no earlier than now plus the time elapsed
            # since (a step back of the clock meanwhile: L{Ending}).
            self._ending.started(self._executor.now())
            record.node = state.node
            self._executor.save(record)
            self.log.info(
                "Slurm job {slurm} (job {job}) running on {node}",
                slurm=record.slurm_job_id,
                job=record.id,
                node=state.node,
            )
        suspended = None
        if state.state == "SUSPENDED":
            # It holds its node and makes no progress: say so (a RUNNING
            # job's pending_reason is otherwise null).
            why = f": {state.reason}" if state.reason not in ("", "None") else ""
            suspended = f"suspended in Slurm{why}"
        elif state.state == "STOPPED":
            # (scancel --signal=STOP: it holds its allocation, stopped; it
            # read RUNNING with no word: Slurm user round 38.)
            suspended = "stopped in Slurm (SIGSTOP): it holds its nodes, no progress"
        if record.pending_reason != suspended:
            record.pending_reason = suspended
            self._executor.save(record)
        if self._runningSince is None:
            self._runningSince = now
        elif now - self._runningSince >= SECRETS_GRACE:
            self._removeSecrets()

    def _requeued(self, state: SlurmState) -> None:
        """
        It ran and is queued again (an administrator's C{scontrol
        requeue}; jobworker submits with C{--no-requeue}): it read RUNNING
        while queued, and its next run would fail at once (the wrapper
        removes its arguments at the first start: Slurm round 31). A job
        runs once: it ends, and is cancelled in Slurm.
        """
        self._cancelAndEnd(
            f"was requeued after it started ({state.state})",
            f"requeued in Slurm after it started ({state.state}); "
            "jobworker runs a job once: cancelled",
            # (The code it exited with, when Slurm held it for that code.)
            exitCode=state.exitCode if state.state == "SPECIAL_EXIT" else None,
        )

    def _neverStarts(self, reason: str, meaning: str) -> None:
        """
        Slurm accepted the job but will never start it (L{NEVER_STARTS}):
        it ends FAILED with Slurm's reason, and is cancelled in Slurm.
        """
        self._cancelAndEnd(
            f"will never start ({reason})",
            f"never ran: Slurm will never start it ({reason}: {meaning}); cancelled",
        )

    def _cancelAndEnd(self, why: str, error: str, exitCode: int | None = None) -> None:
        """Cancel it in Slurm and end it FAILED (STOPPED if a user stopped
        it) with C{error}; the log says C{why}."""
        record = self.record
        self.log.warn(
            "job {job}: Slurm job {slurm} {why}, cancelling it",
            job=record.id,
            slurm=record.slurm_job_id,
            why=why,
        )
        self._stopRequested = True
        self._executor.cancel(self)
        record.pending_reason = None
        status = JobStatus.FAILED if record.stopped_by is None else JobStatus.STOPPED
        self._finish(status, exitCode=exitCode, error=error)

    def _startedAt(self, state: SlurmState, now: float | None) -> float | None:
        """
        When it started: Slurm's whole seconds, never before the record's
        creation (Slurm truncates, and its clock is another host's).
        """
        started = state.startTime or now
        if started is None:
            return None
        return max(started, self.record.created_at)

    def _removeSecrets(self) -> None:
        """
        Remove the argv and env files, should the batch script not have
        (a job that never started, or one submitted with an older script).
        """
        if not self._secretsRemoved:
            self._secretsRemoved = True
            self._executor.removeSecrets(self.record.id)

    def dependencyFailed(self, dependency: str) -> None:
        """
        C{dependency}, one of its C{after_ok}, is being stopped (it will end
        STOPPED), or ended otherwise than COMPLETED in jobworker's records
        where Slurm saw no failure (a job Slurm lost): Slurm would let this
        one start (a stopped job that exits 0 on TERM is COMPLETED for
        Slurm), so cancel it here. Its end then waits for the dependency's.
        """
        record = self.record
        if record.status is not JobStatus.PENDING or self._dependencyFailed:
            return
        self._dependencyFailed = True
        self.log.info(
            "job {job}: its after_ok job {dependency} will not complete, "
            "cancelling Slurm job {slurm}",
            job=record.id,
            dependency=dependency,
            slurm=record.slurm_job_id,
        )
        self._executor.cancel(self)

    def refuseStart(self, why: str) -> None:
        """
        Its owner may no longer start it (L{SlurmExecutor.ownersChanged}):
        cancel it in Slurm while it waits; it ends FAILED, saying C{why},
        once Slurm says it was cancelled (one that started meanwhile ends
        as it ends). Cancelled again at each poll that finds it still
        queued (an scancel that failed: slurmctld out of reach).
        """
        record = self.record
        if record.status is not JobStatus.PENDING or self._stopRequested:
            return
        if self._refused is None:
            self.log.warn(
                "job {job}: {why}; cancelling Slurm job {slurm}",
                job=record.id,
                why=why,
                slurm=record.slurm_job_id,
            )
        self._refused = why
        self._cancelledAt = self._executor.now()
        self._executor.cancel(self)  # (once sbatch answers, if it has not)

    def _cancelledForDependency(self, state: SlurmState) -> bool:
        """
        Whether Slurm ended it because an C{after_ok} failed
        (C{--kill-on-invalid-dep}), or after jobworker cancelled it for that.
        """
        return (
            not self._stopRequested
            and bool(self.record.after_ok)
            and state.state == "CANCELLED"
            and (state.reason == NEVER_SATISFIED or self._dependencyFailed)
        )

    def _patient(self) -> bool:
        """Whether it may wait on for a dependency's end (L{DEPENDENCY_PATIENCE})."""
        now = self._executor.now()
        if self._cancelledSince is None:
            self._cancelledSince = now
        return now - self._cancelledSince < DEPENDENCY_PATIENCE

    def _awaitsStatus(self, state: SlurmState) -> bool:
        """
        Whether this stopped job, which Slurm says ended without a status,
        waits on for its batch step's (L{STATUS_PATIENCE}).
        """
        if state.state == "COMPLETED" or state.signal or state.exitCode:
            return False
        now = self._executor.now()
        if self._statuslessSince is None:
            self._statuslessSince = now
        return now - self._statuslessSince < STATUS_PATIENCE

    def _ended(self, state: SlurmState) -> None:
        record = self.record
        # Slurm's EndTime of a suspended job cancelled is its suspension's:
        # it read ended before anyone stopped it (Slurm user round 38). It
        # ends when the poll sees it, then.
        suspended = (record.pending_reason or "").startswith("suspended in Slurm")
        self.failedInSlurm = state.state != "COMPLETED"
        ran = record.started_at is not None or (ranIn(state) and not self._configuring)
        if self._refused is not None and not ran:
            record.pending_reason = None
            self._finish(JobStatus.FAILED, error=self._refused)
            return
        if self._cancelledForDependency(state):
            # The same words as the manager's queue, naming the dependency.
            verdict = self._executor.failedDependency(record)
            if verdict.error is not None:
                record.pending_reason = None
                self._finish(JobStatus.FAILED, error=verdict.error)
                return
            if verdict.waiting and (self._dependencyFailed or self._patient()):
                # A later poll brings that dependency's end (jobworker
                # cancelled this job for a stop: that stop will end it).
                return
        if ran and self._stopRequested and self._awaitsStatus(state):
            return
        if record.node is None:
            record.node = state.node
        record.pending_reason = None
        if record.started_at is None and ran:
            # It ran between two polls (or never, if it ended in the queue).
            record.started_at = self._startedAt(state, None)
        outcome = outcomeOf(state, self._stopRequested, record.timeout_seconds, ran=ran)
        self._finish(
            outcome.status,
            outcome.exitCode,
            outcome.signal,
            outcome.error,
            when=None if suspended else state.endTime,
        )

    def lost(self, reason: str) -> None:
        """Slurm no longer knows the job."""
        self._finish(JobStatus.FAILED, error=reason)

    def _finish(
        self,
        status: JobStatus,
        exitCode: int | None = None,
        signal: str | None = None,
        error: str | None = None,
        when: float | None = None,
    ) -> None:
        """
        End the record; at C{when} if Slurm said when it ended (a job that
        ended while the server did not poll: it ended at the poll that saw
        it, a 5 s job read 40 s: Slurm round 31), never later than now
        (another host's clock), nor before its start (L{Ending}).
        """
        record = self.record
        if record.status.ended:
            return
        record.pending_reason = None  # (an ended job waits for nothing)
        self.disarmKill()
        self._removeSecrets()
        self.stdout.close()
        self.stderr.close()
        record.stdout_bytes = self.stdout.size
        record.stderr_bytes = self.stderr.size
        now = self._executor.now()
        self._ending.finish(
            status,
            now if when is None else min(when, now),
            told=when is not None and when < now,
            exit_code=exitCode,
            signal=signal,
            error=error,
            slurm=record.slurm_job_id,
        )
        self._executor.forget(self)
        self._cleaned.callback(None)

    # -- stopping --------------------------------------------------------------

    def stop(self, by: str, how: StopRequest = DEFAULT_STOP) -> Deferred[JobRecord]:
        ended = self.whenEnded()
        if self._stopRequested:
            self._executor.hasten(self, how)
            if self._stopAnswer is None:
                return ended
            # The first stop's signal may still be on its way to Slurm:
            # this one has its answer (it waited for an end nobody would
            # bring when the first failed, the job running on: Slurm round
            # 36).
            return self._shareStopAnswer()
        self._stopRequested = True
        self.record.stopped_by = by
        # Stored with the stop's time: a restart goes on with this stop.
        self.record.stop_signal = signal.Signals(how.signal).name
        self.record.stop_grace = how.grace
        if self.record.slurm_job_id is None:
            return ended  # cancelled as soon as sbatch answers
        # The stop's answer, which every stop of the job until it comes
        # shares, each through a Deferred of its own (one cancelled, its
        # client gone, leaves the others': session review 36).
        result: Deferred[JobRecord] = Deferred()
        self._stopAnswer = result
        sharers = self._stopSharers = []
        mine = self._shareStopAnswer()  # (before anything may answer)

        def share(outcome: JobRecord | Failure) -> None:
            if self._stopAnswer is result:
                self._stopAnswer = None
            for d in sharers:
                if d.called:
                    continue  # (cancelled)
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)
            sharers.clear()

        signalled = Deferred.fromCoroutine(self._executor.terminate(self, how))
        endedFirst = False

        def failed(failure: Failure) -> None:
            nonlocal endedFirst
            self.stopFailed()
            if failure.check(EndedInSlurm):
                # Slurm ended it first: the poll records how, and the stop
                # is then answered as one of a job that has ended.
                endedFirst = True
                self._executor.callLater(ENDED_ANSWER_AFTER, unknownEnd)
            elif not result.called:
                result.errback(failure)

        def unknownEnd() -> None:
            if not result.called:
                result.errback(
                    Conflict(
                        "job already ended in Slurm: nothing to stop (its end "
                        "is not known yet: it is recorded once Slurm's "
                        "accounting answers)",
                        job=self.record.toJSON(),
                    )
                )

        def relay(record: JobRecord) -> None:
            if result.called:
                return
            if endedFirst:
                result.errback(
                    Conflict(
                        f"job already ended ({record.status.value})",
                        job=record.toJSON(),
                    )
                )
            else:
                result.callback(record)

        signalled.addErrback(failed)
        ended.addCallback(relay)
        result.addBoth(share)
        return mine

    def _shareStopAnswer(self) -> Deferred[JobRecord]:
        """A Deferred of its own of the stop's answer (L{stop})."""
        mine: Deferred[JobRecord] = Deferred()
        self._stopSharers.append(mine)
        return mine

    def stopFailed(self) -> None:
        """
        Its stop's signal could not be sent: it is not being stopped (a
        later stop sends its own), nor by whom, nor how.
        """
        self._stopRequested = False
        self.record.stopped_by = None
        self.record.stop_signal = self.record.stop_grace = None
        # Nor the harder end a later stop asked for meanwhile: kept, it
        # made the next stop's scancel come at once (Slurm round 36).
        self.hastenedTo = None

    def markStopping(self) -> None:
        """A stop was in progress when the server last stopped (see recover)."""
        self._stopRequested = True

    def armKill(self, call: IDelayedCall) -> None:
        """The timer that cancels the job at the end of its stop's grace."""
        self.disarmKill()
        self._killCall = call

    def killDue(self) -> float | None:
        """When the stop's scancel is due (None: none is armed)."""
        call = self._killCall
        return call.getTime() if call is not None and call.active() else None

    def disarmKill(self) -> None:
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None

    def writeStdin(
        self, data: bytes, eof: bool, offset: int | None = None
    ) -> Deferred[int]:
        """Slurm jobs never take stdin from the API (refused at creation)."""
        raise Conflict('the job was not started with "stdin": true')

    @property
    def stdinClosed(self) -> bool:
        return False

    def endLeftovers(self, how: StopRequest) -> bool:
        """Slurm ends what a job left (its cgroup on the node)."""
        return False

    def recorded(self) -> None:
        """sbatch runs after the record is stored (same reactor turn)."""

    def abort(self, reason: str) -> None:
        """The job could not be recorded: cancel it in Slurm, end it FAILED."""
        self._stopRequested = True
        if self.record.slurm_job_id is not None:
            self._executor.cancel(self)
        self._finish(JobStatus.FAILED, error=reason)
