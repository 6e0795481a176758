"""
Fault round 17, local executor: the jobs' cgroup folder removed while the
server is idle (#15), and a wedged (SIGSTOPped) spawner at shutdown (#14).
Real servers, real processes and real cgroups where the machine has them.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import time

import treq
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local import cgroups
from jobworker.executors.local.cgroups import CgroupError, CgroupsV1, CgroupsV2
from jobworker.jobs.limits import Limits

from .support import LiveServer, processAlive, sleep
from .test_cgroups import read, write
from .twistd import Twistd

#: The v1 controllers the server uses (CgroupsV1.CONTROLLERS).
V1_CONTROLLERS = {"memory", "cpu", "pids", "blkio", "freezer"}
ROOT = "/sys/fs/cgroup"


class JobsFolderRemadeTests(SynchronousTestCase):
    """The jobs' folder made again by C{create}: fake cgroup trees."""

    def test_v1Remade(self) -> None:
        """A v1 jobs' folder removed is made again (0711), and the job's in it."""
        root = os.path.abspath(self.mktemp())
        bases = {c: os.path.join(root, c, "own", "jobworker") for c in ("freezer",)}
        for base in bases.values():
            os.makedirs(os.path.dirname(base))
        v1 = CgroupsV1(bases, None)
        group = v1.create("job-1", Limits())
        self.assertTrue(os.path.isdir(group.paths["freezer"]))
        self.assertEqual(os.stat(bases["freezer"]).st_mode & 0o777, 0o711)

    def test_v1CannotRemake(self) -> None:
        """
        A jobs' folder that cannot be made again (a dangling symlink in its
        place) is the server's set-up error (CgroupSetupError), not the job's.
        """
        root = os.path.abspath(self.mktemp())
        own = os.path.join(root, "freezer", "own")
        os.makedirs(own)
        base = os.path.join(own, "jobworker")
        os.symlink(os.path.join(root, "nowhere", "x"), base)
        v1 = CgroupsV1({"freezer": base}, None)
        with self.assertRaises(CgroupError) as caught:
            v1.create("job-1", Limits())
        self.assertIsInstance(caught.exception, cgroups.CgroupSetupError)

    def test_v2RemadeWithControllers(self) -> None:
        """
        A v2 jobs' folder removed is made again, with its controllers
        enabled below the server's cgroup and below it (as at detect).
        """
        root = os.path.abspath(self.mktemp())
        own = os.path.join(root, "system.slice", "jobworker.service")
        os.makedirs(own)
        write(os.path.join(root, "cgroup.controllers"), "cpu io memory pids\n")
        write(os.path.join(own, "cgroup.controllers"), "cpu memory pids\n")
        write(os.path.join(own, "cgroup.procs"), "4242\n")
        v2 = CgroupsV2.detect(
            root, own="/system.slice/jobworker.service", ioPath=root, selfPid=4242
        )
        assert v2 is not None
        shutil.rmtree(v2.base)
        os.unlink(os.path.join(own, "cgroup.subtree_control"))
        group = v2.create("job-1", Limits(pids=5))
        self.assertEqual(read(os.path.join(group.path, "pids.max")), "5")
        enabled = "+memory +cpu +pids"
        self.assertEqual(read(os.path.join(own, "cgroup.subtree_control")), enabled)
        self.assertEqual(read(os.path.join(v2.base, "cgroup.subtree_control")), enabled)


def ownCgroupFolders(name: str) -> list[str]:
    """
    A new cgroup C{name} under this process's own, in each hierarchy the
    server would use (v2: the unified one; v1: its five controllers).
    """
    lines = read("/proc/self/cgroup").splitlines()
    if os.path.isfile(os.path.join(ROOT, "cgroup.controllers")):
        own = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        return [os.path.join(ROOT, own.strip("/"), name)]
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if set(controllers.split(",")) & V1_CONTROLLERS:
            mount = os.path.join(ROOT, controllers)
            if not os.path.isdir(mount):
                continue
            folders.append(os.path.join(mount, path.strip("/"), name))
    return folders


def removeCgroupTree(folder: str) -> None:
    """Remove C{folder} and its sub-cgroups, moving any process left up."""
    if not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            removeCgroupTree(entry.path)
    parent = os.path.dirname(folder)
    for _ in range(200):
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        for pid in read(os.path.join(folder, "cgroup.procs")).split():
            try:
                write(os.path.join(parent, "cgroup.procs"), pid)
            except OSError:
                pass
        time.sleep(0.05)


class RemovedJobsFolderTests(TestCase):
    """#15: the jobs' cgroup folder removed while no job runs."""

    async def ownServer(self) -> tuple[Twistd, list[str]]:
        """A real twistd in a cgroup of its own; its jobs' folders."""
        if os.geteuid() != 0:
            raise SkipTest("needs root (a cgroup of the server's own)")
        folders = ownCgroupFolders(f"jw-f17local-{os.getpid()}-{id(self)}")
        if not folders:
            raise SkipTest("no cgroup hierarchy the server would use")
        made = []
        try:
            for folder in folders:
                os.mkdir(folder)
                made.append(folder)
        except OSError as e:
            for folder in made:
                os.rmdir(folder)
            raise SkipTest(f"cannot make a cgroup of the server's own: {e}") from None
        for folder in folders:
            self.addCleanup(removeCgroupTree, folder)
        join = " ".join(
            f"echo $$ > {shlex.quote(os.path.join(f, 'cgroup.procs'))} || exit 125;"
            for f in folders
        )
        server = await Twistd(self).start(
            "--stop-grace=1", prefix=("sh", "-c", f'{join} exec "$@"', "sh")
        )
        bases = [os.path.join(folder, "jobworker") for folder in folders]
        if not all(os.path.isdir(base) for base in bases):
            raise SkipTest(
                "the server made no jobs' cgroup folder in its own cgroup "
                f"(cgroups unusable here): {server.protocol.log()[-400:]}"
            )
        return server, bases

    async def test_removedFolderMadeAgain(self) -> None:
        """
        The jobs' folder removed in every hierarchy while the server is
        idle: the next job runs (its folder made again), COMPLETED.
        """
        server, bases = await self.ownServer()
        first = await server.createJob("true")
        self.assertEqual((await server.waitEnded(first["id"]))["status"], "COMPLETED")
        for base in bases:
            for _ in range(100):  # the job's own cgroup goes just after its end
                try:
                    os.rmdir(base)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    await sleep(0.05)
            self.assertFalse(os.path.exists(base), base)
        # Limits, so that a job cgroup is made in each of those hierarchies
        # (v1 makes only the freezer's and those holding a limit).
        limits = {"memory_bytes": 256 << 20, "cpu_millicores": 500, "pids": 64}
        code, job = await server.json(
            "POST",
            "/jobs",
            "alice",
            {"command": "sh", "args": ["-c", "echo again"], "limits": limits},
        )
        self.assertEqual(code, 201, job)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(await server.logs(job["id"]), b"again\n")
        for base in bases:
            if "/blkio/" not in base:  # (no io limit: no job cgroup there)
                self.assertTrue(os.path.isdir(base), base)
                self.assertEqual(os.stat(base).st_mode & 0o777, 0o711, base)


class CannotRemakeTests(TestCase):
    """#15: a jobs' folder that cannot be made again is a 503, no job."""

    async def test_cannotRemakeIsA503(self) -> None:
        server = LiveServer(self)
        root = os.path.abspath(self.mktemp())
        own = os.path.join(root, "freezer", "own")
        os.makedirs(own)
        base = os.path.join(own, "jobworker")
        os.symlink(os.path.join(root, "nowhere", "x"), base)
        executor = server.manager._executor  # type: ignore[attr-defined]
        executor._cgroups = CgroupsV1({"freezer": base}, None)
        response = await server.request(
            "POST", "/jobs", "alice", {"command": "true", "args": []}
        )
        body = (await treq.content(response)).decode()
        self.assertEqual(response.code, 503, body)
        self.assertTrue(response.headers.getRawHeaders(b"retry-after"), body)
        self.assertNotIn(root, body)
        code, listing = await server.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200)
        self.assertEqual(listing["jobs"], [], listing)


def spawnerOf(serverPid: int) -> int | None:
    """The pid of the server's child that runs the launcher's --spawner."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read(f"/proc/{entry}/stat")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == serverPid and b"--spawner" in argv:
            return int(entry)
    return None


def resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass


class WedgedSpawnerTests(TestCase):
    """#14: a SIGSTOPped spawner at the server's shutdown."""

    async def test_shutdownDoesNotWaitForAStoppedSpawner(self) -> None:
        """
        The spawner is stopped while a job runs; SIGTERM: the server exits
        within the stop grace and the spawner's deadline, the job's record
        final (STOPPED), nothing of the job left, and the log says why.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root (sandboxed jobs go through the spawner)")
        server = await Twistd(self).start("--stop-grace=1")
        job = await server.createJob("sleep", "600")
        self.assertEqual(job["status"], "RUNNING", job)
        spawner = spawnerOf(server.pid)
        if spawner is None:
            raise SkipTest(f"no spawner here: {server.protocol.log()[-400:]}")
        self.addCleanup(resume, spawner)
        os.kill(spawner, signal.SIGSTOP)
        started = time.monotonic()
        # Grace 1 s, then the spawner's 5 s, and room for a loaded machine.
        await server.stop(timeout=15)
        took = time.monotonic() - started
        self.assertLess(took, 15)
        log = server.protocol.log()
        self.assertIn("has not reported the end of 1 job(s)", log)
        self.assertFalse(processAlive(spawner), "the spawner is left")
        self.assertFalse(processAlive(job["pid"]), "the job's process is left")
        again = await Twistd(self, stateDir=server.stateDir).start()
        code, record = await again.json("GET", f"/jobs/{job['id']}", "ada")
        self.assertEqual(code, 200, record)
        self.assertEqual(record["status"], "STOPPED", record)
        self.assertEqual(record["stopped_by"], "server shutdown", record)
