"""
The reactor's reads of jobs' pipes, watched for a job that holds one.

A read of a pipe, non-blocking or not, waits for the pipe's lock, which the
writer holds while it copies from its own memory: a job that writes from a
page of a file not in memory, under its own C{io_read_bps} limit (or from a
filesystem that hangs), holds the lock in that page fault for as long as
its read takes, an hour at a few bytes a second. The server's thread waited
in the kernel all that time (D state), and every request with it: no stop,
not even an Admin's, could reach the job (attacker round 34). A thread of
its own looks at the read in progress every L{LOOK_EVERY} seconds; one that
has kept the reactor's thread waiting in the kernel for a pipe (L{inKernelWait})
for L{STALL_SECONDS} has its job killed (every process of it, its I/O limit
lifted first), which ends the fault, the lock, and the wait; so too one
whose shorter holds add up to as much within L{WINDOW_SECONDS}. The job ends
FAILED, saying why. (An output thread, L{jobworker.executors.local.pump},
serves one job's stream: not watched.)

Each read costs two attribute stores and an increment (L{StallWatch.reads}).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

#: Seconds a read of a job's pipe may keep the reactor's thread waiting in
#: the kernel before the job is killed. A pipe's lock is held for the copy
#: of one write (microseconds; milliseconds for a page read from a disk).
STALL_SECONDS = 1.0

#: How often the watch looks, in seconds.
LOOK_EVERY = 0.25

#: Over how many seconds a job's holds add up (L{StallWatch.look}): a job
#: that kept each under L{STALL_SECONDS} held the reactor's thread again and
#: again, 4 s of every 10, unkilled (attacker round 38). Each look that finds
#: the thread waiting for one of its pipes counts L{LOOK_EVERY} seconds
#: against it; L{STALL_SECONDS} of them within this many seconds kill it. A
#: job that holds its pipe's lock for a copy alone (microseconds) is found so
#: by a look once in a great while.
WINDOW_SECONDS = 10.0


#: What L{inKernelWait} says of a thread in D whose kernel does not say
#: where it waits (truthy: enough for one long hold, not to add up short
#: ones, which a fault of the server's own memory could make).
UNSAID = "unsaid"


def inKernelWait(threadId: int) -> bool | str:
    """
    Is the thread C{threadId} of this process waiting in the kernel (D) for
    a pipe (its C{wchan}: C{anon_pipe_read}, C{pipe_write}...)? Not for
    memory, nor the server's own disk (its spool frozen for a snapshot: a
    job that writes to it is not holding anything; session review 34). A
    kernel that does not say where (C{wchan} C{0}): D is enough (L{UNSAID}).
    """
    task = f"/proc/self/task/{threadId}"

    def waiting() -> bool:
        with open(f"{task}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :][:1] == b"D"

    try:
        if not waiting():
            return False
        with open(f"{task}/wchan", "rb") as f:
            where = f.read().strip()
        if b"pipe" in where:
            return True
        # "0": a kernel that does not say, or a thread that woke between
        # the two reads (late review 34): D still, then.
        return UNSAID if where in (b"", b"0") and waiting() else False
    except OSError:
        return False


class Slot:
    """
    One thread's read (or write) of a job's pipe in progress: set and
    cleared around each by its reader (L{jobworker.executors.local.pipes.
    PipeDrain}, and the stdin writer, on the reactor's thread: the only
    thread watched now).

    @ivar stalled: while a read is in progress, what kills its job (called
        from the watch's thread with the seconds it held); None between.
    @ivar reads: how many began (one long read told from many short ones).
    """

    __slots__ = ("reads", "seen", "since", "stalled", "threadId")

    def __init__(self, threadId: int) -> None:
        self.threadId = threadId
        self.stalled: Callable[[float], None] | None = None
        self.reads = 0
        self.seen: tuple[Callable[[float], None], int] | None = None
        self.since = 0.0


class StallWatch:
    """The threads that read jobs' pipes (L{Slot}s), and the one watching them."""

    log = Logger()

    def __init__(
        self,
        stallSeconds: float = STALL_SECONDS,
        lookEvery: float = LOOK_EVERY,
        waiting: Callable[[int], bool | str] = inKernelWait,
        now: Callable[[], float] = time.monotonic,
        watching: bool = True,
    ) -> None:
        """
        @param waiting: is the thread of that (native) id waiting in the kernel?
        @param watching: start a thread to look (False: a test calls L{look}).
        """
        self._watching = watching
        self._stallSeconds = stallSeconds
        self._lookEvery = lookEvery
        self._waiting = waiting
        self._now = now
        self._slots: dict[int, Slot] = {}
        self._thread: threading.Thread | None = None
        #: Per job (its kill), and per owner: when looks found the thread
        #: waiting for its pipes, within the last L{WINDOW_SECONDS} (the
        #: watch's thread's). A user's jobs taking turns held the reactor as
        #: one job had, none of them killed (session review 38).
        self._found: dict[Callable[[float], None], list[float]] = {}
        self._foundByOwner: dict[str, list[float]] = {}

    def slot(self, threadId: int | None = None) -> Slot:
        """
        The calling thread's slot (C{threadId}'s), made at its first call;
        the watch starts with the first (or the next, if its thread could
        not start).
        """
        if threadId is None:
            threadId = threading.get_native_id()
        slot = self._slots.get(threadId)
        if slot is None:
            slot = self._slots[threadId] = Slot(threadId)
        if self._thread is None and self._watching:
            thread = threading.Thread(
                target=self._run, name="jobworker pipe-stall watch", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as e:
                # (The server's pids limit: the next job tries again; it
                # was never tried again, the watch off for good: code
                # review round 40.)
                self.log.error(
                    "the pipe-stall watch could not start ({error}): tried "
                    "again with the next job",
                    error=str(e),
                )
            else:
                self._thread = thread
        return slot

    def drop(self, slot: Slot) -> None:
        """A thread done with pipes."""
        if self._slots.get(slot.threadId) is slot:
            del self._slots[slot.threadId]

    def _run(self) -> None:
        while True:
            time.sleep(self._lookEvery)
            try:
                self.look()
            except Exception:
                self.log.failure("the pipe-stall watch")

    def look(self) -> None:
        """One look at each thread's read in progress (the watch's thread)."""
        now = self._now()
        since = now - WINDOW_SECONDS
        _forget(self._found, since)
        _forget(self._foundByOwner, since)
        for slot in list(self._slots.values()):
            stalled, reads = slot.stalled, slot.reads
            if stalled is None:
                slot.seen = None
                continue
            if slot.seen != (stalled, reads):
                slot.seen = (stalled, reads)
                slot.since = now
            waiting = self._waiting(slot.threadId)
            if not waiting:
                continue
            found = self._found.setdefault(stalled, [])
            owner = _ownerOf(stalled)
            byOwner = [] if owner is None else self._foundByOwner.setdefault(owner, [])
            if waiting is True:  # (a pipe named: L{UNSAID} adds nothing up)
                found.append(now)
                byOwner.append(now)
            held = max(
                now - slot.since, max(len(found), len(byOwner)) * self._lookEvery
            )
            if held >= self._stallSeconds:
                slot.seen = None
                # (Counted afresh: a job still in the kernel after its kill
                # is not killed again at each look.)
                del self._found[stalled]
                if owner is not None:
                    del self._foundByOwner[owner]
                stalled(held)


def _forget(found: dict[Any, list[float]], since: float) -> None:
    """Drop the times of C{found} before C{since}, and the keys left none."""
    for key, times in list(found.items()):
        times[:] = [t for t in times if t > since]
        if not times:
            del found[key]


def _ownerOf(stalled: Callable[[float], None]) -> str | None:
    """The owner of the job C{stalled} kills (its C{killStalled}), if known."""
    record = getattr(getattr(stalled, "__self__", None), "record", None)
    owner = getattr(record, "owner", None)
    return owner if isinstance(owner, str) else None


#: The process's watch (started by the first job's pipes, for the process's
#: life: one thread, a look every L{LOOK_EVERY} seconds).
WATCH = StallWatch()


#: Where the kernel lists FUSE connections (C{fusectl}, mounted by systemd).
FUSE_CONNECTIONS = "/sys/fs/fuse/connections"


def abortFuseOf(
    pids: list[int],
    proc: str = "/proc",
    connections: str = FUSE_CONNECTIONS,
) -> list[int]:
    """
    Abort the FUSE connections a job made, as the mount tables of its
    processes C{pids} show them: those the server's own table does not
    have (made in the job's own mount namespace; by a root of its own user
    namespace under the exec chain, "user_id=0"). A job that read into a
    page of a FUSE file its own thread never serves held its pipe's lock
    past its kill, and the server's write
    waited in the kernel for good (attacker round 38 from inside a job):
    aborting ends the page's wait, and the lock's. The server's own (the
    host's: lxcfs, a user's sshfs) are never touched.

    @return: the connections aborted.
    """
    ours = set(_fuseMounts(f"{proc}/self/mountinfo"))
    aborted: list[int] = []
    for pid in pids:
        tables = _tablesOf(proc, pid)
        found = {c for table in tables for c in _fuseMounts(table)}
        # (A file system detached, umount2 MNT_DETACH, is in no mount table
        # while its pages are mapped: attacker round 39b. Those a job maps
        # name their device; one that is no FUSE connection has no folder
        # to abort, and the host's are in the server's table.)
        found |= _mappedDevices([t[: -len("mountinfo")] + "maps" for t in tables])
        for connection in sorted(found):
            if connection in ours or connection in aborted:
                continue
            try:
                with open(f"{connections}/{connection}/abort", "w") as f:
                    f.write("1")
            except OSError:
                continue
            aborted.append(connection)
    return aborted


#: Threads of one process whose mount tables L{abortFuseOf} reads, at most.
TABLES_READ = 64


def _tablesOf(proc: str, pid: int) -> list[str]:
    """
    The mount tables of C{pid}: each of its threads' (up to L{TABLES_READ}).
    A process whose first thread ended (C{SYS_exit}) has no table of its
    own any more, while its other threads wait in the FUSE page (attacker
    round 39 from inside a job); and a thread may have a mount namespace
    of its own.
    """
    try:
        threads = sorted(os.listdir(f"{proc}/{pid}/task"))[:TABLES_READ]
    except OSError:
        return [f"{proc}/{pid}/mountinfo"]
    return [f"{proc}/{pid}/task/{thread}/mountinfo" for thread in threads]


def _mappedDevices(maps: list[str]) -> set[int]:
    """
    The anonymous devices (their minor numbers) of the files mapped in
    the first of the memory maps C{maps} that can be read (a process's
    threads share one; its first thread's is empty once it ended). Read
    from the maps alone: nothing asks the file systems (a stat of a FUSE
    file waits on its server: the job).
    """
    for path in maps:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        if not lines:
            continue
        found = set()
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) < 5 or parts[4] == "0":
                continue  # (anonymous memory: no file)
            major, _, minor = parts[3].partition(":")
            try:
                if int(major, 16) == 0:
                    found.add(int(minor, 16))
            except ValueError:
                continue
        return found
    return set()


def _fuseMounts(path: str) -> list[int]:
    """
    The FUSE file systems of the mount table C{path} (a C{mountinfo}): each
    one's connection (its anonymous device's number).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            table = f.read()
    except OSError:
        return []
    found = []
    for line in table.splitlines():
        fields, _, rest = line.partition(" - ")
        kind = rest.partition(" ")[0]
        parts = fields.split()
        if len(parts) < 3 or kind.split(".")[0] != "fuse":
            continue  # (fuseblk: a block device's, root's to mount)
        major, _, minor = parts[2].partition(":")
        if major != "0" or not (minor.isascii() and minor.isdigit()):
            continue  # (a FUSE file system's device is an anonymous one)
        found.append(int(minor))
    return found


def mountFuseControl(connections: str = FUSE_CONNECTIONS) -> None:
    """
    Mount C{fusectl} at C{connections} if it is not (systemd mounts it; a
    container or a bare init may not): L{abortFuseOf} writes there. Root's
    alone; a failure leaves it as it was.
    """
    if not os.path.isdir(connections) or os.path.ismount(connections):
        return
    try:
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", connections],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass
