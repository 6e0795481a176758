"""One job's process: a thin ProcessProtocol over the object that owns its state."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...errors import Conflict
from ...jobs.ending import Ending, elapsedSeconds
from ...jobs.records import OUT_OF_MEMORY, JobRecord, JobStatus, signalName
from ...jobs.recovery import processesByUid
from ...jobs.spool import SHORT_OF, OutputSpool
from ...jobs.stopping import DEFAULT_STOP, StopRequest
from .cgroups import JobCgroup
from .leftovers import LeftoverJournal
from .pipes import drainInLargeReads, writeAtOnce
from .pump import Pumps
from .sandbox import GO
from .stalls import StallWatch, abortFuseOf, mountFuseControl
from .stdin import StdinFeed

#: Extra time after the group's SIGKILL before we stop waiting for pipes held
#: open by a process that left the job's session.
ABANDON_AFTER_KILL = 1.0

#: After a job's end, what it left (on the TERM of its end) is looked for
#: first this long on, then at twice the last wait, up to L{LEFT_LOOK_MOST}:
#: once none is left, the job is done with (its slot, its uid given back),
#: not at the end of its grace (a job that left a C{sleep &} held its slot
#: ten seconds, or the grace asked for, though its leftover went at once).
LEFT_LOOK_FIRST = 0.05
LEFT_LOOK_MOST = 1.0

#: Seconds after its main process's end that a job whose pipes are still
#: held, with nothing to signal (no cgroup: its leftovers left the session),
#: has that end stored (L{JobProcess._storeMainExit}).
MAIN_EXIT_STORED_AFTER = 1.0

#: At most how long after a stop's signal the main process's end may come
#: for it to be taken as an end of its own, the signal come as it was
#: exiting (L{JobProcess._stopMissed}): a command that ignored the signal
#: for the instant it came, then took its default back and exited 0 seconds
#: later, ended COMPLETED, its stop or timeout unsaid (attacker from inside
#: a job, round 41).
STOP_MISSED_WITHIN = 1.0

#: Why a job killed at its memory limit failed.
OOM_ERROR = f"{OUT_OF_MEMORY}: killed at its memory limit"
#: Added to a job's end when the memory limit killed one of its processes
#: other than the main one.
CHILD_OOM_NOTE = (
    f"{OUT_OF_MEMORY}: a process of the job was killed at its memory limit "
    "(memory_bytes; files in its private /tmp count too)"
)
#: Why a job failed where the end says no more than an exit status 1: the
#: exec chain's C{unshare --fork} reports its command killed by a signal so,
#: and a command may exit 1 itself after one of its processes was killed.
OOM_MAYBE_ERROR = (
    f"{OUT_OF_MEMORY}: a process was killed at its memory limit (the command's "
    "exit status 1 does not say whether it was)"
)


class SpawnerLost(ProcessTerminated):
    """
    A child's end when the spawner that forked it died first: its status
    went with its parent, and the server killed it (SIGKILL). C{ran}: it
    had passed its gate (its command may have run); if not, nothing of the
    command ran.
    """

    def __init__(self, ran: bool) -> None:
        super().__init__(None, signal.SIGKILL, signal.SIGKILL)  # type: ignore[no-untyped-call]
        self.ran = ran


class JobProcessProtocol(ProcessProtocol):
    """Forward a child's bytes and exit to its L{JobProcess}: nothing more."""

    def __init__(self, job: JobProcess) -> None:
        self._job = job
        self._stdout = job.stdout.write
        self._stderr = job.stderr.write

    def connectionMade(self) -> None:
        assert self.transport is not None
        job = self._job
        try:
            if job.stdinFeed is None:
                self.transport.closeStdin()
            else:
                job.stdinFeed.attach(self.transport)
            drainInLargeReads(
                self.transport,
                job.pump,
                {1: job.stdout, 2: job.stderr},
                job.stallWatch,
                job.killStalled,
            )
        except Exception as e:
            # Made whole, then killed behind its gate: it ends FAILED. The
            # spawn swallowed the error, and the job was left half-made
            # (no pid, never run, no timeout, its stop never answered, its
            # slot and uid held: code review round 40).
            job.log.failure("job {job}: its pipes were not set up", job=job.record.id)
            job.started(self.transport)
            job.abort(f"cannot start: the server could not set up its pipes: {e}")
            return
        job.started(self.transport)

    def outReceived(self, data: bytes) -> None:
        self._stdout(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr(data)

    def processExited(self, reason: Failure) -> None:
        self._job.mainExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._job.pipesClosed()


class GroupNumbers:
    """
    Which job each process-group number belongs to, for the jobs signalled
    by number (no cgroup). A job's group number is its leader's pid. Once
    the leader is reaped and the group has emptied, the number is free, and
    when the pid numbers have gone round it can come back as another job's
    leader (another user's, say): from then on it is that job's, and the
    earlier job has nothing left under it. Nor once any other process has
    the leader's pid (C{pidReused}): the kernel gives a pid out again only
    when no group has that number, so the job's group had emptied.
    L{JobProcess} claims its number when it starts and signals by number
    only while it holds it.

    Nor once a process of another uid is in the group after the leader was
    reaped (L{takenOver}): the group emptied, and a new process got the
    number as its pid, made a session of it and left (a double-forked
    daemon), so that no process has the pid while the group lives on.

    @param pidReused: C{(pid, start)}: is that pid now another process than
        the one started then (C{jobs.recovery.pidReused})? None: not asked.
    @param takenOver: C{(pgid, uid)}: does a process of another uid than
        C{uid} run in group C{pgid} (C{jobs.recovery.groupTakenOver})? None:
        not asked.
    """

    def __init__(
        self,
        pidReused: Callable[[int, int | None], bool] | None = None,
        takenOver: Callable[[int, int], bool] | None = None,
    ) -> None:
        self._owners: dict[int, JobProcess] = {}
        self._pidReused = pidReused
        self._takenOver = takenOver

    def claim(self, pgid: int, job: JobProcess) -> None:
        """C{job}'s leader has pid C{pgid}: the number is C{job}'s now."""
        self._owners[pgid] = job

    def holds(self, pgid: int, job: JobProcess) -> bool:
        """
        Is C{pgid} still C{job}'s: claimed, no later job's since, and its
        leader's pid no other process's?
        """
        if self._owners.get(pgid) is not job:
            return False
        return self._pidReused is None or not self._pidReused(
            pgid, job.record.proc_start
        )

    def takenOver(self, pgid: int, job: JobProcess, uid: int) -> bool:
        """
        Is C{pgid}, C{job}'s group whose leader is gone, another's now (a
        process of another uid than C{uid}, the job's, in it)? Then it is
        released. A scan of every process: asked only before a SIGKILL at
        the end of a grace (its group had all that time to empty), not at
        each job's end.
        """
        if self._takenOver is None or self._owners.get(pgid) is not job:
            return False
        if not self._takenOver(pgid, uid):
            return False
        del self._owners[pgid]
        return True

    def release(self, pgid: int, job: JobProcess) -> None:
        """C{job} is done with C{pgid} (unless a later job has it)."""
        if self._owners.get(pgid) is job:
            del self._owners[pgid]

    def __len__(self) -> int:
        return len(self._owners)


class JobProcess:
    """
    The live side of one job: its process group, output spools and timers.

    The job's process runs in its own session, so its pid is also its process
    group id and every signal goes to the whole group. When the main process
    exits (or a user stops the job), the group gets SIGTERM, then SIGKILL after
    C{grace} seconds. The record is finished exactly once, in L{_finish}, when
    the main process was reaped and its output pipes are closed.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        record: JobRecord,
        stdout: OutputSpool,
        stderr: OutputSpool,
        grace: float,
        signalGroupOf: Callable[[int, int], bool],
        cgroup: JobCgroup | None = None,
        timeout: float | None = None,
        stdinFeed: StdinFeed | None = None,
        pumps: Pumps | None = None,
        groups: GroupNumbers | None = None,
        leftovers: LeftoverJournal | None = None,
        uid: int | None = None,
        stallWatch: StallWatch | None = None,
        elapsed: Callable[[], float] = elapsedSeconds,
        endsBy: Callable[[int, int], bool | None] | None = None,
        ended: Callable[[int], bool] | None = None,
    ) -> None:
        """
        @param elapsed: a clock no step of the wall clock moves (L{Ending}).
        @param endsBy: would a signal end a process by its default action
            (L{endsByDefault}, the default)?
        @param ended: has a process ended (L{hasEnded}, the default)?
        @param groups: the group numbers of the executor's jobs (None: this
            job's number is taken as its own until it is cleaned up).
        @param leftovers: where a job that ends with processes left to kill
            is noted until they are gone (None: nowhere).
        @param uid: the uid it runs as (None: not known), by which a group
            number taken over by another's session is told (L{GroupNumbers}).
        @param stallWatch: sees the reactor's reads of its pipes, and kills
            it if it holds one (L{killStalled}); None: not watched.
        """
        self._uid = uid
        self.stallWatch = stallWatch
        #: Seconds the reactor waited on its pipe's lock before it was
        #: killed for it (L{killStalled}); None: it was not.
        self._stalledFor: float | None = None
        self._clock = reactor
        self.record = record
        self.stdout = stdout
        self.stderr = stderr
        self._grace = grace
        #: The grace of the SIGTERM that was sent (a stop's own, or the server's).
        self._graceUsed = grace
        self._signalGroupOf = signalGroupOf
        self.cgroup = cgroup
        self._timeout = timeout
        #: The job's stdin, fed by the API; None: closed at start.
        self.stdinFeed = stdinFeed
        #: The threads a heavy stream may be read by (None: the reactor).
        self._pumps = pumps
        self._timedOut = False
        self._endsBy = endsByDefault if endsBy is None else endsBy
        self._ended = hasEnded if ended is None else ended
        #: The first stop's signal would have ended the main process by its
        #: default action (None: not known); see L{_stopMissed}.
        self._stopWouldEnd: bool | None = None
        #: When the first stop's signal was sent, and when the main
        #: process's end was read (L{_stopMissed}).
        self._stopSentAt: float | None = None
        self._exitedAt: float | None = None
        #: How many forks down from the process started the command runs:
        #: under a PID namespace the launcher (its init, then the command)
        #: or C{unshare --fork} waits for it (L{Sandbox.commandDepth}).
        self.commandDepth = 0
        self._killSent = False
        self._setupError: str | None = None
        #: What L{recorded} writes on the gate (fd 3): the go line, and for
        #: the launcher the job's environment (L{Sandbox.gate}).
        self.gateLine = GO
        self._gateClosed = False
        self._transport: IProcessTransport | None = None
        self._pgid: int | None = None
        self._groups = groups
        self._exit: Failure | None = None
        self._pipesClosed = False
        self._killTimer: IDelayedCall | None = None
        self._abandonTimer: IDelayedCall | None = None
        self._timeoutTimer: IDelayedCall | None = None
        self._removeTimer: IDelayedCall | None = None
        self._mainExitTimer: IDelayedCall | None = None
        self._leftTimer: IDelayedCall | None = None
        self._removeTries = 0
        self._ending = Ending(record, elapsed)
        self._cleanWaiters: list[Deferred[None]] = []
        self._leftovers = leftovers
        self._noted = False
        #: Told the record when a stop is first asked, or the main process
        #: ended with leftovers holding the pipes (to store it).
        self.onStop: Callable[[JobRecord], None] | None = None

    # -- start ---------------------------------------------------------------

    def started(self, transport: IProcessTransport) -> None:
        """The child exists: remember its pid, which is its group id."""
        self._transport = transport
        self._pgid = transport.pid
        if self._groups is not None and transport.pid is not None:
            self._groups.claim(transport.pid, self)
        self.record.pid = transport.pid
        # Never before its creation (a step back of the clock meanwhile).
        self.record.started_at = max(self._clock.seconds(), self.record.created_at)
        self._ending.started(self.record.started_at)
        if self._timeout is not None:
            self._timeoutTimer = self._clock.callLater(self._timeout, self._timesUp)

    @property
    def stdinClosed(self) -> bool:
        """Its stdin was fed and is closed (by a write, or by the job)."""
        return self.stdinFeed is not None and self.stdinFeed.closed

    def writeStdin(
        self, data: bytes, eof: bool, offset: int | None = None
    ) -> Deferred[int]:
        """
        Feed the job's stdin (L{StdinFeed.write}); fires, with the bytes
        taken, once the pipe can take more.

        @raise Conflict: the job has no stdin feed, or it is closed.
        """
        if self.stdinFeed is None:
            raise Conflict('the job was not started with "stdin": true')
        return self.stdinFeed.write(data, eof, offset)

    def pump(self, fd: int, reader: object) -> bool:
        """
        Output fd C{fd} turned heavy: read it in a thread of its own from
        now on, if one is free (L{Pumps.take}). True if so.
        """
        if self._pumps is None:
            return False
        return self._pumps.take(reader, self.stdout if fd == 1 else self.stderr)

    def recorded(self) -> None:
        """
        The store has the job's record: open the gate, and the command runs.
        A job whose setup failed gets the gate closed instead (it exits).
        """
        transport = self._transport
        if transport is None or self._gateClosed:
            return
        self._gateClosed = True
        if self._setupError is None and self._exit is None:
            writeAtOnce(transport, 3, self.gateLine)
        transport.closeChildFD(3)

    def failedToStart(self, error: str) -> None:
        """The command could not be started: FAILED with C{error}."""
        self.stdout.close()
        self.stderr.close()
        self._ending.finish(JobStatus.FAILED, self._clock.seconds(), error=error)
        self._fireCleaned()

    def withdraw(self) -> None:
        """
        The server could not start the job for now (L{CannotStartNow}):
        let go of what it holds (its cgroup, its identity once cleaned
        up); its record is left as it was, not ended.
        """
        self.stdout.close()
        self.stderr.close()
        self._fireCleaned()

    def abort(self, error: str) -> None:
        """
        The child exists but could not be set up (e.g. placed in its cgroup):
        kill it; it ends FAILED with C{error}.
        """
        self._setupError = error
        self.recorded()
        if self._transport is not None:
            try:
                self._transport.signalProcess(signal.SIGKILL)
            except (ProcessExitedAlready, OSError):
                pass

    def _timesUp(self) -> None:
        self._timeoutTimer = None
        # After the main process ended on its own, in time, what is left is
        # being ended already: no timeout of the job's.
        if self.record.stopped_by is not None:
            # A user's stop is ending it: the timeout bounds the run all the
            # same (the server's grace at most from now), and the end stays
            # the user's (its TERM was not sent again).
            self._hasten(DEFAULT_STOP)
            return
        if self._exit is None and self._exitedUnreported():
            # It ended in time, its end not read yet (the server or the
            # spawner was stalled: the timer came first at SIGCONT, and
            # the job was FAILED "timed out", exit 0: fault round 29).
            self.log.info(
                "job {job}: its timeout came as its end, not read yet: no timeout",
                job=self.record.id,
            )
            return
        if not self.record.status.ended and self._exit is None:
            self._timedOut = True
            # Stored now, as a stop is: a crash in its grace then closes
            # the job "timed out", not "restarted" (fault round 31). Its
            # end sets the error again (none if it exited on its own).
            self.record.error = self._timedOutError()
            if self.onStop is not None:
                self.onStop(self.record)
            self.log.info(
                "job {job} timed out after {timeout}s: stopping it",
                job=self.record.id,
                timeout=self._timeout,
            )
            self._judgedTerminate(DEFAULT_STOP)

    def snapshot(self) -> JobRecord:
        """The record, with the output counters brought up to date."""
        record = self.record
        if not record.status.ended:
            self._count()
        return record

    def _count(self) -> None:
        record = self.record
        record.stdout_bytes = self.stdout.size
        record.stderr_bytes = self.stderr.size
        record.stdout_dropped = self.stdout.dropped
        record.stderr_dropped = self.stderr.dropped
        record.output_lost = self.stdout.lost + self.stderr.lost

    # -- stop ----------------------------------------------------------------

    def stop(self, by: str, how: StopRequest = DEFAULT_STOP) -> Deferred[JobRecord]:
        """
        Send the job's processes C{how.signal} now (SIGTERM by default),
        SIGKILL after the grace period (C{how.grace}, else the server's).

        @return: fires with the record once the job has ended.
        """
        if self._exit is not None or self._exitedUnreported():
            # The main process ended on its own; only what it left in the
            # group is still being ended (its pipes held open). Its status
            # stands: the stop only hastens that end. Its leftovers had
            # their signal already, if a KILL is due: a shorter grace holds.
            if self._killTimer is not None:
                self._hasten(how)
            else:
                self._terminate(how)
            return self.whenEnded()
        if self.record.stopped_by is None and not self._timedOut:
            self.record.stopped_by = by
            self.record.stop_requested_at = self._clock.seconds()
            if self.onStop is not None:
                # Stored now: a crash in the grace then closes the job
                # STOPPED, by whom, not FAILED (fault round 7).
                self.onStop(self.record)
            self.log.info(
                "stopping job {job} (pid {pid}) for {user} with {signal}",
                job=self.record.id,
                pid=self._pgid,
                user=by,
                signal=signal.Signals(how.signal).name,
            )
            self._judgedTerminate(how)
        else:
            # Being stopped already, by a user or its timeout (whose end,
            # FAILED "timed out", stands: the stop was taken for the first,
            # its signal sent again, its shorter grace ignored, and the job
            # ended STOPPED: review round 29).
            self._hasten(how)
        return self.whenEnded()

    def _judgedTerminate(self, how: StopRequest) -> None:
        """
        Send the stop's signal (L{_terminate}), judging by a look at the
        command on each side of it whether the signal would end it by its
        default action (L{_stopMissed}). The look before is not enough: it
        may be stale when the signal is sent. A command seen without a
        handler before and with one after set it up between the two (a
        shell's trap as it starts): the signal is its to handle, its exit 0
        the stop's doing (code review 34). One seen alive without a handler
        before and gone after is not known: the server's thread may have
        waited between the looks (a loaded machine) while the command set
        up its handler, took the signal and exited 0, which was taken for
        an end of its own, COMPLETED (CI at 88ea0f4). Only one seen ended
        before the signal is sure to have ended on its own.
        """
        signum = how.signal
        before = self._stopWouldEnd = self._wouldEnd(signum)
        endedBefore = before is True and self._commandEnded()
        self._stopSentAt = self._clock.seconds()
        self._terminate(how)
        if before is True and not endedBefore and signum != signal.SIGKILL:
            # (No handler takes a KILL: an exit code after it is the job's
            # own, whatever is left to look at: session review 36.)
            after = self._wouldEnd(signum)
            if after is not True:
                self._stopWouldEnd = after

    def _commandEnded(self) -> bool:
        """Has the job's command ended (or is it not there)?"""
        if self._pgid is None:
            return True
        command = commandOf(self._pgid, self.commandDepth)
        return command is None or self._ended(command)

    def _wouldEnd(self, signum: int) -> bool | None:
        """
        Would C{signum} end the job's command by its default action (see
        L{_stopMissed})? The command's, not the launcher's or
        C{unshare}'s above it under a PID namespace, which ignore the stop
        signals (review round 31); None if not known.
        """
        if self._pgid is None:
            return None
        command = commandOf(self._pgid, self.commandDepth)
        if command is None:
            return None
        if self.commandDepth and samePrograms(command, self._pgid):
            # Not the command yet: the launcher's init has forked it, and it
            # has not run it (its signals are the launcher's; a handler the
            # command sets up comes after: its exit 0 on the stop's TERM was
            # taken for an end of its own, COMPLETED: code review 34).
            return None
        return self._endsBy(command, signum)

    def _exitedUnreported(self) -> bool:
        """
        Has the main process ended, its end not reported yet? The spawner
        reports it, and may be slow to (stopped: a stop that came meanwhile
        made a job that had exited 0 on its own STOPPED, fault round 27).
        """
        if self.record.stopped_by is not None or self._transport is None:
            return False
        exited = getattr(self._transport, "exited", None)
        if exited is not None:
            return bool(exited())
        # The server's own child (no spawner): asked without reaping it.
        return self._pgid is not None and childExited(self._pgid)

    def _hasten(self, how: StopRequest) -> bool:
        """
        A stop while the job is being stopped: a harder one holds (KILL, or
        a grace that ends before the first one's), else it waits for the
        same end. The first stop's signal is not sent again. True if it
        held (the end came sooner).
        """
        if self._pgid is None or self._killSent:
            return False
        if how.signal == signal.SIGKILL or how.grace == 0:
            self._cancelTimers("_killTimer")
            self._graceUsed = 0.0
            self._kill()
            return True
        timer = self._killTimer
        if timer is None:
            return False
        grace = self._grace if how.grace is None else how.grace
        left = timer.getTime() - self._clock.seconds()
        if grace < left:
            timer.cancel()
            self._graceUsed -= left - grace
            self._killTimer = self._clock.callLater(grace, self._kill)
            return True
        return False

    def stopForShutdown(self) -> Deferred[JobRecord]:
        """
        L{stop} at the server's shutdown: SIGKILL comes at most the
        server's grace from now, even where a user's stop asked for a
        longer one (an hour of it held the shutdown, until the service
        manager killed the server).
        """
        if self.record.status.ended:
            # Only what it left is still being ended (maybe under a user's
            # long grace): that end is hastened, nothing else changes.
            d = self.whenEnded()
        else:
            d = self.stop("server shutdown")
        self._graceAtMost(self._grace)
        return d

    def _graceAtMost(self, grace: float) -> None:
        """A pending SIGKILL comes at most C{grace} seconds from now."""
        timer = self._killTimer
        if timer is not None:
            left = timer.getTime() - self._clock.seconds()
            if left > grace:
                timer.cancel()
                self._graceUsed -= left - grace
                self._killTimer = self._clock.callLater(grace, self._kill)

    def endLeftovers(self, how: StopRequest) -> bool:
        """
        A stop of a job that has ended, whose leftovers are still under
        their grace: a harder one (KILL, a shorter grace) holds for them.
        True if it did (False: nothing of it is left to end, or the stop
        is no harder).
        """
        if not self.record.status.ended or self._killTimer is None:
            return False
        return self._hasten(how)

    def _terminate(self, how: StopRequest = DEFAULT_STOP) -> None:
        if self._pgid is None or self._killSent:
            return
        grace = self._grace if how.grace is None else how.grace
        if how.signal == signal.SIGKILL:
            self._cancelTimers("_killTimer")
            self._graceUsed = 0.0
            self._kill()
        elif not self._signal(how.signal):
            # Nothing is left to kill: never SIGKILL a group id that may be
            # reused once its last member is gone.
            self._cancelTimers("_killTimer")
            if self._exit is not None and not self._pipesClosed:
                # Yet the pipes are held open, by a process that left the
                # session (no cgroup reaches it): read no more a grace and a
                # second from now, as after a SIGKILL (with nothing signalled,
                # the job stayed RUNNING for good: streams round 23). A
                # later stop with a shorter grace brings that sooner.
                due = grace + ABANDON_AFTER_KILL
                timer = self._abandonTimer
                if timer is None or timer.getTime() - self._clock.seconds() > due:
                    if timer is not None:
                        timer.cancel()
                    self._abandonTimer = self._clock.callLater(due, self._abandonPipes)
        elif grace <= 0:
            self._cancelTimers("_killTimer")
            self._graceUsed = 0.0
            self._kill()
        elif self._killTimer is None:
            self._graceUsed = grace
            self._killTimer = self._clock.callLater(grace, self._kill)

    def _signal(self, signum: int) -> bool:
        """
        Signal the job's processes; True if anything was there to signal.

        With a cgroup, every process in it is signalled (SIGKILL through the
        cgroup's kill), even one that left the session. The session's group
        is signalled too. Until the child has called C{setsid} its group does
        not exist yet: then signal the child itself, which (unreaped) cannot
        be a reused pid.
        """
        assert self._pgid is not None
        if self.cgroup is not None:
            # Every process of the job is in its cgroup (the gate put the
            # leader there before it ran anything): signal only those, never
            # a process-group id that may have been reused.
            cgroup = self.cgroup
            if cgroup.kill() if signum == signal.SIGKILL else cgroup.signal(signum):
                return True
        elif self._holdsGroup() and self._signalGroupOf(self._pgid, signum):
            return True
        if self._exit is None and self._transport is not None:
            try:
                self._transport.signalProcess(signum)
            except (ProcessExitedAlready, OSError):
                return False
            return True
        return False

    def _kill(self) -> None:
        self._killTimer = None
        self._killSent = True
        self._cancelTimers("_leftTimer")
        groups, pgid = self._groups, self._pgid
        if (
            self.cgroup is None
            and self._exit is not None
            and groups is not None
            and pgid is not None
            and self._uid is not None
            and groups.takenOver(pgid, self, self._uid)
        ):
            # Its leftovers ended in the grace, and a daemon's session took
            # the number over: killed (fault round 34).
            self.log.warn(
                "job {job}: process group {pgid} is another user's now (what "
                "the job left ended in its grace): not killed",
                job=self.record.id,
                pgid=pgid,
            )
        if self._signal(signal.SIGKILL):
            self.log.info(
                "job {job}: process group {pgid} killed after {grace}s grace",
                job=self.record.id,
                pgid=self._pgid,
                grace=self._graceUsed,
            )
        if not self.record.status.ended:
            self._cancelTimers("_abandonTimer")
            self._abandonTimer = self._clock.callLater(
                ABANDON_AFTER_KILL, self._abandonPipes
            )
        else:
            self._fireCleaned()

    def killStalled(self, held: float) -> None:
        """
        The reactor's thread has waited C{held} seconds in the kernel for
        the lock of one of this job's pipes, which the job holds (L{stalls}):
        SIGKILL to every process of it, now, from the watch's thread (the
        reactor's cannot run). Its end says why. Called again (the watch
        found it holding the lock still, a second after its kill: a wait no
        kill ends, as for a page of a FUSE file its own thread serves), the
        FUSE connections its uid mounted are aborted too (attacker round 38
        from inside a job).
        """
        again = self._stalledFor is not None
        self._stalledFor = held
        if again and self._uid:
            self._abortFuse(self._uid)
        pgid = self._pgid
        try:
            if self.cgroup is not None:
                self.cgroup.kill()
            elif pgid is not None and (self._exit is None or self._holdsGroup()):
                os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass

    def _abortFuse(self, uid: int) -> None:
        """L{abortFuseOf} the processes of C{uid} (the watch's thread): its
        jobs' (a dynamic uid's is its job's; a mapped account's may be its
        other jobs' too, whose FUSE file systems are theirs)."""
        try:
            pids = processesByUid(range(uid, uid + 1)).get(uid, [])
            mountFuseControl()
            aborted = abortFuseOf(pids)
        except OSError:
            return
        if aborted:
            self.log.warn(
                "job {job}: held its pipe's lock past its kill: the FUSE "
                "connection(s) {aborted} it made aborted",
                job=self.record.id,
                aborted=aborted,
            )

    def _abandonPipes(self) -> None:
        # Something outside the group (it called setsid) holds our pipes:
        # stop reading them so the job can end.
        self._abandonTimer = None
        if self._transport is not None and not self._pipesClosed:
            self.log.warn(
                "job {job}: output pipes still open after SIGKILL; "
                "a process left the job's session",
                job=self.record.id,
            )
            self._transport.loseConnection()

    # -- end -----------------------------------------------------------------

    def mainExited(self, reason: Failure) -> None:
        """The main process was reaped; terminate what it left in its group."""
        self._exit = reason
        self._exitedAt = self._clock.seconds()
        self._terminate()
        self._maybeFinish()
        if self.record.status.ended:
            return
        if self._killTimer is not None:
            self._storeMainExit()
        elif self._abandonTimer is not None:
            # Without a cgroup, what holds the pipes may have left the
            # session (nothing to signal): stored if they are still held a
            # moment on (not for every job whose pipes close a turn after
            # its exit is reaped).
            self._mainExitTimer = self._clock.callLater(
                MAIN_EXIT_STORED_AFTER, self._storeMainExit
            )

    def _storeMainExit(self) -> None:
        """
        What it left holds the pipes: the main process's end is stored now
        (still RUNNING), so that a crash meanwhile closes the job as it
        ended, not FAILED "restarted" (its after_ok dependents never ran:
        fault round 28), and with why it failed where the exit does not
        say (a timeout, its memory limit: fault round 28b).
        """
        self._mainExitTimer = None
        assert self._exit is not None
        exitCode, signalNumber = exitOf(self._exit.value)
        record = self.record
        record.exit_code = exitCode
        record.signal = signalName(signalNumber) if signalNumber is not None else None
        record.error = None  # (the timeout's, stored as it fired, unless it held)
        if record.stopped_by is not None and self._stopMissed(exitCode, signalNumber):
            # It exited on its own as the stop came: no stop of it, as
            # _finish will say (stored with it, a crash in the grace made
            # it STOPPED: code review round 32).
            record.stopped_by = None
            record.stop_requested_at = None
        if self._setupError is not None:
            record.error = self._setupError
        elif self._timedOut and not self._stopMissed(exitCode, signalNumber):
            record.error = self._timedOutError()
        elif self._oomKilled(signalNumber, exitCode):
            record.error = self._oomError(signalNumber)
        if self.onStop is not None:
            self.onStop(record)

    def _stopMissed(self, exitCode: int | None, signalNumber: int | None) -> bool:
        """
        Did the main process exit on its own, not by the stop? It ended
        with an exit code, where the stop's signal would have ended it by
        its default action (not caught, ignored or blocked when it was
        sent): the signal came as it was exiting (pidfd had not said so
        yet), and had no effect on it; so its end was read soon after the
        signal, within L{STOP_MISSED_WITHIN} (one that came later ignored
        the signal for the instant it came: the stop's doing).
        """
        sent, exited = self._stopSentAt, self._exitedAt
        return (
            self._stopWouldEnd is True
            and exitCode is not None
            and signalNumber is None
            and (sent is None or exited is None or exited - sent <= STOP_MISSED_WITHIN)
        )

    def _timedOutError(self) -> str:
        unit = "second" if self._timeout == 1 else "seconds"
        return f"timed out after {self._timeout:.15g} {unit}"

    def _oomKilled(self, signalNumber: int | None, exitCode: int | None) -> bool:
        # (The exec chain's C{unshare --fork} reports a command killed by
        # a signal as its exit status 1: code review 37.)
        killed = signalNumber == signal.SIGKILL
        if self.commandDepth == 1 and exitCode == 1:
            killed = True
        return killed and self.cgroup is not None and self.cgroup.oomKilled()

    def _childOomKilled(self) -> bool:
        """
        Did the memory limit kill a process of the job other than its main
        one? (A compiler under make, a command of a script: the job read
        "exited with code 2", or COMPLETED, its output cut, with no word of
        the limit: operator round 40.) Only a job with a memory limit has
        its cgroup's count read (one small read at its end).
        """
        limits = self.record.limits or {}
        return (
            limits.get("memory_bytes") is not None
            and self.cgroup is not None
            and self.cgroup.oomKilled()
        )

    def _oomError(self, signalNumber: int | None) -> str:
        # (An exit status 1 says less than a KILL: session review 37.)
        return OOM_ERROR if signalNumber == signal.SIGKILL else OOM_MAYBE_ERROR

    def pipesClosed(self) -> None:
        """Every output pipe is closed (and the main process reaped)."""
        self._pipesClosed = True
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        if self._exit is None or not self._pipesClosed or self.record.status.ended:
            return
        self._finish(self._exit.value or ProcessDone(0))

    #: Every timer a job process owns (buildbot's runprocess keeps them so):
    #: one list, one way to cancel them.
    TIMERS = (
        "_killTimer",
        "_abandonTimer",
        "_timeoutTimer",
        "_removeTimer",
        "_mainExitTimer",
        "_leftTimer",
    )

    def _cancelTimers(self, *names: str) -> None:
        """Cancel the named timers (all of L{TIMERS} by default)."""
        for name in names or self.TIMERS:
            timer: IDelayedCall | None = getattr(self, name)
            if timer is not None:
                if timer.active():
                    timer.cancel()
                setattr(self, name, None)

    def _finish(self, exit: BaseException) -> None:
        # The kill timer (leftovers) and the cgroup's removal outlive the end.
        self._cancelTimers("_abandonTimer", "_timeoutTimer", "_mainExitTimer")
        self.stdout.close()
        self.stderr.close()
        record = self.record
        self._count()
        exitCode, signalNumber = exitOf(exit)
        signalText = signalName(signalNumber) if signalNumber is not None else None
        error: str | None = None
        if (record.stopped_by is not None or self._timedOut) and self._stopMissed(
            exitCode, signalNumber
        ):
            # It exited on its own as the stop (or its timeout) came: its
            # status stands (review round 29: STOPPED with exit 0 and no
            # signal; review round 30: FAILED "timed out" with exit 0).
            self.log.info(
                "job {job}: its main process exited on its own as the "
                "{what} came (exit {code}): the {what} had no effect on it",
                job=record.id,
                what="timeout" if self._timedOut else "stop",
                code=exitCode,
            )
            record.stopped_by = None
            record.stop_requested_at = None
            self._timedOut = False
        if record.stopped_by is not None:
            status = JobStatus.STOPPED
        elif self._setupError is not None:
            status = JobStatus.FAILED
            error = self._setupError
        elif self._stalledFor is not None:
            status = JobStatus.FAILED
            error = (
                f"killed (SIGKILL): it held its output or input pipe's lock for "
                f"{self._stalledFor:.1f} s, and the server's thread waited for it "
                "(a write or read of its own from memory slow to reach: its own "
                "I/O limit, a filesystem that hangs, or its memory map kept busy)"
            )
        elif self._timedOut:
            status = JobStatus.FAILED
            error = self._timedOutError()
        elif isinstance(exit, SpawnerLost):
            status = JobStatus.FAILED
            if exit.ran:
                error = (
                    "killed (SIGKILL): the job spawner died while it ran, "
                    "and its exit status with it"
                )
            else:
                # Behind its gate: nothing of the command ran.
                signalNumber = signalText = None
                record.started_at = None
                error = "never ran: the job spawner died as it was being started"
        elif self._oomKilled(signalNumber, exitCode):
            status = JobStatus.FAILED
            error = self._oomError(signalNumber)
        elif exitCode == 0:
            status = JobStatus.COMPLETED
            if self._childOomKilled():
                error = CHILD_OOM_NOTE
        else:
            status = JobStatus.FAILED
            error = (
                f"killed by signal {signalText}"
                if signalText is not None
                else f"exited with code {exitCode}"
            )
            if self._childOomKilled():
                error = f"{error}: {CHILD_OOM_NOTE}"
        if record.output_lost and error is None:
            error = f"{record.output_lost} bytes of output could not be written to disk"
        if self._killTimer is not None and self._nothingLeft():
            # The leftovers went on SIGTERM: no SIGKILL for a group id that
            # may be reused by now.
            self._cancelTimers("_killTimer")
        if self._killTimer is not None:
            # What it left gets the server's grace from its end at most: a
            # user's longer one (meant for the job to end well) let a job
            # whose record had ended keep processes, and their dynamic uid,
            # for the hour it asked (attacker round 28).
            self._graceAtMost(self._grace)
        if self._killTimer is not None and self._leftovers is not None:
            # Its leftovers are not gone: noted before its record is final
            # (which recovery would pass over), so that a restart inside
            # their grace still kills them.
            self._leftovers.note(record)
            self._noted = True
        self._ending.finish(
            status,
            self._clock.seconds(),
            exit_code=exitCode,
            signal=signalText,
            error=error,
        )
        if self._killTimer is None:
            self._fireCleaned()
        else:
            self._leftTimer = self._clock.callLater(
                LEFT_LOOK_FIRST, self._lookForLeftovers, LEFT_LOOK_FIRST
            )

    def _lookForLeftovers(self, waited: float) -> None:
        """
        Is anything of the ended job left, its grace still running? Once
        nothing is, it is done with now (no SIGKILL: the group id may be
        reused by then); else looked for again later (L{LEFT_LOOK_FIRST}).
        """
        self._leftTimer = None
        if self._killTimer is None:
            return  # (killed at its grace's end, or stopped harder)
        if self._nothingLeft():
            self._cancelTimers("_killTimer")
            self._fireCleaned()
            return
        wait = min(2 * waited, LEFT_LOOK_MOST)
        self._leftTimer = self._clock.callLater(wait, self._lookForLeftovers, wait)

    def _nothingLeft(self) -> bool:
        if self.cgroup is not None:
            return self.cgroup.empty()
        assert self._pgid is not None
        return not (self._holdsGroup() and self._signalGroupOf(self._pgid, 0))

    def _holdsGroup(self) -> bool:
        """Is the group number still this job's (L{GroupNumbers})?"""
        return self._groups is None or self._groups.holds(self._pgid or 0, self)

    # -- waiting -------------------------------------------------------------

    def whenAccepted(self) -> Deferred[JobRecord]:
        """A local job is taken at once (a failed start is a FAILED record)."""
        return succeed(self.record)

    def whenEnded(self) -> Deferred[JobRecord]:
        """Fires with the record once the job has ended."""
        return self._ending.whenEnded()

    def whenCleanedUp(self) -> Deferred[None]:
        """Fires once the job has ended and nothing of its group is pending."""
        if (
            self.record.status.ended
            and self._killTimer is None
            and self.cgroup is None
            and self._removeTimer is None
        ):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._cleanWaiters.append(d)
        return d

    def _fireCleaned(self) -> None:
        self._cancelTimers("_leftTimer")
        if self.cgroup is not None and not self._removeCgroup():
            return
        if self._groups is not None and self._pgid is not None:
            self._groups.release(self._pgid, self)
        if self._noted:
            assert self._leftovers is not None
            self._leftovers.done(self.record.id)
            self._noted = False
        waiters, self._cleanWaiters = self._cleanWaiters, []
        for d in waiters:
            d.callback(None)

    def _removeCgroup(self) -> bool:
        """
        Remove the job's cgroup; while killed processes are still exiting
        the kernel refuses, so try again shortly (then kill what is left).
        """
        self._removeTimer = None
        assert self.cgroup is not None
        if self.cgroup.remove():
            self.cgroup = None
            return True
        self._removeTries += 1
        if self._removeTries % 10 == 0:
            self.cgroup.kill()
        self._removeTimer = self._clock.callLater(0.05, self._fireCleaned)
        return False


def exitOf(exit: BaseException | None) -> tuple[int | None, int | None]:
    """A process's end (Twisted's reason): its exit code, its signal."""
    if isinstance(exit, ProcessDone):
        return 0, None
    if isinstance(exit, ProcessTerminated):
        return exit.exitCode, exit.signal
    return None, None


def childExited(pid: int) -> bool:
    """
    Has the child C{pid} ended, not reaped yet (C{waitid} with C{WNOWAIT}:
    its reaper still gets it)? False if it runs, or is no child of ours.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except OSError:  # (ECHILD: no child of ours)
        return False
    return info is not None


#: C{rt_sigtimedwait}'s number, by machine (see L{_waitsForSignals}).
SIGTIMEDWAIT = {"x86_64": b"128", "aarch64": b"137"}.get(os.uname().machine)


def hasEnded(pid: int) -> bool:
    """
    Has process C{pid} ended: gone, or every thread a zombie (a leader that
    has exited is one while other threads run on)? Past
    L{THREADS_LOOKED_AT} threads, not known: False.
    """
    if not _ended(f"/proc/{pid}/task/{pid}"):
        return False
    threads = _threadsToLookAt(pid)
    if threads is None:
        return False
    return all(_ended(f"/proc/{pid}/task/{tid}") for tid in threads)


def _threadsToLookAt(pid: int) -> list[str] | None:
    """
    The threads of C{pid} to look at one by one (none: it is gone); None
    if not known: more than L{THREADS_LOOKED_AT}, or past L{threadLooks}.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    if len(threads) > THREADS_LOOKED_AT or not threadLooks.take(len(threads)):
        return None
    return threads


def _ended(task: str) -> bool:
    fields = _statusOf(task)
    return fields is None or fields.get(b"State", b"")[:1] in (b"Z", b"X")


#: Threads L{endsByDefault} looks at, at most (on the reactor's thread: a
#: job of 4,000 threads took 230 ms a stop); past them, not known.
THREADS_LOOKED_AT = 256


class LookBudget:
    """
    How many threads may be looked at within a window of time, across
    jobs: a burst of stops (or of timeouts) of many-threaded jobs read each
    one's threads' files twice on the reactor's thread (60 jobs of 190
    threads held it 1.1 s: attacker round 36). Past it, not known.
    """

    def __init__(
        self, amount: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._amount = amount
        self._window = window
        self._clock = clock
        self._start = -window
        self._left = amount

    def take(self, threads: int) -> bool:
        """May C{threads} more be looked at now? Counted if so."""
        now = self._clock()
        if not 0 <= now - self._start < self._window:
            self._start, self._left = now, self._amount
        if threads > self._left:
            return False
        self._left -= threads
        return True


#: Threads looked at past the leaders', in all, a tenth of a second
#: (L{LookBudget}): about 20 ms of the reactor's.
threadLooks = LookBudget(512, 0.1)


def endsByDefault(pid: int, signum: int) -> bool | None:
    """
    Would C{signum}, sent to process C{pid}, end it by its default action?
    Not ignored nor caught (the process's), not traced, and a live thread
    to take it that does not block it, none waiting for signals in
    C{sigwait} (L{_waitsForSignals}). The kernel gives a signal sent to a
    process to its leader thread if that one takes it: then that alone
    decides (most jobs have one thread). Else every thread is looked at,
    not the leader's mask alone: a leader that has exited (a zombie
    thread) still shows the mask it had, while the thread left blocks the
    signal, or waits for it, catches it and exits 0 (attacker round 31).
    A process whose every thread has ended has ended: True (what it exited
    with is its own). None if not known (gone, unreadable, too many
    threads: L{THREADS_LOOKED_AT}). A thread in C{sigwait} for other
    signals is taken as one that may take this one (no is the safe
    answer: the stop's outcome stands).
    """
    if signum == signal.SIGKILL:
        return True
    if signum in (signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH):
        return False  # ignored by default
    bit = 1 << (signum - 1)
    leader = _taker(f"/proc/{pid}/task/{pid}", bit)
    if leader is True or leader is False or leader is None:
        return leader
    threads = _threadsToLookAt(pid)
    if threads is None:
        return None
    live = takers = 0
    for tid in threads:
        taker = _taker(f"/proc/{pid}/task/{tid}", bit)
        if taker is None or taker is False:
            return None if taker is None else False
        if taker is _GONE:
            continue
        live += 1
        if taker is True:
            takers += 1
    if not live:
        return True if threads else None
    return takers > 0


#: L{_taker}'s answers besides True (it takes the signal), False (the
#: process ignores, catches or waits for it) and None (not known).
_OTHERS = object()  # it blocks it: the others decide
_GONE = object()  # the thread has ended


def _taker(task: str, bit: int) -> object:
    """What one thread says of the signal C{bit} (see L{_OTHERS})."""
    fields = _statusOf(task)
    if fields is None:
        return _GONE
    try:
        ignored, caught, blocked = (
            int(fields[name], 16) for name in (b"SigIgn", b"SigCgt", b"SigBlk")
        )
    except (KeyError, ValueError):
        return None
    if (ignored | caught) & bit:
        return False
    if fields.get(b"TracerPid", b"0") != b"0":
        return None  # (its tracer may take the signal away)
    if fields.get(b"State", b"")[:1] in (b"Z", b"X"):
        return _GONE
    if fields.get(b"NSpid", b"").split()[-1:] == [b"1"]:
        return False  # a PID namespace's init: the kernel drops it (review 37)
    if blocked & bit:
        return _OTHERS
    if _waitsForSignals(task, fields.get(b"State", b"")[:1]):
        return False  # (sigwait shows the signal unblocked)
    return True


def _statusOf(task: str) -> dict[bytes, bytes] | None:
    """A thread's C{/proc} status lines, by name (None: gone)."""
    try:
        with open(f"{task}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(b":")
        fields[name] = value.strip()
    return fields


def _waitsForSignals(task: str, state: bytes) -> bool:
    """
    Is the thread in C{sigwait} (C{rt_sigtimedwait})? It unblocks the
    signals it waits for while it waits, and takes them without their
    default action: /proc shows them unblocked.

    Only a thread asleep (C{state} C{S}, as one in C{sigwait} is) is
    looked at further: its C{wchan}, and if that shows nothing (a kernel
    that hides it) its C{syscall}. Both reads wait for the process's exec
    lock, which a job held for seconds at each of its own execs (an exec
    closing 20,000 descriptors of a file with 12,000 locks of a child's):
    every stop of it froze the server that long (attacker round 40 from
    inside a job). A thread in an exec runs or waits uninterruptibly,
    never in C{S}.
    """
    if state != b"S":
        return False
    try:
        with open(f"{task}/wchan", "rb") as f:
            wchan = f.read().strip()
    except OSError:
        wchan = b""
    if wchan.startswith(b"do_sigtimedwait"):
        return True
    if wchan not in (b"", b"0") or SIGTIMEDWAIT is None:
        return False
    try:
        with open(f"{task}/syscall", "rb") as f:
            return f.read().split(b" ", 1)[0] == SIGTIMEDWAIT
    except OSError:
        return False


def commandOf(pid: int, depth: int) -> int | None:
    """
    The process C{depth} forks down from C{pid}, the first child at each
    step (the launcher's init, then the command it forked first); None if
    there is none now (not forked yet, or ended).
    """
    for _ in range(depth):
        try:
            with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
                children = f.read().split(None, 1)
        except OSError:
            return None
        if not children:
            return None
        pid = int(children[0])
    return pid


def samePrograms(pid: int, other: int) -> bool:
    """
    Do C{pid} and C{other} run the same program file? False if it cannot be
    told (one has ended: a zombie has no C{exe}, and L{endsByDefault} knows
    what its end means).
    """
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.readlink(f"/proc/{other}/exe")
    except OSError:
        return False


def signalGroup(pgid: int, signum: int) -> bool:
    """
    Send C{signum} to process group C{pgid}.

    @return: False if the group no longer exists (nothing to signal).
    """
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


#: A failed spawn with one of these says something of the server, not of
#: the job: no descriptor left, no process slot, no memory.
SERVER_SHORT_OF = SHORT_OF | {errno.EAGAIN}


def spawnError(exc: BaseException) -> str:
    """One line saying why a spawn failed."""
    return f"cannot start: {spawnCause(exc)}"


def spawnCause(exc: BaseException) -> str:
    """Why a spawn failed, in a few words."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
