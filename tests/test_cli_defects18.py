"""
Six defects of C{jw} a new user's review found, each reproduced here first:

 1. C{jw exec -f} said "started" of a job still in the queue (PENDING);
 2. C{jw stop} of a job that had just ended said "conflict", exit 1;
 3. durations took s, m, h and d, not w;
 4. the Twisted client (C{jw stop}, C{rm}, C{login}) waited for ever on a
    server that takes the connection but never shakes hands;
 5. C{jw exec -i} to a queued job asked for it once a second for as long
    as it waited;
 6. SIGTERM at a password prompt killed C{jw} by the default action, the
    terminal's echo left off.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import termios
import time
import uuid
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.client import failures, verbs
from jobworker.client.errors import ClientError
from jobworker.client.verbs import parseAge

from .support import (
    JW,
    JWAssertions,
    LiveServer,
    jwEnvironment,
    keptLoginEnvironment,
    runJW,
)
from .test_cli_exec_defects import BOUND, readLine, startJW
from .test_cli_memory import MemoryCLITestCase
from .test_cli_stream_defects import parse
from .test_prompt import onPty

#: A pattern of a job id in jw's lines.
ID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def queuedLine(jobId: str) -> bytes:
    """What C{jw exec -f} says of a job that waits in the queue."""
    return (
        f"jw: job {jobId} is queued (PENDING): its output follows once it starts\n"
    ).encode()


class QueuedFollowTests(TestCase):
    """Item 1 on a real server: a job queued behind C{--max-running=1}."""

    timeout = 120

    async def test_queuedThenStarted(self) -> None:
        """
        jw exec -f of a job that must wait for a slot says it is queued
        (it said "started"); once the slot frees, that it started; then the
        job's output, exit 0.
        """
        server = LiveServer(self, "--max-running=1")
        blocker = await server.createJob("sleep", "300")
        process = startJW(server.url, "exec", "-f", "--", "echo", "hi")
        self.addCleanup(lambda: process.poll() is None and process.kill())
        first = await deferToThread(readLine, process.stderr)
        self.assertRegex(first, rb"^jw: job " + ID + rb" is queued")
        jobId = first.split()[2].decode()
        self.assertEqual(first, queuedLine(jobId))
        self.assertEqual(server.manager.record(jobId).status.value, "PENDING")
        await server.json("POST", f"/jobs/{blocker['id']}/stop")
        second = await deferToThread(readLine, process.stderr)
        self.assertEqual(second, f"jw: job {jobId} started\n".encode())
        code = await deferToThread(process.wait, BOUND)
        out, rest = process.stdout.read(), process.stderr.read()
        self.assertEqual((out, rest, code), (b"hi\n", b"", 0))

    async def test_runningSaysStartedAtOnce(self) -> None:
        """A job that runs at once: "started" first, as before, no "queued"."""
        server = LiveServer(self)
        out, err, code = await runJW(server.url, "exec", "-f", "--", "echo", "hi")
        self.assertEqual((out, code), (b"hi\n", 0), err)
        self.assertRegex(err, rb"\Ajw: job " + ID + rb" started\n\Z")


class QueuedFollowMemoryTests(MemoryCLITestCase):
    """Item 1 on the reactor's client (L{verbs.doExec}), in memory."""

    def test_queuedThenStarted(self) -> None:
        blocker = self.execId("sleep", "300")
        run = self.start("exec", "-f", "--after", blocker, "--", "echo", "hi")
        assert run.done is not None
        self.assertNoResult(run.done)
        err = run.err.getvalue()
        self.assertRegex(err, rb"\Ajw: job " + ID + rb" is queued")
        jobId = err.split()[2].decode()
        self.assertEqual(err, queuedLine(jobId))
        self.endJob(blocker)
        self.assertEqual(
            run.err.getvalue(),
            queuedLine(jobId) + f"jw: job {jobId} started\n".encode(),
        )
        spawned = self.process(jobId)
        spawned.output(b"hi\n")
        self.endJob(jobId)
        out, err, code = self.finish(run)
        self.assertEqual((out, code), (b"hi\n", 0), err)

    def test_neverStartedIsNotSaidStarted(self) -> None:
        """A queued job that ends without running: no "started", exit 127."""
        blocker = self.execId("sleep", "300")
        run = self.start("exec", "-f", "--after-ok", blocker, "--", "echo", "hi")
        jobId = run.err.getvalue().split()[2].decode()
        stopping = self.start("stop", "--kill", blocker)
        self.endJob(blocker, signum=signal.SIGKILL)
        self.assertEqual(self.finish(stopping)[2], 0)
        _out, err, code = self.finish(run)
        self.assertEqual(code, 127, err)
        self.assertNotIn(b"started", err)
        self.assertTrue(err.startswith(queuedLine(jobId)), err)


class StopEndedTests(JWAssertions, TestCase):
    """Item 2: jw stop of a job that had already ended."""

    timeout = 60

    async def test_saysItHadEnded(self) -> None:
        """
        One line saying the job had already ended and how, and the exit
        status L{failures.EXIT_ALREADY_ENDED} (it said "conflict: ...", exit 1); with
        --json, the record on stdout too.
        """
        server = LiveServer(self)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        result = await runJW(server.url, "stop", job["id"])
        line = self.assertOneLineFailure(result)
        self.assertEqual(
            line,
            f"jw: job {job['id']} had already ended (COMPLETED): nothing to "
            "stop\n".encode(),
        )
        self.assertEqual(result[2], failures.EXIT_ALREADY_ENDED)
        out, err, code = await runJW(server.url, "stop", "--json", job["id"][:8])
        self.assertEqual(code, failures.EXIT_ALREADY_ENDED, err)
        self.assertEqual(json.loads(out)["status"], "COMPLETED")
        self.assertIn(b"had already ended (COMPLETED)", err)

    async def test_saysItEndedWhatItLeftSooner(self) -> None:
        """
        A job that ended, what it left (a C{setsid} child ignoring TERM, on
        a server with a long grace) still being ended: jw stop --kill says
        it ended those sooner, not "nothing to stop", exit 3 still (review
        of attacker round 28).
        """
        if os.getuid() != 0:
            raise SkipTest(
                "a leftover outside its session is the job's with cgroups: root"
            )
        server = LiveServer(self, grace=30.0)
        job = await server.createJob(
            "sh",
            "-c",
            "setsid sh -c 'trap \"\" TERM; exec sleep 305' </dev/null >/dev/null "
            "2>&1 & sleep 0.2",
        )
        await server.waitEnded(job["id"])
        result = await runJW(server.url, "stop", "--kill", job["id"])
        line = self.assertOneLineFailure(result)
        self.assertEqual(
            line,
            f"jw: job {job['id']} had already ended (COMPLETED): the processes "
            "it left are ended sooner by this stop\n".encode(),
        )
        self.assertEqual(result[2], failures.EXIT_ALREADY_ENDED)

    def test_helpSaysTheStatus(self) -> None:
        """jw stop --help names the exit status."""
        import io

        from jobworker.client.failures import HelpShown
        from jobworker.client.parser import buildParser
        from jobworker.client.streams import Streams

        out = io.BytesIO()
        parser = buildParser(Streams(out, io.BytesIO(), io.StringIO()))
        self.assertRaises(HelpShown, parser.parse_args, ["stop", "--help"])
        text = " ".join(out.getvalue().decode().split())
        self.assertIn(
            f"Exit {failures.EXIT_ALREADY_ENDED} if the job had already ended", text
        )


class _EndedClient:
    """A client whose stop is refused with a 409 without the job (an older
    server, a proxy's body): the status is asked for."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.reactor = Clock()
        self.asked: list[str] = []

    async def stop(self, jobId: str, signal: Any = None, grace: Any = None) -> Any:
        raise ClientError("conflict: gone", 409, {"error": "gone"})

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        self.asked.append(jobId)
        return {"id": jobId, "status": "FAILED"}


class StopEndedUnitTests(SynchronousTestCase):
    """Item 2 where the answer's body does not carry the job."""

    def test_statusAskedFor(self) -> None:
        import io

        from jobworker.client.streams import Streams

        client = _EndedClient()
        jobId = str(uuid.uuid4())
        err = io.BytesIO()
        streams = Streams(io.BytesIO(), err, io.TextIOWrapper(err, write_through=True))
        options = parse("stop", jobId)
        done = Deferred.fromCoroutine(
            verbs.doStop(options, client, streams, None)  # type: ignore[arg-type]
        )
        refused = self.failureResultOf(done, failures.AlreadyEnded).value
        self.assertEqual(client.asked, [jobId])
        self.assertEqual(
            failures.report(refused, streams),  # type: ignore[arg-type]
            failures.EXIT_ALREADY_ENDED,
        )
        self.assertEqual(
            err.getvalue(),
            f"jw: job {jobId} had already ended (FAILED): nothing to stop\n".encode(),
        )


class WeeksTests(SynchronousTestCase):
    """Item 3: a duration in weeks, wherever jw takes one."""

    def test_weeks(self) -> None:
        week = 7 * 86400.0
        self.assertEqual(
            parse("exec", "--timeout", "2w", "--", "true").timeout, 2 * week
        )
        self.assertEqual(parse("wait", "--timeout", "1w", "abcdef").timeout, week)
        self.assertEqual(parse("stop", "--grace", "0.5w", "abcdef").grace, week / 2)
        self.assertEqual(parse("clean", "--older-than", "4w").older_than, "4w")
        self.assertEqual(parseAge("4w"), 4 * week)


class SilentServer:
    """
    A port that takes connections (the kernel does, into the backlog) and
    never says a word: a stopped or hung server, or another service.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        testCase.addCleanup(self.socket.close)
        self.url = f"https://127.0.0.1:{self.socket.getsockname()[1]}"


def runBounded(server: str, *args: str, **extra: str) -> tuple[bytes, bytes, int]:
    """
    C{jw ARGS}, killed if it has not ended after L{BOUND} seconds (an
    assertion then: it would have waited for ever).
    """
    process = subprocess.Popen(
        [JW, *args],
        env=jwEnvironment(server, **extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = process.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(
            f"jw {' '.join(args)} still waiting after {BOUND} s"
        ) from None
    return out, err, process.returncode


class HandshakeDeadlineTests(JWAssertions, TestCase):
    """
    Item 4: the reactor's client gives the TLS handshake as long as the
    quick client does (twice C{JW_KEEPALIVE}, at most 300 s), and says the
    same line.
    """

    timeout = 120

    async def test_stopGivesUp(self) -> None:
        silent = SilentServer(self)
        someId = str(uuid.uuid4())
        lines = []
        for argv in (["stop", someId], ["rm", someId], ["status", someId]):
            out, err, code = await deferToThread(
                runBounded, silent.url, *argv, JW_KEEPALIVE="1"
            )
            self.assertEqual((out, code), (b"", 1), err)
            self.assertNotIn(b"Traceback", err)
            # (jw stop said, after a second, that it waits for the job.)
            lines.append(err.decode().splitlines()[-1])
        # The same words from either client (status: the quick one).
        said = (
            f"cannot connect to {silent.url}: the TLS handshake timed out (the "
            "port took the connection but nothing answered in 2 s: a stopped or "
            "hung server, or another service on that port?)"
        )
        # (A server that gives no answer is the command's failure, not the
        # id's: jw rm named the id too, and said it for each id.)
        self.assertEqual(lines, [f"jw: {said}"] * 3)


class _QueuedClient:
    """A client whose job stays PENDING for C{polls} questions, then ends
    without starting; each pause asked for is kept."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.pauses: list[float] = []

    def pause(self, seconds: float) -> Deferred[None]:
        self.pauses.append(seconds)
        return succeed(None)

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        self.polls -= 1
        if self.polls > 0:
            return {"id": jobId, "status": "PENDING"}
        return {"id": jobId, "status": "STOPPED", "started_at": None, "pid": None}


class QueuedStdinWaitTests(SynchronousTestCase):
    """
    Item 5: jw exec -i waits for a queued job to start asking for it with
    pauses that double up to a cap (it asked once a second for as long as
    the job waited: 3,600 requests an hour), and stops asking once the job
    ends without starting.
    """

    def test_pausesDoubleToTheCap(self) -> None:
        client = _QueuedClient(polls=40)
        job = {"id": "j", "status": "PENDING"}
        done = Deferred.fromCoroutine(verbs._untilStarted(client, job))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(done)["status"], "STOPPED")
        self.assertEqual(len(client.pauses), 40)
        self.assertEqual(client.pauses, sorted(client.pauses))
        self.assertEqual(client.pauses[0], 0.1)
        cap = verbs.QUEUED_POLL_MOST
        self.assertEqual(max(client.pauses), cap)
        # At most a request per 10 s once the job has waited a while.
        self.assertGreaterEqual(cap, 10.0)
        for earlier, later in zip(client.pauses, client.pauses[1:], strict=False):
            self.assertEqual(later, min(2 * earlier, cap))


def pressed(
    argv: list[str], env: dict[str, str], prompt: bytes, signum: int
) -> tuple[int, bytes, bool]:
    """
    Run C{argv} on a pty; at C{prompt}, send it C{signum}. Its exit status,
    everything it showed, and whether the terminal echoes afterwards.
    """
    pid, fd = onPty(argv, env)
    seen = b""
    sent = False
    status: int | None = None
    deadline = time.monotonic() + BOUND
    try:
        while status is None and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            chunk = b""
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child and its terminal are gone
                    pass
            seen += chunk
            if not sent and prompt in seen:
                sent = True
                time.sleep(0.2)  # well inside getpass's read, echo off
                os.kill(pid, signum)
            if not chunk:
                done, waited = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = waited
        if status is None:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        echo = bool(termios.tcgetattr(fd)[3] & termios.ECHO)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen, echo


class PromptTerminatedTests(TestCase):
    """Item 6: SIGTERM (or SIGHUP) at a prompt: the terminal as it was, 128+N."""

    timeout = 120

    def environment(self) -> dict[str, str]:
        """Before the password jw checks that it can reach the server: a
        real one (no credentials are sent before the password)."""
        home = os.path.realpath(self.mktemp())
        server = self.__dict__.get("server") or LiveServer(self)
        self.server = server
        return keptLoginEnvironment(server.url, home)

    async def test_sigtermAtThePasswordPrompt(self) -> None:
        someId = str(uuid.uuid4())
        for argv in (["stop", someId], ["login"], ["list"]):
            code, seen, echo = await deferToThread(
                pressed,
                [JW, *argv],
                self.environment(),
                b"Password for alice: ",
                signal.SIGTERM,
            )
            self.assertEqual(code, 143, (argv, seen))
            self.assertTrue(echo, (argv, "the terminal was left without echo"))
            self.assertNotIn(b"Traceback", seen)
            self.assertTrue(
                seen.endswith(b"\r\njw: SIGTERM at the prompt: nothing was sent\r\n"),
                (argv, seen),
            )
