"""
The spawner (C{launcher.c --spawner}, L{jobworker.executors.local.spawner}):
its protocol on the real kernel, driven by hand (the standby announced
before it is asked for, its start time, the job it becomes, the zombie held
until the server has taken the end in, a standby that dies, EOF), and a
root server that starts every sandboxed job through it (the jobs' parent,
the spawner dying under running jobs).
"""

from __future__ import annotations

import array
import errno
import json
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local import cgroups
from jobworker.executors.local.sandbox import (
    ROOT_ENVIRONMENT,
    UNSHARE,
    Sandbox,
    privateFolders,
)
from jobworker.executors.local.spawner import (
    ANNOUNCE,
    ENDED,
    REAPED,
    START,
    WATCH_INTERVAL,
    Spawner,
    SpawnerGone,
    SpawnerLost,
)
from jobworker.jobs.limits import Limits
from jobworker.jobs.recovery import processStartTime

from .support import LiveServer, sleep, waitUntil
from .test_launcher import compiled, readState, requireRoot, testIdentity


def _rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _cgroupOf(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


def _openFds(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.01)
    return False


def leavePidsGroup(group: str) -> None:
    """Every process of a test's pids cgroup back to the root one (so that
    the group can be removed)."""
    with open(os.path.join(group, "cgroup.procs")) as f:
        members = f.read().split()
    for pid in members:
        try:
            with open("/sys/fs/cgroup/pids/cgroup.procs", "w") as f:
                f.write(pid)
        except OSError:
            pass


#: A job's leader that gets itself traced by its own child, then exits;
#: the tracer holds it (never waits) for three seconds.
TRACED_LEADER = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(0x59616D61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)  # PR_SET_PTRACER, any
r, w = os.pipe()
leader = os.getpid()
if os.fork() == 0:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if libc.ptrace(0x4206, leader, None, None) != 0:  # PTRACE_SEIZE
        os._exit(1)
    os.write(w, b"x")
    time.sleep(3)
    os._exit(0)
os.read(r, 1)
os._exit(7)
"""


def _cpuTicks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def launcherSandbox(testCase: SynchronousTestCase) -> tuple[str, Sandbox]:
    """As root: the compiled launcher, and a sandbox that starts jobs with it."""
    requireRoot()
    path = compiled(testCase)
    sandbox = Sandbox(
        os.path.abspath(testCase.mktemp()),
        1 << 20,
        folders=privateFolders(),
        launcher=path,
    )
    return path, sandbox


class HandDriven:
    """A spawner started by hand: its socket (fd 3) and end pipe (fd 4)."""

    def __init__(self, testCase: SynchronousTestCase, launcher: str) -> None:
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ends, endsWrite = os.pipe()
        self.errors, errorsWrite = os.pipe()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, errorsWrite, 2),
            (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            (os.POSIX_SPAWN_DUP2, endsWrite, 4),
        ]
        try:
            self.pid = os.posix_spawn(
                launcher,
                [launcher, "--spawner"],
                ROOT_ENVIRONMENT,
                file_actions=actions,
            )
        finally:
            theirs.close()
            os.close(endsWrite)
            os.close(errorsWrite)
        testCase.addCleanup(self.close)
        self._pidfds: list[int] = []
        self.exited = False

    def wait(self) -> int:
        """The spawner's exit code, once it has exited."""
        _, status = os.waitpid(self.pid, 0)
        self.exited = True
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        self.socket.close()
        if not self.exited:
            self.wait()
        os.close(self.ends)
        os.close(self.errors)
        for fd in self._pidfds:
            os.close(fd)

    def announced(self, timeout: float = 10.0) -> tuple[int, int, int]:
        """The next announcement: pid, start ticks, pidfd."""
        self.socket.settimeout(timeout)
        data, ancillary, _, _ = self.socket.recvmsg(ANNOUNCE.size, socket.CMSG_SPACE(4))
        [(_, _, fdData)] = ancillary
        [pidfd] = array.array("i", fdData)
        self._pidfds.append(pidfd)
        kind, pid, ticks = ANNOUNCE.unpack(data)
        assert kind == b"A", kind
        return pid, ticks, pidfd

    def start(
        self, pid: int, args: list[str], fds: list[int], kind: bytes = b"S"
    ) -> None:
        message = b"".join(os.fsencode(a) + b"\0" for a in args)
        self.socket.sendmsg([START.pack(kind, pid), message], _rights(fds))

    def reap(self, *pids: int) -> None:
        self.socket.sendmsg([b"R", struct.pack(f"={len(pids)}i", *pids)])

    def ended(self, timeout: float = 10.0) -> tuple[int, int]:
        ready, _, _ = select.select([self.ends], [], [], timeout)
        if not ready:
            raise AssertionError("no end reported")
        data = os.read(self.ends, ENDED.size)
        pid, status = ENDED.unpack(data)
        return pid, status


def recording() -> tuple[ProcessProtocol, Deferred[Any], list[bytes]]:
    """A process protocol keeping its child's output, and its end's reason."""
    ended: Deferred[Any] = Deferred()
    out: list[bytes] = []
    proto = ProcessProtocol()
    proto.childDataReceived = lambda fd, data: out.append(data)  # type: ignore[method-assign]
    proto.processEnded = lambda reason: ended.callback(reason.value)  # type: ignore[method-assign]
    return proto, ended, out


class Job:
    """The pipes of one job handed to a standby: fds 0-3 as the server's."""

    def __init__(self) -> None:
        self.stdinRead, self.stdinWrite = os.pipe()
        self.outRead, self.outWrite = os.pipe()
        self.errRead, self.errWrite = os.pipe()
        self.gateRead, self.gateWrite = os.pipe()

    def theirs(self) -> list[int]:
        return [self.stdinRead, self.outWrite, self.errWrite, self.gateRead]

    def handed(self) -> None:
        """The child has its copies: close ours of its ends."""
        for fd in self.theirs():
            os.close(fd)
        os.close(self.stdinWrite)

    def output(self) -> tuple[bytes, bytes]:
        with os.fdopen(self.outRead, "rb") as out, os.fdopen(self.errRead, "rb") as err:
            return out.read(), err.read()


class ProtocolTests(SynchronousTestCase):
    """The spawner's protocol, as root, by hand."""

    def setUp(self) -> None:
        self.launcher, self.sandbox = launcherSandbox(self)
        self.spawner = HandDriven(self, self.launcher)

    def argv(self, script: str) -> tuple[list[str], bytes]:
        env = {"PATH": "/usr/bin:/bin"}
        argv, gate = self.sandbox.gatedStart(
            testIdentity(), ["sh", "-c", script], None, env
        )
        self.assertEqual(argv[0], self.launcher)
        return argv[1:], gate

    def startJob(self, pid: int, script: str, opened: bool = True) -> Job:
        """
        Hand C{script} to the standby C{pid}; open its gate (C{opened}), else
        close the gate without its line. The gate's write end is closed.
        """
        args, gate = self.argv(script)
        job = Job()
        self.spawner.start(pid, args, job.theirs())
        job.handed()
        try:
            if opened:
                os.write(job.gateWrite, gate)
        except BrokenPipeError:
            pass  # nobody reads it: the spawner closed it
        os.close(job.gateWrite)
        return job

    def runJob(
        self, script: str, pid: int | None = None
    ) -> tuple[int, int, bytes, bytes]:
        """A job through the announced standby (C{pid}, else the next
        announced): pid, status, out, err."""
        if pid is None:
            pid, _, _ = self.spawner.announced()
        out, err = self.startJob(pid, script).output()
        ended, status = self.spawner.ended()
        self.assertEqual(ended, pid)
        self.spawner.reap(pid)
        return pid, status, out, err

    def test_announcedAhead(self) -> None:
        """A standby is announced before anything is asked: a child of the
        spawner, holding only fds 0-3, started when it says (or one tick
        later, as the server's crash recovery allows)."""
        pid, ticks, pidfd = self.spawner.announced()
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        self.assertEqual(ppid, self.spawner.pid)
        self.assertIn(processStartTime(pid), (ticks, ticks + 1))
        # It closes what it had of the spawner's first, then waits for
        # its request.
        deadline = time.monotonic() + 10
        while _openFds(pid) != [0, 1, 2, 3] or readState(pid) != "S":
            self.assertLess(time.monotonic(), deadline, _openFds(pid))
            time.sleep(0.01)
        self.assertGreaterEqual(pidfd, 0)

    def test_theStandbyBecomesTheJob(self) -> None:
        """The job runs as the launcher would run it, in the standby's pid,
        with default signals and no descriptor but its three; its exit
        status is reported; the next standby is another process."""
        pid, status, out, err = self.runJob(
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd; "
            "echo $$; id -u; exit 3"
        )
        self.assertEqual(err, b"")
        self.assertEqual(os.waitstatus_to_exitcode(status), 3)
        lines = out.decode().split()
        self.assertEqual(
            lines[:4], ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
        )
        # ls's own directory descriptor is the fourth.
        self.assertEqual(lines[4:7], ["0", "1", "2"])
        self.assertEqual(lines[-2:], [str(pid), str(testIdentity().uid)])
        nextPid, _, _ = self.spawner.announced()
        self.assertNotEqual(nextPid, pid)

    def test_reapedAtOnce(self) -> None:
        """A child started with 's' is reaped as soon as it ends, and its
        end record says so (no 'R' for it)."""
        pid, _, _ = self.spawner.announced()
        args, gate = self.argv("exit 4")
        job = Job()
        self.spawner.start(pid, args, job.theirs(), kind=b"s")
        job.handed()
        os.write(job.gateWrite, gate)
        os.close(job.gateWrite)
        job.output()
        self.assertEqual(self.spawner.ended(), (pid, REAPED | 4 << 8))
        self.assertTrue(_gone(pid))

    def test_zombieUntilReaped(self) -> None:
        """An ended child stays a zombie (its pid and group id held) until
        the server says it took the end in; then it is reaped."""
        pid, _, _ = self.spawner.announced()
        self.startJob(pid, "exit 0").output()
        self.assertEqual(self.spawner.ended(), (pid, 0))
        time.sleep(0.2)
        self.assertEqual(readState(pid), "Z")
        self.spawner.reap(pid)
        self.assertTrue(_gone(pid))

    def test_killedStandbyReportedAndReplaced(self) -> None:
        """A standby killed before its job: its end is reported (the server
        fails a job it gave it meanwhile), a new one is announced, and a
        start for the dead one runs nothing."""
        pid, _, pidfd = self.spawner.announced()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        self.assertEqual(self.spawner.ended(), (pid, signal.SIGKILL))
        nextPid, _, _ = self.spawner.announced()
        self.assertNotEqual(nextPid, pid)
        job = self.startJob(pid, "echo ran")
        self.assertEqual(job.output(), (b"", b""))  # closed by the spawner
        self.spawner.reap(pid)
        self.assertTrue(_gone(pid))
        # The new standby still takes the next job.
        _, status, out, _ = self.runJob("echo ran", nextPid)
        self.assertEqual((status, out), (0, b"ran\n"))

    def test_closedGateRunsNothing(self) -> None:
        """The gate closed without its line: the job exits 125 and nothing
        of its command ran."""
        pid, _, _ = self.spawner.announced()
        job = self.startJob(pid, "echo ran", opened=False)
        self.assertEqual(job.output(), (b"", b""))
        ended, status = self.spawner.ended()
        self.assertEqual((ended, os.waitstatus_to_exitcode(status)), (pid, 125))
        self.spawner.reap(pid)

    def test_joinsTheCgroupBeforeTheGate(self) -> None:
        """Handed its cgroup's cgroup.procs files, the standby joins the
        cgroup itself before it waits at the gate: nothing of the job runs
        outside it. The cgroup can be removed once the child is reaped."""
        found = cgroups.detect()
        if found is None:
            raise SkipTest("no writable cgroup hierarchy here")
        name = f"spawner-join-{os.getpid()}"
        group = found.create(name, Limits())
        self.addCleanup(group.remove)
        pid, _, _ = self.spawner.announced()
        args, gate = self.argv("cat /proc/self/cgroup")
        job = Job()
        join = group.openProcs()
        self.assertGreaterEqual(len(join), 1)
        try:
            self.spawner.start(pid, args, job.theirs() + join)
        finally:
            for fd in join:
                os.close(fd)
        job.handed()
        # Still at the gate, already in the cgroup.
        deadline = time.monotonic() + 10
        while name not in _cgroupOf(pid) or readState(pid) != "S":
            self.assertLess(time.monotonic(), deadline, _cgroupOf(pid))
            time.sleep(0.01)
        self.assertFalse(group.empty())
        os.write(job.gateWrite, gate)
        os.close(job.gateWrite)
        out, err = job.output()
        self.assertEqual(err, b"")
        # (v1: in the hierarchies it was made in, the freezer at least.)
        self.assertTrue(
            any(line.endswith("/" + name) for line in out.decode().splitlines()), out
        )
        self.assertEqual(self.spawner.ended(), (pid, 0))
        self.spawner.reap(pid)
        self.assertTrue(_gone(pid))
        self.assertTrue(group.remove())

    def test_cannotJoinRunsNothing(self) -> None:
        """A cgroup file the standby cannot write: it exits 125 before its
        gate, says why on the job's stderr, and nothing of the job ran."""
        pid, _, _ = self.spawner.announced()
        args, gate = self.argv("echo ran")
        job = Job()
        full = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.spawner.start(pid, args, [*job.theirs(), full])
        finally:
            os.close(full)
        job.handed()
        try:
            os.write(job.gateWrite, gate)
        except BrokenPipeError:
            pass
        os.close(job.gateWrite)
        out, err = job.output()
        self.assertEqual(out, b"")
        self.assertIn(b"cannot join the job's cgroup: No space left on device", err)
        ended, status = self.spawner.ended()
        self.assertEqual((ended, os.waitstatus_to_exitcode(status)), (pid, 125))
        self.spawner.reap(pid)

    def test_tracedZombieDoesNotSpin(self) -> None:
        """A job whose leader ends traced by another of its processes: the
        spawner cannot wait for it until the tracer lets it go, and must
        not spin meanwhile (a pidfd stays readable); the end is reported
        once the tracer exits."""
        pid, _, _ = self.spawner.announced()
        job = self.startJob(pid, "exec python3 -c " + shlex.quote(TRACED_LEADER))
        deadline = time.monotonic() + 10
        while readState(pid) != "Z":
            self.assertLess(time.monotonic(), deadline, "the leader did not end")
            time.sleep(0.05)
        before = _cpuTicks(self.spawner.pid)
        time.sleep(1.0)
        spent = _cpuTicks(self.spawner.pid) - before
        self.assertLess(spent, 20, f"the spawner used {spent} ticks in 1 s")
        ended, status = self.spawner.ended(timeout=15)
        self.assertEqual((ended, os.waitstatus_to_exitcode(status)), (pid, 7))
        self.spawner.reap(pid)
        job.output()

    def test_noStandbyForkedSaysWhy(self) -> None:
        """When no standby can be forked (here: a pids cgroup at its limit)
        the spawner says so ('F', the errno) instead of announcing one, and
        tries again when asked ('N')."""
        pids = "/sys/fs/cgroup/pids"
        if not os.path.isfile(os.path.join(pids, "cgroup.procs")):
            raise SkipTest("no v1 pids cgroup hierarchy at /sys/fs/cgroup/pids")
        group = os.path.join(pids, f"jobworker-test-spawner-{os.getpid()}")
        os.mkdir(group)
        self.addCleanup(os.rmdir, group)
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write("2")  # the spawner and one standby
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(self.spawner.pid))
        self.addCleanup(leavePidsGroup, group)
        # Forked before the limit: the first standby takes a job...
        pid, _, _ = self.spawner.announced()
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        job = self.startJob(pid, "exec sleep 30")
        # ... and the next cannot be forked: 'F' and the errno.
        self.spawner.socket.settimeout(10)
        data = self.spawner.socket.recv(ANNOUNCE.size)
        self.assertEqual(ANNOUNCE.unpack(data), (b"F", errno.EAGAIN, 0))
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write("max")
        self.spawner.socket.send(b"N")
        nextPid, _, _ = self.spawner.announced()
        self.assertNotEqual(nextPid, pid)
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(self.spawner.ended(), (pid, signal.SIGKILL))
        self.spawner.reap(pid)
        job.output()

    def test_deafToStopSignals(self) -> None:
        """The spawner leads a session of its own (a terminal's ^C or a
        signal to the server's group never reaches it) and keeps SIGINT,
        SIGTERM and SIGHUP blocked: only the server ends it, after its
        jobs."""
        pid, _, _ = self.spawner.announced()
        self.assertEqual(os.getsid(self.spawner.pid), self.spawner.pid)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(self.spawner.pid, signum)
        # Still there, and still serving: the standby takes a job.
        _, status, out, _ = self.runJob("echo still", pid)
        self.assertEqual((status, out), (0, b"still\n"))
        self.spawner.announced()  # and the next

    def test_standbyTakesStopSignals(self) -> None:
        """
        A standby is not deaf: a stop's signal that comes before it took
        its request (the job's cgroup empty, the server signals the
        standby) ends it as it would end the job; it was ignored, and the
        job ran to the grace's KILL (review round 30). The next is announced.
        """
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            pid, _, _ = self.spawner.announced()
            os.kill(pid, signum)
            self.assertEqual(self.spawner.ended(), (pid, signum))
            self.spawner.reap(pid)
        self.spawner.announced()

    def test_eofEndsSpawnerAndStandby(self) -> None:
        """The server's end of the socket closed: the spawner exits, and so
        does its standby."""
        pid, _, _ = self.spawner.announced()
        self.spawner.socket.close()
        self.assertEqual(self.spawner.wait(), 0)
        self.assertTrue(_gone(pid))

    def test_badRequestEndsTheSpawner(self) -> None:
        """A message that is not the protocol's: the spawner says so and
        exits (the server then kills what it had started)."""
        self.spawner.announced()
        self.spawner.socket.sendmsg([b"X"])
        self.assertEqual(self.spawner.wait(), 125)
        self.assertIn(b"unknown request", os.read(self.spawner.errors, 4096))


class DeadSpawnerTests(TestCase):
    """The server's side when its spawner died unnoticed."""

    timeout = 30

    async def test_sendToADeadSpawner(self) -> None:
        """A spawn that finds the spawner dead (before the reactor noticed)
        drops that spawner's standby and starts the job in a new spawner:
        it failed, a 503 for a spawner nothing was wrong with any more."""
        path, sandbox = launcherSandbox(self)
        argv, gate = sandbox.gatedStart(
            testIdentity(), ["true"], None, {"PATH": "/bin"}
        )
        spawner = Spawner(reactor, path, ROOT_ENVIRONMENT)
        self.addCleanup(spawner.stop)
        generation = spawner.running()
        generation.receive(10.0)
        [(standby, _, _)] = generation.announced
        os.kill(spawner.current.process.pid, signal.SIGKILL)
        self.assertTrue(_gone(standby))  # it saw EOF on its socket
        ended = Deferred()
        proto = ProcessProtocol()
        proto.processEnded = lambda reason: ended.callback(reason.value)
        process = spawner.spawnProcess(proto, argv)
        self.assertEqual(list(generation.announced), [])
        self.assertIsNone(generation.socket)
        self.assertEqual(spawner.started, 2)
        process.writeToChild(3, gate)
        process.closeChildFD(3)
        self.assertIsInstance(await ended, ProcessDone)

    async def test_silentSpawnerNotReplaced(self) -> None:
        """A spawner alive but silent (stopped) is not replaced: its spawn
        fails (a 503), and no second spawner forks beside it."""
        path, sandbox = launcherSandbox(self)
        argv, _ = sandbox.gatedStart(testIdentity(), ["true"], None, {"PATH": "/bin"})
        spawner = Spawner(reactor, path, ROOT_ENVIRONMENT)
        self.addCleanup(spawner.stop)
        # (Not looked at meanwhile: the first spawn goes to the standby.)
        spawner.watchInterval = 3600.0
        generation = spawner.running()
        generation.receive(10.0)
        pid = generation.process.pid
        ended: Deferred[None] = Deferred()
        proto = ProcessProtocol()
        proto.processEnded = lambda reason: ended.callback(None)  # type: ignore[method-assign]
        # Cleanups run last first: continued, then its job's end (pipes and
        # pidfd read to the end), then the spawner stopped.
        self.addCleanup(lambda: ended)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        os.kill(pid, signal.SIGSTOP)
        await waitUntil(lambda: readState(pid) == "T", what="the spawner's stop")
        spawner.spawnProcess(proto, argv).closeChildFD(3)  # the standby
        with self.assertRaises(SpawnerGone):
            spawner.spawnProcess(ProcessProtocol(), argv)
        self.assertIs(spawner.current, generation)
        self.assertEqual(spawner.started, 1)

    async def test_gateLongerThanItsPipe(self) -> None:
        """A gate line longer than its pipe takes at once (a large job
        environment): the rest goes through a pipe writer, the launcher
        reads it whole, and the job sees every byte."""
        path, sandbox = launcherSandbox(self)
        big = "x" * 100_000
        argv, gate = sandbox.gatedStart(
            testIdentity(),
            ["sh", "-c", 'printf %s "$BIG" | wc -c'],
            None,
            {"PATH": "/usr/bin:/bin", "BIG": big},
        )
        self.assertGreater(len(gate), 65536)
        spawner = Spawner(reactor, path, ROOT_ENVIRONMENT)
        self.addCleanup(spawner.stop)
        proto, ended, out = recording()
        process = spawner.spawnProcess(proto, argv, stdin=False)
        process.writeToChild(3, gate)
        self.assertIn(3, process.pipes)  # the rest is with a writer
        process.closeChildFD(3)
        self.assertIsInstance(await ended, ProcessDone)
        self.assertEqual(b"".join(out).strip(), str(len(big)).encode())

    async def test_noDescriptorLeftPerJob(self) -> None:
        """
        Each child's descriptors in the server (its pipes, pidfd, and the
        gate's read end kept to tell whether it passed its gate) are all
        closed once it has ended: ten jobs leave as many as one.
        """
        path, sandbox = launcherSandbox(self)
        spawner = Spawner(reactor, path, ROOT_ENVIRONMENT)
        self.addCleanup(spawner.stop)

        async def run() -> None:
            argv, gate = sandbox.gatedStart(
                testIdentity(), ["true"], None, {"PATH": "/usr/bin:/bin"}
            )
            proto, ended, _ = recording()
            process = spawner.spawnProcess(proto, argv)
            process.writeToChild(3, gate)
            process.closeChildFD(3)
            self.assertIsInstance(await ended, ProcessDone)

        def descriptors() -> dict[str, str]:
            folder = "/proc/self/fd"
            found = {}
            for fd in os.listdir(folder):
                try:
                    found[fd] = os.readlink(os.path.join(folder, fd))
                except OSError:
                    pass  # (listdir's own)
            return found

        await run()  # (the spawner and its sockets are there from now on)
        await sleep(0.1)
        before = descriptors()
        for _ in range(10):
            await run()
        await sleep(0.1)
        self.assertEqual(len(descriptors()), len(before), (before, descriptors()))

    async def test_spawnerDeathTellsWhetherTheJobRan(self) -> None:
        """
        The spawner killed under two children: one still behind its gate
        (its line written, not yet read, as when the spawner dies between a
        job's hand-over and the standby's read), one past it. Both are
        killed and end as the spawner's loss (L{SpawnerLost}), and each end
        says whether it had passed its gate: the first ran nothing of its
        command (it ended "killed by SIGKILL" as if it had run).
        """
        path, sandbox = launcherSandbox(self)
        spawner = Spawner(reactor, path, ROOT_ENVIRONMENT)
        self.addCleanup(spawner.stop)

        def start(script: str, opened: bool) -> tuple[Any, Deferred[Any], list[bytes]]:
            argv, gate = sandbox.gatedStart(
                testIdentity(), ["sh", "-c", script], None, {"PATH": "/usr/bin:/bin"}
            )
            proto, ended, out = recording()
            process = spawner.spawnProcess(proto, argv, stdin=False)
            if opened:
                process.writeToChild(3, gate)
                process.closeChildFD(3)
            return process, ended, out

        _, ranEnded, out = start("echo up; exec sleep 60", True)
        await waitUntil(lambda: out == [b"up\n"], what="the first job's start")
        # The second one's gate line is written only once the spawner is
        # stopped: the child has it, unread, when the spawner dies.
        pid = spawner.current.process.pid
        behind, behindEnded, behindOut = start("echo ran", False)
        await waitUntil(
            lambda: readState(behind.pid) == "S", what="the second job's wait"
        )
        _, gate = sandbox.gatedStart(
            testIdentity(), ["sh", "-c", "echo ran"], None, {"PATH": "/usr/bin:/bin"}
        )
        os.kill(pid, signal.SIGSTOP)
        await waitUntil(lambda: readState(pid) == "T", what="the spawner's stop")
        os.kill(behind.pid, signal.SIGSTOP)  # (it would read its gate at once)
        await waitUntil(lambda: readState(behind.pid) == "T", what="the child's stop")
        behind.writeToChild(3, gate)
        behind.closeChildFD(3)
        os.kill(pid, signal.SIGKILL)
        ran, never = await ranEnded, await behindEnded
        self.assertIsInstance(ran, SpawnerLost)
        self.assertIsInstance(never, SpawnerLost)
        self.assertEqual((ran.ran, never.ran), (True, False))
        self.assertEqual((ran.signal, never.signal), (signal.SIGKILL, signal.SIGKILL))
        self.assertEqual(behindOut, [])


class GenerationTests(TestCase):
    """A spawner replaced before the old one's pipe has ended."""

    timeout = 60

    async def test_oldSpawnersJobsStillEnd(self) -> None:
        """The spawner dies under a running job and a spawn comes before the
        reactor notices: it starts a new spawner, and the old one's job
        still ends (killed, FAILED) once its pipe is read to the end."""
        requireRoot()
        compiled(self)
        server = LiveServer(self)
        executor = server.manager._executor  # type: ignore[attr-defined]
        if executor._cgroups is None:
            raise SkipTest("no cgroups here: jobs do not start through the spawner")
        job = await server.createJob("sh", "-c", "echo up; exec sleep 60")
        deadline = time.monotonic() + 10
        while (await server.json("GET", f"/jobs/{job['id']}"))[1]["stdout_bytes"] == 0:
            self.assertLess(time.monotonic(), deadline, "the job is not up")
            await sleep(0.05)
        spawner = executor._spawner
        old = spawner.current
        os.kill(old.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while readState(old.process.pid) not in ("Z", ""):  # no reactor turn
            self.assertLess(time.monotonic(), deadline, "the spawner lives on")
            time.sleep(0.01)
        argv, _ = executor.sandbox.gatedStart(
            testIdentity(), ["true"], None, {"PATH": "/bin"}
        )
        ended = Deferred()
        proto = ProcessProtocol()
        proto.processEnded = lambda reason: ended.callback(reason.value)
        fresh = spawner.spawnProcess(proto, argv)
        self.assertIsNot(spawner.current, old)
        self.assertEqual(spawner.started, 2)
        fresh.closeChildFD(3)  # the gate, unopened: it exits 125
        self.assertEqual((await ended).exitCode, 125)
        record = await server.waitEnded(job["id"])
        self.assertEqual((record["status"], record["signal"]), ("FAILED", "SIGKILL"))


class Ended(ProcessProtocol):
    """A process protocol that fires L{ended} with the exit code."""

    def __init__(self) -> None:
        self.ended: Deferred[int | None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class PidReuseTests(TestCase):
    """
    An 's' child is reaped as soon as it ends, so its pid may come back, to
    a standby, before the server has read that end.
    """

    timeout = 60

    def setUp(self) -> None:
        launcher, _ = launcherSandbox(self)
        if shutil.which("nsenter") is None:
            raise SkipTest("util-linux nsenter is not installed")
        # The spawner as PID 1 of a PID namespace of its own: the only
        # process there that forks, so which pid its next child gets can
        # be set (ns_last_pid).
        wrapper = os.path.abspath(self.mktemp())
        with open(wrapper, "w") as f:
            f.write(
                f'#!/bin/sh\nexec {UNSHARE} --pid --fork --kill-child {launcher} "$@"\n'
            )
        os.chmod(wrapper, 0o700)
        self.sandbox = Sandbox(
            os.path.abspath(self.mktemp()),
            1 << 20,
            folders=privateFolders(),
            launcher=wrapper,
        )
        self.spawner = Spawner(reactor, wrapper, ROOT_ENVIRONMENT)
        self.addCleanup(self.spawner.stop)

    def start(self, script: str, reaped: bool = False) -> tuple[Any, Ended]:
        argv, gate = self.sandbox.gatedStart(
            testIdentity(), ["sh", "-c", script], None, {"PATH": "/usr/bin:/bin"}
        )
        protocol = Ended()
        process = self.spawner.spawnProcess(protocol, argv, reaped=reaped)
        process.writeToChild(3, gate)
        process.closeChildFD(3)
        return process, protocol

    async def nextPidWillBe(self, pid: int) -> None:
        """The next process the spawner forks gets C{pid}."""
        unshare = self.spawner.current.process.pid  # type: ignore[union-attr]
        with open(f"/proc/{unshare}/task/{unshare}/children") as f:
            [inside] = f.read().split()
        done = subprocess.run(
            [
                "nsenter",
                f"--target={inside}",
                "--pid",
                "--",
                "sh",
                "-c",
                f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid",
            ],
            capture_output=True,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)

    async def test_anEarlierChildsEndFirst(self) -> None:
        """
        An 's' child ends; before the server reads that end, a standby with
        its pid becomes the next job. The first end record for the pid ends
        the earlier child (with its own exit code), the next the later one.
        """
        generation = self.spawner.running()
        earlier, earlierEnded = self.start("exit 5", reaped=True)
        pid, pidfd = earlier.pid, earlier.pidfd
        # The server does not read the end pipe for a while (a busy server).
        generation.endsReader.stopReading()  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 10
        while not select.select([pidfd], [], [], 0)[0]:
            self.assertLess(time.monotonic(), deadline, "the child did not end")
            await sleep(0.01)
        # The spawner reaps it: its pid is free once the pidfd says so.
        while not pidfdReaped(pidfd):
            self.assertLess(time.monotonic(), deadline, "the child was not reaped")
            await sleep(0.01)
        await self.nextPidWillBe(pid)
        _, betweenEnded = self.start("exit 0")  # the standby forked next: that pid
        later, laterEnded = self.start("exit 7")
        self.assertEqual(later.pid, pid, "the pid did not come back")
        self.assertFalse(earlierEnded.ended.called)
        generation.endsReader.startReading()  # type: ignore[no-untyped-call]
        self.assertEqual(await laterEnded.ended, 7)
        self.assertEqual(await earlierEnded.ended, 5)
        self.assertEqual(await betweenEnded.ended, 0)
        self.assertEqual(generation.live, {})


def pidfdReaped(pidfd: int) -> bool:
    """Whether the process of C{pidfd} is reaped (its fdinfo's pid is -1)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return line.split()[1] == "-1"
    raise AssertionError("no Pid: line in a pidfd's fdinfo")


class ServerSpawnerTests(TestCase):
    """A root server starts sandboxed jobs through the spawner."""

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        compiled(self)

    def parentOf(self, pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    async def running(self, server: LiveServer, *argv: str) -> dict[str, object]:
        job = await server.createJob(*argv)
        deadline = time.monotonic() + 10
        while (await server.json("GET", f"/jobs/{job['id']}"))[1]["stdout_bytes"] == 0:
            self.assertLess(time.monotonic(), deadline, "the job is not up")
            await sleep(0.05)
        return job

    async def test_jobsForkedByTheSpawner(self) -> None:
        """The job's process is a child of the spawner, not of the server
        (--launcher exec: of the server)."""
        server = LiveServer(self)
        job = await self.running(server, "sh", "-c", "echo up; exec sleep 60")
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        self.assertIsNotNone(spawner)
        parent = self.parentOf(job["pid"])
        self.assertEqual(parent, spawner.current.process.pid)
        self.assertNotEqual(parent, os.getpid())

    async def test_stdinAndCgroup(self) -> None:
        """A job without stdin reads /dev/null, not a pipe (it sees the end
        at once, as before); one with "stdin": true has its pipe. Each runs
        in its own cgroup, which it joined itself."""
        server = LiveServer(self)
        # (cat last: the stdin job waits for its end, not ending before it.)
        script = "readlink /proc/self/fd/0; cat /proc/self/cgroup; cat"
        for stdin, expected in ((False, "/dev/null"), (True, "pipe:[")):
            job = await server.createJob("sh", "-c", script, stdin=stdin)
            if stdin:
                response = await server.request(
                    "POST",
                    f"/jobs/{job['id']}/stdin?eof=true",
                    raw=b"",
                    headers={b"content-type": [b"application/octet-stream"]},
                )
                self.assertEqual(response.code, 200)
                await treq.content(response)
            ended = await server.waitEnded(job["id"])
            self.assertEqual(ended["exit_code"], 0, ended)
            response = await server.request("GET", f"/jobs/{job['id']}/logs")
            lines = (await treq.content(response)).decode().splitlines()
            self.assertTrue(lines[0].startswith(expected), lines)
            self.assertTrue(
                any(line.endswith("/" + job["id"]) for line in lines[1:]), lines
            )

    async def test_stdinNotSharedBetweenJobs(self) -> None:
        """Each job's /dev/null stdin is an open file of its own: flags one
        job sets on its fd 0 (a channel to other users' jobs, if shared)
        are not seen on the next job's."""
        server = LiveServer(self)
        setter = await server.createJob(
            "python3",
            "-c",
            "import fcntl, os; "
            "fcntl.fcntl(0, fcntl.F_SETFL, os.O_NONBLOCK | os.O_APPEND)",
        )
        self.assertEqual((await server.waitEnded(setter["id"]))["exit_code"], 0)
        job = await server.createJob("grep", "^flags:", "/proc/self/fdinfo/0")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["exit_code"], 0, ended)
        response = await server.request("GET", f"/jobs/{job['id']}/logs")
        flags = int((await treq.content(response)).split()[1], 8)
        self.assertEqual(flags & (os.O_NONBLOCK | os.O_APPEND), 0, oct(flags))

    async def test_noCgroupsThroughTheSpawner(self) -> None:
        """
        Without cgroups the spawner forks the jobs too, and reaps each as
        soon as it ends: a group whose leader were kept a zombie would take
        signals, and look alive, to the end of the grace. A job that leaves
        nothing is done with (its uid given back) at once; what one leaves
        in its group is killed.
        """
        server = LiveServer(self, "--cgroups=off", grace=60)
        executor = server.manager._executor  # type: ignore[attr-defined]
        job = await self.running(server, "sh", "-c", "echo up; exec sleep 60")
        self.assertEqual(
            self.parentOf(job["pid"]), executor._spawner.current.process.pid
        )
        # Its group number is its own while it runs (see GroupNumbers).
        self.assertEqual(len(executor._groups), 1)
        done = await server.createJob("true")
        self.assertEqual((await server.waitEnded(done["id"]))["status"], "COMPLETED")
        deadline = time.monotonic() + 10
        while done["id"] in server.manager._live:  # type: ignore[attr-defined]
            self.assertLess(time.monotonic(), deadline, "kept to the end of the grace")
            await sleep(0.05)
        self.assertTrue(_gone(done["pid"]))
        left = await self.running(server, "sh", "-c", "sleep 60 & echo $!")
        ended = await server.waitEnded(left["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        response = await server.request("GET", f"/jobs/{left['id']}/logs")
        self.assertTrue(_gone(int(await treq.content(response))))
        deadline = time.monotonic() + 10
        while left["id"] in server.manager._live:  # type: ignore[attr-defined]
            # (Its leftover went on the TERM of its end: done with then,
            # not at the end of its grace, a minute here.)
            self.assertLess(time.monotonic(), deadline, "kept to the end of the grace")
            await sleep(0.05)

    async def test_aLeaverHoldingThePipesWithoutCgroups(self) -> None:
        """
        Without cgroups, the main process exits and what it left called
        setsid and holds the output pipes: its group is empty, nothing was
        signalled, and the job stayed RUNNING for good (a stop never
        answered, the shutdown waited; streams round 23). Its pipes are
        abandoned a grace and a second after the exit: it ends.
        """
        server = LiveServer(self, "--cgroups=off", grace=1.0)
        job = await self.running(
            server,
            "sh",
            "-c",
            "setsid sh -c 'trap \"\" TERM; exec sleep 60' & echo $!",
        )
        response = await server.request("GET", f"/jobs/{job['id']}/logs")
        leaver = int(await treq.content(response))
        self.addCleanup(os.kill, leaver, signal.SIGKILL)
        started = time.monotonic()
        ended = await server.waitEnded(job["id"], timeout=15)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertLess(time.monotonic() - started, 10)
        self.assertFalse(_gone(leaver, within=0.1))  # (nothing reached it)

    async def test_execStartsJobsItself(self) -> None:
        """--launcher exec: the server spawns each job's launcher itself."""
        server = LiveServer(self, "--launcher=exec")
        job = await self.running(server, "sh", "-c", "echo up; exec sleep 60")
        self.assertEqual(self.parentOf(job["pid"]), os.getpid())
        self.assertIsNone(server.manager._executor._spawner)  # type: ignore[attr-defined]

    async def test_spawnerDeathEndsItsJobs(self) -> None:
        """The spawner killed under a running job: the job is killed and
        ends FAILED (its exit status is lost with its parent), nothing of it
        is left, and the next job starts through a new spawner."""
        server = LiveServer(self)
        job = await self.running(server, "sh", "-c", "echo up; sleep 60 & wait")
        executor = server.manager._executor  # type: ignore[attr-defined]
        spawner = executor._spawner
        os.kill(spawner.current.process.pid, signal.SIGKILL)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(
            (ended["status"], ended["signal"]), ("FAILED", "SIGKILL"), ended
        )
        self.assertIn("the job spawner died while it ran", ended["error"])
        self.assertTrue(_gone(job["pid"]))
        again = await server.createJob("sh", "-c", "echo again")
        done = await server.waitEnded(again["id"])
        self.assertEqual(done["status"], "COMPLETED", done)
        self.assertEqual(spawner.started, 2)
        # The restart shows on /metrics.
        response = await server.request("GET", "/metrics", "ada")
        text = (await treq.content(response)).decode()
        self.assertIn("jobworker_spawner_starts_total 2.0", text)

    async def test_aSilentSpawnerHoldsTheReactorOnce(self) -> None:
        """
        A spawner that stops answering (SIGSTOP): the server's thread does
        not wait for a standby at all (its state in /proc says stopped; one
        that runs but is slow is waited for once, ANNOUNCE_TIMEOUT), and
        fails spawns at once until the spawner speaks again; each spawn
        waited 10 s, with every request of the server behind it, then the
        first 2 s (fault round 6). Once it goes on, jobs start again.
        """
        server = LiveServer(self)
        await self.running(server, "sh", "-c", "echo up")
        generation = server.manager._executor._spawner.current  # type: ignore[attr-defined]
        waits: list[float] = []
        receive = generation.receive

        def counted(timeout: float | None, *, one: bool = False) -> None:
            if timeout is not None:
                waits.append(timeout)
            receive(timeout, one=one)

        generation.receive = counted
        pid = generation.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        # The stop takes effect once the spawner is next scheduled: until
        # then /proc says it runs, and a spawn rightly waits for it once.
        await waitUntil(lambda: readState(pid) == "T", what="the spawner's stop")
        # The first may take the standby announced before the stop (its
        # end then waits for the spawner); the others find none: the server
        # cannot start them now, a 503 to try again (they were FAILED jobs).
        # (Or, if the server's watch looked at the spawner meanwhile, it is
        # refused as the others are.)
        response = await server.request("POST", "/jobs", body={"command": "true"})
        first = json.loads(await treq.content(response))
        self.assertIn(response.code, (201, 503), first)
        for _ in range(3):
            response = await server.request(
                "POST", "/jobs", body={"command": "true", "name": "refused"}
            )
            body = json.loads(await treq.content(response))
            self.assertEqual(
                (response.code, body["error"]),
                (
                    503,
                    "the server cannot start a job now (the job spawner did not "
                    "answer); try again shortly",
                ),
            )
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        self.assertEqual(waits, [])
        code, listed = await server.json("GET", "/jobs?name=refused")
        self.assertEqual((code, listed["jobs"]), (200, []))
        os.kill(pid, signal.SIGCONT)
        if response.code == 201:
            self.assertIn(
                (await server.waitEnded(first["id"]))["status"],
                ("COMPLETED", "FAILED"),
            )
        for _ in range(100):
            response = await server.request("POST", "/jobs", body={"command": "true"})
            if response.code == 201:
                job = json.loads(await treq.content(response))
                if (await server.waitEnded(job["id"]))["status"] == "COMPLETED":
                    break
            else:
                await treq.content(response)
            await sleep(0.05)
        else:
            self.fail("no job started once the spawner went on")

    def stopSpawner(self, server: LiveServer) -> Any:
        """
        SIGSTOP the server's spawner (continued at cleanup), with a silence
        limit of 3 s; fires with the spawner once /proc says it is stopped.
        """
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        spawner.silenceLimit = 3.0
        pid = spawner.current.process.pid
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        os.kill(pid, signal.SIGSTOP)
        return waitUntil(
            lambda: readState(pid) == "T" and spawner, what="the spawner's stop"
        )

    async def test_aStoppedSpawnerIsWatched(self) -> None:
        """
        A stopped spawner is noticed without anyone asking for the server's
        health: a job is refused (503), not handed to its standby to wait in
        its socket, and it is continued after its silence limit, so the end
        of a job it forked is taken in. Both waited, before, until a
        C{/healthz} (fault round 27: over four minutes).
        """
        server = LiveServer(self)
        await self.running(server, "sh", "-c", "echo up")
        sleeper = await self.running(server, "sh", "-c", "echo up; exec sleep 1")
        spawner = await self.stopSpawner(server)
        pid = spawner.current.process.pid
        await sleep(WATCH_INTERVAL + 0.5)
        response = await server.request("POST", "/jobs", body={"command": "true"})
        body = json.loads(await treq.content(response))
        self.assertEqual(response.code, 503, body)
        self.assertIn("the job spawner did not answer", body["error"])
        ended = await server.waitEnded(sleeper["id"], timeout=15)
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))
        self.assertNotEqual(readState(pid), "T")
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")

    async def test_stopAfterAnUnreportedExit(self) -> None:
        """
        A job whose main process exited 0 on its own while its spawner was
        stopped (its end not reported yet), then stopped: it keeps its own
        outcome, COMPLETED, as after a reported exit (it was STOPPED).
        """
        server = LiveServer(self)
        job = await self.running(server, "sh", "-c", "echo up; exec sleep 0.5")
        await self.stopSpawner(server)
        await waitUntil(
            lambda: readState(int(job["pid"])) == "Z",  # type: ignore[call-overload]
            what="the job's exit",
        )
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 200, stopped)
        self.assertEqual(
            (stopped["status"], stopped["exit_code"], stopped["stopped_by"]),
            ("COMPLETED", 0, None),
        )

    def limitSpawnerForks(self, server: LiveServer) -> str:
        """
        Put the spawner and its standby in a v1 pids cgroup that no new
        process may join: the standby forked before still takes a job (it
        leaves for the job's cgroup), the next cannot be forked. Returns the
        group's C{pids.max} file, to write C{max} to.
        """
        pids = "/sys/fs/cgroup/pids"
        if not os.path.isfile(os.path.join(pids, "cgroup.procs")):
            raise SkipTest("no v1 pids cgroup hierarchy at /sys/fs/cgroup/pids")
        if server.manager._executor._cgroups is None:  # type: ignore[attr-defined]
            raise SkipTest("no cgroups here: jobs do not start through the spawner")
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        group = os.path.join(pids, f"jobworker-test-server-spawner-{os.getpid()}")
        os.mkdir(group)
        self.addCleanup(os.rmdir, group)
        spawner.current.receive(10.0)  # the next standby's announcement
        members = [spawner.current.process.pid, spawner.current.announced[0][0]]
        self.addCleanup(leavePidsGroup, group)
        for pid in members:
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        limit = os.path.join(group, "pids.max")
        with open(limit, "w") as f:
            f.write("1")
        return limit

    async def test_noDescriptorForAStandbysPidfd(self) -> None:
        """
        The server has no descriptor free when the next standby's
        announcement comes in: the kernel drops its pidfd. That is no
        protocol error: the spawner stays (it was closed, and every job it
        had forked was killed, another user's among them); the standby is
        taken once a descriptor is free again.
        """
        server = LiveServer(self)
        if server.manager._executor._cgroups is None:  # type: ignore[attr-defined]
            raise SkipTest("no cgroups here: jobs do not start through the spawner")
        other = await self.running(server, "sh", "-c", "echo up; exec sleep 60")
        generation = server.manager._executor._spawner.current  # type: ignore[attr-defined]
        await sleep(0.5)  # the next standby's announcement, not yet taken in
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 16, hard))
        try:
            while True:  # every descriptor number below the limit taken
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as e:
                    self.assertEqual(e.errno, errno.EMFILE)
                    break
            generation.receive(None, one=True)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.assertIsNotNone(generation.socket, "the spawner was given up")
        self.assertEqual([entry[2] for entry in generation.announced], [-1])
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        self.assertIs(server.manager._executor._spawner.current, generation)  # type: ignore[attr-defined]
        code, still = await server.json("GET", f"/jobs/{other['id']}")
        self.assertEqual((code, still["status"]), (200, "RUNNING"), still)

    async def test_noForkIsA503(self) -> None:
        """The spawner cannot fork (a pids cgroup at its limit): that job is
        a 503 saying why, to try again, and nothing is stored (it was a
        FAILED job); the next one starts once it can."""
        server = LiveServer(self)
        first = await server.createJob("true")
        await server.waitEnded(first["id"])
        limit = self.limitSpawnerForks(server)
        taken = await server.createJob("true")  # the standby forked before
        code, refused = await server.json("POST", "/jobs", body={"command": "true"})
        self.assertEqual(
            (code, refused["error"]),
            (
                503,
                f"the server cannot start a job now ({os.strerror(errno.EAGAIN)}); "
                "try again shortly",
            ),
        )
        done = await server.waitEnded(taken["id"])
        self.assertEqual(done["status"], "COMPLETED", done)
        code, listed = await server.json("GET", "/jobs")
        self.assertEqual(
            {job["id"] for job in listed["jobs"]}, {first["id"], taken["id"]}
        )
        with open(limit, "w") as f:
            f.write("max")
        again = await server.createJob("true")
        done = await server.waitEnded(again["id"])
        self.assertEqual(done["status"], "COMPLETED", done)

    async def test_noForkKeepsAQueuedJobQueued(self) -> None:
        """A queued job whose turn comes while the spawner cannot fork stays
        queued (it was FAILED for good), and starts once it can."""
        server = LiveServer(self, "--max-running=1")
        first = await server.createJob("true")
        await server.waitEnded(first["id"])
        limit = self.limitSpawnerForks(server)
        taken = await server.createJob("sleep", "0.5")  # the standby
        queued = await server.createJob("true")
        self.assertEqual(queued["status"], "PENDING")
        self.assertEqual((await server.waitEnded(taken["id"]))["status"], "COMPLETED")
        # Its turn came, and the next tries (one a second) found no fork.
        await sleep(2.5)
        code, job = await server.json("GET", f"/jobs/{queued['id']}")
        self.assertEqual((code, job["status"]), (200, "PENDING"), job)
        with open(limit, "w") as f:
            f.write("max")
        done = await server.waitEnded(queued["id"])
        self.assertEqual(done["status"], "COMPLETED", done)

    async def test_stopReachesTheJob(self) -> None:
        """A stop's SIGTERM reaches a job the spawner forked, and the whole
        tree goes."""
        server = LiveServer(self)
        job = await self.running(
            server, "sh", "-c", "trap 'echo bye; exit 7' TERM; echo up; sleep 60 & wait"
        )
        code, _ = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 200)
        ended = await server.waitEnded(job["id"])
        self.assertEqual((ended["status"], ended["exit_code"]), ("STOPPED", 7))
        self.assertTrue(_gone(job["pid"]))
