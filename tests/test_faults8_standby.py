"""
Fault round 8, finding 8: a stopped standby (the child the spawner forks
ahead of the next job). It was handed the next job, which stayed RUNNING
with no output for as long as the standby stayed stopped. A standby that
has waited a while is now looked at before it is used: stopped by a signal
(SIGSTOP: state T) it is continued, as a stopped spawner is; held by a
tracer (state t) it is given up, and the job starts in the next one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from .support import LiveServer, sleep, waitUntil
from .test_launcher import ServerLogs, compiled, readState, requireRoot

#: Holds the process of argv[1] in a ptrace stop (state t) until it dies.
TRACER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
if libc.ptrace(0x4206, pid, None, None) != 0:  # PTRACE_SEIZE
    sys.exit(1)
if libc.ptrace(0x4207, pid, None, None) != 0:  # PTRACE_INTERRUPT
    sys.exit(2)
while True:
    _, status = os.waitpid(pid, 0x40000000)  # __WALL; never resumed
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break
"""


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class StoppedStandbyTests(TestCase):
    """A root server whose spawner's standby is stopped."""

    timeout = 60

    async def standby(self) -> tuple[LiveServer, Any, int]:
        """A server that has run a job through its spawner: the server, the
        spawner's generation and the pid of its standby."""
        requireRoot()
        compiled(self)
        server = LiveServer(self)
        job = await server.createJob("true")
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "COMPLETED")
        generation = server.manager._executor._spawner.current  # type: ignore[attr-defined]
        if not generation.announced:
            generation.receive(10.0, one=True)  # the next standby's announcement
        pid = generation.announced[0][0]
        self.assertEqual(readState(pid), "S")
        return server, generation, pid

    async def output(self, server: LiveServer, jobId: str) -> bytes:
        response = await server.request("GET", f"/jobs/{jobId}/logs")
        return await treq.content(response)  # type: ignore[no-any-return]

    async def test_stoppedStandbyContinued(self) -> None:
        """
        The standby SIGSTOPped: the next job is continued with it (SIGCONT)
        and runs at once, in that standby.
        """
        server, _, pid = await self.standby()
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(_signal, pid, signal.SIGCONT)
        await waitUntil(lambda: readState(pid) == "T", what="the standby's stop")
        await sleep(0.5)  # it has waited a while
        job = await server.createJob("echo", "ran")
        ended = await server.waitEnded(job["id"], timeout=10)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(await self.output(server, job["id"]), b"ran\n")
        self.assertEqual(job["pid"], pid)

    async def test_tracedStandbyGivenUp(self) -> None:
        """
        The standby held in a tracer's stop (state t, which SIGCONT does not
        end): it is given up (killed: no job was in it), and the job starts
        in the next standby; its end is no "unknown pid" to the server.
        """
        server, generation, pid = await self.standby()
        logs = ServerLogs(self)
        tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(pid)])
        self.addCleanup(tracer.wait)
        self.addCleanup(_signal, tracer.pid, signal.SIGKILL)
        await waitUntil(lambda: readState(pid) == "t", what="the tracer's stop")
        await sleep(0.5)
        job = await server.createJob("echo", "ran")
        ended = await server.waitEnded(job["id"], timeout=10)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(await self.output(server, job["id"]), b"ran\n")
        self.assertNotEqual(job["pid"], pid)
        await waitUntil(lambda: tracer.poll() is not None, what="the standby's end")
        # Its end is taken in as a given-up standby's; jobs go on.
        again = await server.createJob("true")
        self.assertEqual((await server.waitEnded(again["id"]))["status"], "COMPLETED")
        self.assertIs(server.manager._executor._spawner.current, generation)  # type: ignore[attr-defined]
        self.assertEqual([line for line in logs.lines if "unknown pid" in line], [])
