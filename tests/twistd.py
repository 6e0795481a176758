"""
A real C{twistd -n jobworker} child process on a loopback port, with a client
for its API: for the tests of twistd itself and the browser tests.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jobworker.tls import TrustRootPolicy

from .support import (
    CA,
    ApiClient,
    basic,
    killGroupIfOurs,
    sleep,
    startTime,
    twistdCommand,
)

LISTENING = re.compile(rb"jobworker listening on https://127\.0\.0\.1:(\d+)")

#: What a failure logged by twistd starts its traceback with.
TRACEBACK = "Traceback (most recent call last)"

#: Seconds twistd may take to exit after SIGTERM: its jobs' grace and more.
STOP_TIMEOUT = 30.0


class TwistdProtocol(ProcessProtocol):
    """Collect a twistd's output; tell when it listens and when it exits."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.errors = bytearray()
        self.port: int | None = None
        self.exitCode: int | None = None
        self.exitSignal: int | None = None
        self.ended = False
        self._listenWaiters: list[Deferred[int]] = []
        self._endWaiters: list[Deferred[int | None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.port is None:
            match = LISTENING.search(self.output)
            if match is not None:
                self.port = int(match.group(1))
                waiters, self._listenWaiters = self._listenWaiters, []
                for d in waiters:
                    d.callback(self.port)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        if isinstance(reason.value, ProcessDone | ProcessTerminated):
            self.exitCode = reason.value.exitCode
            self.exitSignal = getattr(reason.value, "signal", None)
        waiters, self._listenWaiters = self._listenWaiters, []
        for d in waiters:
            d.errback(RuntimeError(f"twistd exited before listening: {self.log()}"))
        ends, self._endWaiters = self._endWaiters, []
        for e in ends:
            e.callback(self.exitCode)

    def log(self) -> str:
        """Everything twistd printed so far."""
        return (bytes(self.output) + bytes(self.errors)).decode("utf-8", "replace")

    def whenListening(self) -> Deferred[int]:
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[int] = Deferred()
        self._listenWaiters.append(d)
        return d

    def whenEnded(self) -> Deferred[int | None]:
        d: Deferred[int | None] = Deferred()
        if self.ended:
            d.callback(self.exitCode)
        else:
            self._endWaiters.append(d)
        return d


class Twistd(ApiClient):
    """
    A real C{twistd -n jobworker} on a free loopback port, in a temporary
    folder, with a client for its API (the methods of L{tests.support.LiveServer}
    that tests of a child process need). At cleanup, whatever happened: stopped
    with SIGTERM as an operator would (its jobs with it), then killed if it
    still runs, with any job process group left; and its log must hold no
    traceback, as trial fails a test for an error logged in its own process.
    """

    def __init__(self, testCase: TestCase, stateDir: str | None = None) -> None:
        self.testCase = testCase
        self.workDir = os.path.abspath(testCase.mktemp())
        os.makedirs(self.workDir)
        #: Another server's, to start where it stopped.
        self.stateDir = stateDir or os.path.join(self.workDir, "state")
        self.protocol = TwistdProtocol()
        self.pid: int = 0
        self.port: int = 0
        #: The CA that signs the server's certificate.
        self.ca = CA
        #: (process group id, start time of its leader) of each job.
        self.jobGroups: list[tuple[int, int | None]] = []
        pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool = pool
        self.http = HTTPClient(
            Agent(reactor, contextFactory=TrustRootPolicy(self.ca), pool=pool)
        )

    async def start(self, *extra: str, prefix: tuple[str, ...] = ()) -> Twistd:
        """
        Spawn twistd with C{extra} options (through the command C{prefix},
        which execs its arguments: twistd keeps the pid spawned); fires once
        it listens.
        """
        argv = [
            *prefix,
            *twistdCommand(
                self.stateDir, "--interface=127.0.0.1", *extra, stopGrace=None
            ),
        ]
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            self.protocol, argv[0], argv, env=dict(os.environ), path=self.workDir
        )
        self.pid = transport.pid
        self.testCase.addCleanup(self.cleanUp)
        self.port = await self.protocol.whenListening().addTimeout(60, reactor)
        return self

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """
        SIGTERM twistd (it stops every job, then exits) and wait for it to
        exit; fail if it is still running after C{timeout} seconds. Nothing
        to do once it has exited.
        """
        if self.protocol.ended:
            return
        ended = self.protocol.whenEnded()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await ended.addTimeout(timeout, reactor)
        except TimeoutError:
            raise AssertionError(
                f"twistd still ran {timeout}s after SIGTERM: {self.protocol.log()}"
            ) from None

    async def cleanUp(self) -> None:
        """Stop twistd, kill what is left of it and its jobs; check its log."""
        await self._pool.closeCachedConnections()
        problems = []
        try:
            await self.stop()
        except AssertionError as e:
            problems.append(str(e))
        for pgid, leaderStarted in self.jobGroups:
            killGroupIfOurs(pgid, leaderStarted)
        if not self.protocol.ended:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            await self.protocol.whenEnded().addTimeout(30, reactor)
        log = self.protocol.log()
        if TRACEBACK in log:
            problems.append(f"twistd logged a traceback: {log}")
        if problems:
            raise AssertionError("\n".join(problems))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def createJob(
        self, command: str, *args: str, user: str = "alice", **fields: Any
    ) -> dict[str, Any]:
        """Create a job as C{user} (201 or the test fails); its group is killed
        at cleanup."""
        job = await super().createJob(command, *args, user=user, **fields)
        if job["pid"] is not None:
            self.jobGroups.append((job["pid"], startTime(job["pid"])))
        return job

    async def logs(self, jobId: str) -> bytes:
        response = await self.http.get(
            f"{self.url}/jobs/{jobId}/logs", headers=basic("alice")
        )
        assert response.code == 200, response.code
        return await treq.content(response)  # type: ignore[no-any-return]

    async def poll(
        self, check: Any, timeout: float, what: str, interval: float = 0.05
    ) -> Any:
        """Await C{check()} until it returns something truthy, within C{timeout}."""
        deadline = time.monotonic() + timeout
        while True:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await sleep(interval)
