"""
The jobs Slurm holds for their C{after}/C{after_ok}: whether it can hold a
new one, the Slurm ids it waits for, and which live jobs wait on which, so
that a dependency ending otherwise than COMPLETED never lets its dependents
start. No I/O: cancelling is the job's own (L{SlurmJob.dependencyFailed}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...jobs.records import JobRecord, JobStatus
from .dependencies import DependencyVerdict, failedDependency
from .job import SlurmJob


class HeldJobs:
    """
    The executor's dependents: for each job, the live jobs Slurm holds
    until it completes (their C{after_ok}, given to Slurm as C{afterok}).

    @param jobs: the executor's live jobs, by jobworker id.
    @param find: a job's current record, None if there is none (the
        manager's).
    """

    def __init__(
        self, jobs: dict[str, SlurmJob], find: Callable[[str], JobRecord | None]
    ) -> None:
        self._jobs = jobs
        self._find = find
        self._dependents: dict[str, set[str]] = {}

    def canHold(self, unended: Sequence[JobRecord]) -> bool:
        """
        Whether Slurm can hold a job until C{unended} end: each is a live
        Slurm job whose Slurm id is known (not one whose sbatch has yet to
        answer) and that Slurm's queue has (L{SlurmJob.inQueue}: not one
        re-attached after a restart that no poll has seen yet, nor one
        squeue no longer lists): Slurm takes an id it does not know as met.
        """
        for record in unended:
            job = self._jobs.get(record.id)
            if job is None or record.slurm_job_id is None or not job.inQueue:
                return False
        return True

    def slurmIds(self, jobIds: Sequence[str]) -> list[str]:
        """
        The Slurm ids of those of C{jobIds} still live: those Slurm must
        wait for. Those that ended need no waiting (an C{after_ok} that
        failed never gets this far: the manager ends its dependent at once).
        """
        ids = []
        for jobId in jobIds:
            job = self._jobs.get(jobId)
            if job is not None and job.record.slurm_job_id is not None:
                ids.append(job.record.slurm_job_id)
        return ids

    def watch(self, job: SlurmJob) -> None:
        """
        Keep track of the C{after_ok} jobs a queued job waits for. One that
        already ended otherwise than COMPLETED (while the server was down)
        fails it now.
        """
        record = job.record
        if record.status is not JobStatus.PENDING:
            return
        for jobId in record.after_ok:
            dependency = self._find(jobId)
            if dependency is None or not dependency.status.ended:
                self._dependents.setdefault(jobId, set()).add(record.id)
            elif dependency.status is not JobStatus.COMPLETED:
                # Ended while the server was down: whether Slurm saw it
                # fail is not known here, so cancel (a no-op if it did).
                job.dependencyFailed(jobId)

    def ended(self, job: SlurmJob) -> None:
        """
        A job ended: it waits no more. If it failed for jobworker where Slurm
        saw no failure, the jobs held on it are cancelled (Slurm cancels
        them itself when it saw one: C{--kill-on-invalid-dep}).
        """
        record = job.record
        for jobId in record.after_ok:
            dependents = self._dependents.get(jobId)
            if dependents is not None:
                dependents.discard(record.id)
                if not dependents:
                    del self._dependents[jobId]
        held = self._dependents.pop(record.id, set())
        if record.status is not JobStatus.COMPLETED and not job.failedInSlurm:
            self._fail(record.id, held)

    def stopping(self, job: SlurmJob) -> None:
        """
        C{job} is being stopped: it will end STOPPED, so the jobs held on it
        never start. Cancelled now, before Slurm could start them (for
        Slurm, a job that exits 0 on TERM has COMPLETED).
        """
        self._fail(job.record.id, self._dependents.get(job.record.id, set()))

    def _fail(self, dependency: str, dependents: set[str]) -> None:
        for jobId in sorted(dependents):
            dependent = self._jobs.get(jobId)
            if dependent is not None:
                dependent.dependencyFailed(dependency)

    def verdict(self, record: JobRecord) -> DependencyVerdict:
        """Which C{after_ok} of C{record} ended otherwise than COMPLETED."""
        return failedDependency(record.after_ok, self._find)
