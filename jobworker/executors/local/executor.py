"""The local executor: each job a process on this machine (ProcessProtocol)."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.logger import Logger

from ...errors import BadRequest, CannotStartNow, Forbidden, TooManyRequests
from ...jobs.dropbehind import DropBehind, RunInThread
from ...jobs.executor import ExecutorHealth, OwnerCheck
from ...jobs.identity import (
    LOCK_DIR,
    DynamicUids,
    Identity,
    IdentityError,
    PoolExhausted,
    UidLocksFailing,
    dynamicUid,
    ownGroup,
    runAsUid,
)
from ...jobs.limits import Limits
from ...jobs.manager import DEFAULT_MAX_LOG_BYTES, JobManager
from ...jobs.order import OrderLog
from ...jobs.policy import JobPolicy, JobReactor
from ...jobs.records import JobRecord, JobStatus
from ...jobs.recovery import (
    ancestors,
    bootTicks,
    groupTakenOver,
    killAll,
    killUid,
    leftovers,
    liveServerOf,
    liveServerOfLeader,
    pidReused,
    processesByUid,
    processesOf,
    processStartTime,
    sessionMembers,
    spawnedAt,
)
from ...jobs.removal import AsideRemoval
from ...jobs.spool import OutputSpool, OutputTrouble, outputSize
from ...jobs.store import JobStore
from ...jobs.validation import JobRequest
from ...metrics import Metrics
from .cgroups import CgroupError, Cgroups, CgroupSetupError, JobCgroup
from .launcher import KeptLauncher, LauncherGone
from .leftovers import LEFTOVERS, LeftoverJournal
from .madecgroups import MADE_CGROUPS, MadeCgroups
from .process import (
    SERVER_SHORT_OF,
    GroupNumbers,
    JobProcess,
    JobProcessProtocol,
    signalGroup,
    spawnCause,
    spawnError,
)
from .pump import Pumps
from .sandbox import (
    ISOLATION,
    POSIX_SHELL,
    SETSID,
    UNSHARE,
    WORKDIR,
    Inherited,
    RunnableChecks,
    Sandbox,
    SpawnRefused,
    checkCommand,
)
from .spawner import Spawner, SpawnerGone
from .stalls import WATCH, StallWatch
from .stdin import StdinFeed

__all__ = ["ISOLATION", "SETSID", "SpawnRefused"]

#: The environment every job starts from; the request's env is laid over it.
#: Nothing of the server's own environment reaches a job.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: Environment variables the dynamic loader and libc honour. The wrappers a
#: job starts through (the gate, setsid, unshare, the sandbox shell, setpriv)
#: run as the server's user; when that is root and the job is not, a job may
#: not set these: they would run its code as root before setpriv drops
#: privileges.
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
        # Startup files a shell reads (the sandbox shell runs as root).
        "ENV",
        "BASH_ENV",
    }
)

#: Prefixes of the same kind: the loader's and libc's, and util-linux's
#: libraries (libmount honours LIBMOUNT_UTAB, LIBMOUNT_FSTAB, ... when not
#: setuid, and the sandbox's mount runs as plain root).
LOADER_PREFIXES = (
    "LD_",
    "MALLOC_",
    "LIBMOUNT_",
    "LIBBLKID_",
    "LIBSMARTCOLS_",
    "LIBUUID_",
    "LIBFDISK_",
)


def loaderVariable(name: str) -> bool:
    """True for the variables of L{LOADER_VARIABLES} and L{LOADER_PREFIXES}."""
    return name.startswith(LOADER_PREFIXES) or name in LOADER_VARIABLES


def isolationPrefix(isolate: frozenset[str]) -> list[str]:
    """What runs between C{setsid} and the command of a job that is not
    sandboxed (it runs as the server's user): unshare, if asked for."""
    argv: list[str] = []
    if isolate:
        argv += [UNSHARE]
        for name in ("pid", "net", "mount"):
            if name in isolate:
                argv += ISOLATION[name]
        argv += ["--"]
    return argv


#: Seconds after the shutdown's SIGKILL of its jobs (the stop grace after the
#: shutdown began) that a spawner may take to report their ends, and to exit
#: once its socket is closed, before it is taken for wedged and killed.
SPAWNER_DEADLINE = 5.0

#: Seconds after that the shutdown waits no longer for processes no KILL
#: ends (in D state under an I/O limit, say): the server exits, and its
#: next start kills what is left (L{LocalExecutor._abandon}).
SHUTDOWN_GIVES_UP_AFTER = 30.0

#: How many identities' default environments are kept (the last made):
#: accounts' jobs find theirs; a dynamic uid comes round again only after
#: the rest of its range, and its environment is made again then.
ENVIRONMENTS_KEPT = 1024


#: Seconds between two tries to remove a cgroup recovery could not (a
#: process of it held in the kernel, as by a frozen file system).
REMOVE_AGAIN_AFTER = 30.0


def removeSoon(group: JobCgroup, tries: int = 100) -> bool:
    """At start-up: remove a just-killed cgroup, waiting for its processes to go."""
    for _ in range(tries):
        if group.remove():
            return True
        time.sleep(0.01)
    return False


def defaultEnvironment(identity: Identity | None = None) -> dict[str, str]:
    """
    C{PATH}, C{LANG}, and C{HOME}, C{USER}, C{LOGNAME}, C{SHELL} of the
    identity (the server's user by default).
    """
    if identity is None:
        identity = Identity.ofServer()
    return {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        **identity.environment(WORKDIR),
    }


#: Seconds C{/healthz} says C{degraded} after a start refused for the
#: server's own reason (no process slot, no descriptor), unless a start
#: succeeds before: it said C{ok} while every C{POST /jobs} was a 503
#: (fault round 32). Bounded: a balancer that takes the server out on
#: C{degraded} sends it no job to succeed with.
START_TROUBLE_FOR = 30.0


def serverShort(error: BaseException) -> bool:
    """Does C{error} say the server, not the job, cannot start a process now?"""
    return isinstance(error, (SpawnerGone, LauncherGone)) or (
        getattr(error, "errno", None) in SERVER_SHORT_OF
    )


def cannotStartNow(error: Exception) -> CannotStartNow:
    """The 503 of a start the server cannot make now, saying why (a launcher
    being built again: to try again in a second)."""
    building = isinstance(error, LauncherGone) and error.building
    return CannotStartNow(
        f"the server cannot start a job now ({spawnCause(error)}); try again shortly",
        **({"retryAfter": 1} if building else {}),
    )


def machineLimits() -> Limits:
    """What this machine has: a limit above it cannot be honoured."""
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    pids = None
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            pids = int(f.read())
    except (OSError, ValueError):
        pass
    cpus = os.cpu_count()
    return Limits(
        memory_bytes=memory,
        cpu_millicores=cpus * 1000 if cpus else None,
        pids=pids,
    )


class LocalExecutor:
    """
    Run each job as a process of this machine: C{setsid} (and the isolation
    and run-as wrappers), in its own cgroup when there are cgroups, watched
    by a L{JobProcessProtocol}.

    @param launcher: the compiled launcher that sets up sandboxed jobs in
        one process (None: they start through the exec chain).
    """

    log = Logger()
    name = "local"

    def __init__(
        self,
        reactor: JobReactor,
        jobsDir: str,
        grace: float,
        signalGroupOf: Callable[[int, int], bool] = signalGroup,
        maxLogBytes: int | None = None,
        cgroups: Cgroups | None = None,
        policy: JobPolicy | None = None,
        launcher: str | None = None,
        runInThread: RunInThread | None = None,
        pumps: Pumps | None = None,
        spawner: bool = False,
        descriptorLimit: int | None = None,
        oomScore: int | None = None,
        lookUpInThread: RunInThread | None = None,
        umask: int | None = None,
        stallWatch: StallWatch | None = WATCH,
    ) -> None:
        """
        @param stallWatch: watches the reactor's reads of the jobs' pipes,
            and kills a job that holds one (L{StallWatch}; None: none).
        @param lookUpInThread: where the dynamic uids are looked up in the
            user database (default: C{runInThread}): a daemon thread, which
            no exit waits for, since a network directory may hang.
        @param descriptorLimit: the soft C{RLIMIT_NOFILE} every job starts
            with (None: the server's own): the one the server was started
            with, before it raised its own (L{descriptors.raiseSoftLimit}).
        @param oomScore: the C{oom_score_adj} every job starts with (None:
            the server's own).
        @param umask: the umask every job starts with (None: the server's
            own, which twistd sets to 077 when it daemonizes).
        """
        if policy is None:
            policy = JobPolicy()
        self._reactor = reactor
        #: Where the spools hand their pages back to the kernel (None: in
        #: the reactor's thread, for tests).
        self._runInThread = runInThread
        #: The threads heavy output streams are read by (None: the reactor
        #: reads every stream, for tests).
        self._pumps = pumps
        self._jobsDir = jobsDir
        self._grace = grace
        #: Stores a live job's record when a stop is first asked (L{attach}).
        self._saveStop: Callable[[JobRecord], None] | None = None
        self._signalGroupOf = signalGroupOf
        self._maxLogBytes = maxLogBytes
        self._cgroups = cgroups
        self._policy = policy
        self._prefix = isolationPrefix(policy.isolate)
        #: The gate shells of jobs that are not sandboxed, and the
        #: environment of the root stages of those that are (the launcher
        #: and the exec chain set the limit and score from it: never the
        #: job's).
        inherited = Inherited(descriptorLimit, oomScore, umask)
        self._gates = {keep: inherited.gate(keep) for keep in (False, True)}
        self._rootEnvironment = inherited.rootEnvironment()
        self._identities = policy.identities
        #: Where the dynamic uids are looked up from the first job on (the
        #: user database, which a network directory can keep waiting):
        #: ahead of the jobs that need one, never on the reactor's thread.
        #: Not before, so a server made and never started (a refused
        #: start-up) leaves nothing scheduled.
        self._uidLookups = lookUpInThread or runInThread
        self._sandbox: Sandbox | None = None
        #: The compiled launcher, looked at before each start of it.
        self._launcher = (
            KeptLauncher(launcher, runInThread) if launcher is not None else None
        )
        if self._identities.switching:
            self._sandbox = Sandbox(
                os.path.join(os.path.dirname(jobsDir), "sandbox"),
                policy.tmpSize,
                policy.isolate,
                launcher=launcher,
            )
        self._environments: dict[Identity, dict[str, str]] = {}
        #: Whether sandboxed jobs are forked by a long-lived spawner (the
        #: launcher's --spawner mode) rather than spawned one by one.
        self._useSpawner = spawner
        self._spawner: Spawner | None = None
        #: Spawner processes started by spawners replaced since.
        self._retiredStarts = 0
        #: When a job's output last could not be written (L{health}).
        self._outputTrouble = OutputTrouble(reactor)
        #: The last start refused for the server's own reason, and when
        #: (L{health}); None once one succeeded since.
        self._startTrouble: tuple[float, str] | None = None
        #: Dynamic uids waiting for their last processes to die (no cgroups),
        #: and the sweep that looks for them all in one scan of /proc.
        self._releasing: dict[int, Identity] = {}
        self._sweepCall: IDelayedCall | None = None
        self._machine = machineLimits()
        #: Whether a command can be started: asked before each job's fork.
        self._runnable = RunnableChecks(reactor)
        #: The process-group numbers of the live jobs.
        self._groups = GroupNumbers(pidReused, groupTakenOver)
        #: Watches the reactor's reads of the jobs' pipes (L{StallWatch}).
        self._stallWatch = stallWatch
        #: The pid of a live jobworker whose state dir this one is a copy
        #: of, as L{recover} found (its records' processes are that
        #: server's); None if none was found.
        self.copyOf: int | None = None
        #: Jobs ended with processes still to kill (L{LeftoverJournal}).
        self._leftovers = LeftoverJournal(
            os.path.join(os.path.dirname(jobsDir), LEFTOVERS)
        )
        #: Jobs whose cgroup was made and is not yet removed (L{MadeCgroups}).
        self._madeCgroups = MadeCgroups(
            os.path.join(os.path.dirname(jobsDir), MADE_CGROUPS)
        )

    def _spawnerOf(self, sandbox: Sandbox | None) -> Spawner | None:
        """
        The spawner that forks the jobs of C{sandbox} (None: none).
        """
        if not self._useSpawner or sandbox is None or sandbox.launcher is None:
            return None
        spawner = self._spawner
        if spawner is None or spawner.launcher != sandbox.launcher:
            if spawner is not None:
                spawner.stop()
                self._retiredStarts += spawner.started
            spawner = self._spawner = Spawner(
                self._reactor,
                sandbox.launcher,
                self._rootEnvironment,
                ready=self._launcherReady,
            )
        return spawner

    def _launcherTrouble(self) -> str | None:
        """Why sandboxed jobs cannot start through the compiled launcher now
        (None: they can, or they do not start through it)."""
        sandbox, kept = self._sandbox, self._launcher
        if sandbox is None or kept is None or sandbox.launcher != kept.path:
            return None
        return kept.trouble()

    def _launcherReady(self) -> None:
        """
        @raise LauncherGone: jobs cannot start through the compiled launcher
            now (L{KeptLauncher}: it is gone, and built again).
        """
        why = self._launcherTrouble()
        if why is not None:
            assert self._launcher is not None
            raise LauncherGone(why, self._launcher.building)

    @property
    def spawnerStarts(self) -> int:
        """How many spawner processes were started: more than one means one
        died (and its jobs were killed) or was replaced."""
        current = self._spawner.started if self._spawner is not None else 0
        return self._retiredStarts + current

    def health(self) -> ExecutorHealth:
        """
        Whether jobs can start now (C{/healthz}, C{/metrics}): not while the
        spawner is silent (stopped, or it announced no standby when one was
        needed); one stopped for long is continued (L{Spawner.silence}). Nor
        while the compiled launcher is gone (it is built again: no spawner,
        nor job under C{--launcher exec}, could start from it). Nor within
        L{OUTPUT_TROUBLE_FOR<jobworker.jobs.spool.OUTPUT_TROUBLE_FOR>}
        seconds of a job's output that could not be written.
        """
        spawner = self._spawner
        why = spawner.silence() if spawner is not None else None
        if why is None and spawner is not None and spawner.lost is not None:
            # Its running jobs died with it: said a while (it said "ok",
            # and only the server's log told: operator round 41).
            since, count = spawner.lost
            if 0 <= self._reactor.seconds() - since < START_TROUBLE_FOR:
                why = (
                    f"the job spawner died: its {count} running job(s) were "
                    "killed (a new one takes jobs)"
                )
        if why is None:
            why = self._launcherTrouble()
        trouble = self._startTrouble
        if why is None and trouble is not None:
            now = self._reactor.seconds()
            if now < trouble[0]:  # (a step back of the clock: from now on)
                trouble = self._startTrouble = (now, trouble[1])
            if now - trouble[0] < START_TROUBLE_FOR:
                why = trouble[1]
            else:
                self._startTrouble = None
        if why is None:
            why = self._outputTrouble.recent()
        return ExecutorHealth(self.name, why is None, why)

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox of jobs that do not run as root (None: not root)."""
        return self._sandbox

    @property
    def grace(self) -> float:
        """The server's stop grace (C{--stop-grace}), in seconds."""
        return self._grace

    def identityFor(self, owner: str, account: Identity | None) -> Identity:
        """
        The identity a new job of a user mapped to C{account} runs as.

        @raise TooManyRequests: it needs a dynamic uid and none is free.
        @raise CannotStartNow: the pool's lock cannot be taken now (no
            descriptor left).
        @raise Forbidden: its account cannot be used now (removed since
            the users file was read, say).
        """
        pool = self._identities.pool
        if pool is not None and self._uidLookups is not None:
            pool.verifyAhead(self._reactor, self._uidLookups, now=time.monotonic)
            self._uidLookups = None
        try:
            return self._identities.acquire(account)
        except PoolExhausted as e:
            raise TooManyRequests(str(e), retryAfter=1) from None
        except IdentityError as e:
            raise Forbidden(f"user {owner}'s jobs cannot run now: {e}") from None
        except UidLocksFailing as e:
            refused = CannotStartNow(
                f"the server cannot start a job now: {e.strerror}; try again shortly"
            )
            self._troubleStarting(refused)
            raise refused from None
        except OSError as e:
            if serverShort(e):
                refused = cannotStartNow(e)
                self._troubleStarting(refused)
                raise refused from None
            raise

    def release(self, identity: Identity) -> None:
        """
        A job of C{identity} is over: give a dynamic uid back, once no
        process of it is left (without a cgroup, kill what is: L{_sweep}).
        """
        if identity.dynamic and self._cgroups is None:
            self._releasing[identity.uid] = identity
            if self._sweepCall is None:
                self._sweepCall = self._reactor.callLater(0, self._sweep)
            return
        self._identities.release(identity)

    def _sweep(self) -> None:
        """
        Give back each uid of L{_releasing} that no process has left; kill
        what the others have, and look again shortly. One scan of /proc
        for every uid released in the same reactor turn, not one per job.
        """
        self._sweepCall = None
        pending = self._releasing
        if not pending:
            return
        for uid in pending:
            killUid(uid)  # (what the scan below would miss: a process hopping)
        try:
            left = processesByUid(range(min(pending), max(pending) + 1))
        except OSError as e:  # no descriptor for /proc: every uid stays held
            self.log.warn("cannot look for leftover processes: {why}", why=e)
            self._sweepCall = self._reactor.callLater(0.05, self._sweep)
            return
        self._releasing = {}
        for uid, identity in pending.items():
            pids = left.get(uid)
            if pids:
                killAll(pids)
                self._releasing[uid] = identity
            else:
                self._identities.release(identity)
        if self._releasing:
            self._sweepCall = self._reactor.callLater(0.05, self._sweep)

    def _stopSweeping(self) -> None:
        if self._sweepCall is not None and self._sweepCall.active():
            self._sweepCall.cancel()
        self._sweepCall = None

    def environment(self, identity: Identity) -> dict[str, str]:
        """
        What a job of C{identity} starts with, before the request's env:
        kept for the last L{ENVIRONMENTS_KEPT} identities (one per dynamic
        uid was kept for ever: 630 bytes each, up to the range's size).
        """
        environments = self._environments
        env = environments.get(identity)
        if env is None:
            if len(environments) >= ENVIRONMENTS_KEPT:
                del environments[next(iter(environments))]  # (the oldest)
            env = environments[identity] = defaultEnvironment(identity)
        return env

    def attach(
        self,
        save: Callable[[JobRecord], None],
        find: Callable[[str], JobRecord | None],
    ) -> None:
        """
        A local job's record changes before its end only when a stop is
        first asked (C{stopped_by}), or its timeout fires (C{error}), and
        when its main process ends before what it left: saved then, so
        that a crash in the grace closes it as it would have ended
        (L{recover}).
        """
        self._saveStop = save

    def ownersChanged(self, check: OwnerCheck) -> None:
        """Nothing waits here: the manager's queue holds local jobs, and
        checks each at its turn."""

    def holdsDependencies(self, unended: Sequence[JobRecord]) -> bool:
        """Never: a local job waiting on others waits in the manager's queue."""
        return False

    def outputDir(self, jobId: str) -> str:
        """The folder of a job's output files."""
        return os.path.join(self._jobsDir, jobId)

    def _spool(self, jobId: str, name: str, order: OrderLog, index: int) -> OutputSpool:
        """A new job's spool for stream C{name} (number C{index})."""
        path = self.outputPath(jobId, name)
        return OutputSpool(
            path,
            self._maxLogBytes,
            self._reactor,
            order,
            index,
            DropBehind(path, self._runInThread),
            self._outputTrouble,
        )

    def outputPath(self, jobId: str, stream: str) -> str:
        """A job's C{stdout}, C{stderr} or C{order} file."""
        # (Three per job: os.path.join's checks cost more than the work.)
        return f"{self._jobsDir}/{jobId}/{stream}"

    def checkRequest(self, request: JobRequest, identity: Identity) -> None:
        """
        @raise BadRequest: loader variables in the env of a job that starts
            through root's wrappers but does not run as root.
        """
        self._check(request, self._identities.sandboxed(identity))

    def checkQueued(self, request: JobRequest, account: Identity | None) -> None:
        """L{checkRequest}, as the identity L{identityFor} would give now."""
        self._check(request, self._identities.wouldSandbox(account))

    def _check(self, request: JobRequest, sandboxed: bool) -> None:
        """L{checkRequest} of a job that is C{sandboxed} or not."""
        if sandboxed:
            why = checkCommand(request.command)
            if why is not None:
                raise BadRequest(why)
            unsafe = sorted(name for name in request.env if loaderVariable(name))
            if unsafe:
                raise BadRequest(
                    f"env {', '.join(unsafe)} not allowed: the wrappers a job "
                    "starts through run as root (set it inside the job instead, "
                    "e.g. sh -c 'LD_LIBRARY_PATH=... exec prog')"
                )

    def limitsFor(self, requested: Limits) -> Limits:
        """
        The limits a job gets: the request's, defaults filling the rest.

        @raise BadRequest: a limit over the server's maximum, or limits asked
            for where the server cannot enforce them.
        """
        self._policy.checkMaxima(requested)
        for name, value, most in requested.over(self._machine):
            raise BadRequest(
                f"limits.{name} {value} is more than this machine has ({most})"
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
        self._policy.checkFloor(requested)
        merged = requested.withDefaults(self._policy.defaults)
        return Limits(
            **{
                name: value
                for name, value in merged.given()
                if name in self._cgroups.supported
            }
        )

    def recordedLimits(self, limits: Limits) -> dict[str, int | None] | None:
        """What the job record shows of its limits (None without cgroups)."""
        return limits.toJSON() if self._cgroups is not None else None

    def launch(
        self,
        record: JobRecord,
        request: JobRequest,
        limits: Limits,
        timeout: float | None,
        identity: Identity,
    ) -> JobProcess:
        """
        Start the job's process as C{identity}; a command that cannot start
        ends FAILED. A dynamic identity goes back to the pool once nothing
        of the job is left.

        @raise CannotStartNow: the server itself cannot start a process now
            (L{SERVER_SHORT_OF}, or its spawner silent or gone); nothing of
            the job is left, and its record is as it was.
        """
        jobId = record.id
        order = OrderLog(self.outputPath(jobId, "order"))
        job = JobProcess(
            self._reactor,
            record,
            self._spool(jobId, "stdout", order, 0),
            self._spool(jobId, "stderr", order, 1),
            self._grace,
            self._signalGroupOf,
            timeout=timeout,
            stdinFeed=StdinFeed(self._policy.maxStdinBytes) if request.stdin else None,
            pumps=self._pumps,
            groups=self._groups,
            leftovers=self._leftovers,
            uid=identity.uid,
            stallWatch=self._stallWatch,
        )
        job.onStop = self._saveStop
        job.whenCleanedUp().addCallback(lambda _: self.release(identity))
        env = record.env
        cgroup = None
        command = [request.command, *request.args]
        sandbox = self._sandbox if self._identities.sandboxed(identity) else None
        try:
            if sandbox is not None:
                self._runnable.check(
                    request.command,
                    env,
                    request.cwd,
                    identity,
                    sandbox.startFolder(identity),
                    sandbox.folders,
                )
            else:
                self._runnable.check(request.command, env, request.cwd)
            # Every job starts behind the gate: nothing of the user's runs
            # before it is in its cgroup and the store has its record
            # (JobProcess.recorded opens the gate).
            spawnEnv = env
            if sandbox is not None:
                argv, job.gateLine = sandbox.gatedStart(
                    identity, command, request.cwd, env
                )
                job.commandDepth = sandbox.commandDepth(identity)
                # The sandbox enters the working directory as the job, and
                # the root stages never see the request's environment.
                path = None
                spawnEnv = self._rootEnvironment
            else:
                argv = [
                    POSIX_SHELL,
                    "-c",
                    self._gates["PWD" in request.env],
                    "jobworker-gate",
                    SETSID,
                    *self._prefix,
                ]
                argv += command
                # Never the server's own working directory (a checkout, say):
                # the job's home, else the root folder.
                path = request.cwd or _homeOrRoot(env)
            if self._cgroups is not None:
                # Noted first: a server killed before the store has the
                # job's record leaves a cgroup no record names (recover).
                made = self._madeCgroups
                made.note(jobId)
                job.whenCleanedUp().addCallback(lambda _: made.done(jobId))
                # Its folder is its group's only if that group is its own
                # (a shared one would let other accounts' jobs read it).
                group = ownGroup(identity) or 0
                cgroup = job.cgroup = self._cgroups.create(jobId, limits, group)
            protocol = JobProcessProtocol(job)
            spawner = self._spawnerOf(sandbox)
            if spawner is not None:
                # The child joins the cgroup itself, before its gate: the
                # server's thread does not wait out the migration. Without
                # a cgroup, its group says what is left of it once it has
                # ended: the spawner keeps no zombie leader in it.
                join = cgroup.openProcs() if cgroup is not None else []
                try:
                    spawned = spawner.spawnProcess(
                        protocol,
                        argv,
                        stdin=request.stdin,
                        join=join,
                        reaped=cgroup is None,
                    )
                finally:
                    for fd in join:
                        os.close(fd)
                # Crash recovery finds the job's session by its leader, and
                # needs the leader's start time never to hit a reused pid.
                record.proc_start = spawned.startTicks
                transport: IProcessTransport = spawned
            else:
                if sandbox is not None and sandbox.launcher is not None:
                    self._launcherReady()  # (one lstat)
                before = bootTicks()
                transport = self._reactor.spawnProcess(
                    protocol,
                    argv[0],
                    argv,
                    env=spawnEnv,
                    path=path,
                    childFDs={0: "w", 1: "r", 2: "r", 3: "w"},
                )
                if record.pid is not None:
                    record.proc_start = spawnedAt(record.pid, before, bootTicks())
            if cgroup is not None and spawner is None and transport.pid is not None:
                # (No pid: it ended already, behind the gate.)
                try:
                    cgroup.addProcess(transport.pid)
                except CgroupError as e:
                    job.abort(f"cannot start: {e}")
        except SpawnRefused as e:
            job.failedToStart(str(e))
        except CgroupSetupError as e:
            # The server's own cgroup set-up, not the job: its path is the
            # log's, never the user's.
            self.log.error("job {job} not started: {error}", job=jobId, error=str(e))
            job.withdraw()
            refused = CannotStartNow(
                "the server cannot start a job now (its job cgroups cannot be "
                "made); try again shortly"
            )
            self._troubleStarting(refused)
            raise refused from None
        except (CgroupError, OSError) as e:
            if not serverShort(e) and sandbox is not None:
                # Its launcher gone in the meantime is the server's reason.
                why = self._launcherTrouble()
                if why is not None:
                    assert self._launcher is not None
                    e = LauncherGone(why, self._launcher.building)
            if serverShort(e):
                job.withdraw()
                refused = cannotStartNow(e)
                if not isinstance(e, (SpawnerGone, LauncherGone)):
                    # (Those say so while they last: the spawner's silence,
                    # the launcher being built again.)
                    self._troubleStarting(refused)
                raise refused from None
            job.failedToStart(spawnError(e))
        else:
            self._startTrouble = None
        return job

    def _troubleStarting(self, refused: CannotStartNow) -> None:
        """A start was refused for the server's own reason (L{health})."""
        self._startTrouble = (self._reactor.seconds(), refused.message)

    @staticmethod
    def _recoveredEnd(
        record: JobRecord,
    ) -> tuple[JobStatus, int | None, str | None]:
        """
        How a job found RUNNING after a crash ends: its status, exit code
        and signal. A stop asked (stored at once) ends as a stop, however it
        ended; a main process whose end was stored (L{JobProcess.mainExited})
        ends the job as it would have; else it FAILED, no status known.
        """
        exitCode, signal = record.exit_code, record.signal
        if record.stopped_by is not None:
            return JobStatus.STOPPED, exitCode, signal
        if exitCode is None and signal is None:
            return JobStatus.FAILED, None, None
        ok = exitCode == 0 and record.error is None
        return (JobStatus.COMPLETED if ok else JobStatus.FAILED), exitCode, signal

    def recover(self, records: list[JobRecord], reason: str) -> list[JobProcess]:
        """
        Jobs that were running when the server died: kill what is left of
        their sessions and cgroups, and close their records: STOPPED for
        a stop the store has, COMPLETED or FAILED by a stored exit of the
        main process, else FAILED (C{reason}). A local job cannot be
        re-attached: its pipes died with the server, so none is returned.
        Jobs that had ended, but not their leftovers (L{LeftoverJournal}),
        have those killed too, and so do
        the cgroups of jobs with neither (L{MadeCgroups}: the server died
        before the store had the record).
        """
        noted = self._leftovers.read()
        sessions = sessionMembers() if records or noted else {}
        others: set[str] = set()
        ours = ancestors()
        for record in records:
            error: str | None = reason
            owner = liveServerOfLeader(
                record.pid, record.boot_id, record.proc_start, ours
            )
            if owner is not None:
                # A copy of a live server's state dir: that server's job.
                self.copyOf = owner
                others.add(record.id)
                killed = 0
                error = (
                    f"{reason}: not this server's, another live jobworker "
                    f"(pid {owner}) runs it; left alone (a copy of its state dir?)"
                )
                self.log.warn(
                    "job {job} is run by another live jobworker (pid {owner}): "
                    "this state dir holds a copy of its records (a backup, or "
                    "a copy of a live state dir); its processes and cgroup "
                    "are left alone",
                    job=record.id,
                    owner=owner,
                )
            else:
                killed = self._killLeftovers(
                    record.id,
                    record.pid,
                    record.boot_id,
                    record.proc_start,
                    sessions,
                    runAsUid(record.run_as),
                )
                killed += self._killOutOfRange(record.run_as)
            for stream in ("stdout", "stderr"):
                try:
                    # What its log serves (a folder there counted 4096:
                    # fault round 36).
                    size = outputSize(self.outputPath(record.id, stream))
                except OSError:
                    size = 0
                setattr(record, f"{stream}_bytes", size)
            status, exitCode, signal = self._recoveredEnd(record)
            if (
                exitCode is None
                and signal is None
                and status is JobStatus.FAILED
                and record.error is not None
                and owner is None
            ):
                # Its timeout had fired (stored then: the only error a
                # running job's record holds): that is why it failed.
                error = f"{record.error} ({reason} in its stop grace)"
            if exitCode is not None or signal is not None:
                # Its main process had ended (stored then), what it left
                # held the pipes: that end is its own (fault round 28).
                # (Why it failed, stored with that end where the exit does
                # not say: a timeout, its memory limit: fault round 28b.)
                error = None
                if status is JobStatus.FAILED:
                    error = record.error or (
                        f"killed by signal {signal}"
                        if signal is not None
                        else f"exited with code {exitCode}"
                    )
            record.finish(
                status,
                self._reactor.seconds(),
                exit_code=exitCode,
                signal=signal,
                error=error,
            )
            self.log.warn(
                "job {job} was running when the worker stopped: marked {status}, "
                "{killed} leftover process(es) killed",
                job=record.id,
                status=status.value,
                killed=killed,
            )
        for job in noted:
            killed = self._killLeftovers(
                job.jobId, job.pid, job.bootId, job.procStart, sessions, job.uid
            )
            self.log.warn(
                "job {job} had ended, but not its leftovers, when the worker "
                "stopped: {killed} leftover process(es) killed",
                job=job.jobId,
                killed=killed,
            )
        self._leftovers.clear()
        handled = {r.id for r in records} | {j.jobId for j in noted}
        self._removeUnrecorded(handled - others, others, ours)
        return []

    def _removeUnrecorded(
        self, handled: set[str], others: set[str], ours: set[int]
    ) -> None:
        """
        The cgroups the last run made and did not remove, of jobs that
        recovery did not see to above (C{handled}): the server died before
        the store had their record. Killed (nothing should be in them: the
        job waits behind its gate until it is recorded) and removed; not
        the cgroups of another live server's jobs (C{others}, or one whose
        processes have a live jobworker parent: a copy of its journal).
        """
        left = []
        for jobId in self._madeCgroups.read():
            if self._cgroups is None:
                # Started without cgroups this time: a later start with
                # them kills what is in it and removes it (it was
                # forgotten, and a process that left the job's session
                # ran on for good: fault round 31).
                left.append(jobId)
                continue
            group = self._cgroups.find(jobId)
            if group is None:
                continue
            if jobId in others:
                continue
            owner = liveServerOf(group.members(), ours)
            if owner is not None:
                self.log.warn(
                    "the cgroup of job {job} holds processes of another live "
                    "jobworker (pid {owner}): left alone (a copy of its state "
                    "dir?)",
                    job=jobId,
                    owner=owner,
                )
                continue
            if jobId in handled:
                # Recovery ends it; should its cgroup outlive this run, the
                # next start-up still knows it.
                left.append(jobId)
                continue
            killed = group.kill()
            if removeSoon(group):
                self.log.warn(
                    "job {job} had a cgroup left by an earlier run (its record "
                    "never stored, or closed by a start without cgroups): "
                    "removed{killed}",
                    job=jobId,
                    killed=", the processes in it killed" if killed else "",
                )
            else:
                self.log.warn("cgroup of job {job} not removed", job=jobId)
                left.append(jobId)
        self._madeCgroups.clear()
        for jobId in left:  # tried again at the next start-up
            self._madeCgroups.note(jobId)

    def _killOutOfRange(self, runAs: str | None) -> int:
        """
        The processes of a crashed job's dynamic uid that this server no
        longer hands out (restarted with another --dynamic-uids, or none),
        killed unless a live server holds the uid: one that left the job's
        session (setsid) without a cgroup ran on for good, since start-up
        reclaims only the range in force. How many were signalled.
        """
        uid = dynamicUid(runAs)
        pool = self._identities.pool
        if uid is None or (pool is not None and uid in pool.uids):
            return 0  # (in range: reclaimed at start-up)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            pass
        else:
            return 0  # an account now (the range moved away from it): not ours
        pids = processesOf(uid)
        if not pids:
            return 0
        lockDir = pool.lockDir if pool is not None else LOCK_DIR
        try:
            holder = DynamicUids(uid, uid, lockDir)
            if not holder.reclaim({uid: pids}, killAll):
                return 0  # a live server's job
        except OSError as e:
            self.log.warn("dynamic uid {uid} not reclaimed: {error}", uid=uid, error=e)
            return 0
        for _ in range(100):  # the uid held until they are gone
            if not processesOf(uid):
                break
            time.sleep(0.01)
        holder.release(uid)
        return len(pids)

    def _killLeftovers(
        self,
        jobId: str,
        pid: int | None,
        bootId: str | None,
        procStart: int | None,
        sessions: dict[int, list[int]],
        uid: int | None,
    ) -> int:
        """
        Kill what is left of a job's session and cgroup; how many were. Of
        a session whose leader is gone, only what runs as the job's C{uid}
        (L{leftovers}).
        """
        group = self._cgroups.find(jobId) if self._cgroups else None
        if group is None or (pid is not None and processStartTime(pid) is not None):
            killed = killAll(leftovers(pid, bootId, procStart, sessions, uid))
        else:
            # Its leader gone: its cgroup holds all that is its own; the
            # session's number may be another's (L{leftovers}).
            killed = 0
        if group is not None:
            killed += int(group.kill())
            if not removeSoon(group):
                self.log.warn(
                    "cgroup of job {job} not removed: tried again every {every}s",
                    job=jobId,
                    every=REMOVE_AGAIN_AFTER,
                )
                self._reactor.callLater(
                    REMOVE_AGAIN_AFTER, self._removeLater, jobId, group
                )
        return killed

    def _removeLater(self, jobId: str, group: JobCgroup) -> None:
        """
        A crashed job's cgroup recovery could not remove (a process of it
        held in the kernel, as in a frozen file system): killed and removed
        once it can be, and forgotten then (it stayed, and its journal
        line, for the server's life: fault round 36).
        """
        group.kill()
        if not group.remove():
            self._reactor.callLater(REMOVE_AGAIN_AFTER, self._removeLater, jobId, group)
            return
        self._madeCgroups.done(jobId)
        self.log.info("cgroup of job {job} removed at last", job=jobId)

    def shutdown(self, jobs: list[Any]) -> Deferred[None]:
        """
        Stop every running job and wait until each is cleaned up. A spawner
        that has not reported the end of a job L{SPAWNER_DEADLINE} seconds
        after that job's SIGKILL (it is stopped, or stuck) is killed, and
        its jobs end as killed (as when it dies): it holds the shutdown no
        longer.
        """
        waits: list[Deferred[None]] = []
        pending: set[str] = set()
        #: Fires once every job is cleaned up, or the shutdown waited long
        #: enough (L{SHUTDOWN_GIVES_UP_AFTER}).
        finished: Deferred[None] = Deferred()
        timers: list[IDelayedCall] = []

        def finish(_: object = None) -> None:
            if not finished.called:
                finished.callback(None)

        for job in jobs:
            job.stopForShutdown()
            wait = job.whenCleanedUp()
            jobId = job.record.id
            pending.add(jobId)
            wait.addBoth(_discarding(pending, jobId))
            waits.append(wait)
        if pending:
            timers.append(
                self._reactor.callLater(
                    self._grace + SPAWNER_DEADLINE, self._overdue, pending
                )
            )
            timers.append(
                self._reactor.callLater(
                    self._grace + SPAWNER_DEADLINE + SHUTDOWN_GIVES_UP_AFTER,
                    self._abandon,
                    pending,
                    finish,
                )
            )

        def done(_: object) -> Deferred[None] | None:
            # The last jobs' uids: their leftovers are killed once now (they
            # may have ended in this very turn). Uids still waiting for
            # leftovers: this server lets them go (their locks end with
            # it; the next start-up reclaims them).
            self._stopSweeping()
            if self._releasing:
                self._sweep()
                self._stopSweeping()
            self._releasing.clear()
            if self._identities.pool is not None:
                self._identities.pool.stopVerifying()
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if self._spawner is not None:
                return self._spawner.stop().addTimeout(
                    SPAWNER_DEADLINE, self._reactor, onTimeoutCancel=self._unended
                )
            return None

        DeferredList(waits).addCallback(finish)
        return finished.addCallback(done)

    def _abandon(self, pending: set[str], finish: Callable[[], None]) -> None:
        """
        The shutdown has waited L{SHUTDOWN_GIVES_UP_AFTER} seconds more for
        C{pending}'s processes, which no KILL ended (in D state: a process
        under an I/O limit of 1 B/s held the shutdown for ever, until the
        service manager killed the server: fault round 28b): it goes on
        without them. Their records and uids are as a crash leaves them,
        and the next start kills what is left (its journals say what).
        """
        if not pending:
            return
        self.log.error(
            "shutdown: job(s) {jobs} still have processes {seconds:g}s after "
            "their SIGKILL (in D state?): the server exits without them; its "
            "next start kills what is left",
            jobs=", ".join(sorted(pending)),
            seconds=SPAWNER_DEADLINE + SHUTDOWN_GIVES_UP_AFTER,
        )
        finish()

    def _overdue(self, pending: set[str]) -> None:
        """
        The shutdown's jobs were killed L{SPAWNER_DEADLINE} seconds ago and
        the ends of C{pending} are not in: a spawner that still has
        children it did not report is wedged, and killed.
        """
        spawner = self._spawner
        generation = spawner.current if spawner is not None else None
        unreported = spawner.wedged() if spawner is not None else 0
        if unreported:
            self.log.error(
                "shutdown: the job spawner (pid {pid}) has not reported the end "
                "of {count} job(s) {seconds:g}s after their SIGKILL (stopped, or "
                "stuck): it is killed, and its jobs end as killed (their exit "
                "status is lost)",
                pid=generation.pid if generation is not None else None,
                count=unreported,
                seconds=SPAWNER_DEADLINE,
            )
        else:
            self.log.warn(
                "shutdown: still waiting for job(s) {jobs}: process(es) left "
                "in their cgroups or groups after SIGKILL",
                jobs=", ".join(sorted(pending)),
            )

    def _unended(self, result: object, timeout: float) -> None:
        """The spawner did not exit after its socket was closed: go on."""
        self.log.error(
            "shutdown: the job spawner did not exit within {timeout:g}s; "
            "the server exits without it",
            timeout=timeout,
        )


def _discarding(pending: set[str], jobId: str) -> Callable[[object], object]:
    """A callback that takes C{jobId} out of C{pending}, passing on its result."""

    def discard(result: object) -> object:
        pending.discard(jobId)
        return result

    return discard


def localJobManager(
    reactor: JobReactor,
    stateDir: str,
    grace: float,
    signalGroupOf: Callable[[int, int], bool] = signalGroup,
    store: JobStore | None = None,
    maxLogBytes: int = DEFAULT_MAX_LOG_BYTES,
    cgroups: Cgroups | None = None,
    policy: JobPolicy | None = None,
    metrics: Metrics | None = None,
    outputRemoval: AsideRemoval | None = None,
) -> JobManager:
    """A L{JobManager} over a L{LocalExecutor} in C{stateDir}/jobs."""
    executor = LocalExecutor(
        reactor,
        os.path.join(stateDir, "jobs"),
        grace,
        signalGroupOf,
        maxLogBytes,
        cgroups,
        policy,
    )
    return JobManager(
        reactor, stateDir, executor, store, policy, metrics, outputRemoval=outputRemoval
    )


def _homeOrRoot(env: dict[str, str]) -> str:
    """The default working directory of a job that is not sandboxed."""
    home = env.get("HOME", "")
    return home if home.startswith("/") and os.path.isdir(home) else "/"
