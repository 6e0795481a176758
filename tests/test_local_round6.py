"""
Fault round 6, local executor: a SIGSTOPped spawner (finding 3: refused
jobs for good, while /healthz said ok) and a job cgroup made by a server
killed before the job's record was stored (finding 4: never removed).
Real servers, real processes and real cgroups.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import treq
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local.cgroups import CgroupsV1
from jobworker.executors.local.madecgroups import MADE_CGROUPS, SLACK, MadeCgroups

from .support import LiveServer, waitUntil
from .test_launcher import compiled, requireRoot


def _state(pid: int) -> str:
    """C{pid}'s state letter in /proc (X: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


def _gone(pid: int) -> bool:
    """True once C{pid} has ended (a zombie counts as ended)."""
    return _state(pid) in ("Z", "X")


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class StoppedSpawnerTests(TestCase):
    """Finding 3: a SIGSTOPped spawner, on a root server that uses one."""

    timeout = 60

    async def stoppedSpawner(self) -> tuple[LiveServer, Any, int]:
        """A live server whose spawner has started one job, then SIGSTOPped:
        the server, its spawner and the spawner's pid."""
        requireRoot()
        compiled(self)
        server = LiveServer(self)
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        if spawner is None or spawner.current is None:
            raise SkipTest("jobs do not start through the spawner here")
        pid = spawner.current.process.pid
        self.addCleanup(_resume, pid)
        os.kill(pid, signal.SIGSTOP)
        # (The stop takes effect once the spawner is scheduled.)
        await waitUntil(lambda: _state(pid) == "T", what="the spawner's stop")
        return server, spawner, pid

    async def post(self, server: LiveServer) -> tuple[int, dict[str, Any], float]:
        """POST /jobs of C{true}: code, body, and how long it took."""
        started = time.monotonic()
        response = await server.request("POST", "/jobs", body={"command": "true"})
        body = json.loads(await treq.content(response))
        return response.code, body, time.monotonic() - started

    async def health(self, server: LiveServer) -> tuple[dict[str, Any], str]:
        """/healthz's answer, and the executor_up line of /metrics."""
        code, health = await server.json("GET", "/healthz")
        self.assertEqual(code, 200)
        response = await server.request("GET", "/metrics", "ada")
        text = (await treq.content(response)).decode()
        [up] = [
            line
            for line in text.splitlines()
            if line.startswith("jobworker_executor_up{")
        ]
        return health, up

    async def test_stoppedSpawnerNotWaitedFor(self) -> None:
        """
        A spawn that finds no standby from a stopped spawner is refused at
        once (a 503), never after holding the server's thread for the
        announcement timeout: a stopped process cannot answer.
        """
        server, _, _ = await self.stoppedSpawner()
        codes = []
        for _ in range(3):
            code, _body, _took = await self.post(server)
            codes.append(code)
        # The first may take the standby announced before the stop. (That
        # no spawn waits: test_spawner's test_aSilentSpawnerHoldsTheReactorOnce.)
        self.assertEqual(codes[1:], [503, 503])

    async def test_stoppedSpawnerDegraded(self) -> None:
        """
        While the spawner is stopped the local executor cannot take jobs:
        /healthz says "degraded" with the reason, and executor_up is 0. Once
        it goes on, both are back to ok.
        """
        server, _, pid = await self.stoppedSpawner()
        health, up = await self.health(server)
        self.assertEqual(
            (health["status"], health.get("executor")), ("degraded", "local"), health
        )
        self.assertIn("spawner", health["reason"])
        self.assertEqual(up, 'jobworker_executor_up{executor="local"} 0.0')
        os.kill(pid, signal.SIGCONT)
        health, up = await self.health(server)
        self.assertEqual(health, {"status": "ok"})
        self.assertEqual(up, 'jobworker_executor_up{executor="local"} 1.0')
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")

    async def test_refusedSpawnsDegraded(self) -> None:
        """
        A spawner found silent by a spawn (no standby) makes the executor
        degraded too, whatever the spawner's state.
        """
        server, spawner, _ = await self.stoppedSpawner()
        await self.post(server)
        code, _, _ = await self.post(server)
        self.assertEqual(code, 503)
        self.assertTrue(spawner.current.late)
        health, up = await self.health(server)
        self.assertEqual(health["status"], "degraded", health)
        self.assertEqual(up, 'jobworker_executor_up{executor="local"} 0.0')

    async def test_stoppedSpawnerContinued(self) -> None:
        """
        A spawner stopped (SIGSTOP) for the bound is continued: every job
        was refused for as long as it stayed stopped. The job it had taken
        runs and ends as it would have, and it is the same spawner (killing
        it would have killed its running jobs).
        """
        server, spawner, pid = await self.stoppedSpawner()
        spawner.silenceLimit = 1.0
        code, taken, _ = await self.post(server)
        self.assertEqual(code, 201, taken)  # the standby announced before
        code, _, _ = await self.post(server)
        self.assertEqual(code, 503)
        ended = await server.waitEnded(taken["id"], timeout=10)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        health, up = await self.health(server)
        self.assertEqual(health, {"status": "ok"})
        self.assertEqual(up, 'jobworker_executor_up{executor="local"} 1.0')
        job = await server.createJob("sh", "-c", "echo again")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        self.assertFalse(_gone(pid))
        self.assertEqual(spawner.started, 1)

    async def test_stoppedIdleSpawnerContinued(self) -> None:
        """
        A spawner stopped while idle, seen by a health check: continued
        after the bound, so the server is not degraded for good with no
        job to notice it.
        """
        server, spawner, pid = await self.stoppedSpawner()
        spawner.silenceLimit = 1.0
        health, _ = await self.health(server)
        self.assertEqual(health["status"], "degraded")
        await waitUntil(lambda: _state(pid) != "T", what="the spawner continued")
        health, _ = await self.health(server)
        self.assertEqual(health, {"status": "ok"})
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        self.assertEqual(spawner.started, 1)


class Crashed(Exception):
    """Stands for the server's SIGKILL right after a job's cgroup was made."""


class UnrecordedCgroupTests(TestCase):
    """
    Finding 4: the server dies between a job's cgroup mkdir and its record's
    insert. The next start-up removes that cgroup, and only that.
    """

    timeout = 60

    def cgroupServer(self, stateDir: str | None = None) -> tuple[LiveServer, Any]:
        requireRoot()
        server = LiveServer(self, stateDir=stateDir)
        groups = server.manager._executor._cgroups  # type: ignore[attr-defined]
        if not isinstance(groups, CgroupsV1):
            raise SkipTest("no v1 cgroups here")
        return server, groups

    async def crashAfterMkdir(
        self, limits: dict[str, int]
    ) -> tuple[str, dict[str, str]]:
        """
        A server whose next job's cgroup is made and then nothing more (no
        record): its state dir, and the job's folders. The server is then
        stopped (its shutdown knows nothing of the job, as a dead server).
        """
        server, groups = self.cgroupServer()
        made: list[Any] = []
        create = groups.create

        def crashing(jobId: str, *args: Any, **kwargs: Any) -> Any:
            made.append(create(jobId, *args, **kwargs))
            raise Crashed()

        groups.create = crashing
        response = await server.request(
            "POST",
            "/jobs",
            body={"command": "sleep", "args": ["100"], "limits": limits},
        )
        await treq.content(response)
        self.flushLoggedErrors(Crashed)
        [group] = made
        paths = dict(group.paths)
        self.addCleanup(self.removeFolders, paths)
        for path in paths.values():
            self.assertTrue(os.path.isdir(path), path)
        del groups.create
        await server.stop()
        for path in paths.values():
            self.assertTrue(os.path.isdir(path), path)
        return server.stateDir, paths

    @staticmethod
    def removeFolders(paths: dict[str, str]) -> None:
        for path in paths.values():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass

    async def test_unrecordedCgroupRemovedAtStartUp(self) -> None:
        """The next start-up on the same state dir removes the folders of
        a job with no record, in every hierarchy it had one in."""
        stateDir, paths = await self.crashAfterMkdir({"pids": 64})
        self.assertIn("pids", paths)
        self.cgroupServer(stateDir)
        for path in paths.values():
            self.assertFalse(os.path.exists(path), path)

    async def test_otherServersCgroupsKept(self) -> None:
        """
        Another server's running job (another state dir, the same jobs'
        cgroup folder) keeps its cgroup and runs on when a server starts.
        """
        other, groups = self.cgroupServer()
        job = await other.createJob("sleep", "100", limits={"pids": 64})
        group = groups.find(job["id"])
        self.assertIsNotNone(group)
        self.cgroupServer()
        for path in group.paths.values():
            self.assertTrue(os.path.isdir(path), path)
        code, record = await other.json("GET", f"/jobs/{job['id']}", "ada")
        self.assertEqual((code, record["status"]), (200, "RUNNING"))
        self.assertFalse(_gone(record["pid"]))

    async def test_partlyMadeCgroupRemoved(self) -> None:
        """
        A server killed while making a job's cgroup made only its first
        folders (the freezer's comes last): they are removed all the same.
        """
        server, groups = self.cgroupServer()
        stateDir = server.stateDir
        await server.stop()
        jobId = str(uuid.uuid4())
        pids = os.path.join(groups._bases["pids"], jobId)
        os.mkdir(pids)
        self.addCleanup(self.removeFolders, {"pids": pids})
        with open(os.path.join(stateDir, MADE_CGROUPS), "a") as f:
            f.write(f"{jobId}\n")
        self.cgroupServer(stateDir)
        self.assertFalse(os.path.exists(pids))
        self.assertFalse(os.path.exists(os.path.join(stateDir, MADE_CGROUPS)))

    async def test_journalEmptiedOnceJobsAreCleanedUp(self) -> None:
        """The journal names a job from its cgroup's mkdir until the cgroup
        is removed: it is empty once no job has one."""
        server, _ = self.cgroupServer()
        journal = os.path.join(server.stateDir, MADE_CGROUPS)
        job = await server.createJob("sleep", "100")
        with open(journal) as f:
            self.assertEqual(f.read(), f"{job['id']}\n")
        code, _ = await server.json("POST", f"/jobs/{job['id']}/stop", "alice")
        self.assertEqual(code, 200)
        await server.waitEnded(job["id"])
        await waitUntil(lambda: os.path.getsize(journal) == 0, what="the journal's end")


class MadeCgroupsTests(SynchronousTestCase):
    """The journal itself (L{MadeCgroups}): a file in a temporary folder."""

    def test_rewrittenWhenMostlyDone(self) -> None:
        """Appended to at each note; written anew once its done lines pass
        twice the noted ones and the slack: it stays bounded."""
        path = os.path.abspath(self.mktemp())
        journal = MadeCgroups(path)
        kept = str(uuid.uuid4())
        journal.note(kept)
        for _ in range(SLACK + 2):
            jobId = str(uuid.uuid4())
            journal.note(jobId)
            journal.done(jobId)
        self.assertLessEqual(os.path.getsize(path), 37 * (SLACK + 3))
        self.assertEqual(MadeCgroups(path).read()[0], kept)
        journal.done(kept)
        self.assertEqual(MadeCgroups(path).read(), [])  # emptied, or removed

    def test_badLinesSkipped(self) -> None:
        """Only job ids are read: a line that is none (a path) is skipped."""
        path = os.path.abspath(self.mktemp())
        jobId = str(uuid.uuid4())
        with open(path, "w") as f:
            f.write(f"../../x\n{jobId}\n\n{jobId}\n")
        self.assertEqual(MadeCgroups(path).read(), [jobId])
