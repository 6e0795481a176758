"""The twistd plugin's body: options and the service tree of C{twistd jobworker}."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from .api import BoundedRequest, JobsAPI
from .auth import Authenticator, makePortal
from .manager import JobManager, JobReactor
from .tls import TLSConfigError, serverOptions
from .users import UserDatabase, UsersFileError

log = Logger(namespace="jobworker.tap")

#: The bundled development certificate, relative to the working directory.
DEV_CERT = os.path.join("certs", "server.pem")
DEV_KEY = os.path.join("certs", "server.key")


def defaultStateDir() -> str:
    """C{$XDG_STATE_HOME/jobworker}, else C{~/.local/state/jobworker}."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "jobworker")


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


class ManagerService(Service):
    """Stop every job, and wait for it, when the server shuts down."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.manager.shutdown()


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    Build the server: job manager, API, TLS listener.

    Every start-up problem (unreadable files, bad users file, port in use)
    ends the process with one line on stderr.
    """
    if reactor is None:
        reactor = _globalReactor
    return _build(config, reactor)


def _build(config: Options, reactor: JobReactor) -> MultiService:
    try:
        tlsOptions = serverOptions(config["cert"], config["key"])
    except TLSConfigError as e:
        fatal(str(e))
    if os.path.abspath(config["key"]) == os.path.abspath(DEV_KEY):
        log.warn(
            "running with the bundled DEVELOPMENT certificate and key "
            "(certs/server.key is public): use --cert/--key in production"
        )
    if config["users"] is None:
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
    try:
        manager = JobManager(reactor, config["state-dir"], config["stop-grace"])
    except OSError as e:
        fatal(f"cannot use state dir {config['state-dir']}: {e.strerror}")

    threadPool = reactor.getThreadPool()  # type: ignore[attr-defined]

    def runInThread(f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, threadPool, f, *args)  # type: ignore[arg-type]

    api = JobsAPI(manager, Authenticator(makePortal(users, runInThread)))
    site = Site(api.app.resource())
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    endpoint = SSL4ServerEndpoint(
        reactor, config["port"], tlsOptions, interface=config["interface"]
    )
    listening = endpoint.listen(site)
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
    root.addService(ManagerService(manager))
    root.addService(ListeningService(ports[0]))
    return root


def _reason(error: CannotListenError) -> str:
    socketError = error.socketError
    if isinstance(socketError, OSError) and socketError.strerror:
        return socketError.strerror
    return str(socketError)
