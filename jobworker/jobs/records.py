"""The job record and its state machine: pure data, no I/O."""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class JobStatus(enum.Enum):
    """
    The states of a job: PENDING (queued by an executor such as Slurm, not
    yet running) and RUNNING are not final; the others are.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def ended(self) -> bool:
        """True for every state a job cannot leave."""
        return self is not JobStatus.RUNNING and self is not JobStatus.PENDING


def rfc3339(when: float | None) -> str | None:
    """Format a POSIX timestamp as RFC 3339 UTC with milliseconds, or None."""
    if when is None:
        return None
    stamp = datetime.fromtimestamp(when, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: How a job's error begins when its memory limit killed its main process
#: (local or Slurm); after the error of its end, it follows a colon when the
#: limit killed another of its processes (L{memoryKilled}).
OUT_OF_MEMORY = "out of memory"


def memoryKilled(error: str | None) -> bool:
    """Whether a job's error says its memory limit killed a process of it."""
    return error is not None and (
        error.startswith(OUT_OF_MEMORY) or f": {OUT_OF_MEMORY}: " in error
    )


def signalName(number: int) -> str:
    """C{9} -> C{"SIGKILL"}; unknown numbers become C{"SIG<n>"}."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@dataclass
class JobRecord:
    """
    Everything the API tells about one job.

    The environment is deliberately not part of the record's JSON: it may hold
    secrets, and nobody but the job needs it back.
    """

    id: str
    command: str
    args: list[str]
    owner: str
    created_at: float
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    status: JobStatus = JobStatus.RUNNING
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    stopped_by: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    #: Bytes discarded past the per-stream cap (--max-log-bytes).
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    #: Bytes that could not be written to disk (disk full, I/O error).
    output_lost: int = 0
    #: Internal: the store's sequence number (list order and cursors).
    seq: int | None = field(default=None, compare=False)
    #: Internal: the machine boot and the process start time (clock ticks
    #: since boot) of the job's leader, to find its group after a crash
    #: without ever signalling a reused pid.
    boot_id: str | None = None
    proc_start: int | None = None
    #: Resource limits in force (cgroup), and the timeout, if any.
    limits: dict[str, int | None] | None = None
    timeout_seconds: float | None = None
    #: Which executor runs it (C{local} or C{slurm}), and for Slurm its job
    #: id and the node it ran on.
    executor: str = "local"
    slurm_job_id: str | None = None
    node: str | None = None
    #: Why a PENDING job waits (Slurm's reason, e.g. C{Resources}); None
    #: once it runs, and for jobs that never waited.
    pending_reason: str | None = None
    #: Internal: when a stop was started (TERM sent), so that a restarted
    #: server goes on with the escalation (Slurm).
    stop_requested_at: float | None = None
    #: Internal: how that stop was asked for, the signal it began with (its
    #: name, C{SIGINT}) and its grace (None: the server's --stop-grace), so
    #: that a restarted server goes on with that stop (Slurm).
    stop_signal: str | None = None
    stop_grace: float | None = None
    #: The Unix identity the job runs as: an account name, C{dynamic:<uid>},
    #: or the server's own user.
    run_as: str | None = None
    #: An optional name and labels to find the job by (L{selection}).
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: Whether the job's stdin is fed through C{POST /jobs/ID/stdin}.
    stdin: bool = False
    #: The queue: its priority, the jobs it starts after (any end / only
    #: COMPLETED), and (internal) whether it still waits in jobworker's queue.
    priority: int = 0
    after: list[str] = field(default_factory=list)
    after_ok: list[str] = field(default_factory=list)
    queued: bool = False
    #: Internal: the limits a queued job asked for (the given ones, before
    #: the defaults), stored while it waits: its turn fills in the defaults
    #: and checks the maxima of the server as it is then (late review 35).
    asked_limits: dict[str, int | None] | None = None
    #: Internal: where in the Slurm cluster it asked to run (the given
    #: fields of its C{"slurm"}), submitted with it when its turn comes.
    slurm: dict[str, str | int | bool] = field(default_factory=dict)
    #: Internal: set by the manager on an ended record read back from the
    #: store, which never changes again; the API then keeps its encoded JSON.
    final: bool = field(default=False, init=False, repr=False, compare=False)
    encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def finish(
        self,
        status: JobStatus,
        when: float,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        error: str | None = None,
    ) -> None:
        """
        Record how the job ended. Called once; a second call is a bug.

        @raise RuntimeError: if the job had already ended.
        """
        if self.status.ended:
            raise RuntimeError(f"job {self.id} already ended as {self.status.value}")
        if not status.ended:
            raise ValueError("finish() needs a final status")
        self.status = status
        # Never before its start, nor its creation: a step back of the wall
        # clock met by an end that no clamp of its own saw (crash recovery,
        # a queued job stopped: code review round 32); retention counts
        # from the end.
        began = self.started_at if self.started_at is not None else self.created_at
        self.ended_at = max(when, began)
        self.exit_code = exit_code
        self.signal = signal
        self.error = error

    def toJSON(self) -> dict[str, Any]:
        """The job object of the API."""
        return {
            "id": self.id,
            "command": self.command,
            "args": list(self.args),
            "cwd": self.cwd,
            "owner": self.owner,
            "status": self.status.value,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": self.error,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "stopped_by": self.stopped_by,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "stdout_truncated": self.stdout_dropped > 0,
            "stdout_dropped": self.stdout_dropped,
            "stderr_truncated": self.stderr_dropped > 0,
            "stderr_dropped": self.stderr_dropped,
            "output_lost": self.output_lost,
            "limits": self.limits,
            "timeout_seconds": self.timeout_seconds,
            "executor": self.executor,
            "slurm_job_id": self.slurm_job_id,
            "node": self.node,
            "pending_reason": self.pending_reason,
            "run_as": self.run_as,
            "name": self.name,
            "labels": dict(self.labels),
            "stdin": self.stdin,
            "priority": self.priority,
            "after": list(self.after),
            "after_ok": list(self.after_ok),
        }
