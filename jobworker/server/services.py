"""
The long-lived parts of the server: the listening port, job shutdown, the
users reload, retention.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import Site

from ..auth.audit import AuditLog
from ..auth.authenticator import Authenticator
from ..auth.users import UserDatabase, UsersFileError
from ..errors import NoThread
from ..jobs.ending import elapsedSeconds
from ..jobs.manager import (
    JobManager,
)
from ..jobs.store import StoreError
from .reloads import Reloads
from .startup import USERS_FILE, StartupError, secretFileProblem

_T = TypeVar("_T")


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
        host = str(getattr(address, "host", "?"))
        self.log.info(
            "jobworker listening on https://{host}:{port} (its web dashboard: "
            "https://{host}:{port}/ui/)",
            host=f"[{host}]" if ":" in host else host,  # an IPv6 address
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


#: What ends or reloads the server. During its shutdown each is logged and
#: ignored: a HUP there (logrotate, a reload, a closed terminal) killed the
#: server outright, its jobs left running and their records RUNNING, and a
#: second TERM or an INT made Twisted's stop of a stopping reactor log a
#: critical traceback (fault round 8).
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def ignoreDuringShutdown(reactor: Any, log: Logger) -> dict[int, Any]:
    """
    Log and ignore L{SHUTDOWN_SIGNALS} from now on; the handlers they had
    (to put back once the shutdown is over: a test's process goes on).
    Nothing is changed where signals cannot be handled (not the main thread).
    """

    def ignored(signum: int, frame: object) -> None:
        reactor.callFromThread(
            log.warn,
            "{signal} during the shutdown: ignored, the shutdown goes on",
            signal=signal.Signals(signum).name,
        )

    previous: dict[int, Any] = {}
    try:
        for signum in SHUTDOWN_SIGNALS:
            previous[signum] = signal.signal(signum, ignored)
    except ValueError:
        pass
    return previous


class ManagerService(Service):
    """Stop every job, and wait for it, when the server shuts down."""

    log = Logger()

    def __init__(
        self,
        manager: JobManager,
        drain: Callable[[], Deferred[None]] | None = None,
        closing: Callable[[], object] | None = None,
        reactor: Any = None,
    ) -> None:
        self.manager = manager
        self._reactor = reactor
        self._drain = drain
        #: Called last (the audit log's close).
        self._closing = closing

    def privilegedStartService(self) -> None:
        # twistd becomes a daemon (forks) after the plugin made the service
        # and before it starts: what cannot pass a fork is opened again.
        try:
            self.manager.afterFork()
        except StoreError as e:
            # (Its log is a file by now: the line goes there, and to stderr.)
            self.log.critical("jobworker: error: {error}", error=str(e))
            print(f"jobworker: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # After twistd's fork into a daemon, the reactor running: the queue
        # held while the server was built starts now.
        self.manager.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        previous = (
            {}
            if self._reactor is None
            else ignoreDuringShutdown(self._reactor, self.log)
        )
        return Deferred.fromCoroutine(self._stop()).addBoth(
            lambda result: self._restore(previous, result)
        )

    def _restore(self, previous: dict[int, Any], result: _T) -> _T:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return result

    async def _stop(self) -> None:
        await self.manager.shutdown()
        if self._drain is not None:
            # Let log followers send the last bytes and the end of stream.
            await self._drain()
        self.manager.close()
        if self._closing is not None:
            self._closing()


#: SIGHUPs that came while the server was being built (the store's check,
#: recovery, a launcher's build: a second or more), kept for
#: L{UsersReloadService} to handle once it starts (L{holdHangUps}).
_earlyHangUps: list[int] = []


def holdHangUps() -> None:
    """
    From the start of the server's build until L{UsersReloadService} starts,
    a SIGHUP is kept, not the end of the server: its default action ended
    it (exit 129, no word in the log) when a C{systemctl reload} or a
    logrotate came as it started (operator round 38).
    """
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGHUP, lambda *_: _earlyHangUps.append(1))


def quietUsr1(reactor: Any) -> None:
    """
    Without a C{--logfile} (the log to stdout, under a service manager),
    twistd handles no SIGUSR1, and its default action ended the server and
    every job it ran (README said to rotate the log with it): it is said
    and ignored then (operator round 38). Call it once twistd's logging
    has started (it handles SIGUSR1 when it writes a file).
    """
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(
            signal.SIGUSR1,
            lambda *_: reactor.callFromThread(
                Logger().info,
                "SIGUSR1: the log goes to stdout (no --logfile): nothing to rotate",
            ),
        )


class UsersReloadService(Service):
    """
    On SIGHUP, reopen the audit log (logrotate moved it), reload the TLS
    certificate (C{reloadTLS}: a renewed one) and the users file (a bad
    file keeps the old users). The
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
        reopen: Callable[[], object] | None = None,
        reloaded: Callable[[], object] | None = None,
        reloadTLS: Callable[[], object] | None = None,
        reloads: Reloads | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._path = path
        #: Told what each reload changed (C{users.reload}).
        self._audit = audit
        #: Told what each reload made of the files (L{Reloads}).
        self._reloads = reloads if reloads is not None else Reloads()
        self._reloadTLS = reloadTLS
        self._reopen = reopen
        #: Told once new users are in force (the jobs waiting in Slurm's
        #: queue are checked against them).
        self._reloaded = reloaded
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
            lambda *_: self._reactor.callFromThread(self.hangUp),
        )
        if _earlyHangUps:
            # (One came while the server was being built: done now.)
            _earlyHangUps.clear()
            self.log.info("SIGHUP came during start-up: handled now")
            self._reactor.callLater(0, self.hangUp)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def hangUp(self) -> Deferred[None]:
        """
        SIGHUP: reopen the files logrotate moves (the audit log), and reload
        the users file whatever became of them (a revoked user must go).
        """
        if self._reopen is not None:
            try:
                problem = self._reopen()
            except Exception as e:
                self.log.failure("SIGHUP: the audit log was not reopened")
                problem = repr(e)
            if isinstance(problem, str):
                self._reloads.failed("audit_log", problem)
            else:
                self._reloads.succeeded("audit_log")
        if self._reloadTLS is not None:
            try:
                self._reloadTLS()
            except Exception:
                self.log.failure("SIGHUP: the TLS certificate was not reloaded")
        # The signal handler drops this Deferred: what fails is said here.
        return self.reload().addErrback(
            lambda failure: self.log.failure("SIGHUP: the reload failed", failure)
        )

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
            loaded = None
            if self._runInThread is not None:
                try:
                    loaded = await self._runInThread(_checkedUsers, path)
                except NoThread:
                    # A revocation must not wait for a thread: read here.
                    pass
            if loaded is None:
                loaded = _checkedUsers(path)
            users, warning = loaded
            if warning is not None:
                self.log.warn("{problem}", problem=warning)
        except (OSError, UsersFileError, UnicodeDecodeError, StartupError) as e:
            self.log.error(
                "users file {path} not reloaded, keeping the old users: {error}",
                path=path,
                error=str(e),
            )
            self._reloads.failed("users", str(e))
            return
        except Exception as e:
            # Any other error too (bcrypt refused a cost the parser let by):
            # uncaught, it failed a Deferred nobody held, and a removed Admin
            # kept access with nothing in the log (a fault round).
            self.log.failure(
                "users file {path} not reloaded, keeping the old users: {error}",
                path=path,
                error=f"{type(e).__name__}: {e}",
            )
            self._reloads.failed("users", f"{type(e).__name__}: {e}")
            return
        # (What it changes, if the users before are known: an authenticator
        # stand-in of a test may not say.)
        before = getattr(self._authenticator, "users", None)
        changes = users.changesFrom(before) if isinstance(before, UserDatabase) else {}
        self._authenticator.replaceUsers(users)
        self._reloads.succeeded("users")
        said = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in changes.items()
        )
        self.log.info(
            "users file {path} reloaded: {count} users{changed}",
            path=path,
            count=len(users),
            changed=f" ({said})" if said else ", none changed",
            changes=changes,
        )
        if self._audit is not None and changes:
            self._audit.record("users.reload", None, "server", "ok", **changes)
        if self._reloaded is not None:
            self._reloaded()


def _checkedUsers(path: str) -> tuple[UserDatabase, str | None]:
    """
    The users file, refused as at a start if others may write it (or
    another user owns it), with the warning to give if they may read it.
    """
    warning = secretFileProblem(path, USERS_FILE)
    return UserDatabase.fromFile(path), warning


class RetentionService(Service):
    """
    Every so often, delete the jobs that ended longer ago than C{retain}
    (a round deletes a slice of them per reactor turn: see
    L{JobManager.expire}).

    A round counts back from the wall clock (the jobs' end times are wall
    clock times), but never from later than the wall clock at the start
    plus the time elapsed since on C{monotonic}: a step of the wall clock
    forward (2 h for 2 s, under C{--retain 1h}) deleted every job that had
    ended within the hour, at once (a fault round). A step back counts
    from the wall clock, which is then the earlier: either way a step only
    ever deletes less, or later, never more.
    """

    log = Logger()

    def __init__(
        self,
        manager: JobManager,
        retain: float,
        clock: Any,
        monotonic: Callable[[], float] = elapsedSeconds,
        audit: AuditLog | None = None,
    ) -> None:
        self._manager = manager
        self._retain = retain
        #: Told the jobs each slice deletes (C{job.expire}).
        self._audit = audit
        self._clock = clock
        self._monotonic = monotonic
        #: The wall clock and C{monotonic} at the start (L{_now}).
        self._started: tuple[float, float] | None = None
        self._loop = LoopingCall(self._expire)
        self._loop.clock = clock
        #: How often to look: often enough to keep the promise within 1%.
        self.interval = min(max(retain / 100, 1.0), 3600.0)
        #: The round under way, if any.
        self._round: Deferred[Any] | None = None

    def _now(self) -> float:
        """The wall clock, or the start's plus the time elapsed if earlier."""
        wall: float = self._clock.seconds()
        if self._started is None:
            return wall
        wallThen, elapsedThen = self._started
        return min(wall, wallThen + (self._monotonic() - elapsedThen))

    def _expire(self) -> Deferred[None]:
        # The LoopingCall waits for the round (many reactor turns), so two
        # never overlap. One bad round must not end the LoopingCall (and
        # retention with it).
        expiring = self._round = maybeDeferred(
            self._manager.expire, self._retain, self._now(), self._expired
        )
        return expiring.addCallbacks(self._roundOver, self._roundFailed)

    def _expired(self, ids: list[str]) -> None:
        """One C{job.expire} line for a slice of jobs retention deleted."""
        if self._audit is not None:
            self._audit.record(
                "job.expire",
                None,
                "server",
                "ok",
                deleted=len(ids),
                jobs=ids,
                retain_seconds=self._retain,
            )

    def _roundOver(self, removed: int) -> None:
        self._round = None

    def _roundFailed(self, failure: Any) -> None:
        self._round = None
        self.log.failure("retention round failed; trying again next round", failure)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._started = (self._clock.seconds(), self._monotonic())
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()
        if self._round is not None:
            # It stops between two slices: every job left is whole.
            self._round.cancel()
