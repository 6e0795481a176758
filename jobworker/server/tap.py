"""The twistd plugin's body: options and the service tree of C{twistd jobworker}."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from .. import __version__
from ..auth.audit import AuditLog
from ..auth.authenticator import Authenticator, VerifiedCredentials, makePortal
from ..auth.permissions import mayStartQueued
from ..auth.throttle import LoginThrottle
from ..auth.tokens import TokenSigner, loadOrCreateKey
from ..auth.users import UserDatabase, UsersFileError
from ..executors.local.cgroups import Cgroups, readAhead
from ..executors.local.cgroups import detect as detectCgroups
from ..executors.local.executor import LocalExecutor
from ..executors.local.pump import Pumps
from ..executors.local.sandbox import jobOomScore
from ..executors.slurm.executor import SlurmExecutor
from ..jobs.executor import OwnerCheck
from ..jobs.identity import (
    Identities,
    Identity,
)
from ..jobs.limits import WINDOWS_PER_SECOND, Limits, ioRateFloor
from ..jobs.manager import JobManager, giveUpReserve
from ..jobs.placement import SlurmAllowances
from ..jobs.policy import JobPolicy, JobReactor
from ..jobs.removal import AsideRemoval
from ..jobs.store import JobStore, StoreError, roomForAFile
from ..metrics import Metrics
from . import descriptors, identitysetup, tlssetup
from .api import JobsAPI
from .connections import ConnectionsPerClient
from .deadlines import channelWithDeadlines, connectionsPerUser
from .identitysetup import probeSandbox
from .logoutput import unblockStandardOutput
from .options import (
    Options,
)
from .reloads import Reloads
from .requests import boundedRequestClass
from .services import (
    ListeningService,
    ManagerService,
    QuietSite,
    RetentionService,
    UsersReloadService,
    holdHangUps,
    quietUsr1,
)
from .startup import USERS_FILE, StartupError, fatal, secretFile
from .threads import daemonRunner, threadRunner
from .tlssetup import isLoopback, where
from .tlswrites import LargeWritesTLSFactory

log = Logger(namespace="jobworker.server.tap")


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    Build the server: job manager, API, TLS listener.

    Every start-up problem (unreadable files, bad users file, port in use)
    ends the process with one line on stderr.
    """
    underTwistd = reactor is None
    if reactor is None:
        reactor = _globalReactor
        holdHangUps()
        # (After twistd's logging has started, which handles SIGUSR1 when
        # it writes a file.)
        reactor.callWhenRunning(quietUsr1, reactor)
    # (Which build runs: every start read the same, operator round 41.)
    log.info("jobworker {version} starting", version=__version__)
    try:
        service = _build(config, reactor)
    except StartupError as e:
        # The one place a start-up problem is reported: one line on
        # stderr, exit status 1, no traceback.
        print(f"jobworker: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if underTwistd:
        # Where twistd -n sends the log (it starts after this returns):
        # written by a thread, never waited for (fault round 30).
        unblockStandardOutput(reactor)
    return service


def _build(config: Options, reactor: JobReactor) -> MultiService:
    """
    The composition root: the state dir and its store's lock, then each
    part made by one builder, in order.
    """
    jobDescriptors = _raiseDescriptors()
    # Whoever started the server's: twistd sets its own to 077 later, as it
    # daemonizes (without -n), and jobs would inherit that.
    startersUmask = os.umask(0o077)
    os.umask(startersUmask)
    _stateDir(config["state-dir"])
    store = _store(config["state-dir"])
    try:
        return _parts(config, reactor, store, jobDescriptors, startersUmask)
    except BaseException:
        # The lock goes with the failed start (in a test's process, the
        # next server there would find it held).
        store.close()
        raise


def _parts(
    config: Options,
    reactor: JobReactor,
    store: JobStore,
    jobDescriptors: int | None,
    startersUmask: int,
) -> MultiService:
    """
    Every part of the server but the store, and the service tree; jobs
    start with C{startersUmask}.
    """
    reloads = Reloads()
    tlsOptions = tlssetup.tlsOptions(config, reloads)
    users = _users(config)
    slurm = config["executor"] == "slurm"
    cgroups = _cgroups(config, slurm)
    identities = identitysetup.identities(config, slurm)
    policy = _policy(config, identities, cgroups)
    metrics = Metrics()
    metrics.registry.register(reloads)
    threadPool = reactor.getThreadPool()  # type: ignore[attr-defined]

    runInThread = threadRunner(reactor, threadPool)

    audit = _audit(config, reactor)
    audit.failed = metrics.auditFailures.inc
    authenticator = _authenticator(config, reactor, users, runInThread, metrics, audit)
    authenticator.onThrottled = metrics.authThrottled.inc
    if config["client-ca"] is not None:
        authenticator.certificateProblem = tlsOptions.certificateProblem
        authenticator.certificateCA = tlsOptions.certificateCA
    if authenticator.tokens is not None:
        authenticator.tokens.trustCAs(tlsOptions.trustedCAs)

    def ownerCheck(
        owner: str, queuedAs: str | None
    ) -> tuple[str | None, Identity | None]:
        user = authenticator.user(owner)
        account = user.account if user is not None else None
        return mayStartQueued(user, owner, queuedAs), account

    manager = _manager(
        config,
        reactor,
        store,
        slurm,
        cgroups,
        policy,
        metrics,
        runInThread,
        descriptorLimit=jobDescriptors,
        oomScore=_jobOomScore(config),
        ownerCheck=ownerCheck,
        umask=startersUmask,
    )
    drain = manager.draining()
    if drain["draining"]:
        # (--drain, or a copy of a live server's state dir: audited as an
        # Admin's is, or the log showed a resume of no drain: session
        # review 41.)
        audit.record("server.drain", None, "server", "started", reason=drain["reason"])
    manager.queuedStarted = lambda record, waited: audit.record(
        "job.start",
        record.owner,
        "server",
        "started",
        job=record.id,
        run_as=record.run_as,
        waited_seconds=round(waited, 3),
    )
    streams = _logStreams(config)
    perUser = config["max-log-streams-per-user"]
    api = JobsAPI(
        manager,
        authenticator,
        reactor,
        metrics,
        audit,
        streams,
        perUser if perUser is None else min(streams, perUser),
        reloads=reloads,
    )
    site = _site(config, api, metrics)
    site.vouches = authenticator.vouches  # type: ignore[attr-defined]
    perUser = config["max-connections-per-user"]
    total = config["max-connections"]
    site.connectionsPerUser = connectionsPerUser(  # type: ignore[attr-defined]
        perUser
        if perUser is not None
        else max(min(total, config["max-connections-per-client"]), total // 4)
    )
    port, alsoLoopback6 = _listen(config, reactor, tlsOptions, site, streams)
    root = MultiService()
    # Services stop in reverse order: the port closes first, then jobs stop.
    root.addService(ManagerService(manager, api.drain, audit.close, reactor))
    if config["retain"] is not None:
        root.addService(
            RetentionService(manager, config["retain"], reactor, audit=audit)
        )
    root.addService(
        UsersReloadService(
            config["users"],
            authenticator,
            reactor,
            daemonRunner(reactor, "jobworker-users-reload"),
            audit.reopen,
            manager.ownersChanged,
            functools.partial(
                _reloadTLS, tlsOptions, authenticator, _tokenKeyPath(config), reloads
            ),
            reloads,
            audit,
        )
    )

    # A client's last minute of throttled or busy refusals, and of refused
    # requests (access.denied), audited once it stopped being refused.
    def reportRefusals() -> None:
        authenticator.reportRefusals()
        audit.reportLeftOut()

    refusals = TimerService(60.0, reportRefusals)
    refusals.clock = reactor
    root.addService(refusals)
    root.addService(ListeningService(port))
    if alsoLoopback6 is not None:
        root.addService(ListeningService(alsoLoopback6))
    return root


def _users(config: Options) -> UserDatabase:
    """The users file, or the development users (only on loopback)."""
    if config["users"] is None:
        if not isLoopback(config["interface"]):
            fatal(
                "the DEVELOPMENT users (their passwords are public) must not "
                f"serve {where(config)}: give --users FILE"
            )
        log.warn(
            "running with the DEVELOPMENT users alice, bob, rita and ada, whose "
            "passwords are public: use --users FILE in production"
        )
        return UserDatabase.development()
    secretFile(config["users"], USERS_FILE)
    try:
        return UserDatabase.fromFile(config["users"])
    except OSError as e:
        fatal(f"cannot read users file {config['users']}: {e.strerror}")
    except (UsersFileError, UnicodeDecodeError) as e:
        fatal(f"bad users file: {e}")
    except Exception as e:
        # Whatever else refuses the file (bcrypt refused a cost the parser
        # let by: a traceback was all the operator got) is one line too.
        fatal(f"cannot load users file {config['users']}: {type(e).__name__}: {e}")


def _cgroups(config: Options, slurm: bool) -> Cgroups | None:
    """Per-job cgroups, if usable here (never with Slurm)."""
    cgroups = None
    if config["cgroups"] == "auto" and not slurm:
        cgroups = detectCgroups()
    if not slurm:
        _defaultsApplied(config, cgroups)
    if slurm:
        log.info("executor: Slurm (sbatch/squeue/scancel)")
    elif cgroups is None:
        log.warn(
            "per-job cgroups are off (not available or --cgroups off): resource "
            "limits are refused and stop kills by process group"
        )
    else:
        log.info(
            "per-job cgroups v{version}: limits {limits}",
            version=cgroups.version,
            limits=", ".join(sorted(cgroups.supported)),
        )
    return cgroups


#: The default limits a local job gets, by the limit each sets.
DEFAULT_LIMITS = {
    "default-memory": "memory_bytes",
    "default-cpu": "cpu_millicores",
    "default-pids": "pids",
}


def _defaultsApplied(config: Options, cgroups: Cgroups | None) -> None:
    """
    Refuse to start with a default limit no job would get: with cgroups
    off, or without the controller, they were taken and not applied (a job
    held 150 MiB under a 64M default, its limits null: operator round 37).
    """
    supported = frozenset() if cgroups is None else cgroups.supported
    unapplied = [
        f"--{option}"
        for option, limit in DEFAULT_LIMITS.items()
        if config[option] is not None and limit not in supported
    ]
    if unapplied:
        why = (
            "per-job cgroups are off (--cgroups off, or none usable here)"
            if cgroups is None
            else f"this machine's cgroups take only {', '.join(sorted(supported))}"
        )
        fatal(f"{', '.join(unapplied)} cannot be applied: {why}")


def _raiseDescriptors() -> int | None:
    """
    The soft descriptor limit as high as the hard one lets (65,536 at most).

    @return: the soft limit jobs get (None: the server's own): the one the
        server was started with, if it raised its own.
    """
    before, after = descriptors.raiseSoftLimit()
    if after == before:
        return None
    log.info(
        "descriptor limit (RLIMIT_NOFILE) raised from {before} to {after}; "
        "jobs keep {before}",
        before=before,
        after=after,
    )
    return before


def _maxRunning(config: Options) -> int | None:
    """
    --max-running, but at most what the jobs' half of the server's
    descriptors holds (local jobs: Slurm's hold none of the server's).
    """
    wanted = config["max-running"]
    if config["executor"] == "slurm":
        return wanted  # type: ignore[no-any-return]
    most = descriptors.jobsCap(wanted)
    if most is not None and (wanted is None or most < wanted):
        log.info(
            "at most {most} jobs run at once: {each} of the server's descriptors "
            "each, in half of its limit ({soft}); more wait in the queue "
            "(raise RLIMIT_NOFILE for more)",
            most=most,
            each=descriptors.PER_JOB,
            soft=descriptors.softLimit(),
        )
    return most


def _policy(
    config: Options, identities: Identities, cgroups: Cgroups | None = None
) -> JobPolicy:
    """The server-wide rules for jobs, from the options."""
    ioMax = config["max-io-bps"]
    ioMin = config["min-io-bps"]
    how = "as given"
    if ioMin is None:
        device = None if cgroups is None else cgroups.ioDevice
        ahead = readAhead(device)
        ioMin = ioRateFloor(ahead)
        how = (
            f"{WINDOWS_PER_SECOND} read-ahead windows of {(ahead or 0) // 1024} "
            f"KiB a second on {device}, 1 MiB/s at least"
        )
        if ioMax is not None and ioMin > ioMax:
            # (Else every disk rate was refused, under the floor or over
            # the maximum, and nothing said why: session review 35.)
            how = f"--max-io-bps, under {ioMin}: {how}"
            ioMin = ioMax
    if cgroups is not None and "io_write_bps" in cgroups.supported:
        if config["allow-io-bps"]:
            log.warn(
                "disk rates allowed (--allow-io-bps), at least {floor} bytes/s "
                "(--min-io-bps: {how}): a job's throttled reads hold pages "
                "every process may need, its throttled writes every sync",
                floor=ioMin,
                how=how,
            )
        else:
            log.info(
                "disk rates (io_read_bps, io_write_bps) not allowed (--allow-io-bps)"
            )
    return JobPolicy(
        defaults=Limits(
            memory_bytes=config["default-memory"],
            cpu_millicores=config["default-cpu"],
            pids=config["default-pids"],
        ),
        maxima=Limits(
            memory_bytes=config["max-memory"],
            cpu_millicores=config["max-cpu"],
            pids=config["max-pids"],
            io_read_bps=ioMax,
            io_write_bps=ioMax,
        ),
        minIoBps=ioMin,
        allowIo=bool(config["allow-io-bps"]),
        defaultTimeout=config["default-timeout"],
        isolate=config["isolate"],
        maxRunning=_maxRunning(config),
        maxRunningPerUser=config["max-running-per-user"],
        createRate=config["create-rate"],
        identities=identities,
        tmpSize=config["tmp-size"],
        maxStdinBytes=config["max-stdin-bytes"],
        maxQueued=config["max-queued"],
        maxQueuedPerUser=config["max-queued-per-user"],
    )


def _ownOomScore() -> int | None:
    """This process's C{oom_score_adj} (None: unknown)."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _jobOomScore(
    config: Options,
    own: int | None = None,
    canSet: Callable[[int], bool] | None = None,
) -> int | None:
    """
    The C{oom_score_adj} local jobs start with (None: the server's own,
    C{own}: read if not given). One below the server's own is tried first,
    in a child (C{canSet}): below the floor a privileged hand set (systemd's
    C{OOMScoreAdjust=}), without C{CAP_SYS_RESOURCE}, it cannot be set, and
    every job would fail to start (exit 125).
    """
    if own is None:
        own = _ownOomScore()
    if config["job-oom-score-adj"] is not None:
        wanted = int(config["job-oom-score-adj"])
        check = canSet or _canSetOomScore
        if own is not None and wanted < own and not check(wanted):
            fatal(
                f"--job-oom-score-adj {wanted} is below the server's own "
                f"oom_score_adj ({own}), and this server may not lower it that "
                "far (no CAP_SYS_RESOURCE): give at least its floor"
            )
        return wanted
    if own is None:
        return None
    score = jobOomScore(own)
    if score is not None:
        log.info(
            "the server's oom_score_adj is {own}: jobs start with {score}",
            own=own,
            score=score,
        )
    return score


def _canSetOomScore(score: int) -> bool:
    """Whether a child of this server may set its oom_score_adj to C{score}."""
    done = subprocess.run(
        ["/bin/sh", "-c", f"echo {score:d} > /proc/self/oom_score_adj"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _manager(
    config: Options,
    reactor: JobReactor,
    store: JobStore,
    slurm: bool,
    cgroups: Cgroups | None,
    policy: JobPolicy,
    metrics: Metrics,
    runInThread: Callable[..., Deferred[Any]] | None = None,
    descriptorLimit: int | None = None,
    oomScore: int | None = None,
    ownerCheck: OwnerCheck | None = None,
    umask: int | None = None,
) -> JobManager:
    """
    The executor and the manager, over C{store} (L{_store}); recovered.
    Jobs start with C{descriptorLimit} as their soft C{RLIMIT_NOFILE} (None:
    the server's); Slurm's through sbatch, which hands them its own. Local
    jobs start with C{oomScore} as their C{oom_score_adj} (None: the
    server's); Slurm's get slurmd's choice. A queued job's owner is
    checked again at its turn by C{ownerCheck} (see L{JobManager}). Local
    jobs start with C{umask}.
    """
    stateDir = config["state-dir"]
    executor: SlurmExecutor | LocalExecutor | None = None
    if slurm:
        executor = _slurmExecutor(config, reactor, policy, descriptorLimit, umask)
    try:
        if executor is None:
            pumps = Pumps(reactor, config["output-threads"])  # type: ignore[arg-type]
            metrics.watchOutputThreads(
                lambda: (pumps.running, pumps.limit, pumps.started)
            )
            local = LocalExecutor(
                reactor,
                os.path.join(stateDir, "jobs"),
                config["stop-grace"],
                maxLogBytes=config["max-log-bytes"],
                cgroups=cgroups,
                policy=policy,
                launcher=identitysetup.chooseLauncher(config, policy.identities),
                runInThread=runInThread,
                pumps=pumps,
                spawner=config["launcher"] == "auto",
                descriptorLimit=descriptorLimit,
                oomScore=oomScore,
                lookUpInThread=daemonRunner(reactor, "jobworker-uid-lookups"),
                umask=umask,
            )
            metrics.watchSpawner(lambda: local.spawnerStarts)
            probeSandbox(local, policy.identities)
            executor = local
        manager = JobManager(
            reactor,
            stateDir,
            executor,
            store=store,
            policy=policy,
            metrics=metrics,
            ownerCheck=ownerCheck,
            outputRemoval=AsideRemoval(reactor),
        )
        # Nothing starts before the service does (L{ManagerService}): the
        # queue is held while the jobs of the last run are recovered.
        manager.holdQueue()
        if config["drain"]:
            manager.drain("jobworker", "the server was started with --drain")
        manager.recover()
        log.info(
            "job store {path}: schema v{version}, {count} jobs",
            path=store.path,
            version=store.version,
            count=store.count(),
        )
    except OSError as e:
        fatal(f"cannot use state dir {stateDir}: {e.strerror}")
    except StoreError as e:
        fatal(f"cannot use state dir {stateDir}: {e}")
    return manager


def _stateDir(stateDir: str) -> None:
    """
    The state dir, made 0700 before anything goes in it (the store's lock
    file is the first: L{_store}); an open one is named in a warning.
    """
    try:
        if not os.path.isdir(stateDir):
            # (Made silently, a mistyped --state-dir started an empty
            # server, every job seemingly gone: operator round 37.)
            log.warn("state dir {path} made: a new, empty one", path=stateDir)
        os.makedirs(stateDir, mode=0o700, exist_ok=True)
        for path in (stateDir, os.path.join(stateDir, "jobs.sqlite3")):
            refuseOthers(path)
        warnIfOpen(stateDir)
    except OSError as e:
        fatal(f"cannot use state dir {stateDir}: {e.strerror}")


def _store(stateDir: str) -> JobStore:
    """
    The job store, its lock held before anything else is written in the
    state dir: a second server there is refused having changed nothing (it
    rewrote the first one's own certificate and key, then was refused: a
    fault round), nor touched its sandbox files or its jobs.
    """
    path = os.path.join(stateDir, "jobs.sqlite3")

    def makeRoom() -> bool:
        # No inode left: SQLite makes its -wal and -shm as it opens the
        # store (every start failed: fault round 28 and its review).
        if not giveUpReserve(stateDir):
            return False
        log.warn(
            "no room for a new file in {folder}: the disk reserve was given up "
            "to open the store; it is made again once there is room",
            folder=stateDir,
        )
        return True

    try:
        store = JobStore(path, makeRoom=makeRoom)
    except OSError as e:
        fatal(f"cannot use state dir {stateDir}: {e.strerror}")
    except StoreError as e:
        hint = ""
        if not roomForAFile(stateDir):
            hint = (
                " (no room for a new file there, no inode left: remove an "
                "ended job's folder under jobs/, or other files, to start)"
            )
        fatal(f"cannot use state dir {stateDir}: {e}{hint}")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        # (SQLite gives its -wal and -shm files the store's mode.)
        log.warn(
            "job store {path} is open to other users (mode {mode}): chmod 600 it",
            path=path,
            mode=f"{mode:04o}",
        )
    return store


def refuseOthers(path: str) -> None:
    """
    Refuse the state dir, or its store, owned by another user than root or
    the server's: whoever owns them decides what the jobs run and as whom
    (a queued job's command and account edited in the store ran as that
    account at the next start, not a word said: operator round 39), as the
    users file and the keys are refused.
    """
    try:
        owner = os.stat(path).st_uid
    except FileNotFoundError:
        return
    if owner not in (0, os.geteuid()):
        fatal(
            f"{ascii(path)[1:-1]} is owned by uid {owner}, who could change what "
            "jobs run and as whom: give it to root or to the server's user "
            "(chown -R)"
        )


def warnIfOpen(stateDir: str) -> bool:
    """
    Say so at start if other users may enter the state dir (an older
    jobworker made it 0755 on a first start; the README says 0700). Its
    files keep their own modes; nothing is changed here.
    """
    mode = os.stat(stateDir).st_mode & 0o777
    if not mode & 0o077:
        return False
    log.warn(
        "state dir {path} is open to other users (mode {mode}): chmod 700 it",
        path=stateDir,
        mode=f"{mode:04o}",
    )
    return True


def _slurmExecutor(
    config: Options,
    reactor: JobReactor,
    policy: JobPolicy,
    descriptorLimit: int | None = None,
    umask: int | None = None,
) -> SlurmExecutor:
    if shutil.which("sbatch") is None:
        fatal("--executor slurm: sbatch is not on PATH (install Slurm's clients)")
    try:
        executor = SlurmExecutor(
            reactor,
            os.path.abspath(config["slurm-output-dir"]),
            config["stop-grace"],
            policy,
            config["slurm-partition"],
            config["slurm-account"],
            config["slurm-poll"],
            sharedAccount=config["slurm-shared-account"],
            allowances=SlurmAllowances(
                partition=frozenset(config["slurm-allow-partitions"].split()),
                account=frozenset(config["slurm-allow-accounts"].split()),
                qos=frozenset(config["slurm-allow-qos"].split()),
                gres=frozenset(config["slurm-allow-gres"].split()),
                constraint=frozenset(config["slurm-allow-constraints"].split()),
                nodes=config["slurm-max-nodes"],
                ntasks=config["slurm-max-ntasks"],
                exclusive=bool(config["slurm-allow-exclusive"]),
            ),
            descriptorLimit=descriptorLimit,
            umask=umask,
        )
    except OSError as e:
        fatal(f"cannot use --slurm-output-dir: {e.strerror}")
    if not config["slurm-no-probe"]:
        # In the background: the server answers meanwhile; a folder the
        # nodes do not share makes it report itself degraded.
        executor.probe().addErrback(
            lambda failure: log.failure("the --slurm-output-dir probe", failure)
        )
    return executor


def _audit(config: Options, reactor: JobReactor) -> AuditLog:
    path = config["audit-log"] or os.path.join(config["state-dir"], "audit.log")
    try:
        return AuditLog(path, reactor)
    except OSError as e:
        fatal(f"cannot open the audit log: {e.strerror}")


def _authenticator(
    config: Options,
    reactor: JobReactor,
    users: UserDatabase,
    runInThread: Callable[..., Deferred[Any]],
    metrics: Metrics,
    audit: AuditLog,
) -> Authenticator:
    """Basic (bcrypt in threads), tokens (signed with the key), certificates."""
    keyPath = _tokenKeyPath(config)
    # (Its owner, not its mode alone: whoever may write it mints any user's
    # tokens: operator round 39.)
    secretFile(keyPath, "the token key")
    try:
        tokenKey = loadOrCreateKey(keyPath)
    except OSError as e:
        fatal(f"cannot use the token key {keyPath}: {e.strerror}")
    except ValueError as e:
        fatal(f"cannot use the token key: {e}")
    portal = makePortal(users, runInThread, VerifiedCredentials(reactor))
    return Authenticator(
        portal,
        metrics.authFailures.inc,
        LoginThrottle(reactor, threshold=config["login-failures"]),
        audit,
        tokens=TokenSigner(tokenKey, reactor, config["token-ttl"]),
        certificates=config["client-ca"] is not None,
        maxChecks=config["max-password-checks"],
    )


def _tokenKeyPath(config: Options) -> str:
    return str(config["token-key"] or os.path.join(config["state-dir"], "token.key"))


def _reloadTLS(
    served: tlssetup.ServedTLS,
    authenticator: Authenticator,
    keyPath: str | None = None,
    reloads: Reloads | None = None,
) -> None:
    """SIGHUP: the TLS files and the token key read again, and the long
    responses a client certificate or a token let in checked against them
    (a client CA removed, a key replaced)."""
    served.reload()
    if keyPath is not None and authenticator.tokens is not None:
        _reloadTokenKey(keyPath, authenticator.tokens, reloads or Reloads())
    authenticator.recheck()


def _reloadTokenKey(path: str, signer: TokenSigner, reloads: Reloads) -> None:
    """
    The token key read again, checked as at a start (made anew if it was
    removed); one refused keeps the key in force, and says so.
    """
    try:
        secretFile(path, "the token key")  # (StartupError: refused)
        key = loadOrCreateKey(path)
    except (OSError, ValueError, StartupError) as e:
        error = getattr(e, "strerror", None) or str(e)
        log.error(
            "SIGHUP: the token key {path} was not reloaded, the one before is "
            "in force: {error}",
            path=path,
            error=error,
        )
        reloads.failed("token_key", error)
        return
    if signer.replaceKey(key):
        log.warn(
            "SIGHUP: token key {path} replaced: every token signed with the one "
            "before is refused",
            path=path,
        )
    reloads.succeeded("token_key")


def _site(config: Options, api: JobsAPI, metrics: Metrics) -> Site:
    """The HTTP site: body cap, read deadlines, no tracebacks."""
    siteClass = Site if config["access-log"] == "on" else QuietSite
    site = siteClass(api.resource(), timeout=config["idle-timeout"])  # type: ignore[no-untyped-call]
    site.metrics = metrics  # type: ignore[attr-defined]
    site.requestFactory = boundedRequestClass(config["max-body-bytes"])
    site.protocol = channelWithDeadlines(  # type: ignore[method-assign, assignment]
        config["header-timeout"], config["body-timeout"], config["max-header-bytes"]
    )
    site.displayTracebacks = False
    return site


def _logStreams(config: Options) -> int:
    """
    C{--max-log-streams}, lowered to what the connections' half of the
    descriptor limit holds: a stream holds up to three files besides its
    connection (L{descriptors.logStreamsCap}).
    """
    wanted = config["max-log-streams"]
    total = descriptors.logStreamsCap(wanted)
    if total < wanted:
        log.warn(
            "--max-log-streams {wanted} is more than the descriptor limit holds "
            "(each stream {each} descriptors, in half the limit less {reserved}): "
            "at most {total} log streams (raise RLIMIT_NOFILE for more)",
            wanted=wanted,
            each=1 + descriptors.PER_STREAM,
            reserved=descriptors.RESERVED,
            total=total,
        )
    return total


#: The IPv4 interfaces that serve 127.0.0.1: the server listens on the same
#: port on ::1 too (L{_listenOnLoopback6}).
LOOPBACK4_SERVED = ("127.0.0.1", "0.0.0.0")  # noqa: S104 (a name to compare with)


def _listen(
    config: Options, reactor: JobReactor, tlsOptions: Any, site: Site, streams: int
) -> tuple[IListeningPort, IListeningPort | None]:
    """
    Bind now, so a port in use is a start-up error; on ::1 too, with the
    same port, when 127.0.0.1 is served (L{_listenOnLoopback6}).
    """
    # The connection cap sits outside TLS: a refused client costs no handshake.
    endpoint = TCP4ServerEndpoint(
        reactor, config["port"], interface=config["interface"]
    )
    total = descriptors.connectionCap(config["max-connections"], streams=streams)
    if total < config["max-connections"]:
        log.warn(
            "--max-connections {wanted} is more than half the descriptor limit "
            "holds (less {reserved} kept for the server's own files and "
            "{files} for the files of {streams} log streams): at most {total} "
            "connections (raise RLIMIT_NOFILE for more)",
            reserved=descriptors.RESERVED,
            files=descriptors.PER_STREAM * streams,
            streams=streams,
            wanted=config["max-connections"],
            total=total,
        )
    factory = ConnectionsPerClient(
        LargeWritesTLSFactory(tlsOptions, False, site),
        config["max-connections-per-client"],
        config["keepalive"],
        total=total,
        metrics=site.metrics,  # type: ignore[attr-defined]
        clock=reactor,
    )
    port, error = _bound(endpoint, factory)
    if port is None:
        if isinstance(error, CannotListenError):
            fatal(
                f"cannot listen on {config['interface']}:{config['port']}: "
                f"{_reason(error)}"
            )
        fatal(f"cannot listen: {error}")
    if config["interface"] not in LOOPBACK4_SERVED:
        return port, None
    return port, _listenOnLoopback6(reactor, port.getHost().port, factory)  # type: ignore[attr-defined]


def _bound(
    endpoint: Any, factory: Any
) -> tuple[IListeningPort | None, Exception | None]:
    """C{endpoint} listening (a TCP endpoint answers at once), or why not."""
    failures: list[Exception] = []
    ports: list[IListeningPort] = []
    endpoint.listen(factory).addCallbacks(
        ports.append, lambda f: failures.append(f.value)
    )
    return (ports[0] if ports else None), (failures[0] if failures else None)


def _listenOnLoopback6(
    reactor: JobReactor, port: int, factory: Any
) -> IListeningPort | None:
    """
    Listen on [::1]:C{port} too, with the same connection caps: a server on
    127.0.0.1 alone left that address free, and any local process (another
    user's job) could listen there and be the one reached by a client whose
    C{localhost} is ::1 first (Debian's and Fedora's hosts files, RFC 6724),
    with its passwords (attacker round 11). No IPv6 here: nobody else can
    have it either. Taken already: said (a client reaching localhost
    through ::1 reaches that process), and the server starts all the same.
    """
    listening, error = _bound(
        TCP6ServerEndpoint(reactor, port, interface="::1"), factory
    )
    if listening is not None:
        return listening
    why = _reason(error) if isinstance(error, CannotListenError) else str(error)
    socketError = getattr(error, "socketError", None)
    if getattr(socketError, "errno", None) == errno.EADDRINUSE:
        log.error(
            "cannot listen on [::1]:{port} beside 127.0.0.1: {why}: another "
            "process holds it, and clients whose localhost is ::1 reach that "
            "process, not this server (find it: ss -ltnp 'sport = :{port}')",
            port=port,
            why=why,
        )
    else:
        log.info(
            "not listening on [::1]:{port} (no IPv6 loopback here: {why})",
            port=port,
            why=why,
        )
    return None


def _reason(error: CannotListenError) -> str:
    socketError = error.socketError
    if isinstance(socketError, OSError) and socketError.strerror:
        return socketError.strerror
    return str(socketError)
