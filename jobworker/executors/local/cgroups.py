"""Per-job cgroups, v1 and v2: limits, whole-tree kill, clean-up."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

from twisted.logger import Logger

from ...jobs.limits import Limits

log = Logger(namespace="jobworker.executors.local.cgroups")

#: The name of the folder under the server's own cgroup that holds the jobs'.
JOBS_FOLDER = "jobworker"

CPU_PERIOD_US = 100_000

#: Reads of a v1 freezer's state, waiting for FROZEN without sleeping
#: (about 5 us each: a millisecond at most).
FREEZE_READS = 200


class CgroupError(Exception):
    """
    A cgroup could not be set up; the message says which file and why.

    @ivar errno: the system call's error number, if one failed.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CgroupSetupError(CgroupError):
    """
    The server's own cgroup set-up failed when a job's cgroup was made (the
    jobs' folder was removed and cannot be made again, say): no outcome of
    the job, which is not started (a C{503}, or it stays queued).
    """


class JobCgroup(Protocol):
    """One job's cgroup, whatever the version."""

    def addProcess(self, pid: int) -> None:
        """Move C{pid} into the cgroup (before it runs the user's command)."""

    def openProcs(self) -> list[int]:
        """
        Its C{cgroup.procs} files (one per hierarchy), opened for writing:
        a process that writes C{"0"} to each joins the cgroup. The caller
        closes them.
        """

    def signal(self, signum: int) -> bool:
        """Send C{signum} to every process in it; False if it is empty."""

    def kill(self) -> bool:
        """SIGKILL every process in it, escapees from the session included."""

    def oomKilled(self) -> bool:
        """True if the kernel killed a process of it at the memory limit."""

    def remove(self) -> bool:
        """Remove the cgroup; False while processes remain."""

    def empty(self) -> bool:
        """True when no process is left in it."""

    def members(self) -> list[int]:
        """The processes in it now (none if they cannot be read)."""


class Cgroups(Protocol):
    """A cgroup hierarchy the server may create job cgroups in."""

    version: int
    supported: frozenset[str]
    #: The device (C{major:minor}) the jobs' disk rates are limited on.
    ioDevice: str | None

    def create(self, jobId: str, limits: Limits, gid: int = 0) -> JobCgroup:
        """
        Make the cgroup of a job and apply its limits: its folders root's
        and the job's group's (C{gid}), 0750, so no other job reads them.
        """

    def find(self, jobId: str) -> JobCgroup | None:
        """The cgroup an earlier run of the server made for a job, if any."""


#: The v1 throttle files of a job's I/O limits, and v2's line of no limit.
V1_READ_BPS = "blkio.throttle.read_bps_device"
V1_WRITE_BPS = "blkio.throttle.write_bps_device"
V2_UNLIMITED = "rbps=max wbps=max riops=max wiops=max"


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(
            f"cannot write {value!r} to {path}: {e.strerror}", e.errno
        ) from None


def _openProcs(folders: Iterable[str]) -> list[int]:
    fds: list[int] = []
    try:
        for folder in folders:
            path = f"{folder}/cgroup.procs"
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise CgroupError(f"cannot open {path}: {e.strerror}", e.errno) from None
    return fds


def _read(path: str) -> str:
    # os.open and os.read: a text file object costs a fstat, an ioctl and a
    # lseek more, for files read at every job's end.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii")


def _pids(procs: str) -> list[int] | None:
    """
    The pids in a C{cgroup.procs} file: none if the cgroup is gone, None
    if it could not be read (no descriptor left, EMFILE): "maybe some",
    never taken as empty (a stop then signalled nothing and gave up).
    """
    try:
        return [int(line) for line in _read(procs).split()]
    except FileNotFoundError:
        return []
    except OSError:
        return None


def _signalAll(pids: list[int] | None, signum: int) -> bool:
    """
    Send C{signum} to each of C{pids}; whether anything may have been there
    (True for unknown members, None: the caller tries again later).
    """
    if pids is None:
        return True
    sent = False
    for pid in pids:
        try:
            os.kill(pid, signum)
            sent = True
        except OSError:
            pass
    return sent


def unlisted(base: str) -> None:
    """
    The jobs' folder of a hierarchy: entered by anyone (a job reads its own
    cgroup's files), listed by none but root. Its entries are the job ids
    and, in each, the pids and the memory use of every running job: a job
    (another user's, a dynamic uid) learns none of them, as /proc shows it
    no process of another uid. A job's own is found by its path, in
    /proc/self/cgroup.

    Its own files too are root's alone: they hold the totals of every
    running job (memory use, C{memory.stat}, the process count), from which
    a job took its own to learn another's (attacker round 38). (Call it once
    the controllers a hierarchy enables have made their files.)
    """
    try:
        os.chmod(base, 0o711)  # noqa: S103 (search, never list: see above)
        with os.scandir(base) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    os.chmod(entry.path, 0o600)
    except OSError as e:
        log.warn(
            "cgroup folder {path} left listable or its totals readable: {error}",
            path=base,
            error=str(e),
        )


def _mkdir(path: str, gid: int = 0) -> None:
    """
    A job's cgroup folder, 0750 and group C{gid}'s: the job reads its own
    (a JVM or Go runtime sizes itself by its limits), no other job reads
    its pids, memory use or limits (every role lists the job ids).
    """
    try:
        os.mkdir(path, 0o750)
        if gid:
            os.chown(path, -1, gid)
            # Whatever the umask (twistd's daemon mode sets 077).
            os.chmod(path, 0o750)  # noqa: S103 (its group: the job reads its own)
    except FileExistsError:
        pass
    except OSError as e:
        raise CgroupError(f"cannot create {path}: {e.strerror}", e.errno) from None


def _makeJobFolder(path: str, gid: int, base: str, remake: Callable[[], None]) -> None:
    """
    L{_mkdir} of a job's folder in C{base}, the jobs' folder of a hierarchy.
    Gone (a clean-up tool or a release agent removed it while no job ran),
    C{base} is made again (C{remake}) and the mkdir tried once more.

    @raise CgroupSetupError: it still cannot be made.
    """
    try:
        _mkdir(path, gid)
        return
    except CgroupError as e:
        if e.errno != errno.ENOENT:
            raise CgroupSetupError(str(e), e.errno) from None
    log.warn("the jobs' cgroup folder {path} was removed: made again", path=base)
    try:
        remake()
        _mkdir(path, gid)
    except (OSError, CgroupError) as e:
        raise CgroupSetupError(
            f"cannot make the jobs' cgroup folder {base} again: {e}",
            getattr(e, "errno", None),
        ) from None


def _unthrottle(path: str, unlimited: str) -> None:
    """
    Lift the I/O limit each device's line of the throttle file C{path}
    holds (C{unlimited} after its device: v1 C{0}, v2 C{rbps=max ...}), if
    any: a process whose I/O is queued at a tiny limit sleeps in the
    kernel (D state), where a KILL waits for that I/O, for hours at a few
    bytes a second (attacker round 30). Not there, or not writable: left.
    """
    try:
        text = _read(path)
    except OSError:
        return
    for line in text.splitlines():
        device = line.split(" ", 1)[0]
        if device and line.split(" ", 1)[1:] != [unlimited]:
            try:
                _write(path, f"{device} {unlimited}")
            except CgroupError:
                pass


def _killFrozen(
    control: str,
    freeze: str,
    thaw: str,
    members: Callable[[], list[int] | None],
    settle: Callable[[], None] | None = None,
) -> bool:
    """
    Freeze a cgroup (so nothing in it can fork while we kill), SIGKILL every
    member, then thaw it so the kills are delivered. A freezer that cannot be
    written still gets the kills.
    """
    try:
        _write(control, freeze)
        if settle is not None:
            settle()
    except (CgroupError, OSError):
        pass
    killed = _signalAll(members(), signal.SIGKILL)
    try:
        _write(control, thaw)
    except CgroupError:
        pass
    return killed


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def _counter(path: str, key: str) -> int:
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def readAhead(device: str | None) -> int | None:
    """How many bytes the kernel reads ahead on C{device} (C{major:minor}),
    or None (no device, or not said)."""
    if device is None:
        return None
    try:
        return int(_read(f"/sys/dev/block/{device}/queue/read_ahead_kb")) * 1024
    except (OSError, ValueError):
        return None


def blockDevice(path: str) -> str | None:
    """C{major:minor} of the block device holding C{path}, or None (no device)."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return None
    major, minor = os.major(device), os.minor(device)
    if major == 0:
        return None
    # Throttling applies to whole disks; a partition's parent is its disk.
    disk = f"/sys/dev/block/{major}:{minor}/partition"
    if os.path.exists(disk):
        try:
            parent = os.path.basename(
                os.path.dirname(os.path.realpath(f"/sys/dev/block/{major}:{minor}"))
            )
            return _read(f"/sys/class/block/{parent}/dev").strip()
        except OSError:
            return None
    return f"{major}:{minor}"


def ownCgroups(selfCgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """The server's own cgroup path per v1 controller, and C{""} for v2."""
    paths: dict[str, str] = {}
    try:
        lines = _read(selfCgroup).splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


# -- v1 ----------------------------------------------------------------------


class V1Group:
    """A job's cgroup in each v1 hierarchy (memory, cpu, pids, blkio, freezer)."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def addProcess(self, pid: int) -> None:
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def openProcs(self) -> list[int]:
        return _openProcs(self.paths.values())

    def members(self) -> list[int]:
        return self._members() or []

    def _members(self) -> list[int] | None:
        freezer = self.paths.get("freezer")
        if freezer is not None:
            return _pids(f"{freezer}/cgroup.procs")
        # A cgroup made in part (see CgroupsV1.find): each folder's.
        members: set[int] = set()
        for path in self.paths.values():
            pids = _pids(f"{path}/cgroup.procs")
            if pids is None:
                return None
            members.update(pids)
        return sorted(members)

    def signal(self, signum: int) -> bool:
        return _signalAll(self._members(), signum)

    def kill(self) -> bool:
        blkio = self.paths.get("blkio")
        if blkio is not None:
            for knob in (V1_READ_BPS, V1_WRITE_BPS):
                _unthrottle(os.path.join(blkio, knob), "0")
        if "freezer" not in self.paths:
            # Made in part, never joined (the freezer's folder is made
            # last, and the job joins after its cgroup is made): nothing
            # to freeze, and there should be nothing to kill.
            return _signalAll(self._members(), signal.SIGKILL)
        # Freeze first, so nothing can fork while we kill, then thaw so the
        # pending SIGKILLs are delivered. v1 freezes asynchronously
        # (FREEZING, then FROZEN): the state is read a few times, never
        # slept on (a wait held the reactor up to half a second). A process
        # that joined after the members were read is killed after the thaw;
        # what escapes that (a fork in flight) does not escape the job's
        # end: its cgroup is removed only once empty, killed again meanwhile.
        state = os.path.join(self.paths["freezer"], "freezer.state")

        def settle() -> None:
            for _ in range(FREEZE_READS):
                if _read(state).strip() == "FROZEN":
                    return

        killed = _killFrozen(state, "FROZEN", "THAWED", self._members, settle)
        return _signalAll(self._members(), signal.SIGKILL) or killed

    def oomKilled(self) -> bool:
        memory = self.paths.get("memory")
        if memory is None:
            return False
        return _counter(os.path.join(memory, "memory.oom_control"), "oom_kill") > 0

    def remove(self) -> bool:
        return all([_rmdir(path) for path in self.paths.values()])

    def empty(self) -> bool:
        """True when no process is left in it (unreadable: not empty)."""
        return self._members() == []


class CgroupsV1:
    """
    cgroup v1: one folder per controller, under the server's own cgroup in
    each hierarchy (C{<mount>/<own path>/jobworker/<job id>}).
    """

    version = 1
    CONTROLLERS = ("memory", "cpu", "pids", "blkio", "freezer")

    def __init__(self, bases: dict[str, str], ioDevice: str | None) -> None:
        self._bases = bases
        self._ioDevice = self.ioDevice = ioDevice
        supported = {"memory_bytes", "cpu_millicores", "pids"}
        if ioDevice is not None:
            supported |= {"io_read_bps", "io_write_bps"}
        self.supported = frozenset(supported)

    @classmethod
    def detect(
        cls, root: str = "/sys/fs/cgroup", ioPath: str = "/"
    ) -> CgroupsV1 | None:
        """The v1 hierarchies, if every controller is mounted and writable."""
        own = ownCgroups()
        bases: dict[str, str] = {}
        for controller in cls.CONTROLLERS:
            mount = os.path.join(root, controller)
            if not os.path.isfile(os.path.join(mount, "cgroup.procs")):
                return None
            relative = own.get(controller, "/").lstrip("/")
            if controller == "cpu" and "cpu" not in own:
                relative = own.get("cpu,cpuacct", "/").lstrip("/")
            base = os.path.join(mount, relative, JOBS_FOLDER)
            try:
                os.makedirs(base, exist_ok=True)
            except OSError:
                return None
            if not os.access(base, os.W_OK):
                return None
            unlisted(base)
            bases[controller] = base
        return cls(bases, blockDevice(ioPath))

    def create(self, jobId: str, limits: Limits, gid: int = 0) -> V1Group:
        # The freezer (for the whole-tree kill) and cpu always; the others
        # only when they hold a limit: each hierarchy costs a mkdir, a write
        # and a rmdir. Outside a cpu cgroup of its own a job's processes
        # weighed one each against the server's thread and other users'
        # jobs: 400 busy loops in sessions of their own (the kernel's
        # autogroups go by session) starved them (attack round 32).
        wanted = {"freezer", "cpu"}
        if limits.memory_bytes is not None:
            wanted.add("memory")
        if limits.pids is not None:
            wanted.add("pids")
        if limits.io_read_bps is not None or limits.io_write_bps is not None:
            wanted.add("blkio")
        paths = {c: f"{base}/{jobId}" for c, base in self._bases.items() if c in wanted}
        group = V1Group(paths)
        try:
            for controller, path in paths.items():
                base = self._bases[controller]
                _makeJobFolder(path, gid, base, partial(self._remake, base))
            self._apply(paths, limits)
        except CgroupError:
            group.remove()
            raise
        return group

    @staticmethod
    def _remake(base: str) -> None:
        """The jobs' folder of a hierarchy, again (as L{detect} made it)."""
        os.makedirs(base, exist_ok=True)
        unlisted(base)

    def _apply(self, paths: dict[str, str], limits: Limits) -> None:
        if limits.memory_bytes is not None:
            memory = paths["memory"]
            _write(
                os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory_bytes)
            )
            swap = os.path.join(memory, "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):
                _write(swap, str(limits.memory_bytes))
        if limits.cpu_millicores is not None:
            cpu = paths["cpu"]
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            quota = limits.cpu_millicores * CPU_PERIOD_US // 1000
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(max(quota, 1000)))
        if limits.pids is not None:
            _write(os.path.join(paths["pids"], "pids.max"), str(limits.pids))
        for name, knob in (
            ("io_read_bps", V1_READ_BPS),
            ("io_write_bps", V1_WRITE_BPS),
        ):
            value = getattr(limits, name)
            if value is not None:
                _write(os.path.join(paths["blkio"], knob), f"{self._ioDevice} {value}")

    def find(self, jobId: str) -> JobCgroup | None:
        """
        Whatever folders of the job's cgroup exist, the freezer's or not: a
        server killed while making them made only the first (L{create}
        makes the freezer's last).
        """
        paths = {c: os.path.join(base, jobId) for c, base in self._bases.items()}
        present = {c: path for c, path in paths.items() if os.path.isdir(path)}
        return V1Group(present) if present else None


# -- v2 ----------------------------------------------------------------------


class V2Group:
    """A job's cgroup in the unified (v2) hierarchy."""

    def __init__(self, path: str) -> None:
        self.path = path

    def addProcess(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def openProcs(self) -> list[int]:
        return _openProcs([self.path])

    def members(self) -> list[int]:
        return self._members() or []

    def _members(self) -> list[int] | None:
        return _pids(os.path.join(self.path, "cgroup.procs"))

    def signal(self, signum: int) -> bool:
        return _signalAll(self._members(), signum)

    def kill(self) -> bool:
        _unthrottle(os.path.join(self.path, "io.max"), V2_UNLIMITED)
        members = self._members()
        killFile = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(killFile):
            try:
                _write(killFile, "1")
            except CgroupError:
                return True  # tried again (the stop's and the removal's)
            return members != []
        freeze = os.path.join(self.path, "cgroup.freeze")
        return _killFrozen(freeze, "1", "0", self._members)

    def oomKilled(self) -> bool:
        return _counter(os.path.join(self.path, "memory.events"), "oom_kill") > 0

    def remove(self) -> bool:
        return _rmdir(self.path)

    def empty(self) -> bool:
        """True when no process is left in it (unreadable: not empty)."""
        return self._members() == []


class CgroupsV2:
    """
    cgroup v2: job cgroups under C{<base>/<job id>}, where C{base} is a
    folder whose C{cgroup.subtree_control} enables the controllers we use.
    """

    version = 2
    WANTED = ("memory", "cpu", "pids", "io")

    def __init__(
        self, base: str, controllers: frozenset[str], ioDevice: str | None
    ) -> None:
        self.base = base
        self._ioDevice = self.ioDevice = ioDevice
        #: What L{detect} wrote to C{cgroup.subtree_control} (written again
        #: when the jobs' folder is made again).
        self._enable = " ".join(f"+{c}" for c in self.WANTED if c in controllers)
        supported: set[str] = set()
        if "memory" in controllers:
            supported.add("memory_bytes")
        if "cpu" in controllers:
            supported.add("cpu_millicores")
        if "pids" in controllers:
            supported.add("pids")
        if "io" in controllers and ioDevice is not None:
            supported |= {"io_read_bps", "io_write_bps"}
        self.supported = frozenset(supported)

    @classmethod
    def detect(
        cls,
        root: str = "/sys/fs/cgroup",
        own: str | None = None,
        ioPath: str = "/",
        selfPid: int | None = None,
    ) -> CgroupsV2 | None:
        """
        Set up the server's v2 sub-tree: move the server into a leaf of its
        own cgroup (v2 allows no processes beside child cgroups), enable the
        controllers below it, and make the jobs' folder.
        """
        if not os.path.isfile(os.path.join(root, "cgroup.controllers")):
            return None
        if own is None:
            own = ownCgroups().get("", "/")
        ownPath = os.path.join(root, own.lstrip("/"))
        try:
            available = set(_read(os.path.join(ownPath, "cgroup.controllers")).split())
        except OSError:
            return None
        wanted = [c for c in cls.WANTED if c in available]
        try:
            leaf = os.path.join(ownPath, "jobworker-server")
            os.makedirs(leaf, exist_ok=True)
            for pid in _pids(os.path.join(ownPath, "cgroup.procs")) or []:
                if selfPid is None or pid == selfPid:
                    _write(os.path.join(leaf, "cgroup.procs"), str(pid))
            base = os.path.join(ownPath, JOBS_FOLDER)
            os.makedirs(base, exist_ok=True)
            enable = " ".join(f"+{c}" for c in wanted)
            if enable:
                _write(os.path.join(ownPath, "cgroup.subtree_control"), enable)
                _write(os.path.join(base, "cgroup.subtree_control"), enable)
            unlisted(base)
        except (OSError, CgroupError) as e:
            log.warn(
                "cgroup v2 unusable at {path}: {error}", path=ownPath, error=str(e)
            )
            return None
        return cls(base, frozenset(wanted), blockDevice(ioPath))

    def create(self, jobId: str, limits: Limits, gid: int = 0) -> V2Group:
        path = os.path.join(self.base, jobId)
        _makeJobFolder(path, gid, self.base, self._remake)
        group = V2Group(path)
        try:
            self._apply(path, limits)
        except CgroupError:
            group.remove()
            raise
        return group

    def _remake(self) -> None:
        """The jobs' folder again, its controllers enabled (as L{detect})."""
        os.makedirs(self.base, exist_ok=True)
        if self._enable:
            own = os.path.dirname(self.base)
            _write(os.path.join(own, "cgroup.subtree_control"), self._enable)
            _write(os.path.join(self.base, "cgroup.subtree_control"), self._enable)
        unlisted(self.base)

    def _apply(self, path: str, limits: Limits) -> None:
        if limits.memory_bytes is not None:
            _write(os.path.join(path, "memory.max"), str(limits.memory_bytes))
            swap = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        if limits.cpu_millicores is not None:
            quota = max(limits.cpu_millicores * CPU_PERIOD_US // 1000, 1000)
            _write(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
        if limits.pids is not None:
            _write(os.path.join(path, "pids.max"), str(limits.pids))
        io = []
        if limits.io_read_bps is not None:
            io.append(f"rbps={limits.io_read_bps}")
        if limits.io_write_bps is not None:
            io.append(f"wbps={limits.io_write_bps}")
        if io:
            _write(os.path.join(path, "io.max"), f"{self._ioDevice} {' '.join(io)}")

    def find(self, jobId: str) -> JobCgroup | None:
        path = os.path.join(self.base, jobId)
        return V2Group(path) if os.path.isdir(path) else None


def detect(root: str = "/sys/fs/cgroup", ioPath: str = "/") -> Cgroups | None:
    """
    The usable cgroup hierarchy: v2 when the unified hierarchy has
    controllers for us, else v1 when its controllers are mounted and
    writable, else None (limits off; process-group kill).
    """
    v2 = CgroupsV2.detect(root, ioPath=ioPath, selfPid=os.getpid())
    if v2 is not None and v2.supported:
        return v2
    return CgroupsV1.detect(root, ioPath=ioPath)
