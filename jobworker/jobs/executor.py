"""
What the job manager asks of an executor, and of the jobs it runs.

Two executors implement it:
L{jobworker.executors.local.executor.LocalExecutor} (a process of this
machine per job) and L{jobworker.executors.slurm.executor.SlurmExecutor} (a
Slurm batch job per job). The manager keeps the records, the store and the rules common
to both; nothing above the manager (API, auth, CLI) knows which one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from .identity import Identity
from .limits import Limits
from .order import OrderLog
from .records import JobRecord
from .spool import OutputSource
from .stopping import DEFAULT_STOP, StopRequest
from .validation import JobRequest


@dataclass(frozen=True)
class ExecutorHealth:
    """
    Whether an executor can take jobs now (C{/healthz}, C{/metrics}). An
    executor may offer C{health() -> ExecutorHealth}; one that does not is
    always up.
    """

    executor: str
    up: bool
    #: Why it is not up (what the last attempt said), else None.
    reason: str | None = None


#: Asked at a queued job's turn, with its owner and the account it was
#: queued to run as (None: unmapped): why it may not start now (None: it
#: may), and the owner's account as the users file has it now.
OwnerCheck = Callable[[str, str | None], tuple[str | None, Identity | None]]


class LiveOutput(OutputSource, Protocol):
    """A stream of a job that has not ended (it may record output order)."""

    @property
    def order(self) -> OrderLog | None: ...


class LiveJob(Protocol):
    """A job an executor is running (or has queued)."""

    @property
    def record(self) -> JobRecord: ...

    @property
    def stdout(self) -> LiveOutput: ...

    @property
    def stderr(self) -> LiveOutput: ...

    def snapshot(self) -> JobRecord:
        """The record, brought up to date."""

    def whenAccepted(self) -> Deferred[JobRecord]:
        """
        Fires once the executor has taken the job (at once locally; after
        C{sbatch} answered for Slurm); fails with L{ServiceUnavailable} when
        the executor could not be reached, and then the job never existed.
        """

    def whenEnded(self) -> Deferred[JobRecord]:
        """Fires with the final record."""

    def whenCleanedUp(self) -> Deferred[None]:
        """Fires once nothing of the job is left to watch."""

    def stop(self, by: str, how: StopRequest = DEFAULT_STOP) -> Deferred[JobRecord]:
        """
        Stop it (C{how.signal}, TERM by default; the grace period; KILL);
        fires once it has ended.
        """

    def writeStdin(
        self, data: bytes, eof: bool, offset: int | None = None
    ) -> Deferred[int]:
        """Feed the job's stdin (C{"stdin": true} jobs); see L{JobManager}."""

    def endLeftovers(self, how: StopRequest) -> bool:
        """
        A stop of the job once it has ended: what it left still running
        under its grace gets a harder stop (KILL, a shorter grace), if this
        is one. True if it did.
        """

    @property
    def stdinClosed(self) -> bool:
        """Its stdin was fed and is closed (False: none, or still open)."""

    def recorded(self) -> None:
        """The store has the job's record: let it run (locally, it waits
        behind its gate until then)."""

    def abort(self, reason: str) -> None:
        """The job could not be recorded: end it at once."""


class Executor(Protocol):
    """Runs jobs somewhere; the manager owns everything else."""

    @property
    def name(self) -> str:
        """C{local} or C{slurm}: recorded with each job."""

    @property
    def grace(self) -> float:
        """The server's stop grace (C{--stop-grace}), in seconds."""

    def identityFor(self, owner: str, account: Identity | None) -> Identity:
        """
        The identity a new job of C{owner} runs as, who is mapped to
        C{account} (or not): L{Forbidden} if this executor cannot give that user one,
        L{TooManyRequests} if none is free. Given back with L{release}.
        """

    def release(self, identity: Identity) -> None:
        """A job that never launched gives its identity back."""

    def environment(self, identity: Identity) -> dict[str, str]:
        """The environment a job of C{identity} starts from; the request's
        env goes over it."""

    def attach(
        self,
        save: Callable[[JobRecord], None],
        find: Callable[[str], JobRecord | None],
    ) -> None:
        """
        How to store a live job's record when it changes before its end
        (C{save}), and how to read another job's record, None if there is
        none (C{find}: the Slurm executor reads a job's dependencies).
        """

    def ownersChanged(self, check: OwnerCheck) -> None:
        """
        The users file changed, or the server started: each job waiting in
        this executor's own queue (Slurm's) starts only as a new request of
        its owner would. C{check} (the manager's L{OwnerCheck}) says why not,
        given its owner and the account it was made to run as (None: its
        owner was mapped to none); such a job ends FAILED, never started.
        The manager's own queue is checked at each job's turn.
        """

    def holdsDependencies(self, unended: Sequence[JobRecord]) -> bool:
        """
        Whether this executor itself holds a new job until C{unended}, the
        jobs its request names in C{after}/C{after_ok} that have not ended,
        have (Slurm: C{--dependency}). Then the manager launches it at once,
        and the executor reads the dependencies from the request; else the
        manager's queue holds it until they end.
        """

    def outputDir(self, jobId: str) -> str:
        """The folder of a job's output files."""

    def outputPath(self, jobId: str, stream: str) -> str:
        """A job's C{stdout}, C{stderr} or C{order} file."""

    def checkRequest(self, request: JobRequest, identity: Identity) -> None:
        """Refuse (L{BadRequest}) what this executor cannot run safely as
        C{identity}."""

    def checkQueued(self, request: JobRequest, account: Identity | None) -> None:
        """
        L{checkRequest} of a job that waits in jobworker's queue, before it
        has an identity: as the one a user mapped to C{account} would get
        now (checked again at its turn). A request refused when it could
        start was taken when it had to wait, and failed at its turn: code
        review 38.
        """

    def limitsFor(self, requested: Limits) -> Limits:
        """The limits a job gets (L{BadRequest} past the maxima)."""

    def recordedLimits(self, limits: Limits) -> dict[str, int | None] | None:
        """What the job record shows of its limits."""

    def launch(
        self,
        record: JobRecord,
        request: JobRequest,
        limits: Limits,
        timeout: float | None,
        identity: Identity,
    ) -> LiveJob:
        """Start (or queue) a job for C{record}, as C{identity}; the
        executor gives the identity back once nothing of the job is left."""

    def recover(self, records: list[JobRecord], reason: str) -> Sequence[LiveJob]:
        """
        At start-up, jobs the store says were not finished: re-attach to the
        ones still alive (returned) and close the others' records (as a
        stored stop or exit says, else FAILED with C{reason}).
        """

    def shutdown(self, jobs: list[LiveJob]) -> Deferred[None]:
        """The server stops: stop the jobs, or leave them to run (Slurm)."""
