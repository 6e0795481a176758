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
    {
        "PENDING",
        "CONFIGURING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        # Held requeues: a code of the site's RequeueExitHold, an
        # administrator's requeuehold (it read RUNNING for ever: Slurm user
        # round 38), a federation's.
        "SPECIAL_EXIT",
        "REQUEUE_FED",
    }
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


#: Slurm's reasons for a queued job it will never start, with what each
#: means: Slurm leaves such a job PENDING for good (only an administrator
#: could change its account, QOS or partition). Any other reason passes.
#: One of them that holds L{NEVER_STARTS_AFTER} seconds ends the job.
NEVER_STARTS = {
    "InvalidAccount": "its account is invalid",
    "InvalidQOS": "its QOS is invalid",
    "AccountNotAllowed": "its account may not use its partition",
    "QOSNotAllowed": "its QOS may not use its partition",
    "BadConstraints": "its constraints cannot be satisfied",
}
#: How long such a reason must hold (an administrator may fix an account,
#: a QOS or a node's features meanwhile) before the job is given up.
NEVER_STARTS_AFTER = 600.0


@dataclass(frozen=True)
class Outcome:
    """How a job ended, in jobworker's terms."""

    status: JobStatus
    exitCode: int | None = None
    signal: str | None = None
    error: str | None = None


#: Slurm's final states that may end a job still in its queue (cancelled,
#: its deadline passed, its node never booted); any other end ran.
QUEUE_ENDINGS = frozenset({"CANCELLED", "DEADLINE", "BOOT_FAIL"})


def ranIn(state: SlurmState) -> bool:
    """
    Whether a job Slurm reports in the final C{state} ran, when no poll saw
    it running: it started and ended between two polls. Slurm gives a job
    nodes only once it is allocated them, so a queue ending with a node ran
    (a C{BOOT_FAIL}'s node never booted: it did not).
    """
    if state.state not in QUEUE_ENDINGS:
        return True
    return state.state != "BOOT_FAIL" and state.node is not None


#: Ends of a running job that Slurm, or someone in it, chose (a stop through
#: jobworker is STOPPED instead), in words.
OUTSIDE_ENDINGS = {
    "PREEMPTED": "preempted by Slurm (a job of a higher priority took its place)",
    "CANCELLED": "cancelled in Slurm, not through jobworker (scancel)",
}


def outcomeOf(
    state: SlurmState,
    stopRequested: bool,
    timeoutSeconds: float | None,
    ran: bool = True,
) -> Outcome:
    """
    The ending of a job Slurm reports in a final state.

    @param stopRequested: a user asked to stop it (then it is STOPPED,
        whatever Slurm's state).
    @param timeoutSeconds: the job's time limit as asked, for the message.
    @param ran: it started (False: it ended in the queue, and Slurm's exit
        code, 0:0, means nothing: there is none, as for a local job).
    """
    code = state.exitCode
    signal = signalName(state.signal) if state.signal else None
    reason = f" ({state.reason})" if state.reason not in ("", "None") else ""
    if not ran:
        if stopRequested:
            return Outcome(
                JobStatus.STOPPED, None, None, "never ran: stopped while queued"
            )
        return Outcome(
            JobStatus.FAILED,
            None,
            None,
            f"never ran: Slurm ended it {state.state} while queued{reason}",
        )
    if stopRequested:
        if state.state != "COMPLETED" and not signal and code == 0:
            # Cancelled with 0:0: no status came (its node stopped
            # answering and Slurm gave up on it, its processes maybe still
            # running), not an exit 0 (`jw wait` exited 0: Slurm round 27).
            code = None
        return Outcome(JobStatus.STOPPED, code if not signal else None, signal)
    if state.state == "COMPLETED" and code in (0, None) and not signal:
        # Slurm's COMPLETED is every process ended with exit code 0: so with
        # no exit status read (squeue --json failed as the job ended, the
        # plain poll did not), not FAILED "Slurm ended it COMPLETED", for
        # good, its after_ok jobs failed with it (Slurm round 32).
        return Outcome(JobStatus.COMPLETED, 0)
    if state.state == "TIMEOUT":
        limit = (
            f": {timeoutSeconds:.15g} s, rounded up to whole minutes)"
            if timeoutSeconds is not None
            else ")"
        )
        # A code of its own (it caught TERM and exited 3: TIMEOUT 3:0) is
        # kept, as a local job's; 0:0 says nothing here.
        return Outcome(
            JobStatus.FAILED,
            None if signal else (code or None),
            signal,
            "timed out (Slurm's time limit" + limit,
        )
    if state.state == "OUT_OF_MEMORY":
        return _outOfMemory(code, signal)
    if state.state == "NODE_FAIL":
        # (The status Slurm kept, 9:0 or 0:15, is kept: Slurm round 37.)
        return Outcome(
            JobStatus.FAILED,
            None if signal else (code or None),
            signal,
            f"its node {state.node or '(unknown)'} failed: Slurm ended it "
            f"NODE_FAIL{reason}",
        )
    if state.invalidStatus is not None:
        # Slurm's own error number where a wait status belongs: the node
        # could not start the batch script (e.g. 4021, its output file
        # could not be opened). Not a signal.
        return Outcome(
            JobStatus.FAILED,
            None,
            None,
            f"Slurm could not launch the job{reason}, status {state.invalidStatus}: "
            "the node could not start it (is --slurm-output-dir shared with "
            "the nodes, and writable there by the job's account?)",
        )
    who = OUTSIDE_ENDINGS.get(state.state)
    if who is not None:
        # Not the job's own doing: say whose (a signal alone said nothing).
        killed = f": killed by signal {signal}" if signal else ""
        return Outcome(
            JobStatus.FAILED,
            None if signal else (code or None),
            signal,
            f"{who}{reason}{killed}",
        )
    if signal:
        return Outcome(JobStatus.FAILED, None, signal, f"killed by signal {signal}")
    if code is not None and code != 0:
        return Outcome(JobStatus.FAILED, code, None, f"exited with code {code}")
    if state.state == "FAILED" and state.reason == "NonZeroExitCode":
        return Outcome(
            JobStatus.FAILED,
            None,
            None,
            "exited with a non-zero code (Slurm's JSON does not say which)",
        )
    # (Never exit code 0 for a FAILED job: Slurm's 0:0 says nothing here.)
    return Outcome(
        JobStatus.FAILED, code or None, None, f"Slurm ended it {state.state}{reason}"
    )


def _outOfMemory(code: int | None, signal: str | None) -> Outcome:
    """
    An end Slurm calls OUT_OF_MEMORY. The kernel's OOM killer SIGKILLs, but
    Slurm records its own status instead (SIG_OOM: raw 253, sacct's
    C{0:125}; no wait status, so neither code nor signal here): the job is
    recorded as a local job killed at its memory limit is, SIGKILL (C{jw
    wait} exits 137, not 255 for an end it does not know). A code or signal
    Slurm did give (a child was killed and the job exited its own way)
    stands.
    """
    if signal:
        return Outcome(
            JobStatus.FAILED,
            None,
            signal,
            f"out of memory (Slurm): killed by signal {signal}",
        )
    if code:
        return Outcome(
            JobStatus.FAILED,
            code,
            None,
            f"out of memory (Slurm): exited with code {code}",
        )
    return Outcome(
        JobStatus.FAILED,
        None,
        "SIGKILL",
        "out of memory: killed at its memory limit (Slurm's OUT_OF_MEMORY)",
    )
