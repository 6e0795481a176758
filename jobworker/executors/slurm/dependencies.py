"""
A job's C{after}/C{after_ok} as Slurm's C{--dependency}, and which of them
failed when Slurm cancels the job for it. Pure: no I/O.

C{after} is Slurm's C{afterany} (start once they ended, however), C{after_ok}
its C{afterok} (only if they all completed). With C{--kill-on-invalid-dep=yes}
Slurm cancels a job whose C{afterok} can never be met (reason
C{DependencyNeverSatisfied}) rather than leave it pending forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...jobs.queue import dependencyFailure
from ...jobs.records import JobRecord, JobStatus

#: Slurm's reason for a job it cancelled because an C{afterok} failed.
NEVER_SATISFIED = "DependencyNeverSatisfied"


def dependencyOptions(after: Sequence[str], afterOk: Sequence[str]) -> list[str]:
    """
    The sbatch options of a job held until the Slurm jobs C{after} end
    (any state) and C{afterOk} complete; none if there are none. A job in
    both is only C{afterok}, the stricter.
    """
    afterAny = [slurmId for slurmId in after if slurmId not in afterOk]
    kinds = [
        f"{kind}:{':'.join(ids)}"
        for kind, ids in (("afterany", afterAny), ("afterok", afterOk))
        if ids
    ]
    if not kinds:
        return []
    return [f"--dependency={','.join(kinds)}", "--kill-on-invalid-dep=yes"]


@dataclass(frozen=True)
class DependencyVerdict:
    """What the C{after_ok} jobs of a job Slurm cancelled for them say."""

    #: Why the job never ran (see L{dependencyFailure}); None: none of them
    #: ended otherwise than COMPLETED as far as jobworker knows.
    error: str | None = None
    #: One of them has not ended in jobworker's records yet (Slurm ended it,
    #: the next poll will say so): ask again then.
    waiting: bool = False


def failedDependency(
    afterOk: Sequence[str], find: Callable[[str], JobRecord | None]
) -> DependencyVerdict:
    """
    Which of C{afterOk} (jobworker ids, in the request's order) made Slurm
    cancel their dependent: the first that ended otherwise than COMPLETED,
    as C{find} (a job's current record, None if deleted) says.
    """
    records = [find(jobId) for jobId in afterOk]
    for record in records:
        if (
            record is not None
            and record.status.ended
            and record.status is not JobStatus.COMPLETED
        ):
            return DependencyVerdict(error=dependencyFailure(record))
    waiting = any(r is not None and not r.status.ended for r in records)
    return DependencyVerdict(waiting=waiting)
