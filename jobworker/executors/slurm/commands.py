"""
Slurm's command-line tools (sbatch, squeue, scancel) as child processes
with deadlines, and what their JSON says.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...jobs.identity import Identity
from ...jobs.policy import JobReactor
from ..local.sandbox import SETPRIV

#: Seconds a Slurm command may take before it is killed (slurmctld down
#: makes them wait for Slurm's MessageTimeout first).
COMMAND_TIMEOUT = 60.0

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

#: What Slurm's commands say when slurmctld cannot be reached.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused"
    r"|Zero Bytes were transmitted|Communication connection failure",
    re.IGNORECASE,
)


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


class _CommandOutput(ProcessProtocol):
    """Gather a command's output; kill it past its deadline."""

    def __init__(self, reactor: JobReactor, timeout: float) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[tuple[str, str, int]] = Deferred()
        self._timer: IDelayedCall | None = reactor.callLater(timeout, self._expire)
        self._expired = False

    def _expire(self) -> None:
        self._timer = None
        self._expired = True
        if self.transport is not None:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess("KILL")

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        code = 0
        if isinstance(reason.value, ProcessTerminated):
            code = reason.value.exitCode if reason.value.exitCode is not None else -1
        elif not isinstance(reason.value, ProcessDone):
            code = -1
        err = b"".join(self.err).decode("utf-8", "replace")
        if self._expired:
            err += "\n(timed out: Unable to contact slurm controller in time)"
        self.done.callback((b"".join(self.out).decode("utf-8", "replace"), err, code))


class SlurmCommands:
    """Slurm's command-line tools, each run as a child process."""

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        serverUid: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._serverUid = os.getuid() if serverUid is None else serverUid
        if env is None:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            if "SLURM_CONF" in os.environ:
                env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        self._env = env

    def becoming(self, identity: Identity | None) -> list[str]:
        """
        The C{setpriv} prefix that runs a command as C{identity}: none
        unless the server is root and C{identity} is someone else.
        """
        if identity is None or self._serverUid != 0 or identity.uid == self._serverUid:
            return []
        return identity.setpriv(SETPRIV)

    async def run(
        self, *argv: str, identity: Identity | None = None
    ) -> tuple[str, str, int]:
        """
        Run one command, as C{identity} if given (see L{becoming}); (stdout,
        stderr, exit code).
        """
        executable = shutil.which(argv[0], path=self._env.get("PATH")) or argv[0]
        args = list(argv)
        prefix = self.becoming(identity)
        if prefix:
            executable, args = prefix[0], [*prefix, executable, *argv[1:]]
        collect = _CommandOutput(self._reactor, self._timeout)
        try:
            self._reactor.spawnProcess(collect, executable, args, env=self._env)
        except OSError as e:
            raise SlurmError(f"cannot run {argv[0]}: {e.strerror}") from None
        return await collect.done

    def _check(self, what: str, result: tuple[str, str, int]) -> str:
        out, err, code = result
        if code == 0:
            return out
        message = (
            " ".join(
                line.strip().removeprefix(f"{what}: error: ")
                for line in err.strip().splitlines()[-2:]
            )
            or f"{what} exited with status {code}"
        )
        raise SlurmError(f"{what}: {message}", bool(_UNREACHABLE.search(err)))

    async def submit(
        self, options: list[str], script: list[str], identity: Identity | None = None
    ) -> str:
        """C{sbatch --parsable}, as C{identity}: the new job's id."""
        out = self._check(
            "sbatch",
            await self.run(
                "sbatch", "--parsable", *options, *script, identity=identity
            ),
        )
        jobId = out.strip().split(";")[0]
        if not jobId.isdigit():
            raise SlurmError(f"sbatch: unexpected answer {out.strip()[:100]!r}")
        return jobId

    async def jobs(self) -> dict[str, SlurmState]:
        """Every job slurmctld knows, in one call."""
        out = self._check("squeue", await self.run("squeue", "--json", "--states=all"))
        try:
            return parseJobs(out)
        except (ValueError, TypeError, AttributeError) as e:
            raise SlurmError(f"squeue: unexpected output ({e})") from None

    async def cancelByName(self, name: str, identity: Identity | None = None) -> None:
        """Cancel every job of this name (one whose sbatch answer was lost)."""
        self._check(
            "scancel",
            await self.run("scancel", f"--jobname={name}", identity=identity),
        )

    async def signal(
        self, jobId: str, name: str, identity: Identity | None = None
    ) -> None:
        """Send signal C{name} to every process of the job (script included)."""
        self._check(
            "scancel",
            await self.run(
                "scancel", "--full", f"--signal={name}", jobId, identity=identity
            ),
        )

    async def cancel(self, jobId: str, identity: Identity | None = None) -> None:
        """Cancel it: Slurm sends TERM, then KILL after its KillWait."""
        self._check("scancel", await self.run("scancel", jobId, identity=identity))
