"""After a crash: find what is left of jobs that were running, and kill it."""

from __future__ import annotations

import ctypes
import os
import signal
import time

#: The unit of a process's start time in /proc/<pid>/stat (USER_HZ).
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

#: A recorded start time is the first tick of a window this many ticks
#: wider (L{spawnedAt}): the leader started in it.
START_SLACK = 1


def currentBootId() -> str | None:
    """The kernel's id of this boot (changes at every reboot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _stat(pid: int | str) -> list[str] | None:
    # Three system calls, not a buffered file's six: this runs for every job
    # started (its leader's start time), where it cost ~160 us, now ~95.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)  # under 1 KiB: 52 numbers and a 16-byte name
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data:
        return None
    # The command name (field 2) may hold spaces and parentheses.
    return data[data.rindex(b")") + 2 :].decode("ascii").split()


def _alive(pid: int | str, fields: list[str] | None) -> bool:
    """
    Is the process C{pid} (its C{/proc/PID/stat} C{fields}) alive? Its
    state is its first thread's: one that ended with C{SYS_exit} reads
    C{Z} while the process's other threads go on, and such a process was
    taken for gone by every scan for what a uid or a job left (its dynamic
    uid handed to another user's job while it ran; attacker round 39 from
    inside a job). A zombie's count of threads is read: the kernel counts
    its first thread until the process is reaped, and each other one until
    it ends, so more than one is a thread still running. (Its threads
    listed one by one missed a process whose only thread kept starting
    another and ending, one scan in nine: the verifier of round 39.)
    """
    if fields is None:
        return False
    if fields[0] not in ("Z", "X"):
        return True
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1]) > 1
    except (OSError, ValueError, IndexError):
        return False
    return False


def processStartTime(pid: int) -> int | None:
    """Start time of C{pid} in clock ticks since boot, or None if it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def bootTicks() -> int:
    """
    Now, in the clock ticks since boot of L{processStartTime}: the kernel
    stamps a new process with the same clock (C{CLOCK_BOOTTIME}) and /proc
    rounds it down to ticks alike.
    """
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * TICKS_PER_SECOND // 10**9


def spawnedAt(pid: int, before: int, after: int) -> int | None:
    """
    The start time to record for C{pid}, spawned between two L{bootTicks}
    readings: C{before} when they are at most L{START_SLACK} apart (the
    start lies in that window: no read of /proc, which cost the server's
    thread about a tenth of its time per started job); else read from
    /proc, exactly.
    """
    if after - before <= START_SLACK:
        return before
    return processStartTime(pid)


def sessionMembers() -> dict[int, list[int]]:
    """Every live process, grouped by session id."""
    sessions: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if not _alive(entry, fields):
            continue
        assert fields is not None
        sessions.setdefault(int(fields[3]), []).append(int(entry))
    return sessions


def realUid(pid: int) -> int | None:
    """The real uid of C{pid}, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def groupTakenOver(pgid: int, uid: int) -> bool:
    """
    Does a live process of group C{pgid} run as another uid than C{uid}?
    Once a job's leader is gone, its group's number is taken over when the
    group empties: a new process may get the number as its pid, make a
    session (and group) of it and leave (a double-forked daemon), and no
    process then has that pid while the group lives on (fault round 34).
    A scan of every process: asked only of a group whose leader is gone.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if fields is None or int(fields[2]) != pgid or not _alive(entry, fields):
            continue
        owner = realUid(int(entry))
        if owner is not None and owner != uid:
            return True
    return False


def _startedThen(start: int, procStart: int) -> bool:
    """Is a process that started at C{start} the one recorded at C{procStart}?"""
    return procStart <= start <= procStart + START_SLACK


def pidReused(pid: int, procStart: int | None) -> bool:
    """
    Is C{pid} now held by another process than the one started at
    C{procStart} (L{spawnedAt}'s window)? False when no process has that pid
    now, or when C{procStart} is not known (None, or 0: the spawner could not
    read it).
    """
    if not procStart:
        return False
    start = processStartTime(pid)
    if start is None:
        return False
    return not _startedThen(start, procStart)


def leftovers(
    pid: int | None,
    bootId: str | None,
    procStart: int | None,
    sessions: dict[int, list[int]],
    uid: int | None = None,
) -> list[int]:
    """
    The processes still alive in the session a job's leader C{pid} created.

    Nothing is returned unless it is provably that session: same boot, and
    the leader either gone or still the very process we started (its start
    time in the window recorded, L{spawnedAt}: no other process can have
    had its pid within a tick of it, while it held that pid), so a reused
    pid is never signalled. With the leader gone, only the members that run
    as the job's C{uid} (when known): once the session emptied, its number
    could be another's (a daemon's session whose leader left: it was
    killed, fault round 34).
    """
    if pid is None or bootId is None or bootId != currentBootId():
        return []
    start = processStartTime(pid)
    if start is not None and (procStart is None or not _startedThen(start, procStart)):
        return []
    members = list(sessions.get(pid, []))
    if start is None and uid is not None:
        members = [member for member in members if realUid(member) == uid]
    return members


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def ancestors() -> set[int]:
    """This process and every process above it."""
    found: set[int] = set()
    pid: int | None = os.getpid()
    while pid is not None and pid > 1 and pid not in found:
        found.add(pid)
        pid = _parent(pid)
    return found


def liveServerOf(pids: list[int], ours: set[int] | None = None) -> int | None:
    """
    The pid of a live jobworker, other than this server and its spawner,
    that is the parent of one of C{pids} (a server, C{twistd ... jobworker
    ...}, or its job spawner, C{launcher --spawner}): they are its jobs'
    processes. After a crash a job's leader has no jobworker parent (it
    went to init, or to a subreaper above this server, with the server
    and its spawner); a leader that still has one belongs to a server that
    runs, on another state dir: this one is a copy of its (a backup
    restored, an upgrade rehearsed), and its records name that server's
    jobs. Only a parent outside C{pids} counts (a job's own processes may
    run any command line; the parent of its leader is none of them), and
    none of this server's ancestors (a subreaper that took in a crashed
    server's jobs: C{ours}, L{ancestors} read once by a caller that asks
    about many).
    """
    if ours is None:
        ours = ancestors()
    among = set(pids)
    for pid in pids:
        parent = _parent(pid)
        if parent is None or parent <= 1 or parent in ours or parent in among:
            continue
        argv = _argv(parent)
        if argv[1:2] == [b"--spawner"]:
            # A spawner counts while its server lives (one whose server was
            # killed exits at once, but may not have yet).
            server = _parent(parent)
            if server is None or server in ours or b"jobworker" not in _argv(server):
                continue
            return parent
        if b"jobworker" in argv:
            return parent
    return None


def liveServerOfLeader(
    pid: int | None,
    bootId: str | None,
    procStart: int | None,
    ours: set[int] | None = None,
) -> int | None:
    """
    L{liveServerOf} the job's leader C{pid}, when it is provably the very
    process recorded (same boot, its start time in the window recorded).
    """
    if pid is None or bootId is None or bootId != currentBootId():
        return None
    start = processStartTime(pid)
    if start is None or procStart is None or not _startedThen(start, procStart):
        return None
    return liveServerOf([pid], ours)


def killAll(pids: list[int]) -> int:
    """SIGKILL each pid; return how many were signalled."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


#: setresuid(2)'s number, by machine: called directly, it changes the
#: calling thread's credentials alone (glibc's wrapper changes every
#: thread's).
_SETRESUID = {"x86_64": 117, "aarch64": 147}.get(os.uname().machine)


def killUid(uid: int) -> bool:
    """
    SIGKILL every process of C{uid} at once: C{kill(-1)} sent as C{uid}
    (this thread's credentials alone, for those few system calls), the
    kernel's one pass over every process, which a process forking a
    successor and exiting cannot outrun (a fork with a fatal signal
    pending fails). Scans of C{/proc} one pid at a time missed such a
    process, and without cgroups its dynamic uid went to another user's
    job while it ran (attacker round 39b from inside a job). Whether it
    could be sent (root, on a known machine).
    """
    if _SETRESUID is None or os.geteuid() != 0 or uid == 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    # (The saved uid stays 0: the thread may be root again.)
    if libc.syscall(_SETRESUID, uid, uid, 0) != 0:
        return False
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass  # (none left: ESRCH)
    finally:
        if libc.syscall(_SETRESUID, 0, 0, 0) != 0:
            os._exit(70)  # never go on as another uid
    return True


def processesByUid(uids: range | None = None) -> dict[int, list[int]]:
    """
    Every live (non-zombie) process, by its (effective) user; only users in
    C{uids} if given. One scan of /proc.
    """
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if uids is not None and uid not in uids:
            continue
        if _alive(entry, _stat(entry)):
            found.setdefault(uid, []).append(int(entry))
    return found


#: The processes between a job and its server that are not the job's uid:
#: the compiled launcher (the spawner, its copy as a PID namespace's first
#: process) and the exec chain's C{unshare --fork}, by command name.
_BETWEEN = ("launcher-", "unshare")


def hasLiveParent(uid: int, pids: list[int]) -> bool:
    """
    Does one of C{pids} (processes of C{uid}) descend from a live process
    other than init: up through C{uid}'s own processes and jobworker's
    launchers, the first other ancestor is not PID 1 (a live server's job).
    A dead server's leftovers were reparented to init. (A subreaper would
    keep them: they are then left alone, never a live job killed.)
    """
    for pid in pids:
        current = pid
        for _ in range(64):
            fields = _stat(current)
            if fields is None:
                break
            parent = int(fields[1])
            if parent <= 1:
                break
            try:
                owner = os.stat(f"/proc/{parent}").st_uid
                with open(f"/proc/{parent}/comm", "rb") as f:
                    name = f.read().decode("ascii", "replace").strip()
            except OSError:
                break
            if owner != uid and not name.startswith(_BETWEEN):
                return True
            current = parent
    return False


def processesOf(uid: int) -> list[int]:
    """Every live process whose (effective) user is C{uid}."""
    return processesByUid(range(uid, uid + 1)).get(uid, [])
