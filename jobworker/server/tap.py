"""The twistd plugin's body: options and the service tree of C{twistd jobworker}."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.server import Site

from ..auth.audit import AuditLog
from ..auth.authenticator import Authenticator, VerifiedCredentials, makePortal
from ..auth.throttle import LoginThrottle
from ..auth.tokens import TokenSigner, loadOrCreateKey
from ..auth.users import UserDatabase, UsersFileError
from ..executors.local.cgroups import Limits
from ..executors.local.cgroups import detect as detectCgroups
from ..executors.local.executor import DEFAULT_TMP_SIZE, LocalExecutor
from ..executors.local.sandbox import SandboxError
from ..executors.slurm.executor import SlurmExecutor
from ..jobs.identity import (
    DYNAMIC_UIDS,
    DynamicUids,
    Identities,
    Identity,
    IdentityError,
    parseRange,
    rangeClashes,
)
from ..jobs.manager import (
    DEFAULT_MAX_LOG_BYTES,
    ISOLATION,
    JobManager,
    JobPolicy,
    JobReactor,
)
from ..jobs.recovery import killAll, processesOf
from ..jobs.store import JobStore, StoreError
from ..metrics import Metrics
from ..tls import TLSConfigError, isDevelopmentCertificate, serverOptions
from .api import JobsAPI, boundedRequestClass
from .connections import ConnectionsPerClient
from .deadlines import channelWithDeadlines

log = Logger(namespace="jobworker.server.tap")

#: The bundled development certificate, relative to the working directory.
DEV_CERT = os.path.join("certs", "server.pem")
DEV_KEY = os.path.join("certs", "server.key")


def defaultStateDir() -> str:
    """C{$XDG_STATE_HOME/jobworker}, else C{~/.local/state/jobworker}."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "jobworker")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parseSize(text: str) -> int:
    """C{"1G"}, C{"512M"}, C{"65536"} -> bytes (binary units)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (e.g. 1G, 512M, 65536)")
    return int(number) * _SIZE_UNITS[unit]


def parseDuration(text: str) -> float:
    """C{"7d"}, C{"12h"}, C{"30m"}, C{"45s"} or plain seconds -> seconds."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _TIME_UNITS else "s"
    number = value[:-1] if value[-1:] in _TIME_UNITS else value
    try:
        seconds = float(number) * _TIME_UNITS[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m)") from None
    if not seconds > 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


class Options(usage.Options):
    """C{twistd jobworker} options."""

    synopsis = "[--tls] [options]"
    longdesc = (
        "Serve the jobworker REST API over HTTPS (TLS 1.3 only). "
        "Example: twistd -n jobworker --tls --port 8443 --users users.txt"
    )
    optFlags = [
        [
            "tls",
            None,
            "Serve HTTPS with TLS 1.3 (required: there is no plaintext mode).",
        ],
        [
            "require-client-cert",
            None,
            "Refuse, in the TLS handshake, clients without a certificate "
            "signed by --client-ca.",
        ],
        [
            "allow-root-jobs",
            None,
            "Run the jobs of users without a mapped account as root (the "
            "server's user). Dangerous: any Developer then owns the machine.",
        ],
        [
            "slurm-shared-account",
            None,
            "With --executor slurm: run the jobs of users without a mapped Unix "
            "account as the service account (this server's user), one identity "
            "they all share (default: such users' jobs are refused, 403).",
        ],
    ]
    optParameters = [
        ["port", "p", 8443, "TCP port to listen on (0 picks a free one).", int],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["cert", None, DEV_CERT, "PEM certificate (chain) of the server."],
        ["key", None, DEV_KEY, "PEM private key of the server."],
        ["users", None, None, "Users file (name:role:bcrypt-hash per line)."],
        [
            "state-dir",
            None,
            None,
            "Where job output is kept (default $XDG_STATE_HOME/jobworker).",
        ],
        [
            "stop-grace",
            None,
            10.0,
            "Seconds between SIGTERM and SIGKILL on stop.",
            float,
        ],
        [
            "max-log-bytes",
            None,
            DEFAULT_MAX_LOG_BYTES,
            "Cap on each output stream of each job (e.g. 1G, 256M); the rest "
            "is discarded and the job record says so.",
            parseSize,
        ],
        [
            "retain",
            None,
            None,
            "Remove ended jobs (record and output) this long after they end "
            "(e.g. 7d, 12h). Default: keep forever.",
            parseDuration,
        ],
        [
            "cgroups",
            None,
            "auto",
            "Per-job cgroups: auto (use v2 or v1 when usable) or off.",
        ],
        ["default-memory", None, None, "Memory limit of a job (e.g. 512M).", parseSize],
        [
            "max-memory",
            None,
            None,
            "Largest memory limit a job may ask for.",
            parseSize,
        ],
        ["default-cpu", None, None, "CPU limit of a job in millicores.", int],
        [
            "max-cpu",
            None,
            None,
            "Largest CPU limit (millicores) a job may ask for.",
            int,
        ],
        ["default-pids", None, None, "Process-count limit of a job.", int],
        ["max-pids", None, None, "Largest process-count limit a job may ask for.", int],
        [
            "max-io-bps",
            None,
            None,
            "Largest disk read/write limit (bytes/s).",
            parseSize,
        ],
        [
            "default-timeout",
            None,
            None,
            "Stop a job (FAILED, timed out) after this long (e.g. 1h).",
            parseDuration,
        ],
        [
            "isolate",
            None,
            "",
            "Namespaces for every job, comma-separated: pid, net, mount.",
        ],
        [
            "run-as",
            None,
            None,
            "Run the jobs of users without a mapped account as this one "
            "(non-root) user: they then share it (default: a dynamic uid each).",
        ],
        [
            "dynamic-uids",
            None,
            f"{DYNAMIC_UIDS[0]}-{DYNAMIC_UIDS[1]}",
            "The uid range of per-job dynamic identities (no passwd or group "
            "entry may use it).",
            parseRange,
        ],
        [
            "tmp-size",
            None,
            DEFAULT_TMP_SIZE,
            "Size of each private tmpfs (/tmp, /var/tmp, /dev/shm, the "
            "working directory) of a job that does not run as root.",
            parseSize,
        ],
        ["max-running", None, None, "At most this many jobs run at once (429).", int],
        [
            "max-running-per-user",
            None,
            None,
            "At most this many jobs of one user run (or queue) at once (429).",
            int,
        ],
        [
            "create-rate",
            None,
            50.0,
            "Jobs one user may create per second on average, bursts of twice "
            "that (429 with Retry-After past it).",
            float,
        ],
        [
            "max-log-streams-per-user",
            None,
            None,
            "Log streams one user may hold open (default: a quarter of "
            "--max-log-streams).",
            int,
        ],
        [
            "access-log",
            None,
            "off",
            "Log every HTTP request to the server log: on or off (the audit "
            "log and metrics record the important ones anyway).",
        ],
        [
            "audit-log",
            None,
            None,
            "Audit log file, JSON lines (default <state-dir>/audit.log).",
        ],
        [
            "login-failures",
            None,
            5,
            "Failed logins from one address before it is throttled (429).",
            int,
        ],
        [
            "max-connections-per-client",
            None,
            64,
            "Concurrent connections one client address may hold.",
            int,
        ],
        [
            "max-log-streams",
            None,
            1000,
            "Concurrent log responses (followers included) the server serves.",
            int,
        ],
        [
            "idle-timeout",
            None,
            60.0,
            "Close a connection idle (between requests) this many seconds.",
            float,
        ],
        [
            "header-timeout",
            None,
            10.0,
            "A request's headers must arrive within this many seconds of its "
            "first byte (408, then the connection is closed).",
            float,
        ],
        [
            "body-timeout",
            None,
            30.0,
            "A request's body must arrive within this many seconds of its headers.",
            float,
        ],
        [
            "max-header-bytes",
            None,
            16384,
            "Largest request line plus headers, in bytes (400 past it).",
            parseSize,
        ],
        [
            "max-body-bytes",
            None,
            65536,
            "Largest request body, in bytes (413 past it; the rest is not kept).",
            parseSize,
        ],
        [
            "client-ca",
            None,
            None,
            "Accept client certificates signed by this CA (PEM); the user is "
            "the certificate's common name, looked up in the users file.",
        ],
        [
            "executor",
            None,
            "local",
            "Where jobs run: local (processes of this machine) or slurm "
            "(batch jobs of a Slurm cluster, through sbatch/squeue/scancel).",
        ],
        [
            "slurm-output-dir",
            None,
            None,
            "With --executor slurm: a folder every cluster node sees at the same "
            "path; job output and argv/env files go in <dir>/<job id>/.",
        ],
        ["slurm-partition", None, None, "With --executor slurm: sbatch --partition."],
        ["slurm-account", None, None, "With --executor slurm: sbatch --account."],
        [
            "slurm-poll",
            None,
            1.0,
            "With --executor slurm: seconds between state refreshes (one "
            "squeue call for all jobs).",
            float,
        ],
        [
            "token-ttl",
            None,
            12 * 3600.0,
            "Lifetime of a bearer token from POST /tokens (e.g. 12h, 30m).",
            parseDuration,
        ],
        [
            "token-key",
            None,
            None,
            "File holding the token signing key, made if absent (default "
            "<state-dir>/token.key); replacing it invalidates every token.",
        ],
    ]

    def postOptions(self) -> None:
        if not self["tls"]:
            raise usage.UsageError(
                "--tls is required: jobworker only serves HTTPS (TLS 1.3), "
                "there is no plaintext mode"
            )
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if not 0 <= self["stop-grace"] <= 3600:
            raise usage.UsageError("--stop-grace must be between 0 and 3600 seconds")
        if self["access-log"] not in ("on", "off"):
            raise usage.UsageError("--access-log must be on or off")
        if self["cgroups"] not in ("auto", "off"):
            raise usage.UsageError("--cgroups must be auto or off")
        isolate = {name for name in self["isolate"].split(",") if name}
        unknown = isolate - set(ISOLATION)
        if unknown:
            raise usage.UsageError(
                f"--isolate: unknown namespace(s) {', '.join(sorted(unknown))} "
                "(pid, net, mount)"
            )
        self["isolate"] = frozenset(isolate)
        for name in (
            "default-cpu",
            "max-cpu",
            "default-pids",
            "max-pids",
            "max-running",
            "max-running-per-user",
            "max-log-streams-per-user",
            "login-failures",
            "max-connections-per-client",
            "max-log-streams",
        ):
            if self[name] is not None and self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        for name in ("idle-timeout", "header-timeout", "body-timeout", "token-ttl"):
            if not 0 < self[name] <= 366 * 86400:
                raise usage.UsageError(f"--{name} must be positive (at most a year)")
        if self["executor"] not in ("local", "slurm"):
            raise usage.UsageError("--executor must be local or slurm")
        if self["executor"] == "slurm":
            if self["slurm-output-dir"] is None:
                raise usage.UsageError("--executor slurm needs --slurm-output-dir")
            if self["run-as"] is not None or self["isolate"]:
                raise usage.UsageError(
                    "--run-as and --isolate are for the local executor: Slurm "
                    "runs each job as its owner's mapped account, isolated by "
                    "its own config"
                )
            if (
                self["slurm-shared-account"]
                and os.getuid() == 0
                and not self["allow-root-jobs"]
            ):
                raise usage.UsageError(
                    "--slurm-shared-account on a server running as root would "
                    "run unmapped users' jobs as root: add --allow-root-jobs to "
                    "mean it, or run the server as a service account"
                )
        elif self["slurm-shared-account"]:
            raise usage.UsageError("--slurm-shared-account needs --executor slurm")
            if not 0.1 <= self["slurm-poll"] <= 60:
                raise usage.UsageError("--slurm-poll must be 0.1..60 seconds")
        if self["require-client-cert"] and self["client-ca"] is None:
            raise usage.UsageError("--require-client-cert needs --client-ca")
        if not 1024 <= self["max-header-bytes"] <= 1 << 20:
            raise usage.UsageError("--max-header-bytes must be 1K..1M")
        if not 1024 <= self["max-body-bytes"] <= 64 << 20:
            raise usage.UsageError("--max-body-bytes must be 1K..64M")
        if isinstance(self["dynamic-uids"], str):
            try:
                self["dynamic-uids"] = parseRange(self["dynamic-uids"])
            except ValueError as e:
                raise usage.UsageError(f"--dynamic-uids: {e}") from None
        if not 0 < self["create-rate"] <= 1e6:
            raise usage.UsageError("--create-rate must be positive (at most 1e6)")
        if self["run-as"] is not None and self["allow-root-jobs"]:
            raise usage.UsageError("--run-as and --allow-root-jobs exclude each other")
        if self["tmp-size"] < 1 << 20:
            raise usage.UsageError("--tmp-size must be at least 1M")
        if self["max-log-bytes"] < 0:
            raise usage.UsageError("--max-log-bytes must not be negative")
        if self["state-dir"] is None:
            self["state-dir"] = defaultStateDir()


def fatal(message: str) -> NoReturn:
    """Refuse to start: one line on stderr, exit status 1, no traceback."""
    print(f"jobworker: error: {message}", file=sys.stderr)
    raise SystemExit(1)


class ListeningService(Service):
    """
    Own a port that was bound while building the service (so a port in use is
    a clean start-up error); stop listening on shutdown.
    """

    log = Logger()

    def __init__(self, port: IListeningPort) -> None:
        self._port = port

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        address = self._port.getHost()
        self.log.info(
            "jobworker listening on https://{host}:{port}",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stopListening())

    async def _stopListening(self) -> None:
        await maybeDeferred(self._port.stopListening)


class QuietSite(Site):
    """A Site without the per-request access log line (C{--access-log off})."""

    def log(self, request: Any) -> None:
        pass


class ManagerService(Service):
    """Stop every job, and wait for it, when the server shuts down."""

    def __init__(
        self, manager: JobManager, drain: Callable[[], Deferred[None]] | None = None
    ) -> None:
        self.manager = manager
        self._drain = drain

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.manager.shutdown()
        if self._drain is not None:
            # Let log followers send the last bytes and the end of stream.
            await self._drain()
        self.manager.close()


class UsersReloadService(Service):
    """
    Reload the users file on SIGHUP (a bad file keeps the old users). The
    file is read and parsed (bcrypt, account lookups) in a thread, never on
    the reactor; a storm of HUPs costs at most one reload running and one
    more queued. Without a users file a HUP is logged and ignored: it must
    never end the server (logrotate and C{systemctl reload} send it).
    """

    log = Logger()

    def __init__(
        self,
        path: str | None,
        authenticator: Authenticator,
        reactor: Any,
        runInThread: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._path = path
        self._authenticator = authenticator
        self._reactor = reactor
        self._runInThread = runInThread
        self._previous: Any = None
        self._reloading = False
        self._again = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._previous = signal.signal(
            signal.SIGHUP,
            lambda *_: self._reactor.callFromThread(self.reload),
        )

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def reload(self) -> Deferred[None]:
        """Read the users file again; keep the old users if it is unusable."""
        if self._path is None:
            self.log.info(
                "SIGHUP: the server runs with the development users (no "
                "--users file): nothing to reload"
            )
            return succeed(None)
        if self._reloading:
            self._again = True
            return succeed(None)
        self._reloading = True
        return Deferred.fromCoroutine(self._reload(self._path))

    async def _reload(self, path: str) -> None:
        try:
            while True:
                self._again = False
                await self._reloadOnce(path)
                if not self._again:
                    return
        finally:
            self._reloading = False

    async def _reloadOnce(self, path: str) -> None:
        try:
            if self._runInThread is not None:
                users = await self._runInThread(UserDatabase.fromFile, path)
            else:
                users = UserDatabase.fromFile(path)
        except (OSError, UsersFileError, UnicodeDecodeError) as e:
            self.log.error(
                "users file {path} not reloaded, keeping the old users: {error}",
                path=path,
                error=str(e),
            )
            return
        self._authenticator.replaceUsers(users)
        self.log.info(
            "users file {path} reloaded: {count} users",
            path=path,
            count=len(users),
        )


class RetentionService(Service):
    """Every so often, delete the jobs that ended longer ago than C{retain}."""

    def __init__(self, manager: JobManager, retain: float, clock: Any) -> None:
        self._manager = manager
        self._retain = retain
        self._loop = LoopingCall(self._expire)
        self._loop.clock = clock
        #: How often to look: often enough to keep the promise within 1%.
        self.interval = min(max(retain / 100, 1.0), 3600.0)

    def _expire(self) -> None:
        # One bad round must not end the LoopingCall (and retention with it).
        try:
            self._manager.expire(self._retain)
        except Exception:
            log.failure("retention round failed; trying again next round")

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    Build the server: job manager, API, TLS listener.

    Every start-up problem (unreadable files, bad users file, port in use)
    ends the process with one line on stderr.
    """
    if reactor is None:
        reactor = _globalReactor
    return _build(config, reactor)


def _isLoopback(interface: str) -> bool:
    """Whether listening on C{interface} serves this host only."""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:  # "" (every interface) or a host name
        return False


def _build(config: Options, reactor: JobReactor) -> MultiService:
    try:
        tlsOptions = serverOptions(
            config["cert"],
            config["key"],
            config["client-ca"],
            bool(config["require-client-cert"]),
        )
    except TLSConfigError as e:
        fatal(str(e))
    # The development key and users are public: fine on loopback (with a
    # warning), never where another host can reach them.
    beyondLoopback = not _isLoopback(config["interface"])
    where = f"--interface {config['interface'] or '(every interface)'}"
    if isDevelopmentCertificate(config["cert"]):  # wherever it was copied to
        if beyondLoopback:
            fatal(
                "the DEVELOPMENT certificate (its key, certs/server.key, is "
                f"public) must not serve {where}: give --cert and --key of "
                "your own"
            )
        log.warn(
            "running with the bundled DEVELOPMENT certificate and key "
            "(certs/server.key is public): use --cert/--key in production"
        )
    if config["users"] is None:
        if beyondLoopback:
            fatal(
                "the DEVELOPMENT users (their passwords are public) must not "
                f"serve {where}: give --users FILE"
            )
        users = UserDatabase.development()
        log.warn(
            "running with the DEVELOPMENT users alice, bob, rita and ada, whose "
            "passwords are public: use --users FILE in production"
        )
    else:
        try:
            users = UserDatabase.fromFile(config["users"])
        except OSError as e:
            fatal(f"cannot read users file {config['users']}: {e.strerror}")
        except (UsersFileError, UnicodeDecodeError) as e:
            fatal(f"bad users file: {e}")
    cgroups = None
    slurm = config["executor"] == "slurm"
    if config["cgroups"] == "auto" and not slurm:
        cgroups = detectCgroups()
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
    identities = _identities(config, slurm)
    ioMax = config["max-io-bps"]
    policy = JobPolicy(
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
        defaultTimeout=config["default-timeout"],
        isolate=config["isolate"],
        maxRunning=config["max-running"],
        maxRunningPerUser=config["max-running-per-user"],
        createRate=config["create-rate"],
        identities=identities,
        tmpSize=config["tmp-size"],
    )
    metrics = Metrics()
    stateDir = config["state-dir"]
    executor: SlurmExecutor | LocalExecutor | None = None
    if slurm:
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
            )
        except OSError as e:
            fatal(f"cannot use --slurm-output-dir: {e.strerror}")
    try:
        os.makedirs(stateDir, mode=0o700, exist_ok=True)
        # The store's lock first: nothing may touch a state dir that another
        # server uses (its sandbox files, its jobs).
        store = JobStore(os.path.join(stateDir, "jobs.sqlite3"))
        if executor is None:
            local = LocalExecutor(
                reactor,
                os.path.join(stateDir, "jobs"),
                config["stop-grace"],
                maxLogBytes=config["max-log-bytes"],
                cgroups=cgroups,
                policy=policy,
            )
            _probeSandbox(local, identities)
            executor = local
        manager = JobManager(
            reactor,
            stateDir,
            config["stop-grace"],
            store=store,
            maxLogBytes=config["max-log-bytes"],
            cgroups=cgroups,
            policy=policy,
            metrics=metrics,
            executor=executor,
        )
    except OSError as e:
        fatal(f"cannot use state dir {stateDir}: {e.strerror}")
    except StoreError as e:
        fatal(f"cannot use state dir {stateDir}: {e}")
    manager.recover()

    threadPool = reactor.getThreadPool()  # type: ignore[attr-defined]

    def runInThread(f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, threadPool, f, *args)  # type: ignore[arg-type]

    try:
        audit = AuditLog(
            config["audit-log"] or os.path.join(stateDir, "audit.log"), reactor
        )
    except OSError as e:
        fatal(f"cannot open the audit log: {e.strerror}")
    keyPath = config["token-key"] or os.path.join(stateDir, "token.key")
    try:
        tokenKey = loadOrCreateKey(keyPath)
    except OSError as e:
        fatal(f"cannot use the token key {keyPath}: {e.strerror}")
    except ValueError as e:
        fatal(f"cannot use the token key: {e}")
    portal = makePortal(users, runInThread, VerifiedCredentials(reactor))
    authenticator = Authenticator(
        portal,
        metrics.authFailures.inc,
        LoginThrottle(reactor, threshold=config["login-failures"]),
        audit,
        tokens=TokenSigner(tokenKey, reactor, config["token-ttl"]),
        certificates=config["client-ca"] is not None,
    )
    api = JobsAPI(
        manager,
        authenticator,
        reactor,
        metrics,
        audit,
        config["max-log-streams"],
        config["max-log-streams-per-user"],
    )
    siteClass = Site if config["access-log"] == "on" else QuietSite
    site = siteClass(api.resource(), timeout=config["idle-timeout"])  # type: ignore[no-untyped-call]
    site.metrics = metrics  # type: ignore[attr-defined]
    site.requestFactory = boundedRequestClass(config["max-body-bytes"])
    site.protocol = channelWithDeadlines(  # type: ignore[method-assign, assignment]
        config["header-timeout"], config["body-timeout"], config["max-header-bytes"]
    )
    site.displayTracebacks = False
    # The connection cap sits outside TLS: a refused client costs no handshake.
    endpoint = TCP4ServerEndpoint(
        reactor, config["port"], interface=config["interface"]
    )
    listening = endpoint.listen(
        ConnectionsPerClient(
            TLSMemoryBIOFactory(tlsOptions, False, site),
            config["max-connections-per-client"],
        )
    )
    failures: list[Exception] = []
    ports: list[IListeningPort] = []
    listening.addCallbacks(ports.append, lambda f: failures.append(f.value))
    if failures:
        error = failures[0]
        if isinstance(error, CannotListenError):
            fatal(
                f"cannot listen on {config['interface']}:{config['port']}: "
                f"{_reason(error)}"
            )
        fatal(f"cannot listen: {error}")
    root = MultiService()
    # Services stop in reverse order: the port closes first, then jobs stop.
    root.addService(ManagerService(manager, api.drain))
    if config["retain"] is not None:
        root.addService(RetentionService(manager, config["retain"], reactor))
    root.addService(
        UsersReloadService(config["users"], authenticator, reactor, runInThread)
    )
    root.addService(ListeningService(ports[0]))
    return root


def _identities(config: Options, slurm: bool) -> Identities:
    """Who jobs run as (see the README's threat model), said in the log."""
    server = Identity.ofServer()
    if server.uid != 0:
        if config["run-as"] is not None:
            fatal("--run-as needs the server to run as root")
        log.warn(
            "the server runs as {user}, not root: every user's jobs run as "
            "{user} and share that identity (each can read the others' "
            "environment and signal them)",
            user=server.label,
        )
        return Identities(server=server)
    if slurm:
        return Identities(server=server)
    if config["run-as"] is not None:
        try:
            shared = Identity.ofAccount(config["run-as"])
        except IdentityError as e:
            fatal(f"--run-as: {e}")
        log.warn(
            "--run-as {user}: the jobs of every user without a mapped account "
            "share the account {user}: they can read each other's files and, "
            "without --isolate pid, each other's environment and signal each "
            "other",
            user=shared.label,
        )
        return Identities(shared=shared, server=server)
    if config["allow-root-jobs"]:
        log.warn(
            "--allow-root-jobs: the jobs of users without a mapped account RUN "
            "AS ROOT: any Developer can read the token key and every secret "
            "of this machine"
        )
        return Identities(server=server)
    first, last = config["dynamic-uids"]
    clashes = rangeClashes(first, last)
    if clashes:
        fatal(
            f"--dynamic-uids {first}-{last} is used by {', '.join(clashes[:5])}: "
            "choose a free range"
        )
    try:
        pool = DynamicUids(first, last)
    except OSError as e:
        fatal(f"cannot make the dynamic uid lock folder: {e.strerror}")
    _reclaim(pool)
    log.info(
        "jobs of users without a mapped account run as a dynamic uid of their "
        "own ({first}-{last})",
        first=first,
        last=last,
    )
    return Identities(pool=pool, server=server)


def _reclaim(pool: DynamicUids) -> None:
    """Kill what a dead server's dynamic jobs left, then free their uids."""
    found = pool.reclaim(processesOf, killAll)
    for uid in found:
        for _ in range(100):
            if not processesOf(uid):
                pool.release(uid)
                break
            time.sleep(0.01)
        else:
            log.warn("dynamic uid {uid} still has processes: not used", uid=uid)
    if found:
        log.warn("killed the leftovers of {count} dynamic uid(s)", count=len(found))


def _probeSandbox(executor: LocalExecutor, identities: Identities) -> None:
    """Refuse to start if the job sandbox does not work on this machine."""
    sandbox = executor.sandbox
    if sandbox is None:
        return
    if identities.shared is not None:
        probe = identities.shared
    elif identities.pool is not None:
        probe = Identity.ofDynamicUid(identities.pool.acquire())
    else:
        return
    try:
        sandbox.probe(probe)
    except SandboxError as e:
        fatal(
            f"cannot sandbox jobs on this machine ({e}): jobs that do not run "
            "as root need mount namespaces and per-mount /proc options "
            "(Linux 5.8+)"
        )
    finally:
        identities.release(probe)


def _reason(error: CannotListenError) -> str:
    socketError = error.socketError
    if isinstance(socketError, OSError) and socketError.strerror:
        return socketError.strerror
    return str(socketError)
