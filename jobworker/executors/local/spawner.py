"""
The spawner: one small long-lived process (C{launcher.c --spawner}) that
forks every sandboxed job, so the server's thread neither waits for a fork
or an exec nor scans its descriptors per job.

The spawner keeps one child forked ahead, the standby, and announces it
(pid, start time, a pidfd) before it is needed: a spawn sends the job's
launcher arguments and pipe ends to that standby and goes on at once, with
no answer to wait for. L{Spawner.spawnProcess} has the shape of
C{IReactorProcess.spawnProcess} for the launcher's argv and returns a
L{SpawnedProcess}: Twisted's C{Process} for the pipes, so a job is still a
C{ProcessProtocol} fed by the same readers and writers. Only the fork, the
reaping and the signals differ: the spawner reports each end; signals go
through the pidfd; an ended child stays a zombie until the server has taken
its end in (its pid and group id cannot be reused before), then the spawner
reaps it. A job without a cgroup is reaped as soon as it ends instead, as
Twisted reaps its own children: the server asks whether anything is left
of its process group, and a zombie leader would say yes.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProcessProtocol
from twisted.internet.process import Process, ProcessReader, ProcessWriter, _BaseProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...jobs.recovery import TICKS_PER_SECOND, bootTicks
from .launcher import encodeArguments
from .pipes import readSome
from .process import SERVER_SHORT_OF, SpawnerLost

#: An end record on the events pipe: pid, wait status.
ENDED = struct.Struct("=ii")
#: Added to an end record's status: the child was reaped already (it was
#: started reaped at once: no 'R' for it).
REAPED = 0x10000
#: An announcement of the next standby: 'A', pid, start time in ticks (or
#: 'F', errno, 0: no standby could be forked).
ANNOUNCE = struct.Struct("=c3xiQ")
#: The head of a start request: 'S' (or 's': reaped as soon as it ends),
#: the standby's pid.
START = struct.Struct("=ci")
#: The most cgroup.procs files a start request carries (launcher.c's
#: MAX_JOIN): one per v1 hierarchy.
MAX_JOIN = 8
#: Seconds before reaps a full socket held back are asked again.
REAP_AGAIN = 0.05
#: The most pids one reap message carries.
MAX_REAP = 4096
#: A request's largest size (launcher.c's MAX_REQUEST).
MAX_REQUEST = 128 * 1024
#: How long a spawn may wait for a standby not announced yet, seconds (the
#: reactor waits with it: once per silence, see L{Generation.late}; never
#: for a spawner that is stopped, which cannot answer).
ANNOUNCE_TIMEOUT = 2.0
#: How long a spawner may stay silent (stopped, or no standby announced when
#: one was needed) before it is continued (stopped by a signal: SIGCONT) or
#: its silence is logged (otherwise), seconds.
SILENCE_LIMIT = 10.0
#: How often the spawner in use is looked at while it runs, seconds: a
#: stopped one is then refused jobs, and continued after L{SILENCE_LIMIT},
#: even if no one asks for the server's health (a job handed to it waited
#: in its socket, and the ends of its jobs, for as long as it stayed
#: stopped: fault round 27). A read of /proc each time.
WATCH_INTERVAL = 1.0
#: The wait status of a process killed by SIGKILL.
KILLED = signal.SIGKILL
#: How long a standby may have waited, in clock ticks since its start,
#: before its state is looked at when a job is handed to it (stopped
#: meanwhile, it would hold the job): a tenth of a second. Standbys of
#: jobs started close together are not looked at (a read of /proc, some
#: 1% of a job's start).
STANDBY_LOOK_TICKS = max(1, TICKS_PER_SECOND // 10)


#: An announced standby's pidfd that did not come (no descriptor was free).
NO_PIDFD = -1


class SpawnerGone(OSError):
    """The spawner is not running (it died, or was stopped)."""

    def __init__(self, why: str = "the job spawner is not running") -> None:
        super().__init__(errno.ECHILD, why)


def processState(pid: int) -> bytes:
    """C{pid}'s state letter in C{/proc/PID/stat} (b"": gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return b""
    # The state follows the command's closing parenthesis and a space.
    state = stat.rfind(b")") + 2
    return stat[state : state + 1]


class SpawnedProcess(Process):
    """
    A job's process transport whose child the spawner forked: fd 0 and the
    gate (3) written to, 1 and 2 read, as C{childFDs={0: "w", 1: "r", 2:
    "r", 3: "w"}} would make them; or fd 0 not a pipe at all (C{/dev/null}),
    as if it were closed at once.
    """

    def __init__(
        self,
        generation: Generation,
        pid: int,
        pidfd: int,
        startTicks: int,
        ends: dict[int, int],
        proto: IProcessProtocol,
        gateCheck: int | None = None,
    ) -> None:
        _BaseProcess.__init__(self, proto)
        #: A read end of the gate's pipe, kept while the child lives: what
        #: is left unread in it tells a child that never passed its gate
        #: (L{passedGate}). Closed at the end.
        self._gateCheck = gateCheck
        #: The gate's line was written (its pipe or its writer has it).
        self._gateWritten = False
        #: Why it ended, when its spawner died first (L{orphaned}).
        self._lost: SpawnerLost | None = None
        #: When the child started, in clock ticks since boot (as /proc's
        #: starttime, or the tick before): for crash recovery.
        self.startTicks = startTicks
        reactor = generation.reactor
        self._reactor = reactor
        self.pid = pid
        self.pidfd: int | None = pidfd
        self._watch: PidfdWatch | None = None
        self.status = -1
        self.pipes: dict[int, Any] = {}
        #: The gate's write end: written once and closed, never watched by
        #: the reactor (unless its line does not fit: L{writeToChild}).
        self._gate: int | None = None
        for childFD, fd in ends.items():
            if childFD == 3:
                self._gate = fd
            elif childFD == 0:
                self.pipes[childFD] = ProcessWriter(
                    reactor, self, childFD, fd, forceReadHack=True
                )
            else:
                self.pipes[childFD] = ProcessReader(reactor, self, childFD, fd)
        generation.adopt(pid, self)
        try:
            if self.proto is not None:
                self.proto.makeConnection(self)
        except BaseException:
            Generation.log.failure("spawned process: makeConnection failed")

    def exited(self) -> bool:
        """
        Has the child ended, reported or not (its pidfd is readable)? Its
        end comes from the spawner, which may be slow to say it (stopped).
        """
        pidfd = self.pidfd
        if pidfd is None:
            return self.status != -1
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def reapProcess(self) -> None:
        """The spawner reaps; its end report calls L{processEnded}."""

    def writeToChild(self, childFD: int, data: bytes) -> None:
        """
        The gate's line goes straight into its pipe, which takes it whole
        (it is empty, and far larger than a line). What does not fit goes
        through a pipe writer, as any other child fd's data.
        """
        gate = self._gate
        if childFD == 3 and gate is not None:
            self._gateWritten = True
            try:
                os.set_blocking(gate, False)
                data = data[os.write(gate, data) :]
            except BlockingIOError:
                pass
            except OSError:  # the child is gone: nothing more to say to it
                return
            if not data:
                return
            self._gate = None
            writer = ProcessWriter(self._reactor, self, 3, gate, forceReadHack=True)
            self.pipes[3] = writer
        Process.writeToChild(self, childFD, data)

    def closeChildFD(self, childFD: int) -> None:
        if childFD == 3 and self._gate is not None:
            self._closeGate()
        else:
            Process.closeChildFD(self, childFD)

    def _closeGate(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            os.close(gate)

    def passedGate(self) -> bool:
        """
        Has the child read its gate's line (and so may have run its
        command)? Not if the line was never written, nor while some of it
        is still in the pipe.
        """
        if not self._gateWritten:
            return False
        if self._gateCheck is None:
            return True  # (cannot tell: it may have)
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(self._gateCheck, termios.FIONREAD, unread)
        except OSError:
            return True
        return unread[0] == 0

    def processEnded(self, status: int) -> None:
        self._closeGate()
        # First: a gate writer still holding some of a long line gets EPIPE
        # once no read end is left (the child's went with it).
        check, self._gateCheck = self._gateCheck, None
        if check is not None:
            os.close(check)
        Process.processEnded(self, status)

    def _getReason(self, status: int) -> BaseException:
        return (
            self._lost if self._lost is not None else Process._getReason(self, status)
        )

    def signalProcess(self, signalID: Any) -> None:
        """Signal the child through its pidfd: never a reused pid."""
        if signalID in ("HUP", "STOP", "INT", "KILL", "TERM"):
            signalID = getattr(signal, f"SIG{signalID}")
        if self.pid is None or self.pidfd is None:
            raise error.ProcessExitedAlready()
        try:
            signal.pidfd_send_signal(self.pidfd, signalID)
        except ProcessLookupError:
            raise error.ProcessExitedAlready() from None

    def orphaned(self) -> None:
        """
        The spawner died before this child's end: its status is lost. Kill
        it and end it as killed once its pidfd says it is gone.
        """
        if self.pidfd is None or self._watch is not None:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._watch = PidfdWatch(self._reactor, self.pidfd, self._gone)
        self._watch.startReading()  # type: ignore[no-untyped-call]

    def _gone(self) -> None:
        if self._watch is not None:
            self._watch.stopReading()  # type: ignore[no-untyped-call]
            self._watch = None
        pidfd, self.pidfd = self.pidfd, None
        self._lost = SpawnerLost(self.passedGate())
        self.processEnded(KILLED)
        if pidfd is not None:
            os.close(pidfd)

    def __repr__(self) -> str:
        return f"<SpawnedProcess pid={self.pid} status={self.status}>"


class PidfdWatch(FileDescriptor):
    """Call C{gone} once the process of C{pidfd} has ended (readable)."""

    def __init__(self, reactor: Any, pidfd: int, gone: Any) -> None:
        FileDescriptor.__init__(self, reactor)
        self._fd = pidfd
        self._gone = gone

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._gone()

    def connectionLost(self, reason: Failure) -> None:
        """Nothing: the pidfd belongs to its process transport."""


class EndsReader(FileDescriptor):
    """The read end of a spawner's events pipe: each child's end."""

    def __init__(self, reactor: Any, fd: int, generation: Generation) -> None:
        FileDescriptor.__init__(self, reactor)
        self._fd = fd
        self._generation = generation
        self._partial = b""

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> object:
        data = readSome(self._fd, ENDED.size * 4096)
        if not isinstance(data, bytes):
            return data
        self.doReadBytes(data)
        return None

    def drain(self) -> None:
        """Take in every end report already in the pipe, without waiting."""
        while True:
            data = readSome(self._fd, ENDED.size * 4096)
            if not isinstance(data, bytes):
                return
            self.doReadBytes(data)

    def doReadBytes(self, data: bytes) -> None:
        data = self._partial + data
        whole = len(data) - len(data) % ENDED.size
        self._partial = data[whole:]
        self._generation.ended(ENDED.iter_unpack(data[:whole]))

    def connectionLost(self, reason: Failure) -> None:
        FileDescriptor.connectionLost(self, reason)
        os.close(self._fd)
        self._generation.lost()


class SpawnerProtocol(ProcessProtocol):
    """A spawner's own process: what it says goes to the log."""

    log = Logger()

    def __init__(self) -> None:
        self._endWaiters: list[Deferred[None]] = []
        self.ended = False

    def whenEnded(self) -> Deferred[None]:
        if self.ended:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._endWaiters.append(d)
        return d

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.log.warn(
            "job spawner: {text}", text=data.decode("utf-8", "replace").rstrip()
        )

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.log.info("job spawner ended: {why}", why=reason.getErrorMessage())
        waiters, self._endWaiters = self._endWaiters, []
        for d in waiters:
            d.callback(None)


class Generation:
    """
    One spawner process and what belongs to it: its socket, its end
    reports, the standbys it announced and the children it forked. A
    spawner that died is replaced by a new generation; the old one's
    children are orphaned once its pipe says all its reports are in.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, launcher: str, environment: dict[str, str]
    ) -> None:
        self.reactor = reactor
        #: Told how many running jobs were killed when this spawner died
        #: on its own (L{lost}; not when the server stopped it).
        self.onLost: Callable[[int], object] | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            readEnd, writeEnd = os.pipe()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self.protocol = SpawnerProtocol()
        try:
            self.process = reactor.spawnProcess(
                self.protocol,
                launcher,
                [launcher, "--spawner"],
                env=environment,
                path="/",
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno(), 4: writeEnd},
            )
        except BaseException:
            ours.close()
            os.close(readEnd)
            raise
        finally:
            theirs.close()
            os.close(writeEnd)
        self.socket: socket.socket | None = ours
        #: Children forked by this spawner whose end is not yet taken in.
        self.live: dict[int, SpawnedProcess] = {}
        #: Children whose pid an earlier child in L{live} still has, in the
        #: order they were forked (see L{adopt}).
        self._after: dict[int, deque[SpawnedProcess]] = {}
        #: Standbys announced and not yet used: pid, start time, pidfd
        #: (a negative pid: -errno, no standby could be forked).
        self.announced: deque[tuple[int, int, int]] = deque()
        #: The spawner said it could not fork: the next spawn asks again.
        self.askAgain = False
        #: The last wait for a standby ran out: until the spawner announces
        #: one again (stopped, or starved of CPU), spawns fail at once
        #: instead of each holding the reactor, every request, that long.
        self.late = False
        #: Ended pids whose 'R' could not be sent yet (a full socket), and
        #: when they are asked again.
        self._unreaped: list[int] = []
        self._reapCall: IDelayedCall | None = None
        #: Standbys killed unused (held by a tracer): their ends are due.
        self._givenUp: set[int] = set()
        # Its end calls lost().
        self.endsReader = EndsReader(reactor, readEnd, self)
        self.endsReader.startReading()  # type: ignore[no-untyped-call]
        self.log.info(
            "job spawner started (pid {pid})", pid=getattr(self.process, "pid", None)
        )

    def adopt(self, pid: int, process: SpawnedProcess) -> None:
        """
        A child forked by this spawner, from now until its end is taken in.

        An 's' child is reaped as soon as it ends, so its pid is free before
        its end record has been read here: a later child may have the same
        pid while the earlier one is still live here. The spawner writes
        end records in the order the children ended, and the later child
        cannot end before it was forked, so the first record for that pid
        is the earlier child's: the later one waits behind it.
        """
        if pid in self.live:
            self._after.setdefault(pid, deque()).append(process)
        else:
            self.live[pid] = process

    def _ending(self, pid: int) -> SpawnedProcess | None:
        """The child an end record for C{pid} is about (None: a standby)."""
        process = self.live.pop(pid, None)
        later = self._after.get(pid)
        if later:
            self.live[pid] = later.popleft()
            if not later:
                del self._after[pid]
        return process

    def standby(self) -> tuple[int, int, int]:
        """The announced standby: pid, start time, pidfd (waits for one)."""
        if not self.announced:
            if self.askAgain:
                # The last try to fork failed: ask for a fresh one now.
                self.send([b"N"], [])
            self.askAgain = False
            # Announced ahead, it is almost always there already: one
            # recvmsg, no poll and no socket mode changes.
            self.receive(None, one=True)
            if not self.announced and not self.late:
                if not self.stopped():
                    self.receive(ANNOUNCE_TIMEOUT, one=True)
                self.late = not self.announced
            if not self.announced:
                raise SpawnerGone("the job spawner did not answer")
        pid, startTicks, pidfd = self.announced.popleft()
        if pid < 0:
            # It could not fork: this spawn fails; the next one asks again.
            self.askAgain = True
            raise OSError(-pid, os.strerror(-pid))
        if pidfd == NO_PIDFD:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                if e.errno in SERVER_SHORT_OF:
                    # Still no descriptor: it waits for the next spawn.
                    self.announced.appendleft((pid, startTicks, NO_PIDFD))
                raise
        if bootTicks() - startTicks > STANDBY_LOOK_TICKS:
            # It has waited a while: it may have been stopped meanwhile.
            if not self._standbyReady(pid, pidfd):
                return self.standby()  # that one is given up: the next
        return pid, startTicks, pidfd

    def _standbyReady(self, pid: int, pidfd: int) -> bool:
        """
        Can the standby C{pid}, which has waited a while, take a job? It
        could have been stopped meanwhile, and would hold the job as long:
        stopped by a signal (SIGSTOP: state T), it is continued (SIGCONT),
        as a stopped spawner is; held by a tracer (t: SIGCONT does not end
        that), it is given up (killed: it has no job; its end is due).
        """
        state = processState(pid)
        if state not in (b"T", b"t"):
            return True
        given = state == b"t"
        self.log.warn(
            "the job spawner's standby (pid {pid}) is stopped{how}: {what}",
            pid=pid,
            how=" by a tracer" if given else "",
            what="given up, the job goes to the next"
            if given
            else "continued (SIGCONT) for the next job",
        )
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL if given else signal.SIGCONT)
        except ProcessLookupError:
            pass
        if given:
            self._givenUp.add(pid)
            os.close(pidfd)
        return not given

    def send(self, parts: list[bytes], fds: list[int]) -> None:
        """
        One message to the spawner.

        @raise OSError: EAGAIN: its socket is full (it is slow), nothing is
            lost; L{SpawnerGone}: it is gone (this generation is closed).
        """
        sock = self.socket
        if sock is None:
            raise SpawnerGone()
        try:
            sock.sendmsg(parts, _rights(fds) if fds else [])
        except BlockingIOError:
            raise OSError(errno.EAGAIN, "the job spawner is busy") from None
        except OSError as e:
            self.close()
            raise SpawnerGone(f"the job spawner is gone: {e.strerror}") from None

    def receive(self, timeout: float | None, *, one: bool = False) -> None:
        """
        Take in the announcements waiting on the socket (only the first,
        if C{one}); with a C{timeout}, wait that long for one if none is
        there.
        """
        sock = self.socket
        while sock is not None:
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                try:
                    data, ancillary, _, _ = sock.recvmsg(
                        ANNOUNCE.size, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC
                    )
                finally:
                    if timeout is not None:
                        sock.setblocking(False)
            except (BlockingIOError, InterruptedError, TimeoutError):
                return  # none waiting; or, slow to answer: this spawn fails
            except OSError:
                self.close()
                return
            fds = _received(ancillary)
            kind, pid, startTicks = (
                ANNOUNCE.unpack(data) if len(data) == ANNOUNCE.size else (b"", 0, 0)
            )
            self.late = False
            if kind == b"A" and len(fds) == 1:
                self.announced.append((pid, startTicks, fds[0]))
            elif kind == b"A" and not fds and pid > 0:
                # Its pidfd came when no descriptor was free: the kernel
                # dropped it. The standby is there (a zombie at worst until
                # its 'R'): its pidfd is opened when it is taken (standby).
                self.announced.append((pid, startTicks, NO_PIDFD))
            elif kind == b"F" and not fds and pid > 0:
                self.announced.append((-pid, 0, NO_PIDFD))
            else:
                for fd in fds:
                    os.close(fd)
                self.close()  # EOF, or not the spawner's protocol
                return
            if one:
                return
            timeout = None

    def ended(self, records: Any) -> None:
        """End records from the spawner: each child's end, then reap them."""
        pids, self._unreaped = self._unreaped, []
        for pid, status in records:
            if status & REAPED:
                status &= ~REAPED
            else:
                pids.append(pid)
            process = self._ending(pid)
            if process is None:
                self._standbyDied(pid)
                continue
            pidfd, process.pidfd = process.pidfd, None
            try:
                process.processEnded(status)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        self._reap(pids)

    def _reap(self, pids: list[int]) -> None:
        """
        Ask the spawner to reap C{pids}. A full socket keeps the rest for
        the next ends, or L{REAP_AGAIN} seconds from now, whichever comes
        first: they waited for the next job to end, zombies holding their
        pids, their cgroups kept (a code review, round 39).
        """
        for at in range(0, len(pids), MAX_REAP):
            batch = pids[at : at + MAX_REAP]
            try:
                self.send([b"R", struct.pack(f"={len(batch)}i", *batch)], [])
            except SpawnerGone:
                return  # init reaps its children
            except OSError:
                self._unreaped = pids[at:]
                if self._reapCall is None:
                    self._reapCall = self.reactor.callLater(REAP_AGAIN, self._reapAgain)
                return

    def _reapAgain(self) -> None:
        """The reaps a full socket held back, asked again."""
        self._reapCall = None
        pids, self._unreaped = self._unreaped, []
        self._reap(pids)

    def _standbyDied(self, pid: int) -> None:
        """An announced standby ended before any job was given to it."""
        self.receive(None)
        for entry in self.announced:
            if entry[0] == pid:  # (a failure's entry has a negative pid)
                self.announced.remove(entry)
                if entry[2] >= 0:
                    os.close(entry[2])
                return
        if pid in self._givenUp:
            self._givenUp.discard(pid)
            return
        self.log.warn("job spawner: end of unknown pid {pid}", pid=pid)

    def close(self) -> None:
        """Use this spawner no more (it exits at EOF on its socket)."""
        if self._reapCall is not None and self._reapCall.active():
            self._reapCall.cancel()
        self._reapCall = None
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        while self.announced:
            pidfd = self.announced.popleft()[2]
            if pidfd >= 0:
                os.close(pidfd)

    @property
    def pid(self) -> int | None:
        """The spawner's own pid (None: it has ended)."""
        return getattr(self.process, "pid", None)

    def state(self) -> bytes:
        """The spawner's state letter in C{/proc/PID/stat} (b"": gone)."""
        pid = self.pid
        return b"" if pid is None else processState(pid)

    def stopped(self) -> bool:
        """
        Is the spawner stopped (SIGSTOP, or a tracer's stop: state T or t
        in C{/proc/PID/stat})? It cannot answer until it is continued.
        """
        return self.state() in (b"T", b"t")

    def silent(self) -> str | None:
        """
        Why this spawner cannot take jobs now, in a few words (None: it can,
        or it is closed): stopped, or no standby announced when a spawn
        needed one (L{late}) and none since.
        """
        if self.late:
            self.receive(None)  # an announcement since ends the silence
        if self.socket is None:
            return None  # (or EOF: it is gone, and the next job starts anew)
        if self.stopped():
            return "stopped"
        if self.late:
            return "no standby announced"
        return None

    def kill(self) -> None:
        """
        The spawner stopped reporting ends (SIGSTOPped, or stuck in the
        kernel): SIGKILL it, take in the ends it did report, and kill the
        children it still had, as when it dies (L{lost}): their ends come
        from their pidfds, as killed.
        """
        try:
            self.process.signalProcess("KILL")
        except (error.ProcessExitedAlready, OSError):
            pass
        self.endsReader.drain()
        self.lost(quiet=True)

    def lost(self, quiet: bool = False) -> None:
        """
        The events pipe reached its end: the spawner is gone, and every end
        it reported has been taken in. The children left are orphans: they
        are killed (their exit statuses died with their parent).

        @param quiet: the caller has said why (L{kill}).
        """
        self.close()
        live = [*self.live.values(), *(p for q in self._after.values() for p in q)]
        self.live, self._after = {}, {}
        if live and not quiet:
            self.log.error(
                "job spawner ended with {count} job(s) still running: "
                "they are killed (their exit status is lost)",
                count=len(live),
            )
            if self.onLost is not None:
                self.onLost(len(live))
        for process in live:
            process.orphaned()


class Spawner:
    """
    The server's side of the spawner: started at the first spawn, again
    after it died; continued if stopped too long (L{silence}); L{stop} at
    shutdown.

    @param launcher: the compiled launcher (C{launcher.c}).
    @param environment: the spawner's environment, which the launcher
        runs with until it sets the job's own.
    @param ready: called before a spawner is started; raises an C{OSError}
        if the launcher cannot be started now (L{launcher.KeptLauncher}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        launcher: str,
        environment: dict[str, str],
        ready: Callable[[], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.launcher = launcher
        self._environment = environment
        self._ready = ready
        #: The spawner in use (None: none yet, or it is gone).
        self.current: Generation | None = None
        #: How many spawners were started (the first, then after deaths).
        self.started = 0
        #: Seconds of silence after which a stopped spawner is continued.
        self.silenceLimit = SILENCE_LIMIT
        #: The generation found silent, and since when (L{silence}).
        self._silent: tuple[Generation, float] | None = None
        #: A look at a silent spawner once its silence reaches the limit.
        self._silenceCall: IDelayedCall | None = None
        #: The generation whose silence the log has told of (L{_revive}).
        self._told: Generation | None = None
        #: Seconds between looks at the spawner in use (L{_watch}).
        self.watchInterval = WATCH_INTERVAL
        #: The next look at the spawner in use.
        self._watchCall: IDelayedCall | None = None
        #: When a spawner last died on its own with jobs running, and how
        #: many it took (L{Generation.lost}); None: never.
        self.lost: tuple[float, int] | None = None

    def spawnProcess(
        self,
        proto: IProcessProtocol,
        args: list[str],
        *,
        stdin: bool = True,
        join: Sequence[int] = (),
        reaped: bool = False,
    ) -> SpawnedProcess:
        """
        Start the launcher with C{args} (C{args[0]} is the launcher) in the
        standby; fds as C{{0: "w", 1: "r", 2: "r", 3: "w"}}.

        @param stdin: False: the child's fd 0 is C{/dev/null}, not a pipe
            (its reads see the end at once, as from a pipe closed at once),
            opened for this child alone: an open file shared between jobs
            would share its flags and locks, a channel between users.
        @param join: the job's cgroup, as its C{cgroup.procs} files opened
            for writing (the caller's: they are not closed here). The child
            joins it before its gate.
        @param reaped: the child is reaped as soon as it ends, not kept a
            zombie until its end is taken in (a job without a cgroup).
        @raise OSError: no spawner, no standby, or no pipe.
        """
        if args[0] != self.launcher:
            raise ValueError(f"the spawner runs {self.launcher}, not {args[0]}")
        if len(join) > MAX_JOIN:
            raise OSError(errno.EINVAL, f"at most {MAX_JOIN} cgroup.procs files")
        message = encodeArguments(args[1:])
        if len(message) + START.size > MAX_REQUEST:
            raise OSError(errno.E2BIG, "the job's arguments are too long")
        if self._silent is not None and self.silence() is not None:
            # (Continued if stopped for too long.) Handed to a standby, the
            # job would wait in the silent spawner's socket.
            raise SpawnerGone("the job spawner did not answer")
        generation = self.running()
        try:
            return self._spawnIn(generation, proto, message, stdin, join, reaped)
        except SpawnerGone:
            if generation.socket is not None:
                # Alive but silent (stopped, starved): never replaced (its
                # jobs would die); continued if stopped (see silence).
                self.silence()
                raise
        # It died before the reactor saw it (its socket ended under this
        # spawn): the job starts in a new one, rather than fail for a
        # spawner that is no more.
        return self._spawnIn(self.running(), proto, message, stdin, join, reaped)

    def _spawnIn(
        self,
        generation: Generation,
        proto: IProcessProtocol,
        message: bytes,
        stdin: bool,
        join: Sequence[int],
        reaped: bool,
    ) -> SpawnedProcess:
        """L{spawnProcess} in the spawner of C{generation}."""
        pid, startTicks, pidfd = generation.standby()
        ends: dict[int, int] = {}
        theirs: list[int] = []
        try:
            for childFD in range(4):
                if childFD == 0 and not stdin:
                    theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                    continue
                readEnd, writeEnd = os.pipe()
                if childFD in (0, 3):
                    ends[childFD], child = writeEnd, readEnd
                else:
                    ends[childFD], child = readEnd, writeEnd
                theirs.append(child)
            generation.send(
                [START.pack(b"s" if reaped else b"S", pid), message], [*theirs, *join]
            )
            # The gate's read end is kept (see SpawnedProcess.passedGate).
            gateCheck = theirs.pop()
        except BaseException:
            if generation.socket is not None:
                # The standby was not told: it waits for the next spawn.
                generation.announced.appendleft((pid, startTicks, pidfd))
            else:
                os.close(pidfd)  # that spawner is gone, and its standby
            for fd in ends.values():
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return SpawnedProcess(
            generation, pid, pidfd, startTicks, ends, proto, gateCheck
        )

    def running(self) -> Generation:
        """
        The spawner in use; a new one if there is none, or it is gone.

        @raise OSError: a new one is needed, and its launcher cannot be
            started now (see C{ready}).
        """
        generation = self.current
        if generation is None or generation.socket is None:
            if self._ready is not None:
                self._ready()
            generation = self.current = Generation(
                self.reactor, self.launcher, self._environment
            )
            generation.onLost = self._lostJobs
            self.started += 1
            if self._watchCall is None:
                self._watchCall = self.reactor.callLater(
                    self.watchInterval, self._watch
                )
        return generation

    def _watch(self) -> None:
        """Look at the spawner in use (L{silence}), again and again while
        there is one."""
        self._watchCall = None
        generation = self.current
        if generation is None or generation.socket is None:
            return  # (the next spawner starts the watch again)
        self.silence()
        self._watchCall = self.reactor.callLater(self.watchInterval, self._watch)

    def stop(self) -> Deferred[None]:
        """
        At shutdown, once every job has ended: the spawner exits (EOF on
        its socket). Fires once its process has ended.
        """
        self._quiet()
        if self._watchCall is not None and self._watchCall.active():
            self._watchCall.cancel()
        self._watchCall = None
        generation, self.current = self.current, None
        if generation is None:
            return succeed(None)
        generation.close()
        return generation.protocol.whenEnded()

    def _lostJobs(self, count: int) -> None:
        self.lost = (self.reactor.seconds(), count)

    def silence(self) -> str | None:
        """
        Why the spawner cannot take jobs now (None: it can, or none runs:
        the next job starts one), for the executor's health. A spawner
        stopped (SIGSTOP) for L{silenceLimit} seconds is continued here
        (L{_revive}); looked at again by a timer while it is silent, so
        that it is even if no job comes.
        """
        generation = self.current
        why = generation.silent() if generation is not None else None
        if generation is None or why is None:
            if self._silent is not None:
                self.log.info("the job spawner answers again")
            self._quiet()
            return None
        now = self.reactor.seconds()
        if self._silent is None or self._silent[0] is not generation:
            self._quiet()
            self._silent = (generation, now)
            self.log.warn(
                "the job spawner (pid {pid}) does not answer ({why}): new jobs "
                "are refused; looked at again in {limit:g}s",
                pid=generation.pid,
                why=why,
                limit=self.silenceLimit,
            )
        since = self._silent[1]
        if now - since >= self.silenceLimit:
            self._revive(generation, why, now - since)
            self._silent = (generation, now)  # looked at again in as long
            return f"the job spawner does not answer ({why})"
        if self._silenceCall is None:
            self._silenceCall = self.reactor.callLater(
                since + self.silenceLimit - now, self._lookAgain
            )
        return f"the job spawner does not answer ({why})"

    def _lookAgain(self) -> None:
        self._silenceCall = None
        self.silence()

    def _quiet(self) -> None:
        """Forget a silence: none now, or the spawner is gone or stopped."""
        self._silent = None
        if self._silenceCall is not None and self._silenceCall.active():
            self._silenceCall.cancel()
        self._silenceCall = None

    def _revive(self, generation: Generation, why: str, seconds: float) -> None:
        """
        C{generation} has been silent for C{seconds}. Stopped by a signal
        (state T: every job was refused for as long as it stayed so), it
        is continued. Otherwise (a debugger's stop, or starved) it is left
        as it is, said once: killing it would kill its running jobs.
        """
        if self._silenceCall is not None and self._silenceCall.active():
            self._silenceCall.cancel()
        self._silenceCall = self.reactor.callLater(self.silenceLimit, self._lookAgain)
        pid = generation.pid
        if pid is not None and generation.state() == b"T":
            self.log.warn(
                "the job spawner (pid {pid}) was stopped for {seconds:.0f}s, and "
                "every new job refused: continued (SIGCONT)",
                pid=pid,
                seconds=seconds,
            )
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
            return
        if self._told is generation:
            return
        self._told = generation
        self.log.error(
            "the job spawner (pid {pid}) has not answered for {seconds:.0f}s "
            "({why}): new jobs are refused until it does; it is not killed, "
            "since its running jobs would die with it (kill it to have it "
            "replaced at the next job)",
            pid=pid,
            seconds=seconds,
            why=why,
        )

    def wedged(self) -> int:
        """
        At shutdown, the spawner has not reported the ends of jobs killed
        long ago (it is stopped, or stuck): L{Generation.kill} it. Returns
        how many of its children were still unreported.
        """
        generation = self.current
        if generation is None:
            return 0
        count = len(generation.live) + sum(len(q) for q in generation._after.values())
        if count:
            generation.kill()
        return count


def _rights(fds: list[int]) -> list[tuple[int, int, array.array[int]]]:
    """The ancillary data that passes C{fds} (SCM_RIGHTS)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]


def _received(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in C{recvmsg}'s ancillary data."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)
