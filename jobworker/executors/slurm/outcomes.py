"""
How a Slurm job's end becomes a jobworker ending: the mapping from Slurm's
state and exit status to a status, exit code, signal and error. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...jobs.records import JobStatus, signalName
from .documents import SlurmState

#: Slurm states in which the job is queued, running, or finished.
QUEUED = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
)
FINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


@dataclass(frozen=True)
class Outcome:
    """How a job ended, in jobworker's terms."""

    status: JobStatus
    exitCode: int | None = None
    signal: str | None = None
    error: str | None = None


def outcomeOf(
    state: SlurmState, stopRequested: bool, timeoutSeconds: float | None
) -> Outcome:
    """
    The ending of a job Slurm reports in a final state.

    @param stopRequested: a user asked to stop it (then it is STOPPED,
        whatever Slurm's state).
    @param timeoutSeconds: the job's time limit as asked, for the message.
    """
    code: int | None = state.exitCode
    signal = signalName(state.signal) if state.signal else None
    if stopRequested:
        return Outcome(JobStatus.STOPPED, code if not signal else None, signal)
    if state.state == "COMPLETED" and code == 0:
        return Outcome(JobStatus.COMPLETED, 0)
    if state.state == "TIMEOUT":
        limit = (
            f": {timeoutSeconds:g} s, rounded up to whole minutes)"
            if timeoutSeconds is not None
            else ")"
        )
        return Outcome(
            JobStatus.FAILED, None, signal, "timed out (Slurm's time limit" + limit
        )
    if state.state == "OUT_OF_MEMORY":
        return Outcome(JobStatus.FAILED, None, signal, "out of memory (Slurm)")
    if state.state == "FAILED" and not signal:
        return Outcome(JobStatus.FAILED, code, None, f"exited with code {code}")
    if signal:
        return Outcome(JobStatus.FAILED, None, signal, f"killed by signal {signal}")
    reason = f" ({state.reason})" if state.reason not in ("", "None") else ""
    return Outcome(
        JobStatus.FAILED, code, None, f"Slurm ended it {state.state}{reason}"
    )
