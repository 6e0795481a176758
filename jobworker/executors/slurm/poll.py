"""
The Slurm executor's poll: what Slurm says of jobworker's own jobs, asked
once per interval at a cost that grows with them, not with the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from ...jobs.records import JobRecord
from .commands import SlurmCommands
from .documents import SlurmError, SlurmState
from .health import Reachability
from .job import SlurmJob, isOurs
from .outcomes import FINAL
from .submission import jobName

#: How often an idle executor (no job to poll) asks whether slurmctld answers.
IDLE_PING = 30.0


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
            states, exits, found = await self._ask(submitted, searching)
        except SlurmError as e:
            self._failed(e)
            if not e.unreachable:
                self.log.warn("cannot refresh Slurm jobs, will retry: {e}", e=str(e))
            return
        finally:
            self._polling = False
        self._reach.answered()
        now = self._now()
        for job in searching:
            slurmJobId = found.get(job.record.id)
            if slurmJobId is None:
                job.lost(f"{job.lookUpReason} (before Slurm took the job)")
            else:
                job.lookUpReason = None
                job.submitted(slurmJobId)
        for job in submitted:
            try:
                self._update(job, states, exits, now)
            except Exception:
                # One job's bad news must not stop the others' polling.
                self.log.failure("updating job {job}", job=job.record.id)

    async def _ask(
        self, submitted: list[SlurmJob], searching: list[SlurmJob]
    ) -> tuple[dict[str, SlurmState], dict[str, SlurmState], dict[str, str | None]]:
        """What one poll asks Slurm (see L{refresh})."""
        if not submitted and not searching:
            await self._commands.ping()
            return {}, {}, {}
        ids = [j.record.slurm_job_id for j in submitted if j.record.slurm_job_id]
        states = await self._commands.states(ids) if ids else {}
        ended = [
            j.record.slurm_job_id
            for j in submitted
            if j.record.slurm_job_id in states
            and states[j.record.slurm_job_id].state in FINAL
            and isOurs(j.record, states[j.record.slurm_job_id])
        ]
        exits = await self._exits(ended) if ended else {}
        gone = [i for i in ids if i not in states]
        if gone:
            exits.update(await self._accounted(gone, submitted))
        found = {j.record.id: await self._lookUp(j.record) for j in searching}
        return states, exits, found

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
    ) -> dict[str, SlurmState]:
        """
        What accounting says of the jobs squeue no longer knows (ended
        while the server was down, then purged): each one's own entry.
        """
        try:
            entries = await self._commands.accounting(ids)
        except SlurmError as e:
            self.log.warn("cannot read Slurm's accounting: {error}", error=str(e))
            return {}
        found = {}
        for job in jobs:
            slurmJobId = job.record.slurm_job_id or ""
            for entry in entries.get(slurmJobId, []):
                if entry.state in FINAL and isOurs(job.record, entry):
                    found[slurmJobId] = entry
        return found

    def _update(
        self,
        job: SlurmJob,
        states: dict[str, SlurmState],
        exits: dict[str, SlurmState],
        now: float,
    ) -> None:
        slurmJobId = job.record.slurm_job_id or ""
        state = states.get(slurmJobId)
        if state is None and slurmJobId in exits:
            job.update(exits[slurmJobId], now)  # from accounting
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
                "to another job: slurmctld lost its state)"
            )
        else:
            exit = exits.get(slurmJobId)
            if exit is not None and isOurs(job.record, exit):
                if exit.state not in FINAL:
                    return  # squeue's JSON does not confirm the end yet
                state = state.withExit(exit)
            job.update(state, now)

    # -- stopping --------------------------------------------------------------

    async def _lookUp(self, record: JobRecord) -> str | None:
        """The Slurm id of the job named for C{record}, if Slurm has one."""
        named = await self._commands.byName(jobName(record.id))
        for slurmJobId, state in named.items():
            if isOurs(record, state):
                return slurmJobId
        return None
