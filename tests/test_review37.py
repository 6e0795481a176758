"""
Defects found in the thirty-seventh session's rounds and reviews, each with
a test that failed against the code before its fix.
"""

from __future__ import annotations

import os

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.spool import StoredOutput

from .support import LiveServer, sleep
from .test_combined import bigJob
from .test_contract import RecordingConsumer
from .test_launcher import requireRoot

MiB = 1 << 20


class TimeoutOfANamespaceInitTests(TestCase):
    """
    Code review 37: under C{--isolate pid} without the launcher, the command
    is its namespace's PID 1, which the kernel sends no signal it has no
    handler for (but KILL). The stop's look took the TERM as one that would
    end it: a command that ran on past its timeout and exited 0 in the
    grace was taken to have ended on its own as the timeout came, and ended
    COMPLETED.
    """

    timeout = 120

    async def check(self, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, "--isolate=pid", *options, grace=3.0)
        job = await server.createJob("/bin/sleep", "2", timeout_seconds=1)
        ended = await server.waitEnded(job["id"], 60)
        self.assertEqual(
            (ended["status"], ended["error"]), ("FAILED", "timed out after 1 second")
        )

    def test_execChain(self) -> object:
        return self.check("--launcher=off")

    def test_launcher(self) -> object:
        return self.check()


class StdinClosedUnderAPidNamespaceTests(TestCase):
    """
    Code review 37: under a PID namespace the launcher that made it (and
    waits for its init) kept the job's stdin open: a job that closed its
    stdin had writes to it answered 200 "written", the bytes going nowhere,
    and 429 for ever once the pipe was full, never the 409 a job without
    the namespace gets. (The exec chain's C{unshare --fork} holds it the
    same way: not mended, README.)
    """

    timeout = 120

    async def check(self, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, *options)
        job = await server.createJob(
            "/bin/sh", "-c", "exec 0<&-; echo closed; sleep 30", stdin=True
        )
        for _ in range(100):  # (the job says when it has closed its stdin)
            response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
            if b"closed" in await treq.content(response):
                break
            await sleep(0.1)
        codes = []
        for _ in range(12):  # 12 x 8 KiB: more than a 64 KiB pipe holds
            code, _body = await server.sendStdin(job["id"], b"x" * 8192, eof=False)
            codes.append(code)
            if code == 409:
                break
            await sleep(0.05)
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        await server.waitEnded(job["id"])
        self.assertEqual(codes[-1], 409, codes)

    def test_noNamespace(self) -> object:
        return self.check()

    def test_launcherPidNamespace(self) -> object:
        return self.check("--isolate=pid")


class OutOfMemoryUnderTheExecChainTests(TestCase):
    """
    Code review 37: under C{--isolate pid} without the launcher,
    C{unshare --fork} reports a command killed by a signal as exit status
    1: a command killed at its memory limit was "exited with code 1".
    """

    timeout = 120

    async def check(self, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, "--isolate=pid", *options)
        job = await server.createJob(
            "/usr/bin/tail", "/dev/zero", limits={"memory_bytes": 64 * MiB}
        )
        ended = await server.waitEnded(job["id"], 60)
        self.assertEqual(
            (ended["status"], ended["error"]),
            ("FAILED", "out of memory: killed at its memory limit"),
        )

    def test_execChain(self) -> object:
        return self.check("--launcher=off")

    def test_launcher(self) -> object:
        return self.check()


class FollowedOutputCutShortTests(SynchronousTestCase):
    """
    Fault round 37: an ended job whose stdout file is shorter than its
    record (a power cut that kept the record and the order file, not the
    file's last pages): read once, its combined output was what is there;
    followed (what the web page always asks), the reader read past the
    file's end and failed, and the connection was cut with nothing sent.
    An ended stream's runs end at its size, followed or not.
    """

    def read(self, follow: bool) -> tuple[CombinedReader, list[bytes]]:
        streams, order, _ = bigJob(self.mktemp(), 200)
        os.truncate(streams[0].path, 60)  # stdout: 100 bytes recorded
        cut = (StoredOutput(streams[0].path, 100), streams[1])
        got: list[bytes] = []
        clock = Clock()
        reader = CombinedReader(
            cut,
            order,
            RecordingConsumer(),  # type: ignore[arg-type]
            lambda stream, data: got.append(data),
            follow=follow,
            clock=clock,
        )
        reader.start()
        for _ in range(100):
            clock.advance(0.1)
        return reader, got

    def test_followedAsReadOnce(self) -> None:
        _once, expected = self.read(follow=False)
        followed, got = self.read(follow=True)
        self.assertTrue(followed.done.called)
        self.assertIsNone(self.successResultOf(followed.done))
        self.assertEqual(b"".join(got), b"".join(expected))
        self.assertEqual(b"".join(got), b"oe" * 60 + b"e" * 40)
