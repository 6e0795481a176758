"""
Fault round 8, finding 4: the compiled launcher removed from its cache
while the server runs (a cache cleaner, C{rm -rf /var/cache/*}). Each
spawner start, and each job under C{--launcher exec}, failed at its exec
for good: every job a 503 (or, under exec, a job FAILED for the server's
reason), while /healthz said ok. Now it is built again, jobs refused
meanwhile (503, nothing stored), and /healthz says degraded until it is.

Each server here has a cache folder of its own (the module's CACHE_DIR
patched): the launcher of /var/cache/jobworker, which other tests and
servers run, is never removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from jobworker.executors.local import launcher

from .support import LiveServer, sleep, waitUntil
from .test_launcher import ServerLogs, compiled, requireRoot


class RemovedLauncherTests(TestCase):
    """A root server whose compiled launcher goes away while it runs."""

    timeout = 90

    async def server(self, *options: str) -> tuple[LiveServer, str]:
        """
        A server with a launcher cache of its own that has run one job: the
        server and its launcher's path (in that cache).
        """
        requireRoot()
        compiled(self)  # (skips without a compiler)
        cache = os.path.abspath(self.mktemp())
        self.patch(launcher, "CACHE_DIR", cache)
        server = LiveServer(self, *options)
        sandbox = server.manager._executor.sandbox  # type: ignore[attr-defined]
        path = sandbox.launcher
        # Never a launcher other servers use.
        self.assertEqual(os.path.dirname(path), cache)
        job = await server.createJob("echo", "first")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        return server, path

    async def health(self, server: LiveServer) -> dict[str, Any]:
        code, health = await server.json("GET", "/healthz", user=None)
        self.assertEqual(code, 200)
        return health  # type: ignore[no-any-return]

    async def startsAgain(self, server: LiveServer, within: float = 30.0) -> list[int]:
        """
        Create jobs until one is a 201 (within C{within} seconds): each
        other answer a 503 with Retry-After (nothing stored), and the job
        that starts completes. The codes answered, in order.
        """
        codes = []
        deadline = time.monotonic() + within
        while True:
            response = await server.request(
                "POST", "/jobs", body={"command": "echo", "args": ["again"]}
            )
            body = json.loads(await treq.content(response))
            codes.append(response.code)
            if response.code == 201:
                ended = await server.waitEnded(body["id"])
                self.assertEqual(ended["status"], "COMPLETED", ended)
                return codes
            self.assertEqual(response.code, 503, body)
            self.assertTrue(response.headers.getRawHeaders(b"retry-after"), body)
            self.assertLess(time.monotonic(), deadline, f"no job started: {body}")
            await sleep(0.2)

    async def assertOnlyCompleted(self, server: LiveServer, count: int) -> None:
        """The store has C{count} jobs, every one COMPLETED: no refused one
        was stored, none FAILED for the server's reason."""
        code, listed = await server.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200)
        statuses = [job["status"] for job in listed["jobs"]]
        self.assertEqual(statuses, ["COMPLETED"] * count, listed)

    async def test_cacheRemovedUnderTheSpawner(self) -> None:
        """
        The cache folder removed, launcher and all, then the spawner killed:
        /healthz says degraded at once (the launcher is being built again),
        then ok; the launcher is back under its path, and the next spawner
        starts from it: jobs start again, none stored FAILED.
        """
        server, path = await self.server()
        logs = ServerLogs(self)
        shutil.rmtree(os.path.dirname(path))
        health = await self.health(server)
        self.assertEqual(
            (health["status"], health.get("executor")), ("degraded", "local"), health
        )
        self.assertIn("launcher", health["reason"])

        async def ok() -> bool:
            return (await self.health(server))["status"] == "ok"

        await waitUntil(ok, timeout=30, what="the launcher built again")
        self.assertTrue(os.path.isfile(path))
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        os.kill(spawner.current.pid, signal.SIGKILL)
        # (A job sent before the server has seen the spawner go can be handed
        # to its standby as it dies, and end SIGKILL: not this test's case.)
        await waitUntil(
            lambda: spawner.current.socket is None, what="the spawner's death seen"
        )
        await self.startsAgain(server)
        await self.assertOnlyCompleted(server, 2)
        told = [line for line in logs.lines if path in line]
        self.assertEqual(
            [
                ("removed or replaced" in line, "is built again" in line)
                for line in told
            ],
            [(True, False), (False, True)],
            told,
        )

    async def test_removedWhileNoSpawnerRuns(self) -> None:
        """
        The launcher removed and the spawner killed before anything looks:
        the first spawner start finds it gone, and is a 503 (Retry-After,
        nothing stored) while it is built again; jobs start again after.
        """
        server, path = await self.server()
        os.unlink(path)
        spawner = server.manager._executor._spawner  # type: ignore[attr-defined]
        os.kill(spawner.current.pid, signal.SIGKILL)
        await waitUntil(
            lambda: spawner.current.socket is None, what="the spawner's death seen"
        )
        codes = await self.startsAgain(server)
        self.assertEqual(codes[0], 503, codes)
        await self.assertOnlyCompleted(server, 2)

    async def test_execRemovedIsNotTheJobsFailure(self) -> None:
        """
        --launcher exec: the launcher removed is the server's trouble, not
        the job's: a 503 (nothing stored) while it is built again, never a
        job FAILED "cannot start: No such file or directory".
        """
        server, path = await self.server("--launcher=exec")
        os.unlink(path)
        response = await server.request(
            "POST", "/jobs", body={"command": "echo", "args": ["refused"]}
        )
        body = json.loads(await treq.content(response))
        self.assertEqual(
            (response.code, body["error"]),
            (
                503,
                "the server cannot start a job now (its job launcher is being "
                "built again); try again shortly",
            ),
        )
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        await self.startsAgain(server)
        self.assertTrue(os.path.isfile(path))
        await self.assertOnlyCompleted(server, 2)

    async def test_replacedIsBuiltAgain(self) -> None:
        """
        A launcher replaced under its name by another file (not the one
        compiled: another inode) is not run as it is: checked as at
        start-up, it is built again before jobs start.
        """
        server, path = await self.server("--launcher=exec")
        with open(path, "rb") as f:
            image = f.read()
        os.unlink(path)
        with open(path, "wb") as f:
            f.write(image[: len(image) // 2])  # cut short
        os.chmod(path, 0o700)
        codes = await self.startsAgain(server)
        self.assertEqual(codes[0], 503, codes)
        with open(path, "rb") as f:
            self.assertEqual(len(f.read()), len(image))
        await self.assertOnlyCompleted(server, 2)

    async def test_cannotBeBuiltAgain(self) -> None:
        """
        A launcher that cannot be built again (its cache folder replaced by
        a file): every job a 503 saying why, /healthz degraded, said once in
        the log; once the folder can be used again it is built at the next
        try, and jobs start.
        """
        server, path = await self.server("--launcher=exec")
        cache = os.path.dirname(path)
        logs = ServerLogs(self)
        self.patch(launcher, "REBUILD_INTERVAL", 0.5)
        shutil.rmtree(cache)
        with open(cache, "w") as f:
            f.write("not a folder")
        errors = set()
        for _ in range(4):
            code, body = await server.json(
                "POST", "/jobs", body={"command": "echo", "args": ["refused"]}
            )
            self.assertEqual(code, 503, body)
            errors.add(body["error"])
            await sleep(0.2)
        self.assertIn(
            "the server cannot start a job now (its job launcher is gone, and "
            "cannot be built again now); try again shortly",
            errors,
        )
        health = await self.health(server)
        self.assertEqual(health["status"], "degraded", health)
        self.assertNotIn(cache, health["reason"])  # (the log's, not the users')
        failures = [line for line in logs.lines if "cannot be built again:" in line]
        self.assertEqual(len(failures), 1, failures)
        self.assertIn(f"cannot use {cache}: File exists", failures[0])
        os.unlink(cache)
        await sleep(0.6)
        await self.startsAgain(server)
        await self.assertOnlyCompleted(server, 2)
        # Each try again was not said again; its success was.
        told = [line for line in logs.lines if "removed or replaced" in line]
        self.assertEqual(len(told), 1, told)
        built = [line for line in logs.lines if line.endswith("is built again")]
        self.assertEqual(len(built), 1, built)
