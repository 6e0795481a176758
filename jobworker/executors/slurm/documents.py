"""
What Slurm's commands print, read: C{squeue --json} documents of every
Slurm version jobworker supports. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class SlurmError(Exception):
    """A Slurm command failed; C{unreachable} if slurmctld could not be reached."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class SlurmState:
    """What Slurm says of one job."""

    state: str
    reason: str
    exitCode: int
    signal: int
    node: str | None
    #: When it started (epoch seconds), if it has.
    startTime: float | None = None
    #: The job's name (C{jobworker-<id>}), to find a job sbatch's answer was lost for.
    name: str = ""


def parseJobs(text: str) -> dict[str, SlurmState]:
    """
    The jobs of C{squeue --json --states=all} output, by Slurm job id.

    JSON, not C{scontrol}'s text: a job may rename itself (C{scontrol update
    JobName=...}) to anything, spaces and C{JobState=} included, and no text
    parsing can then tell its fields from its name.

    @raise ValueError: the output is not the JSON expected.
    @raise SlurmError: Slurm reported an error (with slurmctld down, squeue
        --json exits 0 with no jobs and an error: never take that for "no
        jobs").
    """
    document = json.loads(text)
    errors = document.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        raise SlurmError(
            "squeue: " + str(first.get("description") or first.get("error") or "error"),
            unreachable=True,
        )
    jobs: dict[str, SlurmState] = {}
    for job in document.get("jobs", []):
        state = job.get("job_state")
        if isinstance(state, list):  # newer Slurm: a list of flags
            state = state[0] if state else ""
        status = job.get("exit_code")
        if isinstance(status, dict):  # newer Slurm: {"return_code": {...}, ...}
            status = 0
        status = status if isinstance(status, int) else 0
        started = job.get("start_time")
        if isinstance(started, dict):
            started = started.get("number")
        jobs[str(job.get("job_id"))] = SlurmState(
            state=str(state),
            reason=str(job.get("state_reason") or ""),
            # A wait status: the exit code in the high byte, a signal low.
            exitCode=(status >> 8) & 0xFF,
            signal=status & 0x7F,
            node=str(job.get("nodes") or "") or None,
            startTime=float(started) if isinstance(started, int) and started else None,
            name=str(job.get("name") or ""),
        )
    return jobs
