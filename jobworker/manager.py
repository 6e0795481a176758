"""The job manager: creates, finds, lists, stops and deletes jobs."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from .cgroups import CgroupError, Cgroups, JobCgroup, Limits
from .combined import OrderLog, OrderSource, StoredOrder
from .errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from .metrics import Metrics
from .process import JobProcess, JobProcessProtocol, signalGroup, spawnError
from .records import JobRecord, JobStatus
from .recovery import (
    currentBootId,
    killAll,
    leftovers,
    processStartTime,
    sessionMembers,
)
from .spool import OutputSource, OutputSpool, StoredOutput
from .store import JobStore, StoreError
from .validation import JobRequest

#: The environment every job starts from; the request's env is laid over it.
#: Nothing of the server's own environment reaches a job.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: util-linux setsid: puts the job in a session (and process group) of its
#: own, then execs the command without a fork, so the pid stays the job's.
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

#: The gate: the job's first process waits here, before running anything of
#: the user's, until the server has placed it in its cgroup and says go.
SH = shutil.which("sh") or "/bin/sh"
GATE = 'read -r _ <&3 || exit 125; exec 3<&-; unset PWD; exec "$@"'
#: The same, for a request that sets PWD itself (the shell keeps it if true).
GATE_KEEP_WORKDIR = 'read -r _ <&3 || exit 125; exec 3<&-; exec "$@"'
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"

#: --isolate names and the unshare flags that make them.
ISOLATION = {
    "pid": ["--pid", "--fork", "--kill-child", "--mount-proc"],
    "net": ["--net"],
    "mount": ["--mount"],
}

#: Default cap on each stream of each job.
DEFAULT_MAX_LOG_BYTES = 1 << 30
#: How many ended job records the manager keeps in memory (a few MB at most).
ENDED_RECORDS_CACHED = 4096

RESTARTED = "the worker restarted while the job ran"


#: Environment variables the dynamic loader and libc honour. The wrappers a
#: job starts through (the gate, setsid, unshare, setpriv) run as the server's
#: user; with --run-as that is root, so a job may not set these: they would
#: run its code as root before setpriv drops privileges.
LOADER_VARIABLES = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
    }
)


def loaderVariable(name: str) -> bool:
    """True for C{LD_*} and the other variables in L{LOADER_VARIABLES}."""
    return (
        name.startswith("LD_") or name.startswith("MALLOC_") or name in LOADER_VARIABLES
    )


class SpawnRefused(Exception):
    """The command cannot be started; the message says why."""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account jobs run as (C{--run-as})."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """
        @raise KeyError: no such user.
        @raise ValueError: the user is root.
        """
        entry = pwd.getpwnam(name)
        if entry.pw_uid == 0:
            raise ValueError("jobs must not run as root")
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


@dataclass(frozen=True)
class JobPolicy:
    """
    Server-wide rules for jobs: default and maximum limits, timeouts,
    isolation, the account jobs run as, and how many may run at once.
    """

    defaults: Limits = field(default_factory=Limits)
    maxima: Limits = field(default_factory=Limits)
    defaultTimeout: float | None = None
    isolate: frozenset[str] = frozenset()
    runAs: RunAs | None = None
    maxRunning: int | None = None

    def prefix(self) -> list[str]:
        """What runs between C{setsid} and the command: unshare, setpriv."""
        argv: list[str] = []
        if self.isolate:
            argv += [UNSHARE]
            for name in ("pid", "net", "mount"):
                if name in self.isolate:
                    argv += ISOLATION[name]
            argv += ["--"]
        if self.runAs is not None:
            argv += [
                SETPRIV,
                f"--reuid={self.runAs.uid}",
                f"--regid={self.runAs.gid}",
                "--init-groups",
                "--",
            ]
        return argv


class JobReactor(IReactorProcess, IReactorTime):
    """What the manager needs of a reactor: processes and time."""


def removeSoon(group: JobCgroup, tries: int = 100) -> bool:
    """At start-up: remove a just-killed cgroup, waiting for its processes to go."""
    for _ in range(tries):
        if group.remove():
            return True
        time.sleep(0.01)
    return False


def defaultEnvironment() -> dict[str, str]:
    """C{PATH}, C{LANG} and C{HOME} (the server user's home)."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = "/"
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": home}


def checkRunnable(command: str, env: dict[str, str], cwd: str | None) -> None:
    """
    Check, as C{execvp} in the job will, that C{command} can be started.

    @raise SpawnRefused: naming the cause (no such cwd, not found, not
        executable, a directory).
    """
    base = cwd if cwd is not None else os.getcwd()
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise SpawnRefused(
                f"cannot start: working directory {cwd!r} does not exist"
            )
        if not os.access(cwd, os.X_OK):
            raise SpawnRefused(
                f"cannot start: working directory {cwd!r} is not accessible"
            )
    if "/" in command:
        path = os.path.join(base, command)
        if not os.path.exists(path):
            raise SpawnRefused(f"cannot start: {command!r}: no such file")
        if os.path.isdir(path):
            raise SpawnRefused(f"cannot start: {command!r} is a directory")
        if not os.access(path, os.X_OK):
            raise SpawnRefused(f"cannot start: {command!r} is not executable")
        return
    search = env.get("PATH", "")
    if shutil.which(command, path=_absolutePath(search, base)) is None:
        raise SpawnRefused(f"cannot start: {command!r} not found in PATH")


def _absolutePath(search: str, base: str) -> str:
    return os.pathsep.join(
        os.path.join(base, entry) for entry in search.split(os.pathsep)
    )


class JobManager:
    """
    Every job this server knows. Running jobs live in memory; every record
    is in the L{JobStore}, written when a job starts and when it ends, so
    ended jobs cost no memory and survive restarts.

    @param reactor: spawns processes and keeps time.
    @param stateDir: holds the store and each job's output
        (C{jobs/<id>/stdout|stderr}).
    @param grace: seconds between SIGTERM and SIGKILL.
    @param killGroup: signals a process group (L{signalGroup}; a fake in tests).
    @param store: the job store (default: SQLite in C{stateDir}).
    @param maxLogBytes: cap on each stream of each job.
    @param cgroups: where job cgroups go (None: no limits, process-group kill).
    @param policy: limits, timeouts, isolation, run-as, concurrency cap.
    """

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        stateDir: str,
        grace: float,
        killGroup: Callable[[int, int], bool] = signalGroup,
        store: JobStore | None = None,
        maxLogBytes: int = DEFAULT_MAX_LOG_BYTES,
        cgroups: Cgroups | None = None,
        policy: JobPolicy = JobPolicy(),
        metrics: Metrics | None = None,
    ) -> None:
        self._reactor = reactor
        self._metrics = metrics if metrics is not None else Metrics()
        self._cgroups = cgroups
        self._policy = policy
        self._prefix = policy.prefix()
        self._running = 0
        self._killGroup = killGroup
        self._jobsDir = os.path.join(stateDir, "jobs")
        self._grace = grace
        self._maxLogBytes = maxLogBytes
        self._live: dict[str, JobProcess] = {}
        #: Ended records read lately: they never change again, and a client
        #: polling a finished job should not cost a store read each time.
        self._endedRecords: OrderedDict[str, JobRecord] = OrderedDict()
        self._baseEnv = defaultEnvironment()
        if policy.runAs is not None:
            self._baseEnv["HOME"] = policy.runAs.home
        self._bootId = currentBootId()
        self._shuttingDown = False
        os.makedirs(self._jobsDir, mode=0o700, exist_ok=True)
        self._store = (
            store
            if store is not None
            else JobStore(os.path.join(stateDir, "jobs.sqlite3"))
        )
        self._metrics.watchJobs(self._countByStatus)

    # -- start-up --------------------------------------------------------------

    def recover(self) -> list[JobRecord]:
        """
        Close the records of jobs that were running when the server died:
        kill what is left of their sessions and mark them FAILED.
        """
        orphans = self._store.running()
        if not orphans:
            return []
        sessions = sessionMembers()
        now = self._reactor.seconds()
        for record in orphans:
            pids = leftovers(record.pid, record.boot_id, record.proc_start, sessions)
            killed = killAll(pids)
            group = self._cgroups.find(record.id) if self._cgroups else None
            if group is not None:
                killed += int(group.kill())
                if not removeSoon(group):
                    self.log.warn("cgroup of job {job} not removed", job=record.id)
            for stream in ("stdout", "stderr"):
                try:
                    size = os.path.getsize(self._outputPath(record.id, stream))
                except OSError:
                    size = 0
                setattr(record, f"{stream}_bytes", size)
            record.finish(JobStatus.FAILED, now, error=RESTARTED)
            self._store.update(record)
            self.log.warn(
                "job {job} was running when the worker stopped: marked FAILED, "
                "{killed} leftover process(es) killed",
                job=record.id,
                killed=killed,
            )
        return orphans

    # -- jobs ------------------------------------------------------------------

    def create(self, request: JobRequest, owner: str) -> JobRecord:
        """
        Start a job. A command that cannot start gives a FAILED job, not an error.
        """
        if self._shuttingDown:
            raise Conflict("the server is shutting down")
        maxRunning = self._policy.maxRunning
        if maxRunning is not None and self._running >= maxRunning:
            raise TooManyRequests(
                f"{self._running} jobs are running, the most this server allows",
                retryAfter=1,
            )
        if self._policy.runAs is not None:
            unsafe = sorted(name for name in request.env if loaderVariable(name))
            if unsafe:
                raise BadRequest(
                    f"env {', '.join(unsafe)} not allowed with --run-as: the "
                    "wrappers a job starts through run as root (set it inside "
                    "the job instead, e.g. sh -c 'LD_LIBRARY_PATH=... exec prog')"
                )
        limits = self._limitsFor(request.limits)
        timeout = request.timeout or self._policy.defaultTimeout
        jobId = str(uuid.uuid4())
        env = {**self._baseEnv, **request.env}
        record = JobRecord(
            id=jobId,
            command=request.command,
            args=list(request.args),
            owner=owner,
            created_at=self._reactor.seconds(),
            env=env,
            cwd=request.cwd,
            boot_id=self._bootId,
            limits=limits.toJSON() if self._cgroups is not None else None,
            timeout_seconds=timeout,
        )
        cgroup = None
        order = OrderLog(self._outputPath(jobId, "order"))
        job = JobProcess(
            self._reactor,
            record,
            OutputSpool(
                self._outputPath(jobId, "stdout"),
                self._maxLogBytes,
                self._reactor,
                order,
                0,
            ),
            OutputSpool(
                self._outputPath(jobId, "stderr"),
                self._maxLogBytes,
                self._reactor,
                order,
                1,
            ),
            self._grace,
            self._killGroup,
            timeout=timeout,
        )
        argv = [SETSID, *self._prefix, request.command, *request.args]
        try:
            checkRunnable(request.command, env, request.cwd)
            if self._cgroups is not None:
                cgroup = job.cgroup = self._cgroups.create(jobId, limits)
                gate = GATE_KEEP_WORKDIR if "PWD" in request.env else GATE
                argv = [SH, "-c", gate, "jobworker-gate", *argv]
            transport = self._reactor.spawnProcess(
                JobProcessProtocol(job),
                argv[0],
                argv,
                env=env,
                path=request.cwd,
                childFDs={0: "w", 1: "r", 2: "r", 3: "w"}
                if cgroup is not None
                else {0: "w", 1: "r", 2: "r"},
            )
            if cgroup is not None:
                self._openGate(job, cgroup, transport)
        except SpawnRefused as e:
            job.failedToStart(str(e))
        except CgroupError as e:
            job.failedToStart(f"cannot start: {e}")
        except OSError as e:
            job.failedToStart(spawnError(e))
        if record.pid is not None:
            # Crash recovery finds the job's session by its leader, and needs
            # the leader's start time never to hit a reused pid.
            record.proc_start = processStartTime(record.pid)
        try:
            self._store.insert(record)
        except StoreError as e:
            # Never leave a process the store does not know about.
            job.setupFailed(str(e))
            self.log.error("{error}", error=str(e))
            raise ServiceUnavailable(
                "the job could not be recorded (is the state dir's disk full?)"
            ) from None
        if record.status.ended:
            self._metrics.spawnFailures.inc()
            self._metrics.jobsEnded.labels(record.status.value).inc()
        else:
            self._metrics.jobsStarted.inc()
            self._running += 1
            self._live[jobId] = job
            job.whenEnded().addCallback(self._ended)
            job.whenCleanedUp().addCallback(lambda _: self._live.pop(jobId, None))
        return record

    def _openGate(self, job: JobProcess, cgroup: JobCgroup, transport: Any) -> None:
        """Place the gated child in its cgroup, then let it run the command."""
        try:
            cgroup.addProcess(transport.pid)
        except CgroupError as e:
            job.setupFailed(f"cannot start: {e}")
        else:
            transport.writeToChild(3, b"go\n")
        transport.closeChildFD(3)

    def _limitsFor(self, requested: Limits) -> Limits:
        """
        The limits a job gets: the request's, defaults filling the rest.

        @raise BadRequest: a limit over the server's maximum, or limits asked
            for where the server cannot enforce them.
        """
        for name, value, maximum in requested.over(self._policy.maxima):
            raise BadRequest(
                f"limits.{name} {value} is over this server's maximum {maximum}"
            )
        asked = {name for name, _ in requested.given()}
        if self._cgroups is None:
            if asked:
                raise BadRequest(
                    "resource limits are not available on this server "
                    "(no usable cgroups)"
                )
            return Limits()
        unsupported = sorted(asked - self._cgroups.supported)
        if unsupported:
            raise BadRequest(
                f"limit(s) {', '.join(unsupported)} not available on this server"
            )
        merged = requested.withDefaults(self._policy.defaults)
        return Limits(
            **{
                name: value
                for name, value in merged.given()
                if name in self._cgroups.supported
            }
        )

    def _ended(self, record: JobRecord) -> JobRecord:
        self._running -= 1
        try:
            self._store.update(record)
        except StoreError as e:
            # The record stays RUNNING in the store: a restart closes it as
            # FAILED (worker restarted); the live table has the truth meanwhile.
            self.log.error("{error}", error=str(e))
        metrics = self._metrics
        metrics.jobsEnded.labels(record.status.value).inc()
        metrics.outputBytes.labels("stdout").inc(record.stdout_bytes)
        metrics.outputBytes.labels("stderr").inc(record.stderr_bytes)
        return record

    def _countByStatus(self) -> dict[str, int]:
        return self._store.countByStatus()

    def record(self, jobId: str) -> JobRecord:
        """
        The current record of a job.

        @raise NotFound: if there is none.
        """
        job = self._live.get(jobId)
        if job is not None:
            return job.snapshot()
        cached = self._endedRecords.get(jobId)
        if cached is not None:
            self._endedRecords.move_to_end(jobId)
            return cached
        record = self._store.get(jobId)
        if record is None:
            raise NotFound("no such job")
        if record.status.ended:
            record.final = True
            self._endedRecords[jobId] = record
            if len(self._endedRecords) > ENDED_RECORDS_CACHED:
                self._endedRecords.popitem(last=False)
        return record

    def page(
        self,
        status: JobStatus | None = None,
        owner: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> tuple[list[JobRecord], int | None]:
        """Jobs newest first (see L{JobStore.page}), running ones up to date."""
        records, following = self._store.page(
            status=status, owner=owner, limit=limit, before=before
        )
        live = self._live
        return [
            live[r.id].snapshot() if r.id in live else r for r in records
        ], following

    def whenEnded(self, jobId: str) -> Deferred[JobRecord]:
        """Fires with a job's record once it has ended (now, if it has)."""
        job = self._live.get(jobId)
        if job is not None:
            return job.whenEnded()
        return succeed(self.record(jobId))

    def stop(self, jobId: str, by: str) -> Deferred[JobRecord]:
        """
        Stop a running job (TERM, grace, KILL to its group).

        @raise Conflict: if it has already ended (the job goes in the body).
        @raise NotFound: if there is no such job.
        """
        job = self._live.get(jobId)
        if job is None or job.record.status.ended:
            record = self.record(jobId)
            raise Conflict(
                f"job already ended ({record.status.value})", job=record.toJSON()
            )
        self._metrics.stops.inc()
        return job.stop(by)

    def order(self, jobId: str) -> OrderSource:
        """Where the order of a job's stdout and stderr chunks is recorded."""
        job = self._live.get(jobId)
        if job is not None and job.stdout.order is not None:
            return job.stdout.order
        self.record(jobId)
        return StoredOrder(self._outputPath(jobId, "order"))

    def output(self, jobId: str, stream: str) -> OutputSource:
        """C{stream} (C{stdout} or C{stderr}) of a job, live or stored."""
        job = self._live.get(jobId)
        if job is not None:
            return job.stdout if stream == "stdout" else job.stderr
        record = self.record(jobId)
        size = record.stdout_bytes if stream == "stdout" else record.stderr_bytes
        return StoredOutput(self._outputPath(jobId, stream), size)

    def delete(self, jobId: str) -> None:
        """
        Remove an ended job's record and output.

        @raise Conflict: if the job is still running.
        """
        record = self.record(jobId)
        if not record.status.ended:
            raise Conflict("job is still running: stop it first", job=record.toJSON())
        self._remove(jobId)

    def _remove(self, jobId: str) -> None:
        self._endedRecords.pop(jobId, None)
        self._store.delete(jobId)
        try:
            shutil.rmtree(os.path.join(self._jobsDir, jobId))
        except OSError as e:
            if e.errno != errno.ENOENT:
                self.log.error(
                    "cannot remove output of job {job}: {error}",
                    job=jobId,
                    error=e.strerror,
                )

    def expire(self, olderThan: float) -> int:
        """Delete every job that ended more than C{olderThan} seconds ago."""
        cutoff = self._reactor.seconds() - olderThan
        removed = 0
        while True:
            ids = [i for i in self._store.endedBefore(cutoff) if i not in self._live]
            if not ids:
                break
            for jobId in ids:
                self._remove(jobId)
            removed += len(ids)
        if removed:
            self.log.info("retention: removed {count} ended job(s)", count=removed)
        return removed

    def _outputPath(self, jobId: str, stream: str) -> str:
        return os.path.join(self._jobsDir, jobId, stream)

    # -- shutdown --------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """
        Refuse new jobs, stop every running one and wait until each has ended
        (and is recorded) and its process group is gone.
        """
        self._shuttingDown = True
        waits: list[Deferred[None]] = []
        for job in list(self._live.values()):
            if not job.record.status.ended:
                job.stop("server shutdown")
            waits.append(job.whenCleanedUp())
        self.log.info("shutdown: waiting for {count} job(s)", count=len(waits))
        return DeferredList(waits).addCallback(lambda _: None)

    def close(self) -> None:
        """Close the store (after L{shutdown})."""
        self._store.close()
