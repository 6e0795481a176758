"""
Slurm's command-line tools (sbatch, squeue, scancel) as child processes
with deadlines (what they print is read by L{documents}).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import uuid

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...jobs.identity import Identity
from ...jobs.policy import JobReactor
from ..local.sandbox import SETPRIV
from .documents import (
    ACCOUNTING_FORMAT,
    SlurmError,
    SlurmState,
    parseAccounting,
    parseJobs,
    parseStates,
    stateFormat,
)

#: Seconds a Slurm command may take before it is killed (slurmctld down
#: makes them wait for Slurm's MessageTimeout first).
COMMAND_TIMEOUT = 60.0

#: What Slurm's commands say when slurmctld cannot be reached.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused"
    r"|Zero Bytes were transmitted|Communication connection failure",
    re.IGNORECASE,
)


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
        transport = self.transport
        if transport is not None:
            pid = getattr(transport, "pid", None)
            if pid:
                # Its group too (the sieve makes one, for the squeue it
                # runs): unreaped, the command's pid is no other group's.
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessExitedAlready, OSError):
                transport.signalProcess("KILL")
            # Whatever else holds its pipes (a child it left: the sieve's
            # squeue held stderr, and every later poll waited for it: Slurm
            # round 34), it is done once it is reaped.
            transport.loseConnection()

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


#: Job ids asked of squeue or sacct in one call: all of them in one
#: C{--jobs=} argument ran past Linux's 128 KiB for one argument at about
#: 14,600 live jobs of 8-digit ids, and every poll failed (Slurm round 31).
IDS_PER_CALL = 2000


def inChunks(ids: list[str]) -> list[list[str]]:
    """C{ids} by L{IDS_PER_CALL}."""
    return [ids[at : at + IDS_PER_CALL] for at in range(0, len(ids), IDS_PER_CALL)]


class SlurmCommands:
    """Slurm's command-line tools, each run as a child process."""

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        serverUid: int | None = None,
        descriptorLimit: int | None = None,
        umask: int | None = None,
    ) -> None:
        """
        @param descriptorLimit: the soft C{RLIMIT_NOFILE} sbatch runs with,
            which it hands to the job (Slurm's C{PropagateResourceLimits});
            None: the server's.
        @param umask: the umask sbatch runs with, which it hands to the job
            (C{SLURM_UMASK}); None: the server's (077 once twistd daemonized).
        """
        self._descriptorLimit = descriptorLimit
        self._umask = umask
        self._reactor = reactor
        self._timeout = timeout
        self._serverUid = os.getuid() if serverUid is None else serverUid
        if env is None:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            if "SLURM_CONF" in os.environ:
                env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        #: sbatch's: --export=ALL hands it to the job, as is.
        self._submitEnv = dict(env)
        #: The queries': times as epoch seconds in squeue's --format output.
        self._env = {**env, "SLURM_TIME_FORMAT": "%s"}

    def becoming(self, identity: Identity | None) -> list[str]:
        """
        The C{setpriv} prefix that runs a command as C{identity}: none
        unless the server is root and C{identity} is someone else.
        """
        if identity is None or self._serverUid != 0 or identity.uid == self._serverUid:
            return []
        return identity.setpriv(SETPRIV)

    async def run(
        self,
        *argv: str,
        identity: Identity | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[str, str, int]:
        """
        Run one command, as C{identity} if given (see L{becoming}), with
        C{env} (the queries' by default); (stdout, stderr, exit code).
        """
        env = self._env if env is None else env
        executable = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
        args = list(argv)
        prefix = self.becoming(identity)
        if prefix:
            executable, args = prefix[0], [*prefix, executable, *argv[1:]]
        collect = _CommandOutput(self._reactor, self._timeout)
        try:
            self._reactor.spawnProcess(collect, executable, args, env=env)
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
        argv = ["sbatch", "--parsable", *options, *script]
        # The limit and umask the server was started with, not the ones it
        # (or twistd, daemonizing) set its own to: sbatch hands them to the
        # job.
        settings = []
        if self._umask is not None:
            settings.append(f"umask {self._umask:04o}")
        if self._descriptorLimit is not None:
            settings.append(f"ulimit -Sn {self._descriptorLimit:d}")
        if settings:
            wrapper = " && ".join([*settings, 'exec "$@"'])
            argv = ["sh", "-c", wrapper, "jobworker-sbatch", *argv]
        out = self._check(
            "sbatch", await self.run(*argv, identity=identity, env=self._submitEnv)
        )
        # Its last line that is an id ("42", or "42;cluster"): a site's
        # sbatch wrapper may print a banner first (every job was FAILED
        # "Slurm refused the job", Slurm ran it: Slurm round 34).
        for line in reversed(out.strip().splitlines()):
            jobId = line.strip().split(";")[0]
            if jobId.isdigit():
                return jobId
        raise SlurmError(
            f"sbatch: unexpected answer {out.strip()[:100]!r}", unread=True
        )

    async def states(self, ids: list[str]) -> dict[str, SlurmState]:
        """
        The state of the jobs C{ids} (and only theirs), in one call per
        L{IDS_PER_CALL}; no exit status (see L{exits}). Jobs Slurm no
        longer knows are left out.
        """
        found: dict[str, SlurmState] = {}
        for some in inChunks(ids):
            # One id alone, unknown to Slurm, is an error ("Invalid job id
            # specified"); two or more unknown ones are an empty answer.
            asked = ",".join(some if len(some) > 1 else some * 2)
            found.update(await self._states(f"--jobs={asked}"))
        return found

    async def stateOf(self, jobId: str) -> SlurmState | None:
        """What Slurm says of the job C{jobId} now; None if it does not know it."""
        return (await self.states([jobId])).get(jobId)

    async def byName(self, name: str) -> dict[str, SlurmState]:
        """The jobs named C{name} (one whose sbatch answer was lost)."""
        return await self._states(f"--name={name}")

    async def _states(self, which: str) -> dict[str, SlurmState]:
        token = uuid.uuid4().hex
        out = self._check(
            "squeue",
            await self.run(
                "squeue",
                "--noheader",
                "--states=all",
                which,
                f"--format={stateFormat(token)}",
            ),
        )
        try:
            return parseStates(out, token)
        except ValueError as e:
            raise SlurmError(f"squeue: unexpected output ({e})") from None

    async def exits(self, ids: list[str]) -> dict[str, SlurmState]:
        """
        The jobs C{ids} as C{squeue --json} describes them, exit status
        included: through L{sieve}, so that only these jobs reach the server
        however many the cluster has.
        """
        found: dict[str, SlurmState] = {}
        for some in inChunks(ids):
            out = self._check(
                "squeue",
                await self.run(
                    sys.executable,
                    "-m",
                    "jobworker.executors.slurm.sieve",
                    *some,
                    "--",
                    "squeue",
                    "--json",
                    "--states=all",
                    f"--jobs={','.join(some)}",
                ),
            )
            try:
                found.update(parseJobs(out))
            except (ValueError, TypeError, AttributeError) as e:
                raise SlurmError(f"squeue: unexpected output ({e})") from None
        return found

    async def accounting(self, ids: list[str]) -> dict[str, list[SlurmState]]:
        """
        What Slurm's accounting keeps of the jobs C{ids} (ended, and purged
        from slurmctld's memory): C{sacct}, else the job completion log
        (C{sacct --completion}) when accounting storage is off. Empty when
        neither is kept.
        """
        found: dict[str, list[SlurmState]] = {}
        for some in inChunks(ids):
            kept = await self._accounting(some)
            if kept is None:
                return {}
            found.update(kept)
        return found

    async def _accounting(self, ids: list[str]) -> dict[str, list[SlurmState]] | None:
        """L{accounting} of up to L{IDS_PER_CALL} ids; None: none kept."""
        token = uuid.uuid4().hex
        query = [
            "--noheader",
            "--parsable2",
            f"--delimiter={token}",
            # Every job that had the number, not only the latest: numbering
            # restarts when slurmctld's state is reset (sacct --duplicates).
            "--duplicates",
            f"--jobs={','.join(ids)}",
            f"--format={ACCOUNTING_FORMAT}",
        ]
        result = await self.run("sacct", *query)
        if result[2] != 0 and "accounting storage is disabled" in result[1]:
            result = await self.run("sacct", "--completion", *query)
            if result[2] != 0 and "disabled" in result[1]:
                return None
        out = self._check("sacct", result)
        try:
            return parseAccounting(out, token)
        except ValueError as e:
            raise SlurmError(f"sacct: unexpected output ({e})") from None

    async def ping(self) -> None:
        """
        Ask slurmctld whether it is up (C{scontrol ping}).

        @raise SlurmError: it is not (unreachable).
        """
        out, err, code = await self.run("scontrol", "ping")
        if code != 0 or " is UP" not in out:
            message = (out.strip() or err.strip() or f"status {code}")[-200:]
            raise SlurmError(f"scontrol ping: {message}", unreachable=True)

    async def cancelByName(self, name: str, identity: Identity | None = None) -> None:
        """Cancel every job of this name (one whose sbatch answer was lost)."""
        self._check(
            "scancel",
            await self.run("scancel", f"--jobname={name}", identity=identity),
        )

    async def signal(
        self, jobId: str, jobName: str, signal: str, identity: Identity | None = None
    ) -> None:
        """
        Send C{signal} to every process of the job (script included), if
        Slurm's job C{jobId} is still named C{jobName}: a job number Slurm
        gave again to someone else's job is never signalled.
        """
        self._check(
            "scancel",
            await self.run(
                "scancel",
                "--full",
                f"--signal={signal}",
                f"--jobname={jobName}",
                jobId,
                identity=identity,
            ),
        )

    async def cancel(
        self, jobId: str, jobName: str, identity: Identity | None = None
    ) -> None:
        """
        Cancel it (Slurm sends TERM, then KILL after its KillWait), if it
        is still named C{jobName} (see L{signal}).
        """
        self._check(
            "scancel",
            await self.run("scancel", f"--jobname={jobName}", jobId, identity=identity),
        )
