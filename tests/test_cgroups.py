"""cgroup v2 logic against a fake cgroupfs tree (v1 runs for real in test_limits)."""

from __future__ import annotations

import errno
import os
import signal

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jobworker.executors.local.cgroups import CgroupsV2, V1Group, V2Group, ownCgroups
from jobworker.jobs.limits import Limits


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


class FakeV2Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.own = os.path.join(self.root, "system.slice", "jobworker.service")
        os.makedirs(self.own)
        write(
            os.path.join(self.root, "cgroup.controllers"), "cpuset cpu io memory pids\n"
        )
        write(os.path.join(self.own, "cgroup.controllers"), "cpu io memory pids\n")
        write(os.path.join(self.own, "cgroup.procs"), "4242\n")
        self.v2 = CgroupsV2.detect(
            self.root,
            own="/system.slice/jobworker.service",
            ioPath=self.root,
            selfPid=4242,
        )
        assert self.v2 is not None

    def test_detectPreparesSubtree(self) -> None:
        """The server moves into a leaf; controllers are enabled below it."""
        leaf = os.path.join(self.own, "jobworker-server")
        self.assertEqual(read(os.path.join(leaf, "cgroup.procs")), "4242")
        enabled = "+memory +cpu +pids +io"
        self.assertEqual(
            read(os.path.join(self.own, "cgroup.subtree_control")), enabled
        )
        base = os.path.join(self.own, "jobworker")
        self.assertEqual(read(os.path.join(base, "cgroup.subtree_control")), enabled)
        self.assertEqual(self.v2.base, base)
        self.assertTrue({"memory_bytes", "cpu_millicores", "pids"} <= self.v2.supported)

    def test_createWritesLimits(self) -> None:
        """Each limit lands in its v2 file, in the v2 format."""
        self.v2._ioDevice = "8:0"
        group = self.v2.create(
            "job-1",
            Limits(
                memory_bytes=64 << 20,
                cpu_millicores=250,
                pids=32,
                io_read_bps=1000,
                io_write_bps=2000,
            ),
        )
        path = os.path.join(self.own, "jobworker", "job-1")
        self.assertEqual(group.path, path)
        self.assertEqual(read(os.path.join(path, "memory.max")), str(64 << 20))
        self.assertEqual(read(os.path.join(path, "cpu.max")), "25000 100000")
        self.assertEqual(read(os.path.join(path, "pids.max")), "32")
        self.assertEqual(read(os.path.join(path, "io.max")), "8:0 rbps=1000 wbps=2000")

    def test_noLimitsWritesNothing(self) -> None:
        """A job without limits gets a cgroup (for the kill) and no limit files."""
        group = self.v2.create("job-2", Limits())
        self.assertEqual(os.listdir(group.path), [])

    def test_addProcessAndKillFile(self) -> None:
        """addProcess writes cgroup.procs; kill uses cgroup.kill when present."""
        group = self.v2.create("job-3", Limits())
        group.addProcess(999999)
        self.assertEqual(read(os.path.join(group.path, "cgroup.procs")), "999999")
        write(os.path.join(group.path, "cgroup.procs"), "")
        write(os.path.join(group.path, "cgroup.kill"), "")
        self.assertFalse(group.kill())
        self.assertEqual(read(os.path.join(group.path, "cgroup.kill")), "1")

    def test_killLiftsTheIOLimits(self) -> None:
        """
        The kill lifts the job's I/O limits first: a process whose I/O is
        queued at its limit sleeps where a KILL waits for that I/O
        (attacker round 30). A group without them is left as it is.
        """
        self.v2._ioDevice = "8:0"
        group = self.v2.create("job-5", Limits(io_read_bps=1))
        write(os.path.join(group.path, "cgroup.procs"), "")
        write(os.path.join(group.path, "cgroup.kill"), "")
        group.kill()
        self.assertEqual(
            read(os.path.join(group.path, "io.max")),
            "8:0 rbps=max wbps=max riops=max wiops=max",
        )
        plain = self.v2.create("job-6", Limits())
        write(os.path.join(plain.path, "cgroup.procs"), "")
        write(os.path.join(plain.path, "cgroup.kill"), "")
        plain.kill()
        self.assertFalse(os.path.exists(os.path.join(plain.path, "io.max")))

    def test_v1KillLiftsTheIOLimits(self) -> None:
        """The same in v1: each throttled device's limit written 0 (none)."""
        blkio = os.path.abspath(self.mktemp())
        os.makedirs(blkio)
        write(os.path.join(blkio, "cgroup.procs"), "")
        write(os.path.join(blkio, "blkio.throttle.read_bps_device"), "8:0 1\n")
        write(os.path.join(blkio, "blkio.throttle.write_bps_device"), "")
        V1Group({"blkio": blkio}).kill()
        self.assertEqual(
            read(os.path.join(blkio, "blkio.throttle.read_bps_device")), "8:0 0"
        )
        self.assertEqual(
            read(os.path.join(blkio, "blkio.throttle.write_bps_device")), ""
        )

    def test_signalEveryMember(self) -> None:
        """signal() reaches each pid listed in cgroup.procs (here: ourselves, 0)."""
        group = V2Group(os.path.abspath(self.mktemp()))
        os.makedirs(group.path)
        write(os.path.join(group.path, "cgroup.procs"), f"{os.getpid()}\n")
        self.assertTrue(group.signal(0))
        write(os.path.join(group.path, "cgroup.procs"), "")
        self.assertFalse(group.signal(signal.SIGTERM))

    def test_oomKilledFromMemoryEvents(self) -> None:
        """memory.events' oom_kill counter tells an out-of-memory kill."""
        group = self.v2.create("job-4", Limits(memory_bytes=1 << 20))
        events = os.path.join(group.path, "memory.events")
        write(events, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
        self.assertFalse(group.oomKilled())
        write(events, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
        self.assertTrue(group.oomKilled())

    def test_removeAndFind(self) -> None:
        """find() sees a job's cgroup from an earlier run; remove() deletes it."""
        group = self.v2.create("job-5", Limits())
        found = self.v2.find("job-5")
        assert isinstance(found, V2Group)
        self.assertEqual(found.path, group.path)
        self.assertTrue(group.remove())
        self.assertIsNone(self.v2.find("job-5"))
        self.assertTrue(group.remove())

    def test_notV2(self) -> None:
        """Without cgroup.controllers at the root, v2 is not detected."""
        self.assertIsNone(CgroupsV2.detect(os.path.abspath(self.mktemp())))

    def test_ownCgroups(self) -> None:
        """/proc/self/cgroup lines map controllers (v1) and "" (v2) to paths."""
        path = self.mktemp()
        write(path, "4:memory:/a/b\n1:cpu,cpuacct:/c\n0::/user.slice/x\n")
        self.assertEqual(
            ownCgroups(path),
            {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "": "/user.slice/x"},
        )

    def test_limitsArithmetic(self) -> None:
        """Defaults fill unset limits; over() names what exceeds a maximum."""
        asked = Limits(memory_bytes=10, pids=None)
        merged = asked.withDefaults(Limits(memory_bytes=5, pids=7))
        self.assertEqual(merged, Limits(memory_bytes=10, pids=7))
        self.assertEqual(
            list(asked.over(Limits(memory_bytes=8))), [("memory_bytes", 10, 8)]
        )
        self.assertEqual(list(asked.over(Limits())), [])


class V1KillTests(SynchronousTestCase):
    """
    A v1 kill waited for FROZEN with time.sleep, up to half a second, on the
    reactor's thread: every request and job of the server stood still.
    """

    def test_noWaitForFrozen(self) -> None:
        """A freezer still FREEZING: members are killed, thawed, no sleep."""
        import subprocess
        import time

        from jobworker.executors.local import cgroups

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        child = subprocess.Popen(["sleep", "60"])
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        write(os.path.join(folder, "cgroup.procs"), f"{child.pid}\n")
        state = os.path.join(folder, "freezer.state")
        write(state, "THAWED\n")
        written: list[str] = []
        realRead, realWrite = cgroups._read, cgroups._write

        def freezing(path: str) -> str:
            return "FREEZING\n" if path == state else realRead(path)

        def recording(path: str, value: str) -> None:
            written.append(value)
            realWrite(path, value)

        def noSleep(seconds: float) -> None:
            raise AssertionError(f"slept {seconds} s on the reactor's thread")

        self.patch(cgroups, "_read", freezing)
        self.patch(cgroups, "_write", recording)
        sleeping = self.patch(time, "sleep", noSleep)
        reads: list[str] = []
        self.patch(cgroups, "_read", lambda path: reads.append(path) or freezing(path))
        self.assertTrue(cgroups.V1Group({"freezer": folder}).kill())
        self.assertEqual(written, ["FROZEN", "THAWED"])
        self.assertEqual(reads.count(state), cgroups.FREEZE_READS)
        # (The test's own wait for the child sleeps: not the reactor's thread.)
        sleeping.restore()
        self.assertEqual(child.wait(10), -signal.SIGKILL)


class UnreadableMembersTests(SynchronousTestCase):
    """
    A cgroup whose members could not be read (no descriptor left: EMFILE)
    was taken as empty: a stop signalled nothing and gave up its SIGKILL,
    the job stayed RUNNING with its process alive, and the shutdown waited
    for it for good. Unreadable is "maybe someone": never empty.
    """

    def setUp(self) -> None:
        from jobworker.executors.local import cgroups

        def noDescriptor(path: str) -> str:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        self.patch(cgroups, "_read", noDescriptor)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.groups = [
            cgroups.V1Group({"freezer": folder}),
            cgroups.V2Group(folder),
        ]

    def test_neverEmpty(self) -> None:
        for group in self.groups:
            self.assertFalse(group.empty(), group)

    def test_signalsMaybeDelivered(self) -> None:
        """signal() and kill() say something may be there (the stop goes on)."""
        for group in self.groups:
            self.assertTrue(group.signal(signal.SIGTERM), group)
            self.assertTrue(group.kill(), group)

    def test_goneIsEmpty(self) -> None:
        """A cgroup removed already (ENOENT) is empty, as before."""
        from jobworker.executors.local import cgroups

        def gone(path: str) -> str:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

        self.patch(cgroups, "_read", gone)
        for group in self.groups:
            self.assertTrue(group.empty(), group)


class JobFolderModeTests(SynchronousTestCase):
    """A job's cgroup folder is 0750, its group's, whatever the umask
    (twistd's daemon mode sets 077: the job could not read its own limits)."""

    def test_modeWhateverTheUmask(self) -> None:
        import os

        from jobworker.executors.local.cgroups import _mkdir

        if os.getuid() != 0:
            raise SkipTest("chown to another group needs root")
        path = os.path.join(os.path.abspath(self.mktemp()))
        old = os.umask(0o077)
        try:
            _mkdir(path, 70123)
        finally:
            os.umask(old)
        status = os.stat(path)
        self.assertEqual((status.st_mode & 0o777, status.st_gid), (0o750, 70123))
