"""
Fakes for the unit tests: a process reactor that spawns nothing, a process
transport that records what is done to it, and a process-group signaller that
never signals a real process.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

#: Fake pids start above the kernel's PID_MAX_LIMIT (2**22), so they can never
#: name a real process (and they never reach a real kill anyway).
FIRST_FAKE_PID = 5_000_001


class FakeProcessTransport:
    """The parts of an IProcessTransport a job uses, recording every call."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdinClosed = False
        self.stdin: list[bytes] = []
        self.lostConnection = 0
        self.signals: list[Any] = []
        #: If set, signalProcess raises it (e.g. ProcessExitedAlready).
        self.signalError: BaseException | None = None
        self.closedChildFDs: list[int] = []
        #: What the server wrote to the start gate (fd 3).
        self.gate: list[bytes] = []

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def loseConnection(self) -> None:
        self.lostConnection += 1

    def signalProcess(self, signalID: Any) -> None:
        if self.signalError is not None:
            raise self.signalError
        self.signals.append(signalID)

    def closeChildFD(self, descriptor: int) -> None:
        self.closedChildFDs.append(descriptor)

    def closeStdout(self) -> None:
        self.closedChildFDs.append(1)

    def closeStderr(self) -> None:
        self.closedChildFDs.append(2)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        if childFD == 0:
            # A "stdin": true job's stdin (jobs without it close it at once).
            assert not self.stdinClosed, "stdin was written after closing"
            self.stdin.append(data)
            return
        if childFD != 3:
            raise AssertionError("jobs only write to their start gate and stdin")
        assert 3 not in self.closedChildFDs, "the gate was written after closing"
        self.gate.append(data)

    def write(self, data: bytes) -> None:
        raise AssertionError("jobs never write to their child")


class GroupKiller:
    """
    A fake C{signalGroupOf(pgid, signum) -> bool}: records each call and answers
    whether the group "exists". Every group exists until marked gone (or
    until C{exists} is set to False for all of them).
    """

    def __init__(self, exists: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []
        self.probes: list[int] = []
        self.exists = exists
        self.gone: set[int] = set()

    def __call__(self, pgid: int, signum: int) -> bool:
        alive = self.exists and pgid not in self.gone
        if signum == 0:
            self.probes.append(pgid)  # "is anyone left?" sends nothing
        else:
            self.calls.append((pgid, signum))
        return alive

    def groupGone(self, pgid: int) -> None:
        """From now on, the group C{pgid} has no members."""
        self.gone.add(pgid)

    def signalsTo(self, pgid: int) -> list[int]:
        """The signals sent to C{pgid}, in order."""
        return [s for (p, s) in self.calls if p == pgid]


def processExit(code: int = 0) -> Failure:
    """The reason Twisted gives for a process that exited with C{code}."""
    if code == 0:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(exitCode=code))


def processKilled(signum: int) -> Failure:
    """The reason Twisted gives for a process killed by C{signum}."""
    return Failure(ProcessTerminated(signal=signum))


@dataclass
class SpawnedProcess:
    """One call of L{FakeProcessReactor.spawnProcess}."""

    protocol: ProcessProtocol
    executable: str
    args: list[str]
    env: dict[str, str] | None
    path: str | None
    childFDs: dict[int, Any] | None
    transport: FakeProcessTransport
    ended: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.transport.pid

    def output(self, data: bytes) -> None:
        """The child wrote C{data} to stdout."""
        self.protocol.childDataReceived(1, data)

    def errors(self, data: bytes) -> None:
        """The child wrote C{data} to stderr."""
        self.protocol.childDataReceived(2, data)

    def end(self, reason: Failure) -> None:
        """The child was reaped and its pipes closed, as Twisted reports it."""
        assert not self.ended, "a process ends once"
        self.ended = True
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)

    def exit(self, code: int = 0) -> None:
        """The child exited with C{code}."""
        self.end(processExit(code))

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """The child was killed by C{signum}."""
        self.end(processKilled(signum))


class FakeProcessReactor(Clock):
    """
    A Clock that also "spawns" processes: spawnProcess records its arguments,
    connects the protocol to a L{FakeProcessTransport} as Twisted does, and
    returns the transport. Set C{spawnError} to make the next spawn raise.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        super().__init__()
        self.rightNow = now
        self.spawned: list[SpawnedProcess] = []
        self.spawnError: BaseException | None = None
        self._nextPid = FIRST_FAKE_PID

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Any = (),
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, Any] | None = None,
    ) -> FakeProcessTransport:
        if self.spawnError is not None:
            error, self.spawnError = self.spawnError, None
            raise error
        transport = FakeProcessTransport(self._nextPid)
        self._nextPid += 1
        self.spawned.append(
            SpawnedProcess(
                processProtocol,
                executable,
                list(args),
                None if env is None else dict(env),
                path,
                None if childFDs is None else dict(childFDs),
                transport,
            )
        )
        processProtocol.makeConnection(transport)  # type: ignore[arg-type]
        return transport


def forbidRealKill(patch: Callable[[Any, str, Any], None]) -> None:
    """
    Make any real os.killpg/os.kill fail the test: fake pids must never reach
    the kernel. Call with a TestCase's C{patch}.
    """
    import os

    def refuse(*args: Any) -> None:
        raise AssertionError(f"real signal sent in a unit test: {args!r}")

    patch(os, "killpg", refuse)
    patch(os, "kill", refuse)


#: A request environment that would run code as root if a root stage saw
#: it (where /bin/sh is bash), and a secret.
HOSTILE_ENVIRONMENT = {"BASH_FUNC_read%%": "() { id; }", "SECRET": "s3"}


def spawnHostileJob(testCase: Any, firstUid: int, launcher: str | None = None) -> Any:
    """
    As root, a manager on the fake process reactor (ten dynamic uids from
    C{firstUid}; the sandbox started through C{launcher}, or the exec chain)
    creates one job of C{bob} with L{HOSTILE_ENVIRONMENT}: what was spawned.
    Skips where not root.
    """
    import os

    from twisted.trial.unittest import SkipTest

    from jobworker.executors.local.executor import localJobManager
    from jobworker.jobs.identity import DynamicUids, Identities
    from jobworker.jobs.policy import JobPolicy
    from jobworker.jobs.validation import JobRequest

    if os.getuid() != 0:
        raise SkipTest("only a root server switches identities")
    forbidRealKill(testCase.patch)
    noLiveUidProcesses(testCase.patch)
    reactor = FakeProcessReactor()
    pool = DynamicUids(firstUid, firstUid + 9, testCase.mktemp())
    manager = localJobManager(
        reactor,
        os.path.abspath(testCase.mktemp()),
        5.0,
        GroupKiller(),
        policy=JobPolicy(identities=Identities(pool=pool)),
    )
    testCase.addCleanup(manager.close)
    if launcher is not None:
        sandbox = manager._executor.sandbox
        assert sandbox is not None
        sandbox.launcher = launcher
    manager.create(JobRequest("true", [], HOSTILE_ENVIRONMENT, None), "bob")
    [spawned] = reactor.spawned
    return spawned


def noLiveUidProcesses(patch: Any) -> None:
    """
    Dynamic uids' pools of unit tests (each with a lock folder of its own)
    find no process of their uids: other tests' servers, running at once,
    have jobs as uids of the same range, and a lock file with no mark has
    them looked for (L{jobworker.jobs.identity.DynamicUids}).
    """
    from jobworker.jobs import identity

    patch(identity, "processesByUid", lambda uids=None: {})
