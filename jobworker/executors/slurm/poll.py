"""
The Slurm executor's poll: what Slurm says of jobworker's own jobs, asked
once per interval at a cost that grows with them, not with the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...jobs.records import JobRecord
from .commands import SlurmCommands
from .documents import SlurmError, SlurmState
from .health import Reachability
from .job import SlurmJob, isOurs
from .outcomes import FINAL
from .submission import jobName

#: How often an idle executor (no job to poll) asks whether slurmctld answers.
IDLE_PING = 30.0

#: How long a job squeue no longer knows is kept as it is while Slurm's
#: accounting cannot be read (slurmdbd down), before it ends FAILED without
#: its end rather than stay RUNNING for ever.
ACCOUNTING_PATIENCE = 3600.0


@dataclass
class _Answers:
    """What one poll learnt from Slurm (see L{SlurmPoll.refresh})."""

    #: What squeue says of the jobs it knows, by Slurm id.
    states: dict[str, SlurmState] = field(default_factory=dict)
    #: The exit status of those that ended, and accounting's entry of those
    #: squeue no longer knows, by Slurm id.
    exits: dict[str, SlurmState] = field(default_factory=dict)
    #: The Slurm id found for each job looked up by name, by jobworker id.
    found: dict[str, str | None] = field(default_factory=dict)
    #: The Slurm ids squeue no longer knows whose accounting could not be read.
    unread: set[str] = field(default_factory=set)


class SlurmPoll:
    """
    One poll of the executor's jobs: their states (one squeue for those
    jobs), the exit status of those that ended, accounting for those Slurm
    forgot, and names looked up for jobs whose sbatch answer was lost.

    @param jobs: the executor's live jobs, by jobworker id (read at each poll).
    @param failed: told of a poll that failed.
    """

    log = Logger()

    def __init__(
        self,
        commands: SlurmCommands,
        reach: Reachability,
        jobs: dict[str, SlurmJob],
        now: Callable[[], float],
        failed: Callable[[SlurmError], None],
    ) -> None:
        self._commands = commands
        self._reach = reach
        self._jobs = jobs
        self._now = now
        self._failed = failed
        self._polling = False
        #: When a poll last asked Slurm anything (None: never).
        self._asked: float | None = None
        #: Why Slurm's accounting could not be read when last asked (None:
        #: it answered, or was never asked).
        self._accountingError: str | None = None
        #: When accounting was first unreadable for each job squeue no
        #: longer knows, by jobworker id (see L{ACCOUNTING_PATIENCE}).
        self._unreadSince: dict[str, float] = {}
        #: An accounting call in flight (L{_askAccounting}), and the answer
        #: of the last one, not taken in by a poll yet: the Slurm ids it
        #: was asked about, and what it said (None: it could not be read).
        self._accounting: Deferred[None] | None = None
        self._accountedNow: (
            tuple[frozenset[str], dict[str, SlurmState] | None] | None
        ) = None

    async def lookUpQuietly(self, record: JobRecord) -> str | None:
        try:
            return await self._lookUp(record)
        except SlurmError:
            return None

    async def refresh(self) -> None:
        """
        One poll: the state of jobworker's own jobs only (one squeue), the
        exit status of those that ended (one more), names looked up for jobs
        whose sbatch answer was lost. While Slurm is down and nothing is
        watched, a ping finds out when it is back. Skipped while the last
        poll runs.
        """
        if self._polling:
            return
        submitted = [j for j in self._jobs.values() if j.record.slurm_job_id]
        searching = [j for j in self._jobs.values() if j.lookUpReason is not None]
        now = self._now()
        if not submitted and not searching and not self._reach.down:
            # Idle: a ping every IDLE_PING seconds, so /healthz says when
            # slurmctld went away (it said "ok" until the next sbatch).
            if self._asked is not None and now - self._asked < IDLE_PING:
                return
        self._asked = now
        self._polling = True
        try:
            answers = await self._ask(submitted, searching)
        except SlurmError as e:
            self._failed(e)
            if not e.unreachable:
                self._reach.pollFailed(e)
                self.log.warn("cannot refresh Slurm jobs, will retry: {e}", e=str(e))
            return
        finally:
            self._polling = False
        self._reach.answered()
        if answers.unread and self._accountingError is not None:
            # Jobs squeue no longer knows stay as they were until accounting
            # answers (up to ACCOUNTING_PATIENCE): /healthz says so (it said
            # ok, jobs long ended shown running; Slurm user round 33).
            self._reach.pollFailed(
                SlurmError(
                    f"Slurm's accounting cannot be read, {len(answers.unread)} "
                    f"ended jobs are shown as they were: {self._accountingError}"
                )
            )
        else:
            self._reach.polled()
        now = self._now()
        for job in searching:
            slurmJobId = answers.found.get(job.record.id)
            if slurmJobId is None:
                job.lost(f"{job.lookUpReason} (before Slurm took the job)")
            else:
                job.lookUpReason = None
                job.submitted(slurmJobId)
        unread: set[str] = set()  # jobworker ids
        for job in submitted:
            if job.record.slurm_job_id in answers.unread:
                unread.add(job.record.id)
            try:
                self._update(job, answers, now)
            except Exception:
                # One job's bad news must not stop the others' polling.
                self.log.failure("updating job {job}", job=job.record.id)
        self._unreadSince = {
            jobId: since
            for jobId, since in self._unreadSince.items()
            if jobId in unread
        }

    async def _ask(
        self, submitted: list[SlurmJob], searching: list[SlurmJob]
    ) -> _Answers:
        """What one poll asks Slurm (see L{refresh})."""
        if not submitted and not searching:
            await self._commands.ping()
            return _Answers()
        ids = [j.record.slurm_job_id for j in submitted if j.record.slurm_job_id]
        states = await self._commands.states(ids) if ids else {}
        ended = [
            j.record.slurm_job_id
            for j in submitted
            if j.record.slurm_job_id in states
            and states[j.record.slurm_job_id].state in FINAL
            and isOurs(j.record, states[j.record.slurm_job_id])
        ]
        answers = _Answers(states, await self._exits(ended) if ended else {})
        gone = [i for i in ids if i not in states]
        if not gone:
            self._accountedNow = None  # (an answer nobody needs now: stale)
        if gone:
            # Asked apart, not waited for: a sacct that hangs (slurmdbd
            # gone) held every other job's state back by its 60 s deadline
            # at each poll (Slurm round 34). Its answer is taken in by the
            # poll that finds it (this one, if it came at once); till then
            # those jobs are kept as they are.
            self._askAccounting(gone, submitted)
            covered, accounted = self._accountedNow or (frozenset(), None)
            self._accountedNow = None
            for slurmJobId in gone:
                if slurmJobId not in covered or accounted is None:
                    answers.unread.add(slurmJobId)
                elif slurmJobId in accounted:
                    answers.exits[slurmJobId] = accounted[slurmJobId]
        for job in searching:
            answers.found[job.record.id] = await self._lookUp(job.record)
        return answers

    def _askAccounting(self, gone: list[str], jobs: list[SlurmJob]) -> None:
        """
        Ask accounting about C{gone} (L{_accounted}), unless a call is in
        flight or an answer waits to be taken in.
        """
        if self._accounting is not None or self._accountedNow is not None:
            return
        covered = frozenset(gone)

        def answered(result: dict[str, SlurmState] | None) -> None:
            self._accounting = None
            self._accountedNow = (covered, result)

        def failed(failure: Failure) -> None:
            self._accounting = None
            self.log.failure("asking Slurm's accounting", failure)

        self._accounting = (
            ensureDeferred(self._accounted(gone, jobs))
            .addCallback(answered)
            .addErrback(failed)
        )
        if self._accounting.called:
            self._accounting = None

    async def _exits(self, ended: list[str]) -> dict[str, SlurmState]:
        """
        The exit statuses of the jobs that ended. A failure other than Slurm
        being unreachable ends them without one (logged) rather than keep
        them running forever.
        """
        try:
            return await self._commands.exits(ended)
        except SlurmError as e:
            if e.unreachable:
                raise
            self.log.warn(
                "cannot read the exit status of Slurm jobs {ids}: {error}",
                ids=",".join(ended),
                error=str(e),
            )
            return {}

    async def _accounted(
        self, ids: list[str], jobs: list[SlurmJob]
    ) -> dict[str, SlurmState] | None:
        """
        What accounting says of the jobs squeue no longer knows (ended
        while the server was down, then purged): each one's own entry.
        None if it could not be read (slurmdbd down, or any other failure):
        those jobs are kept as they are, and asked about again at the next
        poll, for they may well be in it (see L{_unaccounted}). A site that
        keeps no accounting answers with no entry.
        """
        try:
            entries = await self._commands.accounting(ids)
        except SlurmError as e:
            if self._accountingError is None:
                self.log.warn(
                    "cannot read Slurm's accounting, so Slurm jobs {ids}, which "
                    "squeue no longer knows, are kept as they are until it "
                    "answers: {error}",
                    ids=",".join(ids),
                    error=str(e),
                    unreachable=e.unreachable,
                )
            self._accountingError = str(e)
            return None
        if self._accountingError is not None:
            self.log.info("Slurm's accounting answers again")
            self._accountingError = None
        found = {}
        for job in jobs:
            slurmJobId = job.record.slurm_job_id or ""
            for entry in entries.get(slurmJobId, []):
                if entry.state in FINAL and isOurs(job.record, entry):
                    found[slurmJobId] = entry
        return found

    def _update(self, job: SlurmJob, answers: _Answers, now: float) -> None:
        slurmJobId = job.record.slurm_job_id or ""
        state = answers.states.get(slurmJobId)
        job.inQueue = (
            state is not None and state.state not in FINAL and isOurs(job.record, state)
        )
        exits = answers.exits
        if state is None and slurmJobId in exits:
            job.update(exits[slurmJobId], now)  # from accounting
        elif state is None and slurmJobId in answers.unread:
            self._unaccounted(job, now)
        elif state is None:
            job.lost(
                f"Slurm no longer knows job {slurmJobId} "
                "(purged after MinJobAge, or slurmctld lost its state)"
            )
        elif not isOurs(job.record, state):
            self.log.warn(
                "Slurm job {slurm} is no longer job {job}'s: Slurm gave the "
                "number to job {name!r}",
                slurm=slurmJobId,
                job=job.record.id,
                name=state.name,
            )
            job.lost(
                f"Slurm no longer knows job {slurmJobId} (the number now belongs "
                "to another job, of another name: slurmctld lost its state, or the job "
                "was renamed in Slurm, and is left to Slurm)"
            )
        else:
            exit = exits.get(slurmJobId)
            if exit is not None and isOurs(job.record, exit):
                if exit.state not in FINAL:
                    return  # squeue's JSON does not confirm the end yet
                state = state.withExit(exit)
            job.update(state, now)

    def _unaccounted(self, job: SlurmJob, now: float) -> None:
        """
        A job squeue no longer knows, whose accounting could not be read:
        kept as it is, but for L{ACCOUNTING_PATIENCE} at most.
        """
        since = self._unreadSince.setdefault(job.record.id, now)
        if now - since < ACCOUNTING_PATIENCE:
            return
        slurmJobId = job.record.slurm_job_id
        minutes = round(ACCOUNTING_PATIENCE / 60)
        self.log.warn(
            "Slurm job {slurm} (job {job}) ends FAILED without its end: squeue "
            "no longer knows it, and accounting could not be read for {minutes} "
            "minutes: {error}",
            slurm=slurmJobId,
            job=job.record.id,
            minutes=minutes,
            error=self._accountingError,
        )
        job.lost(
            f"Slurm no longer knows job {slurmJobId}, and its accounting could "
            f"not be read for {minutes} minutes ({self._accountingError})"
        )

    # -- stopping --------------------------------------------------------------

    async def _lookUp(self, record: JobRecord) -> str | None:
        """The Slurm id of the job named for C{record}, if Slurm has one."""
        named = await self._commands.byName(jobName(record.id))
        for slurmJobId, state in named.items():
            if isOurs(record, state):
                return slurmJobId
        return None
