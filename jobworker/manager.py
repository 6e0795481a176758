"""The job manager: creates, finds, lists, stops and deletes jobs."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import uuid
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from .errors import Conflict, NotFound
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
from .store import JobStore
from .validation import JobRequest

#: The environment every job starts from; the request's env is laid over it.
#: Nothing of the server's own environment reaches a job.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: util-linux setsid: puts the job in a session (and process group) of its
#: own, then execs the command without a fork, so the pid stays the job's.
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

#: Default cap on each stream of each job.
DEFAULT_MAX_LOG_BYTES = 1 << 30

RESTARTED = "the worker restarted while the job ran"


class SpawnRefused(Exception):
    """The command cannot be started; the message says why."""


class JobReactor(IReactorProcess, IReactorTime):
    """What the manager needs of a reactor: processes and time."""


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
    ) -> None:
        self._reactor = reactor
        self._killGroup = killGroup
        self._jobsDir = os.path.join(stateDir, "jobs")
        self._grace = grace
        self._maxLogBytes = maxLogBytes
        self._live: dict[str, JobProcess] = {}
        self._baseEnv = defaultEnvironment()
        self._bootId = currentBootId()
        self._shuttingDown = False
        os.makedirs(self._jobsDir, mode=0o700, exist_ok=True)
        self._store = (
            store
            if store is not None
            else JobStore(os.path.join(stateDir, "jobs.sqlite3"))
        )

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
        )
        os.mkdir(os.path.join(self._jobsDir, jobId), 0o700)
        job = JobProcess(
            self._reactor,
            record,
            OutputSpool(self._outputPath(jobId, "stdout"), self._maxLogBytes),
            OutputSpool(self._outputPath(jobId, "stderr"), self._maxLogBytes),
            self._grace,
            self._killGroup,
        )
        try:
            checkRunnable(request.command, env, request.cwd)
            self._reactor.spawnProcess(
                JobProcessProtocol(job),
                SETSID,
                [SETSID, request.command, *request.args],
                env=env,
                path=request.cwd,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except SpawnRefused as e:
            job.failedToStart(str(e))
        except OSError as e:
            job.failedToStart(spawnError(e))
        if record.pid is not None:
            record.proc_start = processStartTime(record.pid)
        self._store.insert(record)
        if not record.status.ended:
            self._live[jobId] = job
            job.whenEnded().addCallback(self._ended)
            job.whenCleanedUp().addCallback(lambda _: self._live.pop(jobId, None))
        self.log.info(
            "job {job} created by {owner}: {command!r} ({status})",
            job=jobId,
            owner=owner,
            command=request.command,
            status=record.status.value,
        )
        return record

    def _ended(self, record: JobRecord) -> JobRecord:
        self._store.update(record)
        return record

    def record(self, jobId: str) -> JobRecord:
        """
        The current record of a job.

        @raise NotFound: if there is none.
        """
        job = self._live.get(jobId)
        if job is not None:
            return job.snapshot()
        record = self._store.get(jobId)
        if record is None:
            raise NotFound("no such job")
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
        return job.stop(by)

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
        if not record.status.ended or jobId in self._live:
            raise Conflict("job is still running: stop it first", job=record.toJSON())
        self._remove(jobId)

    def _remove(self, jobId: str) -> None:
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
