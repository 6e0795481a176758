"""
Three defects of C{jw exec} a new user's review found, each reproduced
against a live server with the installed C{jw} as a subprocess:

 - two interrupts in a row (GNU C{timeout} sends two) left before the
   stop the first one asked for was sent: the job ran on;
 - C{jw exec -i} on a job still in the queue (C{PENDING}) dropped its
   input and never sent end of file: the job, once started, waited for
   ever;
 - C{jw exec -- nosuchcmd} without C{-f} printed the id and exited 0,
   although the server had answered that the job could not start.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase

from .support import JW, LiveServer, jwEnvironment, runJW, sleep

#: The server's grace between a stop's first signal and KILL, here.
GRACE = 2.0

#: A bound on anything a test waits for (never a sleep that must be long
#: enough: each wait polls for a state and fails only past this).
BOUND = 30.0

#: A job that ignores SIGINT (sleep inherits the ignored disposition), and
#: says when it does: only KILL, after the grace, ends it.
DEAF_TO_INT = ["sh", "-c", 'trap "" INT; echo ready; exec sleep 100']


def auditEvents(server: LiveServer, event: str, jobId: str) -> list[dict[str, Any]]:
    """The audit log's C{event} entries about job C{jobId}."""
    with open(os.path.join(server.stateDir, "audit.log")) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    return [e for e in entries if e.get("event") == event and e.get("job") == jobId]


def startJW(server: str, *args: str, stdin: Any = subprocess.DEVNULL) -> Any:
    """
    C{jw ARGS} as a subprocess, stdout and stderr piped unbuffered (a line
    read is never more than that line: L{readLine} can wait for the next).
    """
    return subprocess.Popen(
        [JW, *args],
        env=jwEnvironment(server),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def readLine(stream: Any, timeout: float = BOUND) -> bytes:
    """
    The next line of a L{startJW} pipe (b"" once it is closed), waited for
    at most C{timeout} seconds (in a thread: the server runs in this
    process's reactor).
    """
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line from jw within {timeout} s")
    line: bytes = stream.readline()
    return line


class _Relay(ProxyServer):
    """One connection through L{SlowProxy}: relayed, late, or never."""

    def connectionMade(self) -> None:
        factory = self.factory
        assert isinstance(factory, SlowProxy)
        factory.accepted.append(self)
        if factory.frozen:
            # Accepted (the kernel did it) and then never answered: a
            # server that hangs, or a network that dropped the route.
            return
        if factory.delay:
            # A long way to the server: nothing is read from the client
            # (its TLS handshake waits) until the relay starts.
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            factory.later.append(reactor.callLater(factory.delay, self.relay))  # type: ignore[attr-defined]
            return
        self.relay()

    def relay(self) -> None:
        if self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
            super().connectionMade()  # connects to the server, then resumes

    def dataReceived(self, data: bytes) -> None:
        if self.peer is None:
            return  # a hung connection: its bytes go nowhere
        super().dataReceived(data)


class SlowProxy(ProxyFactory):
    """
    A TCP relay to a server (TLS passes through untouched). Connections
    made after L{delay} is set reach the server that many seconds late
    (a slow network: a request is on its way for a while); those made
    after L{frozen} is set never do. Earlier ones carry on as they were.
    """

    protocol = _Relay

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.delay = 0.0
        self.frozen = False
        self.accepted: list[_Relay] = []
        self.later: list[Any] = []

    def listen(self, testCase: TestCase) -> str:
        """Listen on loopback until the test ends; the server URL through it."""
        listening = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        testCase.addCleanup(listening.stopListening)

        def cut() -> None:
            for call in self.later:
                if call.active():
                    call.cancel()
            for each in self.accepted:
                for end in (each, each.peer):
                    if end is not None and end.transport is not None:
                        end.transport.abortConnection()  # type: ignore[attr-defined]

        testCase.addCleanup(cut)
        return f"https://localhost:{listening.getHost().port}"


class DoubleInterruptTests(TestCase):
    """Defect 1: a second interrupt must not lose the stop the first asked for."""

    async def followDeafJob(self, server: str) -> tuple[Any, str]:
        """C{jw exec -f} of L{DEAF_TO_INT}, once the job has said ready."""
        process = startJW(server, "exec", "-f", "--", *DEAF_TO_INT)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdout is not None and process.stderr is not None
        started = await deferToThread(readLine, process.stderr)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started\n$")
        self.assertEqual(await deferToThread(readLine, process.stdout), b"ready\n")
        return process, started.split()[2].decode()

    async def interruptTwice(self, process: Any, jobId: str) -> tuple[int, bytes]:
        """
        SIGINT; once jw says it is stopping the job (its stop is on its
        way), SIGINT again: jw's exit status and the rest of its stderr.
        """
        process.send_signal(signal.SIGINT)
        stopping = await deferToThread(readLine, process.stderr)
        self.assertEqual(
            stopping,
            f"jw: SIGINT: stopping job {jobId} with INT (again to stop "
            "following)\n".encode(),
        )
        process.send_signal(signal.SIGINT)
        code = await deferToThread(process.wait, BOUND)
        return code, process.stderr.read()

    async def assertStoppedByAlice(self, server: LiveServer, jobId: str) -> None:
        """
        The job ends (KILL after the grace: it ignores INT) STOPPED by
        alice, and the audit log has her stop, with INT.
        """
        job = await server.waitEnded(jobId, timeout=GRACE + BOUND)
        self.assertEqual((job["status"], job["stopped_by"]), ("STOPPED", "alice"))
        self.assertEqual(job["signal"], "SIGKILL")
        [stop] = auditEvents(server, "job.stop", jobId)
        self.assertEqual(stop["signal"], "SIGINT")

    async def test_aSecondInterruptWaitsForTheStop(self) -> None:
        """
        A second interrupt while the first one's stop is still on its way
        (here the network takes half a second to the server; a quick
        double Ctrl-C over a WAN): jw stops following only once the server
        has the stop, says a stop was asked for, and exits 130; the job
        ends STOPPED. jw left at once, the stop never sent, the job ran on.
        """
        server = LiveServer(self, grace=GRACE)
        proxy = SlowProxy(server.port)
        process, jobId = await self.followDeafJob(proxy.listen(self))
        proxy.delay = 0.5
        code, err = await self.interruptTwice(process, jobId)
        self.assertEqual(code, 130, err)
        *before, last = err.decode().splitlines()
        self.assertEqual(
            last,
            f"jw: SIGINT: no longer following job {jobId}; a stop was asked for "
            f"(KILL after the server's grace): jw status {jobId}",
        )
        # Only if the slow network took over a second, jw said it waited.
        waited = f"jw: making sure the server has the stop of job {jobId} (at most"
        self.assertEqual([line for line in before if waited not in line], [], err)
        await self.assertStoppedByAlice(server, jobId)

    async def test_twoInterruptsAtOnceStillStopTheJob(self) -> None:
        """
        Two SIGINTs microseconds apart, as GNU timeout sends them (to jw,
        then to its process group): jw may see one (Python runs a handler
        once for a signal that came twice before it ran) or two; either
        way it exits 130, and the job ends STOPPED by alice.
        """
        server = LiveServer(self, grace=GRACE)
        process, jobId = await self.followDeafJob(server.url)
        os.kill(process.pid, signal.SIGINT)
        os.kill(process.pid, signal.SIGINT)
        code = await deferToThread(process.wait, BOUND)
        err = process.stderr.read()
        self.assertEqual(code, 130, err)
        self.assertNotIn(b"may not have reached", err)
        self.assertNotIn(b"Traceback", err)
        await self.assertStoppedByAlice(server, jobId)

    async def test_aStopThatCannotBeSentIsSaid(self) -> None:
        """
        When the server cannot be reached for the stop (new connections
        hang), jw does not claim a stop was asked for: it says it is
        waiting, and after its deadline that the stop may not have reached
        the server and how to retry, exit 130; the job is indeed still
        running, with no stop in the audit log.
        """
        server = LiveServer(self, grace=GRACE)
        proxy = SlowProxy(server.port)
        process, jobId = await self.followDeafJob(proxy.listen(self))
        proxy.frozen = True
        code, err = await self.interruptTwice(process, jobId)
        self.assertEqual(code, 130, err)
        self.assertEqual(
            err.decode().splitlines(),
            [
                f"jw: making sure the server has the stop of job {jobId} "
                "(at most 10 s)",
                f"jw: SIGINT: no longer following job {jobId}; the stop may not "
                "have reached the server, so the job may still be running: "
                f"jw stop {jobId}",
            ],
        )
        self.assertEqual(server.manager.record(jobId).status.value, "RUNNING")
        self.assertEqual(auditEvents(server, "job.stop", jobId), [])


class QueuedStdinTests(TestCase):
    """Defect 2: jw exec -i on a job that waits in the queue."""

    async def queuedJob(self, server: LiveServer, *args: str) -> tuple[Any, str]:
        """
        C{echo hello | jw exec -i ARGS -- cat} behind a running job: the
        process, once jw has said its job waits to start (the server
        refused its input for now), and the running job's id.
        """
        blocker = await server.createJob("sleep", "300")
        process = startJW(
            server.url, "exec", "-i", *args, "--", "cat", stdin=subprocess.PIPE
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdin is not None
        process.stdin.write(b"hello\n")
        process.stdin.close()

        assert process.stderr is not None
        if "-f" in args:
            # -f names its job first, queued (it said "started": defect 1
            # of test_cli_defects18); so the wait for the input is not said.
            waiting = await deferToThread(readLine, process.stderr)
            self.assertRegex(
                waiting,
                rb"^jw: job [0-9a-f-]{36} is queued \(PENDING\): its output "
                rb"follows once it starts\n$",
            )
        else:
            # jw tried to send it and was told to wait: the job is PENDING.
            waiting = await deferToThread(readLine, process.stderr)
            self.assertRegex(
                waiting,
                rb"^jw: job [0-9a-f-]{36} is waiting to start: its stdin will be "
                rb"sent once it starts\n$",
            )
        jobId = waiting.split()[2].decode()
        self.assertEqual(server.manager.record(jobId).status.value, "PENDING")
        return process, blocker["id"]

    async def test_inputWaitsForTheJobToStart(self) -> None:
        """
        Without -f: jw prints the id, waits (saying so once) until the job
        starts, sends the input and its end, and exits 0; the job prints
        hello and COMPLETES. jw exited at once, the input dropped, and the
        job, once started, waited for the end of file for ever.
        """
        server = LiveServer(self, "--max-running=1", grace=GRACE)
        process, blocker = await self.queuedJob(server)
        await server.json("POST", f"/jobs/{blocker}/stop")
        code = await deferToThread(process.wait, BOUND)
        out, err = process.stdout.read(), process.stderr.read()
        self.assertEqual(code, 0, err)
        jobId = out.decode().strip()
        self.assertRegex(jobId, r"^[0-9a-f-]{36}$")
        job = await server.waitEnded(jobId, timeout=BOUND)
        self.assertEqual(job["status"], "COMPLETED", job)
        logs = await runJW(server.url, "logs", "--stdout", jobId)
        self.assertEqual(logs, (b"hello\n", b"", 0))
        self.assertEqual(err, b"")  # said once, read by queuedJob

    async def test_followedInputWaitsForTheJobToStart(self) -> None:
        """
        With -f: once the slot frees, jw says the job started, the job gets
        hello and end of file, jw prints hello and exits 0 (it hung until
        killed).
        """
        server = LiveServer(self, "--max-running=1", grace=GRACE)
        process, blocker = await self.queuedJob(server, "-f")
        await server.json("POST", f"/jobs/{blocker}/stop")
        code = await deferToThread(process.wait, BOUND)
        out, err = process.stdout.read(), process.stderr.read()
        self.assertEqual((code, out), (0, b"hello\n"), err)
        self.assertRegex(err, rb"^jw: job [0-9a-f-]{36} started\n")
        self.assertNotIn(b"stdin:", err)
        self.assertNotIn(b"Traceback", err)

    async def test_aJobThatNeverRunsIsSaid(self) -> None:
        """
        A job that ends without ever running (--after-ok a job that is then
        stopped): jw stops waiting to feed it, says so in one line, and
        exits 127, as jw exec -f does for a job that never started.
        """
        server = LiveServer(self, grace=GRACE)
        first = await server.createJob("sleep", "300")
        process = startJW(
            server.url,
            *("exec", "-i", "--after-ok", first["id"], "--", "cat"),
            stdin=subprocess.PIPE,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdin is not None
        process.stdin.write(b"hello\n")
        process.stdin.close()
        jobId = (await deferToThread(readLine, process.stdout)).decode().strip()
        self.assertRegex(jobId, r"^[0-9a-f-]{36}$")
        waiting = await deferToThread(readLine, process.stderr)
        self.assertEqual(
            waiting,
            f"jw: job {jobId} is waiting to start: its stdin will be sent once "
            "it starts\n".encode(),
        )
        await server.json("POST", f"/jobs/{first['id']}/stop")
        code = await deferToThread(process.wait, BOUND)
        err = process.stderr.read()
        self.assertEqual(code, 127, err)
        self.assertEqual(
            err,
            f"jw: job {jobId} never ran: dependency {first['id']} ended STOPPED: "
            "its stdin was not sent\n".encode(),
        )


class CannotStartTests(TestCase):
    """Defect 3: jw exec without -f of a command that cannot start."""

    async def test_saysWhyAndExitsAsFollowDoes(self) -> None:
        """
        jw exec -- nosuchcmd: the id on stdout (scripts read it), the
        server's reason on stderr in one line, and the exit status jw exec
        -f gives the same job (127); so with -i and with --json. It printed
        the id alone and exited 0.
        """
        server = LiveServer(self)
        _out, followed, followedCode = await runJW(
            server.url, "exec", "-f", "--", "nosuchcmd"
        )
        self.assertEqual(followedCode, 127, followed)
        for extra in ([], ["-i"], ["--json"]):
            out, err, code = await runJW(server.url, "exec", *extra, "--", "nosuchcmd")
            self.assertEqual(code, followedCode, (extra, out, err))
            if extra == ["--json"]:
                job = json.loads(out)
                jobId = job["id"]
                self.assertEqual(job["status"], "FAILED")
            else:
                jobId = out.decode().strip()
                self.assertRegex(jobId, r"^[0-9a-f-]{36}$")
            self.assertEqual(
                err,
                f"jw: job {jobId}: cannot start: 'nosuchcmd': not found in "
                "PATH or not permitted\n".encode(),
                extra,
            )
        # It never started: not said to have (it was, before the reason).
        self.assertNotIn(b"started", followed)
        followedId = followed.split()[2].decode().rstrip(":")
        self.assertEqual(
            followed.splitlines()[-1].decode(),
            f"jw: job {followedId}: cannot start: 'nosuchcmd': not found in "
            "PATH or not permitted",
        )


class InputRefusedTests(TestCase):
    """
    C{jw exec -i} whose input the server refuses (past C{--max-stdin-bytes}:
    413): without C{-f} jw exited 0 and the job waited for the end of its
    stdin for ever; with C{-f} jw followed it for ever (new user round 28).
    jw closes the job's stdin, says so in one line, and exits non-zero.
    """

    async def refused(self, *args: str) -> tuple[LiveServer, bytes, bytes, int]:
        server = LiveServer(self, "--max-stdin-bytes=100000", grace=GRACE)
        process = startJW(
            server.url, "exec", "-i", *args, "--", "wc", "-c", stdin=subprocess.PIPE
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        out, err = await deferToThread(process.communicate, b"x" * 300_000, BOUND)
        return server, out, err, process.returncode

    def assertSaid(self, err: bytes) -> None:
        lines = err.decode().splitlines()
        # (Not any line with 413 in it: a job id may hold it.)
        [line] = [each for each in lines if each.startswith("jw: stdin: ")]
        self.assertRegex(
            line, r"^jw: stdin: .*413.*: the job's stdin was closed after \d+ bytes$"
        )

    async def test_withoutFollow(self) -> None:
        server, out, err, code = await self.refused()
        self.assertEqual(code, 1, err)
        self.assertSaid(err)
        ended = await server.waitEnded(out.decode().split()[0])
        self.assertEqual(ended["status"], "COMPLETED", ended)

    async def test_followed(self) -> None:
        _server, out, err, code = await self.refused("-f")
        self.assertEqual(code, 1, err)
        self.assertSaid(err)
        self.assertLess(int(out.split()[-1]), 300_000)


class LeftWithJSONTests(TestCase):
    """
    C{jw exec -f --json} that stops following (C{--detach-on-interrupt} and
    an interrupt, or a second interrupt) prints the one JSON document
    C{--json} promises: the job as it is then. The real jw printed nothing
    (only the in-memory path did: new user round 28).
    """

    async def leave(self, server: LiveServer, *args: str, twice: bool) -> Any:
        process = startJW(server.url, "exec", "-f", "--json", *args, "--", *DEAF_TO_INT)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        started = await deferToThread(readLine, process.stderr)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started\n$")
        # (With --json, the job's output goes to stderr.)
        self.assertEqual(await deferToThread(readLine, process.stderr), b"ready\n")
        process.send_signal(signal.SIGINT)
        if twice:
            await deferToThread(readLine, process.stderr)  # stopping job ...
            process.send_signal(signal.SIGINT)
        code = await deferToThread(process.wait, BOUND)
        self.assertEqual(code, 130)
        document = json.loads(process.stdout.read())
        self.assertEqual(document["id"], started.split()[2].decode())
        return document

    async def test_detached(self) -> None:
        server = LiveServer(self, grace=GRACE)
        job = await self.leave(server, "--detach-on-interrupt", twice=False)
        self.assertEqual(job["status"], "RUNNING")
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )

    async def test_interruptedTwice(self) -> None:
        server = LiveServer(self, grace=GRACE)
        job = await self.leave(server, twice=True)
        self.assertIn(job["status"], ("RUNNING", "STOPPED"))


class InterruptedInputTests(TestCase):
    """
    Ctrl-C on C{jw exec -i} without C{-f}, jw's stdin still open: the job
    runs on (jw exec without -f leaves it, as ever), but its stdin is
    closed, and jw says so with how to stop it. It exited 130 without a
    word, and the job waited for the rest of its stdin for ever (new user
    round 28).
    """

    async def test_interruptClosesTheJobsStdin(self) -> None:
        server = LiveServer(self, grace=GRACE)
        process = startJW(
            server.url,
            "exec",
            "-i",
            "--",
            "sh",
            "-c",
            "cat >/dev/null; echo stdin ended",
            stdin=subprocess.PIPE,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        process.stdin.write(b"some input\n")
        process.stdin.flush()
        jobId = (await deferToThread(readLine, process.stdout)).decode().strip()
        for _ in range(100):
            if server.manager.record(jobId).status.value == "RUNNING":
                break
            await sleep(0.05)
        await sleep(0.5)  # (the input on its way)
        process.send_signal(signal.SIGINT)
        code = await deferToThread(process.wait, BOUND)
        err = process.stderr.read().decode()
        self.assertEqual(code, 130, err)
        self.assertIn(f"job {jobId} runs on, its stdin closed", err)
        self.assertIn(f"jw stop {jobId}", err)
        ended = await server.waitEnded(jobId)
        self.assertEqual(ended["status"], "COMPLETED", ended)
