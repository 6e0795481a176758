"""
The Slurm executor: each job a Slurm batch job, driven through Slurm's own
commands (C{sbatch}, C{squeue}, C{scancel}) run as child processes.

Nothing blocks the reactor: every command is a C{spawnProcess} with a
deadline. Job states are refreshed for all of jobworker's jobs at once, by
one C{squeue} about them per poll interval (L{poll}). A record is tied to
its Slurm job by number, name and submit time, never by number alone. A
job's argv and environment go
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

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ...errors import BadRequest, JobworkerError, ServiceUnavailable
from ...jobs.ending import elapsedSeconds
from ...jobs.executor import ExecutorHealth, OwnerCheck
from ...jobs.identity import Identity
from ...jobs.limits import Limits
from ...jobs.placement import SlurmAllowances
from ...jobs.policy import JobPolicy, JobReactor
from ...jobs.records import JobRecord, JobStatus
from ...jobs.spool import OutputTrouble
from ...jobs.stopping import DEFAULT_STOP, StopRequest
from ...jobs.validation import JobRequest
from ..local.executor import defaultEnvironment
from .accounts import SlurmAccounts
from .commands import SlurmCommands
from .dependencies import DependencyVerdict, dependencyOptions
from .documents import SlurmError
from .folders import makeJobFolder, prepareOutputDir, removeSecrets
from .health import Reachability
from .held import HeldJobs
from .job import SlurmJob
from .poll import SlurmPoll
from .probe import OutputDirProbe
from .stopping import SlurmStops
from .submission import batchScript, placementOptions, sbatchOptions

#: Seconds before a probe that could not conclude is sent again.
PROBE_RETRY = 60.0
#: Seconds before a probe that found a problem is sent again (mended?).
PROBE_RECHECK = 300.0
#: Seconds C{/healthz} says the server's own partition was refused, after
#: the last job that named none of its own was (unless one is taken).
PLACEMENT_REFUSED_FOR = 600.0


class SlurmExecutor:
    """
    Run jobs through Slurm (C{--executor slurm}).

    @param outputDir: a folder every node of the cluster sees at the same
        path (C{--slurm-output-dir}); each job's files go in C{<id>/}, a
        folder of the job's owner's.
    @param sharedAccount: run the jobs of users without a mapped Unix
        account as the service account (the server's user), a shared
        identity (C{--slurm-shared-account}); without it they are refused.
    @param lookUp: an account's identity by its name, as it is now: looked
        up for every job, and for every act on a stored one.
    """

    log = Logger()
    name = "slurm"
    #: A clock no step of the wall clock moves, by which a job's end time
    #: is checked against its start's (L{Ending}); tests set their own.
    elapsed: Callable[[], float] = staticmethod(elapsedSeconds)

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
        allowances: SlurmAllowances | None = None,
        descriptorLimit: int | None = None,
        lookUp: Callable[[str], Identity] = Identity.ofAccount,
        umask: int | None = None,
    ) -> None:
        self._reactor = reactor
        #: When the job folders could not last be written (L{health}).
        self._outputTrouble = OutputTrouble(reactor)
        self._outputDir = outputDir
        self._grace = grace
        self._policy = policy if policy is not None else JobPolicy()
        self._partition = partition
        self._account = account
        self._allowances = allowances if allowances is not None else SlurmAllowances()
        self._commands = (
            commands
            if commands is not None
            else SlurmCommands(reactor, descriptorLimit=descriptorLimit, umask=umask)
        )
        self._server = Identity.ofServer()
        self._accounts = SlurmAccounts(self._server, sharedAccount, lookUp)
        self._stops = SlurmStops(
            reactor, self._commands, grace, self._accounts, self.save
        )
        self._jobs: dict[str, SlurmJob] = {}
        self._reach = Reachability()
        self._save: Callable[[JobRecord], None] = lambda record: None
        self._find: Callable[[str], JobRecord | None] = lambda jobId: None
        self._held = HeldJobs(self._jobs, lambda jobId: self._find(jobId))
        self._poller = SlurmPoll(
            self._commands, self._reach, self._jobs, self.now, self._unreachable
        )
        self._poll = LoopingCall(self._poller.refresh)
        self._poll.clock = reactor
        self._pollInterval = pollInterval
        self._files = LoopingCall(self._pokeFiles)
        self._files.clock = reactor
        self._wrapper = prepareOutputDir(outputDir, self._server.uid)
        self._accounts.announce()
        #: Whether the probe runs (L{probe} was called), and again when.
        self._probing = False
        self._probeRunning = False
        self._probeCall: IDelayedCall | None = None
        #: When a job the server placed was last refused for its partition,
        #: and why (L{_refusedAsServer}).
        self._placementRefused: tuple[float, str] | None = None

    # -- the manager's side ----------------------------------------------------

    def attach(
        self,
        save: Callable[[JobRecord], None],
        find: Callable[[str], JobRecord | None],
    ) -> None:
        """
        How to store a record that changed (submitted, running), and how to
        read a dependency's.
        """
        self._save = save
        self._find = find

    def ownersChanged(self, check: OwnerCheck) -> None:
        """
        Jobs still waiting in Slurm's queue start only as a new request of
        their owner would (the rule of the manager's queue: attacker round
        9): one whose owner was removed, demoted to Reader, or mapped to
        another account since is cancelled in Slurm and ends FAILED, never
        started. Slurm ran them as the account of their submission.
        """
        for job in list(self._jobs.values()):
            record = job.record
            if record.status is JobStatus.PENDING:
                why = self._mayStartNow(record, check)
                if why is not None:
                    job.refuseStart(f"cannot start: {why}")

    def _mayStartNow(self, record: JobRecord, check: OwnerCheck) -> str | None:
        """
        Why a job waiting in Slurm's queue may not start now (None: it may):
        its owner may not make jobs now (the manager's rule), or a new
        request of theirs would run as another account, or as none.
        """
        shared = self._server.label
        madeAs = None if record.run_as in (None, shared) else record.run_as
        why, account = check(record.owner, madeAs)
        if why is not None and not (
            madeAs is None and account is not None and account.label == shared
        ):  # (mapped to the service account: that account still)
            return why
        try:
            now = self._accounts.identityFor(record.owner, account)
        except JobworkerError as e:
            return e.message  # (unmapped without sharing; an account gone)
        if now.label != record.run_as:
            return (
                f"its owner {record.owner}'s Unix account changed since it was "
                f"submitted ({record.run_as}, now {now.label})"
            )
        return None

    def holdsDependencies(self, unended: Sequence[JobRecord]) -> bool:
        """Slurm holds the job (C{--dependency}): see L{HeldJobs.canHold}."""
        return self._held.canHold(unended)

    def failedDependency(self, record: JobRecord) -> DependencyVerdict:
        """See L{HeldJobs.verdict}."""
        return self._held.verdict(record)

    def save(self, record: JobRecord) -> None:
        self._save(record)

    def now(self) -> float:
        return self._reactor.seconds()

    def callLater(self, delay: float, f: Callable[[], None]) -> IDelayedCall:
        return self._reactor.callLater(delay, f)

    def outputDir(self, jobId: str) -> str:
        return os.path.join(self._outputDir, jobId)

    def outputPath(self, jobId: str, stream: str) -> str:
        return os.path.join(self._outputDir, jobId, stream)

    @property
    def grace(self) -> float:
        """The server's stop grace (C{--stop-grace}), in seconds."""
        return self._grace

    def identityFor(self, owner: str, account: Identity | None) -> Identity:
        """See L{SlurmAccounts.identityFor}."""
        return self._accounts.identityFor(owner, account)

    def ownerOf(self, job: SlurmJob) -> Identity:
        """See L{SlurmStops.ownerOf}."""
        return self._stops.ownerOf(job)

    def release(self, identity: Identity) -> None:
        """Slurm identities are accounts: nothing to give back."""

    def environment(self, identity: Identity) -> dict[str, str]:
        """C{PATH}, C{LANG}, and C{HOME}, C{USER}... of C{identity}."""
        return defaultEnvironment(identity)

    def checkRequest(self, request: JobRequest, identity: Identity) -> None:
        """
        Refuse at once while Slurm is known to be unreachable (rather than
        let sbatch wait for its own timeout).

        @raise ServiceUnavailable: the last Slurm command could not reach
            slurmctld.
        """
        self.checkQueued(request, None)
        if self._reach.down:
            raise ServiceUnavailable(
                f"Slurm is unreachable, try again later ({self._reach.reason})"
            )

    def checkQueued(self, request: JobRequest, account: Identity | None) -> None:
        """
        L{checkRequest} but Slurm's reach (a job that waits in jobworker's
        queue may wait for it too): the allowances, no stdin.
        """
        if request.slurm is not None:
            self._allowances.check(request.slurm)
        if request.stdin:
            raise BadRequest('"stdin": true is not supported by the Slurm executor')

    def probe(self, patience: float = 300.0) -> Deferred[None]:
        """
        Check, with a tiny probe job, that the nodes write where this server
        reads (C{--slurm-output-dir}); if not, the executor reports itself
        degraded (C{/healthz}) with the reason, and says so in the log (a
        probe Slurm refuses is only logged: it is root's, L{OutputDirProbe}).
        A probe that could not conclude (Slurm out of reach, the probe
        queued too long) is sent again after L{PROBE_RETRY} seconds,
        one that found a problem after L{PROBE_RECHECK}: it ran once, at
        start-up (slurmctld down then: the folder unshared, and C{/healthz}
        C{ok}, Slurm user round 39).
        """
        self._probing = True
        if self._probeCall is not None and self._probeCall.active():
            self._probeCall.cancel()
        self._probeCall = None
        options = placementOptions(self._partition, self._account)
        probe = OutputDirProbe(
            self._reactor,
            self._commands,
            self._outputDir,
            options,
            self._pollInterval,
            patience,
        )

        async def run() -> None:
            self._probeRunning = True
            try:
                concluded, problem = await probe.run()
            finally:
                self._probeRunning = False
            if concluded:
                self._reach.problem = problem
            if not self._probing:
                return
            if not concluded:
                self._probeAgain(PROBE_RETRY, patience)
            elif problem is not None:
                self._probeAgain(PROBE_RECHECK, patience)

        return Deferred.fromCoroutine(run())

    def _probeAgain(self, delay: float, patience: float = 300.0) -> None:
        """The probe, again in C{delay} seconds (or sooner: kept)."""
        if not self._probing or self._probeRunning:
            return
        call = self._probeCall
        if call is not None and call.active():
            if call.getTime() - self._reactor.seconds() <= delay:
                return
            call.cancel()

        def again() -> None:
            self._probeCall = None
            self.probe(patience).addErrback(
                lambda failure: self.log.failure(
                    "the --slurm-output-dir probe", failure
                )
            )

        self._probeCall = self._reactor.callLater(delay, again)

    def _placedByServer(self, request: JobRequest) -> bool:
        """Does C{request} go where the server's own options send it?"""
        placement = request.slurm
        return placement is None or placement.partition is None

    def _refusedAsServer(self, request: JobRequest, error: SlurmError) -> None:
        """
        Slurm refused a job that named no partition of its own, for its
        partition: the server's (C{--slurm-partition}, or Slurm's default),
        a partition removed or a typo, refuses every such job, and
        C{/healthz} said C{ok} (Slurm user round 39). Said for
        L{PLACEMENT_REFUSED_FOR} seconds, or until such a job is taken. (A
        job's own refusal, a limit it asked, is no concern of C{/healthz}:
        an attacker's jobs do not make it say C{degraded}.)
        """
        text = str(error).lower()
        if not self._placedByServer(request) or not (
            "invalid partition" in text
            or ("partition" in text and "not available" in text)
        ):
            return
        options = placementOptions(self._partition, self._account)
        self._placementRefused = (
            self._reactor.seconds(),
            "Slurm refuses jobs sent with the server's own options "
            f"({' '.join(options) or 'no partition: its default'}): {error}; "
            "jobs that name no partition of their own are refused",
        )

    def _placementProblem(self) -> str | None:
        """Why jobs placed by the server are refused, if they lately were."""
        refused = self._placementRefused
        if refused is None:
            return None
        if not 0 <= self._reactor.seconds() - refused[0] < PLACEMENT_REFUSED_FOR:
            self._placementRefused = None
            return None
        return refused[1]

    def health(self) -> ExecutorHealth:
        """
        Whether Slurm answered the last command (C{/healthz}, C{/metrics});
        and whether the server could write a job's folder in
        C{--slurm-output-dir} within the last 30 s (a full one failed every
        job, and C{/healthz} said C{ok}: Slurm user round 38).
        """
        health = self._reach.health()
        if health.up:
            trouble = self._outputTrouble.recent(prefix="")
            if trouble is None:
                trouble = self._placementProblem()
            if trouble is not None:
                return ExecutorHealth("slurm", False, trouble)
        return health

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
        self._held.watch(job)
        Deferred.fromCoroutine(self._submit(job, request, limits, timeout, identity))
        return job

    def removeSecrets(self, jobId: str) -> None:
        """Remove a job's argv and env files, if still there."""
        removeSecrets(self.outputDir(jobId))

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
            if not os.path.exists(self._wrapper):
                # Removed under the server (a purge of the shared folder):
                # every job was "Slurm refused the job" until a restart
                # copied it again (Slurm user round 39b).
                self._wrapper = prepareOutputDir(self._outputDir, self._server.uid)
                self.log.warn(
                    "{path} was removed: copied there again", path=self._wrapper
                )
            makeJobFolder(
                directory,
                self._accounts.folderOwner(identity),
                {
                    argvFile: [request.command, *request.args],
                    envFile: [f"{k}={v}" for k, v in record.env.items()],
                },
            )
        except OSError as e:
            why = (
                f"jobworker cannot write the job's files to {directory} "
                f"(--slurm-output-dir): {e.strerror}"
            )
            self._outputTrouble.failed(why)
            job.unwritable(why)
            return
        options = sbatchOptions(
            record,
            directory,
            self.outputPath(record.id, "stdout"),
            self.outputPath(record.id, "slurm.log"),
            limits,
            timeout,
            self._partition,
            self._account,
            request.slurm,
        ) + dependencyOptions(
            self._held.slurmIds(request.after), self._held.slurmIds(request.after_ok)
        )
        cwd = request.cwd
        if cwd is None and identity is not self._server and identity.home:
            cwd = identity.home  # a mapped account's jobs start at home
        script = batchScript(
            self._wrapper, cwd, self.outputPath(record.id, "stderr"), argvFile, envFile
        )
        try:
            slurmJobId = await self._commands.submit(options, script, identity)
        except SlurmError as e:
            self._unreachable(e)
            found = None
            mayBeQueued = (e.unreachable and not _neverSent(e)) or e.unread
            if mayBeQueued:
                # sbatch may have queued the job and then lost the answer
                # (a timeout), or said it in words we cannot read: look
                # before saying no, and make sure a job we say no to never
                # runs.
                found = await self._poller.lookUpQuietly(record)
            if found is None:
                self.log.warn(
                    "sbatch refused job {job}: {error}", job=record.id, error=str(e)
                )
                if mayBeQueued:
                    self._stops.cancelByName(record.id, identity)
                if not e.unreachable:
                    self._refusedAsServer(request, e)
                job.refused(e)
                return
            slurmJobId = found
        self._reach.answered()
        if self._placedByServer(request):
            self._placementRefused = None
        self.log.info(
            "job {job} queued as Slurm job {slurm}", job=record.id, slurm=slurmJobId
        )
        job.submitted(slurmJobId)

    def recover(self, records: list[JobRecord], reason: str) -> Sequence[SlurmJob]:
        """
        Re-attach to the Slurm jobs of unfinished records (their state comes
        with the next poll); records without a Slurm job are closed FAILED.
        The poll runs from now on, jobs or not (an idle one pings: see
        L{SlurmPoll.refresh}).
        """
        self._startPolling()
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
                    self._stops.resume(job)
                else:
                    self._held.watch(job)
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
        self._probing = False
        if self._probeCall is not None and self._probeCall.active():
            self._probeCall.cancel()
        self._stops.shutdown()
        for job in jobs:
            if isinstance(job, SlurmJob):
                job.disarmKill()
        if jobs:
            self.log.info("leaving {count} job(s) running in Slurm", count=len(jobs))
        return succeed(None)

    # -- polling ---------------------------------------------------------------

    def _track(self, job: SlurmJob) -> None:
        self._jobs[job.record.id] = job
        self._startPolling()

    def _startPolling(self) -> None:
        if not self._poll.running:
            self._poll.start(self._pollInterval, now=False)
            self._files.start(min(0.2, self._pollInterval), now=False)

    def forget(self, job: SlurmJob) -> None:
        """C{job} ended: forget it; if it failed, so do the jobs held on it."""
        self._jobs.pop(job.record.id, None)
        self._held.ended(job)
        self._stops.ended(job)

    def _unreachable(self, error: SlurmError) -> None:
        """A command failed: if slurmctld was out of reach, poll until it is back."""
        self._reach.failed(error)
        if self._reach.down and not self._poll.running:
            self._poll.start(self._pollInterval, now=False)

    def _pokeFiles(self) -> None:
        for job in list(self._jobs.values()):
            for output in (job.stdout, job.stderr):
                if output.waiting:
                    output.checkGrowth()

    async def terminate(self, job: SlurmJob, how: StopRequest = DEFAULT_STOP) -> None:
        """
        See L{SlurmStops.terminate}; once the stop is under way, the jobs
        held on this one (C{after_ok}) are cancelled. While Slurm is known
        to be unreachable, refused at once (each stop waited for Slurm's own
        timeout, 9-28 s, for the same 503: Slurm user round 39b); the polls
        find it back.

        @raise ServiceUnavailable: Slurm is unreachable.
        """
        if self._reach.down:
            raise ServiceUnavailable(
                f"Slurm is unreachable, try again later ({self._reach.reason})"
            )
        await self._stops.terminate(job, how)
        self._held.stopping(job)

    def cancel(self, job: SlurmJob) -> None:
        """See L{SlurmStops.cancel}."""
        self._stops.cancel(job)

    def hasten(self, job: SlurmJob, how: StopRequest) -> None:
        """See L{SlurmStops.hasten}."""
        self._stops.hasten(job, how)


def _neverSent(error: SlurmError) -> bool:
    """
    sbatch could not connect at all: slurmctld never saw the job (no need
    to look for it, or cancel it).
    """
    return "connect failure" in str(error)
