"""
Fault round 8: a spawner that was stopped (SIGSTOP, a debugger, a frozen
cgroup) when its server died never read the end of its socket: it, its
standby and the zombie of the job it had started stayed for good. It now
dies with its server (PR_SET_PDEATHSIG; SIGKILL ends a stopped process).
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from .twistd import Twistd


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def commandLine(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running, stopped or sleeping: not gone, and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def killQuietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class StoppedSpawnerTests(TestCase):
    timeout = 60

    async def test_stoppedSpawnerDiesWithItsServer(self) -> None:
        """SIGSTOP the spawner, SIGKILL the server: the spawner and its
        standby are gone soon after (they stayed, stopped and waiting)."""
        if os.getuid() != 0:
            raise SkipTest("the spawner is for a root server")
        server = await Twistd(self).start()
        job = await server.createJob("sh", "-c", "echo up; sleep 300")
        self.assertEqual(job["status"], "RUNNING", job)
        [spawner] = [
            pid for pid in children(server.pid) if b"--spawner" in commandLine(pid)
        ]
        # The spawner and its standby (a fork of it, not exec'd): the job's
        # own processes are the next start's to end, as after any crash.
        theirs = [
            pid
            for pid in [spawner, *children(spawner)]
            if b"--spawner" in commandLine(pid) and pid != job["pid"]
        ]  # (the job's own, under load not exec'd yet, showed the spawner's)
        self.assertGreaterEqual(len(theirs), 2, "no standby")
        for pid in theirs:
            self.addCleanup(killQuietly, pid)
        os.kill(spawner, signal.SIGSTOP)
        os.kill(server.pid, signal.SIGKILL)
        await server.protocol.whenEnded()
        for _ in range(200):
            if not any(alive(pid) for pid in theirs):
                break
            await deferLater(reactor, 0.05, lambda: None)
        left = [pid for pid in theirs if alive(pid)]
        self.assertEqual(left, [], "the spawner or its standby outlived the server")
