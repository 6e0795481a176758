"""The job manager: creates, finds, lists, stops and deletes jobs."""

from __future__ import annotations

import errno
import functools
import os
import signal
import stat
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Cooperator, SchedulerStopped, TaskStopped
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import (
    Conflict,
    LeftoversStopped,
    NotFound,
    ServiceUnavailable,
)
from ..metrics import Metrics
from .admission import Admission, createBurst
from .buckets import TokenBuckets
from .combined import OrderSource, StoredOrder
from .draining import Draining
from .executor import Executor, ExecutorHealth, LiveJob, OwnerCheck
from .folders import (
    appendWhole,
    openJournal,
    openOutput,
    openRegular,
    removeTree,
)
from .policy import JobPolicy, JobReactor
from .records import JobRecord, JobStatus
from .recovery import currentBootId
from .removal import AsideRemoval
from .scheduling import Scheduler
from .schema import DamagedRecord
from .selection import ANY_JOB, JobFilter
from .spool import OutputSource, StoredOutput
from .stopping import DEFAULT_STOP, StopRequest
from .store import JobStore, RecordDamaged, StoreError, WalCut, roomForAFile
from .validation import parseJobId

#: The file, in the state dir, that says it is a copy of a live server's.
COPY_MARK = "copy-of-a-live-server"

#: Default cap on each stream of each job.
DEFAULT_MAX_LOG_BYTES = 1 << 30
#: How many ended job records the manager keeps in memory, and how many
#: bytes of them at most (as L{recordBytes} estimates: 4,200 records with
#: 30 KB of args each held 270 MB). A record estimated above
#: ENDED_RECORD_MAX_BYTES (a request body near its 64 KiB limit) is not
#: kept: it would take the room of a hundred others.
ENDED_RECORDS_CACHED = 4096
ENDED_RECORDS_BYTES = 16 << 20
ENDED_RECORD_MAX_BYTES = ENDED_RECORDS_BYTES // 128
#: What a kept record costs besides its strings (the object, its numbers,
#: lists and dicts), and what each string costs besides its characters.
RECORD_BYTES = 2048
STRING_BYTES = 64

#: Jobs a retention round deletes per reactor turn, and output folders of
#: jobs deleted by C{DELETE /jobs} removed per turn: each costs 0.3-2 ms,
#: and an hour's worth at once (36,000 jobs) stalled every request 11-80 s.
DELETE_SLICE = 100
#: In the state dir: the ids of deleted jobs whose output folders are still
#: to be removed (by this run, or after a restart if it stops first).
DELETED_OUTPUT = "deleted-output"

RESTARTED = "the worker restarted while the job ran"

#: Seconds between tries to store final records the store refused (disk
#: full), doubling up to the maximum.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
#: Seconds before a deleted job's output folder that could not be removed
#: (a read-only file system, a busy mount) is tried again, doubling up to
#: the maximum: it was kept for good, its job gone (Slurm user round 39).
REMOVAL_RETRY_FIRST = 60.0
REMOVAL_RETRY_MAX = 3600.0

#: Seconds between looks at the store's file (still at its path? see
#: L{JobStore.relink<jobworker.jobs.store.JobStore.relink>}): a stat each.
STORE_LOOK = 5.0
#: ... after a look that could not write the file again (a full disk).
STORE_LOOK_FAILED = 60.0

#: Bytes the server keeps allocated in its state dir and gives up at
#: shutdown when the disk is full, to store the final records it could not
#: (a queued job stopped meanwhile would run again after the restart).
RESERVE_BYTES = 1 << 20

#: Seconds past the server's stop grace that what an ended job left may
#: hold its running slot (L{JobManager._giveBackOverdueSlots}).
SLOT_SLACK = 30.0

#: How what a deleted job left is ended (L{JobManager._stillCleaning}).
KILL_NOW = StopRequest(signal.SIGKILL)

#: The reserve's file in the state dir, and the suffix of its inode's.
RESERVE = "reserve"
RESERVE_INODE = "-inode"

#: How many jobs with a damaged record the log names, once each.
DAMAGED_NAMED = 1000


class JobManager(Admission):
    """
    Every job this server knows. Running jobs live in memory; every record
    is in the L{JobStore}, written when a job starts and when it ends, so
    ended jobs cost no memory and survive restarts.

    @param reactor: spawns processes and keeps time.
    @param stateDir: holds the store and each job's output
        (C{jobs/<id>/stdout|stderr}).
    @param executor: runs the jobs (built by the composition root, or by
        L{jobworker.executors.local.executor.localJobManager}).
    @param store: the job store (default: SQLite in C{stateDir}).
    @param policy: limits, timeouts, fairness, concurrency cap.
    @param ownerCheck: asked when a queued job's turn comes, with its owner
        and the account it was queued to run as (None: unmapped): why it
        may not start now (its owner removed, demoted or mapped elsewhere
        since), or None, and the owner's account now, which it then starts
        as. Without one, queued jobs are not checked again.
    """

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        stateDir: str,
        executor: Executor,
        store: JobStore | None = None,
        policy: JobPolicy | None = None,
        metrics: Metrics | None = None,
        ownerCheck: OwnerCheck | None = None,
        outputRemoval: AsideRemoval | None = None,
    ) -> None:
        policy = policy if policy is not None else JobPolicy()
        self._reactor = reactor
        self._ownerCheck = ownerCheck
        self._metrics = metrics if metrics is not None else Metrics()
        self._policy = policy
        self._running = 0
        self._runningBy: Counter[str] = Counter()
        #: The running slots held: job id -> its owner (L{_releaseSlot}).
        self._slots: dict[str, str] = {}
        #: Jobs answered 503 and forgotten before their end (L{accepted}).
        self._withdrawn: set[str] = set()
        #: When the jobs that ended, their slots still held by what they
        #: left, ended; and the next look for those held too long.
        self._slotsEnded: dict[str, float] = {}
        self._slotCheck: IDelayedCall | None = None
        #: Per user: the creation rate limit (C{createRate}), if any.
        rate = policy.createRate
        self._createBuckets = (
            TokenBuckets(rate, createBurst(rate)) if rate is not None else None
        )
        self._jobsDir = os.path.join(stateDir, "jobs")
        self._reserve = os.path.join(stateDir, RESERVE)
        #: An empty file beside it, holding one more inode for L{_withRoom}
        #: (SQLite opens a store with two new files).
        self._reserveInode = self._reserve + RESERVE_INODE
        self._executor = executor
        executor.attach(self._save, self._find)
        self._live: dict[str, LiveJob] = {}
        #: Deleted jobs whose leftovers are still being ended: no longer
        #: found, still waited for at shutdown.
        self._cleaning: dict[str, LiveJob] = {}
        #: Ended records read lately: they never change again, and a client
        #: polling a finished job should not cost a store read each time.
        #: Least recently read first; bounded in count and in bytes.
        self._endedRecords: OrderedDict[str, JobRecord] = OrderedDict()
        self._endedBytes = 0
        #: Deletions of many jobs, spread over reactor turns (one slice a
        #: turn, so that requests are answered in between).
        self._slices = Cooperator(
            terminationPredicateFactory=_oneStepATurn,
            scheduler=lambda tick: reactor.callLater(0, tick),
        )
        #: Deleted jobs whose output folders are still to be removed, the
        #: task removing them, and where their ids are noted meanwhile.
        self._unswept: deque[str] = deque()
        self._sweeping: Deferred[Iterator[None]] | None = None
        #: The sweep's next try after the store refused it, and its delay.
        self._sweepTimer: IDelayedCall | None = None
        #: Deleted jobs whose folders could not be removed, and when, and
        #: in how many seconds next time, they are tried again.
        self._stuck: list[str] = []
        self._removalTimer: IDelayedCall | None = None
        self._removalDelay = REMOVAL_RETRY_FIRST
        self._sweepDelay = RETRY_FIRST
        self._sweepJournal = os.path.join(stateDir, DELETED_OUTPUT)
        #: Removes deleted jobs' output folders off the reactor's thread
        #: (None: here and now, as a test's manager does).
        self._outputRemoval = outputRemoval
        if outputRemoval is not None:
            outputRemoval.removed = self._reserveAgain
        #: Final records the store could not take yet (disk full): the truth
        #: until it has them, written again every so often.
        self._unsaved: dict[str, JobRecord] = {}
        #: Queued jobs the server could not start at their turn: when, and why.
        self._held: dict[str, tuple[float, str]] = {}
        #: Queued C{"stdin": true} jobs whose stdin was closed before they
        #: started (L{writeStdin}): closed at their start.
        self._stdinClosedEarly: set[str] = set()
        #: The jobs whose damaged records the log has named (L{_damaged}).
        self._damagedNamed: set[str] = set()
        self._retryTimer: IDelayedCall | None = None
        self._retryDelay = RETRY_FIRST
        self._bootId = currentBootId()
        self._shuttingDown = False
        #: Whether an Admin asked the server to drain (L{drain}).
        self._drain = Draining()
        #: Noted once the state dir is found a copy of a live server's: a
        #: drain at every start until an Admin ends one (L{recover}).
        self._copyMark = os.path.join(stateDir, COPY_MARK)
        self._metrics.draining.set_function(lambda: 1 if self._drain.on else 0)
        #: The next look at the store's file (L{_lookAtStore}), and what
        #: the last one found.
        self._storeLook: IDelayedCall | None = None
        self._storeFound: str | None = None
        #: Why the store's file at its path does not hold every job (removed,
        #: its WAL removed, and not written again yet), or None.
        self._storeAtRisk: str | None = None
        os.makedirs(self._jobsDir, mode=0o700, exist_ok=True)
        roomForFiles = _checkWritable(self._jobsDir)
        #: The reserve was given up (L{_withRoom}; or there is no room to
        #: make it: at start-up with no inode left): make it again.
        self._reserveGiven = not roomForFiles
        if roomForFiles:
            self._keepReserve()
        self._store = (
            store
            if store is not None
            else JobStore(
                os.path.join(stateDir, "jobs.sqlite3"),
                makeRoom=functools.partial(
                    self._giveUpReserve, "to open the store (no inode left)"
                ),
            )
        )
        self._resumeSweep()
        self._metrics.watchJobs(self._countByStatus)
        self._metrics.watchExecutor(self._executorUp)
        self._metrics.watchStateFolder(
            lambda: self.storeRefusal() is not None, stateDir
        )
        self._scheduler = Scheduler(
            self._startQueued,
            self._mayStartMore,
            self._mayStart,
            self._queuedEnded,
            self._stored,
            self._dispatchLater,
            self._reactor.seconds,
            self._dispatchSoon,
        )
        self._metrics.watchQueue(self._scheduler.queue.owners)

    # -- start-up --------------------------------------------------------------

    def afterFork(self) -> None:
        """In a process forked since (twistd's daemon): the store connects again."""
        self._store.afterFork()

    def holdQueue(self) -> None:
        """
        Start no queued job until L{start}: the server is being built, and
        twistd may yet fork into a daemon. A job started before the fork
        was the exiting process's: through the spawner it died with it (a
        queued job FAILED by SIGKILL after each restart), through the exec
        chain it ran unseen, its record RUNNING for good (a review).
        """
        self._scheduler.paused = True

    def start(self) -> None:
        """
        The server runs (its service started, after any fork): start what
        the queue holds, and check the jobs waiting in the executor's own
        queue against the users file (L{ownersChanged}).
        """
        self._scheduler.paused = False
        self._scheduler.dispatch()
        self.ownersChanged()
        if self._outputRemoval is not None:
            folder = os.path.dirname(self._executor.outputDir("-"))
            left = self._outputRemoval.sweep(folder)
            if left:
                self.log.info(
                    "{count} deleted output folders left by the last run: removing",
                    count=left,
                )
        if self._storeLook is None:
            self._storeLook = self._reactor.callLater(STORE_LOOK, self._lookAtStore)

    # -- draining ---------------------------------------------------------------

    def drain(self, by: str, reason: str | None = None) -> bool:
        """
        Take no new job and start no queued one until L{resume} (or a
        restart): the running ones go on to their end. False if the server
        drains already. C{reason}: why, if not an Admin's request.
        """
        return self._drain.start(by, self._reactor.seconds(), self._running, reason)

    def resume(self, by: str) -> bool:
        """End a drain: queued jobs start again. False if none was on."""
        if not self._drain.end(by):
            return False
        self._forgetCopy()
        self._scheduler.dispatch()
        return True

    def _noteCopy(self, why: str) -> None:
        """Note in the state dir that it is a copy of a live server's."""
        try:
            fd = openJournal(self._copyMark)
            try:
                appendWhole(fd, why.encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.log.error(
                "the copy's mark {path} could not be written ({error}): the next "
                "start may run the live server's queued jobs",
                path=self._copyMark,
                error=e.strerror or str(e),
            )

    def _copyNoted(self) -> str | None:
        """Why the state dir was found a copy at an earlier start, if it was."""
        try:
            # (As the journals are: never waiting on what is no regular file.)
            fd = openRegular(self._copyMark, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"this state dir may be a copy (its mark unreadable: {e})"
        try:
            text = os.read(fd, 1000).decode("utf-8", "replace").strip()
        except OSError as e:
            text = f"this state dir may be a copy (its mark unreadable: {e})"
        finally:
            os.close(fd)
        return text or "this state dir is a copy"

    def _forgetCopy(self) -> None:
        """An Admin ended the drain: the copy's mark goes."""
        try:
            os.unlink(self._copyMark)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.error(
                "the copy's mark {path} could not be removed ({error}): the "
                "next start drains again",
                path=self._copyMark,
                error=e.strerror or str(e),
            )

    def draining(self) -> dict[str, object]:
        """
        The drain as C{GET /drain} tells it: whether it is on, since when
        (Unix time) and whose, and how many jobs run and wait.
        """
        return {
            "draining": self._drain.on,
            "since": self._drain.since,
            "by": self._drain.by,
            "reason": self._drain.reason,
            "running": self._running,
            "queued": len(self._scheduler.queue),
        }

    def whenDrained(self) -> Deferred[None]:
        """Fires once no job runs while the server drains, or it drains no more."""
        return self._drain.whenDrained(self._running)

    def _lookAtStore(self) -> None:
        """Is the store's file still at its path? Said once if not as it was."""
        self._storeLook = None
        delay = STORE_LOOK
        try:
            found: str | None = self._relinkStore()
            self._storeAtRisk = None
        except StoreError as e:
            found = self._storeAtRisk = str(e)
            delay = STORE_LOOK_FAILED  # (a full disk: not a copy each 5 s)
        except Exception:
            self.log.failure("looking at the store's file")
            found = None
        finally:
            if not self._shuttingDown:
                self._storeLook = self._reactor.callLater(delay, self._lookAtStore)
        if found is not None and found != self._storeFound:
            self.log.error("{found}", found=found)
        self._storeFound = found

    def _relinkStore(self) -> str | None:
        """
        L{JobStore.relink}, with the disk's reserve given up for it if it
        cannot be written for want of room.
        """
        try:
            return self._store.relink()
        except WalCut:
            raise
        except StoreError:
            if not self._giveUpReserve("to write the job store's file again"):
                raise
        return self._store.relink()

    def storeAtRisk(self) -> str | None:
        """
        Why the store's file does not hold every job now (it, or its WAL,
        was removed while the server ran, and it could not be written again
        yet: a crash now loses jobs), or None. /healthz said "ok" meanwhile
        (fault round 36).
        """
        return self._storeAtRisk

    def ownersChanged(self) -> None:
        """
        The users file was read again (SIGHUP), or the server started: jobs
        waiting in the executor's own queue (Slurm's) are checked against it
        as the manager's queue checks each job at its turn (see
        L{Executor.ownersChanged}).
        """
        if self._ownerCheck is not None:
            self._executor.ownersChanged(self._ownerCheck)

    def recover(self) -> list[JobRecord]:
        """
        At start-up: hand the jobs the store says were not finished to the
        executor, which re-attaches to live ones (Slurm) or closes them
        after killing what is left of them (local): as they would have
        ended where the store has it (a stored stop: STOPPED; a stored exit
        of the main process: COMPLETED or FAILED by it), else FAILED.
        Returns the records it closed.
        """
        unfinished = self._store.running()
        queued = self._store.queued()
        for record in unfinished:
            if isinstance(record, DamagedRecord):
                self._recoverDamaged(record)
        # Called even without unfinished jobs: the executor may have its
        # own leftovers to see to (a local job's, ended inside its grace).
        for job in self._executor.recover(unfinished, RESTARTED):
            self._watch(job)
        live = getattr(self._executor, "copyOf", None)
        copied = None
        if live is not None:
            # The state dir is a copy of a live server's (a backup restored
            # beside it, a move rehearsed): its queued jobs are that
            # server's, and ran a second time here (operator round 41).
            # Noted in the state dir: the records that told it are closed
            # now, and the next start found nothing (session review 41).
            copied = f"this state dir is a copy of a live jobworker's (pid {live})"
            self.log.error(
                "this state dir is a copy of the one of a live jobworker (pid "
                "{pid}): its queued jobs are not started here (the server "
                "drains, at each start until an Admin's DELETE /drain); DELETE "
                "/drain (jw drain --end) if they are this server's to run",
                pid=live,
            )
            self._noteCopy(copied)
        else:
            copied = self._copyNoted()
            if copied is not None:
                self.log.error(
                    "{why} (found at an earlier start): its queued jobs are not "
                    "started here until an Admin's DELETE /drain",
                    why=copied,
                )
        if copied is not None and not self.drain("jobworker", copied):
            self._drain.alsoBecause(copied)
        closed = [record for record in unfinished if record.status.ended]
        for record in closed:
            if isinstance(record, DamagedRecord):
                record.error = f"{record.error} ({record.note})"
            # On a full disk: from the reserve, else kept in memory and
            # written again (the server must start: deleting jobs is how
            # the disk gets room).
            try:
                self._withRoom(
                    functools.partial(self._store.update, record), "to recover"
                )
            except StoreError:
                self._storeOrKeep(record, f"closed {record.status.value}")
        self._requeue(queued)
        self._reserveAgain()
        return closed

    def _recoverDamaged(self, record: DamagedRecord) -> None:
        """
        A job that was unfinished at the last stop, whose record is damaged:
        recovered as any other (what is left of it killed, or re-attached),
        from what could be read; its record written back whole, without what
        did not parse. (It stopped the start-up: a traceback, every time.)
        """
        self._damagedNamed.add(record.id)
        self.log.error(
            "job {job} (seq {seq}) was {status} at the last stop, and its stored "
            "record is damaged ({problem}; it held {text}): recovered as far as "
            "it could be read, and written back without that",
            job=record.id,
            seq=record.seq,
            status=record.status.value,
            problem=record.problem,
            text=record.text or "nothing quoted",
        )

    def _damaged(self, record: DamagedRecord) -> None:
        """
        Name a job whose stored record is damaged in the log, once (it is
        met again at every list crossing it).
        """
        named = self._damagedNamed
        if record.id in named or len(named) > DAMAGED_NAMED:
            return
        named.add(record.id)
        if len(named) > DAMAGED_NAMED:
            self.log.error(
                "over {count} jobs' stored records are damaged: no more are named",
                count=DAMAGED_NAMED,
            )
            return
        self.log.error(
            "job {job} (seq {seq}): its stored record is damaged ({problem}; it "
            "holds {text}): left out of lists, a 503 for its own requests; "
            "DELETE /jobs/{job} removes it",
            job=record.id,
            seq=record.seq,
            problem=record.problem,
            text=record.text or "nothing quoted",
        )

    # -- jobs ------------------------------------------------------------------

    def _watch(self, job: LiveJob) -> None:
        jobId = job.record.id
        owner = job.record.owner
        self._runningBy[owner] += 1
        self._running += 1
        self._slots[jobId] = owner
        self._live[jobId] = job
        job.whenEnded().addCallback(self._ended)
        job.whenCleanedUp().addCallback(lambda _: self._forget(jobId))

    def _forget(self, jobId: str) -> None:
        """
        A job is over, leftovers and all: its running slot is free. Not
        before: processes a job left (a C{setsid} child ignoring TERM) run
        on under their grace, and one user kept any number of them past
        C{--max-running-per-user} (attacker round 28).
        """
        self._live.pop(jobId, None)
        self._cleaning.pop(jobId, None)
        self._releaseSlot(jobId)

    def _releaseSlot(self, jobId: str) -> None:
        """Give a job's running slot back (once), and start what waits."""
        owner = self._slots.pop(jobId, None)
        self._slotsEnded.pop(jobId, None)
        check = self._slotCheck
        if not self._slotsEnded and check is not None:
            # (No slot waits for its bound: no look is due.)
            self._slotCheck = None
            if check.active():
                check.cancel()
        if owner is None:
            return
        self._running -= 1
        self._runningBy[owner] -= 1
        if self._runningBy[owner] <= 0:
            del self._runningBy[owner]
        self._drain.slotFreed(self._running)
        self._scheduler.dispatch()

    def _slotBound(self) -> float:
        """How long after its end a job's leftovers may hold its slot."""
        return self._executor.grace + SLOT_SLACK

    def _giveBackOverdueSlots(self) -> None:
        """
        Give back the slots of jobs whose leftovers outlived their bound: a
        process in D state no KILL ends, a cgroup that cannot be removed
        (its queued jobs waited for ever, the job COMPLETED: fault round
        28b). Said once per job; the leftovers are still waited for.
        """
        self._slotCheck = None
        now = self._reactor.seconds()
        bound = self._slotBound()
        soonest: float | None = None
        for jobId, ended in list(self._slotsEnded.items()):
            if jobId not in self._slots:
                del self._slotsEnded[jobId]
            elif now - ended >= bound:
                self.log.warn(
                    "job {job}: what it left is not gone {seconds:.0f} s after "
                    "its end (a process no KILL ends, a cgroup that cannot be "
                    "removed): its running slot is given back",
                    job=jobId,
                    seconds=now - ended,
                )
                self._releaseSlot(jobId)
            else:
                due = ended + bound - now
                soonest = due if soonest is None else min(soonest, due)
        if soonest is not None and not self._shuttingDown:
            self._slotCheck = self._reactor.callLater(
                soonest, self._giveBackOverdueSlots
            )

    async def accepted(self, record: JobRecord) -> JobRecord:
        """
        The record once the executor has taken the job (at once locally;
        after Slurm's C{sbatch} answered).

        @raise ServiceUnavailable: the executor could not be reached; the
            job is forgotten, record and all.
        """
        job = self._live.get(record.id)
        if job is None:
            return record
        try:
            return await job.whenAccepted()
        except ServiceUnavailable as unavailable:
            withdrawn = not record.status.ended
            if withdrawn:
                self._withdrawn.add(record.id)
            try:
                self._remove(record.id)
            except StoreError as e:
                # Not forgotten, then: it ends FAILED as it would have if
                # nobody waited for its answer (withdrawn, its end was not
                # stored, and its record said PENDING for good, in no queue,
                # neither stoppable nor deletable: code review 35).
                if withdrawn:
                    self._withdrawn.discard(record.id)
                self.log.error(
                    "job {job}: Slurm could not take it, and its record cannot "
                    "be removed ({error}): it ends FAILED",
                    job=record.id,
                    error=str(e),
                )
                raise unavailable from None
            self._live.pop(record.id, None)
            raise

    def _save(self, record: JobRecord) -> None:
        """A live job's record changed (Slurm: queued, running)."""
        try:
            self._store.update(record)
        except StoreError as e:
            self.log.error("{error}", error=str(e))

    def _ended(self, record: JobRecord) -> JobRecord:
        if record.id in self._slots:
            # (Most jobs give it back in this turn, their group gone.)
            self._slotsEnded[record.id] = self._reactor.seconds()
            if self._slotCheck is None and not self._shuttingDown:
                self._slotCheck = self._reactor.callLater(
                    self._slotBound(), self._giveBackOverdueSlots
                )
        if record.id in self._withdrawn:
            # Answered 503 and forgotten (L{accepted}): no end to store or
            # count. The jobs queued after it fail, naming it.
            self._withdrawn.discard(record.id)
        else:
            self._storeFinal(record)
            self._metrics.jobRecordEnded(record)
        self._scheduler.jobEnded(record, self._reactor.seconds())
        self._scheduler.dispatch()
        return record

    def _storeFinal(self, record: JobRecord) -> None:
        """
        Store a job's final record. If the store refuses it, it still says
        RUNNING (or queued): keep the final record as the truth (the API
        answers from it) and write it again until the store takes it.
        """
        self._storeOrKeep(record, f"ended {record.status.value}")

    def _storeOrKeep(self, record: JobRecord, what: str) -> None:
        """
        Store C{record} (the job C{what}: "ended FAILED", "stays queued");
        if the store refuses, the record in memory stays the truth, for the
        API and for the job's next start (L{_stored}), and is written again
        until the store takes it.
        """
        try:
            self._store.update(record)
        except StoreError as e:
            self.log.error(
                "job {job} {what} but {error}: kept in memory, written again "
                "until the store takes it",
                job=record.id,
                what=what,
                error=str(e),
            )
            self._unsaved[record.id] = record
            self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if self._retryTimer is None and not self._shuttingDown:
            self._retryTimer = self._reactor.callLater(
                self._retryDelay, self._retryUnsaved
            )

    def _retryUnsaved(self) -> None:
        """
        Write the final records the store refused; again later if it still
        does. With none, while the store refuses writes (L{storeRefusal}),
        try a write that changes nothing: nothing else may come to show
        that it takes them again (a balancer sends no request to a server
        its /healthz calls degraded).
        """
        self._retryTimer = None
        self.flushUnsaved()
        if not self._unsaved and self._store.refusal is not None:
            try:
                self._store.probeWrite()
            except StoreError:
                pass  # (it is the store's refusal, which /healthz says)
        if self._unsaved or self._store.refusal is not None:
            self._retryDelay = min(self._retryDelay * 2, RETRY_MAX)
            self._scheduleRetry()
        else:
            self._retryDelay = RETRY_FIRST
            self._reserveAgain()

    def flushUnsaved(self) -> int:
        """Try to store every kept final record; return how many are left."""
        for jobId, record in list(self._unsaved.items()):
            try:
                self._store.update(record)
            except StoreError:
                return len(self._unsaved)
            del self._unsaved[jobId]
            self.log.info("job {job}: final record stored at last", job=jobId)
        return 0

    def _countByStatus(self) -> dict[str, int]:
        counts = self._store.countByStatus()
        for jobId, record in list(self._unsaved.items()):
            try:
                stored = self._store.get(jobId)
            except RecordDamaged as e:
                stored = e.record  # (its status as far as it could be read)
            if stored is not None and stored.status is not record.status:
                counts[stored.status.value] = counts.get(stored.status.value, 1) - 1
                counts[record.status.value] = counts.get(record.status.value, 0) + 1
        return counts

    def health(self) -> ExecutorHealth:
        """
        Whether the executor can take jobs now: its own C{health()} if it
        has one (Slurm: whether slurmctld answered), else always up.
        """
        check = getattr(self._executor, "health", None)
        if check is None:
            return ExecutorHealth(self._executor.name, True)
        health: ExecutorHealth = check()
        return health

    def storeRefusal(self) -> str | None:
        """
        Why the job store refuses writes now (its last write failed, and
        none has succeeded since: disk full, failing, read-only, locked),
        or None. Known from the writes made: this writes nothing. While it
        refuses, a write is tried every so often (L{_retryUnsaved}), so
        that it is known once the store takes them again.
        """
        refusal = self._store.refusal
        if refusal is None:
            return None
        self._scheduleRetry()
        return refusal.reason

    def _executorUp(self) -> tuple[str, bool]:
        health = self.health()
        return health.executor, health.up

    def record(self, jobId: str) -> JobRecord:
        """A job's record, up to date (a queued job's with why it waits)."""
        record = self._storedOrLive(jobId)
        if jobId in self._scheduler.queue:
            record.pending_reason = self._heldReason(
                jobId
            ) or self._scheduler.queue.reason(jobId)
        return record

    def recordOrDamaged(self, jobId: str) -> JobRecord:
        """
        L{record}, or what could be read of a damaged one (a
        L{DamagedRecord}, never to be shown): its owner, to be allowed to
        stop or delete it; its status, for the jobs that wait on it.

        @raise NotFound: if there is none.
        """
        try:
            return self.record(jobId)
        except RecordDamaged as e:
            return e.record

    def _find(self, jobId: str) -> JobRecord | None:
        """A job's current record (L{recordOrDamaged}); None if there is no such job."""
        try:
            return self.recordOrDamaged(jobId)
        except NotFound:
            return None

    def _stored(self, jobId: str) -> JobRecord:
        """
        A job's record as the store has it (a queued job's, whole), or as
        it is kept until the store takes it (L{_storeOrKeep}).
        """
        kept = self._unsaved.get(jobId)
        if kept is not None:
            return kept
        record = self._store.get(jobId)
        if record is None:
            raise NotFound("no such job")
        return record

    def _storedOrLive(self, jobId: str) -> JobRecord:
        """
        The current record of a job.

        @raise NotFound: if there is none.
        """
        job = self._live.get(jobId)
        if job is not None:
            return job.snapshot()
        unsaved = self._unsaved.get(jobId)
        if unsaved is not None:
            return unsaved
        cached = self._endedRecords.get(jobId)
        if cached is not None:
            self._endedRecords.move_to_end(jobId)
            return cached
        try:
            record = self._store.get(jobId)
        except RecordDamaged as e:
            self._damaged(e.record)
            raise
        if record is None:
            raise NotFound("no such job")
        if record.status.ended:
            record.final = True
            self._keepEnded(record)
        return record

    def _keepEnded(self, record: JobRecord) -> None:
        """
        Keep an ended record in memory, unless it is too large; past either
        bound, the least recently read go first.
        """
        size = recordBytes(record)
        if size > ENDED_RECORD_MAX_BYTES:
            return
        cache = self._endedRecords
        cache[record.id] = record
        self._endedBytes += size
        while len(cache) > ENDED_RECORDS_CACHED or (
            self._endedBytes > ENDED_RECORDS_BYTES
        ):
            _, oldest = cache.popitem(last=False)
            self._endedBytes -= recordBytes(oldest)

    def _dropEnded(self, jobId: str) -> None:
        """Forget a kept ended record (its job is deleted)."""
        record = self._endedRecords.pop(jobId, None)
        if record is not None:
            self._endedBytes -= recordBytes(record)

    def page(
        self,
        selection: JobFilter = ANY_JOB,
        limit: int = 100,
        before: int | None = None,
        maxBytes: int | None = None,
    ) -> tuple[list[JobRecord], int | None]:
        """Jobs newest first (see L{JobStore.page}), running ones up to date."""
        records, following = self._store.page(selection, limit, before, maxBytes)
        live, unsaved = self._live, self._unsaved
        if unsaved:
            # The store is behind for these: answer with what is true.
            records = [unsaved.get(r.id, r) for r in records]
            if selection.status is not None:
                records, following = self._unsavedByStatus(
                    [r for r in records if r.status is selection.status],
                    selection,
                    limit,
                    before,
                    following,
                )
        if any(type(r) is DamagedRecord for r in records):
            records = self._withoutDamaged(records)
        queue = self._scheduler.queue
        return [
            live[r.id].snapshot()
            if r.id in live
            else (
                _withReason(r, self._heldReason(r.id) or queue.reason(r.id))
                if r.id in queue
                else r
            )
            for r in records
        ], following

    def _unsavedByStatus(
        self,
        records: list[JobRecord],
        selection: JobFilter,
        limit: int,
        before: int | None,
        following: int | None,
    ) -> tuple[list[JobRecord], int | None]:
        """
        C{records} (a page the store found by status), and the jobs of the
        page's span whose new status, not yet stored, the filter picks:
        a job that ended while the disk was full was in neither
        C{?status=RUNNING} (stored) nor C{?status=COMPLETED} (not stored)
        though C{GET /jobs} listed it COMPLETED (review round 33). At most
        C{limit} of them (the next page goes on after the last); the
        cursor to the next page.
        """
        found = {r.id for r in records}
        more = [
            r
            for r in self._unsaved.values()
            if r.id not in found
            and r.seq is not None
            and (before is None or r.seq < before)
            and (following is None or r.seq >= following)
            and selection.picks(r)
        ]
        if not more:
            return records, following
        records = sorted(records + more, key=lambda r: r.seq or 0, reverse=True)
        if len(records) > limit:
            # (It held more than the limit: session review 33.)
            records = records[:limit]
            following = records[-1].seq
        return records, following

    def _withoutDamaged(self, records: list[JobRecord]) -> list[JobRecord]:
        """
        C{records} but those whose stored record is damaged (a list crossing
        one failed for good: a 500): each named in the log once. A live
        job's is left, the live record shows instead.
        """
        kept = []
        for record in records:
            if isinstance(record, DamagedRecord) and record.id not in self._live:
                self._damaged(record)
            else:
                kept.append(record)
        return kept

    def whenEnded(self, jobId: str) -> Deferred[JobRecord]:
        """Fires with a job's record once it has ended (now, if it has)."""
        job = self._live.get(jobId)
        if job is not None:
            return job.whenEnded()
        if jobId in self._scheduler.queue:
            return self._scheduler.whenEnded(jobId)
        return succeed(self.record(jobId))

    def stop(
        self, jobId: str, by: str, how: StopRequest = DEFAULT_STOP
    ) -> Deferred[JobRecord]:
        """
        Stop a running job (C{how.signal}, the grace, KILL to its group).

        @raise Conflict: if it has already ended (the job goes in the body).
        @raise NotFound: if there is no such job.
        """
        stopped = self._scheduler.stop(jobId, by, self._reactor.seconds())
        if stopped is not None:
            self._metrics.stops.inc()
            return succeed(stopped)
        job = self._live.get(jobId)
        if job is None or job.record.status.ended:
            record = self.record(jobId)
            message = f"job already ended ({record.status.value})"
            if job is not None and job.endLeftovers(how):
                # Its leftovers are still being ended: a harder stop holds
                # for them (an Admin's KILL was a 409 and nothing, while
                # they ran on: attacker round 28).
                self._metrics.stops.inc()
                self.log.info(
                    "job {job}: the processes it left get {user}'s stop",
                    job=jobId,
                    user=by,
                )
                raise LeftoversStopped(
                    message + "; the processes it left are ended sooner by this stop",
                    job=record.toJSON(),
                )
            raise Conflict(message, job=record.toJSON())
        self._metrics.stops.inc()
        return job.stop(by, how)

    def writeStdin(
        self, jobId: str, data: bytes, eof: bool, offset: int | None = None
    ) -> Deferred[int]:
        """
        Feed a running C{"stdin": true} job's stdin, C{data} at C{offset} in
        it if given; fires, with how many of its bytes were taken (none
        twice), once it can take more (see
        L{StdinFeed<jobworker.executors.local.stdin.StdinFeed>}).

        @raise Conflict: the job has ended, has not started yet, or was not
            started with stdin.
        @raise NotFound: if there is no such job.
        """
        record = self.record(jobId)
        if not record.stdin:
            raise Conflict('the job was not started with "stdin": true')
        job = self._live.get(jobId)
        if record.status is JobStatus.PENDING:
            if eof and not data and not offset:
                # Closed before it starts (jw's Ctrl-C while it waits its
                # turn): closed at its start. It was a 409, and the job,
                # once started, waited on a stdin nobody would ever close
                # (new user round 35).
                self._stdinClosedEarly.add(jobId)
                return succeed(0)
            raise Conflict(
                "job has not started yet (PENDING): send its stdin once it "
                "runs (an empty write with ?eof=true closes it now)"
            )
        if job is None or job.record.status.ended:
            raise Conflict(f"job already ended ({record.status.value})")
        return job.writeStdin(data, eof, offset)

    def stdinClosed(self, jobId: str) -> bool:
        """Whether a job's stdin was fed and closed (L{writeStdin}); a queued
        job's, closed before its start."""
        if jobId in self._stdinClosedEarly:
            return True
        job = self._live.get(jobId)
        return job is not None and job.stdinClosed

    def order(self, jobId: str) -> OrderSource:
        """Where the order of a job's stdout and stderr chunks is recorded."""
        job = self._live.get(jobId)
        if job is not None and job.stdout.order is not None:
            return job.stdout.order
        self.record(jobId)
        return StoredOrder(self._outputPath(jobId, "order"))

    def output(self, jobId: str, stream: str) -> OutputSource:
        """C{stream} (C{stdout} or C{stderr}) of a job, live or stored."""
        job = self._live.get(jobId)
        if job is not None:
            return job.stdout if stream == "stdout" else job.stderr
        record = self.record(jobId)
        size = record.stdout_bytes if stream == "stdout" else record.stderr_bytes
        return StoredOutput(self._outputPath(jobId, stream), size)

    def delete(self, jobId: str) -> None:
        """
        Remove an ended job's record and output; a damaged record's too,
        unread (see L{JobStore.get}).

        @raise Conflict: if the job is still running, or queued.
        """
        try:
            record = self.record(jobId)
        except RecordDamaged:
            # Its unreadable record is all there is of it here (a live job's
            # is in memory) unless it is queued: removed by id, the one way.
            if jobId in self._scheduler.queue:
                raise Conflict("job is queued: stop it first") from None
            self.log.warn("job {job}: its damaged record deleted", job=jobId)
        else:
            if not record.status.ended:
                state = (
                    "queued" if record.status is JobStatus.PENDING else "still running"
                )
                raise Conflict(f"job is {state}: stop it first", job=record.toJSON())
        with self._noted([jobId]):
            self._removeEnded(jobId)

    def clean(self, selection: JobFilter, most: int) -> tuple[int, bool]:
        """L{cleanIds}, counted: (how many were deleted, whether more may be left)."""
        deleted, cursor = self.cleanIds(selection, most)
        return len(deleted), cursor is not None

    def cleanIds(
        self, selection: JobFilter, most: int, after: int | None = None
    ) -> tuple[list[str], int | None]:
        """
        Delete up to C{most} ended jobs that C{selection} picks, oldest
        first, past the cursor C{after}: (the ids of those deleted, the
        cursor to go on from, None if none is left). One call searches so
        many jobs at most (L{JobStore.endedMatching}): it may delete none
        and give a cursor all the same. Their records go at once, in one
        transaction: no later request finds them, nor does a restart bring
        them back. Their output folders, the slow part, go
        L{DELETE_SLICE} a reactor turn from the next turn on.

        @raise StoreError: the store refused (every job is still there).
        """
        doomed, cursor = self._store.endedMatching(selection, most, after)
        if doomed:
            noted = self._noteUnswept(doomed)
            self._withRoom(lambda: self._store.deleteMany(doomed), "to delete jobs")
            for jobId in doomed:
                self._forgetRecord(jobId)
                self._stillCleaning(jobId)
            if noted:
                self._sweepLater(doomed)
            else:
                self._removeLater(
                    [jobId for jobId in doomed if not self._removeOutput(jobId)]
                )
                self._reserveAgain()
        return doomed, cursor

    def _removeEnded(self, jobId: str) -> None:
        """
        Forget an ended job. If what it left in its group is still being
        killed, it is gone for every request at once, and still waited for
        at shutdown.

        @raise StoreError: the store refused (the job is still there).
        """
        self._remove(jobId)
        self._stillCleaning(jobId)

    def _stillCleaning(self, jobId: str) -> None:
        """
        A deleted job is not found any more; what it left is killed now,
        and waited for (no stop reaches it once the job is a 404: it ran on
        for its grace, holding its user's running slot).
        """
        job = self._live.pop(jobId, None)
        if job is not None:
            self._cleaning[jobId] = job
            if job.endLeftovers(KILL_NOW):
                self.log.info(
                    "job {job}: deleted; the processes it left are killed", job=jobId
                )

    def _remove(self, jobId: str) -> None:
        """
        Forget a job, record and output.

        @raise StoreError: the store refused (the job is still there).
        """
        self._withRoom(lambda: self._store.delete(jobId), "to delete jobs")
        self._forgetRecord(jobId)
        if not self._removeOutput(jobId):
            self._removeLater([jobId])
        self._reserveAgain()

    def _withRoom(self, write: Callable[[], None], why: str) -> None:
        """
        Run C{write}, a store write that must not wait for room: a deletion
        (it needs a WAL frame too, and deleting is how a disk filled by
        output frees itself: retention, DELETE), or recovery's records (the
        server must start). On a full disk the reserve is given up for it
        (C{why}); L{_reserveAgain} makes it again once there is room.

        @raise StoreError: the store refused all the same.
        """
        try:
            write()
        except StoreError as e:
            if not e.full or not self._giveUpReserve(why):
                raise
            self._reserveGiven = True
            write()

    def _reserveAgain(self) -> None:
        """The reserve, made again if L{_withRoom} gave it up (quietly: this
        is tried again at every deletion and retention round until there
        is room)."""
        if self._reserveGiven and self._keepReserve(quiet=True):
            self._reserveGiven = False
            self.log.info("disk reserve {path} made again", path=self._reserve)

    def _forgetRecord(self, jobId: str) -> None:
        """The store has a job's record no more: neither has the memory."""
        self._dropEnded(jobId)
        self._stdinClosedEarly.discard(jobId)
        self._unsaved.pop(jobId, None)
        self._damagedNamed.discard(jobId)

    def _removeOutput(self, jobId: str) -> bool:
        """
        Remove a deleted job's output folder (already gone is fine);
        whether it is gone (or handed to the removal thread).
        """
        path = self._executor.outputDir(jobId)
        try:
            if self._outputRemoval is not None:
                self._outputRemoval.remove(path)
            else:
                removeTree(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                self.log.error(
                    "cannot remove output of job {job}: {error}; tried again later",
                    job=jobId,
                    error=e.strerror,
                )
                return False
        return True

    def _removeLater(self, ids: list[str]) -> None:
        """
        These deleted jobs' folders could not be removed: noted (a restart
        tries them too) and tried again after L{REMOVAL_RETRY_FIRST}
        seconds, doubling up to L{REMOVAL_RETRY_MAX}.
        """
        if not ids:
            return
        self._noteUnswept(ids, durable=False)
        self._stuck.extend(ids)
        if self._removalTimer is None:
            # (A timer of their own: on the sweep's, every DELETE /jobs
            # meanwhile left its folders until it fired, an hour at most:
            # session review 40.)
            delay, self._removalDelay = (
                self._removalDelay,
                min(self._removalDelay * 2, REMOVAL_RETRY_MAX),
            )
            self._removalTimer = self._reactor.callLater(delay, self._tryStuck)

    def _tryStuck(self) -> None:
        """The folders that could not be removed, tried again."""
        self._removalTimer = None
        stuck, self._stuck = self._stuck, []
        self._sweepLater(stuck)

    def expire(
        self,
        olderThan: float,
        now: float | None = None,
        expired: Callable[[list[str]], object] | None = None,
    ) -> Deferred[int]:
        """
        Delete every job that ended more than C{olderThan} seconds before
        C{now} (default: the reactor's time; retention's own keeps a step of
        the clock from deleting early), L{DELETE_SLICE} now, as many each
        reactor turn after, each record with its output (a stop between two
        turns leaves every job whole or gone); fires with how many were
        deleted. A store error ends this round (logged), and so do
        cancelling it and L{close}: the next round goes on. C{expired} is
        told the ids of each slice's jobs deleted (the audit log's: only a
        count was logged, no id anywhere: operator round 40).
        """
        cutoff = (self._reactor.seconds() if now is None else now) - olderThan
        removed = 0

        def slices() -> Iterator[None]:
            nonlocal removed
            while True:
                ids = self._store.endedBefore(cutoff, DELETE_SLICE)
                gone: list[str] = []
                try:
                    with self._noted(ids):
                        for jobId in ids:
                            self._removeEnded(jobId)
                            gone.append(jobId)
                            removed += 1
                finally:
                    if gone and expired is not None:
                        expired(gone)
                if len(ids) < DELETE_SLICE:
                    return
                yield None

        def over(result: Failure | None) -> int:
            if isinstance(result, Failure):
                if result.check(StoreError):
                    self.log.error(
                        "retention: {error}; {count} removed, trying again next round",
                        error=result.getErrorMessage(),
                        count=removed,
                    )
                elif result.check(TaskStopped, SchedulerStopped):
                    self.log.info(
                        "retention: stopped after {count} removed; the rest next round",
                        count=removed,
                    )
                else:
                    result.raiseException()
            elif removed:
                self.log.info("retention: removed {count} ended job(s)", count=removed)
            self._reserveAgain()
            return removed

        return self._sliced(slices()).addBoth(over)

    def _sliced(self, slices: Iterator[None]) -> Deferred[None]:
        """
        Run C{slices}, an iterator each step of which is a slice of work:
        the first now, then one a reactor turn. Cancelling it, or L{close},
        stops it between two slices (L{TaskStopped}, L{SchedulerStopped}).
        """
        try:
            next(slices)
        except StopIteration:
            return succeed(None)
        except Exception:
            return fail()
        task = self._slices.cooperate(slices)
        done: Deferred[None] = Deferred(lambda _: task.stop())
        task.whenDone().addCallbacks(lambda _: done.callback(None), done.errback)
        return done

    # -- output folders of deleted jobs ------------------------------------------

    @contextmanager
    def _noted(self, ids: list[str]) -> Iterator[None]:
        """
        While these jobs' records and folders go (at once, in this turn),
        their ids are noted in L{DELETED_OUTPUT}: a crash between a record
        and the end of its folder's removal leaves the note, and the next
        start removes the folder (it stayed for good). Nothing else is
        ever removed: a folder whose record the store lost (a restored
        backup, a damaged WAL) is kept.
        """
        # Not fsynced: these folders go in this turn, and a process that
        # dies keeps what it wrote (an fsync before each DELETE's answer).
        noted = bool(ids) and self._noteUnswept(ids, durable=False)
        try:
            yield
        finally:
            if (
                noted
                and not self._unswept
                and not self._stuck
                and self._sweeping is None
            ):
                self._forgetUnswept()

    def _noteUnswept(self, ids: list[str], durable: bool = True) -> bool:
        """
        Note these jobs' output folders as still to be removed (in
        L{DELETED_OUTPUT}), before their records go: if this run stops
        before it has removed them, the next one does. C{durable}: fsynced
        (a power cut must not keep the deletion and lose the note), for
        the deletions whose folders go in later turns. False if it cannot
        be written (the disk is full, no regular file there): they are
        removed at once then.
        """
        data = "".join(f"{jobId}\n" for jobId in ids).encode("ascii")
        try:
            fd = openJournal(self._sweepJournal)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.log.warn(
                "cannot note {count} output folder(s) to remove in {path} "
                "({error}): removed at once",
                count=len(ids),
                path=self._sweepJournal,
                error=e.strerror,
            )
            return False
        return True

    def _sweepLater(self, ids: list[str]) -> None:
        """Remove these deleted jobs' output folders, a slice a turn."""
        self._unswept.extend(ids)
        if self._sweepTimer is None:  # (else its next try sweeps them too)
            self._sweepOn()

    def _sweepOn(self) -> None:
        """Sweep what is left, unless a sweep is under way."""
        self._sweepTimer = None
        if self._sweeping is None and self._unswept:
            self._sweeping = self._slices.coiterate(self._sweep())
            self._sweeping.addErrback(self._sweepStopped)

    def _sweep(self) -> Iterator[None]:
        """
        Remove the folders L{_unswept} names, a slice a turn; never that of
        a job the store still has (noted, but the store refused to delete
        it: it stays whole).
        """
        unswept = self._unswept
        failed = []
        while True:
            batch = list(islice(unswept, DELETE_SLICE))
            stored = self._store.existing(batch)
            for jobId in batch:
                if jobId not in stored and not self._removeOutput(jobId):
                    failed.append(jobId)
            for _ in batch:
                unswept.popleft()
            if not unswept:
                break
            yield None
        self._sweeping = None
        self._sweepDelay = RETRY_FIRST
        self._forgetUnswept()
        if self._stuck:
            # (Still to be tried again: noted again, for a restart.)
            self._noteUnswept(self._stuck, durable=False)
        if failed:
            self._removeLater(failed)
        elif not self._stuck:
            self._removalDelay = REMOVAL_RETRY_FIRST
        self._reserveAgain()

    def _sweepStopped(self, failure: Failure) -> None:
        self._sweeping = None
        if failure.check(SchedulerStopped):
            return  # closed: the journal has the rest, for the next start
        if failure.check(StoreError):
            # Tried again: nothing else would before the next DELETE /jobs
            # or a restart, and the disk stayed full (a review).
            delay, self._sweepDelay = (
                self._sweepDelay,
                min(self._sweepDelay * 2, RETRY_MAX),
            )
            self.log.error(
                "the output of {count} deleted job(s) is removed later (in "
                "{delay} s): {error}",
                count=len(self._unswept),
                delay=delay,
                error=failure.getErrorMessage(),
            )
            if self._sweepTimer is None:
                self._sweepTimer = self._reactor.callLater(delay, self._sweepOn)
            return
        self.log.failure("removing deleted jobs' output failed", failure)

    def _forgetUnswept(self) -> None:
        """Every folder noted is removed: so is the note."""
        try:
            os.unlink(self._sweepJournal)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn(
                "cannot remove {path}: {error}",
                path=self._sweepJournal,
                error=e.strerror,
            )

    def _resumeSweep(self) -> None:
        """
        At start-up: remove the output folders of deleted jobs that the
        last run did not get to (L{_noteUnswept}), a slice a turn.
        """
        try:
            # Not waiting on what is no regular file of ours (a FIFO there
            # kept the server from ever starting).
            fd = openOutput(self._sweepJournal)
            with open(fd, encoding="ascii", errors="replace") as f:
                noted = f.read().split()
        except FileNotFoundError:
            return
        except OSError as e:
            self.log.error(
                "cannot read {path}: {error}", path=self._sweepJournal, error=str(e)
            )
            return
        left = [jobId for jobId in dict.fromkeys(noted) if _isJobId(jobId)]
        if left:
            self.log.info(
                "removing the output of {count} deleted job(s)", count=len(left)
            )
            self._sweepLater(left)
        else:
            self._forgetUnswept()

    def _outputPath(self, jobId: str, stream: str) -> str:
        return self._executor.outputPath(jobId, stream)

    # -- shutdown --------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """
        Refuse new jobs, stop every running one and wait until each has ended
        (and is recorded) and its process group is gone.
        """
        self._shuttingDown = True
        jobs = [*self._live.values(), *self._cleaning.values()]
        self.log.info("shutdown: {count} job(s) live", count=len(jobs))
        return self._executor.shutdown(jobs)

    def _keepReserve(self, quiet: bool = False) -> bool:
        """
        Allocate L{RESERVE_BYTES} in the state dir, if not there already;
        False if it could not be (said in one line unless C{quiet}). Only
        the server's own regular file is grown: never through a symlink
        (one to any file made it 1 MiB of zeros: a fault round), nor a
        hard link, nor waiting on a FIFO, as the state dir's journals.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self._reserve, flags, 0o600)
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
                    raise OSError(errno.EPERM, "not a regular file of the server's own")
                # (Allocated already, it costs nothing; a sparse one is none.)
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.close(os.open(self._reserveInode, flags, 0o600))
        except OSError as e:
            if not quiet:
                error = e.strerror
                if e.errno == errno.ELOOP:
                    error = "a symlink, not followed"
                elif e.errno == errno.ENXIO:  # a FIFO no one reads, a socket
                    error = "not a regular file"
                self.log.warn(
                    "no disk reserve in {path}: {error}",
                    path=self._reserve,
                    error=error,
                )
            return False
        return True

    def _giveUpReserve(self, why: str | None = None) -> bool:
        """
        Free the reserve for the last writes (or C{why}: what for); True if
        there was one.
        """
        if not giveUpReserve(os.path.dirname(self._reserve)):
            return False
        self.log.warn(
            "the disk is full: the reserve is given up {why}",
            why=why or f"to store {len(self._unsaved)} final record(s)",
        )
        return True

    def close(self) -> None:
        """Close the store (after L{shutdown}), storing what it can first."""
        # Deletions under way stop between two slices (the next start
        # removes the output folders noted).
        self._slices.stop()
        timers = (
            self._retryTimer,
            self._dispatchTimer,
            self._nextTurnTimer,
            self._sweepTimer,
            self._removalTimer,
            self._slotCheck,
        )
        for timer in (*timers, self._storeLook):
            if timer is not None and timer.active():
                timer.cancel()
        self._retryTimer = self._dispatchTimer = self._sweepTimer = None
        self._removalTimer = None
        self._nextTurnTimer = None
        self._storeLook = None
        if self._unsaved and self.flushUnsaved() and self._giveUpReserve():
            self.flushUnsaved()
        if self._unsaved:
            for jobId, record in self._unsaved.items():
                # Nothing else will keep it: say it where an operator looks.
                self.log.error(
                    "job {job}'s final record could not be stored: {record}",
                    job=jobId,
                    record=record.toJSON(),
                )
        # The last chance to write the store's file again if it (or its
        # WAL) was removed since the last look: a clean stop in those 5 s
        # left no store at the path, every job lost (fault round 36).
        try:
            found = self._relinkStore()
        except StoreError as e:
            self.log.error(
                "the job store could not be written again as the server stops: {error}",
                error=str(e),
            )
        else:
            if found is not None:
                self.log.error("{found}", found=found)
        self._store.close()


def recordBytes(record: JobRecord) -> int:
    """
    About how much memory an ended record takes in the manager's cache:
    each string it shows twice (as a string, and in the JSON the API keeps
    on it, L{JobRecord.encoded}), its environment once (never shown), a
    fixed cost per string and per record. An estimate, not a measure.
    """
    shown = [
        record.command,
        *record.args,
        record.cwd or "",
        record.error or "",
        record.name or "",
        *record.labels.keys(),
        *record.labels.values(),
        *record.after,
        *record.after_ok,
    ]
    size = RECORD_BYTES + sum(_shownBytes(text) for text in shown)
    for name, value in record.env.items():
        size += _heldBytes(name) + _heldBytes(value)
    return size


def _heldBytes(text: str) -> int:
    """A string's memory: a character is 1 byte if all are ASCII, else up to 4."""
    return STRING_BYTES + (len(text) if text.isascii() else 4 * len(text))


def _shownBytes(text: str) -> int:
    """
    A shown string's memory, and its copy in the record's JSON: a character
    is 1 byte there if all are printable ASCII, else up to 12 (a control
    character is an escape of 6, \\u0001; an astral one two, \\ud83d\\ude00).
    """
    plain = text.isascii() and text.isprintable()
    return _heldBytes(text) + (len(text) if plain else 12 * len(text))


def _oneStepATurn() -> Callable[[], bool]:
    """The manager's L{Cooperator} runs one slice of one task per turn."""
    return lambda: True


def _isJobId(text: str) -> bool:
    try:
        parseJobId(text)
    except NotFound:
        return False
    return True


def _withReason(record: JobRecord, reason: str | None) -> JobRecord:
    record.pending_reason = reason
    return record


def giveUpReserve(stateDir: str) -> bool:
    """
    Free the disk reserve of C{stateDir} (L{RESERVE_BYTES}, and an inode
    beside it): True if it was there. SQLite makes two new files as it
    opens a store, and a deletion needs room in its journal: on a full
    disk, the reserve is what lets them (fault round 28: with no inode
    left, no start).
    """
    reserve = os.path.join(stateDir, RESERVE)
    try:
        os.unlink(reserve)
    except OSError:
        return False
    try:
        os.unlink(reserve + RESERVE_INODE)
    except OSError:
        pass
    return True


def _checkWritable(folder: str) -> bool:
    """
    Whether a file can be made in C{folder}: False if there is no room for
    one (no inode left, or the quota's).

    @raise OSError: nothing can be created in C{folder} (a read-only mount):
        every job's output would be lost, so refuse at start-up instead.
    """
    if roomForAFile(folder, strict=True):
        return True
    # Writable, but full (no inode left, or the quota's): the server starts,
    # so that retention or a DELETE can free room (every start failed until
    # a job folder was removed by hand: fault round 28).
    Logger().warn(
        "the jobs folder {folder} has no room for a new file: jobs' output is "
        "lost until some is freed",
        folder=folder,
    )
    return False
