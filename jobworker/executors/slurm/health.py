"""Whether slurmctld answers: what the last Slurm command found."""

from __future__ import annotations

from twisted.logger import Logger

from ...jobs.executor import ExecutorHealth
from .documents import SlurmError


class Reachability:
    """
    Slurm's reachability as the executor's commands found it: unknown until
    one answered, down from a command that could not reach slurmctld until
    one that could. While it is down, new jobs are refused at once (503)
    instead of each waiting for sbatch's own timeout.
    """

    log = Logger()

    def __init__(self) -> None:
        self._reason: str | None = None
        #: A configuration problem found at start-up (the output folder).
        self.problem: str | None = None
        #: Why the last poll of the jobs failed, Slurm reachable (squeue
        #: could not be run, or answered what cannot be read): no record
        #: moves meanwhile. None once a poll succeeds.
        self._pollFailure: str | None = None

    @property
    def down(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason

    def answered(self) -> None:
        """A command reached slurmctld."""
        if self._reason is not None:
            self.log.info("Slurm is reachable again")
        self._reason = None

    def failed(self, error: SlurmError) -> None:
        """A command failed; only one that could not reach slurmctld counts."""
        if not error.unreachable:
            return
        if self._reason is None:
            self.log.warn(
                "Slurm is unreachable, new jobs refused until it answers: {error}",
                error=str(error),
            )
        self._reason = str(error)

    def pollFailed(self, error: SlurmError) -> None:
        """The poll of the jobs failed, for another reason than Slurm
        unreachable (that is L{failed}'s)."""
        self._pollFailure = f"the poll of Slurm's jobs fails: {error}"

    def polled(self) -> None:
        """A poll of the jobs succeeded."""
        self._pollFailure = None

    def health(self) -> ExecutorHealth:
        if self.down:
            return ExecutorHealth("slurm", False, self._reason)
        if self._pollFailure is not None:
            # (Not down: new jobs are taken, sbatch may well work.)
            return ExecutorHealth("slurm", False, self._pollFailure)
        return ExecutorHealth("slurm", self.problem is None, self.problem)
