"""
Stopping Slurm jobs: TERM to every process of the job, then scancel once
the grace is over; a stop goes on across a restart of the server.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import ServiceUnavailable
from ...jobs.identity import Identity
from ...jobs.policy import JobReactor
from ...jobs.records import JobRecord, JobStatus
from ...jobs.stopping import DEFAULT_STOP, StopRequest
from .accounts import SlurmAccounts
from .commands import SlurmCommands
from .documents import SlurmError
from .job import EndedInSlurm, SlurmJob, isOurs
from .outcomes import FINAL, QUEUED
from .submission import jobName

#: Seconds before a stop's scancel that Slurm did not take (slurmctld down)
#: is sent again, and again, until it is taken or the job ends.
CANCEL_RETRY = 5.0
#: How many times a scancel Slurm refused otherwise (not unreachable: a
#: permission refused, say) is sent in all.
CANCEL_TRIES = 3


class SlurmStops:
    """Stops and cancels of Slurm jobs, run as each job's owner."""

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        commands: SlurmCommands,
        grace: float,
        accounts: SlurmAccounts,
        save: Callable[[JobRecord], None],
    ) -> None:
        self._reactor = reactor
        self._commands = commands
        self._grace = grace
        self._accounts = accounts
        self._save = save
        #: Jobs whose scancel failed and is being sent again (said once),
        #: with how many times it was tried.
        self._retrying: dict[str, int] = {}
        #: Cancels by name to send again (L{cancelByName}), by job id.
        self._byName: dict[str, IDelayedCall] = {}
        self._closed = False

    def ownerOf(self, job: SlurmJob) -> Identity:
        """
        Who acts on C{job} in Slurm: the identity it runs as. A re-attached
        job's is looked up again from its record's C{run_as}.
        """
        if job.identity is None:
            job.identity = self._accounts.ofRecord(job.record)
        return job.identity

    async def terminate(self, job: SlurmJob, how: StopRequest = DEFAULT_STOP) -> None:
        """
        C{how.signal} (TERM) to every process of the job, KILL (scancel)
        after the grace (C{how.grace}, else the server's). A job still
        queued, or one Slurm has suspended, is cancelled at once.
        """
        slurmJobId = job.record.slurm_job_id
        assert slurmJobId is not None
        owner = self.ownerOf(job)
        try:
            if how.signal == signal.SIGKILL or (
                job.record.status is JobStatus.PENDING
                and not await self._runsYet(job, slurmJobId)
            ):
                # (A KILL is a cancel either way: no squeue asked first, which
                # may hang: late review 34.)
                await self._commands.cancel(slurmJobId, jobName(job.record.id), owner)
                self._cancelSent(job)
                return
            if await self._suspended(job, slurmJobId):
                # Slurm signals no suspended job ("Job is in transitional
                # state": scancel retries for about 95 s, past the command's
                # deadline), and only an operator may resume it. A cancel it
                # takes: it resumes the job, sends TERM, then KILL after its
                # own KillWait (the stop's signal and grace cannot apply).
                self.log.info(
                    "job {job}: Slurm job {slurm} is suspended, cancelled "
                    "(Slurm signals no suspended job)",
                    job=job.record.id,
                    slurm=slurmJobId,
                )
                await self._commands.cancel(slurmJobId, jobName(job.record.id), owner)
                self._cancelSent(job)
                return
            await self._commands.signal(
                slurmJobId,
                jobName(job.record.id),
                signal.Signals(how.signal).name.removeprefix("SIG"),
                owner,
            )
        except SlurmError as e:
            if e.unreachable:
                raise ServiceUnavailable(
                    f"Slurm is unreachable, try again later ({e})"
                ) from None
            if await self._endedInSlurm(job, slurmJobId):
                raise EndedInSlurm() from None
            raise ServiceUnavailable(f"cannot stop the Slurm job: {e}") from None
        # Stored, so a restart goes on with the escalation (who and when).
        now = self._reactor.seconds()
        grace = self._grace if how.grace is None else how.grace
        if job.hastenedTo is not None and job.hastenedTo - now < grace:
            # A harder stop came while Slurm took the signal (hasten).
            grace = job.record.stop_grace = max(0.0, job.hastenedTo - now)
        job.record.stop_requested_at = now
        self._save(job.record)
        self.escalate(job, grace)

    def _cancelSent(self, job: SlurmJob) -> None:
        """
        A stop's cancel went out: stored as a stop at its end (no grace),
        so a restart before Slurm ended the job goes on with it, not a
        cancel from outside, FAILED, C{stopped_by} lost (Slurm round 37; a
        resumed stop that sent the cancel again was refused, the job ended,
        and forgotten: session review 37).
        """
        record = job.record
        record.stop_requested_at = self._reactor.seconds()
        record.stop_grace = 0.0
        self._save(record)

    async def _runsYet(self, job: SlurmJob, slurmJobId: str) -> bool:
        """
        Does Slurm run a job the last poll saw queued? It may have started
        since: then the stop's signal and grace are its, as for a job seen
        running (a plain cancel gave it neither: Slurm round 34). Not known
        (Slurm not answering): cancelled, as a queued job.
        """
        try:
            now = await self._commands.stateOf(slurmJobId)
        except SlurmError:
            return False
        return (
            now is not None
            and isOurs(job.record, now)
            and now.state not in QUEUED
            and now.state not in FINAL
        )

    async def _endedInSlurm(self, job: SlurmJob, slurmJobId: str) -> bool:
        """
        After a refused scancel: has Slurm ended the job since the last
        poll (or forgotten it, or given its number to another job)? Then
        nothing is left to stop ("already completing or completed",
        "Invalid job id"), and the poll records its end.
        """
        try:
            now = await self._commands.stateOf(slurmJobId)
        except SlurmError:
            return False
        return (
            now is None
            or not isOurs(job.record, now)
            or now.state in FINAL
            or now.state == "COMPLETING"
        )

    async def _suspended(self, job: SlurmJob, slurmJobId: str) -> bool:
        """
        Whether Slurm has the job suspended now (C{scontrol suspend}):
        asked afresh, since an operator may have suspended it since the
        last poll, or before a restart.
        """
        try:
            now = await self._commands.stateOf(slurmJobId)
        except SlurmError as e:
            if e.unreachable:
                raise
            # squeue failed, slurmctld answering: the signal is sent all the
            # same (the stop was a 503, nothing sent: Slurm round 32); a
            # suspended job's refusal of it is then the stop's answer.
            return False
        return now is not None and now.state == "SUSPENDED" and isOurs(job.record, now)

    def ended(self, job: SlurmJob) -> None:
        """
        C{job} ended: its scancel is sent no more (its end disarmed the
        retry, whose own call was the only one to forget it: an entry per
        job whose scancel failed once stayed for the server's life, code
        review 35).
        """
        self._retrying.pop(job.record.id, None)

    def escalate(self, job: SlurmJob, delay: float) -> None:
        """scancel the job after C{delay} seconds (the rest of the grace)."""
        job.armKill(self._reactor.callLater(max(0.0, delay), lambda: self.cancel(job)))

    def hasten(self, job: SlurmJob, how: StopRequest) -> None:
        """
        A stop while C{job} is being stopped: a harder one holds (KILL, or a
        grace that ends before the first one's scancel), else it waits for
        the same end. The new end is stored, for a restart to go on with.
        """
        now = self._reactor.seconds()
        grace = 0.0 if how.signal == signal.SIGKILL else how.grace
        if grace is None:
            grace = self._grace
        due = job.killDue()
        record = job.record
        if due is None or record.stop_requested_at is None:
            # The first stop's signal is still on its way (its scancel is
            # armed once Slurm answers: see terminate), or its scancel is.
            if job.hastenedTo is None or now + grace < job.hastenedTo:
                job.hastenedTo = now + grace
            return
        if now + grace >= due:
            return
        record.stop_grace = now + grace - record.stop_requested_at
        self._save(record)
        self.escalate(job, grace)

    def resume(self, job: SlurmJob) -> None:
        """After a restart: go on with a stop that was in progress."""
        record = job.record
        job.markStopping()
        how = StopRequest(
            signal.Signals[record.stop_signal]
            if record.stop_signal
            else signal.SIGTERM,
            record.stop_grace,
        )
        if record.stop_requested_at is not None:
            grace = self._grace if how.grace is None else how.grace
            left = record.stop_requested_at + grace - self._reactor.seconds()
            self.log.info(
                "job {job}: stop by {user} in progress, scancel in {left:.1f}s",
                job=record.id,
                user=record.stopped_by,
                left=max(0.0, left),
            )
            self.escalate(job, left)
        elif record.slurm_job_id is not None:
            # Asked, but TERM may not have gone out: send it again.
            def failed(failure: Failure) -> None:
                self.log.warn(
                    "job {job}: stop not resumed: {error}",
                    job=record.id,
                    error=failure.getErrorMessage(),
                )
                # Not being stopped, then: a later stop sends its own (each
                # one waited for an end nobody brought, sending nothing:
                # session review 36).
                if not record.status.ended:
                    job.stopFailed()
                    self._save(record)

            Deferred.fromCoroutine(self.terminate(job, how)).addErrback(failed)

    def cancelByName(self, jobId: str, identity: Identity, again: bool = False) -> None:
        """
        scancel, by name, a job whose sbatch answer was lost, and that the
        server said no to: slurmctld may queue it late. While slurmctld
        cannot be reached, sent again every L{CANCEL_RETRY} seconds (until
        L{shutdown}): tried once, a late job ran (Slurm round 27).
        """
        waiting = self._byName.pop(jobId, None)
        if waiting is not None and waiting.active():
            waiting.cancel()

        async def cancel() -> None:
            try:
                await self._commands.cancelByName(jobName(jobId), identity)
            except SlurmError as e:
                if not again:
                    self.log.warn(
                        "cannot cancel a possibly queued job {job}: {error}{more}",
                        job=jobId,
                        error=str(e),
                        more=f"; sent again every {CANCEL_RETRY:g}s while "
                        "slurmctld cannot be reached"
                        if e.unreachable
                        else "",
                    )
                if e.unreachable and not self._closed:
                    self._byName[jobId] = self._reactor.callLater(
                        CANCEL_RETRY, self.cancelByName, jobId, identity, True
                    )

        Deferred.fromCoroutine(cancel())

    def shutdown(self) -> None:
        """The server stops: no cancel by name is sent again."""
        self._closed = True
        for call in self._byName.values():
            if call.active():
                call.cancel()
        self._byName.clear()

    def cancel(self, job: SlurmJob) -> None:
        """scancel, in the background: the poll sees the job end."""
        slurmJobId = job.record.slurm_job_id
        if slurmJobId is None:
            return
        owner = self.ownerOf(job)

        async def cancel() -> None:
            try:
                await self._commands.cancel(slurmJobId, jobName(job.record.id), owner)
            except SlurmError as e:
                jobId = job.record.id
                tries = self._retrying.get(jobId, 0) + 1
                if (
                    self._closed
                    or job.record.status.ended
                    or (not e.unreachable and await self._endedInSlurm(job, slurmJobId))
                ):
                    # Nothing left to cancel (the poll records its end), or
                    # the server stops (a restart goes on with the stop).
                    self._retrying.pop(jobId, None)
                    return
                if not e.unreachable and tries >= CANCEL_TRIES:
                    self._retrying.pop(jobId, None)
                    self.log.error(
                        "scancel {slurm} (job {job}) refused {tries} times, given "
                        "up: {error}",
                        slurm=slurmJobId,
                        job=jobId,
                        tries=tries,
                        error=str(e),
                    )
                    return
                if jobId not in self._retrying:
                    self.log.warn(
                        "scancel {slurm} failed: {error}; sent again every "
                        "{retry:g}s until Slurm takes it",
                        slurm=slurmJobId,
                        error=str(e),
                        retry=CANCEL_RETRY,
                    )
                self._retrying[jobId] = tries
                # Armed as the stop's scancel: a harder stop sends it sooner.
                self.escalate(job, CANCEL_RETRY)
                return
            self._retrying.pop(job.record.id, None)

        Deferred.fromCoroutine(cancel())
