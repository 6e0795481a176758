"""
The Slurm executor: each job a Slurm batch job, driven through Slurm's own
commands (C{sbatch}, C{squeue}, C{scancel}) run as child processes.

Nothing blocks the reactor: every command is a C{spawnProcess} with a
deadline. Job states are refreshed for all jobs at once, by one
C{squeue --json} per poll interval. A job's argv and environment go
to files read by a small wrapper (C{data/slurm-exec.sh}) that C{exec}s the
exact argv with exactly that environment: no shell sees user input. Output
goes to files in a directory the cluster's nodes share, which followers read
as they grow.

A job runs as its owner's mapped Unix account: C{sbatch} and C{scancel} run
through C{setpriv} as that account (munge then vouches for its uid), and the
job's folder belongs to it. Users without a mapped account are refused,
unless the operator opts in to a shared service account.
"""

from __future__ import annotations

import math
import os
import signal
import stat
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import BadRequest, Forbidden, ServiceUnavailable
from ...jobs.ending import Ending
from ...jobs.identity import Identity, IdentityError
from ...jobs.limits import Limits
from ...jobs.order import OrderLog
from ...jobs.policy import JobPolicy, JobReactor
from ...jobs.records import JobRecord, JobStatus, signalName
from ...jobs.spool import Waiters
from ...jobs.stopping import DEFAULT_STOP, StopRequest
from ...jobs.validation import JobRequest
from ..local.executor import defaultEnvironment
from .commands import (
    FINAL,
    QUEUED,
    SlurmCommands,
    SlurmError,
    SlurmState,
)

#: The batch script every job runs: exec the argv file with the env file.
WRAPPER = str(resources.files("jobworker").joinpath("data/slurm-exec.sh"))

#: Seconds after a job is first seen running that the server removes its
#: argv and env files if the batch script has not (it removes them as soon as
#: it has read them). Not at once: Slurm says RUNNING before the node has
#: started the script (a prolog may run first).
SECRETS_GRACE = 60.0


class SlurmOutput:
    """
    One output file of a Slurm job, written by the node; read as it grows.
    Its size is read from the file; readers waiting for more are woken by
    the executor's file tick.
    """

    order: OrderLog | None = None

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False
        self._final: int | None = None
        self._waiters = Waiters()

    @property
    def size(self) -> int:
        if self._final is not None:
            return self._final
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    def whenGrown(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        return self._waiters.wait()

    def checkGrowth(self) -> None:
        """Wake the readers (they read up to the current size)."""
        self._waiters.wake()

    def close(self) -> None:
        """The job has ended: the file will not grow."""
        self._final = self.size
        self.closed = True
        self.checkGrowth()


class SlurmJob:
    """A jobworker job that is a Slurm batch job."""

    log = Logger()

    def __init__(
        self,
        executor: SlurmExecutor,
        record: JobRecord,
        identity: Identity | None = None,
    ) -> None:
        self._executor = executor
        self.record = record
        #: Who the job runs as; None for a re-attached job until it is
        #: needed (then looked up from the record's C{run_as}).
        self.identity = identity
        self.stdout = SlurmOutput(executor.outputPath(record.id, "stdout"))
        self.stderr = SlurmOutput(executor.outputPath(record.id, "stderr"))
        #: What sbatch said: the record, or a failure (Slurm unreachable).
        self._acceptance: JobRecord | Failure | None = None
        self._acceptWaiters: list[Deferred[JobRecord]] = []
        self._ending = Ending(record)
        self._cleaned: Deferred[None] = Deferred()
        self._stopRequested = False
        self._killCall: IDelayedCall | None = None
        #: Set at recovery when sbatch's answer was lost: the reason to give
        #: if no Slurm job of this job's name turns up.
        self.lookUpReason: str | None = None
        #: When this server first saw the job running (see L{SECRETS_GRACE}).
        self._runningSince: float | None = None
        self._secretsRemoved = False

    def snapshot(self) -> JobRecord:
        record = self.record
        if not record.status.ended:
            record.stdout_bytes = self.stdout.size
            record.stderr_bytes = self.stderr.size
        return record

    def whenAccepted(self) -> Deferred[JobRecord]:
        d: Deferred[JobRecord] = Deferred()
        if self._acceptance is None:
            self._acceptWaiters.append(d)
        else:
            self._relayAcceptance(d)
        return d

    def _relayAcceptance(self, d: Deferred[JobRecord]) -> None:
        if isinstance(self._acceptance, Failure):
            d.errback(self._acceptance)
        elif self._acceptance is not None:
            d.callback(self._acceptance)

    def settle(self, outcome: JobRecord | Failure) -> None:
        """sbatch has answered (or the job was re-attached)."""
        if self._acceptance is not None:
            return
        self._acceptance = outcome
        waiters, self._acceptWaiters = self._acceptWaiters, []
        for d in waiters:
            self._relayAcceptance(d)

    def whenEnded(self) -> Deferred[JobRecord]:
        return self._ending.whenEnded()

    def whenCleanedUp(self) -> Deferred[None]:
        if self._cleaned.called:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._cleaned.addCallback(lambda _: d.callback(None))
        return d

    # -- submission ------------------------------------------------------------

    def submitted(self, slurmJobId: str) -> None:
        self.record.slurm_job_id = slurmJobId
        self._executor.save(self.record)
        self.settle(self.record)
        if self._stopRequested:
            self._executor.cancel(self)

    def refused(self, error: SlurmError) -> None:
        """sbatch said no: a job that cannot start (FAILED), or 503."""
        if error.unreachable:
            self._finish(JobStatus.FAILED, error=f"Slurm is unreachable: {error}")
            self.settle(
                Failure(
                    ServiceUnavailable(
                        f"Slurm is unreachable, try again later ({error})"
                    )
                )
            )
            return
        self._finish(JobStatus.FAILED, error=f"Slurm refused the job: {error}")
        self.settle(self.record)

    # -- state -----------------------------------------------------------------

    def update(self, state: SlurmState, now: float) -> None:
        """Take in what Slurm says of the job."""
        record = self.record
        if state.state in QUEUED:
            return
        if state.state in FINAL:
            self._ended(state)
            return
        if record.status is JobStatus.PENDING:
            record.status = JobStatus.RUNNING
            record.started_at = state.startTime or now
            record.node = state.node
            self._executor.save(record)
            self.log.info(
                "Slurm job {slurm} (job {job}) running on {node}",
                slurm=record.slurm_job_id,
                job=record.id,
                node=state.node,
            )
        if self._runningSince is None:
            self._runningSince = now
        elif now - self._runningSince >= SECRETS_GRACE:
            self._removeSecrets()

    def _removeSecrets(self) -> None:
        """
        Remove the argv and env files, should the batch script not have
        (a job that never started, or one submitted with an older script).
        """
        if not self._secretsRemoved:
            self._secretsRemoved = True
            self._executor.removeSecrets(self.record.id)

    def _ended(self, state: SlurmState) -> None:
        record = self.record
        if record.node is None:
            record.node = state.node
        if record.started_at is None and state.state != "CANCELLED":
            # It ran between two polls (or never, if cancelled while queued).
            record.started_at = state.startTime
        code: int | None = state.exitCode
        signal = signalName(state.signal) if state.signal else None
        if self._stopRequested:
            self._finish(JobStatus.STOPPED, code if not signal else None, signal)
        elif state.state == "COMPLETED" and code == 0:
            self._finish(JobStatus.COMPLETED, 0, None)
        elif state.state == "TIMEOUT":
            self._finish(
                JobStatus.FAILED,
                None,
                signal,
                "timed out (Slurm's time limit"
                + (
                    f": {record.timeout_seconds:g} s, rounded up to whole minutes)"
                    if record.timeout_seconds is not None
                    else ")"
                ),
            )
        elif state.state == "OUT_OF_MEMORY":
            self._finish(JobStatus.FAILED, None, signal, "out of memory (Slurm)")
        elif state.state == "FAILED" and not signal:
            self._finish(JobStatus.FAILED, code, None, f"exited with code {code}")
        elif signal:
            self._finish(JobStatus.FAILED, None, signal, f"killed by signal {signal}")
        else:
            reason = f" ({state.reason})" if state.reason not in ("", "None") else ""
            self._finish(
                JobStatus.FAILED, code, None, f"Slurm ended it {state.state}{reason}"
            )

    def lost(self, reason: str) -> None:
        """Slurm no longer knows the job."""
        self._finish(JobStatus.FAILED, error=reason)

    def _finish(
        self,
        status: JobStatus,
        exitCode: int | None = None,
        signal: str | None = None,
        error: str | None = None,
    ) -> None:
        record = self.record
        if record.status.ended:
            return
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._removeSecrets()
        self.stdout.close()
        self.stderr.close()
        record.stdout_bytes = self.stdout.size
        record.stderr_bytes = self.stderr.size
        self._ending.finish(
            status,
            self._executor.now(),
            exit_code=exitCode,
            signal=signal,
            error=error,
            slurm=record.slurm_job_id,
        )
        self._executor.forget(self)
        self._cleaned.callback(None)

    # -- stopping --------------------------------------------------------------

    def stop(self, by: str, how: StopRequest = DEFAULT_STOP) -> Deferred[JobRecord]:
        ended = self.whenEnded()
        if self._stopRequested:
            return ended
        self._stopRequested = True
        self.record.stopped_by = by
        if self.record.slurm_job_id is None:
            return ended  # cancelled as soon as sbatch answers
        result: Deferred[JobRecord] = Deferred()
        signalled = Deferred.fromCoroutine(self._executor.terminate(self, how))

        def failed(failure: Failure) -> None:
            self._stopRequested = False
            self.record.stopped_by = None
            if not result.called:
                result.errback(failure)

        def relay(record: JobRecord) -> None:
            if not result.called:
                result.callback(record)

        signalled.addErrback(failed)
        ended.addCallback(relay)
        return result

    def recorded(self) -> None:
        """sbatch runs after the record is stored (same reactor turn)."""

    def abort(self, reason: str) -> None:
        """The job could not be recorded: cancel it in Slurm, end it FAILED."""
        self._stopRequested = True
        if self.record.slurm_job_id is not None:
            self._executor.cancel(self)
        self._finish(JobStatus.FAILED, error=reason)


class SlurmExecutor:
    """
    Run jobs through Slurm (C{--executor slurm}).

    @param outputDir: a folder every node of the cluster sees at the same
        path (C{--slurm-output-dir}); each job's files go in C{<id>/}, a
        folder of the job's owner's.
    @param sharedAccount: run the jobs of users without a mapped Unix
        account as the service account (the server's user), a shared
        identity (C{--slurm-shared-account}); without it they are refused.
    """

    log = Logger()
    name = "slurm"

    def __init__(
        self,
        reactor: JobReactor,
        outputDir: str,
        grace: float,
        policy: JobPolicy | None = None,
        partition: str | None = None,
        account: str | None = None,
        pollInterval: float = 1.0,
        commands: SlurmCommands | None = None,
        sharedAccount: bool = False,
    ) -> None:
        self._reactor = reactor
        self._outputDir = outputDir
        self._grace = grace
        self._policy = policy if policy is not None else JobPolicy()
        self._partition = partition
        self._account = account
        self._commands = commands if commands is not None else SlurmCommands(reactor)
        self._server = Identity.ofServer()
        self._sharedAccount = sharedAccount
        self._jobs: dict[str, SlurmJob] = {}
        self._polling = False
        self._unreachableLogged = False
        self._save: Callable[[JobRecord], None] = lambda record: None
        self._poll = LoopingCall(self._refresh)
        self._poll.clock = reactor
        self._pollInterval = pollInterval
        self._files = LoopingCall(self._pokeFiles)
        self._files.clock = reactor
        self._wrapper = self._prepareOutputDir()
        self._announceIdentities()

    def _prepareOutputDir(self) -> str:
        """
        Make the top folder traversable but not listable by others (0711):
        each job's folder belongs to its owner, who must reach it on the
        node. Put in it a copy of the batch script that every account can
        read (sbatch reads it as the job's owner; the installed one may sit
        where they cannot).

        @return: the copy's path.
        @raise OSError: the folder cannot be made or written.
        """
        top = self._outputDir
        os.makedirs(top, mode=0o711, exist_ok=True)
        mode = stat.S_IMODE(os.stat(top).st_mode)
        if mode != 0o711:
            os.chmod(top, 0o711)  # noqa: S103 (searchable, not listable)
            self.log.info(
                "--slurm-output-dir {path}: mode {old:o} changed to 711 "
                "(reachable, not listable, by the jobs' accounts)",
                path=top,
                old=mode,
            )
        if self._server.uid == 0:
            for folder in _ancestors(top):
                if not os.stat(folder).st_mode & stat.S_IXOTH:
                    self.log.warn(
                        "--slurm-output-dir {path}: {folder} is not searchable "
                        "by others (o+x), so jobs of mapped accounts cannot "
                        "reach their folders",
                        path=top,
                        folder=folder,
                    )
                    break
        with open(WRAPPER, "rb") as f:
            script = f.read()
        copy = os.path.join(top, "slurm-exec.sh")
        temporary = f"{copy}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o644), "wb") as f:
            f.write(script)
        os.chmod(temporary, 0o644)  # whatever the umask
        os.replace(temporary, copy)
        return copy

    def _announceIdentities(self) -> None:
        """Say, once at start-up, who Slurm jobs run as."""
        if not self._sharedAccount:
            self.log.info(
                "Slurm jobs run as their owner's mapped Unix account; users "
                "without one are refused (--slurm-shared-account would let them "
                "share the service account)"
            )
            return
        self.log.warn(
            "--slurm-shared-account: the Slurm jobs of users without a mapped "
            "Unix account run as {user}, ONE SHARED IDENTITY: they can read "
            "each other's output folders and environment files (secrets "
            "included) and cancel each other's Slurm jobs, and Slurm's "
            "accounting and fair share see a single user",
            user=self._server.label,
        )
        if self._server.uid == 0:
            self.log.warn(
                "--slurm-shared-account with a server running as root: those "
                "jobs RUN AS ROOT on the compute nodes"
            )

    # -- the manager's side ----------------------------------------------------

    def attach(self, save: Callable[[JobRecord], None]) -> None:
        """How to store a record that changed (submitted, running)."""
        self._save = save

    def save(self, record: JobRecord) -> None:
        self._save(record)

    def now(self) -> float:
        return self._reactor.seconds()

    def outputDir(self, jobId: str) -> str:
        return os.path.join(self._outputDir, jobId)

    def outputPath(self, jobId: str, stream: str) -> str:
        return os.path.join(self._outputDir, jobId, stream)

    def identityFor(self, owner: str, account: Identity | None) -> Identity:
        """
        A mapped user's own account; for a user without one, the service
        account if the operator allowed sharing it.

        @raise Forbidden: the user has no mapped account and sharing is off
            (dynamic identities do not exist on the compute nodes).
        """
        if account is not None:
            return account
        if self._sharedAccount:
            return self._server
        raise Forbidden(
            f"user {owner} has no Unix account mapped in the users file "
            "(name:role:hash:unix-user): Slurm jobs run as their owner's "
            "account (the operator may map one, or allow a shared account "
            "with --slurm-shared-account)"
        )

    def ownerOf(self, job: SlurmJob) -> Identity:
        """
        Who acts on C{job} in Slurm: the identity it runs as. A re-attached
        job's is looked up again from its record's C{run_as}.
        """
        if job.identity is None:
            job.identity = self._identityOfRecord(job.record)
        return job.identity

    def _identityOfRecord(self, record: JobRecord) -> Identity:
        account = record.run_as
        if account is None or account == self._server.label:
            return self._server
        try:
            return Identity.ofAccount(account)
        except IdentityError as e:
            self.log.warn(
                "job {job} runs as {account}, which cannot be used now "
                "({error}): acting on it in Slurm as {server}",
                job=record.id,
                account=account,
                error=str(e),
                server=self._server.label,
            )
            return self._server

    def release(self, identity: Identity) -> None:
        """Slurm identities are accounts: nothing to give back."""

    def environment(self, identity: Identity) -> dict[str, str]:
        """C{PATH}, C{LANG}, and C{HOME}, C{USER}... of C{identity}."""
        return defaultEnvironment(identity)

    def checkRequest(self, request: JobRequest, identity: Identity) -> None:
        """Everything a local job may ask is fine here (limits aside)."""

    def limitsFor(self, requested: Limits) -> Limits:
        """Memory and CPU map to Slurm's --mem and --cpus-per-task."""
        self._policy.checkMaxima(requested)
        unsupported = sorted(
            name
            for name, _ in requested.given()
            if name not in ("memory_bytes", "cpu_millicores")
        )
        if unsupported:
            raise BadRequest(
                f"limit(s) {', '.join(unsupported)} not available with the Slurm "
                "executor (memory_bytes and cpu_millicores are)"
            )
        merged = requested.withDefaults(self._policy.defaults)
        return Limits(
            memory_bytes=merged.memory_bytes, cpu_millicores=merged.cpu_millicores
        )

    def recordedLimits(self, limits: Limits) -> dict[str, int | None] | None:
        return limits.toJSON()

    def launch(
        self,
        record: JobRecord,
        request: JobRequest,
        limits: Limits,
        timeout: float | None,
        identity: Identity,
    ) -> SlurmJob:
        """Queue the job with sbatch; the record is PENDING until it runs."""
        record.status = JobStatus.PENDING
        job = SlurmJob(self, record, identity)
        self._track(job)
        Deferred.fromCoroutine(self._submit(job, request, limits, timeout, identity))
        return job

    def _makeJobFolder(
        self, directory: str, identity: Identity, files: dict[str, list[str]]
    ) -> None:
        """
        The job's folder (0700) and its argv and env files (0600, NUL
        separated), all owned by the job's identity: the files hold secrets,
        which the job reads, then removes.
        """
        owner = None
        if identity.uid != self._server.uid:
            owner = (identity.uid, identity.gid)
        os.mkdir(directory, 0o700)  # a new job id: never there before
        os.chmod(directory, 0o700)  # whatever the umask
        for path, items in files.items():
            _writeNulSeparated(path, items, owner)
        if owner is not None:
            os.chown(directory, *owner)

    def removeSecrets(self, jobId: str) -> None:
        """Remove a job's argv and env files, if still there."""
        for name in ("argv", "env"):
            path = os.path.join(self.outputDir(jobId), name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.warn(
                    "cannot remove {path}: {error}", path=path, error=e.strerror
                )

    async def _submit(
        self,
        job: SlurmJob,
        request: JobRequest,
        limits: Limits,
        timeout: float | None,
        identity: Identity,
    ) -> None:
        record = job.record
        directory = self.outputDir(record.id)
        argvFile = os.path.join(directory, "argv")
        envFile = os.path.join(directory, "env")
        try:
            self._makeJobFolder(
                directory,
                identity,
                {
                    argvFile: [request.command, *request.args],
                    envFile: [f"{k}={v}" for k, v in record.env.items()],
                },
            )
        except OSError as e:
            job.refused(SlurmError(f"cannot write to {directory}: {e.strerror}"))
            return
        options = [
            f"--job-name=jobworker-{record.id}",
            # For Slurm's administrators (one argv element: no shell splits it).
            f"--comment=jobworker user={record.owner} job={record.id}",
            f"--output={self.outputPath(record.id, 'stdout')}",
            f"--error={self.outputPath(record.id, 'stderr')}",
            f"--chdir={directory}",
            "--export=ALL",
            # A requeued job would run again untracked, truncating its output.
            "--no-requeue",
            "--open-mode=append",
        ]
        if limits.memory_bytes is not None:
            options.append(f"--mem={math.ceil(limits.memory_bytes / (1 << 20))}M")
        if limits.cpu_millicores is not None:
            options.append(f"--cpus-per-task={math.ceil(limits.cpu_millicores / 1000)}")
        if timeout is not None:
            options.append(f"--time={math.ceil(timeout / 60)}")
        if self._partition is not None:
            options.append(f"--partition={self._partition}")
        if self._account is not None:
            options.append(f"--account={self._account}")
        cwd = request.cwd
        if cwd is None and identity is not self._server and identity.home:
            cwd = identity.home  # a mapped account's jobs start at home
        script = [self._wrapper]
        if cwd is not None:
            script += ["-C", cwd]
        script += [argvFile, envFile]
        try:
            slurmJobId = await self._commands.submit(options, script, identity)
        except SlurmError as e:
            found = None
            if e.unreachable:
                # sbatch may have queued the job and then lost the answer
                # (a timeout): look before saying no, and make sure a job
                # we say no to never runs.
                found = await self._lookUp(record.id)
            if found is None:
                self.log.warn(
                    "sbatch refused job {job}: {error}", job=record.id, error=str(e)
                )
                if e.unreachable:
                    self._cancelByName(record.id, identity)
                job.refused(e)
                return
            slurmJobId = found
        self.log.info(
            "job {job} queued as Slurm job {slurm}", job=record.id, slurm=slurmJobId
        )
        job.submitted(slurmJobId)

    def recover(self, records: list[JobRecord], reason: str) -> Sequence[SlurmJob]:
        """
        Re-attach to the Slurm jobs of unfinished records (their state comes
        with the next poll); records without a Slurm job are closed FAILED.
        """
        attached = []
        for record in records:
            if record.executor == self.name:
                job = SlurmJob(self, record)
                job.settle(record)
                if record.slurm_job_id is None:
                    # The server died with sbatch in flight: Slurm may have
                    # the job. The next poll looks for it by name.
                    job.lookUpReason = reason
                self._track(job)
                if record.stopped_by is not None:
                    self._resumeStop(job)
                attached.append(job)
                self.log.info(
                    "re-attached to Slurm job {slurm} (job {job}, {status})",
                    slurm=record.slurm_job_id or "(looked up by name)",
                    job=record.id,
                    status=record.status.value,
                )
            else:
                record.finish(
                    JobStatus.FAILED,
                    self.now(),
                    error=f"{reason} (a local job, not re-attachable by Slurm)",
                )
        return attached

    def shutdown(self, jobs: Sequence[Any]) -> Deferred[None]:
        """
        Leave the jobs to Slurm: a restart re-attaches to them, and goes on
        with the stops in progress (their escalation timers end here).
        """
        for loop in (self._poll, self._files):
            if loop.running:
                loop.stop()
        for job in jobs:
            killCall = getattr(job, "_killCall", None)
            if killCall is not None and killCall.active():
                killCall.cancel()
        if jobs:
            self.log.info("leaving {count} job(s) running in Slurm", count=len(jobs))
        return succeed(None)

    # -- polling ---------------------------------------------------------------

    def _track(self, job: SlurmJob) -> None:
        self._jobs[job.record.id] = job
        if not self._poll.running:
            self._poll.start(self._pollInterval, now=False)
            self._files.start(min(0.2, self._pollInterval), now=False)

    def forget(self, job: SlurmJob) -> None:
        self._jobs.pop(job.record.id, None)

    def _pokeFiles(self) -> None:
        for job in list(self._jobs.values()):
            for output in (job.stdout, job.stderr):
                if output.waiting:
                    output.checkGrowth()

    async def _refresh(self) -> None:
        """One squeue for every job; skipped while the last one runs."""
        watched = [
            j
            for j in self._jobs.values()
            if j.record.slurm_job_id or j.lookUpReason is not None
        ]
        if self._polling or not watched:
            return
        self._polling = True
        try:
            states = await self._commands.jobs()
        except SlurmError as e:
            if not self._unreachableLogged:
                self.log.warn(
                    "cannot refresh Slurm jobs, will retry: {error}", error=str(e)
                )
                self._unreachableLogged = True
            return
        finally:
            self._polling = False
        if self._unreachableLogged:
            self.log.info("Slurm is reachable again")
            self._unreachableLogged = False
        now = self.now()
        for job in watched:
            if job.lookUpReason is not None:
                found = _byName(states, job.record.id)
                if found is None:
                    job.lost(f"{job.lookUpReason} (before Slurm took the job)")
                    continue
                job.lookUpReason = None
                job.submitted(found)
            state = states.get(job.record.slurm_job_id or "")
            try:
                if state is None:
                    job.lost(
                        f"Slurm no longer knows job {job.record.slurm_job_id} "
                        "(purged after MinJobAge, or slurmctld lost its state)"
                    )
                else:
                    job.update(state, now)
            except Exception:
                # One job's bad news must not stop the others' polling.
                self.log.failure("updating job {job}", job=job.record.id)

    # -- stopping --------------------------------------------------------------

    async def terminate(self, job: SlurmJob, how: StopRequest = DEFAULT_STOP) -> None:
        """
        C{how.signal} (TERM) to every process of the job, KILL (scancel)
        after the grace (C{how.grace}, else the server's).
        """
        slurmJobId = job.record.slurm_job_id
        assert slurmJobId is not None
        owner = self.ownerOf(job)
        try:
            if job.record.status is JobStatus.PENDING:
                await self._commands.cancel(slurmJobId, owner)
                return
            if how.signal == signal.SIGKILL:
                await self._commands.cancel(slurmJobId, owner)
                return
            name = signal.Signals(how.signal).name.removeprefix("SIG")
            await self._commands.signal(slurmJobId, name, owner)
        except SlurmError as e:
            if e.unreachable:
                raise ServiceUnavailable(
                    f"Slurm is unreachable, try again later ({e})"
                ) from None
            raise ServiceUnavailable(f"cannot stop the Slurm job: {e}") from None
        # Stored, so a restart goes on with the escalation (who and when).
        job.record.stop_requested_at = self.now()
        self.save(job.record)
        self._escalate(job, self._grace if how.grace is None else how.grace)

    def _escalate(self, job: SlurmJob, delay: float) -> None:
        """scancel the job after C{delay} seconds (the rest of the grace)."""
        job._killCall = self._reactor.callLater(
            max(0.0, delay), lambda: self.cancel(job)
        )

    def _resumeStop(self, job: SlurmJob) -> None:
        """After a restart: go on with a stop that was in progress."""
        record = job.record
        job._stopRequested = True
        if record.stop_requested_at is not None:
            left = record.stop_requested_at + self._grace - self.now()
            self.log.info(
                "job {job}: stop by {user} in progress, scancel in {left:.1f}s",
                job=record.id,
                user=record.stopped_by,
                left=max(0.0, left),
            )
            self._escalate(job, left)
        elif record.slurm_job_id is not None:
            # Asked, but TERM may not have gone out: send it again.
            def failed(failure: Failure) -> None:
                self.log.warn(
                    "job {job}: stop not resumed: {error}",
                    job=record.id,
                    error=failure.getErrorMessage(),
                )

            Deferred.fromCoroutine(self.terminate(job)).addErrback(failed)

    async def _lookUp(self, jobId: str) -> str | None:
        """The Slurm id of the job named for C{jobId}, if Slurm has one."""
        try:
            return _byName(await self._commands.jobs(), jobId)
        except SlurmError:
            return None

    def _cancelByName(self, jobId: str, identity: Identity) -> None:
        async def cancel() -> None:
            try:
                await self._commands.cancelByName(f"jobworker-{jobId}", identity)
            except SlurmError as e:
                self.log.warn(
                    "cannot cancel a possibly queued job {job}: {error}",
                    job=jobId,
                    error=str(e),
                )

        Deferred.fromCoroutine(cancel())

    def cancel(self, job: SlurmJob) -> None:
        """scancel, in the background: the poll sees the job end."""
        slurmJobId = job.record.slurm_job_id
        if slurmJobId is None:
            return
        owner = self.ownerOf(job)

        async def cancel() -> None:
            try:
                await self._commands.cancel(slurmJobId, owner)
            except SlurmError as e:
                self.log.warn(
                    "scancel {slurm} failed: {error}", slurm=slurmJobId, error=str(e)
                )

        Deferred.fromCoroutine(cancel())


def _byName(states: dict[str, SlurmState], jobId: str) -> str | None:
    name = f"jobworker-{jobId}"
    for slurmJobId, state in states.items():
        if state.name == name:
            return slurmJobId
    return None


def _ancestors(path: str) -> list[str]:
    """The folders above C{path}, from C{/} down."""
    found = []
    parent = os.path.dirname(path)
    while parent != path:
        found.append(parent)
        path, parent = parent, os.path.dirname(parent)
    return found[::-1]


def _writeNulSeparated(
    path: str, items: list[str], owner: tuple[int, int] | None = None
) -> None:
    """A new file (0600, given to C{owner} if set) of NUL-terminated items."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    with os.fdopen(fd, "wb") as f:
        if owner is not None:
            os.fchown(fd, *owner)
        f.write(b"".join(item.encode("utf-8") + b"\0" for item in items))
