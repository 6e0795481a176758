"""The job manager: creates, finds, lists and stops jobs; owns the job table."""

from __future__ import annotations

import os
import pwd
import shutil
import uuid
from collections.abc import Callable, Iterator

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger

from .errors import Conflict, NotFound
from .process import JobProcess, JobProcessProtocol, signalGroup, spawnError
from .records import JobRecord
from .spool import OutputSpool
from .validation import JobRequest

#: The environment every job starts from; the request's env is laid over it.
#: Nothing of the server's own environment reaches a job.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: util-linux setsid: puts the job in a session (and process group) of its
#: own, then execs the command without a fork, so the pid stays the job's.
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

STREAMS = ("stdout", "stderr")


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
    Every job this server knows, newest last, and the operations on them.

    @param reactor: spawns processes and keeps time.
    @param stateDir: where each job's output goes (C{jobs/<id>/stdout|stderr}).
    @param grace: seconds between SIGTERM and SIGKILL.
    @param killGroup: signals a process group (L{signalGroup}; a fake in tests).
    """

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        stateDir: str,
        grace: float,
        killGroup: Callable[[int, int], bool] = signalGroup,
    ) -> None:
        self._reactor = reactor
        self._killGroup = killGroup
        self._jobsDir = os.path.join(stateDir, "jobs")
        self._grace = grace
        self._jobs: dict[str, JobProcess] = {}
        self._baseEnv = defaultEnvironment()
        self._shuttingDown = False
        os.makedirs(self._jobsDir, mode=0o700, exist_ok=True)

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
        )
        directory = os.path.join(self._jobsDir, jobId)
        os.mkdir(directory, 0o700)
        job = JobProcess(
            self._reactor,
            record,
            OutputSpool(os.path.join(directory, "stdout")),
            OutputSpool(os.path.join(directory, "stderr")),
            self._grace,
            self._killGroup,
        )
        self._jobs[jobId] = job
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
        self.log.info(
            "job {job} created by {owner}: {command!r} ({status})",
            job=jobId,
            owner=owner,
            command=request.command,
            status=record.status.value,
        )
        return record

    def job(self, jobId: str) -> JobProcess:
        """
        The job with this id.

        @raise NotFound: if there is none.
        """
        job = self._jobs.get(jobId)
        if job is None:
            raise NotFound("no such job")
        return job

    def records(self) -> Iterator[JobRecord]:
        """Every job's record, newest first."""
        for job in reversed(self._jobs.values()):
            yield job.record

    def stop(self, jobId: str, by: str) -> Deferred[JobRecord]:
        """
        Stop a running job (TERM, grace, KILL to its group).

        @raise Conflict: if it has already ended (the job goes in the body).
        """
        job = self.job(jobId)
        if job.record.status.ended:
            raise Conflict(
                f"job already ended ({job.record.status.value})",
                job=job.record.toJSON(),
            )
        return job.stop(by)

    def spool(self, jobId: str, stream: str) -> OutputSpool:
        """The spool of C{stream} (C{stdout} or C{stderr}) of a job."""
        job = self.job(jobId)
        return job.stdout if stream == "stdout" else job.stderr

    def shutdown(self) -> Deferred[None]:
        """
        Refuse new jobs, stop every running one and wait until each has ended
        and its process group is gone.
        """
        self._shuttingDown = True
        waits: list[Deferred[None]] = []
        for job in self._jobs.values():
            if not job.record.status.ended:
                job.stop("server shutdown")
            waits.append(job.whenCleanedUp())
        pending = [d for d in waits if not d.called]
        self.log.info("shutdown: waiting for {count} job(s)", count=len(pending))
        return DeferredList(pending).addCallback(lambda _: None)
