"""
Fault injection round 6b, findings 1 to 4 (C{jw}), each reproduced with the
installed C{jw} against a live server:

 1. C{jw wait} gave up on the first dropped connection (exit 1), where the
    follows resume;
 2. a follow that reads the two streams apart lost the job's exit status
    (C{not found}, exit 1) when the job was deleted while it read;
 3. C{jw exec -f} refused a log stream (429, every slot taken) left its job
    running, exited 1 and said nothing of it;
 4. C{jw exec -i} without C{-f} hung after its job had ended, while its
    own stdin stayed open with nothing written.
"""

from __future__ import annotations

import os
import pty
import subprocess
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.errors import ClientError
from jobworker.client.follow import FOLLOW_RETRIES, followStream, waitFor

from .support import JWAssertions, LiveServer, waitUntil
from .test_cli_exec_defects import BOUND, SlowProxy, readLine, startJW

#: Bytes of stdout the jobs of finding 2 write: far more than a pipe holds,
#: so jw is still writing them (its reader has not read) when the job ends.
BIG = 3_000_000

#: A job that writes L{BIG} bytes to stdout, waits for a line on its stdin
#: (the test's word), then writes to stderr and exits 7.
BIG_THEN_7 = [
    "sh",
    "-c",
    f"head -c {BIG} /dev/zero; read go; echo err >&2; exit 7",
]


def cut(proxy: SlowProxy) -> None:
    """Reset every connection the proxy holds (a network blip)."""
    for each in proxy.accepted:
        for end in (each, each.peer):
            if end is not None and end.transport is not None:
                end.transport.abortConnection()  # type: ignore[attr-defined]


async def sendStdin(server: LiveServer, jobId: str, data: bytes) -> None:
    """Send C{data}, then end of file, to the job's stdin."""
    response = await server.request(
        "POST",
        f"/jobs/{jobId}/stdin?eof=true",
        raw=data,
        headers={b"content-type": [b"application/octet-stream"]},
    )
    body = await treq.content(response)
    assert response.code == 200, (response.code, body)


async def deleteJob(server: LiveServer, jobId: str) -> None:
    """C{jw rm ID}, as the API has it."""
    response = await server.request("DELETE", f"/jobs/{jobId}")
    body = await treq.content(response)
    assert response.code == 200, (response.code, body)


async def finish(process: Any) -> tuple[bytes, bytes, int]:
    """Read jw's stdout and stderr to their ends; its exit status."""

    def communicate() -> tuple[bytes, bytes, int]:
        out, err = process.communicate(timeout=BOUND)
        return out, err, process.returncode

    return await deferToThread(communicate)


class WaitResumesTests(TestCase):
    """Finding 1: C{jw wait} across dropped connections."""

    timeout = 120

    async def test_waitResumesAfterCuts(self) -> None:
        """
        Two resets of jw's connection while it long-polls a running job (a
        network blip, no restart): jw asks again, and exits with the job's
        status once it ends (4). It exited 1 at the first reset, "Remote
        end closed connection without response", which a script reads as
        the job's own code.
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "read x; exit 4", stdin=True)
        proxy = SlowProxy(server.port)
        process = startJW(proxy.listen(self), "wait", job["id"])
        self.addCleanup(lambda: process.poll() is None and process.kill())
        for cuts in (1, 2):
            await waitUntil(
                lambda cuts=cuts: (
                    len(proxy.accepted) >= cuts or process.poll() is not None
                ),
                BOUND,
                "jw's long poll",
            )
            cut(proxy)
        await waitUntil(
            lambda: len(proxy.accepted) >= 3 or process.poll() is not None,
            BOUND,
            "jw asking again",
        )
        await sendStdin(server, job["id"], b"go\n")
        out, err, code = await finish(process)
        self.assertEqual((out, code), (b"", 4), err)
        self.assertNotIn(b"Traceback", err)

    def test_waitGivesUpAfterTheFollowsBudget(self) -> None:
        """
        A server that never answers again: C{jw wait} asks as often as a
        follow would (L{FOLLOW_RETRIES} more times), then fails as they do.
        """

        class Gone:
            class reactor:  # a clock, as the client's
                @staticmethod
                def seconds() -> float:
                    return 0.0

            def __init__(self) -> None:
                self.asked = 0

            async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
                self.asked += 1
                raise ClientError("cannot connect: connection refused")

            async def pause(self, seconds: float) -> None:
                pass

        class Options:
            id = "job"
            timeout = None
            json = False

        client = Gone()
        done = Deferred.fromCoroutine(waitFor(client, Options(), None))  # type: ignore[arg-type]
        self.failureResultOf(done, ClientError)
        self.assertEqual(client.asked, FOLLOW_RETRIES + 1)


class ClockStepTests(TestCase):
    """
    The wall clock stepped back (an NTP correction) during a long poll
    answered "still running" early: the pause before the next poll is at
    most a second. It was the size of the step (an hour's step, an
    hour's sleep of C{jw wait}, and of the raw streams' guard).
    """

    def test_aStepBackPausesNoLonger(self) -> None:
        from jobworker.client.follow import pollEnd

        class SteppedBack:
            class reactor:  # a clock, as the client's
                now = 10_000.0

                @classmethod
                def seconds(cls) -> float:
                    return cls.now

            def __init__(self) -> None:
                self.paused: list[float] = []
                self.asked = 0

            async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
                self.asked += 1
                if self.asked == 1:
                    self.reactor.now -= 3600  # stepped back an hour
                    return {"status": "RUNNING"}
                return {"status": "COMPLETED"}

            async def pause(self, seconds: float) -> None:
                self.paused.append(seconds)

        client = SteppedBack()
        done = Deferred.fromCoroutine(pollEnd(client, "job"))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(done), {"status": "COMPLETED"})
        self.assertTrue(client.paused)
        self.assertLessEqual(max(client.paused), 1.0)


class DeletedWhileReadTests(JWAssertions, TestCase):
    """
    Finding 2: a job deleted while jw still reads its two streams apart
    (stdout and stderr to different places) ends with the job's status,
    as the combined path does, not "not found: no such job", exit 1.
    """

    timeout = 120

    async def endAndDelete(
        self, server: LiveServer, jobId: str, process: Any = None
    ) -> None:
        """
        Let the job end (7): its line sent through jw's stdin (C{process}),
        else by the test; then delete it while jw is still behind.
        """
        if process is None:
            await sendStdin(server, jobId, b"go\n")
        else:
            process.stdin.write(b"go\n")
            process.stdin.close()
            process.stdin = None  # for communicate()
        await server.waitEnded(jobId, BOUND)
        await deleteJob(server, jobId)

    async def assertAllAnd7(self, process: Any, first: bytes) -> bytes:
        """Every byte, the job's stderr, exit 7; the rest of stderr."""
        out, err, code = await finish(process)
        self.assertEqual(len(first + out), BIG, err)
        self.assertEqual(code, 7, err)
        self.assertNotIn(b"not found", err)
        self.assertNotIn(b"Traceback", err)
        return err

    async def test_execFollowApart(self) -> None:
        """C{jw exec -f} with stdout and stderr to different pipes."""
        server = LiveServer(self)
        process = startJW(
            server.url, "exec", "-i", "-f", "--", *BIG_THEN_7, stdin=subprocess.PIPE
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        started = await deferToThread(readLine, process.stderr)
        jobId = started.split()[2].decode()
        first = await deferToThread(process.stdout.read, 1)  # it follows
        await self.endAndDelete(server, jobId, process)
        err = await self.assertAllAnd7(process, first)
        self.assertEqual(err, b"err\n")

    async def test_logsFollowApart(self) -> None:
        """C{jw logs -f ID} with stdout and stderr to different pipes."""
        server = LiveServer(self)
        job = await server.createJob(*BIG_THEN_7, stdin=True)
        process = startJW(server.url, "logs", "-f", job["id"])
        self.addCleanup(lambda: process.poll() is None and process.kill())
        first = await deferToThread(process.stdout.read, 1)
        await self.endAndDelete(server, job["id"])
        err = await self.assertAllAnd7(process, first)
        self.assertEqual(err, b"err\n")

    async def test_logsFollowOneStream(self) -> None:
        """C{jw logs -f --stdout ID}: stdout alone, raw."""
        server = LiveServer(self)
        job = await server.createJob(*BIG_THEN_7, stdin=True)
        process = startJW(server.url, "logs", "-f", "--stdout", job["id"])
        self.addCleanup(lambda: process.poll() is None and process.kill())
        first = await deferToThread(process.stdout.read, 1)
        await self.endAndDelete(server, job["id"])
        err = await self.assertAllAnd7(process, first)
        self.assertEqual(err, b"")

    async def test_logsOneStreamOfAnEndedJob(self) -> None:
        """
        C{jw logs --stdout ID} of an ended job, deleted while jw writes it:
        every byte, exit 0 (as for any read without C{-f}).
        """
        server = LiveServer(self)
        job = await server.createJob(*BIG_THEN_7, stdin=True)
        await sendStdin(server, job["id"], b"go\n")
        await server.waitEnded(job["id"], BOUND)
        process = startJW(server.url, "logs", "--stdout", job["id"])
        self.addCleanup(lambda: process.poll() is None and process.kill())
        first = await deferToThread(process.stdout.read, 1)
        await deleteJob(server, job["id"])
        out, err, code = await finish(process)
        self.assertEqual((len(first + out), code, err), (BIG, 0, b""))


class StreamCapTests(TestCase):
    """Finding 3: a log stream refused at the server's cap (429)."""

    timeout = 120

    async def test_execFollowAtTheCapSaysHowToFollow(self) -> None:
        """
        Every log slot is taken for longer than jw retries: C{jw exec -f}
        says in one line that the job runs on and how to follow it, and
        exits 125 (not 1, which a job's own failure could be). The job
        runs on. It exited 1, "server answered 429", with no hint.
        """
        server = LiveServer(self, "--max-log-streams=1", "--max-log-streams-per-user=1")
        holder = await server.createJob("sh", "-c", "read x", stdin=True)
        held = await server.request(
            "GET", f"/jobs/{holder['id']}/logs?follow=true", user="ada"
        )
        self.assertEqual(held.code, 200)
        try:
            process = startJW(server.url, "exec", "-f", "--", "sleep", "600")
            self.addCleanup(lambda: process.poll() is None and process.kill())
            out, err, code = await finish(process)
        finally:
            # The slot is given back: the holder's follow ends with its job.
            await sendStdin(server, holder["id"], b"")
            await treq.content(held)
        started, line, *rest = err.decode().splitlines()
        jobId = started.split()[2]
        self.assertEqual((out, code, rest), (b"", 125, []), err)
        self.assertIn("429", line)
        self.assertIn(f"jw logs -f {jobId}", line)
        self.assertIn("running", line)
        status, record = await server.json("GET", f"/jobs/{jobId}")
        self.assertEqual((status, record["status"]), (200, "RUNNING"))
        stopped = await server.request("POST", f"/jobs/{jobId}/stop")
        await treq.content(stopped)


class TooManyRequestsRetriedTests(SynchronousTestCase):
    """Finding 3: a follow refused with 429 asks again after Retry-After."""

    def test_followWaitsRetryAfter(self) -> None:
        """
        Two refusals with C{Retry-After: 1}, then the stream: the follow
        pauses a second each time and gets every byte (it failed at once).
        """
        self.waitsOut(429)

    def test_unavailableWaitedOutToo(self) -> None:
        """
        A 503 (no thread free for the password check, the job's output or
        the store not readable now: each with C{Retry-After}) is waited out
        as a 429 is; it ended the follow at once.
        """
        self.waitsOut(503)

    def waitsOut(self, status: int) -> None:
        class Crowded:
            def __init__(self) -> None:
                self.asked = 0
                self.paused: list[float] = []

            async def logs(self, jobId: str, sink: Any, *args: Any, **kw: Any) -> None:
                self.asked += 1
                if self.asked <= 2:
                    refusal = ClientError(f"server answered {status}", status)
                    refusal.retryAfter = 1.0  # type: ignore[attr-defined]
                    raise refusal
                sink(b"all of it")

            async def pause(self, seconds: float) -> None:
                self.paused.append(seconds)

        got = bytearray()
        client = Crowded()
        self.successResultOf(
            Deferred.fromCoroutine(followStream(client, "id", "stdout", got.extend))
        )
        self.assertEqual((bytes(got), client.asked), (b"all of it", 3))
        self.assertEqual(client.paused, [1.0, 1.0])


class IdleStdinTests(TestCase):
    """Finding 4: C{jw exec -i} without C{-f}, its stdin open and silent."""

    timeout = 120

    async def followedExit(self, stdin: Any, status: int) -> tuple[int, str]:
        """
        C{jw exec -i -f -- sh -c "exit STATUS"}, its stdin C{stdin}: jw's
        exit status and stderr.
        """
        server = LiveServer(self)
        process = startJW(
            server.url,
            "exec",
            "-i",
            "-f",
            "--",
            "sh",
            "-c",
            f"exit {status}",
            stdin=stdin,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        code = await deferToThread(process.wait, BOUND)
        return code, process.stderr.read().decode()

    async def test_followedJobEndsFirst(self) -> None:
        """
        The same with C{-f}, jw's stdin 20 MB the job never reads: jw
        exits with the job's status and says that the rest of its stdin
        was not sent. It said nothing (a new user's round: only the case
        without C{-f} said so).
        """
        big = self.mktemp()
        with open(big, "wb") as f:
            f.truncate(20_000_000)
        with open(big, "rb") as stdin:
            code, err = await self.followedExit(stdin, 3)
        self.assertEqual(code, 3, err)
        [started, left] = err.splitlines()
        jobId = started.split()[2]
        self.assertEqual(
            left,
            f"jw: job {jobId} exited with code 3 before jw's stdin ended: "
            "the rest of it was not sent",
        )

    async def test_followedFromATerminal(self) -> None:
        """
        C{jw exec -i -f} at a terminal, nothing typed: the job ends, and
        jw says nothing of stdin left (an interactive job ended by its own
        command: nothing was left to send), and exits with its status.
        """
        main, terminal = pty.openpty()
        self.addCleanup(os.close, main)
        with os.fdopen(terminal, "rb", buffering=0) as stdin:
            code, err = await self.followedExit(stdin, 4)
        self.assertEqual(code, 4, err)
        self.assertNotIn("stdin", err)
        self.assertEqual(len(err.splitlines()), 1, err)  # "jw: job ID started"

    async def test_endsWithTheJob(self) -> None:
        """
        The job ends (3) while jw's stdin (a pipe nobody writes to) stays
        open: jw stops feeding it, says in one line that the rest of its
        stdin was not sent, and exits 0 as C{jw exec} without C{-f} does.
        It hung until its stdin gave a byte or ended.
        """
        server = LiveServer(self)
        process = startJW(
            server.url,
            "exec",
            "-i",
            "--",
            "sh",
            "-c",
            "echo hi; exit 3",
            stdin=subprocess.PIPE,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.addCleanup(process.stdin.close)
        code = await deferToThread(process.wait, BOUND)
        out, err = process.stdout.read(), process.stderr.read()
        jobId = out.decode().strip()
        self.assertEqual(code, 0, err)
        self.assertEqual(
            err.decode(),
            f"jw: job {jobId} exited with code 3 before jw's stdin ended: "
            "the rest of it was not sent\n",
        )
