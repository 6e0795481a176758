"""
twistd without -n (a daemon, which the README allows) restarted with jobs in
its queue. The jobs of the last run were recovered while the service was
built, before twistd forks into a daemon, and the queue was dispatched at
once: the queued jobs were started by the process that then exits. Through
the spawner they died with it (FAILED, SIGKILL, never run); through the exec
chain the daemon was not their parent, and their records stayed RUNNING for
good, holding --max-running's slot (a review of the lifecycle). The queue now
starts with the service, after the fork.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from twisted.trial.unittest import TestCase

from .support import sharedPath, sleep, twistdCommand
from .test_durability import cleanUpProcesses, jw, listeningPort

#: A part of the tests' free range (tests/support.py FREE_UIDS) of its own.
UIDS = "--dynamic-uids=71900-71949"


def daemonCommand(stateDir: str, logPath: str, pidPath: str, *extra: str) -> list[str]:
    command = twistdCommand(stateDir, UIDS, *extra)
    command[1:3] = [f"--pidfile={pidPath}", f"--logfile={logPath}"]
    return command


class QueuedJobsOfARestartedDaemonTests(TestCase):
    timeout = 120

    options: tuple[str, ...] = ("--max-running=1",)

    async def daemon(self, stateDir: str, logPath: str) -> tuple[int, int]:
        """A daemon on C{stateDir}, logging to C{logPath}: its port and pid."""
        size = os.path.getsize(logPath) if os.path.exists(logPath) else 0
        pidPath = sharedPath(self)
        subprocess.run(
            daemonCommand(stateDir, logPath, pidPath, *self.options),
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        port = await listeningPort(logPath, after=size)
        with open(pidPath) as f:
            daemon = int(f.read())
        cleanUpProcesses(self, daemon)
        return port, daemon

    async def queueTwo(self) -> tuple[str, str, str, str]:
        """A daemon with --max-running=1 runs one job, queues a second, and is
        stopped (SIGTERM); (state dir, log, the running one, the queued one)."""
        stateDir = sharedPath(self)
        logPath = sharedPath(self)
        port, daemon = await self.daemon(stateDir, logPath)
        out, err, code = await jw(port, "exec", "--", "sleep", "300")
        self.assertEqual(code, 0, err)
        running = out.strip().decode()
        out, err, code = await jw(
            port, "exec", "--", "sh", "-c", "sleep 1; echo queued"
        )
        self.assertEqual(code, 0, err)
        queued = out.strip().decode()
        out, err, code = await jw(port, "status", "--json", queued)
        self.assertEqual(json.loads(out)["status"], "PENDING", out)
        os.kill(daemon, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{daemon}"):
            self.assertLess(time.monotonic(), deadline, "the daemon did not stop")
            await sleep(0.1)
        return stateDir, logPath, running, queued

    async def waitEnded(self, port: int, jobId: str, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            out, _err, _code = await jw(port, "status", "--json", jobId)
            job = json.loads(out)
            if (
                job["status"] not in ("PENDING", "RUNNING")
                or time.monotonic() > deadline
            ):
                return job
            await sleep(0.2)

    async def test_queuedJobAfterADaemonRestart(self) -> None:
        """Restarted as a daemon: the queued job runs and ends COMPLETED."""
        stateDir, logPath, _running, queued = await self.queueTwo()
        port, daemon = await self.daemon(stateDir, logPath)
        job = await self.waitEnded(port, queued, 15)
        self.addCleanup(self.stopDaemon, daemon)
        self.assertEqual(job["status"], "COMPLETED", job)

    def stopDaemon(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)


class QueuedJobsOfARestartedDaemonExecLauncherTests(QueuedJobsOfARestartedDaemonTests):
    """The same with --launcher exec: no spawner, the reactor spawns the job."""

    options = ("--max-running=1", "--launcher=exec")
